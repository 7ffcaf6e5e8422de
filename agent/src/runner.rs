//! Runs a plan on the probe engine and writes its results to the spool in
//! batches. A plan runs independently of the session: a dropped connection
//! does not stop it, and its results wait in the spool until acknowledged.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify, Semaphore};
use vantage_proto::pb;

use crate::probe::{ProbeEngine, RequestSlot};
use crate::spool::{Spool, SpoolError};

/// Results per spooled batch.
const BATCH_RESULTS: usize = 256;
/// A partial batch is flushed after this long, so results flow while a slow
/// probe is still running.
const BATCH_LINGER: Duration = Duration::from_millis(20);

/// Agent-side limits that a plan cannot raise.
#[derive(Debug, Clone, Copy)]
pub struct RunnerLimits {
    /// Requests in flight across all plans.
    pub max_concurrency: usize,
    /// Largest burst honoured per attempt.
    pub max_burst: u32,
    /// Most attempts honoured per probe.
    pub max_attempts: u32,
    /// Most probes accepted in one plan.
    pub max_probes: usize,
}

impl Default for RunnerLimits {
    fn default() -> Self {
        RunnerLimits {
            max_concurrency: 256,
            max_burst: 200,
            max_attempts: 100,
            max_probes: 100_000,
        }
    }
}

/// Runs plans, sharing one concurrency budget.
#[derive(Debug, Clone)]
pub struct Runner {
    engine: ProbeEngine,
    limits: RunnerLimits,
    permits: Arc<Semaphore>,
}

/// The requests one probe spec expands to, after the agent's caps.
pub fn expected_requests(spec: &pb::ProbeSpec, limits: &RunnerLimits) -> u64 {
    u64::from(spec.attempts.clamp(1, limits.max_attempts))
        * u64::from(spec.burst.clamp(1, limits.max_burst))
}

impl Runner {
    /// A runner over `engine` with `limits`.
    pub fn new(engine: ProbeEngine, limits: RunnerLimits) -> Self {
        Runner {
            engine,
            limits,
            permits: Arc::new(Semaphore::new(limits.max_concurrency.max(1))),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &RunnerLimits {
        &self.limits
    }

    /// Runs every probe of `plan`, spooling results; `spooled` is notified
    /// after each batch. Returns how many results were produced.
    pub async fn run(
        &self,
        plan: pb::Plan,
        spool: Arc<Spool>,
        spooled: Arc<Notify>,
    ) -> Result<u64, SpoolError> {
        let (tx, mut rx) = mpsc::channel::<pb::ProbeResult>(BATCH_RESULTS * 4);
        let plan_id: Arc<str> = Arc::from(plan.plan_id.as_str());
        let mut probes = tokio::task::JoinSet::new();
        for spec in plan.probes {
            let runner = self.clone();
            let tx = tx.clone();
            let plan_id = plan_id.clone();
            probes.spawn(async move { runner.run_probe(&plan_id, spec, tx).await });
        }
        drop(tx);

        let mut produced = 0u64;
        let mut batch = Vec::with_capacity(BATCH_RESULTS);
        loop {
            let next = if batch.is_empty() {
                rx.recv().await.map(Some)
            } else {
                match tokio::time::timeout(BATCH_LINGER, rx.recv()).await {
                    Ok(item) => item.map(Some),
                    Err(_) => Some(None),
                }
            };
            match next {
                Some(Some(result)) => {
                    batch.push(result);
                    if batch.len() < BATCH_RESULTS {
                        continue;
                    }
                }
                Some(None) => {}
                None => break,
            }
            produced += batch.len() as u64;
            append(&spool, std::mem::take(&mut batch), None).await?;
            spooled.notify_one();
        }
        produced += batch.len() as u64;
        // The last batch carries the completion mark, so "finished" is as
        // durable as the results themselves.
        append(&spool, batch, Some(plan_id.to_string())).await?;
        spooled.notify_one();
        while probes.join_next().await.is_some() {}
        Ok(produced)
    }

    async fn run_probe(
        &self,
        plan_id: &str,
        spec: pb::ProbeSpec,
        tx: mpsc::Sender<pb::ProbeResult>,
    ) {
        let attempts = spec.attempts.clamp(1, self.limits.max_attempts);
        let burst = spec.burst.clamp(1, self.limits.max_burst);
        let spec = Arc::new(spec);
        for attempt in 1..=attempts {
            let mut slots = tokio::task::JoinSet::new();
            for burst_index in 0..burst {
                let Ok(permit) = self.permits.clone().acquire_owned().await else {
                    return;
                };
                let engine = self.engine.clone();
                let spec = spec.clone();
                let plan_id = plan_id.to_string();
                slots.spawn(async move {
                    let result = engine
                        .run(
                            &plan_id,
                            &spec,
                            RequestSlot {
                                attempt,
                                burst_index,
                            },
                        )
                        .await;
                    drop(permit);
                    result
                });
            }
            while let Some(joined) = slots.join_next().await {
                if let Ok(result) = joined {
                    if tx.send(result).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

async fn append(
    spool: &Arc<Spool>,
    results: Vec<pb::ProbeResult>,
    finished: Option<String>,
) -> Result<u64, SpoolError> {
    let spool = spool.clone();
    match tokio::task::spawn_blocking(move || spool.append(results, finished)).await {
        Ok(written) => written,
        Err(join) => Err(SpoolError::Io {
            path: std::path::PathBuf::from("<spool>"),
            source: std::io::Error::other(join.to_string()),
        }),
    }
}
