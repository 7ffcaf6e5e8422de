//! The PostgreSQL schema: embedded, append-only migrations that mirror the
//! SQLite ones step for step (so [`SCHEMA_VERSION`] means the same on both
//! backends), versioned in the `vantage_schema` table of the connection's
//! schema and applied when a [`PgStore`](super::PgStore) connects.
//!
//! Part of the PostgreSQL backend; nothing outside `store::postgres` uses
//! it except tests.
//!
//! How the types map from SQLite's: `INTEGER` is `BIGINT`, `BLOB` is
//! `BYTEA`, the 0/1 flags are `BOOLEAN`, and every text column that is a
//! key, sorted or searched by prefix uses the `"C"` collation, so orderings
//! are by byte as in SQLite (whatever the cluster's locale) and a
//! `LIKE 'prefix%'` can use the primary key. Received order, which SQLite
//! keeps as the rowid, is an identity column (`results.seq`).

use deadpool_postgres::Client;

use crate::store::{StoreError, SCHEMA_VERSION};

/// Embedded schema migrations, applied in order; entry `i` moves the schema
/// from version `i` to `i + 1`. Append only, like SQLite's list, and always
/// the same length (a test holds the two together).
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: enrollment tokens and enrolled agents.
    r#"
CREATE TABLE tokens (
    hash        TEXT COLLATE "C" PRIMARY KEY,
    region      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    uses_left   BIGINT NOT NULL CHECK (uses_left >= 0)
);

CREATE TABLE agents (
    agent_id    TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL CONSTRAINT agents_name_key UNIQUE,
    region      TEXT COLLATE "C" NOT NULL,
    labels_json TEXT    NOT NULL DEFAULT '{}',
    version     TEXT    NOT NULL,
    role        TEXT    NOT NULL CHECK (role IN ('agent', 'witness')),
    cert_sha256 TEXT    NOT NULL,
    enrolled_at BIGINT  NOT NULL,
    last_seen   BIGINT,
    remote_addr TEXT,
    revoked     BOOLEAN NOT NULL DEFAULT FALSE,
    spool_bytes BIGINT  NOT NULL DEFAULT 0
);

CREATE INDEX agents_region_name ON agents (region, name);
"#,
    // 2: plans, their per-agent delivery state, and results. No foreign keys
    // from results or plan_agents to agents, for the reasons SQLite's
    // migration 2 gives.
    r#"
CREATE TABLE plans (
    plan_id     TEXT COLLATE "C" PRIMARY KEY,
    campaign_id TEXT COLLATE "C",
    created_at  BIGINT NOT NULL,
    probes_json TEXT   NOT NULL
);

CREATE INDEX plans_campaign ON plans (campaign_id) WHERE campaign_id IS NOT NULL;

CREATE TABLE plan_agents (
    plan_id  TEXT COLLATE "C" NOT NULL REFERENCES plans (plan_id) ON DELETE CASCADE,
    agent_id TEXT COLLATE "C" NOT NULL,
    state    TEXT   NOT NULL CHECK (state IN ('sent', 'rejected', 'finished', 'lost')),
    reason   TEXT,
    expected BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (plan_id, agent_id)
);

CREATE INDEX plan_agents_agent ON plan_agents (agent_id);

CREATE TABLE results (
    result_id   TEXT COLLATE "C" PRIMARY KEY,
    seq         BIGINT GENERATED ALWAYS AS IDENTITY,
    plan_id     TEXT COLLATE "C" NOT NULL,
    agent_id    TEXT COLLATE "C" NOT NULL,
    probe_id    TEXT    NOT NULL,
    attempt     BIGINT  NOT NULL,
    outcome     INTEGER NOT NULL,
    status      BIGINT  NOT NULL,
    received_at BIGINT  NOT NULL,
    body        BYTEA   NOT NULL
);

CREATE INDEX results_plan_agent ON results (plan_id, agent_id);
"#,
    // 3: campaigns and the origin witness's sightings of probe nonces.
    r#"
CREATE TABLE campaigns (
    campaign_id  TEXT COLLATE "C" PRIMARY KEY,
    created_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    target_json  TEXT   NOT NULL,
    regions_json TEXT   NOT NULL,
    status       TEXT   NOT NULL
        CHECK (status IN ('running', 'healthy', 'faulty', 'inconclusive')),
    report_json  TEXT
);

CREATE INDEX campaigns_created ON campaigns (created_at);

CREATE TABLE observations (
    nonce    TEXT COLLATE "C" NOT NULL,
    agent_id TEXT COLLATE "C" NOT NULL,
    peer     TEXT COLLATE "C" NOT NULL,
    seen_at  BIGINT NOT NULL,
    uri      TEXT   NOT NULL,
    PRIMARY KEY (nonce, agent_id, peer)
);
"#,
    // 4: sweeps, their runs (UNIQUE (sweep, slot_ms): a slot runs at most
    // once, whichever coordinator tries to start it), alert states and the
    // webhook outbox.
    r#"
CREATE TABLE sweeps (
    name            TEXT COLLATE "C" PRIMARY KEY,
    definition_json TEXT    NOT NULL,
    paused          BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    last_slot       BIGINT
);

CREATE TABLE sweep_runs (
    run_id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sweep         TEXT COLLATE "C" NOT NULL REFERENCES sweeps (name) ON DELETE CASCADE,
    slot_ms       BIGINT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    status        TEXT   NOT NULL
        CHECK (status IN ('running', 'healthy', 'faulty', 'inconclusive', 'missed')),
    campaign_id   TEXT COLLATE "C",
    findings_json TEXT   NOT NULL DEFAULT '[]',
    reason        TEXT,
    UNIQUE (sweep, slot_ms)
);

CREATE INDEX sweep_runs_status ON sweep_runs (status) WHERE status = 'running';
CREATE INDEX sweep_runs_finished ON sweep_runs (finished_at);

CREATE TABLE alerts (
    sweep        TEXT COLLATE "C" NOT NULL REFERENCES sweeps (name) ON DELETE CASCADE,
    code         TEXT COLLATE "C" NOT NULL,
    kind         TEXT COLLATE "C" NOT NULL,
    open         BOOLEAN NOT NULL,
    streak       BIGINT  NOT NULL DEFAULT 0,
    clean        BIGINT  NOT NULL DEFAULT 0,
    regions_json TEXT    NOT NULL DEFAULT '[]',
    opened_at    BIGINT,
    resolved_at  BIGINT,
    updated_at   BIGINT  NOT NULL,
    summary      TEXT    NOT NULL DEFAULT '',
    campaign_id  TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (sweep, code, kind)
);

CREATE TABLE deliveries (
    event_id     TEXT COLLATE "C" NOT NULL,
    url          TEXT COLLATE "C" NOT NULL,
    body         TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    next_at      BIGINT NOT NULL,
    delivered_at BIGINT,
    last_error   TEXT,
    PRIMARY KEY (event_id, url)
);

CREATE INDEX deliveries_due ON deliveries (next_at) WHERE delivered_at IS NULL;
"#,
    // 5: the installation's sealed secrets and its live coordinators.
    r#"
CREATE TABLE installation (
    name       TEXT COLLATE "C" PRIMARY KEY,
    sealed     BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE coordinators (
    coordinator_id TEXT COLLATE "C" PRIMARY KEY,
    addrs_json     TEXT   NOT NULL,
    started_at     BIGINT NOT NULL,
    heartbeat_at   BIGINT NOT NULL
);

-- Who runs a running campaign or sweep run: a coordinator that finds the
-- owner gone (not among the live coordinators) adopts and finishes it.
ALTER TABLE campaigns ADD COLUMN coordinator_id TEXT;
ALTER TABLE sweep_runs ADD COLUMN coordinator_id TEXT;

-- Which coordinator holds an agent's session, and the mailbox through which
-- one coordinator reaches the agents (plans, cancels) and the campaigns
-- (their agents' events) of another.
ALTER TABLE agents ADD COLUMN coordinator_id TEXT;

CREATE TABLE mailbox (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    coordinator_id TEXT COLLATE "C" NOT NULL,
    sender         TEXT   NOT NULL,
    agent_id       TEXT,
    body           BYTEA  NOT NULL
);

CREATE INDEX mailbox_to ON mailbox (coordinator_id, seq);
"#,
];

/// Serialises migrations of one schema across every coordinator starting at
/// once: a transaction-scoped advisory lock keyed on this class and the
/// schema's name, so tests in sibling schemas of one database do not wait on
/// each other.
const LOCK_CLASS: i32 = 0x7661_6e74; // "vant"

/// Creates the version table if needed; run under the advisory lock, since
/// two concurrent `CREATE TABLE IF NOT EXISTS` can still collide.
const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS vantage_schema (\
     one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), \
     version INTEGER NOT NULL)";

/// The schema version recorded in the connection's schema (0 when none is).
pub(super) async fn read_version(client: &Client) -> Result<u32, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('vantage_schema') IS NOT NULL", &[])
        .await?
        .try_get(0)?;
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_opt("SELECT version FROM vantage_schema", &[])
        .await?;
    let raw: i32 = match row {
        Some(row) => row.try_get(0)?,
        None => 0,
    };
    // A negative version was not written by us: newer than anything known.
    Ok(u32::try_from(raw).unwrap_or(u32::MAX))
}

/// Brings the connection's schema up to `version`, each migration in its
/// own transaction with the new version, under the advisory lock. A schema
/// newer than [`SCHEMA_VERSION`] (or a request for one) is
/// [`StoreError::TooNew`]; there are no downgrades.
pub(super) async fn migrate_to(client: &mut Client, version: u32) -> Result<(), StoreError> {
    if version > SCHEMA_VERSION || MIGRATIONS.len() != SCHEMA_VERSION as usize {
        return Err(StoreError::TooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    loop {
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))",
            &[&LOCK_CLASS],
        )
        .await?;
        tx.batch_execute(VERSION_TABLE).await?;
        let raw: Option<i32> = tx
            .query_opt("SELECT version FROM vantage_schema", &[])
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
        let current = u32::try_from(raw.unwrap_or(0)).unwrap_or(u32::MAX);
        if current > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found: current,
                supported: SCHEMA_VERSION,
            });
        }
        if current >= version {
            // Commit the version table, which may be new.
            tx.commit().await?;
            return Ok(());
        }
        let Some(sql) = usize::try_from(current)
            .ok()
            .and_then(|index| MIGRATIONS.get(index))
        else {
            return Err(StoreError::TooNew {
                found: current,
                supported: SCHEMA_VERSION,
            });
        };
        tx.batch_execute(sql).await?;
        let next = i32::try_from(current + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO vantage_schema (one, version) VALUES (TRUE, $1) \
             ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version",
            &[&next],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = next, "applied PostgreSQL store migration");
    }
}
