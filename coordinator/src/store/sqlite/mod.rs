//! The SQLite backend of [`Store`]: one connection in WAL mode behind a std
//! mutex, the only place in the workspace where `rusqlite` appears.
//!
//! Every trait method moves its (owned) arguments onto tokio's blocking pool
//! and runs its statements there, so the async runtime never waits on disk.
//! Holding the lock for a statement or a short transaction is the intended
//! serialisation point; SQLite only allows one writer at a time anyway.
//! Batching many agents' results into one transaction is the caller's job
//! (the ingest writer hands [`Store::insert_results`] everything waiting).
//!
//! The schema lives in [`migrations`]; rows map to the store's records here,
//! with the typed states stored under the names the schema's `CHECK`
//! constraints list, so no migration was needed when they became enums.

pub mod migrations;
mod sweeps;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::columns::{from_db_count, outcome_code, parse_name, to_db_count};
use super::{
    AgentRecord, AgentRole, AlertRecord, CampaignPlanAgent, CampaignRow, CampaignStatus,
    CoordinatorRecord, DeliveryRow, Mail, MailBody, MissedSlot, NewAgent, NewDelivery, NewPlan,
    NewToken, Outcome, PlanAgentStatus, PlanState, ResultRecord, SeenReport, Sighting, Store,
    StoreError, SweepRecord, SweepRun, SweepRunEnd, TokenGrant, TokenRejection,
};

/// How long a statement waits on a lock held by another connection (another
/// process such as an admin CLI) before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        if let rusqlite::Error::SqliteFailure(failure, _) = &error {
            if matches!(
                failure.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                    | rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            ) {
                return StoreError::Duplicate(error.to_string());
            }
        }
        StoreError::Backend(Box::new(error))
    }
}

/// The SQLite store. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

/// Column list shared by every agent query, in the order [`read_agent`]
/// expects. A macro rather than a const so it can be `concat!`ed into
/// `'static` SQL that `prepare_cached` can key on without formatting.
macro_rules! agent_select {
    ($tail:literal) => {
        concat!(
            "SELECT agent_id, name, region, labels_json, version, role, cert_sha256, \
             enrolled_at, last_seen, remote_addr, revoked, spool_bytes, coordinator_id \
             FROM agents ",
            $tail
        )
    };
}

/// Same for campaigns and [`read_campaign`].
macro_rules! campaign_select {
    ($tail:literal) => {
        concat!(
            "SELECT campaign_id, created_at, finished_at, target_json, regions_json, status, \
             report_json FROM campaigns ",
            $tail
        )
    };
}

/// An agent row before its text columns are decoded: those errors must
/// surface as [`StoreError::Corrupt`], which a rusqlite row closure cannot
/// return.
struct RawAgent {
    record: AgentRecord,
    labels_json: String,
    role: String,
}

impl RawAgent {
    fn decode(self) -> Result<AgentRecord, StoreError> {
        let mut record = self.record;
        record.labels = serde_json::from_str(&self.labels_json)
            .map_err(|e| StoreError::Corrupt(format!("agent labels are not valid JSON: {e}")))?;
        record.role = parse_name(AgentRole::parse, &self.role, "agent role")?;
        Ok(record)
    }
}

fn read_agent(row: &Row<'_>) -> rusqlite::Result<RawAgent> {
    Ok(RawAgent {
        record: AgentRecord {
            agent_id: row.get(0)?,
            name: row.get(1)?,
            region: row.get(2)?,
            labels: BTreeMap::new(),
            version: row.get(4)?,
            role: AgentRole::Agent,
            cert_sha256: row.get(6)?,
            enrolled_at_ms: row.get(7)?,
            last_seen_ms: row.get(8)?,
            remote_addr: row.get(9)?,
            revoked: row.get::<_, i64>(10)? != 0,
            spool_bytes: from_db_count(row.get(11)?),
            holder: row.get(12)?,
        },
        labels_json: row.get(3)?,
        role: row.get(5)?,
    })
}

type RawCampaign = (
    String,
    i64,
    Option<i64>,
    String,
    String,
    String,
    Option<String>,
);

fn read_campaign(row: &Row<'_>) -> rusqlite::Result<RawCampaign> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

fn decode_campaign(raw: RawCampaign) -> Result<CampaignRow, StoreError> {
    let (
        campaign_id,
        created_at_ms,
        finished_at_ms,
        target_json,
        regions_json,
        status,
        report_json,
    ) = raw;
    Ok(CampaignRow {
        campaign_id,
        created_at_ms,
        finished_at_ms,
        target_json,
        regions: serde_json::from_str(&regions_json)
            .map_err(|e| StoreError::Corrupt(format!("campaign regions: {e}")))?,
        status: parse_name(CampaignStatus::parse, &status, "campaign status")?,
        report_json,
    })
}

fn agent_by_name_in(conn: &Connection, name: &str) -> Result<Option<AgentRecord>, StoreError> {
    let raw = conn
        .prepare_cached(agent_select!("WHERE name = ?1"))?
        .query_row([name], read_agent)
        .optional()?;
    raw.map(RawAgent::decode).transpose()
}

fn token_row(
    conn: &Connection,
    hash: &str,
    now_ms: i64,
) -> Result<Result<TokenGrant, TokenRejection>, StoreError> {
    let row = conn
        .prepare_cached("SELECT region, expires_at, uses_left FROM tokens WHERE hash = ?1")?
        .query_row([hash], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })
        .optional()?;
    Ok(match row {
        None => Err(TokenRejection::Unknown),
        Some((_, expires_at, _)) if now_ms >= expires_at => Err(TokenRejection::Expired),
        Some((_, _, uses_left)) if uses_left <= 0 => Err(TokenRejection::UsedUp),
        Some((region, _, _)) => Ok(TokenGrant { region }),
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, configures it
    /// and migrates it to [`migrations::SCHEMA_VERSION`].
    ///
    /// The parent directory must exist. Blocking: call it at start-up or
    /// from a blocking context.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)?;
        Self::setup(conn, true)
    }

    /// Opens a private in-memory database, migrated to
    /// [`migrations::SCHEMA_VERSION`]. For tests and throwaway runs; nothing
    /// survives the last clone.
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory()?;
        Self::setup(conn, false)
    }

    fn setup(mut conn: Connection, on_disk: bool) -> Result<SqliteStore, StoreError> {
        // Set first: switching to WAL itself may have to wait for a lock.
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if on_disk && !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode = %mode, "store could not switch to WAL journaling");
        }
        // NORMAL is durable against application crashes in WAL mode and only
        // risks the last transactions on power loss, which agents cover by
        // re-sending unacknowledged results.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrations::migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Runs `work` with the connection on tokio's blocking pool.
    async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = store.lock()?;
            work(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Backend(Box::new(e)))?
    }
}

#[tonic::async_trait]
impl Store for SqliteStore {
    async fn schema_version(&self) -> Result<u32, StoreError> {
        self.run(|conn| migrations::read_user_version(conn)).await
    }

    async fn insert_token(&self, token: NewToken) -> Result<(), StoreError> {
        self.run(move |conn| {
            conn.prepare_cached(
                "INSERT INTO tokens (hash, region, created_at, expires_at, uses_left) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                token.hash,
                token.region,
                token.created_at_ms,
                token.expires_at_ms,
                token.uses
            ])?;
            Ok(())
        })
        .await
    }

    async fn consume_token(
        &self,
        hash: &str,
        now_ms: i64,
    ) -> Result<Result<TokenGrant, TokenRejection>, StoreError> {
        let hash = hash.to_owned();
        self.run(move |conn| {
            // IMMEDIATE: a deferred read that later upgrades to a write can
            // fail with SQLITE_BUSY without the busy timeout ever applying.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let verdict = token_row(&tx, &hash, now_ms)?;
            if verdict.is_ok() {
                tx.prepare_cached("UPDATE tokens SET uses_left = uses_left - 1 WHERE hash = ?1")?
                    .execute([&hash])?;
            }
            tx.commit()?;
            Ok(verdict)
        })
        .await
    }

    async fn check_token(
        &self,
        hash: &str,
        now_ms: i64,
    ) -> Result<Result<TokenGrant, TokenRejection>, StoreError> {
        let hash = hash.to_owned();
        self.run(move |conn| token_row(conn, &hash, now_ms)).await
    }

    async fn set_agent_cert(&self, agent_id: &str, cert_sha256: &str) -> Result<bool, StoreError> {
        let (agent_id, cert_sha256) = (agent_id.to_owned(), cert_sha256.to_owned());
        self.run(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE agents SET cert_sha256 = ?2 WHERE agent_id = ?1 AND revoked = 0",
                )?
                .execute([agent_id, cert_sha256])?;
            Ok(changed == 1)
        })
        .await
    }

    async fn insert_agent(&self, agent: NewAgent) -> Result<(), StoreError> {
        let labels_json = serde_json::to_string(&agent.labels)
            .map_err(|e| StoreError::Invalid(format!("agent labels: {e}")))?;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing = tx
                .prepare_cached("SELECT agent_id, revoked FROM agents WHERE name = ?1")?
                .query_row([&agent.name], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? != 0))
                })
                .optional()?;
            match existing {
                Some((_, false)) => return Err(StoreError::NameTaken(agent.name.clone())),
                Some((old_id, true)) => {
                    tx.prepare_cached("DELETE FROM agents WHERE agent_id = ?1")?
                        .execute([&old_id])?;
                    tracing::info!(name = %agent.name, old_agent_id = %old_id, "replacing revoked agent");
                }
                None => {}
            }
            tx.prepare_cached(
                "INSERT INTO agents (agent_id, name, region, labels_json, version, role, \
                 cert_sha256, enrolled_at, revoked, spool_bytes) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, 0)",
            )?
            .execute(params![
                agent.agent_id,
                agent.name,
                agent.region,
                labels_json,
                agent.version,
                agent.role.as_str(),
                agent.cert_sha256,
                agent.enrolled_at_ms
            ])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn agent_by_id(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let agent_id = agent_id.to_owned();
        self.run(move |conn| {
            let raw = conn
                .prepare_cached(agent_select!("WHERE agent_id = ?1"))?
                .query_row([agent_id], read_agent)
                .optional()?;
            raw.map(RawAgent::decode).transpose()
        })
        .await
    }

    async fn agent_by_name(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| agent_by_name_in(conn, &name)).await
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.run(|conn| {
            let mut stmt = conn.prepare_cached(agent_select!("ORDER BY region, name"))?;
            let rows = stmt.query_map([], read_agent)?;
            let mut agents = Vec::new();
            for raw in rows {
                agents.push(raw?.decode()?);
            }
            Ok(agents)
        })
        .await
    }

    async fn revoke_agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached("UPDATE agents SET revoked = 1 WHERE name = ?1")?
                .execute([&name])?;
            let record = agent_by_name_in(&tx, &name)?;
            tx.commit()?;
            Ok(record)
        })
        .await
    }

    async fn record_seen(&self, agent_id: &str, seen: SeenReport) -> Result<(), StoreError> {
        let labels_json = serde_json::to_string(&seen.labels)
            .map_err(|e| StoreError::Invalid(format!("agent labels: {e}")))?;
        let agent_id = agent_id.to_owned();
        self.run(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE agents SET last_seen = ?2, remote_addr = COALESCE(?3, remote_addr), \
                     version = ?4, labels_json = ?5, spool_bytes = ?6 WHERE agent_id = ?1",
                )?
                .execute(params![
                    agent_id,
                    seen.seen_at_ms,
                    seen.remote_addr,
                    seen.version,
                    labels_json,
                    to_db_count(seen.spool_bytes)
                ])?;
            if changed == 0 {
                tracing::debug!(agent_id, "record_seen for unknown agent");
            }
            Ok(())
        })
        .await
    }

    async fn touch(&self, agent_id: &str, seen_at_ms: i64) -> Result<(), StoreError> {
        let agent_id = agent_id.to_owned();
        self.run(move |conn| {
            conn.prepare_cached("UPDATE agents SET last_seen = ?2 WHERE agent_id = ?1")?
                .execute(params![agent_id, seen_at_ms])?;
            Ok(())
        })
        .await
    }

    async fn insert_plan(&self, plan: NewPlan) -> Result<(), StoreError> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached(
                "INSERT INTO plans (plan_id, campaign_id, created_at, probes_json) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                plan.plan_id,
                plan.campaign_id,
                plan.created_at_ms,
                plan.probes_json
            ])?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO plan_agents (plan_id, agent_id, state, reason, expected) \
                     VALUES (?1, ?2, ?3, NULL, ?4)",
                )?;
                for (agent_id, expected) in &plan.agents {
                    stmt.execute(params![
                        plan.plan_id,
                        agent_id,
                        PlanState::Sent.as_str(),
                        to_db_count(*expected)
                    ])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn set_plan_agent_state(
        &self,
        plan_id: &str,
        agent_id: &str,
        state: PlanState,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let (plan_id, agent_id) = (plan_id.to_owned(), agent_id.to_owned());
        let reason = reason.map(str::to_owned);
        self.run(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE plan_agents SET state = ?3, reason = ?4 \
                     WHERE plan_id = ?1 AND agent_id = ?2",
                )?
                .execute(params![plan_id, agent_id, state.as_str(), reason])?;
            if changed == 0 {
                tracing::debug!(plan_id, agent_id, "state update for unknown plan agent");
            }
            Ok(())
        })
        .await
    }

    async fn plans_sent_to(
        &self,
        agent_id: &str,
        plan_ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let agent_id = agent_id.to_owned();
        let plan_ids = plan_ids.to_vec();
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT 1 FROM plan_agents WHERE plan_id = ?1 AND agent_id = ?2")?;
            let mut sent = HashSet::new();
            for plan_id in plan_ids {
                if stmt
                    .query_row(params![plan_id, agent_id], |_| Ok(()))
                    .optional()?
                    .is_some()
                {
                    sent.insert(plan_id);
                }
            }
            Ok(sent)
        })
        .await
    }

    async fn mark_plans_lost(&self, agent_id: &str, reason: &str) -> Result<u64, StoreError> {
        let (agent_id, reason) = (agent_id.to_owned(), reason.to_owned());
        self.run(move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE plan_agents SET state = ?3, reason = ?2 \
                     WHERE agent_id = ?1 AND state = ?4",
                )?
                .execute(params![
                    agent_id,
                    reason,
                    PlanState::Lost.as_str(),
                    PlanState::Sent.as_str()
                ])?;
            Ok(changed as u64)
        })
        .await
    }

    async fn plan_status(&self, plan_id: &str) -> Result<Option<Vec<PlanAgentStatus>>, StoreError> {
        let plan_id = plan_id.to_owned();
        self.run(move |conn| {
            // One read transaction so the existence check and the counts see
            // the same snapshot.
            let tx = conn.transaction()?;
            let exists = tx
                .prepare_cached("SELECT 1 FROM plans WHERE plan_id = ?1")?
                .query_row([&plan_id], |_| Ok(()))
                .optional()?
                .is_some();
            if !exists {
                return Ok(None);
            }
            let mut statuses = Vec::new();
            {
                let mut stmt = tx.prepare_cached(
                    "SELECT pa.agent_id, COALESCE(a.name, pa.agent_id) AS agent_name, pa.state, \
                            pa.reason, pa.expected, \
                            (SELECT COUNT(*) FROM results r \
                              WHERE r.plan_id = pa.plan_id AND r.agent_id = pa.agent_id) \
                     FROM plan_agents pa LEFT JOIN agents a ON a.agent_id = pa.agent_id \
                     WHERE pa.plan_id = ?1 \
                     ORDER BY agent_name, pa.agent_id",
                )?;
                let rows = stmt.query_map([&plan_id], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, Option<String>>(3)?,
                        row.get::<_, i64>(4)?,
                        row.get::<_, i64>(5)?,
                    ))
                })?;
                for row in rows {
                    let (agent_id, agent_name, state, reason, expected, stored) = row?;
                    statuses.push(PlanAgentStatus {
                        agent_id,
                        agent_name,
                        state: parse_name(PlanState::parse, &state, "plan state")?,
                        reason,
                        expected: from_db_count(expected),
                        stored: from_db_count(stored),
                    });
                }
            }
            tx.commit()?;
            Ok(Some(statuses))
        })
        .await
    }

    async fn insert_results(
        &self,
        results: Vec<ResultRecord>,
        received_at_ms: i64,
    ) -> Result<u64, StoreError> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut inserted: u64 = 0;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO results (result_id, plan_id, agent_id, probe_id, \
                     attempt, outcome, status, received_at, body) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?;
                for result in &results {
                    let changed = stmt.execute(params![
                        result.result_id,
                        result.plan_id,
                        result.agent_id,
                        result.probe_id,
                        i64::from(result.attempt),
                        outcome_code(result.outcome),
                        i64::from(result.status),
                        received_at_ms,
                        result.body.as_slice()
                    ])?;
                    // usize -> u64 is lossless on every supported target.
                    inserted += changed as u64;
                }
            }
            tx.commit()?;
            Ok(inserted)
        })
        .await
    }

    async fn results_for_plan(&self, plan_id: &str) -> Result<Vec<ResultRecord>, StoreError> {
        let plan_id = plan_id.to_owned();
        self.run(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT result_id, plan_id, agent_id, probe_id, attempt, outcome, status, body \
                 FROM results WHERE plan_id = ?1 ORDER BY rowid",
            )?;
            let rows = statement.query_map([plan_id], |row| {
                Ok((
                    ResultRecord {
                        result_id: row.get(0)?,
                        plan_id: row.get(1)?,
                        agent_id: row.get(2)?,
                        probe_id: row.get(3)?,
                        attempt: u32::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
                        outcome: Outcome::Ok,
                        status: u32::try_from(row.get::<_, i64>(6)?).unwrap_or(0),
                        body: row.get(7)?,
                    },
                    row.get::<_, i32>(5)?,
                ))
            })?;
            let mut results = Vec::new();
            for row in rows {
                let (mut record, code) = row?;
                record.outcome = Outcome::try_from(code)
                    .map_err(|_| StoreError::Corrupt(format!("unknown outcome code {code}")))?;
                results.push(record);
            }
            Ok(results)
        })
        .await
    }

    async fn count_results(&self, plan_id: &str) -> Result<u64, StoreError> {
        let plan_id = plan_id.to_owned();
        self.run(move |conn| {
            let count: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM results WHERE plan_id = ?1")?
                .query_row([plan_id], |row| row.get(0))?;
            Ok(from_db_count(count))
        })
        .await
    }

    async fn count_all_results(&self) -> Result<u64, StoreError> {
        self.run(|conn| {
            let count: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM results")?
                .query_row([], |row| row.get(0))?;
            Ok(from_db_count(count))
        })
        .await
    }

    async fn insert_campaign(
        &self,
        campaign_id: &str,
        created_at_ms: i64,
        target_json: &str,
        regions: &[String],
        owner: &str,
    ) -> Result<(), StoreError> {
        let regions_json = serde_json::to_string(regions)
            .map_err(|e| StoreError::Invalid(format!("campaign regions: {e}")))?;
        let (campaign_id, target_json) = (campaign_id.to_owned(), target_json.to_owned());
        let owner = owner.to_owned();
        self.run(move |conn| {
            conn.prepare_cached(
                "INSERT INTO campaigns (campaign_id, created_at, target_json, regions_json, status, \
                 coordinator_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                campaign_id,
                created_at_ms,
                target_json,
                regions_json,
                CampaignStatus::Running.as_str(),
                owner
            ])?;
            Ok(())
        })
        .await
    }

    async fn finish_campaign(
        &self,
        campaign_id: &str,
        finished_at_ms: i64,
        status: CampaignStatus,
        report_json: &str,
    ) -> Result<(), StoreError> {
        let (campaign_id, report_json) = (campaign_id.to_owned(), report_json.to_owned());
        self.run(move |conn| {
            conn.prepare_cached(
                "UPDATE campaigns SET finished_at = ?2, status = ?3, report_json = ?4 \
                 WHERE campaign_id = ?1",
            )?
            .execute(params![
                campaign_id,
                finished_at_ms,
                status.as_str(),
                report_json
            ])?;
            Ok(())
        })
        .await
    }

    async fn campaign(&self, campaign_id: &str) -> Result<Option<CampaignRow>, StoreError> {
        let campaign_id = campaign_id.to_owned();
        self.run(move |conn| {
            let row = conn
                .prepare_cached(campaign_select!("WHERE campaign_id = ?1"))?
                .query_row([campaign_id], read_campaign)
                .optional()?;
            row.map(decode_campaign).transpose()
        })
        .await
    }

    async fn list_campaigns(&self, limit: u32) -> Result<Vec<CampaignRow>, StoreError> {
        self.run(move |conn| {
            let mut statement = conn.prepare_cached(campaign_select!(
                "ORDER BY created_at DESC, campaign_id LIMIT ?1"
            ))?;
            let rows = statement.query_map([limit], read_campaign)?;
            rows.map(|row| decode_campaign(row?)).collect()
        })
        .await
    }

    async fn running_campaigns(&self) -> Result<Vec<CampaignRow>, StoreError> {
        self.run(|conn| {
            let mut statement = conn.prepare_cached(campaign_select!(
                "WHERE status = ?1 ORDER BY created_at, campaign_id"
            ))?;
            let rows = statement.query_map([CampaignStatus::Running.as_str()], read_campaign)?;
            rows.map(|row| decode_campaign(row?)).collect()
        })
        .await
    }

    async fn adopt_orphans(
        &self,
        owner: &str,
        live: &[String],
    ) -> Result<(Vec<CampaignRow>, Vec<SweepRun>), StoreError> {
        let owner = owner.to_owned();
        let live_json = serde_json::to_string(live)
            .map_err(|e| StoreError::Invalid(format!("live coordinators: {e}")))?;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let orphan = "AND (coordinator_id IS NULL \
                 OR coordinator_id NOT IN (SELECT value FROM json_each(?2)))";
            let mut ids: Vec<String> = Vec::new();
            {
                let mut statement = tx.prepare_cached(&format!(
                    "UPDATE campaigns SET coordinator_id = ?1 WHERE status = 'running' {orphan} \
                     RETURNING campaign_id"
                ))?;
                let rows = statement.query_map(params![owner, live_json], |row| row.get(0))?;
                for row in rows {
                    ids.push(row?);
                }
            }
            let mut campaigns = Vec::with_capacity(ids.len());
            for id in &ids {
                let raw = tx
                    .prepare_cached(campaign_select!("WHERE campaign_id = ?1"))?
                    .query_row([id], read_campaign)?;
                campaigns.push(decode_campaign(raw)?);
            }
            campaigns.sort_by(|a, b| {
                (a.created_at_ms, &a.campaign_id).cmp(&(b.created_at_ms, &b.campaign_id))
            });
            let runs = sweeps::adopt_orphan_runs(&tx, &owner, &live_json, orphan)?;
            tx.prepare_cached(
                "DELETE FROM mailbox WHERE coordinator_id NOT IN (SELECT value FROM json_each(?1))",
            )?
            .execute([&live_json])?;
            tx.commit()?;
            Ok((campaigns, runs))
        })
        .await
    }

    async fn campaign_plan_agents(
        &self,
        campaign_id: &str,
    ) -> Result<Vec<CampaignPlanAgent>, StoreError> {
        let campaign_id = campaign_id.to_owned();
        self.run(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT pa.plan_id, pa.agent_id, a.name, a.region, pa.state, pa.reason \
                 FROM plans p JOIN plan_agents pa ON pa.plan_id = p.plan_id \
                 LEFT JOIN agents a ON a.agent_id = pa.agent_id \
                 WHERE p.campaign_id = ?1 ORDER BY p.created_at, pa.plan_id, pa.agent_id",
            )?;
            let rows = statement.query_map([campaign_id], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            })?;
            let mut plans = Vec::new();
            for row in rows {
                let (plan_id, agent_id, name, region, state, reason) = row?;
                plans.push(CampaignPlanAgent {
                    plan_id,
                    agent_name: name.unwrap_or_else(|| agent_id.clone()),
                    agent_id,
                    region,
                    state: parse_name(PlanState::parse, &state, "plan state")?,
                    reason,
                });
            }
            Ok(plans)
        })
        .await
    }

    async fn insert_sightings(
        &self,
        agent_id: &str,
        sightings: Vec<Sighting>,
    ) -> Result<u64, StoreError> {
        let agent_id = agent_id.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut inserted = 0u64;
            {
                let mut statement = tx.prepare_cached(
                    "INSERT OR IGNORE INTO observations (nonce, agent_id, peer, seen_at, uri) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for s in &sightings {
                    inserted += statement.execute(params![
                        s.nonce,
                        agent_id,
                        s.peer,
                        s.seen_at_ms,
                        s.uri
                    ])? as u64;
                }
            }
            tx.commit()?;
            Ok(inserted)
        })
        .await
    }

    async fn sightings_with_prefix(&self, prefix: &str) -> Result<Vec<Sighting>, StoreError> {
        // GLOB is case-sensitive and can use the primary key; escape its
        // metacharacters.
        let pattern: String = prefix
            .chars()
            .flat_map(|c| match c {
                '*' | '?' | '[' => vec!['[', c, ']'],
                _ => vec![c],
            })
            .chain(std::iter::once('*'))
            .collect();
        self.run(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT nonce, peer, seen_at, uri FROM observations WHERE nonce GLOB ?1 \
                 ORDER BY seen_at",
            )?;
            let rows = statement.query_map([pattern], |row| {
                Ok(Sighting {
                    nonce: row.get(0)?,
                    peer: row.get(1)?,
                    seen_at_ms: row.get(2)?,
                    uri: row.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn insert_sweep(&self, sweep: SweepRecord) -> Result<(), StoreError> {
        self.run(move |conn| sweeps::insert_sweep(conn, sweep))
            .await
    }

    async fn apply_sweeps(
        &self,
        create: Vec<SweepRecord>,
        update: Vec<(String, String)>,
        delete: Vec<String>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.run(move |conn| sweeps::apply_sweeps(conn, create, update, delete, now_ms))
            .await
    }

    async fn sweep(&self, name: &str) -> Result<Option<SweepRecord>, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| sweeps::sweep(conn, &name)).await
    }

    async fn list_sweeps(&self) -> Result<Vec<SweepRecord>, StoreError> {
        self.run(sweeps::list_sweeps).await
    }

    async fn set_sweep_paused(
        &self,
        name: &str,
        paused: bool,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| sweeps::set_sweep_paused(conn, &name, paused, now_ms))
            .await
    }

    async fn delete_sweep(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| sweeps::delete_sweep(conn, &name))
            .await
    }

    async fn record_sweep_slots(
        &self,
        sweep: &str,
        missed: Vec<MissedSlot>,
        due: Option<(i64, i64)>,
        owner: &str,
    ) -> Result<Option<i64>, StoreError> {
        let (sweep, owner) = (sweep.to_owned(), owner.to_owned());
        self.run(move |conn| sweeps::record_sweep_slots(conn, &sweep, missed, due, &owner))
            .await
    }

    async fn set_sweep_run_campaign(
        &self,
        run_id: i64,
        campaign_id: &str,
    ) -> Result<(), StoreError> {
        let campaign_id = campaign_id.to_owned();
        self.run(move |conn| sweeps::set_sweep_run_campaign(conn, run_id, &campaign_id))
            .await
    }

    async fn finish_sweep_run(
        &self,
        run_id: i64,
        end: SweepRunEnd,
        alerts: Vec<AlertRecord>,
        deliveries: Vec<NewDelivery>,
    ) -> Result<(), StoreError> {
        self.run(move |conn| sweeps::finish_sweep_run(conn, run_id, end, alerts, deliveries))
            .await
    }

    async fn sweep_runs(&self, sweep: &str, limit: u32) -> Result<Vec<SweepRun>, StoreError> {
        let sweep = sweep.to_owned();
        self.run(move |conn| sweeps::sweep_runs(conn, &sweep, limit))
            .await
    }

    async fn running_sweep_runs(&self) -> Result<Vec<SweepRun>, StoreError> {
        self.run(sweeps::running_sweep_runs).await
    }

    async fn prune_sweep_runs(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.run(move |conn| sweeps::prune_sweep_runs(conn, before_ms))
            .await
    }

    async fn sweep_alerts(&self, sweep: &str) -> Result<Vec<AlertRecord>, StoreError> {
        let sweep = sweep.to_owned();
        self.run(move |conn| sweeps::sweep_alerts(conn, &sweep))
            .await
    }

    async fn list_alerts(&self) -> Result<Vec<AlertRecord>, StoreError> {
        self.run(sweeps::list_alerts).await
    }

    async fn claim_deliveries(
        &self,
        now_ms: i64,
        limit: u32,
        claim_until_ms: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        self.run(move |conn| sweeps::claim_deliveries(conn, now_ms, limit, claim_until_ms))
            .await
    }

    async fn next_delivery_at(&self) -> Result<Option<i64>, StoreError> {
        self.run(sweeps::next_delivery_at).await
    }

    async fn delivery_done(&self, event_id: &str, url: &str, at_ms: i64) -> Result<(), StoreError> {
        let (event_id, url) = (event_id.to_owned(), url.to_owned());
        self.run(move |conn| sweeps::delivery_done(conn, &event_id, &url, at_ms))
            .await
    }

    async fn hold_agent(&self, agent_id: &str, holder: &str) -> Result<(), StoreError> {
        let (agent_id, holder) = (agent_id.to_owned(), holder.to_owned());
        self.run(move |conn| {
            conn.prepare_cached("UPDATE agents SET coordinator_id = ?2 WHERE agent_id = ?1")?
                .execute([agent_id, holder])?;
            Ok(())
        })
        .await
    }

    async fn release_agent(&self, agent_id: &str, holder: &str) -> Result<(), StoreError> {
        let (agent_id, holder) = (agent_id.to_owned(), holder.to_owned());
        self.run(move |conn| {
            conn.prepare_cached(
                "UPDATE agents SET coordinator_id = NULL \
                 WHERE agent_id = ?1 AND coordinator_id = ?2",
            )?
            .execute([agent_id, holder])?;
            Ok(())
        })
        .await
    }

    async fn post_mail(&self, mail: Mail) -> Result<(), StoreError> {
        self.run(move |conn| {
            let (agent_id, body) = match mail.body {
                MailBody::ToAgent { agent_id, message } => (Some(agent_id), message),
                MailBody::Event(event) => (None, event),
            };
            conn.prepare_cached(
                "INSERT INTO mailbox (coordinator_id, sender, agent_id, body) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![mail.to, mail.from, agent_id, body])?;
            Ok(())
        })
        .await
    }

    async fn take_mail(&self, to: &str, limit: u32) -> Result<Vec<Mail>, StoreError> {
        let to = to.to_owned();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let rows = {
                let mut statement = tx.prepare_cached(
                    "SELECT seq, sender, agent_id, body FROM mailbox \
                     WHERE coordinator_id = ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows = statement.query_map(params![to, limit], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, Vec<u8>>(3)?,
                    ))
                })?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            let mut mail = Vec::with_capacity(rows.len());
            for (seq, from, agent_id, body) in rows {
                tx.prepare_cached("DELETE FROM mailbox WHERE seq = ?1")?
                    .execute([seq])?;
                mail.push(Mail {
                    to: to.clone(),
                    from,
                    body: match agent_id {
                        Some(agent_id) => MailBody::ToAgent {
                            agent_id,
                            message: body,
                        },
                        None => MailBody::Event(body),
                    },
                });
            }
            tx.commit()?;
            Ok(mail)
        })
        .await
    }

    async fn redirect_agent_mail(&self, agent_id: &str, holder: &str) -> Result<u64, StoreError> {
        let (agent_id, holder) = (agent_id.to_owned(), holder.to_owned());
        self.run(move |conn| {
            let moved = conn
                .prepare_cached(
                    "UPDATE mailbox SET coordinator_id = ?2 \
                     WHERE agent_id = ?1 AND coordinator_id <> ?2",
                )?
                .execute([agent_id, holder])?;
            Ok(moved as u64)
        })
        .await
    }

    async fn plan_owners(&self, plan_ids: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        let ids_json = serde_json::to_string(plan_ids)
            .map_err(|e| StoreError::Invalid(format!("plan ids: {e}")))?;
        self.run(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT p.plan_id, c.coordinator_id FROM plans p \
                 JOIN campaigns c ON c.campaign_id = p.campaign_id \
                 WHERE p.plan_id IN (SELECT value FROM json_each(?1)) \
                 AND c.coordinator_id IS NOT NULL ORDER BY p.plan_id",
            )?;
            let rows = statement.query_map([ids_json], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn installation_secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| {
            Ok(conn
                .prepare_cached("SELECT sealed FROM installation WHERE name = ?1")?
                .query_row([name], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    async fn insert_installation_secret(
        &self,
        name: &str,
        sealed: Vec<u8>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.run(move |conn| {
            let inserted = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO installation (name, sealed, created_at) \
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![name, sealed, now_ms])?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn coordinator_heartbeat(
        &self,
        record: CoordinatorRecord,
        forget_before_ms: i64,
    ) -> Result<(), StoreError> {
        let addrs_json = serde_json::to_string(&record.addrs)
            .map_err(|e| StoreError::Invalid(format!("coordinator addresses: {e}")))?;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached(
                "INSERT INTO coordinators (coordinator_id, addrs_json, started_at, heartbeat_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (coordinator_id) DO UPDATE SET \
                 addrs_json = excluded.addrs_json, heartbeat_at = excluded.heartbeat_at",
            )?
            .execute(params![
                record.coordinator_id,
                addrs_json,
                record.started_at_ms,
                record.heartbeat_at_ms
            ])?;
            tx.prepare_cached("DELETE FROM coordinators WHERE heartbeat_at < ?1")?
                .execute([forget_before_ms])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn remove_coordinator(&self, coordinator_id: &str) -> Result<(), StoreError> {
        let coordinator_id = coordinator_id.to_owned();
        self.run(move |conn| {
            conn.prepare_cached("DELETE FROM coordinators WHERE coordinator_id = ?1")?
                .execute([coordinator_id])?;
            Ok(())
        })
        .await
    }

    async fn live_coordinators(&self, since_ms: i64) -> Result<Vec<CoordinatorRecord>, StoreError> {
        self.run(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT coordinator_id, addrs_json, started_at, heartbeat_at FROM coordinators \
                 WHERE heartbeat_at >= ?1 ORDER BY started_at, coordinator_id",
            )?;
            let rows = statement.query_map([since_ms], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })?;
            let mut live = Vec::new();
            for row in rows {
                let (coordinator_id, addrs_json, started_at_ms, heartbeat_at_ms) = row?;
                live.push(CoordinatorRecord {
                    coordinator_id,
                    addrs: serde_json::from_str(&addrs_json)
                        .map_err(|e| StoreError::Corrupt(format!("coordinator addresses: {e}")))?,
                    started_at_ms,
                    heartbeat_at_ms,
                });
            }
            Ok(live)
        })
        .await
    }

    async fn delivery_retry(
        &self,
        event_id: &str,
        url: &str,
        attempts: u32,
        next_at_ms: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        let (event_id, url, error) = (event_id.to_owned(), url.to_owned(), error.to_owned());
        self.run(move |conn| {
            sweeps::delivery_retry(conn, &event_id, &url, attempts, next_at_ms, &error)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
