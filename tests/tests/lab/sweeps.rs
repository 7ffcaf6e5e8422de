//! Sweeps end to end, through the shipped binaries (DESIGN §6a): `vantage
//! sweep create` on a `vantage serve` with a real `vantage-agent`; the
//! origin goes down and comes back; the alert opens after `--confirm` runs
//! and resolves after as many clean ones; each event reaches a loopback
//! webhook receiver that first fails and hangs, with the same id on every
//! retry; a `kill -9` of the coordinator with an event undelivered neither
//! loses it nor sends it twice. Bad input is one line and exit 2, before
//! anything changes.

use std::collections::BTreeMap;
use std::time::Duration;

use vantage_lab::lab::CoordinatorProcess;
use vantage_lab::origin::Origin;
use vantage_lab::process::{poll_until, ChildProcess};
use vantage_lab::webhook::{Received, Reply, WebhookReceiver};

/// `serve` flags of these tests: the lab's loopback webhook receiver is a
/// private address, and many agents enroll from loopback.
const SERVE: &[&str] = &[
    "--webhook-allow-private",
    "--enroll-per-minute",
    "100000",
    "--enroll-burst",
    "100000",
];

async fn coordinator(data: &std::path::Path) -> CoordinatorProcess {
    CoordinatorProcess::start_with(
        data,
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_millis(500),
        SERVE,
    )
    .await
    .unwrap()
}

async fn agent(
    coordinator: &CoordinatorProcess,
    region: &str,
    name: &str,
) -> (ChildProcess, tempfile::TempDir) {
    coordinator.connected_agent(region, name).await.unwrap()
}

async fn cli_ok(coordinator: &CoordinatorProcess, args: &[&str]) -> String {
    let out = coordinator.cli(args).await.unwrap();
    assert!(
        out.status.success(),
        "vantage {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn history(coordinator: &CoordinatorProcess, name: &str) -> Vec<serde_json::Value> {
    let out = cli_ok(
        coordinator,
        &["sweep", "history", name, "--json", "--limit", "500"],
    )
    .await;
    serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap()
}

/// Polls the sweep's history until `done` holds for it.
async fn wait_history(
    coordinator: &CoordinatorProcess,
    name: &str,
    timeout: Duration,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let result = poll_until(timeout, Duration::from_millis(200), || async {
        let runs = history(coordinator, name).await;
        done(&runs).then_some(runs)
    })
    .await;
    match result {
        Ok(runs) => runs,
        Err(_) => {
            let runs = history(coordinator, name).await;
            let report = match runs.first().and_then(|r| r["campaign"].as_str()) {
                Some(id) => {
                    let out = coordinator
                        .cli(&["campaign", "show", id, "--json"])
                        .await
                        .unwrap();
                    let report: serde_json::Value =
                        serde_json::from_slice(&out.stdout).unwrap_or_default();
                    format!(
                        "summary {} missing {} regions {:?}",
                        report["summary"],
                        report["missing"],
                        report["regions"].as_array().map(|r| r
                            .iter()
                            .map(|r| (
                                r["region"].clone(),
                                r["lost"].clone(),
                                r["probes"].as_array().map(|p| p.len())
                            ))
                            .collect::<Vec<_>>())
                    )
                }
                None => String::new(),
            };
            panic!("sweep history never got there ({report}): {runs:#?}")
        }
    }
}

fn accepted_events(received: &[Received]) -> Vec<(String, String)> {
    received
        .iter()
        .filter(|r| r.reply == Reply::Accept)
        .map(|r| {
            (
                r.body["event"].as_str().unwrap_or_default().to_string(),
                r.body["id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Every POST of one id carried the same body; each id was accepted once.
fn assert_same_body_per_id_and_accepted_once(received: &[Received]) {
    let mut bodies: BTreeMap<String, &serde_json::Value> = BTreeMap::new();
    let mut accepted: BTreeMap<String, u32> = BTreeMap::new();
    for r in received {
        let id = r.body["id"].as_str().unwrap_or_default().to_string();
        if let Some(first) = bodies.get(&id) {
            assert_eq!(*first, &r.body, "a retry changed the body of {id}");
        }
        bodies.insert(id.clone(), &r.body);
        if r.reply == Reply::Accept {
            *accepted.entry(id).or_default() += 1;
        }
    }
    for (id, n) in &accepted {
        assert_eq!(*n, 1, "event {id} was accepted {n} times");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_confirms_an_outage_alerts_through_a_flaky_webhook_and_resolves() {
    let origin = Origin::builder().spawn().await.unwrap();
    let origin_addr = origin.addr();
    // The first POST fails, the second hangs past the sender's timeout,
    // every later one is accepted.
    let hook = WebhookReceiver::spawn(&[Reply::Fail, Reply::Hang], Reply::Accept)
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let coordinator = coordinator(data.path()).await;
    // Two regions: one healthy region alone is only "inconclusive".
    let (_eu, _eu_state) = agent(&coordinator, "eu", "fra-1").await;
    let (_us, _us_state) = agent(&coordinator, "us", "iad-1").await;
    let url = origin.url("/health");
    let created = cli_ok(
        &coordinator,
        &[
            "sweep",
            "create",
            "shop-eu",
            &url,
            "--origin",
            &origin_addr.to_string(),
            "--regions",
            "eu,us",
            "--every",
            "2s",
            "--edge-timeout",
            "2s",
            "--webhook",
            &hook.url(),
        ],
    )
    .await;
    assert!(
        created.contains("sweep shop-eu created: every 2s"),
        "{created}"
    );

    // Healthy first.
    wait_history(&coordinator, "shop-eu", Duration::from_secs(60), |runs| {
        runs.iter().any(|r| r["status"] == "healthy")
    })
    .await;
    // The origin goes down: two faulty runs in a row open origin_down.
    origin.stop().await;
    let received = hook
        .wait_until(Duration::from_secs(90), |r| {
            accepted_events(r)
                .iter()
                .any(|(event, _)| event == "opened")
        })
        .await
        .unwrap();
    let opened: Vec<&Received> = received
        .iter()
        .filter(|r| r.body["event"] == "opened")
        .collect();
    assert!(
        opened.len() >= 3,
        "failed, hung, then accepted: {}",
        opened.len()
    );
    assert_eq!(opened[0].reply, Reply::Fail);
    assert_eq!(opened[1].reply, Reply::Hang);
    let body = &opened.last().unwrap().body;
    assert_eq!(body["schema"], "vantage.alert.v1");
    assert_eq!(body["sweep"], "shop-eu");
    assert_eq!(body["code"], "origin_down");
    assert_eq!(body["regions"], serde_json::json!(["eu", "us"]));
    assert_eq!(body["report"]["schema"], "vantage.report.v1");
    assert_eq!(body["report"]["campaign"], body["campaign"]);
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains("shop-eu") && text.contains("origin_down") && !text.contains('\n'),
        "{text}"
    );

    let alerts: Vec<serde_json::Value> =
        serde_json::from_str(&cli_ok(&coordinator, &["alerts", "--json"]).await).unwrap();
    assert_eq!(alerts[0]["state"], "open");
    assert_eq!(alerts[0]["code"], "origin_down");
    let faulty_before_open = history(&coordinator, "shop-eu")
        .await
        .iter()
        .filter(|r| r["status"] == "faulty")
        .count();
    assert!(
        faulty_before_open >= 2,
        "opened only after --confirm 2 faulty runs"
    );

    // The origin comes back on the same address: resolved after two clean runs.
    let _back = Origin::builder().listen(origin_addr).spawn().await.unwrap();
    let received = hook
        .wait_until(Duration::from_secs(90), |r| {
            accepted_events(r)
                .iter()
                .any(|(event, _)| event == "resolved")
        })
        .await
        .unwrap();
    assert_same_body_per_id_and_accepted_once(&received);
    let events: Vec<String> = accepted_events(&received)
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(events.first().map(String::as_str), Some("opened"));
    assert_eq!(events.last().map(String::as_str), Some("resolved"));

    // History: the contract fields, newest first, verdicts with findings.
    let runs = history(&coordinator, "shop-eu").await;
    for run in &runs {
        for key in [
            "started_at",
            "finished_at",
            "status",
            "campaign",
            "findings",
        ] {
            assert!(run.get(key).is_some(), "{key} missing in {run}");
        }
    }
    let faulty = runs.iter().find(|r| r["status"] == "faulty").unwrap();
    assert_eq!(faulty["findings"][0]["code"], "origin_down");
    assert_eq!(
        faulty["findings"][0]["regions"],
        serde_json::json!(["eu", "us"])
    );
    let slots: Vec<&str> = runs.iter().map(|r| r["slot"].as_str().unwrap()).collect();
    let mut sorted = slots.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(slots, sorted, "newest first");
    let alerts: Vec<serde_json::Value> =
        serde_json::from_str(&cli_ok(&coordinator, &["alerts", "--json"]).await).unwrap();
    assert_eq!(alerts[0]["state"], "resolved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_an_event_undelivered_neither_loses_nor_repeats_it() {
    let hook = WebhookReceiver::spawn(&[], Reply::Fail).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut coordinator = coordinator(data.path()).await;
    let (_eu, _eu_state) = agent(&coordinator, "eu", "fra-1").await;
    // Nothing listens on this port: origin_down from the first run.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let url = format!("http://{dead_addr}/health");
    cli_ok(
        &coordinator,
        &[
            "sweep",
            "create",
            "down",
            &url,
            "--origin",
            &dead_addr.to_string(),
            "--every",
            "1s",
            "--confirm",
            "1",
            "--edge-timeout",
            "1s",
            "--webhook",
            &hook.url(),
        ],
    )
    .await;
    // The event is queued and its delivery has failed at least once.
    hook.wait_until(Duration::from_secs(60), |r| {
        r.iter().any(|r| r.body["event"] == "opened")
    })
    .await
    .unwrap();
    coordinator.kill9().await.unwrap();
    hook.answer_all(Reply::Accept);
    let restarted = coordinator.restart_with(SERVE).await.unwrap();
    let received = hook
        .wait_until(Duration::from_secs(60), |r| {
            accepted_events(r)
                .iter()
                .any(|(event, _)| event == "opened")
        })
        .await
        .unwrap();
    // A few more runs after the restart: the alert stays open, no new event.
    let runs_now = history(&restarted, "down").await.len();
    wait_history(&restarted, "down", Duration::from_secs(60), |runs| {
        runs.iter().filter(|r| r["status"] == "faulty").count() >= 2 && runs.len() >= runs_now + 2
    })
    .await;
    let received_later = hook.received();
    assert_same_body_per_id_and_accepted_once(&received_later);
    let opened_ids: std::collections::BTreeSet<String> = received_later
        .iter()
        .filter(|r| r.body["event"] == "opened")
        .map(|r| r.body["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        opened_ids.len(),
        1,
        "one opened event, whatever the restarts"
    );
    assert!(
        received.iter().any(|r| r.reply == Reply::Fail),
        "it failed before the kill"
    );
    // The restarted coordinator kept the history and the schedule.
    let runs = history(&restarted, "down").await;
    assert!(runs
        .iter()
        .any(|r| r["status"] == "missed" || r["status"] == "faulty"));
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sweep_input_is_one_line_and_exit_2_before_anything_changes() {
    let data = tempfile::tempdir().unwrap();
    let coordinator = coordinator(data.path()).await;
    let (_eu, _eu_state) = agent(&coordinator, "eu", "fra-1").await;
    let create = |extra: &[&str]| {
        let mut args = vec![
            "sweep",
            "create",
            "s1",
            "http://shop.example/",
            "--origin",
            "192.0.2.10",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let refused = |args: Vec<String>, needle: &'static str| {
        let coordinator = &coordinator;
        async move {
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = coordinator.cli(&argv).await.unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            assert_eq!(out.status.code(), Some(2), "{argv:?}: {stderr}");
            assert!(stderr.contains(needle), "{argv:?}: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        }
    };
    refused(create(&["--regions", "mars"]), "unknown region \"mars\"").await;
    refused(create(&["--every", "500ms"]), "between 1s and 7days").await;
    refused(
        create(&["--webhook", "ftp://hooks.example/x"]),
        "http:// or https://",
    )
    .await;
    refused(create(&["--confirm", "0"]), "--confirm 0").await;
    refused(
        create(&["--regions", "eu", "--quorum", "2"]),
        "--quorum 2: the sweep lists only 1 region,",
    )
    .await;
    // Nothing was created by any of those.
    let list = cli_ok(&coordinator, &["sweep", "list", "--json"]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&list).unwrap(),
        serde_json::json!([])
    );
    cli_ok(
        &coordinator,
        &[
            "sweep",
            "create",
            "s1",
            "http://shop.example/",
            "--origin",
            "192.0.2.10",
        ],
    )
    .await;
    refused(create(&[]), "already exists").await;

    // apply: a dry run prints the plan and changes nothing; a real one
    // makes the sweeps exactly the file's; a bad file changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sweeps.toml");
    std::fs::write(
        &file,
        "[[sweep]]\nname = \"s2\"\nurl = \"http://api.example/\"\norigin = [\"192.0.2.11\"]\nevery = \"1m\"\nregions = [\"eu\"]\n",
    )
    .unwrap();
    let file_arg = file.display().to_string();
    let plan = cli_ok(&coordinator, &["sweep", "apply", &file_arg, "--dry-run"]).await;
    assert!(
        plan.contains("+ s2") && plan.contains("- s1") && plan.contains("dry run"),
        "{plan}"
    );
    let names = |list: String| -> Vec<String> {
        serde_json::from_str::<Vec<serde_json::Value>>(&list)
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(cli_ok(&coordinator, &["sweep", "list", "--json"]).await),
        ["s1"]
    );
    let applied = cli_ok(&coordinator, &["sweep", "apply", &file_arg]).await;
    assert!(
        applied.contains("1 to create, 0 to update, 1 to delete"),
        "{applied}"
    );
    assert_eq!(
        names(cli_ok(&coordinator, &["sweep", "list", "--json"]).await),
        ["s2"]
    );
    std::fs::write(&file, "[[sweep]]\nname = \"s3\"\nurl = \"http://api.example/\"\norigin = [\"192.0.2.11\"]\nregions = [\"mars\"]\n").unwrap();
    refused(
        vec!["sweep".into(), "apply".into(), file_arg.clone()],
        "unknown region",
    )
    .await;
    refused(
        vec![
            "sweep".into(),
            "apply".into(),
            "/nonexistent/sweeps.toml".into(),
        ],
        "cannot read",
    )
    .await;
    assert_eq!(
        names(cli_ok(&coordinator, &["sweep", "list", "--json"]).await),
        ["s2"]
    );

    // pause, resume, delete, and the unknown name.
    cli_ok(&coordinator, &["sweep", "pause", "s2"]).await;
    let shown: serde_json::Value =
        serde_json::from_str(&cli_ok(&coordinator, &["sweep", "show", "s2", "--json"]).await)
            .unwrap();
    assert_eq!(shown["paused"], true);
    assert_eq!(shown["next_run_at"], serde_json::Value::Null);
    let resumed = cli_ok(&coordinator, &["sweep", "resume", "s2"]).await;
    assert!(resumed.contains("next run 20"), "{resumed}");
    cli_ok(&coordinator, &["sweep", "delete", "s2"]).await;
    refused(
        vec!["sweep".into(), "show".into(), "s2".into()],
        "no sweep named \"s2\"",
    )
    .await;
}

/// A free loopback port for a server that cannot report the port it bound
/// (Prometheus logs the address it was given, not the one it got).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Asks Prometheus' HTTP API; its whole answer.
fn prometheus_answer(port: u16, query: &str) -> serde_json::Value {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "-G"])
        .arg(format!("http://127.0.0.1:{port}/api/v1/query"))
        .arg("--data-urlencode")
        .arg(format!("query={query}"))
        .output()
        .expect("curl runs");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Asks Prometheus' HTTP API; the `data.result` array.
fn prometheus_query(port: u16, query: &str) -> Vec<serde_json::Value> {
    let answer = prometheus_answer(port, query);
    answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_sweep_series_and_answers_queries() {
    if std::process::Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("prometheus is required under CI=true (apt-get install prometheus)");
        }
        eprintln!("SKIPPED a_real_prometheus_scrapes_the_sweep_series: prometheus is missing");
        return;
    }
    let origin = Origin::builder().spawn().await.unwrap();
    let origin_addr = origin.addr();
    let data = tempfile::tempdir().unwrap();
    let coordinator = coordinator(data.path()).await;
    let (_eu, _eu_state) = agent(&coordinator, "eu", "fra-1").await;
    let (_us, _us_state) = agent(&coordinator, "us", "iad-1").await;
    let url = origin.url("/health");
    cli_ok(
        &coordinator,
        &[
            "sweep",
            "create",
            "prom",
            &url,
            "--origin",
            &origin_addr.to_string(),
            "--regions",
            "eu,us",
            "--every",
            "1s",
            "--edge-timeout",
            "2s",
        ],
    )
    .await;
    wait_history(&coordinator, "prom", Duration::from_secs(60), |runs| {
        runs.iter().any(|r| r["status"] == "healthy")
    })
    .await;

    let http = coordinator
        .http_addr
        .expect("the lab coordinator serves HTTP");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vantage\n    static_configs:\n      - targets: ['{http}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut prometheus = ChildProcess::spawn(
        "prometheus",
        &std::path::PathBuf::from("prometheus"),
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ],
    )
    .unwrap();
    prometheus
        .wait_for_line(Duration::from_secs(60), |_, line| {
            line.contains("Server is ready to receive web requests")
        })
        .await
        .unwrap();
    // Healthy: probe_success is 1 for both regions and both routes.
    let healthy = poll_until(
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let result = prometheus_query(port, "probe_success{sweep=\"prom\"}");
            (result.len() >= 4 && result.iter().all(|r| r["value"][1] == "1")).then_some(result)
        },
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no probe_success: {:?}",
            prometheus_query(port, "probe_success")
        )
    });
    let routes: std::collections::BTreeSet<String> = healthy
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["metric"]["region"].as_str().unwrap(),
                r["metric"]["route"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        routes.into_iter().collect::<Vec<_>>(),
        ["eu/direct", "eu/edge", "us/direct", "us/edge"]
    );
    // Down: vantage_finding{code="origin_down"} is 1 in both regions.
    origin.stop().await;
    let finding = poll_until(
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let result = prometheus_query(
                port,
                "vantage_finding{sweep=\"prom\",code=\"origin_down\"} == 1",
            );
            (result.len() == 2).then_some(result)
        },
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no vantage_finding: {:?}",
            prometheus_query(port, "vantage_finding")
        )
    });
    let regions: Vec<&str> = finding
        .iter()
        .map(|r| r["metric"]["region"].as_str().unwrap())
        .collect();
    assert!(
        regions.contains(&"eu") && regions.contains(&"us"),
        "{finding:?}"
    );
    let failing = prometheus_query(port, "probe_success{sweep=\"prom\",route=\"direct\"} == 0");
    assert_eq!(failing.len(), 2, "{failing:?}");
    let runs = prometheus_query(port, "vantage_sweep_runs_total{sweep=\"prom\"}");
    assert!(!runs.is_empty());
    // Every query of deploy/grafana/vantage.json is PromQL this
    // Prometheus accepts.
    for query in crate::grafana_dashboard::dashboard_queries() {
        let answer = prometheus_answer(port, &query);
        assert_eq!(answer["status"], "success", "{query}: {answer}");
    }
    prometheus.terminate(Duration::from_secs(10)).await.unwrap();
}
