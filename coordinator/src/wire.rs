//! The ControlService's messages as the domain sees them: campaign targets,
//! campaign events, sweeps, their runs and alerts, converted both ways here and nowhere else. Both
//! ends of the operator API use this module — the service
//! ([`crate::api::control_service`]) and the CLI ([`crate::cli`]) — so an
//! event's kind is named once and no caller matches on its string.

use std::time::Duration;

use tonic::Status;
use vantage_proto::cdn::CdnProfile;
use vantage_proto::pb;

use crate::campaign::plan::{PullProtocol, TargetRequest, DEFAULT_ATTEMPTS, DEFAULT_BURST};
use crate::campaign::{CampaignEvent, CampaignRequest};
use crate::store::{AlertRecord, SweepRun};
use crate::sweep::model::{RunFinding, SweepDefinition};
use crate::sweep::ops::SweepView;
use crate::time::rfc3339;

/// A campaign target on the wire (the CLI's side of the edge).
pub fn target_pb(target: &TargetRequest, regions: &[String]) -> pb::StartCampaignRequest {
    pb::StartCampaignRequest {
        url: target.url.clone(),
        origins: target.origins.clone(),
        edges: target.edges.clone(),
        regions: regions.to_vec(),
        cdn: target.cdn.name().to_string(),
        edge_timeout_ms: target
            .edge_timeout
            .map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
        burst: target.burst,
        attempts: target.attempts,
        pull_protocol: match target.pull_protocol {
            None => pb::PullProtocol::Unspecified,
            Some(PullProtocol::Http) => pb::PullProtocol::Http,
            Some(PullProtocol::Https) => pb::PullProtocol::Https,
        } as i32,
        pull_host: target.pull_host.clone().unwrap_or_default(),
        pull_path: target.pull_path.clone().unwrap_or_default(),
        user_agent: target.user_agent.clone().unwrap_or_default(),
    }
}

/// A campaign target from the wire: zeros and empty strings are defaults.
pub fn target_of(req: pb::StartCampaignRequest) -> Result<CampaignRequest, Status> {
    let cdn = if req.cdn.is_empty() {
        CdnProfile::EdgeOne
    } else {
        req.cdn
            .parse()
            .map_err(|e: vantage_proto::cdn::UnknownProfile| {
                Status::invalid_argument(e.to_string())
            })?
    };
    let pull_protocol = match pb::PullProtocol::try_from(req.pull_protocol) {
        Ok(pb::PullProtocol::Unspecified) => None,
        Ok(pb::PullProtocol::Http) => Some(PullProtocol::Http),
        Ok(pb::PullProtocol::Https) => Some(PullProtocol::Https),
        Err(_) => return Err(Status::invalid_argument("unknown pull protocol")),
    };
    let text = |s: String| (!s.is_empty()).then_some(s);
    Ok(CampaignRequest {
        target: TargetRequest {
            url: req.url,
            origins: req.origins,
            edges: req.edges,
            cdn,
            edge_timeout: (req.edge_timeout_ms > 0)
                .then(|| Duration::from_millis(u64::from(req.edge_timeout_ms))),
            burst: if req.burst == 0 {
                DEFAULT_BURST
            } else {
                req.burst
            },
            attempts: if req.attempts == 0 {
                DEFAULT_ATTEMPTS
            } else {
                req.attempts
            },
            pull_protocol,
            pull_host: text(req.pull_host),
            pull_path: text(req.pull_path),
            user_agent: text(req.user_agent),
        },
        regions: req.regions,
    })
}

/// The wire name of each event kind (`CampaignEvent.kind`).
const PLAN_SENT: &str = "plan_sent";
const PROGRESS: &str = "progress";
const REGION_DONE: &str = "region_done";
const REGION_LOST: &str = "region_lost";
const REPORT_READY: &str = "report_ready";

/// A campaign event on the wire.
pub fn event_pb(event: CampaignEvent) -> pb::CampaignEvent {
    match event {
        CampaignEvent::PlanSent {
            region,
            agent,
            expected,
            deadline,
        } => pb::CampaignEvent {
            kind: PLAN_SENT.into(),
            region,
            agent,
            expected,
            deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
            ..Default::default()
        },
        CampaignEvent::Progress {
            region,
            done,
            outcomes,
        } => pb::CampaignEvent {
            kind: PROGRESS.into(),
            region,
            done,
            outcomes: outcomes
                .into_iter()
                .map(|(outcome, count)| pb::OutcomeCount {
                    outcome: pb::Outcome::from(outcome) as i32,
                    count,
                })
                .collect(),
            ..Default::default()
        },
        CampaignEvent::RegionDone { region } => pb::CampaignEvent {
            kind: REGION_DONE.into(),
            region,
            ..Default::default()
        },
        CampaignEvent::RegionLost { region, reason } => pb::CampaignEvent {
            kind: REGION_LOST.into(),
            region,
            detail: reason,
            ..Default::default()
        },
        CampaignEvent::ReportReady { status } => pb::CampaignEvent {
            kind: REPORT_READY.into(),
            detail: status.as_str().to_string(),
            ..Default::default()
        },
    }
}

/// A campaign event from the wire; `None` for a kind (or a report status)
/// this version does not know, which a newer coordinator may send.
pub fn event_of(event: &pb::CampaignEvent) -> Option<CampaignEvent> {
    Some(match event.kind.as_str() {
        PLAN_SENT => CampaignEvent::PlanSent {
            region: event.region.clone(),
            agent: event.agent.clone(),
            expected: event.expected,
            deadline: std::time::Duration::from_millis(event.deadline_ms),
        },
        PROGRESS => CampaignEvent::Progress {
            region: event.region.clone(),
            done: event.done,
            // An outcome a newer agent knows and this version does not is
            // left out of the counts (the total still has it).
            outcomes: event
                .outcomes
                .iter()
                .filter_map(|c| {
                    vantage_proto::domain::Outcome::try_from(c.outcome)
                        .ok()
                        .map(|o| (o, c.count))
                })
                .collect(),
        },
        REGION_DONE => CampaignEvent::RegionDone {
            region: event.region.clone(),
        },
        REGION_LOST => CampaignEvent::RegionLost {
            region: event.region.clone(),
            reason: event.detail.clone(),
        },
        REPORT_READY => CampaignEvent::ReportReady {
            status: serde_json::from_value(serde_json::Value::from(event.detail.as_str())).ok()?,
        },
        _ => return None,
    })
}

/// A sweep's definition on the wire.
pub fn sweep_definition_pb(name: &str, definition: &SweepDefinition) -> pb::SweepDefinition {
    pb::SweepDefinition {
        name: name.to_string(),
        target: Some(target_pb(&definition.target, &definition.regions)),
        every_ms: definition.every_ms,
        confirm: definition.confirm,
        webhooks: definition.webhooks.clone(),
        quorum: definition.quorum,
    }
}

/// A sweep's definition from the wire: (name, definition), unchecked (the
/// coordinator checks it with everything else it knows).
pub fn sweep_definition_of(
    definition: pb::SweepDefinition,
) -> Result<(String, SweepDefinition), Status> {
    let target = definition
        .target
        .ok_or_else(|| Status::invalid_argument("a sweep needs a target"))?;
    let request = target_of(target)?;
    let mut out = SweepDefinition::new(request.target);
    out.regions = request.regions;
    if definition.every_ms > 0 {
        out.every_ms = definition.every_ms;
    }
    if definition.confirm > 0 {
        out.confirm = definition.confirm;
    }
    if definition.quorum > 0 {
        out.quorum = definition.quorum;
    }
    out.webhooks = definition.webhooks;
    Ok((definition.name, out))
}

/// One run of a sweep on the wire.
pub fn sweep_run_pb(run: &SweepRun) -> pb::SweepRunInfo {
    let findings: Vec<RunFinding> = serde_json::from_str(&run.findings_json).unwrap_or_default();
    pb::SweepRunInfo {
        slot: rfc3339(run.slot_ms),
        started_at: run.started_at_ms.map(rfc3339).unwrap_or_default(),
        finished_at: run.finished_at_ms.map(rfc3339).unwrap_or_default(),
        status: run.status.as_str().to_string(),
        campaign_id: run.campaign_id.clone().unwrap_or_default(),
        findings: findings
            .iter()
            .map(|f| {
                let (code, kind) = f.key();
                pb::FindingRef {
                    code: code.to_string(),
                    kind: kind.to_string(),
                    regions: f.regions.iter().cloned().collect(),
                }
            })
            .collect(),
        reason: run.reason.clone().unwrap_or_default(),
    }
}

/// A sweep as the operator sees it, on the wire.
pub fn sweep_info_pb(view: &SweepView) -> pb::SweepInfo {
    pb::SweepInfo {
        definition: Some(sweep_definition_pb(&view.name, &view.definition)),
        paused: view.paused,
        created_at: rfc3339(view.created_at_ms),
        next_run_at: view.next_slot_ms.map(rfc3339).unwrap_or_default(),
        last_run: view.last_run.as_ref().map(sweep_run_pb),
        alerts_open: view.alerts_open,
        offset_ms: view.offset_ms,
    }
}

/// An alert on the wire.
pub fn alert_pb(alert: &AlertRecord) -> pb::AlertInfo {
    pb::AlertInfo {
        sweep: alert.sweep.clone(),
        code: alert.code.clone(),
        kind: alert.kind.clone(),
        open: alert.open,
        regions: alert.regions.clone(),
        opened_at: alert.opened_at_ms.map(rfc3339).unwrap_or_default(),
        resolved_at: alert.resolved_at_ms.map(rfc3339).unwrap_or_default(),
        summary: alert.summary.clone(),
        campaign_id: alert.campaign_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnosis;

    #[test]
    fn every_event_survives_the_wire() {
        let events = [
            CampaignEvent::PlanSent {
                region: "eu".into(),
                agent: "eu-1".into(),
                expected: 42,
                deadline: std::time::Duration::from_millis(15_300),
            },
            CampaignEvent::Progress {
                region: "eu".into(),
                done: 12,
                outcomes: vec![
                    (vantage_proto::domain::Outcome::Ok, 10),
                    (vantage_proto::domain::Outcome::ConnectRefused, 2),
                ],
            },
            CampaignEvent::RegionDone {
                region: "us".into(),
            },
            CampaignEvent::RegionLost {
                region: "ap".into(),
                reason: "agent lost".into(),
            },
            CampaignEvent::ReportReady {
                status: diagnosis::Status::Faulty,
            },
        ];
        for event in events {
            assert_eq!(event_of(&event_pb(event.clone())), Some(event));
        }
        let newer = pb::CampaignEvent {
            kind: "region_paused".into(),
            ..Default::default()
        };
        assert_eq!(event_of(&newer), None);
    }

    #[test]
    fn a_sweep_definition_survives_the_wire_and_zeroes_read_as_defaults() {
        let mut definition = SweepDefinition::new(crate::campaign::plan::TargetRequest::new(
            "https://shop.example/cart",
            &["203.0.113.10"],
        ));
        definition.regions = vec!["eu".into(), "us".into()];
        definition.every_ms = 60_000;
        definition.confirm = 3;
        definition.quorum = 2;
        definition.webhooks = vec!["https://hooks.example/x".into()];
        let (name, back) = sweep_definition_of(sweep_definition_pb("shop", &definition)).unwrap();
        assert_eq!(name, "shop");
        assert_eq!(back, definition);

        let mut old_client = sweep_definition_pb("shop", &definition);
        old_client.confirm = 0;
        old_client.quorum = 0;
        old_client.every_ms = 0;
        let (_, back) = sweep_definition_of(old_client).unwrap();
        let fresh = SweepDefinition::new(definition.target.clone());
        assert_eq!(
            (back.confirm, back.quorum, back.every_ms),
            (fresh.confirm, fresh.quorum, fresh.every_ms)
        );
    }
}
