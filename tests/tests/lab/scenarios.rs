//! End-to-end diagnosis scenarios with real processes (DESIGN §5, §8): each
//! asserts the JSON report's status, finding code/kind/regions, and that the
//! reproduce commands are well-formed.

use std::time::Duration;

use vantage_lab::fixture::{Fault, TlsMode};
use vantage_lab::scenario::{
    findings, regions_of, reproduce_is_well_formed, ScenarioBuilder, QUICK_DIAGNOSE,
};
use vantage_proto::cdn::CdnProfile;

const ALL: [&str; 3] = ["ap", "eu", "us"];
/// A scaled-down edge timeout keeps the slow scenarios quick.
const EDGE_TIMEOUT: &str = "600ms";
/// Diagnose flags for scenarios that need one attempt and a small burst.
const QUICK: &[&str] = QUICK_DIAGNOSE;
/// Diagnose flags for scenarios that compare two attempts and a burst of 5.
const TWO_ATTEMPTS: &[&str] = &[
    "--edge-timeout",
    EDGE_TIMEOUT,
    "--burst",
    "5",
    "--attempts",
    "2",
];

async fn origin_down(fault: Fault, kind: &str) {
    let lab = ScenarioBuilder::new(fault, TlsMode::Plain)
        .start()
        .await
        .unwrap();
    let (code, report) = lab.diagnose(TWO_ATTEMPTS).await.unwrap();
    assert_eq!(report["schema"], "vantage.report.v1");
    assert_eq!(report["status"], "faulty", "{report:#}");
    assert_eq!(code, 1);
    let down = findings(&report, "origin_down");
    assert_eq!(down.len(), 1, "{report:#}");
    assert_eq!(down[0]["kind"], kind, "{report:#}");
    assert_eq!(regions_of(down[0]), ALL);
    assert!(
        findings(&report, "carrier_interference").is_empty(),
        "{report:#}"
    );
    reproduce_is_well_formed(&report).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_origin_is_healthy() {
    let lab = ScenarioBuilder::new(Fault::Healthy, TlsMode::Plain)
        .start()
        .await
        .unwrap();
    let (code, report) = lab.diagnose(TWO_ATTEMPTS).await.unwrap();
    assert_eq!(report["status"], "healthy", "{report:#}");
    assert_eq!(code, 0);
    assert_eq!(report["regions"].as_array().unwrap().len(), 3);
    assert_eq!(report["witness"]["present"], true);
    assert!(
        report["witness"]["seen"].as_u64().unwrap() > 0,
        "the witness saw the direct probes: {report:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_connect_refused() {
    origin_down(Fault::Refuse, "connect_refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_reset() {
    origin_down(Fault::ResetAfterRequest, "reset").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_empty_reply() {
    origin_down(Fault::EmptyReply, "empty_reply").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_http_5xx() {
    origin_down(Fault::Status(503), "http_5xx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_slow_names_the_ttfb() {
    let lab = ScenarioBuilder::new(
        Fault::SlowFirstByte(Duration::from_millis(900)),
        TlsMode::Plain,
    )
    .start()
    .await
    .unwrap();
    // The first report does not wait past the edge's limit: it knows only
    // "more than", and says a follow-up is measuring the real TTFB.
    let (code, report) = lab.diagnose(QUICK).await.unwrap();
    assert_eq!(code, 1, "{report:#}");
    let slow = findings(&report, "origin_slow");
    assert_eq!(slow.len(), 1, "{report:#}");
    assert_eq!(regions_of(slow[0]), ALL);
    let advice = slow[0]["advice"].as_str().unwrap();
    assert!(
        advice.contains("more than") && advice.contains("from 0.6 s"),
        "names the TTFB seen and the timeout: {advice}"
    );
    assert_eq!(report["ttfb_followup"]["state"], "running", "{report:#}");
    reproduce_is_well_formed(&report).unwrap();

    // --wait-ttfb prints the report with the follow-up's measurement.
    let mut flags = QUICK.to_vec();
    flags.push("--wait-ttfb");
    let (code, report) = lab.diagnose(&flags).await.unwrap();
    assert_eq!(code, 1, "{report:#}");
    let followup = &report["ttfb_followup"];
    assert_eq!(followup["state"], "done", "{report:#}");
    let measured = followup["measurements"].as_array().unwrap();
    assert_eq!(measured.len(), ALL.len(), "one per region: {report:#}");
    for m in measured {
        assert_eq!(m["outcome"], "ok", "{m}");
        let ttfb = m["ttfb_ms"].as_f64().unwrap();
        assert!((900.0..5_000.0).contains(&ttfb), "the real TTFB: {m}");
    }
    let slow = findings(&report, "origin_slow");
    let advice = slow[0]["advice"].as_str().unwrap();
    assert!(
        advice.contains("comes after 0.9 s at worst"),
        "the advice names the measured TTFB: {advice}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_tls_error_certificate() {
    let lab = ScenarioBuilder::new(Fault::Healthy, TlsMode::Untrusted)
        .start()
        .await
        .unwrap();
    let (code, report) = lab.diagnose(QUICK).await.unwrap();
    assert_eq!(code, 1, "{report:#}");
    let tls = findings(&report, "origin_tls_error");
    assert_eq!(tls.len(), 1, "{report:#}");
    assert_eq!(tls[0]["kind"], "certificate");
    assert_eq!(regions_of(tls[0]), ALL);
    reproduce_is_well_formed(&report).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_fault_via_one_edge_address() {
    let lab = ScenarioBuilder::new(Fault::Healthy, TlsMode::Plain)
        .edge(
            CdnProfile::EdgeOne,
            Duration::from_millis(600),
            vec![
                ("127.0.0.2".parse().unwrap(), None),
                ("127.0.0.3".parse().unwrap(), Some(502)),
            ],
        )
        .start()
        .await
        .unwrap();
    let (code, report) = lab.diagnose(QUICK).await.unwrap();
    assert_eq!(code, 1, "{report:#}");
    let edge = findings(&report, "edge_fault");
    assert_eq!(edge.len(), 1, "{report:#}");
    assert!(findings(&report, "origin_down").is_empty(), "{report:#}");
    reproduce_is_well_formed(&report).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_makes_its_region_lost_and_the_campaign_ends() {
    let mut lab = ScenarioBuilder::new(
        Fault::SlowFirstByte(Duration::from_millis(1500)),
        TlsMode::Plain,
    )
    .start()
    .await
    .unwrap();
    let args = lab.diagnose_args(&["--edge-timeout", "1s", "--burst", "3", "--attempts", "1"]);
    let diagnose = lab.coordinator.cli_spawn(&args).unwrap();
    // Mid-campaign: requests are arriving at the origin; kill one region's agent.
    assert!(lab.origin.wait_requests(3, Duration::from_secs(20)).await);
    lab.agents[2].kill9().await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), diagnose.wait_with_output())
        .await
        .expect("the campaign ends in bounded time")
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no report; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let ap = report["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "ap")
        .unwrap()
        .clone();
    assert_eq!(ap["lost"], true, "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_rate_limited_by_concurrency() {
    let lab = ScenarioBuilder::new(
        Fault::ConcurrencyLimit {
            per_client: 8,
            hold: Duration::from_millis(150),
        },
        TlsMode::Plain,
    )
    .start()
    .await
    .unwrap();
    let (code, report) = lab
        .diagnose(&[
            "--edge-timeout",
            EDGE_TIMEOUT,
            "--burst",
            "30",
            "--attempts",
            "3",
        ])
        .await
        .unwrap();
    assert_eq!(code, 1, "{report:#}");
    let limited = findings(&report, "origin_rate_limited");
    assert_eq!(limited.len(), 1, "{report:#}");
    assert_eq!(regions_of(limited[0]), ALL);
    assert!(findings(&report, "origin_down").is_empty(), "{report:#}");
    reproduce_is_well_formed(&report).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_blocks_cdn_headers_names_the_header() {
    let lab = ScenarioBuilder::new(Fault::RejectHeader("EO-LOG-UUID".into()), TlsMode::Plain)
        .start()
        .await
        .unwrap();
    let (code, report) = lab
        .diagnose(&[
            "--edge-timeout",
            EDGE_TIMEOUT,
            "--burst",
            "3",
            "--attempts",
            "2",
        ])
        .await
        .unwrap();
    assert_eq!(code, 1, "{report:#}");
    let waf = findings(&report, "origin_blocks_cdn_headers");
    assert_eq!(waf.len(), 1, "{report:#}");
    let text =
        serde_json::to_string(&waf[0]["evidence"]).unwrap() + waf[0]["summary"].as_str().unwrap();
    assert!(
        text.contains("EO-LOG-UUID"),
        "the finding names the header: {report:#}"
    );
    assert!(
        waf[0]["reproduce"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().contains("-H 'EO-LOG-UUID")),
        "{report:#}"
    );
    reproduce_is_well_formed(&report).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_blocks_the_edges_pull_address() {
    let pull_ip: std::net::IpAddr = "127.0.0.9".parse().unwrap();
    let lab = ScenarioBuilder::new(Fault::RejectClient(pull_ip), TlsMode::Plain)
        .edge(
            CdnProfile::EdgeOne,
            Duration::from_millis(600),
            vec![("127.0.0.2".parse().unwrap(), None)],
        )
        .edge_source(pull_ip)
        .start()
        .await
        .unwrap();
    let (code, report) = lab.diagnose(QUICK).await.unwrap();
    assert_eq!(code, 1, "{report:#}");
    let blocked = findings(&report, "origin_blocks_edge");
    assert_eq!(blocked.len(), 1, "{report:#}");
    assert_eq!(regions_of(blocked[0]), ALL);
    reproduce_is_well_formed(&report).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_tls_error_handshake() {
    let lab = ScenarioBuilder::new(Fault::Healthy, TlsMode::Plain)
        .https_url()
        .start()
        .await
        .unwrap();
    let (code, report) = lab.diagnose(QUICK).await.unwrap();
    assert_eq!(code, 1, "{report:#}");
    let tls = findings(&report, "origin_tls_error");
    assert_eq!(tls.len(), 1, "{report:#}");
    assert_eq!(tls[0]["kind"], "handshake", "{report:#}");
    reproduce_is_well_formed(&report).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_without_agents_is_an_error_before_anything_runs() {
    let lab = ScenarioBuilder::new(Fault::Healthy, TlsMode::Plain)
        .start()
        .await
        .unwrap();
    let args = lab.diagnose_args(&["--regions", "eu,mars"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = lab.coordinator.cli(&refs).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("region mars has no connected agent"));
    assert_eq!(lab.origin.requests(), 0, "nothing ran");
}
