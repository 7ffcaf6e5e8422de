//! Benchmarks that need more than `cargo bench`: the coordinator's ingest
//! through the real gRPC + mTLS path into SQLite with many simulated agent
//! sessions (against the store alone as its peer, in the same run), and the
//! agent's footprint. Figures go to docs/BENCHMARKS.md.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use vantage::store::{NewPlan, PgConfig, PgStore, SqliteStore, Store as _};
use vantage_proto::pb;
use vantage_proto::pb::agent_message::Body as Up;
use vantage_proto::pb::coordinator_message::Body as Down;

use crate::lab::{
    enroll_identity, hello_for, raw_session, spawn_agent_process, wait_agent_connected,
    CoordinatorProcess,
};

/// A synthetic but realistic result (~400 bytes encoded).
pub fn synthetic_result(agent: usize, index: u64) -> pb::ProbeResult {
    pb::ProbeResult {
        result_id: format!("{agent:04}-{index:012}-bench"),
        plan_id: "bench-plan".into(),
        probe_id: format!("p{}", index % 16),
        attempt: 1,
        route: pb::Route::Direct as i32,
        variant: "baseline".into(),
        url: "http://www.example.com/asset.js".into(),
        nonce: format!("n{agent}-{index}"),
        outcome: pb::Outcome::Ok as i32,
        timings: Some(pb::Timings {
            dns_us: 10,
            connect_us: 300,
            tls_us: 300,
            ttfb_us: 1_200,
            total_us: 1_500,
        }),
        remote_addr: "192.0.2.10:80".into(),
        local_addr: "198.51.100.7:41234".into(),
        http_version: "HTTP/1.1".into(),
        status: 200,
        headers: vec![
            pb::Header {
                name: "server".into(),
                value: b"nginx".to_vec(),
            },
            pb::Header {
                name: "content-type".into(),
                value: b"application/javascript".to_vec(),
            },
            pb::Header {
                name: "eo-log-uuid".into(),
                value: b"4f1c2d7e9a0b4c3d8e7f6a5b4c3d2e1f".to_vec(),
            },
        ],
        body_bytes: 4096,
        body_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        body_head: b"<!doctype html><title>bench</title>".to_vec(),
        title: "bench".into(),
        started_at_unix_ms: 1_700_000_000_000 + i64::try_from(index).unwrap_or(0),
        ..Default::default()
    }
}

/// Parameters of the ingest benchmark.
#[derive(Debug, Clone, Copy)]
pub struct IngestParams {
    /// Simulated agent sessions.
    pub agents: usize,
    /// Results each agent sends.
    pub results_per_agent: u64,
    /// Results per batch.
    pub batch: u64,
    /// Batches in flight per session.
    pub window: usize,
}

/// What the ingest benchmark measured.
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// Results per second through gRPC into SQLite.
    pub grpc_rate: f64,
    /// Results per second straight into the store (the peer).
    pub store_rate: f64,
    /// Results stored (must equal what was sent).
    pub stored: u64,
    /// Peak RSS of the coordinator process, KiB.
    pub coordinator_peak_kib: u64,
}

/// utime + stime of a process, seconds (clock ticks at 100 Hz).
pub fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// The `p` quantile of sorted values.
pub fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

/// Reads `VmHWM` (peak RSS) or `VmRSS` of a process, in KiB.
pub fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn drive_session(
    identity: vantage_agent::identity::Identity,
    agent: usize,
    params: IngestParams,
    start: Arc<tokio::sync::Barrier>,
) -> anyhow::Result<()> {
    let session = raw_session(&identity, vec![hello_for(&identity)]).await?;
    let mut inbound = session.inbound?;
    match inbound.message().await? {
        Some(pb::CoordinatorMessage {
            body: Some(Down::Welcome(_)),
        }) => {}
        other => bail!("expected Welcome, got {other:?}"),
    }
    let batches = params.results_per_agent.div_ceil(params.batch);
    // Build every batch before the clock starts: the benchmark measures the
    // coordinator, not result generation.
    let prepared: Vec<pb::AgentMessage> = (0..batches)
        .map(|seq| {
            let first = seq * params.batch;
            let last = (first + params.batch).min(params.results_per_agent);
            pb::AgentMessage {
                body: Some(Up::Results(pb::ResultBatch {
                    seq: seq + 1,
                    results: (first..last).map(|i| synthetic_result(agent, i)).collect(),
                    ..Default::default()
                })),
            }
        })
        .collect();
    start.wait().await;
    let mut queue = prepared.into_iter();
    let mut in_flight = 0usize;
    let mut acked = 0u64;
    for message in queue.by_ref().take(params.window) {
        session.tx.send(message).await?;
        in_flight += 1;
    }
    while acked < batches {
        match inbound.message().await? {
            Some(pb::CoordinatorMessage {
                body: Some(Down::Ack(_)),
            }) => {
                acked += 1;
                in_flight -= 1;
                if let Some(message) = queue.next() {
                    session.tx.send(message).await?;
                    in_flight += 1;
                }
            }
            Some(_) => {}
            None => bail!("coordinator closed the session after {acked} acks"),
        }
    }
    let _ = in_flight;
    Ok(())
}

/// Runs the ingest benchmark against a `vantage serve` process on SQLite,
/// and the store alone as its peer.
pub async fn ingest(params: IngestParams) -> anyhow::Result<IngestReport> {
    let scratch = tempfile::tempdir()?;
    let run = ingest_through(params, None, 1).await?;
    let store_rate = store_only(params, &scratch.path().join("peer.db")).await?;
    Ok(IngestReport {
        grpc_rate: run.rate,
        store_rate,
        stored: run.stored,
        coordinator_peak_kib: run.peak_kib,
    })
}

/// One ingest run through the real binaries.
#[derive(Debug, Clone, Copy)]
pub struct IngestRun {
    /// Results per second, from the first batch sent to the last acked.
    pub rate: f64,
    /// Results stored at the end (each once).
    pub stored: u64,
    /// The largest coordinator's peak RSS, KiB.
    pub peak_kib: u64,
}

/// Runs `params` through `coordinators` `vantage serve` processes of one
/// installation on `database` (a `postgres://` URL of an empty schema;
/// `None`: one coordinator on SQLite), the simulated agents spread over
/// them round-robin.
pub async fn ingest_through(
    params: IngestParams,
    database: Option<&str>,
    coordinators: usize,
) -> anyhow::Result<IngestRun> {
    if coordinators == 0 || (coordinators > 1 && database.is_none()) {
        bail!("several coordinators need a shared (postgres://) database");
    }
    let dirs: Vec<tempfile::TempDir> = (0..coordinators)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let extra: Vec<&str> = database
        .map(|url| vec!["--database", url])
        .unwrap_or_default();
    let mut running = Vec::with_capacity(coordinators);
    for (index, dir) in dirs.iter().enumerate() {
        if index > 0 {
            // The others join the first one's installation.
            std::fs::copy(dirs[0].path().join("seal.key"), dir.path().join("seal.key"))?;
        }
        running.push(
            CoordinatorProcess::start_with(
                dir.path(),
                "127.0.0.1:0".parse()?,
                Duration::from_secs(10),
                &[
                    extra.as_slice(),
                    &["--enroll-per-minute", "100000", "--enroll-burst", "100000"],
                ]
                .concat(),
            )
            .await?,
        );
    }
    let mut control = running[0].control()?;
    let token = control
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest {
            region: "bench".into(),
            ttl_seconds: 600,
            uses: u32::try_from(params.agents)?,
        })
        .await?
        .into_inner()
        .token;
    let mut identities = Vec::with_capacity(params.agents);
    for agent in 0..params.agents {
        let mut identity = enroll_identity(&token, &format!("bench-{agent:03}")).await?;
        // Round-robin: this agent's session goes to one coordinator.
        identity.info.coordinator = vec![running[agent % coordinators].grpc_addr.to_string()];
        identities.push(identity);
    }
    // The coordinator accepts results only for plans sent to the reporting
    // agent: register the benchmark's plan for every simulated agent, the
    // way a campaign does before it sends one.
    let plan_agents: Vec<(String, u64)> = identities
        .iter()
        .map(|i| (i.info.agent_id.clone(), params.results_per_agent))
        .collect();
    let store = open_store(database, dirs[0].path()).await?;
    store
        .insert_plan(NewPlan {
            plan_id: "bench-plan".into(),
            campaign_id: None,
            created_at_ms: 0,
            probes_json: "[]".into(),
            agents: plan_agents,
        })
        .await?;
    let start = Arc::new(tokio::sync::Barrier::new(params.agents + 1));
    let mut sessions = tokio::task::JoinSet::new();
    for (agent, identity) in identities.into_iter().enumerate() {
        sessions.spawn(drive_session(identity, agent, params, start.clone()));
    }
    start.wait().await;
    let began = Instant::now();
    while let Some(done) = sessions.join_next().await {
        done.context("session task")??;
    }
    let elapsed = began.elapsed();
    let total = params.results_per_agent * params.agents as u64;
    let mut peak_kib = 0;
    for coordinator in &running {
        let pid = coordinator.process.pid().context("coordinator pid")?;
        peak_kib = peak_kib.max(proc_kib(pid, "VmHWM:").unwrap_or(0));
    }
    drop(running);
    Ok(IngestRun {
        rate: total as f64 / elapsed.as_secs_f64(),
        stored: store.count_all_results().await?,
        peak_kib,
    })
}

/// The benchmark's own handle on the coordinators' store.
async fn open_store(
    database: Option<&str>,
    data_dir: &Path,
) -> anyhow::Result<Arc<dyn vantage::store::Store>> {
    Ok(match database {
        Some(url) => Arc::new(PgStore::connect(&PgConfig::parse(url)?).await?),
        None => Arc::new(SqliteStore::open(&data_dir.join("vantage.db"))?),
    })
}

/// The peer: the same results, in the same batches, written straight into a
/// fresh store with no network, TLS or protobuf decoding in between (the
/// encoding into store records, which the ingest writer also does, is timed).
async fn store_only(params: IngestParams, path: &Path) -> anyhow::Result<f64> {
    let store = SqliteStore::open(path)?;
    let batches: Vec<Vec<pb::ProbeResult>> = (0..params.agents)
        .flat_map(|agent| {
            let per = params.results_per_agent;
            (0..per.div_ceil(params.batch)).map(move |b| {
                let first = b * params.batch;
                (first..(first + params.batch).min(per))
                    .map(|i| synthetic_result(agent, i))
                    .collect()
            })
        })
        .collect();
    let began = Instant::now();
    for batch in &batches {
        let records = batch
            .iter()
            .map(|result| vantage::ingest::to_record("bench", result))
            .collect::<Result<Vec<_>, _>>()?;
        store.insert_results(records, 0).await?;
    }
    let total = params.results_per_agent * params.agents as u64;
    Ok(total as f64 / began.elapsed().as_secs_f64())
}

/// What the footprint benchmark measured.
#[derive(Debug, Clone)]
pub struct FootprintReport {
    /// Agent RSS after enrolling and idling connected, KiB.
    pub agent_idle_kib: u64,
    /// Coordinator RSS idle with that one agent, KiB.
    pub coordinator_idle_kib: u64,
    /// Size of the agent binary, bytes.
    pub agent_binary_bytes: u64,
    /// Size of the coordinator binary, bytes.
    pub coordinator_binary_bytes: u64,
}

/// Enrolls one real agent process, lets it idle, and reads its RSS.
pub async fn footprint(idle: Duration) -> anyhow::Result<FootprintReport> {
    let data = tempfile::tempdir()?;
    let coordinator =
        CoordinatorProcess::start(data.path(), "127.0.0.1:0".parse()?, Duration::from_secs(1))
            .await?;
    let token = coordinator.create_token("bench").await?;
    let state = tempfile::tempdir()?;
    let mut agent = spawn_agent_process(state.path(), &["--token", &token, "--name", "idle-1"])?;
    wait_agent_connected(&mut agent).await?;
    // Idle through several heartbeats so steady-state buffers are allocated.
    tokio::time::sleep(idle).await;
    let agent_pid = agent.pid().context("agent pid")?;
    let coordinator_pid = coordinator.process.pid().context("coordinator pid")?;
    let size = |name: &str| {
        std::fs::metadata(crate::process::bin_path(name))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    Ok(FootprintReport {
        agent_idle_kib: proc_kib(agent_pid, "VmRSS:").unwrap_or(0),
        coordinator_idle_kib: proc_kib(coordinator_pid, "VmRSS:").unwrap_or(0),
        agent_binary_bytes: size("vantage-agent"),
        coordinator_binary_bytes: size("vantage"),
    })
}

/// What the diagnose benchmark measured.
#[derive(Debug, Clone)]
pub struct DiagnoseReport {
    /// Median wall time of `vantage diagnose` on a healthy origin, 3 regions.
    pub healthy_ms: f64,
    /// The same procedure as a shell script of sequential curl commands, one region.
    pub curl_script_ms: f64,
    /// Wall time of a 524 scenario (origin slower than the edge timeout).
    pub slow_ms: f64,
    /// The edge timeout used in the 524 scenario.
    pub edge_timeout_ms: f64,
}

async fn timed_diagnose(
    lab: &crate::scenario::Scenario,
    extra: &[&str],
) -> anyhow::Result<(f64, String)> {
    let started = Instant::now();
    let (_, report) = lab.diagnose(extra).await?;
    Ok((
        started.elapsed().as_secs_f64() * 1000.0,
        report["status"].as_str().unwrap_or("").to_string(),
    ))
}

/// Times `vantage diagnose` (real processes: coordinator, 3 agents, witness)
/// against a healthy origin and a slow one, and the seed's procedure as a
/// shell script of curl commands.
pub async fn diagnose(runs: usize) -> anyhow::Result<DiagnoseReport> {
    use crate::fixture::{Fault, TlsMode};
    use crate::scenario::ScenarioBuilder;
    let healthy = ScenarioBuilder::new(Fault::Healthy, TlsMode::Plain)
        .edge(
            vantage_proto::cdn::CdnProfile::EdgeOne,
            Duration::from_secs(1),
            vec![("127.0.0.2".parse()?, None)],
        )
        .start()
        .await?;
    let args = ["--edge-timeout", "1s", "--burst", "20", "--attempts", "3"];
    let mut times = Vec::new();
    for _ in 0..runs {
        let (ms, status) = timed_diagnose(&healthy, &args).await?;
        if status != "healthy" {
            bail!("healthy scenario diagnosed as {status}");
        }
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    let healthy_ms = times[times.len() / 2];

    // The seed's procedure by hand, one region: baseline x3, the pull headers,
    // a burst of 20 in the background, the edge x3.
    let url = healthy.url("/lab");
    let host = crate::fixture::LAB_HOST;
    let port = healthy.origin.addr().port();
    let edge = healthy
        .edge
        .as_ref()
        .map(|e| e.addrs()[0])
        .context("edge")?;
    let resolve_origin = format!("{host}:{port}:127.0.0.1");
    let resolve_edge = format!("{host}:{port}:{}", edge.ip());
    let script = format!(
        "set -e; for i in 1 2 3; do curl -s -o /dev/null --resolve {ro} '{url}'; done; \
         curl -s -o /dev/null --resolve {ro} -H 'EO-Connecting-IP: 198.51.100.10' -H 'X-Forwarded-For: 198.51.100.10' -H 'X-Forwarded-Proto: http' -H 'CDN-Loop: TencentEdgeOne; loops=1' -H 'EO-LOG-UUID: x' '{url}'; \
         for i in $(seq 20); do curl -s -o /dev/null --resolve {ro} '{url}' & done; wait; \
         for i in 1 2 3; do curl -s -o /dev/null --connect-to {host}:{port}:{eip}:{eport} '{url}'; done",
        ro = resolve_origin,
        eip = edge.ip(),
        eport = edge.port(),
    );
    let _ = resolve_edge;
    let mut script_times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let status = tokio::process::Command::new("sh")
            .args(["-c", &script])
            .status()
            .await?;
        if !status.success() {
            bail!("the curl script failed");
        }
        script_times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    script_times.sort_by(f64::total_cmp);
    let curl_script_ms = script_times[script_times.len() / 2];
    drop(healthy);

    let edge_timeout = Duration::from_secs(1);
    let slow = ScenarioBuilder::new(
        Fault::SlowFirstByte(Duration::from_millis(1500)),
        TlsMode::Plain,
    )
    .edge(
        vantage_proto::cdn::CdnProfile::EdgeOne,
        edge_timeout,
        vec![("127.0.0.2".parse()?, None)],
    )
    .start()
    .await?;
    let (slow_ms, status) = timed_diagnose(
        &slow,
        &["--edge-timeout", "1s", "--burst", "5", "--attempts", "1"],
    )
    .await?;
    if status != "faulty" {
        bail!("524 scenario diagnosed as {status}");
    }
    Ok(DiagnoseReport {
        healthy_ms,
        curl_script_ms,
        slow_ms,
        edge_timeout_ms: edge_timeout.as_secs_f64() * 1000.0,
    })
}

/// One faulty campaign of the time-budget benchmark.
#[derive(Debug, Clone)]
pub struct BudgetFigure {
    /// What was broken.
    pub case: &'static str,
    /// The edge timeout the campaign ran with.
    pub edge_timeout: Duration,
    /// `vantage diagnose` wall time, CLI start to report.
    pub report_ms: f64,
    /// The report's status and finding codes (`code/kind@regions`).
    pub verdict: String,
}

impl BudgetFigure {
    /// Time to report ÷ (edge timeout + 1 s): at most 1.0 meets DESIGN §9.
    pub fn ratio(&self) -> f64 {
        self.report_ms / (self.edge_timeout.as_secs_f64() * 1000.0 + 1000.0)
    }
}

fn verdict_of(report: &serde_json::Value) -> String {
    let findings: Vec<String> = report["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            format!(
                "{}/{}@{}",
                f["code"].as_str().unwrap_or("?"),
                f["kind"].as_str().unwrap_or("-"),
                f["regions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join("+")
            )
        })
        .collect();
    format!(
        "{} [{}]",
        report["status"].as_str().unwrap_or("?"),
        findings.join(", ")
    )
}

/// Times `vantage diagnose` (real processes, the CLI's default flags, with
/// `--edge-timeout` only when `edge_timeout` is not EdgeOne's 15 s default)
/// on a 524 (origin slower than the edge), a hanging origin, a refused
/// origin and — when `netns` names a namespace this runs in — a blackholed
/// region (iptables DROP of one region's packets to the origin).
pub async fn budget(
    edge_timeout: Duration,
    netns: Option<&str>,
) -> anyhow::Result<Vec<BudgetFigure>> {
    use crate::fixture::{Fault, TlsMode};
    use crate::scenario::ScenarioBuilder;
    let mut cases: Vec<(&'static str, Fault, bool)> = vec![
        (
            "524 (origin answers 5 s after the edge timeout)",
            Fault::SlowFirstByte(edge_timeout + Duration::from_secs(5)),
            false,
        ),
        ("hanging origin", Fault::HangBeforeFirstByte, false),
        ("refused origin", Fault::Refuse, false),
    ];
    if netns.is_some() {
        cases.push(("blackholed region (ap)", Fault::Healthy, true));
    }
    let timeout_flag = humantime::format_duration(edge_timeout).to_string();
    let mut out = Vec::new();
    for (case, fault, blackhole) in cases {
        let lab = ScenarioBuilder::new(fault, TlsMode::Plain)
            .edge(
                vantage_proto::cdn::CdnProfile::EdgeOne,
                edge_timeout,
                vec![(std::net::IpAddr::from([127, 0, 0, 2]), None)],
            )
            .start()
            .await?;
        if let (true, Some(ns)) = (blackhole, netns) {
            crate::netns::apply(
                ns,
                &crate::netns::Interference::Blackhole {
                    source: crate::scenario::region_source("ap").context("region ap")?,
                    target: lab.origin.addr(),
                },
            )?;
        }
        let mut extra: Vec<&str> = Vec::new();
        if edge_timeout != vantage_proto::cdn::CdnProfile::EdgeOne.edge_timeout() {
            extra.extend(["--edge-timeout", &timeout_flag]);
        }
        let began = Instant::now();
        let (_, report) = lab.diagnose(&extra).await?;
        let report_ms = began.elapsed().as_secs_f64() * 1000.0;
        out.push(BudgetFigure {
            case,
            edge_timeout,
            report_ms,
            verdict: verdict_of(&report),
        });
    }
    Ok(out)
}

/// What the failover benchmark measured.
#[derive(Debug, Clone)]
pub struct FailoverReport {
    /// Per round: from `kill -9` of the agent's coordinator to the agent's
    /// session on the other one.
    pub failovers: Vec<Duration>,
    /// Per round, its floor: the reconnect delays the agent chose on the way
    /// (its jittered backoff, as it logged them), which no coordinator-side
    /// work can shorten.
    pub floors: Vec<Duration>,
}

/// Two coordinators of one installation on `database`, one real agent with
/// its default reconnect settings: `rounds` times, kills the coordinator
/// that holds the agent and times the move to the other (then restarts
/// the dead one on its port and data dir, so the next round can move back).
pub async fn failover(database: &str, rounds: usize) -> anyhow::Result<FailoverReport> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let extra = ["--database", database];
    let heartbeat = Duration::from_secs(1);
    let mut running = Vec::new();
    for (index, dir) in dirs.iter().enumerate() {
        if index > 0 {
            std::fs::copy(dirs[0].path().join("seal.key"), dir.path().join("seal.key"))?;
        }
        running.push(
            CoordinatorProcess::start_with(dir.path(), "127.0.0.1:0".parse()?, heartbeat, &extra)
                .await?,
        );
    }
    let token = running[0].create_token("bench").await?;
    let state = tempfile::tempdir()?;
    // The agent's own defaults: no lab reconnect flags.
    let mut agent = crate::process::ChildProcess::spawn(
        "vantage-agent",
        &crate::process::bin_path("vantage-agent"),
        &[
            "run".to_string(),
            "--state-dir".into(),
            state.path().display().to_string(),
            "--allow-private".into(),
            "--token".into(),
            token,
            "--name".into(),
            "failover-1".into(),
        ],
    )?;
    let first = agent
        .wait_for_line(Duration::from_secs(30), |_, line| {
            line.contains("session established")
        })
        .await?;
    let mut holder = usize::from(!first.contains(&running[0].grpc_addr.to_string()));
    let mut report = FailoverReport {
        failovers: Vec::new(),
        floors: Vec::new(),
    };
    for _ in 0..rounds {
        let other = 1 - holder;
        let killed = Instant::now();
        running[holder].kill9().await?;
        let target = running[other].grpc_addr.to_string();
        let mut floor = Duration::ZERO;
        agent
            .wait_for_line(Duration::from_secs(120), |_, line| {
                if let Some(delay) = line
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("retry_in="))
                    .and_then(debug_duration)
                {
                    floor += delay;
                }
                line.contains("session established") && line.contains(&target)
            })
            .await?;
        report.failovers.push(killed.elapsed());
        report.floors.push(floor);
        running[holder] = running[holder].restart_with(&extra).await?;
        holder = other;
    }
    let _ = agent.terminate(Duration::from_secs(10)).await;
    Ok(report)
}

/// A `Duration` as its `Debug` prints it (`1.2s`, `850.5ms`, `12µs`).
fn debug_duration(text: &str) -> Option<Duration> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("µs") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ns") {
        (n, 1e-9)
    } else {
        (text.strip_suffix('s')?, 1.0)
    };
    number
        .parse::<f64>()
        .ok()
        .map(|n| Duration::from_secs_f64(n * scale))
}

/// What the sessions benchmark measured for one size.
#[derive(Debug, Clone)]
pub struct SessionsReport {
    /// Simulated agent sessions held.
    pub sessions: usize,
    /// Coordinator RSS with no session, KiB (after enrolling them all).
    pub idle_kib: u64,
    /// Coordinator RSS holding every session, KiB.
    pub held_kib: u64,
    /// Coordinator CPU while the sessions heartbeat, in cores (CPU seconds
    /// per second over the window).
    pub heartbeat_cores: f64,
    /// The same coordinator's CPU over an equal window with no session:
    /// the floor.
    pub idle_cores: f64,
    /// The window.
    pub window: Duration,
}

/// Holds `sessions` simulated agent sessions on one `vantage serve`
/// (on `database`, or SQLite), each heartbeating at the coordinator's
/// default interval, and measures the coordinator's RSS per session and
/// its CPU over `window` against the same window idle.
pub async fn sessions(
    sessions: usize,
    window: Duration,
    database: Option<&str>,
) -> anyhow::Result<SessionsReport> {
    let data = tempfile::tempdir()?;
    let cap = (sessions + 64).to_string();
    let mut extra = vec![
        "--enroll-per-minute",
        "100000",
        "--enroll-burst",
        "100000",
        "--max-connections",
        cap.as_str(),
    ];
    if let Some(url) = database {
        extra.extend(["--database", url]);
    }
    // The coordinator's default heartbeat: what a fleet runs with.
    let heartbeat = Duration::from_secs(10);
    let coordinator =
        CoordinatorProcess::start_with(data.path(), "127.0.0.1:0".parse()?, heartbeat, &extra)
            .await?;
    let pid = coordinator.process.pid().context("coordinator pid")?;
    let mut control = coordinator.control()?;
    let token = control
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest {
            region: "bench".into(),
            ttl_seconds: 3600,
            uses: u32::try_from(sessions)?,
        })
        .await?
        .into_inner()
        .token;
    let mut identities = Vec::with_capacity(sessions);
    for agent in 0..sessions {
        identities.push(enroll_identity(&token, &format!("s-{agent:05}")).await?);
    }
    let cpu = || cpu_seconds_of(&pid.to_string());
    let (idle_start, idle_began) = (cpu(), Instant::now());
    tokio::time::sleep(window).await;
    let idle_cores = (cpu() - idle_start) / idle_began.elapsed().as_secs_f64();
    let idle_kib = proc_kib(pid, "VmRSS:").unwrap_or(0);

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut held = tokio::task::JoinSet::new();
    for identity in identities {
        let session = raw_session(&identity, vec![hello_for(&identity)]).await?;
        let mut inbound = session.inbound?;
        match inbound.message().await? {
            Some(pb::CoordinatorMessage {
                body: Some(Down::Welcome(_)),
            }) => {}
            other => bail!("expected Welcome, got {other:?}"),
        }
        let tx = session.tx;
        let mut stopped = stopped.clone();
        held.spawn(async move {
            let mut beat = tokio::time::interval(heartbeat);
            beat.tick().await;
            loop {
                tokio::select! {
                    _ = beat.tick() => {
                        let message = pb::AgentMessage {
                            body: Some(Up::Heartbeat(pb::Heartbeat {
                                sent_at_unix_ms: vantage_support::time::now_ms(),
                                health: None,
                                coordinators: Vec::new(),
                            })),
                        };
                        if tx.send(message).await.is_err() {
                            return;
                        }
                    }
                    message = inbound.message() => {
                        if !matches!(message, Ok(Some(_))) {
                            return;
                        }
                    }
                    _ = stopped.changed() => return,
                }
            }
        });
    }
    // Every session's first heartbeat falls inside the window.
    let (busy_start, busy_began) = (cpu(), Instant::now());
    tokio::time::sleep(window).await;
    let heartbeat_cores = (cpu() - busy_start) / busy_began.elapsed().as_secs_f64();
    let held_kib = proc_kib(pid, "VmRSS:").unwrap_or(0);
    let still = held.len();
    let _ = stop.send(true);
    while held.join_next().await.is_some() {}
    if still != sessions {
        bail!("{} of {sessions} sessions ended early", sessions - still);
    }
    Ok(SessionsReport {
        sessions,
        idle_kib,
        held_kib,
        heartbeat_cores,
        idle_cores,
        window,
    })
}
