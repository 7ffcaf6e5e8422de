//! The sweep scheduler at fleet scale (issue #11 item 7): N sweeps at one
//! interval over R simulated regions on one scheduler and one SQLite file,
//! in real time. Each run is simulated (it holds its slot for a set time
//! and stores a verdict and its findings like a real run), so the figures
//! are the scheduler's and the store's: start lateness against the slot
//! (target p99 ≤ 1 s), overlapping runs of one sweep (target 0), CPU (target
//! < 1 core) and peak RSS of the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vantage::campaign::plan::TargetRequest;
use vantage::store::{SqliteStore, Store, SweepRecord, SweepRun, SweepRunEnd, SweepRunStatus};
use vantage::sweep::model::SweepDefinition;
use vantage::sweep::scheduler::{Clock, RunSlot, Scheduler, SchedulerConfig, SlotRun};

/// What to run.
#[derive(Debug, Clone)]
pub struct SweepBenchParams {
    /// Sweeps.
    pub sweeps: usize,
    /// Their interval.
    pub every: Duration,
    /// Regions each run names in its findings.
    pub regions: usize,
    /// How long each simulated run holds its slot.
    pub run_time: Duration,
    /// How long to measure.
    pub window: Duration,
}

/// What it measured.
#[derive(Debug, Clone)]
pub struct SweepBenchReport {
    /// Runs started.
    pub runs: u64,
    /// Slots recorded missed.
    pub missed: u64,
    /// Times a sweep started while its previous run was still going.
    pub overlaps: u64,
    /// Start lateness against the slot, p50 and p99 and max (ms).
    pub lateness_ms: (f64, f64, f64),
    /// CPU used over the window, in cores.
    pub cpu_cores: f64,
    /// Peak RSS of the process (KiB).
    pub peak_rss_kib: u64,
}

struct SimulatedRun {
    store: Arc<dyn Store>,
    run_time: Duration,
    regions: Vec<String>,
    lateness: Mutex<Vec<i64>>,
    running: Mutex<HashMap<String, u32>>,
    overlaps: AtomicU64,
    missed: AtomicU64,
}

#[tonic::async_trait]
impl RunSlot for SimulatedRun {
    async fn run(&self, slot: SlotRun) {
        if let Ok(mut lateness) = self.lateness.lock() {
            lateness.push(slot.started_at_ms - slot.slot_ms);
        }
        let overlapping = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let n = running.entry(slot.sweep.clone()).or_default();
            *n += 1;
            *n > 1
        };
        if overlapping {
            self.overlaps.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(self.run_time).await;
        let findings =
            serde_json::json!([{"code": "origin_slow", "kind": null, "regions": self.regions}]);
        let end = SweepRunEnd {
            finished_at_ms: vantage_support::time::now_ms(),
            status: SweepRunStatus::Faulty,
            campaign_id: Some(uuid::Uuid::new_v4().to_string()),
            findings_json: findings.to_string(),
            reason: None,
        };
        let _ = self
            .store
            .finish_sweep_run(slot.run_id, end, vec![], vec![])
            .await;
        if let Some(n) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&slot.sweep)
        {
            *n -= 1;
        }
    }

    async fn recover(&self, _run: SweepRun) {}

    fn missed(&self, _sweep: &str, slots: usize) {
        self.missed.fetch_add(slots as u64, Ordering::Relaxed);
    }
}

/// Runs the benchmark.
pub async fn sweeps(params: SweepBenchParams) -> anyhow::Result<SweepBenchReport> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("bench.db"))?);
    let now = vantage_support::time::now_ms();
    let regions: Vec<String> = (0..params.regions).map(|i| format!("region-{i}")).collect();
    for i in 0..params.sweeps {
        let mut definition = SweepDefinition::new(TargetRequest::new(
            &format!("http://site-{i}.example/"),
            &["192.0.2.10"],
        ));
        definition.every_ms = u64::try_from(params.every.as_millis())?;
        definition.regions = regions.clone();
        store
            .insert_sweep(SweepRecord {
                name: format!("sweep-{i:04}"),
                definition_json: serde_json::to_string(&definition)?,
                paused: false,
                created_at_ms: now,
                updated_at_ms: now,
                last_slot_ms: None,
            })
            .await?;
    }
    let runner = Arc::new(SimulatedRun {
        store: store.clone(),
        run_time: params.run_time,
        regions,
        lateness: Mutex::new(Vec::new()),
        running: Mutex::new(HashMap::new()),
        overlaps: AtomicU64::new(0),
        missed: AtomicU64::new(0),
    });
    let (shutdown, rx) = tokio::sync::watch::channel(false);
    let scheduler = Scheduler::new(
        store.clone(),
        runner.clone(),
        SchedulerConfig::default(),
        Arc::new(tokio::sync::Notify::new()),
        Clock::starting_at(vantage_support::time::now_ms()),
        "bench-coordinator".into(),
    );
    let cpu_before = super::cpu_seconds_of("self");
    let started = Instant::now();
    let task = tokio::spawn(scheduler.run(rx));
    tokio::time::sleep(params.window).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = super::cpu_seconds_of("self") - cpu_before;
    let _ = shutdown.send(true);
    let _ = task.await;
    let mut lateness = runner
        .lateness
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    lateness.sort_unstable();
    Ok(SweepBenchReport {
        runs: lateness.len() as u64,
        missed: runner.missed.load(Ordering::Relaxed),
        overlaps: runner.overlaps.load(Ordering::Relaxed),
        lateness_ms: (
            super::percentile(&lateness, 0.50),
            super::percentile(&lateness, 0.99),
            lateness.last().copied().unwrap_or(0) as f64,
        ),
        cpu_cores: cpu / elapsed,
        peak_rss_kib: super::proc_kib(std::process::id(), "VmHWM").unwrap_or(0),
    })
}
