//! Wall-clock helpers: unix milliseconds for storage (the shared
//! [`vantage_support::time::now_ms`]), RFC 3339 for people.

use std::time::{Duration, UNIX_EPOCH};

pub use vantage_support::time::now_ms;

/// Unix milliseconds as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}
