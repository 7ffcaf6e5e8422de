//! `vantage diagnose` and `vantage campaign …` (DESIGN §6): start a campaign
//! (on a coordinator, or `--local` in this process with one embedded agent),
//! show progress on stderr when it is a terminal, then print the report as
//! text, `--json` or `--markdown` (or write `--html FILE`). Exit codes: 0
//! healthy, 1 findings, 3 inconclusive, 2 usage or operational error.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use vantage_agent::embed::{LocalAgent, LocalAgentConfig};
use vantage_proto::cdn::CdnProfile;
use vantage_proto::pb;
use vantage_support::env::Env;

use super::client::{self, Target};
use super::progress::CampaignProgress;
use crate::campaign::plan::{CampaignTarget, PullProtocol, TargetRequest};
use crate::campaign::{CampaignEvent, CampaignRequest};
use crate::report::{render_html, render_markdown, render_terminal, HtmlMeta, Report};
use crate::wire;

/// How the report is printed.
#[derive(Debug, Args, Clone)]
#[group(multiple = false)]
pub struct OutputArgs {
    /// Print the report as JSON (schema vantage.report.v1) and nothing else on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print the report as Markdown, to paste into a support ticket (includes
    /// the edge request ids such as EO-LOG-UUID).
    #[arg(long)]
    pub markdown: bool,
    /// Write the report as one self-contained HTML page to FILE: findings
    /// with copyable reproduce commands, a region × probe matrix and timing
    /// waterfalls; it loads nothing from the network (the text report is
    /// still printed).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

/// The target flags of `vantage diagnose`, which every sweep takes too.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The URL as clients request it through the CDN, e.g. `https://www.example.com/a.jpg`
    #[arg(value_name = "URL")]
    pub url: String,
    /// Origin address(es), IP or IP:PORT, comma-separated (like curl
    /// --resolve host:port:ADDR; Host and SNI stay the URL's).
    #[arg(
        long = "origin",
        value_name = "ADDR[,ADDR]",
        value_delimiter = ',',
        required = true
    )]
    pub origins: Vec<String>,
    /// Edge address(es), IP or IP:PORT; default: each agent's own resolver.
    #[arg(long = "edge", value_name = "ADDR", value_delimiter = ',')]
    pub edges: Vec<String>,
    /// Regions to probe from, comma-separated, or `all` (default).
    #[arg(long, value_name = "R,R|all", value_delimiter = ',')]
    pub regions: Vec<String>,
    /// The CDN in front: edgeone, cloudflare or generic (its pull headers and
    /// origin-response timeout).
    #[arg(long, value_name = "CDN", default_value = "edgeone")]
    pub cdn: String,
    /// The edge's origin-response timeout (default: the profile's: edgeone
    /// 15s, cloudflare 100s, generic 60s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub edge_timeout: Option<Duration>,
    /// Concurrent requests in the rate-limit test.
    #[arg(long, value_name = "N", default_value_t = crate::campaign::plan::DEFAULT_BURST)]
    pub burst: u32,
    /// Attempts per baseline probe.
    #[arg(long, value_name = "N", default_value_t = crate::campaign::plan::DEFAULT_ATTEMPTS)]
    pub attempts: u32,
    /// The protocol the edge pulls from the origin with (seed step 1):
    /// http or https. Default: the URL's scheme. Without a port in
    /// --origin, the origin is probed on this protocol's default port.
    #[arg(long, value_name = "http|https")]
    pub pull_protocol: Option<String>,
    /// The Host header (and SNI) the edge sends to the origin, when the CDN
    /// rewrites it ("Host Header Rewrite"). Default: the URL's host.
    #[arg(long, value_name = "HOST")]
    pub pull_host: Option<String>,
    /// The path the edge requests from the origin, when the CDN rewrites it
    /// ("Pull URL Rewrite"), e.g. /origin/a.jpg. Default: the URL's path.
    #[arg(long, value_name = "PATH")]
    pub pull_path: Option<String>,
    /// The User-Agent every probe sends (default: vantage/VERSION). Set a
    /// browser's to see what a carrier does to browser traffic; the
    /// reproduce commands carry it as -A.
    #[arg(long, value_name = "UA")]
    pub user_agent: Option<String>,
}

/// Flags of `vantage diagnose`.
#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    /// What to probe.
    #[command(flatten)]
    pub target: TargetArgs,
    /// When the origin is slower than the edge (a 524), the report prints
    /// by the edge timeout + 1 s and says only "more than …"; the
    /// coordinator then measures the real time to first byte (waiting up to
    /// 4 edge timeouts, at most 2 minutes past it). With this flag, wait for
    /// that measurement and print the report with it (it is also shown by
    /// `vantage campaign show ID` later).
    #[arg(long)]
    pub wait_ttfb: bool,
    /// Run an embedded coordinator and one agent in this process (region
    /// `local`): no server, no enrollment.
    #[arg(long)]
    pub local: bool,
    /// With --local: allow loopback and private targets.
    #[arg(long, requires = "local")]
    pub allow_private: bool,
    /// Output format.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `vantage campaign …`
#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// List recent campaigns.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a finished campaign's report again.
    Show {
        /// Campaign id.
        id: String,
        /// Output format.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Follow a running campaign, then print its report.
    Watch {
        /// Campaign id.
        id: String,
        /// Output format.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Stop a running campaign: its agents stop their plans, and the report
    /// is concluded from what was stored, with the stopped regions named in
    /// `missing`. Prints that report; the exit code follows its status, as
    /// for `show` (2 if the campaign is unknown or not running).
    Cancel {
        /// Campaign id.
        id: String,
        /// Output format.
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// The exit code a report's status calls for.
pub fn exit_code(status: &str) -> ExitCode {
    match status {
        "healthy" => ExitCode::SUCCESS,
        "faulty" => ExitCode::from(1),
        _ => ExitCode::from(3),
    }
}

/// When a campaign ran, as far as the caller knows (shown by `--html`).
#[derive(Debug, Clone, Default)]
pub struct RunTimes {
    /// Its start, RFC 3339.
    pub started_at: Option<String>,
    /// Its end, RFC 3339.
    pub finished_at: Option<String>,
}

/// Prints a report in the chosen format (and writes the `--html` page,
/// with `times`) and returns the exit code.
pub fn print_report(json: &str, output: &OutputArgs, times: RunTimes) -> anyhow::Result<ExitCode> {
    let report: Report =
        serde_json::from_str(json).context("the coordinator sent a damaged report")?;
    let status = report.status.as_str();
    if output.json {
        println!("{json}");
    } else if output.markdown {
        print!("{}", render_markdown(&report));
    } else {
        print!(
            "{}",
            render_terminal(&report, std::io::stdout().is_terminal())
        );
    }
    if let Some(path) = &output.html {
        let meta = HtmlMeta {
            started_at: times.started_at,
            finished_at: times.finished_at,
            rendered_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
            raw_json: Some(json.to_string()),
        };
        std::fs::write(path, render_html(&report, &meta))
            .with_context(|| format!("--html {}", path.display()))?;
    }
    Ok(exit_code(status))
}

/// Progress on stderr: bars on a terminal, plain lines elsewhere.
fn campaign_progress() -> CampaignProgress {
    CampaignProgress::new(std::io::stderr().is_terminal())
}

fn parse_cdn(text: &str) -> anyhow::Result<CdnProfile> {
    text.parse::<CdnProfile>().context("--cdn")
}

impl TargetArgs {
    /// The campaign target these flags ask for, checked the way the
    /// coordinator will check it, so a bad flag fails before anything
    /// connects.
    pub fn target_request(&self) -> anyhow::Result<TargetRequest> {
        let request = TargetRequest {
            url: self.url.clone(),
            origins: self.origins.clone(),
            edges: self.edges.clone(),
            cdn: parse_cdn(&self.cdn)?,
            edge_timeout: self.edge_timeout,
            burst: self.burst,
            attempts: self.attempts,
            pull_protocol: self
                .pull_protocol
                .as_deref()
                .map(str::parse::<PullProtocol>)
                .transpose()?,
            pull_host: self.pull_host.clone(),
            pull_path: self.pull_path.clone(),
            user_agent: self.user_agent.clone(),
        };
        CampaignTarget::new(&request)?;
        Ok(request)
    }
}

/// `vantage diagnose` against a coordinator.
pub async fn diagnose_remote(args: DiagnoseArgs, target: Target) -> anyhow::Result<ExitCode> {
    let request = args.target.target_request()?;
    let mut control = client::connect(&target)?;
    let started = control
        .start_campaign(wire::target_pb(&request, &args.target.regions))
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let mut progress = campaign_progress();
    progress.note(&format!(
        "campaign {} in {} region(s)",
        started.campaign_id,
        started.regions.len()
    ));
    watch(&mut control, &started.campaign_id, &mut progress).await?;
    if args.wait_ttfb {
        await_followup(&progress, || {
            let (mut control, id) = (control.clone(), started.campaign_id.clone());
            async move {
                Ok(control
                    .get_report(pb::GetReportRequest { campaign_id: id })
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                    .into_inner()
                    .report_json)
            }
        })
        .await?;
    }
    show(&mut control, &started.campaign_id, &args.output).await
}

/// Whether a stored report still waits for its TTFB follow-up, and how
/// long that may take.
fn followup_pending(json: &str) -> Option<Duration> {
    let report: Report = serde_json::from_str(json).ok()?;
    report
        .ttfb_followup
        .filter(|f| f.state == crate::report::FollowupState::Running)
        .map(|f| Duration::from_millis(f.wait_ms))
}

/// Polls the stored report (`fetch` reads it) until its TTFB follow-up is
/// done, bounded by the follow-up's own wait plus a margin; returns the
/// report as last read.
async fn await_followup<F, Fut>(progress: &CampaignProgress, mut fetch: F) -> anyhow::Result<String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    let mut give_up: Option<tokio::time::Instant> = None;
    loop {
        let json = fetch().await?;
        let Some(wait) = followup_pending(&json) else {
            return Ok(json);
        };
        let give_up = *give_up.get_or_insert_with(|| {
            progress.note(&format!(
                "measuring the origin's real time to first byte (up to {} s)",
                wait.as_secs()
            ));
            tokio::time::Instant::now() + wait + FOLLOWUP_MARGIN
        });
        if tokio::time::Instant::now() >= give_up {
            bail!("the TTFB follow-up did not finish in time");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How long past its own wait `--wait-ttfb` waits for the follow-up.
const FOLLOWUP_MARGIN: Duration = Duration::from_secs(30);

/// Follows a campaign's progress until its report is ready.
async fn watch(
    control: &mut client::ControlClient,
    id: &str,
    progress: &mut CampaignProgress,
) -> anyhow::Result<()> {
    let mut stream = control
        .watch_campaign(pb::WatchCampaignRequest {
            campaign_id: id.to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    while let Some(event) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
    {
        let Some(event) = wire::event_of(&event) else {
            // A kind a newer coordinator sends: nothing to draw.
            continue;
        };
        progress.event(&event);
        if matches!(event, CampaignEvent::ReportReady { .. }) {
            break;
        }
    }
    progress.finish();
    Ok(())
}

async fn watch_and_print(
    control: &mut client::ControlClient,
    id: &str,
    output: &OutputArgs,
) -> anyhow::Result<ExitCode> {
    watch(control, id, &mut campaign_progress()).await?;
    show(control, id, output).await
}

async fn show(
    control: &mut client::ControlClient,
    id: &str,
    output: &OutputArgs,
) -> anyhow::Result<ExitCode> {
    let report = control
        .get_report(pb::GetReportRequest {
            campaign_id: id.to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if report.report_json.is_empty() {
        bail!(
            "campaign {id} is still {}: use `vantage campaign watch {id}`",
            report.status
        );
    }
    let mut times = RunTimes::default();
    if output.html.is_some() {
        // Best effort: the start time is in the campaign list (the report
        // itself carries no time); a campaign too old for the list shows
        // "unknown".
        if let Ok(list) = control
            .list_campaigns(pb::ListCampaignsRequest { limit: 1000 })
            .await
        {
            times.started_at = list
                .into_inner()
                .campaigns
                .into_iter()
                .find(|c| c.campaign_id == id)
                .map(|c| c.created_at);
        }
    }
    print_report(&report.report_json, output, times)
}

/// `vantage campaign …`.
pub async fn campaign(command: CampaignCommand, target: Target) -> anyhow::Result<ExitCode> {
    let mut control = client::connect(&target)?;
    match command {
        CampaignCommand::List { json } => {
            let list = control
                .list_campaigns(pb::ListCampaignsRequest { limit: 50 })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            if json {
                let rows: Vec<serde_json::Value> = list
                    .campaigns
                    .iter()
                    .map(|c| serde_json::json!({"campaign": c.campaign_id, "created_at": c.created_at, "status": c.status, "url": c.url, "regions": c.regions}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for c in &list.campaigns {
                    println!(
                        "{}  {}  {:<12}  {}  [{}]",
                        c.campaign_id,
                        c.created_at,
                        c.status,
                        c.url,
                        c.regions.join(",")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CampaignCommand::Show { id, output } => show(&mut control, &id, &output).await,
        CampaignCommand::Watch { id, output } => watch_and_print(&mut control, &id, &output).await,
        CampaignCommand::Cancel { id, output } => {
            let cancelled = control
                .cancel_campaign(pb::CancelCampaignRequest {
                    campaign_id: id.clone(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            eprintln!(
                "cancelled campaign {id}: {}",
                if cancelled.stopped_regions.is_empty() {
                    "every region had already finished".to_string()
                } else {
                    format!("stopped {}", cancelled.stopped_regions.join(", "))
                }
            );
            show(&mut control, &id, &output).await
        }
    }
}

/// `vantage diagnose --local`: an embedded coordinator and one agent.
pub async fn diagnose_local(args: DiagnoseArgs, env: &dyn Env) -> anyhow::Result<ExitCode> {
    let request = args.target.target_request()?;
    let dir = tempfile::tempdir().context("temporary data dir")?;
    let running = crate::server::start(crate::server::ServeConfig {
        heartbeat: Duration::from_secs(5),
        ..crate::server::ServeConfig::new(
            dir.path().join("coordinator"),
            "127.0.0.1:0".parse()?,
            None,
        )
    })
    .await
    .context("embedded coordinator")?;
    let core = running.core();
    let (token, _) = core
        .create_token("local", Duration::from_secs(60), 1)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let mut events = core.subscribe();
    let agent = LocalAgent::start(
        LocalAgentConfig {
            token,
            state_dir: dir.path().join("agent"),
            allow_private: args.allow_private,
        },
        env,
    )
    .await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(async move {
        agent
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(crate::registry::AgentEvent::Connected { .. }) => return true,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    if !matches!(connected, Ok(true)) {
        bail!("the embedded agent did not connect");
    }
    let mut handle = core
        .start_campaign(CampaignRequest {
            target: request,
            regions: vec!["local".into()],
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let mut progress = campaign_progress();
    let follow = async {
        while let Ok(event) = handle.events.recv().await {
            progress.event(&event);
        }
        progress.finish();
    };
    let (report, ()) = tokio::join!(&mut handle.done, follow);
    let mut json = report
        .context("campaign task")?
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    if args.wait_ttfb {
        json = await_followup(&progress, || {
            let (core, id, first) = (core.clone(), handle.campaign_id.clone(), json.clone());
            async move {
                let row = core.store().campaign(&id).await?;
                Ok(row.and_then(|r| r.report_json).unwrap_or(first))
            }
        })
        .await?;
    }
    let times = match core.store().campaign(&handle.campaign_id).await {
        Ok(Some(row)) => RunTimes {
            started_at: Some(crate::time::rfc3339(row.created_at_ms)),
            finished_at: row.finished_at_ms.map(crate::time::rfc3339),
        },
        _ => RunTimes::default(),
    };
    let _ = stop.send(());
    let _ = agent_task.await;
    let _ = running.shutdown().await;
    print_report(&json, &args.output, times)
}
