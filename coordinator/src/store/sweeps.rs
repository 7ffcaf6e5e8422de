//! The records of sweeps (issue #11, DESIGN §6a) as they cross the
//! [`Store`](super::Store) trait: a sweep's stored definition, each slot's
//! run, the alert state per (sweep, code, kind) and the webhook outbox.
//!
//! The definition crosses as JSON the sweep room wrote (the store never
//! looks inside, as with a campaign's target); everything a query or a
//! state machine needs is a typed column.

/// Where one slot's run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SweepRunStatus {
    /// Its campaign is running.
    Running,
    /// The campaign's verdict: healthy.
    Healthy,
    /// The campaign's verdict: faulty.
    Faulty,
    /// The campaign's verdict: inconclusive.
    Inconclusive,
    /// The slot passed without a run (see the run's `reason`).
    Missed,
}

impl SweepRunStatus {
    /// The contract name (`running|healthy|faulty|inconclusive|missed`).
    pub fn as_str(self) -> &'static str {
        match self {
            SweepRunStatus::Running => "running",
            SweepRunStatus::Healthy => "healthy",
            SweepRunStatus::Faulty => "faulty",
            SweepRunStatus::Inconclusive => "inconclusive",
            SweepRunStatus::Missed => "missed",
        }
    }

    /// The inverse of [`SweepRunStatus::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        [
            SweepRunStatus::Running,
            SweepRunStatus::Healthy,
            SweepRunStatus::Faulty,
            SweepRunStatus::Inconclusive,
            SweepRunStatus::Missed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A sweep as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepRecord {
    /// Its unique name.
    pub name: String,
    /// Its definition, as the sweep room encodes it.
    pub definition_json: String,
    /// Whether the scheduler skips it.
    pub paused: bool,
    /// Creation time, unix milliseconds.
    pub created_at_ms: i64,
    /// Last change of definition or pause, unix milliseconds.
    pub updated_at_ms: i64,
    /// The newest slot run or recorded missed: where the schedule resumes.
    pub last_slot_ms: Option<i64>,
}

/// One slot of a sweep: a run, or a recorded miss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepRun {
    /// Its id.
    pub run_id: i64,
    /// The sweep's name.
    pub sweep: String,
    /// The slot, unix milliseconds.
    pub slot_ms: i64,
    /// When its campaign started (`None` when missed).
    pub started_at_ms: Option<i64>,
    /// When it ended (or was recorded missed).
    pub finished_at_ms: Option<i64>,
    /// Where it stands.
    pub status: SweepRunStatus,
    /// Its campaign, if one started.
    pub campaign_id: Option<String>,
    /// The findings (codes, kinds, regions), as the sweep room encodes them.
    pub findings_json: String,
    /// Why it was missed or why it ended without a verdict.
    pub reason: Option<String>,
}

/// A slot the scheduler records as missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissedSlot {
    /// The slot, unix milliseconds.
    pub slot_ms: i64,
    /// Why no run happened.
    pub reason: String,
}

/// How a run ended: [`Store::finish_sweep_run`](super::Store::finish_sweep_run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepRunEnd {
    /// When, unix milliseconds.
    pub finished_at_ms: i64,
    /// The verdict (never `Running`).
    pub status: SweepRunStatus,
    /// The campaign, if one started.
    pub campaign_id: Option<String>,
    /// The findings, encoded by the sweep room.
    pub findings_json: String,
    /// Why it has no verdict, if it has none.
    pub reason: Option<String>,
}

/// The confirmed-alert state of one (sweep, code, kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    /// The sweep.
    pub sweep: String,
    /// The finding code.
    pub code: String,
    /// The finding kind.
    pub kind: String,
    /// Whether it is open.
    pub open: bool,
    /// Consecutive runs with the finding while not open.
    pub streak: u32,
    /// Consecutive clean runs while open.
    pub clean: u32,
    /// Where it holds (open) or last held (resolved).
    pub regions: Vec<String>,
    /// When it last opened, unix milliseconds.
    pub opened_at_ms: Option<i64>,
    /// When it last resolved, unix milliseconds.
    pub resolved_at_ms: Option<i64>,
    /// Last change, unix milliseconds.
    pub updated_at_ms: i64,
    /// The finding's summary as of the last run that carried it.
    pub summary: String,
    /// The campaign of the last run that changed it.
    pub campaign_id: String,
}

/// A webhook POST to make: one alert event to one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The event's id (the same for every URL and every retry).
    pub event_id: String,
    /// Where to POST it.
    pub url: String,
    /// The JSON body (`vantage.alert.v1`).
    pub body: String,
    /// When it was queued, unix milliseconds (also its first attempt time).
    pub created_at_ms: i64,
}

/// A queued webhook POST, as the outbox worker reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// The event's id.
    pub event_id: String,
    /// Where to POST it.
    pub url: String,
    /// The JSON body.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
}
