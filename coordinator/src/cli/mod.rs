//! The `vantage` command line (DESIGN §6): parse, validate everything before a
//! port is bound or a connection is made, run, and report errors as one line
//! (`error: …`) with exit code 2.
//!
//! The room: this module (the parser, `serve`, tokens, agents and their
//! table), [`diagnose`] (`vantage diagnose` and `vantage campaign`, local or
//! remote, with progress and every report format) and [`client`] (finding
//! and calling a coordinator); `completions` and the hidden `man` come
//! from `vantage_support::clidoc`. It talks to a coordinator only through the
//! ControlService client, or starts one through [`crate::server`]; it never
//! imports the API services or the store.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use serde::Serialize;
use vantage_proto::pb;
use vantage_support::clidoc::{CompletionsArgs, ManArgs};
use vantage_support::env::Env;

pub mod client;
pub mod diagnose;
pub mod progress;
pub mod sweep;

use crate::server::{self, ServeConfig};
use client::Target;

/// vantage: tells origin faults, edge faults and regional carrier interference
/// apart behind a CDN, from many vantage points at once.
///
/// Start a coordinator with `vantage serve`, create a token per region with
/// `vantage token create --region R`, and start `vantage-agent run --token …`
/// on a host in that region. `vantage agents` lists them.
#[derive(Debug, Parser)]
#[command(name = "vantage", version, about, long_about)]
pub struct Cli {
    /// Coordinator gRPC address (host:port or https://host:port); default:
    /// read from the data dir's coordinator.json (env: VANTAGE_COORDINATOR).
    #[arg(long, global = true, value_name = "URL")]
    pub coordinator: Option<String>,
    /// Coordinator data directory: database, CA, admin credential
    /// (env: VANTAGE_DATA_DIR; default ./vantage-data).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl vantage_support::runtime::LogDefault for Cli {
    fn default_log(&self) -> &'static str {
        match self.command {
            Command::Serve(_) => "info",
            _ => "warn",
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator (creates the data dir on first start).
    Serve(ServeArgs),
    /// Manage enrollment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List enrolled agents, or revoke one.
    Agents(AgentsArgs),
    /// Diagnose a URL behind a CDN from every region at once: origin fault,
    /// edge fault or regional carrier interference, with the evidence and
    /// the curl commands that prove it. Exit: 0 healthy, 1 findings,
    /// 3 inconclusive, 2 error.
    Diagnose(diagnose::DiagnoseArgs),
    /// List, show or follow campaigns.
    #[command(subcommand)]
    Campaign(diagnose::CampaignCommand),
    /// Scheduled campaigns (sweeps) that alert, after confirmation, when
    /// their verdict changes: create, list, show, history, pause, resume,
    /// delete, apply a TOML file.
    #[command(subcommand)]
    Sweep(sweep::SweepCommand),
    /// The alerts sweeps have confirmed: open ones, then the recently
    /// resolved.
    Alerts {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script for vantage on stdout.
    ///
    /// Install it where your shell looks, e.g.
    /// `vantage completions bash > /etc/bash_completion.d/vantage`,
    /// `vantage completions zsh > ~/.zfunc/_vantage` (a directory in
    /// $fpath), or
    /// `vantage completions fish > ~/.config/fish/completions/vantage.fish`.
    Completions(CompletionsArgs),
    /// Write the man pages of vantage and each of its subcommands
    /// (vantage.1, vantage-serve.1, vantage-token-create.1, …) into DIR and
    /// print their paths; for package builds (`man -l DIR/vantage.1` reads
    /// one).
    #[command(hide = true)]
    Man(ManArgs),
}

/// Flags of `vantage serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where state is kept: sqlite://PATH (one coordinator) or
    /// postgres://USER:PASSWORD@HOST/DB (several coordinators, one
    /// installation; the others need the first one's seal.key in their data
    /// dir). TLS: add ?sslmode=verify-full (the server's certificate checked
    /// against the system's CAs, or &sslrootcert=CA.pem's). Env:
    /// VANTAGE_DATABASE; default sqlite://<data-dir>/vantage.db.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// gRPC listen address (TLS; agents and the CLI connect here).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7443")]
    pub listen: SocketAddr,
    /// Plain-HTTP listen address for /healthz and /metrics (Prometheus).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7480")]
    pub http_listen: SocketAddr,
    /// A name or address agents use to reach this coordinator, put in tokens
    /// and the server certificate (repeatable; default: host name and loopback).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub advertise: Vec<String>,
    /// Heartbeat interval; an agent silent for three is marked disconnected.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// Deadline for a TLS handshake on the gRPC listener; slower peers are
    /// disconnected.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// A connection (gRPC or /healthz) with no open request for this long is
    /// closed; a request's headers and (but for a session) body must arrive
    /// within it.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Most open gRPC connections; further ones are closed at once.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams on one connection.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub max_streams: u32,
    /// Enrollment attempts allowed per source address and minute.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub enroll_per_minute: u32,
    /// Enrollment attempts one source address may make back to back.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub enroll_burst: u32,
    /// Lifetime of the agent certificates issued; agents renew theirs over
    /// the session once less than a third of it is left.
    #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = humantime::parse_duration)]
    pub agent_cert_lifetime: Duration,
    /// Most sweep runs in progress at once; a slot that finds them all busy
    /// is recorded as missed.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_running_sweeps: usize,
    /// How long sweep history is kept (runs older than this are pruned;
    /// their campaigns stay).
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub sweep_retention: Duration,
    /// Allow webhook URLs that point at loopback, private or other
    /// special-purpose addresses (refused by default, as probe targets are).
    #[arg(long)]
    pub webhook_allow_private: bool,
}

/// `vantage token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an enrollment token and print it (one line).
    Create(TokenCreateArgs),
}

/// Flags of `vantage token create`.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Region of the agents that enroll with this token.
    #[arg(long, value_name = "REGION")]
    pub region: String,
    /// How long the token stays valid (e.g. 30m, 1h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// How many agents may enroll with it.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub uses: u32,
}

/// Flags of `vantage agents`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentsArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Revoke an agent.
    #[command(subcommand)]
    pub action: Option<AgentsAction>,
}

/// `vantage agents …`
#[derive(Debug, Subcommand)]
pub enum AgentsAction {
    /// Revoke an agent: its session is dropped and it can never reconnect.
    Revoke {
        /// The agent's name.
        name: String,
    },
}

/// One agent in `vantage agents --json` (DESIGN §6 field names, plus the
/// agent's health: `spool_writable`, `spool_error`, `spool_bytes_free`).
#[derive(Debug, Clone, Serialize)]
pub struct AgentJson {
    /// Name.
    pub name: String,
    /// Region.
    pub region: String,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Connected now.
    pub connected: bool,
    /// Last seen, RFC 3339, or null.
    pub last_seen: Option<String>,
    /// Agent version.
    pub version: String,
    /// Remote address, or null.
    pub remote_addr: Option<String>,
    /// Revoked.
    pub revoked: bool,
    /// Whether the agent's spool passed its last test write, or null when
    /// the agent is not connected or reports no health.
    pub spool_writable: Option<bool>,
    /// Why the test write failed, or null.
    pub spool_error: Option<String>,
    /// Bytes free on the agent's spool file system, or null.
    pub spool_bytes_free: Option<u64>,
}

impl From<pb::AgentInfo> for AgentJson {
    fn from(info: pb::AgentInfo) -> Self {
        let non_empty = |s: String| if s.is_empty() { None } else { Some(s) };
        AgentJson {
            name: info.name,
            region: info.region,
            labels: info.labels.into_iter().collect(),
            connected: info.connected,
            last_seen: non_empty(info.last_seen),
            version: info.version,
            remote_addr: non_empty(info.remote_addr),
            revoked: info.revoked,
            spool_writable: info.health.as_ref().map(|h| h.spool_writable),
            spool_error: info
                .health
                .as_ref()
                .and_then(|h| non_empty(h.spool_error.clone())),
            spool_bytes_free: info.health.as_ref().map(|h| h.spool_bytes_free),
        }
    }
}

/// The SPOOL column: `ok (N free)`, `UNWRITABLE`, or `-` when unknown.
fn spool_cell(agent: &AgentJson) -> String {
    match (agent.spool_writable, agent.spool_bytes_free) {
        (Some(true), Some(free)) => format!("ok ({} free)", human_bytes(free)),
        (Some(true), None) => "ok".into(),
        (Some(false), _) => "UNWRITABLE".into(),
        (None, _) => "-".into(),
    }
}

/// Bytes in binary units, one decimal: `512B`, `1.5KiB`, `20.0GiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    // Display only: the precision lost in the conversion does not matter.
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

fn rpc_error(target: &Target, status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown => {
            anyhow::anyhow!(
                "cannot reach the coordinator at {}: {}",
                target.addr,
                status.message()
            )
        }
        _ => anyhow::anyhow!("{}", status.message()),
    }
}

async fn serve(
    args: ServeArgs,
    data_dir: PathBuf,
    database: Option<crate::store::Database>,
) -> anyhow::Result<()> {
    let running = server::start(ServeConfig {
        data_dir: data_dir.clone(),
        database,
        listen: args.listen,
        http_listen: Some(args.http_listen),
        advertise: args.advertise,
        heartbeat: args.heartbeat,
        transport: crate::api::transport::TransportLimits {
            handshake_timeout: args.handshake_timeout,
            idle_timeout: args.idle_timeout,
            max_connections: args.max_connections,
            max_streams: args.max_streams,
            ..crate::api::transport::TransportLimits::default()
        },
        enroll_rate: crate::api::enroll_limit::EnrollRate {
            per_minute: args.enroll_per_minute,
            burst: args.enroll_burst,
        },
        agent_cert_lifetime: args.agent_cert_lifetime,
        scheduler: crate::sweep::scheduler::SchedulerConfig {
            max_running: args.max_running_sweeps,
            retention: args.sweep_retention,
            ..crate::sweep::scheduler::SchedulerConfig::default()
        },
        webhook_allow_private: args.webhook_allow_private,
    })
    .await
    .context("cannot start the coordinator")?;
    // One line on stdout that scripts and tests wait for.
    println!(
        "vantage coordinator ready grpc={} http={} data_dir={}",
        running.grpc_addr,
        running.http_addr.map(|a| a.to_string()).unwrap_or_default(),
        data_dir.display()
    );
    vantage_support::runtime::shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await.context("server error")?;
    Ok(())
}

async fn token_create(args: TokenCreateArgs, target: Target) -> anyhow::Result<()> {
    let mut client = client::connect(&target)?;
    let response = client
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest {
            region: args.region,
            ttl_seconds: args.ttl.as_secs().max(1),
            uses: args.uses,
        })
        .await
        .map_err(|s| rpc_error(&target, s))?
        .into_inner();
    println!("{}", response.token);
    // Which coordinators the agent will try, in order: on a shared
    // database, every live one of the installation.
    if let Ok(token) = vantage_proto::token::EnrollmentToken::decode(&response.token) {
        eprintln!("the agent will try: {}", token.addrs.join(", "));
    }
    Ok(())
}

/// Renders the human table of `vantage agents`.
pub fn agents_table(agents: &[AgentJson]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "REGION".to_string(),
        "STATE".to_string(),
        "LAST SEEN".to_string(),
        "VERSION".to_string(),
        "REMOTE".to_string(),
        "SPOOL".to_string(),
        "LABELS".to_string(),
    ]];
    for agent in agents {
        let state = if agent.revoked {
            "revoked"
        } else if agent.connected {
            "connected"
        } else {
            "disconnected"
        };
        rows.push([
            agent.name.clone(),
            agent.region.clone(),
            state.to_string(),
            agent.last_seen.clone().unwrap_or_else(|| "never".into()),
            agent.version.clone(),
            agent.remote_addr.clone().unwrap_or_else(|| "-".into()),
            spool_cell(agent),
            agent
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    crate::report::columns(&rows, |_, _, cell| cell)
}

async fn agents(args: AgentsArgs, target: Target) -> anyhow::Result<()> {
    let mut client = client::connect(&target)?;
    if let Some(AgentsAction::Revoke { name }) = args.action {
        let response = client
            .revoke_agent(pb::RevokeAgentRequest { name: name.clone() })
            .await
            .map_err(|s| rpc_error(&target, s))?
            .into_inner();
        let dropped = if response.was_connected {
            "; its session was dropped"
        } else {
            ""
        };
        eprintln!("revoked {name}{dropped}");
        return Ok(());
    }
    let response = client
        .list_agents(pb::ListAgentsRequest {})
        .await
        .map_err(|s| rpc_error(&target, s))?
        .into_inner();
    let agents: Vec<AgentJson> = response.agents.into_iter().map(AgentJson::from).collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&agents)?);
    } else if agents.is_empty() {
        eprintln!("no agents enrolled yet: create a token with `vantage token create --region R`");
    } else {
        print!("{}", agents_table(&agents));
    }
    Ok(())
}

async fn dispatch(cli: Cli, env: &dyn Env) -> anyhow::Result<ExitCode> {
    // Neither needs a data dir or a coordinator.
    match &cli.command {
        Command::Completions(args) => {
            return vantage_support::clidoc::print_completions(Cli::command(), "vantage", args)
                .map(|()| ExitCode::SUCCESS);
        }
        Command::Man(args) => {
            return vantage_support::clidoc::print_man_pages(Cli::command(), args)
                .map(|()| ExitCode::SUCCESS);
        }
        _ => {}
    }
    let data_dir = client::data_dir(cli.data_dir.clone(), env);
    match cli.command {
        Command::Diagnose(args) if args.local => diagnose::diagnose_local(args, env).await,
        Command::Diagnose(args) => {
            diagnose::diagnose_remote(args, Target::discover(cli.coordinator, &data_dir, env)?)
                .await
        }
        Command::Campaign(command) => {
            diagnose::campaign(command, Target::discover(cli.coordinator, &data_dir, env)?).await
        }
        Command::Sweep(command) => {
            // Bad input fails before the coordinator is looked for.
            sweep::check(&command)?;
            sweep::sweep(command, Target::discover(cli.coordinator, &data_dir, env)?)
                .await
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Alerts { json } => {
            sweep::alerts(json, Target::discover(cli.coordinator, &data_dir, env)?)
                .await
                .map(|()| ExitCode::SUCCESS)
        }
        other => dispatch_admin(other, cli.coordinator, data_dir, env)
            .await
            .map(|()| ExitCode::SUCCESS),
    }
}

async fn dispatch_admin(
    command: Command,
    coordinator: Option<String>,
    data_dir: PathBuf,
    env: &dyn Env,
) -> anyhow::Result<()> {
    let cli_coordinator = coordinator;
    match command {
        Command::Serve(args) => {
            if cli_coordinator.is_some() {
                bail!("--coordinator is for client commands; `serve` runs the coordinator itself");
            }
            let database = client::database(args.database.clone(), env)?;
            serve(args, data_dir, database).await
        }
        Command::Token(TokenCommand::Create(args)) => {
            vantage_proto::domain::check_name("region", &args.region).context("--region")?;
            if args.uses == 0 {
                bail!("--uses must be at least 1");
            }
            token_create(args, Target::discover(cli_coordinator, &data_dir, env)?).await
        }
        Command::Agents(args) => {
            agents(args, Target::discover(cli_coordinator, &data_dir, env)?).await
        }
        Command::Diagnose(_)
        | Command::Campaign(_)
        | Command::Sweep(_)
        | Command::Alerts { .. }
        | Command::Completions(_)
        | Command::Man(_) => {
            bail!("not an administrative command")
        }
    }
}

/// Parses `args` and runs; returns the process exit code.
pub fn main(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    env: &dyn Env,
) -> ExitCode {
    vantage_support::runtime::run_main_with_code(args, env, |cli: Cli| dispatch(cli, env))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use vantage_support::env::MapEnv;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn agents_parses_list_json_and_revoke() {
        let cli = Cli::try_parse_from(["vantage", "agents", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Agents(AgentsArgs {
                json: true,
                action: None
            })
        ));
        let cli = Cli::try_parse_from(["vantage", "agents", "revoke", "fra-1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Agents(AgentsArgs {
                action: Some(AgentsAction::Revoke { .. }),
                ..
            })
        ));
    }

    #[test]
    fn token_create_defaults() {
        let cli = Cli::try_parse_from(["vantage", "token", "create", "--region", "eu"]).unwrap();
        let Command::Token(TokenCommand::Create(args)) = cli.command else {
            panic!("not token create")
        };
        assert_eq!(args.ttl, Duration::from_secs(3600));
        assert_eq!(args.uses, 1);
    }

    #[test]
    fn bad_durations_and_addresses_are_usage_errors() {
        for argv in [
            &["vantage", "serve", "--listen", "nowhere"][..],
            &["vantage", "serve", "--heartbeat", "soon"][..],
            &[
                "vantage", "token", "create", "--region", "eu", "--ttl", "forever",
            ][..],
            &["vantage", "token", "create"][..],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert!(err.use_stderr(), "{argv:?}");
        }
    }

    #[test]
    fn database_comes_from_flag_then_env_and_is_parsed_up_front() {
        use crate::store::Database;
        let env =
            MapEnv::from_pairs([("VANTAGE_DATABASE", "postgres://vantage@db.internal/fleet")]);
        assert!(client::database(None, &MapEnv::default())
            .unwrap()
            .is_none());
        match client::database(None, &env).unwrap() {
            Some(Database::Postgres(config)) => {
                assert_eq!(
                    config.to_string(),
                    "postgres://vantage@db.internal:5432/fleet"
                )
            }
            other => panic!("{other:?}"),
        }
        match client::database(Some("sqlite:///srv/v.db".into()), &env).unwrap() {
            Some(Database::Sqlite(path)) => assert_eq!(path, PathBuf::from("/srv/v.db")),
            other => panic!("{other:?}"),
        }
        for (flag, says) in [
            (
                "mysql://root@db/fleet",
                "expected sqlite://PATH or postgres://",
            ),
            ("sqlite://", "names no file"),
            ("postgres://db.internal/fleet", "no user"),
        ] {
            let message = format!(
                "{:#}",
                client::database(Some(flag.into()), &env).unwrap_err()
            );
            assert!(message.starts_with("--database: "), "{message}");
            assert!(message.contains(says), "{flag}: {message}");
        }
        let from_env = MapEnv::from_pairs([("VANTAGE_DATABASE", "redis://x")]);
        let message = format!("{:#}", client::database(None, &from_env).unwrap_err());
        assert!(message.starts_with("VANTAGE_DATABASE: "), "{message}");
    }

    #[test]
    fn data_dir_comes_from_flag_then_env_then_default() {
        let env = MapEnv::from_pairs([("VANTAGE_DATA_DIR", "/srv/vantage")]);
        assert_eq!(
            client::data_dir(Some("/x".into()), &env),
            PathBuf::from("/x")
        );
        assert_eq!(client::data_dir(None, &env), PathBuf::from("/srv/vantage"));
        assert_eq!(
            client::data_dir(None, &MapEnv::default()),
            PathBuf::from("vantage-data")
        );
    }

    #[test]
    fn missing_data_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Target::discover(None, dir.path(), &MapEnv::default()).unwrap_err();
        assert!(
            format!("{err:#}").contains("no coordinator found"),
            "{err:#}"
        );
    }

    #[test]
    fn table_lists_state() {
        let agents = vec![AgentJson {
            name: "fra-1".into(),
            region: "eu".into(),
            labels: [("isp".to_string(), "x".to_string())].into(),
            connected: true,
            last_seen: None,
            version: "0.1.0".into(),
            remote_addr: None,
            revoked: false,
            spool_writable: Some(true),
            spool_error: None,
            spool_bytes_free: Some(3 << 30),
        }];
        let table = agents_table(&agents);
        assert!(table.starts_with("NAME"));
        assert!(table.contains("fra-1") && table.contains("connected") && table.contains("isp=x"));
        assert!(
            table.contains("SPOOL") && table.contains("ok (3.0GiB free)"),
            "{table}"
        );
        let broken = AgentJson {
            spool_writable: Some(false),
            spool_error: Some("read-only file system".into()),
            ..agents[0].clone()
        };
        assert!(agents_table(&[broken]).contains("UNWRITABLE"));
        let unknown = AgentJson {
            spool_writable: None,
            spool_bytes_free: None,
            ..agents[0].clone()
        };
        let row = agents_table(&[unknown]);
        assert!(
            !row.contains("ok (") && !row.contains("UNWRITABLE"),
            "{row}"
        );
    }
}
