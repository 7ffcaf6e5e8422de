//! Diagnosis (DESIGN §5): turns one campaign's evidence — every region's
//! probes, the origin witness and the header bisection — into findings with
//! their evidence, advice and the curl commands that reproduce them.
//!
//! The module is pure (no I/O, no clock, no async) so that every rule can be
//! unit tested from hand-built evidence. Reasoning runs in this order:
//!
//! 1. Regions that sent nothing are excluded: they are neither suspects nor
//!    controls. A region that did not finish (agent lost, deadline) is named
//!    in `missing` with the reason, and what it did send still counts.
//! 2. Carrier interference is looked for first, per route, variant and
//!    address, by comparing each region with the *control* regions: the ones
//!    the witness saw, or else the unique largest group of regions that
//!    succeeded alike. A failing region is never used as a control.
//! 3. Origin-level rules (`origin_down`, `origin_slow`, `origin_tls_error`)
//!    then run over the remaining (clean) regions only, so that one hijacked
//!    region does not hide an origin fault that every other region sees.
//! 4. Per-region origin rules (`origin_rate_limited`,
//!    `origin_blocks_cdn_headers`) and the edge rules (`origin_blocks_edge`,
//!    `edge_fault`) follow.
//!
//! Status: `faulty` when there is any finding — even one that rests on a
//! single region, which is then reported with low confidence, because a
//! refused or dead origin seen from the only region is still worth naming;
//! otherwise `inconclusive` when fewer than two regions finished with a
//! direct baseline (`missing` says what is missing), else `healthy` — with
//! a summary that names the regions it rests on when some did not finish.

mod compare;
mod curl;
mod rules;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vantage_proto::cdn::CdnProfile;
use vantage_proto::domain::{Outcome, Route};

/// What a campaign probes: the URL as the client sees it and where its
/// origin and edge are.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The full URL, e.g. `http://www.example.com/a.jpg`.
    pub url: String,
    /// The URL's host (Host header and SNI on every route).
    pub host: String,
    /// The URL's port.
    pub port: u16,
    /// `http` or `https`.
    pub scheme: String,
    /// The URL's path (with its query, if any).
    pub path: String,
    /// Origin addresses, each `ip` or `ip:port` (`[v6]:port`).
    pub origins: Vec<String>,
    /// Edge addresses, each `ip` or `ip:port`; empty means the agents' resolver.
    pub edges: Vec<String>,
    /// The CDN in front of the origin.
    pub cdn: CdnProfile,
    /// How long the edge waits for the origin's first byte.
    pub edge_timeout: Duration,
    /// How the edge pulls from the origin: what the direct probes replayed.
    pub pull: crate::campaign::plan::Pull,
    /// The User-Agent the probes sent.
    pub user_agent: String,
    /// The phase limits the probes had.
    pub timeouts: crate::campaign::plan::Timeouts,
}

/// Which of the seed's steps a probe belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// Plain requests (the seed's step 2, and step 4's client side).
    Baseline,
    /// Requests carrying the CDN's pull headers (step 3.3).
    CdnHeaders,
    /// Concurrent requests (step 3.2).
    Burst,
    /// For an `http://` target: the same request over HTTPS to the same
    /// origin address, the control that shows a carrier touching plain HTTP
    /// only (seed step 4, DESIGN §5.6).
    Https,
}

impl Variant {
    /// Every variant, in plan order.
    pub const ALL: [Variant; 4] = [
        Variant::Baseline,
        Variant::CdnHeaders,
        Variant::Burst,
        Variant::Https,
    ];

    /// The stable name used in reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::CdnHeaders => "cdn_headers",
            Variant::Burst => "burst",
            Variant::Https => "https",
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Cumulative milliseconds (curl's `time_namelookup`, `time_connect`,
/// `time_appconnect`, `time_starttransfer`, `time_total`).
///
/// All five are kept (not only ttfb and total) so that the report prints
/// them without a parallel input; a ttfb of 0 means no response byte
/// arrived, as with curl's `time_starttransfer` (see
/// [`Observation::ttfb_ms`]).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Name lookup done.
    pub dns: f64,
    /// TCP connected.
    pub connect: f64,
    /// TLS handshake done.
    pub tls: f64,
    /// First response byte.
    pub ttfb: f64,
    /// Request done.
    pub total: f64,
}

impl Timings {
    /// The five marks, in curl's order.
    pub const fn cumulative(dns: f64, connect: f64, tls: f64, ttfb: f64, total: f64) -> Self {
        Timings {
            dns,
            connect,
            tls,
            ttfb,
            total,
        }
    }
}

/// One request's result, as the diagnosis needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// How the request travelled.
    pub route: Route,
    /// Which step it belongs to.
    pub variant: Variant,
    /// The origin or edge address it is about (`""` = the agent's
    /// resolver): where it went, except for the HTTPS control, which names
    /// the origin it controls for and went to [`Observation::dialled`].
    pub address: String,
    /// What happened.
    pub outcome: Outcome,
    /// What curl would have exited with.
    pub curl_exit: i32,
    /// The HTTP status, if a response head arrived.
    pub status: Option<u16>,
    /// Cumulative milliseconds, as curl's `-w` variables.
    pub timings_ms: Timings,
    /// Response body bytes read.
    pub body_bytes: u64,
    /// SHA-256 of the body read, hex.
    pub body_sha256: String,
    /// The page title, if any.
    pub title: String,
    /// Response header names, lowercase.
    pub header_names: Vec<String>,
    /// The edge's request id (e.g. `EO-LOG-UUID`), if the response had one.
    pub edge_request_id: String,
    /// The nonce the request carried (what the witness looks for).
    pub nonce: String,
    /// SHA-256 fingerprint of the peer certificate, hex (empty for http).
    pub tls_sha256: String,
    /// Whether the peer certificate verified (`None` for http).
    pub tls_verified: Option<bool>,
    /// When the peer certificate expires, Unix seconds (`None` for http or
    /// when the agent could not read it).
    pub tls_not_after_unix: Option<i64>,
    /// What the region's resolver returned for the host.
    pub dns_answers: Vec<String>,
    /// Extra request headers sent (the CDN pull headers for `cdn_headers`).
    pub sent_headers: Vec<(String, String)>,
    /// The engine's error text, if any.
    pub error: String,
    /// How the peer ended the connection before the answer was complete.
    pub peer_close: Option<vantage_proto::domain::PeerClose>,
}

impl Observation {
    /// The address the request connected to: port 443 of the origin for
    /// the HTTPS control, [`Observation::address`] for every other probe.
    pub fn dialled(&self) -> String {
        if self.variant == Variant::Https {
            curl::https_control_address(&self.address)
        } else {
            self.address.clone()
        }
    }

    /// Time to first byte, if a response byte arrived.
    pub fn ttfb_ms(&self) -> Option<f64> {
        let ttfb = self.timings_ms.ttfb;
        (ttfb > 0.0).then_some(ttfb)
    }

    /// Total time spent on the request.
    pub fn total_ms(&self) -> f64 {
        self.timings_ms.total
    }
}

/// Everything one region reported.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionEvidence {
    /// The region's name.
    pub region: String,
    /// The agents that probed from it.
    pub agents: Vec<String>,
    /// True when the region did not return every probe of its plan (agent
    /// lost, plan refused, deadline); whatever it did send still counts.
    pub lost: bool,
    /// Why it did not finish (empty when it did).
    pub lost_reason: String,
    /// Its requests' results.
    pub observations: Vec<Observation>,
}

/// What the origin witness saw.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WitnessEvidence {
    /// Nonce → peer addresses it arrived from.
    pub seen: BTreeMap<String, Vec<String>>,
}

impl WitnessEvidence {
    /// Whether the origin saw the request carrying `nonce`.
    pub fn saw(&self, nonce: &str) -> bool {
        !nonce.is_empty() && self.seen.contains_key(nonce)
    }
}

/// The diagnosis's whole input.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    /// What was probed.
    pub target: Target,
    /// Per-region results.
    pub regions: Vec<RegionEvidence>,
    /// The origin witness's sightings, if a witness ran.
    pub witness: Option<WitnessEvidence>,
    /// Headers a bisection found to trigger the origin's refusal; empty if
    /// none were found or no bisection ran.
    pub blocked_headers: Vec<String>,
}

/// How sure a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// Clear pattern from three or more regions, corroborated by the witness
    /// where the witness can tell.
    High,
    /// Two regions, or no witness where one would have helped.
    Medium,
    /// One region, or a partial pattern.
    Low,
}

impl Confidence {
    /// The contract name, e.g. `high`.
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::High => "high",
            Confidence::Medium => "medium",
            Confidence::Low => "low",
        }
    }
}

/// A finding's code (DESIGN §5 table, a contract: these names are what
/// the report JSON, alerts and users' scripts see).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingCode {
    /// The origin refuses or resets connections, or times out.
    OriginDown,
    /// The origin answers later than the edge waits.
    OriginSlow,
    /// The origin limits request rates (429, or refusals under a burst).
    OriginRateLimited,
    /// The origin (or its WAF) refuses the CDN's pull headers.
    OriginBlocksCdnHeaders,
    /// The origin refuses the CDN's pull addresses (an allowlist).
    OriginBlocksEdge,
    /// The origin's TLS fails where the edge pulls over HTTPS.
    OriginTlsError,
    /// The edge fails while the origin is healthy.
    EdgeFault,
    /// A carrier in some regions interferes with the traffic.
    CarrierInterference,
}

impl FindingCode {
    /// Every code, in the DESIGN table's order.
    pub const ALL: [FindingCode; 8] = [
        FindingCode::OriginDown,
        FindingCode::OriginSlow,
        FindingCode::OriginRateLimited,
        FindingCode::OriginBlocksCdnHeaders,
        FindingCode::OriginBlocksEdge,
        FindingCode::OriginTlsError,
        FindingCode::EdgeFault,
        FindingCode::CarrierInterference,
    ];

    /// Whether it blames the origin (an `origin_*` code), as opposed to
    /// the edge or a region's carrier.
    pub fn is_origin(self) -> bool {
        matches!(
            self,
            FindingCode::OriginDown
                | FindingCode::OriginSlow
                | FindingCode::OriginRateLimited
                | FindingCode::OriginBlocksCdnHeaders
                | FindingCode::OriginBlocksEdge
                | FindingCode::OriginTlsError
        )
    }

    /// The contract name, e.g. `origin_down`.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingCode::OriginDown => "origin_down",
            FindingCode::OriginSlow => "origin_slow",
            FindingCode::OriginRateLimited => "origin_rate_limited",
            FindingCode::OriginBlocksCdnHeaders => "origin_blocks_cdn_headers",
            FindingCode::OriginBlocksEdge => "origin_blocks_edge",
            FindingCode::OriginTlsError => "origin_tls_error",
            FindingCode::EdgeFault => "edge_fault",
            FindingCode::CarrierInterference => "carrier_interference",
        }
    }
}

impl std::fmt::Display for FindingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A finding's kind, where the DESIGN §5 table lists kinds for its code
/// (a contract: these names are what the report JSON, alerts and metrics
/// labels carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// `origin_down`: nothing accepts the connection.
    ConnectRefused,
    /// `origin_down`: connection attempts go unanswered.
    ConnectTimeout,
    /// `origin_down`: the connection closes without a byte.
    EmptyReply,
    /// `origin_down`: the connection is reset after the request.
    Reset,
    /// `origin_down`: the origin itself answers 5xx.
    #[serde(rename = "http_5xx")]
    Http5xx,
    /// `origin_tls_error`: the TLS handshake fails (525).
    Handshake,
    /// `origin_tls_error`: the certificate does not verify (526).
    Certificate,
    /// `carrier_interference`: something answers in the origin's place.
    HttpInjection,
    /// `carrier_interference`: connections are reset on the way.
    TcpReset,
    /// `carrier_interference`: packets are silently dropped.
    Blackhole,
    /// `carrier_interference`: the resolver's answers differ.
    DnsTampering,
    /// `carrier_interference`: a different or untrusted certificate.
    TlsInterception,
}

impl FindingKind {
    /// Every kind, in the DESIGN table's order.
    pub const ALL: [FindingKind; 12] = [
        FindingKind::ConnectRefused,
        FindingKind::ConnectTimeout,
        FindingKind::EmptyReply,
        FindingKind::Reset,
        FindingKind::Http5xx,
        FindingKind::Handshake,
        FindingKind::Certificate,
        FindingKind::HttpInjection,
        FindingKind::TcpReset,
        FindingKind::Blackhole,
        FindingKind::DnsTampering,
        FindingKind::TlsInterception,
    ];

    /// The contract name, e.g. `connect_refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::ConnectRefused => "connect_refused",
            FindingKind::ConnectTimeout => "connect_timeout",
            FindingKind::EmptyReply => "empty_reply",
            FindingKind::Reset => "reset",
            FindingKind::Http5xx => "http_5xx",
            FindingKind::Handshake => "handshake",
            FindingKind::Certificate => "certificate",
            FindingKind::HttpInjection => "http_injection",
            FindingKind::TcpReset => "tcp_reset",
            FindingKind::Blackhole => "blackhole",
            FindingKind::DnsTampering => "dns_tampering",
            FindingKind::TlsInterception => "tls_interception",
        }
    }

    /// The code whose table row lists this kind.
    pub fn code(self) -> FindingCode {
        match self {
            FindingKind::ConnectRefused
            | FindingKind::ConnectTimeout
            | FindingKind::EmptyReply
            | FindingKind::Reset
            | FindingKind::Http5xx => FindingCode::OriginDown,
            FindingKind::Handshake | FindingKind::Certificate => FindingCode::OriginTlsError,
            FindingKind::HttpInjection
            | FindingKind::TcpReset
            | FindingKind::Blackhole
            | FindingKind::DnsTampering
            | FindingKind::TlsInterception => FindingCode::CarrierInterference,
        }
    }
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One named fault (DESIGN §5 table; `code` and `kind` are a contract).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The finding's code.
    pub code: FindingCode,
    /// Its kind, where the table lists kinds for its code.
    pub kind: Option<FindingKind>,
    /// The regions where it holds.
    pub regions: Vec<String>,
    /// How sure it is.
    pub confidence: Confidence,
    /// One sentence for humans.
    pub summary: String,
    /// The probes it rests on, one line each.
    pub evidence: Vec<String>,
    /// What to do about it.
    pub advice: String,
    /// Shell commands (curl, in the seed's style) that reproduce it.
    pub reproduce: Vec<String>,
}

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Enough evidence and nothing wrong.
    Healthy,
    /// At least one finding.
    Faulty,
    /// Not enough evidence to say.
    Inconclusive,
}

impl Status {
    /// The stable name used in reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Faulty => "faulty",
            Status::Inconclusive => "inconclusive",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The diagnosis's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// The overall verdict.
    pub status: Status,
    /// What was found.
    pub findings: Vec<Finding>,
    /// Regions that did not finish (`region: why`), and what evidence is
    /// missing when it limits the verdict.
    pub missing: Vec<String>,
    /// One sentence: the verdict, and what it rests on when regions are
    /// missing.
    pub summary: String,
}

/// Turns a campaign's evidence into findings (see the module docs for the
/// order of reasoning and the status rules).
pub fn diagnose(evidence: &Evidence) -> Diagnosis {
    let ctx = rules::Ctx::new(evidence);
    let unfinished = rules::unfinished(&ctx);
    let insufficient = rules::insufficient(&ctx);
    let findings = rules::all_findings(&ctx);
    let status = if !findings.is_empty() {
        Status::Faulty
    } else if !insufficient.is_empty() {
        Status::Inconclusive
    } else {
        Status::Healthy
    };
    let summary = rules::summary(&ctx, status, &findings, unfinished.len());
    let mut missing = unfinished;
    missing.extend(insufficient);
    Diagnosis {
        status,
        findings,
        missing,
        summary,
    }
}
