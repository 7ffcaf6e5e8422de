//! Probe-engine benchmarks, each side by side with its peer in the same run:
//! fresh-connection throughput against ApacheBench (`ab`) and a shell loop of
//! curl, time-to-first-byte fidelity against curl's `time_starttransfer`, and
//! peak memory with many probes in flight. The origin runs as a separate
//! process (`vantage-lab origin`) so that the engine, ab and curl all face the
//! same server with the same CPU share.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::process::Command;
use vantage_agent::probe::{ProbeEngine, ProbeLimits, RequestSlot};
use vantage_agent::safety::TargetPolicy;
use vantage_proto::domain::Outcome;
use vantage_proto::pb;

use crate::process::{ChildProcess, Stream};

/// A `vantage-lab origin` child process.
pub struct OriginProcess {
    process: ChildProcess,
    /// Its address.
    pub addr: std::net::SocketAddr,
}

impl OriginProcess {
    /// Starts `vantage-lab origin [--delay D]` and waits for its address.
    pub async fn start(delay: Option<Duration>) -> anyhow::Result<OriginProcess> {
        let exe = std::env::current_exe()?;
        let mut args = vec!["origin".to_string()];
        if let Some(delay) = delay {
            args.push("--delay".into());
            args.push(humantime::format_duration(delay).to_string());
        }
        let mut process = ChildProcess::spawn("vantage-lab origin", &exe, &args)?;
        let line = process
            .wait_for_line(Duration::from_secs(10), |s, l| {
                s == Stream::Stdout && l.starts_with("listening ")
            })
            .await?;
        let addr = line.trim_start_matches("listening ").trim().parse()?;
        Ok(OriginProcess { process, addr })
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}

fn spec(url: &str) -> pb::ProbeSpec {
    pb::ProbeSpec {
        url: url.to_string(),
        route: pb::Route::Direct as i32,
        attempts: 1,
        ..Default::default()
    }
}

/// Like [`engine_rate`], but on a single-threaded runtime of its own, the
/// way `ab` runs: one core for the client, the other for the origin.
pub fn engine_rate_one_core(url: &str, total: u64, concurrency: u64) -> anyhow::Result<(f64, u64)> {
    let url = url.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(engine_rate(&url, total, concurrency))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?
}

/// Runs `total` fresh-connection probes with `concurrency` in flight; returns
/// (probes per second, failures).
pub async fn engine_rate(url: &str, total: u64, concurrency: u64) -> anyhow::Result<(f64, u64)> {
    // The per-target rate cap protects real targets; a throughput benchmark
    // against our own loopback origin measures the engine without it.
    let engine = Arc::new(
        ProbeEngine::new(
            TargetPolicy {
                allow_private: true,
            },
            None,
        )
        .with_limits(ProbeLimits {
            max_rate_per_target: None,
            ..ProbeLimits::default()
        }),
    );
    let spec = Arc::new(spec(url));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let began = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (engine, spec, next) = (engine.clone(), spec.clone(), next.clone());
        workers.spawn(async move {
            let mut failures = 0u64;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    return failures;
                }
                let slot = RequestSlot {
                    attempt: 1,
                    burst_index: u32::try_from(n).unwrap_or(u32::MAX),
                    deadline: None,
                };
                let result = engine.run("bench", &spec, slot).await;
                if result.outcome != pb::Outcome::Ok as i32 || result.body_sha256.is_empty() {
                    failures += 1;
                }
            }
        });
    }
    let mut failures = 0;
    while let Some(done) = workers.join_next().await {
        failures += done?;
    }
    Ok((total as f64 / began.elapsed().as_secs_f64(), failures))
}

/// The shipped `vantage-agent probe` process (next to this binary) against
/// `url`, the way `ab -n total -c concurrency` runs: one burst of `total`
/// requests with `concurrency` in flight, `--max-rate` lifted, output to
/// /dev/null as a user would send it. Returns requests per second, process
/// start to exit.
pub async fn binary_rate(url: &str, total: u64, concurrency: u64) -> anyhow::Result<f64> {
    let began = Instant::now();
    let status = Command::new(crate::process::bin_path("vantage-agent"))
        .args([
            "probe",
            url,
            "--allow-private",
            "--max-rate",
            "100000",
            "--burst",
            &total.to_string(),
            "--concurrency",
            &concurrency.min(total).to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .context("running vantage-agent probe (cargo build --release)")?;
    if !status.success() {
        bail!("vantage-agent probe failed: {status}");
    }
    Ok(total as f64 / began.elapsed().as_secs_f64())
}

/// `ab -n total -c concurrency url`: requests per second and failures.
pub async fn ab_rate(url: &str, total: u64, concurrency: u64) -> anyhow::Result<(f64, u64)> {
    let out = Command::new("ab")
        .args([
            "-q",
            "-n",
            &total.to_string(),
            "-c",
            &concurrency.to_string(),
            url,
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .context("running ab (apt-get install apache2-utils)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| {
                l.split_whitespace()
                    .nth(l[..name.len()].split_whitespace().count())
            })
            .and_then(|v| v.parse::<f64>().ok())
    };
    let rate =
        field("Requests per second:").with_context(|| format!("ab printed no rate:\n{text}"))?;
    let failed = field("Failed requests:").unwrap_or(0.0) as u64;
    Ok((rate, failed))
}

/// A shell loop of curl, `n` sequential fresh processes: requests per second.
pub async fn curl_loop_rate(url: &str, n: u64) -> anyhow::Result<f64> {
    let script = format!("for i in $(seq {n}); do curl -s -o /dev/null '{url}' || exit 1; done");
    let began = Instant::now();
    let status = Command::new("sh").args(["-c", &script]).status().await?;
    if !status.success() {
        bail!("the curl loop failed");
    }
    Ok(n as f64 / began.elapsed().as_secs_f64())
}

/// Pairs `n` engine probes with `n` curl runs against a delaying origin;
/// returns (median |ttfb − time_starttransfer| in ms, our median ttfb, curl's).
pub async fn ttfb_fidelity(url: &str, n: usize) -> anyhow::Result<(f64, f64, f64)> {
    let engine = ProbeEngine::new(
        TargetPolicy {
            allow_private: true,
        },
        None,
    );
    let spec = spec(url);
    let mut ours = Vec::with_capacity(n);
    let mut theirs = Vec::with_capacity(n);
    for i in 0..n {
        let result = engine
            .run(
                "fidelity",
                &spec,
                RequestSlot {
                    attempt: 1,
                    burst_index: u32::try_from(i).unwrap_or(0),
                    deadline: None,
                },
            )
            .await;
        if Outcome::try_from(result.outcome).ok() != Some(Outcome::Ok) {
            bail!("probe {i} failed: {}", result.error);
        }
        ours.push(result.timings.unwrap_or_default().ttfb_us as f64 / 1000.0);
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{time_starttransfer}", url])
            .output()
            .await?;
        let secs: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("curl -w output")?;
        theirs.push(secs * 1000.0);
    }
    let mut diffs: Vec<f64> = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .collect();
    Ok((median(&mut diffs), median(&mut ours), median(&mut theirs)))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs `n` probes at once against a slow origin and reports this process's
/// peak RSS in KiB (run it in a fresh process: the peak is process-wide).
pub async fn inflight_peak_kib(url: &str, n: u64) -> anyhow::Result<(u64, u64)> {
    let idle = crate::bench::proc_kib(std::process::id(), "VmRSS:").unwrap_or(0);
    let (_, failures) = engine_rate(url, n, n).await?;
    if failures > 0 {
        bail!("{failures} of {n} probes failed");
    }
    let peak = crate::bench::proc_kib(std::process::id(), "VmHWM:").unwrap_or(0);
    Ok((idle, peak))
}
