//! Issue #9, the coordinator's transport and identity side, against the real
//! binaries on loopback: a flood of half-sent large Enrolls keeps the
//! coordinator's RSS bounded while agents still enroll and `vantage agents`
//! works; stalled connections of every kind are closed within the
//! configured timeouts; Enroll checks the token before the name, is
//! rate-limited per address and logged; `vantage.db` is 0600; agent
//! certificates are renewed over the session.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;
use vantage::store::Store as _;

use vantage_agent::enroll::{enroll, EnrollError};
use vantage_lab::flood::{self, Stall};
use vantage_lab::lab::{spawn_agent_process, wait_agent_connected, CoordinatorProcess};
use vantage_proto::token::{sha256_hex, EnrollmentToken};

use crate::support::enroll_request as request;

/// Timeouts the tests configure (small, so the tests are quick).
const TIMEOUT: &str = "1s";
/// How long a test waits for the server to close a stalled connection: the
/// configured timeout plus a margin for a loaded machine.
const CLOSE_WAIT: Duration = Duration::from_secs(8);
/// The RSS bound under the flood (the target is "well under 256 MiB").
const RSS_BOUND_KIB: u64 = 160 * 1024;

async fn coordinator(extra: &[&str]) -> (tempfile::TempDir, CoordinatorProcess) {
    let data = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start_with(
        data.path(),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(1),
        extra,
    )
    .await
    .unwrap();
    (data, coordinator)
}

fn ca_pem(data: &tempfile::TempDir) -> String {
    std::fs::read_to_string(data.path().join("ca.crt")).unwrap()
}

fn http_addr(data: &tempfile::TempDir) -> std::net::SocketAddr {
    let endpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.path().join("coordinator.json")).unwrap())
            .unwrap();
    endpoint["http"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_enroll_flood_keeps_rss_bounded_while_agents_enroll_and_the_cli_works() {
    let (data, coordinator) = coordinator(&[
        "--enroll-per-minute",
        "100000",
        "--enroll-burst",
        "100000",
        "--idle-timeout",
        "3s",
    ])
    .await;
    let pid = coordinator.process.pid().unwrap();
    let ca = ca_pem(&data);
    let idle = flood::rss_kib(pid).unwrap();

    // 32 connections x 8 streams, each declaring a 63 MiB Enroll and sending
    // 1 MiB of it (flow control permitting), all but the end: the issue's
    // attack, which held 2 GiB before.
    let mut held = Vec::new();
    for _ in 0..32 {
        held.push(
            flood::half_enrolls(coordinator.grpc_addr, &ca, 8, flood::FLOOD_MESSAGE, 1 << 20)
                .await
                .unwrap(),
        );
    }
    // A stream that declares a small message and stalls half-way is refused
    // by the body deadline, not held.
    let mut stalled = flood::half_enrolls(coordinator.grpc_addr, &ca, 1, 60_000, 30_000)
        .await
        .unwrap();

    let mut peak = flood::rss_kib(pid).unwrap();
    // Every oversized Enroll is refused with RESOURCE_EXHAUSTED (8) while
    // the peer still holds its stream open.
    let mut refused = 0;
    for conn in &mut held {
        for status in conn.statuses.drain(..) {
            let code = tokio::time::timeout(CLOSE_WAIT, status)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(code, Some(8), "oversized Enroll answered {code:?}");
            refused += 1;
        }
    }
    assert_eq!(refused, 32 * 8);
    peak = peak.max(flood::rss_kib(pid).unwrap());
    let code = tokio::time::timeout(CLOSE_WAIT, stalled.statuses.remove(0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        code,
        Some(4),
        "a stalled Enroll body ends DEADLINE_EXCEEDED"
    );

    // While the flood connections are open: an agent enrolls and connects,
    // and the shipped CLI lists it.
    let token = coordinator.create_token("eu-west").await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut agent =
        spawn_agent_process(state.path(), &["--token", &token, "--name", "fra-1"]).unwrap();
    wait_agent_connected(&mut agent).await.unwrap();
    let out = coordinator.cli(&["agents"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("fra-1"));

    let flooded = peak.max(flood::rss_kib(pid).unwrap());
    println!("coordinator RSS: idle {idle} KiB, under the flood {flooded} KiB");
    assert!(
        flooded < RSS_BOUND_KIB,
        "RSS {flooded} KiB under the flood (idle {idle} KiB) is over {RSS_BOUND_KIB} KiB"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_within_the_timeouts() {
    let (data, coordinator) =
        coordinator(&["--handshake-timeout", TIMEOUT, "--idle-timeout", TIMEOUT]).await;
    let ca = ca_pem(&data);
    let http = http_addr(&data);
    let cases = [
        (coordinator.grpc_addr, Stall::IdleTcp),
        (coordinator.grpc_addr, Stall::HalfClientHello),
        (coordinator.grpc_addr, Stall::TlsThenHalfPreface),
        (http, Stall::IdleTcp),
        (http, Stall::HalfHttp1),
    ];
    // Several of each at once, all watched together.
    let mut streams = Vec::new();
    for (addr, stall) in cases {
        for _ in 0..5 {
            streams.push((stall, flood::stalled(addr, &ca, stall).await.unwrap()));
        }
    }
    let waits = streams.into_iter().map(|(stall, mut stream)| async move {
        (stall, flood::closed_within(&mut *stream, CLOSE_WAIT).await)
    });
    for (stall, closed) in futures::future::join_all(waits).await {
        let took = closed.unwrap_or_else(|| panic!("{stall:?}: still open after {CLOSE_WAIT:?}"));
        // Not closed before the timeout either: it is the timeout that acts.
        assert!(
            took >= Duration::from_millis(900),
            "{stall:?} closed after {took:?}"
        );
    }
    // The listeners still serve.
    let out = coordinator.cli(&["agents"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let (_data, coordinator) =
        coordinator(&["--max-connections", "4", "--idle-timeout", "30s"]).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(
            tokio::net::TcpStream::connect(coordinator.grpc_addr)
                .await
                .unwrap(),
        );
    }
    let mut fifth: Box<dyn tokio::io::AsyncRead + Unpin + Send> = Box::new(
        tokio::net::TcpStream::connect(coordinator.grpc_addr)
            .await
            .unwrap(),
    );
    let took = flood::closed_within(&mut *fifth, CLOSE_WAIT)
        .await
        .expect("the connection over the cap stays open");
    assert!(took < Duration::from_secs(5), "closed only after {took:?}");
    // The first four are still open: they are within the cap.
    let mut first: Box<dyn tokio::io::AsyncRead + Unpin + Send> = Box::new(open.remove(0));
    assert!(
        flood::closed_within(&mut *first, Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_checks_the_token_first_is_rate_limited_and_logged() {
    // The default burst of 5 per source address, refilled at one a minute
    // (the default is 10) so that a slow machine cannot refill the bucket
    // between the attempts.
    let (_data, mut coordinator) =
        coordinator(&["--enroll-burst", "5", "--enroll-per-minute", "1"]).await;
    let token = coordinator.create_token("eu-west").await.unwrap();
    let good = EnrollmentToken::decode(&token).unwrap();
    let bad = EnrollmentToken {
        secret: "0".repeat(48),
        ..good.clone()
    };

    // 1: a valid enrollment.
    enroll(&good, &request("fra-1")).await.unwrap();
    // 2: the taken name with a wrong token says "unknown token", not "taken":
    // no name enumeration without a valid token.
    match enroll(&bad, &request("fra-1")).await {
        Err(EnrollError::Refused(reason)) => {
            assert!(reason.contains("unknown enrollment token"), "{reason}");
            assert!(!reason.contains("already"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // 3..5: within the burst.
    for i in 3..=5 {
        let err = enroll(&bad, &request(&format!("x-{i}"))).await.unwrap_err();
        assert!(
            err.to_string().contains("unknown enrollment token"),
            "{err}"
        );
    }
    // 6: over the burst.
    let err = enroll(&bad, &request("x-6")).await.unwrap_err();
    assert!(
        err.to_string().contains("too many enrollment attempts"),
        "{err}"
    );

    let log = coordinator.process.output();
    assert!(
        log.contains("enroll accepted") && log.contains("fra-1"),
        "{log}"
    );
    assert!(log.contains("enroll refused: rate limited"), "{log}");
    assert_eq!(log.matches("enroll refused").count(), 5, "{log}");
    assert!(
        !log.contains(&good.secret) && !log.contains(&bad.secret),
        "a secret was logged"
    );
    coordinator
        .process
        .terminate(Duration::from_secs(10))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_is_private_even_in_an_existing_data_dir() {
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mode = |name: &str| {
        std::fs::metadata(data.path().join(name))
            .map(|m| m.permissions().mode() & 0o777)
            .ok()
    };
    let mut first = CoordinatorProcess::start(
        data.path(),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(mode("vantage.db"), Some(0o600));
    for side in ["vantage.db-wal", "vantage.db-shm"] {
        assert!(
            matches!(mode(side), None | Some(0o600)),
            "{side}: {:o}",
            mode(side).unwrap()
        );
    }
    first
        .process
        .terminate(Duration::from_secs(10))
        .await
        .unwrap();
    // A database left 0644 by an older version is narrowed at the next start.
    std::fs::set_permissions(
        data.path().join("vantage.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let mut second = first.restart().await.unwrap();
    assert_eq!(mode("vantage.db"), Some(0o600));
    second
        .process
        .terminate(Duration::from_secs(10))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_certificate_is_renewed_over_the_session_and_used_on_the_next_connection() {
    // 6 s certificates: renewed 4 s after issue, the renewed one used on the
    // next connection (which the agent opens when that one is due).
    let (data, coordinator) = coordinator(&["--agent-cert-lifetime", "6s"]).await;
    let token = coordinator.create_token("eu-west").await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut agent =
        spawn_agent_process(state.path(), &["--token", &token, "--name", "fra-1"]).unwrap();
    wait_agent_connected(&mut agent).await.unwrap();
    let cert_path = state.path().join("agent.crt");
    let first = std::fs::read_to_string(&cert_path).unwrap();
    let (not_before, not_after) = vantage_agent::identity::cert_validity(&first).unwrap();
    assert_eq!(
        not_after.duration_since(not_before).unwrap(),
        Duration::from_secs(6)
    );

    // Two renewals: the second is only accepted over a connection that
    // authenticated with the first renewed certificate (the store supersedes
    // the old fingerprint at each renewal).
    let mut seen = vec![first];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while seen.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "certificates seen: {}; agent log:\n{}",
            seen.len(),
            agent.output()
        );
        agent
            .wait_for_line(Duration::from_secs(40), |_, line| {
                line.contains("agent certificate renewed")
            })
            .await
            .unwrap();
        let now = std::fs::read_to_string(&cert_path).unwrap();
        if seen.last() != Some(&now) {
            seen.push(now);
        }
    }
    let mode = std::fs::metadata(&cert_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The store authenticates the latest certificate only.
    let store = vantage::store::SqliteStore::open(&data.path().join("vantage.db")).unwrap();
    let record = store.agent_by_name("fra-1").await.unwrap().unwrap();
    let latest = std::fs::read_to_string(&cert_path).unwrap();
    let der = vantage_support::tls::first_cert_der(&latest).unwrap();
    assert_eq!(record.cert_sha256, sha256_hex(&der));
    let log = coordinator.process.output();
    assert!(log.contains("agent certificate renewed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_back_off_with_a_log_line_instead_of_spinning() {
    use rustix::process::{prlimit, Pid, Resource, Rlimit};
    let (_data, coordinator) =
        coordinator(&["--handshake-timeout", "30s", "--idle-timeout", "30s"]).await;
    let pid = coordinator.process.pid().unwrap();
    let target = Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    // Room for a few connections, then EMFILE on every accept. The hard
    // limit stays (the child inherited ours): lowering only the soft one
    // needs no privilege, and raising it back neither.
    let hard = rustix::process::getrlimit(Resource::Nofile).maximum;
    let old = prlimit(
        Some(target),
        Resource::Nofile,
        Rlimit {
            current: Some(open_fds + 4),
            maximum: hard,
        },
    )
    .unwrap();
    let restore = Rlimit {
        current: old.current,
        maximum: hard,
    };
    let mut conns = Vec::new();
    for _ in 0..40 {
        conns.push(
            tokio::net::TcpStream::connect(coordinator.grpc_addr)
                .await
                .unwrap(),
        );
    }
    // Over 2 s a spinning loop logs thousands of lines; the backoff (50 ms
    // doubling to 1 s) a handful.
    let log = || coordinator.process.output();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !log().contains("accept failed; backing off") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no backoff line:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = log().matches("accept failed; backing off").count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lines = log().matches("accept failed; backing off").count() - first;
    assert!(
        lines <= 10,
        "{lines} accept-failure lines in 2 s: the loop spins"
    );

    // Once descriptors are free again it serves.
    drop(conns);
    prlimit(Some(target), Resource::Nofile, restore).unwrap();
    let out = coordinator.cli(&["agents"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
