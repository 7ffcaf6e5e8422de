//! One sweep run, for real: the [`RunSlot`] that `vantage serve`'s
//! scheduler uses. It starts the slot's campaign, waits for its report,
//! moves the sweep's alerts by what the report found, queues the webhook
//! POSTs of their events, and stores all of that with the run's verdict in
//! one transaction ([`Store::finish_sweep_run`]), so a crash neither loses
//! an event nor queues it twice.
//!
//! A campaign that cannot start (no agent in a region) makes the run
//! `missed`, with the reason; a run a previous process left running ends
//! from its campaign's stored report when there is one, else as missed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::Notify;

use super::alert::{AlertEvent, AlertState, RunSays};
use super::model::{RunFinding, SweepDefinition};
use super::scheduler::{RunSlot, SlotRun};
use super::webhook::{payload, AlertNotice};
use crate::campaign::CampaignRequest;
use crate::coordinator::Coordinator;
use crate::diagnosis::Status;
use crate::report::Report;
use crate::store::{AlertRecord, NewDelivery, SweepRun, SweepRunEnd, SweepRunStatus};
use crate::time::now_ms;

/// Why a run cut short by a coordinator stop has no verdict.
const CUT_SHORT: &str = "the coordinator stopped during the run and its campaign has no report";

/// The scheduler's real runner. See the module documentation.
#[derive(Debug, Clone)]
pub struct CampaignRunner {
    core: Arc<Coordinator>,
    /// Woken when webhook POSTs are queued.
    outbox: Arc<Notify>,
}

impl CampaignRunner {
    /// A runner starting campaigns on `core` and waking `outbox` when it
    /// queues webhook POSTs.
    pub fn new(core: Arc<Coordinator>, outbox: Arc<Notify>) -> Self {
        CampaignRunner { core, outbox }
    }

    /// Starts the slot's campaign and waits for its report.
    async fn campaign(&self, slot: &SlotRun) -> Outcome {
        let request = CampaignRequest {
            target: slot.definition.target.clone(),
            regions: slot.definition.regions.clone(),
        };
        let handle = match self.core.start_campaign(request).await {
            Ok(handle) => handle,
            Err(status) => {
                return Outcome::missed(
                    None,
                    format!("the run could not start: {}", status.message()),
                )
            }
        };
        let campaign_id = handle.campaign_id.clone();
        if let Err(e) = self
            .core
            .store
            .set_sweep_run_campaign(slot.run_id, &campaign_id)
            .await
        {
            tracing::warn!(sweep = %slot.sweep, error = %e, "cannot link the run to its campaign");
        }
        match handle.done.await {
            Ok(Ok(json)) => Outcome::of_report(campaign_id, &json),
            Ok(Err(status)) => Outcome::missed(
                Some(campaign_id),
                format!("the campaign failed: {}", status.message()),
            ),
            Err(e) => Outcome::missed(Some(campaign_id), format!("the campaign task ended: {e}")),
        }
    }

    /// Moves the alerts, queues their events and ends the run.
    async fn conclude(
        &self,
        sweep: &str,
        run_id: i64,
        definition: &SweepDefinition,
        outcome: Outcome,
    ) {
        let at_ms = now_ms();
        let stored = match self.core.store.sweep_alerts(sweep).await {
            Ok(alerts) => alerts,
            Err(e) => {
                tracing::error!(sweep, error = %e, "cannot read the sweep's alerts; the run's alerts are not moved");
                Vec::new()
            }
        };
        let moved = move_alerts(sweep, definition, &stored, &outcome, at_ms);
        let mut deliveries = Vec::new();
        for (record, event) in &moved.events {
            let notice = AlertNotice {
                id: uuid::Uuid::new_v4().to_string(),
                event,
                sweep: sweep.to_string(),
                code: record.code.clone(),
                kind: record.kind.clone(),
                regions: record.regions.iter().cloned().collect(),
                at_ms,
                campaign: outcome.campaign_id.clone().unwrap_or_default(),
                summary: record.summary.clone(),
                report: outcome.report_value(),
            };
            let body = payload(&notice).to_string();
            for url in &definition.webhooks {
                deliveries.push(NewDelivery {
                    event_id: notice.id.clone(),
                    url: url.clone(),
                    body: body.clone(),
                    created_at_ms: at_ms,
                });
            }
        }
        let findings_json =
            serde_json::to_string(&outcome.findings).unwrap_or_else(|_| "[]".into());
        let end = SweepRunEnd {
            finished_at_ms: at_ms,
            status: outcome.status,
            campaign_id: outcome.campaign_id.clone(),
            findings_json,
            reason: outcome.reason.clone(),
        };
        let queued = !deliveries.is_empty();
        let alerts: Vec<AlertRecord> = moved.records;
        let open = alerts.iter().filter(|a| a.open).count()
            + stored
                .iter()
                .filter(|s| s.open && !alerts.iter().any(|a| a.code == s.code && a.kind == s.kind))
                .count();
        if let Err(e) = self
            .core
            .store
            .finish_sweep_run(run_id, end, alerts, deliveries)
            .await
        {
            tracing::error!(sweep, error = %e, "cannot store the sweep run's end");
            return;
        }
        self.core
            .metrics()
            .sweep_run(sweep, outcome.status.as_str(), at_ms);
        self.core.metrics().set_alerts_open(sweep, open as u64);
        if let Some(report) = &outcome.report {
            let (findings, probes) = super::series::of_report(report);
            self.core
                .metrics()
                .sweep_last_run(sweep, &findings, &probes);
        }
        for (record, event) in &moved.events {
            tracing::info!(sweep, code = %record.code, kind = %record.kind, event = event.as_str(), "alert");
        }
        if queued {
            self.outbox.notify_one();
        }
    }

    /// The stored definition of `sweep`, if it still exists and decodes.
    async fn definition(&self, sweep: &str) -> Option<SweepDefinition> {
        let record = self.core.store.sweep(sweep).await.ok().flatten()?;
        serde_json::from_str(&record.definition_json).ok()
    }
}

#[tonic::async_trait]
impl RunSlot for CampaignRunner {
    async fn run(&self, slot: SlotRun) {
        let outcome = self.campaign(&slot).await;
        // The definition may have changed while the campaign ran: alerts
        // follow the one in force now (its --confirm and webhooks).
        let definition = self
            .definition(&slot.sweep)
            .await
            .unwrap_or_else(|| slot.definition.clone());
        self.conclude(&slot.sweep, slot.run_id, &definition, outcome)
            .await;
    }

    async fn recover(&self, run: SweepRun) {
        let Some(definition) = self.definition(&run.sweep).await else {
            return;
        };
        let report = match &run.campaign_id {
            Some(id) => self
                .core
                .store
                .campaign(id)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.report_json),
            None => None,
        };
        let outcome = match (run.campaign_id.clone(), report) {
            (Some(id), Some(json)) => Outcome::of_report(id, &json),
            (id, _) => Outcome::missed(id, CUT_SHORT.to_string()),
        };
        self.conclude(&run.sweep, run.run_id, &definition, outcome)
            .await;
    }

    fn missed(&self, sweep: &str, slots: usize) {
        for _ in 0..slots {
            self.core
                .metrics()
                .sweep_run(sweep, SweepRunStatus::Missed.as_str(), now_ms());
        }
    }
}

/// What one run came to.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    status: SweepRunStatus,
    campaign_id: Option<String>,
    findings: Vec<RunFinding>,
    reason: Option<String>,
    report: Option<Report>,
}

impl Outcome {
    fn missed(campaign_id: Option<String>, reason: String) -> Self {
        Outcome {
            status: SweepRunStatus::Missed,
            campaign_id,
            findings: Vec::new(),
            reason: Some(reason),
            report: None,
        }
    }

    fn of_report(campaign_id: String, json: &str) -> Self {
        let report: Report = match serde_json::from_str(json) {
            Ok(report) => report,
            Err(e) => {
                return Outcome::missed(
                    Some(campaign_id),
                    format!("the campaign's report cannot be read: {e}"),
                )
            }
        };
        let status = match report.status {
            Status::Healthy => SweepRunStatus::Healthy,
            Status::Faulty => SweepRunStatus::Faulty,
            Status::Inconclusive => SweepRunStatus::Inconclusive,
        };
        let findings = report
            .findings
            .iter()
            .map(|f| RunFinding {
                code: f.code,
                kind: f.kind,
                regions: f.regions.iter().cloned().collect(),
                summary: f.summary.clone(),
            })
            .collect();
        Outcome {
            status,
            campaign_id: Some(campaign_id),
            findings,
            reason: None,
            report: Some(report),
        }
    }

    fn report_value(&self) -> serde_json::Value {
        self.report
            .as_ref()
            .and_then(|r| serde_json::to_value(r).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// The alert states a run moved, and the events it raised.
#[derive(Debug, Default)]
struct Moved {
    records: Vec<AlertRecord>,
    events: Vec<(AlertRecord, AlertEvent)>,
}

fn state_of(record: &AlertRecord) -> AlertState {
    if record.open {
        AlertState::Open {
            regions: record.regions.iter().cloned().collect(),
            clean: record.clean,
        }
    } else {
        AlertState::Quiet {
            streak: record.streak,
        }
    }
}

/// Feeds one run to every alert it touches: the ones stored and the ones
/// its findings start. A missed or inconclusive run is no evidence; an
/// origin finding short of the sweep's quorum counts as absent.
fn move_alerts(
    sweep: &str,
    definition: &SweepDefinition,
    stored: &[AlertRecord],
    outcome: &Outcome,
    at_ms: i64,
) -> Moved {
    let evidence = matches!(
        outcome.status,
        SweepRunStatus::Healthy | SweepRunStatus::Faulty
    );
    let mut present: BTreeMap<(String, String), &RunFinding> = BTreeMap::new();
    if evidence {
        for finding in outcome
            .findings
            .iter()
            .filter(|f| f.meets(definition.quorum))
        {
            let (code, kind) = finding.key();
            present.insert((code.to_string(), kind.to_string()), finding);
        }
    }
    let mut keys: BTreeSet<(String, String)> = present.keys().cloned().collect();
    keys.extend(stored.iter().map(|a| (a.code.clone(), a.kind.clone())));
    let mut moved = Moved::default();
    for (code, kind) in keys {
        let before = stored
            .iter()
            .find(|a| a.code == code && a.kind == kind)
            .cloned()
            .unwrap_or_else(|| AlertRecord {
                sweep: sweep.to_string(),
                code: code.clone(),
                kind: kind.clone(),
                open: false,
                streak: 0,
                clean: 0,
                regions: Vec::new(),
                opened_at_ms: None,
                resolved_at_ms: None,
                updated_at_ms: at_ms,
                summary: String::new(),
                campaign_id: String::new(),
            });
        let finding = present.get(&(code.clone(), kind.clone()));
        let says = match finding {
            _ if !evidence => RunSays::Unknown,
            Some(f) => RunSays::Present(f.regions.clone()),
            None => RunSays::Absent,
        };
        let old = state_of(&before);
        let (new, event) = old.clone().step(says, definition.confirm);
        if new == old && event.is_none() {
            continue;
        }
        let mut after = before.clone();
        after.updated_at_ms = at_ms;
        match &new {
            AlertState::Open { regions, clean } => {
                after.open = true;
                after.clean = *clean;
                after.streak = 0;
                after.regions = regions.iter().cloned().collect();
            }
            AlertState::Quiet { streak } => {
                after.open = false;
                after.streak = *streak;
                after.clean = 0;
            }
        }
        if let Some(f) = finding {
            after.summary = f.summary.clone();
        }
        match &event {
            Some(AlertEvent::Opened(_)) => {
                after.opened_at_ms = Some(at_ms);
                after.resolved_at_ms = None;
            }
            Some(AlertEvent::Resolved) => after.resolved_at_ms = Some(at_ms),
            _ => {}
        }
        if event.is_some() {
            after.campaign_id = outcome.campaign_id.clone().unwrap_or_default();
        }
        if let Some(event) = event {
            moved.events.push((after.clone(), event));
        }
        moved.records.push(after);
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnosis::{FindingCode, FindingKind};

    fn run(
        status: SweepRunStatus,
        findings: &[(FindingCode, Option<FindingKind>, &[&str])],
    ) -> Outcome {
        Outcome {
            status,
            campaign_id: Some("c".into()),
            findings: findings
                .iter()
                .map(|(code, kind, regions)| RunFinding {
                    code: *code,
                    kind: *kind,
                    regions: regions.iter().map(|r| r.to_string()).collect(),
                    summary: format!("{} seen", code.as_str()),
                })
                .collect(),
            reason: None,
            report: None,
        }
    }

    /// Feeds runs through `move_alerts` the way the store would keep
    /// their results; returns the event names in order.
    fn feed(outcomes: Vec<Outcome>, confirm: u32) -> (Vec<String>, Vec<AlertRecord>) {
        feed_with_quorum(outcomes, confirm, 1)
    }

    fn feed_with_quorum(
        outcomes: Vec<Outcome>,
        confirm: u32,
        quorum: u32,
    ) -> (Vec<String>, Vec<AlertRecord>) {
        let mut definition = SweepDefinition::new(crate::campaign::plan::TargetRequest::new(
            "http://shop.example/",
            &["203.0.113.10"],
        ));
        definition.confirm = confirm;
        definition.quorum = quorum;
        let mut stored: Vec<AlertRecord> = Vec::new();
        let mut events = Vec::new();
        for (i, outcome) in outcomes.iter().enumerate() {
            let moved = move_alerts("s", &definition, &stored, outcome, i as i64);
            for (record, event) in &moved.events {
                events.push(format!(
                    "{} {} {}",
                    event.as_str(),
                    record.code,
                    record.regions.join(",")
                ));
            }
            for record in moved.records {
                stored.retain(|a| !(a.code == record.code && a.kind == record.kind));
                stored.push(record);
            }
        }
        (events, stored)
    }

    const WAF: (FindingCode, Option<FindingKind>, &[&str]) =
        (FindingCode::OriginBlocksCdnHeaders, None, &["eu"]);

    #[test]
    fn an_alert_opens_after_confirm_runs_and_resolves_after_as_many_clean_ones() {
        use SweepRunStatus::{Faulty, Healthy};
        let (events, stored) = feed(
            vec![
                run(Faulty, &[WAF]),
                run(Faulty, &[WAF]),
                run(
                    Faulty,
                    &[(FindingCode::OriginBlocksCdnHeaders, None, &["eu", "us"])],
                ),
                run(Healthy, &[]),
                run(Healthy, &[]),
            ],
            2,
        );
        assert_eq!(
            events,
            [
                "opened origin_blocks_cdn_headers eu",
                "changed origin_blocks_cdn_headers eu,us",
                "resolved origin_blocks_cdn_headers eu,us"
            ]
        );
        assert!(!stored[0].open);
        assert_eq!(stored[0].resolved_at_ms, Some(4));
        assert_eq!(stored[0].opened_at_ms, Some(1));
    }

    #[test]
    fn missed_and_inconclusive_runs_move_nothing() {
        use SweepRunStatus::{Faulty, Inconclusive, Missed};
        let (events, _) = feed(
            vec![
                run(Faulty, &[WAF]),
                run(Missed, &[]),
                run(Inconclusive, &[WAF]),
                run(Faulty, &[WAF]),
            ],
            2,
        );
        assert_eq!(events, ["opened origin_blocks_cdn_headers eu"]);
    }

    #[test]
    fn alerts_are_keyed_by_code_and_kind() {
        use SweepRunStatus::Faulty;
        let down = |kind| (FindingCode::OriginDown, Some(kind), &["eu"][..]);
        let (events, stored) = feed(
            vec![
                run(Faulty, &[down(FindingKind::ConnectRefused)]),
                run(Faulty, &[down(FindingKind::ConnectRefused)]),
                run(Faulty, &[down(FindingKind::ConnectTimeout)]),
            ],
            2,
        );
        assert_eq!(events, ["opened origin_down eu"]);
        assert_eq!(stored.len(), 2);
        assert!(stored.iter().any(|a| a.kind == "connect_refused" && a.open));
        assert!(stored
            .iter()
            .any(|a| a.kind == "connect_timeout" && !a.open && a.streak == 1));
    }

    #[test]
    fn an_origin_finding_short_of_the_quorum_neither_opens_nor_holds_an_alert() {
        use SweepRunStatus::Faulty;
        let down = |regions| (FindingCode::OriginDown, None, regions);
        let carrier = (FindingCode::CarrierInterference, None, &["ap"][..]);
        let (events, _) = feed_with_quorum(
            vec![
                // One region's bad path: no origin alert, but the carrier
                // finding (regional by nature) still opens one.
                run(Faulty, &[down(&["eu"][..]), carrier]),
                run(Faulty, &[down(&["eu"][..]), carrier]),
                run(Faulty, &[down(&["eu", "us"][..])]),
                run(Faulty, &[down(&["eu", "us"][..])]),
                // Back to one region: as good as absent, so it resolves.
                run(Faulty, &[down(&["eu"][..])]),
                run(Faulty, &[down(&["eu"][..])]),
            ],
            2,
            2,
        );
        assert_eq!(
            events,
            [
                "opened carrier_interference ap",
                "resolved carrier_interference ap",
                "opened origin_down eu,us",
                "resolved origin_down eu,us",
            ]
        );
    }
}
