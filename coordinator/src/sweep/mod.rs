//! Sweeps (issue #11, DESIGN §6a): campaigns the coordinator runs by itself
//! on a schedule, and the alerts their verdicts confirm.
//!
//! So far the room holds its pure cores, each tested on its own:
//! [`schedule`] (a sweep's slots at a stable offset inside its interval,
//! and what a late or restarted scheduler owes: missed slots and the one
//! due), [`alert`] (the per-(sweep, code, kind) state machine that opens
//! after `--confirm` runs, changes with the regions, and resolves after as
//! many clean runs) and [`apply`] (the create/update/delete plan of `sweep
//! apply`). The scheduler task, the sweep store, the CLI and webhooks are
//! not built yet; they build on these. The room never reads a clock itself and never
//! imports the API or the CLI.

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

/// Starts the scheduler and the webhook outbox of `core`; both stop when
/// `shutdown` turns true.
pub fn start(
    core: &Arc<crate::coordinator::Coordinator>,
    config: scheduler::SchedulerConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let outbox_wake = core.sweep_shared.outbox.clone();
    let runner = Arc::new(run::CampaignRunner::new(core.clone(), outbox_wake.clone()));
    let scheduler = scheduler::Scheduler::new(
        core.store.clone(),
        runner,
        config,
        core.sweep_shared.changed.clone(),
        scheduler::Clock::starting_at(crate::time::now_ms()),
    );
    let scheduler = tokio::spawn(scheduler.run(shutdown.clone()));
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
    vec![scheduler, outbox]
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
            .due_deliveries(now_ms, limit)
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
