//! How a coordinator reaches what another one holds, through the database's
//! mailbox ([`Store::post_mail`]) and nothing else:
//! - **to agents**: a plan or a cancel for an agent whose session another
//!   coordinator holds is left in that coordinator's mailbox, and it hands
//!   it to the session ([`deliver_to_agent`]);
//! - **back to campaigns**: the events of an agent's plans (results stored,
//!   a plan finished or refused) that belong to another coordinator's
//!   campaign are left in that coordinator's mailbox, and it re-emits them
//!   into its own registry, where its campaign follows them as if the
//!   agent were its own.
//!
//! [`run`] drives both on a shared database: one task reads this
//! coordinator's mailbox whenever the database announces mail for it (at
//! the latest every [`POLL`]), one forwards its agents' events.
//! An event re-emitted here concerns a plan owned here, so it is never
//! forwarded again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::{broadcast, watch, Notify};
use vantage_proto::domain::Outcome;
use vantage_proto::pb;

use crate::registry::{AgentEvent, PlanTally, Registry};
use crate::store::{Mail, MailBody, Store};

/// How often a coordinator reads its mailbox when nothing announced new
/// mail: a backstop, since the database announces each piece at commit
/// ([`Store::announce_changes`]) and the reader wakes at once.
pub const POLL: Duration = Duration::from_secs(1);
/// Pieces of mail taken per read.
const BATCH: u32 = 256;
/// Plans whose owner is remembered, at most (one campaign has one per
/// region; this covers thousands running at once).
const OWNER_CACHE: usize = 100_000;

/// An agent event as it travels between coordinators: the campaign-facing
/// subset of [`AgentEvent`], outcomes by name.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Relayed {
    Results {
        agents: Vec<String>,
        tallies: Vec<(String, Vec<(Outcome, u64)>)>,
        received: u64,
        new: u64,
    },
    Finished {
        plan_id: String,
        agent: String,
    },
    Rejected {
        plan_id: String,
        agent: String,
        reason: String,
    },
}

impl Relayed {
    fn into_event(self) -> AgentEvent {
        match self {
            Relayed::Results {
                agents,
                tallies,
                received,
                new,
            } => AgentEvent::ResultsStored {
                received,
                new,
                agents,
                tallies: tallies
                    .into_iter()
                    .map(|(plan_id, outcomes)| PlanTally { plan_id, outcomes })
                    .collect(),
            },
            Relayed::Finished { plan_id, agent } => AgentEvent::PlanFinished { plan_id, agent },
            Relayed::Rejected {
                plan_id,
                agent,
                reason,
            } => AgentEvent::PlanRejected {
                plan_id,
                agent,
                reason,
            },
        }
    }
}

/// Leaves `message` for `agent_id`'s session at coordinator `holder`.
pub async fn deliver_to_agent(
    store: &dyn Store,
    me: &str,
    holder: &str,
    agent_id: &str,
    message: &pb::CoordinatorMessage,
) -> Result<(), crate::store::StoreError> {
    store
        .post_mail(Mail {
            to: holder.to_owned(),
            from: me.to_owned(),
            body: MailBody::ToAgent {
                agent_id: agent_id.to_owned(),
                message: message.encode_to_vec(),
            },
        })
        .await
}

/// Reads this coordinator's mailbox and forwards its agents' events to the
/// coordinators whose campaigns they belong to, until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    me: String,
    new_mail: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
) {
    let events = registry.subscribe();
    tokio::join!(
        read_mailbox(
            store.clone(),
            registry,
            me.clone(),
            new_mail,
            shutdown.clone()
        ),
        forward_events(store, events, me, shutdown),
    );
}

async fn read_mailbox(
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    me: String,
    new_mail: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match store.take_mail(&me, BATCH).await {
            Ok(mail) => {
                let full = mail.len() == BATCH as usize;
                for piece in mail {
                    open(&registry, piece);
                }
                if full {
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read this coordinator's mailbox"),
        }
        tokio::select! {
            _ = new_mail.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn open(registry: &Registry, mail: Mail) {
    match mail.body {
        MailBody::ToAgent { agent_id, message } => {
            let Ok(message) = pb::CoordinatorMessage::decode(message.as_slice()) else {
                tracing::warn!(from = %mail.from, "undecodable message for an agent; dropped");
                return;
            };
            match registry.outbound(&agent_id) {
                Some(outbound) => {
                    let _ = outbound.send(Ok(message));
                }
                // The agent moved on: its plan ends as lost at its campaign's
                // deadline, as for an agent that disconnects.
                None => {
                    tracing::warn!(%agent_id, from = %mail.from, "a message for an agent no longer here; dropped")
                }
            }
        }
        MailBody::Event(bytes) => match serde_json::from_slice::<Relayed>(&bytes) {
            Ok(event) => registry.emit(event.into_event()),
            Err(e) => tracing::warn!(from = %mail.from, error = %e, "undecodable relayed event"),
        },
    }
}

async fn forward_events(
    store: Arc<dyn Store>,
    mut events: broadcast::Receiver<AgentEvent>,
    me: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut owners: HashMap<String, Option<String>> = HashMap::new();
    // A campaign changes hands when its owner dies: owners are looked up
    // afresh once a lease, so events follow the adopter.
    let mut owners_since = tokio::time::Instant::now();
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = shutdown.changed() => return,
        };
        let event = match event {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "agent events lagged; campaigns elsewhere may miss progress"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let plans: Vec<String> = match &event {
            AgentEvent::ResultsStored { tallies, .. } => {
                tallies.iter().map(|t| t.plan_id.clone()).collect()
            }
            AgentEvent::PlanFinished { plan_id, .. } | AgentEvent::PlanRejected { plan_id, .. } => {
                vec![plan_id.clone()]
            }
            _ => continue,
        };
        if owners_since.elapsed() >= crate::cluster::LEASE {
            owners.clear();
            owners_since = tokio::time::Instant::now();
        }
        let unknown: Vec<String> = plans
            .iter()
            .filter(|p| !owners.contains_key(*p))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            if owners.len() + unknown.len() > OWNER_CACHE {
                owners.clear();
            }
            match store.plan_owners(&unknown).await {
                Ok(found) => {
                    for plan in &unknown {
                        owners.insert(plan.clone(), None);
                    }
                    for (plan, owner) in found {
                        owners.insert(plan, Some(owner));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look up whose campaigns these results are");
                    continue;
                }
            }
        }
        let owner_of = |plan: &str| owners.get(plan).cloned().flatten().filter(|o| *o != me);
        let mut outgoing: Vec<(String, Relayed)> = Vec::new();
        match event {
            AgentEvent::ResultsStored {
                agents,
                tallies,
                received,
                new,
            } => {
                let mut by_owner: HashMap<String, Vec<PlanTally>> = HashMap::new();
                for tally in tallies {
                    if let Some(owner) = owner_of(&tally.plan_id) {
                        by_owner.entry(owner).or_default().push(tally);
                    }
                }
                for (owner, tallies) in by_owner {
                    outgoing.push((
                        owner,
                        Relayed::Results {
                            agents: agents.clone(),
                            tallies: tallies
                                .into_iter()
                                .map(|t| (t.plan_id, t.outcomes))
                                .collect(),
                            received,
                            new,
                        },
                    ));
                }
            }
            AgentEvent::PlanFinished { plan_id, agent } => {
                if let Some(owner) = owner_of(&plan_id) {
                    outgoing.push((owner, Relayed::Finished { plan_id, agent }));
                }
            }
            AgentEvent::PlanRejected {
                plan_id,
                agent,
                reason,
            } => {
                if let Some(owner) = owner_of(&plan_id) {
                    outgoing.push((
                        owner,
                        Relayed::Rejected {
                            plan_id,
                            agent,
                            reason,
                        },
                    ));
                }
            }
            _ => {}
        }
        for (owner, relayed) in outgoing {
            let Ok(body) = serde_json::to_vec(&relayed) else {
                continue;
            };
            let mail = Mail {
                to: owner,
                from: me.clone(),
                body: MailBody::Event(body),
            };
            if let Err(e) = store.post_mail(mail).await {
                tracing::warn!(error = %e, "cannot relay an agent event to its campaign's coordinator");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_events_round_trip_as_the_events_campaigns_follow() {
        let results = Relayed::Results {
            agents: vec!["fra-1".into()],
            tallies: vec![("p".into(), vec![(Outcome::Ok, 3), (Outcome::Reset, 1)])],
            received: 4,
            new: 4,
        };
        let bytes = serde_json::to_vec(&results).unwrap();
        let back: Relayed = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, results);
        assert_eq!(
            back.into_event(),
            AgentEvent::ResultsStored {
                received: 4,
                new: 4,
                agents: vec!["fra-1".into()],
                tallies: vec![PlanTally {
                    plan_id: "p".into(),
                    outcomes: vec![(Outcome::Ok, 3), (Outcome::Reset, 1)],
                }],
            }
        );
        let finished = Relayed::Finished {
            plan_id: "p".into(),
            agent: "fra-1".into(),
        };
        assert_eq!(
            serde_json::from_slice::<Relayed>(&serde_json::to_vec(&finished).unwrap())
                .unwrap()
                .into_event(),
            AgentEvent::PlanFinished {
                plan_id: "p".into(),
                agent: "fra-1".into()
            }
        );
    }

    #[tokio::test]
    async fn an_agents_events_reach_the_coordinator_of_their_campaign_and_plans_reach_the_agent() {
        let store: Arc<dyn Store> = Arc::new(crate::store::SqliteStore::open_in_memory().unwrap());
        store
            .insert_campaign("camp", 1, "{}", &["eu".to_owned()], "a")
            .await
            .unwrap();
        store
            .insert_plan(crate::store::NewPlan {
                plan_id: "p".into(),
                campaign_id: Some("camp".into()),
                created_at_ms: 1,
                probes_json: "[]".into(),
                agents: vec![("a-1".into(), 1)],
            })
            .await
            .unwrap();
        // b holds the agent; a runs the campaign.
        let (a, b) = (Arc::new(Registry::default()), Arc::new(Registry::default()));
        let (outbound, mut to_agent) = tokio::sync::mpsc::unbounded_channel();
        b.register("a-1", "fra-1", None, outbound);
        let (stop, shutdown) = watch::channel(false);
        let mut seen_by_a = a.subscribe();
        let tasks = [
            tokio::spawn(run(
                store.clone(),
                a.clone(),
                "a".into(),
                Arc::new(Notify::new()),
                shutdown.clone(),
            )),
            tokio::spawn(run(
                store.clone(),
                b.clone(),
                "b".into(),
                Arc::new(Notify::new()),
                shutdown.clone(),
            )),
        ];
        // a's plan reaches b's session.
        let plan = pb::CoordinatorMessage {
            body: Some(pb::coordinator_message::Body::Cancel(pb::Cancel {
                plan_id: "p".into(),
            })),
        };
        deliver_to_agent(store.as_ref(), "a", "b", "a-1", &plan)
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), to_agent.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, plan);
        // b's agent finishes: a hears it, once.
        b.emit(AgentEvent::PlanFinished {
            plan_id: "p".into(),
            agent: "fra-1".into(),
        });
        let heard = tokio::time::timeout(Duration::from_secs(10), seen_by_a.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            heard,
            AgentEvent::PlanFinished {
                plan_id: "p".into(),
                agent: "fra-1".into()
            }
        );
        let _ = stop.send(true);
        for task in tasks {
            task.await.unwrap();
        }
        // Nothing went back to b: a's own events are not forwarded again.
        assert!(store.take_mail("b", 10).await.unwrap().is_empty());
    }
}
