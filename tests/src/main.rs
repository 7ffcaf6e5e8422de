//! `vantage-lab`: the self-contained demo (the README's main job) and the
//! benchmarks recorded in docs/BENCHMARKS.md.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// vantage-lab: run vantage end to end on loopback, with nothing to install.
#[derive(Debug, Parser)]
#[command(name = "vantage-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

impl vantage_support::runtime::LogDefault for Cli {}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a diagnosis scenario end to end on loopback (a coordinator, three
    /// regional agents, an origin witness, the lab origin and edge) and print
    /// the report. No root, no network beyond loopback.
    Demo {
        /// Which scenario (see --list); default: waf.
        #[arg(long, value_name = "NAME")]
        scenario: Option<String>,
        /// List the scenarios.
        #[arg(long)]
        list: bool,
    },
    /// Benchmark result ingest through gRPC into SQLite with simulated agents
    /// (needs `cargo build --release` of the workspace).
    BenchIngest {
        /// Simulated agent sessions.
        #[arg(long, default_value_t = 100)]
        agents: usize,
        /// Results each agent sends.
        #[arg(long, default_value_t = 5_000)]
        results_per_agent: u64,
        /// Results per batch.
        #[arg(long, default_value_t = 256)]
        batch: u64,
        /// Batches in flight per session.
        #[arg(long, default_value_t = 8)]
        window: usize,
    },
    /// Benchmark an installation on PostgreSQL (issue #13): ingest through
    /// one and two coordinators against SQLite through one, then failover
    /// after `kill -9` (needs `cargo build --release` of the workspace, and
    /// Debian's postgresql unless --database names a server).
    BenchCluster {
        /// A `postgres://` URL of a server the benchmark may create schemas
        /// in (default: a cluster of its own, PostgreSQL's default settings).
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// Simulated agent sessions.
        #[arg(long, default_value_t = 100)]
        agents: usize,
        /// Results each agent sends.
        #[arg(long, default_value_t = 5_000)]
        results_per_agent: u64,
        /// Results per batch.
        #[arg(long, default_value_t = 256)]
        batch: u64,
        /// Batches in flight per session.
        #[arg(long, default_value_t = 8)]
        window: usize,
        /// Failovers to time.
        #[arg(long, default_value_t = 5)]
        failovers: usize,
    },
    /// Benchmark the sessions one coordinator holds: RSS per session and
    /// the CPU of their heartbeats (default interval) against the same
    /// coordinator idle, for each size (needs `cargo build --release`).
    BenchSessions {
        /// Session counts to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        sessions: Vec<usize>,
        /// Measurement window (at least one heartbeat interval, 10s).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        window: Duration,
        /// A `postgres://` URL of a server the benchmark may create schemas
        /// in, one per size (default: SQLite in a temporary data dir).
        #[arg(long, value_name = "URL")]
        database: Option<String>,
    },
    /// Serve the lab origin on loopback until killed (prints `listening ADDR`).
    Origin {
        /// Wait this long before each answer.
        #[arg(long, value_parser = humantime::parse_duration)]
        delay: Option<Duration>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// Benchmark the probe engine against ab and a curl loop (throughput),
    /// against curl's time_starttransfer (fidelity), and its memory in flight.
    BenchProbe {
        /// Requests for the throughput comparison.
        #[arg(long, default_value_t = 20_000)]
        requests: u64,
        /// Requests in flight for the throughput comparison.
        #[arg(long, default_value_t = 100)]
        concurrency: u64,
        /// Iterations of the curl shell loop.
        #[arg(long, default_value_t = 200)]
        curl_loop: u64,
        /// Paired requests for the fidelity comparison.
        #[arg(long, default_value_t = 200)]
        fidelity: usize,
        /// Probes in flight for the memory measurement.
        #[arg(long, default_value_t = 1000)]
        inflight: u64,
        /// Alternating rounds of ab and the shipped probe; each side's
        /// median is compared, so one noisy round does not decide the ratio.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// (Used by bench-probe) run N probes at once against URL in this fresh
    /// process and print its idle and peak RSS in KiB.
    #[command(hide = true)]
    BenchInflight {
        /// Target.
        #[arg(long)]
        url: String,
        /// Probes in flight.
        #[arg(long)]
        n: u64,
    },
    /// Time `vantage diagnose` (real processes) on a healthy origin and a 524
    /// scenario, against the seed's procedure as a curl script.
    BenchDiagnose {
        /// Runs to take the median of.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Time to report of faulty campaigns (a 524, a hanging origin, a
    /// refused origin, and as root a blackholed region) with EdgeOne's 15 s
    /// edge timeout and with 3 s, against the floor of edge timeout + 1 s.
    BenchBudget {
        /// Edge timeouts to run with.
        #[arg(long, value_delimiter = ',', default_value = "15s,3s", value_parser = humantime::parse_duration)]
        edge_timeouts: Vec<Duration>,
    },
    /// Coordinator RSS and CPU under an unauthenticated half-sent Enroll
    /// flood and an idle-connection flood, as ratios against its idle
    /// figures, and the latency of `vantage agents` during each (issue #9).
    BenchFlood {
        /// Half-sent Enroll connections held at once (8 streams each).
        #[arg(long, default_value_t = 32)]
        enroll_conns: usize,
        /// Stalled connections (idle TCP, half ClientHello, TLS then silence).
        #[arg(long, default_value_t = 900)]
        idle_conns: usize,
        /// Length of each phase.
        #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
        window: Duration,
        /// `vantage agents` runs per phase.
        #[arg(long, default_value_t = 12)]
        cli_runs: usize,
    },
    /// The sweep scheduler at fleet scale: N sweeps at one interval over R
    /// simulated regions on one SQLite file, in real time: start lateness
    /// against the slot (target p99 <= 1 s), overlapping runs (target 0),
    /// CPU (target < 1 core) and peak RSS.
    BenchSweeps {
        /// Sweeps.
        #[arg(long, default_value_t = 1000)]
        sweeps: usize,
        /// Their interval.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        every: Duration,
        /// Regions each run covers.
        #[arg(long, default_value_t = 10)]
        regions: usize,
        /// How long each simulated run takes.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        run_time: Duration,
        /// How long to measure.
        #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
        window: Duration,
    },
    /// Sweeps as real campaigns through the shipped binaries: `vantage
    /// serve`, one `vantage-agent run` per region, N sweeps by `sweep
    /// apply`; the origin stops after `--healthy-for`, every sweep opens an
    /// alert, and its webhook's latency from run end to a loopback receiver
    /// is measured against curl POSTing the same body.
    BenchSweepsLive {
        /// Sweeps.
        #[arg(long, default_value_t = 1000)]
        sweeps: usize,
        /// Their interval.
        #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
        every: Duration,
        /// Regions, one agent process each.
        #[arg(long, default_value_t = 10)]
        regions: usize,
        /// Origins the sweeps spread over (an agent limits its rate per
        /// target, so one origin for all would measure that limit).
        #[arg(long, default_value_t = 50)]
        origins: usize,
        /// How long the origin stays healthy.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        healthy_for: Duration,
        /// How long it then stays down (longer than --every).
        #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
        down_for: Duration,
    },
    /// Measure the agent's idle RSS after enrollment and the binary sizes.
    BenchFootprint {
        /// How long to idle before reading RSS.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        idle: Duration,
    },
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo { list: true, .. } => vantage_lab::demo::list(&mut std::io::stdout()),
        Command::Demo { scenario, .. } => {
            vantage_lab::demo::run(scenario.as_deref(), &mut std::io::stdout())
                .await
                .map(|_| ())
        }
        Command::BenchSessions {
            sessions,
            window,
            database,
        } => {
            println!(
                "sessions: simulated agents heartbeating every 10s (the default), window {}",
                humantime::format_duration(window)
            );
            let mut measured: Vec<(usize, f64, f64)> = Vec::new();
            for n in sessions {
                // Each size is a fresh installation: its own schema.
                let schema = match &database {
                    Some(url) => Some(vantage_lab::postgres::schema_in(url).await?),
                    None => None,
                };
                let r = vantage_lab::bench::sessions(n, window, schema.as_deref()).await?;
                let per = r.held_kib.saturating_sub(r.idle_kib) as f64 / n as f64;
                // Heartbeats the coordinator handled in the window (every
                // session beats once per 10 s).
                let beats = n as f64 * r.window.as_secs_f64() / 10.0;
                let cpu_per_beat_us =
                    (r.heartbeat_cores - r.idle_cores).max(0.0) * r.window.as_secs_f64() / beats
                        * 1e6;
                println!(
                    "  {n:>6} sessions: RSS {:.1} MiB ({:.1} MiB before) = {per:.1} KiB/session; \
                     CPU {:.3} cores ({:.3} idle) = {cpu_per_beat_us:.0} us/heartbeat",
                    r.held_kib as f64 / 1024.0,
                    r.idle_kib as f64 / 1024.0,
                    r.heartbeat_cores,
                    r.idle_cores,
                );
                measured.push((n, per, cpu_per_beat_us));
            }
            if let (Some(small), Some(large)) = (measured.first(), measured.last()) {
                if large.0 > small.0 {
                    println!(
                        "  {} vs {} sessions: {:.2}x the RSS per session, {:.2}x the CPU per heartbeat",
                        large.0,
                        small.0,
                        large.1 / small.1.max(0.001),
                        large.2 / small.2.max(0.001)
                    );
                }
            }
            Ok(())
        }
        Command::BenchCluster {
            database,
            agents,
            results_per_agent,
            batch,
            window,
            failovers,
        } => {
            bench_cluster(
                database,
                agents,
                results_per_agent,
                batch,
                window,
                failovers,
            )
            .await
        }
        Command::BenchIngest {
            agents,
            results_per_agent,
            batch,
            window,
        } => {
            let report = vantage_lab::bench::ingest(vantage_lab::bench::IngestParams {
                agents,
                results_per_agent,
                batch,
                window,
            })
            .await?;
            let total = agents as u64 * results_per_agent;
            println!("ingest: {agents} agents x {results_per_agent} results, batches of {batch}, window {window}");
            println!(
                "  grpc+mtls -> sqlite : {:>10.0} results/s",
                report.grpc_rate
            );
            println!(
                "  store alone (peer)  : {:>10.0} results/s",
                report.store_rate
            );
            println!(
                "  ratio grpc/store    : {:>10.2}",
                report.grpc_rate / report.store_rate
            );
            println!(
                "  ratio vs 50k target : {:>10.2}",
                report.grpc_rate / 50_000.0
            );
            println!("  stored / sent       : {} / {total}", report.stored);
            println!(
                "  coordinator peak RSS: {:>10.1} MiB",
                report.coordinator_peak_kib as f64 / 1024.0
            );
            if report.stored != total {
                anyhow::bail!("stored {} of {total} results", report.stored);
            }
            Ok(())
        }
        Command::BenchSweepsLive {
            sweeps,
            every,
            regions,
            origins,
            healthy_for,
            down_for,
        } => {
            use vantage_lab::bench::sweeps_live::{sweeps_live, LiveSweepParams};
            let r = sweeps_live(LiveSweepParams {
                sweeps,
                every,
                regions,
                origins,
                healthy_for,
                down_for,
            })
            .await?;
            println!(
                "live sweeps: {sweeps} every {} over {regions} regions (one agent process each) and {origins} origins; healthy {}, then down {}",
                humantime::format_duration(every),
                humantime::format_duration(healthy_for),
                humantime::format_duration(down_for)
            );
            println!("  runs by status      : {:?}", r.by_status);
            if !r.missed_reasons.is_empty() {
                println!("  missed, why         : {:?}", r.missed_reasons);
            }
            println!("  overlapping runs    : {:>10}", r.overlaps);
            println!(
                "  lateness p50/p99/max: {:>6.0} / {:.0} / {:.0} ms   (p99 / 1 s target: {:.3})",
                r.lateness_ms.0,
                r.lateness_ms.1,
                r.lateness_ms.2,
                r.lateness_ms.1 / 1000.0
            );
            println!(
                "  run time p50/p99    : {:>6.0} / {:.0} ms",
                r.run_ms.0, r.run_ms.1
            );
            println!(
                "  coordinator CPU     : {:>10.3} cores (target < 1), peak RSS {:.1} MiB",
                r.coordinator_cores,
                r.coordinator_peak_kib as f64 / 1024.0
            );
            println!(
                "  agents' CPU (all)   : {:>10.3} cores; the lab process (origins, receiver): {:.3}",
                r.agents_cores, r.lab_cores
            );
            println!("  results stored      : {:>10}", r.results);
            println!(
                "  webhooks            : {} opened events of {sweeps} sweeps, {} repeated",
                r.opened, r.repeated
            );
            println!(
                "  delivery p50/p99/max: {:>6.0} / {:.0} / {:.0} ms from run end to receiver",
                r.delivery_ms.0, r.delivery_ms.1, r.delivery_ms.2
            );
            println!(
                "  floor (curl POST)   : {:>10.2} ms; p50 / floor = {:.1}",
                r.curl_post_ms,
                r.delivery_ms.0 / r.curl_post_ms.max(0.001)
            );
            Ok(())
        }
        Command::BenchSweeps {
            sweeps,
            every,
            regions,
            run_time,
            window,
        } => {
            let r =
                vantage_lab::bench::sweeps::sweeps(vantage_lab::bench::sweeps::SweepBenchParams {
                    sweeps,
                    every,
                    regions,
                    run_time,
                    window,
                })
                .await?;
            println!(
                "sweeps: {sweeps} every {} over {regions} regions, runs of {}, window {}",
                humantime::format_duration(every),
                humantime::format_duration(run_time),
                humantime::format_duration(window)
            );
            println!("  runs started        : {:>10}", r.runs);
            println!("  slots missed        : {:>10}", r.missed);
            println!("  overlapping runs    : {:>10}", r.overlaps);
            println!(
                "  lateness p50/p99/max: {:>6.0} / {:.0} / {:.0} ms",
                r.lateness_ms.0, r.lateness_ms.1, r.lateness_ms.2
            );
            println!("  p99 / 1 s target    : {:>10.3}", r.lateness_ms.1 / 1000.0);
            println!(
                "  CPU (cores)         : {:>10.3}  (target < 1)",
                r.cpu_cores
            );
            println!(
                "  peak RSS            : {:>10.1} MiB",
                r.peak_rss_kib as f64 / 1024.0
            );
            Ok(())
        }
        Command::Origin { delay, listen } => {
            let mut builder = vantage_lab::origin::Origin::builder().listen(listen);
            if let Some(delay) = delay {
                builder = builder.delay(delay);
            }
            let origin = builder.spawn().await?;
            println!("listening {}", origin.addr());
            let _ = tokio::signal::ctrl_c().await;
            origin.stop().await;
            Ok(())
        }
        Command::BenchProbe {
            requests,
            concurrency,
            curl_loop,
            fidelity,
            inflight,
            rounds,
        } => {
            bench_probe(
                requests,
                concurrency,
                curl_loop,
                fidelity,
                inflight,
                rounds.max(1),
            )
            .await
        }
        Command::BenchInflight { url, n } => {
            let (idle, peak) = vantage_lab::probe_bench::inflight_peak_kib(&url, n).await?;
            println!("{idle} {peak}");
            Ok(())
        }
        Command::BenchDiagnose { runs } => {
            let r = vantage_lab::bench::diagnose(runs.max(1)).await?;
            println!("diagnose (3 regions + witness + edge, real processes), median of {runs}:");
            println!(
                "  healthy origin, CLI to report : {:>8.0} ms (target < 300 ms, ratio {:.2})",
                r.healthy_ms,
                r.healthy_ms / 300.0
            );
            println!("  the same steps as a curl script (one region): {:>8.0} ms (ratio vantage/script {:.2})", r.curl_script_ms, r.healthy_ms / r.curl_script_ms);
            println!("  524 scenario: {:.0} ms with a {:.0} ms edge timeout (target <= timeout + 1 s: ratio {:.2})", r.slow_ms, r.edge_timeout_ms, r.slow_ms / (r.edge_timeout_ms + 1000.0));
            Ok(())
        }
        Command::BenchBudget { edge_timeouts } => {
            let run = |ns: Option<String>| async move {
                let mut all = Vec::new();
                for t in edge_timeouts {
                    all.extend(vantage_lab::bench::budget(t, ns.as_deref()).await?);
                }
                anyhow::Ok(all)
            };
            let figures = match vantage_lab::netns::unavailable() {
                None => {
                    let netns = vantage_lab::netns::Netns::create()?;
                    netns
                        .block_on(move |name| run(Some(name)))
                        .map_err(|_| anyhow::anyhow!("the namespace run panicked"))??
                }
                Some(why) => {
                    eprintln!("blackholed region skipped: {why}");
                    run(None).await?
                }
            };
            println!("time to report, `vantage diagnose` with default flags (real processes, 3 regions + witness + edge):");
            for f in figures {
                println!(
                    "  {:<48} edge timeout {:>5.1} s: {:>8.0} ms, ratio to (timeout + 1 s) {:.2}  {}",
                    f.case,
                    f.edge_timeout.as_secs_f64(),
                    f.report_ms,
                    f.ratio(),
                    f.verdict
                );
            }
            Ok(())
        }
        Command::BenchFlood {
            enroll_conns,
            idle_conns,
            window,
            cli_runs,
        } => {
            let r = vantage_lab::flood::bench(enroll_conns, idle_conns, window, cli_runs).await?;
            let mib = |kib: u64| kib as f64 / 1024.0;
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            // Idle CPU may round to 0: one tick over the window is the floor.
            let cpu_floor = 0.01 / window.as_secs_f64();
            println!(
                "bench-flood: {enroll_conns} x 8 half-sent 63 MiB Enrolls; {} stalled connections; {} per phase",
                r.idle_conns_opened,
                humantime::format_duration(window)
            );
            println!("  phase          RSS MiB (ratio)   CPU cores (ratio)   `vantage agents` median / max ms (ratio)");
            for (name, p) in [
                ("idle", r.idle),
                ("enroll flood", r.enroll),
                ("idle conns", r.idle_conns),
            ] {
                println!(
                    "  {name:<13} {:>7.1} ({:>4.2})    {:>6.3} ({:>5.1})     {:>6.1} / {:>6.1} ({:.2})",
                    mib(p.rss_kib),
                    p.rss_kib as f64 / r.idle.rss_kib.max(1) as f64,
                    p.cpu_cores,
                    p.cpu_cores.max(cpu_floor) / r.idle.cpu_cores.max(cpu_floor),
                    ms(p.cli_median),
                    ms(p.cli_max),
                    ms(p.cli_median) / ms(r.idle.cli_median).max(0.001)
                );
            }
            Ok(())
        }
        Command::BenchFootprint { idle } => {
            let r = vantage_lab::bench::footprint(idle).await?;
            let mib = |kib: u64| kib as f64 / 1024.0;
            let mb = |b: u64| b as f64 / 1_000_000.0;
            println!("footprint after {}:", humantime::format_duration(idle));
            println!(
                "  agent idle RSS       : {:>6.1} MiB (target 10 MiB, ratio {:.2})",
                mib(r.agent_idle_kib),
                mib(r.agent_idle_kib) / 10.0
            );
            println!(
                "  coordinator idle RSS : {:>6.1} MiB",
                mib(r.coordinator_idle_kib)
            );
            println!(
                "  agent binary         : {:>6.1} MB (target 15 MB, ratio {:.2})",
                mb(r.agent_binary_bytes),
                mb(r.agent_binary_bytes) / 15.0
            );
            println!(
                "  coordinator binary   : {:>6.1} MB",
                mb(r.coordinator_binary_bytes)
            );
            Ok(())
        }
    }
}

async fn bench_probe(
    requests: u64,
    concurrency: u64,
    curl_loop: u64,
    fidelity: usize,
    inflight: u64,
    rounds: usize,
) -> anyhow::Result<()> {
    use vantage_lab::probe_bench::{
        ab_rate, binary_rate, curl_loop_rate, engine_rate, engine_rate_one_core, ttfb_fidelity,
        OriginProcess,
    };
    let origin = OriginProcess::start(None).await?;
    let url = format!("http://{}/", origin.addr);
    println!(
        "throughput: {requests} fresh-connection requests, {concurrency} in flight, origin {url}"
    );
    let (ours_mt, ours_mt_failed) = engine_rate(&url, requests, concurrency).await?;
    let (ours, ours_failed) = engine_rate_one_core(&url, requests, concurrency)?;
    // ab and the shipped probe alternate, so both meet the same drift of
    // the machine; each side's median decides.
    let mut ab_rates = Vec::with_capacity(rounds);
    let mut shipped_rates = Vec::with_capacity(rounds);
    let mut ab_failed = 0;
    for round in 1..=rounds {
        let (ab, failed) = ab_rate(&url, requests, concurrency).await?;
        let shipped = binary_rate(&url, requests, concurrency).await?;
        println!(
            "  round {round}: ab {ab:>9.0} req/s, shipped probe {shipped:>9.0} req/s, ratio {:.2}",
            shipped / ab
        );
        ab_failed += failed;
        ab_rates.push(ab);
        shipped_rates.push(shipped);
    }
    let median = |rates: &mut Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let (ab, shipped) = (median(&mut ab_rates), median(&mut shipped_rates));
    let curl = curl_loop_rate(&url, curl_loop).await?;
    println!("  vantage-agent probe (shipped), median of {rounds}: {shipped:>9.0} req/s");
    println!("  ab, median of {rounds}                   : {ab:>9.0} req/s");
    println!(
        "  ratio shipped probe/ab           : {:>9.2} (target >= 1.0)",
        shipped / ab
    );
    println!(
        "  ratio shipped probe/curl loop    : {:>9.1} (target >= 100)",
        shipped / curl
    );
    println!("  vantage engine, 1 thread like ab : {ours:>9.0} req/s ({ours_failed} failed)");
    println!("  vantage engine, agent runtime    : {ours_mt:>9.0} req/s ({ours_mt_failed} failed)");
    println!("  ab -n {requests} -c {concurrency}, median     : {ab:>9.0} req/s ({ab_failed} failed in all)");
    println!("  shell loop of curl ({curl_loop})       : {curl:>9.0} req/s");
    println!(
        "  ratio vantage/ab (agent runtime) : {:>9.2} (target >= 1.0)",
        ours_mt / ab
    );
    println!("  ratio vantage/ab (1 thread)      : {:>9.2}", ours / ab);
    println!(
        "  ratio vantage/curl loop          : {:>9.1} (target >= 100)",
        ours_mt / curl
    );

    let slow = OriginProcess::start(Some(Duration::from_millis(50))).await?;
    let slow_url = format!("http://{}/", slow.addr);
    let (diff, our_median, curl_median) = ttfb_fidelity(&slow_url, fidelity).await?;
    println!("fidelity: {fidelity} paired requests to an origin that waits 50ms");
    println!(
        "  median ttfb: vantage {our_median:.3} ms, curl time_starttransfer {curl_median:.3} ms"
    );
    println!("  median |difference|: {diff:.3} ms (target <= 1 ms)");

    let held = OriginProcess::start(Some(Duration::from_secs(2))).await?;
    let held_url = format!("http://{}/", held.addr);
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "bench-inflight",
            "--url",
            &held_url,
            "--n",
            &inflight.to_string(),
        ])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<f64>().unwrap_or(0.0));
    let (idle, peak) = (
        fields.next().unwrap_or(0.0) / 1024.0,
        fields.next().unwrap_or(0.0) / 1024.0,
    );
    if !out.status.success() {
        anyhow::bail!(
            "bench-inflight failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("memory: {inflight} probes in flight against an origin that waits 2s");
    println!("  engine process RSS: idle {idle:.1} MiB, peak {peak:.1} MiB (target <= 64 MiB, ratio {:.2})", peak / 64.0);
    Ok(())
}

fn main() -> ExitCode {
    vantage_support::runtime::run_main(std::env::args_os(), &vantage_support::env::ProcessEnv, run)
}

/// `bench-cluster`: each configuration in a fresh schema of `database`, or
/// of a cluster of its own with PostgreSQL's default settings.
async fn bench_cluster(
    database: Option<String>,
    agents: usize,
    results_per_agent: u64,
    batch: u64,
    window: usize,
    failovers: usize,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let own = match &database {
        Some(_) => None,
        None => Some(
            vantage_support::pgtest::PgCluster::durable(&vantage_support::pgtest::default_cache())?
                .context("bench-cluster needs --database postgres://… or Debian's postgresql")?,
        ),
    };
    let url = database.unwrap_or_else(|| own.as_ref().map(|c| c.url()).unwrap_or_default());
    let schema = || vantage_lab::postgres::schema_in(&url);
    let params = vantage_lab::bench::IngestParams {
        agents,
        results_per_agent,
        batch,
        window,
    };
    let total = agents as u64 * results_per_agent;
    println!("ingest: {agents} agents x {results_per_agent} results, batches of {batch}, window {window}");
    let sqlite = vantage_lab::bench::ingest_through(params, None, 1).await?;
    let pg_one = vantage_lab::bench::ingest_through(params, Some(&schema().await?), 1).await?;
    let pg_two = vantage_lab::bench::ingest_through(params, Some(&schema().await?), 2).await?;
    for (label, run) in [
        ("sqlite, 1 coordinator  ", sqlite),
        ("postgres, 1 coordinator", pg_one),
        ("postgres, 2 coordinators", pg_two),
    ] {
        println!(
            "  {label}: {:>9.0} results/s  ({:.2}x sqlite)  stored {}/{total}  peak RSS {:.1} MiB",
            run.rate,
            run.rate / sqlite.rate,
            run.stored,
            run.peak_kib as f64 / 1024.0
        );
    }
    if failovers > 0 {
        let report = vantage_lab::bench::failover(&schema().await?, failovers).await?;
        let ms = |d: &std::time::Duration| d.as_secs_f64() * 1000.0;
        let mut times: Vec<f64> = report.failovers.iter().map(ms).collect();
        let ratios: Vec<f64> = report
            .failovers
            .iter()
            .zip(&report.floors)
            .map(|(f, floor)| ms(f) / ms(floor).max(1.0))
            .collect();
        println!("failover after kill -9 (agent defaults), {failovers} rounds:");
        for (i, (f, floor)) in report.failovers.iter().zip(&report.floors).enumerate() {
            println!(
                "  round {}: {:>7.0} ms (its reconnect delays: {:>7.0} ms, {:.2}x)",
                i + 1,
                ms(f),
                ms(floor),
                ratios[i]
            );
        }
        times.sort_by(f64::total_cmp);
        println!("  median  : {:>7.0} ms", times[times.len() / 2]);
    }
    Ok(())
}
