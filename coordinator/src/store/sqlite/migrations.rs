//! The SQLite schema: the embedded, append-only migrations and the code that
//! applies them, versioned with `PRAGMA user_version` and run when a
//! [`SqliteStore`](super::SqliteStore) is opened.
//!
//! Part of the SQLite backend; nothing outside `store::sqlite` uses it
//! except tests and tools that build a database at an older version.

use rusqlite::{Connection, TransactionBehavior};

use crate::store::StoreError;

/// Embedded schema migrations, applied in order. Entry `i` moves the schema
/// from version `i` to version `i + 1`.
///
/// Append only: a released entry must never change, because databases in the
/// field have already run it and only remember its number.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 4: sweeps (issue #11): their definitions, every slot's run (a run is
    // a campaign; a missed slot has none), the confirmed-alert state per
    // (sweep, code, kind), and the webhook outbox. UNIQUE (sweep, slot_ms)
    // makes a slot run at most once, whoever tries to start it twice.
    r#"
CREATE TABLE sweeps (
    name            TEXT    PRIMARY KEY NOT NULL,
    definition_json TEXT    NOT NULL,
    paused          INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_slot       INTEGER
);

CREATE TABLE sweep_runs (
    run_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep         TEXT    NOT NULL REFERENCES sweeps (name) ON DELETE CASCADE,
    slot_ms       INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    status        TEXT    NOT NULL
        CHECK (status IN ('running', 'healthy', 'faulty', 'inconclusive', 'missed')),
    campaign_id   TEXT,
    findings_json TEXT    NOT NULL DEFAULT '[]',
    reason        TEXT,
    UNIQUE (sweep, slot_ms)
);

CREATE INDEX sweep_runs_status ON sweep_runs (status) WHERE status = 'running';
CREATE INDEX sweep_runs_finished ON sweep_runs (finished_at);

CREATE TABLE alerts (
    sweep          TEXT    NOT NULL REFERENCES sweeps (name) ON DELETE CASCADE,
    code           TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    open           INTEGER NOT NULL CHECK (open IN (0, 1)),
    streak         INTEGER NOT NULL DEFAULT 0,
    clean          INTEGER NOT NULL DEFAULT 0,
    regions_json   TEXT    NOT NULL DEFAULT '[]',
    opened_at      INTEGER,
    resolved_at    INTEGER,
    updated_at     INTEGER NOT NULL,
    summary        TEXT    NOT NULL DEFAULT '',
    campaign_id    TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (sweep, code, kind)
) WITHOUT ROWID;

CREATE TABLE deliveries (
    event_id     TEXT    NOT NULL,
    url          TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      INTEGER NOT NULL,
    delivered_at INTEGER,
    last_error   TEXT,
    PRIMARY KEY (event_id, url)
) WITHOUT ROWID;

CREATE INDEX deliveries_due ON deliveries (next_at) WHERE delivered_at IS NULL;
"#,
    // 5: what the coordinators of one installation share (issue #13): its
    // secrets, sealed by the coordinators (the store never sees them in
    // clear), and who is alive. A single SQLite coordinator keeps its
    // secrets in the data dir and only ever lists itself.
    r#"
CREATE TABLE installation (
    name       TEXT    PRIMARY KEY NOT NULL,
    sealed     BLOB    NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE coordinators (
    coordinator_id TEXT    PRIMARY KEY NOT NULL,
    addrs_json     TEXT    NOT NULL,
    started_at     INTEGER NOT NULL,
    heartbeat_at   INTEGER NOT NULL
) WITHOUT ROWID;

-- Who runs a running campaign or sweep run: a coordinator that finds the
-- owner gone (not among the live coordinators) adopts and finishes it.
ALTER TABLE campaigns ADD COLUMN coordinator_id TEXT;
ALTER TABLE sweep_runs ADD COLUMN coordinator_id TEXT;

-- Which coordinator holds an agent's session, and the mailbox through which
-- one coordinator reaches the agents (plans, cancels) and the campaigns
-- (their agents' events) of another.
ALTER TABLE agents ADD COLUMN coordinator_id TEXT;

CREATE TABLE mailbox (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    coordinator_id TEXT    NOT NULL,
    sender         TEXT    NOT NULL,
    agent_id       TEXT,
    body           BLOB    NOT NULL
);

CREATE INDEX mailbox_to ON mailbox (coordinator_id, seq);
"#,
];

/// The schema version this binary writes and understands: the number of
/// embedded migrations.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The `user_version` recorded in the database.
pub fn read_user_version(conn: &Connection) -> Result<u32, StoreError> {
    let raw: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    // user_version is a signed 32-bit header field; a negative one was not
    // written by us and is treated as "newer than anything we know".
    Ok(u32::try_from(raw).unwrap_or(u32::MAX))
}

/// Brings `conn` up to [`SCHEMA_VERSION`].
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// Applies the missing migrations up to and including `version`, each in its
/// own transaction that also records the new `user_version`.
///
/// [`SqliteStore::open`](super::SqliteStore::open) always migrates to [`SCHEMA_VERSION`]; this is public so
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{conformance, SqliteStore};
    use crate::store::{AgentRole, NewPlan, Store, TokenGrant};

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
        assert_eq!(SCHEMA_VERSION, 5);
        assert_eq!(SCHEMA_VERSION as usize, MIGRATIONS.len());
    }

    #[tokio::test]
    async fn migrates_empty_database_to_current_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(read_user_version(&conn).unwrap(), 0);
        migrate(&mut conn).unwrap();
        assert_eq!(read_user_version(&conn).unwrap(), SCHEMA_VERSION);
        assert_eq!(
            table_names(&conn),
            [
                "agents",
                "alerts",
                "campaigns",
                "coordinators",
                "deliveries",
                "installation",
                "mailbox",
                "observations",
                "plan_agents",
                "plans",
                "results",
                "sqlite_sequence",
                "sweep_runs",
                "sweeps",
                "tokens"
            ]
        );
        // Running again finds nothing to do.
        migrate(&mut conn).unwrap();
        assert_eq!(read_user_version(&conn).unwrap(), SCHEMA_VERSION);

        let store = SqliteStore::open_in_memory().unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
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

    #[tokio::test]
    async fn open_upgrades_version_1_database_and_keeps_data() {
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

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        let agent = store.agent_by_name("nyc-1").await.unwrap().unwrap();
        assert_eq!(agent.agent_id, "a-1");
        assert_eq!(agent.role, AgentRole::Witness);
        assert_eq!(
            agent.labels,
            [("k".to_owned(), "v".to_owned())].into_iter().collect()
        );
        assert_eq!(agent.spool_bytes, 0);
        assert!(!agent.revoked);
        assert_eq!(
            store.consume_token("tokhash", 100).await.unwrap(),
            Ok(TokenGrant {
                region: "us-east".to_owned()
            })
        );
        // The new tables work.
        store
            .insert_plan(NewPlan {
                plan_id: "p".into(),
                campaign_id: None,
                created_at_ms: 1,
                probes_json: "[]".into(),
                agents: vec![("a-1".to_owned(), 1)],
            })
            .await
            .unwrap();
        assert_eq!(
            store
                .insert_results(conformance::results("a-1", "p", 0..1), 2)
                .await
                .unwrap(),
            1
        );
        drop(store);

        // Reopening an up-to-date database changes nothing.
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        assert_eq!(store.count_all_results().await.unwrap(), 1);
    }

    #[test]
    fn open_refuses_database_from_the_future() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("future.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        match SqliteStore::open(&path) {
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
}
