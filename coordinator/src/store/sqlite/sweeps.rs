//! The SQLite side of sweeps, runs, alerts and the webhook outbox
//! (migration 4): one function per [`Store`](crate::store::Store) method,
//! each given the connection on the blocking pool by the trait impl in the
//! parent module.

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::store::columns::{
    from_db_count, parse_name, to_db_count, ALERT_SELECT, RUN_SELECT, SWEEP_SELECT,
};
use crate::store::{
    AlertRecord, DeliveryRow, MissedSlot, NewDelivery, StoreError, SweepRecord, SweepRun,
    SweepRunEnd, SweepRunStatus,
};

fn read_sweep(row: &Row<'_>) -> rusqlite::Result<SweepRecord> {
    Ok(SweepRecord {
        name: row.get(0)?,
        definition_json: row.get(1)?,
        paused: row.get::<_, i64>(2)? != 0,
        created_at_ms: row.get(3)?,
        updated_at_ms: row.get(4)?,
        last_slot_ms: row.get(5)?,
    })
}

fn read_run(row: &Row<'_>) -> rusqlite::Result<(SweepRun, String)> {
    Ok((
        SweepRun {
            run_id: row.get(0)?,
            sweep: row.get(1)?,
            slot_ms: row.get(2)?,
            started_at_ms: row.get(3)?,
            finished_at_ms: row.get(4)?,
            status: SweepRunStatus::Running,
            campaign_id: row.get(6)?,
            findings_json: row.get(7)?,
            reason: row.get(8)?,
        },
        row.get(5)?,
    ))
}

fn decode_run((mut run, status): (SweepRun, String)) -> Result<SweepRun, StoreError> {
    run.status = parse_name(SweepRunStatus::parse, &status, "sweep run status")?;
    Ok(run)
}

fn read_alert(row: &Row<'_>) -> rusqlite::Result<(AlertRecord, String)> {
    Ok((
        AlertRecord {
            sweep: row.get(0)?,
            code: row.get(1)?,
            kind: row.get(2)?,
            open: row.get::<_, i64>(3)? != 0,
            streak: u32::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
            clean: u32::try_from(row.get::<_, i64>(5)?).unwrap_or(0),
            regions: Vec::new(),
            opened_at_ms: row.get(7)?,
            resolved_at_ms: row.get(8)?,
            updated_at_ms: row.get(9)?,
            summary: row.get(10)?,
            campaign_id: row.get(11)?,
        },
        row.get(6)?,
    ))
}

fn decode_alert((mut alert, regions): (AlertRecord, String)) -> Result<AlertRecord, StoreError> {
    alert.regions = serde_json::from_str(&regions)
        .map_err(|e| StoreError::Corrupt(format!("alert regions are not valid JSON: {e}")))?;
    Ok(alert)
}

fn insert_sweep_row(conn: &Connection, sweep: &SweepRecord) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO sweeps (name, definition_json, paused, created_at, updated_at, last_slot) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        sweep.name,
        sweep.definition_json,
        i64::from(sweep.paused),
        sweep.created_at_ms,
        sweep.updated_at_ms,
        sweep.last_slot_ms
    ])?;
    Ok(())
}

pub(super) fn insert_sweep(conn: &mut Connection, sweep: SweepRecord) -> Result<(), StoreError> {
    insert_sweep_row(conn, &sweep)
}

pub(super) fn apply_sweeps(
    conn: &mut Connection,
    create: Vec<SweepRecord>,
    update: Vec<(String, String)>,
    delete: Vec<String>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for sweep in &create {
        insert_sweep_row(&tx, sweep)?;
    }
    for (name, definition_json) in &update {
        let changed = tx
            .prepare_cached(
                "UPDATE sweeps SET definition_json = ?2, updated_at = ?3 WHERE name = ?1",
            )?
            .execute(params![name, definition_json, now_ms])?;
        if changed == 0 {
            return Err(StoreError::Invalid(format!(
                "no sweep named {name:?} to update"
            )));
        }
    }
    for name in &delete {
        tx.prepare_cached("DELETE FROM sweeps WHERE name = ?1")?
            .execute([name])?;
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn sweep(conn: &mut Connection, name: &str) -> Result<Option<SweepRecord>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("{SWEEP_SELECT}WHERE name = ?1"))?
        .query_row([name], read_sweep)
        .optional()?)
}

pub(super) fn list_sweeps(conn: &mut Connection) -> Result<Vec<SweepRecord>, StoreError> {
    let mut statement = conn.prepare_cached(&format!("{SWEEP_SELECT}ORDER BY name"))?;
    let rows = statement.query_map([], read_sweep)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub(super) fn set_sweep_paused(
    conn: &mut Connection,
    name: &str,
    paused: bool,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let changed = conn
        .prepare_cached("UPDATE sweeps SET paused = ?2, updated_at = ?3 WHERE name = ?1")?
        .execute(params![name, i64::from(paused), now_ms])?;
    Ok(changed > 0)
}

pub(super) fn delete_sweep(conn: &mut Connection, name: &str) -> Result<bool, StoreError> {
    let changed = conn
        .prepare_cached("DELETE FROM sweeps WHERE name = ?1")?
        .execute([name])?;
    Ok(changed > 0)
}

pub(super) fn record_sweep_slots(
    conn: &mut Connection,
    sweep: &str,
    missed: Vec<MissedSlot>,
    due: Option<(i64, i64)>,
    owner: &str,
) -> Result<Option<i64>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let paused: Option<bool> = tx
        .prepare_cached("SELECT paused FROM sweeps WHERE name = ?1")?
        .query_row([sweep], |row| row.get(0))
        .optional()?;
    if paused != Some(false) {
        return Ok(None);
    }
    let mut newest: Option<i64> = None;
    for slot in &missed {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO sweep_runs (sweep, slot_ms, finished_at, status, reason) \
             VALUES (?1, ?2, ?2, 'missed', ?3)",
        )?
        .execute(params![sweep, slot.slot_ms, slot.reason])?;
        newest = newest.max(Some(slot.slot_ms));
    }
    let mut run_id = None;
    if let Some((slot_ms, started_at_ms)) = due {
        let inserted = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO sweep_runs (sweep, slot_ms, started_at, status, \
                 coordinator_id) VALUES (?1, ?2, ?3, 'running', ?4)",
            )?
            .execute(params![sweep, slot_ms, started_at_ms, owner])?;
        if inserted > 0 {
            run_id = Some(tx.last_insert_rowid());
        }
        newest = newest.max(Some(slot_ms));
    }
    if let Some(newest) = newest {
        tx.prepare_cached(
            "UPDATE sweeps SET last_slot = MAX(COALESCE(last_slot, ?2), ?2) WHERE name = ?1",
        )?
        .execute(params![sweep, newest])?;
    }
    tx.commit()?;
    Ok(run_id)
}

pub(super) fn set_sweep_run_campaign(
    conn: &mut Connection,
    run_id: i64,
    campaign_id: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE sweep_runs SET campaign_id = ?2 WHERE run_id = ?1")?
        .execute(params![run_id, campaign_id])?;
    Ok(())
}

pub(super) fn finish_sweep_run(
    conn: &mut Connection,
    run_id: i64,
    end: SweepRunEnd,
    alerts: Vec<AlertRecord>,
    deliveries: Vec<NewDelivery>,
) -> Result<(), StoreError> {
    if end.status == SweepRunStatus::Running {
        return Err(StoreError::Invalid("a run cannot finish as running".into()));
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Only a running run ends: finishing twice (a recovery racing a late
    // conclusion) must not queue its events twice.
    let changed = tx
        .prepare_cached(
            "UPDATE sweep_runs SET finished_at = ?2, status = ?3, \
             campaign_id = COALESCE(?4, campaign_id), findings_json = ?5, reason = ?6 \
             WHERE run_id = ?1 AND status = 'running'",
        )?
        .execute(params![
            run_id,
            end.finished_at_ms,
            end.status.as_str(),
            end.campaign_id,
            end.findings_json,
            end.reason
        ])?;
    if changed == 0 {
        return Ok(());
    }
    for alert in &alerts {
        let regions = serde_json::to_string(&alert.regions)
            .map_err(|e| StoreError::Invalid(format!("alert regions: {e}")))?;
        tx.prepare_cached(
            "INSERT INTO alerts (sweep, code, kind, open, streak, clean, regions_json, \
             opened_at, resolved_at, updated_at, summary, campaign_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
             ON CONFLICT (sweep, code, kind) DO UPDATE SET open = excluded.open, \
             streak = excluded.streak, clean = excluded.clean, \
             regions_json = excluded.regions_json, opened_at = excluded.opened_at, \
             resolved_at = excluded.resolved_at, updated_at = excluded.updated_at, \
             summary = excluded.summary, campaign_id = excluded.campaign_id",
        )?
        .execute(params![
            alert.sweep,
            alert.code,
            alert.kind,
            i64::from(alert.open),
            i64::from(alert.streak),
            i64::from(alert.clean),
            regions,
            alert.opened_at_ms,
            alert.resolved_at_ms,
            alert.updated_at_ms,
            alert.summary,
            alert.campaign_id
        ])?;
    }
    for delivery in &deliveries {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO deliveries (event_id, url, body, created_at, next_at) \
             VALUES (?1, ?2, ?3, ?4, ?4)",
        )?
        .execute(params![
            delivery.event_id,
            delivery.url,
            delivery.body,
            delivery.created_at_ms
        ])?;
    }
    tx.commit()?;
    Ok(())
}

pub(super) fn sweep_runs(
    conn: &mut Connection,
    sweep: &str,
    limit: u32,
) -> Result<Vec<SweepRun>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "{RUN_SELECT}WHERE sweep = ?1 ORDER BY slot_ms DESC LIMIT ?2"
    ))?;
    let rows = statement.query_map(params![sweep, limit], read_run)?;
    rows.map(|row| decode_run(row?)).collect()
}

pub(super) fn running_sweep_runs(conn: &mut Connection) -> Result<Vec<SweepRun>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "{RUN_SELECT}WHERE status = 'running' ORDER BY slot_ms, run_id"
    ))?;
    let rows = statement.query_map([], read_run)?;
    rows.map(|row| decode_run(row?)).collect()
}

pub(super) fn prune_sweep_runs(conn: &mut Connection, before_ms: i64) -> Result<u64, StoreError> {
    let deleted = conn
        .prepare_cached("DELETE FROM sweep_runs WHERE status != 'running' AND finished_at < ?1")?
        .execute([before_ms])?;
    Ok(deleted as u64)
}

pub(super) fn sweep_alerts(
    conn: &mut Connection,
    sweep: &str,
) -> Result<Vec<AlertRecord>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "{ALERT_SELECT}WHERE sweep = ?1 ORDER BY code, kind"
    ))?;
    let rows = statement.query_map([sweep], read_alert)?;
    rows.map(|row| decode_alert(row?)).collect()
}

pub(super) fn list_alerts(conn: &mut Connection) -> Result<Vec<AlertRecord>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "{ALERT_SELECT}WHERE open = 1 OR opened_at IS NOT NULL \
         ORDER BY open DESC, COALESCE(resolved_at, opened_at) DESC, sweep, code, kind"
    ))?;
    let rows = statement.query_map([], read_alert)?;
    rows.map(|row| decode_alert(row?)).collect()
}

pub(super) fn claim_deliveries(
    conn: &mut Connection,
    now_ms: i64,
    limit: u32,
    claim_until_ms: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let due = {
        let mut statement = tx.prepare_cached(
            "SELECT event_id, url, body, attempts FROM deliveries \
             WHERE delivered_at IS NULL AND next_at <= ?1 ORDER BY next_at, created_at LIMIT ?2",
        )?;
        let rows = statement.query_map(params![now_ms, limit], |row| {
            Ok(DeliveryRow {
                event_id: row.get(0)?,
                url: row.get(1)?,
                body: row.get(2)?,
                attempts: u32::try_from(from_db_count(row.get(3)?)).unwrap_or(u32::MAX),
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    for delivery in &due {
        tx.prepare_cached("UPDATE deliveries SET next_at = ?3 WHERE event_id = ?1 AND url = ?2")?
            .execute(params![delivery.event_id, delivery.url, claim_until_ms])?;
    }
    tx.commit()?;
    Ok(due)
}

/// The sweep-run half of [`Store::adopt_orphans`](crate::store::Store::adopt_orphans),
/// inside its transaction; `orphan` is the shared ownership condition on
/// `?2`.
pub(super) fn adopt_orphan_runs(
    tx: &Connection,
    owner: &str,
    live_json: &str,
    orphan: &str,
) -> Result<Vec<SweepRun>, StoreError> {
    let ids: Vec<i64> = {
        let mut statement = tx.prepare_cached(&format!(
            "UPDATE sweep_runs SET coordinator_id = ?1 WHERE status = 'running' {orphan} \
             RETURNING run_id"
        ))?;
        let rows = statement.query_map(params![owner, live_json], |row| row.get(0))?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    let mut runs = Vec::with_capacity(ids.len());
    for id in ids {
        let raw = tx
            .prepare_cached(&format!("{RUN_SELECT}WHERE run_id = ?1"))?
            .query_row([id], read_run)?;
        runs.push(decode_run(raw)?);
    }
    runs.sort_by_key(|r| (r.slot_ms, r.run_id));
    Ok(runs)
}

pub(super) fn next_delivery_at(conn: &mut Connection) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT MIN(next_at) FROM deliveries WHERE delivered_at IS NULL")?
        .query_row([], |row| row.get(0))?)
}

pub(super) fn delivery_done(
    conn: &mut Connection,
    event_id: &str,
    url: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE deliveries SET delivered_at = ?3, attempts = attempts + 1, last_error = NULL \
         WHERE event_id = ?1 AND url = ?2",
    )?
    .execute(params![event_id, url, at_ms])?;
    Ok(())
}

pub(super) fn delivery_retry(
    conn: &mut Connection,
    event_id: &str,
    url: &str,
    attempts: u32,
    next_at_ms: i64,
    error: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE deliveries SET attempts = ?3, next_at = ?4, last_error = ?5 \
         WHERE event_id = ?1 AND url = ?2 AND delivered_at IS NULL",
    )?
    .execute(params![
        event_id,
        url,
        to_db_count(u64::from(attempts)),
        next_at_ms,
        error
    ])?;
    Ok(())
}
