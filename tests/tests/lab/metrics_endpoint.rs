//! `GET /metrics` on the coordinator's HTTP listener (DESIGN §6a): scraped
//! over loopback after a plan stored results, it carries the contract's
//! families with the connected agents and the ingested results, and
//! `promtool check metrics` accepts it; once the agent has gone its region
//! shows 0.

use std::time::Duration;

use vantage_lab::lab::{AgentBuilder, LabCoordinator};
use vantage_lab::origin::Origin;
use vantage_proto::pb;

use crate::prometheus_deploy::{assert_success, promtool};

/// One HTTP/1.1 GET over loopback: the status, content type and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    use http_body_util::BodyExt as _;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_and_pass_promtool() {
    let lab = LabCoordinator::builder().start().await.unwrap();
    let origin = Origin::builder().spawn().await.unwrap();
    let agent = AgentBuilder::new("eu-1", &lab.token("eu").await.unwrap())
        .start()
        .await
        .unwrap();
    let probe = pb::ProbeSpec {
        url: origin.url("/m"),
        route: pb::Route::Direct as i32,
        variant: "baseline".into(),
        attempts: 2,
        burst: 1,
        nonce: "lab".into(),
        ..Default::default()
    };
    let results = lab
        .run_and_collect("eu-1", vec![probe], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(results.len(), 2);

    let addr = lab
        .http_addr()
        .expect("the lab coordinator listens for HTTP");
    let (status, content_type, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, vantage::metrics::CONTENT_TYPE);
    assert!(
        text.contains(r#"vantage_agents_connected{region="eu"} 1"#),
        "{text}"
    );
    assert!(text.contains("vantage_results_ingested_total 2"), "{text}");
    if let Some(output) = promtool(
        "metrics_are_served_and_pass_promtool",
        &["check", "metrics"],
        Some(&text),
    ) {
        assert_success("promtool check metrics", &output);
    }

    let (status, _, _) = get(addr, "/healthz").await;
    assert_eq!(status, 200);

    // Once its only agent has gone, the enrolled region shows 0.
    agent.stop().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, _, text) = get(addr, "/metrics").await;
        if text.contains(r#"vantage_agents_connected{region="eu"} 0"#) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lab.stop().await.unwrap();
}

/// The expiry of the lab's expired origin certificate (2021-01-01T00:00:00Z).
const EXPIRED_NOT_AFTER: i64 = 1_609_459_200;

/// An `https://` target: the report's probes carry the origin
/// certificate's expiry from the agents' handshakes, and a sweep over it
/// exports blackbox's `probe_ssl_earliest_cert_expiry` with that value. An
/// expired certificate is the case an operator alerts on, and its date is
/// fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_sweep_exports_the_certificates_expiry() {
    use vantage_lab::fixture::{Fault, TlsMode};
    use vantage_lab::scenario::ScenarioBuilder;

    let lab = ScenarioBuilder::new(Fault::Healthy, TlsMode::Expired)
        .trust_origin_ca()
        .regions(1)
        .start()
        .await
        .unwrap();
    let (_, report) = lab.diagnose(&[]).await.unwrap();
    let probes: Vec<&serde_json::Value> = report["regions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["probes"].as_array().unwrap())
        .filter(|p| p["route"] == "direct")
        .collect();
    assert!(!probes.is_empty(), "{report:#}");
    for probe in &probes {
        assert_eq!(probe["tls_not_after_unix"], EXPIRED_NOT_AFTER, "{probe:#}");
    }

    let url = lab.url("/lab");
    let origin = lab.origin.addr().to_string();
    let out = lab
        .coordinator
        .cli(&[
            "sweep", "create", "tls", &url, "--origin", &origin, "--every", "1s",
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let addr = lab.coordinator.http_addr.expect("serve listens for HTTP");
    let want = format!(
        r#"probe_ssl_earliest_cert_expiry{{sweep="tls",region="eu",route="direct"}} {EXPIRED_NOT_AFTER}"#
    );
    // /metrics is pulled: there is no readiness signal to wait on, so the
    // lab's one bounded poll asks until a run's series is there.
    let seen = vantage_lab::process::poll_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { get(addr, "/metrics").await.2.contains(&want).then_some(()) },
    )
    .await;
    if seen.is_err() {
        panic!("no {want} in\n{}", get(addr, "/metrics").await.2);
    }
}
