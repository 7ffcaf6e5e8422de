//! How the store's records map to columns, the same for both backends: the
//! typed states stored under their contract names, counters as signed
//! 64-bit integers, outcomes as the wire's integer codes, and the column
//! lists of the sweep tables. Each backend reads and writes its own rows;
//! these rules live here once.

use vantage_proto::pb;

use super::{Outcome, StoreError};

/// A stored name back to its enum; an unknown one was not written by us.
pub(super) fn parse_name<T>(
    parse: fn(&str) -> Option<T>,
    text: &str,
    what: &str,
) -> Result<T, StoreError> {
    parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown {what} {text:?}")))
}

/// Both backends' integers are signed; counters beyond `i64::MAX` are not
/// meaningful, so saturate rather than fail a write over them.
pub(super) fn to_db_count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Inverse of [`to_db_count`]; a negative value can only come from outside
/// tampering and reads as zero.
pub(super) fn from_db_count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The `outcome` column keeps the wire's integer code (as it always has),
/// so rows written before the store spoke [`Outcome`] read back unchanged.
pub(super) fn outcome_code(outcome: Outcome) -> i32 {
    pb::Outcome::from(outcome) as i32
}

/// The sweeps' columns, in the order both backends' readers expect.
pub(super) const SWEEP_SELECT: &str =
    "SELECT name, definition_json, paused, created_at, updated_at, last_slot FROM sweeps ";
/// The sweep runs' columns, likewise.
pub(super) const RUN_SELECT: &str = "SELECT run_id, sweep, slot_ms, started_at, finished_at, \
     status, campaign_id, findings_json, reason FROM sweep_runs ";
/// The alerts' columns, likewise.
pub(super) const ALERT_SELECT: &str = "SELECT sweep, code, kind, open, streak, clean, \
     regions_json, opened_at, resolved_at, updated_at, summary, campaign_id FROM alerts ";
