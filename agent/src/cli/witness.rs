//! `vantage-agent witness`: the origin-side observer's flags and start-up:
//! it follows the access log and reports sightings of campaign nonces over
//! an agent session.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use vantage_proto::domain::check_name;

use vantage_support::env::Env;

use super::run::{build_agent, RunArgs};

/// The witness's state directory unless `--state-dir` or the env says otherwise.
pub const DEFAULT_WITNESS_STATE_DIR: &str = "vantage-witness";

/// Flags of `vantage-agent witness`.
#[derive(Debug, Args)]
pub struct WitnessArgs {
    /// Enrollment token from `vantage token create` (first start only; env:
    /// VANTAGE_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Read the enrollment token from this file instead (surrounding
    /// whitespace is ignored), so that it does not show in `ps`; same rules
    /// as `run --token-file`.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The web server's access log to follow (rotation by rename and
    /// truncation are followed; the file may appear later).
    #[arg(long, value_name = "PATH")]
    pub access_log: PathBuf,
    /// Log format: auto, combined, common or json (JSON Lines).
    #[arg(long, value_name = "FORMAT", default_value = DEFAULT_LOG_FORMAT)]
    pub log_format: String,
    /// With --log-format json: the field holding the request URI.
    #[arg(long, value_name = "FIELD", default_value = DEFAULT_JSON_URI_FIELD)]
    pub json_uri_field: String,
    /// With --log-format json: the field holding the client address.
    #[arg(long, value_name = "FIELD", default_value = DEFAULT_JSON_CLIENT_FIELD)]
    pub json_client_field: String,
    /// Query parameter that carries the probe nonce.
    #[arg(long, value_name = "NAME", default_value = crate::witness::DEFAULT_NONCE_PARAM)]
    pub nonce_param: String,
    /// Read the log from its start instead of only new lines.
    #[arg(long)]
    pub from_start: bool,
    /// How often to look for new log lines.
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_WITNESS_POLL.into())]
    pub poll: humantime::Duration,
    /// Directory for the witness's key and certificate (env:
    /// VANTAGE_AGENT_STATE_DIR; default ./vantage-witness).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Witness name, unique per coordinator (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

/// `witness --log-format` unless given.
pub const DEFAULT_LOG_FORMAT: &str = "auto";
/// `witness --json-uri-field` unless given.
pub const DEFAULT_JSON_URI_FIELD: &str = "request_uri";
/// `witness --json-client-field` unless given.
pub const DEFAULT_JSON_CLIENT_FIELD: &str = "remote_addr";
/// `witness --poll` unless given.
pub const DEFAULT_WITNESS_POLL: Duration = Duration::from_millis(200);

fn log_format(args: &WitnessArgs) -> anyhow::Result<crate::witness::parse::LogFormat> {
    use crate::witness::parse::LogFormat;
    Ok(match args.log_format.to_ascii_lowercase().as_str() {
        "auto" => LogFormat::Auto,
        "combined" => LogFormat::Combined,
        "common" => LogFormat::Common,
        "json" => LogFormat::JsonLines {
            uri_field: args.json_uri_field.clone(),
            client_field: args.json_client_field.clone(),
            time_field: None,
        },
        other => bail!("--log-format {other:?}: expected auto, combined, common or json"),
    })
}

pub(super) async fn witness(args: WitnessArgs, env: &dyn Env) -> anyhow::Result<()> {
    let format = log_format(&args)?;
    check_name("nonce-param", &args.nonce_param).context("--nonce-param")?;
    let poll = *args.poll;
    if poll < Duration::from_millis(10) || poll > Duration::from_secs(60) {
        bail!("--poll must be between 10ms and 1m");
    }
    if args.access_log.is_dir() {
        bail!(
            "--access-log {}: is a directory, not a log file",
            args.access_log.display()
        );
    }
    // The witness shares the agent's settings (backoff, spool) at their defaults.
    let config = RunArgs {
        token: args.token.clone(),
        token_file: args.token_file.clone(),
        state_dir: args.state_dir.clone().or_else(|| {
            Some(
                env.var("VANTAGE_AGENT_STATE_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_WITNESS_STATE_DIR)),
            )
        }),
        name: args.name.clone(),
        ..RunArgs::default()
    }
    .validate_as(env, "witness")?;
    let witness = crate::witness::Witness::open(
        &args.access_log,
        args.from_start,
        format,
        args.nonce_param.clone(),
    )
    .with_context(|| format!("cannot follow {}", args.access_log.display()))?;
    let (observations, queued) = tokio::sync::mpsc::channel(10_000);
    let agent = build_agent(&config).await?.with_observations(queued);
    crate::witness::spawn_forwarding(witness, poll, observations);
    tracing::info!(log = %args.access_log.display(), "witness following the access log");
    agent
        .run(vantage_support::runtime::shutdown_signal())
        .await?;
    Ok(())
}
