//! Campaigns: one target probed from every selected region at once. This
//! module owns the run — choose one connected agent per region, send each
//! region its plan (built by [`plan`]), follow the plans to their end
//! (finished, refused, or the agent lost), bounded in time, collect the
//! results and the witness's sightings into the evidence matrix, diagnose,
//! and persist the report so it can be rendered again later.
//!
//! The orchestration is this module's `impl Coordinator` (the campaign
//! concern of the shared state, see [`crate::coordinator`]): its methods
//! use the core operations and the store trait, and the campaign-only state
//! (the `campaigns` map of `RunningCampaign`s) is touched only here.
//!
//! The room: [`plan`] (the seed's procedure as probe specs, the typed
//! probe key, the time budget), this module (orchestration and evidence),
//! and [`followup`] (the TTFB follow-up after an `origin_slow` report). It
//! uses the store only through the `Store` trait and agents only through
//! the registry; it never imports the gRPC services or the CLI.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tonic::Status;
use vantage_proto::domain::{Outcome, Route};
use vantage_proto::pb;

mod feed;
pub mod followup;
pub mod plan;

use crate::coordinator::Coordinator;
use crate::diagnosis::{
    self, Evidence, Observation, RegionEvidence, Target, Timings, Variant, WitnessEvidence,
};
use crate::registry::AgentEvent;
use crate::store::{AgentRole, CampaignStatus, PlanState};
use crate::time::now_ms;
use plan::{build_probes, plan_budget, CampaignTarget, RegionPlan, TargetRequest};

/// After the plans' budget, how long the campaign waits for regions whose
/// agents have gone quiet (results in flight, a spool write) before it names
/// them missing.
const SETTLE: Duration = Duration::from_millis(300);
/// An agent that stored results this recently is still sending: it is never
/// declared lost while it does.
const STILL_SENDING: Duration = Duration::from_millis(500);
/// However long an agent keeps sending, the campaign ends by its budget
/// times this, plus [`HARD_EXTRA`].
const HARD_FACTOR: u32 = 2;
/// See [`HARD_FACTOR`].
const HARD_EXTRA: Duration = Duration::from_secs(10);
/// How often an adopted campaign's stored plans are read while it waits
/// for agents that moved to finish them.
const ADOPTED_POLL: Duration = Duration::from_millis(200);
/// How long to wait for a witness's last sightings after the plans end.
const WITNESS_GRACE: Duration = Duration::from_millis(1500);

/// Why a region stopped when its campaign was cancelled.
const CANCELLED: &str = "cancelled by the operator (vantage campaign cancel)";
/// How long `cancel` waits for the cancelled campaign's report.
const CANCEL_WAIT: Duration = Duration::from_secs(60);

/// A campaign running now: its progress feed and the switch that cancels it.
#[derive(Debug)]
pub(crate) struct RunningCampaign {
    events: Arc<feed::CampaignFeed>,
    cancel: Arc<tokio::sync::Notify>,
}

/// What to diagnose.
#[derive(Debug, Clone)]
pub struct CampaignRequest {
    /// What to probe (every target flag of `diagnose`).
    pub target: TargetRequest,
    /// Regions to run in (empty or `all`: every region with a connected agent).
    pub regions: Vec<String>,
}

/// Progress of a running campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CampaignEvent {
    /// A region's plan went to its agent.
    PlanSent {
        /// Region.
        region: String,
        /// Agent.
        agent: String,
        /// Requests expected.
        expected: u64,
        /// When the region's plan should be done, from now: its time
        /// budget (past it, a quiet region is named missing).
        deadline: Duration,
    },
    /// More of a region's results are stored: the counts so far.
    Progress {
        /// Region.
        region: String,
        /// Results stored so far (at most the plan's expected requests).
        done: u64,
        /// Of those, per outcome, most frequent first.
        outcomes: Vec<(Outcome, u64)>,
    },
    /// A region's agent finished its plan.
    RegionDone {
        /// Region.
        region: String,
    },
    /// A region could not finish (agent lost, plan refused, or out of time).
    RegionLost {
        /// Region.
        region: String,
        /// Why.
        reason: String,
    },
    /// The report is stored.
    ReportReady {
        /// Its verdict.
        status: diagnosis::Status,
    },
}

/// A started campaign.
#[derive(Debug)]
pub struct CampaignHandle {
    /// Its id.
    pub campaign_id: String,
    /// Region → agent chosen.
    pub regions: Vec<(String, String)>,
    /// Progress events (subscribed before the plans were sent).
    pub events: broadcast::Receiver<CampaignEvent>,
    /// Ends with the report JSON.
    pub done: tokio::task::JoinHandle<Result<String, Status>>,
}

/// A region's results so far, for its progress events.
#[derive(Debug, Default)]
struct Progress {
    done: u64,
    outcomes: HashMap<Outcome, u64>,
}

impl Progress {
    fn add(&mut self, tally: &crate::registry::PlanTally) {
        self.done += tally.total();
        for (outcome, n) in &tally.outcomes {
            *self.outcomes.entry(*outcome).or_default() += n;
        }
    }

    /// The outcome counts, most frequent first (ties by name, so the
    /// order is stable).
    fn by_frequency(&self) -> Vec<(Outcome, u64)> {
        let mut counts: Vec<(Outcome, u64)> = self.outcomes.iter().map(|(o, n)| (*o, *n)).collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.as_str().cmp(b.0.as_str())));
        counts
    }
}

struct RegionRun {
    region: String,
    agent: String,
    plan_id: String,
    state: RegionState,
    /// What each of the plan's probes measures (empty when none was sent).
    plan: RegionPlan,
}

#[derive(Debug, Clone, PartialEq)]
enum RegionState {
    Running,
    Done,
    Lost(String),
}

/// Chooses one connected agent per requested region.
async fn choose_agents(
    core: &Coordinator,
    regions: &[String],
) -> Result<Vec<(String, String)>, Status> {
    let mut by_region: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for view in core.list_agents().await? {
        if view.connected && !view.record.revoked && view.record.role == AgentRole::Agent {
            by_region
                .entry(view.record.region.clone())
                .or_default()
                .push(view.record.name.clone());
        }
    }
    let wanted: Vec<String> = if regions.is_empty() || regions.iter().any(|r| r == "all") {
        by_region.keys().cloned().collect()
    } else {
        regions.to_vec()
    };
    if wanted.is_empty() {
        return Err(Status::failed_precondition(
            "no agent is connected: start `vantage-agent run` in at least one region",
        ));
    }
    wanted
        .into_iter()
        .map(|region| {
            let agent = by_region
                .get(&region)
                .and_then(|agents| agents.first().cloned())
                .ok_or_else(|| {
                    Status::failed_precondition(format!("region {region} has no connected agent"))
                })?;
            Ok((region, agent))
        })
        .collect()
}

impl Coordinator {
    /// Progress of a running campaign; `None` once it has ended (or never ran).
    /// What a running campaign said so far (its plans, each region's
    /// latest progress, …) and a receiver for what it says next; `None`
    /// when it is not running here.
    pub fn watch_campaign(
        &self,
        campaign_id: &str,
    ) -> Option<(Vec<CampaignEvent>, broadcast::Receiver<CampaignEvent>)> {
        self.campaigns
            .lock()
            .ok()
            .and_then(|running| running.get(campaign_id).map(|r| r.events.watch()))
    }

    /// Cancels a running campaign: the regions still running are stopped
    /// (their agents told to stop the plan) and named in `missing`, and the
    /// report is concluded from what was stored. Returns the report's status
    /// and the regions that were stopped, once the report is stored.
    pub async fn cancel_campaign(
        &self,
        campaign_id: &str,
    ) -> Result<(diagnosis::Status, Vec<String>), Status> {
        let running = self.campaigns.lock().ok().and_then(|running| {
            running
                .get(campaign_id)
                .map(|r| (r.events.watch().1, r.cancel.clone()))
        });
        let Some((mut events, cancel)) = running else {
            let row = self
                .store
                .campaign(campaign_id)
                .await?
                .ok_or_else(|| Status::not_found(format!("no campaign {campaign_id}")))?;
            return Err(Status::failed_precondition(format!(
                "campaign {campaign_id} is not running (its status is {})",
                row.status
            )));
        };
        // A stored permit: a campaign that reaches its wait after this still sees it.
        cancel.notify_one();
        let mut stopped = Vec::new();
        let report = async {
            loop {
                match events.recv().await {
                    Ok(CampaignEvent::RegionLost { region, reason }) if reason == CANCELLED => {
                        stopped.push(region);
                    }
                    Ok(CampaignEvent::ReportReady { status }) => return Ok(status),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Err(Status::internal(
                        "the campaign ended without storing a report (see the coordinator's log)",
                    )),
                }
            }
        };
        let status = tokio::time::timeout(CANCEL_WAIT, report)
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "campaign {campaign_id} was cancelled, but its report was not stored within {}s",
                    CANCEL_WAIT.as_secs()
                ))
            })??;
        Ok((status, stopped))
    }

    /// Adopts what coordinator processes that are not in `live` (dead ones:
    /// a crash, a kill, a power cut) left running, and finishes their
    /// campaigns from what is stored: the regions that had not finished are
    /// named in `missing` with the reason. With `wait_for_plans` (a peer
    /// died, and its agents are reconnecting to the survivors, where they
    /// finish the plans they were running), each campaign is finished only
    /// once its plans have ended or its own deadline, counted from its
    /// start, has passed. Returns the adopted sweep runs, for the sweep room
    /// to end (their campaigns' reports are stored by then). Called at
    /// start-up, before any agent connects (without waiting: that would
    /// hold the port), and on a shared database every
    /// [`crate::cluster::LEASE`] (waiting).
    pub async fn adopt_orphans(
        &self,
        live: &[String],
        wait_for_plans: bool,
    ) -> Result<Vec<crate::store::SweepRun>, Status> {
        let mut live = live.to_vec();
        if !live.contains(&self.coordinator_id) {
            live.push(self.coordinator_id.clone());
        }
        let (rows, runs) = self
            .store
            .adopt_orphans(&self.coordinator_id, &live)
            .await?;
        let finishing = rows.iter().map(|row| async move {
            if wait_for_plans {
                self.await_adopted_plans(row).await;
            }
            (row, self.recover_campaign(row).await)
        });
        let mut finished = 0;
        for (row, recovered) in futures::future::join_all(finishing).await {
            match recovered {
                Ok(status) => {
                    finished += 1;
                    tracing::info!(campaign = %row.campaign_id, %status, "finished a campaign a coordinator that is gone left running");
                }
                Err(e) => {
                    tracing::error!(campaign = %row.campaign_id, error = %e.message(), "cannot finish a campaign left running");
                }
            }
        }
        if finished > 0 || !runs.is_empty() {
            tracing::info!(
                campaigns = finished,
                sweep_runs = runs.len(),
                "adopted what a coordinator that is gone left running"
            );
        }
        Ok(runs)
    }

    /// Waits until every plan of an adopted campaign has ended on its agent
    /// (stored as finished, rejected or lost by whichever coordinator holds
    /// the agent now), or until the campaign's soft deadline, counted from
    /// its start as if it had never changed hands.
    async fn await_adopted_plans(&self, row: &crate::store::CampaignRow) {
        let Ok(target) = stored_target(row) else {
            // recover_campaign names the damage.
            return;
        };
        let phases = row
            .regions
            .iter()
            .filter_map(|region| {
                build_probes(&target, &row.campaign_id, region)
                    .probes
                    .iter()
                    .map(|p| p.phase + 1)
                    .max()
            })
            .max()
            .unwrap_or(1);
        let wait = plan_budget(&target) * phases + SETTLE;
        let deadline_ms = row
            .created_at_ms
            .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
        loop {
            match self.store.campaign_plan_agents(&row.campaign_id).await {
                Ok(plans) if plans.iter().all(|p| p.state != PlanState::Sent) => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(campaign = %row.campaign_id, error = %e, "cannot read an adopted campaign's plans; finishing it now");
                    return;
                }
            }
            if now_ms() >= deadline_ms {
                return;
            }
            tokio::time::sleep(ADOPTED_POLL).await;
        }
    }

    async fn recover_campaign(
        &self,
        row: &crate::store::CampaignRow,
    ) -> Result<diagnosis::Status, Status> {
        let target = stored_target(row)?;
        let plans = self.store.campaign_plan_agents(&row.campaign_id).await?;
        let runs: Vec<RegionRun> = row
            .regions
            .iter()
            .map(|region| {
                let Some(plan) = plans.iter().find(|p| p.region.as_deref() == Some(region)) else {
                    return RegionRun {
                        region: region.clone(),
                        agent: String::new(),
                        plan_id: String::new(),
                        state: RegionState::Lost(
                            "the coordinator stopped before this region's plan was sent".into(),
                        ),
                        plan: RegionPlan::default(),
                    };
                };
                let state = if plan.state == PlanState::Finished {
                    RegionState::Done
                } else {
                    RegionState::Lost(format!(
                        "the coordinator stopped before agent {} finished (plan {}{})",
                        plan.agent_name,
                        plan.state,
                        plan.reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ))
                };
                RegionRun {
                    region: region.clone(),
                    agent: plan.agent_name.clone(),
                    plan_id: plan.plan_id.clone(),
                    state,
                    // The builder is deterministic: the same target, campaign
                    // and region give the same probe ids and keys.
                    plan: build_probes(&target, &row.campaign_id, region),
                }
            })
            .collect();
        let (status, _, _) = self.conclude(&row.campaign_id, &target, &runs).await?;
        Ok(status)
    }

    /// Tells the agents of the `stopped` regions to stop their plans.
    async fn stop_plans(&self, runs: &[RegionRun], stopped: &[String]) {
        for run in runs.iter().filter(|r| stopped.contains(&r.region)) {
            let Ok(Some(record)) = self.store.agent_by_name(&run.agent).await else {
                continue;
            };
            let cancel = pb::CoordinatorMessage {
                body: Some(pb::coordinator_message::Body::Cancel(pb::Cancel {
                    plan_id: run.plan_id.clone(),
                })),
            };
            self.send_to_agent(&record, cancel).await;
        }
    }

    /// Starts a campaign; the returned handle follows it to its report.
    pub async fn start_campaign(
        self: &Arc<Self>,
        request: CampaignRequest,
    ) -> Result<CampaignHandle, Status> {
        let target = CampaignTarget::new(&request.target)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let chosen = choose_agents(self, &request.regions).await?;
        let campaign_id = uuid::Uuid::new_v4().to_string();
        let target_json =
            serde_json::to_string(&crate::report::ReportTarget::of(&evidence_target(&target)))
                .map_err(|e| Status::internal(e.to_string()))?;
        let regions: Vec<String> = chosen.iter().map(|(r, _)| r.clone()).collect();
        self.store
            .insert_campaign(
                &campaign_id,
                now_ms(),
                &target_json,
                &regions,
                &self.coordinator_id,
            )
            .await?;

        let (events_tx, events) = feed::CampaignFeed::new();
        let events_tx = Arc::new(events_tx);
        let cancel = Arc::new(tokio::sync::Notify::new());
        if let Ok(mut running) = self.campaigns.lock() {
            running.insert(
                campaign_id.clone(),
                RunningCampaign {
                    events: events_tx.clone(),
                    cancel: cancel.clone(),
                },
            );
        }
        let mut agent_events = self.subscribe();
        let mut runs = Vec::new();
        let budget = plan_budget(&target);
        // The budget bounds each phase of a plan from its own start.
        let mut phases = 1u32;
        for (region, agent) in &chosen {
            let mut plan = build_probes(&target, &campaign_id, region);
            let probes = std::mem::take(&mut plan.probes);
            let plan_phases = probes.iter().map(|p| p.phase + 1).max().unwrap_or(1);
            phases = phases.max(plan_phases);
            let caps = vantage_proto::limits::PlanCaps::default();
            let expected = probes.iter().map(|p| caps.requests(p)).sum();
            let plan_id = self
                .run_plan_in(
                    Some(&campaign_id),
                    std::slice::from_ref(agent),
                    probes,
                    Some(budget),
                )
                .await?;
            events_tx.send(CampaignEvent::PlanSent {
                region: region.clone(),
                agent: agent.clone(),
                expected,
                deadline: budget * plan_phases + SETTLE,
            });
            runs.push(RegionRun {
                region: region.clone(),
                agent: agent.clone(),
                plan_id,
                state: RegionState::Running,
                plan,
            });
        }
        let now = tokio::time::Instant::now();
        let deadlines = Deadlines {
            soft: now + budget * phases + SETTLE,
            hard: now + budget * phases * HARD_FACTOR + HARD_EXTRA,
        };
        let core = self.clone();
        let id = campaign_id.clone();
        let done = tokio::spawn(async move {
            let stopped =
                follow(&mut runs, &mut agent_events, &events_tx, deadlines, &cancel).await;
            core.stop_plans(&runs, &stopped).await;
            let report = core.conclude(&id, &target, &runs).await;
            if let Ok(mut running) = core.campaigns.lock() {
                running.remove(&id);
            }
            let (status, json, followup) = report?;
            events_tx.send(CampaignEvent::ReportReady { status });
            // A cancelled campaign measures nothing more.
            if let Some(report) = followup.filter(|_| stopped.is_empty()) {
                let finished: Vec<(String, String)> = runs
                    .iter()
                    .filter(|r| r.state == RegionState::Done)
                    .map(|r| (r.region.clone(), r.agent.clone()))
                    .collect();
                let (core, id) = (core.clone(), id.clone());
                tokio::spawn(async move {
                    if let Err(e) = core.measure_ttfb(id, target, finished, report).await {
                        tracing::warn!(error = %e.message(), "the TTFB follow-up could not be stored");
                    }
                });
            }
            Ok(json)
        });
        Ok(CampaignHandle {
            campaign_id,
            regions: chosen,
            events,
            done,
        })
    }

    /// Gathers the evidence, diagnoses and stores the report; returns
    /// (status, report JSON, and the report again when it awaits a TTFB
    /// follow-up).
    async fn conclude(
        &self,
        campaign_id: &str,
        target: &CampaignTarget,
        runs: &[RegionRun],
    ) -> Result<(diagnosis::Status, String, Option<crate::report::Report>), Status> {
        let witness_connected = self
            .list_agents()
            .await?
            .iter()
            .any(|v| v.connected && v.record.role == AgentRole::Witness);
        let prefix = format!("{}-", plan::nonce_prefix(campaign_id));
        let mut regions = Vec::new();
        let mut blocked_headers = Vec::new();
        for run in runs {
            let results = self.stored_results(&run.plan_id).await?;
            let (observations, single_header) = observations_of(&run.plan, results.into_iter());
            for header in failing_single_headers(&observations, &single_header) {
                if !blocked_headers.contains(&header) {
                    blocked_headers.push(header);
                }
            }
            regions.push(RegionEvidence {
                region: run.region.clone(),
                agents: vec![run.agent.clone()],
                lost: run.state != RegionState::Done,
                lost_reason: match &run.state {
                    RegionState::Lost(reason) => reason.clone(),
                    _ => String::new(),
                },
                observations,
            });
        }
        let witness = if witness_connected {
            // The origin answered these, so its log will show them: wait for
            // the witness (which polls the log) until it has, or until its
            // count stops growing — bounded either way.
            let expected: std::collections::BTreeSet<String> = regions
                .iter()
                .flat_map(|r: &RegionEvidence| r.observations.iter())
                // The HTTPS control may be logged elsewhere (another vhost).
                .filter(|o| {
                    o.route == Route::Direct && o.variant != Variant::Https && o.status.is_some()
                })
                .map(|o| o.nonce.clone())
                .collect();
            let give_up = tokio::time::Instant::now() + WITNESS_GRACE;
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            let (mut last, mut last_change) = (usize::MAX, tokio::time::Instant::now());
            let sightings = loop {
                tick.tick().await;
                let sightings = self.store.sightings_with_prefix(&prefix).await?;
                let now = tokio::time::Instant::now();
                if sightings.len() != last {
                    last = sightings.len();
                    last_change = now;
                }
                let all_seen = expected
                    .iter()
                    .all(|n| sightings.iter().any(|s| &s.nonce == n));
                if all_seen || now >= give_up || now - last_change >= Duration::from_millis(300) {
                    break sightings;
                }
            };
            let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for sighting in sightings {
                seen.entry(sighting.nonce).or_default().push(sighting.peer);
            }
            Some(WitnessEvidence { seen })
        } else {
            None
        };
        let evidence = Evidence {
            target: evidence_target(target),
            regions,
            witness,
            blocked_headers,
        };
        let diagnosis = diagnosis::diagnose(&evidence);
        let mut report = crate::report::build(campaign_id, &evidence, &diagnosis);
        let followup = crate::campaign::followup::wanted(&report);
        if followup {
            crate::campaign::followup::mark_running(&mut report, target);
        }
        let json =
            serde_json::to_string_pretty(&report).map_err(|e| Status::internal(e.to_string()))?;
        let status = diagnosis.status;
        self.store
            .finish_campaign(campaign_id, now_ms(), diagnosis.status.into(), &json)
            .await?;
        self.metrics.campaign_finished(status.as_str());
        Ok((status, json, followup.then_some(report)))
    }
}

/// What the diagnosis and the report know of a campaign's target.
fn evidence_target(target: &CampaignTarget) -> Target {
    Target {
        url: target.url.clone(),
        host: target.host.clone(),
        port: target.port,
        scheme: target.scheme.clone(),
        path: target.path.clone(),
        origins: target.origins.iter().map(|a| a.to_string()).collect(),
        edges: target.edges.iter().map(|a| a.to_string()).collect(),
        cdn: target.cdn,
        edge_timeout: target.edge_timeout,
        pull: target.pull.clone(),
        user_agent: target.user_agent.clone(),
        timeouts: target.timeouts,
    }
}

/// When a campaign stops waiting.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    /// The plans' budget plus a settling margin: regions whose agents are
    /// quiet by then are named missing.
    soft: tokio::time::Instant,
    /// The end, even for an agent that is still sending.
    hard: tokio::time::Instant,
}

/// Follows every region's plan until it is done or lost. Past the soft
/// deadline a region whose agent is still storing results is waited for
/// (a connected agent that is still sending is never declared lost), up to
/// the hard deadline; a quiet one is named missing with the reason. When
/// `cancel` fires, every region still running is lost as cancelled; those
/// regions are returned.
async fn follow(
    runs: &mut [RegionRun],
    agent_events: &mut broadcast::Receiver<AgentEvent>,
    events: &feed::CampaignFeed,
    deadlines: Deadlines,
    cancel: &tokio::sync::Notify,
) -> Vec<String> {
    let settle = |runs: &mut [RegionRun], index: usize, state: RegionState| {
        if runs[index].state == RegionState::Running {
            let region = runs[index].region.clone();
            events.send(match &state {
                RegionState::Lost(reason) => CampaignEvent::RegionLost {
                    region,
                    reason: reason.clone(),
                },
                _ => CampaignEvent::RegionDone { region },
            });
            runs[index].state = state;
        }
    };
    let mut last_stored: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut progress: HashMap<usize, Progress> = HashMap::new();
    let mut check_at = deadlines.soft;
    while runs.iter().any(|r| r.state == RegionState::Running) {
        let event = tokio::select! {
            _ = tokio::time::sleep_until(check_at) => {
                let now = tokio::time::Instant::now();
                let hard = now >= deadlines.hard;
                for index in 0..runs.len() {
                    let sending = last_stored
                        .get(&runs[index].agent)
                        .is_some_and(|at| now.duration_since(*at) < STILL_SENDING);
                    if runs[index].state != RegionState::Running || (sending && !hard) {
                        continue;
                    }
                    let reason = if hard {
                        format!(
                            "agent {} was still sending at the campaign's hard deadline",
                            runs[index].agent
                        )
                    } else {
                        format!(
                            "deadline: agent {} sent nothing for {} ms after the plan's time budget",
                            runs[index].agent,
                            STILL_SENDING.as_millis()
                        )
                    };
                    settle(runs, index, RegionState::Lost(reason));
                }
                check_at = (now + Duration::from_millis(100)).min(deadlines.hard);
                continue;
            }
            () = cancel.notified() => {
                let stopped: Vec<String> = runs
                    .iter()
                    .filter(|r| r.state == RegionState::Running)
                    .map(|r| r.region.clone())
                    .collect();
                for index in 0..runs.len() {
                    settle(runs, index, RegionState::Lost(CANCELLED.to_string()));
                }
                return stopped;
            }
            event = agent_events.recv() => event,
        };
        let event = match event {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return Vec::new(),
        };
        let find = |runs: &[RegionRun], f: &dyn Fn(&RegionRun) -> bool| runs.iter().position(f);
        match event {
            AgentEvent::ResultsStored {
                agents, tallies, ..
            } => {
                let now = tokio::time::Instant::now();
                for agent in agents {
                    last_stored.insert(agent, now);
                }
                for tally in tallies {
                    let Some(i) = find(runs, &|r| r.plan_id == tally.plan_id) else {
                        continue;
                    };
                    if runs[i].state != RegionState::Running {
                        continue;
                    }
                    let seen = progress.entry(i).or_default();
                    seen.add(&tally);
                    events.send(CampaignEvent::Progress {
                        region: runs[i].region.clone(),
                        done: seen.done,
                        outcomes: seen.by_frequency(),
                    });
                }
            }
            AgentEvent::PlanFinished { plan_id, .. } => {
                if let Some(i) = find(runs, &|r| r.plan_id == plan_id) {
                    settle(runs, i, RegionState::Done);
                }
            }
            AgentEvent::PlanRejected {
                plan_id, reason, ..
            } => {
                if let Some(i) = find(runs, &|r| r.plan_id == plan_id) {
                    settle(
                        runs,
                        i,
                        RegionState::Lost(format!("the agent refused the plan: {reason}")),
                    );
                }
            }
            AgentEvent::Disconnected { name, reason } => {
                for i in 0..runs.len() {
                    if runs[i].agent == name {
                        settle(
                            runs,
                            i,
                            RegionState::Lost(format!("agent {name} disconnected: {reason}")),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    Vec::new()
}

/// The target a stored campaign ran against.
fn stored_target(row: &crate::store::CampaignRow) -> Result<CampaignTarget, Status> {
    let stored: crate::report::ReportTarget = serde_json::from_str(&row.target_json)
        .map_err(|e| Status::internal(format!("stored target: {e}")))?;
    CampaignTarget::new(&request_of_stored(&stored)?)
        .map_err(|e| Status::internal(format!("stored target: {e}")))
}

/// The request a stored campaign was planned from, as far as its conclusion
/// needs it: the report's target carries every setting the diagnosis reads
/// (burst size and attempts only shaped the plans, which have run).
fn request_of_stored(stored: &crate::report::ReportTarget) -> Result<TargetRequest, Status> {
    let bad = |what: String| Status::internal(format!("stored target: {what}"));
    let origins: Vec<&str> = stored.origin.iter().map(String::as_str).collect();
    let mut request = TargetRequest::new(&stored.url, &origins);
    request.edges = stored.edge.clone();
    request.cdn = stored
        .cdn
        .parse()
        .map_err(|e: vantage_proto::cdn::UnknownProfile| bad(e.to_string()))?;
    request.edge_timeout = Some(Duration::from_millis(stored.edge_timeout_ms));
    request.pull_protocol = match stored.pull.protocol.as_str() {
        "" => None,
        "http" => Some(plan::PullProtocol::Http),
        "https" => Some(plan::PullProtocol::Https),
        other => return Err(bad(format!("pull protocol {other:?}"))),
    };
    request.pull_host = (!stored.pull.host.is_empty()).then(|| stored.pull.host.clone());
    request.pull_path = (!stored.pull.path.is_empty()).then(|| stored.pull.path.clone());
    request.user_agent = (!stored.user_agent.is_empty()).then(|| stored.user_agent.clone());
    Ok(request)
}

/// Splits a plan's results into the diagnosis's observations and the
/// single-header `cdn_headers` probes (header name → outcome ok?). What a
/// result measured comes from its probe's key in `plan`; a result whose
/// probe id the plan never had is left out.
fn observations_of(
    plan: &RegionPlan,
    results: impl Iterator<Item = pb::ProbeResult>,
) -> (Vec<Observation>, HashMap<String, Vec<bool>>) {
    let mut observations = Vec::new();
    let mut single: HashMap<String, Vec<bool>> = HashMap::new();
    for r in results {
        let Some(key) = plan.key(&r.probe_id) else {
            tracing::debug!(probe_id = %r.probe_id, "a result for a probe the plan does not have");
            continue;
        };
        let outcome = Outcome::try_from(r.outcome).unwrap_or(Outcome::MalformedResponse);
        if let Some(header) = &key.single_header {
            let ok = outcome == Outcome::Ok && r.status < 500 && r.status != 403;
            single.entry(header.clone()).or_default().push(ok);
            continue;
        }
        let (route, variant) = (key.route, key.variant);
        let address = key.address.clone().unwrap_or_default();
        let t = r.timings.unwrap_or_default();
        let ms = |us: u64| us as f64 / 1000.0;
        let tls = r.tls.clone();
        observations.push(Observation {
            route,
            variant,
            address,
            outcome,
            curl_exit: r.curl_exit,
            status: (r.status != 0).then(|| u16::try_from(r.status).unwrap_or(0)),
            timings_ms: Timings::cumulative(
                ms(t.dns_us),
                ms(t.connect_us),
                ms(t.tls_us),
                ms(t.ttfb_us),
                ms(t.total_us),
            ),
            body_bytes: r.body_bytes,
            body_sha256: r.body_sha256.clone(),
            title: r.title.clone(),
            header_names: r
                .headers
                .iter()
                .map(|h| h.name.to_ascii_lowercase())
                .collect(),
            edge_request_id: r.edge_request_id.clone(),
            nonce: r.nonce.clone(),
            tls_sha256: tls.as_ref().map(|t| t.sha256.clone()).unwrap_or_default(),
            tls_verified: tls.as_ref().map(|t| t.verified),
            tls_not_after_unix: tls.as_ref().map(|t| t.not_after_unix).filter(|&s| s > 0),
            dns_answers: r.dns_answers.clone(),
            sent_headers: Vec::new(),
            error: r.error.clone(),
            peer_close: vantage_proto::domain::PeerClose::from_wire(r.peer_close),
        });
    }
    (observations, single)
}

/// Headers whose single-header probe failed while plain requests succeeded:
/// the WAF rule's trigger.
fn failing_single_headers(
    observations: &[Observation],
    single: &HashMap<String, Vec<bool>>,
) -> Vec<String> {
    let baseline_ok = observations.iter().any(|o| {
        o.route == Route::Direct
            && o.variant == Variant::Baseline
            && o.outcome == Outcome::Ok
            && o.status.is_some_and(|s| s < 500)
    });
    if !baseline_ok {
        return Vec::new();
    }
    let mut failing: Vec<String> = single
        .iter()
        .filter(|(_, oks)| oks.iter().any(|ok| !ok))
        .map(|(name, _)| name.clone())
        .collect();
    failing.sort();
    failing
}

/// A finished campaign is stored with its diagnosis's verdict.
impl From<diagnosis::Status> for CampaignStatus {
    fn from(status: diagnosis::Status) -> CampaignStatus {
        match status {
            diagnosis::Status::Healthy => CampaignStatus::Healthy,
            diagnosis::Status::Faulty => CampaignStatus::Faulty,
            diagnosis::Status::Inconclusive => CampaignStatus::Inconclusive,
        }
    }
}
