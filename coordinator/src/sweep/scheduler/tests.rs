//! The scheduler on a paused tokio clock, over a real (in-memory) SQLite
//! store and a fake [`RunSlot`] whose runs take a scripted time.

use std::sync::Mutex;

use super::*;
use crate::campaign::plan::TargetRequest;
use crate::store::{SqliteStore, SweepRunEnd, SweepRunStatus};

/// 2023-11-14T22:13:20Z: a fixed wall clock for every test.
const T0: i64 = 1_700_000_000_000;

#[derive(Default)]
struct FakeRunner {
    /// How long each run takes.
    takes: Duration,
    store: Mutex<Option<Arc<dyn Store>>>,
    started: Mutex<Vec<(String, i64, i64)>>,
    recovered: Mutex<Vec<i64>>,
    running: std::sync::atomic::AtomicUsize,
    most_running: std::sync::atomic::AtomicUsize,
}

#[tonic::async_trait]
impl RunSlot for FakeRunner {
    async fn run(&self, slot: SlotRun) {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.most_running.fetch_max(now, SeqCst);
        self.started
            .lock()
            .unwrap()
            .push((slot.sweep.clone(), slot.slot_ms, slot.started_at_ms));
        tokio::time::sleep(self.takes).await;
        let store = self.store.lock().unwrap().clone().unwrap();
        store
            .finish_sweep_run(
                slot.run_id,
                SweepRunEnd {
                    finished_at_ms: slot.started_at_ms + self.takes.as_millis() as i64,
                    status: SweepRunStatus::Healthy,
                    campaign_id: Some(format!("c-{}", slot.slot_ms)),
                    findings_json: "[]".into(),
                    reason: None,
                },
                vec![],
                vec![],
            )
            .await
            .unwrap();
        self.running.fetch_sub(1, SeqCst);
    }

    async fn recover(&self, run: SweepRun) {
        self.recovered.lock().unwrap().push(run.run_id);
    }
}

struct Harness {
    store: Arc<dyn Store>,
    runner: Arc<FakeRunner>,
    changed: Arc<Notify>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    clock: Clock,
}

fn definition(every: Duration) -> String {
    let mut d = SweepDefinition::new(TargetRequest::new(
        "http://shop.example/",
        &["203.0.113.10"],
    ));
    d.every_ms = every.as_millis() as u64;
    serde_json::to_string(&d).unwrap()
}

fn sweep(
    name: &str,
    every: Duration,
    created_at_ms: i64,
    last_slot_ms: Option<i64>,
) -> SweepRecord {
    SweepRecord {
        name: name.into(),
        definition_json: definition(every),
        paused: false,
        created_at_ms,
        updated_at_ms: created_at_ms,
        last_slot_ms,
    }
}

impl Harness {
    async fn new(takes: Duration, config: SchedulerConfig, sweeps: Vec<SweepRecord>) -> Self {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
        for s in sweeps {
            store.insert_sweep(s).await.unwrap();
        }
        let runner = Arc::new(FakeRunner {
            takes,
            ..FakeRunner::default()
        });
        *runner.store.lock().unwrap() = Some(store.clone());
        Self::start(store, runner, config)
    }

    fn start(store: Arc<dyn Store>, runner: Arc<FakeRunner>, config: SchedulerConfig) -> Self {
        let changed = Arc::new(Notify::new());
        let clock = Clock::starting_at(T0);
        let (shutdown, rx) = watch::channel(false);
        let scheduler = Scheduler::new(
            store.clone(),
            runner.clone(),
            config,
            changed.clone(),
            clock,
            "test-coordinator".into(),
        );
        let task = Some(tokio::spawn(scheduler.run(rx)));
        Harness {
            store,
            runner,
            changed,
            shutdown,
            task,
            clock,
        }
    }

    async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    async fn history(&self, name: &str) -> Vec<SweepRun> {
        let mut runs = self.store.sweep_runs(name, 1000).await.unwrap();
        runs.reverse();
        runs
    }
}

fn schedule(name: &str, every: Duration) -> Schedule {
    Schedule::new(name, every).unwrap()
}

#[tokio::test(start_paused = true)]
async fn each_slot_runs_once_at_its_stable_offset() {
    let every = Duration::from_secs(10);
    let mut h = Harness::new(
        Duration::from_secs(1),
        SchedulerConfig::default(),
        vec![sweep("eu-shop", every, T0, None)],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    h.stop().await;
    let started = h.runner.started.lock().unwrap().clone();
    let s = schedule("eu-shop", every);
    let first = s.slot_at_or_after(T0 as u64) as i64;
    let expected: Vec<i64> = (0..6)
        .map(|i| first + i * 10_000)
        .filter(|&slot| slot <= T0 + 60_000)
        .collect();
    assert_eq!(started.iter().map(|r| r.1).collect::<Vec<_>>(), expected);
    for (_, slot, started_at) in &started {
        assert_eq!(started_at, slot, "a run starts at its slot, not later");
        assert_eq!(
            (slot % 10_000) as u64,
            s.offset().as_millis() as u64 % 10_000,
            "the slot is at the sweep's offset"
        );
    }
    let history = h.history("eu-shop").await;
    assert_eq!(history.len(), expected.len());
    // The last may still be running when the scheduler stopped.
    let (last, done) = history.split_last().unwrap();
    assert!(
        done.iter().all(|r| r.status == SweepRunStatus::Healthy),
        "{history:?}"
    );
    assert!(matches!(
        last.status,
        SweepRunStatus::Healthy | SweepRunStatus::Running
    ));
}

#[tokio::test(start_paused = true)]
async fn a_run_that_outlasts_its_interval_never_overlaps_and_the_slots_it_covers_are_missed() {
    let every = Duration::from_secs(10);
    let mut h = Harness::new(
        Duration::from_secs(25),
        SchedulerConfig::default(),
        vec![sweep("slow", every, T0, None)],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(65)).await;
    h.stop().await;
    assert_eq!(
        h.runner
            .most_running
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "never two runs of one sweep at once"
    );
    let history = h.history("slow").await;
    let statuses: Vec<SweepRunStatus> = history.iter().map(|r| r.status).collect();
    // Run (25 s) covers the next two slots, which are missed; the third runs.
    use SweepRunStatus::{Healthy, Missed, Running};
    assert_eq!(
        &statuses[..4],
        &[Healthy, Missed, Missed, Healthy][..],
        "{history:?}"
    );
    assert!(statuses[4..]
        .iter()
        .all(|s| matches!(s, Missed | Healthy | Running)));
    let missed = history.iter().find(|r| r.status == Missed).unwrap();
    assert_eq!(missed.reason.as_deref(), Some(MISSED_BUSY_SELF));
    assert!(missed.campaign_id.is_none());
    // Every slot of the window is accounted for, none silently skipped.
    let slots: Vec<i64> = history.iter().map(|r| r.slot_ms).collect();
    assert!(slots.windows(2).all(|w| w[1] - w[0] == 10_000), "{slots:?}");
}

#[tokio::test(start_paused = true)]
async fn the_running_bound_is_kept_and_a_slot_that_cannot_start_is_missed() {
    let every = Duration::from_secs(60);
    let config = SchedulerConfig {
        max_running: 2,
        ..SchedulerConfig::default()
    };
    let sweeps = (0..5)
        .map(|i| sweep(&format!("s{i}"), every, T0, None))
        .collect();
    // Each run takes most of a minute: the runs pile up against the bound.
    let mut h = Harness::new(Duration::from_secs(59), config, sweeps).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    h.stop().await;
    assert!(
        h.runner
            .most_running
            .load(std::sync::atomic::Ordering::SeqCst)
            <= 2
    );
    let mut ran = 0;
    let mut missed = 0;
    for i in 0..5 {
        for run in h.history(&format!("s{i}")).await {
            match run.status {
                SweepRunStatus::Missed => {
                    missed += 1;
                    assert!(run.reason.unwrap().contains("--max-running-sweeps"));
                }
                _ => ran += 1,
            }
        }
    }
    assert_eq!(ran + missed, 5, "every sweep's one slot is accounted for");
    assert!(ran >= 2 && missed >= 1, "ran {ran}, missed {missed}");
}

#[tokio::test(start_paused = true)]
async fn a_restart_records_the_slots_it_missed_and_runs_the_current_one() {
    let every = Duration::from_secs(60);
    let s = schedule("resume-me", every);
    // The last run was 10 slots before the clock's start.
    let now_slot = s.slot_at_or_after(T0 as u64 + 1) as i64 - 60_000;
    let last = now_slot - 10 * 60_000;
    let mut h = Harness::new(
        Duration::from_millis(100),
        SchedulerConfig::default(),
        vec![sweep("resume-me", every, last - 60_000, Some(last))],
    )
    .await;
    // Less than the time to the next slot (the offset of "resume-me" puts
    // it 1.27 s after the clock's start).
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.stop().await;
    let history = h.history("resume-me").await;
    assert_eq!(history.len(), 10, "{history:?}");
    assert!(history[..9]
        .iter()
        .all(|r| r.status == SweepRunStatus::Missed && r.reason.as_deref() == Some(MISSED_DOWN)));
    assert_eq!(history[9].slot_ms, now_slot);
    assert_eq!(history[9].status, SweepRunStatus::Healthy);
    let started = h.runner.started.lock().unwrap().clone();
    assert_eq!(started.len(), 1, "only the slot in progress runs");
    assert!(started[0].2 - started[0].1 < 60_000);
    let stored = h.store.sweep("resume-me").await.unwrap().unwrap();
    assert_eq!(stored.last_slot_ms, Some(now_slot));
}

#[tokio::test(start_paused = true)]
async fn a_second_scheduler_start_does_not_rerun_a_recorded_slot_and_its_cut_run_is_an_orphan() {
    let every = Duration::from_secs(60);
    let mut h = Harness::new(
        Duration::from_secs(3600),
        SchedulerConfig::default(),
        vec![sweep("once", every, T0, None)],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    // Killed mid-run: the run row stays `running`.
    h.stop().await;
    let history = h.history("once").await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].status, SweepRunStatus::Running);
    let cut = history[0].run_id;
    let runner = Arc::new(FakeRunner {
        takes: Duration::from_secs(1),
        ..FakeRunner::default()
    });
    *runner.store.lock().unwrap() = Some(h.store.clone());
    let mut again = Harness::start(h.store.clone(), runner, SchedulerConfig::default());
    tokio::time::sleep(Duration::from_millis(10)).await;
    again.stop().await;
    // The scheduler ends no run it did not start: the cut one is an orphan
    // of the process that started it, for the next process to adopt.
    assert!(again.runner.recovered.lock().unwrap().is_empty());
    let next = "next-coordinator".to_owned();
    let (_, orphans) = h
        .store
        .adopt_orphans(&next, std::slice::from_ref(&next))
        .await
        .unwrap();
    assert_eq!(orphans.iter().map(|r| r.run_id).collect::<Vec<_>>(), [cut]);
    assert!(
        again
            .runner
            .started
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.1 != history[0].slot_ms),
        "the recorded slot is not run twice"
    );
}

#[tokio::test(start_paused = true)]
async fn a_paused_sweep_runs_nothing_and_resumes_at_its_next_slot_without_missed_rows() {
    let every = Duration::from_secs(10);
    let mut h = Harness::new(
        Duration::from_millis(100),
        SchedulerConfig::default(),
        vec![sweep("p", every, T0, None)],
    )
    .await;
    assert!(h.store.set_sweep_paused("p", true, T0).await.unwrap());
    h.changed.notify_one();
    tokio::time::sleep(Duration::from_secs(45)).await;
    assert!(
        h.history("p").await.is_empty(),
        "paused: nothing ran, nothing missed"
    );
    assert!(h
        .store
        .set_sweep_paused("p", false, h.clock.now_ms())
        .await
        .unwrap());
    h.changed.notify_one();
    tokio::time::sleep(Duration::from_secs(21)).await;
    h.stop().await;
    let history = h.history("p").await;
    assert!(!history.is_empty());
    assert!(
        history.iter().all(|r| r.status == SweepRunStatus::Healthy),
        "{history:?}"
    );
    assert!(history[0].slot_ms >= T0 + 45_000);
}

#[tokio::test(start_paused = true)]
async fn a_deleted_sweep_stops_and_a_new_one_joins_without_a_restart() {
    let every = Duration::from_secs(10);
    let mut h = Harness::new(
        Duration::from_millis(100),
        SchedulerConfig::default(),
        vec![sweep("old", every, T0, None)],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(h.store.delete_sweep("old").await.unwrap());
    h.store
        .insert_sweep(sweep("new", every, h.clock.now_ms(), None))
        .await
        .unwrap();
    h.changed.notify_one();
    tokio::time::sleep(Duration::from_secs(30)).await;
    h.stop().await;
    let started = h.runner.started.lock().unwrap().clone();
    let after_delete: Vec<_> = started.iter().filter(|r| r.2 > T0 + 15_000).collect();
    assert!(after_delete.iter().all(|r| r.0 == "new"), "{started:?}");
    assert!(after_delete.len() >= 2);
}
