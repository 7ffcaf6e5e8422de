//! `vantage-agent run`: the serving agent's flags, their validation before
//! any connection, enrollment (or the stored identity), and the wiring of
//! session, spool and runner.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Args;
use vantage_proto::domain::{check_labels, check_name};
use vantage_proto::token::EnrollmentToken;

use crate::probe::{ProbeEngine, ProbeLimits, DEFAULT_MAX_RATE_PER_TARGET};
use crate::runner::{Runner, RunnerLimits};
use crate::safety::TargetPolicy;
use crate::session::backoff::BackoffConfig;
use crate::session::enroll::{enroll, EnrollRequest};
use crate::session::identity::Identity;
use crate::session::{Agent, SessionConfig};
use crate::spool::{parse_size, Spool};
use vantage_support::addr::parse_ip_port;
use vantage_support::env::Env;
use vantage_support::fs::create_private_dir;

use super::{read_ca_pem, MAX_RATE_LIMIT};

/// Flags of `vantage-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Enrollment token from `vantage token create` (needed only on the first
    /// start; env: VANTAGE_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Read the enrollment token from this file instead of --token (surrounding
    /// whitespace is ignored), so that it does not show in `ps` or the shell
    /// history. A file readable by group or others is used with a warning
    /// (the token is single-use and expires, and secret mounts are often
    /// 0644); chmod 600 it.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
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
    /// Resolve names with this DNS server (IP or IP:PORT) instead of the
    /// system resolver: what it answers is recorded as evidence.
    #[arg(long, value_name = "ADDR")]
    pub dns_server: Option<String>,
    /// Also trust the CA certificate(s) in this PEM file when probing, in
    /// addition to the system roots (an origin with a private CA).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Most bytes of unacknowledged results kept on disk; when full, new plans
    /// are refused (nothing spooled is dropped). Units: KB, MB, GB, KiB, MiB, GiB.
    #[arg(long, value_name = "SIZE", default_value = DEFAULT_SPOOL_MAX)]
    pub spool_max: String,
    /// Allow probing loopback, private, link-local and other special-purpose
    /// addresses (refused by default so a coordinator cannot aim the agent inward).
    #[arg(long)]
    pub allow_private: bool,
    /// Shortest reconnect delay.
    #[arg(long, value_name = "DURATION", default_value_t = BackoffConfig::default().min.into())]
    pub reconnect_min: humantime::Duration,
    /// Longest reconnect delay.
    #[arg(long, value_name = "DURATION", default_value_t = BackoffConfig::default().max.into())]
    pub reconnect_max: humantime::Duration,
    /// Most requests in flight at once, across all plans.
    #[arg(long, value_name = "N", default_value_t = RunnerLimits::default().max_concurrency)]
    pub max_concurrency: usize,
    /// Most requests per second to any one target address, across all plans
    /// (a coordinator cannot raise it): the agent is never a flood.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_RATE_PER_TARGET)]
    pub max_rate: u32,
}

/// `--spool-max` unless given.
pub const DEFAULT_SPOOL_MAX: &str = "64MiB";
/// The agent's state directory unless `--state-dir` or the env says otherwise.
pub const DEFAULT_STATE_DIR: &str = "vantage-agent";

/// Every flag at its default, from the same constants clap shows in
/// `--help`: what embedded agents and the witness start from.
impl Default for RunArgs {
    fn default() -> Self {
        RunArgs {
            token: None,
            token_file: None,
            state_dir: None,
            name: None,
            labels: Vec::new(),
            bind_ip: None,
            dns_server: None,
            cacert: None,
            spool_max: DEFAULT_SPOOL_MAX.to_string(),
            allow_private: false,
            reconnect_min: BackoffConfig::default().min.into(),
            reconnect_max: BackoffConfig::default().max.into(),
            max_concurrency: RunnerLimits::default().max_concurrency,
            max_rate: DEFAULT_MAX_RATE_PER_TARGET,
        }
    }
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
    /// DNS server for probes.
    pub dns_server: Option<std::net::SocketAddr>,
    /// Extra trusted CA certificates for probes (PEM, read at validation).
    pub cacert_pem: Option<String>,
    /// Spool limit in bytes.
    pub spool_max: u64,
    /// Target policy.
    pub policy: TargetPolicy,
    /// Reconnect policy.
    pub backoff: BackoffConfig,
    /// Concurrency cap.
    pub max_concurrency: usize,
    /// Per-target requests per second.
    pub max_rate: u32,
    /// `agent` or `witness`: what to enroll as.
    pub role: &'static str,
}

fn default_name(env: &dyn Env) -> String {
    env.var("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| check_name("name", h).is_ok())
        .unwrap_or_else(|| "agent".to_string())
}

impl RunArgs {
    /// Checks every flag for an agent; nothing is touched on disk or the network.
    pub fn validate(self, env: &dyn Env) -> anyhow::Result<RunConfig> {
        self.validate_as(env, "agent")
    }

    /// [`RunArgs::validate`] for a process that enrolls as `role` (`agent`
    /// or `witness`).
    pub fn validate_as(self, env: &dyn Env, role: &'static str) -> anyhow::Result<RunConfig> {
        let token = match (self.token, &self.token_file) {
            (Some(_), Some(_)) => bail!("--token and --token-file: give one of them, not both"),
            (Some(text), None) => Some(EnrollmentToken::decode(&text).context("--token")?),
            (None, Some(path)) => Some(read_token_file(path)?),
            (None, None) => env
                .var("VANTAGE_TOKEN")
                .map(|t| EnrollmentToken::decode(&t))
                .transpose()
                .context("VANTAGE_TOKEN")?,
        };
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
            min: *self.reconnect_min,
            max: *self.reconnect_max,
            ..BackoffConfig::default()
        };
        backoff
            .validate()
            .context("--reconnect-min/--reconnect-max")?;
        if !(1..=MAX_RATE_LIMIT).contains(&self.max_rate) {
            bail!(
                "--max-rate {}: must be between 1 and {MAX_RATE_LIMIT}",
                self.max_rate
            );
        }
        if self.max_concurrency == 0 || self.max_concurrency > 10_000 {
            bail!(
                "--max-concurrency {}: must be between 1 and 10000",
                self.max_concurrency
            );
        }
        let state_dir = self
            .state_dir
            .or_else(|| env.var("VANTAGE_AGENT_STATE_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let policy = TargetPolicy {
            allow_private: self.allow_private,
        };
        let dns_server = self
            .dns_server
            .as_deref()
            .map(|text| {
                parse_ip_port(text, 53)
                    .with_context(|| format!("--dns-server {text:?}: expected IP or IP:PORT"))
            })
            .transpose()?;
        if let Some(server) = dns_server {
            // The DNS server gets packets like any target; refusing it here
            // says so at start rather than in every result.
            policy
                .check(server.ip())
                .with_context(|| format!("--dns-server {server}"))?;
        }
        Ok(RunConfig {
            token,
            state_dir,
            name,
            labels,
            bind_ip: self.bind_ip,
            dns_server,
            cacert_pem: self.cacert.as_deref().map(read_ca_pem).transpose()?,
            spool_max,
            policy,
            backoff,
            max_concurrency: self.max_concurrency,
            max_rate: self.max_rate,
            role,
        })
    }
}

/// Loads the identity from the state dir, enrolling first if there is none.
pub async fn load_or_enroll(config: &RunConfig) -> anyhow::Result<Identity> {
    create_private_dir(&config.state_dir)
        .with_context(|| format!("cannot use state directory {}", config.state_dir.display()))?;
    if let Some(identity) = Identity::load(&config.state_dir)? {
        if identity.info.role != config.role {
            bail!(
                "{} holds the identity of {} {:?}; use a separate --state-dir for a {}",
                config.state_dir.display(),
                identity.info.role,
                identity.info.name,
                config.role
            );
        }
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
            role: config.role.into(),
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

/// Largest token file read: a token is a few hundred bytes.
const MAX_TOKEN_FILE: u64 = 16 * 1024;

/// Reads and decodes a `--token-file`: trimmed, non-empty, small. A file
/// that group or others can read is used, with a warning.
fn read_token_file(path: &std::path::Path) -> anyhow::Result<EnrollmentToken> {
    let what = || format!("--token-file {}", path.display());
    let meta = std::fs::metadata(path).with_context(|| format!("{}: cannot read it", what()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", what());
    }
    if meta.len() > MAX_TOKEN_FILE {
        bail!(
            "{}: {} bytes, too large for a token (at most {MAX_TOKEN_FILE})",
            what(),
            meta.len()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{mode:04o}"),
                "the token file is readable by group or others; chmod 600 it"
            );
        }
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{}: cannot read it", what()))?;
    let text = text.trim();
    if text.is_empty() {
        bail!("{}: the file is empty", what());
    }
    EnrollmentToken::decode(text).with_context(what)
}

/// Builds the agent for a validated configuration.
pub async fn build_agent(config: &RunConfig) -> anyhow::Result<Agent> {
    let lock = crate::session::identity::lock_state_dir(&config.state_dir)?;
    let identity = load_or_enroll(config).await?;
    let spool_dir = config.state_dir.join("spool");
    let spool = Spool::open(&spool_dir, config.spool_max)
        .with_context(|| format!("cannot open spool {}", spool_dir.display()))?;
    let mut engine = ProbeEngine::new(config.policy, config.bind_ip)
        .with_limits(ProbeLimits {
            max_rate_per_target: Some(config.max_rate),
            ..ProbeLimits::default()
        })
        .with_dns_server(config.dns_server);
    if let Some(pem) = &config.cacert_pem {
        engine = engine.with_ca_pem(pem).context("--cacert")?;
    }
    let runner = Runner::new(
        engine,
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
    .hold_state_lock(lock)
    .renew_certs_in(config.state_dir.clone()))
}

pub(super) async fn run(args: RunArgs, env: &dyn Env) -> anyhow::Result<()> {
    let config = args.validate(env)?;
    let agent = build_agent(&config).await?;
    agent
        .run(vantage_support::runtime::shutdown_signal())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::time::Duration;
    use vantage_support::env::MapEnv;

    fn parse(args: &[&str]) -> RunArgs {
        let mut argv = vec!["vantage-agent", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => args,
            other => panic!("parsed as {other:?}"),
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
    fn defaults_in_code_are_the_flag_defaults() {
        assert_eq!(
            format!("{:?}", RunArgs::default()),
            format!("{:?}", parse(&[]))
        );
        let env = MapEnv::default();
        let agent = RunArgs::default().validate(&env).unwrap();
        assert_eq!(agent.role, "agent");
        assert_eq!(agent.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(agent.backoff.min, Duration::from_millis(500));
        assert_eq!(agent.backoff.max, Duration::from_secs(30));
        assert_eq!(agent.max_concurrency, 256);
        assert_eq!(agent.max_rate, 200);
        let witness = RunArgs::default().validate_as(&env, "witness").unwrap();
        assert_eq!(witness.role, "witness");
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

    fn lab_token() -> EnrollmentToken {
        EnrollmentToken {
            addrs: vec!["127.0.0.1:1".into()],
            ca_sha256: "0".repeat(64),
            secret: "y".repeat(32),
        }
    }

    #[test]
    fn token_file_is_read_trimmed_and_wins_over_the_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("  {}\n\n", lab_token().encode())).unwrap();
        let env = MapEnv::from_pairs([("VANTAGE_TOKEN", "not-a-token")]);
        let file = path.display().to_string();
        let config = parse(&["--token-file", &file]).validate(&env).unwrap();
        assert_eq!(config.token, Some(lab_token()));
    }

    #[test]
    fn token_file_problems_are_named_before_any_network() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "  \n").unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "nope\n").unwrap();
        let missing = dir.path().join("missing");
        let env = MapEnv::default();
        for (path, want) in [
            (&empty, "the file is empty"),
            (&junk, "--token-file"),
            (&missing, "cannot read it"),
        ] {
            let file = path.display().to_string();
            let err = parse(&["--token-file", &file]).validate(&env).unwrap_err();
            let text = format!("{err:#}");
            assert!(
                text.contains("--token-file") && text.contains(want),
                "{text}"
            );
        }
        let folder = dir.path().display().to_string();
        let err = parse(&["--token-file", &folder])
            .validate(&env)
            .unwrap_err();
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
    }

    #[test]
    fn token_and_token_file_are_mutually_exclusive() {
        let err = Cli::try_parse_from([
            "vantage-agent",
            "run",
            "--token",
            "x",
            "--token-file",
            "/dev/null",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let err = Cli::try_parse_from([
            "vantage-agent",
            "witness",
            "--access-log",
            "/tmp/log",
            "--token",
            "x",
            "--token-file",
            "/dev/null",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        // Built by code rather than parsed, both still cannot be given.
        let args = RunArgs {
            token: Some(lab_token().encode()),
            token_file: Some(PathBuf::from("/dev/null")),
            ..parse(&[])
        };
        let err = args.validate(&MapEnv::default()).unwrap_err();
        assert!(format!("{err:#}").contains("not both"), "{err:#}");
    }

    #[test]
    fn a_private_dns_server_needs_allow_private() {
        let env = MapEnv::default();
        let err = parse(&["--dns-server", "127.0.0.1:5353"])
            .validate(&env)
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("--dns-server")
                && text.contains("loopback")
                && text.contains("--allow-private"),
            "{text}"
        );
        let err = parse(&["--dns-server", "::ffff:0:a00:1"])
            .validate(&env)
            .unwrap_err();
        assert!(format!("{err:#}").contains("private"), "{err:#}");
        let config = parse(&["--dns-server", "127.0.0.1:5353", "--allow-private"])
            .validate(&env)
            .unwrap();
        assert_eq!(config.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
        let config = parse(&["--dns-server", "9.9.9.9"]).validate(&env).unwrap();
        assert_eq!(config.dns_server, Some("9.9.9.9:53".parse().unwrap()));
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
