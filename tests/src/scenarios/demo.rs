//! `vantage-lab demo [--scenario NAME]`: the README's main job. In this one
//! process and on loopback only: a coordinator, three regional agents (each
//! from its own source address 127.0.N.1), an origin witness following the
//! lab origin's access log, the fault-scripted origin, and — for edge
//! scenarios — the edge simulator. It runs `vantage diagnose` on the
//! scenario and prints the report. Everything lives in temporary
//! directories that are removed at the end. No root is needed, except for
//! `mixed`: it hijacks one region's packets with iptables, so it runs the
//! whole lab inside a private network namespace.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use vantage::campaign::plan::TargetRequest;
use vantage::campaign::{CampaignEvent, CampaignRequest};
use vantage::report::{render_terminal, Report};
use vantage_proto::cdn::CdnProfile;

use crate::edge::EdgeBuilder;
use crate::fixture::{Fault, Fixture, TlsMode};
use crate::lab::{AgentBuilder, LabAgent, LabCoordinator};

/// The demo's three regions (agent name, region name, source address), from
/// the lab's one region table.
fn demo_regions() -> impl Iterator<Item = (&'static str, &'static str, [u8; 4])> {
    super::LAB_REGIONS
        .into_iter()
        .take(3)
        .map(|r| (r.demo_agent, r.demo_name, r.source))
}
/// The edge's pull address in the allowlist scenario.
const EDGE_PULL_IP: [u8; 4] = [127, 0, 0, 9];
/// A scaled-down EdgeOne origin-response timeout, so slow scenarios are quick.
const EDGE_TIMEOUT: Duration = Duration::from_millis(800);

/// A demo scenario.
pub struct Scenario {
    /// Its name on the command line.
    pub name: &'static str,
    /// What it shows.
    pub about: &'static str,
    fault: Fault,
    tls: TlsMode,
    https_url: bool,
    edge: bool,
    edge_pull_ip: Option<[u8; 4]>,
    /// A region whose plain HTTP to the origin a carrier hijacks (needs root).
    hijack: Option<&'static str>,
}

/// Every scenario; the first is the default.
pub fn scenarios() -> Vec<Scenario> {
    let s = |name, about, fault, tls, https_url, edge, edge_pull_ip| Scenario {
        name,
        about,
        fault,
        tls,
        https_url,
        edge,
        edge_pull_ip,
        hijack: None,
    };
    vec![
        s(
            "waf",
            "the origin's WAF rejects one of the CDN's pull headers (the report names it), so the edge fails too",
            Fault::RejectHeader("EO-LOG-UUID".into()),
            TlsMode::Plain,
            false,
            true,
            None,
        ),
        s(
            "healthy",
            "everything works: direct, through the edge, from every region",
            Fault::Healthy,
            TlsMode::Plain,
            false,
            true,
            None,
        ),
        s(
            "origin-down",
            "the origin refuses connections from everywhere",
            Fault::Refuse,
            TlsMode::Plain,
            false,
            false,
            None,
        ),
        s(
            "origin-reset",
            "the origin resets connections after the request (520's cause)",
            Fault::ResetAfterRequest,
            TlsMode::Plain,
            false,
            true,
            None,
        ),
        s(
            "slow",
            "the origin answers after the edge's timeout (524's cause)",
            Fault::SlowFirstByte(Duration::from_millis(1300)),
            TlsMode::Plain,
            false,
            true,
            None,
        ),
        s(
            "rate-limited",
            "the origin drops requests over a concurrency limit",
            Fault::ConcurrencyLimit {
                per_client: 8,
                hold: Duration::from_millis(150),
            },
            TlsMode::Plain,
            false,
            false,
            None,
        ),
        s(
            "allowlist",
            "the origin's firewall does not allow the edge's pull IP",
            Fault::RejectClient(IpAddr::from(EDGE_PULL_IP)),
            TlsMode::Plain,
            false,
            true,
            Some(EDGE_PULL_IP),
        ),
        s(
            "tls-cert",
            "the origin's certificate is not trusted (526's cause)",
            Fault::Healthy,
            TlsMode::Untrusted,
            false,
            false,
            None,
        ),
        s(
            "tls-handshake",
            "the origin does not speak TLS on its https port (525's cause)",
            Fault::Healthy,
            TlsMode::Plain,
            true,
            false,
            None,
        ),
        Scenario {
            hijack: Some("ap-southeast"),
            ..s(
                "mixed",
                "two faults at once: the origin is slow (524) and a carrier hijacks ap-southeast (needs root)",
                Fault::SlowFirstByte(Duration::from_millis(1300)),
                TlsMode::Plain,
                false,
                true,
                None,
            )
        },
    ]
}

/// Prints the scenario list.
pub fn list(out: &mut impl std::io::Write) -> anyhow::Result<()> {
    writeln!(out, "scenarios (vantage-lab demo --scenario NAME):")?;
    for (i, s) in scenarios().iter().enumerate() {
        let default = if i == 0 { " (default)" } else { "" };
        writeln!(out, "  {:<14} {}{default}", s.name, s.about)?;
    }
    Ok(())
}

/// Runs one scenario, writing the report to `out`; returns its status.
pub async fn run(name: Option<&str>, out: &mut impl std::io::Write) -> anyhow::Result<String> {
    let scenario = match name {
        None => scenarios().swap_remove(0),
        Some(name) => match scenarios().into_iter().find(|s| s.name == name) {
            Some(s) => s,
            None => bail!("no scenario {name:?}; `vantage-lab demo --list` shows them"),
        },
    };
    if scenario.hijack.is_none() {
        return run_scenario(scenario, None, out).await;
    }
    if let Some(reason) = crate::netns::unavailable() {
        bail!(
            "scenario {} hijacks a region's packets inside a network namespace: {reason}",
            scenario.name
        );
    }
    let netns = crate::netns::Netns::create()?;
    // The namespace thread owns the lab; its output comes back in a buffer.
    let outcome = tokio::task::spawn_blocking(move || {
        netns.block_on(move |ns| async move {
            let mut buf = Vec::new();
            let status = run_scenario(scenario, Some(&ns), &mut buf).await;
            (status, buf)
        })
    })
    .await
    .context("namespace task")?;
    let (status, buf) = outcome.map_err(|_| anyhow::anyhow!("the namespace lab panicked"))?;
    out.write_all(&buf)?;
    status
}

/// The IPv4 address the lab resolver answers with (the lab is IPv4).
fn ipv4_of(ip: IpAddr) -> std::net::Ipv4Addr {
    match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => std::net::Ipv4Addr::LOCALHOST,
    }
}

/// Runs `scenario`; `netns` names the namespace this runs in, if any.
async fn run_scenario(
    scenario: Scenario,
    netns: Option<&str>,
    out: &mut impl std::io::Write,
) -> anyhow::Result<String> {
    let logs = tempfile::tempdir()?;
    let log = logs.path().join("access.log");
    let origin = Fixture::builder(scenario.fault.clone())
        .tls(scenario.tls)
        .access_log(log.clone())
        .spawn()
        .await
        .context("starting the lab origin")?;
    let edge = if scenario.edge {
        let mut builder = EdgeBuilder::new(CdnProfile::EdgeOne, origin.addr())
            .origin_timeout(EDGE_TIMEOUT)
            .listen(vec![IpAddr::from([127, 0, 0, 2])]);
        if let Some(ip) = scenario.edge_pull_ip {
            builder = builder.source_ip(IpAddr::from(ip));
        }
        Some(
            builder
                .spawn()
                .await
                .context("starting the edge simulator")?,
        )
    } else {
        None
    };
    let lab = LabCoordinator::builder()
        .start()
        .await
        .context("starting the coordinator")?;
    // The regions' resolver: the site's name points at the edge (or, with
    // no edge in the scenario, at the origin), so the dns row is an answer.
    let resolver = crate::carrier::Resolver::spawn(
        IpAddr::from([127, 0, 0, 53]),
        match &edge {
            Some(edge) => ipv4_of(edge.addrs()[0].ip()),
            None => ipv4_of(origin.addr().ip()),
        },
    )
    .await
    .context("starting the lab resolver")?;
    let mut agents: Vec<LabAgent> = Vec::new();
    for (name, region, source) in demo_regions() {
        let token = lab.token(region).await?;
        agents.push(
            AgentBuilder::new(name, &token)
                .bind_ip(IpAddr::from(source))
                .dns_server(resolver.addr())
                .start()
                .await
                .with_context(|| format!("starting agent {name}"))?,
        );
    }
    let witness = AgentBuilder::new("origin-witness", &lab.token("origin").await?)
        .witness(&log)
        .start()
        .await
        .context("starting the witness")?;

    let mut hijacked = String::new();
    let _injector = match (scenario.hijack, netns) {
        (Some(region), Some(ns)) => {
            let source = demo_regions()
                .find(|(_, r, _)| *r == region)
                .map(|(_, _, ip)| IpAddr::from(ip))
                .context("hijacked region")?;
            let injector = crate::carrier::hijack_http(
                ns,
                IpAddr::from([127, 0, 0, 77]),
                crate::carrier::InjectedReply::BlockPage,
                &[source],
                origin.addr(),
            )
            .await?;
            hijacked = format!(
                " · iptables in namespace {ns}: {region}'s HTTP to the origin goes to a block page"
            );
            Some(injector)
        }
        _ => None,
    };
    let url = if scenario.https_url {
        format!(
            "https://{}:{}/index.html",
            crate::fixture::LAB_HOST,
            origin.addr().port()
        )
    } else {
        origin.url("/index.html")
    };
    writeln!(
        out,
        "vantage lab demo: {} — {}",
        scenario.name, scenario.about
    )?;
    writeln!(out, "  coordinator {} · origin {} · edge {} · regions eu-central, us-east, ap-southeast · witness on the origin's access log{hijacked}",
        lab.grpc_addr(),
        origin.addr(),
        edge.as_ref().map(|e| e.addrs()[0].to_string()).unwrap_or_else(|| "none".into()))?;
    writeln!(
        out,
        "  $ vantage diagnose {url} --origin {} {}--cdn edgeone --edge-timeout {}ms\n",
        origin.addr(),
        edge.as_ref()
            .map(|e| format!("--edge {} ", e.addrs()[0]))
            .unwrap_or_default(),
        EDGE_TIMEOUT.as_millis()
    )?;
    let mut handle = lab
        .core()
        .start_campaign(CampaignRequest {
            target: TargetRequest {
                edges: edge
                    .as_ref()
                    .map(|e| vec![e.addrs()[0].to_string()])
                    .unwrap_or_default(),
                edge_timeout: Some(EDGE_TIMEOUT),
                burst: 30,
                ..TargetRequest::new(&url, &[&origin.addr().to_string()])
            },
            regions: Vec::new(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    while let Ok(event) = handle.events.recv().await {
        if let CampaignEvent::RegionLost { region, reason } = event {
            writeln!(out, "  region {region} lost: {reason}")?;
        }
    }
    let json = (&mut handle.done)
        .await
        .context("campaign task")?
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let report: Report = serde_json::from_str(&json)?;
    let status = report.status.as_str().to_string();
    write!(out, "{}", render_terminal(&report, false))?;
    out.flush()?;

    for agent in agents {
        let _ = agent.stop().await;
    }
    let _ = witness.stop().await;
    if let Some(edge) = edge {
        edge.stop().await;
    }
    origin.stop().await;
    lab.stop().await?;
    Ok(status)
}
