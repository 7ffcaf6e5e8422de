//! Regional carrier interference, for real (issue 5, DESIGN §5 and §8): each
//! test runs the whole lab — origin, edge, coordinator, witness and one agent
//! per region, each region on its own source address — inside a private
//! network namespace, applies packet-level interference with iptables to
//! some regions only, and asserts on the JSON report of a real
//! `vantage diagnose`: the right finding and kind, exactly the interfered
//! regions, no false finding on a clean region, and the witness's proof that
//! the interfered requests never reached the origin.
//!
//! Needs root, `ip` and `iptables`; otherwise each test prints `SKIPPED` with
//! the reason, and fails under `CI=true`. Each test prints a `FIGURE` line
//! (regions named / interfered, false findings) for docs/BENCHMARKS.md.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use vantage_lab::carrier::{hijack_http, InjectedReply, Injector, Resolver, BLOCK_TITLE};
use vantage_lab::fixture::{Fault, Fixture, TlsMode, LAB_HOST};
use vantage_lab::netns::{self, apply, rule_hits, Interference};
use vantage_lab::scenario::{
    findings, region_source, regions_of, reproduce_is_well_formed, Scenario, ScenarioBuilder,
    QUICK_DIAGNOSE,
};
use vantage_proto::cdn::CdnProfile;

/// Diagnose flags: one attempt, a small burst, a scaled-down edge timeout.
const QUICK: &[&str] = QUICK_DIAGNOSE;

/// The address the carrier's middleboxes listen on.
const CARRIER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 77));

/// A foreign address a lying resolver hands out (a well-known hijack target).
const FOREIGN: Ipv4Addr = Ipv4Addr::new(10, 10, 34, 35);

fn source(region: &str) -> IpAddr {
    region_source(region).expect("a lab region")
}

/// The carrier of each of `regions` answers their plain HTTP to `target`.
async fn hijack(ns: &str, reply: InjectedReply, regions: &[&str], target: SocketAddr) -> Injector {
    let sources: Vec<IpAddr> = regions.iter().map(|r| source(r)).collect();
    hijack_http(ns, CARRIER_IP, reply, &sources, target)
        .await
        .unwrap()
}

/// The nonces of `region` the origin's access log holds (the witness's
/// ground truth).
fn logged_for(lab: &Scenario, region: &str) -> usize {
    let log = std::fs::read_to_string(lab.origin.access_log_path()).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains(&format!("-{region}-")))
        .count()
}

/// Asserts that `report` names `kind` interference in exactly `interfered`,
/// that no other carrier finding names any region, and that no finding
/// other than `also` exists; prints the figure line.
fn assert_interference(
    case: &str,
    report: &serde_json::Value,
    kind: &str,
    interfered: &[&str],
    also: &[&str],
) {
    let carrier = findings(report, "carrier_interference");
    let mine: Vec<_> = carrier.iter().filter(|f| f["kind"] == kind).collect();
    let named = mine.first().map(|f| regions_of(f)).unwrap_or_default();
    let mut want: Vec<String> = interfered.iter().map(|r| r.to_string()).collect();
    want.sort();
    let hits = named.iter().filter(|r| want.contains(r)).count();
    let false_regions: Vec<String> = carrier
        .iter()
        .flat_map(|f| regions_of(f))
        .filter(|r| !want.contains(r))
        .collect();
    eprintln!(
        "FIGURE {case} ({kind}): regions named {hits}/{} interfered, false findings on clean regions: {}",
        want.len(),
        false_regions.len()
    );
    assert_eq!(mine.len(), 1, "one {kind} finding: {report:#}");
    assert_eq!(named, want, "{report:#}");
    assert!(false_regions.is_empty(), "{false_regions:?}: {report:#}");
    assert_eq!(carrier.len(), 1, "no other carrier finding: {report:#}");
    let others: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["code"].as_str())
        .filter(|c| *c != "carrier_interference" && !also.contains(c))
        .collect();
    assert!(others.is_empty(), "unexpected {others:?}: {report:#}");
    assert_eq!(report["status"], "faulty", "{report:#}");
    reproduce_is_well_formed(report).unwrap();
}

/// The witness's per-region sightings in the report: (seen, sent).
fn witnessed(report: &serde_json::Value, region: &str) -> (u64, u64) {
    let n = &report["witness"]["by_region"][region];
    (
        n["seen"].as_u64().unwrap_or(0),
        n["sent"].as_u64().unwrap_or(0),
    )
}

fn evidence_text(report: &serde_json::Value, code: &str) -> String {
    findings(report, code)
        .iter()
        .flat_map(|f| f["evidence"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn healthy_lab() -> Scenario {
    ScenarioBuilder::new(Fault::Healthy, TlsMode::Plain)
        .start()
        .await
        .unwrap()
}

#[test]
fn http_injection_block_page_in_one_region() {
    netns::run("http_injection_block_page_in_one_region", |ns| async move {
        let lab = healthy_lab().await;
        let injector = hijack(&ns, InjectedReply::BlockPage, &["ap"], lab.origin.addr()).await;
        let (code, report) = lab.diagnose(QUICK).await.unwrap();
        assert_eq!(code, 1, "{report:#}");
        assert_interference(
            "block page, 1 of 3 regions",
            &report,
            "http_injection",
            &["ap"],
            &[],
        );
        assert!(injector.answered() > 0, "the injector answered ap");
        let evidence = evidence_text(&report, "carrier_interference");
        assert!(evidence.contains(BLOCK_TITLE), "{evidence}");
        assert!(
            evidence.contains("origin witness: saw 0 of the 1 direct requests from ap"),
            "{evidence}"
        );
        assert_eq!(
            logged_for(&lab, "ap"),
            0,
            "ap's requests never reached the origin"
        );
        assert!(logged_for(&lab, "eu") > 0 && logged_for(&lab, "us") > 0);
        // The report carries the same proof, per region.
        let (seen, sent) = witnessed(&report, "ap");
        assert!(seen == 0 && sent > 0, "ap: {seen}/{sent}: {report:#}");
        let (seen, sent) = witnessed(&report, "eu");
        assert!(seen == sent && sent > 0, "eu: {seen}/{sent}: {report:#}");
    });
}

#[test]
fn http_injection_redirect_in_two_of_four_regions() {
    netns::run(
        "http_injection_redirect_in_two_of_four_regions",
        |ns| async move {
            let lab = ScenarioBuilder::new(Fault::Healthy, TlsMode::Plain)
                .regions(4)
                .start()
                .await
                .unwrap();
            let injector = hijack(
                &ns,
                InjectedReply::Redirect,
                &["eu", "sa"],
                lab.origin.addr(),
            )
            .await;
            let (code, report) = lab.diagnose(QUICK).await.unwrap();
            assert!(injector.answered() > 0, "the carrier answered");
            assert_eq!(code, 1, "{report:#}");
            assert_interference(
                "redirect, 2 of 4 regions",
                &report,
                "http_injection",
                &["eu", "sa"],
                &[],
            );
            assert!(evidence_text(&report, "carrier_interference").contains("302"));
            for region in ["eu", "sa"] {
                assert_eq!(logged_for(&lab, region), 0, "{region}");
            }
            for region in ["us", "ap"] {
                assert!(logged_for(&lab, region) > 0, "{region}");
            }
        },
    );
}

#[test]
fn tcp_reset_in_one_region() {
    netns::run("tcp_reset_in_one_region", |ns| async move {
        let lab = healthy_lab().await;
        apply(
            &ns,
            &Interference::TcpReset {
                source: source("us"),
                target: lab.origin.addr(),
                marker: format!("Host: {LAB_HOST}"),
            },
        )
        .unwrap();
        let (code, report) = lab.diagnose(QUICK).await.unwrap();
        assert_eq!(code, 1, "{report:#}");
        assert_interference(
            "reset on the host name, 1 of 3",
            &report,
            "tcp_reset",
            &["us"],
            &[],
        );
        assert!(
            rule_hits(&ns, "filter").unwrap()[0] > 0,
            "the reset rule fired"
        );
        assert_eq!(logged_for(&lab, "us"), 0);
        assert!(logged_for(&lab, "eu") > 0 && logged_for(&lab, "ap") > 0);
    });
}

#[test]
fn blackhole_in_one_region() {
    netns::run("blackhole_in_one_region", |ns| async move {
        let lab = healthy_lab().await;
        apply(
            &ns,
            &Interference::Blackhole {
                source: source("ap"),
                target: lab.origin.addr(),
            },
        )
        .unwrap();
        let (code, report) = lab.diagnose(QUICK).await.unwrap();
        assert_eq!(code, 1, "{report:#}");
        assert_interference(
            "dropped packets, 1 of 3",
            &report,
            "blackhole",
            &["ap"],
            &[],
        );
        assert!(
            rule_hits(&ns, "filter").unwrap()[0] > 0,
            "SYNs were dropped"
        );
        assert_eq!(logged_for(&lab, "ap"), 0);
    });
}

#[test]
fn dns_tampering_in_one_region() {
    netns::run("dns_tampering_in_one_region", |_ns| async move {
        // The honest resolver tells the truth: the site is at the origin.
        let honest = Resolver::spawn("127.0.0.53".parse().unwrap(), Ipv4Addr::LOCALHOST)
            .await
            .unwrap();
        let lying = Resolver::spawn("127.0.0.54".parse().unwrap(), FOREIGN)
            .await
            .unwrap();
        let (h, l) = (honest.addr().to_string(), lying.addr().to_string());
        let lab = ScenarioBuilder::new(Fault::Healthy, TlsMode::Plain)
            .agent_args("eu", &["--dns-server", &h])
            .agent_args("us", &["--dns-server", &h])
            .agent_args("ap", &["--dns-server", &l])
            .start()
            .await
            .unwrap();
        let (code, report) = lab.diagnose(QUICK).await.unwrap();
        assert_eq!(code, 1, "{report:#}");
        assert_interference(
            "lying resolver, 1 of 3",
            &report,
            "dns_tampering",
            &["ap"],
            &[],
        );
        let evidence = evidence_text(&report, "carrier_interference");
        assert!(evidence.contains(&FOREIGN.to_string()), "{evidence}");
        assert!(
            evidence.contains("127.0.0.1"),
            "the honest answer: {evidence}"
        );
        assert!(honest.queries() > 0 && lying.queries() > 0);
    });
}

/// An origin with a valid certificate that the agents trust; `intercepted`
/// regions reach a middlebox with its own, untrusted certificate instead.
async fn tls_interception(ns: &str, intercepted: &[&str]) -> serde_json::Value {
    let lab = ScenarioBuilder::new(Fault::Healthy, TlsMode::Valid)
        .trust_origin_ca()
        .start()
        .await
        .unwrap();
    let middlebox = Fixture::builder(Fault::Healthy)
        .tls(TlsMode::Untrusted)
        .spawn()
        .await
        .unwrap();
    for region in intercepted {
        apply(
            ns,
            &Interference::TlsInterception {
                source: source(region),
                target: lab.origin.addr(),
                interceptor: middlebox.addr(),
            },
        )
        .unwrap();
    }
    let (code, report) = lab.diagnose(QUICK).await.unwrap();
    assert_eq!(code, 1, "{report:#}");
    // The agents refuse the middlebox's certificate before any request is
    // sent, so the diverting rules' counters are the proof it was reached.
    let diverted: u64 = rule_hits(ns, "nat").unwrap().iter().sum();
    assert!(diverted > 0, "the middlebox was reached");
    drop(middlebox);
    for region in intercepted {
        assert_eq!(logged_for(&lab, region), 0, "{region}");
    }
    report
}

#[test]
fn tls_interception_in_one_region() {
    netns::run("tls_interception_in_one_region", |ns| async move {
        let report = tls_interception(&ns, &["eu"]).await;
        assert_interference(
            "intercepting middlebox, 1 of 3",
            &report,
            "tls_interception",
            &["eu"],
            &[],
        );
        assert!(findings(&report, "origin_tls_error").is_empty());
    });
}

#[test]
fn tls_interception_everywhere_is_the_origins_certificate() {
    netns::run(
        "tls_interception_everywhere_is_the_origins_certificate",
        |ns| async move {
            let report = tls_interception(&ns, &["eu", "us", "ap"]).await;
            let carrier = findings(&report, "carrier_interference").len();
            eprintln!(
                "FIGURE every region intercepted (origin_tls_error): found {}, false carrier findings: {carrier}",
                findings(&report, "origin_tls_error").len()
            );
            assert_eq!(findings(&report, "origin_tls_error").len(), 1, "{report:#}");
            assert!(
                findings(&report, "carrier_interference").is_empty(),
                "{report:#}"
            );
        },
    );
}

#[test]
fn hijacked_region_while_the_origin_is_slow() {
    netns::run(
        "hijacked_region_while_the_origin_is_slow",
        |ns| async move {
            let lab = ScenarioBuilder::new(
                Fault::SlowFirstByte(Duration::from_millis(900)),
                TlsMode::Plain,
            )
            .start()
            .await
            .unwrap();
            let injector = hijack(&ns, InjectedReply::BlockPage, &["ap"], lab.origin.addr()).await;
            let (code, report) = lab.diagnose(QUICK).await.unwrap();
            assert!(injector.answered() > 0, "the carrier answered");
            assert_eq!(code, 1, "{report:#}");
            assert_interference(
                "block page while the origin is slow",
                &report,
                "http_injection",
                &["ap"],
                &["origin_slow"],
            );
            let slow = findings(&report, "origin_slow");
            assert_eq!(slow.len(), 1, "both findings hold: {report:#}");
            assert_eq!(regions_of(slow[0]), ["eu", "us"], "{report:#}");
        },
    );
}

#[test]
fn interference_on_the_edge_route_only() {
    netns::run("interference_on_the_edge_route_only", |ns| async move {
        let edge_ip: IpAddr = "127.0.0.20".parse().unwrap();
        let lab = ScenarioBuilder::new(Fault::Healthy, TlsMode::Plain)
            .edge(
                CdnProfile::EdgeOne,
                Duration::from_millis(600),
                vec![(edge_ip, None)],
            )
            .start()
            .await
            .unwrap();
        let edge: SocketAddr = lab.edge.as_ref().unwrap().addrs()[0];
        apply(
            &ns,
            &Interference::TcpReset {
                source: source("us"),
                target: edge,
                marker: LAB_HOST.to_string(),
            },
        )
        .unwrap();
        let (code, report) = lab.diagnose(QUICK).await.unwrap();
        assert_eq!(code, 1, "{report:#}");
        assert_interference(
            "reset on the edge route only",
            &report,
            "tcp_reset",
            &["us"],
            &[],
        );
        let evidence = evidence_text(&report, "carrier_interference");
        assert!(evidence.contains(&edge.to_string()), "{evidence}");
        // The direct route from us was clean: its requests reached the origin.
        assert!(logged_for(&lab, "us") > 0);
    });
}

#[test]
fn per_client_content_seen_by_the_witness_is_not_interference() {
    netns::run(
        "per_client_content_seen_by_the_witness_is_not_interference",
        |_ns| async move {
            let lab = ScenarioBuilder::new(Fault::GeoContent, TlsMode::Plain)
                .start()
                .await
                .unwrap();
            let (code, report) = lab.diagnose(QUICK).await.unwrap();
            assert_eq!(report["status"], "healthy", "{report:#}");
            assert_eq!(code, 0, "{report:#}");
            assert!(findings(&report, "carrier_interference").is_empty());
            for region in ["eu", "us", "ap"] {
                assert!(logged_for(&lab, region) > 0, "{region}");
            }
            eprintln!(
                "FIGURE geo content (no interference): regions named 0/0 interfered, false findings on clean regions: 0"
            );
        },
    );
}
