//! The agent's session with the coordinator, as an explicit state machine:
//! `Connecting → Connected → Disconnected(backoff) → Connecting …`, ending in
//! `Stopped` (shutdown) or a fatal error (the coordinator refused us).
//!
//! While connected, the session replays every unacknowledged spooled batch,
//! sends new ones as plans produce them (bounded by a window of batches in
//! flight), deletes a batch only on its `Ack`, exchanges heartbeats, and
//! treats a silent coordinator (three missed heartbeats) as a lost link.
//!
//! The room: this state machine, [`enroll`] (the one-time token exchange),
//! [`identity`] (the key, certificates and state-directory lock it starts
//! from) and [`backoff`] (the jittered reconnect delay). It drives the
//! runner and the spool through their public APIs; it never imports the
//! CLI, the probe engine's internals or the witness.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use vantage_proto::pb;
use vantage_proto::pb::agent_message::Body as Up;
use vantage_proto::pb::agent_service_client::AgentServiceClient;
use vantage_proto::pb::coordinator_message::Body as Down;

pub mod backoff;
pub mod enroll;
pub mod identity;

use crate::runner::Runner;
use crate::spool::{Spool, SpoolHealth};
use backoff::{Backoff, BackoffConfig};
use identity::Identity;
use vantage_support::time::now_ms;
use vantage_support::tls::{TlsConnector, TlsError};

/// How long the coordinator has to answer `Hello` with `Welcome`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
/// Batches sent but not yet acknowledged, at most.
const WINDOW: usize = 8;
/// Longest reason or error text sent to the coordinator (it refuses longer).
const MAX_REASON: usize = 1024;

/// `text` cut to at most `MAX_REASON` bytes, on a character boundary.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The wire form of the spool's health.
fn health_message(health: &SpoolHealth) -> pb::AgentHealth {
    pb::AgentHealth {
        spool_writable: health.writable(),
        spool_error: bounded(health.error.clone().unwrap_or_default()),
        spool_bytes_free: health.bytes_free.unwrap_or(0),
    }
}

/// Whether a failed call is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The link or the coordinator had a passing problem: reconnect with backoff.
    Transient,
    /// The coordinator refused this agent: retrying cannot help.
    Fatal,
}

/// Classifies a status from the coordinator.
pub fn classify(status: &Status) -> Recovery {
    match status.code() {
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::InvalidArgument
        | Code::Unimplemented => Recovery::Fatal,
        _ => Recovery::Transient,
    }
}

/// What the session reports to whoever watches it (logs, tests, the demo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The coordinator welcomed us.
    Connected {
        /// Our agent id.
        agent_id: String,
    },
    /// The link was lost; reconnecting after `retry_in`.
    Disconnected {
        /// Why.
        reason: String,
        /// The backoff delay chosen.
        retry_in: Duration,
    },
    /// The coordinator refused us; the agent stops.
    Fatal {
        /// Why.
        reason: String,
    },
    /// A plan was accepted and started.
    PlanStarted {
        /// The plan.
        plan_id: String,
    },
    /// A plan was refused.
    PlanRejected {
        /// The plan.
        plan_id: String,
        /// Why.
        reason: String,
    },
    /// A plan has run to the end and its results are spooled.
    PlanSpooled {
        /// The plan.
        plan_id: String,
        /// Results produced.
        results: u64,
    },
    /// The coordinator acknowledged a batch.
    Acked {
        /// The batch.
        seq: u64,
    },
}

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The coordinator refused this agent (revoked, unknown, bad request).
    #[error("the coordinator refused this agent: {0}")]
    Refused(String),
    /// The stored credentials are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Everything the session needs.
pub struct SessionConfig {
    /// Who we are.
    pub identity: Identity,
    /// Reconnect policy (already validated).
    pub backoff: BackoffConfig,
    /// Source address for the coordinator connection and probes.
    pub bind_ip: Option<std::net::IpAddr>,
    /// Capabilities advertised in Hello.
    pub capabilities: Vec<String>,
}

enum State {
    Connecting,
    Connected(Box<Live>),
    Disconnected { retry_in: Duration },
    Stopped,
}

struct Live {
    tx: mpsc::Sender<pb::AgentMessage>,
    inbound: Streaming<pb::CoordinatorMessage>,
    heartbeat: Duration,
    renewal: Option<Renewal>,
}

enum End {
    Shutdown,
    Transient(String),
    Fatal(String),
}

impl From<Status> for End {
    fn from(status: Status) -> Self {
        let reason = format!("{:?}: {}", status.code(), status.message());
        match classify(&status) {
            Recovery::Fatal => End::Fatal(reason),
            Recovery::Transient => End::Transient(reason),
        }
    }
}

/// A running agent: session, spool and plan runner.
pub struct Agent {
    config: SessionConfig,
    spool: Arc<Spool>,
    runner: Runner,
    spooled: Arc<Notify>,
    events: broadcast::Sender<SessionEvent>,
    plans: Arc<Mutex<HashMap<String, tokio::task::AbortHandle>>>,
    /// Plans stopped because their results could not be spooled: rejected
    /// to the coordinator as soon as a session is live.
    rejections: Arc<Mutex<Vec<pb::PlanRejected>>>,
    state_lock: Option<std::fs::File>,
    observations: tokio::sync::Mutex<Option<mpsc::Receiver<pb::Observation>>>,
    /// The state directory, where renewed certificates and the learned
    /// coordinators' addresses are stored (`None`: no renewal, and what is
    /// learned is kept in memory only).
    renew_dir: Option<std::path::PathBuf>,
    /// A renewed identity waiting for the next connection.
    renewed: Arc<std::sync::Mutex<Option<Identity>>>,
    /// The coordinators to connect to, in order: the token's at first, then
    /// what the coordinators say of their installation.
    coordinators: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Most coordinator addresses an agent keeps from what it is told.
const MAX_COORDINATORS: usize = 32;
/// Longest coordinator address accepted from the wire.
const MAX_COORDINATOR_ADDR: usize = 261;

/// The certificate renewal running beside one connection; it tells the
/// session to reconnect once the renewed certificate is itself due, since
/// this connection still authenticates with the old one.
struct Renewal {
    task: tokio::task::JoinHandle<()>,
    reconnect: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Drop for Renewal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn renewal_wants_reconnect(renewal: &mut Option<Renewal>) {
    if let Some(rx) = renewal.as_mut().and_then(|r| r.reconnect.as_mut()) {
        if rx.await.is_ok() {
            return;
        }
    }
    // No renewal, or it gave up: never poll the finished receiver again.
    if let Some(r) = renewal.as_mut() {
        r.reconnect = None;
    }
    std::future::pending().await
}

fn until(at: std::time::SystemTime) -> Duration {
    at.duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// The next witness observation, or never when this agent is no witness.
async fn next_observation(
    observations: &mut Option<mpsc::Receiver<pb::Observation>>,
) -> Option<pb::Observation> {
    match observations {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn message(body: Up) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body) }
}

impl Agent {
    /// An agent that will connect with `config`, spool into `spool` and run
    /// plans on `runner`.
    pub fn new(config: SessionConfig, spool: Arc<Spool>, runner: Runner) -> Self {
        let (events, _) = broadcast::channel(1024);
        Agent {
            spool,
            runner,
            spooled: Arc::new(Notify::new()),
            events,
            plans: Arc::default(),
            rejections: Arc::default(),
            state_lock: None,
            observations: tokio::sync::Mutex::new(None),
            renew_dir: None,
            renewed: Arc::default(),
            coordinators: Arc::new(std::sync::Mutex::new(
                config.identity.info.coordinator.clone(),
            )),
            config,
        }
    }

    /// The coordinators this agent connects to, in order.
    pub fn coordinators(&self) -> Vec<String> {
        self.coordinators
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Takes the installation's coordinators as a coordinator lists them
    /// (Welcome, heartbeats) and stores the result in the state directory,
    /// so failover reaches coordinators added after enrollment and a
    /// restart still knows them. The live ones it names go first; the ones
    /// this agent knew and it did not name stay after them, since a view
    /// of the installation can be a moment old (a coordinator that just
    /// joined) or briefly short (one restarting). An empty list (an older
    /// coordinator) or a malformed one changes nothing.
    fn learn_coordinators(&self, told: &[String]) {
        let Some(told) = accepted_coordinators(told) else {
            return;
        };
        let learned = {
            let mut current = self.coordinators.lock().unwrap_or_else(|e| e.into_inner());
            let learned = merged_coordinators(told, &current);
            if *current == learned {
                return;
            }
            *current = learned.clone();
            learned
        };
        let listed = learned.join(", ");
        if let Some(dir) = &self.renew_dir {
            let mut identity = self.config.identity.clone();
            identity.info.coordinator = learned;
            if let Err(e) = identity.save_info(dir) {
                tracing::warn!(error = %e, "cannot store the coordinators' addresses; they are kept until the agent stops");
            }
        }
        // Said once stored: whoever reads this finds them in the state dir.
        tracing::info!(coordinators = %listed, "learned the installation's coordinators");
    }

    /// Renews the agent certificate over the session before it expires
    /// (once less than a third of its lifetime is left), storing the new one
    /// in `state_dir`; the next connection uses it. The coordinators'
    /// addresses the installation announces are stored there too.
    pub fn renew_certs_in(mut self, state_dir: std::path::PathBuf) -> Self {
        self.renew_dir = Some(state_dir);
        self
    }

    fn start_renewal(
        &self,
        channel: tonic::transport::Channel,
        identity: &Identity,
    ) -> Option<Renewal> {
        let dir = self.renew_dir.clone()?;
        let due = identity.renewal_due()?;
        let identity = identity.clone();
        let renewed = self.renewed.clone();
        let (tx, reconnect) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            tokio::time::sleep(until(due)).await;
            // Bounded retries, a minute apart: a later connection tries again.
            for _ in 0..1000 {
                match crate::session::enroll::renew(channel.clone(), &identity).await {
                    Ok(new) => {
                        // The coordinator now accepts only the new one: keep
                        // it for the next connection even if it cannot be
                        // stored (then a restart needs a new enrollment).
                        match new.save_cert(&dir) {
                            Ok(()) => tracing::info!("agent certificate renewed"),
                            Err(e) => tracing::error!(
                                error = %e,
                                "agent certificate renewed but cannot be stored"
                            ),
                        }
                        let next_due = new.renewal_due();
                        *renewed.lock().unwrap_or_else(|e| e.into_inner()) = Some(new);
                        if let Some(at) = next_due {
                            tokio::time::sleep(until(at)).await;
                        }
                        let _ = tx.send(());
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "certificate renewal failed; retrying"),
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
        Some(Renewal {
            task,
            reconnect: Some(reconnect),
        })
    }

    /// Forwards these witness observations to the coordinator while
    /// connected (they wait in the channel while the link is down).
    pub fn with_observations(self, observations: mpsc::Receiver<pb::Observation>) -> Self {
        Agent {
            observations: tokio::sync::Mutex::new(Some(observations)),
            ..self
        }
    }

    /// Keeps the state directory's lock for as long as this agent lives.
    pub fn hold_state_lock(mut self, lock: std::fs::File) -> Self {
        self.state_lock = Some(lock);
        self
    }

    /// Whether this agent holds its state directory's lock.
    pub fn holds_state_lock(&self) -> bool {
        self.state_lock.is_some()
    }

    /// Events of this agent's session, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.subscribe()
    }

    fn emit(&self, event: SessionEvent) {
        let _ = self.events.send(event);
    }

    /// Runs until `shutdown` resolves (Ok) or the coordinator refuses us (Err).
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), SessionError> {
        let mut identity = self.config.identity.clone();
        let mut tls = identity.client_config()?;
        let mut backoff =
            Backoff::new(self.config.backoff).map_err(|e| SessionError::Refused(e.to_string()))?;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
        let mut next_addr = 0usize;
        // The coordinator of the live session, if any.
        let mut on_addr = String::new();
        tokio::pin!(shutdown);

        let mut state = State::Connecting;
        loop {
            state = match state {
                State::Connecting => {
                    let renewed = self
                        .renewed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take();
                    if let Some(new) = renewed {
                        identity = new;
                        tls = identity.client_config()?;
                    }
                    let addrs = self.coordinators();
                    let Some(addr) = addrs.get(next_addr % addrs.len().max(1)).cloned() else {
                        return Err(self.fatal("the identity names no coordinator".into()));
                    };
                    let attempt = self.connect(&addr, tls.clone(), &identity);
                    tokio::select! {
                        _ = &mut shutdown => State::Stopped,
                        result = attempt => match result {
                            Ok(live) => {
                                backoff.reset();
                                on_addr = addr;
                                State::Connected(Box::new(live))
                            }
                            Err(End::Fatal(reason)) => return Err(self.fatal(reason)),
                            Err(End::Transient(reason)) => {
                                next_addr += 1;
                                self.disconnected(reason, backoff.next_delay(&mut rng))
                            }
                            Err(End::Shutdown) => State::Stopped,
                        }
                    }
                }
                State::Connected(live) => match self.serve(*live, &mut shutdown).await {
                    End::Shutdown => State::Stopped,
                    End::Fatal(reason) => return Err(self.fatal(reason)),
                    End::Transient(reason) => {
                        next_addr = after_losing(&self.coordinators(), &on_addr, next_addr);
                        self.disconnected(reason, backoff.next_delay(&mut rng))
                    }
                },
                State::Disconnected { retry_in } => {
                    tokio::select! {
                        _ = &mut shutdown => State::Stopped,
                        _ = tokio::time::sleep(retry_in) => State::Connecting,
                    }
                }
                State::Stopped => return Ok(()),
            }
        }
    }

    fn fatal(&self, reason: String) -> SessionError {
        tracing::error!(%reason, "the coordinator refused this agent");
        self.emit(SessionEvent::Fatal {
            reason: reason.clone(),
        });
        SessionError::Refused(reason)
    }

    fn disconnected(&self, reason: String, retry_in: Duration) -> State {
        tracing::warn!(%reason, ?retry_in, "session lost; reconnecting");
        self.emit(SessionEvent::Disconnected { reason, retry_in });
        State::Disconnected { retry_in }
    }

    /// The spool's health, tested off the async runtime.
    async fn spool_health(&self) -> SpoolHealth {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.health())
            .await
            .unwrap_or_else(|e| SpoolHealth {
                error: Some(format!("spool check failed: {e}")),
                bytes_free: None,
            })
    }

    fn hello(&self, health: &SpoolHealth) -> pb::Hello {
        let info = &self.config.identity.info;
        pb::Hello {
            name: info.name.clone(),
            region: info.region.clone(),
            labels: info.labels.clone().into_iter().collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            capabilities: self.config.capabilities.clone(),
            spool_bytes: self.spool.bytes(),
            spool_batches: self.spool.len() as u64,
            health: Some(health_message(health)),
        }
    }

    async fn connect(
        &self,
        addr: &str,
        tls: Arc<rustls::ClientConfig>,
        identity: &Identity,
    ) -> Result<Live, End> {
        let channel = TlsConnector::new(addr, tls, self.config.bind_ip)
            .and_then(|c| c.channel(Duration::from_secs(10)))
            .map_err(|e| End::Fatal(e.to_string()))?;
        let mut client = AgentServiceClient::new(channel.clone());
        let (tx, rx) = mpsc::channel(WINDOW * 2);
        let health = self.spool_health().await;
        tx.send(message(Up::Hello(self.hello(&health))))
            .await
            .map_err(|_| End::Transient("session channel closed".into()))?;
        let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
        let first = tokio::time::timeout(WELCOME_TIMEOUT, inbound.message())
            .await
            .map_err(|_| End::Transient("no Welcome from the coordinator".into()))??;
        let Some(pb::CoordinatorMessage {
            body: Some(Down::Welcome(welcome)),
        }) = first
        else {
            return Err(End::Transient(
                "the coordinator did not start with Welcome".into(),
            ));
        };
        let heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
        tracing::info!(agent_id = %welcome.agent_id, %addr, "session established");
        self.learn_coordinators(&welcome.coordinators);
        self.emit(SessionEvent::Connected {
            agent_id: welcome.agent_id,
        });
        Ok(Live {
            tx,
            inbound,
            heartbeat,
            renewal: self.start_renewal(channel, identity),
        })
    }

    async fn serve(
        &self,
        mut live: Live,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> End {
        let mut in_flight = BTreeSet::new();
        let mut ticker = tokio::time::interval(live.heartbeat);
        let mut last_heard = Instant::now();
        // Only the live session reads witness observations; holding the lock
        // for the connection's life keeps unsent ones queued across reconnects.
        let mut observations = self.observations.lock().await;
        loop {
            if let Err(end) = self.fill_window(&live.tx, &mut in_flight).await {
                return end;
            }
            tokio::select! {
                _ = &mut *shutdown => return End::Shutdown,
                _ = renewal_wants_reconnect(&mut live.renewal) => {
                    return End::Transient("reconnecting with the renewed certificate".into());
                }
                incoming = live.inbound.message() => {
                    last_heard = Instant::now();
                    match incoming {
                        Ok(Some(msg)) => {
                            if let Err(end) = self.handle(msg, &live.tx, &mut in_flight).await {
                                return end;
                            }
                        }
                        Ok(None) => return End::Transient("the coordinator closed the session".into()),
                        Err(status) => return status.into(),
                    }
                }
                _ = self.spooled.notified() => {}
                Some(observation) = next_observation(&mut observations) => {
                    if live.tx.send(message(Up::Observation(observation))).await.is_err() {
                        return End::Transient("session stream closed".into());
                    }
                }
                _ = ticker.tick() => {
                    if last_heard.elapsed() > live.heartbeat * 3 {
                        return End::Transient("no word from the coordinator for three heartbeats".into());
                    }
                    let health = self.spool_health().await;
                    let beat = message(Up::Heartbeat(pb::Heartbeat {
                        sent_at_unix_ms: now_ms(),
                        health: Some(health_message(&health)),
                        coordinators: Vec::new(),
                    }));
                    if live.tx.send(beat).await.is_err() {
                        return End::Transient("session stream closed".into());
                    }
                }
            }
        }
    }

    async fn fill_window(
        &self,
        tx: &mpsc::Sender<pb::AgentMessage>,
        in_flight: &mut BTreeSet<u64>,
    ) -> Result<(), End> {
        let rejections = match self.rejections.lock() {
            Ok(mut queued) => std::mem::take(&mut *queued),
            Err(_) => Vec::new(),
        };
        let mut rejections = rejections.into_iter();
        while let Some(rejected) = rejections.next() {
            if let Err(unsent) = tx.send(message(Up::PlanRejected(rejected))).await {
                // Kept for the next session: the coordinator must still learn it.
                if let (Ok(mut queued), Some(Up::PlanRejected(rejected))) =
                    (self.rejections.lock(), unsent.0.body)
                {
                    queued.push(rejected);
                    queued.extend(rejections);
                }
                return Err(End::Transient("session stream closed".into()));
            }
        }
        if in_flight.len() >= WINDOW {
            return Ok(());
        }
        for seq in self.spool.pending() {
            if in_flight.len() >= WINDOW {
                break;
            }
            if in_flight.contains(&seq) {
                continue;
            }
            let batch = match self.spool.read(seq) {
                Ok(batch) => batch,
                Err(e) => {
                    // A damaged batch is quarantined by the spool; skip it.
                    tracing::error!(seq, error = %e, "unreadable spooled batch");
                    continue;
                }
            };
            tx.send(message(Up::Results(batch)))
                .await
                .map_err(|_| End::Transient("session stream closed".into()))?;
            in_flight.insert(seq);
        }
        Ok(())
    }

    async fn handle(
        &self,
        msg: pb::CoordinatorMessage,
        tx: &mpsc::Sender<pb::AgentMessage>,
        in_flight: &mut BTreeSet<u64>,
    ) -> Result<(), End> {
        match msg.body {
            Some(Down::Ack(ack)) => {
                in_flight.remove(&ack.seq);
                if let Err(e) = self.spool.remove(ack.seq) {
                    tracing::error!(seq = ack.seq, error = %e, "cannot delete acknowledged batch");
                }
                self.emit(SessionEvent::Acked { seq: ack.seq });
            }
            Some(Down::Plan(plan)) => {
                // A plan is accepted only if its results can be kept: test the
                // spool now rather than trust the last write.
                let health = self.spool_health().await;
                if let Some(reason) = self.refusal(&plan, &health).map(bounded) {
                    tracing::warn!(plan_id = %plan.plan_id, %reason, "refusing plan");
                    self.emit(SessionEvent::PlanRejected {
                        plan_id: plan.plan_id.clone(),
                        reason: reason.clone(),
                    });
                    let rejected = message(Up::PlanRejected(pb::PlanRejected {
                        plan_id: plan.plan_id,
                        reason,
                    }));
                    tx.send(rejected)
                        .await
                        .map_err(|_| End::Transient("session stream closed".into()))?;
                } else {
                    self.start_plan(plan);
                }
            }
            Some(Down::Cancel(cancel)) => {
                if let Ok(mut plans) = self.plans.lock() {
                    if let Some(handle) = plans.remove(&cancel.plan_id) {
                        handle.abort();
                        tracing::info!(plan_id = %cancel.plan_id, "plan cancelled by the coordinator");
                    }
                }
            }
            Some(Down::Heartbeat(beat)) => self.learn_coordinators(&beat.coordinators),
            Some(Down::Welcome(_)) | None => {}
        }
        Ok(())
    }

    fn refusal(&self, plan: &pb::Plan, health: &SpoolHealth) -> Option<String> {
        if let Some(error) = &health.error {
            return Some(format!(
                "spool not writable, results could not be kept: {error}"
            ));
        }
        if self.spool.is_full() {
            return Some(format!(
                "spool full: {} bytes held, limit {} (results wait for the coordinator)",
                self.spool.bytes(),
                self.spool.max_bytes()
            ));
        }
        if plan.plan_id.is_empty() {
            return Some("plan has no id".into());
        }
        if plan.probes.len() > self.runner.limits().plan.max_probes {
            return Some(format!(
                "plan has {} probes, this agent accepts at most {}",
                plan.probes.len(),
                self.runner.limits().plan.max_probes
            ));
        }
        match self.plans.lock() {
            Ok(plans) if plans.contains_key(&plan.plan_id) => {
                Some("plan is already running".into())
            }
            Ok(_) => None,
            Err(_) => Some("agent state is damaged".into()),
        }
    }

    fn start_plan(&self, plan: pb::Plan) {
        let plan_id = plan.plan_id.clone();
        let runner = self.runner.clone();
        let spool = self.spool.clone();
        let spooled = self.spooled.clone();
        let events = self.events.clone();
        let plans = self.plans.clone();
        let rejections = self.rejections.clone();
        let id = plan_id.clone();
        let task = tokio::spawn(async move {
            match runner.run(plan, spool, spooled.clone()).await {
                Ok(results) => {
                    let _ = events.send(SessionEvent::PlanSpooled {
                        plan_id: id.clone(),
                        results,
                    });
                }
                Err(e) => {
                    // The coordinator must learn why the plan will never
                    // finish: it is rejected with the reason, sent as soon as
                    // a session is live.
                    tracing::error!(plan_id = %id, error = %e, "plan stopped: cannot spool results");
                    let reason =
                        bounded(format!("plan stopped, results could not be spooled: {e}"));
                    let _ = events.send(SessionEvent::PlanRejected {
                        plan_id: id.clone(),
                        reason: reason.clone(),
                    });
                    if let Ok(mut queued) = rejections.lock() {
                        queued.push(pb::PlanRejected {
                            plan_id: id.clone(),
                            reason,
                        });
                    }
                    spooled.notify_one();
                }
            }
            if let Ok(mut plans) = plans.lock() {
                plans.remove(&id);
            }
        });
        if let Ok(mut plans) = self.plans.lock() {
            plans.insert(plan_id.clone(), task.abort_handle());
        }
        tracing::info!(%plan_id, "plan started");
        self.emit(SessionEvent::PlanStarted { plan_id });
    }
}

/// The coordinators' list a coordinator sent, deduplicated in order, if
/// it is one to follow: not empty, not oversized, every entry `host:port`.
fn accepted_coordinators(told: &[String]) -> Option<Vec<String>> {
    if told.is_empty()
        || told.len() > MAX_COORDINATORS
        || told.iter().any(|a| {
            a.len() > MAX_COORDINATOR_ADDR || vantage_support::addr::split_host_port(a).is_err()
        })
    {
        return None;
    }
    let mut learned: Vec<String> = Vec::with_capacity(told.len());
    for addr in told {
        if !learned.contains(addr) {
            learned.push(addr.clone());
        }
    }
    Some(learned)
}

/// Where to reconnect after the session with `lost` ended: the first other
/// coordinator in `addrs` (the one lost may be gone, and any coordinator of
/// the installation serves the agent), else `current` (only one is known).
fn after_losing(addrs: &[String], lost: &str, current: usize) -> usize {
    if addrs.len() < 2 {
        return current;
    }
    addrs.iter().position(|a| a != lost).unwrap_or(current)
}

/// `told` (live, in the coordinator's order), then the `known` ones it did
/// not name, at most [`MAX_COORDINATORS`] in all.
fn merged_coordinators(mut told: Vec<String>, known: &[String]) -> Vec<String> {
    for addr in known {
        if !told.contains(addr) {
            told.push(addr.clone());
        }
    }
    told.truncate(MAX_COORDINATORS);
    told
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_session_reconnects_to_another_coordinator_first() {
        let list = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let two = list(&["a:7443", "b:7443"]);
        assert_eq!(after_losing(&two, "a:7443", 0), 1);
        assert_eq!(after_losing(&two, "b:7443", 1), 0);
        // Alone, the only coordinator is retried.
        assert_eq!(after_losing(&list(&["a:7443"]), "a:7443", 0), 0);
    }

    #[test]
    fn what_a_coordinator_names_goes_first_and_nothing_known_is_forgotten() {
        let list = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // A told before B had joined (its view a moment old): B stays.
        assert_eq!(
            merged_coordinators(list(&["a:7443"]), &list(&["a:7443", "b:7443"])),
            list(&["a:7443", "b:7443"])
        );
        // B, connected to now, names itself first, and C that joined.
        assert_eq!(
            merged_coordinators(list(&["b:7443", "c:7443"]), &list(&["a:7443", "b:7443"])),
            list(&["b:7443", "c:7443", "a:7443"])
        );
        let known: Vec<String> = (0..MAX_COORDINATORS)
            .map(|i| format!("10.0.0.{i}:7443"))
            .collect();
        let merged = merged_coordinators(list(&["new:7443"]), &known);
        assert_eq!(merged.len(), MAX_COORDINATORS);
        assert_eq!(merged[0], "new:7443");
    }

    #[test]
    fn only_a_well_formed_coordinators_list_is_followed() {
        let list = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            accepted_coordinators(&list(&[
                "b.example.com:7443",
                "[2001:db8::1]:7443",
                "b.example.com:7443"
            ])),
            Some(list(&["b.example.com:7443", "[2001:db8::1]:7443"]))
        );
        // An older coordinator says nothing: keep what we have.
        assert_eq!(accepted_coordinators(&[]), None);
        // One bad entry and the whole list is ignored.
        assert_eq!(accepted_coordinators(&list(&["a:7443", "no-port"])), None);
        assert_eq!(
            accepted_coordinators(&[format!("{}:7443", "h".repeat(300))]),
            None
        );
        let many: Vec<String> = (0..=MAX_COORDINATORS)
            .map(|i| format!("10.0.0.{i}:7443"))
            .collect();
        assert_eq!(accepted_coordinators(&many), None);
    }

    #[test]
    fn refusals_are_fatal_and_outages_transient() {
        for code in [
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::Unimplemented,
        ] {
            assert_eq!(
                classify(&Status::new(code, "x")),
                Recovery::Fatal,
                "{code:?}"
            );
        }
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Internal,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::Cancelled,
            Code::ResourceExhausted,
        ] {
            assert_eq!(
                classify(&Status::new(code, "x")),
                Recovery::Transient,
                "{code:?}"
            );
        }
    }
}
