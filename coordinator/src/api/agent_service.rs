//! `vantage.v1.AgentService`: enrollment and the per-agent session stream.
//!
//! Every message from an agent is validated at this edge (through the domain
//! conversions of `vantage-proto`) before it can reach the store; an invalid
//! one ends that agent's session with `InvalidArgument` and never disturbs
//! other sessions.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use vantage_proto::domain::{self, check_labels, check_name, Hello};
use vantage_proto::pb;
use vantage_proto::pb::agent_message::Body as Up;
use vantage_proto::pb::coordinator_message::Body as Down;
use vantage_proto::token::{hash_secret, sha256_hex};

use crate::api::ingest::IngestJob;
use crate::coordinator::Coordinator;
use crate::pki::agent_id_of;
use crate::registry::AgentEvent;
use crate::store::{
    AgentRecord, AgentRole, NewAgent, PlanState, SeenReport, Sighting, StoreError, TokenRejection,
};
use crate::time::now_ms;

/// How long an agent has to send `Hello` after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Plans remembered per session at most; past it the cache starts over
/// (a long-lived agent receives plans without end).
const MAX_OWNED_PLANS: usize = 4096;

/// The plans a session's agent may report on. A result, a "finished" or a
/// "rejected" mark for any other plan is refused: an enrolled agent must not
/// be able to write evidence into another region's verdict. Ownership is
/// looked up in the store once per plan and remembered for the session,
/// since a plan sent to an agent stays its plan.
#[derive(Debug, Default)]
struct OwnedPlans {
    known: std::collections::HashSet<String>,
}

impl OwnedPlans {
    /// Ok when every plan of `plan_ids` was sent to `record`'s agent;
    /// otherwise `PermissionDenied` naming the first foreign plan, logged
    /// with the agent's name.
    async fn check(
        &mut self,
        core: &Coordinator,
        record: &AgentRecord,
        what: &str,
        plan_ids: impl IntoIterator<Item = &str>,
    ) -> Result<(), Status> {
        let mut unknown: Vec<String> = Vec::new();
        for id in plan_ids {
            if !self.known.contains(id) && !unknown.iter().any(|u| u == id) {
                unknown.push(id.to_string());
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        let sent = core.store.plans_sent_to(&record.agent_id, &unknown).await?;
        if let Some(foreign) = unknown.iter().find(|id| !sent.contains(*id)) {
            tracing::warn!(
                agent = %record.name,
                region = %record.region,
                plan_id = %foreign,
                "refused {what} for a plan that was not sent to this agent"
            );
            return Err(Status::permission_denied(format!(
                "{what} refused: plan {foreign:?} was not sent to agent {}",
                record.name
            )));
        }
        if self.known.len() + sent.len() > MAX_OWNED_PLANS {
            self.known.clear();
        }
        self.known.extend(sent);
        Ok(())
    }
}

/// Refuses plan traffic from a witness: it follows an access log and has no
/// plans, so it may send observations only.
fn plans_only_from_agents(record: &AgentRecord, what: &str) -> Result<(), Status> {
    if record.role == AgentRole::Witness {
        tracing::warn!(agent = %record.name, "refused {what} from a witness");
        return Err(Status::permission_denied(format!(
            "{what} refused: {} is a witness, and a witness sends observations only",
            record.name
        )));
    }
    Ok(())
}

/// The service implementation.
#[derive(Debug, Clone)]
pub struct AgentService {
    pub(crate) core: Arc<Coordinator>,
}

fn down(body: Down) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage { body: Some(body) }
}

fn invalid(e: domain::ProtocolError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A name as the caller sent it, cut for a log line (it may be anything).
fn truncated(name: &str) -> String {
    name.chars().take(domain::MAX_NAME_LEN).collect()
}

impl AgentService {
    /// Enroll after the rate limit: the token is checked before anything
    /// else, so a caller without a valid token learns nothing about names.
    async fn enroll_checked(&self, req: pb::EnrollRequest) -> Result<pb::EnrollResponse, Status> {
        if req.token.is_empty() || req.token.len() > 256 {
            return Err(Status::unauthenticated(
                "missing or malformed enrollment token",
            ));
        }
        let hash = hash_secret(&req.token);
        if let Err(rejection) = self.core.store.check_token(&hash, now_ms()).await? {
            return Err(Status::unauthenticated(rejection.to_string()));
        }
        check_name("name", &req.name).map_err(invalid)?;
        let labels = req.labels.into_iter().collect();
        check_labels(&labels).map_err(invalid)?;
        // An empty role is an agent (DESIGN: older agents do not send one).
        let role = match req.role.as_str() {
            "" => AgentRole::Agent,
            other => AgentRole::parse(other)
                .ok_or_else(|| Status::invalid_argument(format!("unknown role {other:?}")))?,
        };
        if req.version.len() > domain::MAX_NAME_LEN {
            return Err(Status::invalid_argument("version string too long"));
        }
        if let Some(existing) = self.core.store.agent_by_name(&req.name).await? {
            if !existing.revoked {
                return Err(Status::already_exists(format!(
                    "an agent named {} is already enrolled; revoke it first or pick another --name",
                    existing.name
                )));
            }
        }
        let agent_id = uuid::Uuid::new_v4().to_string();
        // Check the CSR before spending a use of the token.
        let (cert_pem, cert_sha256) = self
            .core
            .pki
            .sign_agent_csr(&req.csr_pem, &agent_id, self.core.agent_cert_lifetime)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let grant = match self.core.store.consume_token(&hash, now_ms()).await? {
            Ok(grant) => grant,
            Err(
                rejection @ (TokenRejection::Unknown
                | TokenRejection::Expired
                | TokenRejection::UsedUp),
            ) => return Err(Status::unauthenticated(rejection.to_string())),
        };
        if !req.region.is_empty() && req.region != grant.region {
            return Err(Status::invalid_argument(format!(
                "the token is for region {}, not {}",
                grant.region, req.region
            )));
        }
        let agent = NewAgent {
            agent_id: agent_id.clone(),
            name: req.name.clone(),
            region: grant.region.clone(),
            labels,
            version: req.version,
            role,
            cert_sha256,
            enrolled_at_ms: now_ms(),
        };
        match self.core.store.insert_agent(agent).await {
            Ok(()) => {}
            Err(StoreError::NameTaken(name)) => {
                return Err(Status::already_exists(format!(
                    "an agent named {name} is already enrolled"
                )))
            }
            Err(e) => return Err(crate::coordinator::store_status(e)),
        }
        Ok(pb::EnrollResponse {
            agent_id,
            client_cert_pem: cert_pem,
            ca_pem: self.core.pki.ca_pem().to_string(),
            region: grant.region,
        })
    }

    /// Identifies the agent behind the client certificate of `request`.
    async fn authenticate<T>(&self, request: &Request<T>) -> Result<AgentRecord, Status> {
        let certs = request.peer_certs().ok_or_else(|| {
            Status::unauthenticated("a client certificate is required: enroll first")
        })?;
        let leaf = certs.first().ok_or_else(|| {
            Status::unauthenticated("a client certificate is required: enroll first")
        })?;
        let fingerprint = sha256_hex(leaf.as_ref());
        let agent_id = agent_id_of(leaf.as_ref())
            .ok_or_else(|| Status::unauthenticated("client certificate has no agent id"))?;
        let record = self
            .core
            .store
            .agent_by_id(&agent_id)
            .await?
            .ok_or_else(|| Status::unauthenticated(format!("unknown agent {agent_id}")))?;
        if record.revoked {
            return Err(Status::permission_denied(format!(
                "agent {} has been revoked",
                record.name
            )));
        }
        if record.cert_sha256 != fingerprint {
            return Err(Status::unauthenticated(format!(
                "agent {}'s certificate has been superseded by a newer enrollment",
                record.name
            )));
        }
        Ok(record)
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let source = request.remote_addr();
        let source_text = source.map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let req = request.into_inner();
        // Rate limit per source address first: the cheapest refusal.
        if let Some(addr) = source {
            if let Err(wait) = self
                .core
                .enroll_limiter
                .check(addr.ip(), std::time::Instant::now())
            {
                tracing::warn!(agent = %truncated(&req.name), source = %source_text, "enroll refused: rate limited");
                return Err(Status::resource_exhausted(format!(
                    "too many enrollment attempts from {}; retry in {}s",
                    addr.ip(),
                    wait.as_secs().max(1)
                )));
            }
        }
        match self.enroll_checked(req.clone()).await {
            Ok(response) => {
                tracing::info!(agent = %req.name, source = %source_text, region = %response.region, agent_id = %response.agent_id, "enroll accepted");
                Ok(Response::new(response))
            }
            Err(status) => {
                tracing::warn!(agent = %truncated(&req.name), source = %source_text, code = ?status.code(), reason = %status.message(), "enroll refused");
                Err(status)
            }
        }
    }

    type SessionStream = SessionStream;

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let record = self.authenticate(&request).await?;
        let source = request
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let req = request.into_inner();
        let (cert_pem, cert_sha256) = self
            .core
            .pki
            .sign_agent_csr(
                &req.csr_pem,
                &record.agent_id,
                self.core.agent_cert_lifetime,
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !self
            .core
            .store
            .set_agent_cert(&record.agent_id, &cert_sha256)
            .await?
        {
            return Err(Status::permission_denied(format!(
                "agent {} has been revoked",
                record.name
            )));
        }
        tracing::info!(agent = %record.name, %source, "agent certificate renewed");
        Ok(Response::new(pb::RenewResponse {
            client_cert_pem: cert_pem,
        }))
    }

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let record = self.authenticate(&request).await?;
        let remote_addr = request.remote_addr().map(|a| a.to_string());
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10s"))??;
        let Some(pb::AgentMessage {
            body: Some(Up::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message of a session must be Hello",
            ));
        };
        let hello = Hello::try_from(hello).map_err(invalid)?;
        if hello.name != record.name || hello.region != record.region {
            return Err(Status::invalid_argument(format!(
                "Hello says {}/{}, but this certificate was enrolled as {}/{}",
                hello.name, hello.region, record.name, record.region
            )));
        }
        let seen = SeenReport {
            seen_at_ms: now_ms(),
            remote_addr: remote_addr.clone(),
            version: hello.version.clone(),
            labels: hello.labels.clone(),
            spool_bytes: hello.spool_bytes,
        };
        self.core.store.record_seen(&record.agent_id, seen).await?;

        let (outbound, rx) = tokio::sync::mpsc::unbounded_channel();
        let heartbeat = self.core.heartbeat;
        let welcome = down(Down::Welcome(pb::Welcome {
            agent_id: record.agent_id.clone(),
            heartbeat_interval_ms: u32::try_from(heartbeat.as_millis()).unwrap_or(u32::MAX),
            coordinators: self.core.installation_addrs(),
        }));
        let _ = outbound.send(Ok(welcome));
        let registry = self.core.registry.clone();
        let (session_id, killed) = registry.register(
            &record.agent_id,
            &record.name,
            remote_addr,
            outbound.clone(),
        );
        if let Some(health) = hello.health.clone() {
            registry.set_health(&record.agent_id, health);
        }
        // Other coordinators on a shared database reach it through us; what
        // they left for its previous holder (a plan sent while it moved)
        // comes here.
        let held = async {
            let store = &self.core.store;
            store
                .hold_agent(&record.agent_id, &self.core.coordinator_id)
                .await?;
            store
                .redirect_agent_mail(&record.agent_id, &self.core.coordinator_id)
                .await
        };
        match held.await {
            Ok(0) => {}
            Ok(moved) => {
                tracing::info!(agent = %record.name, moved, "took over messages left for its previous coordinator")
            }
            Err(e) => {
                tracing::warn!(agent = %record.name, error = %e, "cannot record who holds its session")
            }
        }
        registry.emit(AgentEvent::Connected {
            name: record.name.clone(),
            region: record.region.clone(),
        });
        tracing::info!(agent = %record.name, region = %record.region, "session established");
        let core = self.core.clone();
        tokio::spawn(async move {
            let reason = serve_session(&core, &record, inbound, &outbound, killed).await;
            tracing::info!(agent = %record.name, %reason, "session ended");
            if core.registry.unregister(&record.agent_id, session_id) {
                if let Err(e) = core
                    .store
                    .release_agent(&record.agent_id, &core.coordinator_id)
                    .await
                {
                    tracing::warn!(agent = %record.name, error = %e, "cannot record that its session ended");
                }
                // The agent is gone (not replaced by a newer session of its
                // own): plans it has not finished are marked lost, so that
                // they end instead of waiting in "sent" for an agent that may
                // never come back (kill -9, lost host). Done before the event,
                // so whoever sees the disconnect also sees the plans lost.
                let why = format!("agent {} disconnected: {reason}", record.name);
                if let Err(e) = core.store.mark_plans_lost(&record.agent_id, &why).await {
                    tracing::warn!(agent = %record.name, error = %e, "cannot mark its plans lost");
                }
                core.registry.emit(AgentEvent::Disconnected {
                    name: record.name.clone(),
                    reason,
                });
            }
            if let Err(e) = core.store.touch(&record.agent_id, now_ms()).await {
                tracing::warn!(agent = %record.name, error = %e, "cannot record its last contact");
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

async fn serve_session(
    core: &Arc<Coordinator>,
    record: &AgentRecord,
    mut inbound: Streaming<pb::AgentMessage>,
    outbound: &crate::registry::Outbound,
    mut killed: tokio::sync::oneshot::Receiver<Status>,
) -> String {
    let heartbeat = core.heartbeat;
    let mut ticker = tokio::time::interval(heartbeat);
    let mut last_heard = Instant::now();
    let mut owned = OwnedPlans::default();
    loop {
        tokio::select! {
            status = &mut killed => {
                let status = status.unwrap_or_else(|_| Status::aborted("session closed"));
                let reason = status.message().to_string();
                let _ = outbound.send(Err(status));
                return reason;
            }
            message = inbound.message() => {
                last_heard = Instant::now();
                match message {
                    Ok(Some(message)) => {
                        if let Err(status) = handle(core, record, &mut owned, message, outbound).await {
                            let reason = status.message().to_string();
                            let _ = outbound.send(Err(status));
                            return reason;
                        }
                    }
                    Ok(None) => return "the agent closed the session".into(),
                    Err(status) => return format!("stream error: {}", status.message()),
                }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > heartbeat * 3 {
                    let reason = format!("no word from the agent for {:?} (three heartbeats)", heartbeat * 3);
                    let _ = outbound.send(Err(Status::unavailable(reason.clone())));
                    return reason;
                }
                let beat = down(Down::Heartbeat(pb::Heartbeat {
                    sent_at_unix_ms: now_ms(),
                    health: None,
                    coordinators: core.installation_addrs(),
                }));
                if outbound.send(Ok(beat)).is_err() {
                    return "the agent's stream is gone".into();
                }
            }
        }
    }
}

/// Checks a witness observation at the edge and turns it into a sighting.
fn sighting_of(observation: pb::Observation) -> Result<Sighting, Status> {
    if observation.nonce.is_empty() || observation.nonce.len() > 128 {
        return Err(Status::invalid_argument(
            "observation nonce must be 1 to 128 bytes",
        ));
    }
    if observation.peer_addr.parse::<std::net::IpAddr>().is_err() {
        return Err(Status::invalid_argument(format!(
            "observation peer {:?} is not an IP address",
            observation.peer_addr.chars().take(64).collect::<String>()
        )));
    }
    if observation.uri.len() > 4096 {
        return Err(Status::invalid_argument(
            "observation uri longer than 4096 bytes",
        ));
    }
    Ok(Sighting {
        nonce: observation.nonce,
        peer: observation.peer_addr,
        seen_at_ms: if observation.seen_at_unix_ms > 0 {
            observation.seen_at_unix_ms
        } else {
            now_ms()
        },
        uri: observation.uri,
    })
}

async fn handle(
    core: &Arc<Coordinator>,
    record: &AgentRecord,
    owned: &mut OwnedPlans,
    message: pb::AgentMessage,
    outbound: &crate::registry::Outbound,
) -> Result<(), Status> {
    match message.body {
        Some(Up::Results(batch)) => {
            domain::check_batch(&batch).map_err(invalid)?;
            plans_only_from_agents(record, "results")?;
            let plans = batch.results.iter().map(|r| r.plan_id.as_str()).chain(
                (!batch.finished_plan_id.is_empty()).then_some(batch.finished_plan_id.as_str()),
            );
            owned.check(core, record, "results", plans).await?;
            let job = IngestJob {
                agent_id: record.agent_id.clone(),
                agent_name: record.name.clone(),
                batch,
                reply: outbound.clone(),
            };
            core.ingest
                .send(job)
                .await
                .map_err(|_| Status::unavailable("the coordinator is shutting down"))
        }
        Some(Up::Heartbeat(beat)) => {
            if let Some(health) = beat.health {
                let health = domain::AgentHealth::try_from(health).map_err(invalid)?;
                core.registry.set_health(&record.agent_id, health);
            }
            // A missed last-contact update is harmless; ending the session
            // over it would turn a database restart into a reconnect storm.
            if let Err(e) = core.store.touch(&record.agent_id, now_ms()).await {
                tracing::warn!(agent = %record.name, error = %e, "cannot record its last contact");
            }
            Ok(())
        }
        Some(Up::PlanRejected(rejected)) => {
            if rejected.plan_id.len() > 128 || rejected.reason.len() > 1024 {
                return Err(Status::invalid_argument("PlanRejected fields too long"));
            }
            plans_only_from_agents(record, "a plan rejection")?;
            owned
                .check(
                    core,
                    record,
                    "a plan rejection",
                    [rejected.plan_id.as_str()],
                )
                .await?;
            tracing::warn!(agent = %record.name, plan_id = %rejected.plan_id, reason = %rejected.reason, "plan refused by agent");
            core.store
                .set_plan_agent_state(
                    &rejected.plan_id,
                    &record.agent_id,
                    PlanState::Rejected,
                    Some(&rejected.reason),
                )
                .await?;
            core.registry.emit(AgentEvent::PlanRejected {
                plan_id: rejected.plan_id,
                agent: record.name.clone(),
                reason: rejected.reason,
            });
            Ok(())
        }
        Some(Up::Hello(_)) => Err(Status::invalid_argument(
            "Hello may only be the first message",
        )),
        Some(Up::Observation(_)) if record.role != AgentRole::Witness => Err(
            Status::invalid_argument("observations are accepted from witnesses only"),
        ),
        Some(Up::Observation(observation)) => {
            let sighting = sighting_of(observation)?;
            core.store
                .insert_sightings(&record.agent_id, vec![sighting])
                .await?;
            Ok(())
        }
        None => Err(Status::invalid_argument("empty message")),
    }
}
