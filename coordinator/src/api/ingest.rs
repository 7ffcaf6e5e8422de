//! The result ingest path: one writer thread takes batches from every session,
//! encodes them into store records, stores as many as are waiting with one
//! [`Store::insert_results`] call (one transaction), and only then
//! acknowledges each batch to its agent. Coalescing across sessions is what
//! lets one SQLite file keep up with many agents; acknowledging after commit
//! is what makes delivery lossless.
//!
//! The thread is a plain OS thread, not a task: encoding a 50,000-result
//! commit is CPU work that must not hold a runtime worker. It waits on the
//! async store through the runtime handle it was started with.

use std::sync::Arc;

use prost::Message as _;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tonic::Status;
use vantage_proto::domain::Outcome;
use vantage_proto::pb;

use crate::metrics::Metrics;
use crate::registry::{AgentEvent, Outbound, PlanTally, Registry};
use crate::store::{PlanState, ResultRecord, Store, StoreError};
use crate::time::now_ms;

/// Jobs queued at most; a full queue makes sessions wait (backpressure).
const QUEUE: usize = 32;
/// Results stored per transaction, at most.
const MAX_RESULTS_PER_COMMIT: usize = 50_000;
/// How long a commit that fails for the backend's sake (a database
/// restarting, a lost connection) is retried before its sessions are ended:
/// the sessions wait (unacknowledged, so nothing is lost) rather than
/// reconnect, and it stays well inside three heartbeats.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(20);
/// First delay between retries; it doubles up to [`RETRY_MAX_DELAY`].
const RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(100);
/// Longest delay between retries.
const RETRY_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

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

/// Starts the writer thread; it ends when every sender is dropped. Call it
/// from inside the tokio runtime the store runs on. Each commit adds its new
/// results to `metrics`.
pub fn spawn(
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
) -> std::io::Result<(mpsc::Sender<IngestJob>, std::thread::JoinHandle<()>)> {
    let (tx, mut rx) = mpsc::channel::<IngestJob>(QUEUE);
    let runtime = Handle::current();
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
                runtime.block_on(commit(store.as_ref(), &registry, &metrics, jobs));
            }
        })?;
    Ok((tx, handle))
}

/// The store's record of one result: the columns, and the whole message as
/// its wire encoding. The agent id is the session's, not the result's.
pub fn to_record(agent_id: &str, result: &pb::ProbeResult) -> Result<ResultRecord, StoreError> {
    let outcome = Outcome::try_from(result.outcome)
        .map_err(|e| StoreError::Invalid(format!("result {}: {e}", result.result_id)))?;
    Ok(ResultRecord {
        result_id: result.result_id.clone(),
        plan_id: result.plan_id.clone(),
        agent_id: agent_id.to_owned(),
        probe_id: result.probe_id.clone(),
        attempt: result.attempt,
        outcome,
        status: result.status,
        body: result.encode_to_vec(),
    })
}

/// Decodes stored result records back to the wire messages they were
/// encoded from; a body that does not decode is corrupt storage.
pub fn decode_results(records: &[ResultRecord]) -> Result<Vec<pb::ProbeResult>, StoreError> {
    records
        .iter()
        .map(|record| {
            pb::ProbeResult::decode(record.body.as_slice()).map_err(|e| {
                StoreError::Corrupt(format!("stored result {}: {e}", record.result_id))
            })
        })
        .collect()
}

async fn store_jobs(store: &dyn Store, jobs: &[IngestJob]) -> Result<u64, StoreError> {
    let mut records = Vec::with_capacity(jobs.iter().map(|j| j.batch.results.len()).sum());
    for job in jobs {
        for result in &job.batch.results {
            records.push(to_record(&job.agent_id, result)?);
        }
    }
    let new = store.insert_results(records, now_ms()).await?;
    for job in jobs {
        if !job.batch.finished_plan_id.is_empty() {
            store
                .set_plan_agent_state(
                    &job.batch.finished_plan_id,
                    &job.agent_id,
                    PlanState::Finished,
                    None,
                )
                .await?;
        }
    }
    Ok(new)
}

/// The transaction's results per plan and outcome. A replayed result is
/// counted again; progress caps its count at the plan's expected total.
fn tally(jobs: &[IngestJob]) -> Vec<PlanTally> {
    let mut tallies: Vec<PlanTally> = Vec::new();
    for result in jobs.iter().flat_map(|job| &job.batch.results) {
        let outcome = Outcome::try_from(result.outcome).unwrap_or(Outcome::MalformedResponse);
        let index = match tallies.iter().position(|t| t.plan_id == result.plan_id) {
            Some(index) => index,
            None => {
                tallies.push(PlanTally {
                    plan_id: result.plan_id.clone(),
                    outcomes: Vec::new(),
                });
                tallies.len() - 1
            }
        };
        let outcomes = &mut tallies[index].outcomes;
        match outcomes.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, n)) => *n += 1,
            None => outcomes.push((outcome, 1)),
        }
    }
    tallies
}

/// Stores the jobs, retrying backend failures for [`RETRY_FOR`]; any other
/// error (a result that cannot be stored) is final at once.
async fn store_with_retries(store: &dyn Store, jobs: &[IngestJob]) -> Result<u64, StoreError> {
    let started = tokio::time::Instant::now();
    let mut delay = RETRY_DELAY;
    loop {
        match store_jobs(store, jobs).await {
            Err(StoreError::Backend(e)) if started.elapsed() + delay < RETRY_FOR => {
                tracing::warn!(error = %e, retry_in = ?delay, "cannot store results; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX_DELAY);
            }
            other => return other,
        }
    }
}

async fn commit(store: &dyn Store, registry: &Registry, metrics: &Metrics, jobs: Vec<IngestJob>) {
    let stored = store_with_retries(store, &jobs).await;
    let results: usize = jobs.iter().map(|job| job.batch.results.len()).sum();
    match stored {
        Ok(new) => {
            metrics.results_ingested(new);
            let tallies = tally(&jobs);
            let mut agents: Vec<String> = Vec::new();
            let mut finished: Vec<AgentEvent> = Vec::new();
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
                    finished.push(AgentEvent::PlanFinished {
                        plan_id: job.batch.finished_plan_id.clone(),
                        agent: job.agent_name.clone(),
                    });
                }
            }
            // The results first, then the plans they finished: a campaign
            // counts a plan's last results before it calls the region done.
            registry.emit(AgentEvent::ResultsStored {
                received: results as u64,
                new,
                agents,
                tallies,
            });
            for event in finished {
                registry.emit(event);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_the_wire_message_and_decode_back() {
        let result = pb::ProbeResult {
            result_id: "r1".into(),
            plan_id: "p1".into(),
            probe_id: "direct/plain".into(),
            attempt: 2,
            outcome: pb::Outcome::Reset as i32,
            status: 502,
            url: "https://example.test/".into(),
            body_head: vec![0xab; 64],
            ..pb::ProbeResult::default()
        };
        let record = to_record("a-1", &result).unwrap();
        assert_eq!(
            (
                record.agent_id.as_str(),
                record.plan_id.as_str(),
                record.probe_id.as_str(),
                record.attempt,
                record.outcome,
                record.status
            ),
            ("a-1", "p1", "direct/plain", 2, Outcome::Reset, 502)
        );
        assert_eq!(
            decode_results(std::slice::from_ref(&record)).unwrap(),
            std::slice::from_ref(&result)
        );

        let damaged = ResultRecord {
            body: vec![0xff; 3],
            ..record
        };
        assert!(matches!(
            decode_results(&[damaged]),
            Err(StoreError::Corrupt(_))
        ));
        let unknown = pb::ProbeResult {
            outcome: 999,
            ..result
        };
        assert!(matches!(
            to_record("a-1", &unknown),
            Err(StoreError::Invalid(_))
        ));
    }
}
