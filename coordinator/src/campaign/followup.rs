//! The TTFB follow-up (DESIGN §4 "Time budget", issue 8): the first report
//! of a 524 prints by the edge timeout + 1 s, so it only knows that the
//! origin took *longer* than the edge's limit. This room then measures the
//! real time to first byte — one direct request per region and origin,
//! waiting well past the edge timeout, bounded — and stores it with the
//! campaign: `vantage campaign show` prints it, `diagnose --wait-ttfb`
//! waits for it.
//!
//! It owns the follow-up's plans and the update of the stored report; it
//! never touches the first report's evidence or verdict, only adds to it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tonic::Status;
use vantage_proto::domain::Outcome;
use vantage_proto::pb;

use crate::campaign::plan::CampaignTarget;
use crate::coordinator::Coordinator;
use crate::diagnosis::FindingCode;
use crate::registry::AgentEvent;
use crate::report::{FollowupState, Report, TtfbFollowup, TtfbMeasurement};
use crate::time::now_ms;

/// Longest extra wait past the edge timeout: an origin slower than this is
/// as good as down, and the follow-up must end.
const MAX_EXTRA_WAIT: Duration = Duration::from_secs(120);
/// Margin on top of the requests' own limit before the follow-up stops
/// waiting for an agent that went quiet.
const MARGIN: Duration = Duration::from_secs(10);

/// How long each follow-up request waits for its first byte: four edge
/// timeouts, at most two minutes past it.
pub fn wait_for(edge_timeout: Duration) -> Duration {
    (edge_timeout * 4).min(edge_timeout + MAX_EXTRA_WAIT)
}

/// Whether a report calls for the follow-up: the origin was slower than
/// the edge from every region, and the report could only say "longer than".
pub fn wanted(report: &Report) -> bool {
    report
        .findings
        .iter()
        .any(|f| f.code == FindingCode::OriginSlow)
}

/// Marks `report` as awaiting its follow-up.
pub fn mark_running(report: &mut Report, target: &CampaignTarget) {
    report.ttfb_followup = Some(TtfbFollowup {
        state: FollowupState::Running,
        wait_ms: u64::try_from(wait_for(target.edge_timeout).as_millis()).unwrap_or(u64::MAX),
        measurements: Vec::new(),
    });
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The follow-up probes of one region: one direct request per origin.
fn probes(target: &CampaignTarget, campaign_id: &str, region: &str) -> Vec<pb::ProbeSpec> {
    let wait = wait_for(target.edge_timeout);
    let t = target.timeouts;
    let short = crate::campaign::plan::nonce_prefix(campaign_id);
    target
        .origins
        .iter()
        .enumerate()
        .map(|(i, origin)| pb::ProbeSpec {
            probe_id: format!("direct/ttfb@{origin}"),
            url: target.direct_url(origin),
            route: pb::Route::Direct as i32,
            address_override: origin.to_string(),
            variant: "ttfb".into(),
            timeouts: Some(pb::PhaseTimeouts {
                connect_ms: millis(t.connect),
                tls_ms: millis(t.tls),
                first_byte_ms: millis(wait),
                body_ms: millis(t.body),
                total_ms: millis(t.connect + t.tls + wait + t.body),
            }),
            verify_tls: true,
            user_agent: target.user_agent.clone(),
            attempts: 1,
            burst: 1,
            nonce: format!("{short}-{region}-ttfb{i}"),
            ..Default::default()
        })
        .collect()
}

impl Coordinator {
    /// Runs the follow-up for `report` (already stored, marked running)
    /// from each `(region, agent)`, then stores the report again with the
    /// measurements. Bounded: it ends by the requests' own limit + margin.
    pub(crate) async fn measure_ttfb(
        self: Arc<Self>,
        campaign_id: String,
        target: CampaignTarget,
        regions: Vec<(String, String)>,
        mut report: Report,
    ) -> Result<(), Status> {
        let mut events = self.subscribe();
        // Which origin each follow-up probe measured, by probe id (the same
        // in every region): kept here, never read back out of the id.
        let measured: HashMap<String, String> = probes(&target, &campaign_id, "")
            .into_iter()
            .map(|p| (p.probe_id, p.address_override))
            .collect();
        let mut plans: Vec<(String, String)> = Vec::new();
        for (region, agent) in &regions {
            let sent = self
                .run_plan_in(
                    Some(&campaign_id),
                    std::slice::from_ref(agent),
                    probes(&target, &campaign_id, region),
                    None,
                )
                .await;
            match sent {
                Ok(plan_id) => plans.push((region.clone(), plan_id)),
                Err(e) => tracing::info!(region, error = %e.message(), "no TTFB follow-up"),
            }
        }
        let t = target.timeouts;
        let limit = t.connect + t.tls + wait_for(target.edge_timeout) + t.body + MARGIN;
        let mut open: HashSet<String> = plans.iter().map(|(_, p)| p.clone()).collect();
        let give_up = tokio::time::Instant::now() + limit;
        while !open.is_empty() {
            let event = tokio::select! {
                _ = tokio::time::sleep_until(give_up) => break,
                event = events.recv() => event,
            };
            match event {
                Ok(AgentEvent::PlanFinished { plan_id, .. })
                | Ok(AgentEvent::PlanRejected { plan_id, .. }) => {
                    open.remove(&plan_id);
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        let mut measurements = Vec::new();
        for (region, plan_id) in plans {
            let results = self.stored_results(&plan_id).await?;
            for r in results {
                let outcome = Outcome::try_from(r.outcome).unwrap_or(Outcome::MalformedResponse);
                let ttfb_us = r.timings.map_or(0, |t| t.ttfb_us);
                measurements.push(TtfbMeasurement {
                    region: region.clone(),
                    address: measured
                        .get(&r.probe_id)
                        .cloned()
                        .unwrap_or_else(|| r.remote_addr.clone()),
                    outcome,
                    ttfb_ms: (ttfb_us > 0).then(|| ttfb_us as f64 / 1000.0),
                });
            }
        }
        measurements.sort_by(|a, b| (&a.region, &a.address).cmp(&(&b.region, &b.address)));
        add_to_finding(&mut report, &measurements, target.edge_timeout);
        if let Some(followup) = report.ttfb_followup.as_mut() {
            followup.state = FollowupState::Done;
            followup.measurements = measurements;
        }
        let json =
            serde_json::to_string_pretty(&report).map_err(|e| Status::internal(e.to_string()))?;
        Ok(self
            .store
            .finish_campaign(&campaign_id, now_ms(), report.status.into(), &json)
            .await?)
    }
}

/// Puts what the follow-up measured into the `origin_slow` finding: one
/// evidence line, and advice that names a timeout above the real TTFB.
fn add_to_finding(report: &mut Report, measurements: &[TtfbMeasurement], edge_timeout: Duration) {
    let Some(finding) = report
        .findings
        .iter_mut()
        .find(|f| f.code == FindingCode::OriginSlow)
    else {
        return;
    };
    let answered: Vec<f64> = measurements
        .iter()
        .filter(|m| m.outcome == Outcome::Ok)
        .filter_map(|m| m.ttfb_ms)
        .collect();
    let lines: Vec<String> = measurements
        .iter()
        .map(|m| match m.ttfb_ms {
            Some(ms) if m.outcome == Outcome::Ok => format!("{} {:.1} s", m.region, ms / 1000.0),
            _ => format!("{} {}", m.region, m.outcome),
        })
        .collect();
    finding.evidence.push(format!(
        "follow-up, waiting past the edge's limit: real time to first byte {}",
        lines.join(", ")
    ));
    if let Some(worst) = answered.iter().copied().reduce(f64::max) {
        // Half again the worst TTFB seen, in whole seconds, above the edge's.
        let suggest = ((worst * 1.5 / 1000.0).ceil() as u64).max(edge_timeout.as_secs() + 1);
        finding.advice.push_str(&format!(
            " Measured after the report: the origin's first byte comes after {:.1} s at worst — raise the origin-response timeout to about {suggest} s, or make the origin faster.",
            worst / 1000.0
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_is_bounded_past_the_edge_timeout() {
        assert_eq!(wait_for(Duration::from_secs(15)), Duration::from_secs(60));
        assert_eq!(wait_for(Duration::from_secs(3)), Duration::from_secs(12));
        assert_eq!(
            wait_for(Duration::from_secs(100)),
            Duration::from_secs(220),
            "at most two minutes past the edge's limit"
        );
    }

    #[test]
    fn every_origin_is_measured_past_the_edge_timeout() {
        let target = CampaignTarget::new(&crate::campaign::plan::TargetRequest::new(
            "http://www.example.com/a.jpg",
            &["192.0.2.10", "192.0.2.11:8080"],
        ))
        .unwrap();
        let probes = probes(&target, "c0ffee", "eu");
        assert_eq!(probes.len(), 2);
        for p in &probes {
            let t = p.timeouts.unwrap();
            assert_eq!(t.first_byte_ms, 60_000);
            assert_eq!((p.attempts, p.burst), (1, 1));
            assert!(p.user_agent.starts_with("vantage/"));
        }
        assert_eq!(probes[1].url, "http://www.example.com:8080/a.jpg");
    }
}
