//! A campaign's life beyond the happy path, with the real binaries: an
//! operator cancels one that is running (`vantage campaign cancel`), and a
//! coordinator killed with campaigns running finishes them at its next start
//! from what it stored, naming what never came.

use std::time::Duration;

use vantage_lab::lab::CoordinatorProcess;
use vantage_lab::origin::Origin;
use vantage_lab::process::{poll_until, ChildProcess};

async fn agent(
    coordinator: &CoordinatorProcess,
    region: &str,
    name: &str,
) -> (ChildProcess, tempfile::TempDir) {
    coordinator.connected_agent(region, name).await.unwrap()
}

fn report_of(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}): stdout {} stderr {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn missing(report: &serde_json::Value) -> Vec<String> {
    report["missing"]
        .as_array()
        .expect("missing is an array")
        .iter()
        .map(|m| m.as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_campaign_and_tells_its_agents() {
    // Every request is held: the campaign runs until someone stops it.
    let origin = Origin::builder().hold_after(0).spawn().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(
        data.path(),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    let (mut eu, _eu_state) = agent(&coordinator, "eu", "fra-1").await;
    let (mut us, _us_state) = agent(&coordinator, "us", "iad-1").await;
    let id = coordinator.start_campaign(&origin).await.unwrap();
    poll_until(
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async { (origin.arrived() >= 2).then_some(()) },
    )
    .await
    .unwrap();

    let cancelled = coordinator
        .cli(&["campaign", "cancel", &id, "--json"])
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&cancelled.stderr).to_string();
    assert!(stderr.contains("stopped eu, us"), "{stderr}");
    let report = report_of(&cancelled);
    assert_eq!(report["campaign"], id.as_str());
    assert_ne!(report["status"], "healthy", "{report}");
    // The exit code follows the report's status, as for `campaign show`.
    let expected_code = if report["status"] == "faulty" { 1 } else { 3 };
    assert_eq!(cancelled.status.code(), Some(expected_code), "{stderr}");
    let missing = missing(&report);
    for region in ["eu", "us"] {
        assert!(
            missing.iter().any(|m| m.starts_with(&format!("{region}: "))
                && m.contains("cancelled by the operator")),
            "{missing:?}"
        );
    }
    // Each agent was told, and stopped its plan.
    for agent in [&mut eu, &mut us] {
        agent
            .wait_for_line(Duration::from_secs(10), |_, line| {
                line.contains("plan cancelled by the coordinator")
            })
            .await
            .unwrap();
    }
    // The stored campaign is finished, and a second cancel is refused by name.
    let shown = coordinator
        .cli(&["campaign", "show", &id, "--json"])
        .await
        .unwrap();
    assert_eq!(report_of(&shown)["status"], report["status"]);
    let again = coordinator.cli(&["campaign", "cancel", &id]).await.unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is not running"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let unknown = coordinator
        .cli(&["campaign", "cancel", "no-such-campaign"])
        .await
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no campaign"));
    origin.release();
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_left_running_by_a_killed_coordinator_finish_at_its_next_start() {
    let origin = Origin::builder().hold_after(0).spawn().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut coordinator = CoordinatorProcess::start(
        data.path(),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    let (_agent, _state) = agent(&coordinator, "ap", "bom-1").await;
    let id = coordinator.start_campaign(&origin).await.unwrap();
    poll_until(
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async { (origin.arrived() >= 1).then_some(()) },
    )
    .await
    .unwrap();
    let running = coordinator.cli(&["campaign", "show", &id]).await.unwrap();
    assert_eq!(
        running.status.code(),
        Some(2),
        "still running before the kill"
    );

    coordinator.kill9().await.unwrap();
    let restarted = coordinator.restart().await.unwrap();
    let shown = restarted
        .cli(&["campaign", "show", &id, "--json"])
        .await
        .unwrap();
    let report = report_of(&shown);
    assert_eq!(report["status"], "inconclusive", "{report}");
    assert_eq!(shown.status.code(), Some(3));
    let missing = missing(&report);
    assert!(
        missing.iter().any(|m| m.starts_with("ap: ")
            && m.contains("the coordinator stopped before agent bom-1 finished")),
        "{missing:?}"
    );
    let list = restarted
        .cli(&["campaign", "list", "--json"])
        .await
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] != "running"),
        "{list}"
    );
    origin.release();
    origin.stop().await;
}
