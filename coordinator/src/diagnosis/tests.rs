//! Unit tests for the diagnosis rules: evidence is built from a healthy
//! region and then bent, one fault at a time.

use std::time::Duration;

use vantage_proto::cdn::CdnProfile;
use vantage_proto::domain::{Outcome, Route};

use super::curl::split_address;
use super::*;

const ORIGIN: &str = "198.51.100.7";
const EDGE: &str = "203.0.113.1";
const EDGE2: &str = "203.0.113.2";

fn target() -> Target {
    Target {
        url: "http://www.test.com/test.jpg".to_string(),
        host: "www.test.com".to_string(),
        port: 80,
        scheme: "http".to_string(),
        path: "/test.jpg".to_string(),
        origins: vec![ORIGIN.to_string()],
        edges: vec![EDGE.to_string()],
        cdn: CdnProfile::EdgeOne,
        edge_timeout: Duration::from_secs(15),
        pull: crate::campaign::plan::Pull {
            protocol: crate::campaign::plan::PullProtocol::Http,
            host: "www.test.com".to_string(),
            path: "/test.jpg".to_string(),
        },
        user_agent: "curl/8.5.0".to_string(),
        timeouts: crate::campaign::plan::Timeouts::for_edge_timeout(Duration::from_secs(15)),
    }
}

fn ok(route: Route, variant: Variant, address: &str) -> Observation {
    Observation {
        route,
        variant,
        address: address.to_string(),
        outcome: Outcome::Ok,
        curl_exit: 0,
        status: Some(200),
        timings_ms: Timings::cumulative(1.0, 10.0, 10.0, 50.0, 60.0),
        body_bytes: 1000,
        body_sha256: "aa".repeat(32),
        title: "Test page".to_string(),
        header_names: vec!["content-type".to_string(), "x-app".to_string()],
        edge_request_id: if route == Route::Edge {
            "EO-0123-abcd".to_string()
        } else {
            String::new()
        },
        nonce: String::new(),
        tls_sha256: String::new(),
        tls_verified: None,
        tls_not_after_unix: None,
        dns_answers: Vec::new(),
        sent_headers: if variant == Variant::CdnHeaders {
            CdnProfile::EdgeOne.pull_headers("192.0.2.9", "http", "id-1")
        } else {
            Vec::new()
        },
        error: String::new(),
        peer_close: None,
    }
}

fn dns(answers: &[&str]) -> Observation {
    let mut o = ok(Route::Dns, Variant::Baseline, "");
    o.status = None;
    o.body_bytes = 0;
    o.dns_answers = answers.iter().map(|a| a.to_string()).collect();
    o
}

/// What a healthy region sends back.
fn healthy() -> Vec<Observation> {
    let mut v = Vec::new();
    for _ in 0..2 {
        v.push(ok(Route::Direct, Variant::Baseline, ORIGIN));
    }
    v.push(ok(Route::Direct, Variant::CdnHeaders, ORIGIN));
    for _ in 0..4 {
        v.push(ok(Route::Direct, Variant::Burst, ORIGIN));
    }
    for _ in 0..2 {
        v.push(ok(Route::Edge, Variant::Baseline, EDGE));
    }
    v.push(dns(&[EDGE]));
    v
}

/// Makes `o` a transport failure.
fn fail(o: &mut Observation, outcome: Outcome, after_ms: f64) {
    o.outcome = outcome;
    o.curl_exit = outcome.curl_exit();
    o.status = None;
    o.body_bytes = 0;
    o.body_sha256 = String::new();
    o.title = String::new();
    o.header_names.clear();
    o.edge_request_id.clear();
    o.timings_ms = Timings::cumulative(1.0, 10.0, 10.0, 0.0, after_ms);
}

/// Applies `f` to every observation of `route`/`variant`.
fn bend(
    mut obs: Vec<Observation>,
    route: Route,
    variant: Variant,
    f: impl Fn(&mut Observation),
) -> Vec<Observation> {
    for o in obs
        .iter_mut()
        .filter(|o| o.route == route && o.variant == variant)
    {
        f(o);
    }
    obs
}

fn region(name: &str, obs: Vec<Observation>) -> RegionEvidence {
    let observations = obs
        .into_iter()
        .enumerate()
        .map(|(i, mut o)| {
            o.nonce = format!("{name}-{i}");
            o
        })
        .collect();
    RegionEvidence {
        region: name.to_string(),
        agents: vec![format!("agent-{name}")],
        lost: false,
        lost_reason: String::new(),
        observations,
    }
}

fn evidence(regions: Vec<RegionEvidence>) -> Evidence {
    Evidence {
        target: target(),
        regions,
        witness: None,
        blocked_headers: Vec::new(),
    }
}

/// Adds a witness that saw every request reaching the origin with an
/// answer, except the ones `hidden` says were stolen on the way.
fn witnessed(mut ev: Evidence, hidden: impl Fn(&str, &Observation) -> bool) -> Evidence {
    let mut w = WitnessEvidence::default();
    for r in &ev.regions {
        for o in &r.observations {
            let reached = o.route != Route::Dns && o.status.is_some_and(|s| s < 520);
            if reached && !hidden(&r.region, o) {
                let peer = if o.route == Route::Edge {
                    "43.1.1.1"
                } else {
                    "192.0.2.9"
                };
                w.seen.insert(o.nonce.clone(), vec![peer.to_string()]);
            }
        }
    }
    ev.witness = Some(w);
    ev
}

fn three(bad: Vec<Observation>) -> Vec<RegionEvidence> {
    vec![
        region("eu", healthy()),
        region("us", healthy()),
        region("ap", bad),
    ]
}

fn all_three(f: impl Fn() -> Vec<Observation>) -> Vec<RegionEvidence> {
    vec![region("eu", f()), region("us", f()), region("ap", f())]
}

fn injected(o: &mut Observation) {
    o.body_bytes = 180;
    o.body_sha256 = "bb".repeat(32);
    o.title = "Access denied by operator".to_string();
    o.header_names = vec!["content-type".to_string()];
}

fn direct_all(outcome: Outcome) -> Vec<Observation> {
    bend(healthy(), Route::Direct, Variant::Baseline, |o| {
        fail(o, outcome, 20.0)
    })
}

fn slow(o: &mut Observation) {
    o.timings_ms = Timings::cumulative(1.0, 10.0, 10.0, 20_000.0, 20_010.0);
}

/// A finding's (code, kind, regions).
type Key = (String, Option<String>, Vec<String>);

/// (code, kind, regions) of every finding, in order.
fn codes(d: &Diagnosis) -> Vec<Key> {
    d.findings
        .iter()
        .map(|f| {
            (
                f.code.as_str().to_string(),
                f.kind.map(|k| k.as_str().to_string()),
                f.regions.clone(),
            )
        })
        .collect()
}

fn want(code: &str, kind: Option<&str>, regions: &[&str]) -> Key {
    (
        code.to_string(),
        kind.map(str::to_string),
        regions.iter().map(|r| r.to_string()).collect(),
    )
}

const ALL: &[&str] = &["eu", "us", "ap"];

#[test]
fn table() {
    let cdn_blocked = |o: &mut Observation| {
        o.status = Some(403);
        o.body_bytes = 50;
        o.title = "Forbidden".to_string();
    };
    let cases: Vec<(&str, Evidence, Status, Vec<Key>)> = vec![
        (
            "healthy",
            witnessed(evidence(all_three(healthy)), |_, _| false),
            Status::Healthy,
            vec![],
        ),
        (
            "refused",
            evidence(all_three(|| direct_all(Outcome::ConnectRefused))),
            Status::Faulty,
            vec![want("origin_down", Some("connect_refused"), ALL)],
        ),
        (
            "connect timeout",
            evidence(all_three(|| direct_all(Outcome::ConnectTimeout))),
            Status::Faulty,
            vec![want("origin_down", Some("connect_timeout"), ALL)],
        ),
        (
            "empty reply",
            evidence(all_three(|| direct_all(Outcome::EmptyReply))),
            Status::Faulty,
            vec![want("origin_down", Some("empty_reply"), ALL)],
        ),
        (
            "reset",
            evidence(all_three(|| direct_all(Outcome::Reset))),
            Status::Faulty,
            vec![want("origin_down", Some("reset"), ALL)],
        ),
        (
            "503 to everyone is the origin's, not interference",
            witnessed(
                evidence(all_three(|| {
                    bend(healthy(), Route::Direct, Variant::Baseline, |o| {
                        o.status = Some(503)
                    })
                })),
                |_, _| false,
            ),
            Status::Faulty,
            vec![want("origin_down", Some("http_5xx"), ALL)],
        ),
        (
            "slow",
            evidence(all_three(|| {
                bend(healthy(), Route::Direct, Variant::Baseline, slow)
            })),
            Status::Faulty,
            vec![want("origin_slow", None, ALL)],
        ),
        (
            "slow via response timeouts",
            evidence(all_three(|| {
                bend(healthy(), Route::Direct, Variant::Baseline, |o| {
                    fail(o, Outcome::ResponseTimeout, 16_000.0)
                })
            })),
            Status::Faulty,
            vec![want("origin_slow", None, ALL)],
        ),
        (
            "rate limited",
            evidence(all_three(|| {
                bend(healthy(), Route::Direct, Variant::Burst, |o| {
                    fail(o, Outcome::EmptyReply, 5.0)
                })
            })),
            Status::Faulty,
            vec![want("origin_rate_limited", None, ALL)],
        ),
        (
            "burst failing in one region only: that region, low confidence",
            evidence(three(bend(healthy(), Route::Direct, Variant::Burst, |o| {
                o.status = Some(429)
            }))),
            Status::Faulty,
            vec![want("origin_rate_limited", None, &["ap"])],
        ),
        (
            "cdn headers blocked",
            evidence(all_three(|| {
                bend(healthy(), Route::Direct, Variant::CdnHeaders, cdn_blocked)
            })),
            Status::Faulty,
            vec![want("origin_blocks_cdn_headers", None, ALL)],
        ),
        (
            "blocks edge, witness",
            witnessed(
                evidence(all_three(|| {
                    bend(healthy(), Route::Edge, Variant::Baseline, |o| {
                        o.status = Some(522)
                    })
                })),
                |_, _| false,
            ),
            Status::Faulty,
            vec![want("origin_blocks_edge", None, ALL)],
        ),
        (
            "blocks edge, no witness",
            evidence(all_three(|| {
                bend(healthy(), Route::Edge, Variant::Baseline, |o| {
                    o.status = Some(522)
                })
            })),
            Status::Faulty,
            vec![want("origin_blocks_edge", None, ALL)],
        ),
        (
            "tls handshake",
            evidence(all_three(|| direct_all(Outcome::TlsHandshakeFailed))),
            Status::Faulty,
            vec![want("origin_tls_error", Some("handshake"), ALL)],
        ),
        (
            "tls certificate",
            evidence(all_three(|| direct_all(Outcome::TlsCertInvalid))),
            Status::Faulty,
            vec![want("origin_tls_error", Some("certificate"), ALL)],
        ),
        (
            "http injection in one region",
            witnessed(
                evidence(three(bend(
                    healthy(),
                    Route::Direct,
                    Variant::Baseline,
                    injected,
                ))),
                |r, o| r == "ap" && o.route == Route::Direct && o.variant == Variant::Baseline,
            ),
            Status::Faulty,
            vec![want(
                "carrier_interference",
                Some("http_injection"),
                &["ap"],
            )],
        ),
        (
            "tcp reset in one region",
            witnessed(evidence(three(direct_all(Outcome::Reset))), |_, _| false),
            Status::Faulty,
            vec![want("carrier_interference", Some("tcp_reset"), &["ap"])],
        ),
        (
            "blackhole in one region",
            witnessed(
                evidence(three(direct_all(Outcome::ConnectTimeout))),
                |_, _| false,
            ),
            Status::Faulty,
            vec![want("carrier_interference", Some("blackhole"), &["ap"])],
        ),
        (
            "dns tampering in one region",
            evidence(three({
                let mut v = healthy();
                v.retain(|o| o.route != Route::Dns);
                v.push(dns(&["10.10.34.35"]));
                v
            })),
            Status::Faulty,
            vec![want("carrier_interference", Some("dns_tampering"), &["ap"])],
        ),
        (
            "dns tampering explains the region's failing resolver-routed edge request",
            {
                let mut ev = evidence(three({
                    let mut v = healthy();
                    v.retain(|o| o.route != Route::Dns);
                    v.push(dns(&["10.10.34.35"]));
                    for o in v.iter_mut().filter(|o| o.route == Route::Edge) {
                        fail(o, Outcome::NetworkUnreachable, 1.0);
                    }
                    v
                }));
                ev.target.edges.clear();
                for r in &mut ev.regions {
                    for o in r.observations.iter_mut().filter(|o| o.route == Route::Edge) {
                        o.address.clear();
                    }
                }
                ev
            },
            Status::Faulty,
            vec![want("carrier_interference", Some("dns_tampering"), &["ap"])],
        ),
        (
            "tls interception in one region",
            witnessed(
                evidence({
                    let tls = |fp: &'static str, verified: bool| {
                        move |o: &mut Observation| {
                            o.tls_sha256 = fp.repeat(32);
                            o.tls_verified = Some(verified);
                        }
                    };
                    vec![
                        region(
                            "eu",
                            bend(healthy(), Route::Direct, Variant::Baseline, tls("cc", true)),
                        ),
                        region(
                            "us",
                            bend(healthy(), Route::Direct, Variant::Baseline, tls("cc", true)),
                        ),
                        region(
                            "ap",
                            bend(
                                healthy(),
                                Route::Direct,
                                Variant::Baseline,
                                tls("dd", false),
                            ),
                        ),
                    ]
                }),
                |r, o| r == "ap" && o.route == Route::Direct && o.variant == Variant::Baseline,
            ),
            Status::Faulty,
            vec![want(
                "carrier_interference",
                Some("tls_interception"),
                &["ap"],
            )],
        ),
        (
            "two of four regions injected (witness decides)",
            witnessed(
                evidence(vec![
                    region("eu", healthy()),
                    region(
                        "us",
                        bend(healthy(), Route::Direct, Variant::Baseline, injected),
                    ),
                    region("sa", healthy()),
                    region(
                        "ap",
                        bend(healthy(), Route::Direct, Variant::Baseline, injected),
                    ),
                ]),
                |r, o| {
                    (r == "us" || r == "ap")
                        && o.route == Route::Direct
                        && o.variant == Variant::Baseline
                },
            ),
            Status::Faulty,
            vec![want(
                "carrier_interference",
                Some("http_injection"),
                &["us", "ap"],
            )],
        ),
        (
            "edge fault via one edge address",
            witnessed(
                evidence(all_three(|| {
                    let mut v = healthy();
                    let mut bad = ok(Route::Edge, Variant::Baseline, EDGE2);
                    bad.status = Some(502);
                    v.push(bad.clone());
                    v.push(bad);
                    v
                })),
                |_, _| false,
            ),
            Status::Faulty,
            vec![want("edge_fault", None, ALL)],
        ),
        (
            "slow origin plus one hijacked region",
            witnessed(
                evidence(vec![
                    region(
                        "eu",
                        bend(healthy(), Route::Direct, Variant::Baseline, slow),
                    ),
                    region(
                        "us",
                        bend(healthy(), Route::Direct, Variant::Baseline, slow),
                    ),
                    region(
                        "ap",
                        bend(healthy(), Route::Direct, Variant::Baseline, injected),
                    ),
                ]),
                |r, o| r == "ap" && o.route == Route::Direct && o.variant == Variant::Baseline,
            ),
            Status::Faulty,
            vec![
                want("carrier_interference", Some("http_injection"), &["ap"]),
                want("origin_slow", None, &["eu", "us"]),
            ],
        ),
        (
            "never diff against a failing control",
            evidence(vec![
                region("eu", direct_all(Outcome::Reset)),
                region("us", direct_all(Outcome::ConnectTimeout)),
                region("ap", healthy()),
            ]),
            Status::Faulty,
            vec![
                want("carrier_interference", Some("tcp_reset"), &["eu"]),
                want("carrier_interference", Some("blackhole"), &["us"]),
            ],
        ),
    ];
    for (name, ev, status, findings) in cases {
        let d = diagnose(&ev);
        assert_eq!(codes(&d), findings, "{name}: {d:#?}");
        assert_eq!(d.status, status, "{name}");
        for f in &d.findings {
            assert!(
                !f.reproduce.is_empty(),
                "{name}: {} has no reproduce",
                f.code
            );
            assert!(
                f.reproduce
                    .iter()
                    .all(|c| c.contains("curl") || c.starts_with("dig ")),
                "{name}: {:?}",
                f.reproduce
            );
            assert!(
                !f.evidence.is_empty() && !f.summary.is_empty() && !f.advice.is_empty(),
                "{name}"
            );
        }
    }
}

fn only(ev: &Evidence) -> Finding {
    let d = diagnose(ev);
    assert_eq!(d.findings.len(), 1, "{d:#?}");
    d.findings[0].clone()
}

#[test]
fn origin_down_is_high_with_three_regions_and_reproduces_with_resolve() {
    let f = only(&evidence(all_three(|| direct_all(Outcome::ConnectRefused))));
    assert_eq!(f.confidence, Confidence::High);
    assert!(f.reproduce[0].starts_with(
        "curl -vo/dev/null 'http://www.test.com/test.jpg' --resolve www.test.com:80:198.51.100.7"
    ));
    assert!(f.summary.contains("521"), "{}", f.summary);
}

#[test]
fn slow_advice_names_ttfb_and_a_timeout() {
    let f = only(&evidence(all_three(|| {
        bend(healthy(), Route::Direct, Variant::Baseline, slow)
    })));
    assert!(f.advice.contains("20.0 s"), "{}", f.advice);
    assert!(f.advice.contains("about 30 s"), "{}", f.advice);
    assert!(f.advice.contains("below your clients' own timeout"));
    assert!(f.reproduce[0].contains("--max-time"));
}

#[test]
fn cdn_headers_evidence_names_the_bisected_header() {
    let mut ev = evidence(all_three(|| {
        bend(healthy(), Route::Direct, Variant::CdnHeaders, |o| {
            o.status = Some(403)
        })
    }));
    ev.blocked_headers = vec!["CDN-Loop".to_string()];
    let f = only(&ev);
    assert!(
        f.evidence.iter().any(|e| e.contains("CDN-Loop")),
        "{:?}",
        f.evidence
    );
    assert!(f.summary.contains("CDN-Loop"));
    assert!(
        f.reproduce
            .iter()
            .any(|c| c.ends_with("-H 'CDN-Loop: TencentEdgeOne; loops=1'")),
        "{:?}",
        f.reproduce
    );
}

#[test]
fn origin_blocks_edge_without_witness_is_less_sure_and_says_so() {
    let bent = || {
        bend(healthy(), Route::Edge, Variant::Baseline, |o| {
            o.status = Some(522)
        })
    };
    let with = only(&witnessed(evidence(all_three(bent)), |_, _| false));
    let without = only(&evidence(all_three(bent)));
    assert_eq!(with.confidence, Confidence::High);
    assert_eq!(without.confidence, Confidence::Medium);
    assert!(without
        .evidence
        .iter()
        .any(|e| e.contains("no origin witness")));
    assert!(with.evidence.iter().any(|e| e.contains("EO-0123-abcd")));
}

#[test]
fn edge_pulls_the_witness_saw_are_not_origin_blocks_edge() {
    let ev = evidence(all_three(|| {
        bend(healthy(), Route::Edge, Variant::Baseline, |o| {
            o.status = Some(502)
        })
    }));
    let mut w = WitnessEvidence::default();
    for r in &ev.regions {
        for o in r.observations.iter().filter(|o| o.route == Route::Edge) {
            w.seen.insert(o.nonce.clone(), vec!["43.1.1.1".to_string()]);
        }
    }
    let ev = Evidence {
        witness: Some(w),
        ..ev
    };
    assert!(diagnose(&ev)
        .findings
        .iter()
        .all(|f| f.code != FindingCode::OriginBlocksEdge));
}

/// The edge passes on the origin's 403 everywhere (nginx `allow/deny` on
/// the pull IPs) while direct requests get the page.
fn edge_refused() -> Vec<Observation> {
    bend(healthy(), Route::Edge, Variant::Baseline, |o| {
        o.status = Some(403);
        o.title = "403 Forbidden".into();
    })
}

fn edge_pulls_seen(ev: Evidence) -> Evidence {
    let mut w = WitnessEvidence::default();
    for r in &ev.regions {
        for o in r.observations.iter() {
            w.seen
                .insert(o.nonce.clone(), vec!["43.175.1.9".to_string()]);
        }
    }
    Evidence {
        witness: Some(w),
        ..ev
    }
}

#[test]
fn an_allowlist_that_answers_403_is_origin_blocks_edge() {
    let f = only(&edge_pulls_seen(evidence(all_three(edge_refused))));
    assert_eq!(f.code, FindingCode::OriginBlocksEdge);
    assert_eq!(
        f.regions,
        ALL.iter().map(|r| r.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(f.confidence, Confidence::High);
    assert!(f.summary.contains("403"), "{}", f.summary);
    assert!(
        f.evidence
            .iter()
            .any(|e| e.contains("pulls arrived (from 43.175.1.9) and were refused")),
        "{:?}",
        f.evidence
    );
    let without = only(&evidence(all_three(edge_refused)));
    assert_eq!(without.code, FindingCode::OriginBlocksEdge);
    assert_eq!(without.confidence, Confidence::Medium);
    assert!(without
        .evidence
        .iter()
        .any(|e| e.contains("the CDN's own access rule")));
    // The witness saw none of the refused pulls: the CDN refused them itself.
    let not_origin = witnessed(evidence(all_three(edge_refused)), |_, o| {
        o.route == Route::Edge
    });
    assert!(diagnose(&not_origin)
        .findings
        .iter()
        .all(|f| f.code != FindingCode::OriginBlocksEdge));
}

#[test]
fn a_pull_header_waf_that_refuses_the_edge_too_is_one_finding() {
    let ev = edge_pulls_seen(evidence(all_three(|| {
        let blocked = bend(healthy(), Route::Direct, Variant::CdnHeaders, |o| {
            o.status = Some(403);
            o.body_bytes = 50;
            o.title = "Forbidden".to_string();
        });
        bend(blocked, Route::Edge, Variant::Baseline, |o| {
            o.status = Some(403)
        })
    })));
    let d = diagnose(&ev);
    let codes: Vec<&str> = d.findings.iter().map(|f| f.code.as_str()).collect();
    assert_eq!(codes, ["origin_blocks_cdn_headers"], "{d:#?}");
}

/// Regions whose resolvers answer for the site: the honest ones give the
/// edge's address, the liars a foreign one. Without `--edge`
/// (`named_edge` false) the regions reach the edge through their own
/// answer, so the liars get a block page the origin never sees; with it,
/// every region's edge requests go to the named edge and are fine, and no
/// witness ran.
fn resolver_regions(names: &[&str], liars: &[&str], named_edge: bool) -> Evidence {
    const EDGE_IP: &str = "203.0.113.77";
    let regions = names
        .iter()
        .map(|name| {
            let mut v = healthy();
            v.retain(|o| o.route != Route::Dns);
            let lied = liars.contains(name);
            v.push(dns(&[if lied { "10.10.34.35" } else { EDGE_IP }]));
            for o in v.iter_mut().filter(|o| o.route == Route::Edge) {
                if named_edge {
                    o.address = EDGE_IP.to_string();
                } else {
                    o.address.clear();
                    if lied {
                        injected(o);
                    }
                }
            }
            region(name, v)
        })
        .collect();
    let mut ev = evidence(regions);
    if named_edge {
        ev.target.edges = vec![EDGE_IP.to_string()];
        return ev;
    }
    ev.target.edges.clear();
    // The witness saw what reached the origin: not the liars' edge requests.
    witnessed(ev, |region, o| {
        o.route == Route::Edge && liars.contains(&region)
    })
}

#[test]
fn two_regions_told_the_same_lie_do_not_hide_each_other() {
    for (names, liars) in [
        (&["eu", "us", "ap", "sa"][..], &["ap", "sa"][..]),
        (&["eu", "us", "ap"][..], &["ap", "us"][..]),
        (&["eu", "us", "ap"][..], &["ap"][..]),
    ] {
        for named_edge in [false, true] {
            let d = diagnose(&resolver_regions(names, liars, named_edge));
            let mut want: Vec<String> = liars.iter().map(|r| r.to_string()).collect();
            want.sort();
            let dns: Vec<&Finding> = d
                .findings
                .iter()
                .filter(|f| f.kind == Some(FindingKind::DnsTampering))
                .collect();
            assert_eq!(dns.len(), 1, "{liars:?}: {d:#?}");
            let mut got = dns[0].regions.clone();
            got.sort();
            assert_eq!(got, want, "{liars:?}: {d:#?}");
            assert!(
                d.findings
                    .iter()
                    .all(|f| f.code == FindingCode::CarrierInterference
                        && f.kind == Some(FindingKind::DnsTampering)),
                "the liars' block pages are the lie's, not a second finding: {d:#?}"
            );
        }
    }
}

#[test]
fn interference_without_witness_is_medium_and_with_it_high() {
    let bent = || three(direct_all(Outcome::Reset));
    let with = only(&witnessed(evidence(bent()), |_, _| false));
    let without = only(&evidence(bent()));
    assert_eq!(with.confidence, Confidence::High);
    assert_eq!(without.confidence, Confidence::Medium);
    assert!(without
        .evidence
        .iter()
        .any(|e| e.contains("no origin witness")));
}

#[test]
fn witness_seeing_the_request_rules_out_the_carrier() {
    // The origin itself reset this region's requests (it saw them): not the path.
    let ev = evidence(three(bend(
        healthy(),
        Route::Direct,
        Variant::Baseline,
        |o| {
            o.status = Some(403);
            o.title = "Blocked country".to_string();
        },
    )));
    let ev = witnessed(ev, |_, _| false);
    assert!(diagnose(&ev)
        .findings
        .iter()
        .all(|f| f.code != FindingCode::CarrierInterference));
}

#[test]
fn an_unfinished_region_is_named_and_what_it_sent_still_counts() {
    let mut regions = three(direct_all(Outcome::Reset));
    regions[2].lost = true;
    regions[2].lost_reason = "agent agent-ap disconnected: killed".into();
    let d = diagnose(&evidence(regions));
    assert_eq!(d.status, Status::Faulty, "{d:#?}");
    assert!(d
        .findings
        .iter()
        .any(|f| f.code == FindingCode::CarrierInterference && f.regions == ["ap"]));
    assert_eq!(d.missing.len(), 1, "{:?}", d.missing);
    assert!(d.missing[0].starts_with("ap: agent agent-ap disconnected"));

    // Healthy only because the two regions that finished are decisive; the
    // summary says which regions the verdict rests on.
    let mut regions = three(healthy());
    regions[2].lost = true;
    regions[2].observations.clear();
    let d = diagnose(&evidence(regions));
    assert_eq!(d.status, Status::Healthy, "{d:#?}");
    assert!(d.summary.contains("eu, us"), "{}", d.summary);
    assert!(d.summary.contains("1 did not finish"), "{}", d.summary);
    assert!(d.missing.iter().any(|m| m.starts_with("ap: ")));

    let mut regions = three(healthy());
    regions[0].lost = true;
    regions[1].lost = true;
    let d = diagnose(&evidence(regions));
    assert_eq!(d.status, Status::Inconclusive);
    assert!(
        d.missing.iter().any(|m| m.starts_with("eu: ")),
        "{:?}",
        d.missing
    );
    assert!(d
        .missing
        .iter()
        .any(|m| m.contains("at least 2 regions that finished")));
}

#[test]
fn every_region_lost_is_inconclusive() {
    let mut regions = three(healthy());
    for r in &mut regions {
        r.lost = true;
    }
    let d = diagnose(&evidence(regions));
    assert_eq!(d.status, Status::Inconclusive);
    assert!(d.findings.is_empty());
    assert_eq!(d.missing.len(), 4, "{:?}", d.missing);
}

#[test]
fn single_region_finding_is_reported_with_low_confidence() {
    let d = diagnose(&evidence(vec![region(
        "local",
        direct_all(Outcome::ConnectRefused),
    )]));
    assert_eq!(d.status, Status::Faulty);
    assert_eq!(d.findings[0].confidence, Confidence::Low);
    assert!(!d.missing.is_empty());
}

#[test]
fn flaky_single_attempt_is_not_a_fault() {
    let regions = all_three(|| {
        let mut v = healthy();
        if let Some(o) = v.iter_mut().find(|o| o.route == Route::Direct) {
            fail(o, Outcome::Reset, 5.0);
        }
        v
    });
    assert_eq!(diagnose(&evidence(regions)).status, Status::Healthy);
}

#[test]
fn edge_fault_in_one_region_with_the_edges_own_52x() {
    let ev = witnessed(
        evidence(three(bend(
            healthy(),
            Route::Edge,
            Variant::Baseline,
            |o| o.status = Some(520),
        ))),
        |_, _| false,
    );
    let f = only(&ev);
    assert_eq!(f.code, FindingCode::EdgeFault);
    assert_eq!(f.regions, vec!["ap".to_string()]);
    assert_eq!(f.confidence, Confidence::High);
}

#[test]
fn ipv6_addresses_are_bracketed() {
    let mut t = target();
    t.port = 443;
    t.url = "https://www.test.com/".to_string();
    assert_eq!(
        curl::curl(&t, Route::Edge, "2001:db8::1", &[], Some(5)),
        "curl -vo/dev/null 'https://www.test.com/' --resolve www.test.com:443:[2001:db8::1] --max-time 5"
    );
    assert_eq!(
        curl::curl(&t, Route::Edge, "[2001:db8::1]:8443", &[], None),
        "curl -vo/dev/null 'https://www.test.com/' --connect-to www.test.com:443:[2001:db8::1]:8443"
    );
    assert_eq!(
        split_address("1.2.3.4:80"),
        ("1.2.3.4".to_string(), Some(80))
    );
    let burst = curl::burst(&t, "1.2.3.4", 10);
    assert!(burst.starts_with("for i in $(seq 1 10); do curl"));
    assert!(burst.ends_with("& done; wait"));
}

#[test]
fn body_comparison_uses_length_proportion() {
    assert!(compare::similar_length(1000, 800));
    assert!(!compare::similar_length(1000, 700));
    assert!(compare::similar_length(0, 0));
    let a = ok(Route::Direct, Variant::Baseline, ORIGIN);
    let mut b = a.clone();
    b.body_sha256 = "ee".repeat(32);
    b.body_bytes = 950;
    assert!(
        compare::same_page(&a, &b),
        "a dynamic page is still the same page"
    );
    b.title = "Blocked".to_string();
    assert!(!compare::same_page(&a, &b));
}

#[test]
fn diagnosis_serializes_lowercase() {
    let d = diagnose(&evidence(all_three(|| direct_all(Outcome::ConnectRefused))));
    let json = serde_json::to_value(&d).unwrap_or_default();
    assert_eq!(json["status"], "faulty");
    assert_eq!(json["findings"][0]["confidence"], "high");
    assert_eq!(json["findings"][0]["kind"], "connect_refused");
}

/// The origin's own rate-limit refusal page (nginx `limit_conn`: 503).
fn throttled_page(o: &mut Observation) {
    o.status = Some(503);
    o.body_bytes = 197;
    o.body_sha256 = "5b".repeat(32);
    o.title = "503 Service Temporarily Unavailable".to_string();
}

#[test]
fn a_connection_limit_refusing_whichever_requests_overlap_is_only_a_rate_limit() {
    // What nginx's limit_conn did on the real-server tier: in every region
    // half the burst is refused, and the first attempts of the baseline and
    // of the pull-header probe (which overlap) get the same 503 page, while
    // later attempts get the site. In one region every edge attempt got the
    // origin's 503 page through the edge (the edge's pull address is shared
    // by every region, so it is throttled hardest).
    let region_obs = |edge_all_refused: bool| {
        let mut v = healthy();
        v.push(ok(Route::Direct, Variant::CdnHeaders, ORIGIN));
        v.push(ok(Route::Direct, Variant::CdnHeaders, ORIGIN));
        v.push(ok(Route::Edge, Variant::Baseline, EDGE));
        let mut first_baseline = true;
        let mut cdn_refused = 0;
        let mut burst_refused = 0;
        let mut edge_refused = 0;
        for o in v.iter_mut() {
            match (o.route, o.variant) {
                (Route::Direct, Variant::Baseline) if first_baseline => {
                    first_baseline = false;
                    throttled_page(o);
                }
                (Route::Direct, Variant::CdnHeaders) if cdn_refused < 2 => {
                    cdn_refused += 1;
                    throttled_page(o);
                }
                (Route::Direct, Variant::Burst) if burst_refused < 2 => {
                    burst_refused += 1;
                    throttled_page(o);
                }
                (Route::Edge, Variant::Baseline) if edge_all_refused || edge_refused < 2 => {
                    edge_refused += 1;
                    throttled_page(o);
                }
                _ => {}
            }
        }
        v
    };
    let ev = evidence(vec![
        region("ap", region_obs(false)),
        region("eu", region_obs(true)),
        region("us", region_obs(false)),
    ]);
    let d = diagnose(&ev);
    assert_eq!(
        codes(&d),
        vec![want("origin_rate_limited", None, &["ap", "eu", "us"])],
        "{d:#?}"
    );

    // An injector's page is still an injection, though two regions see it.
    let mut block = healthy();
    for o in block
        .iter_mut()
        .filter(|o| o.route == Route::Direct && o.variant != Variant::Burst)
    {
        injected(o);
    }
    let ev = witnessed(
        evidence(vec![
            region("ap", block.clone()),
            region("eu", healthy()),
            region("sa", healthy()),
            region("us", block),
        ]),
        |region, o| (region == "ap" || region == "us") && o.route == Route::Direct,
    );
    let d = diagnose(&ev);
    assert!(
        d.findings
            .iter()
            .any(|f| f.code == FindingCode::CarrierInterference
                && f.kind == Some(FindingKind::HttpInjection)),
        "{d:#?}"
    );
}

/// Every contract name the report JSON carries is the one `as_str` gives,
/// both ways: what the renderers print is what scripts parse.
#[test]
fn contract_names_serialize_as_their_stable_names() {
    fn both_ways<T>(value: T, name: &str)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        assert_eq!(serde_json::to_value(&value).unwrap(), name, "{value:?}");
        let back: T = serde_json::from_value(serde_json::Value::from(name)).unwrap();
        assert_eq!(back, value);
    }
    for code in FindingCode::ALL {
        both_ways(code, code.as_str());
    }
    for kind in FindingKind::ALL {
        both_ways(kind, kind.as_str());
        assert!(
            FindingCode::ALL.contains(&kind.code()),
            "{kind} belongs to a code"
        );
    }
    for confidence in [Confidence::High, Confidence::Medium, Confidence::Low] {
        both_ways(confidence, confidence.as_str());
    }
    for status in [Status::Healthy, Status::Faulty, Status::Inconclusive] {
        both_ways(status, status.as_str());
    }
    for variant in Variant::ALL {
        both_ways(variant, variant.as_str());
    }
    for route in [Route::Direct, Route::Edge, Route::Dns] {
        both_ways(route, route.as_str());
    }
    for outcome in Outcome::ALL {
        both_ways(outcome, outcome.as_str());
    }
}
