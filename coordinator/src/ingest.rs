//! The result ingest path: one writer thread takes batches from every session,
//! stores as many as are waiting in one SQLite transaction, and only then
//! acknowledges each batch to its agent. Coalescing across sessions is what
//! lets one SQLite file keep up with many agents; acknowledging after commit
//! is what makes delivery lossless.

use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::Status;
use vantage_proto::pb;

use crate::registry::{AgentEvent, Outbound, Registry};
use crate::store::Store;
use crate::time::now_ms;

/// Jobs queued at most; a full queue makes sessions wait (backpressure).
const QUEUE: usize = 32;
/// Results stored per transaction, at most.
const MAX_RESULTS_PER_COMMIT: usize = 50_000;

/// One batch from one agent.
#[derive(Debug)]
pub struct IngestJob {
    /// The agent's id.
    pub agent_id: String,
    /// The agent's name (for events).
    pub agent_name: String,
    /// The batch.
    pub batch: pb::ResultBatch,
    /// Where the Ack goes.
    pub reply: Outbound,
}

/// Starts the writer thread; it ends when every sender is dropped.
pub fn spawn(
    store: Arc<Store>,
    registry: Arc<Registry>,
) -> std::io::Result<(mpsc::Sender<IngestJob>, std::thread::JoinHandle<()>)> {
    let (tx, mut rx) = mpsc::channel::<IngestJob>(QUEUE);
    let handle = std::thread::Builder::new()
        .name("vantage-ingest".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut jobs = vec![first];
                let mut results = jobs[0].batch.results.len();
                while results < MAX_RESULTS_PER_COMMIT {
                    match rx.try_recv() {
                        Ok(job) => {
                            results += job.batch.results.len();
                            jobs.push(job);
                        }
                        Err(_) => break,
                    }
                }
                commit(&store, &registry, jobs);
            }
        })?;
    Ok((tx, handle))
}

fn commit(store: &Store, registry: &Registry, jobs: Vec<IngestJob>) {
    let batches: Vec<(&str, &[pb::ProbeResult])> = jobs
        .iter()
        .map(|job| (job.agent_id.as_str(), job.batch.results.as_slice()))
        .collect();
    let stored = store.insert_results(&batches, now_ms()).and_then(|new| {
        for job in &jobs {
            if !job.batch.finished_plan_id.is_empty() {
                store.set_plan_agent_state(
                    &job.batch.finished_plan_id,
                    &job.agent_id,
                    "finished",
                    None,
                )?;
            }
        }
        Ok(new)
    });
    let results: usize = jobs.iter().map(|job| job.batch.results.len()).sum();
    match stored {
        Ok(new) => {
            let mut agents: Vec<String> = Vec::new();
            for job in jobs {
                if !job.batch.results.is_empty() && !agents.contains(&job.agent_name) {
                    agents.push(job.agent_name.clone());
                }
                let ack = pb::CoordinatorMessage {
                    body: Some(pb::coordinator_message::Body::Ack(pb::Ack {
                        seq: job.batch.seq,
                    })),
                };
                let _ = job.reply.send(Ok(ack));
                if !job.batch.finished_plan_id.is_empty() {
                    registry.emit(AgentEvent::PlanFinished {
                        plan_id: job.batch.finished_plan_id.clone(),
                        agent: job.agent_name.clone(),
                    });
                }
            }
            registry.emit(AgentEvent::ResultsStored {
                received: results as u64,
                new,
                agents,
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot store results; sessions will replay");
            for job in jobs {
                // Ending the session makes the agent reconnect and replay
                // from its spool, so nothing is lost.
                let _ = job.reply.send(Err(Status::unavailable(format!(
                    "cannot store results: {e}"
                ))));
            }
        }
    }
}
