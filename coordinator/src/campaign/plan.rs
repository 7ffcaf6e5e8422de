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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use vantage_proto::cdn::CdnProfile;
use vantage_proto::domain::Route;
use vantage_proto::limits::{MAX_BURST, MAX_CAMPAIGN_ATTEMPTS};
use vantage_proto::pb;

use crate::diagnosis::Variant;

/// Source address put in the replayed pull headers: the documentation range,
/// so the origin's logs show a test client, not a real user.
pub const REPLAY_CLIENT_IP: &str = "198.51.100.10";
/// Longest connect and TLS wait, whatever the edge timeout: an origin that
/// takes longer to accept a connection is as good as unreachable.
const MAX_HANDSHAKE_WAIT: Duration = Duration::from_secs(10);
/// A direct probe outwaits the edge by this much: a direct request still
/// without an answer then proves the origin slower than the edge's limit.
const DIRECT_PAST_EDGE: Duration = Duration::from_millis(100);
/// An edge probe outwaits the edge's own timeout by this much, so its 52x
/// (sent at the timeout, after the edge's own connect and TLS to the
/// origin, on a host that may be busy) arrives: a real nginx edge under
/// load missed a 500 ms margin, and the late 524 read as a blackhole.
const EDGE_PAST_EDGE: Duration = Duration::from_millis(1000);
/// The plan's budget past the edge timeout (plus the attempts' stagger):
/// the longest probe — an edge that never answers — fits in it. Where the
/// edge does answer (a 524, a blackholed region, a hanging or refused
/// origin), the plan is done by the direct probes' limit, so the report
/// still prints within the edge timeout + 1 s (DESIGN §9).
const BUDGET_PAST_EDGE: Duration = Duration::from_millis(1100);
/// Attempts of one probe start at most this far apart: a hanging attempt
/// does not hold the next one back past the budget, and a fast one (the
/// usual case) still ends before the next begins.
const ATTEMPT_GAP: Duration = Duration::from_millis(200);

/// The protocol the edge pulls from the origin with (seed step 1).
///
/// `Default` (HTTP) only fills a report stored before the pull
/// configuration existed; a campaign's pull protocol always comes from its
/// target or `--pull-protocol`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PullProtocol {
    /// Plain HTTP.
    #[default]
    Http,
    /// HTTPS.
    Https,
}

impl PullProtocol {
    /// The URL scheme.
    pub fn as_str(self) -> &'static str {
        match self {
            PullProtocol::Http => "http",
            PullProtocol::Https => "https",
        }
    }

    /// The scheme's default port.
    pub fn default_port(self) -> u16 {
        match self {
            PullProtocol::Http => 80,
            PullProtocol::Https => 443,
        }
    }
}

impl std::fmt::Display for PullProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PullProtocol {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, PlanError> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Ok(PullProtocol::Http),
            "https" => Ok(PullProtocol::Https),
            _ => Err(PlanError::BadPullProtocol(s.to_string())),
        }
    }
}

/// What a user asks a campaign (or a sweep's runs) to probe, before it is
/// checked: the target flags of `vantage diagnose`. A sweep's definition
/// stores it as JSON.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TargetRequest {
    /// The site URL as clients request it from the edge.
    pub url: String,
    /// Origin addresses (`IP` or `IP:PORT`).
    pub origins: Vec<String>,
    /// Edge addresses (empty: the agents' resolvers pick).
    pub edges: Vec<String>,
    /// The CDN in front.
    pub cdn: CdnProfile,
    /// Overrides the profile's edge timeout.
    pub edge_timeout: Option<Duration>,
    /// Concurrent requests in the burst probe.
    pub burst: u32,
    /// Attempts per baseline probe.
    pub attempts: u32,
    /// The edge's pull protocol (default: the URL's scheme).
    pub pull_protocol: Option<PullProtocol>,
    /// The Host header and SNI the edge pulls with (default: the URL's host).
    pub pull_host: Option<String>,
    /// The path the edge pulls (default: the URL's path and query).
    pub pull_path: Option<String>,
    /// The User-Agent every probe sends (default: `vantage/<version>`).
    pub user_agent: Option<String>,
}

impl TargetRequest {
    /// A request for `url` at `origins` with every other setting at its
    /// default (the defaults of `vantage diagnose`).
    pub fn new(url: &str, origins: &[&str]) -> Self {
        TargetRequest {
            url: url.to_string(),
            origins: origins.iter().map(|o| o.to_string()).collect(),
            edges: Vec::new(),
            cdn: CdnProfile::EdgeOne,
            edge_timeout: None,
            burst: DEFAULT_BURST,
            attempts: DEFAULT_ATTEMPTS,
            pull_protocol: None,
            pull_host: None,
            pull_path: None,
            user_agent: None,
        }
    }
}

/// Requests in the burst probe unless asked otherwise.
pub const DEFAULT_BURST: u32 = 20;
/// Attempts per baseline probe unless asked otherwise.
pub const DEFAULT_ATTEMPTS: u32 = 3;

/// How the edge pulls from the origin (seed step 1): what every direct
/// probe replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    /// Protocol.
    pub protocol: PullProtocol,
    /// Host header and SNI.
    pub host: String,
    /// Path and query.
    pub path: String,
}

/// The phase limits every probe of a campaign gets, all derived from the
/// edge timeout (DESIGN §4 "Time budget"; reported as `target.timeouts_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// TLS handshake.
    pub tls: Duration,
    /// First byte of a direct request (just past the edge timeout).
    pub direct_ttfb: Duration,
    /// First byte through the edge (past its timeout, so its 52x arrives).
    pub edge_ttfb: Duration,
    /// A stalled body.
    pub body: Duration,
    /// Any one request, and the whole plan of a region.
    pub total: Duration,
}

impl Timeouts {
    /// The limits for an edge that waits `edge_timeout` for the origin.
    pub fn for_edge_timeout(edge_timeout: Duration) -> Timeouts {
        let handshake = edge_timeout.min(MAX_HANDSHAKE_WAIT);
        Timeouts {
            connect: handshake,
            tls: handshake,
            direct_ttfb: edge_timeout + DIRECT_PAST_EDGE,
            edge_ttfb: edge_timeout + EDGE_PAST_EDGE,
            body: handshake,
            total: edge_timeout + BUDGET_PAST_EDGE,
        }
    }
}

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
    /// The URL's path and query.
    pub path: String,
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
    /// How the edge pulls: what the direct probes replay.
    pub pull: Pull,
    /// The User-Agent sent.
    pub user_agent: String,
    /// The phase limits.
    pub timeouts: Timeouts,
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
    /// The pull protocol is not http or https.
    #[error("bad --pull-protocol {0:?}: expected http or https")]
    BadPullProtocol(String),
    /// The pull host is not a host name.
    #[error("bad --pull-host {0:?}: expected a host name (no scheme, port or path)")]
    BadPullHost(String),
    /// The pull path does not start with `/`.
    #[error("bad --pull-path {0:?}: expected a path starting with /")]
    BadPullPath(String),
    /// The User-Agent cannot be sent as a header.
    #[error("bad --user-agent: it must be printable text without line breaks")]
    BadUserAgent,
}

fn parse_addr(what: &'static str, text: &str, default_port: u16) -> Result<SocketAddr, PlanError> {
    vantage_support::addr::parse_ip_port(text.trim(), default_port).ok_or_else(|| {
        PlanError::BadAddress {
            what,
            value: text.to_string(),
        }
    })
}

impl CampaignTarget {
    /// Checks and normalises a campaign request.
    pub fn new(req: &TargetRequest) -> Result<Self, PlanError> {
        let url = req.url.as_str();
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
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.to_string());
        let url_protocol = if scheme == "https" {
            PullProtocol::Https
        } else {
            PullProtocol::Http
        };
        let protocol = req.pull_protocol.unwrap_or(url_protocol);
        let pull_host = match req.pull_host.as_deref().map(str::trim) {
            None | Some("") => host.clone(),
            Some(h) => {
                let bare = h.trim_start_matches('[').trim_end_matches(']');
                let valid = !bare.is_empty()
                    && !bare.contains(['/', '?', '#', '@', ' '])
                    && (bare.parse::<IpAddr>().is_ok() || !bare.contains(':'));
                if !valid {
                    return Err(PlanError::BadPullHost(h.to_string()));
                }
                bare.to_string()
            }
        };
        let pull_path = match req.pull_path.as_deref() {
            None | Some("") => path.clone(),
            Some(p) if p.starts_with('/') && !p.contains([' ', '\r', '\n', '#']) => p.to_string(),
            Some(p) => return Err(PlanError::BadPullPath(p.to_string())),
        };
        // Without a port an origin listens where the pull protocol does:
        // the URL's port when the edge pulls with the URL's scheme.
        let origin_port = if protocol == url_protocol {
            port
        } else {
            protocol.default_port()
        };
        if req.origins.is_empty() {
            return Err(PlanError::NoOrigin);
        }
        let origins = req
            .origins
            .iter()
            .map(|o| parse_addr("--origin", o, origin_port))
            .collect::<Result<Vec<_>, _>>()?;
        let edges = req
            .edges
            .iter()
            .map(|e| parse_addr("--edge", e, port))
            .collect::<Result<Vec<_>, _>>()?;
        if !(1..=MAX_CAMPAIGN_ATTEMPTS).contains(&req.attempts) {
            return Err(PlanError::OutOfRange {
                what: "--attempts",
                min: 1,
                max: u64::from(MAX_CAMPAIGN_ATTEMPTS),
            });
        }
        if !(1..=MAX_BURST).contains(&req.burst) {
            return Err(PlanError::OutOfRange {
                what: "--burst",
                min: 1,
                max: u64::from(MAX_BURST),
            });
        }
        let edge_timeout = req.edge_timeout.unwrap_or_else(|| req.cdn.edge_timeout());
        if edge_timeout < Duration::from_millis(100) || edge_timeout > Duration::from_secs(600) {
            return Err(PlanError::OutOfRange {
                what: "--edge-timeout (ms)",
                min: 100,
                max: 600_000,
            });
        }
        let user_agent = match req.user_agent.as_deref() {
            None => vantage_proto::spec::DEFAULT_USER_AGENT.to_string(),
            Some(ua) if http::HeaderValue::from_str(ua).is_ok() => ua.to_string(),
            Some(_) => return Err(PlanError::BadUserAgent),
        };
        Ok(CampaignTarget {
            url: url.to_string(),
            host,
            port,
            scheme,
            path,
            origins,
            edges,
            cdn: req.cdn,
            edge_timeout,
            attempts: req.attempts,
            burst: req.burst,
            pull: Pull {
                protocol,
                host: pull_host,
                path: pull_path,
            },
            user_agent,
            timeouts: Timeouts::for_edge_timeout(edge_timeout),
        })
    }

    /// The URL a direct probe to `origin` requests: the edge's pull (its
    /// protocol, Host and path), with the port when it is not the default.
    pub fn direct_url(&self, origin: &SocketAddr) -> String {
        pull_url(
            self.pull.protocol,
            &self.pull.host,
            origin.port(),
            &self.pull.path,
        )
    }

    /// The HTTPS control's URL for an `http://` target's `origin`: the same
    /// pull over TLS to port 443 of the same address (DESIGN §5.6).
    pub fn https_control(&self, origin: &SocketAddr) -> Option<(String, SocketAddr)> {
        (self.pull.protocol == PullProtocol::Http).then(|| {
            let at = SocketAddr::new(origin.ip(), PullProtocol::Https.default_port());
            (
                pull_url(
                    PullProtocol::Https,
                    &self.pull.host,
                    at.port(),
                    &self.pull.path,
                ),
                at,
            )
        })
    }
}

fn pull_url(protocol: PullProtocol, host: &str, port: u16, path: &str) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if port == protocol.default_port() {
        format!("{}://{host}{path}", protocol.as_str())
    } else {
        format!("{}://{host}:{port}{path}", protocol.as_str())
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

/// What one planned probe measures, decided by the plan builder and kept
/// beside the probe's id for the whole campaign: the id is an opaque label
/// (readable in logs and the store), and nothing reads meaning back out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeKey {
    /// How the probe reaches the site.
    pub route: Route,
    /// Which step of the procedure it is.
    pub variant: Variant,
    /// The address it is aimed at (`ip:port` as the report shows it), or
    /// `None` when the agent's own resolver picks (the edge by name, DNS).
    pub address: Option<String>,
    /// For the one-header `cdn_headers` probes: the single pull header it
    /// sends (the probe that names a WAF rule's trigger).
    pub single_header: Option<String>,
}

/// One region's plan: the probes to send and the typed key of each.
#[derive(Debug, Clone, Default)]
pub struct RegionPlan {
    /// The probe specs, in plan order.
    pub probes: Vec<pb::ProbeSpec>,
    /// Each probe's key, by probe id.
    pub keys: HashMap<String, ProbeKey>,
}

impl RegionPlan {
    /// The key of the probe a result came from; `None` for an id this plan
    /// never had.
    pub fn key(&self, probe_id: &str) -> Option<&ProbeKey> {
        self.keys.get(probe_id)
    }
}

/// The probes one region runs for `target`, with their keys. Nonces are
/// unique per campaign, region and probe (the engine appends attempt and
/// burst slot).
pub fn build_probes(target: &CampaignTarget, campaign_id: &str, region: &str) -> RegionPlan {
    let short = nonce_prefix(campaign_id);
    let mut probes = Vec::new();
    let mut keys = HashMap::new();
    let mut add = |mut spec: pb::ProbeSpec, key: ProbeKey| {
        keys.insert(spec.probe_id.clone(), key);
        spec.nonce = format!("{short}-{region}-{}", probes.len());
        if spec.url.is_empty() {
            spec.url = target.url.clone();
        }
        spec.verify_tls = true;
        spec.user_agent = target.user_agent.clone();
        spec.attempt_interval_ms = millis(ATTEMPT_GAP);
        probes.push(spec);
    };
    let t = target.timeouts;
    let direct_timeouts = Some(pb::PhaseTimeouts {
        connect_ms: millis(t.connect),
        tls_ms: millis(t.tls),
        first_byte_ms: millis(t.direct_ttfb),
        body_ms: millis(t.body),
        total_ms: millis(t.total),
    });
    let pull_headers: Vec<pb::Header> = target
        .cdn
        .pull_headers(
            REPLAY_CLIENT_IP,
            target.pull.protocol.as_str(),
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
        let url = target.direct_url(origin);
        let direct = |variant: &str, id: String| pb::ProbeSpec {
            probe_id: id,
            url: url.clone(),
            route: pb::Route::Direct as i32,
            address_override: at.clone(),
            variant: variant.to_string(),
            timeouts: direct_timeouts,
            attempts: target.attempts,
            burst: 1,
            ..Default::default()
        };
        let key = |variant: Variant, single_header: Option<&str>| ProbeKey {
            route: Route::Direct,
            variant,
            address: Some(at.clone()),
            single_header: single_header.map(str::to_string),
        };
        add(
            direct("baseline", format!("direct/baseline@{at}")),
            key(Variant::Baseline, None),
        );
        add(
            pb::ProbeSpec {
                headers: pull_headers.clone(),
                ..direct("cdn_headers", format!("direct/cdn_headers@{at}"))
            },
            key(Variant::CdnHeaders, None),
        );
        // One probe per header: when the full set is refused, the one that
        // is refused alone names the WAF rule's trigger.
        for header in &pull_headers {
            add(
                pb::ProbeSpec {
                    headers: vec![header.clone()],
                    attempts: 1,
                    ..direct(
                        "cdn_headers",
                        format!("direct/cdn_headers@{at}#{}", header.name),
                    )
                },
                key(Variant::CdnHeaders, Some(&header.name)),
            );
        }
        if let Some((https_url, https_at)) = target.https_control(origin) {
            // The control's only question is "does TLS to this origin get an
            // answer here?": its certificate is recorded, not required.
            add(
                pb::ProbeSpec {
                    url: https_url,
                    address_override: display_addr(&https_at),
                    attempts: 1,
                    verify_tls: false,
                    ..direct("https", format!("direct/https@{at}"))
                },
                key(Variant::Https, None),
            );
        }
        add(
            pb::ProbeSpec {
                burst: target.burst,
                concurrency: target.burst,
                attempts: 1,
                // After the baselines: the burst must not be what makes them fail.
                phase: 1,
                ..direct("burst", format!("direct/burst@{at}"))
            },
            key(Variant::Burst, None),
        );
    }
    let edge_timeouts = Some(pb::PhaseTimeouts {
        connect_ms: millis(t.connect),
        tls_ms: millis(t.tls),
        first_byte_ms: millis(t.edge_ttfb),
        body_ms: millis(t.body),
        total_ms: millis(t.total),
    });
    let edges: Vec<Option<String>> = if target.edges.is_empty() {
        vec![None]
    } else {
        target.edges.iter().map(|e| Some(display_addr(e))).collect()
    };
    for edge in edges {
        add(
            pb::ProbeSpec {
                probe_id: format!("edge/baseline@{}", edge.as_deref().unwrap_or("resolver")),
                route: pb::Route::Edge as i32,
                address_override: edge.clone().unwrap_or_default(),
                variant: "baseline".into(),
                timeouts: edge_timeouts,
                attempts: target.attempts,
                burst: 1,
                ..Default::default()
            },
            ProbeKey {
                route: Route::Edge,
                variant: Variant::Baseline,
                address: edge,
                single_header: None,
            },
        );
    }
    add(
        pb::ProbeSpec {
            probe_id: "dns".into(),
            route: pb::Route::Dns as i32,
            variant: "baseline".into(),
            attempts: 1,
            burst: 1,
            timeouts: Some(pb::PhaseTimeouts {
                total_ms: millis(t.connect),
                ..Default::default()
            }),
            ..Default::default()
        },
        ProbeKey {
            route: Route::Dns,
            variant: Variant::Baseline,
            address: None,
            single_header: None,
        },
    );
    RegionPlan { probes, keys }
}

/// The budget of one region's plan: every probe's longest wait fits in it
/// from the start, and nothing runs past it (DESIGN §4 "Time budget").
pub fn plan_budget(target: &CampaignTarget) -> Duration {
    target.timeouts.total + ATTEMPT_GAP * target.attempts.saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> TargetRequest {
        TargetRequest {
            edges: vec!["203.0.113.5".into()],
            ..TargetRequest::new(
                "http://www.example.com/test.jpg",
                &["192.0.2.10", "[2001:db8::1]:8080"],
            )
        }
    }

    fn target() -> CampaignTarget {
        CampaignTarget::new(&request()).unwrap()
    }

    #[test]
    fn every_step_of_the_seed_is_planned_for_every_origin() {
        let probes = build_probes(&target(), "c0ffee-1234", "eu").probes;
        let ids: Vec<&str> = probes.iter().map(|p| p.probe_id.as_str()).collect();
        for origin in ["192.0.2.10:80", "[2001:db8::1]:8080"] {
            for step in ["baseline", "cdn_headers", "burst", "https"] {
                assert!(
                    ids.contains(&format!("direct/{step}@{origin}").as_str()),
                    "{step} for {origin}: {ids:?}"
                );
            }
            assert!(ids.contains(&format!("direct/cdn_headers@{origin}#EO-LOG-UUID").as_str()));
        }
        assert!(ids.contains(&"edge/baseline@203.0.113.5:80"));
        assert!(ids.contains(&"dns"));
        let burst = probes.iter().find(|p| p.variant == "burst").unwrap();
        assert_eq!((burst.burst, burst.concurrency), (20, 20));
        assert_eq!(burst.phase, 1, "the burst runs after the baselines");
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
        let https = probes
            .iter()
            .find(|p| p.probe_id == "direct/https@[2001:db8::1]:8080")
            .unwrap();
        assert_eq!(https.url, "https://www.example.com/test.jpg");
        assert_eq!(https.address_override, "[2001:db8::1]:443");
        assert!(probes.iter().all(|p| p.user_agent.starts_with("vantage/")));
    }

    #[test]
    fn every_timeout_comes_from_the_edge_timeout_and_fits_the_budget() {
        for (edge_timeout, connect) in [(15_000, 10_000), (3_000, 3_000), (100_000, 10_000)] {
            let target = CampaignTarget::new(&TargetRequest {
                edge_timeout: Some(Duration::from_millis(edge_timeout)),
                ..request()
            })
            .unwrap();
            let budget = plan_budget(&target);
            assert_eq!(budget, Duration::from_millis(edge_timeout + 1100 + 2 * 200));
            for probe in build_probes(&target, "c0ffee", "eu").probes {
                let t = probe.timeouts.unwrap();
                let last_start = Duration::from_millis(u64::from(probe.attempt_interval_ms))
                    * probe.attempts.saturating_sub(1);
                assert!(
                    last_start + vantage_proto::spec::longest_wait(&probe) <= budget,
                    "{}: its last attempt's longest wait fits the budget",
                    probe.probe_id
                );
                assert!(u64::from(t.total_ms) <= edge_timeout + 1100);
                if probe.route == pb::Route::Direct as i32 {
                    assert_eq!(u64::from(t.connect_ms), connect);
                    assert_eq!(
                        u64::from(t.first_byte_ms),
                        edge_timeout + 100,
                        "a direct probe outwaits the edge, just"
                    );
                }
                if probe.route == pb::Route::Edge as i32 {
                    assert!(
                        u64::from(t.first_byte_ms) > edge_timeout,
                        "the edge's own 52x at its timeout arrives"
                    );
                }
            }
        }
    }

    #[test]
    fn the_pull_configuration_shapes_every_direct_probe() {
        let target = CampaignTarget::new(&TargetRequest {
            pull_protocol: Some(PullProtocol::Https),
            pull_host: Some("origin.example.net".into()),
            pull_path: Some("/bucket/test.jpg?v=2".into()),
            origins: vec!["192.0.2.10".into(), "192.0.2.11:8443".into()],
            ..request()
        })
        .unwrap();
        assert_eq!(target.origins[0].port(), 443, "the pull protocol's port");
        let probes = build_probes(&target, "c0ffee", "eu").probes;
        let direct: Vec<&pb::ProbeSpec> = probes
            .iter()
            .filter(|p| p.route == pb::Route::Direct as i32)
            .collect();
        assert!(direct
            .iter()
            .any(|p| p.url == "https://origin.example.net/bucket/test.jpg?v=2"));
        assert!(direct
            .iter()
            .any(|p| p.url == "https://origin.example.net:8443/bucket/test.jpg?v=2"));
        assert!(
            direct.iter().all(|p| p.variant != "https"),
            "an https pull needs no https control"
        );
        let edge = probes
            .iter()
            .find(|p| p.route == pb::Route::Edge as i32)
            .unwrap();
        assert_eq!(
            edge.url, "http://www.example.com/test.jpg",
            "the edge gets the client's URL"
        );
        let cdn = direct.iter().find(|p| p.variant == "cdn_headers").unwrap();
        assert!(cdn
            .headers
            .iter()
            .any(|h| h.name == "X-Forwarded-Proto" && h.value == b"https"));
    }

    #[test]
    fn nonces_are_unique() {
        let probes = build_probes(&target(), "c0ffee-1234", "eu").probes;
        let mut nonces: Vec<&str> = probes.iter().map(|p| p.nonce.as_str()).collect();
        nonces.sort_unstable();
        nonces.dedup();
        assert_eq!(nonces.len(), probes.len());
        let cloudflare = CampaignTarget::new(&TargetRequest {
            cdn: CdnProfile::Cloudflare,
            edges: Vec::new(),
            ..TargetRequest::new("https://a.test/", &["192.0.2.1"])
        })
        .unwrap();
        assert_eq!(cloudflare.edge_timeout, Duration::from_secs(100));
        assert_eq!(cloudflare.origins[0].port(), 443);
        let edge = build_probes(&cloudflare, "x", "r")
            .probes
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
            CampaignTarget::new(&TargetRequest {
                cdn: CdnProfile::Generic,
                attempts,
                burst,
                ..TargetRequest::new(url, origins)
            })
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
        let base = TargetRequest::new("http://x/", &["192.0.2.1"]);
        for (bad, want) in [
            (
                TargetRequest {
                    pull_host: Some("http://origin/".into()),
                    ..base.clone()
                },
                PlanError::BadPullHost("http://origin/".into()),
            ),
            (
                TargetRequest {
                    pull_path: Some("no-slash".into()),
                    ..base.clone()
                },
                PlanError::BadPullPath("no-slash".into()),
            ),
            (
                TargetRequest {
                    user_agent: Some("a\nb".into()),
                    ..base.clone()
                },
                PlanError::BadUserAgent,
            ),
        ] {
            assert_eq!(CampaignTarget::new(&bad), Err(want));
        }
        assert!(matches!(
            "gopher".parse::<PullProtocol>(),
            Err(PlanError::BadPullProtocol(_))
        ));
        let fast = CampaignTarget::new(&TargetRequest {
            edge_timeout: Some(Duration::from_secs(2)),
            ..base
        })
        .unwrap();
        assert_eq!(
            fast.edge_timeout,
            Duration::from_secs(2),
            "--edge-timeout overrides the profile"
        );
    }
}
