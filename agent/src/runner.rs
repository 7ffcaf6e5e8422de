//! Runs a plan on the probe engine and writes its results to the spool in
//! batches. A plan runs independently of the session: a dropped connection
//! does not stop it, and its results wait in the spool until acknowledged.
//!
//! One spec can also run on its own ([`Runner::run_spec`]), which is what
//! `vantage-agent probe` does; plans and single specs obey the same caps.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify, Semaphore};
use vantage_proto::limits::PlanCaps;
use vantage_proto::pb;

use vantage_proto::spec::longest_wait;

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
    /// The caps on each plan (burst, attempts, probes), shared with the
    /// coordinator through `vantage-proto`.
    pub plan: PlanCaps,
}

impl Default for RunnerLimits {
    fn default() -> Self {
        RunnerLimits {
            max_concurrency: 256,
            plan: PlanCaps::default(),
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

/// How one probe spec runs once the agent's caps are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Sequential attempts; the next starts when the previous one's burst is done.
    pub attempts: u32,
    /// Requests per attempt.
    pub burst: u32,
    /// Requests of one burst in flight at once (1..=burst).
    pub concurrency: u32,
}

impl Schedule {
    /// The caps applied to `spec`: 0 means 1 for attempts and burst, and "the
    /// whole burst at once" for concurrency; nothing exceeds `limits`, and a
    /// burst never has more requests in flight than the agent-wide cap.
    pub fn of(spec: &pb::ProbeSpec, limits: &RunnerLimits) -> Schedule {
        let attempts = limits.plan.attempts(spec);
        let burst = limits.plan.burst(spec);
        let requested = if spec.concurrency == 0 {
            burst
        } else {
            spec.concurrency
        };
        let global = u32::try_from(limits.max_concurrency).unwrap_or(u32::MAX);
        Schedule {
            attempts,
            burst,
            concurrency: requested.min(burst).min(global).max(1),
        }
    }

    /// Requests in total: attempts × burst.
    pub fn requests(&self) -> u64 {
        u64::from(self.attempts) * u64::from(self.burst)
    }
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
        let budget = (plan.budget_ms > 0).then(|| Duration::from_millis(u64::from(plan.budget_ms)));
        let mut phases: std::collections::BTreeMap<u32, Vec<pb::ProbeSpec>> =
            std::collections::BTreeMap::new();
        for spec in plan.probes {
            phases.entry(spec.phase).or_default().push(spec);
        }
        let runner = self.clone();
        let run_plan_id = plan_id.clone();
        // Phases run in order, the probes of one phase all at once, each
        // phase within the plan's budget from its own start. A later phase
        // is a stress test of what the earlier ones found working (a burst
        // after the baselines): after a timeout there is nothing for it to
        // stress, and running it would only double the wait.
        let probes = tokio::spawn(async move {
            for (_, specs) in phases {
                let deadline = budget.map(|b| tokio::time::Instant::now().into_std() + b);
                let mut running = tokio::task::JoinSet::new();
                for spec in specs {
                    let runner = runner.clone();
                    let tx = tx.clone();
                    let plan_id = run_plan_id.clone();
                    running.spawn(async move {
                        runner.run_spec_within(&plan_id, spec, tx, deadline).await
                    });
                }
                let mut timed_out = false;
                while let Some(done) = running.join_next().await {
                    timed_out |= done.unwrap_or(false);
                }
                if timed_out && budget.is_some() {
                    break;
                }
            }
        });

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
        let _ = probes.await;
        Ok(produced)
    }

    /// Runs every request of one spec outside a plan (or for one probe of a
    /// plan) and sends each result to `tx` as soon as it completes.
    ///
    /// Attempts run one after the other; inside an attempt the burst's
    /// requests overlap, at most [`Schedule::concurrency`] at a time, and
    /// every request also holds a permit of the runner-wide budget, so many
    /// specs together never exceed [`RunnerLimits::max_concurrency`]. Stops
    /// early when `tx`'s receiver is gone.
    pub async fn run_spec(
        &self,
        plan_id: &str,
        spec: pb::ProbeSpec,
        tx: mpsc::Sender<pb::ProbeResult>,
    ) {
        self.run_spec_within(plan_id, spec, tx, None).await;
    }

    /// [`Runner::run_spec`] inside a plan's time budget: a request starts
    /// only while the spec's longest wait still fits before `deadline`
    /// (so no timeout is cut short and each one means what it says); the
    /// requests that no longer fit are not run. Returns whether any request
    /// ran out of time (curl's exit 28).
    pub async fn run_spec_within(
        &self,
        plan_id: &str,
        spec: pb::ProbeSpec,
        tx: mpsc::Sender<pb::ProbeResult>,
        deadline: Option<std::time::Instant>,
    ) -> bool {
        let needs = longest_wait(&spec);
        let fits = move |deadline: Option<std::time::Instant>| {
            deadline.is_none_or(|d| {
                d.saturating_duration_since(tokio::time::Instant::now().into_std()) >= needs
            })
        };
        let schedule = Schedule::of(&spec, &self.limits);
        let interval = (spec.attempt_interval_ms > 0)
            .then(|| Duration::from_millis(u64::from(spec.attempt_interval_ms)));
        let spec = Arc::new(spec);
        let plan_id: Arc<str> = Arc::from(plan_id);
        let shared = Arc::new(SpecRun::default());
        let mut slots = tokio::task::JoinSet::new();
        for attempt in 1..=schedule.attempts {
            if shared.stopped() || tx.is_closed() {
                break;
            }
            let started = tokio::time::Instant::now();
            // One worker per request the burst may have in flight, each
            // taking the next request of the burst until none is left: a
            // burst of 20,000 costs `concurrency` task spawns, not 20,000.
            let next_index = Arc::new(std::sync::atomic::AtomicU32::new(0));
            for _ in 0..schedule.concurrency {
                let runner = self.clone();
                let spec = spec.clone();
                let plan_id = plan_id.clone();
                let tx = tx.clone();
                let shared = shared.clone();
                let next_index = next_index.clone();
                slots.spawn(async move {
                    loop {
                        if shared.stopped() || tx.is_closed() {
                            return;
                        }
                        let burst_index =
                            next_index.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if burst_index >= schedule.burst {
                            return;
                        }
                        // The shared budget bounds many specs together.
                        let Ok(permit) = runner.permits.clone().acquire_owned().await else {
                            return;
                        };
                        if !fits(deadline) {
                            // Later requests fit even less; the ones in flight finish.
                            shared.stop();
                            return;
                        }
                        let slot = RequestSlot {
                            attempt,
                            burst_index,
                            deadline,
                        };
                        let result = runner.engine.run(&plan_id, &spec, slot).await;
                        // Free the permit before a possibly blocking send: a
                        // slow consumer must not stall other probes' requests.
                        drop(permit);
                        // A resolver that times out says nothing about the
                        // server a later phase would stress.
                        if result.curl_exit == 28 && result.stage != pb::Stage::Dns as i32 {
                            shared
                                .timed_out
                                .store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        // A closed receiver is noticed at the top of the loop.
                        let _ = tx.send(result).await;
                    }
                });
            }
            // The next attempt starts when this one is done, or — with an
            // interval — when the interval is up, whichever comes first.
            match interval {
                None => while slots.join_next().await.is_some() {},
                Some(interval) => {
                    let next = started + interval;
                    loop {
                        tokio::select! {
                            done = slots.join_next() => {
                                if done.is_none() {
                                    break;
                                }
                            }
                            _ = tokio::time::sleep_until(next) => break,
                        }
                    }
                }
            }
        }
        while slots.join_next().await.is_some() {}
        shared.timed_out.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What the workers of one spec share.
#[derive(Debug, Default)]
struct SpecRun {
    /// A request no longer fits the deadline: start no more, in any attempt.
    stop: std::sync::atomic::AtomicBool,
    /// Some request ran out of time (curl's exit 28, DNS aside).
    timed_out: std::sync::atomic::AtomicBool,
}

impl SpecRun {
    fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::safety::TargetPolicy;

    fn spec(attempts: u32, burst: u32, concurrency: u32) -> pb::ProbeSpec {
        pb::ProbeSpec {
            attempts,
            burst,
            concurrency,
            ..Default::default()
        }
    }

    #[test]
    fn schedule_fills_in_defaults_and_applies_the_caps() {
        let limits = RunnerLimits::default();
        let cases = [
            // (attempts, burst, concurrency) asked -> honoured
            ((0, 0, 0), (1, 1, 1)),
            ((3, 10, 0), (3, 10, 10)),
            ((3, 10, 4), (3, 10, 4)),
            ((1, 10, 50), (1, 10, 10)),
            ((1_000, 1_000, 0), (100, 200, 200)),
        ];
        for ((a, b, c), (attempts, burst, concurrency)) in cases {
            assert_eq!(
                Schedule::of(&spec(a, b, c), &limits),
                Schedule {
                    attempts,
                    burst,
                    concurrency
                },
                "asked {a}/{b}/{c}"
            );
        }
        assert_eq!(limits.plan.requests(&spec(1_000, 1_000, 0)), 20_000);
        assert_eq!(
            Schedule::of(&spec(1_000, 1_000, 0), &limits).requests(),
            20_000
        );
    }

    #[test]
    fn the_agent_wide_cap_bounds_one_burst_too() {
        let limits = RunnerLimits {
            max_concurrency: 3,
            ..RunnerLimits::default()
        };
        assert_eq!(Schedule::of(&spec(1, 50, 0), &limits).concurrency, 3);
        let zero = RunnerLimits {
            max_concurrency: 0,
            ..RunnerLimits::default()
        };
        assert_eq!(Schedule::of(&spec(1, 50, 0), &zero).concurrency, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_burst_never_has_more_than_its_concurrency_in_flight() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let server = {
            let (in_flight, most) = (in_flight.clone(), most.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let in_flight = in_flight.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        let mut seen = Vec::new();
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                        // Hold the request so the window fills up if it can.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        // Count it done before answering: the client frees its
                        // permit only after the answer, so the next request
                        // cannot be counted before this one is uncounted.
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
                            .await;
                    });
                }
            })
        };

        let runner = Runner::new(
            ProbeEngine::new(
                TargetPolicy {
                    allow_private: true,
                },
                None,
            ),
            RunnerLimits::default(),
        );
        let (tx, mut rx) = mpsc::channel(64);
        let probe = pb::ProbeSpec {
            url: format!("http://127.0.0.1:{port}/"),
            route: pb::Route::Direct as i32,
            ..spec(2, 6, 2)
        };
        let run = tokio::spawn(async move { runner.run_spec("plan", probe, tx).await });
        let mut slots = Vec::new();
        while let Some(result) = rx.recv().await {
            assert_eq!(result.status, 200, "{result:?}");
            slots.push((result.attempt, result.burst_index));
        }
        run.await.unwrap();
        server.abort();
        slots.sort_unstable();
        let expected: Vec<(u32, u32)> = (1..=2).flat_map(|a| (0..6).map(move |b| (a, b))).collect();
        assert_eq!(slots, expected);
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} requests were in flight");
    }
}
