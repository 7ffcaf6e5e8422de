//! The origin witness, end to end: a real `vantage-agent witness` process
//! follows the lab origin's access log and reports the probe nonces it sees,
//! with the client address, to the coordinator — across a log rotation.

use std::time::Duration;

use vantage_agent::probe::{ProbeEngine, RequestSlot};
use vantage_agent::safety::TargetPolicy;
use vantage_lab::fixture::{Fault, Fixture};
use vantage_lab::lab::{wait_agent_connected, LabCoordinator};
use vantage_lab::process::{bin_path, poll_until, ChildProcess};
use vantage_proto::pb;

async fn probe(fixture: &Fixture, nonce: &str) {
    let engine = ProbeEngine::new(
        TargetPolicy {
            allow_private: true,
        },
        None,
    );
    let spec = pb::ProbeSpec {
        url: fixture.url("/page"),
        route: pb::Route::Direct as i32,
        address_override: fixture.addr().to_string(),
        nonce: nonce.into(),
        ..Default::default()
    };
    let result = engine
        .run(
            "w",
            &spec,
            RequestSlot {
                attempt: 1,
                burst_index: 0,
                deadline: None,
            },
        )
        .await;
    assert_eq!(result.status, 200, "{}", result.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_reports_nonces_from_the_access_log_across_rotation() {
    let lab = LabCoordinator::builder().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let fixture = Fixture::builder(Fault::Healthy)
        .access_log(log.clone())
        .spawn()
        .await
        .unwrap();
    let token = lab.token("origin").await.unwrap();
    let state = dir.path().join("witness-state");
    let args: Vec<String> = [
        "witness",
        "--token",
        &token,
        "--access-log",
        log.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--name",
        "origin-1",
        "--poll",
        "20ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut witness =
        ChildProcess::spawn("vantage-agent witness", &bin_path("vantage-agent"), &args).unwrap();
    wait_agent_connected(&mut witness).await.unwrap();

    probe(&fixture, "wtest-eu-0").await;
    let store = lab.core().store();
    let seen = poll_until(Duration::from_secs(20), Duration::from_millis(20), || {
        let store = store.clone();
        async move {
            store
                .sightings_with_prefix("wtest-")
                .await
                .ok()
                .filter(|s| !s.is_empty())
        }
    })
    .await
    .unwrap();
    assert_eq!(seen[0].nonce, "wtest-eu-0-1-0");
    assert_eq!(
        seen[0].peer, "127.0.0.1",
        "the client address the origin logged"
    );
    assert!(seen[0].uri.contains("__vantage=wtest-eu-0-1-0"));

    // Rotate like logrotate (rename, new file) and keep probing.
    std::fs::rename(&log, dir.path().join("access.log.1")).unwrap();
    fixture.stop().await;
    let fixture = Fixture::builder(Fault::Healthy)
        .access_log(log.clone())
        .spawn()
        .await
        .unwrap();
    probe(&fixture, "wtest-us-1").await;
    poll_until(Duration::from_secs(20), Duration::from_millis(20), || {
        let store = store.clone();
        async move {
            store
                .sightings_with_prefix("wtest-us-")
                .await
                .ok()
                .filter(|s| s.len() == 1)
        }
    })
    .await
    .unwrap();

    let agents = lab.core().list_agents().await.unwrap();
    let record = agents.iter().find(|a| a.record.name == "origin-1").unwrap();
    assert_eq!(record.record.role, vantage::store::AgentRole::Witness);
    assert!(record.connected);
    fixture.stop().await;
    witness.terminate(Duration::from_secs(10)).await.unwrap();
    lab.stop().await.unwrap();
}
