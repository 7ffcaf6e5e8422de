//! Wall-clock time as unix milliseconds, the form results, rows and
//! observations carry (one definition, so every side rounds the same way).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in unix milliseconds (0 before 1970, saturating far in the future).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_the_design_date() {
        // 2026-01-01T00:00:00Z: a clock that reads earlier is not unix ms.
        assert!(now_ms() > 1_767_225_600_000);
    }
}
