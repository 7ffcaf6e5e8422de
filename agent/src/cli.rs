//! The `vantage-agent` command line: parse, validate (before any connection is
//! made), then run. Errors print as one line, `error: …`, and exit with 2.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use vantage_proto::domain::{check_labels, check_name};
use vantage_proto::token::EnrollmentToken;

use crate::backoff::BackoffConfig;
use crate::enroll::{enroll, EnrollRequest};
use crate::env::Env;
use crate::identity::{create_private_dir, Identity};
use crate::probe::ProbeEngine;
use crate::runner::{Runner, RunnerLimits};
use crate::safety::TargetPolicy;
use crate::session::{Agent, SessionConfig};
use crate::spool::{parse_size, Spool};

/// vantage-agent: runs probe plans for a vantage coordinator, from this host's
/// network vantage point.
///
/// First start: `vantage-agent run --token vtk1.…` (from `vantage token create`)
/// enrolls and stores a key and certificate in the state directory. Later
/// starts need no token.
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
}

/// Flags of `vantage-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Enrollment token from `vantage token create` (needed only on the first
    /// start; env: VANTAGE_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Directory for the agent's key, certificate and result spool
    /// (env: VANTAGE_AGENT_STATE_DIR; default ./vantage-agent).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Agent name, unique per coordinator (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// A label to attach at enrollment, as key=value (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Source address for every probe and for the coordinator link (multi-homed hosts).
    #[arg(long, value_name = "IP")]
    pub bind_ip: Option<IpAddr>,
    /// Most bytes of unacknowledged results kept on disk; when full, new plans
    /// are refused (nothing spooled is dropped). Units: KB, MB, GB, KiB, MiB, GiB.
    #[arg(long, value_name = "SIZE", default_value = "64MiB")]
    pub spool_max: String,
    /// Allow probing loopback, private, link-local and other special-purpose
    /// addresses (refused by default so a coordinator cannot aim the agent inward).
    #[arg(long)]
    pub allow_private: bool,
    /// Shortest reconnect delay.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub reconnect_max: Duration,
    /// Most requests in flight at once, across all plans.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_concurrency: usize,
}

/// A validated `run` configuration.
#[derive(Debug)]
pub struct RunConfig {
    /// The token, decoded, if one was given.
    pub token: Option<EnrollmentToken>,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The name to enroll as.
    pub name: String,
    /// Labels to enroll with.
    pub labels: BTreeMap<String, String>,
    /// Source address.
    pub bind_ip: Option<IpAddr>,
    /// Spool limit in bytes.
    pub spool_max: u64,
    /// Target policy.
    pub policy: TargetPolicy,
    /// Reconnect policy.
    pub backoff: BackoffConfig,
    /// Concurrency cap.
    pub max_concurrency: usize,
}

fn default_name(env: &dyn Env) -> String {
    env.var("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| check_name("name", h).is_ok())
        .unwrap_or_else(|| "agent".to_string())
}

impl RunArgs {
    /// Checks every flag; nothing is touched on disk or the network.
    pub fn validate(self, env: &dyn Env) -> anyhow::Result<RunConfig> {
        let token = self
            .token
            .or_else(|| env.var("VANTAGE_TOKEN"))
            .map(|t| EnrollmentToken::decode(&t))
            .transpose()
            .context("--token")?;
        let name = self.name.unwrap_or_else(|| default_name(env));
        check_name("name", &name).context("--name")?;
        let mut labels = BTreeMap::new();
        for label in &self.labels {
            let (key, value) = label
                .split_once('=')
                .with_context(|| format!("--label {label:?}: expected key=value"))?;
            labels.insert(key.to_string(), value.to_string());
        }
        check_labels(&labels).context("--label")?;
        let spool_max = parse_size(&self.spool_max).context("--spool-max")?;
        if spool_max < 64 * 1024 {
            bail!("--spool-max {}: must be at least 64KiB", self.spool_max);
        }
        let backoff = BackoffConfig {
            min: self.reconnect_min,
            max: self.reconnect_max,
            ..BackoffConfig::default()
        };
        backoff
            .validate()
            .context("--reconnect-min/--reconnect-max")?;
        if self.max_concurrency == 0 || self.max_concurrency > 10_000 {
            bail!(
                "--max-concurrency {}: must be between 1 and 10000",
                self.max_concurrency
            );
        }
        let state_dir = self
            .state_dir
            .or_else(|| env.var("VANTAGE_AGENT_STATE_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("vantage-agent"));
        Ok(RunConfig {
            token,
            state_dir,
            name,
            labels,
            bind_ip: self.bind_ip,
            spool_max,
            policy: TargetPolicy {
                allow_private: self.allow_private,
            },
            backoff,
            max_concurrency: self.max_concurrency,
        })
    }
}

/// Loads the identity from the state dir, enrolling first if there is none.
pub async fn load_or_enroll(config: &RunConfig) -> anyhow::Result<Identity> {
    create_private_dir(&config.state_dir)
        .with_context(|| format!("cannot use state directory {}", config.state_dir.display()))?;
    if let Some(identity) = Identity::load(&config.state_dir)? {
        if config.token.is_some() {
            tracing::info!(
                "already enrolled as {}; ignoring --token",
                identity.info.name
            );
        }
        return Ok(identity);
    }
    let Some(token) = &config.token else {
        bail!(
            "not enrolled yet: {} holds no identity; pass --token from `vantage token create`",
            config.state_dir.display()
        );
    };
    let identity = enroll(
        token,
        &EnrollRequest {
            name: config.name.clone(),
            labels: config.labels.clone(),
            role: "agent".into(),
        },
    )
    .await
    .context("enrollment failed")?;
    identity
        .save(&config.state_dir)
        .context("cannot store the enrolled identity")?;
    tracing::info!(
        agent_id = %identity.info.agent_id,
        region = %identity.info.region,
        "enrolled"
    );
    Ok(identity)
}

/// Builds the agent for a validated configuration.
pub async fn build_agent(config: &RunConfig) -> anyhow::Result<Agent> {
    let lock = crate::identity::lock_state_dir(&config.state_dir)?;
    let identity = load_or_enroll(config).await?;
    let spool_dir = config.state_dir.join("spool");
    let spool = Spool::open(&spool_dir, config.spool_max)
        .with_context(|| format!("cannot open spool {}", spool_dir.display()))?;
    let runner = Runner::new(
        ProbeEngine::new(config.policy, config.bind_ip),
        RunnerLimits {
            max_concurrency: config.max_concurrency,
            ..RunnerLimits::default()
        },
    );
    Ok(Agent::new(
        SessionConfig {
            identity,
            backoff: config.backoff,
            bind_ip: config.bind_ip,
            capabilities: vec!["http1".into()],
        },
        Arc::new(spool),
        runner,
    )
    .hold_state_lock(lock))
}

async fn run(args: RunArgs, env: &dyn Env) -> anyhow::Result<()> {
    let config = args.validate(env)?;
    let agent = build_agent(&config).await?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    agent.run(shutdown).await?;
    Ok(())
}

/// Parses `args` and runs; returns the process exit code.
pub fn main(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    env: &dyn Env,
) -> ExitCode {
    run_main(args, env, |cli: Cli| async move {
        match cli.command {
            Command::Run(args) => run(args, env).await,
        }
    })
}

/// The shared shape of every vantage binary: parse `args` into `C` (usage
/// errors exit 2, `--help` exits 0), set up logging and the crypto provider,
/// run `body` on a multi-threaded runtime, and print an error as one line,
/// `error: …`, with exit code 2.
pub fn run_main<C, F, Fut>(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    env: &dyn Env,
    body: F,
) -> ExitCode
where
    C: Parser,
    F: FnOnce(C) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let cli = match C::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_tracing(env);
    crate::tls::crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(body(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr; `VANTAGE_LOG` (e.g. `debug`) sets the filter.
pub fn init_tracing(env: &dyn Env) {
    let filter = env.var("VANTAGE_LOG").unwrap_or_else(|| "info".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::MapEnv;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> RunArgs {
        let mut argv = vec!["vantage-agent", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => args,
        }
    }

    #[test]
    fn defaults_validate() {
        let env = MapEnv::from_pairs([("HOSTNAME", "probe-1")]);
        let config = parse(&[]).validate(&env).unwrap();
        assert_eq!(config.name, "probe-1");
        assert_eq!(config.spool_max, 64 * 1024 * 1024);
        assert!(!config.policy.allow_private);
        assert!(config.token.is_none());
    }

    #[test]
    fn env_supplies_token_and_state_dir() {
        let token = EnrollmentToken {
            addrs: vec!["127.0.0.1:1".into()],
            ca_sha256: "0".repeat(64),
            secret: "x".repeat(32),
        };
        let env = MapEnv::from_pairs([
            ("VANTAGE_TOKEN", token.encode().as_str()),
            ("VANTAGE_AGENT_STATE_DIR", "/tmp/x"),
        ]);
        let config = parse(&["--name", "a1"]).validate(&env).unwrap();
        assert_eq!(config.token, Some(token));
        assert_eq!(config.state_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn bad_flags_are_named() {
        let env = MapEnv::default();
        let cases: [(&[&str], &str); 5] = [
            (&["--token", "nope"], "--token"),
            (&["--name", "bad name"], "--name"),
            (&["--label", "novalue"], "--label"),
            (&["--spool-max", "lots"], "--spool-max"),
            (
                &["--reconnect-min", "10s", "--reconnect-max", "1s"],
                "--reconnect",
            ),
        ];
        for (args, flag) in cases {
            let err = parse(args).validate(&env).unwrap_err();
            assert!(format!("{err:#}").contains(flag), "{args:?}: {err:#}");
        }
    }
}
