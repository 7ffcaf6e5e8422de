//! Sweeps (issue #11, DESIGN §6a): campaigns the coordinator runs by itself
//! on a schedule, and the alerts their verdicts confirm.
//!
//! The room: [`model`] (what a sweep is, checked once), [`schedule`] (its
//! slots at a stable offset, what a late or restarted scheduler owes),
//! [`scheduler`] (the task inside `vantage serve`: per-sweep state machine,
//! the running bound, missed slots), [`run`] (one run for real: its
//! campaign, the alerts it moves and the webhook POSTs it queues, in one
//! store transaction), [`alert`] (the per-(sweep, code, kind) state
//! machine), [`webhook`] (payload, egress policy, the outbox worker),
//! [`series`] (a run's report as metric series), [`apply`] (the plan of
//! `sweep apply`) and [`ops`] (the operations the ControlService calls).
//! Only `scheduler` and `webhook` hold a clock, and both take it injected.
//! It never imports the API or the CLI.

pub mod alert;
pub mod apply;
pub mod model;
pub mod ops;
pub mod run;
pub mod schedule;
pub mod scheduler;
pub mod series;
pub mod webhook;

use std::sync::Arc;

use tokio::sync::Notify;

/// What the sweep operations, the scheduler and the webhook outbox share
/// inside one coordinator.
#[derive(Debug)]
pub struct SweepShared {
    /// Notified when a sweep is created, changed, paused, resumed or
    /// deleted: the scheduler re-reads them at once.
    pub changed: Arc<Notify>,
    /// Notified when webhook POSTs are queued: the outbox sends them at once.
    pub outbox: Arc<Notify>,
    /// Whether webhook URLs may point at special-purpose addresses.
    pub webhook_allow_private: bool,
}

/// How long a claimed webhook POST stays the claimant's: far longer than a
/// POST may take ([`webhook::WebhookConfig::timeout`], 10 s), so no other
/// coordinator's outbox sends it meanwhile, and short enough that one that
/// dies mid-POST delays it by a minute at most.
const DELIVERY_CLAIM: std::time::Duration = std::time::Duration::from_secs(60);

/// The sweep runs coordinators that are gone left running.
#[derive(Debug)]
pub struct Orphans {
    /// Adopted at start-up (their campaigns already finished): ended first.
    pub adopted: Vec<crate::store::SweepRun>,
    /// On a shared database: adopt, every [`crate::cluster::LEASE`], what
    /// a peer that dies leaves running.
    pub keep_adopting: bool,
}

/// Starts the scheduler, the webhook outbox and the keeper of orphans of
/// `core`; they stop when `shutdown` turns true.
pub fn start(
    core: &Arc<crate::coordinator::Coordinator>,
    config: scheduler::SchedulerConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
    orphans: Orphans,
) -> Vec<tokio::task::JoinHandle<()>> {
    let outbox_wake = core.sweep_shared.outbox.clone();
    let runner = Arc::new(run::CampaignRunner::new(core.clone(), outbox_wake.clone()));
    let scheduler = scheduler::Scheduler::new(
        core.store.clone(),
        runner.clone(),
        config,
        core.sweep_shared.changed.clone(),
        scheduler::Clock::starting_at(crate::time::now_ms()),
        core.coordinator_id.clone(),
    );
    let scheduler = tokio::spawn(scheduler.run(shutdown.clone()));
    let keeper = tokio::spawn(keep_orphans(
        core.clone(),
        runner,
        orphans,
        shutdown.clone(),
    ));
    let webhooks = webhook::WebhookConfig {
        policy: webhook::WebhookPolicy {
            allow_private: core.sweep_shared.webhook_allow_private,
        },
        ..webhook::WebhookConfig::default()
    };
    let metrics = core.metrics().clone();
    let outbox = tokio::spawn(webhook::run_outbox(
        Arc::new(StoreOutbox(core.store.clone())),
        webhooks,
        outbox_wake,
        move |result| metrics.webhook_delivery(result.as_str()),
        shutdown,
    ));
    vec![scheduler, outbox, keeper]
}

/// Ends the adopted runs, then (on a shared database) keeps adopting what
/// dead peers leave running: their campaigns are finished by the core, then
/// their runs here.
async fn keep_orphans(
    core: Arc<crate::coordinator::Coordinator>,
    runner: Arc<run::CampaignRunner>,
    orphans: Orphans,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use scheduler::RunSlot as _;
    for run in orphans.adopted {
        runner.recover(run).await;
    }
    if !orphans.keep_adopting {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(crate::cluster::LEASE) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let live = match crate::cluster::live_coordinator_ids(core.store.as_ref()).await {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the live coordinators");
                continue;
            }
        };
        match core.adopt_orphans(&live, true).await {
            Ok(runs) => {
                for run in runs {
                    runner.recover(run).await;
                }
            }
            Err(e) => tracing::warn!(error = %e.message(), "cannot adopt what a dead peer left"),
        }
    }
}

/// The store as the webhook worker's outbox.
struct StoreOutbox(Arc<dyn crate::store::Store>);

#[tonic::async_trait]
impl webhook::Outbox for StoreOutbox {
    async fn due_deliveries(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<webhook::Delivery>, crate::store::StoreError> {
        Ok(self
            .0
            .claim_deliveries(
                now_ms,
                limit,
                now_ms.saturating_add(DELIVERY_CLAIM.as_millis() as i64),
            )
            .await?
            .into_iter()
            .map(|row| webhook::Delivery {
                event_id: row.event_id,
                url: row.url,
                body: row.body,
                attempts: row.attempts,
            })
            .collect())
    }

    async fn next_delivery_at(&self) -> Result<Option<i64>, crate::store::StoreError> {
        self.0.next_delivery_at().await
    }

    async fn delivery_done(
        &self,
        event_id: &str,
        url: &str,
        at_ms: i64,
    ) -> Result<(), crate::store::StoreError> {
        self.0.delivery_done(event_id, url, at_ms).await
    }

    async fn delivery_retry(
        &self,
        event_id: &str,
        url: &str,
        attempts: u32,
        next_at_ms: i64,
        error: &str,
    ) -> Result<(), crate::store::StoreError> {
        self.0
            .delivery_retry(event_id, url, attempts, next_at_ms, error)
            .await
    }
}
