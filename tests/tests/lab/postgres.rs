//! `vantage serve --database`: a bad value fails before anything is
//! touched, an unreachable server is named (never its password), and a
//! PostgreSQL-backed coordinator runs a whole campaign through the shipped
//! binaries with nothing stored in the data dir's SQLite file, and keeps it
//! across a `kill -9`.

use std::time::Duration;

use vantage_lab::lab::CoordinatorProcess;
use vantage_lab::origin::Origin;
use vantage_lab::process::{bin_path, poll_until, run_cli};
use vantage_proto::pb;

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
            "postgres://vantage@db.internal/fleet?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "sslrootcert=/nonexistent/ca.pem: cannot read it",
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
async fn a_coordinator_talks_to_postgresql_over_verified_tls_only() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap()
        .pem();
    let test = "a_coordinator_talks_to_postgresql_over_verified_tls_only";
    let key_pem = key.serialize_pem();
    let Some(cluster) = tokio::task::spawn_blocking(move || {
        vantage_lab::postgres::PgCluster::with_tls(test, &cert, &key_pem)
    })
    .await
    .unwrap()
    .unwrap() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let ca = data.path().join("db-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let url = format!(
        // schema_in's URL has a query already.
        "{}&sslmode=verify-full&sslrootcert={}",
        vantage_lab::postgres::schema_in(&cluster.url())
            .await
            .unwrap(),
        ca.display()
    );
    let coordinator = CoordinatorProcess::start_with(
        data.path(),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(500),
        &["--database", &url],
    )
    .await
    .unwrap();
    let (_eu, _eu_state) = coordinator.connected_agent("eu", "fra-1").await.unwrap();
    // Every connection the coordinator holds (its pool and the one that
    // listens for other coordinators) is encrypted.
    let (client, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'vantage'",
            &[],
        )
        .await
        .unwrap();
    let (encrypted, all): (i64, i64) = (row.get(0), row.get(1));
    assert!(all >= 2, "the pool and the listener: {all}");
    assert_eq!(encrypted, all, "{encrypted} of {all} over TLS");
    drop(client);
    let _ = driver.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_backed_coordinator_diagnoses_and_keeps_everything_across_a_kill_9() {
    let test = "a_postgres_backed_coordinator_diagnoses_and_keeps_everything_across_a_kill_9";
    let Some((url, _cluster)) = vantage_lab::postgres::fresh_database(test).await.unwrap() else {
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

    let id = coordinator.start_campaign(&origin).await.unwrap();
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

/// Starts `vantage serve` on `dir` with `extra` flags and returns its output
/// when it exits (for starts that must fail).
async fn serve_fails(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = [
        "--data-dir",
        &dir.display().to_string(),
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    run_cli(&bin_path("vantage"), &args, Duration::from_secs(60))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_share_one_installation_and_an_agent_fails_over_on_kill_9() {
    let test = "two_coordinators_share_one_installation_and_an_agent_fails_over_on_kill_9";
    let Some((url, _cluster)) = vantage_lab::postgres::fresh_database(test).await.unwrap() else {
        return;
    };
    let extra = ["--database", url.as_str()];
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let heartbeat = Duration::from_millis(500);
    let listen = "127.0.0.1:0".parse().unwrap();
    let mut a = CoordinatorProcess::start_with(a_dir.path(), listen, heartbeat, &extra)
        .await
        .unwrap();
    let seal_key = a_dir.path().join("seal.key");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&seal_key).unwrap().permissions()
        ) & 0o777,
        0o600
    );

    // A second coordinator without the installation's seal key is told
    // what to copy, and does not start.
    let refused = serve_fails(b_dir.path(), &extra).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("copy seal.key"), "{stderr}");
    std::fs::copy(&seal_key, b_dir.path().join("seal.key")).unwrap();
    let b = CoordinatorProcess::start_with(b_dir.path(), listen, heartbeat, &extra)
        .await
        .unwrap();
    // One CA and one admin credential for the installation.
    for file in ["ca.crt", "admin.token"] {
        assert_eq!(
            std::fs::read(a_dir.path().join(file)).unwrap(),
            std::fs::read(b_dir.path().join(file)).unwrap(),
            "{file}"
        );
    }

    // A token from either names both, its own first.
    let from_b = b.cli(&["token", "create", "--region", "eu"]).await.unwrap();
    assert!(
        from_b.status.success(),
        "{}",
        String::from_utf8_lossy(&from_b.stderr)
    );
    let token = vantage_proto::token::EnrollmentToken::decode(
        String::from_utf8_lossy(&from_b.stdout).trim(),
    )
    .unwrap();
    let (a_addr, b_addr) = (a.grpc_addr.to_string(), b.grpc_addr.to_string());
    assert_eq!(token.addrs.first(), Some(&b_addr), "{:?}", token.addrs);
    assert!(token.addrs.contains(&a_addr), "{:?}", token.addrs);
    assert!(
        String::from_utf8_lossy(&from_b.stderr).contains(&a_addr),
        "token create names every coordinator: {}",
        String::from_utf8_lossy(&from_b.stderr)
    );

    // The agent enrolls through A (its token's first address) ...
    let (mut agent, _state) = a.connected_agent("eu", "fra-1").await.unwrap();
    // ... and when A dies, moves to B by itself.
    a.kill9().await.unwrap();
    moved_to(&mut agent, &b_addr).await;
    let listed = b.cli(&["agents", "--json"]).await.unwrap();
    let agents: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(agents[0]["name"], "fra-1", "{agents}");
    assert_eq!(agents[0]["connected"], true, "{agents}");
}

/// Two coordinators of one installation on the database `url`: A created
/// it, B joined with A's seal key. The temporary dirs are their data dirs.
async fn installation_of_two(
    url: &str,
) -> (
    CoordinatorProcess,
    CoordinatorProcess,
    tempfile::TempDir,
    tempfile::TempDir,
) {
    installation_of_two_with(url, &[]).await
}

/// [`installation_of_two`] with more `serve` flags.
async fn installation_of_two_with(
    url: &str,
    more: &[&str],
) -> (
    CoordinatorProcess,
    CoordinatorProcess,
    tempfile::TempDir,
    tempfile::TempDir,
) {
    let (a, a_dir) = coordinator_on(url, more, None).await;
    let (b, b_dir) = coordinator_on(url, more, Some(a_dir.path())).await;
    (a, b, a_dir, b_dir)
}

/// A coordinator of the installation on `url`, with `more` flags, in a
/// data dir of its own: the first creates the installation; a later one
/// starts with the seal key from the data dir `seal_from`.
async fn coordinator_on(
    url: &str,
    more: &[&str],
    seal_from: Option<&std::path::Path>,
) -> (CoordinatorProcess, tempfile::TempDir) {
    let extra = [&["--database", url][..], more].concat();
    let dir = tempfile::tempdir().unwrap();
    if let Some(from) = seal_from {
        std::fs::copy(from.join("seal.key"), dir.path().join("seal.key")).unwrap();
    }
    let coordinator = CoordinatorProcess::start_with(
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(500),
        &extra,
    )
    .await
    .unwrap();
    (coordinator, dir)
}

/// Waits (bounded) until `agent` has a session with the coordinator at
/// `addr`.
async fn moved_to(agent: &mut vantage_lab::process::ChildProcess, addr: &str) {
    agent
        .wait_for_line(Duration::from_secs(60), |_, line| {
            line.contains("session established") && line.contains(addr)
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_learns_a_coordinator_added_after_it_enrolled_and_fails_over_to_it() {
    let test = "an_agent_learns_a_coordinator_added_after_it_enrolled_and_fails_over_to_it";
    let Some((url, _cluster)) = vantage_lab::postgres::fresh_database(test).await.unwrap() else {
        return;
    };
    let (mut a, a_dir) = coordinator_on(&url, &[], None).await;
    // Enrolled while A was the only coordinator: its token names A alone.
    let (mut agent, state) = a.connected_agent("eu", "fra-1").await.unwrap();
    let identity = || std::fs::read_to_string(state.path().join("identity.json")).unwrap();
    let (b, _b_dir) = coordinator_on(&url, &[], Some(a_dir.path())).await;
    let b_addr = b.grpc_addr.to_string();
    assert!(!identity().contains(&b_addr), "{}", identity());
    // A tells its agent of B (within a membership heartbeat) ...
    agent
        .wait_for_line(Duration::from_secs(60), |_, line| {
            line.contains("learned the installation's coordinators") && line.contains(&b_addr)
        })
        .await
        .unwrap();
    // ... the agent keeps it in its state directory ...
    assert!(identity().contains(&b_addr), "{}", identity());
    // ... and when A dies, moves to B, which it never had a token for.
    a.kill9().await.unwrap();
    moved_to(&mut agent, &b_addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_whose_coordinator_is_killed_is_finished_by_the_other() {
    let test = "a_campaign_whose_coordinator_is_killed_is_finished_by_the_other";
    let Some((url, _cluster)) = vantage_lab::postgres::fresh_database(test).await.unwrap() else {
        return;
    };
    // Every request is held: the campaign runs until its coordinator dies.
    let origin = Origin::builder().hold_after(0).spawn().await.unwrap();
    let (mut a, b, _a_dir, _b_dir) = installation_of_two(&url).await;
    let b_addr = b.grpc_addr.to_string();
    let (mut agent, _state) = a.connected_agent("eu", "fra-1").await.unwrap();
    let id = a.start_campaign(&origin).await.unwrap();
    origin
        .wait_arrived(1, Duration::from_secs(20))
        .await
        .unwrap();
    // B is alive, so it leaves A's campaign alone ...
    let shown = b.cli(&["campaign", "show", &id, "--json"]).await.unwrap();
    let said = String::from_utf8_lossy(&shown.stderr);
    assert!(said.contains("is still running"), "{said}");
    // ... until A dies: its agent moves to B and finishes the plan there,
    // and B adopts the campaign within the lease, waits for that plan and
    // finishes the campaign with everything the agent measured.
    a.kill9().await.unwrap();
    moved_to(&mut agent, &b_addr).await;
    origin.release();
    let report = finished_report(&b, &id).await;
    assert_eq!(report["regions"][0]["region"], "eu", "{report}");
    assert_eq!(report["regions"][0]["lost"], false, "{report}");
    let missing = report["missing"].as_array().unwrap();
    assert!(
        !missing
            .iter()
            .any(|m| m.as_str().unwrap_or_default().starts_with("eu:")),
        "{report}"
    );
    let probes = report["regions"][0]["probes"].as_array().unwrap();
    assert!(probes.iter().all(|p| p["outcome"] != "lost"), "{report}");
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_whose_agents_coordinator_is_killed_is_stored_once_through_the_other() {
    const PROBES: u64 = 60;
    const FIRST_WAVE: u64 = 20;
    let test = "a_plan_whose_agents_coordinator_is_killed_is_stored_once_through_the_other";
    let Some((url, _cluster)) = vantage_lab::postgres::fresh_database(test).await.unwrap() else {
        return;
    };
    let origin = Origin::builder()
        .hold_after(FIRST_WAVE)
        .spawn()
        .await
        .unwrap();
    let (mut a, b, _a_dir, _b_dir) = installation_of_two(&url).await;
    let b_addr = b.grpc_addr.to_string();
    // The agent is A's; the plan is B's, sent through the database.
    let (mut agent, _state) = a.connected_agent("eu", "fra-1").await.unwrap();
    let plan_id = b
        .run_baseline_plan("fra-1", &origin.url("/asset.js"), PROBES)
        .await
        .unwrap();
    assert_eq!(stored_at_least(&b, &plan_id, FIRST_WAVE).await, FIRST_WAVE);
    // A dies with the rest of the plan in flight on its agent, which moves
    // to B and finishes there.
    a.kill9().await.unwrap();
    moved_to(&mut agent, &b_addr).await;
    origin.release();
    assert_eq!(
        stored_at_least(&b, &plan_id, PROBES).await,
        PROBES,
        "every result stored once"
    );
    assert_eq!(origin.arrived(), PROBES, "no probe ran twice");
    // The agent reported the plan finished to B, which recorded it.
    let agents = poll_until(
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async {
            let status = b
                .control()
                .ok()?
                .get_plan_status(pb::GetPlanStatusRequest {
                    plan_id: plan_id.clone(),
                })
                .await
                .ok()?
                .into_inner();
            status
                .agents
                .iter()
                .all(|a| a.state == "finished")
                .then_some(status.agents)
        },
    )
    .await
    .unwrap();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(agents[0].results_stored, PROBES, "{agents:?}");
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_whose_agents_coordinator_is_killed_finishes_through_the_other() {
    let test = "a_campaign_whose_agents_coordinator_is_killed_finishes_through_the_other";
    let Some((url, _cluster)) = vantage_lab::postgres::fresh_database(test).await.unwrap() else {
        return;
    };
    // Every request is held until A is dead and its agent is on B.
    let origin = Origin::builder().hold_after(0).spawn().await.unwrap();
    let (mut a, b, _a_dir, _b_dir) = installation_of_two(&url).await;
    let b_addr = b.grpc_addr.to_string();
    let (mut agent, _state) = a.connected_agent("eu", "fra-1").await.unwrap();
    let (_us, _us_state) = b.connected_agent("us", "iad-1").await.unwrap();
    let id = b.start_campaign(&origin).await.unwrap();
    origin
        .wait_arrived(1, Duration::from_secs(20))
        .await
        .unwrap();
    a.kill9().await.unwrap();
    moved_to(&mut agent, &b_addr).await;
    origin.release();
    // Nothing is missing: the agent's plan went on across the move and its
    // results reached the campaign through B.
    let report = finished_report(&b, &id).await;
    assert_eq!(report["status"], "healthy", "{report}");
    assert!(report["missing"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(report["regions"][0]["region"], "eu", "{report}");
    assert_eq!(report["regions"][0]["lost"], false, "{report}");
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_keeps_agents_connected_and_loses_no_result() {
    const PROBES: u64 = 120;
    const FIRST_WAVE: u64 = 40;
    let test = "a_postgres_restart_keeps_agents_connected_and_loses_no_result";
    let Some(cluster) = vantage_lab::postgres::cluster(test).await.unwrap() else {
        return;
    };
    let origin = Origin::builder()
        .hold_after(FIRST_WAVE)
        .spawn()
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = cluster.url();
    let mut coordinator = CoordinatorProcess::start_with(
        data.path(),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(500),
        &["--database", &url],
    )
    .await
    .unwrap();
    let (agent, _state) = coordinator.connected_agent("eu", "fra-1").await.unwrap();
    let plan_id = coordinator
        .run_baseline_plan("fra-1", &origin.url("/asset.js"), PROBES)
        .await
        .unwrap();
    assert_eq!(
        stored_at_least(&coordinator, &plan_id, FIRST_WAVE).await,
        FIRST_WAVE
    );

    // The database goes away while the rest of the results arrive.
    cluster.stop_server().unwrap();
    origin.release();
    origin
        .wait_answered(PROBES, Duration::from_secs(30))
        .await
        .unwrap();
    // The commit of those results failed and is being retried, the
    // session held open and the batch unacknowledged ...
    coordinator
        .process
        .wait_for_line(Duration::from_secs(30), |_, line| {
            line.contains("cannot store results; retrying")
        })
        .await
        .unwrap();
    // ... until the database is back.
    cluster.start_server().unwrap();
    assert_eq!(
        stored_at_least(&coordinator, &plan_id, PROBES).await,
        PROBES,
        "every result stored once"
    );
    assert_eq!(origin.arrived(), PROBES, "no probe ran twice");
    // The session held through it: the agent never reconnected.
    assert_eq!(
        agent.output().matches("session established").count(),
        1,
        "{}",
        agent.output()
    );
    origin.stop().await;
}

/// Polls the plan's stored count until it reaches `at_least` (bounded).
async fn stored_at_least(coordinator: &CoordinatorProcess, plan_id: &str, at_least: u64) -> u64 {
    poll_until(
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async {
            let mut control = coordinator.control().ok()?;
            let status = control
                .get_plan_status(pb::GetPlanStatusRequest {
                    plan_id: plan_id.to_string(),
                })
                .await
                .ok()?
                .into_inner();
            (status.results_stored >= at_least).then_some(status.results_stored)
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_through_one_coordinator_reaches_the_agents_of_the_other() {
    let test = "a_campaign_through_one_coordinator_reaches_the_agents_of_the_other";
    let Some((url, _cluster)) = vantage_lab::postgres::fresh_database(test).await.unwrap() else {
        return;
    };
    let origin = Origin::builder().spawn().await.unwrap();
    let (a, b, _a_dir, _b_dir) = installation_of_two(&url).await;
    // One region's agent on each coordinator.
    let (_eu, _eu_state) = a.connected_agent("eu", "fra-1").await.unwrap();
    let (us, _us_state) = b.connected_agent("us", "iad-1").await.unwrap();
    assert!(
        us.output().contains(&b.grpc_addr.to_string()),
        "iad-1 is on B: {}",
        us.output()
    );

    // A lists both as connected ...
    let listed = a.cli(&["agents", "--json"]).await.unwrap();
    let agents: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let connected: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["connected"] == true)
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(connected, ["fra-1", "iad-1"], "{agents}");

    // ... and a campaign through A runs in both regions, B's agent's plan
    // and results relayed through the database.
    let id = a.start_campaign(&origin).await.unwrap();
    let report = finished_report(&a, &id).await;
    assert_eq!(report["status"], "healthy", "{report}");
    assert!(report["missing"].as_array().unwrap().is_empty(), "{report}");
    let regions: Vec<&str> = report["regions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["region"].as_str())
        .collect();
    assert_eq!(regions, ["eu", "us"], "{report}");
    // B's agent really ran its part: its session is on B.
    assert!(
        report["regions"][1]["probes"].as_array().unwrap().len() > 1,
        "{report}"
    );
    origin.stop().await;
}

/// `sweep history --json` of `name`, through `coordinator`.
async fn sweep_history(coordinator: &CoordinatorProcess, name: &str) -> Vec<serde_json::Value> {
    let out = coordinator
        .cli(&["sweep", "history", name, "--json", "--limit", "500"])
        .await
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_on_two_coordinators_runs_each_slot_once_and_alerts_once_across_a_kill_9() {
    use vantage_lab::webhook::{Reply, WebhookReceiver};
    let test = "a_sweep_on_two_coordinators_runs_each_slot_once_and_alerts_once_across_a_kill_9";
    let Some((url, _cluster)) = vantage_lab::postgres::fresh_database(test).await.unwrap() else {
        return;
    };
    let hook = WebhookReceiver::spawn(&[], Reply::Accept).await.unwrap();
    let (mut a, b, _a_dir, _b_dir) =
        installation_of_two_with(&url, &["--webhook-allow-private"]).await;
    let (_eu, _eu_state) = a.connected_agent("eu", "fra-1").await.unwrap();
    // Nothing listens on this port: origin_down from the first run.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let target = format!("http://{dead_addr}/health");
    let created = a
        .cli(&[
            "sweep",
            "create",
            "down",
            &target,
            "--origin",
            &dead_addr.to_string(),
            "--every",
            "5s",
            "--confirm",
            "1",
            "--edge-timeout",
            "1s",
            "--webhook",
            &hook.url(),
        ])
        .await
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    // Both schedulers run the sweep; the alert opens once.
    hook.wait_until(Duration::from_secs(60), |r| {
        r.iter().any(|r| r.body["event"] == "opened")
    })
    .await
    .unwrap();
    poll_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async { (sweep_history(&b, "down").await.len() >= 3).then_some(()) },
    )
    .await
    .unwrap();
    a.kill9().await.unwrap();
    let before = sweep_history(&b, "down").await.len();
    let runs = poll_until(
        Duration::from_secs(90),
        Duration::from_millis(200),
        || async {
            let runs = sweep_history(&b, "down").await;
            (runs.len() >= before + 4 && runs.iter().all(|r| r["status"] != "running"))
                .then_some(runs)
        },
    )
    .await
    .unwrap();
    // Every slot once, none skipped: one row per 5 s, newest first.
    let slots: Vec<std::time::SystemTime> = runs
        .iter()
        .map(|r| humantime::parse_rfc3339(r["slot"].as_str().unwrap()).unwrap())
        .collect();
    for pair in slots.windows(2) {
        assert_eq!(
            pair[0].duration_since(pair[1]).unwrap(),
            Duration::from_secs(5),
            "a slot doubled or skipped: {runs:?}"
        );
    }
    let mut statuses: std::collections::BTreeMap<&str, usize> = Default::default();
    for run in &runs {
        *statuses
            .entry(run["status"].as_str().unwrap_or("?"))
            .or_default() += 1;
    }
    eprintln!(
        "FIGURE sweep-two-coordinators: {} slots, each once, none skipped; {statuses:?}",
        runs.len()
    );

    // None missed: the survivor heard of the sweep when it was created
    // (the database announces it), so it claims every slot the dead one
    // no longer does; a run the dead one was in the middle of ends from
    // its campaign, which the survivor adopts and finishes.
    assert_eq!(statuses.get("missed"), None, "{runs:?}");
    // One alert opened, POSTed and accepted once.
    let received = hook.received();
    let opened: Vec<&str> = received
        .iter()
        .filter(|r| r.body["event"] == "opened" && r.reply == Reply::Accept)
        .filter_map(|r| r.body["id"].as_str())
        .collect();
    assert_eq!(opened.len(), 1, "{received:?}");
}
