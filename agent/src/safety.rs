//! The agent's SSRF guard: by default an agent refuses to probe addresses in
//! special-purpose ranges (loopback, private networks, link-local, ...).
//!
//! An agent runs inside someone's network and probes whatever URLs the
//! coordinator sends it; without this guard anyone who can create a campaign
//! could use the agent to reach its host's loopback services, cloud metadata
//! endpoints (169.254.169.254) or the private network behind it. Operators who
//! do want to probe such targets opt in with `--allow-private`.
//!
//! The check applies to the address actually connected to, so callers must
//! run it after DNS resolution, on every resolved address, not on host names.
//!
//! The ranges and their names (IPv6 forms that embed an IPv4 address are
//! judged by the embedded one) are the shared
//! [`vantage_support::netrange`]; this module owns the policy only, and
//! imports nothing of the agent.

use std::net::IpAddr;

pub use vantage_support::netrange::special_purpose_range;

/// Which targets an agent is willing to probe.
#[derive(Debug, Clone, Copy, Default)]
pub struct TargetPolicy {
    /// Probe special-purpose addresses too (the `--allow-private` flag).
    pub allow_private: bool,
}

/// A target refused by [`TargetPolicy::check`].
#[derive(Debug, thiserror::Error)]
#[error("target {addr} is in a special-purpose range ({range}); start the agent with --allow-private to probe it")]
pub struct PolicyError {
    /// The refused address.
    pub addr: IpAddr,
    /// The name of the range it is in.
    pub range: &'static str,
}

impl TargetPolicy {
    /// Accepts `addr` if it is public or the policy allows private targets.
    pub fn check(&self, addr: IpAddr) -> Result<(), PolicyError> {
        if self.allow_private {
            return Ok(());
        }
        match special_purpose_range(addr) {
            Some(range) => Err(PolicyError { addr, range }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> Option<&'static str> {
        special_purpose_range(s.parse().unwrap())
    }

    #[track_caller]
    fn assert_special(s: &str, want: &str) {
        assert_eq!(range(s), Some(want), "{s}");
    }

    #[track_caller]
    fn assert_public(s: &str) {
        assert_eq!(range(s), None, "{s}");
    }

    #[test]
    fn public_addresses_are_accepted() {
        let policy = TargetPolicy::default();
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "2a00:1450:4001:80b::200e",
        ] {
            assert_public(addr);
            assert!(policy.check(addr.parse().unwrap()).is_ok(), "{addr}");
        }
    }

    #[test]
    fn ipv4_mapped_is_judged_by_the_embedded_address() {
        assert_special("::ffff:127.0.0.1", "IPv4-mapped loopback");
        assert_special("::ffff:10.1.2.3", "IPv4-mapped private (RFC 1918)");
        assert_special("::ffff:169.254.169.254", "IPv4-mapped link-local");
        assert_special("::ffff:0.0.0.0", "IPv4-mapped unspecified");
        assert_public("::ffff:8.8.8.8");
        assert_public("::ffff:1.1.1.1");
        let policy = TargetPolicy::default();
        assert!(policy.check("::ffff:127.0.0.1".parse().unwrap()).is_err());
        assert!(policy.check("::ffff:8.8.8.8".parse().unwrap()).is_ok());
    }

    #[test]
    fn ipv4_translated_is_judged_by_the_embedded_address() {
        // RFC 2765: ::ffff:0:a.b.c.d, as written by hand or by a resolver.
        assert_special("::ffff:0:7f00:1", "IPv4-translated loopback");
        assert_special("::ffff:0:127.0.0.1", "IPv4-translated loopback");
        assert_special("::ffff:0:a9fe:a9fe", "IPv4-translated link-local");
        assert_special("::ffff:0:10.0.0.1", "IPv4-translated private (RFC 1918)");
        assert_public("::ffff:0:8.8.8.8");
        let err = TargetPolicy::default()
            .check("::ffff:0:7f00:1".parse().unwrap())
            .unwrap_err();
        assert_eq!(err.range, "IPv4-translated loopback");
        // Neighbours of the translated prefix are not mistaken for it.
        assert_public("::1:ffff:0:7f00:1");
        assert_public("0:0:0:1:ffff:0:7f00:1");
    }

    #[test]
    fn ipv4_compatible_is_judged_by_the_embedded_address_and_always_refused() {
        assert_special("::127.0.0.1", "IPv4-compatible loopback");
        assert_special("::7f00:1", "IPv4-compatible loopback");
        assert_special("::192.168.1.1", "IPv4-compatible private (RFC 1918)");
        assert_special("::169.254.169.254", "IPv4-compatible link-local");
        // The deprecated form itself is refused, even around a public address.
        assert_special("::8.8.8.8", "IPv4-compatible (deprecated, ::/96)");
        // The exact unspecified and loopback addresses keep their own names.
        assert_special("::", "unspecified");
        assert_special("::1", "loopback");
    }

    #[test]
    fn every_embedding_of_loopback_is_refused() {
        let policy = TargetPolicy::default();
        for addr in [
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::ffff:0:7f00:1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
        ] {
            let err = policy.check(addr.parse().unwrap()).unwrap_err();
            assert!(err.range.contains("loopback"), "{addr}: {}", err.range);
        }
    }

    #[test]
    fn nat64_is_judged_by_the_embedded_address() {
        assert_special("64:ff9b::10.0.0.1", "NAT64 of private (RFC 1918)");
        assert_special("64:ff9b::127.0.0.1", "NAT64 of loopback");
        assert_special("64:ff9b::192.168.0.1", "NAT64 of private (RFC 1918)");
        assert_public("64:ff9b::8.8.8.8");
        let err = TargetPolicy::default()
            .check("64:ff9b::a00:1".parse().unwrap())
            .unwrap_err();
        assert_eq!(err.range, "NAT64 of private (RFC 1918)");
    }

    #[test]
    fn policy_error_names_address_and_range() {
        let err = TargetPolicy::default()
            .check("127.0.0.1".parse().unwrap())
            .unwrap_err();
        assert_eq!(err.addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(err.range, "loopback");
        assert_eq!(
            err.to_string(),
            "target 127.0.0.1 is in a special-purpose range (loopback); \
             start the agent with --allow-private to probe it"
        );
    }

    #[test]
    fn default_policy_refuses_special_ranges() {
        let policy = TargetPolicy::default();
        assert!(!policy.allow_private);
        for addr in ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "fd00::1"] {
            assert!(policy.check(addr.parse().unwrap()).is_err(), "{addr}");
        }
    }

    #[test]
    fn allow_private_lets_everything_through() {
        let policy = TargetPolicy {
            allow_private: true,
        };
        for addr in [
            "127.0.0.1",
            "10.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "64:ff9b::10.0.0.1",
            "fe80::1",
            "ff02::1",
            "8.8.8.8",
        ] {
            assert!(policy.check(addr.parse().unwrap()).is_ok(), "{addr}");
        }
    }
}
