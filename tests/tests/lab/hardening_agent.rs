//! Issue #9, the agent side, against the real `vantage-agent` binary on
//! loopback: a plan cannot aim an agent's DNS queries inward nor past its
//! rate cap, a spool that cannot be written refuses plans with the reason
//! (and `vantage agents --json` shows the agent's health), redirects to
//! another host drop the plan's headers, and the token can come from a file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use vantage::registry::AgentEvent;
use vantage_lab::lab::{wait_agent_connected, wait_coordinator_event, LabCoordinator, READY};
use vantage_lab::origin::Origin;
use vantage_lab::process::{bin_path, poll_until, run_cli, ChildProcess};
use vantage_proto::domain::Outcome;
use vantage_proto::pb;

/// Starts `vantage-agent run` enrolled as `name` (without `--allow-private`
/// unless `extra` says so) and waits until its session is established.
async fn agent(lab: &LabCoordinator, name: &str, state: &Path, extra: &[&str]) -> ChildProcess {
    let token = lab.token("eu").await.unwrap();
    let mut args = vec![
        "run".to_string(),
        "--token".into(),
        token,
        "--state-dir".into(),
        state.display().to_string(),
        "--name".into(),
        name.into(),
        "--reconnect-min".into(),
        "50ms".into(),
        "--reconnect-max".into(),
        "500ms".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut process = ChildProcess::spawn(name, &bin_path("vantage-agent"), &args).unwrap();
    wait_agent_connected(&mut process)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e:#}\n{}", process.output()));
    process
}

/// Sends `probes` to `agent` and waits until it has finished them; returns
/// the stored results.
async fn run_plan(
    lab: &LabCoordinator,
    agent: &str,
    probes: Vec<pb::ProbeSpec>,
) -> Vec<pb::ProbeResult> {
    lab.run_and_collect(agent, probes, Duration::from_secs(60))
        .await
        .unwrap()
}

fn dns_probe(
    url: &str,
    route: pb::Route,
    server: &str,
    attempts: u32,
    burst: u32,
) -> pb::ProbeSpec {
    pb::ProbeSpec {
        url: url.into(),
        route: route as i32,
        variant: "baseline".into(),
        dns_server: server.into(),
        attempts,
        burst,
        nonce: "hard".into(),
        timeouts: Some(pb::PhaseTimeouts {
            total_ms: 10_000,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Waits for the coordinator's record that `plan_id` was rejected; returns the reason.
async fn wait_rejected(
    events: &mut tokio::sync::broadcast::Receiver<AgentEvent>,
    plan_id: &str,
) -> String {
    let event = wait_coordinator_event(
        events,
        Duration::from_secs(30),
        |e| matches!(e, AgentEvent::PlanRejected { plan_id: p, .. } if p == plan_id),
    )
    .await
    .unwrap();
    let AgentEvent::PlanRejected { reason, .. } = event else {
        unreachable!()
    };
    reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plans_loopback_dns_server_gets_no_packet_from_a_guarded_agent() {
    let lab = LabCoordinator::builder().start().await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut guarded = agent(&lab, "guarded-dns", &state.path().join("s"), &[]).await;
    // The socket a lured agent would send its queries to.
    let resolver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = resolver.local_addr().unwrap().port();
    let plain = format!("127.0.0.1:{port}");
    // The same socket through an IPv4-mapped address: a dual-stack socket
    // would reach it, so the guard must see through the mapping.
    let mapped = format!("[::ffff:127.0.0.1]:{port}");

    let results = run_plan(
        &lab,
        "guarded-dns",
        vec![
            dns_probe("http://www.lab.test/", pb::Route::Dns, &plain, 2, 5),
            dns_probe("http://www.lab.test/", pb::Route::Edge, &plain, 1, 3),
            dns_probe("http://www.lab.test/", pb::Route::Dns, &mapped, 1, 3),
        ],
    )
    .await;
    assert_eq!(results.len(), 16);
    for result in &results {
        assert_eq!(
            Outcome::try_from(result.outcome).unwrap(),
            Outcome::BlockedByPolicy,
            "{result:?}"
        );
        assert_eq!(result.stage, pb::Stage::Dns as i32, "{result:?}");
        assert!(
            result.error.contains("DNS server")
                && result.error.contains("loopback")
                && result.error.contains("--allow-private"),
            "{}",
            result.error
        );
        assert!(result.dns_answers.is_empty() && result.remote_addr.is_empty());
    }
    // Every result is stored and the plan is finished: anything the agent
    // sent would have arrived by now. A bounded wait confirms nothing did.
    let mut buf = [0u8; 512];
    let got = tokio::time::timeout(Duration::from_millis(500), resolver.recv_from(&mut buf)).await;
    assert!(got.is_err(), "the guarded agent sent a query: {got:?}");

    // The same address on the command line is refused before any network.
    let out = run_cli(
        &bin_path("vantage-agent"),
        &[
            "run".into(),
            "--state-dir".into(),
            state.path().join("other").display().to_string(),
            "--dns-server".into(),
            plain.clone(),
        ],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: --dns-server") && stderr.contains("loopback"),
        "{stderr}"
    );
    assert!(
        !state.path().join("other").exists(),
        "validation touched the disk"
    );
    guarded.terminate(READY).await.unwrap();
    lab.stop().await.unwrap();
}

/// A DNS server that answers every A query with 192.0.2.55 (AAAA: no
/// records) and counts the queries it receives.
async fn counting_dns() -> (SocketAddr, Arc<Mutex<u64>>, tokio::task::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let count = Arc::new(Mutex::new(0u64));
    let counted = count.clone();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        // Bounded: far more than the test sends.
        for _ in 0..10_000 {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            *counted.lock().unwrap() += 1;
            let query = &buf[..n];
            if n < 12 {
                continue;
            }
            let Some(end) = query[12..].iter().position(|&b| b == 0).map(|p| 12 + p + 5) else {
                continue;
            };
            if end > n {
                continue;
            }
            let qtype = u16::from_be_bytes([query[end - 4], query[end - 3]]);
            let mut reply = Vec::with_capacity(64);
            reply.extend_from_slice(&query[..2]);
            reply.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(qtype == 1), 0, 0, 0, 0]);
            reply.extend_from_slice(&query[12..end]);
            if qtype == 1 {
                reply
                    .extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 55]);
            }
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    (addr, count, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_cap_bounds_dns_queries_to_one_server() {
    // The cap is lowered to keep the test short; the mechanism is the one
    // that holds the default 200/s.
    const CAP: u64 = 20;
    const LOOKUPS: u32 = 50;
    let lab = LabCoordinator::builder().start().await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let (server, count, task) = counting_dns().await;
    let mut open = agent(
        &lab,
        "rate-dns",
        &state.path().join("s"),
        &["--allow-private", "--max-rate", &CAP.to_string()],
    )
    .await;

    let started = Instant::now();
    let results = run_plan(
        &lab,
        "rate-dns",
        vec![dns_probe(
            "http://www.lab.test/",
            pb::Route::Dns,
            &server.to_string(),
            1,
            LOOKUPS,
        )],
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(results.len(), LOOKUPS as usize);
    for result in &results {
        assert_eq!(
            Outcome::try_from(result.outcome).unwrap(),
            Outcome::Ok,
            "{}",
            result.error
        );
        assert_eq!(result.dns_answers, ["192.0.2.55"]);
    }
    let received = *count.lock().unwrap();
    // Every lookup asked at least once; and no more arrived than the cap
    // allows over the plan's whole duration plus one bucket of burst. Without
    // the cap all 50 arrive at once, which is more than 20 × 1 + 20.
    println!("{received} queries for {LOOKUPS} lookups in {elapsed:?} (cap {CAP}/s)");
    let seconds = elapsed.as_secs_f64().ceil() as u64;
    assert!(received >= u64::from(LOOKUPS), "{received} queries");
    assert!(
        received <= CAP * seconds + CAP,
        "{received} queries in {elapsed:?} with a cap of {CAP}/s"
    );
    open.terminate(READY).await.unwrap();
    task.abort();
    lab.stop().await.unwrap();
}

/// Makes a directory unwritable for the test's user and undoes it on drop:
/// a read-only mode, or for root (whom modes do not stop) the immutable
/// attribute; where neither works, the directory is replaced by a file.
struct Unwritable {
    dir: PathBuf,
    how: &'static str,
}

impl Unwritable {
    fn make(dir: &Path) -> Unwritable {
        use std::os::unix::fs::PermissionsExt;
        let root = rustix::process::geteuid().is_root();
        if !root {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).unwrap();
            return Unwritable {
                dir: dir.to_path_buf(),
                how: "mode",
            };
        }
        let immutable = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if immutable {
            return Unwritable {
                dir: dir.to_path_buf(),
                how: "chattr",
            };
        }
        println!("chattr +i is not available: replacing the spool directory by a file");
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::write(dir, b"not a directory").unwrap();
        Unwritable {
            dir: dir.to_path_buf(),
            how: "file",
        }
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        match self.how {
            "mode" => {
                let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
            }
            "chattr" => {
                let _ = std::process::Command::new("chattr")
                    .arg("-i")
                    .arg(&self.dir)
                    .status();
            }
            _ => {}
        }
    }
}

async fn agents_json(lab: &LabCoordinator) -> serde_json::Value {
    let out = run_cli(
        &bin_path("vantage"),
        &[
            "--data-dir".into(),
            lab.data_dir().display().to_string(),
            "agents".into(),
            "--json".into(),
        ],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn agent_row<'a>(agents: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {agents}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_spool_refuses_plans_with_the_reason_and_shows_in_agents() {
    let lab = LabCoordinator::builder().start().await.unwrap();
    let origin = Origin::builder().spawn().await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("s");
    let mut spooler = agent(&lab, "spool-1", &state_dir, &["--allow-private"]).await;

    // Healthy first: the Hello said so, with the free bytes.
    let listed = agents_json(&lab).await;
    let row = agent_row(&listed, "spool-1");
    assert_eq!(row["spool_writable"], true, "{row}");
    assert!(row["spool_bytes_free"].as_u64().unwrap() > 0, "{row}");
    for field in [
        "name",
        "region",
        "labels",
        "connected",
        "last_seen",
        "version",
        "remote_addr",
    ] {
        assert!(
            row.get(field).is_some(),
            "DESIGN field {field} missing: {row}"
        );
    }

    let spool_dir = state_dir.join("spool");
    let guard = Unwritable::make(&spool_dir);
    let mut events = lab.core().subscribe();
    let probe = pb::ProbeSpec {
        url: origin.url("/never"),
        route: pb::Route::Direct as i32,
        variant: "baseline".into(),
        attempts: 1,
        burst: 1,
        ..Default::default()
    };
    let plan_id = lab
        .core()
        .run_plan(&["spool-1".to_string()], vec![probe])
        .await
        .unwrap();
    let reason = wait_rejected(&mut events, &plan_id).await;
    assert!(reason.contains("spool not writable"), "{reason}");
    let status = lab.core().plan_status(&plan_id).await.unwrap();
    assert_eq!(
        status[0].state,
        vantage::store::PlanState::Rejected,
        "{status:?}"
    );
    assert_eq!(status[0].reason.as_deref(), Some(reason.as_str()));
    assert_eq!(origin.answered(), 0, "a refused plan runs nothing");

    // The next heartbeat carries the health; the CLI shows it.
    let row = poll_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async {
            let listed = agents_json(&lab).await;
            let row = agent_row(&listed, "spool-1").clone();
            (row["spool_writable"] == false).then_some(row)
        },
    )
    .await
    .unwrap();
    assert!(
        row["spool_error"].as_str().unwrap().contains("write-probe"),
        "{row}"
    );
    let out = run_cli(
        &bin_path("vantage"),
        &[
            "--data-dir".into(),
            lab.data_dir().display().to_string(),
            "agents".into(),
        ],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("SPOOL") && table.contains("UNWRITABLE"),
        "{table}"
    );

    drop(guard);

    // A spool that fails while a plan runs: the plan was accepted, its
    // results cannot be kept, so the plan is rejected with the reason
    // rather than left `sent`.
    let held = Origin::builder().hold_after(0).spawn().await.unwrap();
    let probe = pb::ProbeSpec {
        url: held.url("/held"),
        route: pb::Route::Direct as i32,
        variant: "baseline".into(),
        attempts: 1,
        burst: 1,
        ..Default::default()
    };
    let plan_id = lab
        .core()
        .run_plan(&["spool-1".to_string()], vec![probe])
        .await
        .unwrap();
    // The request is at the origin: the plan was accepted and runs.
    poll_until(
        Duration::from_secs(20),
        Duration::from_millis(20),
        || async { (held.arrived() >= 1).then_some(()) },
    )
    .await
    .unwrap();
    let guard = Unwritable::make(&spool_dir);
    held.release();
    let reason = wait_rejected(&mut events, &plan_id).await;
    assert!(reason.contains("results could not be spooled"), "{reason}");
    let status = lab.core().plan_status(&plan_id).await.unwrap();
    assert_eq!(
        status[0].state,
        vantage::store::PlanState::Rejected,
        "{status:?}"
    );
    drop(guard);

    spooler.terminate(READY).await.unwrap();
    held.stop().await;
    origin.stop().await;
    lab.stop().await.unwrap();
}

/// An HTTP server on `ip` that records every request head it reads. With
/// `onward`, `/start` redirects to `/same` on this server and `/same` to
/// `onward`; everything else is answered 200.
async fn recording_server(
    ip: &str,
    onward: Option<String>,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        for _ in 0..20 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65_536 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let first = head.lines().next().unwrap_or_default().to_string();
            seen.lock().unwrap().push(head);
            let location = match &onward {
                Some(_) if first.starts_with("GET /start") => Some(format!("http://{addr}/same")),
                Some(to) if first.starts_with("GET /same") => Some(to.clone()),
                _ => None,
            };
            let reply = match location {
                Some(to) => format!(
                    "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
                None => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_string(),
            };
            let _ = stream.write_all(reply.as_bytes()).await;
        }
    });
    (addr, heads)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_another_host_drop_the_plans_headers() {
    let (other, other_heads) = recording_server("127.0.0.2", None).await;
    let (first, first_heads) =
        recording_server("127.0.0.1", Some(format!("http://{other}/end"))).await;

    let out = run_cli(
        &bin_path("vantage-agent"),
        &[
            "probe".into(),
            format!("http://{first}/start"),
            "--header".into(),
            "X-Secret: s3cr3t".into(),
            "--max-redirects".into(),
            "5".into(),
            "--allow-private".into(),
            "--json".into(),
        ],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = first_heads.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0].starts_with("GET /start") && seen[1].starts_with("GET /same"),
        "{seen:?}"
    );
    // The same host (another path, same address) keeps the header ...
    for head in &seen {
        assert!(head.contains("X-Secret: s3cr3t"), "{head}");
    }
    // ... another host never sees it.
    let elsewhere = other_heads.lock().unwrap().clone();
    assert_eq!(elsewhere.len(), 1, "{elsewhere:?}");
    assert!(elsewhere[0].starts_with("GET /end"), "{elsewhere:?}");
    assert!(
        !elsewhere[0].to_ascii_lowercase().contains("x-secret"),
        "{}",
        elsewhere[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_can_come_from_a_file() {
    use std::os::unix::fs::PermissionsExt;
    let lab = LabCoordinator::builder().start().await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("token");
    std::fs::write(&file, format!("\n  {}  \n", lab.token("eu").await.unwrap())).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bin = bin_path("vantage-agent");
    let state_dir = state.path().join("s").display().to_string();
    let token_file = file.display().to_string();

    // Both at once, a missing file and an empty one: refused before any network.
    let cases: [(Vec<String>, &str); 3] = [
        (
            vec![
                "--token".into(),
                "vtk1.x".into(),
                "--token-file".into(),
                token_file.clone(),
            ],
            "cannot be used with",
        ),
        (
            vec![
                "--token-file".into(),
                state.path().join("nope").display().to_string(),
            ],
            "error: --token-file",
        ),
        (
            vec!["--token-file".into(), "/dev/null".into()],
            "not a regular file",
        ),
    ];
    for (flags, want) in cases {
        let mut args = vec!["run".to_string(), "--state-dir".into(), state_dir.clone()];
        args.extend(flags);
        let out = run_cli(&bin, &args, Duration::from_secs(30)).await.unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    assert!(
        !state.path().join("s").exists(),
        "validation touched the disk"
    );

    // A good file enrolls; nothing secret was on the command line.
    let args = vec![
        "run".to_string(),
        "--token-file".into(),
        token_file.clone(),
        "--state-dir".into(),
        state_dir.clone(),
        "--name".into(),
        "from-file".into(),
    ];
    let mut enrolled = ChildProcess::spawn("from-file", &bin, &args).unwrap();
    wait_agent_connected(&mut enrolled)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", enrolled.output()));
    assert!(
        !enrolled.output().contains("chmod 600"),
        "{}",
        enrolled.output()
    );
    enrolled.terminate(READY).await.unwrap();

    // A token file others can read is used, with a warning.
    std::fs::write(&file, lab.token("eu").await.unwrap()).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = vec![
        "run".to_string(),
        "--token-file".into(),
        token_file,
        "--state-dir".into(),
        state.path().join("s2").display().to_string(),
        "--name".into(),
        "from-file-2".into(),
    ];
    let mut warned = ChildProcess::spawn("from-file-2", &bin, &args).unwrap();
    wait_agent_connected(&mut warned)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", warned.output()));
    assert!(warned.output().contains("chmod 600"), "{}", warned.output());
    warned.terminate(READY).await.unwrap();
    lab.stop().await.unwrap();
}
