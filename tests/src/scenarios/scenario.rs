//! End-to-end scenarios: a real `vantage serve`, three real regional
//! `vantage-agent run` processes (each from its own loopback source address,
//! 127.0.N.1), a real witness following the lab origin's access log, the
//! fault-scripted origin and optionally the edge simulator — then a real
//! `vantage diagnose --json`, whose report the tests assert on.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context as _;

use crate::edge::{Edge, EdgeBuilder};
use crate::fixture::{Fault, Fixture, TlsMode};
use crate::lab::{
    spawn_agent_process, start_witness_process, wait_agent_connected, CoordinatorProcess,
};
use crate::process::ChildProcess;

/// The lab's regions (short names) and the source address that stands for
/// each; a scenario uses the first three unless it asks for more.
pub const REGIONS: [(&str, [u8; 4]); 4] = {
    let r = super::LAB_REGIONS;
    [
        (r[0].name, r[0].source),
        (r[1].name, r[1].source),
        (r[2].name, r[2].source),
        (r[3].name, r[3].source),
    ]
};

/// The source address that stands for `region` in the lab.
pub fn region_source(region: &str) -> Option<IpAddr> {
    REGIONS
        .iter()
        .find(|(name, _)| *name == region)
        .map(|(_, ip)| IpAddr::from(*ip))
}

/// Diagnose flags that keep a scenario quick: one attempt, a small burst, a
/// scaled-down edge timeout (600 ms).
pub const QUICK_DIAGNOSE: &[&str] = &["--edge-timeout", "600ms", "--burst", "3", "--attempts", "1"];

/// A running scenario.
pub struct Scenario {
    /// The coordinator process.
    pub coordinator: CoordinatorProcess,
    /// One agent process per region, in [`REGIONS`] order (the first
    /// [`ScenarioBuilder::regions`] of them).
    pub agents: Vec<ChildProcess>,
    /// The witness process.
    pub witness: ChildProcess,
    /// The origin.
    pub origin: Fixture,
    /// The edge, when the scenario has one.
    pub edge: Option<Edge>,
    https: bool,
    _dirs: Vec<tempfile::TempDir>,
}

/// An edge in front: its profile, origin timeout, and listen addresses
/// (each with the status it answers by itself when broken).
type EdgeSetup = (
    vantage_proto::cdn::CdnProfile,
    Duration,
    Vec<(IpAddr, Option<u16>)>,
);

/// What a scenario is made of.
pub struct ScenarioBuilder {
    fault: Fault,
    tls: TlsMode,
    edge: Option<EdgeSetup>,
    edge_source: Option<IpAddr>,
    https: bool,
    regions: usize,
    agent_args: Vec<(String, Vec<String>)>,
    trust_origin_ca: bool,
}

impl ScenarioBuilder {
    /// An origin with `fault` over `tls`.
    pub fn new(fault: Fault, tls: TlsMode) -> Self {
        ScenarioBuilder {
            fault,
            tls,
            edge: None,
            edge_source: None,
            https: false,
            regions: 3,
            agent_args: Vec::new(),
            trust_origin_ca: false,
        }
    }

    /// Runs agents in the first `n` of [`REGIONS`] (3 by default; at most 4).
    pub fn regions(mut self, n: usize) -> Self {
        self.regions = n.clamp(1, REGIONS.len());
        self
    }

    /// Extra `vantage-agent run` flags for the agent of `region`.
    pub fn agent_args(mut self, region: &str, args: &[&str]) -> Self {
        self.agent_args.push((
            region.to_string(),
            args.iter().map(|a| a.to_string()).collect(),
        ));
        self
    }

    /// Agents trust the origin's lab CA (`--cacert`), as they would trust a
    /// public CA: a valid origin certificate verifies.
    pub fn trust_origin_ca(mut self) -> Self {
        self.trust_origin_ca = true;
        self
    }

    /// Puts an edge simulator in front, listening on `addrs` (each with an
    /// optional status it answers by itself, as a broken edge node).
    pub fn edge(
        mut self,
        profile: vantage_proto::cdn::CdnProfile,
        timeout: Duration,
        addrs: Vec<(IpAddr, Option<u16>)>,
    ) -> Self {
        self.edge = Some((profile, timeout, addrs));
        self
    }

    /// The edge pulls from this source address (an origin allowlist can refuse it).
    pub fn edge_source(mut self, ip: IpAddr) -> Self {
        self.edge_source = Some(ip);
        self
    }

    /// Diagnose an `https://` URL even when the origin speaks plain HTTP
    /// (a TLS handshake failure at the origin).
    pub fn https_url(mut self) -> Self {
        self.https = true;
        self
    }

    /// Starts everything and waits until every agent and the witness are connected.
    pub async fn start(self) -> anyhow::Result<Scenario> {
        let data = tempfile::tempdir()?;
        let logs = tempfile::tempdir()?;
        let log = logs.path().join("access.log");
        let origin = Fixture::builder(self.fault)
            .tls(self.tls)
            .access_log(log.clone())
            .spawn()
            .await?;
        let edge = match self.edge {
            Some((profile, timeout, addrs)) => {
                let mut builder = EdgeBuilder::new(profile, origin.addr())
                    .origin_timeout(timeout)
                    .listen(addrs.iter().map(|(ip, _)| *ip).collect())
                    .origin_tls(self.tls != TlsMode::Plain);
                if let Some(source) = self.edge_source {
                    builder = builder.source_ip(source);
                }
                for (ip, broken) in &addrs {
                    if let Some(status) = broken {
                        builder = builder.broken_for(*ip, *status);
                    }
                }
                Some(builder.spawn().await?)
            }
            None => None,
        };
        let coordinator =
            CoordinatorProcess::start(data.path(), "127.0.0.1:0".parse()?, Duration::from_secs(1))
                .await?;
        let mut dirs = vec![data, logs];
        let mut agents = Vec::new();
        for (region, source) in REGIONS.into_iter().take(self.regions) {
            let token = coordinator.create_token(region).await?;
            let state = tempfile::tempdir()?;
            let ip = IpAddr::from(source).to_string();
            let name = format!("{region}-1");
            let mut args = vec!["--token", &token, "--name", &name, "--bind-ip", &ip];
            let ca = origin.ca_file().to_str().unwrap_or_default().to_string();
            if self.trust_origin_ca {
                args.extend(["--cacert", &ca]);
            }
            for (_, extra) in self.agent_args.iter().filter(|(r, _)| r == region) {
                args.extend(extra.iter().map(String::as_str));
            }
            let mut agent = spawn_agent_process(state.path(), &args)?;
            wait_agent_connected(&mut agent)
                .await
                .with_context(|| format!("agent {region}"))?;
            agents.push(agent);
            dirs.push(state);
        }
        let state = tempfile::tempdir()?;
        let witness =
            start_witness_process(&coordinator, &log, state.path(), &["--poll", "20ms"]).await?;
        dirs.push(state);
        Ok(Scenario {
            coordinator,
            agents,
            witness,
            origin,
            edge,
            https: self.https,
            _dirs: dirs,
        })
    }
}

impl Scenario {
    /// The site URL (the lab host on the origin's port).
    pub fn url(&self, path: &str) -> String {
        if self.https {
            format!(
                "https://{}:{}{path}",
                crate::fixture::LAB_HOST,
                self.origin.addr().port()
            )
        } else {
            self.origin.url(path)
        }
    }

    /// Arguments for `vantage diagnose` against this lab (origin, edges,
    /// and `extra`), with `--json`.
    pub fn diagnose_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "diagnose".to_string(),
            self.url("/lab"),
            "--origin".into(),
            self.origin.addr().to_string(),
            "--json".into(),
        ];
        if let Some(edge) = &self.edge {
            args.push("--edge".into());
            args.push(
                edge.addrs()
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Runs `vantage diagnose --json` and returns its exit code and report.
    pub async fn diagnose(&self, extra: &[&str]) -> anyhow::Result<(i32, serde_json::Value)> {
        let args = self.diagnose_args(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.coordinator.cli(&refs).await?;
        let code = out.status.code().unwrap_or(-1);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "diagnose printed no JSON (exit {code}); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok((code, report))
    }
}

/// The findings of a report with `code`.
pub fn findings<'a>(report: &'a serde_json::Value, code: &str) -> Vec<&'a serde_json::Value> {
    report["findings"]
        .as_array()
        .map(|f| f.iter().filter(|x| x["code"] == code).collect())
        .unwrap_or_default()
}

/// Regions a finding names, sorted.
pub fn regions_of(finding: &serde_json::Value) -> Vec<String> {
    let mut regions: Vec<String> = finding["regions"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    regions.sort();
    regions
}

/// Checks that every `reproduce` command of every finding is a runnable
/// command in the seed's style.
pub fn reproduce_is_well_formed(report: &serde_json::Value) -> Result<(), String> {
    for finding in report["findings"].as_array().into_iter().flatten() {
        let commands = finding["reproduce"]
            .as_array()
            .ok_or("finding without reproduce")?;
        if commands.is_empty() {
            return Err(format!("{} has no reproduce command", finding["code"]));
        }
        for command in commands {
            let text = command.as_str().ok_or("reproduce is not text")?;
            let runnable =
                text.starts_with("curl ") || text.starts_with("for ") || text.starts_with("dig ");
            if !runnable || text.contains('\n') && !text.starts_with("for ") {
                return Err(format!("not a runnable command: {text}"));
            }
            if text.starts_with("curl ")
                && !(text.contains("--resolve")
                    || text.contains("--connect-to")
                    || text.contains("http"))
            {
                return Err(format!("curl without target: {text}"));
            }
        }
    }
    Ok(())
}
