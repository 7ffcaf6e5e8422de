//! The `vantage-agent` command line: parse, validate (before any connection is
//! made), then run. Errors print as one line, `error: …`, and exit with 2.
//!
//! One file per command, each owning its flags (with their defaults in
//! code), their validation and its wiring: `run` (enrollment and the
//! serving agent), `probe` (one curl-like probe and its table), and
//! `witness` (the origin-log follower); `completions` and the hidden `man`
//! come from `vantage_support::clidoc`. This module holds only the
//! top-level parser and the dispatch; it never reaches into the session,
//! spool or probe internals beyond their public constructors.

mod probe;
mod run;
mod witness;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};

use vantage_support::clidoc::{CompletionsArgs, ManArgs};
use vantage_support::env::Env;
use vantage_support::runtime::{run_main_with_code, LogDefault};

pub use probe::{nearest_rank, ProbeArgs, ProbeConfig};
pub use run::{
    build_agent, load_or_enroll, RunArgs, RunConfig, DEFAULT_SPOOL_MAX, DEFAULT_STATE_DIR,
};
pub use witness::{
    WitnessArgs, DEFAULT_JSON_CLIENT_FIELD, DEFAULT_JSON_URI_FIELD, DEFAULT_LOG_FORMAT,
    DEFAULT_WITNESS_POLL, DEFAULT_WITNESS_STATE_DIR,
};

/// vantage-agent: runs probe plans for a vantage coordinator, from this host's
/// network vantage point.
///
/// First start: `vantage-agent run --token vtk1.…` (from `vantage token create`)
/// enrolls and stores a key and certificate in the state directory. Later
/// starts need no token.
///
/// `vantage-agent probe URL` runs one curl-like probe from this host, with no
/// coordinator, and prints what happened.
#[derive(Debug, Parser)]
#[command(name = "vantage-agent", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll (first start only) and serve the coordinator's probe plans until stopped.
    Run(RunArgs),
    /// Probe a URL from this host, like curl, and print what happened (no
    /// coordinator needed).
    ///
    /// Each request prints curl's phase timings (cumulative milliseconds, the
    /// meaning of curl -w's time_namelookup, time_connect, time_appconnect,
    /// time_starttransfer, time_total), an outcome such as ok,
    /// connect_refused, reset or empty_reply with the exit code curl would
    /// have given, the status and the peer address. With --attempts and
    /// --burst it repeats the request and sends several at once, then sums up
    /// the outcomes and the time to first byte (p50/p90/p99).
    ///
    /// Typical use, the origin behind a CDN, bypassing the CDN:
    /// `vantage-agent probe https://www.example.com/ --resolve-to 203.0.113.10`
    ///
    /// Exit status: 0 if every request ended `ok` (a complete response
    /// arrived, whatever its HTTP status, as with curl), 1 if any request
    /// failed, 2 on a usage or operational error — so scripts can test it
    /// like curl.
    Probe(ProbeArgs),
    /// Run on the origin host: follow the web server's access log and report
    /// every probe nonce it shows, with the client address that sent it.
    ///
    /// This is the seed's "capture packets on the origin" step as data: a
    /// request that the origin never logged did not reach it (a carrier or
    /// the edge stopped it), and the client addresses of edge requests are
    /// the CDN's pull IPs (what an origin allowlist must contain). Enroll it
    /// with its own token, e.g. `vantage token create --region origin`.
    Witness(WitnessArgs),
    /// Print a shell completion script for vantage-agent on stdout.
    ///
    /// Install it where your shell looks, e.g.
    /// `vantage-agent completions bash > /etc/bash_completion.d/vantage-agent`,
    /// `vantage-agent completions zsh > ~/.zfunc/_vantage-agent` (a directory
    /// in $fpath), or
    /// `vantage-agent completions fish > ~/.config/fish/completions/vantage-agent.fish`.
    Completions(CompletionsArgs),
    /// Write the man pages of vantage-agent and each of its subcommands
    /// (vantage-agent.1, vantage-agent-run.1, …) into DIR and print their
    /// paths; for package builds (`man -l DIR/vantage-agent.1` reads one).
    #[command(hide = true)]
    Man(ManArgs),
}

/// The highest `--max-rate` an operator can set (run and probe alike).
const MAX_RATE_LIMIT: u32 = 100_000;

/// Reads a `--cacert` file; its certificates are parsed where the engine is built.
fn read_ca_pem(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("--cacert {}: cannot read it", path.display()))
}

/// Writes one line to stdout. Rust's stdout is line-buffered even into a
/// pipe, so a reader sees each line at once.
fn emit(line: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    writeln!(std::io::stdout().lock(), "{line}").context("cannot write to stdout")
}

/// Parses `args` and runs; returns the process exit code.
pub fn main(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    env: &dyn Env,
) -> ExitCode {
    run_main_with_code(args, env, |cli: Cli| async move {
        match cli.command {
            Command::Run(args) => run::run(args, env).await.map(|()| ExitCode::SUCCESS),
            Command::Probe(args) => probe::probe(args).await,
            Command::Witness(args) => witness::witness(args, env)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Completions(args) => {
                vantage_support::clidoc::print_completions(Cli::command(), "vantage-agent", &args)
                    .map(|()| ExitCode::SUCCESS)
            }
            Command::Man(args) => vantage_support::clidoc::print_man_pages(Cli::command(), &args)
                .map(|()| ExitCode::SUCCESS),
        }
    })
}

impl LogDefault for Cli {
    fn default_log(&self) -> &'static str {
        match self.command {
            Command::Run(_) | Command::Witness(_) => "info",
            Command::Probe(_) | Command::Completions(_) | Command::Man(_) => "warn",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
