//! The campaign report (DESIGN §6, schema `vantage.report.v1`, a public
//! contract): its typed JSON schema, built once from the evidence and the
//! diagnosis, and its human renderings: (`render`) the terminal view and
//! Markdown for a support ticket, and (`html`) a self-contained page with
//! a region × probe matrix and timing waterfalls. Renderers take the typed
//! report only; nothing here reads the store, the wire or the campaign.
//!
//! The report is built from the same [`Evidence`] the diagnosis read plus the
//! [`Diagnosis`] itself, so what it shows is exactly what the verdict rests on.
//! Fields beyond the contract (`missing`, region `lost`, probe `address`,
//! `edge_request_id`, `error`, `nonce`) are additions the contract allows.

mod html;
mod render;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::campaign::plan::PullProtocol;
pub use crate::diagnosis::Timings;
use crate::diagnosis::{Diagnosis, Evidence, Finding, Observation, Status, Variant};
pub use html::{escape as escape_html, render_html, HtmlMeta, CSP};
pub(crate) use render::columns;
pub use render::{render_markdown, render_terminal};
use vantage_proto::domain::{Outcome, Route};

/// The schema identifier every report carries.
pub const SCHEMA: &str = "vantage.report.v1";

/// A campaign's report (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The campaign id.
    pub campaign: String,
    /// What was probed.
    pub target: ReportTarget,
    /// The overall verdict.
    pub status: Status,
    /// What was found.
    pub findings: Vec<Finding>,
    /// Regions that did not finish (`region: why`), and what evidence is
    /// missing when it limits the verdict.
    pub missing: Vec<String>,
    /// The verdict in one sentence, naming the regions it rests on when
    /// some did not finish.
    #[serde(default)]
    pub summary: String,
    /// Every region's probes.
    pub regions: Vec<ReportRegion>,
    /// What the origin witness saw.
    pub witness: ReportWitness,
    /// The follow-up that measures a slow origin's real time to first byte
    /// after this report (present only when the report found `origin_slow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttfb_followup: Option<TtfbFollowup>,
}

/// Where the TTFB follow-up is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FollowupState {
    /// Its requests are still waiting for a first byte.
    Running,
    /// Every measurement is in (or its wait ran out).
    Done,
}

/// A slow origin's real TTFB, measured after the first report, which does
/// not wait past the edge's own limit (DESIGN §4 "Time budget").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TtfbFollowup {
    /// Running or done.
    pub state: FollowupState,
    /// How long each request waits for its first byte.
    pub wait_ms: u64,
    /// One per region and origin address.
    pub measurements: Vec<TtfbMeasurement>,
}

/// One follow-up request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TtfbMeasurement {
    /// The region it ran in.
    pub region: String,
    /// The origin address.
    pub address: String,
    /// What happened to it.
    pub outcome: Outcome,
    /// Its time to first byte, if a byte came.
    pub ttfb_ms: Option<f64>,
}

/// The target as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportTarget {
    /// The URL.
    pub url: String,
    /// Origin addresses.
    pub origin: Vec<String>,
    /// Edge addresses (empty: the agents' resolver).
    pub edge: Vec<String>,
    /// The CDN profile's name.
    pub cdn: String,
    /// The edge's origin-response timeout.
    pub edge_timeout_ms: u64,
    /// The phase limits every probe had, derived from the edge timeout.
    #[serde(default)]
    pub timeouts_ms: ReportTimeouts,
    /// The User-Agent the probes sent.
    #[serde(default)]
    pub user_agent: String,
    /// How the edge pulls from the origin: what the direct probes replayed.
    #[serde(default)]
    pub pull: ReportPull,
}

/// The phase limits, in milliseconds (DESIGN §4 "Time budget").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReportTimeouts {
    /// TCP connect.
    pub connect: u64,
    /// TLS handshake.
    pub tls: u64,
    /// First byte of a direct request.
    pub ttfb: u64,
    /// First byte through the edge.
    #[serde(default)]
    pub edge_ttfb: u64,
    /// Any one request, and each region's whole plan.
    pub total: u64,
}

/// The pull configuration (seed step 1).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReportPull {
    /// `http` or `https`.
    pub protocol: PullProtocol,
    /// Host header and SNI.
    pub host: String,
    /// Path and query.
    pub path: String,
}

fn ms_of(d: std::time::Duration) -> u64 {
    // Saturates only for absurd durations (> 584 million years).
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ReportTarget {
    /// The report's view of a campaign target.
    pub fn of(t: &crate::diagnosis::Target) -> ReportTarget {
        ReportTarget {
            url: t.url.clone(),
            origin: t.origins.clone(),
            edge: t.edges.clone(),
            cdn: t.cdn.name().to_string(),
            edge_timeout_ms: ms_of(t.edge_timeout),
            timeouts_ms: ReportTimeouts {
                connect: ms_of(t.timeouts.connect),
                tls: ms_of(t.timeouts.tls),
                ttfb: ms_of(t.timeouts.direct_ttfb),
                edge_ttfb: ms_of(t.timeouts.edge_ttfb),
                total: ms_of(t.timeouts.total),
            },
            user_agent: t.user_agent.clone(),
            pull: ReportPull {
                protocol: t.pull.protocol,
                host: t.pull.host.clone(),
                path: t.pull.path.clone(),
            },
        }
    }
}

/// One region's part of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRegion {
    /// The region's name.
    pub region: String,
    /// Its agents.
    pub agents: Vec<String>,
    /// True when its agent was lost (its probes were not used).
    pub lost: bool,
    /// Its probes, one per request.
    pub probes: Vec<ReportProbe>,
}

/// One request's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportProbe {
    /// How it travelled: `direct`, `edge` or `dns`.
    pub route: Route,
    /// Which step it belongs to: `baseline`, `cdn_headers`, `burst`, `https`.
    pub variant: Variant,
    /// The address it went to (`""`: the agent's resolver).
    pub address: String,
    /// What happened.
    pub outcome: Outcome,
    /// What curl would have exited with.
    pub curl_exit: i32,
    /// The HTTP status, if any.
    pub status: Option<u16>,
    /// Cumulative timings, as curl's `-w` variables.
    pub timings_ms: Timings,
    /// The edge's request id, if any.
    pub edge_request_id: String,
    /// The request's nonce.
    pub nonce: String,
    /// The engine's error text, if any.
    pub error: String,
    /// When the peer certificate expires, Unix seconds (blackbox's
    /// `probe_ssl_earliest_cert_expiry`); absent for plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_not_after_unix: Option<i64>,
}

/// The witness's part of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportWitness {
    /// Whether a witness ran.
    pub present: bool,
    /// How many of this campaign's requests it saw.
    pub seen: usize,
    /// The peer addresses it saw edge requests come from: what the origin's
    /// allowlist must contain.
    pub edge_pull_ips: Vec<String>,
    /// Per route (`direct`, `edge`): requests sent and how many the witness saw.
    #[serde(default)]
    pub by_route: std::collections::BTreeMap<String, RouteSightings>,
    /// Per region: its direct and edge requests, and how many the witness
    /// saw (0 of N from one region is the proof of interference on its path).
    #[serde(default)]
    pub by_region: std::collections::BTreeMap<String, RouteSightings>,
}

/// How many of one route's requests reached the origin's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RouteSightings {
    /// Requests sent on the route.
    pub sent: usize,
    /// Of those, seen by the witness.
    pub seen: usize,
}

impl From<&Observation> for ReportProbe {
    fn from(o: &Observation) -> Self {
        ReportProbe {
            route: o.route,
            variant: o.variant,
            address: o.dialled(),
            outcome: o.outcome,
            curl_exit: o.curl_exit,
            status: o.status,
            timings_ms: o.timings_ms,
            edge_request_id: o.edge_request_id.clone(),
            nonce: o.nonce.clone(),
            error: o.error.clone(),
            tls_not_after_unix: o.tls_not_after_unix,
        }
    }
}

/// Builds the report of campaign `campaign` from its evidence and diagnosis.
pub fn build(campaign: &str, evidence: &Evidence, diagnosis: &Diagnosis) -> Report {
    let t = &evidence.target;
    let witness = match &evidence.witness {
        None => ReportWitness {
            present: false,
            seen: 0,
            edge_pull_ips: Vec::new(),
            by_route: std::collections::BTreeMap::new(),
            by_region: std::collections::BTreeMap::new(),
        },
        Some(w) => {
            let all = evidence.regions.iter().flat_map(|r| r.observations.iter());
            let seen = all.clone().filter(|o| w.saw(&o.nonce)).count();
            let edge_pull_ips: BTreeSet<String> = all
                .filter(|o| o.route == vantage_proto::domain::Route::Edge)
                .filter_map(|o| w.seen.get(&o.nonce))
                .flatten()
                .cloned()
                .collect();
            let mut by_route: std::collections::BTreeMap<String, RouteSightings> =
                std::collections::BTreeMap::new();
            let mut by_region: std::collections::BTreeMap<String, RouteSightings> =
                std::collections::BTreeMap::new();
            for region in &evidence.regions {
                for o in &region.observations {
                    // Only requests that left the agent could reach the origin.
                    // The HTTPS control goes to another port (another
                    // server block, perhaps another log): not counted.
                    if o.route == vantage_proto::domain::Route::Dns
                        || o.variant == crate::diagnosis::Variant::Https
                        || matches!(o.outcome, Outcome::DnsFailure | Outcome::BlockedByPolicy)
                    {
                        continue;
                    }
                    let saw = usize::from(w.saw(&o.nonce));
                    for entry in [
                        by_route.entry(o.route.as_str().to_string()).or_default(),
                        by_region.entry(region.region.clone()).or_default(),
                    ] {
                        entry.sent += 1;
                        entry.seen += saw;
                    }
                }
            }
            ReportWitness {
                present: true,
                seen,
                edge_pull_ips: edge_pull_ips.into_iter().collect(),
                by_route,
                by_region,
            }
        }
    };
    Report {
        schema: SCHEMA.to_string(),
        campaign: campaign.to_string(),
        target: ReportTarget::of(t),
        status: diagnosis.status,
        findings: diagnosis.findings.clone(),
        missing: diagnosis.missing.clone(),
        summary: diagnosis.summary.clone(),
        regions: sorted_regions(evidence),
        witness,
        ttfb_followup: None,
    }
}

/// Regions by name, each one's probes by route, variant and address (then
/// in the order they ran): every rendering shows the same order.
fn sorted_regions(evidence: &Evidence) -> Vec<ReportRegion> {
    let mut regions: Vec<&crate::diagnosis::RegionEvidence> = evidence.regions.iter().collect();
    regions.sort_by(|a, b| a.region.cmp(&b.region));
    regions
        .into_iter()
        .map(|r| {
            let mut observations: Vec<&Observation> = r.observations.iter().collect();
            // Stable: within one key, the order the requests ran.
            observations.sort_by(|a, b| {
                (a.route, a.variant, a.address.as_str()).cmp(&(
                    b.route,
                    b.variant,
                    b.address.as_str(),
                ))
            });
            ReportRegion {
                region: r.region.clone(),
                agents: r.agents.clone(),
                lost: r.lost,
                probes: observations.into_iter().map(ReportProbe::from).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vantage_proto::cdn::CdnProfile;
    use vantage_proto::domain::{Outcome, Route};

    use super::*;
    use crate::diagnosis::{diagnose, RegionEvidence, Target, Variant, WitnessEvidence};

    fn obs(
        route: Route,
        outcome: Outcome,
        status: Option<u16>,
        id: &str,
        nonce: &str,
    ) -> Observation {
        Observation {
            route,
            variant: Variant::Baseline,
            address: if route == Route::Edge {
                "203.0.113.1"
            } else {
                "198.51.100.7"
            }
            .to_string(),
            outcome,
            curl_exit: outcome.curl_exit(),
            status,
            timings_ms: Timings::cumulative(
                1.0,
                2.0,
                3.0,
                if status.is_some() { 40.0 } else { 0.0 },
                50.0,
            ),
            body_bytes: 10,
            body_sha256: String::new(),
            title: String::new(),
            header_names: Vec::new(),
            edge_request_id: id.to_string(),
            nonce: nonce.to_string(),
            tls_sha256: String::new(),
            tls_verified: None,
            tls_not_after_unix: None,
            dns_answers: Vec::new(),
            sent_headers: Vec::new(),
            error: String::new(),
            peer_close: None,
        }
    }

    #[test]
    fn the_https_control_row_names_the_port_it_connected_to() {
        let at = |address: &str, variant: Variant| {
            let mut o = obs(Route::Direct, Outcome::Ok, Some(200), "", "n");
            o.address = address.to_string();
            o.variant = variant;
            ReportProbe::from(&o).address
        };
        // An http:// origin on 8080: the control went to 443 of that IP ...
        assert_eq!(at("127.0.0.1:8080", Variant::Https), "127.0.0.1:443");
        assert_eq!(
            at("[2001:db8::1]:8080", Variant::Https),
            "[2001:db8::1]:443"
        );
        // ... and every other probe to the address it names.
        assert_eq!(at("127.0.0.1:8080", Variant::Baseline), "127.0.0.1:8080");
    }

    /// Three regions whose origin refuses connections; the edge says 521.
    fn evidence() -> Evidence {
        let region = |name: &str| RegionEvidence {
            region: name.to_string(),
            agents: vec![format!("agent-{name}")],
            lost: false,
            lost_reason: String::new(),
            observations: vec![
                obs(
                    Route::Direct,
                    Outcome::ConnectRefused,
                    None,
                    "",
                    &format!("{name}-1"),
                ),
                obs(
                    Route::Edge,
                    Outcome::Ok,
                    Some(521),
                    &format!("EO-LOG-{name}-5f2c"),
                    &format!("{name}-2"),
                ),
            ],
        };
        let mut seen = std::collections::BTreeMap::new();
        seen.insert("eu-2".to_string(), vec!["43.175.1.1".to_string()]);
        Evidence {
            target: Target {
                url: "http://www.test.com/test.jpg".to_string(),
                host: "www.test.com".to_string(),
                port: 80,
                scheme: "http".to_string(),
                path: "/test.jpg".to_string(),
                origins: vec!["198.51.100.7".to_string()],
                edges: vec!["203.0.113.1".to_string()],
                cdn: CdnProfile::EdgeOne,
                edge_timeout: Duration::from_secs(15),
                pull: crate::campaign::plan::Pull {
                    protocol: crate::campaign::plan::PullProtocol::Http,
                    host: "www.test.com".to_string(),
                    path: "/test.jpg".to_string(),
                },
                user_agent: "vantage/0.1.0".to_string(),
                timeouts: crate::campaign::plan::Timeouts::for_edge_timeout(Duration::from_secs(
                    15,
                )),
            },
            regions: vec![region("eu"), region("us"), region("ap")],
            witness: Some(WitnessEvidence { seen }),
            blocked_headers: Vec::new(),
        }
    }

    pub(super) fn report() -> Report {
        let ev = evidence();
        build("c-123", &ev, &diagnose(&ev))
    }

    fn keys(v: &serde_json::Value) -> Vec<&str> {
        v.as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    #[test]
    fn json_has_the_contract_keys_and_schema() {
        let json = serde_json::to_value(report()).unwrap_or_default();
        assert_eq!(json["schema"], "vantage.report.v1");
        assert_eq!(json["campaign"], "c-123");
        assert_eq!(json["status"], "faulty");
        for k in [
            "schema", "campaign", "target", "status", "findings", "regions", "witness",
        ] {
            assert!(keys(&json).contains(&k), "{k}");
        }
        let t = &json["target"];
        for k in ["url", "origin", "edge", "cdn", "edge_timeout_ms"] {
            assert!(keys(t).contains(&k), "target.{k}");
        }
        assert_eq!(t["cdn"], "edgeone");
        assert_eq!(t["edge_timeout_ms"], 15000);
        let f = &json["findings"][0];
        for k in [
            "code",
            "kind",
            "regions",
            "confidence",
            "summary",
            "evidence",
            "advice",
            "reproduce",
        ] {
            assert!(keys(f).contains(&k), "finding.{k}");
        }
        assert_eq!(f["code"], "origin_down");
        assert_eq!(f["kind"], "connect_refused");
        assert_eq!(f["confidence"], "high");
        let r = &json["regions"][0];
        assert!(
            keys(r).contains(&"region")
                && keys(r).contains(&"agents")
                && keys(r).contains(&"probes")
        );
        let p = &r["probes"][0];
        for k in [
            "route",
            "variant",
            "outcome",
            "curl_exit",
            "status",
            "timings_ms",
        ] {
            assert!(keys(p).contains(&k), "probe.{k}");
        }
        assert_eq!(p["route"], "direct");
        assert_eq!(p["variant"], "baseline");
        assert_eq!(p["outcome"], "connect_refused");
        assert_eq!(p["curl_exit"], 7);
        assert!(p["status"].is_null());
        let mut tk = keys(&p["timings_ms"]);
        tk.sort_unstable();
        assert_eq!(tk, ["connect", "dns", "tls", "total", "ttfb"]);
        let w = &json["witness"];
        assert_eq!(w["present"], true);
        assert_eq!(w["seen"], 1);
        assert_eq!(w["edge_pull_ips"], serde_json::json!(["43.175.1.1"]));
    }

    #[test]
    fn report_round_trips_through_json() {
        let r = report();
        let text = serde_json::to_string(&r).unwrap_or_default();
        let back: Option<Report> = serde_json::from_str(&text).ok();
        assert_eq!(back, Some(r));
    }

    #[test]
    fn terminal_shows_findings_before_the_table_and_no_ansi_without_colour() {
        let text = render_terminal(&report(), false);
        assert!(!text.contains('\x1b'), "{text}");
        let finding = text
            .find("origin_down/connect_refused")
            .unwrap_or(usize::MAX);
        let table = text.find("region  ").unwrap_or(0);
        assert!(finding < table, "{text}");
        assert!(text.contains("$ curl -vo/dev/null"));
        assert!(text.contains("advice:"));
        assert!(render_terminal(&report(), true).contains("\x1b[31m"));
    }

    #[test]
    fn markdown_lists_the_edge_request_ids() {
        let md = render_markdown(&report());
        assert!(md.contains("EO-LOG-UUID"), "{md}");
        assert!(md.contains("`EO-LOG-ap-5f2c`"), "{md}");
        assert!(md.contains("## Findings"));
        assert!(md.find("## Findings") < md.find("## Probes"));
        assert!(md.contains("```sh\ncurl -vo/dev/null"));
    }
}
