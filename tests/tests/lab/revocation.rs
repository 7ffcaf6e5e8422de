//! Revocation: the agent's session is dropped at once, the agent stops with a
//! clear message, and it can never reconnect.

use std::time::Duration;

use vantage_lab::lab::{spawn_agent_process, wait_agent_connected, CoordinatorProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_agent_is_dropped_and_refused_as_fatal() {
    let data = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(
        data.path(),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let token = coordinator.create_token("us-east").await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut agent =
        spawn_agent_process(state.path(), &["--token", &token, "--name", "iad-1"]).unwrap();
    wait_agent_connected(&mut agent).await.unwrap();

    let out = coordinator
        .cli(&["agents", "revoke", "iad-1"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("session was dropped"));

    // The running agent stops by itself: fatal, not a retry loop.
    let status = agent.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(agent.output().contains("revoked"), "{}", agent.output());

    // A restart with the same identity is refused at once.
    let mut again = spawn_agent_process(state.path(), &[]).unwrap();
    let status = again.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(
        again.output().contains("has been revoked"),
        "{}",
        again.output()
    );

    let out = coordinator.cli(&["agents", "--json"]).await.unwrap();
    let agents: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(agents[0]["connected"], false);
    assert_eq!(agents[0]["revoked"], true);

    // Revoking an unknown agent is a clear error with exit code 2.
    let out = coordinator
        .cli(&["agents", "revoke", "nobody"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent named"));
}
