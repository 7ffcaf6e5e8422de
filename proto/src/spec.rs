//! What the zero values of a [`pb::ProbeSpec`] mean: the default timeouts
//! and User-Agent a probe applies, and the longest wait a request can make.
//! The agent's probe engine applies them and the coordinator's plan builder
//! budgets with them, so both read them from here.

use std::time::Duration;

use crate::pb;

/// Connect limit when a spec leaves it at 0.
pub const DEFAULT_CONNECT: Duration = Duration::from_secs(10);
/// TLS handshake limit when a spec leaves it at 0.
pub const DEFAULT_TLS: Duration = Duration::from_secs(10);
/// First-byte limit when a spec leaves it at 0.
pub const DEFAULT_FIRST_BYTE: Duration = Duration::from_secs(30);
/// Longest pause inside a body when a spec leaves it at 0.
pub const DEFAULT_BODY_STALL: Duration = Duration::from_secs(30);
/// Whole-request limit when a spec leaves it at 0.
pub const DEFAULT_TOTAL: Duration = Duration::from_secs(60);

/// The query parameter that carries a probe's nonce when a spec leaves it
/// empty (DESIGN §5): the probe appends it, the witness looks for it.
pub const DEFAULT_NONCE_PARAM: &str = "__vantage";

/// The User-Agent a probe sends unless told otherwise.
pub const DEFAULT_USER_AGENT: &str = concat!("vantage/", env!("CARGO_PKG_VERSION"));

/// The longest single wait a request of `spec` can make (connect, TLS or
/// first byte): a request only means what its timeouts say when that much
/// time is left, so a plan's budget starts a request only then.
pub fn longest_wait(spec: &pb::ProbeSpec) -> Duration {
    let t = spec.timeouts.unwrap_or_default();
    let total = timeout(t.total_ms, DEFAULT_TOTAL);
    if spec.route == pb::Route::Dns as i32 {
        return total;
    }
    let tls = if spec.url.starts_with("https") {
        timeout(t.tls_ms, DEFAULT_TLS)
    } else {
        Duration::ZERO
    };
    timeout(t.connect_ms, DEFAULT_CONNECT)
        .max(tls)
        .max(timeout(t.first_byte_ms, DEFAULT_FIRST_BYTE))
        .min(total)
}

/// A spec's timeout in milliseconds, `default` when it is 0.
pub fn timeout(value: u32, default: Duration) -> Duration {
    if value == 0 {
        default
    } else {
        Duration::from_millis(u64::from(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_wait_is_the_largest_phase_limit_within_the_total() {
        let http = pb::ProbeSpec {
            url: "http://a.test/".into(),
            ..Default::default()
        };
        assert_eq!(longest_wait(&http), DEFAULT_FIRST_BYTE);
        let tight = pb::ProbeSpec {
            url: "https://a.test/".into(),
            timeouts: Some(pb::PhaseTimeouts {
                connect_ms: 100,
                tls_ms: 300,
                first_byte_ms: 200,
                total_ms: 250,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(longest_wait(&tight), Duration::from_millis(250));
        let dns = pb::ProbeSpec {
            route: pb::Route::Dns as i32,
            ..Default::default()
        };
        assert_eq!(longest_wait(&dns), DEFAULT_TOTAL);
    }
}
