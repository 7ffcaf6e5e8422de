//! Sweeps through the shipped binaries (issue #11 item 7, beside the
//! simulated [`super::sweeps`]): a `vantage serve` process, one real
//! `vantage-agent run` process per region (each from its own loopback
//! source address), M origins, and N sweeps made by `vantage sweep apply`,
//! every run a real campaign. After a healthy stretch the origins stop;
//! each sweep's next run finds `origin_down` in every region and, with
//! `confirm = 1`, opens an alert whose webhook reaches a loopback receiver.
//!
//! Measured from the store's run history and the receiver: start lateness
//! against the slot, overlapping runs, missed slots, run durations, the
//! coordinator's and the agents' CPU and the coordinator's peak RSS, and
//! the webhook delivery latency from the run's end (the payload's `at`,
//! taken when the run concludes) to the receiver. Its floor, measured in the
//! same run: `curl` POSTing the same body to the same receiver
//! (`time_total`, no process start-up).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context as _;
use vantage::store::{SqliteStore, Store, SweepRunStatus};

use crate::lab::{spawn_agent_process, wait_agent_connected, CoordinatorProcess};
use crate::origin::Origin;
use crate::process::ChildProcess;
use crate::webhook::{Reply, WebhookReceiver};

use super::{cpu_seconds_of, percentile};

/// What to run.
#[derive(Debug, Clone)]
pub struct LiveSweepParams {
    /// Sweeps.
    pub sweeps: usize,
    /// Their interval.
    pub every: Duration,
    /// Regions, one agent process each.
    pub regions: usize,
    /// Origins (`127.1.0.N`), the sweeps spread over them: an agent limits
    /// its rate per target (`--max-rate`, 200/s by default), so 1,000
    /// sweeps of one origin would measure that limit, not the sweeps.
    pub origins: usize,
    /// How long the origin stays healthy.
    pub healthy_for: Duration,
    /// How long it then stays down (at least one interval, so every sweep
    /// has a faulty run).
    pub down_for: Duration,
}

/// What it measured.
#[derive(Debug, Clone, Default)]
pub struct LiveSweepReport {
    /// Runs by status (`healthy`, `faulty`, `inconclusive`, `missed`, …).
    pub by_status: BTreeMap<String, u64>,
    /// Why slots were missed, with counts.
    pub missed_reasons: BTreeMap<String, u64>,
    /// Times a run started before its sweep's previous run ended.
    pub overlaps: u64,
    /// Start lateness against the slot, p50 / p99 / max (ms).
    pub lateness_ms: (f64, f64, f64),
    /// Run duration (start to end), p50 / p99 (ms).
    pub run_ms: (f64, f64),
    /// Probe results stored.
    pub results: u64,
    /// This process's CPU (the origins, the receiver, the pumps of the
    /// children's output), in cores: the rest of the machine's load.
    pub lab_cores: f64,
    /// The coordinator's CPU over the window, in cores.
    pub coordinator_cores: f64,
    /// All agent processes' CPU over the window, in cores.
    pub agents_cores: f64,
    /// The coordinator's peak RSS, KiB.
    pub coordinator_peak_kib: u64,
    /// Distinct `opened` events the receiver got.
    pub opened: u64,
    /// POSTs of an id the receiver had already accepted.
    pub repeated: u64,
    /// Webhook delivery latency, run end to receiver, p50 / p99 / max (ms).
    pub delivery_ms: (f64, f64, f64),
    /// The floor: median `curl` POST of the same body (ms).
    pub curl_post_ms: f64,
}

fn cpu_of(processes: &[&ChildProcess]) -> f64 {
    processes
        .iter()
        .filter_map(|p| p.pid())
        .map(|pid| cpu_seconds_of(&pid.to_string()))
        .sum()
}

/// The apply file: `sweeps` sweeps over every region, `confirm = 1`.
fn apply_file(
    params: &LiveSweepParams,
    origins: &[Origin],
    regions: &[String],
    hook: &str,
) -> String {
    let every = humantime::format_duration(params.every).to_string();
    let regions = regions
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut file = String::new();
    for i in 0..params.sweeps {
        let origin = &origins[i % origins.len()];
        file.push_str(&format!(
            "[[sweep]]\nname = \"live-{i:04}\"\nurl = {url:?}\norigin = [{origin:?}]\n\
             regions = [{regions}]\nevery = {every:?}\nconfirm = 1\nwebhooks = [{hook:?}]\n\n",
            url = origin.url(&format!("/s/{i}")),
            origin = origin.addr().to_string(),
        ));
    }
    file
}

/// The median `time_total` of `rounds` curl POSTs of `body` to `url`.
async fn curl_post_ms(url: &str, body: &str, rounds: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("body.json");
    std::fs::write(&path, body)?;
    let data = format!("@{}", path.display());
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let out = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{time_total}",
                "-X",
                "POST",
            ])
            .args([
                "-H",
                "content-type: application/json",
                "--data-binary",
                &data,
                url,
            ])
            .output()
            .await
            .context("curl")?;
        anyhow::ensure!(out.status.success(), "curl failed: {out:?}");
        let seconds: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        times.push((seconds * 1_000_000.0) as i64);
    }
    times.sort_unstable();
    Ok(percentile(&times, 0.5) / 1000.0)
}

/// Runs the benchmark.
pub async fn sweeps_live(params: LiveSweepParams) -> anyhow::Result<LiveSweepReport> {
    anyhow::ensure!(
        params.regions <= 200,
        "at most 200 regions (127.0.2.1 to 127.0.201.1)"
    );
    anyhow::ensure!(
        params.down_for > params.every,
        "--down-for must be longer than --every, so every sweep has a faulty run"
    );
    anyhow::ensure!(
        (1..=250).contains(&params.origins),
        "--origins: 1 to 250 (127.1.0.1 to 127.1.0.250)"
    );
    let mut origins = Vec::with_capacity(params.origins);
    for i in 0..params.origins {
        let addr = std::net::SocketAddr::from(([127, 1, 0, u8::try_from(i + 1)?], 0));
        origins.push(Origin::builder().listen(addr).spawn().await?);
    }
    let hook = WebhookReceiver::spawn(&[], Reply::Accept).await?;
    let data = tempfile::tempdir()?;
    let coordinator = CoordinatorProcess::start_with(
        data.path(),
        "127.0.0.1:0".parse()?,
        Duration::from_secs(10),
        &[
            "--webhook-allow-private",
            "--enroll-per-minute",
            "100000",
            "--enroll-burst",
            "100000",
        ],
    )
    .await?;
    let mut regions = Vec::new();
    let mut agents = Vec::new();
    let mut states = Vec::new();
    for i in 0..params.regions {
        let region = format!("r{i:02}");
        let token = coordinator.create_token(&region).await?;
        let state = tempfile::tempdir()?;
        let name = format!("{region}-1");
        let ip = format!("127.0.{}.1", i + 2);
        let mut agent = spawn_agent_process(
            state.path(),
            &["--token", &token, "--name", &name, "--bind-ip", &ip],
        )?;
        wait_agent_connected(&mut agent)
            .await
            .with_context(|| format!("agent of {region}"))?;
        agents.push(agent);
        states.push(state);
        regions.push(region);
    }
    let file = data.path().join("sweeps.toml");
    std::fs::write(&file, apply_file(&params, &origins, &regions, &hook.url()))?;
    let applied = coordinator
        .cli(&["sweep", "apply", &file.display().to_string()])
        .await?;
    anyhow::ensure!(
        applied.status.success(),
        "sweep apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let coordinator_pid = coordinator.process.pid().context("coordinator pid")?;
    let agent_refs: Vec<&ChildProcess> = agents.iter().collect();
    let (coordinator_cpu, agents_cpu, lab_cpu) = (
        cpu_seconds_of(&coordinator_pid.to_string()),
        cpu_of(&agent_refs),
        cpu_seconds_of("self"),
    );
    let began = Instant::now();
    tokio::time::sleep(params.healthy_for).await;
    for origin in origins {
        origin.stop().await;
    }
    tokio::time::sleep(params.down_for).await;
    let elapsed = began.elapsed().as_secs_f64();
    let lab_cores = (cpu_seconds_of("self") - lab_cpu) / elapsed;
    let coordinator_cores =
        (cpu_seconds_of(&coordinator_pid.to_string()) - coordinator_cpu) / elapsed;
    let agents_cores = (cpu_of(&agent_refs) - agents_cpu) / elapsed;
    let coordinator_peak_kib = super::proc_kib(coordinator_pid, "VmHWM").unwrap_or(0);

    // Every sweep's alert has opened by now; give the outbox a bounded
    // while to drain what is queued.
    let want = params.sweeps;
    let received = hook
        .wait_until(Duration::from_secs(60), |r| {
            r.iter()
                .filter(|r| r.body["event"] == "opened")
                .map(|r| r.body["id"].as_str().unwrap_or_default())
                .collect::<std::collections::HashSet<_>>()
                .len()
                >= want
        })
        .await
        .unwrap_or_else(|_| hook.received());
    drop(coordinator);
    drop(agents);

    let mut report = LiveSweepReport {
        coordinator_cores,
        agents_cores,
        coordinator_peak_kib,
        lab_cores,
        ..LiveSweepReport::default()
    };
    let mut first_arrival: HashMap<String, i64> = HashMap::new();
    let mut delivery = Vec::new();
    for r in received.iter().filter(|r| r.body["event"] == "opened") {
        let id = r.body["id"].as_str().unwrap_or_default().to_string();
        if first_arrival.contains_key(&id) {
            report.repeated += 1;
            continue;
        }
        first_arrival.insert(id, r.arrived_at_ms);
        let at = r.body["at"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .context("an event without a readable `at`")?;
        delivery.push(r.arrived_at_ms - i64::try_from(at.as_millis())?);
    }
    report.opened = first_arrival.len() as u64;
    delivery.sort_unstable();
    report.delivery_ms = (
        percentile(&delivery, 0.5),
        percentile(&delivery, 0.99),
        delivery.last().copied().unwrap_or(0) as f64,
    );
    if let Some(sample) = received.first() {
        report.curl_post_ms = curl_post_ms(&hook.url(), &sample.body.to_string(), 21).await?;
    }

    let store = SqliteStore::open(&data.path().join("vantage.db"))?;
    let mut lateness = Vec::new();
    let mut run_ms = Vec::new();
    for i in 0..params.sweeps {
        let mut runs = store.sweep_runs(&format!("live-{i:04}"), 100_000).await?;
        runs.sort_by_key(|r| r.slot_ms);
        let mut previous_end: Option<i64> = None;
        for run in &runs {
            *report
                .by_status
                .entry(run.status.as_str().to_string())
                .or_default() += 1;
            if run.status == SweepRunStatus::Missed {
                let reason = run.reason.clone().unwrap_or_default();
                *report.missed_reasons.entry(reason).or_default() += 1;
                continue;
            }
            let Some(started) = run.started_at_ms else {
                continue;
            };
            lateness.push(started - run.slot_ms);
            if let Some(end) = run.finished_at_ms {
                run_ms.push(end - started);
            }
            if previous_end.is_some_and(|end| started < end) {
                report.overlaps += 1;
            }
            previous_end = run.finished_at_ms.or(Some(i64::MAX));
        }
    }
    lateness.sort_unstable();
    run_ms.sort_unstable();
    report.lateness_ms = (
        percentile(&lateness, 0.5),
        percentile(&lateness, 0.99),
        lateness.last().copied().unwrap_or(0) as f64,
    );
    report.run_ms = (percentile(&run_ms, 0.5), percentile(&run_ms, 0.99));
    report.results = store.count_all_results().await?;
    drop(states);
    Ok(report)
}
