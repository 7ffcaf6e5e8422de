//! `vantage-lab demo`: a coordinator, three regional agents and a loopback
//! origin, all in this process and on loopback; the agents enroll with tokens,
//! connect over mTLS, run one plan, and the stored results are printed.
//! Everything lives in a temporary directory that is removed at the end.

use std::time::Duration;

use anyhow::Context as _;
use vantage::cli::{agents_table, AgentJson};
use vantage_proto::domain::Outcome;
use vantage_proto::pb;

use crate::lab::{wait_plan_finished, AgentBuilder, LabCoordinator};
use crate::origin::Origin;

/// Agent name, region, and the loopback source address that stands for the region.
const REGIONS: [(&str, &str, [u8; 4]); 3] = [
    ("fra-1", "eu-central", [127, 0, 1, 1]),
    ("iad-1", "us-east", [127, 0, 2, 1]),
    ("sin-1", "ap-southeast", [127, 0, 3, 1]),
];

fn ms(us: u64) -> String {
    format!("{:.1}ms", us as f64 / 1000.0)
}

/// Runs the demo, writing to `out`.
pub async fn run(out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let lab = LabCoordinator::builder()
        .start()
        .await
        .context("starting the coordinator")?;
    let origin = Origin::builder()
        .spawn()
        .await
        .context("starting the lab origin")?;
    writeln!(
        out,
        "vantage lab demo (everything on loopback, cleaned up on exit)"
    )?;
    writeln!(
        out,
        "  coordinator  {} (gRPC over mTLS), data dir {}",
        lab.grpc_addr(),
        lab.data_dir().display()
    )?;
    writeln!(out, "  origin       {}", origin.url("/"))?;

    let mut agents = Vec::new();
    for (name, region, source) in REGIONS {
        let token = lab.token(region).await?;
        agents.push(
            AgentBuilder::new(name, &token)
                .label("lab", "demo")
                .bind_ip(std::net::IpAddr::from(source))
                .start()
                .await
                .with_context(|| format!("starting agent {name}"))?,
        );
    }
    writeln!(out, "\nEnrolled agents (`vantage agents`):")?;
    let views: Vec<AgentJson> = lab
        .core()
        .list_agents()
        .await?
        .into_iter()
        .map(|v| AgentJson {
            name: v.record.name,
            region: v.record.region,
            labels: v.record.labels,
            connected: v.connected,
            last_seen: v.record.last_seen_ms.map(vantage::time::rfc3339),
            version: v.record.version,
            remote_addr: v.remote_addr,
            revoked: v.record.revoked,
        })
        .collect();
    write!(out, "{}", agents_table(&views))?;

    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let probes = vec![
        pb::ProbeSpec {
            url: origin.url("/index.html"),
            route: pb::Route::Direct as i32,
            variant: "baseline".into(),
            attempts: 3,
            ..Default::default()
        },
        pb::ProbeSpec {
            url: origin.url("/api"),
            route: pb::Route::Direct as i32,
            variant: "burst".into(),
            burst: 5,
            ..Default::default()
        },
        pb::ProbeSpec {
            url: format!("http://{closed}/"),
            route: pb::Route::Direct as i32,
            variant: "baseline".into(),
            ..Default::default()
        },
    ];
    let names: Vec<String> = REGIONS.iter().map(|(n, _, _)| n.to_string()).collect();
    let mut events = lab.core().subscribe();
    let plan_id = lab.core().run_plan(&names, probes).await?;
    wait_plan_finished(&mut events, &plan_id, names.len(), Duration::from_secs(60)).await?;
    let results = lab.core().store().results_for_plan(&plan_id)?;
    let status = lab.core().plan_status(&plan_id).await?;
    writeln!(
        out,
        "\nPlan {plan_id}: 3 probes (9 requests) on each of {} agents",
        names.len()
    )?;
    writeln!(
        out,
        "{:<6} {:<5} {:<9} {:<16} {:>6} {:>4} {:>9} {:>9} {:>9}  URL",
        "AGENT", "PROBE", "VARIANT", "OUTCOME", "STATUS", "CURL", "CONNECT", "TTFB", "TOTAL"
    )?;
    let agent_of: std::collections::HashMap<&str, &str> = status
        .iter()
        .map(|s| (s.agent_id.as_str(), s.agent_name.as_str()))
        .collect();
    let mut rows: Vec<(&str, &pb::ProbeResult)> = results
        .iter()
        .map(|(agent_id, r)| (agent_of.get(agent_id.as_str()).copied().unwrap_or("?"), r))
        .collect();
    rows.sort_by_key(|(agent, r)| (*agent, r.probe_id.clone(), r.attempt, r.burst_index));
    for (agent, r) in &rows {
        let t = r.timings.unwrap_or_default();
        let outcome = Outcome::try_from(r.outcome)
            .map(|o| o.as_str())
            .unwrap_or("?");
        writeln!(
            out,
            "{:<6} {:<5} {:<9} {:<16} {:>6} {:>4} {:>9} {:>9} {:>9}  {}",
            agent,
            r.probe_id,
            r.variant,
            outcome,
            if r.status == 0 {
                "-".to_string()
            } else {
                r.status.to_string()
            },
            r.curl_exit,
            if t.connect_us == 0 {
                "-".to_string()
            } else {
                ms(t.connect_us)
            },
            if t.ttfb_us == 0 {
                "-".to_string()
            } else {
                ms(t.ttfb_us)
            },
            ms(t.total_us),
            r.url
        )?;
    }
    let stored: u64 = status.iter().map(|s| s.stored).sum();
    let expected: u64 = status.iter().map(|s| s.expected).sum();
    writeln!(out, "\n{stored} of {expected} results stored; per agent:")?;
    for s in &status {
        writeln!(
            out,
            "  {:<6} {:<9} {}/{} results",
            s.agent_name, s.state, s.stored, s.expected
        )?;
    }
    out.flush()?;
    for agent in agents {
        agent.stop().await?;
    }
    origin.stop().await;
    lab.stop().await?;
    Ok(())
}
