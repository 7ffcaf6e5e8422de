//! Enrollment: a token gets an agent a certificate once; the agent connects
//! over mTLS from then on; every bad token is a clear, final error.

use std::time::Duration;

use vantage::store::NewToken;
use vantage_agent::enroll::{enroll, EnrollError};
use vantage_lab::lab::{
    spawn_agent_process, wait_agent_connected, CoordinatorProcess, LabCoordinator,
};
use vantage_proto::token::{hash_secret, EnrollmentToken};

use crate::support::enroll_request as request;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_agent_is_listed_connected_and_reuses_its_certificate() {
    let data = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(
        data.path(),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let out = coordinator
        .cli(&["token", "create", "--region", "eu-west", "--ttl", "10m"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.lines().count(), 1, "token create prints one line");

    let state = tempfile::tempdir().unwrap();
    let mut agent = spawn_agent_process(
        state.path(),
        &[
            "--token",
            token.trim(),
            "--name",
            "fra-1",
            "--label",
            "isp=lab",
        ],
    )
    .unwrap();
    wait_agent_connected(&mut agent).await.unwrap();
    let cert = std::fs::read(state.path().join("agent.crt")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.path().join("agent.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the agent key is private");
        let mode = std::fs::metadata(data.path().join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the admin credential is private");
    }

    let out = coordinator.cli(&["agents", "--json"]).await.unwrap();
    assert!(out.status.success());
    let agents: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let agents = agents.as_array().unwrap();
    assert_eq!(agents.len(), 1);
    let fra = &agents[0];
    assert_eq!(fra["name"], "fra-1");
    assert_eq!(fra["region"], "eu-west");
    assert_eq!(fra["connected"], true);
    assert_eq!(fra["labels"]["isp"], "lab");
    assert_eq!(fra["version"], env!("CARGO_PKG_VERSION"));
    assert!(fra["last_seen"].as_str().unwrap().starts_with("20"));
    assert!(fra["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    // A second process on the same state dir is refused: it would fight the
    // first one for the session and the spool.
    let mut twin = spawn_agent_process(state.path(), &[]).unwrap();
    let status = twin.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(
        twin.output().contains("in use by another vantage-agent"),
        "{}",
        twin.output()
    );

    // SIGTERM (systemd's, docker's) is a clean stop: exit 0, not death by
    // the signal. Second start: no token, same state dir, same certificate.
    let stopped = agent.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(
        stopped.success(),
        "SIGTERM stops the agent cleanly: {stopped:?}"
    );
    let mut again = spawn_agent_process(state.path(), &[]).unwrap();
    wait_agent_connected(&mut again).await.unwrap();
    assert_eq!(std::fs::read(state.path().join("agent.crt")).unwrap(), cert);
    let out = coordinator.cli(&["agents"]).await.unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table.lines().count(), 2, "header and one agent:\n{table}");
    assert!(
        table.contains("fra-1") && table.contains("connected"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_clear_final_errors() {
    let lab = LabCoordinator::builder().start().await.unwrap();
    let core = lab.core();
    let good = EnrollmentToken::decode(&lab.token("eu").await.unwrap()).unwrap();

    // Unknown secret.
    let unknown = EnrollmentToken {
        secret: "0123456789abcdef0123456789abcdef".into(),
        ..good.clone()
    };
    let err = enroll(&unknown, &request("a1")).await.unwrap_err();
    assert!(
        matches!(&err, EnrollError::Refused(m) if m.contains("unknown enrollment token")),
        "{err}"
    );

    // Expired: stored with an expiry in the past.
    let expired = EnrollmentToken {
        secret: "expired-expired-expired-expired".into(),
        ..good.clone()
    };
    core.store()
        .insert_token(NewToken {
            hash: hash_secret(&expired.secret),
            region: "eu".into(),
            created_at_ms: 1,
            expires_at_ms: 2,
            uses: 5,
        })
        .await
        .unwrap();
    let err = enroll(&expired, &request("a2")).await.unwrap_err();
    assert!(
        matches!(&err, EnrollError::Refused(m) if m.contains("expired")),
        "{err}"
    );

    // Used up: one use, two enrollments.
    enroll(&good, &request("a3")).await.unwrap();
    let err = enroll(&good, &request("a4")).await.unwrap_err();
    assert!(
        matches!(&err, EnrollError::Refused(m) if m.contains("no uses left")),
        "{err}"
    );

    // A coordinator whose CA does not match the token's fingerprint.
    let other = LabCoordinator::builder().start().await.unwrap();
    let fresh = EnrollmentToken::decode(&other.token("eu").await.unwrap()).unwrap();
    let mismatched = EnrollmentToken {
        addrs: fresh.addrs.clone(),
        ca_sha256: good.ca_sha256.clone(),
        secret: fresh.secret.clone(),
    };
    let err = enroll(&mismatched, &request("a5")).await.unwrap_err();
    assert!(matches!(err, EnrollError::CaMismatch { .. }), "{err}");
    // The refused attempt did not spend the real token.
    enroll(&fresh, &request("a5")).await.unwrap();

    // A name that is taken.
    let token = EnrollmentToken::decode(&lab.token("eu").await.unwrap()).unwrap();
    let err = enroll(&token, &request("a3")).await.unwrap_err();
    assert!(
        matches!(&err, EnrollError::Refused(m) if m.contains("already enrolled")),
        "{err}"
    );

    other.stop().await.unwrap();
    lab.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binary_exits_with_one_clear_line_on_bad_tokens() {
    let lab = LabCoordinator::builder().start().await.unwrap();
    let good = EnrollmentToken::decode(&lab.token("eu").await.unwrap()).unwrap();
    let unknown = EnrollmentToken {
        secret: "0123456789abcdef0123456789abcdef".into(),
        ..good
    }
    .encode();
    let cases = [
        ("vtk1.garbage".to_string(), "damaged"),
        ("not-a-token".to_string(), "not a vantage enrollment token"),
        (unknown, "unknown enrollment token"),
    ];
    for (token, expected) in cases {
        let state = tempfile::tempdir().unwrap();
        let mut agent =
            spawn_agent_process(state.path(), &["--token", &token, "--name", "x"]).unwrap();
        let status = agent.wait_exit(Duration::from_secs(30)).await.unwrap();
        assert_eq!(status.code(), Some(2), "{}", agent.output());
        let output = agent.output();
        let error_lines: Vec<&str> = output.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(error_lines.len(), 1, "{output}");
        assert!(error_lines[0].contains(expected), "{output}");
        assert!(!output.contains("panicked"), "{output}");
    }
    lab.stop().await.unwrap();
}
