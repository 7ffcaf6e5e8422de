//! The real-server tier of the namespace lab (DESIGN §8, issue 8 item 5):
//! the same per-test private network namespace as [`crate::netns`], but
//! every server in it is software the project did not write.
//!
//! - [`nginx`]: nginx as the origin (a static page, `return 503`,
//!   `return 444`, a slow upstream behind `proxy_pass`, `limit_req` /
//!   `limit_conn`, a WAF rule on a pull header, an allowlist, good and bad
//!   certificates), as the CDN edge (a reverse proxy sending the EdgeOne
//!   profile's pull headers from a pull IP, with its 15 s origin-response
//!   timeout, its request-id header and its 52x answers), and as the
//!   carrier's injector (block page, redirect) and TLS middlebox;
//! - [`dnsmasq`]: one resolver per region, one of which can lie;
//! - [`firewall`]: iptables rules that match the way real carriers (and real
//!   origin firewalls) do: on the `Host:` bytes, on the SNI, on the
//!   destination address;
//! - [`matrix`]: the case generator and the runner that starts all of the
//!   above plus a real `vantage serve`, real `vantage-agent run` processes
//!   and a real witness, runs `vantage diagnose` with the CLI's default
//!   flags, and judges the report against what DESIGN §5 says is true of
//!   the network that was built.
//!
//! Addresses: every server listens on a fixed, well-known port (80, 443,
//! 53) of a fixed 127.0.0.0/8 address. nginx and dnsmasq cannot bind port 0
//! and report the port they got, but each case runs in its own private
//! network namespace, so fixed ports of concurrent cases cannot collide.
//! The coordinator keeps 127.0.0.1 (port 0); nothing else uses that address,
//! so no carrier or firewall rule can touch the agents' control link.

pub mod dnsmasq;
pub mod firewall;
pub mod matrix;
pub mod nginx;
pub mod pki;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::bail;
use vantage_support::env::{Env, ProcessEnv};

/// The site every case diagnoses (URL host, Host header and SNI).
pub const SITE: &str = "www.example.test";

/// The host name the wrong-name certificate is issued for instead.
pub const OTHER_SITE: &str = "other.example.test";

/// The title of the origin's healthy page.
pub const ORIGIN_TITLE: &str = "Example Test Shop";

/// The first origin address (`--origin`).
pub const ORIGIN_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 10);

/// The second member of an origin group (`--origin A,B`).
pub const ORIGIN_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// The first edge address (`--edge`).
pub const EDGE_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 20);

/// The second edge address, the one that can be broken.
pub const EDGE_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 21);

/// Where the edge's misconfigured node pulls from: nothing listens there.
pub const DEAD_UPSTREAM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 29);

/// The edge's pull (origin-fetch) address, `proxy_bind`.
pub const PULL_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 30);

/// The carrier's middleboxes: the injector (port 80: block page, port 81:
/// redirect) and the TLS middlebox (port 443); also the address a lying
/// resolver hands out.
pub const CARRIER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);

/// Port of the injector's block page.
pub const BLOCK_PAGE_PORT: u16 = 80;

/// Port of the injector's redirect.
pub const REDIRECT_PORT: u16 = 81;

/// The title of the carrier's block page.
pub const BLOCK_TITLE: &str = "Access to this site is restricted";

/// Where the carrier's redirect points.
pub const REDIRECT_TO: &str = "http://warning.carrier.test/blocked";

/// The EdgeOne profile's origin-response timeout, which the nginx edge uses
/// (`proxy_read_timeout`) and `vantage diagnose` assumes by default.
pub const EDGEONE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long any server of the tier may take to become ready.
pub const READY: Duration = Duration::from_secs(20);

/// The resolver address of a region whose source address is `source`
/// (`127.0.N.1` → `127.0.N.53`).
pub fn resolver_ip(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 53))
        }
        other => other,
    }
}

/// Why the real-server tier cannot run here, if it cannot: the namespace
/// tier's reasons (root, `ip`, `iptables`), or a missing nginx / dnsmasq.
pub fn unavailable() -> Option<String> {
    if let Some(reason) = crate::netns::unavailable() {
        return Some(reason);
    }
    for (tool, flag, package) in [
        ("nginx", "-v", "nginx-light"),
        ("dnsmasq", "--version", "dnsmasq-base"),
        ("curl", "--version", "curl"),
    ] {
        match Command::new(tool).arg(flag).output() {
            Ok(out) if out.status.success() => {}
            _ => {
                return Some(format!(
                    "`{tool}` is missing (apt-get install -y {package})"
                ))
            }
        }
    }
    None
}

/// Whether `test` must be skipped: prints `SKIPPED <test>: <reason>` and
/// returns true when the tier cannot run, or panics when `CI` is `true`
/// (read through `env`), where a skipped tier would hide a regression —
/// the same rule as [`crate::netns::run`].
pub fn skipped_with_env(test: &str, env: &dyn Env, unavailable: Option<String>) -> bool {
    vantage_support::env::skip_tier(test, "real-server", env, unavailable)
}

/// [`skipped_with_env`] with the process environment and [`unavailable`].
pub fn skipped(test: &str) -> bool {
    skipped_with_env(test, &ProcessEnv, unavailable())
}

/// Polls a TCP connect to `addr` every 20 ms until it succeeds, up to
/// `timeout`: the readiness signal of a server that cannot say it is ready.
pub async fn wait_tcp(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        if let Ok(Ok(_)) = attempt {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("nothing accepts connections on {addr} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_support::env::MapEnv;

    #[test]
    fn a_skipped_tier_fails_under_ci_and_is_reported_elsewhere() {
        let why = || Some("`nginx` is missing".to_string());
        let ci = MapEnv::from_pairs([("CI", "true")]);
        assert!(std::panic::catch_unwind(|| skipped_with_env("t", &ci, why())).is_err());
        let local = MapEnv::from_pairs([("CI", "false")]);
        assert!(skipped_with_env("t", &local, why()));
        assert!(!skipped_with_env("t", &ci, None));
    }

    #[test]
    fn each_region_has_its_own_resolver_address() {
        assert_eq!(
            resolver_ip("127.0.3.1".parse().unwrap()),
            "127.0.3.53".parse::<IpAddr>().unwrap()
        );
    }
}
