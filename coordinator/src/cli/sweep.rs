//! `vantage sweep …` and `vantage alerts` (DESIGN §6, §6a): scheduled
//! campaigns and the alerts their runs confirm.
//!
//! Every definition is checked here the way the coordinator will check it
//! (flags, durations, the TOML file of `sweep apply`), so bad input is one
//! line and exit 2 before anything connects; what only the coordinator
//! knows (enrolled regions, its webhook egress policy, duplicate names) is
//! checked there, before anything changes. It talks to the coordinator only
//! through the ControlService client.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use vantage_proto::cdn::CdnProfile;
use vantage_proto::pb;

use super::client::{self, Target};
use super::diagnose::TargetArgs;
use super::rpc_error;
use crate::campaign::plan::{PullProtocol, TargetRequest, DEFAULT_ATTEMPTS, DEFAULT_BURST};
use crate::sweep::alert::DEFAULT_CONFIRM;
use crate::sweep::model::SweepDefinition;
use crate::sweep::model::DEFAULT_QUORUM;
use crate::wire;

/// `vantage sweep …`
#[derive(Debug, Subcommand)]
pub enum SweepCommand {
    /// Create a sweep: a campaign the coordinator runs every --every, at a
    /// stable offset inside the interval, alerting (after --confirm runs in
    /// a row) on what it finds. Takes every target flag of `diagnose`.
    Create(Box<SweepCreateArgs>),
    /// List the sweeps: interval, regions, state, next run, last verdict.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show one sweep's definition, schedule, last run and open alerts.
    Show {
        /// The sweep's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The sweep's runs, newest first: verdict, findings, campaign, and
    /// every missed slot with its reason.
    History {
        /// The sweep's name.
        name: String,
        /// How many runs (default 50).
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: u32,
        /// Print a JSON array (DESIGN §6a).
        #[arg(long)]
        json: bool,
    },
    /// Stop running a sweep until `resume` (its slots pass unrecorded).
    Pause {
        /// The sweep's name.
        name: String,
    },
    /// Run a paused sweep again, from its next slot.
    Resume {
        /// The sweep's name.
        name: String,
    },
    /// Delete a sweep with its history and alerts (its campaigns stay).
    Delete {
        /// The sweep's name.
        name: String,
    },
    /// Make the sweeps exactly the ones a TOML file lists: create the new,
    /// update the changed, delete the unlisted. All or nothing.
    ///
    /// The file has one `[[sweep]]` table per sweep, with `name`, `url`,
    /// `origin` (a list), and optionally `every` ("1m"), `regions`,
    /// `confirm`, `webhooks`, `edge`, `cdn`, `edge_timeout`, `burst`,
    /// `attempts`, `pull_protocol`, `pull_host`, `pull_path`, `user_agent`.
    Apply {
        /// The TOML file.
        file: PathBuf,
        /// Print what would change (`+` create, `~` update, `-` delete)
        /// and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Flags of `vantage sweep create`.
#[derive(Debug, Args)]
pub struct SweepCreateArgs {
    /// The sweep's name (letters, digits, `.`, `_`, `-`); its slots'
    /// offset inside the interval is derived from it.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// What to probe, as for `diagnose`.
    #[command(flatten)]
    pub target: TargetArgs,
    /// How often to run (at least 1s, at most 7d).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub every: Duration,
    /// Consecutive runs that must carry a finding before its alert opens
    /// (and lack it before it resolves).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONFIRM)]
    pub confirm: u32,
    /// Regions an `origin_*` finding must hold in before a run counts
    /// toward its alert (e.g. 2: one region's bad path never pages anyone
    /// about the origin). Carrier and edge findings are regional by nature
    /// and count from one region.
    #[arg(long, value_name = "K", default_value_t = DEFAULT_QUORUM)]
    pub quorum: u32,
    /// POST each alert event (`vantage.alert.v1` JSON, with a Slack- and
    /// Mattermost-ready `text`) to this URL (repeatable).
    #[arg(long = "webhook", value_name = "URL")]
    pub webhooks: Vec<String>,
}

/// A `[[sweep]]` table of a `sweep apply` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSweep {
    name: String,
    url: String,
    origin: Vec<String>,
    #[serde(default)]
    edge: Vec<String>,
    #[serde(default)]
    regions: Vec<String>,
    every: Option<String>,
    confirm: Option<u32>,
    quorum: Option<u32>,
    #[serde(default)]
    webhooks: Vec<String>,
    cdn: Option<String>,
    edge_timeout: Option<String>,
    burst: Option<u32>,
    attempts: Option<u32>,
    pull_protocol: Option<String>,
    pull_host: Option<String>,
    pull_path: Option<String>,
    user_agent: Option<String>,
}

/// A `sweep apply` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    #[serde(default)]
    sweep: Vec<FileSweep>,
}

fn duration(field: &str, name: &str, text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text).with_context(|| {
        format!("sweep {name:?}: {field} = {text:?} is not a duration (e.g. 30s, 5m)")
    })
}

impl FileSweep {
    fn definition(self) -> anyhow::Result<(String, SweepDefinition)> {
        let name = self.name;
        let cdn = match &self.cdn {
            Some(cdn) => cdn
                .parse::<CdnProfile>()
                .with_context(|| format!("sweep {name:?}: cdn"))?,
            None => CdnProfile::EdgeOne,
        };
        let target = TargetRequest {
            url: self.url,
            origins: self.origin,
            edges: self.edge,
            cdn,
            edge_timeout: self
                .edge_timeout
                .as_deref()
                .map(|t| duration("edge_timeout", &name, t))
                .transpose()?,
            burst: self.burst.unwrap_or(DEFAULT_BURST),
            attempts: self.attempts.unwrap_or(DEFAULT_ATTEMPTS),
            pull_protocol: self
                .pull_protocol
                .as_deref()
                .map(str::parse::<PullProtocol>)
                .transpose()
                .with_context(|| format!("sweep {name:?}: pull_protocol"))?,
            pull_host: self.pull_host,
            pull_path: self.pull_path,
            user_agent: self.user_agent,
        };
        let mut definition = SweepDefinition::new(target);
        definition.regions = self.regions;
        if let Some(every) = &self.every {
            definition.every_ms = millis(duration("every", &name, every)?);
        }
        definition.confirm = self.confirm.unwrap_or(DEFAULT_CONFIRM);
        definition.quorum = self.quorum.unwrap_or(DEFAULT_QUORUM);
        definition.webhooks = self.webhooks;
        definition
            .check(&name)
            .with_context(|| format!("sweep {name:?}"))?;
        Ok((name, definition))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads and checks a `sweep apply` file: every sweep in it, or the first
/// error as one line.
pub fn read_sweep_file(path: &std::path::Path) -> anyhow::Result<Vec<(String, SweepDefinition)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: SweepFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
    let mut out: Vec<(String, SweepDefinition)> = Vec::new();
    for sweep in file.sweep {
        let (name, definition) = sweep.definition()?;
        if out.iter().any(|(n, _)| *n == name) {
            bail!(
                "{}: sweep {name:?} is defined more than once",
                path.display()
            );
        }
        out.push((name, definition));
    }
    Ok(out)
}

/// A finding of a run, as `sweep history --json` prints it.
#[derive(Debug, Serialize)]
pub struct FindingJson {
    /// Its code.
    pub code: String,
    /// Its kind (null when its code has none).
    pub kind: Option<String>,
    /// Where it held.
    pub regions: Vec<String>,
}

/// One run, as `sweep history --json` prints it (DESIGN §6a, plus `slot`
/// and `reason`).
#[derive(Debug, Serialize)]
pub struct RunJson {
    /// The slot, RFC 3339.
    pub slot: String,
    /// When its campaign started (null when missed).
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
    /// `healthy|faulty|inconclusive|missed` (or `running`).
    pub status: String,
    /// Its campaign (null when missed before one started).
    pub campaign: Option<String>,
    /// What it found.
    pub findings: Vec<FindingJson>,
    /// Why it was missed, or why it has no verdict.
    pub reason: Option<String>,
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<pb::SweepRunInfo> for RunJson {
    fn from(run: pb::SweepRunInfo) -> Self {
        RunJson {
            slot: run.slot,
            started_at: non_empty(run.started_at),
            finished_at: non_empty(run.finished_at),
            status: run.status,
            campaign: non_empty(run.campaign_id),
            findings: run
                .findings
                .into_iter()
                .map(|f| FindingJson {
                    code: f.code,
                    kind: non_empty(f.kind),
                    regions: f.regions,
                })
                .collect(),
            reason: non_empty(run.reason),
        }
    }
}

/// A sweep, as `sweep list --json` and `sweep show --json` print it.
#[derive(Debug, Serialize)]
pub struct SweepJson {
    /// Its name.
    pub name: String,
    /// The URL it probes.
    pub url: String,
    /// Its origins.
    pub origin: Vec<String>,
    /// Its edges.
    pub edge: Vec<String>,
    /// Its regions (empty: all).
    pub regions: Vec<String>,
    /// Its interval, e.g. `5m`.
    pub every: String,
    /// Its slots' offset inside the interval, milliseconds.
    pub offset_ms: u64,
    /// Its `--confirm`.
    pub confirm: u32,
    /// Its `--quorum`.
    pub quorum: u32,
    /// How many webhooks it posts to (their URLs may hold secrets).
    pub webhooks: usize,
    /// Whether it is paused.
    pub paused: bool,
    /// When it was created.
    pub created_at: String,
    /// Its next slot (null while paused).
    pub next_run_at: Option<String>,
    /// Its newest run.
    pub last_run: Option<RunJson>,
    /// Alerts open now.
    pub alerts_open: u32,
}

impl From<pb::SweepInfo> for SweepJson {
    fn from(info: pb::SweepInfo) -> Self {
        let definition = info.definition.unwrap_or_default();
        let target = definition.target.unwrap_or_default();
        SweepJson {
            name: definition.name,
            url: target.url,
            origin: target.origins,
            edge: target.edges,
            regions: target.regions,
            every: humantime::format_duration(Duration::from_millis(definition.every_ms))
                .to_string(),
            offset_ms: info.offset_ms,
            confirm: definition.confirm,
            quorum: definition.quorum.max(1),
            webhooks: definition.webhooks.len(),
            paused: info.paused,
            created_at: info.created_at,
            next_run_at: non_empty(info.next_run_at),
            last_run: info.last_run.map(RunJson::from),
            alerts_open: info.alerts_open,
        }
    }
}

/// An alert, as `vantage alerts --json` prints it.
#[derive(Debug, Serialize)]
pub struct AlertJson {
    /// `open` or `resolved`.
    pub state: &'static str,
    /// The sweep.
    pub sweep: String,
    /// The finding code.
    pub code: String,
    /// The finding kind (null when its code has none).
    pub kind: Option<String>,
    /// Where it holds (or last held).
    pub regions: Vec<String>,
    /// When it opened.
    pub opened_at: Option<String>,
    /// When it resolved (null while open).
    pub resolved_at: Option<String>,
    /// The finding's summary.
    pub summary: String,
    /// The campaign of the run that last changed it.
    pub campaign: Option<String>,
}

impl From<pb::AlertInfo> for AlertJson {
    fn from(alert: pb::AlertInfo) -> Self {
        AlertJson {
            state: if alert.open { "open" } else { "resolved" },
            sweep: alert.sweep,
            code: alert.code,
            kind: non_empty(alert.kind),
            regions: alert.regions,
            opened_at: non_empty(alert.opened_at),
            resolved_at: non_empty(alert.resolved_at),
            summary: alert.summary,
            campaign: non_empty(alert.campaign_id),
        }
    }
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn findings_cell(findings: &[FindingJson]) -> String {
    if findings.is_empty() {
        return "-".into();
    }
    findings
        .iter()
        .map(|f| {
            let kind = f
                .kind
                .as_deref()
                .map(|k| format!("/{k}"))
                .unwrap_or_default();
            format!("{}{kind}@{}", f.code, f.regions.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The table of `sweep list`.
pub fn sweeps_table(sweeps: &[SweepJson]) -> String {
    let mut rows = vec![[
        "NAME", "EVERY", "REGIONS", "STATE", "NEXT RUN", "LAST", "ALERTS", "URL",
    ]
    .map(String::from)
    .to_vec()];
    for s in sweeps {
        rows.push(vec![
            s.name.clone(),
            s.every.clone(),
            if s.regions.is_empty() {
                "all".into()
            } else {
                s.regions.join(",")
            },
            if s.paused {
                "paused".into()
            } else {
                "active".into()
            },
            s.next_run_at.clone().unwrap_or_else(|| "-".into()),
            s.last_run.as_ref().map_or("-".into(), |r| r.status.clone()),
            s.alerts_open.to_string(),
            s.url.clone(),
        ]);
    }
    table(&rows)
}

/// The table of `sweep history`.
pub fn history_table(runs: &[RunJson]) -> String {
    let mut rows = vec![["SLOT", "STATUS", "FINDINGS", "CAMPAIGN", "REASON"]
        .map(String::from)
        .to_vec()];
    for r in runs {
        rows.push(vec![
            r.slot.clone(),
            r.status.clone(),
            findings_cell(&r.findings),
            r.campaign.clone().unwrap_or_else(|| "-".into()),
            r.reason.clone().unwrap_or_default(),
        ]);
    }
    table(&rows)
}

/// The table of `vantage alerts`.
pub fn alerts_table(alerts: &[AlertJson]) -> String {
    let mut rows = vec![["STATE", "SWEEP", "FINDING", "REGIONS", "SINCE", "SUMMARY"]
        .map(String::from)
        .to_vec()];
    for a in alerts {
        let since = if a.state == "open" {
            &a.opened_at
        } else {
            &a.resolved_at
        };
        rows.push(vec![
            a.state.to_uppercase(),
            a.sweep.clone(),
            match &a.kind {
                Some(kind) => format!("{}/{kind}", a.code),
                None => a.code.clone(),
            },
            a.regions.join(","),
            since.clone().unwrap_or_else(|| "-".into()),
            a.summary.clone(),
        ]);
    }
    table(&rows)
}

fn show_text(s: &SweepJson) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<12} {v}\n"));
    line("sweep", s.name.clone());
    line("url", s.url.clone());
    line("origin", s.origin.join(", "));
    if !s.edge.is_empty() {
        line("edge", s.edge.join(", "));
    }
    line(
        "regions",
        if s.regions.is_empty() {
            "all".into()
        } else {
            s.regions.join(", ")
        },
    );
    line(
        "every",
        format!("{} (at +{} ms in each interval)", s.every, s.offset_ms),
    );
    line("confirm", format!("{} runs", s.confirm));
    line(
        "quorum",
        match s.quorum {
            1 => "origin findings count from 1 region".to_string(),
            k => format!("origin findings count from {k} regions"),
        },
    );
    line("webhooks", s.webhooks.to_string());
    line(
        "state",
        if s.paused {
            "paused".into()
        } else {
            "active".into()
        },
    );
    line(
        "next run",
        s.next_run_at.clone().unwrap_or_else(|| "-".into()),
    );
    match &s.last_run {
        Some(r) => line(
            "last run",
            format!("{} {} {}", r.slot, r.status, findings_cell(&r.findings)),
        ),
        None => line("last run", "none yet".into()),
    }
    line("alerts open", s.alerts_open.to_string());
    out
}

/// The definition `sweep create`'s flags ask for, checked.
fn create_definition(args: &SweepCreateArgs) -> anyhow::Result<SweepDefinition> {
    let target = args.target.target_request()?;
    let mut definition = SweepDefinition::new(target);
    definition.regions = args.target.regions.clone();
    definition.every_ms = millis(args.every);
    definition.confirm = args.confirm;
    definition.quorum = args.quorum;
    definition.webhooks = args.webhooks.clone();
    definition.check(&args.name)?;
    Ok(definition)
}

/// Checks what can be checked without a coordinator (before connecting).
pub fn check(command: &SweepCommand) -> anyhow::Result<()> {
    match command {
        SweepCommand::Create(args) => create_definition(args).map(|_| ()),
        SweepCommand::Apply { file, .. } => read_sweep_file(file).map(|_| ()),
        SweepCommand::History { limit, .. } if *limit == 0 || *limit > 10_000 => {
            bail!("--limit must be between 1 and 10000")
        }
        _ => Ok(()),
    }
}

/// Runs `vantage sweep …`.
pub async fn sweep(command: SweepCommand, target: Target) -> anyhow::Result<()> {
    check(&command)?;
    let mut control = client::connect(&target)?;
    let rpc = |s| rpc_error(&target, s);
    match command {
        SweepCommand::Create(args) => {
            let definition = create_definition(&args)?;
            let info = control
                .create_sweep(pb::CreateSweepRequest {
                    definition: Some(wire::sweep_definition_pb(&args.name, &definition)),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let json = SweepJson::from(info);
            println!(
                "sweep {} created: every {}, next run {}",
                json.name,
                json.every,
                json.next_run_at.as_deref().unwrap_or("-")
            );
        }
        SweepCommand::List { json } => {
            let sweeps: Vec<SweepJson> = control
                .list_sweeps(pb::ListSweepsRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .sweeps
                .into_iter()
                .map(SweepJson::from)
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&sweeps)?);
            } else if sweeps.is_empty() {
                eprintln!(
                    "no sweeps yet: create one with `vantage sweep create NAME URL --origin ADDR`"
                );
            } else {
                print!("{}", sweeps_table(&sweeps));
            }
        }
        SweepCommand::Show { name, json } => {
            let info = control
                .get_sweep(pb::GetSweepRequest { name })
                .await
                .map_err(rpc)?
                .into_inner();
            let sweep = SweepJson::from(info);
            if json {
                println!("{}", serde_json::to_string_pretty(&sweep)?);
            } else {
                print!("{}", show_text(&sweep));
            }
        }
        SweepCommand::History { name, limit, json } => {
            let runs: Vec<RunJson> = control
                .sweep_history(pb::SweepHistoryRequest {
                    name: name.clone(),
                    limit,
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .runs
                .into_iter()
                .map(RunJson::from)
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else if runs.is_empty() {
                eprintln!(
                    "sweep {name} has not run yet (`vantage sweep show {name}` says when it will)"
                );
            } else {
                print!("{}", history_table(&runs));
            }
        }
        SweepCommand::Pause { name } => {
            control
                .set_sweep_paused(pb::SetSweepPausedRequest {
                    name: name.clone(),
                    paused: true,
                })
                .await
                .map_err(rpc)?;
            println!("sweep {name} paused");
        }
        SweepCommand::Resume { name } => {
            let info = control
                .set_sweep_paused(pb::SetSweepPausedRequest {
                    name: name.clone(),
                    paused: false,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            println!(
                "sweep {name} resumed: next run {}",
                non_empty(info.next_run_at).as_deref().unwrap_or("-")
            );
        }
        SweepCommand::Delete { name } => {
            control
                .delete_sweep(pb::DeleteSweepRequest { name: name.clone() })
                .await
                .map_err(rpc)?;
            println!("sweep {name} deleted");
        }
        SweepCommand::Apply { file, dry_run } => {
            let wanted = read_sweep_file(&file)?;
            let response = control
                .apply_sweeps(pb::ApplySweepsRequest {
                    sweeps: wanted
                        .iter()
                        .map(|(name, d)| wire::sweep_definition_pb(name, d))
                        .collect(),
                    dry_run,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            for name in &response.create {
                println!("+ {name}");
            }
            for name in &response.update {
                println!("~ {name}");
            }
            for name in &response.delete {
                println!("- {name}");
            }
            println!(
                "{} to create, {} to update, {} to delete, {} unchanged{}",
                response.create.len(),
                response.update.len(),
                response.delete.len(),
                response.unchanged.len(),
                if dry_run {
                    " (dry run: nothing changed)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// Runs `vantage alerts`.
pub async fn alerts(json: bool, target: Target) -> anyhow::Result<()> {
    let mut control = client::connect(&target)?;
    let alerts: Vec<AlertJson> = control
        .list_alerts(pb::ListAlertsRequest {})
        .await
        .map_err(|s| rpc_error(&target, s))?
        .into_inner()
        .alerts
        .into_iter()
        .map(AlertJson::from)
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&alerts)?);
    } else if alerts.is_empty() {
        eprintln!("no alerts: nothing has been confirmed by a sweep");
    } else {
        print!("{}", alerts_table(&alerts));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> anyhow::Result<Vec<(String, SweepDefinition)>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweeps.toml");
        std::fs::write(&path, text).unwrap();
        read_sweep_file(&path)
    }

    #[test]
    fn a_sweep_file_maps_onto_definitions_with_the_cli_defaults() {
        let sweeps = file(
            r#"
[[sweep]]
name = "checkout-eu"
url = "https://shop.example/"
origin = ["203.0.113.10"]
regions = ["eu"]
every = "1m"
webhooks = ["https://hooks.example/T/B/X"]

[[sweep]]
name = "api"
url = "http://api.example/health"
origin = ["203.0.113.11:8080"]
confirm = 3
quorum = 2
cdn = "cloudflare"
"#,
        )
        .unwrap();
        assert_eq!(sweeps.len(), 2);
        let (name, eu) = &sweeps[0];
        assert_eq!(name, "checkout-eu");
        assert_eq!(eu.every_ms, 60_000);
        assert_eq!(eu.confirm, 2);
        assert_eq!(eu.quorum, 1);
        assert_eq!(eu.regions, ["eu"]);
        assert_eq!(eu.target.burst, DEFAULT_BURST);
        let (_, api) = &sweeps[1];
        assert_eq!(api.every_ms, 300_000);
        assert_eq!(api.confirm, 3);
        assert_eq!(api.quorum, 2);
        assert_eq!(api.target.cdn, CdnProfile::Cloudflare);
    }

    #[test]
    fn a_bad_file_is_one_line_naming_the_problem() {
        let err = |text: &str| format!("{:#}", file(text).unwrap_err());
        let dup = err("[[sweep]]\nname='a'\nurl='http://x.example/'\norigin=['192.0.2.1']\n[[sweep]]\nname='a'\nurl='http://x.example/'\norigin=['192.0.2.1']\n");
        assert!(dup.contains("defined more than once"), "{dup}");
        let unknown =
            err("[[sweep]]\nname='a'\nurl='http://x.example/'\norigin=['192.0.2.1']\nevry='1m'\n");
        assert!(unknown.contains("evry"), "{unknown}");
        let every = err(
            "[[sweep]]\nname='a'\nurl='http://x.example/'\norigin=['192.0.2.1']\nevery='100ms'\n",
        );
        assert!(every.contains("between 1s and 7days"), "{every}");
        let hook = err("[[sweep]]\nname='a'\nurl='http://x.example/'\norigin=['192.0.2.1']\nwebhooks=['hooks.example']\n");
        assert!(hook.contains("webhook"), "{hook}");
        let missing = format!(
            "{:#}",
            read_sweep_file(std::path::Path::new("/nonexistent/sweeps.toml")).unwrap_err()
        );
        assert!(
            missing.contains("cannot read /nonexistent/sweeps.toml"),
            "{missing}"
        );
        assert!(!dup.contains('\n') && !every.contains('\n'));
    }

    #[test]
    fn history_json_has_the_contract_fields() {
        let run = RunJson::from(pb::SweepRunInfo {
            slot: "2026-12-02T10:00:09.187Z".into(),
            started_at: "2026-12-02T10:00:09.190Z".into(),
            finished_at: "2026-12-02T10:00:11.002Z".into(),
            status: "faulty".into(),
            campaign_id: "c-1".into(),
            findings: vec![pb::FindingRef {
                code: "origin_down".into(),
                kind: "connect_refused".into(),
                regions: vec!["eu".into()],
            }],
            reason: String::new(),
        });
        let v = serde_json::to_value(&run).unwrap();
        for key in [
            "started_at",
            "finished_at",
            "status",
            "campaign",
            "findings",
        ] {
            assert!(v.get(key).is_some(), "{key} missing: {v}");
        }
        assert_eq!(v["findings"][0]["kind"], "connect_refused");
        assert_eq!(v["reason"], serde_json::Value::Null);
        let missed = RunJson::from(pb::SweepRunInfo {
            status: "missed".into(),
            reason: "no agent".into(),
            ..Default::default()
        });
        let v = serde_json::to_value(&missed).unwrap();
        assert_eq!(v["started_at"], serde_json::Value::Null);
        assert_eq!(v["campaign"], serde_json::Value::Null);
    }
}
