//! Nothing is lost across a coordinator crash: results the agent produced
//! while the coordinator was dead wait in its spool, are replayed after the
//! agent reconnects by itself, and are stored exactly once.

use std::time::Duration;

use vantage_lab::lab::{spawn_agent_process, wait_agent_connected, CoordinatorProcess};
use vantage_lab::origin::Origin;
use vantage_lab::process::poll_until;
use vantage_proto::pb;

const PROBES: u64 = 200;
const FIRST_WAVE: u64 = 80;

async fn stored(coordinator: &CoordinatorProcess, plan_id: &str) -> Option<u64> {
    let mut control = coordinator.control().ok()?;
    let status = control
        .get_plan_status(pb::GetPlanStatusRequest {
            plan_id: plan_id.to_string(),
        })
        .await
        .ok()?
        .into_inner();
    Some(status.results_stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_coordinator_loses_nothing_and_stores_each_result_once() {
    kill_9_loses_nothing(&[]).await;
}

/// The same crash with the coordinator on PostgreSQL (`--database`): the
/// agent's spool and acknowledgement-after-commit work the same way, and
/// the restarted process finds everything in the database, not the data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_coordinator_on_postgres_loses_nothing_and_stores_each_result_once() {
    let Some((url, _cluster)) = vantage_lab::postgres::fresh_database(
        "kill_9_coordinator_on_postgres_loses_nothing_and_stores_each_result_once",
    )
    .await
    .unwrap() else {
        return;
    };
    let data_dir = kill_9_loses_nothing(&["--database", &url]).await;
    assert!(
        !data_dir.path().join("vantage.db").exists(),
        "with --database postgres://… nothing is stored in SQLite"
    );
}

/// Kills the coordinator (started with `serve` flags `extra`) mid-plan and
/// checks every result is stored once after the restart; returns its data
/// dir.
async fn kill_9_loses_nothing(extra: &[&str]) -> tempfile::TempDir {
    let origin = Origin::builder()
        .hold_after(FIRST_WAVE)
        .spawn()
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut coordinator = CoordinatorProcess::start_with(
        data.path(),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(500),
        extra,
    )
    .await
    .unwrap();
    let token = coordinator.create_token("ap-south").await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut agent =
        spawn_agent_process(state.path(), &["--token", &token, "--name", "bom-1"]).unwrap();
    wait_agent_connected(&mut agent).await.unwrap();

    let plan_id = coordinator
        .run_baseline_plan("bom-1", &origin.url("/asset.js"), PROBES)
        .await
        .unwrap();

    // The first wave is answered and stored; the rest is held at the origin.
    origin
        .wait_answered(FIRST_WAVE, Duration::from_secs(30))
        .await
        .unwrap();
    let first = poll_until(
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            stored(&coordinator, &plan_id)
                .await
                .filter(|n| *n >= FIRST_WAVE)
        },
    )
    .await
    .unwrap();
    assert_eq!(first, FIRST_WAVE);

    coordinator.kill9().await.unwrap();
    // With the coordinator dead, let the agent finish the plan: its results
    // can only go to the spool.
    origin.release();
    origin
        .wait_answered(PROBES, Duration::from_secs(30))
        .await
        .unwrap();
    agent
        .wait_for_line(Duration::from_secs(30), |_, line| {
            line.contains("session lost")
        })
        .await
        .unwrap();

    let restarted = coordinator.restart_with(extra).await.unwrap();
    let total = poll_until(
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async { stored(&restarted, &plan_id).await.filter(|n| *n >= PROBES) },
    )
    .await
    .unwrap();
    assert_eq!(total, PROBES, "every result stored exactly once");
    assert_eq!(origin.arrived(), PROBES, "no probe ran twice");

    // The agent reconnected by itself (a second "session established").
    let reconnects = agent.output().matches("session established").count();
    assert!(reconnects >= 2, "{}", agent.output());

    // Once everything is acknowledged the spool is empty again.
    poll_until(
        Duration::from_secs(30),
        Duration::from_millis(20),
        || async {
            let spooled = std::fs::read_dir(state.path().join("spool"))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.path().extension().is_some_and(|x| x == "batch"))
                        .count()
                })
                .unwrap_or(usize::MAX);
            (spooled == 0).then_some(())
        },
    )
    .await
    .unwrap();

    let status = restarted
        .control()
        .unwrap()
        .get_plan_status(pb::GetPlanStatusRequest { plan_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.agents.len(), 1);
    assert_eq!(status.agents[0].state, "finished");
    assert_eq!(status.agents[0].results_stored, PROBES);
    origin.stop().await;
    data
}
