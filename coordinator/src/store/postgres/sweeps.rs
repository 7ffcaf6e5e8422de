//! The PostgreSQL side of sweeps, runs, alerts and the webhook outbox
//! (migration 4): one function per [`Store`](crate::store::Store) method,
//! each given a pooled connection by the trait impl in the parent module.
//!
//! What makes a slot run once in an installation of several coordinators:
//! [`record_sweep_slots`] locks the sweep's row, then claims the slot with
//! `ON CONFLICT (sweep, slot_ms) DO NOTHING RETURNING run_id`; only the
//! coordinator that gets a run id starts a campaign for it.

use deadpool_postgres::Client;

use super::listen::{notify_sweeps, SWEEPS};
use tokio_postgres::Row;

use crate::store::columns::{
    from_db_count, parse_name, to_db_count, ALERT_SELECT, RUN_SELECT, SWEEP_SELECT,
};
use crate::store::{
    AlertRecord, DeliveryRow, MissedSlot, NewDelivery, StoreError, SweepRecord, SweepRun,
    SweepRunEnd, SweepRunStatus,
};

fn read_sweep(row: &Row) -> Result<SweepRecord, StoreError> {
    Ok(SweepRecord {
        name: row.try_get(0)?,
        definition_json: row.try_get(1)?,
        paused: row.try_get(2)?,
        created_at_ms: row.try_get(3)?,
        updated_at_ms: row.try_get(4)?,
        last_slot_ms: row.try_get(5)?,
    })
}

fn read_run(row: &Row) -> Result<SweepRun, StoreError> {
    let status: String = row.try_get(5)?;
    Ok(SweepRun {
        run_id: row.try_get(0)?,
        sweep: row.try_get(1)?,
        slot_ms: row.try_get(2)?,
        started_at_ms: row.try_get(3)?,
        finished_at_ms: row.try_get(4)?,
        status: parse_name(SweepRunStatus::parse, &status, "sweep run status")?,
        campaign_id: row.try_get(6)?,
        findings_json: row.try_get(7)?,
        reason: row.try_get(8)?,
    })
}

fn read_alert(row: &Row) -> Result<AlertRecord, StoreError> {
    let regions: String = row.try_get(6)?;
    Ok(AlertRecord {
        sweep: row.try_get(0)?,
        code: row.try_get(1)?,
        kind: row.try_get(2)?,
        open: row.try_get(3)?,
        streak: u32::try_from(row.try_get::<_, i64>(4)?).unwrap_or(0),
        clean: u32::try_from(row.try_get::<_, i64>(5)?).unwrap_or(0),
        regions: serde_json::from_str(&regions)
            .map_err(|e| StoreError::Corrupt(format!("alert regions are not valid JSON: {e}")))?,
        opened_at_ms: row.try_get(7)?,
        resolved_at_ms: row.try_get(8)?,
        updated_at_ms: row.try_get(9)?,
        summary: row.try_get(10)?,
        campaign_id: row.try_get(11)?,
    })
}

async fn insert_sweep_row(
    client: &impl tokio_postgres::GenericClient,
    sweep: &SweepRecord,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO sweeps (name, definition_json, paused, created_at, updated_at, last_slot) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &sweep.name,
                &sweep.definition_json,
                &sweep.paused,
                &sweep.created_at_ms,
                &sweep.updated_at_ms,
                &sweep.last_slot_ms,
            ],
        )
        .await?;
    Ok(())
}

pub(super) async fn insert_sweep(
    client: &mut Client,
    sweep: &SweepRecord,
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    insert_sweep_row(&*tx, sweep).await?;
    notify_sweeps(&*tx).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn apply_sweeps(
    client: &mut Client,
    create: Vec<SweepRecord>,
    update: Vec<(String, String)>,
    delete: Vec<String>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    for sweep in &create {
        insert_sweep_row(&*tx, sweep).await?;
    }
    for (name, definition_json) in &update {
        let changed = tx
            .execute(
                "UPDATE sweeps SET definition_json = $2, updated_at = $3 WHERE name = $1",
                &[name, definition_json, &now_ms],
            )
            .await?;
        if changed == 0 {
            return Err(StoreError::Invalid(format!(
                "no sweep named {name:?} to update"
            )));
        }
    }
    for name in &delete {
        tx.execute("DELETE FROM sweeps WHERE name = $1", &[name])
            .await?;
    }
    notify_sweeps(&*tx).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn sweep(client: &Client, name: &str) -> Result<Option<SweepRecord>, StoreError> {
    client
        .query_opt(&format!("{SWEEP_SELECT}WHERE name = $1"), &[&name])
        .await?
        .as_ref()
        .map(read_sweep)
        .transpose()
}

pub(super) async fn list_sweeps(client: &Client) -> Result<Vec<SweepRecord>, StoreError> {
    client
        .query(&format!("{SWEEP_SELECT}ORDER BY name"), &[])
        .await?
        .iter()
        .map(read_sweep)
        .collect()
}

pub(super) async fn set_sweep_paused(
    client: &Client,
    name: &str,
    paused: bool,
    now_ms: i64,
) -> Result<bool, StoreError> {
    // One statement that changes the row and, only if it did, announces it.
    let changed = client
        .query(
            &format!(
                "WITH changed AS (UPDATE sweeps SET paused = $2, updated_at = $3 \
                 WHERE name = $1 RETURNING 1) SELECT pg_notify('{SWEEPS}', '') FROM changed"
            ),
            &[&name, &paused, &now_ms],
        )
        .await?;
    Ok(!changed.is_empty())
}

pub(super) async fn delete_sweep(client: &Client, name: &str) -> Result<bool, StoreError> {
    let changed = client
        .query(
            &format!(
                "WITH gone AS (DELETE FROM sweeps WHERE name = $1 RETURNING 1) \
                 SELECT pg_notify('{SWEEPS}', '') FROM gone"
            ),
            &[&name],
        )
        .await?;
    Ok(!changed.is_empty())
}

pub(super) async fn record_sweep_slots(
    client: &mut Client,
    sweep: &str,
    missed: Vec<MissedSlot>,
    due: Option<(i64, i64)>,
    owner: &str,
) -> Result<Option<i64>, StoreError> {
    let tx = client.transaction().await?;
    // The row lock serialises every coordinator's scheduler on this sweep
    // for the few statements below.
    let paused: Option<bool> = tx
        .query_opt(
            "SELECT paused FROM sweeps WHERE name = $1 FOR UPDATE",
            &[&sweep],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    if paused != Some(false) {
        return Ok(None);
    }
    let mut newest: Option<i64> = None;
    for slot in &missed {
        tx.execute(
            "INSERT INTO sweep_runs (sweep, slot_ms, finished_at, status, reason) \
             VALUES ($1, $2, $2, 'missed', $3) ON CONFLICT (sweep, slot_ms) DO NOTHING",
            &[&sweep, &slot.slot_ms, &slot.reason],
        )
        .await?;
        newest = newest.max(Some(slot.slot_ms));
    }
    let mut run_id = None;
    if let Some((slot_ms, started_at_ms)) = due {
        run_id = tx
            .query_opt(
                "INSERT INTO sweep_runs (sweep, slot_ms, started_at, status, coordinator_id) \
                 VALUES ($1, $2, $3, 'running', $4) ON CONFLICT (sweep, slot_ms) DO NOTHING \
                 RETURNING run_id",
                &[&sweep, &slot_ms, &started_at_ms, &owner],
            )
            .await?
            .map(|row| row.try_get::<_, i64>(0))
            .transpose()?;
        newest = newest.max(Some(slot_ms));
    }
    if let Some(newest) = newest {
        tx.execute(
            "UPDATE sweeps SET last_slot = GREATEST(COALESCE(last_slot, $2), $2) WHERE name = $1",
            &[&sweep, &newest],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(run_id)
}

pub(super) async fn set_sweep_run_campaign(
    client: &Client,
    run_id: i64,
    campaign_id: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE sweep_runs SET campaign_id = $2 WHERE run_id = $1",
            &[&run_id, &campaign_id],
        )
        .await?;
    Ok(())
}

pub(super) async fn finish_sweep_run(
    client: &mut Client,
    run_id: i64,
    end: SweepRunEnd,
    alerts: Vec<AlertRecord>,
    deliveries: Vec<NewDelivery>,
) -> Result<(), StoreError> {
    if end.status == SweepRunStatus::Running {
        return Err(StoreError::Invalid("a run cannot finish as running".into()));
    }
    let tx = client.transaction().await?;
    // Only a running run ends: finishing twice (a recovery racing a late
    // conclusion, on this coordinator or another) must not queue its
    // events twice.
    let changed = tx
        .execute(
            "UPDATE sweep_runs SET finished_at = $2, status = $3, \
             campaign_id = COALESCE($4, campaign_id), findings_json = $5, reason = $6 \
             WHERE run_id = $1 AND status = 'running'",
            &[
                &run_id,
                &end.finished_at_ms,
                &end.status.as_str(),
                &end.campaign_id,
                &end.findings_json,
                &end.reason,
            ],
        )
        .await?;
    if changed == 0 {
        return Ok(());
    }
    for alert in &alerts {
        let regions = serde_json::to_string(&alert.regions)
            .map_err(|e| StoreError::Invalid(format!("alert regions: {e}")))?;
        tx.execute(
            "INSERT INTO alerts (sweep, code, kind, open, streak, clean, regions_json, \
             opened_at, resolved_at, updated_at, summary, campaign_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (sweep, code, kind) DO UPDATE SET open = EXCLUDED.open, \
             streak = EXCLUDED.streak, clean = EXCLUDED.clean, \
             regions_json = EXCLUDED.regions_json, opened_at = EXCLUDED.opened_at, \
             resolved_at = EXCLUDED.resolved_at, updated_at = EXCLUDED.updated_at, \
             summary = EXCLUDED.summary, campaign_id = EXCLUDED.campaign_id",
            &[
                &alert.sweep,
                &alert.code,
                &alert.kind,
                &alert.open,
                &i64::from(alert.streak),
                &i64::from(alert.clean),
                &regions,
                &alert.opened_at_ms,
                &alert.resolved_at_ms,
                &alert.updated_at_ms,
                &alert.summary,
                &alert.campaign_id,
            ],
        )
        .await?;
    }
    for delivery in &deliveries {
        tx.execute(
            "INSERT INTO deliveries (event_id, url, body, created_at, next_at) \
             VALUES ($1, $2, $3, $4, $4) ON CONFLICT (event_id, url) DO NOTHING",
            &[
                &delivery.event_id,
                &delivery.url,
                &delivery.body,
                &delivery.created_at_ms,
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn sweep_runs(
    client: &Client,
    sweep: &str,
    limit: u32,
) -> Result<Vec<SweepRun>, StoreError> {
    client
        .query(
            &format!("{RUN_SELECT}WHERE sweep = $1 ORDER BY slot_ms DESC LIMIT $2"),
            &[&sweep, &i64::from(limit)],
        )
        .await?
        .iter()
        .map(read_run)
        .collect()
}

pub(super) async fn running_sweep_runs(client: &Client) -> Result<Vec<SweepRun>, StoreError> {
    client
        .query(
            &format!("{RUN_SELECT}WHERE status = 'running' ORDER BY slot_ms, run_id"),
            &[],
        )
        .await?
        .iter()
        .map(read_run)
        .collect()
}

pub(super) async fn prune_sweep_runs(client: &Client, before_ms: i64) -> Result<u64, StoreError> {
    Ok(client
        .execute(
            "DELETE FROM sweep_runs WHERE status <> 'running' AND finished_at < $1",
            &[&before_ms],
        )
        .await?)
}

pub(super) async fn sweep_alerts(
    client: &Client,
    sweep: &str,
) -> Result<Vec<AlertRecord>, StoreError> {
    client
        .query(
            &format!("{ALERT_SELECT}WHERE sweep = $1 ORDER BY code, kind"),
            &[&sweep],
        )
        .await?
        .iter()
        .map(read_alert)
        .collect()
}

pub(super) async fn list_alerts(client: &Client) -> Result<Vec<AlertRecord>, StoreError> {
    // NULLS LAST: SQLite sorts NULL lowest, so a descending order puts it
    // last there; PostgreSQL must be told.
    client
        .query(
            &format!(
                "{ALERT_SELECT}WHERE open OR opened_at IS NOT NULL \
                 ORDER BY open DESC, COALESCE(resolved_at, opened_at) DESC NULLS LAST, \
                 sweep, code, kind"
            ),
            &[],
        )
        .await?
        .iter()
        .map(read_alert)
        .collect()
}

pub(super) async fn claim_deliveries(
    client: &Client,
    now_ms: i64,
    limit: u32,
    claim_until_ms: i64,
) -> Result<Vec<DeliveryRow>, StoreError> {
    // SKIP LOCKED: a row another coordinator is claiming right now is
    // theirs; one statement, so the claim is atomic.
    client
        .query(
            "WITH due AS ( \
                 SELECT event_id, url, next_at, created_at FROM deliveries \
                 WHERE delivered_at IS NULL AND next_at <= $1 \
                 ORDER BY next_at, created_at LIMIT $2 FOR UPDATE SKIP LOCKED), \
             claimed AS ( \
                 UPDATE deliveries d SET next_at = $3 FROM due \
                 WHERE d.event_id = due.event_id AND d.url = due.url \
                 RETURNING d.event_id, d.url, d.body, d.attempts) \
             SELECT c.event_id, c.url, c.body, c.attempts FROM claimed c \
             JOIN due ON due.event_id = c.event_id AND due.url = c.url \
             ORDER BY due.next_at, due.created_at",
            &[&now_ms, &i64::from(limit), &claim_until_ms],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(DeliveryRow {
                event_id: row.try_get(0)?,
                url: row.try_get(1)?,
                body: row.try_get(2)?,
                attempts: u32::try_from(from_db_count(row.try_get(3)?)).unwrap_or(u32::MAX),
            })
        })
        .collect()
}

/// The sweep-run half of [`Store::adopt_orphans`](crate::store::Store::adopt_orphans),
/// inside its transaction.
pub(super) async fn adopt_orphan_runs(
    tx: &deadpool_postgres::Transaction<'_>,
    owner: &str,
    live: &[String],
) -> Result<Vec<SweepRun>, StoreError> {
    let columns = RUN_SELECT
        .trim_start_matches("SELECT ")
        .trim_end_matches(" FROM sweep_runs ");
    let mut runs = tx
        .query(
            &format!(
                "UPDATE sweep_runs SET coordinator_id = $1 WHERE status = 'running' \
                 AND (coordinator_id IS NULL OR coordinator_id <> ALL($2::text[])) \
                 RETURNING {columns}"
            ),
            &[&owner, &live],
        )
        .await?
        .iter()
        .map(read_run)
        .collect::<Result<Vec<_>, _>>()?;
    runs.sort_by_key(|r| (r.slot_ms, r.run_id));
    Ok(runs)
}

pub(super) async fn next_delivery_at(client: &Client) -> Result<Option<i64>, StoreError> {
    Ok(client
        .query_one(
            "SELECT MIN(next_at) FROM deliveries WHERE delivered_at IS NULL",
            &[],
        )
        .await?
        .try_get(0)?)
}

pub(super) async fn delivery_done(
    client: &Client,
    event_id: &str,
    url: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE deliveries SET delivered_at = $3, attempts = attempts + 1, last_error = NULL \
             WHERE event_id = $1 AND url = $2",
            &[&event_id, &url, &at_ms],
        )
        .await?;
    Ok(())
}

pub(super) async fn delivery_retry(
    client: &Client,
    event_id: &str,
    url: &str,
    attempts: u32,
    next_at_ms: i64,
    error: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE deliveries SET attempts = $3, next_at = $4, last_error = $5 \
             WHERE event_id = $1 AND url = $2 AND delivered_at IS NULL",
            &[
                &event_id,
                &url,
                &to_db_count(u64::from(attempts)),
                &next_at_ms,
                &error,
            ],
        )
        .await?;
    Ok(())
}
