//! The coordinator's durable state: enrollment tokens, enrolled agents, probe
//! plans and the results agents send back.
//!
//! Everything goes through [`Store`], a deliberately narrow struct whose
//! methods speak in domain terms (ids, unix-millisecond times, decoded labels)
//! and never hand out SQL types, so that a PostgreSQL backend could later
//! replace the SQLite one without touching callers.
//!
//! The backend is one SQLite connection in WAL mode behind a std mutex. The
//! coordinator shares the store in an `Arc` and calls it from
//! `spawn_blocking`, so holding the lock for the duration of a statement or a
//! short transaction is the intended serialisation point; SQLite only allows
//! one writer at a time anyway.
//!
//! The schema is versioned with `PRAGMA user_version` and upgraded by the
//! embedded, append-only `MIGRATIONS` list when the store is opened.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use prost::Message;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use vantage_proto::pb::ProbeResult;

/// How long a statement waits on a lock held by another connection (another
/// process such as an admin CLI) before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Embedded schema migrations, applied in order. Entry `i` moves the schema
/// from version `i` to version `i + 1`.
///
/// Append only: a released entry must never change, because databases in the
/// field have already run it and only remember its number.
const MIGRATIONS: &[&str] = &[
    // 1: enrollment tokens and enrolled agents.
    r#"
CREATE TABLE tokens (
    -- sha256 hex of the secret: a leaked database must not enroll anyone.
    hash        TEXT    PRIMARY KEY NOT NULL,
    region      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    uses_left   INTEGER NOT NULL CHECK (uses_left >= 0)
);

CREATE TABLE agents (
    agent_id    TEXT    PRIMARY KEY NOT NULL,
    name        TEXT    NOT NULL UNIQUE,
    region      TEXT    NOT NULL,
    labels_json TEXT    NOT NULL DEFAULT '{}',
    version     TEXT    NOT NULL,
    role        TEXT    NOT NULL CHECK (role IN ('agent', 'witness')),
    cert_sha256 TEXT    NOT NULL,
    enrolled_at INTEGER NOT NULL,
    last_seen   INTEGER,
    remote_addr TEXT,
    revoked     INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1)),
    spool_bytes INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX agents_region_name ON agents (region, name);
"#,
    // 2: plans, their per-agent delivery state, and results.
    //
    // plan_agents.agent_id and results.* deliberately carry no foreign key to
    // agents: re-enrolling a revoked name deletes the old agent row, and its
    // history must survive that. results has no foreign key to plans either,
    // because one stray row must not fail a whole batch on the hot path. The
    // session layer (agent_service.rs, `OwnedPlans`) refuses any result,
    // "finished" or "rejected" mark for a plan that has no plan_agents row
    // for the reporting agent, so rows only get here for plans sent to it.
    r#"
CREATE TABLE plans (
    plan_id     TEXT    PRIMARY KEY NOT NULL,
    campaign_id TEXT,
    created_at  INTEGER NOT NULL,
    probes_json TEXT    NOT NULL
);

CREATE INDEX plans_campaign ON plans (campaign_id) WHERE campaign_id IS NOT NULL;

CREATE TABLE plan_agents (
    plan_id  TEXT    NOT NULL REFERENCES plans (plan_id) ON DELETE CASCADE,
    agent_id TEXT    NOT NULL,
    state    TEXT    NOT NULL CHECK (state IN ('sent', 'rejected', 'finished', 'lost')),
    reason   TEXT,
    expected INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (plan_id, agent_id)
) WITHOUT ROWID;

CREATE INDEX plan_agents_agent ON plan_agents (agent_id);

CREATE TABLE results (
    result_id   TEXT    PRIMARY KEY NOT NULL,
    plan_id     TEXT    NOT NULL,
    agent_id    TEXT    NOT NULL,
    probe_id    TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    outcome     INTEGER NOT NULL,
    status      INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    body        BLOB    NOT NULL
);

CREATE INDEX results_plan_agent ON results (plan_id, agent_id);
"#,
    // 3: campaigns (the report is kept so it can be rendered again) and the
    // origin witness's sightings of probe nonces.
    r#"
CREATE TABLE campaigns (
    campaign_id  TEXT    PRIMARY KEY NOT NULL,
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    target_json  TEXT    NOT NULL,
    regions_json TEXT    NOT NULL,
    status       TEXT    NOT NULL
        CHECK (status IN ('running', 'healthy', 'faulty', 'inconclusive')),
    report_json  TEXT
);

CREATE INDEX campaigns_created ON campaigns (created_at);

CREATE TABLE observations (
    nonce    TEXT    NOT NULL,
    agent_id TEXT    NOT NULL,
    peer     TEXT    NOT NULL,
    seen_at  INTEGER NOT NULL,
    uri      TEXT    NOT NULL,
    PRIMARY KEY (nonce, agent_id, peer)
) WITHOUT ROWID;
"#,
];

/// The schema version this binary writes and understands: the number of
/// embedded migrations.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

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
    /// `running`, or the report's status.
    pub status: String,
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
    /// `"sent"`, `"rejected"`, `"finished"` or `"lost"`.
    pub state: String,
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

/// Everything that can go wrong talking to the store.
///
/// A rejected enrollment token is not here: it is an expected answer, see
/// [`TokenRejection`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database itself failed (I/O, constraint, corruption, busy...).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A live (non-revoked) agent already uses this name.
    #[error("an agent named {0:?} is already enrolled")]
    NameTaken(String),
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
    /// Agent labels could not be encoded or a stored label document is corrupt.
    #[error("agent labels are not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A result could not be protobuf-encoded for storage.
    #[error("cannot encode probe result: {0}")]
    Encode(#[from] prost::EncodeError),
    /// A stored result could not be decoded.
    #[error("stored result is damaged: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A thread panicked while holding the connection; its state is not
    /// trusted any more.
    #[error("store lock poisoned by a panicked thread")]
    Poisoned,
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
    /// `"agent"` or `"witness"`; anything else is refused by the database.
    pub role: String,
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
    /// `"agent"` or `"witness"`.
    pub role: String,
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
    /// Bytes of results the agent last reported as spooled locally.
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
    /// `"sent"`, `"rejected"`, `"finished"` or `"lost"`.
    pub state: String,
    /// Why the agent rejected or finished the plan, if it said.
    pub reason: Option<String>,
    /// Results the plan should produce on this agent.
    pub expected: u64,
    /// Results actually stored for this plan from this agent.
    pub stored: u64,
}

/// The coordinator's persistent store. See the module documentation.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

// Callers rely on sharing one store across tokio tasks; fail the build, not
// the deployment, if a field ever breaks that.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
};

/// Column list shared by every agent query, in the order [`read_agent`]
/// expects. A macro rather than a const so it can be `concat!`ed into
/// `'static` SQL that `prepare_cached` can key on without formatting.
macro_rules! agent_select {
    ($tail:literal) => {
        concat!(
            "SELECT agent_id, name, region, labels_json, version, role, cert_sha256, \
             enrolled_at, last_seen, remote_addr, revoked, spool_bytes FROM agents ",
            $tail
        )
    };
}

/// An agent row before its labels are decoded: JSON errors must surface as
/// [`StoreError::Json`], which a rusqlite row closure cannot return.
struct RawAgent {
    record: AgentRecord,
    labels_json: String,
}

impl RawAgent {
    fn decode(self) -> Result<AgentRecord, StoreError> {
        let mut record = self.record;
        record.labels = serde_json::from_str(&self.labels_json)?;
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
            role: row.get(5)?,
            cert_sha256: row.get(6)?,
            enrolled_at_ms: row.get(7)?,
            last_seen_ms: row.get(8)?,
            remote_addr: row.get(9)?,
            revoked: row.get::<_, i64>(10)? != 0,
            spool_bytes: from_db_count(row.get(11)?),
        },
        labels_json: row.get(3)?,
    })
}

/// SQLite integers are signed; counters beyond `i64::MAX` are not meaningful,
/// so saturate rather than fail a write over them.
fn to_db_count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Inverse of [`to_db_count`]; a negative value can only come from outside
/// tampering and reads as zero.
fn from_db_count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn read_user_version(conn: &Connection) -> Result<u32, StoreError> {
    let raw: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    // user_version is a signed 32-bit header field; a negative one was not
    // written by us and is treated as "newer than anything we know".
    Ok(u32::try_from(raw).unwrap_or(u32::MAX))
}

/// Brings `conn` up to [`SCHEMA_VERSION`].
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// Applies the missing migrations up to and including `version`, each in its
/// own transaction that also records the new `user_version`.
///
/// [`Store::open`] always migrates to [`SCHEMA_VERSION`]; this is public so
/// tests and tools can build a database at an older version. A database
/// already at or past `version` is left alone (there are no downgrades), but
/// one newer than [`SCHEMA_VERSION`] is refused with [`StoreError::TooNew`],
/// as is asking for a version this binary does not know.
pub fn migrate_to(conn: &mut Connection, version: u32) -> Result<(), StoreError> {
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    loop {
        // IMMEDIATE takes the write lock before reading the version, so two
        // processes opening the same file cannot both apply a migration.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = read_user_version(&tx)?;
        if current > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found: current,
                supported: SCHEMA_VERSION,
            });
        }
        if current >= version {
            return Ok(());
        }
        // current < version <= SCHEMA_VERSION == MIGRATIONS.len()
        let Some(sql) = usize::try_from(current)
            .ok()
            .and_then(|index| MIGRATIONS.get(index))
        else {
            return Err(StoreError::TooNew {
                found: current,
                supported: SCHEMA_VERSION,
            });
        };
        tx.execute_batch(sql)?;
        let next = current + 1;
        tx.pragma_update(None, "user_version", next)?;
        tx.commit()?;
        tracing::info!(version = next, "applied store migration");
    }
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

fn campaign_from_row(row: &Row<'_>) -> rusqlite::Result<RawCampaign> {
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

fn finish_campaign_row(raw: RawCampaign) -> Result<CampaignRow, StoreError> {
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
        regions: serde_json::from_str(&regions_json)?,
        status,
        report_json,
    })
}

impl Store {
    /// Opens (creating if needed) the database file at `path`, configures it
    /// and migrates it to [`SCHEMA_VERSION`].
    ///
    /// The parent directory must exist.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        Self::setup(conn, true)
    }

    /// Opens a private in-memory database, migrated to [`SCHEMA_VERSION`].
    /// For tests and throwaway runs; nothing survives the `Store`.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()?;
        Self::setup(conn, false)
    }

    fn setup(mut conn: Connection, on_disk: bool) -> Result<Store, StoreError> {
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
        migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let conn = self.lock()?;
        read_user_version(&conn)
    }

    /// Stores a new enrollment token. A duplicate hash is a database
    /// constraint error.
    pub fn insert_token(&self, token: &NewToken) -> Result<(), StoreError> {
        let conn = self.lock()?;
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
    }

    /// Checks the token with this hash and, if it is usable at `now_ms`, uses
    /// it up by one, all in one transaction so concurrent enrollments cannot
    /// overspend it.
    ///
    /// The outer error is a database failure; the inner one is the reason a
    /// valid request was refused.
    pub fn consume_token(
        &self,
        hash: &str,
        now_ms: i64,
    ) -> Result<Result<TokenGrant, TokenRejection>, StoreError> {
        let mut conn = self.lock()?;
        // IMMEDIATE: a deferred read that later upgrades to a write can fail
        // with SQLITE_BUSY without the busy timeout ever applying.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row = tx
            .prepare_cached("SELECT region, expires_at, uses_left FROM tokens WHERE hash = ?1")?
            .query_row([hash], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .optional()?;
        let verdict = match row {
            None => Err(TokenRejection::Unknown),
            Some((_, expires_at, _)) if now_ms >= expires_at => Err(TokenRejection::Expired),
            Some((_, _, uses_left)) if uses_left <= 0 => Err(TokenRejection::UsedUp),
            Some((region, _, _)) => {
                tx.prepare_cached("UPDATE tokens SET uses_left = uses_left - 1 WHERE hash = ?1")?
                    .execute([hash])?;
                Ok(TokenGrant { region })
            }
        };
        tx.commit()?;
        Ok(verdict)
    }

    /// Whether the token with `hash` would be accepted now, without
    /// spending a use: Enroll checks the token before anything else (so an
    /// unauthenticated caller learns nothing about names), and consumes it
    /// with [`Store::consume_token`] only once the request is known good.
    pub fn check_token(
        &self,
        hash: &str,
        now_ms: i64,
    ) -> Result<Result<TokenGrant, TokenRejection>, StoreError> {
        let conn = self.lock()?;
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

    /// Records an agent's renewed certificate: from now on only the
    /// certificate with `cert_sha256` authenticates it (the previous one is
    /// superseded). Returns false for an unknown or revoked agent.
    pub fn set_agent_cert(&self, agent_id: &str, cert_sha256: &str) -> Result<bool, StoreError> {
        let conn = self.lock()?;
        let changed = conn
            .prepare_cached(
                "UPDATE agents SET cert_sha256 = ?2 WHERE agent_id = ?1 AND revoked = 0",
            )?
            .execute([agent_id, cert_sha256])?;
        Ok(changed == 1)
    }

    /// Enrolls an agent.
    ///
    /// A non-revoked agent already using the name is
    /// [`StoreError::NameTaken`]; a revoked one is deleted and replaced in the
    /// same transaction, so a decommissioned name can be reused.
    pub fn insert_agent(&self, agent: &NewAgent) -> Result<(), StoreError> {
        let labels_json = serde_json::to_string(&agent.labels)?;
        let mut conn = self.lock()?;
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
            agent.role,
            agent.cert_sha256,
            agent.enrolled_at_ms
        ])?;
        tx.commit()?;
        Ok(())
    }

    /// Looks an agent up by id.
    pub fn agent_by_id(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let conn = self.lock()?;
        let raw = conn
            .prepare_cached(agent_select!("WHERE agent_id = ?1"))?
            .query_row([agent_id], read_agent)
            .optional()?;
        raw.map(RawAgent::decode).transpose()
    }

    /// Looks an agent up by name.
    pub fn agent_by_name(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        let conn = self.lock()?;
        agent_by_name_in(&conn, name)
    }

    /// Every agent, revoked ones included, ordered by region then name.
    pub fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let conn = self.lock()?;
        let mut stmt = conn.prepare_cached(agent_select!("ORDER BY region, name"))?;
        let rows = stmt.query_map([], read_agent)?;
        let mut agents = Vec::new();
        for raw in rows {
            agents.push(raw?.decode()?);
        }
        Ok(agents)
    }

    /// Marks the named agent revoked and returns its updated record, or
    /// `None` if there is no such agent. Revoking twice is harmless.
    pub fn revoke_agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached("UPDATE agents SET revoked = 1 WHERE name = ?1")?
            .execute([name])?;
        let record = agent_by_name_in(&tx, name)?;
        tx.commit()?;
        Ok(record)
    }

    /// Records what an agent reported when its session started.
    ///
    /// A `remote_addr` of `None` keeps the last known address rather than
    /// forgetting it. An unknown `agent_id` is a no-op.
    pub fn record_seen(
        &self,
        agent_id: &str,
        seen_at_ms: i64,
        remote_addr: Option<&str>,
        version: &str,
        labels: &BTreeMap<String, String>,
        spool_bytes: u64,
    ) -> Result<(), StoreError> {
        let labels_json = serde_json::to_string(labels)?;
        let conn = self.lock()?;
        let changed = conn
            .prepare_cached(
                "UPDATE agents SET last_seen = ?2, remote_addr = COALESCE(?3, remote_addr), \
                 version = ?4, labels_json = ?5, spool_bytes = ?6 WHERE agent_id = ?1",
            )?
            .execute(params![
                agent_id,
                seen_at_ms,
                remote_addr,
                version,
                labels_json,
                to_db_count(spool_bytes)
            ])?;
        if changed == 0 {
            tracing::debug!(agent_id, "record_seen for unknown agent");
        }
        Ok(())
    }

    /// Updates only an agent's last-seen time (heartbeats). An unknown
    /// `agent_id` is a no-op.
    pub fn touch(&self, agent_id: &str, seen_at_ms: i64) -> Result<(), StoreError> {
        let conn = self.lock()?;
        conn.prepare_cached("UPDATE agents SET last_seen = ?2 WHERE agent_id = ?1")?
            .execute(params![agent_id, seen_at_ms])?;
        Ok(())
    }

    /// Stores a plan and, for each `(agent_id, expected_results)`, a
    /// `plan_agents` row in state `"sent"`, in one transaction.
    pub fn insert_plan(
        &self,
        plan_id: &str,
        campaign_id: Option<&str>,
        created_at_ms: i64,
        probes_json: &str,
        agents: &[(String, u64)],
    ) -> Result<(), StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.prepare_cached(
            "INSERT INTO plans (plan_id, campaign_id, created_at, probes_json) \
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![plan_id, campaign_id, created_at_ms, probes_json])?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO plan_agents (plan_id, agent_id, state, reason, expected) \
                 VALUES (?1, ?2, 'sent', NULL, ?3)",
            )?;
            for (agent_id, expected) in agents {
                stmt.execute(params![plan_id, agent_id, to_db_count(*expected)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Sets one agent's state for a plan (`"sent"`, `"rejected"` or
    /// `"finished"`; anything else is a database constraint error). An
    /// unknown `(plan_id, agent_id)` pair is a no-op.
    pub fn set_plan_agent_state(
        &self,
        plan_id: &str,
        agent_id: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let conn = self.lock()?;
        let changed = conn
            .prepare_cached(
                "UPDATE plan_agents SET state = ?3, reason = ?4 \
                 WHERE plan_id = ?1 AND agent_id = ?2",
            )?
            .execute(params![plan_id, agent_id, state, reason])?;
        if changed == 0 {
            tracing::debug!(plan_id, agent_id, "state update for unknown plan agent");
        }
        Ok(())
    }

    /// Which of `plan_ids` were sent to `agent_id` (have a `plan_agents`
    /// row for it, in any state: a plan marked lost is still the agent's to
    /// finish).
    pub fn plans_sent_to(
        &self,
        agent_id: &str,
        plan_ids: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let conn = self.lock()?;
        let mut stmt =
            conn.prepare_cached("SELECT 1 FROM plan_agents WHERE plan_id = ?1 AND agent_id = ?2")?;
        let mut sent = std::collections::HashSet::new();
        for plan_id in plan_ids {
            if stmt
                .query_row(params![plan_id, agent_id], |_| Ok(()))
                .optional()?
                .is_some()
            {
                sent.insert(plan_id.clone());
            }
        }
        Ok(sent)
    }

    /// Marks every plan that `agent_id` has not finished (state `"sent"`) as
    /// `"lost"` with `reason`, because its session ended: without this a plan
    /// whose agent died mid-run would wait in `"sent"` forever. Results that
    /// still arrive are stored as usual, and if the agent comes back and
    /// reports the plan finished, that mark sets `"finished"` again.
    /// Returns how many plans were marked.
    pub fn mark_plans_lost(&self, agent_id: &str, reason: &str) -> Result<u64, StoreError> {
        let conn = self.lock()?;
        let changed = conn
            .prepare_cached(
                "UPDATE plan_agents SET state = 'lost', reason = ?2 \
                 WHERE agent_id = ?1 AND state = 'sent'",
            )?
            .execute(params![agent_id, reason])?;
        Ok(changed as u64)
    }

    /// Per-agent progress of a plan, ordered by agent name, or `None` if the
    /// plan does not exist.
    pub fn plan_status(&self, plan_id: &str) -> Result<Option<Vec<PlanAgentStatus>>, StoreError> {
        let mut conn = self.lock()?;
        // One read transaction so the existence check and the counts see the
        // same snapshot.
        let tx = conn.transaction()?;
        let exists = tx
            .prepare_cached("SELECT 1 FROM plans WHERE plan_id = ?1")?
            .query_row([plan_id], |_| Ok(()))
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
            let rows = stmt.query_map([plan_id], |row| {
                Ok(PlanAgentStatus {
                    agent_id: row.get(0)?,
                    agent_name: row.get(1)?,
                    state: row.get(2)?,
                    reason: row.get(3)?,
                    expected: from_db_count(row.get(4)?),
                    stored: from_db_count(row.get(5)?),
                })
            })?;
            for status in rows {
                statuses.push(status?);
            }
        }
        tx.commit()?;
        Ok(Some(statuses))
    }

    /// Stores results from one or more agents in a single transaction and
    /// returns how many were new.
    ///
    /// Each batch is `(agent_id, results)`; the agent id comes from the
    /// authenticated session, not from the results. A `result_id` already
    /// stored is skipped, so agents can safely replay unacknowledged batches.
    pub fn insert_results(
        &self,
        batches: &[(&str, &[ProbeResult])],
        received_at_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut inserted: u64 = 0;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO results (result_id, plan_id, agent_id, probe_id, \
                 attempt, outcome, status, received_at, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            // One encode buffer for the whole call keeps the hot path free of
            // per-row allocations once it has grown to the largest result.
            let mut body = Vec::new();
            for (agent_id, results) in batches {
                for result in *results {
                    body.clear();
                    result.encode(&mut body)?;
                    let changed = stmt.execute(params![
                        result.result_id,
                        result.plan_id,
                        agent_id,
                        result.probe_id,
                        i64::from(result.attempt),
                        result.outcome,
                        i64::from(result.status),
                        received_at_ms,
                        body.as_slice()
                    ])?;
                    // usize -> u64 is lossless on every supported target.
                    inserted += changed as u64;
                }
            }
        }
        tx.commit()?;
        Ok(inserted)
    }

    /// Records a campaign as running.
    pub fn insert_campaign(
        &self,
        campaign_id: &str,
        created_at_ms: i64,
        target_json: &str,
        regions: &[String],
    ) -> Result<(), StoreError> {
        let regions_json = serde_json::to_string(regions)?;
        let conn = self.lock()?;
        conn.prepare_cached(
            "INSERT INTO campaigns (campaign_id, created_at, target_json, regions_json, status) \
             VALUES (?1, ?2, ?3, ?4, 'running')",
        )?
        .execute(params![
            campaign_id,
            created_at_ms,
            target_json,
            regions_json
        ])?;
        Ok(())
    }

    /// Stores a campaign's report and final status.
    pub fn finish_campaign(
        &self,
        campaign_id: &str,
        finished_at_ms: i64,
        status: &str,
        report_json: &str,
    ) -> Result<(), StoreError> {
        let conn = self.lock()?;
        conn.prepare_cached(
            "UPDATE campaigns SET finished_at = ?2, status = ?3, report_json = ?4 WHERE campaign_id = ?1",
        )?
        .execute(params![campaign_id, finished_at_ms, status, report_json])?;
        Ok(())
    }

    /// One campaign.
    pub fn campaign(&self, campaign_id: &str) -> Result<Option<CampaignRow>, StoreError> {
        let conn = self.lock()?;
        let row = conn
            .prepare_cached(
                "SELECT campaign_id, created_at, finished_at, target_json, regions_json, status, report_json \
                 FROM campaigns WHERE campaign_id = ?1",
            )?
            .query_row([campaign_id], campaign_from_row)
            .optional()?;
        row.map(finish_campaign_row).transpose()
    }

    /// The newest `limit` campaigns, newest first.
    pub fn list_campaigns(&self, limit: u32) -> Result<Vec<CampaignRow>, StoreError> {
        let conn = self.lock()?;
        let mut statement = conn.prepare_cached(
            "SELECT campaign_id, created_at, finished_at, target_json, regions_json, status, report_json \
             FROM campaigns ORDER BY created_at DESC, campaign_id LIMIT ?1",
        )?;
        let rows = statement.query_map([limit], campaign_from_row)?;
        rows.map(|row| finish_campaign_row(row?)).collect()
    }

    /// Campaigns still marked `running`: at start-up, the ones a previous
    /// coordinator process never finished.
    pub fn running_campaigns(&self) -> Result<Vec<CampaignRow>, StoreError> {
        let conn = self.lock()?;
        let mut statement = conn.prepare_cached(
            "SELECT campaign_id, created_at, finished_at, target_json, regions_json, status, report_json \
             FROM campaigns WHERE status = 'running' ORDER BY created_at, campaign_id",
        )?;
        let rows = statement.query_map([], campaign_from_row)?;
        rows.map(|row| finish_campaign_row(row?)).collect()
    }

    /// Every (plan, agent) of a campaign, with the agent's name and region
    /// when its row still exists, ordered by plan creation.
    pub fn campaign_plan_agents(
        &self,
        campaign_id: &str,
    ) -> Result<Vec<CampaignPlanAgent>, StoreError> {
        let conn = self.lock()?;
        let mut statement = conn.prepare_cached(
            "SELECT pa.plan_id, pa.agent_id, a.name, a.region, pa.state, pa.reason \
             FROM plans p JOIN plan_agents pa ON pa.plan_id = p.plan_id \
             LEFT JOIN agents a ON a.agent_id = pa.agent_id \
             WHERE p.campaign_id = ?1 ORDER BY p.created_at, pa.plan_id, pa.agent_id",
        )?;
        let rows = statement.query_map([campaign_id], |row| {
            let agent_id: String = row.get(1)?;
            Ok(CampaignPlanAgent {
                plan_id: row.get(0)?,
                agent_name: row
                    .get::<_, Option<String>>(2)?
                    .unwrap_or_else(|| agent_id.clone()),
                region: row.get(3)?,
                agent_id,
                state: row.get(4)?,
                reason: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores witness sightings; a repeated sighting is stored once.
    pub fn insert_sightings(
        &self,
        agent_id: &str,
        sightings: &[Sighting],
    ) -> Result<u64, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut inserted = 0u64;
        {
            let mut statement = tx.prepare_cached(
                "INSERT OR IGNORE INTO observations (nonce, agent_id, peer, seen_at, uri) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for s in sightings {
                inserted +=
                    statement.execute(params![s.nonce, agent_id, s.peer, s.seen_at_ms, s.uri])?
                        as u64;
            }
        }
        tx.commit()?;
        Ok(inserted)
    }

    /// Sightings of nonces that start with `prefix` (a campaign's nonces share one).
    pub fn sightings_with_prefix(&self, prefix: &str) -> Result<Vec<Sighting>, StoreError> {
        // GLOB is case-sensitive and can use the primary key; escape its metacharacters.
        let pattern: String = prefix
            .chars()
            .flat_map(|c| match c {
                '*' | '?' | '[' => vec!['[', c, ']'],
                _ => vec![c],
            })
            .chain(std::iter::once('*'))
            .collect();
        let conn = self.lock()?;
        let mut statement = conn.prepare_cached(
            "SELECT nonce, peer, seen_at, uri FROM observations WHERE nonce GLOB ?1 ORDER BY seen_at",
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
    }

    /// Every stored result of a plan with the id of the agent that sent it,
    /// decoded, in the order received.
    pub fn results_for_plan(
        &self,
        plan_id: &str,
    ) -> Result<Vec<(String, ProbeResult)>, StoreError> {
        let conn = self.lock()?;
        let mut statement = conn.prepare_cached(
            "SELECT agent_id, body FROM results WHERE plan_id = ?1 ORDER BY rowid",
        )?;
        let rows = statement.query_map([plan_id], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
        })?;
        let mut results = Vec::new();
        for row in rows {
            let (agent_id, body) = row?;
            results.push((agent_id, ProbeResult::decode(body.as_slice())?));
        }
        Ok(results)
    }

    /// Number of results stored for a plan, across all agents.
    pub fn count_results(&self, plan_id: &str) -> Result<u64, StoreError> {
        let conn = self.lock()?;
        let count: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM results WHERE plan_id = ?1")?
            .query_row([plan_id], |row| row.get(0))?;
        Ok(from_db_count(count))
    }

    /// Number of results stored in total.
    pub fn count_all_results(&self) -> Result<u64, StoreError> {
        let conn = self.lock()?;
        let count: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM results")?
            .query_row([], |row| row.get(0))?;
        Ok(from_db_count(count))
    }
}

fn agent_by_name_in(conn: &Connection, name: &str) -> Result<Option<AgentRecord>, StoreError> {
    let raw = conn
        .prepare_cached(agent_select!("WHERE name = ?1"))?
        .query_row([name], read_agent)
        .optional()?;
    raw.map(RawAgent::decode).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn new_agent(agent_id: &str, name: &str, region: &str) -> NewAgent {
        NewAgent {
            agent_id: agent_id.to_owned(),
            name: name.to_owned(),
            region: region.to_owned(),
            labels: labels(&[("asn", "64500")]),
            version: "0.1.0".to_owned(),
            role: "agent".to_owned(),
            cert_sha256: format!("cert-{agent_id}"),
            enrolled_at_ms: 1_000,
        }
    }

    fn token(hash: &str, uses: u32) -> NewToken {
        NewToken {
            hash: hash.to_owned(),
            region: "eu-west".to_owned(),
            created_at_ms: 1_000,
            expires_at_ms: 10_000,
            uses,
        }
    }

    fn result(plan_id: &str, n: usize) -> ProbeResult {
        ProbeResult {
            result_id: format!("{plan_id}-r{n}"),
            plan_id: plan_id.to_owned(),
            probe_id: format!("probe-{}", n % 7),
            attempt: 1,
            outcome: 1,
            status: 200,
            url: "https://example.test/".to_owned(),
            body_head: vec![0xab; 64],
            ..ProbeResult::default()
        }
    }

    fn results(plan_id: &str, range: std::ops::Range<usize>) -> Vec<ProbeResult> {
        range.map(|n| result(plan_id, n)).collect()
    }

    fn table_names(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        stmt.query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn schema_version_matches_migrations() {
        assert_eq!(SCHEMA_VERSION, 3);
        assert_eq!(SCHEMA_VERSION as usize, MIGRATIONS.len());
    }

    #[test]
    fn migrates_empty_database_to_current_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(read_user_version(&conn).unwrap(), 0);
        migrate(&mut conn).unwrap();
        assert_eq!(read_user_version(&conn).unwrap(), SCHEMA_VERSION);
        assert_eq!(
            table_names(&conn),
            [
                "agents",
                "campaigns",
                "observations",
                "plan_agents",
                "plans",
                "results",
                "tokens"
            ]
        );
        // Running again finds nothing to do.
        migrate(&mut conn).unwrap();
        assert_eq!(read_user_version(&conn).unwrap(), SCHEMA_VERSION);

        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn migrate_to_stops_at_requested_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate_to(&mut conn, 1).unwrap();
        assert_eq!(read_user_version(&conn).unwrap(), 1);
        assert_eq!(table_names(&conn), ["agents", "tokens"]);
        // No downgrades: asking for less than what is there is a no-op.
        migrate_to(&mut conn, 0).unwrap();
        assert_eq!(read_user_version(&conn).unwrap(), 1);
        assert!(matches!(
            migrate_to(&mut conn, SCHEMA_VERSION + 1),
            Err(StoreError::TooNew { found, supported })
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION
        ));
        assert_eq!(read_user_version(&conn).unwrap(), 1);
    }

    #[test]
    fn open_upgrades_version_1_database_and_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vantage.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            migrate_to(&mut conn, 1).unwrap();
            conn.execute(
                "INSERT INTO tokens (hash, region, created_at, expires_at, uses_left) \
                 VALUES ('tokhash', 'us-east', 1, 10000, 1)",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO agents (agent_id, name, region, labels_json, version, role, \
                 cert_sha256, enrolled_at) \
                 VALUES ('a-1', 'nyc-1', 'us-east', '{\"k\":\"v\"}', '0.0.9', 'witness', 'c', 5)",
                [],
            )
            .unwrap();
        }

        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), 3);
        let agent = store.agent_by_name("nyc-1").unwrap().unwrap();
        assert_eq!(agent.agent_id, "a-1");
        assert_eq!(agent.role, "witness");
        assert_eq!(agent.labels, labels(&[("k", "v")]));
        assert_eq!(agent.spool_bytes, 0);
        assert!(!agent.revoked);
        assert_eq!(
            store.consume_token("tokhash", 100).unwrap(),
            Ok(TokenGrant {
                region: "us-east".to_owned()
            })
        );
        // The new tables work.
        store
            .insert_plan("p", None, 1, "[]", &[("a-1".to_owned(), 1)])
            .unwrap();
        assert_eq!(
            store
                .insert_results(&[("a-1", &results("p", 0..1))], 2)
                .unwrap(),
            1
        );
        drop(store);

        // Reopening an up-to-date database changes nothing.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), 3);
        assert_eq!(store.count_all_results().unwrap(), 1);
    }

    #[test]
    fn open_refuses_database_from_the_future() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("future.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        match Store::open(&path) {
            Err(StoreError::TooNew { found, supported }) => {
                assert_eq!(found, 99);
                assert_eq!(supported, SCHEMA_VERSION);
            }
            other => panic!("expected TooNew, got {other:?}"),
        }
        let conn = Connection::open(&path).unwrap();
        assert_eq!(read_user_version(&conn).unwrap(), 99);
        assert!(table_names(&conn).is_empty());
    }

    #[test]
    fn open_configures_connection() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p.db")).unwrap();
        let conn = store.lock().unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
        let busy: i64 = conn
            .pragma_query_value(None, "busy_timeout", |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 5_000);
    }

    #[test]
    fn consume_token_unknown_expired_and_used_up() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(
            store.consume_token("nope", 2_000).unwrap(),
            Err(TokenRejection::Unknown)
        );

        store.insert_token(&token("twice", 2)).unwrap();
        let grant = Ok(TokenGrant {
            region: "eu-west".to_owned(),
        });
        assert_eq!(store.consume_token("twice", 2_000).unwrap(), grant);
        assert_eq!(store.consume_token("twice", 2_001).unwrap(), grant);
        assert_eq!(
            store.consume_token("twice", 2_002).unwrap(),
            Err(TokenRejection::UsedUp)
        );
        assert_eq!(
            store.consume_token("twice", 2_003).unwrap(),
            Err(TokenRejection::UsedUp)
        );

        store.insert_token(&token("old", 5)).unwrap();
        assert_eq!(
            store.consume_token("old", 10_000).unwrap(),
            Err(TokenRejection::Expired),
            "expiry is exclusive"
        );
        assert_eq!(store.consume_token("old", 9_999).unwrap(), grant);

        store.insert_token(&token("zero", 0)).unwrap();
        assert_eq!(
            store.consume_token("zero", 2_000).unwrap(),
            Err(TokenRejection::UsedUp)
        );

        // Duplicate hashes are a database error, not a panic.
        assert!(matches!(
            store.insert_token(&token("zero", 1)),
            Err(StoreError::Sqlite(_))
        ));
    }

    #[test]
    fn check_token_spends_nothing_and_set_agent_cert_supersedes() {
        let store = Store::open_in_memory().unwrap();
        store.insert_token(&token("once", 1)).unwrap();
        let grant = Ok(TokenGrant {
            region: "eu-west".to_owned(),
        });
        assert_eq!(store.check_token("once", 2_000).unwrap(), grant);
        assert_eq!(store.check_token("once", 2_000).unwrap(), grant);
        assert_eq!(store.consume_token("once", 2_000).unwrap(), grant);
        assert_eq!(
            store.check_token("once", 2_000).unwrap(),
            Err(TokenRejection::UsedUp)
        );
        assert_eq!(
            store.check_token("nope", 2_000).unwrap(),
            Err(TokenRejection::Unknown)
        );

        store
            .insert_agent(&new_agent("a-1", "ams-1", "eu"))
            .unwrap();
        assert!(store.set_agent_cert("a-1", "renewed").unwrap());
        let record = store.agent_by_id("a-1").unwrap().unwrap();
        assert_eq!(record.cert_sha256, "renewed");
        assert!(!store.set_agent_cert("missing", "x").unwrap());
        store.revoke_agent("ams-1").unwrap();
        assert!(!store.set_agent_cert("a-1", "again").unwrap());
    }

    #[test]
    fn insert_agent_name_taken_and_replacing_revoked() {
        let store = Store::open_in_memory().unwrap();
        store
            .insert_agent(&new_agent("a-1", "ams-1", "eu"))
            .unwrap();

        match store.insert_agent(&new_agent("a-2", "ams-1", "eu")) {
            Err(StoreError::NameTaken(name)) => assert_eq!(name, "ams-1"),
            other => panic!("expected NameTaken, got {other:?}"),
        }
        assert!(store.agent_by_id("a-2").unwrap().is_none());

        store.revoke_agent("ams-1").unwrap().unwrap();
        store
            .insert_agent(&new_agent("a-2", "ams-1", "eu"))
            .unwrap();
        assert!(store.agent_by_id("a-1").unwrap().is_none());
        let replaced = store.agent_by_name("ams-1").unwrap().unwrap();
        assert_eq!(replaced.agent_id, "a-2");
        assert!(!replaced.revoked);
        assert_eq!(replaced.last_seen_ms, None);
        assert_eq!(store.list_agents().unwrap().len(), 1);

        // Bad input surfaces as an error.
        let mut bad = new_agent("a-3", "ams-3", "eu");
        bad.role = "admin".to_owned();
        assert!(matches!(
            store.insert_agent(&bad),
            Err(StoreError::Sqlite(_))
        ));
        let dup_id = new_agent("a-2", "ams-4", "eu");
        assert!(matches!(
            store.insert_agent(&dup_id),
            Err(StoreError::Sqlite(_))
        ));
    }

    #[test]
    fn revoke_agent() {
        let store = Store::open_in_memory().unwrap();
        assert!(store.revoke_agent("ghost").unwrap().is_none());
        store
            .insert_agent(&new_agent("a-1", "fra-1", "eu"))
            .unwrap();
        let revoked = store.revoke_agent("fra-1").unwrap().unwrap();
        assert!(revoked.revoked);
        assert_eq!(revoked.agent_id, "a-1");
        assert!(store.agent_by_id("a-1").unwrap().unwrap().revoked);
        // Idempotent.
        assert!(store.revoke_agent("fra-1").unwrap().unwrap().revoked);
    }

    #[test]
    fn record_seen_touch_and_list() {
        let store = Store::open_in_memory().unwrap();
        store
            .insert_agent(&new_agent("a-3", "zrh-1", "eu"))
            .unwrap();
        store
            .insert_agent(&new_agent("a-1", "sfo-1", "us"))
            .unwrap();
        store
            .insert_agent(&new_agent("a-2", "ams-1", "eu"))
            .unwrap();

        let new_labels = labels(&[("isp", "example"), ("tier", "2")]);
        store
            .record_seen(
                "a-1",
                5_000,
                Some("192.0.2.1:4433"),
                "0.2.0",
                &new_labels,
                1 << 20,
            )
            .unwrap();
        let seen = store.agent_by_id("a-1").unwrap().unwrap();
        assert_eq!(seen.last_seen_ms, Some(5_000));
        assert_eq!(seen.remote_addr.as_deref(), Some("192.0.2.1:4433"));
        assert_eq!(seen.version, "0.2.0");
        assert_eq!(seen.labels, new_labels);
        assert_eq!(seen.spool_bytes, 1 << 20);

        // None keeps the last known address; spool beyond i64 saturates.
        store
            .record_seen("a-1", 6_000, None, "0.2.1", &BTreeMap::new(), u64::MAX)
            .unwrap();
        let seen = store.agent_by_id("a-1").unwrap().unwrap();
        assert_eq!(seen.remote_addr.as_deref(), Some("192.0.2.1:4433"));
        assert!(seen.labels.is_empty());
        assert_eq!(seen.spool_bytes, i64::MAX as u64);

        store.touch("a-1", 7_000).unwrap();
        let touched = store.agent_by_id("a-1").unwrap().unwrap();
        assert_eq!(touched.last_seen_ms, Some(7_000));
        assert_eq!(touched.version, "0.2.1");

        // Unknown agents are no-ops.
        store
            .record_seen("ghost", 1, None, "x", &BTreeMap::new(), 0)
            .unwrap();
        store.touch("ghost", 1).unwrap();

        let names: Vec<_> = store
            .list_agents()
            .unwrap()
            .into_iter()
            .map(|a| (a.region, a.name))
            .collect();
        assert_eq!(
            names,
            [
                ("eu".to_owned(), "ams-1".to_owned()),
                ("eu".to_owned(), "zrh-1".to_owned()),
                ("us".to_owned(), "sfo-1".to_owned()),
            ]
        );
    }

    #[test]
    fn corrupt_labels_are_an_error() {
        let store = Store::open_in_memory().unwrap();
        store.insert_agent(&new_agent("a-1", "x", "eu")).unwrap();
        store
            .lock()
            .unwrap()
            .execute("UPDATE agents SET labels_json = 'not json'", [])
            .unwrap();
        assert!(matches!(store.agent_by_id("a-1"), Err(StoreError::Json(_))));
        assert!(matches!(store.list_agents(), Err(StoreError::Json(_))));
    }

    #[test]
    fn insert_results_is_idempotent_and_plan_status_counts() {
        let store = Store::open_in_memory().unwrap();
        store
            .insert_agent(&new_agent("a-1", "ams-1", "eu"))
            .unwrap();
        store
            .insert_agent(&new_agent("a-2", "fra-1", "eu"))
            .unwrap();
        store
            .insert_plan(
                "p1",
                Some("c1"),
                1_000,
                r#"[{"probe_id":"x"}]"#,
                &[("a-1".to_owned(), 120), ("a-2".to_owned(), 50)],
            )
            .unwrap();

        let batch = results("p1", 0..100);
        assert_eq!(
            store.insert_results(&[("a-1", &batch)], 2_000).unwrap(),
            100
        );
        assert_eq!(store.insert_results(&[("a-1", &batch)], 3_000).unwrap(), 0);
        assert_eq!(store.count_results("p1").unwrap(), 100);
        assert_eq!(store.count_all_results().unwrap(), 100);

        store
            .set_plan_agent_state("p1", "a-2", "rejected", Some("busy"))
            .unwrap();
        let status = store.plan_status("p1").unwrap().unwrap();
        assert_eq!(
            status,
            [
                PlanAgentStatus {
                    agent_id: "a-1".to_owned(),
                    agent_name: "ams-1".to_owned(),
                    state: "sent".to_owned(),
                    reason: None,
                    expected: 120,
                    stored: 100,
                },
                PlanAgentStatus {
                    agent_id: "a-2".to_owned(),
                    agent_name: "fra-1".to_owned(),
                    state: "rejected".to_owned(),
                    reason: Some("busy".to_owned()),
                    expected: 50,
                    stored: 0,
                },
            ]
        );

        // The stored body round-trips to the original message.
        let body: Vec<u8> = store
            .lock()
            .unwrap()
            .query_row(
                "SELECT body FROM results WHERE result_id = 'p1-r7'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(ProbeResult::decode(body.as_slice()).unwrap(), batch[7]);
    }

    #[test]
    fn an_ended_session_marks_only_unfinished_plans_lost() {
        let store = Store::open_in_memory().unwrap();
        for id in ["running", "done", "refused"] {
            store
                .insert_plan(id, None, 1_000, "[]", &[("a-1".to_owned(), 1)])
                .unwrap();
        }
        store
            .insert_plan("other", None, 1_000, "[]", &[("a-2".to_owned(), 1)])
            .unwrap();
        store
            .set_plan_agent_state("done", "a-1", "finished", None)
            .unwrap();
        store
            .set_plan_agent_state("refused", "a-1", "rejected", Some("full"))
            .unwrap();

        assert_eq!(store.mark_plans_lost("a-1", "gone").unwrap(), 1);
        let state = |id: &str| {
            let row = &store.plan_status(id).unwrap().unwrap()[0];
            (row.state.clone(), row.reason.clone())
        };
        assert_eq!(state("running"), ("lost".into(), Some("gone".into())));
        assert_eq!(state("done"), ("finished".into(), None));
        assert_eq!(state("refused"), ("rejected".into(), Some("full".into())));
        assert_eq!(
            state("other"),
            ("sent".into(), None),
            "another agent's plan"
        );
        // The agent came back and finished after all: its mark wins.
        store
            .set_plan_agent_state("running", "a-1", "finished", None)
            .unwrap();
        assert_eq!(state("running"), ("finished".into(), None));
        assert_eq!(store.mark_plans_lost("a-1", "gone").unwrap(), 0);
    }

    #[test]
    fn results_for_two_agents_in_one_call() {
        let store = Store::open_in_memory().unwrap();
        store
            .insert_agent(&new_agent("a-1", "ams-1", "eu"))
            .unwrap();
        store
            .insert_agent(&new_agent("a-2", "fra-1", "eu"))
            .unwrap();
        store
            .insert_plan(
                "p1",
                None,
                1,
                "[]",
                &[("a-1".to_owned(), 10), ("a-2".to_owned(), 10)],
            )
            .unwrap();
        let first = results("p1", 0..10);
        let second = results("p1", 10..16);
        // A partial replay of the first batch mixed with new rows.
        let replay = results("p1", 8..12);
        assert_eq!(
            store
                .insert_results(&[("a-1", &first), ("a-2", &second)], 5)
                .unwrap(),
            16
        );
        assert_eq!(store.insert_results(&[("a-1", &replay)], 6).unwrap(), 0);
        assert_eq!(store.insert_results(&[], 7).unwrap(), 0);
        let status = store.plan_status("p1").unwrap().unwrap();
        let stored: Vec<_> = status
            .iter()
            .map(|s| (s.agent_id.as_str(), s.stored))
            .collect();
        assert_eq!(stored, [("a-1", 10), ("a-2", 6)]);
        assert_eq!(store.count_results("p1").unwrap(), 16);
        assert_eq!(store.count_results("other").unwrap(), 0);
    }

    #[test]
    fn plan_status_edge_cases() {
        let store = Store::open_in_memory().unwrap();
        assert!(store.plan_status("missing").unwrap().is_none());

        store.insert_plan("empty", None, 1, "[]", &[]).unwrap();
        assert_eq!(store.plan_status("empty").unwrap(), Some(vec![]));

        // An agent whose row is gone (replaced after revocation) still shows,
        // by id.
        store
            .insert_agent(&new_agent("a-1", "ams-1", "eu"))
            .unwrap();
        store
            .insert_plan("p", None, 1, "[]", &[("a-1".to_owned(), 3)])
            .unwrap();
        store.revoke_agent("ams-1").unwrap();
        store
            .insert_agent(&new_agent("a-9", "ams-1", "eu"))
            .unwrap();
        let status = store.plan_status("p").unwrap().unwrap();
        assert_eq!(status[0].agent_name, "a-1");

        store
            .set_plan_agent_state("p", "a-1", "finished", None)
            .unwrap();
        assert_eq!(
            store.plan_status("p").unwrap().unwrap()[0].state,
            "finished"
        );
        // Unknown pair is a no-op; an unknown state is an error.
        store
            .set_plan_agent_state("p", "nobody", "finished", None)
            .unwrap();
        assert!(matches!(
            store.set_plan_agent_state("p", "a-1", "exploded", None),
            Err(StoreError::Sqlite(_))
        ));
        // Duplicate plan ids are an error and leave the original intact.
        assert!(store.insert_plan("p", None, 2, "[]", &[]).is_err());
        assert_eq!(store.plan_status("p").unwrap().unwrap().len(), 1);
        // A failed plan insert (duplicate agent) rolls back entirely.
        assert!(store
            .insert_plan(
                "q",
                None,
                1,
                "[]",
                &[("a-9".to_owned(), 1), ("a-9".to_owned(), 1)]
            )
            .is_err());
        assert!(store.plan_status("q").unwrap().is_none());
    }

    #[test]
    fn shared_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("t.db")).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let agent = format!("a-{t}");
                    let mut total = 0;
                    for chunk in 0..5 {
                        let batch = results(&format!("p-{t}"), chunk * 50..chunk * 50 + 50);
                        total += store.insert_results(&[(&agent, &batch)], 1).unwrap();
                    }
                    total
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 1_000);
        assert_eq!(store.count_all_results().unwrap(), 1_000);
    }

    #[test]
    fn poisoned_lock_is_an_error() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let poisoner = Arc::clone(&store);
        let joined = std::thread::spawn(move || {
            let _guard = poisoner.conn.lock().unwrap();
            panic!("poison the store lock");
        })
        .join();
        assert!(joined.is_err());
        assert!(matches!(
            store.count_all_results(),
            Err(StoreError::Poisoned)
        ));
    }

    #[test]
    fn campaigns_round_trip_and_list_newest_first() {
        let store = Store::open_in_memory().unwrap();
        let regions = vec!["eu".to_string(), "us".to_string()];
        store
            .insert_campaign("c1", 10, "{\"url\":\"http://a/\"}", &regions)
            .unwrap();
        store
            .insert_campaign("c2", 20, "{}", &regions[..1])
            .unwrap();
        let running = store.campaign("c1").unwrap().unwrap();
        assert_eq!(running.status, "running");
        assert_eq!(running.regions, regions);
        assert!(running.report_json.is_none());
        store
            .finish_campaign("c1", 15, "faulty", "{\"schema\":\"vantage.report.v1\"}")
            .unwrap();
        let done = store.campaign("c1").unwrap().unwrap();
        assert_eq!(
            (done.status.as_str(), done.finished_at_ms),
            ("faulty", Some(15))
        );
        assert!(done.report_json.unwrap().contains("vantage.report.v1"));
        let listed: Vec<String> = store
            .list_campaigns(10)
            .unwrap()
            .into_iter()
            .map(|c| c.campaign_id)
            .collect();
        assert_eq!(listed, ["c2", "c1"]);
        assert!(store.campaign("nope").unwrap().is_none());
        assert!(
            store.finish_campaign("c2", 30, "bogus", "{}").is_err(),
            "status is constrained"
        );
    }

    #[test]
    fn sightings_are_idempotent_and_found_by_prefix() {
        let store = Store::open_in_memory().unwrap();
        let sighting = |nonce: &str, peer: &str| Sighting {
            nonce: nonce.into(),
            peer: peer.into(),
            seen_at_ms: 7,
            uri: format!("/x?__vantage={nonce}"),
        };
        let batch = vec![
            sighting("abc-eu-0-1-0", "192.0.2.1"),
            sighting("abc-us-3-1-0", "192.0.2.2"),
            sighting("zzz-eu-0-1-0", "192.0.2.1"),
        ];
        assert_eq!(store.insert_sightings("w1", &batch).unwrap(), 3);
        assert_eq!(
            store.insert_sightings("w1", &batch).unwrap(),
            0,
            "replays are stored once"
        );
        let found = store.sightings_with_prefix("abc-").unwrap();
        assert_eq!(found.len(), 2);
        assert!(
            store.sightings_with_prefix("a*").unwrap().is_empty(),
            "GLOB metacharacters are literal"
        );
    }
}
