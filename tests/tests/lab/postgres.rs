//! `vantage serve --database`: a bad value fails before anything is
//! touched, an unreachable server is named (never its password), and a
//! PostgreSQL-backed coordinator runs a whole campaign through the shipped
//! binaries with nothing stored in the data dir's SQLite file, and keeps it
//! across a `kill -9`.

use std::time::Duration;

use vantage::campaign::plan::TargetRequest;
use vantage::wire::target_pb;
use vantage_lab::lab::CoordinatorProcess;
use vantage_lab::origin::Origin;
use vantage_lab::process::{bin_path, poll_until, run_cli};

#[tokio::test]
async fn a_bad_database_url_fails_before_the_data_dir_or_a_port_is_touched() {
    let parent = tempfile::tempdir().unwrap();
    let data_dir = parent.path().join("data");
    for (value, says) in [
        (
            "mysql://root@db/fleet",
            "expected sqlite://PATH or postgres://USER@HOST/DB",
        ),
        ("postgres://db.internal/fleet", "names no user"),
        (
            "postgres://vantage@db.internal/fleet?sslmode=require",
            "without TLS",
        ),
    ] {
        let args: Vec<String> = [
            "--data-dir",
            &data_dir.display().to_string(),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--database",
            value,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let out = run_cli(&bin_path("vantage"), &args, Duration::from_secs(30))
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains("--database"), "{value}: {stderr}");
        assert!(stderr.contains(says), "{value}: {stderr}");
        assert!(!data_dir.exists(), "{value}: the data dir was created");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_named_and_exits_2() {
    // A port nothing listens on: loopback, refused at once.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let data = tempfile::tempdir().unwrap();
    let url = format!("postgres://vantage:hunter2@127.0.0.1:{port}/fleet");
    let args: Vec<String> = [
        "--data-dir",
        &data.path().display().to_string(),
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--database",
        &url,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let out = run_cli(&bin_path("vantage"), &args, Duration::from_secs(60))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "database postgres://vantage@127.0.0.1:{port}/fleet"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_backed_coordinator_diagnoses_and_keeps_everything_across_a_kill_9() {
    let test = "a_postgres_backed_coordinator_diagnoses_and_keeps_everything_across_a_kill_9";
    let Some(url) = vantage_lab::postgres::fresh_database(test).await.unwrap() else {
        return;
    };
    let origin = Origin::builder().spawn().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let extra = ["--database", url.as_str()];
    let mut coordinator = CoordinatorProcess::start_with(
        data.path(),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(500),
        &extra,
    )
    .await
    .unwrap();
    let (_eu, _eu_state) = coordinator.connected_agent("eu", "fra-1").await.unwrap();
    let (_us, _us_state) = coordinator.connected_agent("us", "iad-1").await.unwrap();

    let addr = origin.addr().to_string();
    let request = TargetRequest::new(&origin.url("/asset.js"), &[addr.as_str()]);
    let id = coordinator
        .control()
        .unwrap()
        .start_campaign(target_pb(&request, &[]))
        .await
        .unwrap()
        .into_inner()
        .campaign_id;
    let report = finished_report(&coordinator, &id).await;
    assert_eq!(report["status"], "healthy", "{report}");
    assert!(
        !data.path().join("vantage.db").exists(),
        "nothing in SQLite"
    );

    // A new process on the same database has the agents, which reconnect by
    // themselves, and the stored report.
    coordinator.kill9().await.unwrap();
    let restarted = coordinator.restart_with(&extra).await.unwrap();
    poll_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            let out = restarted.cli(&["agents", "--json"]).await.ok()?;
            let agents: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let agents = agents.as_array()?;
            (agents.len() == 2 && agents.iter().all(|a| a["connected"] == true)).then_some(())
        },
    )
    .await
    .unwrap();
    let shown = restarted
        .cli(&["campaign", "show", &id, "--json"])
        .await
        .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(again, report);
    origin.stop().await;
}

/// Polls `campaign show --json` until the campaign is no longer running.
async fn finished_report(coordinator: &CoordinatorProcess, id: &str) -> serde_json::Value {
    poll_until(
        Duration::from_secs(90),
        Duration::from_millis(100),
        || async {
            let out = coordinator
                .cli(&["campaign", "show", id, "--json"])
                .await
                .ok()?;
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (report["status"] != "running").then_some(report)
        },
    )
    .await
    .unwrap()
}
