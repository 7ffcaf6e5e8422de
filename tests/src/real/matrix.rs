//! The real-server matrix: the case generator, the runner that builds each
//! case's network inside its own namespace, and the judge.
//!
//! A [`Case`] is one point of (fault kind × route × affected regions ×
//! witness present/absent × http/https × 3 or 4 regions). [`cases`] builds
//! the list from those dimensions so that no rule is tested at a single
//! point: for every kind it keeps, from the valid combinations, a covering
//! set in which every value of every dimension occurs (at least two cases
//! per kind). A combination is invalid where the truth cannot be told from
//! the evidence a user would have: without a witness, a carrier fault must
//! touch a strict minority of the regions (else the "control" regions are
//! the interfered ones).
//!
//! [`run_case`] starts, in the case's namespace: nginx as the origin (and the
//! slow application behind it where the kind needs one), nginx as the edge,
//! nginx as the carrier's injector and TLS middlebox, dnsmasq per region,
//! a real `vantage serve`, one real `vantage-agent run` per region
//! (`--bind-ip 127.0.N.1 --allow-private --dns-server 127.0.N.53:53
//! --cacert <private CA>`), a real `vantage-agent witness` when the case has
//! one; then applies the carrier's or the origin firewall's iptables rules,
//! checks with curl from an affected and a clean region that the network is
//! what the case says (a lab error is reported as such, not blamed on the
//! product), and runs `vantage diagnose URL --origin … [--edge …] --regions
//! all --json` with the CLI's default flags — so a slow origin waits the
//! real 15 s EdgeOne timeout.
//!
//! [`judge`] compares the report with what DESIGN §5 says is true of that
//! network: the expected code and kind, in exactly the expected regions, no
//! finding naming a clean region, no other finding code. [`Kind::Healthy`]
//! cases (nothing wrong, every region clean) must be `healthy` with no
//! finding at all: they are the control for false findings.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::dnsmasq::Dnsmasq;
use super::firewall::{self, Rule};
use super::nginx::{self, EdgeSetup, Nginx, OriginMember, OriginMode};
use super::pki::LabPki;
use super::{
    BLOCK_PAGE_PORT, BLOCK_TITLE, CARRIER_IP, EDGE_A, EDGE_B, ORIGIN_A, ORIGIN_B, ORIGIN_TITLE,
    PULL_IP, REDIRECT_PORT, SITE,
};
use crate::fixture::{Fault, Fixture};
use crate::lab::{
    spawn_agent_process, start_witness_process, wait_agent_connected, CoordinatorProcess,
};
use crate::process::{bin_path, run_cli, ChildProcess};
use crate::scenario::{findings, regions_of, REGIONS};

/// The heartbeat of each case's coordinator (its agents are declared lost
/// after three silent ones).
const MATRIX_HEARTBEAT: Duration = Duration::from_secs(2);

/// How long the slow application behind the origin takes to answer: above
/// the EdgeOne profile's 15 s origin-response timeout.
pub const SLOW_TTFB: Duration = Duration::from_secs(18);

/// How long each answer of the application behind a `limit_conn` origin
/// takes, so that a burst's requests overlap.
pub const LIMIT_CONN_HOLD: Duration = Duration::from_secs(1);

/// The longest one `vantage diagnose` may take before the case is judged
/// wrong (DESIGN §9 wants edge timeout + 1 s; this bound only keeps the
/// tier finite).
pub const DIAGNOSE_BOUND: Duration = Duration::from_secs(200);

/// The longest a whole case (setup, diagnose, teardown) may take.
pub const CASE_BOUND: Duration = Duration::from_secs(300);

/// What is wrong in a case's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Nothing is wrong: the report must be healthy, with no finding (the
    /// control for false findings).
    Healthy,
    /// The origin answers `return 503;`.
    Down503,
    /// The origin answers `return 444;` (closes without a reply).
    Down444,
    /// The origin's web server is stopped.
    DownStopped,
    /// The origin host's firewall drops every packet to ports 80 and 443.
    DownFirewallDrop,
    /// The origin host's IPS resets every plain-HTTP request.
    DownFirewallReset,
    /// The origin proxies to an application slower than the edge timeout.
    Slow,
    /// The origin rate-limits with `limit_req` (429).
    LimitReq,
    /// The origin limits concurrent connections with `limit_conn` (503).
    LimitConn,
    /// A WAF rule on the origin refuses requests with `EO-Connecting-IP`.
    WafPullHeader,
    /// The origin's nginx allowlist (`allow …; deny all;`) leaves out the
    /// edge's pull IP.
    AllowlistNginx,
    /// The origin host's firewall refuses the edge's pull IP.
    AllowlistFirewall,
    /// The origin's certificate is self-signed.
    TlsSelfSigned,
    /// The origin's certificate is for another name.
    TlsWrongName,
    /// The origin speaks plain HTTP on port 443.
    TlsPlainOn443,
    /// One of the two edge addresses is a broken node.
    EdgeNodeBroken,
    /// The carrier answers the region's plain HTTP with a block page.
    InjectBlockPage,
    /// The carrier answers the region's plain HTTP with a 302.
    InjectRedirect,
    /// The carrier resets the region's packets carrying `Host: <site>`.
    DpiHostReset,
    /// The carrier resets the region's ClientHellos naming the site.
    SniReset,
    /// The carrier drops the region's packets to the destination address.
    Blackhole,
    /// The region's resolver lies about the site.
    DnsLie,
    /// The carrier diverts the region's TLS to its middlebox.
    TlsIntercept,
}

/// Every kind, in report order.
pub const KINDS: [Kind; 23] = [
    Kind::Healthy,
    Kind::Down503,
    Kind::Down444,
    Kind::DownStopped,
    Kind::DownFirewallDrop,
    Kind::DownFirewallReset,
    Kind::Slow,
    Kind::LimitReq,
    Kind::LimitConn,
    Kind::WafPullHeader,
    Kind::AllowlistNginx,
    Kind::AllowlistFirewall,
    Kind::TlsSelfSigned,
    Kind::TlsWrongName,
    Kind::TlsPlainOn443,
    Kind::EdgeNodeBroken,
    Kind::InjectBlockPage,
    Kind::InjectRedirect,
    Kind::DpiHostReset,
    Kind::SniReset,
    Kind::Blackhole,
    Kind::DnsLie,
    Kind::TlsIntercept,
];

/// The URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// `http://`
    Http,
    /// `https://`
    Https,
}

/// Where the fault is on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// No edge in front (the agents' resolvers point at the origin); a
    /// carrier fault is on the way to the origin.
    Direct,
    /// An edge in front (`--edge`); a carrier fault is on the way to the
    /// edge only.
    Edge,
    /// An edge in front; a carrier fault is on the way to both origin and
    /// edge (it matches no destination, or every one).
    Both,
    /// An edge in front of an origin group (`--origin A,B`) whose member B
    /// has the fault and A is healthy.
    Group,
}

/// How many regions a fault touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Affected {
    /// Every region (an origin or edge fault).
    All,
    /// This many regions (a carrier fault).
    Regions(usize),
    /// No region (nothing is wrong).
    None,
}

impl Kind {
    /// The snake-case name used in case names.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Healthy => "healthy",
            Kind::Down503 => "origin_503",
            Kind::Down444 => "origin_444",
            Kind::DownStopped => "origin_stopped",
            Kind::DownFirewallDrop => "origin_firewall_drop",
            Kind::DownFirewallReset => "origin_firewall_reset",
            Kind::Slow => "origin_slow_upstream",
            Kind::LimitReq => "limit_req",
            Kind::LimitConn => "limit_conn",
            Kind::WafPullHeader => "waf_pull_header",
            Kind::AllowlistNginx => "allowlist_nginx",
            Kind::AllowlistFirewall => "allowlist_firewall",
            Kind::TlsSelfSigned => "tls_self_signed",
            Kind::TlsWrongName => "tls_wrong_name",
            Kind::TlsPlainOn443 => "tls_plain_on_443",
            Kind::EdgeNodeBroken => "edge_node_broken",
            Kind::InjectBlockPage => "inject_block_page",
            Kind::InjectRedirect => "inject_redirect",
            Kind::DpiHostReset => "dpi_host_reset",
            Kind::SniReset => "sni_reset",
            Kind::Blackhole => "blackhole",
            Kind::DnsLie => "dns_lie",
            Kind::TlsIntercept => "tls_intercept",
        }
    }

    /// The finding code and kind DESIGN §5 names for it (no code: no
    /// finding).
    pub fn finding(self) -> (&'static str, Option<&'static str>) {
        match self {
            Kind::Healthy => ("", None),
            Kind::Down503 => ("origin_down", Some("http_5xx")),
            Kind::Down444 => ("origin_down", Some("empty_reply")),
            Kind::DownStopped => ("origin_down", Some("connect_refused")),
            Kind::DownFirewallDrop => ("origin_down", Some("connect_timeout")),
            Kind::DownFirewallReset => ("origin_down", Some("reset")),
            Kind::Slow => ("origin_slow", None),
            Kind::LimitReq | Kind::LimitConn => ("origin_rate_limited", None),
            Kind::WafPullHeader => ("origin_blocks_cdn_headers", None),
            Kind::AllowlistNginx | Kind::AllowlistFirewall => ("origin_blocks_edge", None),
            Kind::TlsSelfSigned | Kind::TlsWrongName => ("origin_tls_error", Some("certificate")),
            Kind::TlsPlainOn443 => ("origin_tls_error", Some("handshake")),
            Kind::EdgeNodeBroken => ("edge_fault", None),
            Kind::InjectBlockPage | Kind::InjectRedirect => {
                ("carrier_interference", Some("http_injection"))
            }
            Kind::DpiHostReset | Kind::SniReset => ("carrier_interference", Some("tcp_reset")),
            Kind::Blackhole => ("carrier_interference", Some("blackhole")),
            Kind::DnsLie => ("carrier_interference", Some("dns_tampering")),
            Kind::TlsIntercept => ("carrier_interference", Some("tls_interception")),
        }
    }

    /// Whether it is a carrier's (touches some regions only).
    pub fn is_carrier(self) -> bool {
        self.finding().0 == "carrier_interference"
    }

    fn schemes(self) -> &'static [Scheme] {
        match self {
            Kind::DownFirewallReset
            | Kind::InjectBlockPage
            | Kind::InjectRedirect
            | Kind::DpiHostReset => &[Scheme::Http],
            Kind::TlsSelfSigned
            | Kind::TlsWrongName
            | Kind::TlsPlainOn443
            | Kind::SniReset
            | Kind::TlsIntercept => &[Scheme::Https],
            _ => &[Scheme::Http, Scheme::Https],
        }
    }

    fn routes(self) -> &'static [Route] {
        match self {
            Kind::Healthy | Kind::Down503 | Kind::DownStopped => {
                &[Route::Direct, Route::Edge, Route::Group]
            }
            Kind::AllowlistNginx | Kind::AllowlistFirewall | Kind::EdgeNodeBroken => &[Route::Edge],
            Kind::DnsLie => &[Route::Direct, Route::Edge],
            k if k.is_carrier() => &[Route::Direct, Route::Edge, Route::Both],
            _ => &[Route::Direct, Route::Edge],
        }
    }

    fn affected(self) -> &'static [Affected] {
        if self.is_carrier() {
            &[Affected::Regions(1), Affected::Regions(2)]
        } else if self == Kind::Healthy {
            &[Affected::None]
        } else {
            &[Affected::All]
        }
    }
}

/// One case of the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// What is wrong.
    pub kind: Kind,
    /// Where on the way.
    pub route: Route,
    /// The URL's scheme.
    pub scheme: Scheme,
    /// How many regions (agents) take part: 3 or 4.
    pub regions: usize,
    /// Which regions the fault touches.
    pub affected: Affected,
    /// Whether an origin witness follows the origin's access log.
    pub witness: bool,
    /// Picks which regions are the affected ones (rotates them).
    pub seed: usize,
}

/// What the report must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The finding code; empty: no finding, the report is healthy.
    pub code: &'static str,
    /// Its kind, where the code has kinds.
    pub kind: Option<&'static str>,
    /// Exactly the regions it names, sorted.
    pub regions: Vec<String>,
    /// Regions the fault does not touch: no finding may name them.
    pub clean: Vec<String>,
    /// Other finding codes that are also true of this network (none may
    /// name a clean region).
    pub also: Vec<&'static str>,
}

impl Case {
    /// A stable, descriptive name.
    pub fn name(&self) -> String {
        let affected = match self.affected {
            Affected::All => "all".to_string(),
            Affected::None => "clean".to_string(),
            Affected::Regions(n) => format!("{n}of{}", self.regions),
        };
        format!(
            "{}/{}/{}/{}{}/{}",
            self.kind.name(),
            match self.route {
                Route::Direct => "direct",
                Route::Edge => "edge",
                Route::Both => "both",
                Route::Group => "group",
            },
            match self.scheme {
                Scheme::Http => "http",
                Scheme::Https => "https",
            },
            affected,
            if matches!(self.affected, Affected::All | Affected::None) {
                format!("-{}r", self.regions)
            } else {
                String::new()
            },
            if self.witness {
                "witness"
            } else {
                "no-witness"
            }
        )
    }

    /// The regions taking part, with their source addresses.
    pub fn region_list(&self) -> Vec<(&'static str, IpAddr)> {
        REGIONS
            .iter()
            .take(self.regions)
            .map(|(name, ip)| (*name, IpAddr::from(*ip)))
            .collect()
    }

    /// The regions the fault touches.
    pub fn affected_regions(&self) -> Vec<(&'static str, IpAddr)> {
        let all = self.region_list();
        match self.affected {
            Affected::All => all,
            Affected::None => Vec::new(),
            Affected::Regions(n) => (0..n).map(|i| all[(self.seed + i) % all.len()]).collect(),
        }
    }

    /// Whether an edge is in front.
    pub fn has_edge(&self) -> bool {
        self.route != Route::Direct
    }

    /// What the report must say.
    pub fn expected(&self) -> Expected {
        let (code, kind) = self.kind.finding();
        let mut regions: Vec<String> = self
            .affected_regions()
            .iter()
            .map(|(r, _)| r.to_string())
            .collect();
        regions.sort();
        let mut clean: Vec<String> = self
            .region_list()
            .iter()
            .map(|(r, _)| r.to_string())
            .filter(|r| !regions.contains(r))
            .collect();
        clean.sort();
        // A WAF rule on the pull header refuses the edge's pulls too (they
        // carry it): the origin does block the edge, so naming that as
        // well is not false.
        let also = if self.kind == Kind::WafPullHeader && self.has_edge() {
            vec!["origin_blocks_edge"]
        } else {
            Vec::new()
        };
        Expected {
            code,
            kind,
            regions,
            clean,
            also,
        }
    }

    fn valid(&self) -> bool {
        match self.affected {
            Affected::All | Affected::None => true,
            Affected::Regions(n) => n < self.regions && (self.witness || 2 * n < self.regions),
        }
    }
}

/// The matrix: for every kind, a covering set of its valid combinations of
/// route × scheme × affected regions × witness × 3/4 regions, in which every
/// pair of dimension values that a valid case can have occurs (so every
/// value too), and at least two cases per kind.
pub fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for kind in KINDS {
        let mut all = Vec::new();
        for &route in kind.routes() {
            for &scheme in kind.schemes() {
                for &affected in kind.affected() {
                    for regions in [3, 4] {
                        for witness in [true, false] {
                            let case = Case {
                                kind,
                                route,
                                scheme,
                                regions,
                                affected,
                                witness,
                                seed: 0,
                            };
                            if case.valid() {
                                all.push(case);
                            }
                        }
                    }
                }
            }
        }
        // Every pair of dimension values that some valid case has must
        // occur in a picked case (greedy covering, as pairwise test design
        // does), and every single value with it.
        let achievable: Vec<String> = all.iter().flat_map(pairs).collect();
        let mut covered: Vec<String> = Vec::new();
        let mut picked: Vec<Case> = Vec::new();
        loop {
            let gain = |c: &Case| {
                let mut new = pairs(c);
                new.retain(|p| !covered.contains(p));
                new.sort();
                new.dedup();
                new.len()
            };
            let best = all
                .iter()
                .filter(|c| !picked.contains(c))
                .max_by_key(|c| (gain(c), std::cmp::Reverse(pairs(c))))
                .cloned();
            let Some(best) = best else { break };
            if gain(&best) == 0 && picked.len() >= 2 {
                break;
            }
            covered.extend(pairs(&best));
            picked.push(best);
        }
        debug_assert!(achievable.iter().all(|p| covered.contains(p)));
        for (i, mut case) in picked.into_iter().enumerate() {
            case.seed = i + out.len();
            out.push(case);
        }
    }
    out
}

/// The values of a case's dimensions, one by one and two by two.
fn pairs(c: &Case) -> Vec<String> {
    let values = [
        format!("route {:?}", c.route),
        format!("scheme {:?}", c.scheme),
        format!("affected {:?}", c.affected),
        format!("regions {}", c.regions),
        format!("witness {}", c.witness),
    ];
    let mut out: Vec<String> = values.to_vec();
    for (i, a) in values.iter().enumerate() {
        for b in &values[i + 1..] {
            out.push(format!("{a} & {b}"));
        }
    }
    out
}

/// The verdict on one case.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The case's name.
    pub name: String,
    /// Whether the report says what is true of the network.
    pub correct: bool,
    /// Findings that name a clean region (one per finding and region).
    pub false_findings: usize,
    /// The `FIGURE real …` line.
    pub line: String,
}

fn finding_label(f: &serde_json::Value) -> String {
    let kind = f["kind"]
        .as_str()
        .map(|k| format!("/{k}"))
        .unwrap_or_default();
    format!(
        "{}{kind}[{}]",
        f["code"].as_str().unwrap_or("?"),
        regions_of(f).join(",")
    )
}

/// Judges `report` against `expected`: returns what is wrong (empty when
/// the report is right) and the false findings on clean regions.
pub fn judge(expected: &Expected, report: &serde_json::Value) -> (Vec<String>, usize) {
    let mut wrong = Vec::new();
    let healthy = expected.code.is_empty();
    let status = if healthy { "healthy" } else { "faulty" };
    if report["status"] != status {
        wrong.push(format!("status {}", report["status"]));
    }
    let all: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .map(|f| f.iter().collect())
        .unwrap_or_default();
    let mine: Vec<&serde_json::Value> = findings(report, expected.code)
        .into_iter()
        .filter(|f| f["kind"].as_str() == expected.kind)
        .collect();
    let label = match expected.kind {
        Some(kind) => format!("{}/{kind}", expected.code),
        None => expected.code.to_string(),
    };
    match mine.as_slice() {
        _ if healthy => {}
        [] => wrong.push(format!("no {label} finding")),
        [one] => {
            let named = regions_of(one);
            if named != expected.regions {
                wrong.push(format!(
                    "{label} names [{}], expected [{}]",
                    named.join(","),
                    expected.regions.join(",")
                ));
            }
        }
        many => wrong.push(format!("{} {label} findings", many.len())),
    }
    for f in &all {
        let same = !healthy && f["code"] == expected.code && f["kind"].as_str() == expected.kind;
        let allowed = f["code"]
            .as_str()
            .is_some_and(|c| expected.also.contains(&c));
        if !same && !allowed {
            wrong.push(format!("unexpected {}", finding_label(f)));
        }
    }
    let false_findings = all
        .iter()
        .map(|f| {
            regions_of(f)
                .iter()
                .filter(|r| expected.clean.contains(r))
                .count()
        })
        .sum::<usize>();
    if false_findings > 0 {
        wrong.push(format!("{false_findings} finding(s) on clean regions"));
    }
    (wrong, false_findings)
}

/// What one case's run produced, for the judge and the figure line.
#[derive(Debug)]
pub struct Run {
    /// The report.
    pub report: serde_json::Value,
    /// How long `vantage diagnose` took.
    pub diagnose: Duration,
    /// Packets the case's iptables rules matched during the diagnosis.
    pub rule_hits: Option<u64>,
    /// Requests the origin's access log gained during the diagnosis.
    pub origin_requests: usize,
    /// Queries for the site that the affected regions' resolvers logged.
    pub resolver_queries: usize,
}

/// What curl must see from a region, to prove the network is what the case
/// says it is.
#[derive(Debug, Clone, PartialEq)]
enum CurlSees {
    /// This exit code.
    Exit(i32),
    /// Exit 0 and this status.
    Status(u16),
    /// Exit 0 and a body containing this text.
    Body(&'static str),
}

#[derive(Debug, Clone)]
struct LabCheck {
    from: IpAddr,
    to: Ipv4Addr,
    headers: Vec<String>,
    sees: CurlSees,
}

async fn curl_check(case: &Case, ca: &Path, check: &LabCheck) -> anyhow::Result<()> {
    let https = case.scheme == Scheme::Https;
    let port = if https { 443 } else { 80 };
    let scheme = if https { "https" } else { "http" };
    let mut args: Vec<String> = [
        "-sS",
        "--connect-timeout",
        "2",
        "--max-time",
        "4",
        "-w",
        "\n%{http_code}",
        "--interface",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(check.from.to_string());
    args.push("--cacert".into());
    args.push(ca.display().to_string());
    args.push("--resolve".into());
    args.push(format!("{SITE}:{port}:{}", check.to));
    for h in &check.headers {
        args.push("-H".into());
        args.push(h.clone());
    }
    args.push(format!("{scheme}://{SITE}/lab-check"));
    let out = run_cli(&"curl".into(), &args, Duration::from_secs(10)).await?;
    let exit = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let status: u16 = stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let ok = match &check.sees {
        CurlSees::Exit(want) => exit == *want,
        CurlSees::Status(want) => exit == 0 && status == *want,
        CurlSees::Body(text) => exit == 0 && stdout.contains(text),
    };
    if !ok {
        bail!(
            "lab check: curl from {} to {} expected {:?}, got exit {exit} status {status}: {}",
            check.from,
            check.to,
            check.sees,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The first origin member's address that has the fault.
fn bad_origin(case: &Case) -> Ipv4Addr {
    if case.route == Route::Group {
        ORIGIN_B
    } else {
        ORIGIN_A
    }
}

fn lab_checks(case: &Case) -> Vec<LabCheck> {
    let affected = case.affected_regions();
    let clean: Vec<(&str, IpAddr)> = case
        .region_list()
        .into_iter()
        .filter(|r| !affected.contains(r))
        .collect();
    let first = affected
        .first()
        .or(case.region_list().first())
        .map(|(_, ip)| *ip)
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let check = |from, to, sees| LabCheck {
        from,
        to,
        headers: Vec::new(),
        sees,
    };
    let bad = bad_origin(case);
    let mut checks = Vec::new();
    if case.kind.is_carrier() {
        let to = if case.route == Route::Edge {
            EDGE_A
        } else {
            ORIGIN_A
        };
        let sees = match case.kind {
            Kind::InjectBlockPage => Some(CurlSees::Body(BLOCK_TITLE)),
            Kind::InjectRedirect => Some(CurlSees::Status(302)),
            Kind::DpiHostReset => Some(CurlSees::Exit(56)),
            Kind::SniReset => Some(CurlSees::Exit(35)),
            Kind::Blackhole => Some(CurlSees::Exit(28)),
            Kind::TlsIntercept => Some(CurlSees::Exit(60)),
            _ => None,
        };
        if let Some(sees) = sees {
            checks.push(check(first, to, sees));
        }
        if let Some((_, from)) = clean.first() {
            checks.push(check(*from, to, CurlSees::Body(ORIGIN_TITLE)));
        }
        return checks;
    }
    let sees = match case.kind {
        Kind::Healthy => CurlSees::Body(ORIGIN_TITLE),
        Kind::Down503 => CurlSees::Status(503),
        Kind::Down444 => CurlSees::Exit(52),
        Kind::DownStopped => CurlSees::Exit(7),
        Kind::DownFirewallDrop => CurlSees::Exit(28),
        Kind::DownFirewallReset => CurlSees::Exit(56),
        // The slow application answers after 18 s: curl gives up at 4 s.
        Kind::Slow => CurlSees::Exit(28),
        Kind::LimitReq | Kind::EdgeNodeBroken => CurlSees::Body(ORIGIN_TITLE),
        // The application behind this origin serves its own page.
        Kind::LimitConn => CurlSees::Status(200),
        Kind::WafPullHeader => {
            checks.push(LabCheck {
                from: first,
                to: bad,
                headers: vec!["EO-Connecting-IP: 198.51.100.10".into()],
                sees: CurlSees::Status(403),
            });
            if case.has_edge() {
                // The edge's pulls carry the header: the WAF refuses them.
                checks.push(check(first, EDGE_A, CurlSees::Status(403)));
            }
            CurlSees::Body(ORIGIN_TITLE)
        }
        Kind::AllowlistNginx => {
            checks.push(check(first, EDGE_A, CurlSees::Status(403)));
            CurlSees::Body(ORIGIN_TITLE)
        }
        Kind::AllowlistFirewall => {
            checks.push(check(first, EDGE_A, CurlSees::Status(521)));
            CurlSees::Body(ORIGIN_TITLE)
        }
        Kind::TlsSelfSigned | Kind::TlsWrongName => CurlSees::Exit(60),
        Kind::TlsPlainOn443 => CurlSees::Exit(35),
        _ => return checks,
    };
    checks.push(check(first, bad, sees));
    if case.kind == Kind::EdgeNodeBroken {
        checks.push(check(first, EDGE_B, CurlSees::Status(521)));
        checks.push(check(first, EDGE_A, CurlSees::Body(ORIGIN_TITLE)));
    }
    if case.route == Route::Group {
        checks.push(check(first, ORIGIN_A, CurlSees::Body(ORIGIN_TITLE)));
    }
    checks
}

fn origin_mode(case: &Case, app: Option<SocketAddr>) -> anyhow::Result<OriginMode> {
    let app = || app.context("the kind needs an application behind the origin");
    Ok(match case.kind {
        Kind::Down503 => OriginMode::Status503,
        Kind::Down444 => OriginMode::Close444,
        Kind::DownStopped => OriginMode::Stopped,
        Kind::Slow => OriginMode::SlowUpstream { upstream: app()? },
        Kind::LimitReq => OriginMode::LimitReq,
        Kind::LimitConn => OriginMode::LimitConn { upstream: app()? },
        Kind::WafPullHeader => OriginMode::WafPullHeader,
        Kind::AllowlistNginx => OriginMode::Allowlist(
            // The operator allowed the test machines, not the CDN.
            REGIONS.iter().map(|(_, ip)| IpAddr::from(*ip)).collect(),
        ),
        Kind::TlsSelfSigned => OriginMode::SelfSignedCert,
        Kind::TlsWrongName => OriginMode::WrongNameCert,
        Kind::TlsPlainOn443 => OriginMode::PlainOn443,
        _ => OriginMode::Healthy,
    })
}

fn rules(case: &Case) -> Vec<Rule> {
    let bad = IpAddr::V4(bad_origin(case));
    let dest = |route: Route| -> Option<IpAddr> {
        match route {
            Route::Edge => Some(EDGE_A.into()),
            Route::Both => None,
            _ => Some(ORIGIN_A.into()),
        }
    };
    let mut rules = Vec::new();
    match case.kind {
        Kind::DownFirewallDrop => rules.push(Rule::OriginDrop { origin: bad }),
        Kind::DownFirewallReset => rules.push(Rule::OriginResetRequests { origin: bad }),
        Kind::AllowlistFirewall => rules.push(Rule::OriginRefuse {
            source: PULL_IP.into(),
            origin: bad,
        }),
        _ => {}
    }
    for (_, source) in case.affected_regions() {
        match case.kind {
            Kind::DpiHostReset => rules.push(Rule::HostReset {
                source,
                dest: dest(case.route),
                host: SITE.into(),
            }),
            Kind::SniReset => rules.push(Rule::SniReset {
                source,
                dest: dest(case.route),
                host: SITE.into(),
            }),
            Kind::Blackhole => {
                let dests: Vec<Ipv4Addr> = match case.route {
                    Route::Edge => vec![EDGE_A],
                    Route::Both => vec![ORIGIN_A, EDGE_A],
                    _ => vec![ORIGIN_A],
                };
                for d in dests {
                    rules.push(Rule::Blackhole {
                        source,
                        dest: d.into(),
                    });
                }
            }
            Kind::InjectBlockPage | Kind::InjectRedirect | Kind::TlsIntercept => {
                let (port, to) = match case.kind {
                    Kind::InjectBlockPage => (80, BLOCK_PAGE_PORT),
                    Kind::InjectRedirect => (80, REDIRECT_PORT),
                    _ => (443, 443),
                };
                rules.push(Rule::Divert {
                    source,
                    dest: dest(case.route),
                    port,
                    to: SocketAddr::from((CARRIER_IP, to)),
                });
            }
            _ => {}
        }
    }
    rules
}

/// Builds the case's network in the current namespace (`ns`), runs
/// `vantage diagnose` with the CLI's default flags and returns the report.
pub async fn run_case(ns: &str, case: &Case) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    for sub in ["pki", "origin", "edge", "carrier", "data"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    let pki = LabPki::generate(&root.join("pki"))?;
    let https = case.scheme == Scheme::Https;

    // The application behind the origin, where the kind has one.
    let app = match case.kind {
        Kind::Slow => Some(
            Fixture::builder(Fault::SlowFirstByte(SLOW_TTFB))
                .spawn()
                .await?,
        ),
        Kind::LimitConn => Some(
            Fixture::builder(Fault::SlowFirstByte(LIMIT_CONN_HOLD))
                .spawn()
                .await?,
        ),
        _ => None,
    };
    let mode = origin_mode(case, app.as_ref().map(Fixture::addr))?;
    let members = if case.route == Route::Group {
        vec![
            OriginMember {
                ip: ORIGIN_A,
                mode: OriginMode::Healthy,
            },
            OriginMember { ip: ORIGIN_B, mode },
        ]
    } else {
        vec![OriginMember { ip: ORIGIN_A, mode }]
    };
    let origin_dir = root.join("origin");
    let origin = Nginx::start(
        "origin",
        &origin_dir,
        &nginx::origin_conf(&origin_dir, &pki, &members),
        nginx::origin_listens(&members),
    )
    .await?;

    let edge_nodes: Vec<(Ipv4Addr, bool)> = if case.kind == Kind::EdgeNodeBroken {
        vec![(EDGE_A, false), (EDGE_B, true)]
    } else {
        vec![(EDGE_A, false)]
    };
    let edge = if case.has_edge() {
        let setup = EdgeSetup {
            nodes: edge_nodes.clone(),
            origins: members.iter().map(|m| m.ip).collect(),
            https_pull: https,
        };
        let edge_dir = root.join("edge");
        Some(
            Nginx::start(
                "edge",
                &edge_dir,
                &nginx::edge_conf(&edge_dir, &pki, &setup),
                nginx::edge_listens(&setup),
            )
            .await?,
        )
    } else {
        None
    };
    let carrier = if matches!(
        case.kind,
        Kind::InjectBlockPage | Kind::InjectRedirect | Kind::TlsIntercept | Kind::DnsLie
    ) {
        let carrier_dir = root.join("carrier");
        Some(
            Nginx::start(
                "carrier",
                &carrier_dir,
                &nginx::carrier_conf(&carrier_dir, &pki, ORIGIN_A),
                nginx::carrier_listens(),
            )
            .await?,
        )
    } else {
        None
    };

    // One resolver per region: the truth is the edge (the site's name points
    // at the CDN), or the origin when there is no CDN in front.
    let truth = if case.has_edge() { EDGE_A } else { ORIGIN_A };
    let affected = case.affected_regions();
    let mut resolvers = Vec::new();
    for (region, source) in case.region_list() {
        let lies = case.kind == Kind::DnsLie && affected.iter().any(|(r, _)| *r == region);
        let answer = if lies { CARRIER_IP } else { truth };
        resolvers.push(Dnsmasq::start(super::resolver_ip(source), SITE, answer).await?);
    }

    // Eight cases at a time put about a hundred debug-build processes on
    // the machine; with 1 s heartbeats a 3 s scheduling stall there ends
    // every agent's session at once (seen once in 153 cases on 2 cores).
    // No case here loses its coordinator link on purpose, so a 2 s
    // heartbeat changes no verdict and only widens that margin.
    let coordinator =
        CoordinatorProcess::start(&root.join("data"), "127.0.0.1:0".parse()?, MATRIX_HEARTBEAT)
            .await?;
    let mut states = Vec::new();
    let mut agents: Vec<ChildProcess> = Vec::new();
    let ca = pki.ca.display().to_string();
    for (region, source) in case.region_list() {
        let token = coordinator.create_token(region).await?;
        let state = tempfile::tempdir()?;
        let name = format!("{region}-1");
        let ip = source.to_string();
        let dns = format!("{}:53", super::resolver_ip(source));
        let args = [
            "--token",
            &token,
            "--name",
            &name,
            "--bind-ip",
            &ip,
            "--dns-server",
            &dns,
            "--cacert",
            &ca,
        ];
        agents.push(spawn_agent_process(state.path(), &args)?);
        states.push(state);
    }
    for (agent, (region, _)) in agents.iter_mut().zip(case.region_list()) {
        wait_agent_connected(agent)
            .await
            .with_context(|| format!("agent {region}"))?;
    }
    let witness = if case.witness {
        let state = tempfile::tempdir()?;
        let witness =
            start_witness_process(&coordinator, &origin.access_log(), state.path(), &[]).await?;
        states.push(state);
        Some(witness)
    } else {
        None
    };

    let rules = rules(case);
    for rule in &rules {
        firewall::apply(ns, rule)?;
    }
    for check in lab_checks(case) {
        curl_check(case, &pki.ca, &check).await?;
    }
    let hits_before = if rules.is_empty() {
        None
    } else {
        Some(firewall::hits(ns, &rules)?)
    };
    let logged_before = origin.access_lines().len();

    let scheme = if https { "https" } else { "http" };
    let mut args: Vec<String> = vec![
        "--data-dir".into(),
        root.join("data").display().to_string(),
        "diagnose".into(),
        format!("{scheme}://{SITE}/"),
        "--origin".into(),
        members
            .iter()
            .map(|m| m.ip.to_string())
            .collect::<Vec<_>>()
            .join(","),
    ];
    if case.has_edge() {
        args.push("--edge".into());
        args.push(
            edge_nodes
                .iter()
                .map(|(ip, _)| ip.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    args.extend(["--regions".into(), "all".into(), "--json".into()]);
    let started = Instant::now();
    let out = run_cli(&bin_path("vantage"), &args, DIAGNOSE_BOUND).await?;
    let diagnose = started.elapsed();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "diagnose printed no JSON (exit {:?}); stderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let rule_hits = match hits_before {
        Some(before) => Some(firewall::hits(ns, &rules)?.saturating_sub(before)),
        None => None,
    };
    let origin_requests = origin.access_lines().len().saturating_sub(logged_before);
    let resolver_queries = case
        .region_list()
        .iter()
        .zip(&resolvers)
        .filter(|((region, _), _)| affected.iter().any(|(r, _)| r == region))
        .map(|(_, resolver)| resolver.queries(SITE))
        .sum();
    drop((
        witness,
        agents,
        coordinator,
        resolvers,
        carrier,
        edge,
        origin,
        app,
        states,
    ));
    Ok(Run {
        report,
        diagnose,
        rule_hits,
        origin_requests,
        resolver_queries,
    })
}

fn summary_of(report: &serde_json::Value) -> String {
    let found: Vec<String> = report["findings"]
        .as_array()
        .map(|f| f.iter().map(finding_label).collect())
        .unwrap_or_default();
    let missing: Vec<String> = report["missing"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut s = format!(
        "status {}, findings [{}]",
        report["status"].as_str().unwrap_or("?"),
        found.join(" ")
    );
    if !missing.is_empty() {
        s.push_str(&format!(", missing [{}]", missing.join("; ")));
    }
    s
}

/// Runs one case in a fresh namespace and judges it.
pub fn run_and_judge(case: &Case) -> Judged {
    let name = case.name();
    let expected = case.expected();
    let started = Instant::now();
    let outcome = crate::netns::Netns::create().map(|netns| {
        let owned = case.clone();
        let result = netns.block_on(move |ns| async move {
            tokio::time::timeout(CASE_BOUND, run_case(&ns, &owned))
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!("the case took longer than {CASE_BOUND:?}"))
                })
        });
        drop(netns);
        result
    });
    let wall = started.elapsed().as_secs_f64();
    let run = match outcome {
        Ok(Ok(Ok(run))) => Ok(run),
        Ok(Ok(Err(e))) => Err(format!("{e:#}")),
        Ok(Err(panic)) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())),
        Err(e) => Err(format!("namespace: {e:#}")),
    };
    let want = match expected.kind {
        _ if expected.code.is_empty() => "no finding".to_string(),
        Some(kind) => format!("{}/{kind}", expected.code),
        None => expected.code.to_string(),
    };
    match run {
        Ok(run) => {
            if let Ok(dir) = std::env::var("VANTAGE_REAL_REPORTS") {
                let file = Path::new(&dir).join(format!("{}.json", name.replace('/', "_")));
                let _ = std::fs::create_dir_all(&dir)
                    .and_then(|()| std::fs::write(&file, run.report.to_string()));
            }
            let (wrong, false_findings) = judge(&expected, &run.report);
            let verdict = if wrong.is_empty() {
                "correct".to_string()
            } else {
                format!("wrong ({})", wrong.join("; "))
            };
            let mut hits = run
                .rule_hits
                .map(|h| format!(", rule hits {h}"))
                .unwrap_or_default();
            if case.kind == Kind::DnsLie {
                hits.push_str(&format!(
                    ", lying resolvers asked {} times",
                    run.resolver_queries
                ));
            }
            Judged {
                correct: wrong.is_empty(),
                false_findings,
                line: format!(
                    "FIGURE real {name}: {verdict} — expected {want}[{}]; got {}; report in {:.1} s ({:.2}× edge timeout + 1 s){hits}, origin logged {}, case {wall:.0} s",
                    expected.regions.join(","),
                    summary_of(&run.report),
                    run.diagnose.as_secs_f64(),
                    run.diagnose.as_secs_f64() / (super::EDGEONE_TIMEOUT.as_secs_f64() + 1.0),
                    run.origin_requests,
                ),
                name,
            }
        }
        Err(e) => Judged {
            correct: false,
            false_findings: 0,
            line: format!(
                "FIGURE real {name}: wrong (no report: {}) — expected {want}[{}]; case {wall:.0} s",
                e.replace('\n', " | "),
                expected.regions.join(",")
            ),
            name,
        },
    }
}

/// Runs `cases` with `jobs` cases at a time (each in its own namespace),
/// printing each case's `FIGURE real` line as it finishes; returns the
/// verdicts in case order.
pub fn run_matrix(cases: &[Case], jobs: usize) -> Vec<Judged> {
    let queue: Mutex<VecDeque<(usize, Case)>> =
        Mutex::new(cases.iter().cloned().enumerate().collect());
    let results: Arc<Mutex<Vec<(usize, Judged)>>> = Arc::default();
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some((i, case)) = next else { break };
                let judged = run_and_judge(&case);
                eprintln!("{}", judged.line);
                if let Ok(mut r) = results.lock() {
                    r.push((i, judged));
                }
            });
        }
    });
    let mut results = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, j)| j).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_tested_at_more_than_one_point_and_every_value_occurs() {
        let cases = cases();
        for kind in KINDS {
            let mine: Vec<&Case> = cases.iter().filter(|c| c.kind == kind).collect();
            assert!(mine.len() >= 2, "{kind:?}: {mine:?}");
            for route in kind.routes() {
                assert!(mine.iter().any(|c| c.route == *route), "{kind:?} {route:?}");
            }
            for scheme in kind.schemes() {
                assert!(mine.iter().any(|c| c.scheme == *scheme), "{kind:?}");
            }
            for affected in kind.affected() {
                assert!(mine.iter().any(|c| c.affected == *affected), "{kind:?}");
            }
            assert!(mine.iter().any(|c| c.witness) && mine.iter().any(|c| !c.witness));
            assert!(mine.iter().any(|c| c.regions == 3) && mine.iter().any(|c| c.regions == 4));
        }
        eprintln!("{} cases", cases.len());
        let mut names: Vec<String> = cases.iter().map(Case::name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cases.len(), "names are unique");
    }

    #[test]
    fn without_a_witness_a_carrier_touches_a_strict_minority() {
        for case in cases().iter().filter(|c| c.kind.is_carrier() && !c.witness) {
            let Affected::Regions(n) = case.affected else {
                panic!("{case:?}")
            };
            assert!(2 * n < case.regions, "{case:?}");
        }
    }

    #[test]
    fn the_judge_wants_exactly_the_expected_regions_and_nothing_on_clean_ones() {
        let expected = Expected {
            code: "carrier_interference",
            kind: Some("tcp_reset"),
            regions: vec!["ap".into()],
            clean: vec!["eu".into(), "us".into()],
            also: Vec::new(),
        };
        let right = serde_json::json!({"status": "faulty", "findings": [
            {"code": "carrier_interference", "kind": "tcp_reset", "regions": ["ap"]}]});
        assert_eq!(judge(&expected, &right), (Vec::<String>::new(), 0));
        let wrong = serde_json::json!({"status": "faulty", "findings": [
            {"code": "carrier_interference", "kind": "tls_interception", "regions": ["ap"]},
            {"code": "origin_down", "kind": "reset", "regions": ["eu"]}]});
        let (problems, false_findings) = judge(&expected, &wrong);
        assert_eq!(false_findings, 1);
        assert_eq!(problems.len(), 4, "{problems:?}");
        let healthy = serde_json::json!({"status": "healthy", "findings": []});
        assert_eq!(judge(&expected, &healthy).0.len(), 2);
        let clean = Expected {
            code: "",
            kind: None,
            regions: Vec::new(),
            clean: vec!["ap".into(), "eu".into(), "us".into()],
            also: Vec::new(),
        };
        assert_eq!(judge(&clean, &healthy), (Vec::<String>::new(), 0));
        let (problems, false_findings) = judge(&clean, &wrong);
        assert_eq!(false_findings, 2, "{problems:?}");
    }
}
