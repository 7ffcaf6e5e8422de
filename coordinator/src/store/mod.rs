//! The coordinator's durable state: enrollment tokens, enrolled agents, probe
//! plans, campaigns, witness sightings and the results agents send back.
//!
//! This module is the door: the [`Store`] trait, the records that cross it
//! and [`StoreError`]. Callers hold an `Arc<dyn Store>` and await its
//! methods; they never see how or where the data is kept.
//!
//! What it owns and what it never imports:
//! - The trait speaks in domain terms only (ids, unix-millisecond times,
//!   decoded labels, the typed [`AgentRole`], [`PlanState`],
//!   [`CampaignStatus`] and [`Outcome`]). It never names a `rusqlite` type
//!   and never a `pb` (protobuf) type: a result crosses it as a
//!   [`ResultRecord`] whose `body` is the already encoded wire message, so
//!   encoding and decoding `pb::ProbeResult` stay in the coordinator's ingest
//!   and evidence code.
//! - The trait is async; a backend does its blocking work inside (the SQLite
//!   backend on tokio's blocking pool), so callers never block the runtime.
//! - [`sqlite`] is the only place `rusqlite` appears, [`postgres`] the only
//!   place `tokio_postgres` does; each holds its own migrations (the same
//!   steps, so one [`SCHEMA_VERSION`]) and runs the `conformance` suite
//!   (compiled for tests). [`Database`] is the parsed `--database` flag that
//!   picks one.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

pub use vantage_proto::domain::{AgentRole, CampaignStatus, Outcome, PlanState};

mod columns;
#[cfg(test)]
pub mod conformance;
pub mod postgres;
pub mod sqlite;
pub mod sweeps;

/// What one coordinator leaves for another in the database (the mailbox of
/// [`Store::post_mail`]): no coordinator talks to another directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailBody {
    /// A message for an agent whose session the addressee holds: the
    /// encoded wire message (a plan, a cancel), which the store never reads.
    ToAgent {
        /// The agent.
        agent_id: String,
        /// The encoded `pb::CoordinatorMessage`.
        message: Vec<u8>,
    },
    /// An agent event for the addressee's campaigns (results stored, a plan
    /// finished or refused), encoded by the cluster room.
    Event(Vec<u8>),
}

/// One piece of mail between coordinators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The addressee's coordinator id.
    pub to: String,
    /// The sender's coordinator id.
    pub from: String,
    /// What it carries.
    pub body: MailBody,
}

/// A coordinator of the installation, as the others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorRecord {
    /// Its id, new for every process.
    pub coordinator_id: String,
    /// The addresses agents reach it at (`host:port`), as its tokens carry
    /// them.
    pub addrs: Vec<String>,
    /// When the process started, unix milliseconds.
    pub started_at_ms: i64,
    /// Its last heartbeat, unix milliseconds.
    pub heartbeat_at_ms: i64,
}

pub use sweeps::{
    AlertRecord, DeliveryRow, MissedSlot, NewDelivery, SweepRecord, SweepRun, SweepRunEnd,
    SweepRunStatus,
};

pub use postgres::{PgConfig, PgStore};
pub use sqlite::migrations::SCHEMA_VERSION;
pub use sqlite::SqliteStore;

/// Where the coordinator keeps its state (`vantage serve --database`, env
/// `VANTAGE_DATABASE`; DESIGN §7), parsed before anything is opened.
#[derive(Debug, Clone)]
pub enum Database {
    /// `sqlite://PATH`: one file, one coordinator (the default,
    /// `sqlite://<data-dir>/vantage.db`). `sqlite:///abs/path` is absolute,
    /// `sqlite://rel/path` relative to the working directory.
    Sqlite(PathBuf),
    /// `postgres://USER@HOST/DB` (or `postgresql://`): one database shared
    /// by every coordinator of an installation.
    Postgres(Box<PgConfig>),
}

impl Database {
    /// Parses a `--database` value.
    pub fn parse(text: &str) -> Result<Database, StoreError> {
        if let Some(path) = text.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StoreError::Invalid(
                    "sqlite:// names no file (sqlite:///var/lib/vantage/vantage.db)".into(),
                ));
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Database::Postgres(Box::new(PgConfig::parse(text)?)));
        }
        Err(StoreError::Invalid(
            "expected sqlite://PATH or postgres://USER@HOST/DB".into(),
        ))
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Database::Postgres(config) => config.fmt(f),
        }
    }
}

/// A campaign as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignRow {
    /// Its id.
    pub campaign_id: String,
    /// Start, unix milliseconds.
    pub created_at_ms: i64,
    /// End, unix milliseconds, once finished.
    pub finished_at_ms: Option<i64>,
    /// The target as JSON.
    pub target_json: String,
    /// Regions it ran in.
    pub regions: Vec<String>,
    /// `Running`, or the report's verdict.
    pub status: CampaignStatus,
    /// The report (JSON), once finished.
    pub report_json: Option<String>,
}

/// One agent's part of a campaign's plans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignPlanAgent {
    /// The plan.
    pub plan_id: String,
    /// The agent's id.
    pub agent_id: String,
    /// Its name (its id if the agent row is gone).
    pub agent_name: String,
    /// Its region, if the agent row still exists.
    pub region: Option<String>,
    /// Where the plan stands on this agent.
    pub state: PlanState,
    /// Why it was rejected or lost, if known.
    pub reason: Option<String>,
}

/// One sighting of a probe nonce in the origin's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// The nonce.
    pub nonce: String,
    /// The client address the origin logged (the edge's pull IP for edge probes).
    pub peer: String,
    /// When the witness saw it, unix milliseconds.
    pub seen_at_ms: i64,
    /// The logged request URI.
    pub uri: String,
}

/// One probe result as stored: the columns a query can use, and the whole
/// result as the agent sent it (encoded `pb::ProbeResult` bytes) in `body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultRecord {
    /// Unique id chosen by the agent; a repeated id is stored once.
    pub result_id: String,
    /// The plan it belongs to.
    pub plan_id: String,
    /// The agent that sent it (from the authenticated session).
    pub agent_id: String,
    /// The probe within the plan.
    pub probe_id: String,
    /// Attempt number of the probe.
    pub attempt: u32,
    /// What happened.
    pub outcome: Outcome,
    /// HTTP status, 0 if none.
    pub status: u32,
    /// The encoded wire message; the store never looks inside.
    pub body: Vec<u8>,
}

/// Everything that can go wrong talking to the store.
///
/// A rejected enrollment token is not here: it is an expected answer, see
/// [`TokenRejection`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A live (non-revoked) agent already uses this name.
    #[error("an agent named {0:?} is already enrolled")]
    NameTaken(String),
    /// A row with this key (token hash, agent id, plan id, campaign id)
    /// already exists.
    #[error("already exists: {0}")]
    Duplicate(String),
    /// The database was written by a newer coordinator; using it could
    /// silently lose data, so it is refused.
    #[error(
        "database schema version {found} is newer than this coordinator supports ({supported})"
    )]
    TooNew {
        /// The version found in (or asked of) the database.
        found: u32,
        /// The newest version this binary knows, [`SCHEMA_VERSION`].
        supported: u32,
    },
    /// A stored value cannot be read back (labels that are not JSON, a state
    /// name or outcome code this binary does not know...).
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// A value cannot be written (labels that do not encode...).
    #[error("cannot store value: {0}")]
    Invalid(String),
    /// A thread panicked while holding the backend's connection; its state
    /// is not trusted any more.
    #[error("store lock poisoned by a panicked thread")]
    Poisoned,
    /// The backend itself failed (I/O, busy, a lost worker...).
    #[error("database error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A new enrollment token, as the admin CLI creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// Lowercase sha256 hex of the secret. The secret itself is never stored.
    pub hash: String,
    /// Region an agent enrolled with this token is placed in.
    pub region: String,
    /// Creation time, unix milliseconds.
    pub created_at_ms: i64,
    /// The token is refused from this instant on, unix milliseconds.
    pub expires_at_ms: i64,
    /// How many enrollments the token allows.
    pub uses: u32,
}

/// What a successfully consumed enrollment token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    /// Region the enrolling agent is placed in.
    pub region: String,
}

/// Why an enrollment token was refused.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum TokenRejection {
    /// No token with this hash exists.
    #[error("unknown enrollment token")]
    Unknown,
    /// The token's expiry time has passed.
    #[error("enrollment token expired")]
    Expired,
    /// Every use of the token has been consumed.
    #[error("enrollment token has no uses left")]
    UsedUp,
}

/// An agent being enrolled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAgent {
    /// Stable unique id, also bound into the agent's certificate.
    pub agent_id: String,
    /// Human-chosen name, unique among non-revoked agents.
    pub name: String,
    /// Region the agent probes from.
    pub region: String,
    /// Free-form labels reported by the agent.
    pub labels: BTreeMap<String, String>,
    /// Agent software version.
    pub version: String,
    /// What it is.
    pub role: AgentRole,
    /// sha256 hex of the agent's client certificate (DER).
    pub cert_sha256: String,
    /// Enrollment time, unix milliseconds.
    pub enrolled_at_ms: i64,
}

/// An enrolled agent as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    /// Stable unique id.
    pub agent_id: String,
    /// Human-chosen name.
    pub name: String,
    /// Region the agent probes from.
    pub region: String,
    /// Labels last reported by the agent.
    pub labels: BTreeMap<String, String>,
    /// Software version last reported by the agent.
    pub version: String,
    /// What it is.
    pub role: AgentRole,
    /// sha256 hex of the agent's client certificate (DER).
    pub cert_sha256: String,
    /// Enrollment time, unix milliseconds.
    pub enrolled_at_ms: i64,
    /// Last contact, unix milliseconds; `None` if never connected.
    pub last_seen_ms: Option<i64>,
    /// Peer address of the last session, if known.
    pub remote_addr: Option<String>,
    /// Whether the agent has been revoked and must be refused.
    pub revoked: bool,
    /// The coordinator whose session it last opened, until that session
    /// ended (`None`: none, or a coordinator that never said).
    pub holder: Option<String>,
    /// Bytes of results the agent last reported as spooled locally.
    pub spool_bytes: u64,
}

/// What an agent reported when its session started ([`Store::record_seen`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenReport {
    /// When, unix milliseconds.
    pub seen_at_ms: i64,
    /// The session's peer address; `None` keeps the last known one.
    pub remote_addr: Option<String>,
    /// Software version.
    pub version: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Bytes of results spooled locally.
    pub spool_bytes: u64,
}

/// Delivery and collection progress of one plan on one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanAgentStatus {
    /// The agent's id.
    pub agent_id: String,
    /// The agent's current name, or its id if the agent row is gone
    /// (re-enrolled under the same name after revocation).
    pub agent_name: String,
    /// Where the plan stands on this agent.
    pub state: PlanState,
    /// Why the agent rejected or finished the plan, if it said.
    pub reason: Option<String>,
    /// Results the plan should produce on this agent.
    pub expected: u64,
    /// Results actually stored for this plan from this agent.
    pub stored: u64,
}

/// A new plan: what [`Store::insert_plan`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPlan {
    /// Its id.
    pub plan_id: String,
    /// The campaign it belongs to, if any.
    pub campaign_id: Option<String>,
    /// Creation time, unix milliseconds.
    pub created_at_ms: i64,
    /// The probes, summarised as JSON.
    pub probes_json: String,
    /// `(agent_id, expected results)` for every agent it is sent to.
    pub agents: Vec<(String, u64)>,
}

/// What a coordinator wants to be woken for when another coordinator on
/// the same database changes it ([`Store::announce_changes`]). Each is
/// woken with `notify_one`, so a change that lands while nobody waits is
/// remembered for the next wait.
#[derive(Debug, Clone, Default)]
pub struct ChangeWakers {
    /// A sweep was created, changed, paused, resumed or deleted.
    pub sweeps: std::sync::Arc<tokio::sync::Notify>,
    /// Mail was left for [`ChangeWakers::mail_for`].
    pub mail: std::sync::Arc<tokio::sync::Notify>,
    /// The coordinator whose mail wakes [`ChangeWakers::mail`]; `None`:
    /// anyone's.
    pub mail_for: Option<String>,
}

/// The coordinator's persistent store. See the module documentation.
///
/// Object safe: the coordinator holds an `Arc<dyn Store>`. Every method may
/// be called concurrently from many tasks.
#[tonic::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The schema version recorded in the database.
    async fn schema_version(&self) -> Result<u32, StoreError>;

    /// Stores a new enrollment token. A duplicate hash is
    /// [`StoreError::Duplicate`].
    async fn insert_token(&self, token: NewToken) -> Result<(), StoreError>;

    /// Checks the token with this hash and, if it is usable at `now_ms`, uses
    /// it up by one, atomically, so concurrent enrollments cannot overspend
    /// it.
    ///
    /// The outer error is a database failure; the inner one is the reason a
    /// valid request was refused.
    async fn consume_token(
        &self,
        hash: &str,
        now_ms: i64,
    ) -> Result<Result<TokenGrant, TokenRejection>, StoreError>;

    /// Whether the token with `hash` would be accepted now, without spending
    /// a use: Enroll checks the token before anything else (so an
    /// unauthenticated caller learns nothing about names), and consumes it
    /// with [`Store::consume_token`] only once the request is known good.
    async fn check_token(
        &self,
        hash: &str,
        now_ms: i64,
    ) -> Result<Result<TokenGrant, TokenRejection>, StoreError>;

    /// Records an agent's renewed certificate: from now on only the
    /// certificate with `cert_sha256` authenticates it. Returns false for an
    /// unknown or revoked agent.
    async fn set_agent_cert(&self, agent_id: &str, cert_sha256: &str) -> Result<bool, StoreError>;

    /// Enrolls an agent.
    ///
    /// A non-revoked agent already using the name is
    /// [`StoreError::NameTaken`]; a revoked one is deleted and replaced
    /// atomically, so a decommissioned name can be reused. A duplicate id is
    /// [`StoreError::Duplicate`].
    async fn insert_agent(&self, agent: NewAgent) -> Result<(), StoreError>;

    /// Looks an agent up by id.
    async fn agent_by_id(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError>;

    /// Looks an agent up by name.
    async fn agent_by_name(&self, name: &str) -> Result<Option<AgentRecord>, StoreError>;

    /// Every agent, revoked ones included, ordered by region then name.
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    /// Marks the named agent revoked and returns its updated record, or
    /// `None` if there is no such agent. Revoking twice is harmless.
    async fn revoke_agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError>;

    /// Records what an agent reported when its session started. An unknown
    /// `agent_id` is a no-op.
    async fn record_seen(&self, agent_id: &str, seen: SeenReport) -> Result<(), StoreError>;

    /// Updates only an agent's last-seen time (heartbeats). An unknown
    /// `agent_id` is a no-op.
    async fn touch(&self, agent_id: &str, seen_at_ms: i64) -> Result<(), StoreError>;

    /// Stores a plan and, for each agent, its delivery row in state
    /// [`PlanState::Sent`], atomically. A duplicate plan id is
    /// [`StoreError::Duplicate`], as is an agent listed twice; either leaves
    /// nothing behind.
    async fn insert_plan(&self, plan: NewPlan) -> Result<(), StoreError>;

    /// Sets one agent's state for a plan. An unknown `(plan_id, agent_id)`
    /// pair is a no-op.
    async fn set_plan_agent_state(
        &self,
        plan_id: &str,
        agent_id: &str,
        state: PlanState,
        reason: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Which of `plan_ids` were sent to `agent_id` (in any state: a plan
    /// marked lost is still the agent's to finish).
    async fn plans_sent_to(
        &self,
        agent_id: &str,
        plan_ids: &[String],
    ) -> Result<HashSet<String>, StoreError>;

    /// Marks every plan that `agent_id` has not finished ([`PlanState::Sent`])
    /// as [`PlanState::Lost`] with `reason`, because its session ended:
    /// without this a plan whose agent died mid-run would wait forever.
    /// Results that still arrive are stored as usual, and a later "finished"
    /// mark wins. Returns how many plans were marked.
    async fn mark_plans_lost(&self, agent_id: &str, reason: &str) -> Result<u64, StoreError>;

    /// Per-agent progress of a plan, ordered by agent name, or `None` if the
    /// plan does not exist; one consistent snapshot.
    async fn plan_status(&self, plan_id: &str) -> Result<Option<Vec<PlanAgentStatus>>, StoreError>;

    /// Stores results (from one or more agents) atomically and returns how
    /// many were new. A `result_id` already stored is skipped, so agents can
    /// safely replay unacknowledged batches.
    ///
    /// Owned, so a backend can move the batch to its worker without copying
    /// the bodies: this is the ingest hot path.
    async fn insert_results(
        &self,
        results: Vec<ResultRecord>,
        received_at_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Every stored result of a plan, in the order received.
    async fn results_for_plan(&self, plan_id: &str) -> Result<Vec<ResultRecord>, StoreError>;

    /// Number of results stored for a plan, across all agents.
    async fn count_results(&self, plan_id: &str) -> Result<u64, StoreError>;

    /// Number of results stored in total.
    async fn count_all_results(&self) -> Result<u64, StoreError>;

    /// Records a campaign as [`CampaignStatus::Running`], run by the
    /// coordinator process `owner`.
    async fn insert_campaign(
        &self,
        campaign_id: &str,
        created_at_ms: i64,
        target_json: &str,
        regions: &[String],
        owner: &str,
    ) -> Result<(), StoreError>;

    /// Stores a campaign's report and final status.
    async fn finish_campaign(
        &self,
        campaign_id: &str,
        finished_at_ms: i64,
        status: CampaignStatus,
        report_json: &str,
    ) -> Result<(), StoreError>;

    /// One campaign.
    async fn campaign(&self, campaign_id: &str) -> Result<Option<CampaignRow>, StoreError>;

    /// The newest `limit` campaigns, newest first.
    async fn list_campaigns(&self, limit: u32) -> Result<Vec<CampaignRow>, StoreError>;

    /// Campaigns still running, whoever runs them. Oldest first.
    async fn running_campaigns(&self) -> Result<Vec<CampaignRow>, StoreError>;

    /// Makes `owner` the owner of every running campaign and sweep run whose
    /// owner is not in `live` (a coordinator process that died, or none),
    /// atomically, and returns them, oldest first: what `owner` must now
    /// finish. Of coordinators adopting at once, each orphan goes to one.
    /// Mail left for coordinators not in `live` is dropped (nobody would
    /// read it; messages for a dead coordinator's agents moved with each
    /// agent that reconnected, [`Store::redirect_agent_mail`]).
    async fn adopt_orphans(
        &self,
        owner: &str,
        live: &[String],
    ) -> Result<(Vec<CampaignRow>, Vec<SweepRun>), StoreError>;

    /// Every (plan, agent) of a campaign, with the agent's name and region
    /// when its row still exists, ordered by plan creation.
    async fn campaign_plan_agents(
        &self,
        campaign_id: &str,
    ) -> Result<Vec<CampaignPlanAgent>, StoreError>;

    /// Stores witness sightings; a repeated sighting (same nonce, agent and
    /// peer) is stored once. Returns how many were new.
    async fn insert_sightings(
        &self,
        agent_id: &str,
        sightings: Vec<Sighting>,
    ) -> Result<u64, StoreError>;

    /// Sightings of nonces that start with `prefix` (a campaign's nonces
    /// share one), taken literally, oldest first.
    async fn sightings_with_prefix(&self, prefix: &str) -> Result<Vec<Sighting>, StoreError>;

    /// Stores a new sweep. A name already stored is [`StoreError::Duplicate`].
    async fn insert_sweep(&self, sweep: SweepRecord) -> Result<(), StoreError>;

    /// Makes the stored sweeps match an apply plan, atomically: creates
    /// `create`, replaces the definitions of `update` (keeping their
    /// schedule, pause and history), deletes `delete`. Either all of it
    /// happens or nothing does.
    async fn apply_sweeps(
        &self,
        create: Vec<SweepRecord>,
        update: Vec<(String, String)>,
        delete: Vec<String>,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// One sweep.
    async fn sweep(&self, name: &str) -> Result<Option<SweepRecord>, StoreError>;

    /// Every sweep, by name.
    async fn list_sweeps(&self) -> Result<Vec<SweepRecord>, StoreError>;

    /// Pauses or resumes a sweep; false if there is no such sweep.
    async fn set_sweep_paused(
        &self,
        name: &str,
        paused: bool,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Deletes a sweep with its runs and alerts (their campaigns and any
    /// undelivered webhook POSTs stay); false if there is no such sweep.
    async fn delete_sweep(&self, name: &str) -> Result<bool, StoreError>;

    /// Records a sweep's slots atomically: `missed` as missed runs, then,
    /// if given, `due` as a running run started at `started_at_ms`, and
    /// moves the sweep's `last_slot_ms` to the newest of them. A slot
    /// already recorded is left alone (a slot runs at most once); the
    /// answer is the new running run's id, `None` when there was no `due`
    /// or it was already recorded, or the sweep is gone. The running run is
    /// `owner`'s to finish. A paused sweep records nothing and starts
    /// nothing (`None`): its pause, made through another coordinator, may
    /// not have reached this one's scheduler yet.
    async fn record_sweep_slots(
        &self,
        sweep: &str,
        missed: Vec<MissedSlot>,
        due: Option<(i64, i64)>,
        owner: &str,
    ) -> Result<Option<i64>, StoreError>;

    /// Links a running run to the campaign it started.
    async fn set_sweep_run_campaign(
        &self,
        run_id: i64,
        campaign_id: &str,
    ) -> Result<(), StoreError>;

    /// Ends a run and, in the same transaction, stores the alert states it
    /// moved and queues the webhook POSTs of their events: a crash leaves
    /// either all of it or none of it, so an event is neither lost nor
    /// queued twice.
    async fn finish_sweep_run(
        &self,
        run_id: i64,
        end: SweepRunEnd,
        alerts: Vec<AlertRecord>,
        deliveries: Vec<NewDelivery>,
    ) -> Result<(), StoreError>;

    /// A sweep's newest `limit` runs, newest slot first.
    async fn sweep_runs(&self, sweep: &str, limit: u32) -> Result<Vec<SweepRun>, StoreError>;

    /// Runs still marked running: at start-up, the ones a previous process
    /// never finished. Oldest first.
    async fn running_sweep_runs(&self) -> Result<Vec<SweepRun>, StoreError>;

    /// Deletes finished runs that ended before `before_ms` (retention);
    /// returns how many.
    async fn prune_sweep_runs(&self, before_ms: i64) -> Result<u64, StoreError>;

    /// A sweep's alert states, by code then kind.
    async fn sweep_alerts(&self, sweep: &str) -> Result<Vec<AlertRecord>, StoreError>;

    /// Every alert that is open or was ever opened, open first, then the
    /// most recently resolved.
    async fn list_alerts(&self) -> Result<Vec<AlertRecord>, StoreError>;

    /// Claims the undelivered webhook POSTs due at `now_ms`, oldest first:
    /// each is returned once and not due again before `claim_until_ms`, so
    /// the outboxes of several coordinators never POST one event at once,
    /// and one that dies mid-POST leaves it to be retried after the claim.
    async fn claim_deliveries(
        &self,
        now_ms: i64,
        limit: u32,
        claim_until_ms: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError>;

    /// The earliest next attempt of an undelivered POST.
    async fn next_delivery_at(&self) -> Result<Option<i64>, StoreError>;

    /// A POST was answered 2xx: never attempted again.
    async fn delivery_done(&self, event_id: &str, url: &str, at_ms: i64) -> Result<(), StoreError>;

    /// Records that coordinator `holder` now holds the agent's session.
    async fn hold_agent(&self, agent_id: &str, holder: &str) -> Result<(), StoreError>;

    /// Records that `holder`'s session of the agent ended, unless another
    /// coordinator holds it by now.
    async fn release_agent(&self, agent_id: &str, holder: &str) -> Result<(), StoreError>;

    /// Leaves mail for another coordinator.
    async fn post_mail(&self, mail: Mail) -> Result<(), StoreError>;

    /// From now on, wakes `wakers` whenever any coordinator on this
    /// database commits a change they watch, including ones made while the
    /// database was briefly unreachable (all are woken once it answers
    /// again, since what changed meanwhile is unknown). A store that only
    /// one coordinator uses has nothing to announce: the default does
    /// nothing, and that coordinator's own writers wake it directly.
    /// Needs a tokio runtime; the watching lasts as long as the runtime.
    fn announce_changes(&self, wakers: ChangeWakers) {
        let _ = wakers;
    }

    /// Takes (and removes) up to `limit` pieces of mail for `to`, oldest
    /// first; each piece is taken once, by one caller.
    async fn take_mail(&self, to: &str, limit: u32) -> Result<Vec<Mail>, StoreError>;

    /// Readdresses to `holder` the messages for `agent_id` that wait in
    /// other coordinators' mailboxes (left for its previous holder, which
    /// may be dead); returns how many. Called when `holder` takes the
    /// agent's session, so a plan sent while the agent moved still reaches
    /// it.
    async fn redirect_agent_mail(&self, agent_id: &str, holder: &str) -> Result<u64, StoreError>;

    /// The coordinator running each of `plan_ids`' campaigns (plans outside
    /// a campaign, and unknown ones, are left out).
    async fn plan_owners(&self, plan_ids: &[String]) -> Result<Vec<(String, String)>, StoreError>;

    /// The installation secret stored under `name` (sealed by the caller;
    /// the store never sees it in clear).
    async fn installation_secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores a sealed installation secret unless one named `name` exists;
    /// true when this call stored it. Of coordinators racing to create the
    /// installation exactly one wins, and the others read the winner's.
    async fn insert_installation_secret(
        &self,
        name: &str,
        sealed: Vec<u8>,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Records (or refreshes) a live coordinator, and forgets the ones whose
    /// last heartbeat is older than `forget_before_ms`.
    async fn coordinator_heartbeat(
        &self,
        record: CoordinatorRecord,
        forget_before_ms: i64,
    ) -> Result<(), StoreError>;

    /// Forgets a coordinator (it is shutting down).
    async fn remove_coordinator(&self, coordinator_id: &str) -> Result<(), StoreError>;

    /// The coordinators whose last heartbeat is at or after `since_ms`,
    /// oldest process first.
    async fn live_coordinators(&self, since_ms: i64) -> Result<Vec<CoordinatorRecord>, StoreError>;

    /// A POST failed: try again at `next_at_ms`; `attempts` is the new count.
    async fn delivery_retry(
        &self,
        event_id: &str,
        url: &str,
        attempts: u32,
        next_at_ms: i64,
        error: &str,
    ) -> Result<(), StoreError>;
}
