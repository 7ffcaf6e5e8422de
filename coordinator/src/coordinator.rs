//! The coordinator's shared state and its core operations: construction
//! ([`Coordinator::new`]), enrollment tokens, agents, revocation, plans and
//! their stored results. The gRPC services, the CLI's embedded modes and the
//! tests all call these, so each rule is written once.
//!
//! One `impl Coordinator` per concern, each in the module that owns it:
//! this file the core above; [`crate::campaign`] campaign orchestration
//! (start, watch, cancel, recover, conclude); [`crate::campaign::followup`] the TTFB
//! follow-up. Those impls only use the fields and the methods here, never
//! each other's internals. Durable state is reached only through the
//! [`Store`] trait, awaited directly: the backend does its blocking work
//! off the runtime.

use std::sync::Arc;
use std::time::Duration;

use rand::RngCore as _;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;
use vantage_proto::domain::check_name;
use vantage_proto::limits::{PlanCaps, MAX_PLAN_PROBES};
use vantage_proto::pb;
use vantage_proto::token::{hash_secret, EnrollmentToken};

use crate::api::ingest::IngestJob;
use crate::pki::Pki;
use crate::registry::{AgentEvent, Registry};
use crate::store::{AgentRecord, NewPlan, NewToken, PlanAgentStatus, PlanState, Store, StoreError};
use crate::time::now_ms;

/// Longest token lifetime accepted.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most uses one token may grant.
pub const MAX_TOKEN_USES: u32 = 10_000;

/// The shared state behind every service.
pub struct Coordinator {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) pki: Pki,
    pub(crate) registry: Arc<Registry>,
    pub(crate) ingest: mpsc::Sender<IngestJob>,
    pub(crate) admin_hash: String,
    /// This process's id among the installation's coordinators: the owner
    /// of the campaigns and sweep runs it starts.
    pub(crate) coordinator_id: String,
    /// Whether the database is shared with other coordinators, whose
    /// agents this one reaches through it ([`crate::cluster::relay`]).
    pub(crate) shared_database: bool,
    pub(crate) token_addrs: Vec<String>,
    /// The advertised addresses of the installation's live coordinators,
    /// this one's first, as agents are told them (Welcome, heartbeats);
    /// kept fresh by [`Coordinator::refresh_installation_addrs`].
    installation_addrs: std::sync::RwLock<Vec<String>>,
    pub(crate) heartbeat: Duration,
    /// The campaigns running now: their progress feeds and cancel switches.
    pub(crate) campaigns:
        std::sync::Mutex<std::collections::HashMap<String, crate::campaign::RunningCampaign>>,
    /// Per-source-address rate limit of Enroll.
    pub(crate) enroll_limiter: crate::api::enroll_limit::EnrollLimiter,
    /// Lifetime of the agent certificates issued (enrollment and renewal).
    pub(crate) agent_cert_lifetime: Duration,
    /// What the sweep operations share with the scheduler and the outbox.
    pub(crate) sweep_shared: crate::sweep::SweepShared,
    /// The Prometheus metrics `/metrics` serves.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("token_addrs", &self.token_addrs)
            .finish_non_exhaustive()
    }
}

/// What a coordinator is configured with, apart from its state (store, PKI).
#[derive(Debug, Clone)]
pub struct CoordinatorSettings {
    /// sha256 hex of the admin credential.
    pub admin_hash: String,
    /// This process's id among the installation's coordinators (a new
    /// UUID per process).
    pub coordinator_id: String,
    /// Whether other coordinators share the database (PostgreSQL).
    pub shared_database: bool,
    /// Addresses written into enrollment tokens.
    pub token_addrs: Vec<String>,
    /// Heartbeat interval asked of agents.
    pub heartbeat: Duration,
    /// Per-source-address rate limit of Enroll.
    pub enroll_rate: crate::api::enroll_limit::EnrollRate,
    /// Lifetime of the agent certificates issued.
    pub agent_cert_lifetime: Duration,
    /// Whether webhooks may point at special-purpose (private, loopback…)
    /// addresses (`serve --webhook-allow-private`).
    pub webhook_allow_private: bool,
}

impl Coordinator {
    /// A coordinator over `store` and `pki`, with its own registry and the
    /// ingest writer thread started (call from inside the tokio runtime).
    /// The thread ends once the coordinator, and with it every ingest
    /// sender, is dropped; its handle is returned for whoever wants to join.
    pub fn new(
        store: Arc<dyn Store>,
        pki: Pki,
        settings: CoordinatorSettings,
    ) -> std::io::Result<(Coordinator, std::thread::JoinHandle<()>)> {
        let registry = Arc::new(Registry::default());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let (ingest, thread) =
            crate::api::ingest::spawn(store.clone(), registry.clone(), metrics.clone())?;
        let coordinator = Coordinator {
            store,
            pki,
            registry,
            ingest,
            admin_hash: settings.admin_hash,
            coordinator_id: settings.coordinator_id,
            shared_database: settings.shared_database,
            installation_addrs: std::sync::RwLock::new(settings.token_addrs.clone()),
            token_addrs: settings.token_addrs,
            heartbeat: settings.heartbeat,
            campaigns: std::sync::Mutex::default(),
            enroll_limiter: crate::api::enroll_limit::EnrollLimiter::new(settings.enroll_rate),
            agent_cert_lifetime: settings.agent_cert_lifetime,
            sweep_shared: crate::sweep::SweepShared {
                changed: Arc::default(),
                outbox: Arc::default(),
                webhook_allow_private: settings.webhook_allow_private,
            },
            metrics,
        };
        Ok((coordinator, thread))
    }

    /// What agents are told of the installation's coordinators: every live
    /// one's advertised addresses, this one's first.
    pub(crate) fn installation_addrs(&self) -> Vec<String> {
        self.installation_addrs
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Re-reads the live coordinators' addresses from the database (a
    /// shared one; alone, the list is this coordinator's own). While the
    /// database cannot say, the last list stands: agents must not forget
    /// the other coordinators because of an outage.
    pub(crate) async fn refresh_installation_addrs(&self) {
        let addrs = match crate::cluster::live_addrs(self.store.as_ref(), &self.token_addrs).await {
            Ok(addrs) => addrs,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the live coordinators; agents keep the last list");
                return;
            }
        };
        match self.installation_addrs.write() {
            Ok(mut current) => *current = addrs,
            Err(e) => *e.into_inner() = addrs,
        }
    }
}

/// Where an agent's session is held.
enum Route {
    /// Here: its session's channel.
    Local(crate::registry::Outbound),
    /// By this live peer coordinator.
    Peer(String),
}

/// An agent as the operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    /// The stored record.
    pub record: AgentRecord,
    /// Whether it holds a session now.
    pub connected: bool,
    /// Its remote address (live if connected, else the last one seen).
    pub remote_addr: Option<String>,
    /// The health it reported on its live session (`None` if not connected).
    pub health: Option<vantage_proto::domain::AgentHealth>,
}

pub(crate) fn store_status(e: StoreError) -> Status {
    tracing::error!(error = %e, "store error");
    Status::internal(format!("coordinator store error: {e}"))
}

/// A store failure reaches a gRPC caller as `internal` (and is logged once),
/// so the services can `?` store calls directly.
impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        store_status(e)
    }
}

impl Coordinator {
    /// The store (tests read results from it).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The Prometheus metrics this coordinator updates and `/metrics` serves.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Agent and plan events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.registry.subscribe()
    }

    /// The CA fingerprint that tokens pin.
    pub fn ca_fingerprint(&self) -> &str {
        self.pki.ca_fingerprint()
    }

    /// Checks an admin credential.
    pub fn is_admin(&self, secret: &str) -> bool {
        hash_secret(secret) == self.admin_hash
    }

    /// Creates an enrollment token for `region`.
    pub async fn create_token(
        &self,
        region: &str,
        ttl: Duration,
        uses: u32,
    ) -> Result<(String, i64), Status> {
        check_name("region", region).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(Status::invalid_argument(format!(
                "ttl must be between 1s and {}",
                humantime::format_duration(MAX_TOKEN_TTL)
            )));
        }
        if uses == 0 || uses > MAX_TOKEN_USES {
            return Err(Status::invalid_argument(format!(
                "uses must be between 1 and {MAX_TOKEN_USES}"
            )));
        }
        let mut secret = [0u8; 24];
        rand::rng().fill_bytes(&mut secret);
        let token = EnrollmentToken {
            addrs: crate::cluster::token_addrs(self.store.as_ref(), &self.token_addrs).await,
            ca_sha256: self.pki.ca_fingerprint().to_string(),
            secret: hex::encode(secret),
        };
        let created_at_ms = now_ms();
        let expires_at_ms =
            created_at_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let row = NewToken {
            hash: token.secret_hash(),
            region: region.to_string(),
            created_at_ms,
            expires_at_ms,
            uses,
        };
        self.store.insert_token(row).await?;
        Ok((token.encode(), expires_at_ms))
    }

    /// The other coordinators alive now (none on a database of our own).
    async fn live_peers(&self) -> Result<Vec<String>, Status> {
        if !self.shared_database {
            return Ok(Vec::new());
        }
        let mut live = crate::cluster::live_coordinator_ids(self.store.as_ref()).await?;
        live.retain(|id| *id != self.coordinator_id);
        Ok(live)
    }

    /// How to reach `record`'s session: held here, or by a live peer.
    fn route(&self, record: &AgentRecord, peers: &[String]) -> Option<Route> {
        if let Some(outbound) = self.registry.outbound(&record.agent_id) {
            return Some(Route::Local(outbound));
        }
        record
            .holder
            .as_ref()
            .filter(|holder| peers.contains(holder))
            .map(|holder| Route::Peer(holder.clone()))
    }

    /// Sends `message` to `record`'s session, wherever it is held; false if
    /// it is held nowhere (or the send failed).
    pub(crate) async fn send_to_agent(
        &self,
        record: &AgentRecord,
        message: pb::CoordinatorMessage,
    ) -> bool {
        let peers = self.live_peers().await.unwrap_or_default();
        self.send_by(self.route(record, &peers), &record.agent_id, message)
            .await
    }

    async fn send_by(
        &self,
        route: Option<Route>,
        agent_id: &str,
        message: pb::CoordinatorMessage,
    ) -> bool {
        match route {
            Some(Route::Local(outbound)) => outbound.send(Ok(message)).is_ok(),
            Some(Route::Peer(holder)) => crate::cluster::relay::deliver_to_agent(
                self.store.as_ref(),
                &self.coordinator_id,
                &holder,
                agent_id,
                &message,
            )
            .await
            .map_err(|e| tracing::warn!(error = %e, %holder, "cannot leave a message for a peer's agent"))
            .is_ok(),
            None => false,
        }
    }

    /// Every enrolled agent, with its live connection state: held here or,
    /// on a shared database, by another live coordinator.
    pub async fn list_agents(&self) -> Result<Vec<AgentView>, Status> {
        let records = self.store.list_agents().await?;
        let peers = self.live_peers().await?;
        Ok(records
            .into_iter()
            .map(|record| {
                let live = self.registry.connection(&record.agent_id);
                let elsewhere =
                    live.is_none() && record.holder.as_ref().is_some_and(|h| peers.contains(h));
                AgentView {
                    connected: live.is_some() || elsewhere,
                    remote_addr: live.flatten().or_else(|| record.remote_addr.clone()),
                    health: self.registry.health(&record.agent_id),
                    record,
                }
            })
            .collect())
    }

    /// Revokes an agent: its certificate is refused from now on and its
    /// current session is dropped. Returns whether it was connected.
    pub async fn revoke(&self, name: &str) -> Result<bool, Status> {
        let record = self
            .store
            .revoke_agent(name)
            .await?
            .ok_or_else(|| Status::not_found(format!("no agent named {name:?}")))?;
        tracing::info!(agent = %name, "agent revoked");
        Ok(self.registry.kill(
            &record.agent_id,
            Status::permission_denied(format!("agent {name} has been revoked")),
        ))
    }

    /// Sends a plan of probes to the named agents, which must be connected.
    pub async fn run_plan(
        &self,
        agents: &[String],
        probes: Vec<pb::ProbeSpec>,
    ) -> Result<String, Status> {
        self.run_plan_in(None, agents, probes, None).await
    }

    /// Sends a plan that belongs to a campaign (or none) to the named agents,
    /// with a time budget the agents keep (DESIGN §4 "Time budget").
    pub async fn run_plan_in(
        &self,
        campaign_id: Option<&str>,
        agents: &[String],
        mut probes: Vec<pb::ProbeSpec>,
        budget: Option<std::time::Duration>,
    ) -> Result<String, Status> {
        if agents.is_empty() {
            return Err(Status::invalid_argument("a plan needs at least one agent"));
        }
        if probes.is_empty() || probes.len() > MAX_PLAN_PROBES {
            return Err(Status::invalid_argument(format!(
                "a plan needs between 1 and {MAX_PLAN_PROBES} probes"
            )));
        }
        for (index, probe) in probes.iter_mut().enumerate() {
            if probe.url.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "probe {index} has no url"
                )));
            }
            if probe.probe_id.is_empty() {
                probe.probe_id = format!("p{index}");
            }
        }
        let caps = PlanCaps::default();
        let expected: u64 = probes.iter().map(|p| caps.requests(p)).sum();
        let mut targets = Vec::with_capacity(agents.len());
        let peers = self.live_peers().await?;
        for name in agents {
            let record = self
                .store
                .agent_by_name(name)
                .await?
                .filter(|r| !r.revoked)
                .ok_or_else(|| Status::not_found(format!("no enrolled agent named {name:?}")))?;
            let route = self.route(&record, &peers).ok_or_else(|| {
                Status::failed_precondition(format!("agent {name} is not connected"))
            })?;
            targets.push((record.agent_id, route));
        }
        let plan_id = uuid::Uuid::new_v4().to_string();
        let probes_json = serde_json::to_string(&probes.iter().map(|p| &p.url).collect::<Vec<_>>())
            .unwrap_or_default();
        let rows: Vec<(String, u64)> = targets
            .iter()
            .map(|(id, _)| (id.clone(), expected))
            .collect();
        self.store
            .insert_plan(NewPlan {
                plan_id: plan_id.clone(),
                campaign_id: campaign_id.map(str::to_string),
                created_at_ms: now_ms(),
                probes_json,
                agents: rows,
            })
            .await?;
        let plan = pb::Plan {
            plan_id: plan_id.clone(),
            campaign_id: campaign_id.unwrap_or_default().to_string(),
            probes,
            budget_ms: budget.map_or(0, |b| u32::try_from(b.as_millis()).unwrap_or(u32::MAX)),
        };
        for (agent_id, route) in targets {
            let message = pb::CoordinatorMessage {
                body: Some(pb::coordinator_message::Body::Plan(plan.clone())),
            };
            if !self.send_by(Some(route), &agent_id, message).await {
                self.store
                    .set_plan_agent_state(
                        &plan_id,
                        &agent_id,
                        PlanState::Lost,
                        Some("session ended before the plan was sent"),
                    )
                    .await?;
            }
        }
        Ok(plan_id)
    }

    /// Every stored result of a plan, decoded from its wire bytes, in the
    /// order received (the evidence of campaigns and follow-ups).
    pub async fn stored_results(&self, plan_id: &str) -> Result<Vec<pb::ProbeResult>, Status> {
        let records = self.store.results_for_plan(plan_id).await?;
        Ok(crate::api::ingest::decode_results(&records)?)
    }

    /// Per-agent progress of a plan.
    pub async fn plan_status(&self, plan_id: &str) -> Result<Vec<PlanAgentStatus>, Status> {
        self.store
            .plan_status(plan_id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no plan {plan_id}")))
    }
}
