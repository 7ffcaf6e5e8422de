//! The sweep operations of the coordinator, one rule each, that the
//! ControlService handlers (and tests) call: create, list, show, history,
//! pause and resume, delete, apply, and the alerts list.
//!
//! Every input is checked before anything is stored: the definition
//! ([`SweepDefinition::check`]), its regions against the agents enrolled,
//! and its webhook URLs against this coordinator's egress policy. A change
//! wakes the scheduler, which picks it up at once.

use std::collections::BTreeSet;

use tonic::Status;

use super::apply::{plan, ApplyPlan};
use super::model::SweepDefinition;
use super::schedule::Schedule;
use super::webhook::WebhookPolicy;
use crate::coordinator::Coordinator;
use crate::store::{AlertRecord, SweepRecord, SweepRun};
use crate::time::now_ms;

/// The history a `sweep history` without `--limit` shows.
pub const DEFAULT_HISTORY: u32 = 50;
/// The most runs one history call returns.
pub const MAX_HISTORY: u32 = 10_000;

/// A sweep as the operator sees it.
#[derive(Debug, Clone)]
pub struct SweepView {
    /// Its name.
    pub name: String,
    /// Its definition.
    pub definition: SweepDefinition,
    /// Whether it is paused.
    pub paused: bool,
    /// Creation time, unix milliseconds.
    pub created_at_ms: i64,
    /// The next slot (`None` while paused).
    pub next_slot_ms: Option<i64>,
    /// The newest run or missed slot.
    pub last_run: Option<SweepRun>,
    /// Alerts open now.
    pub alerts_open: u32,
    /// Where its slots fall inside the interval.
    pub offset_ms: u64,
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn decode(record: &SweepRecord) -> Result<(SweepDefinition, Schedule), Status> {
    let definition: SweepDefinition = serde_json::from_str(&record.definition_json)
        .map_err(|e| Status::internal(format!("stored sweep {} is damaged: {e}", record.name)))?;
    let schedule = definition
        .check(&record.name)
        .map_err(|e| Status::internal(format!("stored sweep {} is invalid: {e}", record.name)))?;
    Ok((definition, schedule))
}

impl Coordinator {
    /// Checks a definition as this coordinator would run it: its own rules,
    /// regions that have (or had) an agent enrolled, and webhook URLs the
    /// egress policy allows.
    async fn check_sweep(&self, name: &str, definition: &SweepDefinition) -> Result<(), Status> {
        definition.check(name).map_err(invalid)?;
        let known: BTreeSet<String> = self
            .store
            .list_agents()
            .await?
            .into_iter()
            .filter(|a| !a.revoked)
            .map(|a| a.region)
            .collect();
        for region in definition.regions.iter().filter(|r| *r != "all") {
            if !known.contains(region) {
                let known: Vec<&str> = known.iter().map(String::as_str).collect();
                return Err(invalid(format!(
                    "unknown region {region:?}: no agent is enrolled in it (known regions: {})",
                    if known.is_empty() {
                        "none yet".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
        let policy = WebhookPolicy {
            allow_private: self.sweep_shared.webhook_allow_private,
        };
        for url in &definition.webhooks {
            policy.check_url(url).map_err(invalid)?;
        }
        Ok(())
    }

    /// Creates sweep `name`. An existing name is `ALREADY_EXISTS`.
    pub async fn create_sweep(
        &self,
        name: &str,
        definition: SweepDefinition,
    ) -> Result<SweepView, Status> {
        self.check_sweep(name, &definition).await?;
        let now = now_ms();
        let record = SweepRecord {
            name: name.to_string(),
            definition_json: serde_json::to_string(&definition)
                .map_err(|e| Status::internal(e.to_string()))?,
            paused: false,
            created_at_ms: now,
            updated_at_ms: now,
            last_slot_ms: None,
        };
        match self.store.insert_sweep(record).await {
            Ok(()) => {}
            Err(crate::store::StoreError::Duplicate(_)) => {
                return Err(Status::already_exists(format!(
                    "a sweep named {name:?} already exists (delete it first, or use `vantage sweep apply`)"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        self.sweep_shared.changed.notify_one();
        self.sweep_view(name).await
    }

    /// Every sweep, by name.
    pub async fn sweep_views(&self) -> Result<Vec<SweepView>, Status> {
        let mut out = Vec::new();
        for record in self.store.list_sweeps().await? {
            out.push(self.view_of(record).await?);
        }
        Ok(out)
    }

    /// One sweep; `NOT_FOUND` if there is none.
    pub async fn sweep_view(&self, name: &str) -> Result<SweepView, Status> {
        let record = self.sweep_record(name).await?;
        self.view_of(record).await
    }

    async fn sweep_record(&self, name: &str) -> Result<SweepRecord, Status> {
        self.store
            .sweep(name)
            .await?
            .ok_or_else(|| Status::not_found(format!("no sweep named {name:?}")))
    }

    async fn view_of(&self, record: SweepRecord) -> Result<SweepView, Status> {
        let (definition, schedule) = decode(&record)?;
        let last_run = self.store.sweep_runs(&record.name, 1).await?.pop();
        let alerts_open = self
            .store
            .sweep_alerts(&record.name)
            .await?
            .iter()
            .filter(|a| a.open)
            .count();
        let now = u64::try_from(now_ms()).unwrap_or(0);
        let after = record
            .last_slot_ms
            .and_then(|l| u64::try_from(l).ok())
            .map_or(now, |last| now.max(last.saturating_add(1)));
        let next_slot_ms = (!record.paused)
            .then(|| i64::try_from(schedule.slot_at_or_after(after)).unwrap_or(i64::MAX));
        Ok(SweepView {
            name: record.name,
            definition,
            paused: record.paused,
            created_at_ms: record.created_at_ms,
            next_slot_ms,
            last_run,
            alerts_open: u32::try_from(alerts_open).unwrap_or(u32::MAX),
            offset_ms: u64::try_from(schedule.offset().as_millis()).unwrap_or(0),
        })
    }

    /// A sweep's newest `limit` runs (0: [`DEFAULT_HISTORY`]), newest first.
    pub async fn sweep_history(&self, name: &str, limit: u32) -> Result<Vec<SweepRun>, Status> {
        self.sweep_record(name).await?;
        let limit = if limit == 0 {
            DEFAULT_HISTORY
        } else {
            limit.min(MAX_HISTORY)
        };
        Ok(self.store.sweep_runs(name, limit).await?)
    }

    /// Pauses or resumes a sweep.
    pub async fn pause_sweep(&self, name: &str, paused: bool) -> Result<SweepView, Status> {
        if !self.store.set_sweep_paused(name, paused, now_ms()).await? {
            return Err(Status::not_found(format!("no sweep named {name:?}")));
        }
        self.sweep_shared.changed.notify_one();
        self.sweep_view(name).await
    }

    /// Deletes a sweep, its runs and alerts (its campaigns stay).
    pub async fn delete_sweep(&self, name: &str) -> Result<(), Status> {
        if !self.store.delete_sweep(name).await? {
            return Err(Status::not_found(format!("no sweep named {name:?}")));
        }
        self.sweep_shared.changed.notify_one();
        self.metrics().forget_sweep(name);
        Ok(())
    }

    /// Makes the stored sweeps exactly `wanted`. Every definition is
    /// checked first; with `dry_run` nothing changes. The plan is the
    /// answer either way.
    pub async fn apply_sweeps(
        &self,
        wanted: Vec<(String, SweepDefinition)>,
        dry_run: bool,
    ) -> Result<ApplyPlan<SweepDefinition>, Status> {
        for (name, definition) in &wanted {
            self.check_sweep(name, definition).await.map_err(|s| {
                Status::invalid_argument(format!("sweep {name:?}: {}", s.message()))
            })?;
        }
        let mut stored = Vec::new();
        for record in self.store.list_sweeps().await? {
            let (definition, _) = decode(&record)?;
            stored.push((record.name, definition));
        }
        let plan = plan(&stored, &wanted).map_err(invalid)?;
        if dry_run || plan.is_empty() {
            return Ok(plan);
        }
        let now = now_ms();
        let encode = |d: &SweepDefinition| {
            serde_json::to_string(d).map_err(|e| Status::internal(e.to_string()))
        };
        let mut create = Vec::new();
        for (name, definition) in &plan.create {
            create.push(SweepRecord {
                name: name.clone(),
                definition_json: encode(definition)?,
                paused: false,
                created_at_ms: now,
                updated_at_ms: now,
                last_slot_ms: None,
            });
        }
        let mut update = Vec::new();
        for (name, definition) in &plan.update {
            update.push((name.clone(), encode(definition)?));
        }
        self.store
            .apply_sweeps(create, update, plan.delete.clone(), now)
            .await?;
        for name in &plan.delete {
            self.metrics().forget_sweep(name);
        }
        self.sweep_shared.changed.notify_one();
        Ok(plan)
    }

    /// Open alerts, then the resolved, newest first.
    pub async fn alerts(&self) -> Result<Vec<AlertRecord>, Status> {
        Ok(self.store.list_alerts().await?)
    }
}
