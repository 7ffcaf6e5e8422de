//! The plan builder: turns one campaign target into the probes every region
//! runs — the seed's procedure as data (DESIGN §5):
//!
//! 1. `direct/baseline` — a few attempts straight to each origin (step 2);
//! 2. `direct/cdn_headers` — the same with the CDN's pull headers, plus one
//!    probe per single header, so a WAF rule is pinned to the header that
//!    trips it in one round instead of an adaptive bisection (step 3.3);
//! 3. `direct/burst` — concurrent requests to each origin (step 3.2);
//! 4. `edge/baseline` — a few attempts through each edge address, or the
//!    agent's own resolver (step 4's client side);
//! 5. `dns` — what the region's resolver says for the host.
//!
//! Direct probes wait past the edge timeout, bounded, so a slow origin's real
//! answer time is measured instead of being cut at the edge's limit.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use vantage_proto::cdn::CdnProfile;
use vantage_proto::pb;

/// Most attempts per probe a campaign may ask for.
pub const MAX_ATTEMPTS: u32 = 20;
/// Largest burst a campaign may ask for.
pub const MAX_BURST: u32 = 200;
/// Longest extra wait past the edge timeout for direct probes.
const MAX_EXTRA_WAIT: Duration = Duration::from_secs(30);
/// Source address put in the replayed pull headers: the documentation range,
/// so the origin's logs show a test client, not a real user.
pub const REPLAY_CLIENT_IP: &str = "198.51.100.10";

/// What a campaign probes.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignTarget {
    /// The site URL as the edge serves it.
    pub url: String,
    /// Host of the URL.
    pub host: String,
    /// Port of the URL (explicit or the scheme's default).
    pub port: u16,
    /// `http` or `https`.
    pub scheme: String,
    /// Origin addresses (`ip:port`).
    pub origins: Vec<SocketAddr>,
    /// Edge addresses (`ip:port`); empty: the agents' resolvers pick.
    pub edges: Vec<SocketAddr>,
    /// The CDN in front.
    pub cdn: CdnProfile,
    /// The edge's origin-response timeout.
    pub edge_timeout: Duration,
    /// Attempts per baseline probe.
    pub attempts: u32,
    /// Concurrent requests in the burst probe.
    pub burst: u32,
}

/// A campaign request that cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The URL is not http(s) with a host.
    #[error("bad URL {0:?}: expected http(s)://host[:port]/path")]
    BadUrl(String),
    /// An address is not `IP` or `IP:PORT`.
    #[error("bad {what} address {value:?}: expected an IP or IP:PORT")]
    BadAddress {
        /// Which list.
        what: &'static str,
        /// The text.
        value: String,
    },
    /// No origin address.
    #[error("at least one --origin address is needed")]
    NoOrigin,
    /// A number is out of range.
    #[error("{what} must be between {min} and {max}")]
    OutOfRange {
        /// Which setting.
        what: &'static str,
        /// Lower bound.
        min: u64,
        /// Upper bound.
        max: u64,
    },
}

fn parse_addr(what: &'static str, text: &str, default_port: u16) -> Result<SocketAddr, PlanError> {
    vantage_agent::probe::parse_override(text.trim(), default_port).ok_or_else(|| {
        PlanError::BadAddress {
            what,
            value: text.to_string(),
        }
    })
}

impl CampaignTarget {
    /// Checks and normalises a campaign request.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        url: &str,
        origins: &[String],
        edges: &[String],
        cdn: CdnProfile,
        edge_timeout: Option<Duration>,
        attempts: u32,
        burst: u32,
    ) -> Result<Self, PlanError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| PlanError::BadUrl(url.to_string()))?;
        let scheme = match uri.scheme_str() {
            Some(s @ ("http" | "https")) => s.to_string(),
            _ => return Err(PlanError::BadUrl(url.to_string())),
        };
        let host = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| PlanError::BadUrl(url.to_string()))?;
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        if origins.is_empty() {
            return Err(PlanError::NoOrigin);
        }
        let origins = origins
            .iter()
            .map(|o| parse_addr("--origin", o, port))
            .collect::<Result<Vec<_>, _>>()?;
        let edges = edges
            .iter()
            .map(|e| parse_addr("--edge", e, port))
            .collect::<Result<Vec<_>, _>>()?;
        if !(1..=MAX_ATTEMPTS).contains(&attempts) {
            return Err(PlanError::OutOfRange {
                what: "--attempts",
                min: 1,
                max: u64::from(MAX_ATTEMPTS),
            });
        }
        if !(1..=MAX_BURST).contains(&burst) {
            return Err(PlanError::OutOfRange {
                what: "--burst",
                min: 1,
                max: u64::from(MAX_BURST),
            });
        }
        let edge_timeout = edge_timeout.unwrap_or_else(|| cdn.edge_timeout());
        if edge_timeout < Duration::from_millis(100) || edge_timeout > Duration::from_secs(600) {
            return Err(PlanError::OutOfRange {
                what: "--edge-timeout (ms)",
                min: 100,
                max: 600_000,
            });
        }
        Ok(CampaignTarget {
            url: url.to_string(),
            host,
            port,
            scheme,
            origins,
            edges,
            cdn,
            edge_timeout,
            attempts,
            burst,
        })
    }

    /// How long direct probes wait for an answer: past the edge timeout, so
    /// a slow origin's real time is measured, but bounded.
    pub fn direct_wait(&self) -> Duration {
        self.edge_timeout + self.edge_timeout.min(MAX_EXTRA_WAIT)
    }

    /// How long edge probes wait: the edge answers by its timeout (524).
    pub fn edge_wait(&self) -> Duration {
        self.edge_timeout + Duration::from_secs(5)
    }

    /// The longest any probe of this campaign can take (for bounding it).
    pub fn longest_probe(&self) -> Duration {
        self.direct_wait().max(self.edge_wait())
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn display_addr(addr: &SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
    }
}

/// What every nonce of a campaign starts with (the witness's sightings of a
/// campaign are found by it).
pub fn nonce_prefix(campaign_id: &str) -> String {
    campaign_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect()
}

/// The probes one region runs for `target`. Nonces are unique per campaign,
/// region and probe (the engine appends attempt and burst slot).
pub fn build_probes(
    target: &CampaignTarget,
    campaign_id: &str,
    region: &str,
) -> Vec<pb::ProbeSpec> {
    let short = nonce_prefix(campaign_id);
    let mut probes = Vec::new();
    let mut add = |mut spec: pb::ProbeSpec| {
        spec.nonce = format!("{short}-{region}-{}", probes.len());
        spec.url = target.url.clone();
        spec.verify_tls = true;
        probes.push(spec);
    };
    let direct_timeouts = Some(pb::PhaseTimeouts {
        connect_ms: 10_000,
        tls_ms: millis(target.direct_wait()),
        first_byte_ms: millis(target.direct_wait()),
        total_ms: millis(target.direct_wait() + Duration::from_secs(5)),
        ..Default::default()
    });
    let pull_headers: Vec<pb::Header> = target
        .cdn
        .pull_headers(
            REPLAY_CLIENT_IP,
            &target.scheme,
            &format!("vantage-{short}"),
        )
        .into_iter()
        .map(|(name, value)| pb::Header {
            name,
            value: value.into_bytes(),
        })
        .collect();
    for origin in &target.origins {
        let at = display_addr(origin);
        let direct = |variant: &str, id: String| pb::ProbeSpec {
            probe_id: id,
            route: pb::Route::Direct as i32,
            address_override: at.clone(),
            variant: variant.to_string(),
            timeouts: direct_timeouts,
            attempts: target.attempts,
            burst: 1,
            ..Default::default()
        };
        add(direct("baseline", format!("direct/baseline@{at}")));
        add(pb::ProbeSpec {
            headers: pull_headers.clone(),
            ..direct("cdn_headers", format!("direct/cdn_headers@{at}"))
        });
        // One probe per header: when the full set is refused, the one that
        // is refused alone names the WAF rule's trigger.
        for header in &pull_headers {
            add(pb::ProbeSpec {
                headers: vec![header.clone()],
                attempts: 1,
                ..direct(
                    "cdn_headers",
                    format!("direct/cdn_headers@{at}#{}", header.name),
                )
            });
        }
        add(pb::ProbeSpec {
            burst: target.burst,
            concurrency: target.burst,
            attempts: 1,
            // After the baselines: the burst must not be what makes them fail.
            phase: 1,
            ..direct("burst", format!("direct/burst@{at}"))
        });
    }
    let edge_timeouts = Some(pb::PhaseTimeouts {
        connect_ms: 10_000,
        tls_ms: millis(target.edge_wait()),
        total_ms: millis(target.edge_wait()),
        ..Default::default()
    });
    let edges: Vec<Option<String>> = if target.edges.is_empty() {
        vec![None]
    } else {
        target.edges.iter().map(|e| Some(display_addr(e))).collect()
    };
    for edge in edges {
        add(pb::ProbeSpec {
            probe_id: format!("edge/baseline@{}", edge.as_deref().unwrap_or("resolver")),
            route: pb::Route::Edge as i32,
            address_override: edge.unwrap_or_default(),
            variant: "baseline".into(),
            timeouts: edge_timeouts,
            attempts: target.attempts,
            burst: 1,
            ..Default::default()
        });
    }
    add(pb::ProbeSpec {
        probe_id: "dns".into(),
        route: pb::Route::Dns as i32,
        variant: "baseline".into(),
        attempts: 1,
        burst: 1,
        timeouts: Some(pb::PhaseTimeouts {
            total_ms: 10_000,
            ..Default::default()
        }),
        ..Default::default()
    });
    probes
}

/// The longest a region can take to run `probes`: phases run one after
/// another, the probes of a phase at once, the attempts of a probe in turn.
pub fn plan_duration(probes: &[pb::ProbeSpec]) -> Duration {
    let mut phases: std::collections::BTreeMap<u32, Duration> = std::collections::BTreeMap::new();
    for probe in probes {
        let total = Duration::from_millis(u64::from(probe.timeouts.map_or(60_000, |t| t.total_ms)));
        let worst = total * probe.attempts.max(1);
        let phase = phases.entry(probe.phase).or_default();
        *phase = (*phase).max(worst);
    }
    phases.values().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> CampaignTarget {
        CampaignTarget::new(
            "http://www.example.com/test.jpg",
            &["192.0.2.10".into(), "[2001:db8::1]:8080".into()],
            &["203.0.113.5".into()],
            CdnProfile::EdgeOne,
            None,
            3,
            20,
        )
        .unwrap()
    }

    #[test]
    fn every_step_of_the_seed_is_planned_for_every_origin() {
        let probes = build_probes(&target(), "c0ffee-1234", "eu");
        let ids: Vec<&str> = probes.iter().map(|p| p.probe_id.as_str()).collect();
        for origin in ["192.0.2.10:80", "[2001:db8::1]:8080"] {
            assert!(
                ids.contains(&format!("direct/baseline@{origin}").as_str()),
                "{ids:?}"
            );
            assert!(ids.contains(&format!("direct/cdn_headers@{origin}").as_str()));
            assert!(ids.contains(&format!("direct/cdn_headers@{origin}#EO-LOG-UUID").as_str()));
            assert!(ids.contains(&format!("direct/burst@{origin}").as_str()));
        }
        assert!(ids.contains(&"edge/baseline@203.0.113.5:80"));
        assert!(ids.contains(&"dns"));
        let burst = probes.iter().find(|p| p.variant == "burst").unwrap();
        assert_eq!((burst.burst, burst.concurrency), (20, 20));
        assert_eq!(burst.phase, 1, "the burst runs after the baselines");
        let direct_total = Duration::from_millis(u64::from(probes[0].timeouts.unwrap().total_ms));
        assert_eq!(
            plan_duration(&probes),
            direct_total * 3 + direct_total,
            "three attempts, then the burst"
        );
        assert!(probes
            .iter()
            .filter(|p| p.variant != "burst")
            .all(|p| p.phase == 0));
        let full = probes
            .iter()
            .find(|p| p.probe_id == "direct/cdn_headers@192.0.2.10:80")
            .unwrap();
        let names: Vec<&str> = full.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "EO-Connecting-IP",
                "X-Forwarded-For",
                "X-Forwarded-Proto",
                "CDN-Loop",
                "EO-LOG-UUID"
            ]
        );
    }

    #[test]
    fn nonces_are_unique_and_direct_probes_outwait_the_edge() {
        let target = target();
        let probes = build_probes(&target, "c0ffee-1234", "eu");
        let mut nonces: Vec<&str> = probes.iter().map(|p| p.nonce.as_str()).collect();
        nonces.sort_unstable();
        nonces.dedup();
        assert_eq!(nonces.len(), probes.len());
        let baseline = &probes[0];
        assert_eq!(baseline.address_override, "192.0.2.10:80");
        let wait = baseline.timeouts.unwrap().first_byte_ms;
        assert_eq!(
            wait, 30_000,
            "15 s edge timeout + 15 s to see how slow the origin is"
        );
        let cloudflare = CampaignTarget::new(
            "https://a.test/",
            &["192.0.2.1".into()],
            &[],
            CdnProfile::Cloudflare,
            None,
            1,
            1,
        )
        .unwrap();
        assert_eq!(
            cloudflare.direct_wait(),
            Duration::from_secs(130),
            "extra wait is bounded"
        );
        assert_eq!(cloudflare.origins[0].port(), 443);
        let edge = build_probes(&cloudflare, "x", "r")
            .into_iter()
            .find(|p| p.route == pb::Route::Edge as i32)
            .unwrap();
        assert!(
            edge.address_override.is_empty(),
            "no --edge: the agent's resolver picks the edge"
        );
    }

    #[test]
    fn bad_requests_are_named() {
        let one = |url: &str, origins: &[&str], attempts, burst| {
            let origins: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
            CampaignTarget::new(
                url,
                &origins,
                &[],
                CdnProfile::Generic,
                None,
                attempts,
                burst,
            )
        };
        assert_eq!(
            one("ftp://x/", &["192.0.2.1"], 1, 1),
            Err(PlanError::BadUrl("ftp://x/".into()))
        );
        assert_eq!(one("http://x/", &[], 1, 1), Err(PlanError::NoOrigin));
        assert!(matches!(
            one("http://x/", &["x.example"], 1, 1),
            Err(PlanError::BadAddress { .. })
        ));
        assert!(matches!(
            one("http://x/", &["192.0.2.1"], 0, 1),
            Err(PlanError::OutOfRange {
                what: "--attempts",
                ..
            })
        ));
        assert!(matches!(
            one("http://x/", &["192.0.2.1"], 1, 999),
            Err(PlanError::OutOfRange {
                what: "--burst",
                ..
            })
        ));
        let fast = CampaignTarget::new(
            "http://x/",
            &["192.0.2.1".into()],
            &[],
            CdnProfile::EdgeOne,
            Some(Duration::from_secs(2)),
            1,
            1,
        )
        .unwrap();
        assert_eq!(
            fast.edge_timeout,
            Duration::from_secs(2),
            "--edge-timeout overrides the profile"
        );
    }
}
