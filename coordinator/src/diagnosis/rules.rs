//! The diagnosis rules, one small function per finding (DESIGN §5 table).
//!
//! Observations are grouped per region, route, variant and address; a group's
//! verdict is "failed" when most of its attempts failed (one flaky attempt out
//! of three is not a fault), else "fine" with a successful attempt as its
//! representative.

use std::collections::BTreeSet;

use vantage_proto::domain::{Outcome, Route};

use super::compare::same_page;
use super::curl;
use super::{
    Confidence, Evidence, Finding, FindingCode, FindingKind, Observation, RegionEvidence, Target,
    Variant, WitnessEvidence,
};

/// The evidence with the live regions picked out.
pub(crate) struct Ctx<'a> {
    ev: &'a Evidence,
    live: Vec<&'a RegionEvidence>,
}

impl<'a> Ctx<'a> {
    /// Regions that sent nothing are not live: they are neither suspects nor
    /// controls. A region that did not finish still counts with what it sent.
    pub(crate) fn new(ev: &'a Evidence) -> Self {
        let live = ev
            .regions
            .iter()
            .filter(|r| !r.observations.is_empty())
            .collect();
        Ctx { ev, live }
    }

    fn target(&self) -> &'a Target {
        &self.ev.target
    }

    fn witness(&self) -> Option<&'a WitnessEvidence> {
        self.ev.witness.as_ref()
    }

    fn edge_timeout_ms(&self) -> f64 {
        self.ev.target.edge_timeout.as_secs_f64() * 1000.0
    }

    /// The origin itself served this exact page (same status, same body) to
    /// a direct probe in one of the trusted `regions` (the controls): a
    /// route or region that shows it relays the origin's own answer (a rate
    /// limit's refusal page, say), it is neither an injected page nor one the
    /// edge made. Only the controls count: two regions behind the same
    /// injector see the same injected page.
    fn origin_page_in(&self, o: &Observation, regions: &[&str]) -> bool {
        o.status.is_some()
            && !o.body_sha256.is_empty()
            && self
                .live
                .iter()
                .filter(|r| regions.contains(&r.region.as_str()))
                .flat_map(|r| r.observations.iter())
                .any(|d| {
                    d.route == Route::Direct
                        && d.status == o.status
                        && d.body_sha256 == o.body_sha256
                })
    }

    /// `None` without a witness, else whether it saw any of these requests.
    fn witness_saw(&self, obs: &[&Observation]) -> Option<bool> {
        self.witness().map(|w| obs.iter().any(|o| w.saw(&o.nonce)))
    }

    /// Observations of `route`/`variant`, grouped per address (in order of
    /// first appearance) and then per live region.
    fn groups(&self, route: Route, variant: Variant) -> Vec<Group<'a>> {
        let mut addresses: Vec<&'a str> = Vec::new();
        for region in &self.live {
            for o in &region.observations {
                if o.route == route
                    && o.variant == variant
                    && !addresses.contains(&o.address.as_str())
                {
                    addresses.push(o.address.as_str());
                }
            }
        }
        let mut out = Vec::new();
        for address in addresses {
            for region in &self.live {
                let obs: Vec<&'a Observation> = region
                    .observations
                    .iter()
                    .filter(|o| o.route == route && o.variant == variant && o.address == address)
                    .collect();
                if let Some(verdict) = verdict(&obs) {
                    out.push(Group {
                        region: region.region.as_str(),
                        address,
                        route,
                        variant,
                        obs,
                        verdict,
                    });
                }
            }
        }
        out
    }

    /// One region's observations of `route`/`variant` to `address`.
    fn observations(
        &self,
        region: &str,
        route: Route,
        variant: Variant,
        address: &str,
    ) -> Vec<&'a Observation> {
        self.live
            .iter()
            .filter(|r| r.region == region)
            .flat_map(|r| r.observations.iter())
            .filter(|o| o.route == route && o.variant == variant && o.address == address)
            .collect()
    }
}

/// How a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No (complete) HTTP answer.
    Net(Outcome),
    /// An HTTP answer with a 5xx status.
    Http(u16),
}

/// What makes two failures "the same way": the outcome, or any 5xx (502
/// and 503 both are `http_5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureClass {
    Net(Outcome),
    Http5xx,
}

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureClass::Net(o) => f.write_str(o.as_str()),
            FailureClass::Http5xx => f.write_str("http_5xx"),
        }
    }
}

impl Failure {
    fn class(self) -> FailureClass {
        match self {
            Failure::Net(o) => FailureClass::Net(o),
            Failure::Http(_) => FailureClass::Http5xx,
        }
    }
}

/// A 4xx is an answer, not a failure: only transport failures and 5xx count.
fn failure(o: &Observation) -> Option<Failure> {
    if o.outcome != Outcome::Ok {
        return Some(Failure::Net(o.outcome));
    }
    match o.status {
        Some(s) if s >= 500 => Some(Failure::Http(s)),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
enum Verdict<'a> {
    Fine(&'a Observation),
    Failed(Failure, &'a Observation),
}

impl<'a> Verdict<'a> {
    fn rep(self) -> &'a Observation {
        match self {
            Verdict::Fine(o) | Verdict::Failed(_, o) => o,
        }
    }

    fn failure(self) -> Option<Failure> {
        match self {
            Verdict::Fine(_) => None,
            Verdict::Failed(f, _) => Some(f),
        }
    }
}

/// The statuses a rate limit answers with (nginx's `limit_req` and
/// `limit_conn` default to 503; many limiters send 429).
fn is_throttle_status(status: Option<u16>) -> bool {
    matches!(status, Some(429 | 503))
}

/// Some attempts succeeded and every other one was refused with a rate
/// limit's status: a throttled origin refuses whichever requests happen to
/// overlap, at random, so these refusals say nothing about this route or
/// these headers (the rate-limit rule judges them on the burst).
fn throttled(obs: &[&Observation], refused: &[&Observation]) -> bool {
    let ok = obs
        .iter()
        .any(|o| o.outcome == Outcome::Ok && o.status.is_some_and(|s| s < 400));
    ok && !refused.is_empty() && refused.iter().all(|o| is_throttle_status(o.status))
}

/// Most attempts failed → the most common failure; else fine. Attempts
/// that only a rate limit refused, beside a success, are fine.
fn verdict<'a>(obs: &[&'a Observation]) -> Option<Verdict<'a>> {
    let failures: Vec<(Failure, &'a Observation)> = obs
        .iter()
        .filter_map(|o| failure(o).map(|f| (f, *o)))
        .collect();
    let refused: Vec<&Observation> = failures.iter().map(|(_, o)| *o).collect();
    if failures.len() * 2 > obs.len() && !throttled(obs, &refused) {
        let count = |k: FailureClass| failures.iter().filter(|(f, _)| f.class() == k).count();
        let mut best = failures.first().copied()?;
        for &(f, o) in &failures {
            if count(f.class()) > count(best.0.class()) {
                best = (f, o);
            }
        }
        Some(Verdict::Failed(best.0, best.1))
    } else {
        obs.iter()
            .find(|o| failure(o).is_none())
            .map(|o| Verdict::Fine(o))
    }
}

/// Two verdicts are the same answer: the same page, or the same failure kind.
fn same_answer(a: Verdict<'_>, b: Verdict<'_>) -> bool {
    match (a, b) {
        (Verdict::Fine(x), Verdict::Fine(y)) => same_page(x, y),
        (Verdict::Failed(f, _), Verdict::Failed(g, _)) => f.class() == g.class(),
        _ => false,
    }
}

struct Group<'a> {
    region: &'a str,
    address: &'a str,
    route: Route,
    variant: Variant,
    obs: Vec<&'a Observation>,
    verdict: Verdict<'a>,
}

impl Group<'_> {
    fn line(&self) -> String {
        format!(
            "{}: {}/{} to {}: {}",
            self.region,
            self.route.as_str(),
            self.variant.as_str(),
            addr_label(self.address),
            describe(self.verdict.rep())
        )
    }
}

/// What a witness can say about a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Witness {
    /// It ran and corroborates the finding.
    Agrees,
    /// It did not run, and would have helped.
    Absent,
    /// The finding does not depend on it.
    Irrelevant,
}

/// High needs ≥ 3 regions and no missing witness; 2 regions (or a missing
/// witness) is medium; a single region is low.
fn confidence(regions: usize, witness: Witness) -> Confidence {
    match (regions, witness) {
        (0 | 1, _) => Confidence::Low,
        (2, _) | (_, Witness::Absent) => Confidence::Medium,
        _ => Confidence::High,
    }
}

fn addr_label(address: &str) -> String {
    if address.is_empty() {
        "the local resolver's address".to_string()
    } else {
        address.to_string()
    }
}

/// One observation in a line of evidence.
fn describe(o: &Observation) -> String {
    let mut s = match (o.outcome, o.status) {
        (Outcome::Ok, Some(st)) => format!("HTTP {st}"),
        (oc, Some(st)) => format!(
            "{} after HTTP {st} (curl exit {})",
            oc.as_str(),
            o.curl_exit
        ),
        (oc, None) => format!("{} (curl exit {})", oc.as_str(), o.curl_exit),
    };
    match o.ttfb_ms() {
        Some(t) => s.push_str(&format!(", ttfb {t:.0} ms")),
        None => s.push_str(&format!(", after {:.0} ms", o.total_ms())),
    }
    if o.body_bytes > 0 {
        s.push_str(&format!(", {} bytes", o.body_bytes));
    }
    if !o.title.is_empty() {
        s.push_str(&format!(", title {:?}", o.title));
    }
    if !o.edge_request_id.is_empty() {
        s.push_str(&format!(", request id {}", o.edge_request_id));
    }
    if !o.error.is_empty() {
        s.push_str(&format!(" ({})", o.error));
    }
    s
}

fn distinct<'s>(items: impl IntoIterator<Item = &'s str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.iter().any(|o| o == i) {
            out.push(i.to_string());
        }
    }
    out
}

fn secs_ceil(ms: f64) -> u64 {
    // Non-negative and far below u64::MAX for any real timing.
    (ms / 1000.0).ceil().max(1.0) as u64
}

// ---------------------------------------------------------------- missing

/// Every region that did not finish its plan, as `region: why`.
pub(crate) fn unfinished(ctx: &Ctx<'_>) -> Vec<String> {
    ctx.ev
        .regions
        .iter()
        .filter(|r| r.lost || r.observations.is_empty())
        .map(|r| {
            let why = if !r.lost_reason.is_empty() {
                r.lost_reason.clone()
            } else if r.lost {
                format!("agent {} lost before it finished", r.agents.join(", "))
            } else {
                "no observations came back".to_string()
            };
            let sent = if r.observations.is_empty() {
                String::new()
            } else {
                format!(" ({} results it sent are used)", r.observations.len())
            };
            format!("{}: {why}{sent}", r.region)
        })
        .collect()
}

/// Regions that finished and have a direct baseline: the ones a verdict
/// can rest on.
fn decisive<'a>(ctx: &Ctx<'a>) -> Vec<&'a str> {
    ctx.live
        .iter()
        .filter(|r| !r.lost)
        .filter(|r| {
            r.observations
                .iter()
                .any(|o| o.route == Route::Direct && o.variant == Variant::Baseline)
        })
        .map(|r| r.region.as_str())
        .collect()
}

/// What is missing for a verdict; empty when the finished regions are
/// decisive on their own.
pub(crate) fn insufficient(ctx: &Ctx<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if ctx.ev.regions.is_empty() {
        out.push("no region took part in the campaign".to_string());
    }
    let any_direct = ctx.live.iter().any(|r| {
        r.observations
            .iter()
            .any(|o| o.route == Route::Direct && o.variant == Variant::Baseline)
    });
    if !ctx.live.is_empty() && !any_direct {
        out.push("no direct/baseline probe came back from any region".to_string());
    }
    let decisive = decisive(ctx);
    if decisive.len() < 2 {
        out.push(format!(
            "at least 2 regions that finished with a direct baseline are needed to tell regional interference from an origin fault; {} did",
            decisive.len()
        ));
    }
    out
}

/// One sentence for the report's top: the verdict, and, when regions did
/// not finish, which regions it rests on.
pub(crate) fn summary(
    ctx: &Ctx<'_>,
    status: super::Status,
    findings: &[Finding],
    unfinished: usize,
) -> String {
    let decisive = decisive(ctx);
    let verdict = match status {
        super::Status::Healthy => "healthy".to_string(),
        super::Status::Faulty => format!(
            "faulty: {}",
            distinct(findings.iter().map(|f| f.code.as_str())).join(", ")
        ),
        super::Status::Inconclusive => "inconclusive".to_string(),
    };
    if unfinished == 0 {
        return format!("{verdict} ({} regions)", decisive.len());
    }
    format!(
        "{verdict}, from the {} region{} that finished ({}); {unfinished} did not finish (see missing)",
        decisive.len(),
        if decisive.len() == 1 { "" } else { "s" },
        decisive.join(", ")
    )
}

// ---------------------------------------------------------------- all

/// Every finding, in a stable order: interference, origin, per-region origin
/// rules, edge.
pub(crate) fn all_findings(ctx: &Ctx<'_>) -> Vec<Finding> {
    let mut hits = Vec::new();
    for (route, variant) in [
        (Route::Direct, Variant::Baseline),
        (Route::Edge, Variant::Baseline),
    ] {
        let groups = ctx.groups(route, variant);
        for address in distinct(groups.iter().map(|g| g.address)) {
            let at: Vec<&Group<'_>> = groups.iter().filter(|g| g.address == address).collect();
            hits.extend(interference_at(ctx, &at));
        }
    }
    let interfered: BTreeSet<(String, &str, String)> = hits
        .iter()
        .map(|h| (h.region.clone(), h.route.as_str(), h.address.clone()))
        .collect();
    let dns_hits = dns_tampering(ctx);
    // A region whose resolver lies sends its resolver-routed edge requests
    // wherever the lie points: that failure is the DNS tampering's, not a
    // second kind of interference.
    hits.retain(|h| {
        !(h.route == Route::Edge
            && h.address.is_empty()
            && dns_hits.iter().any(|d| d.region == h.region))
    });
    hits.extend(dns_hits);

    let clean = |route, variant| -> Vec<Group<'_>> {
        ctx.groups(route, variant)
            .into_iter()
            .filter(|g| {
                !interfered.contains(&(
                    g.region.to_string(),
                    g.route.as_str(),
                    g.address.to_string(),
                ))
            })
            .collect()
    };
    let direct = clean(Route::Direct, Variant::Baseline);
    let edge = clean(Route::Edge, Variant::Baseline);

    let mut findings = interference_findings(ctx, &hits);
    let mut origin_faulty = false;
    for address in distinct(direct.iter().map(|g| g.address)) {
        let at: Vec<&Group<'_>> = direct.iter().filter(|g| g.address == address).collect();
        let found = origin_tls_error(ctx, &at)
            .or_else(|| origin_down(ctx, &at))
            .or_else(|| origin_slow(ctx, &at));
        origin_faulty |= found.is_some();
        findings.extend(found);
    }
    findings.extend(origin_rate_limited(ctx, &direct));
    let waf = origin_blocks_cdn_headers(ctx, &direct);
    // A WAF on the pull headers refuses the edge's pulls too: that refusal
    // is the WAF finding's, not a second one about the pull addresses.
    let headers_blocked = waf.is_some();
    findings.extend(waf);
    if !origin_faulty && direct_fine(ctx, &direct) {
        if !headers_blocked {
            findings.extend(origin_blocks_edge(ctx, &direct, &edge));
        }
        findings.extend(edge_fault(ctx, &edge));
    }
    findings
}

// ---------------------------------------------------------------- interference

/// One region's unexpected answer.
struct Hit<'a> {
    kind: FindingKind,
    region: String,
    route: Route,
    address: String,
    line: String,
    controls: Vec<String>,
    control_line: String,
    rep: &'a Observation,
    witness: Witness,
}

/// What an unexpected answer says about the path.
fn interference_kind(v: Verdict<'_>) -> Option<FindingKind> {
    match v {
        Verdict::Fine(_) | Verdict::Failed(Failure::Http(_), _) => Some(FindingKind::HttpInjection),
        Verdict::Failed(Failure::Net(o), _) => match o {
            Outcome::Reset
            | Outcome::EmptyReply
            | Outcome::ConnectRefused
            | Outcome::SendFailed => Some(FindingKind::TcpReset),
            Outcome::ConnectTimeout
            | Outcome::ResponseTimeout
            | Outcome::BodyTimeout
            | Outcome::NetworkUnreachable => Some(FindingKind::Blackhole),
            // The kind follows the packet (DESIGN §5): a handshake the
            // peer cut is SNI filtering, one that never got an answer a
            // blackhole, and interception needs a completed handshake with
            // a certificate that fails where the controls' verified.
            Outcome::TlsHandshakeFailed => Some(match v.rep().peer_close {
                Some(_) => FindingKind::TcpReset,
                None if v.rep().curl_exit == 28 => FindingKind::Blackhole,
                None => FindingKind::HttpInjection,
            }),
            Outcome::TlsCertInvalid => Some(FindingKind::TlsInterception),
            Outcome::MalformedResponse | Outcome::Truncated => Some(FindingKind::HttpInjection),
            Outcome::DnsFailure => Some(FindingKind::DnsTampering),
            // The agent's own policy refusal says nothing about the path.
            Outcome::BlockedByPolicy | Outcome::Ok => None,
        },
    }
}

/// A certificate no control saw, or an unverified one where every control's
/// verified.
fn tls_differs(o: &Observation, controls: &[&Group<'_>]) -> bool {
    let fps: Vec<&str> = controls
        .iter()
        .map(|c| c.verdict.rep().tls_sha256.as_str())
        .filter(|f| !f.is_empty())
        .collect();
    let other_cert =
        !o.tls_sha256.is_empty() && !fps.is_empty() && !fps.contains(&o.tls_sha256.as_str());
    let unverified = o.tls_verified == Some(false)
        && controls
            .iter()
            .all(|c| c.verdict.rep().tls_verified == Some(true));
    other_cert || unverified
}

/// The edge itself answered (its 52x or its request id): the edge's business,
/// not the path's.
fn edge_answered(o: &Observation) -> bool {
    o.status.is_some()
        && (!o.edge_request_id.is_empty() || (520..=527).contains(&o.status.unwrap_or(0)))
}

/// The controls when no witness saw anything: the unique largest group of
/// regions that succeeded alike. Failing regions are never controls, and a
/// tie means we cannot tell which answer is genuine.
fn fine_majority(groups: &[&Group<'_>]) -> Vec<usize> {
    let fine: Vec<usize> = (0..groups.len())
        .filter(|&i| matches!(groups[i].verdict, Verdict::Fine(_)))
        .collect();
    let clusters: Vec<Vec<usize>> = fine
        .iter()
        .map(|&i| {
            fine.iter()
                .copied()
                .filter(|&j| same_answer(groups[i].verdict, groups[j].verdict))
                .collect()
        })
        .collect();
    let Some(best) = clusters.iter().max_by_key(|c| c.len()) else {
        return Vec::new();
    };
    let tie = clusters.iter().any(|c| {
        c.len() == best.len() && c.first() != best.first() && !c.iter().any(|i| best.contains(i))
    });
    if tie {
        Vec::new()
    } else {
        best.clone()
    }
}

/// Regions (at one route/variant/address) whose answer differs from the
/// controls' and whose requests the witness did not see.
fn interference_at<'a>(ctx: &Ctx<'a>, groups: &[&Group<'a>]) -> Vec<Hit<'a>> {
    if groups.len() < 2 {
        return Vec::new();
    }
    let seen: Vec<Option<bool>> = groups.iter().map(|g| ctx.witness_saw(&g.obs)).collect();
    let witnessed: Vec<usize> = (0..groups.len())
        .filter(|&i| seen[i] == Some(true))
        .collect();
    let by_witness = !witnessed.is_empty();
    let reference = if by_witness {
        witnessed
    } else {
        fine_majority(groups)
    };
    if reference.is_empty() {
        return Vec::new();
    }
    let controls: Vec<&Group<'a>> = reference.iter().map(|&i| groups[i]).collect();
    let control_regions: Vec<&str> = controls.iter().map(|c| c.region).collect();
    let mut hits: Vec<Hit<'a>> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        if reference.contains(&i) || seen[i] == Some(true) {
            continue;
        }
        let rep = g.verdict.rep();
        let differs = !controls.iter().any(|c| same_answer(g.verdict, c.verdict));
        let tls = rep.outcome == Outcome::Ok && tls_differs(rep, &controls);
        if !differs && !tls {
            continue;
        }
        if g.route == Route::Edge && g.verdict.failure().is_some() && edge_answered(rep) {
            continue;
        }
        // The origin's own page (only the certificate can still differ:
        // an interceptor relays the real page).
        if !tls && ctx.origin_page_in(rep, &control_regions) {
            continue;
        }
        let kind = if tls {
            Some(FindingKind::TlsInterception)
        } else {
            interference_kind(g.verdict)
        };
        let Some(kind) = kind else { continue };
        hits.push(Hit {
            kind,
            region: g.region.to_string(),
            route: g.route,
            address: g.address.to_string(),
            line: g.line(),
            controls: controls.iter().map(|c| c.region.to_string()).collect(),
            control_line: controls.first().map(|c| c.line()).unwrap_or_default(),
            rep,
            witness: if ctx.witness().is_some() {
                Witness::Agrees
            } else {
                Witness::Absent
            },
        });
    }
    // When several regions fail alike and outnumber the controls, the failure
    // looks like the origin's, not several carriers': say nothing.
    if !by_witness {
        let failing: Vec<FailureClass> = hits
            .iter()
            .filter_map(|h| failure(h.rep).map(Failure::class))
            .collect();
        if failing.len() >= 2
            && failing.len() > controls.len()
            && failing.iter().all(|k| Some(k) == failing.first())
        {
            hits.retain(|h| failure(h.rep).is_none());
        }
    }
    hits
}

/// A region whose resolver's answers share nothing with the other regions'
/// and are none of the known origin/edge addresses, or that fails to resolve
/// where the others resolve.
fn dns_tampering<'a>(ctx: &Ctx<'a>) -> Vec<Hit<'a>> {
    let known: BTreeSet<String> = ctx
        .target()
        .origins
        .iter()
        .chain(ctx.target().edges.iter())
        .map(|a| curl::split_address(a).0)
        .collect();
    let per_region: Vec<(
        &'a RegionEvidence,
        BTreeSet<&'a str>,
        Option<&'a Observation>,
    )> = ctx
        .live
        .iter()
        .map(|r| {
            let dns: Vec<&'a Observation> = r
                .observations
                .iter()
                .filter(|o| o.route == Route::Dns)
                .collect();
            let answers = dns
                .iter()
                .filter(|o| o.outcome == Outcome::Ok)
                .flat_map(|o| o.dns_answers.iter().map(String::as_str))
                .collect();
            (*r, answers, dns.first().copied())
        })
        .collect();
    let genuine = genuine_answers(ctx, &known, &per_region);
    let mut hits = Vec::new();
    for (region, answers, first) in &per_region {
        let Some(rep) = first else { continue };
        let controls: Vec<&(&RegionEvidence, BTreeSet<&str>, Option<&Observation>)> = per_region
            .iter()
            .filter(|(r, a, _)| r.region != region.region && !a.is_empty())
            .filter(|(_, a, _)| genuine.as_ref().is_none_or(|g| !a.is_disjoint(g)))
            .collect();
        if controls.is_empty() {
            continue;
        }
        let union: BTreeSet<&str> = controls
            .iter()
            .flat_map(|(_, a, _)| a.iter().copied())
            .collect();
        let failed = answers.is_empty() && rep.outcome == Outcome::DnsFailure;
        let disjoint = !answers.is_empty()
            && answers.is_disjoint(&union)
            && !answers.iter().any(|a| known.contains(*a));
        if !failed && !disjoint {
            continue;
        }
        let fmt = |a: &BTreeSet<&str>| a.iter().copied().collect::<Vec<_>>().join(", ");
        hits.push(Hit {
            kind: FindingKind::DnsTampering,
            region: region.region.clone(),
            route: Route::Dns,
            address: String::new(),
            line: if failed {
                format!(
                    "{}: dns for {}: {}",
                    region.region,
                    ctx.target().host,
                    describe(rep)
                )
            } else {
                format!(
                    "{}: dns for {} answered [{}]",
                    region.region,
                    ctx.target().host,
                    fmt(answers)
                )
            },
            controls: controls.iter().map(|(r, _, _)| r.region.clone()).collect(),
            control_line: format!("other regions answered [{}]", fmt(&union)),
            rep,
            witness: Witness::Irrelevant,
        });
    }
    hits
}

/// The answers that are known to be genuine, when the evidence says: those
/// that contain an address the user named (an origin or edge); else those
/// of regions whose requests to the answered address reached the origin
/// (the witness saw their resolver-routed edge requests), else those of the
/// unique largest group of regions that answered alike. A region is never
/// compared with a lying one: two regions told the same lie would otherwise
/// hide each other. `None`: nothing to tell them apart by (the caller then
/// compares with every other region).
fn genuine_answers<'a>(
    ctx: &Ctx<'a>,
    known: &BTreeSet<String>,
    per_region: &[(
        &'a RegionEvidence,
        BTreeSet<&'a str>,
        Option<&'a Observation>,
    )],
) -> Option<BTreeSet<&'a str>> {
    let answered: Vec<&(&RegionEvidence, BTreeSet<&str>, Option<&Observation>)> = per_region
        .iter()
        .filter(|(_, a, _)| !a.is_empty())
        .collect();
    // What the user named (--origin, --edge) is genuine by definition.
    let named: BTreeSet<&str> = answered
        .iter()
        .filter(|(_, a, _)| a.iter().any(|x| known.contains(*x)))
        .flat_map(|(_, a, _)| a.iter().copied())
        .collect();
    if !named.is_empty() {
        return Some(named);
    }
    if ctx.witness().is_some() {
        let confirmed: BTreeSet<&str> = answered
            .iter()
            .filter(|(r, _, _)| {
                let via_resolver: Vec<&Observation> = r
                    .observations
                    .iter()
                    .filter(|o| o.route == Route::Edge && o.address.is_empty())
                    .collect();
                ctx.witness_saw(&via_resolver) == Some(true)
            })
            .flat_map(|(_, a, _)| a.iter().copied())
            .collect();
        if !confirmed.is_empty() {
            return Some(confirmed);
        }
    }
    let mut groups: Vec<(&BTreeSet<&str>, usize)> = Vec::new();
    for (_, answers, _) in &answered {
        match groups.iter_mut().find(|(g, _)| *g == answers) {
            Some((_, n)) => *n += 1,
            None => groups.push((answers, 1)),
        }
    }
    let most = groups.iter().map(|(_, n)| *n).max()?;
    let mut largest = groups.iter().filter(|(_, n)| *n == most);
    match (largest.next(), largest.next()) {
        (Some((answers, _)), None) if most > 1 => Some((*answers).clone()),
        _ => None,
    }
}

fn interference_advice(kind: FindingKind) -> &'static str {
    match kind {
        FindingKind::HttpInjection => "Something on these regions' network path answers in place of the origin (the origin never saw these requests). Serve the site and the CDN's pulls over HTTPS, and report the injected answer (the curl output from that region) to the region's carrier or hosting provider.",
        FindingKind::TcpReset => "Connections from these regions are reset on the way and never reach the origin. Use HTTPS for the site and the pulls (resets keyed on plain-HTTP content stop), and report the resets, with the curl output from that region, to the region's carrier.",
        FindingKind::Blackhole => "Packets from these regions are silently dropped on the way to the target. Report the timeouts, with a traceroute and the curl output from that region, to the region's carrier; meanwhile consider another origin address or an edge near those users.",
        FindingKind::DnsTampering => "These regions' resolvers return addresses that no other region sees for the host. Check the DNS records' geo settings first; if they are right, the resolver or carrier rewrites answers: use DNS over HTTPS/TLS or another resolver, and report it to the carrier.",
        _ => "Something on these regions' path presents a different or untrusted certificate (TLS interception). Do not ignore certificate errors; report the certificate (curl -v shows it) to the region's carrier or network owner.",
    }
}

/// What the HTTPS control (DESIGN §5.6) says about a hit on plain HTTP to
/// an origin: only where the control regions got an answer over HTTPS.
fn https_control_line(ctx: &Ctx<'_>, h: &Hit<'_>) -> Option<String> {
    if h.route != Route::Direct {
        return None;
    }
    let groups = ctx.groups(Route::Direct, Variant::Https);
    let at = |region: &str| {
        groups
            .iter()
            .find(|g| g.region == region && g.address == h.address)
    };
    let controls: Vec<&Group<'_>> = h.controls.iter().filter_map(|c| at(c)).collect();
    if controls.is_empty() || !controls.iter().all(|g| g.verdict.failure().is_none()) {
        return None;
    }
    let mine = at(&h.region)?;
    Some(match mine.verdict.failure() {
        None => format!(
            "HTTPS to the same origin from {} works: the carrier touches plain HTTP only",
            h.region
        ),
        Some(f) => format!(
            "HTTPS to the same origin from {} fails too ({}) while {} get an answer over it: the carrier blocks more than plain HTTP",
            h.region,
            f.class(),
            h.controls.join(", ")
        ),
    })
}

/// One finding per interference kind, naming only the regions it holds in.
fn interference_findings(ctx: &Ctx<'_>, hits: &[Hit<'_>]) -> Vec<Finding> {
    let target = ctx.target();
    let mut out = Vec::new();
    let kinds = FindingKind::ALL
        .into_iter()
        .filter(|k| k.code() == FindingCode::CarrierInterference);
    for kind in kinds {
        let mine: Vec<&Hit<'_>> = hits.iter().filter(|h| h.kind == kind).collect();
        if mine.is_empty() {
            continue;
        }
        let regions = distinct(mine.iter().map(|h| h.region.as_str()));
        let compared = mine.iter().map(|h| h.controls.len() + 1).min().unwrap_or(1);
        let witness = if mine.iter().any(|h| h.witness == Witness::Absent) {
            Witness::Absent
        } else if mine.iter().all(|h| h.witness == Witness::Irrelevant) {
            Witness::Irrelevant
        } else {
            Witness::Agrees
        };
        let mut evidence = Vec::new();
        for h in &mine {
            evidence.push(h.line.clone());
            evidence.push(format!(
                "control ({}): {}",
                h.controls.join(", "),
                h.control_line
            ));
        }
        for h in &mine {
            if let Some(line) = https_control_line(ctx, h) {
                evidence.push(line);
            }
        }
        match witness {
            Witness::Agrees => {
                for h in &mine {
                    let obs = ctx.observations(&h.region, h.route, Variant::Baseline, &h.address);
                    let seen = obs.iter().filter(|o| ctx.witness_saw(&[*o]) == Some(true)).count();
                    evidence.push(format!(
                        "origin witness: saw {seen} of the {} {} requests from {}: they did not reach the origin",
                        obs.len(),
                        h.route.as_str(),
                        h.region
                    ));
                }
            }
            Witness::Absent => evidence.push(
                "no origin witness ran: it could not be confirmed that these requests never reached the origin".to_string(),
            ),
            Witness::Irrelevant => {}
        }
        let mut reproduce = Vec::new();
        for h in &mine {
            let cmd = match h.route {
                Route::Dns => curl::dig(target),
                _ => curl::curl(target, h.route, &h.address, &[], Some(30)),
            };
            if !reproduce.contains(&cmd) {
                reproduce.push(cmd);
            }
            if https_control_line(ctx, h).is_some() {
                let cmd = curl::curl_https_control(target, &h.address);
                if !reproduce.contains(&cmd) {
                    reproduce.push(cmd);
                }
            }
        }
        out.push(Finding {
            code: FindingCode::CarrierInterference,
            kind: Some(kind),
            regions: regions.clone(),
            confidence: confidence(compared, witness),
            summary: format!(
                "{} see{} a different answer than the other regions ({}) on the way to {}",
                regions.join(", "),
                if regions.len() == 1 { "s" } else { "" },
                kind,
                target.host
            ),
            evidence,
            advice: format!(
                "{} Run the commands below from the affected region(s) and from a clean one to compare.",
                interference_advice(kind)
            ),
            reproduce,
        });
    }
    out
}

// ---------------------------------------------------------------- origin

/// One bounded curl per distinct address of `route`, in order.
fn curl_each<'s>(
    ctx: &Ctx<'_>,
    route: Route,
    addresses: impl IntoIterator<Item = &'s str>,
) -> Vec<String> {
    distinct(addresses)
        .iter()
        .map(|address| curl::curl(ctx.target(), route, address, &[], Some(30)))
        .collect()
}

fn alike<'g, 'a>(groups: &[&'g Group<'a>], f: impl Fn(Verdict<'a>) -> bool) -> bool {
    !groups.is_empty() && groups.iter().all(|g| f(g.verdict))
}

fn regions_of(groups: &[&Group<'_>]) -> Vec<String> {
    distinct(groups.iter().map(|g| g.region))
}

/// TLS fails the same way (handshake, or an unverifiable certificate) from
/// every clean region.
fn origin_tls_error(ctx: &Ctx<'_>, groups: &[&Group<'_>]) -> Option<Finding> {
    let handshake = alike(groups, |v| {
        v.failure() == Some(Failure::Net(Outcome::TlsHandshakeFailed))
    });
    let certificate = alike(groups, |v| match v {
        Verdict::Failed(f, _) => f == Failure::Net(Outcome::TlsCertInvalid),
        Verdict::Fine(o) => o.tls_verified == Some(false),
    });
    let (kind, what, code) = if handshake {
        (FindingKind::Handshake, "fails the TLS handshake", 525)
    } else if certificate {
        (
            FindingKind::Certificate,
            "presents a certificate that does not verify",
            526,
        )
    } else {
        return None;
    };
    let address = groups.first()?.address;
    let regions = regions_of(groups);
    Some(Finding {
        code: FindingCode::OriginTlsError,
        kind: Some(kind),
        confidence: confidence(regions.len(), Witness::Irrelevant),
        summary: format!(
            "The origin {address} {what} for {} from every region ({}); through an HTTPS pull the edge answers {code}",
            ctx.target().host,
            regions.len()
        ),
        evidence: groups.iter().map(|g| g.line()).collect(),
        advice: if kind == FindingKind::Handshake {
            format!("Make the origin speak TLS on port {} with a certificate for {} (check the listener, the TLS versions and ciphers it allows, and SNI), or pull over HTTP.", ctx.target().port, ctx.target().host)
        } else {
            format!("Install a certificate on the origin that is valid (unexpired, trusted chain) for {}, or relax the CDN's origin certificate verification.", ctx.target().host)
        },
        reproduce: vec![curl::curl(ctx.target(), Route::Direct, address, &[], Some(30))],
        regions,
    })
}

/// The direct baseline fails the same way from every clean region.
fn origin_down(ctx: &Ctx<'_>, groups: &[&Group<'_>]) -> Option<Finding> {
    let first = groups.first()?.verdict.failure()?;
    let kind = match first {
        Failure::Http(_) => FindingKind::Http5xx,
        Failure::Net(Outcome::ConnectRefused) => FindingKind::ConnectRefused,
        Failure::Net(Outcome::ConnectTimeout) => FindingKind::ConnectTimeout,
        Failure::Net(Outcome::EmptyReply) => FindingKind::EmptyReply,
        Failure::Net(Outcome::Reset) => FindingKind::Reset,
        Failure::Net(_) => return None,
    };
    if !alike(groups, |v| {
        v.failure().map(Failure::class) == Some(first.class())
    }) {
        return None;
    }
    let address = groups.first()?.address;
    let port = curl::split_address(address).1.unwrap_or(ctx.target().port);
    let regions = regions_of(groups);
    let statuses = distinct(groups.iter().filter_map(|g| match g.verdict.failure() {
        Some(Failure::Http(s)) => Some(status_str(s)),
        _ => None,
    }));
    let (what, advice, edge_code) = match kind {
        FindingKind::ConnectRefused => ("refuses connections", format!("Nothing accepts connections on {address} port {port}: start the web server, or fix the origin address and port in the CDN's origin configuration."), "521"),
        FindingKind::ConnectTimeout => ("does not answer connection attempts", format!("Connection attempts to {address} port {port} go unanswered: check that the host is up and that its firewall or security group lets port {port} in."), "522"),
        FindingKind::EmptyReply => ("closes connections without answering", "The origin accepts the connection but closes it without a byte: check the web server's error log, crashes, and its upstream application.".to_string(), "520"),
        FindingKind::Reset => ("resets connections after the request", "The origin resets the connection after the request arrives: check the web server's error log, crashes, request size limits and its upstream application.".to_string(), "520"),
        _ => ("answers with a server error", format!("The origin itself answers {}: fix the application (see its error log); the CDN passes the error on.", statuses.join("/")), "the same 5xx"),
    };
    Some(Finding {
        code: FindingCode::OriginDown,
        kind: Some(kind),
        confidence: confidence(regions.len(), Witness::Irrelevant),
        summary: format!(
            "The origin {address} {what} from every region ({}); the edge answers {edge_code}",
            regions.len()
        ),
        evidence: groups.iter().map(|g| g.line()).collect(),
        advice,
        reproduce: vec![curl::curl(
            ctx.target(),
            Route::Direct,
            address,
            &[],
            Some(if kind == FindingKind::ConnectTimeout {
                10
            } else {
                30
            }),
        )],
        regions,
    })
}

fn status_str(s: u16) -> &'static str {
    match s {
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "5xx",
    }
}

/// The first byte takes longer than the edge waits, from every clean region.
fn origin_slow(ctx: &Ctx<'_>, groups: &[&Group<'_>]) -> Option<Finding> {
    let limit = ctx.edge_timeout_ms();
    let waited = |v: Verdict<'_>| -> Option<(f64, bool)> {
        match v {
            Verdict::Fine(o) => o.ttfb_ms().filter(|t| *t > limit).map(|t| (t, false)),
            Verdict::Failed(Failure::Net(Outcome::ResponseTimeout | Outcome::BodyTimeout), o)
                if o.total_ms() >= limit =>
            {
                Some((o.total_ms(), true))
            }
            _ => None,
        }
    };
    if !alike(groups, |v| waited(v).is_some()) {
        return None;
    }
    let (worst, timed_out) = groups
        .iter()
        .filter_map(|g| waited(g.verdict))
        .fold((0.0_f64, false), |(w, t), (ms, to)| (w.max(ms), t || to));
    let address = groups.first()?.address;
    let regions = regions_of(groups);
    let edge_ms = ctx.target().edge_timeout.as_secs_f64() * 1000.0;
    // Sub-second timeouts (labs, scaled-down tests) keep their decimal.
    let edge_s = if edge_ms < 10_000.0 {
        format!("{:.1}", edge_ms / 1000.0)
    } else {
        format!("{:.0}", edge_ms / 1000.0)
    };
    // Suggest headroom of half again the worst TTFB seen, in whole seconds.
    let suggest = secs_ceil(worst * 1.5).max(secs_ceil(edge_ms) + 1);
    let seen = if timed_out {
        format!("more than {:.1} s", worst / 1000.0)
    } else {
        format!("{:.1} s", worst / 1000.0)
    };
    Some(Finding {
        code: FindingCode::OriginSlow,
        kind: None,
        confidence: confidence(regions.len(), Witness::Irrelevant),
        summary: format!(
            "The origin {address} takes {seen} to send its first byte from every region ({}), longer than the {} edge's {edge_s} s origin-response timeout: the edge answers 524",
            regions.len(),
            ctx.target().cdn.name()
        ),
        evidence: groups.iter().map(|g| g.line()).collect(),
        advice: if timed_out {
            format!(
                "Time to first byte seen: {seen} (the report does not wait past the edge's own limit; the command below waits up to {} s and prints the real TTFB). Make the origin answer faster, or raise the CDN's origin-response (HTTP response) timeout from {edge_s} s above the TTFB that command shows — and below your clients' own timeout, so that clients do not give up before the edge does.",
                suggest + 10
            )
        } else {
            format!(
                "Time to first byte seen: {seen}. Make the origin answer faster, or raise the CDN's origin-response (HTTP response) timeout from {edge_s} s to about {suggest} s — above the TTFB seen, and below your clients' own timeout so that clients do not give up before the edge does."
            )
        },
        reproduce: vec![curl::curl_timed(ctx.target(), address, suggest + 10)],
        regions,
    })
}

/// The direct baseline is fine and within the edge's timeout in every clean
/// region.
fn direct_fine(ctx: &Ctx<'_>, direct: &[Group<'_>]) -> bool {
    let limit = ctx.edge_timeout_ms();
    !direct.is_empty()
        && direct.iter().all(|g| match g.verdict {
            Verdict::Fine(o) => o.ttfb_ms().is_none_or(|t| t <= limit),
            Verdict::Failed(..) => false,
        })
}

fn burst_failure(o: &Observation) -> bool {
    matches!(
        o.outcome,
        Outcome::EmptyReply
            | Outcome::Reset
            | Outcome::ConnectRefused
            | Outcome::ConnectTimeout
            | Outcome::ResponseTimeout
            | Outcome::BodyTimeout
    ) || matches!(o.status, Some(429 | 503))
}

/// Baseline fine, burst failing. A burst that fails only in some regions is
/// still reported, for those regions only and with low confidence: every
/// region sends the same burst, so a limit hit by some and not others is a
/// per-address limit (or that region's path), not one every client hits.
fn origin_rate_limited(ctx: &Ctx<'_>, direct: &[Group<'_>]) -> Option<Finding> {
    let mut tried = 0;
    let mut limited: Vec<(&Group<'_>, Vec<&Observation>)> = Vec::new();
    let mut evidence = Vec::new();
    for g in direct
        .iter()
        .filter(|g| matches!(g.verdict, Verdict::Fine(_)))
    {
        let burst = ctx.observations(g.region, Route::Direct, Variant::Burst, g.address);
        if burst.is_empty() {
            continue;
        }
        tried += 1;
        let failed: Vec<&Observation> =
            burst.iter().copied().filter(|o| burst_failure(o)).collect();
        if failed.is_empty() {
            continue;
        }
        let kinds = distinct(failed.iter().map(|o| match o.status {
            Some(429) => "429",
            Some(503) => "503",
            _ => o.outcome.as_str(),
        }));
        evidence.push(format!(
            "{}: burst of {} to {}: {} failed ({}); {}",
            g.region,
            burst.len(),
            addr_label(g.address),
            failed.len(),
            kinds.join(", "),
            g.line()
        ));
        limited.push((g, burst));
    }
    let first = limited.first()?;
    let everywhere = limited.len() == tried;
    let regions = distinct(limited.iter().map(|(g, _)| g.region));
    let mut reproduce = Vec::new();
    for (g, burst) in &limited {
        let cmd = curl::burst(ctx.target(), g.address, burst.len());
        if !reproduce.contains(&cmd) {
            reproduce.push(cmd);
        }
    }
    reproduce.push(curl::curl(
        ctx.target(),
        Route::Direct,
        first.0.address,
        &[],
        None,
    ));
    Some(Finding {
        code: FindingCode::OriginRateLimited,
        kind: None,
        confidence: if everywhere { confidence(regions.len(), Witness::Irrelevant) } else { Confidence::Low },
        summary: if everywhere {
            format!("Single requests to the origin succeed, but concurrent ones fail from every region ({}): the origin limits rate or concurrency", regions.len())
        } else {
            format!("Concurrent requests to the origin fail only from {} while single requests succeed, and other regions' bursts succeed: a per-address limit or that path, not a limit every client hits", regions.join(", "))
        },
        evidence,
        advice: "The edge pulls from few addresses at high concurrency, and every refused pull becomes a 520/524: raise the origin's rate and connection limits for the CDN's pull IPs, or allowlist them in the limiter or WAF.".to_string(),
        reproduce,
        regions,
    })
}

/// Whether a cdn_headers request failed where the plain one succeeded
/// (including a 4xx where the baseline was 2xx/3xx: a WAF's 403).
fn cdn_failed(o: &Observation, base: &Observation) -> bool {
    failure(o).is_some()
        || matches!((o.status, base.status), (Some(s), Some(b)) if s >= 400 && b < 400)
}

/// Baseline fine, the same request with the CDN's pull headers refused.
fn origin_blocks_cdn_headers(ctx: &Ctx<'_>, direct: &[Group<'_>]) -> Option<Finding> {
    let mut tried = 0;
    let mut blocked: Vec<(&Group<'_>, &Observation)> = Vec::new();
    let mut evidence = Vec::new();
    for g in direct {
        let Verdict::Fine(base) = g.verdict else {
            continue;
        };
        let cdn = ctx.observations(g.region, Route::Direct, Variant::CdnHeaders, g.address);
        if cdn.is_empty() {
            continue;
        }
        tried += 1;
        let failed: Vec<&Observation> = cdn
            .iter()
            .copied()
            .filter(|o| cdn_failed(o, base))
            .collect();
        let Some(rep) = failed.first().copied() else {
            continue;
        };
        if failed.len() * 2 <= cdn.len() || throttled(&cdn, &failed) {
            continue;
        }
        evidence.push(format!(
            "{}: with the {} pull headers to {}: {}; without them: {}",
            g.region,
            ctx.target().cdn.name(),
            addr_label(g.address),
            describe(rep),
            describe(base)
        ));
        blocked.push((g, rep));
    }
    let (first, rep) = blocked.first().copied()?;
    let names = &ctx.ev.blocked_headers;
    if names.is_empty() {
        evidence.push("bisection: no single header found (or none ran): the refusal follows the pull headers together".to_string());
    } else {
        evidence.push(format!(
            "bisection: the refusal follows {}",
            names.join(", ")
        ));
    }
    let sent = if rep.sent_headers.is_empty() {
        ctx.target()
            .cdn
            .pull_headers("203.0.113.10", &ctx.target().scheme, "vantage-reproduce")
    } else {
        rep.sent_headers.clone()
    };
    let mut reproduce = vec![
        curl::curl(ctx.target(), Route::Direct, first.address, &[], None),
        curl::curl(ctx.target(), Route::Direct, first.address, &sent, None),
    ];
    let only: Vec<(String, String)> = sent
        .iter()
        .filter(|(n, _)| names.iter().any(|b| b.eq_ignore_ascii_case(n)))
        .cloned()
        .collect();
    if !only.is_empty() && only.len() < sent.len() {
        reproduce.push(curl::curl(
            ctx.target(),
            Route::Direct,
            first.address,
            &only,
            None,
        ));
    }
    let everywhere = blocked.len() == tried;
    let regions = distinct(blocked.iter().map(|(g, _)| g.region));
    let which = if names.is_empty() {
        "the CDN's pull headers".to_string()
    } else {
        names.join(", ")
    };
    Some(Finding {
        code: FindingCode::OriginBlocksCdnHeaders,
        kind: None,
        confidence: if everywhere { confidence(regions.len(), Witness::Irrelevant) } else { Confidence::Low },
        summary: format!(
            "The origin answers plain requests but refuses the same request carrying {which} ({} of {} regions)",
            regions.len(),
            tried
        ),
        evidence,
        advice: format!("The origin or its WAF rejects requests carrying {which}, so every pull through the {} edge fails: allow these headers, or allowlist the CDN's pull IPs in the security policy.", ctx.target().cdn.name()),
        reproduce,
        regions,
    })
}

// ---------------------------------------------------------------- edge

fn edge_id_line(ctx: &Ctx<'_>, g: &Group<'_>) -> String {
    let ids = distinct(
        g.obs
            .iter()
            .map(|o| o.edge_request_id.as_str())
            .filter(|i| !i.is_empty()),
    );
    if ids.is_empty() {
        g.line()
    } else {
        format!(
            "{} [{} {}]",
            g.line(),
            ctx.target().cdn.request_id_header(),
            ids.join(", ")
        )
    }
}

/// A refusal status: what an HTTP-level allowlist (nginx `deny`, an access
/// rule) answers.
fn refusal(status: Option<u16>) -> bool {
    matches!(status, Some(401 | 403 | 451))
}

/// Direct fine everywhere, and the edge fails everywhere, in one of two
/// ways that both mean the origin keeps the edge's pull addresses out:
///
/// - a firewall: the edge answers 5xx (its 521/522) and the witness saw
///   none of the edge's pulls;
/// - an HTTP-level allowlist: the edge passes on the origin's refusal
///   (403…) while direct requests get the page, and the witness saw the
///   pulls arrive (so the refusal is the origin's, not the CDN's own rule).
fn origin_blocks_edge(ctx: &Ctx<'_>, direct: &[Group<'_>], edge: &[Group<'_>]) -> Option<Finding> {
    let all_5xx = !edge.is_empty()
        && edge
            .iter()
            .all(|g| matches!(g.verdict, Verdict::Failed(Failure::Http(_), _)));
    let all_refused = !edge.is_empty()
        && edge
            .iter()
            .all(|g| matches!(g.verdict, Verdict::Fine(o) if refusal(o.status)))
        && direct
            .iter()
            .all(|g| g.verdict.rep().status.is_some_and(|s| s < 400));
    if !all_5xx && !all_refused {
        return None;
    }
    let edge_obs: Vec<&Observation> = edge.iter().flat_map(|g| g.obs.iter().copied()).collect();
    let witness = match (ctx.witness_saw(&edge_obs), all_5xx) {
        // A firewall: the pulls must not have reached the origin.
        (Some(true), true) => return None,
        (Some(false), true) => Witness::Agrees,
        // An allowlist answers: the pulls reached the origin. If they did
        // not, the refusal is the CDN's own access rule, not the origin's.
        (Some(true), false) => Witness::Agrees,
        (Some(false), false) => return None,
        (None, _) => Witness::Absent,
    };
    let regions = distinct(edge.iter().map(|g| g.region));
    let codes = distinct(
        edge.iter()
            .filter_map(|g| g.verdict.rep().status)
            .map(|s| match s {
                401 => "401",
                403 => "403",
                451 => "451",
                520 => "520",
                521 => "521",
                522 => "522",
                523 => "523",
                524 => "524",
                525 => "525",
                526 => "526",
                _ => "5xx",
            }),
    );
    let mut evidence: Vec<String> = direct.iter().map(|g| g.line()).collect();
    evidence.extend(edge.iter().map(|g| edge_id_line(ctx, g)));
    evidence.push(match (witness, all_5xx) {
        (Witness::Agrees, true) => "origin witness: saw none of the requests sent through the edge".to_string(),
        (Witness::Agrees, false) => {
            let pull_ips: Vec<String> = edge_obs
                .iter()
                .filter_map(|o| ctx.witness().and_then(|w| w.seen.get(&o.nonce)))
                .flatten()
                .cloned()
                .collect();
            format!(
                "origin witness: the edge's pulls arrived (from {}) and were refused, while the same request sent directly was answered",
                distinct(pull_ips.iter().map(String::as_str)).join(", ")
            )
        }
        (_, true) => "no origin witness ran: it could not be confirmed that the edge's pulls never reached the origin".to_string(),
        (_, false) => "no origin witness ran: the refusal may also be the CDN's own access rule".to_string(),
    });
    let mut reproduce = curl_each(ctx, Route::Edge, edge.iter().map(|g| g.address));
    reproduce.extend(curl_each(
        ctx,
        Route::Direct,
        direct.first().map(|g| g.address),
    ));
    let why = match (witness, all_5xx) {
        (Witness::Agrees, true) => " and the origin never saw the edge's pulls: the origin's firewall or allowlist keeps the edge's pull addresses out",
        (Witness::Agrees, false) => " while the origin answers the same request sent directly: the origin's allowlist (or an access rule) refuses the edge's pull addresses",
        (_, true) => ": most likely the origin's firewall or allowlist keeps the edge's pull addresses out (no witness to confirm)",
        (_, false) => ": most likely the origin's allowlist refuses the edge's pull addresses (no witness to rule out the CDN's own access rule)",
    };
    Some(Finding {
        code: FindingCode::OriginBlocksEdge,
        kind: None,
        confidence: confidence(regions.len(), witness),
        summary: format!(
            "Direct requests to the origin succeed from every region, but every request through the edge fails with {}{why}",
            codes.join("/"),
        ),
        evidence,
        advice: format!(
            "Allow the {} pull (origin-fetch) IP ranges through the origin's firewall, security group and any IP allowlist (nginx allow/deny, an application's access list). Give the {} values above to the CDN's support to learn which pull node IPs were refused.",
            ctx.target().cdn.name(),
            ctx.target().cdn.request_id_header()
        ),
        reproduce,
        regions,
    })
}

/// Direct fine, the edge fails only via some addresses or in some regions
/// while it works elsewhere (so the origin answers the edge).
fn edge_fault(ctx: &Ctx<'_>, edge: &[Group<'_>]) -> Option<Finding> {
    let working: Vec<&Group<'_>> = edge
        .iter()
        .filter(|g| g.verdict.failure().is_none())
        .collect();
    // An edge that relays the origin's own refusal page (as the origin
    // served it to direct probes where the edge works) is not at fault.
    let working_regions: Vec<&str> = working.iter().map(|g| g.region).collect();
    let failing: Vec<&Group<'_>> = edge
        .iter()
        .filter(|g| {
            g.verdict.failure().is_some() && !ctx.origin_page_in(g.verdict.rep(), &working_regions)
        })
        .collect();
    if failing.is_empty() || working.is_empty() {
        return None;
    }
    // Addresses that fail wherever they were tried while another works.
    let bad_addresses: Vec<String> = distinct(failing.iter().map(|g| g.address))
        .into_iter()
        .filter(|a| !working.iter().any(|g| g.address == a) && !a.is_empty())
        .collect();
    let working_obs: Vec<&Observation> =
        working.iter().flat_map(|g| g.obs.iter().copied()).collect();
    let witness = match ctx.witness_saw(&working_obs) {
        Some(true) => Witness::Agrees,
        _ => Witness::Absent,
    };
    let regions = distinct(failing.iter().map(|g| g.region));
    let where_ = if bad_addresses.is_empty() {
        format!("only in {}", regions.join(", "))
    } else {
        format!("only via edge address {}", bad_addresses.join(", "))
    };
    let mut evidence: Vec<String> = failing.iter().map(|g| edge_id_line(ctx, g)).collect();
    evidence.extend(working.iter().map(|g| format!("works: {}", g.line())));
    evidence.push(match witness {
        Witness::Agrees => "origin witness: saw the edge's pulls and answered them".to_string(),
        _ => "no witness confirmation that the origin answered the edge; the working edge paths show it does".to_string(),
    });
    let reproduce = curl_each(
        ctx,
        Route::Edge,
        failing
            .iter()
            .map(|g| g.address)
            .chain(working.first().map(|g| g.address)),
    );
    let total_regions = distinct(edge.iter().map(|g| g.region)).len();
    Some(Finding {
        code: FindingCode::EdgeFault,
        kind: None,
        confidence: confidence(total_regions, witness),
        summary: format!(
            "The origin answers directly and through other edge paths, but requests through the edge fail {where_}: the fault is in the CDN's edge"
        ),
        evidence,
        advice: format!(
            "Report the failing edge path to the {} support with the {} values above; until it is fixed, take the failing edge address out of rotation if you control it.",
            ctx.target().cdn.name(),
            ctx.target().cdn.request_id_header()
        ),
        reproduce,
        regions,
    })
}
