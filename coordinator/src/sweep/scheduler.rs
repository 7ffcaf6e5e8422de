//! The scheduler inside `vantage serve` (DESIGN §6a): one task that wakes
//! at each sweep's next slot, records what a slot could not run as
//! `missed`, and hands each slot that can run to a [`RunSlot`].
//!
//! Per sweep it is an explicit state machine, [`SweepState`]: `Idle` (its
//! next slot known), `Running` (a slot's run holds one of the
//! `max_running` permits; a slot that comes round meanwhile is missed, so
//! a sweep never overlaps itself) and `Paused` (its slots pass unrecorded;
//! on resume it starts at its next slot). The stored `last_slot` is where a
//! restarted scheduler picks up: it records what passed while no
//! coordinator ran as missed and runs the slot in progress.
//!
//! Time: slots are wall-clock milliseconds (what the store keeps); the
//! scheduler maps them onto tokio's clock once, at start ([`Clock`]), so
//! its tests run on a paused tokio clock and a wall-clock step (NTP) does
//! not make it fire a burst of slots. It never imports the API or the CLI.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;

use super::model::SweepDefinition;
use super::schedule::Schedule;
use crate::store::{MissedSlot, Store, SweepRecord, SweepRun};

/// How the scheduler is bounded.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Most sweep runs at once; a slot that finds them all busy is missed.
    pub max_running: usize,
    /// Most missed slots recorded per sweep on one wake (a sweep stopped
    /// for a month records its newest ones and counts the rest in the log).
    pub missed_limit: usize,
    /// Finished runs older than this are pruned (their campaigns stay).
    pub retention: Duration,
    /// How often the stored sweeps are re-read even without a change
    /// signal (another process may have changed them).
    pub reload: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_running: 256,
            missed_limit: 1000,
            retention: Duration::from_secs(30 * 24 * 3600),
            reload: Duration::from_secs(30),
        }
    }
}

impl SchedulerConfig {
    /// Checks the bounds (before a port is bound).
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100_000).contains(&self.max_running) {
            return Err("--max-running-sweeps must be between 1 and 100000".into());
        }
        if self.missed_limit == 0 {
            return Err("the missed-slot limit must be at least 1".into());
        }
        if self.retention < Duration::from_secs(60) {
            return Err("--sweep-retention must be at least 1m".into());
        }
        if self.reload.is_zero() {
            return Err("the sweep reload interval must be positive".into());
        }
        Ok(())
    }
}

/// One slot to run: its run row exists (status running).
#[derive(Debug, Clone)]
pub struct SlotRun {
    /// The sweep.
    pub sweep: String,
    /// The run's id in the store.
    pub run_id: i64,
    /// The slot, unix milliseconds.
    pub slot_ms: i64,
    /// When the scheduler started it, unix milliseconds.
    pub started_at_ms: i64,
    /// The definition it runs.
    pub definition: SweepDefinition,
}

/// What runs a slot to its end (the real one starts a campaign and
/// records its verdict, alerts and webhooks; tests use a fake).
#[tonic::async_trait]
pub trait RunSlot: Send + Sync + 'static {
    /// Runs the slot and ends its run row, whatever happens.
    async fn run(&self, slot: SlotRun);
    /// Ends a run a previous process left running.
    async fn recover(&self, run: SweepRun);
    /// What happened to a slot that did not run: for metrics.
    fn missed(&self, _sweep: &str, _slots: usize) {}
}

/// Wall-clock milliseconds mapped onto tokio's clock from one instant on.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_ms: i64,
    at: Instant,
}

impl Clock {
    /// A clock that reads `wall_ms` now.
    pub fn starting_at(wall_ms: i64) -> Self {
        Clock {
            wall_ms,
            at: Instant::now(),
        }
    }

    /// Now, unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.at.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.wall_ms.saturating_add(elapsed)
    }

    /// The tokio instant of `ms`.
    pub fn instant_of(&self, ms: i64) -> Instant {
        match u64::try_from(ms.saturating_sub(self.wall_ms)) {
            Ok(ahead) => self.at + Duration::from_millis(ahead),
            Err(_) => self.at,
        }
    }
}

/// Where one sweep is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepState {
    /// Waiting for its next slot.
    Idle,
    /// A slot's run is in progress.
    Running,
    /// Paused by the operator.
    Paused,
}

struct Entry {
    schedule: Schedule,
    definition: SweepDefinition,
    updated_at_ms: i64,
    state: SweepState,
    /// The newest slot run, recorded or passed while paused.
    last_slot: u64,
}

/// Why a slot is recorded missed.
const MISSED_BUSY_SELF: &str = "the previous run of this sweep had not finished";
const MISSED_DOWN: &str = "no run started in this slot (the coordinator was not running, or late)";

/// The scheduler task. See the module documentation.
pub struct Scheduler {
    store: Arc<dyn Store>,
    runner: Arc<dyn RunSlot>,
    config: SchedulerConfig,
    changed: Arc<Notify>,
    clock: Clock,
    entries: HashMap<String, Entry>,
    permits: Arc<Semaphore>,
    last_prune_ms: i64,
    /// This coordinator's id: the owner of the runs it starts.
    owner: String,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("sweeps", &self.entries.len())
            .finish_non_exhaustive()
    }
}

fn to_slot(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

fn to_ms(slot: u64) -> i64 {
    i64::try_from(slot).unwrap_or(i64::MAX)
}

impl Scheduler {
    /// A scheduler over `store`; `changed` is notified whenever sweeps are
    /// created, changed, paused, resumed or deleted.
    pub fn new(
        store: Arc<dyn Store>,
        runner: Arc<dyn RunSlot>,
        config: SchedulerConfig,
        changed: Arc<Notify>,
        clock: Clock,
        owner: String,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(config.max_running));
        Scheduler {
            store,
            runner,
            config,
            changed,
            clock,
            entries: HashMap::new(),
            permits,
            last_prune_ms: i64::MIN,
            owner,
        }
    }

    /// Runs until `shutdown` turns true. Runs in progress then go on in
    /// their own tasks; the runs a process cut short are ended by whoever
    /// adopts them (the sweep room's keeper of orphans), not here.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
        let mut next_reload = Instant::now();
        loop {
            if *shutdown.borrow() {
                return;
            }
            if Instant::now() >= next_reload {
                self.reload().await;
                next_reload = Instant::now() + self.config.reload;
            }
            self.fire_due(&done_tx).await;
            self.prune().await;
            let wake = self
                .next_slot_ms()
                .map_or(next_reload, |ms| self.clock.instant_of(ms).min(next_reload));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.changed.notified() => next_reload = Instant::now(),
                Some(name) = done_rx.recv() => {
                    if let Some(entry) = self.entries.get_mut(&name) {
                        if entry.state == SweepState::Running {
                            entry.state = SweepState::Idle;
                        }
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
    }

    /// The state of sweep `name`, if the scheduler knows it.
    pub fn state(&self, name: &str) -> Option<SweepState> {
        self.entries.get(name).map(|e| e.state)
    }

    /// Re-reads the stored sweeps: new ones join at their next slot,
    /// changed ones take their new definition, deleted ones are dropped.
    async fn reload(&mut self) {
        let records = match self.store.list_sweeps().await {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the sweeps");
                return;
            }
        };
        let now = to_slot(self.clock.now_ms());
        let mut seen = std::collections::HashSet::new();
        for record in records {
            seen.insert(record.name.clone());
            let Some((definition, schedule)) = decode(&record) else {
                continue;
            };
            match self.entries.get_mut(&record.name) {
                Some(entry) => {
                    if entry.updated_at_ms != record.updated_at_ms {
                        entry.definition = definition;
                        entry.updated_at_ms = record.updated_at_ms;
                        if entry.schedule != schedule {
                            // A new interval starts at its next slot.
                            entry.schedule = schedule;
                            entry.last_slot = slot_at_or_before(&schedule, now);
                        }
                    }
                    let last = record.last_slot_ms.map(to_slot).unwrap_or(0);
                    entry.last_slot = entry.last_slot.max(last);
                    match (entry.state, record.paused) {
                        (SweepState::Paused, false) => {
                            entry.state = SweepState::Idle;
                            // Resumed: the slots that passed while paused
                            // were not owed.
                            entry.last_slot =
                                entry.last_slot.max(slot_at_or_before(&schedule, now));
                        }
                        (SweepState::Idle, true) => entry.state = SweepState::Paused,
                        _ => {}
                    }
                }
                None => {
                    let last_slot = match record.last_slot_ms {
                        Some(last) => to_slot(last),
                        // Never run: owed from its creation on.
                        None => schedule
                            .slot_at_or_after(to_slot(record.created_at_ms))
                            .saturating_sub(schedule.every().as_millis() as u64),
                    };
                    let state = if record.paused {
                        SweepState::Paused
                    } else {
                        SweepState::Idle
                    };
                    let last_slot = if record.paused {
                        last_slot.max(slot_at_or_before(&schedule, now))
                    } else {
                        last_slot
                    };
                    self.entries.insert(
                        record.name.clone(),
                        Entry {
                            schedule,
                            definition,
                            updated_at_ms: record.updated_at_ms,
                            state,
                            last_slot,
                        },
                    );
                }
            }
        }
        self.entries.retain(|name, _| seen.contains(name));
    }

    /// The earliest next slot of a sweep that is not paused.
    fn next_slot_ms(&self) -> Option<i64> {
        self.entries
            .values()
            .filter(|e| e.state != SweepState::Paused)
            .map(|e| to_ms(e.schedule.slot_after(e.last_slot)))
            .min()
    }

    /// Runs or records every slot that has come.
    async fn fire_due(&mut self, done: &mpsc::UnboundedSender<String>) {
        let now_ms = self.clock.now_ms();
        let now = to_slot(now_ms);
        let mut names: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.state != SweepState::Paused && e.schedule.slot_after(e.last_slot) <= now
            })
            .map(|(name, _)| name.clone())
            .collect();
        // Oldest slot first, so a short supply of permits goes in slot order.
        names.sort_by_key(|name| {
            self.entries
                .get(name)
                .map(|e| e.schedule.slot_after(e.last_slot))
        });
        for name in names {
            let Some(entry) = self.entries.get_mut(&name) else {
                continue;
            };
            let owed = entry
                .schedule
                .owed(Some(entry.last_slot), now, self.config.missed_limit);
            let Some(due) = owed.due else {
                continue;
            };
            if owed.dropped > 0 {
                tracing::warn!(sweep = %name, dropped = owed.dropped, "older missed slots are counted, not recorded");
            }
            let mut missed: Vec<MissedSlot> = owed
                .missed
                .iter()
                .map(|&slot| MissedSlot {
                    slot_ms: to_ms(slot),
                    reason: MISSED_DOWN.to_string(),
                })
                .collect();
            entry.last_slot = due;
            let permit = if entry.state == SweepState::Running {
                missed
                    .iter_mut()
                    .for_each(|m| m.reason = MISSED_BUSY_SELF.into());
                missed.push(MissedSlot {
                    slot_ms: to_ms(due),
                    reason: MISSED_BUSY_SELF.into(),
                });
                None
            } else {
                match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        missed.push(MissedSlot {
                            slot_ms: to_ms(due),
                            reason: format!(
                                "{} sweep runs were already in progress (--max-running-sweeps)",
                                self.config.max_running
                            ),
                        });
                        None
                    }
                }
            };
            let missed_count = missed.len();
            let start = permit.as_ref().map(|_| (to_ms(due), now_ms));
            match self
                .store
                .record_sweep_slots(&name, missed, start, &self.owner)
                .await
            {
                Ok(Some(run_id)) => {
                    if let Some(permit) = permit {
                        entry.state = SweepState::Running;
                        let slot = SlotRun {
                            sweep: name.clone(),
                            run_id,
                            slot_ms: to_ms(due),
                            started_at_ms: now_ms,
                            definition: entry.definition.clone(),
                        };
                        let runner = self.runner.clone();
                        let (done, name) = (done.clone(), name.clone());
                        tokio::spawn(async move {
                            runner.run(slot).await;
                            drop(permit);
                            let _ = done.send(name);
                        });
                    }
                }
                // The slot was recorded already (another scheduler, or a
                // restart inside the slot): it ran once, as it must.
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(sweep = %name, error = %e, "cannot record the sweep's slot")
                }
            }
            if missed_count > 0 {
                self.runner.missed(&name, missed_count);
            }
        }
    }

    /// Prunes finished runs past the retention, at most once a minute.
    async fn prune(&mut self) {
        let now = self.clock.now_ms();
        if now.saturating_sub(self.last_prune_ms) < 60_000 {
            return;
        }
        self.last_prune_ms = now;
        let retention = i64::try_from(self.config.retention.as_millis()).unwrap_or(i64::MAX);
        match self
            .store
            .prune_sweep_runs(now.saturating_sub(retention))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "pruned sweep runs past their retention"),
            Err(e) => tracing::warn!(error = %e, "cannot prune old sweep runs"),
        }
    }
}

/// The newest slot at or before `now` (0 if none).
fn slot_at_or_before(schedule: &Schedule, now: u64) -> u64 {
    let next = schedule.slot_at_or_after(now.saturating_add(1));
    next.saturating_sub(schedule.every().as_millis() as u64)
}

/// A stored sweep's definition and schedule; a damaged one is logged and
/// skipped, never run half-understood.
fn decode(record: &SweepRecord) -> Option<(SweepDefinition, Schedule)> {
    let definition: SweepDefinition = match serde_json::from_str(&record.definition_json) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(sweep = %record.name, error = %e, "stored sweep definition is damaged; skipping it");
            return None;
        }
    };
    match definition.check(&record.name) {
        Ok(schedule) => Some((definition, schedule)),
        Err(e) => {
            tracing::error!(sweep = %record.name, error = %e, "stored sweep definition is invalid; skipping it");
            None
        }
    }
}

#[cfg(test)]
mod tests;
