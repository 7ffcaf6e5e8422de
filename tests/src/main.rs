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

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a coordinator, three regional agents and a loopback origin, enroll
    /// the agents, run a plan and print its results.
    Demo,
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
    /// Measure the agent's idle RSS after enrollment and the binary sizes.
    BenchFootprint {
        /// How long to idle before reading RSS.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        idle: Duration,
    },
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo => vantage_lab::demo::run(&mut std::io::stdout()).await,
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

fn main() -> ExitCode {
    vantage_agent::cli::run_main(std::env::args_os(), &vantage_agent::env::ProcessEnv, run)
}
