//! Which agents hold a live session right now, and the handles to reach them:
//! the outbound message channel and a kill switch (revocation, replacement by
//! a newer session). Also the event feed that the CLI, the demo and tests
//! watch instead of polling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::Status;
use vantage_proto::domain::{AgentHealth, Outcome};
use vantage_proto::pb;

/// What flows to one agent: messages, or a final status that ends the stream.
pub type Outbound = mpsc::UnboundedSender<Result<pb::CoordinatorMessage, Status>>;

/// The results of one plan in one stored transaction, by outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanTally {
    /// The plan.
    pub plan_id: String,
    /// Results per outcome, each outcome once.
    pub outcomes: Vec<(Outcome, u64)>,
}

impl PlanTally {
    /// Every result counted.
    pub fn total(&self) -> u64 {
        self.outcomes.iter().map(|(_, n)| n).sum()
    }
}

/// Something that happened to an agent or a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// An agent's session started.
    Connected {
        /// Agent name.
        name: String,
        /// Its region.
        region: String,
    },
    /// An agent's session ended.
    Disconnected {
        /// Agent name.
        name: String,
        /// Why.
        reason: String,
    },
    /// An agent refused a plan.
    PlanRejected {
        /// The plan.
        plan_id: String,
        /// Agent name.
        agent: String,
        /// The agent's reason.
        reason: String,
    },
    /// One transaction of results was committed.
    ResultsStored {
        /// Results received in the transaction.
        received: u64,
        /// Results newly stored (replayed ones count 0).
        new: u64,
        /// The agents whose results were in it: an agent still sending is
        /// never declared lost.
        agents: Vec<String>,
        /// Per plan, the results it held by outcome (what a campaign's
        /// progress shows).
        tallies: Vec<PlanTally>,
    },
    /// An agent reported (durably) that it ran every probe of a plan.
    PlanFinished {
        /// The plan.
        plan_id: String,
        /// Agent name.
        agent: String,
    },
}

struct Entry {
    session_id: u64,
    name: String,
    remote_addr: Option<String>,
    outbound: Outbound,
    kill: Option<oneshot::Sender<Status>>,
    /// What the agent last reported of its health on this session.
    health: Option<AgentHealth>,
}

/// The live sessions, keyed by agent id.
pub struct Registry {
    sessions: Mutex<HashMap<String, Entry>>,
    next_session: AtomicU64,
    events: broadcast::Sender<AgentEvent>,
}

impl Default for Registry {
    fn default() -> Self {
        let (events, _) = broadcast::channel(4096);
        Registry {
            sessions: Mutex::default(),
            next_session: AtomicU64::new(1),
            events,
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock leaves the map itself consistent.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    /// Publishes an event (no subscriber is fine).
    pub fn emit(&self, event: AgentEvent) {
        let _ = self.events.send(event);
    }

    /// Registers a new session for `agent_id`; an older session of the same
    /// agent is ended (a reconnect may race the old stream's teardown).
    pub fn register(
        &self,
        agent_id: &str,
        name: &str,
        remote_addr: Option<String>,
        outbound: Outbound,
    ) -> (u64, oneshot::Receiver<Status>) {
        let session_id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (kill, killed) = oneshot::channel();
        let old = self.lock().insert(
            agent_id.to_string(),
            Entry {
                session_id,
                name: name.to_string(),
                remote_addr,
                outbound,
                kill: Some(kill),
                health: None,
            },
        );
        if let Some(mut old) = old {
            if let Some(kill) = old.kill.take() {
                let _ = kill.send(Status::aborted(
                    "replaced by a newer session of the same agent",
                ));
            }
        }
        (session_id, killed)
    }

    /// Removes the session if it is still the registered one.
    pub fn unregister(&self, agent_id: &str, session_id: u64) -> bool {
        let mut sessions = self.lock();
        if sessions
            .get(agent_id)
            .is_some_and(|e| e.session_id == session_id)
        {
            sessions.remove(agent_id);
            true
        } else {
            false
        }
    }

    /// Ends the agent's session with `status`. False if it had none.
    pub fn kill(&self, agent_id: &str, status: Status) -> bool {
        let mut sessions = self.lock();
        match sessions.get_mut(agent_id).and_then(|e| e.kill.take()) {
            Some(kill) => kill.send(status).is_ok(),
            None => false,
        }
    }

    /// Ends every session with `status` (shutdown).
    pub fn kill_all(&self, status: Status) {
        for entry in self.lock().values_mut() {
            if let Some(kill) = entry.kill.take() {
                let _ = kill.send(status.clone());
            }
        }
    }

    /// The outbound channel of a connected agent.
    pub fn outbound(&self, agent_id: &str) -> Option<Outbound> {
        self.lock().get(agent_id).map(|e| e.outbound.clone())
    }

    /// Whether the agent has a live session, and its remote address.
    pub fn connection(&self, agent_id: &str) -> Option<Option<String>> {
        self.lock().get(agent_id).map(|e| e.remote_addr.clone())
    }

    /// Records the health a connected agent reported (Hello or Heartbeat).
    pub fn set_health(&self, agent_id: &str, health: AgentHealth) {
        if let Some(entry) = self.lock().get_mut(agent_id) {
            entry.health = Some(health);
        }
    }

    /// The health a connected agent last reported.
    pub fn health(&self, agent_id: &str) -> Option<AgentHealth> {
        self.lock().get(agent_id).and_then(|e| e.health.clone())
    }

    /// Names of the agents connected now.
    pub fn connected_names(&self) -> Vec<String> {
        self.lock().values().map(|e| e.name.clone()).collect()
    }
}
