use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use super::*;

fn probe(region: &str, route: &str, ssl: Option<f64>) -> ProbeSeries {
    ProbeSeries {
        region: region.into(),
        route: route.into(),
        success: true,
        duration_seconds: 0.25,
        phases: PhaseSeconds::from_cumulative_ms(10.0, 30.0, 80.0, 200.0, 250.0),
        status_code: 200,
        ssl_earliest_cert_expiry: ssl,
    }
}

fn finding(code: &str, region: &str) -> FindingSeries {
    FindingSeries {
        code: code.into(),
        kind: "fault".into(),
        region: region.into(),
    }
}

fn agents(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(r, n)| (r.to_string(), *n)).collect()
}

/// A metrics set with one call of every kind.
fn populated() -> Metrics {
    let m = Metrics::new();
    m.results_ingested(3);
    m.campaign_finished("faulty");
    m.sweep_run("shop", "faulty", 1_700_000_000_500);
    m.sweep_last_run(
        "shop",
        &[finding("origin_slow", "eu")],
        &[probe("eu", "edge", Some(1_800_000_000.0))],
    );
    m.set_alerts_open("shop", 1);
    m.webhook_delivery("delivered");
    m.webhook_delivery("failed");
    m
}

#[test]
fn every_contract_name_appears_after_its_call() {
    let text = populated().encode(&agents(&[("eu", 2), ("us", 0)]));
    for sample in [
        r#"vantage_agents_connected{region="eu"} 2"#,
        r#"vantage_agents_connected{region="us"} 0"#,
        "vantage_results_ingested_total 3",
        r#"vantage_campaigns_total{status="faulty"} 1"#,
        r#"vantage_sweep_runs_total{sweep="shop",status="faulty"} 1"#,
        r#"vantage_sweep_last_run_timestamp_seconds{sweep="shop"} 1700000000.5"#,
        r#"vantage_finding{sweep="shop",code="origin_slow",kind="fault",region="eu"} 1"#,
        r#"vantage_alerts_open{sweep="shop"} 1"#,
        r#"vantage_webhook_deliveries_total{result="delivered"} 1"#,
        r#"vantage_webhook_deliveries_total{result="failed"} 1"#,
        r#"probe_success{sweep="shop",region="eu",route="edge"} 1"#,
        r#"probe_duration_seconds{sweep="shop",region="eu",route="edge"} 0.25"#,
        r#"probe_http_duration_seconds{sweep="shop",region="eu",route="edge",phase="resolve"} 0.01"#,
        r#"probe_http_duration_seconds{sweep="shop",region="eu",route="edge",phase="connect"} 0.02"#,
        r#"probe_http_duration_seconds{sweep="shop",region="eu",route="edge",phase="tls"} 0.05"#,
        r#"probe_http_duration_seconds{sweep="shop",region="eu",route="edge",phase="processing"} 0.12"#,
        r#"probe_http_duration_seconds{sweep="shop",region="eu",route="edge",phase="transfer"} 0.05"#,
        r#"probe_http_status_code{sweep="shop",region="eu",route="edge"} 200"#,
        r#"probe_ssl_earliest_cert_expiry{sweep="shop",region="eu",route="edge"} 1800000000"#,
        "# TYPE vantage_results_ingested_total counter",
        "# TYPE vantage_finding gauge",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(sample)),
            "{sample} missing from:\n{text}"
        );
    }
    assert!(!text.contains("# EOF"), "{text}");
}

#[test]
fn regions_at_zero_stay_and_regions_gone_from_the_map_vanish() {
    let m = Metrics::new();
    let text = m.encode(&agents(&[("eu", 1), ("us", 1)]));
    assert!(text.contains(r#"vantage_agents_connected{region="us"} 1"#));
    let text = m.encode(&agents(&[("eu", 0)]));
    assert!(text.contains(r#"vantage_agents_connected{region="eu"} 0"#));
    assert!(!text.contains(r#"region="us""#), "{text}");
}

#[test]
fn a_sweeps_last_run_replaces_its_previous_one_only() {
    let m = Metrics::new();
    m.sweep_last_run(
        "shop",
        &[finding("origin_slow", "eu"), finding("edge_5xx", "us")],
        &[
            probe("eu", "edge", Some(1.0)),
            probe("us", "origin", Some(2.0)),
        ],
    );
    m.sweep_last_run(
        "blog",
        &[finding("edge_5xx", "us")],
        &[probe("us", "edge", None)],
    );
    // The next run of shop: one finding gone, one probe gone, the other's
    // certificate expiry no longer known.
    m.sweep_last_run(
        "shop",
        &[finding("origin_slow", "eu")],
        &[probe("eu", "edge", None)],
    );
    let text = m.encode(&BTreeMap::new());
    assert!(text.contains(
        r#"vantage_finding{sweep="shop",code="origin_slow",kind="fault",region="eu"} 1"#
    ));
    assert!(!text.contains(r#"sweep="shop",code="edge_5xx""#), "{text}");
    assert!(!text.contains(r#"sweep="shop",region="us""#), "{text}");
    assert!(
        !text.contains(r#"probe_ssl_earliest_cert_expiry{sweep="shop""#),
        "{text}"
    );
    assert!(text.contains(r#"probe_success{sweep="shop",region="eu",route="edge"} 1"#));
    // The other sweep is untouched.
    assert!(text
        .contains(r#"vantage_finding{sweep="blog",code="edge_5xx",kind="fault",region="us"} 1"#));
    assert!(text.contains(r#"probe_success{sweep="blog",region="us",route="edge"} 1"#));
    // A run with nothing clears the sweep's last-run series.
    m.sweep_last_run("shop", &[], &[]);
    let text = m.encode(&BTreeMap::new());
    assert!(!text.contains(r#"sweep="shop""#), "{text}");
    assert!(text.contains(r#"sweep="blog""#), "{text}");
}

#[test]
fn forget_sweep_removes_every_series_of_that_sweep() {
    let m = populated();
    m.sweep_run("shop", "missed", 1_700_000_300_000);
    m.sweep_run("blog", "healthy", 1_700_000_000_000);
    m.sweep_last_run("blog", &[], &[probe("eu", "edge", Some(5.0))]);
    m.set_alerts_open("blog", 0);
    m.forget_sweep("shop");
    m.forget_sweep("never-existed");
    let text = m.encode(&BTreeMap::new());
    assert!(!text.contains(r#"sweep="shop""#), "{text}");
    for sample in [
        r#"vantage_sweep_runs_total{sweep="blog",status="healthy"} 1"#,
        r#"vantage_sweep_last_run_timestamp_seconds{sweep="blog"} 1700000000"#,
        r#"vantage_alerts_open{sweep="blog"} 0"#,
        r#"probe_ssl_earliest_cert_expiry{sweep="blog",region="eu",route="edge"} 5"#,
        // Not per sweep: kept.
        r#"vantage_campaigns_total{status="faulty"} 1"#,
    ] {
        assert!(text.contains(sample), "{sample} missing from:\n{text}");
    }
}

#[test]
fn phases_from_curl_marks() {
    let https = PhaseSeconds::from_cumulative_ms(10.0, 30.0, 80.0, 200.0, 250.0);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(close(https.resolve, 0.010), "{https:?}");
    assert!(close(https.connect, 0.020), "{https:?}");
    assert!(close(https.tls, 0.050), "{https:?}");
    assert!(close(https.processing, 0.120), "{https:?}");
    assert!(close(https.transfer, 0.050), "{https:?}");

    // Plain HTTP: curl's appconnect is 0, or equal to connect.
    for tls in [0.0, 30.0] {
        let http = PhaseSeconds::from_cumulative_ms(10.0, 30.0, tls, 200.0, 250.0);
        assert_eq!(http.tls, 0.0, "{http:?}");
        assert!(close(http.processing, 0.170), "{http:?}");
        assert!(close(http.connect, 0.020), "{http:?}");
    }

    // Missing and out-of-order marks never give a negative phase.
    for marks in [
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [50.0, 20.0, 10.0, 5.0, 1.0],
        [10.0, 30.0, 80.0, 0.0, 0.0],
        [f64::NAN, f64::INFINITY, -5.0, 100.0, 90.0],
    ] {
        let p = PhaseSeconds::from_cumulative_ms(marks[0], marks[1], marks[2], marks[3], marks[4]);
        for (phase, v) in p.by_phase() {
            assert!(v >= 0.0 && v.is_finite(), "{phase} of {marks:?}: {p:?}");
        }
    }
}

/// Runs `promtool check metrics` on `text`; `None` when promtool is missing
/// and `CI` is not `true` (the test prints that it was skipped).
fn promtool_check_metrics(test: &str, text: &str) -> Option<std::process::Output> {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: promtool is required under CI=true (apt-get install prometheus)");
            }
            eprintln!("SKIPPED {test}: promtool is missing (apt-get install prometheus)");
            return None;
        }
        Err(e) => panic!("{test}: cannot run promtool: {e}"),
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(text.as_bytes()).expect("write to promtool");
    drop(stdin);
    Some(child.wait_with_output().expect("promtool runs"))
}

#[test]
fn promtool_accepts_the_exposition() {
    let text = populated().encode(&agents(&[("eu", 2), ("us", 0)]));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("metrics.prom");
    std::fs::write(&path, &text).expect("write the exposition");
    let written = std::fs::read_to_string(&path).expect("read it back");
    let Some(output) = promtool_check_metrics("promtool_accepts_the_exposition", &written) else {
        return;
    };
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\non:\n{written}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn metrics_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Metrics>();
    shared::<std::sync::Arc<Metrics>>();
}
