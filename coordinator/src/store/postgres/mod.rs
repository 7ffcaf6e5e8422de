//! The PostgreSQL backend of [`Store`] (issue #13): a pool of
//! `tokio-postgres` connections, the only place in the workspace where
//! `tokio_postgres` and `deadpool_postgres` appear.
//!
//! Several coordinators share one database; every method is therefore one
//! statement, or one short transaction, whose outcome does not depend on
//! which coordinator runs it or how many run it at once:
//! - results are stored with one `INSERT … SELECT FROM UNNEST(…) ON CONFLICT
//!   DO NOTHING`, so a batch replayed to another coordinator is stored once;
//! - an enrollment token is spent by one conditional `UPDATE … RETURNING`,
//!   so two coordinators cannot overspend it;
//! - a sweep slot is claimed with `ON CONFLICT (sweep, slot_ms) DO NOTHING
//!   RETURNING run_id`, under a lock on the sweep's row, so it runs once in
//!   the installation;
//! - a run ends only from `running`, so its alert events are queued once.
//!
//! The schema lives in [`migrations`]; [`PgConfig`] is the parsed
//! `postgres://` URL, checked before anything connects.

mod listen;
mod migrations;
mod sweeps;

use std::collections::HashSet;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::error::SqlState;

use tokio_postgres::{IsolationLevel, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::columns::{from_db_count, outcome_code, parse_name, to_db_count};
use super::{
    AgentRecord, AgentRole, AlertRecord, CampaignPlanAgent, CampaignRow, CampaignStatus,
    ChangeWakers, CoordinatorRecord, DeliveryRow, Mail, MailBody, MissedSlot, NewAgent,
    NewDelivery, NewPlan, NewToken, Outcome, PlanAgentStatus, PlanState, ResultRecord, SeenReport,
    Sighting, Store, StoreError, SweepRecord, SweepRun, SweepRunEnd, TokenGrant, TokenRejection,
};

/// Connections per coordinator, at most. Ingest is one writer; the rest
/// serve sessions, the admin API and the scheduler, whose statements are
/// short.
const POOL_SIZE: usize = 16;
/// How long a caller waits for a free connection before the call fails.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// How long opening one connection may take, unless the URL says
/// (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed `postgres://` (or `postgresql://`, or `key=value`) connection
/// string, as `libpq` and `psql` take it; the password never appears in its
/// `Debug` or `Display`.
#[derive(Clone)]
pub struct PgConfig {
    pg: tokio_postgres::Config,
    /// `None`: no TLS; else how the server's certificate is checked.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// What `sslmode` (and `sslrootcert`) ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TlsWish {
    /// In clear.
    Off,
    /// TLS, the server's certificate verified against these roots (a PEM
    /// file; `None`: the system's CA store).
    Verified(Option<PathBuf>),
}

impl PgConfig {
    /// Parses a connection string. Everything `tokio-postgres` understands
    /// is accepted (`host`, `port`, `user`, `password`, `dbname`, `options`,
    /// `connect_timeout`, `application_name`, a Unix-socket directory as
    /// host...), plus libpq's TLS parameters:
    /// - `sslmode=require`, `verify-ca` or `verify-full`: TLS, and the
    ///   server's certificate and name are always verified (stricter than
    ///   libpq's `require`, which checks nothing);
    /// - `sslrootcert=PATH`: the CA file that verification trusts (default,
    ///   or `system`: the system's CA store); given alone it asks for TLS;
    /// - `sslmode=disable`, `allow` or `prefer` (the default): in clear.
    ///
    /// The CA file is read here, so a bad one fails before anything starts.
    pub fn parse(text: &str) -> Result<PgConfig, StoreError> {
        let (rest, wish) = split_tls(text)?;
        let mut pg: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| StoreError::Invalid(format!("not a PostgreSQL URL: {e}")))?;
        let tls =
            match wish {
                TlsWish::Off => {
                    pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                    None
                }
                TlsWish::Verified(roots) => {
                    pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                    let pem = match &roots {
                        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                            StoreError::Invalid(format!(
                                "sslrootcert={}: cannot read it: {e}",
                                path.display()
                            ))
                        })?),
                        None => None,
                    };
                    let config = vantage_support::tls::server_client_config(pem.as_deref())
                        .map_err(|e| match &roots {
                            Some(path) => {
                                StoreError::Invalid(format!("sslrootcert={}: {e}", path.display()))
                            }
                            None => StoreError::Invalid(format!("sslmode needs TLS roots: {e}")),
                        })?;
                    Some(config)
                }
            };
        let config = PgConfig { pg, tls };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), StoreError> {
        if self.pg.get_hosts().is_empty() {
            return Err(StoreError::Invalid(
                "the PostgreSQL URL names no host (postgres://USER@HOST/DB)".into(),
            ));
        }
        if self.pg.get_user().is_none() {
            return Err(StoreError::Invalid(
                "the PostgreSQL URL names no user (postgres://USER@HOST/DB)".into(),
            ));
        }
        Ok(())
    }

    /// Whether connections use TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The same connection with `options=-c search_path=SCHEMA` added, so
    /// every table lives in (and every query sees) `schema` only.
    pub fn with_search_path(&self, schema: &str) -> PgConfig {
        let mut pg = self.pg.clone();
        let existing = pg.get_options().unwrap_or("").to_owned();
        let options = format!("{existing} -c search_path={schema}");
        pg.options(options.trim());
        PgConfig {
            pg,
            tls: self.tls.clone(),
        }
    }

    /// `user@host:port/dbname`, for messages.
    pub fn display_target(&self) -> String {
        let host = match self.pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(name)) => name.clone(),
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => String::new(),
        };
        let port = self.pg.get_ports().first().copied().unwrap_or(5432);
        format!(
            "{}@{host}:{port}/{}",
            self.pg.get_user().unwrap_or(""),
            self.pg
                .get_dbname()
                .or(self.pg.get_user())
                .unwrap_or_default()
        )
    }
}

/// Takes libpq's TLS parameters (`sslmode`, `sslrootcert`; tokio-postgres
/// knows only some `sslmode`s and no `sslrootcert`) out of a connection
/// string, in URL or `key=value` form; returns the rest and what they ask.
fn split_tls(text: &str) -> Result<(String, TlsWish), StoreError> {
    let mut mode: Option<String> = None;
    let mut root: Option<String> = None;
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            mode = Some(value);
            true
        }
        "sslrootcert" => {
            root = Some(value);
            true
        }
        _ => false,
    };
    let rest = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        match text.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let decoded = url::form_urlencoded::parse(pair.as_bytes()).next();
                        !decoded.is_some_and(|(k, v)| take(&k, v.into_owned()))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => text.to_owned(),
        }
    } else {
        text.split_whitespace()
            .filter(|token| {
                !token
                    .split_once('=')
                    .is_some_and(|(k, v)| take(k.trim(), v.trim().to_owned()))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let roots = match root.as_deref() {
        None | Some("system") => None,
        Some(path) => Some(PathBuf::from(path)),
    };
    let wish = match mode.as_deref() {
        None if root.is_some() => TlsWish::Verified(roots),
        None | Some("disable" | "allow" | "prefer") => TlsWish::Off,
        Some("require" | "verify-ca" | "verify-full") => TlsWish::Verified(roots),
        Some(other) => {
            return Err(StoreError::Invalid(format!(
                "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
            )))
        }
    };
    Ok((rest, wish))
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgConfig(postgres://{})", self.display_target())
    }
}

impl std::fmt::Display for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "postgres://{}", self.display_target())
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> StoreError {
        if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            let detail = error
                .as_db_error()
                .map(|db| db.message().to_owned())
                .unwrap_or_else(|| error.to_string());
            return StoreError::Duplicate(detail);
        }
        StoreError::Backend(Box::new(error))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(error: deadpool_postgres::PoolError) -> StoreError {
        match error {
            deadpool_postgres::PoolError::Backend(error) => error.into(),
            other => StoreError::Backend(Box::new(other)),
        }
    }
}

/// The PostgreSQL store. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    target: String,
    /// How the pool connects, for the one connection outside it that
    /// listens for other coordinators' changes.
    connect: PgConfig,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

const AGENT_SELECT: &str = "SELECT agent_id, name, region, labels_json, version, role, \
     cert_sha256, enrolled_at, last_seen, remote_addr, revoked, spool_bytes, coordinator_id \
     FROM agents ";
const AGENT_COLUMNS: &str = "agent_id, name, region, labels_json, version, role, \
     cert_sha256, enrolled_at, last_seen, remote_addr, revoked, spool_bytes, coordinator_id";
const CAMPAIGN_SELECT: &str = "SELECT campaign_id, created_at, finished_at, target_json, \
     regions_json, status, report_json FROM campaigns ";

fn read_agent(row: &Row) -> Result<AgentRecord, StoreError> {
    let labels_json: String = row.try_get(3)?;
    let role: String = row.try_get(5)?;
    Ok(AgentRecord {
        agent_id: row.try_get(0)?,
        name: row.try_get(1)?,
        region: row.try_get(2)?,
        labels: serde_json::from_str(&labels_json)
            .map_err(|e| StoreError::Corrupt(format!("agent labels are not valid JSON: {e}")))?,
        version: row.try_get(4)?,
        role: parse_name(AgentRole::parse, &role, "agent role")?,
        cert_sha256: row.try_get(6)?,
        enrolled_at_ms: row.try_get(7)?,
        last_seen_ms: row.try_get(8)?,
        remote_addr: row.try_get(9)?,
        revoked: row.try_get(10)?,
        spool_bytes: from_db_count(row.try_get(11)?),
        holder: row.try_get(12)?,
    })
}

fn read_campaign(row: &Row) -> Result<CampaignRow, StoreError> {
    let regions_json: String = row.try_get(4)?;
    let status: String = row.try_get(5)?;
    Ok(CampaignRow {
        campaign_id: row.try_get(0)?,
        created_at_ms: row.try_get(1)?,
        finished_at_ms: row.try_get(2)?,
        target_json: row.try_get(3)?,
        regions: serde_json::from_str(&regions_json)
            .map_err(|e| StoreError::Corrupt(format!("campaign regions: {e}")))?,
        status: parse_name(CampaignStatus::parse, &status, "campaign status")?,
        report_json: row.try_get(6)?,
    })
}

/// Why a token with this row would be refused at `now_ms`, if it would.
fn token_verdict(
    row: Option<Row>,
    now_ms: i64,
) -> Result<Result<TokenGrant, TokenRejection>, StoreError> {
    let Some(row) = row else {
        return Ok(Err(TokenRejection::Unknown));
    };
    let region: String = row.try_get(0)?;
    let expires_at: i64 = row.try_get(1)?;
    let uses_left: i64 = row.try_get(2)?;
    Ok(if now_ms >= expires_at {
        Err(TokenRejection::Expired)
    } else if uses_left <= 0 {
        Err(TokenRejection::UsedUp)
    } else {
        Ok(TokenGrant { region })
    })
}

impl PgStore {
    /// Connects to the database `config` names, checks that it answers, and
    /// migrates the connection's schema (the first in its `search_path`,
    /// `public` by default) to [`SCHEMA_VERSION`](crate::store::SCHEMA_VERSION).
    /// A schema written by a newer coordinator is [`StoreError::TooNew`].
    pub async fn connect(config: &PgConfig) -> Result<PgStore, StoreError> {
        Self::connect_at(config, crate::store::SCHEMA_VERSION).await
    }

    /// [`PgStore::connect`], migrating only up to `version`: for tests and
    /// tools that need a schema at an older version.
    pub async fn connect_at(config: &PgConfig, version: u32) -> Result<PgStore, StoreError> {
        let mut pg = config.pg.clone();
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("vantage");
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &config.tls {
            Some(tls) => Manager::from_config(
                pg.clone(),
                MakeRustlsConnect::new((**tls).clone()),
                manager_config,
            ),
            None => Manager::from_config(pg.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let store = PgStore {
            pool,
            target: config.display_target(),
            connect: PgConfig {
                pg,
                tls: config.tls.clone(),
            },
        };
        let mut client = store.client().await?;
        migrations::migrate_to(&mut client, version).await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        Ok(self.pool.get().await?)
    }
}

#[tonic::async_trait]
impl Store for PgStore {
    async fn schema_version(&self) -> Result<u32, StoreError> {
        migrations::read_version(&self.client().await?).await
    }

    async fn insert_token(&self, token: NewToken) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO tokens (hash, region, created_at, expires_at, uses_left) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .await?;
        client
            .execute(
                &statement,
                &[
                    &token.hash,
                    &token.region,
                    &token.created_at_ms,
                    &token.expires_at_ms,
                    &i64::from(token.uses),
                ],
            )
            .await?;
        Ok(())
    }

    async fn consume_token(
        &self,
        hash: &str,
        now_ms: i64,
    ) -> Result<Result<TokenGrant, TokenRejection>, StoreError> {
        let client = self.client().await?;
        // One conditional statement: two coordinators enrolling with the
        // last use of a token cannot both get it.
        let spent = client
            .query_opt(
                "UPDATE tokens SET uses_left = uses_left - 1 \
                 WHERE hash = $1 AND expires_at > $2 AND uses_left > 0 RETURNING region",
                &[&hash, &now_ms],
            )
            .await?;
        if let Some(row) = spent {
            return Ok(Ok(TokenGrant {
                region: row.try_get(0)?,
            }));
        }
        // Refused: say why, from what is there now.
        let row = client
            .query_opt(
                "SELECT region, expires_at, uses_left FROM tokens WHERE hash = $1",
                &[&hash],
            )
            .await?;
        match token_verdict(row, now_ms)? {
            // It was spent between the two statements: by someone else.
            Ok(_) => Ok(Err(TokenRejection::UsedUp)),
            refused => Ok(refused),
        }
    }

    async fn check_token(
        &self,
        hash: &str,
        now_ms: i64,
    ) -> Result<Result<TokenGrant, TokenRejection>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT region, expires_at, uses_left FROM tokens WHERE hash = $1",
                &[&hash],
            )
            .await?;
        token_verdict(row, now_ms)
    }

    async fn set_agent_cert(&self, agent_id: &str, cert_sha256: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE agents SET cert_sha256 = $2 WHERE agent_id = $1 AND NOT revoked",
                &[&agent_id, &cert_sha256],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn insert_agent(&self, agent: NewAgent) -> Result<(), StoreError> {
        let labels_json = serde_json::to_string(&agent.labels)
            .map_err(|e| StoreError::Invalid(format!("agent labels: {e}")))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let existing = tx
            .query_opt(
                "SELECT agent_id, revoked FROM agents WHERE name = $1 FOR UPDATE",
                &[&agent.name],
            )
            .await?;
        if let Some(row) = existing {
            let old_id: String = row.try_get(0)?;
            let revoked: bool = row.try_get(1)?;
            if !revoked {
                return Err(StoreError::NameTaken(agent.name));
            }
            tx.execute("DELETE FROM agents WHERE agent_id = $1", &[&old_id])
                .await?;
            tracing::info!(name = %agent.name, old_agent_id = %old_id, "replacing revoked agent");
        }
        let inserted = tx
            .execute(
                "INSERT INTO agents (agent_id, name, region, labels_json, version, role, \
                 cert_sha256, enrolled_at, revoked, spool_bytes) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, FALSE, 0)",
                &[
                    &agent.agent_id,
                    &agent.name,
                    &agent.region,
                    &labels_json,
                    &agent.version,
                    &agent.role.as_str(),
                    &agent.cert_sha256,
                    &agent.enrolled_at_ms,
                ],
            )
            .await;
        match inserted {
            // Another coordinator enrolled the same new name first.
            Err(e) if e.as_db_error().and_then(|db| db.constraint()) == Some("agents_name_key") => {
                return Err(StoreError::NameTaken(agent.name));
            }
            other => {
                other?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn agent_by_id(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!("{AGENT_SELECT}WHERE agent_id = $1"))
            .await?;
        client
            .query_opt(&statement, &[&agent_id])
            .await?
            .as_ref()
            .map(read_agent)
            .transpose()
    }

    async fn agent_by_name(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!("{AGENT_SELECT}WHERE name = $1"))
            .await?;
        client
            .query_opt(&statement, &[&name])
            .await?
            .as_ref()
            .map(read_agent)
            .transpose()
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let client = self.client().await?;
        client
            .query(&format!("{AGENT_SELECT}ORDER BY region, name"), &[])
            .await?
            .iter()
            .map(read_agent)
            .collect()
    }

    async fn revoke_agent(&self, name: &str) -> Result<Option<AgentRecord>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!(
                    "UPDATE agents SET revoked = TRUE WHERE name = $1 RETURNING {AGENT_COLUMNS}"
                ),
                &[&name],
            )
            .await?
            .as_ref()
            .map(read_agent)
            .transpose()
    }

    async fn record_seen(&self, agent_id: &str, seen: SeenReport) -> Result<(), StoreError> {
        let labels_json = serde_json::to_string(&seen.labels)
            .map_err(|e| StoreError::Invalid(format!("agent labels: {e}")))?;
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE agents SET last_seen = $2, remote_addr = COALESCE($3, remote_addr), \
                 version = $4, labels_json = $5, spool_bytes = $6 WHERE agent_id = $1",
                &[
                    &agent_id,
                    &seen.seen_at_ms,
                    &seen.remote_addr,
                    &seen.version,
                    &labels_json,
                    &to_db_count(seen.spool_bytes),
                ],
            )
            .await?;
        if changed == 0 {
            tracing::debug!(agent_id, "record_seen for unknown agent");
        }
        Ok(())
    }

    async fn touch(&self, agent_id: &str, seen_at_ms: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("UPDATE agents SET last_seen = $2 WHERE agent_id = $1")
            .await?;
        client
            .execute(&statement, &[&agent_id, &seen_at_ms])
            .await?;
        Ok(())
    }

    async fn insert_plan(&self, plan: NewPlan) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO plans (plan_id, campaign_id, created_at, probes_json) \
             VALUES ($1, $2, $3, $4)",
            &[
                &plan.plan_id,
                &plan.campaign_id,
                &plan.created_at_ms,
                &plan.probes_json,
            ],
        )
        .await?;
        let agent_ids: Vec<&str> = plan.agents.iter().map(|(id, _)| id.as_str()).collect();
        let expected: Vec<i64> = plan.agents.iter().map(|(_, n)| to_db_count(*n)).collect();
        tx.execute(
            "INSERT INTO plan_agents (plan_id, agent_id, state, reason, expected) \
             SELECT $1, a.agent_id, $2, NULL, a.expected \
             FROM UNNEST($3::text[], $4::bigint[]) AS a (agent_id, expected)",
            &[
                &plan.plan_id,
                &PlanState::Sent.as_str(),
                &agent_ids,
                &expected,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_plan_agent_state(
        &self,
        plan_id: &str,
        agent_id: &str,
        state: PlanState,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "UPDATE plan_agents SET state = $3, reason = $4 \
                 WHERE plan_id = $1 AND agent_id = $2",
            )
            .await?;
        let changed = client
            .execute(&statement, &[&plan_id, &agent_id, &state.as_str(), &reason])
            .await?;
        if changed == 0 {
            tracing::debug!(plan_id, agent_id, "state update for unknown plan agent");
        }
        Ok(())
    }

    async fn plans_sent_to(
        &self,
        agent_id: &str,
        plan_ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT plan_id FROM plan_agents WHERE agent_id = $1 AND plan_id = ANY($2::text[])",
            )
            .await?;
        client
            .query(&statement, &[&agent_id, &plan_ids])
            .await?
            .iter()
            .map(|row| Ok(row.try_get(0)?))
            .collect()
    }

    async fn mark_plans_lost(&self, agent_id: &str, reason: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "UPDATE plan_agents SET state = $3, reason = $2 WHERE agent_id = $1 AND state = $4",
                &[
                    &agent_id,
                    &reason,
                    &PlanState::Lost.as_str(),
                    &PlanState::Sent.as_str(),
                ],
            )
            .await?)
    }

    async fn plan_status(&self, plan_id: &str) -> Result<Option<Vec<PlanAgentStatus>>, StoreError> {
        let mut client = self.client().await?;
        // One snapshot for the existence check and every count.
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        if tx
            .query_opt("SELECT 1 FROM plans WHERE plan_id = $1", &[&plan_id])
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let rows = tx
            .query(
                "SELECT pa.agent_id, COALESCE(a.name, pa.agent_id) AS agent_name, pa.state, \
                        pa.reason, pa.expected, \
                        (SELECT COUNT(*) FROM results r \
                          WHERE r.plan_id = pa.plan_id AND r.agent_id = pa.agent_id) \
                 FROM plan_agents pa LEFT JOIN agents a ON a.agent_id = pa.agent_id \
                 WHERE pa.plan_id = $1 \
                 ORDER BY agent_name, pa.agent_id",
                &[&plan_id],
            )
            .await?;
        tx.commit().await?;
        let mut statuses = Vec::with_capacity(rows.len());
        for row in rows {
            let state: String = row.try_get(2)?;
            statuses.push(PlanAgentStatus {
                agent_id: row.try_get(0)?,
                agent_name: row.try_get(1)?,
                state: parse_name(PlanState::parse, &state, "plan state")?,
                reason: row.try_get(3)?,
                expected: from_db_count(row.try_get(4)?),
                stored: from_db_count(row.try_get(5)?),
            });
        }
        Ok(Some(statuses))
    }

    async fn insert_results(
        &self,
        results: Vec<ResultRecord>,
        received_at_ms: i64,
    ) -> Result<u64, StoreError> {
        if results.is_empty() {
            return Ok(0);
        }
        let mut result_ids = Vec::with_capacity(results.len());
        let mut plan_ids = Vec::with_capacity(results.len());
        let mut agent_ids = Vec::with_capacity(results.len());
        let mut probe_ids = Vec::with_capacity(results.len());
        let mut attempts = Vec::with_capacity(results.len());
        let mut outcomes = Vec::with_capacity(results.len());
        let mut statuses = Vec::with_capacity(results.len());
        let mut bodies = Vec::with_capacity(results.len());
        for result in &results {
            result_ids.push(result.result_id.as_str());
            plan_ids.push(result.plan_id.as_str());
            agent_ids.push(result.agent_id.as_str());
            probe_ids.push(result.probe_id.as_str());
            attempts.push(i64::from(result.attempt));
            outcomes.push(outcome_code(result.outcome));
            statuses.push(i64::from(result.status));
            bodies.push(result.body.as_slice());
        }
        let client = self.client().await?;
        // One statement, so one implicit transaction: the batch is stored
        // whole or not at all, and an id already stored (by any
        // coordinator) is skipped. UNNEST keeps the batch's order, which
        // the identity column records as received order.
        let statement = client
            .prepare_cached(
                "INSERT INTO results (result_id, plan_id, agent_id, probe_id, attempt, \
                 outcome, status, body, received_at) \
                 SELECT r.*, $9 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
                 $5::bigint[], $6::int[], $7::bigint[], $8::bytea[]) AS r \
                 ON CONFLICT (result_id) DO NOTHING",
            )
            .await?;
        Ok(client
            .execute(
                &statement,
                &[
                    &result_ids,
                    &plan_ids,
                    &agent_ids,
                    &probe_ids,
                    &attempts,
                    &outcomes,
                    &statuses,
                    &bodies,
                    &received_at_ms,
                ],
            )
            .await?)
    }

    async fn results_for_plan(&self, plan_id: &str) -> Result<Vec<ResultRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT result_id, plan_id, agent_id, probe_id, attempt, outcome, status, body \
                 FROM results WHERE plan_id = $1 ORDER BY seq",
                &[&plan_id],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let code: i32 = row.try_get(5)?;
                Ok(ResultRecord {
                    result_id: row.try_get(0)?,
                    plan_id: row.try_get(1)?,
                    agent_id: row.try_get(2)?,
                    probe_id: row.try_get(3)?,
                    attempt: u32::try_from(row.try_get::<_, i64>(4)?).unwrap_or(0),
                    outcome: Outcome::try_from(code)
                        .map_err(|_| StoreError::Corrupt(format!("unknown outcome code {code}")))?,
                    status: u32::try_from(row.try_get::<_, i64>(6)?).unwrap_or(0),
                    body: row.try_get(7)?,
                })
            })
            .collect()
    }

    async fn count_results(&self, plan_id: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let count: i64 = client
            .query_one(
                "SELECT COUNT(*) FROM results WHERE plan_id = $1",
                &[&plan_id],
            )
            .await?
            .try_get(0)?;
        Ok(from_db_count(count))
    }

    async fn count_all_results(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let count: i64 = client
            .query_one("SELECT COUNT(*) FROM results", &[])
            .await?
            .try_get(0)?;
        Ok(from_db_count(count))
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
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO campaigns (campaign_id, created_at, target_json, regions_json, status, \
                 coordinator_id) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &campaign_id,
                    &created_at_ms,
                    &target_json,
                    &regions_json,
                    &CampaignStatus::Running.as_str(),
                    &owner,
                ],
            )
            .await?;
        Ok(())
    }

    async fn finish_campaign(
        &self,
        campaign_id: &str,
        finished_at_ms: i64,
        status: CampaignStatus,
        report_json: &str,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE campaigns SET finished_at = $2, status = $3, report_json = $4 \
                 WHERE campaign_id = $1",
                &[
                    &campaign_id,
                    &finished_at_ms,
                    &status.as_str(),
                    &report_json,
                ],
            )
            .await?;
        Ok(())
    }

    async fn campaign(&self, campaign_id: &str) -> Result<Option<CampaignRow>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!("{CAMPAIGN_SELECT}WHERE campaign_id = $1"),
                &[&campaign_id],
            )
            .await?
            .as_ref()
            .map(read_campaign)
            .transpose()
    }

    async fn list_campaigns(&self, limit: u32) -> Result<Vec<CampaignRow>, StoreError> {
        let client = self.client().await?;
        client
            .query(
                &format!("{CAMPAIGN_SELECT}ORDER BY created_at DESC, campaign_id LIMIT $1"),
                &[&i64::from(limit)],
            )
            .await?
            .iter()
            .map(read_campaign)
            .collect()
    }

    async fn running_campaigns(&self) -> Result<Vec<CampaignRow>, StoreError> {
        let client = self.client().await?;
        client
            .query(
                &format!("{CAMPAIGN_SELECT}WHERE status = $1 ORDER BY created_at, campaign_id"),
                &[&CampaignStatus::Running.as_str()],
            )
            .await?
            .iter()
            .map(read_campaign)
            .collect()
    }

    async fn adopt_orphans(
        &self,
        owner: &str,
        live: &[String],
    ) -> Result<(Vec<CampaignRow>, Vec<SweepRun>), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Under READ COMMITTED a second adopter waits on the row lock and
        // then sees the first one's (live) id: each orphan goes to one.
        let mut campaigns = tx
            .query(
                &format!(
                    "UPDATE campaigns SET coordinator_id = $1 WHERE status = 'running' \
                     AND (coordinator_id IS NULL OR coordinator_id <> ALL($2::text[])) \
                     RETURNING {}",
                    CAMPAIGN_SELECT
                        .trim_start_matches("SELECT ")
                        .trim_end_matches(" FROM campaigns ")
                ),
                &[&owner, &live],
            )
            .await?
            .iter()
            .map(read_campaign)
            .collect::<Result<Vec<_>, _>>()?;
        campaigns.sort_by(|a, b| {
            (a.created_at_ms, &a.campaign_id).cmp(&(b.created_at_ms, &b.campaign_id))
        });
        let runs = sweeps::adopt_orphan_runs(&tx, owner, live).await?;
        tx.execute(
            "DELETE FROM mailbox WHERE coordinator_id <> ALL($1::text[])",
            &[&live],
        )
        .await?;
        tx.commit().await?;
        Ok((campaigns, runs))
    }

    async fn campaign_plan_agents(
        &self,
        campaign_id: &str,
    ) -> Result<Vec<CampaignPlanAgent>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT pa.plan_id, pa.agent_id, a.name, a.region, pa.state, pa.reason \
                 FROM plans p JOIN plan_agents pa ON pa.plan_id = p.plan_id \
                 LEFT JOIN agents a ON a.agent_id = pa.agent_id \
                 WHERE p.campaign_id = $1 ORDER BY p.created_at, pa.plan_id, pa.agent_id",
                &[&campaign_id],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let agent_id: String = row.try_get(1)?;
                let name: Option<String> = row.try_get(2)?;
                let state: String = row.try_get(4)?;
                Ok(CampaignPlanAgent {
                    plan_id: row.try_get(0)?,
                    agent_name: name.unwrap_or_else(|| agent_id.clone()),
                    agent_id,
                    region: row.try_get(3)?,
                    state: parse_name(PlanState::parse, &state, "plan state")?,
                    reason: row.try_get(5)?,
                })
            })
            .collect()
    }

    async fn insert_sightings(
        &self,
        agent_id: &str,
        sightings: Vec<Sighting>,
    ) -> Result<u64, StoreError> {
        if sightings.is_empty() {
            return Ok(0);
        }
        let nonces: Vec<&str> = sightings.iter().map(|s| s.nonce.as_str()).collect();
        let peers: Vec<&str> = sightings.iter().map(|s| s.peer.as_str()).collect();
        let seen: Vec<i64> = sightings.iter().map(|s| s.seen_at_ms).collect();
        let uris: Vec<&str> = sightings.iter().map(|s| s.uri.as_str()).collect();
        let client = self.client().await?;
        Ok(client
            .execute(
                "INSERT INTO observations (nonce, agent_id, peer, seen_at, uri) \
                 SELECT s.nonce, $1, s.peer, s.seen_at, s.uri \
                 FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::text[]) \
                      AS s (nonce, peer, seen_at, uri) \
                 ON CONFLICT (nonce, agent_id, peer) DO NOTHING",
                &[&agent_id, &nonces, &peers, &seen, &uris],
            )
            .await?)
    }

    async fn sightings_with_prefix(&self, prefix: &str) -> Result<Vec<Sighting>, StoreError> {
        // LIKE with its metacharacters escaped; the "C" collation of
        // `nonce` lets it use the primary key.
        let mut pattern = String::with_capacity(prefix.len() + 1);
        for c in prefix.chars() {
            if matches!(c, '\\' | '%' | '_') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT nonce, peer, seen_at, uri FROM observations \
                 WHERE nonce LIKE $1 ESCAPE '\\' ORDER BY seen_at, nonce, agent_id, peer",
                &[&pattern],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Sighting {
                    nonce: row.try_get(0)?,
                    peer: row.try_get(1)?,
                    seen_at_ms: row.try_get(2)?,
                    uri: row.try_get(3)?,
                })
            })
            .collect()
    }

    async fn insert_sweep(&self, sweep: SweepRecord) -> Result<(), StoreError> {
        sweeps::insert_sweep(&mut self.client().await?, &sweep).await
    }

    async fn apply_sweeps(
        &self,
        create: Vec<SweepRecord>,
        update: Vec<(String, String)>,
        delete: Vec<String>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sweeps::apply_sweeps(&mut self.client().await?, create, update, delete, now_ms).await
    }

    async fn sweep(&self, name: &str) -> Result<Option<SweepRecord>, StoreError> {
        sweeps::sweep(&self.client().await?, name).await
    }

    async fn list_sweeps(&self) -> Result<Vec<SweepRecord>, StoreError> {
        sweeps::list_sweeps(&self.client().await?).await
    }

    async fn set_sweep_paused(
        &self,
        name: &str,
        paused: bool,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        sweeps::set_sweep_paused(&self.client().await?, name, paused, now_ms).await
    }

    async fn delete_sweep(&self, name: &str) -> Result<bool, StoreError> {
        sweeps::delete_sweep(&self.client().await?, name).await
    }

    async fn record_sweep_slots(
        &self,
        sweep: &str,
        missed: Vec<MissedSlot>,
        due: Option<(i64, i64)>,
        owner: &str,
    ) -> Result<Option<i64>, StoreError> {
        sweeps::record_sweep_slots(&mut self.client().await?, sweep, missed, due, owner).await
    }

    async fn set_sweep_run_campaign(
        &self,
        run_id: i64,
        campaign_id: &str,
    ) -> Result<(), StoreError> {
        sweeps::set_sweep_run_campaign(&self.client().await?, run_id, campaign_id).await
    }

    async fn finish_sweep_run(
        &self,
        run_id: i64,
        end: SweepRunEnd,
        alerts: Vec<AlertRecord>,
        deliveries: Vec<NewDelivery>,
    ) -> Result<(), StoreError> {
        sweeps::finish_sweep_run(&mut self.client().await?, run_id, end, alerts, deliveries).await
    }

    async fn sweep_runs(&self, sweep: &str, limit: u32) -> Result<Vec<SweepRun>, StoreError> {
        sweeps::sweep_runs(&self.client().await?, sweep, limit).await
    }

    async fn running_sweep_runs(&self) -> Result<Vec<SweepRun>, StoreError> {
        sweeps::running_sweep_runs(&self.client().await?).await
    }

    async fn prune_sweep_runs(&self, before_ms: i64) -> Result<u64, StoreError> {
        sweeps::prune_sweep_runs(&self.client().await?, before_ms).await
    }

    async fn sweep_alerts(&self, sweep: &str) -> Result<Vec<AlertRecord>, StoreError> {
        sweeps::sweep_alerts(&self.client().await?, sweep).await
    }

    async fn list_alerts(&self) -> Result<Vec<AlertRecord>, StoreError> {
        sweeps::list_alerts(&self.client().await?).await
    }

    async fn claim_deliveries(
        &self,
        now_ms: i64,
        limit: u32,
        claim_until_ms: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        sweeps::claim_deliveries(&self.client().await?, now_ms, limit, claim_until_ms).await
    }

    async fn next_delivery_at(&self) -> Result<Option<i64>, StoreError> {
        sweeps::next_delivery_at(&self.client().await?).await
    }

    async fn delivery_done(&self, event_id: &str, url: &str, at_ms: i64) -> Result<(), StoreError> {
        sweeps::delivery_done(&self.client().await?, event_id, url, at_ms).await
    }

    async fn hold_agent(&self, agent_id: &str, holder: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE agents SET coordinator_id = $2 WHERE agent_id = $1",
                &[&agent_id, &holder],
            )
            .await?;
        Ok(())
    }

    async fn release_agent(&self, agent_id: &str, holder: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE agents SET coordinator_id = NULL \
                 WHERE agent_id = $1 AND coordinator_id = $2",
                &[&agent_id, &holder],
            )
            .await?;
        Ok(())
    }

    async fn post_mail(&self, mail: Mail) -> Result<(), StoreError> {
        let (agent_id, body) = match mail.body {
            MailBody::ToAgent { agent_id, message } => (Some(agent_id), message),
            MailBody::Event(event) => (None, event),
        };
        let client = self.client().await?;
        // One statement: the mail and its announcement commit together.
        client
            .query(
                &format!(
                    "WITH sent AS (INSERT INTO mailbox (coordinator_id, sender, agent_id, body) \
                     VALUES ($1, $2, $3, $4) RETURNING coordinator_id) \
                     SELECT pg_notify('{}', coordinator_id) FROM sent",
                    listen::MAIL
                ),
                &[&mail.to, &mail.from, &agent_id, &body],
            )
            .await?;
        Ok(())
    }

    fn announce_changes(&self, wakers: ChangeWakers) {
        listen::spawn(self.connect.clone(), wakers);
    }

    async fn take_mail(&self, to: &str, limit: u32) -> Result<Vec<Mail>, StoreError> {
        let client = self.client().await?;
        // SKIP LOCKED: should two processes ever read one mailbox, each
        // piece still goes to one of them.
        let mut rows = client
            .query(
                "DELETE FROM mailbox WHERE seq IN ( \
                     SELECT seq FROM mailbox WHERE coordinator_id = $1 \
                     ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING seq, sender, agent_id, body",
                &[&to, &i64::from(limit)],
            )
            .await?;
        rows.sort_by_key(|row| row.try_get::<_, i64>(0).unwrap_or(i64::MAX));
        rows.iter()
            .map(|row| {
                let agent_id: Option<String> = row.try_get(2)?;
                let body: Vec<u8> = row.try_get(3)?;
                Ok(Mail {
                    to: to.to_owned(),
                    from: row.try_get(1)?,
                    body: match agent_id {
                        Some(agent_id) => MailBody::ToAgent {
                            agent_id,
                            message: body,
                        },
                        None => MailBody::Event(body),
                    },
                })
            })
            .collect()
    }

    async fn redirect_agent_mail(&self, agent_id: &str, holder: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "UPDATE mailbox SET coordinator_id = $2 \
                 WHERE agent_id = $1 AND coordinator_id <> $2",
                &[&agent_id, &holder],
            )
            .await?)
    }

    async fn plan_owners(&self, plan_ids: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        let client = self.client().await?;
        client
            .query(
                "SELECT p.plan_id, c.coordinator_id FROM plans p \
                 JOIN campaigns c ON c.campaign_id = p.campaign_id \
                 WHERE p.plan_id = ANY($1::text[]) AND c.coordinator_id IS NOT NULL \
                 ORDER BY p.plan_id",
                &[&plan_ids],
            )
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    async fn installation_secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt("SELECT sealed FROM installation WHERE name = $1", &[&name])
            .await?
            .map(|row| Ok(row.try_get(0)?))
            .transpose()
    }

    async fn insert_installation_secret(
        &self,
        name: &str,
        sealed: Vec<u8>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO installation (name, sealed, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
                &[&name, &sealed, &now_ms],
            )
            .await?;
        Ok(inserted == 1)
    }

    async fn coordinator_heartbeat(
        &self,
        record: CoordinatorRecord,
        forget_before_ms: i64,
    ) -> Result<(), StoreError> {
        let addrs_json = serde_json::to_string(&record.addrs)
            .map_err(|e| StoreError::Invalid(format!("coordinator addresses: {e}")))?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO coordinators (coordinator_id, addrs_json, started_at, heartbeat_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (coordinator_id) DO UPDATE SET \
                 addrs_json = EXCLUDED.addrs_json, heartbeat_at = EXCLUDED.heartbeat_at",
                &[
                    &record.coordinator_id,
                    &addrs_json,
                    &record.started_at_ms,
                    &record.heartbeat_at_ms,
                ],
            )
            .await?;
        client
            .execute(
                "DELETE FROM coordinators WHERE heartbeat_at < $1",
                &[&forget_before_ms],
            )
            .await?;
        Ok(())
    }

    async fn remove_coordinator(&self, coordinator_id: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM coordinators WHERE coordinator_id = $1",
                &[&coordinator_id],
            )
            .await?;
        Ok(())
    }

    async fn live_coordinators(&self, since_ms: i64) -> Result<Vec<CoordinatorRecord>, StoreError> {
        let client = self.client().await?;
        client
            .query(
                "SELECT coordinator_id, addrs_json, started_at, heartbeat_at FROM coordinators \
                 WHERE heartbeat_at >= $1 ORDER BY started_at, coordinator_id",
                &[&since_ms],
            )
            .await?
            .iter()
            .map(|row| {
                let addrs_json: String = row.try_get(1)?;
                Ok(CoordinatorRecord {
                    coordinator_id: row.try_get(0)?,
                    addrs: serde_json::from_str(&addrs_json)
                        .map_err(|e| StoreError::Corrupt(format!("coordinator addresses: {e}")))?,
                    started_at_ms: row.try_get(2)?,
                    heartbeat_at_ms: row.try_get(3)?,
                })
            })
            .collect()
    }

    async fn delivery_retry(
        &self,
        event_id: &str,
        url: &str,
        attempts: u32,
        next_at_ms: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        sweeps::delivery_retry(
            &self.client().await?,
            event_id,
            url,
            attempts,
            next_at_ms,
            error,
        )
        .await
    }
}

#[cfg(test)]
mod tests;
