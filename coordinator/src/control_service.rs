//! `vantage.v1.ControlService`: the operator API behind the `vantage` CLI,
//! authenticated by the admin credential (`authorization: Bearer …`). Each
//! call is a thin translation onto [`Coordinator`].

use crate::store::CampaignStatus;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use vantage_proto::pb;

use crate::campaign::plan::{PullProtocol, TargetRequest, DEFAULT_ATTEMPTS, DEFAULT_BURST};
use crate::campaign::{CampaignEvent, CampaignRequest};
use crate::coordinator::Coordinator;
use crate::time::rfc3339;
use vantage_proto::cdn::CdnProfile;

/// Default enrollment-token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The service implementation.
#[derive(Debug, Clone)]
pub struct ControlService {
    pub(crate) core: Arc<Coordinator>,
}

impl ControlService {
    async fn campaign_row(&self, id: &str) -> Result<crate::store::CampaignRow, Status> {
        self.core
            .store
            .campaign(id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no campaign {id}")))
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("missing admin credential"))?;
        let secret = header.strip_prefix("Bearer ").unwrap_or(header);
        if self.core.is_admin(secret) {
            Ok(())
        } else {
            Err(Status::unauthenticated("wrong admin credential"))
        }
    }
}

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

/// A campaign event on the wire.
pub(crate) fn event_pb(event: CampaignEvent) -> pb::CampaignEvent {
    match event {
        CampaignEvent::PlanSent {
            region,
            agent,
            expected,
        } => pb::CampaignEvent {
            kind: "plan_sent".into(),
            region,
            agent,
            expected,
            ..Default::default()
        },
        CampaignEvent::RegionDone { region } => pb::CampaignEvent {
            kind: "region_done".into(),
            region,
            ..Default::default()
        },
        CampaignEvent::RegionLost { region, reason } => pb::CampaignEvent {
            kind: "region_lost".into(),
            region,
            detail: reason,
            ..Default::default()
        },
        CampaignEvent::ReportReady { status } => pb::CampaignEvent {
            kind: "report_ready".into(),
            detail: status,
            ..Default::default()
        },
    }
}

type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::CampaignEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::control_service_server::ControlService for ControlService {
    async fn start_campaign(
        &self,
        request: Request<pb::StartCampaignRequest>,
    ) -> Result<Response<pb::StartCampaignResponse>, Status> {
        self.authorize(&request)?;
        let req = target_of(request.into_inner())?;
        let handle = self.core.start_campaign(req).await?;
        Ok(Response::new(pb::StartCampaignResponse {
            campaign_id: handle.campaign_id,
            regions: handle
                .regions
                .into_iter()
                .map(|(region, agent)| pb::RegionAgent { region, agent })
                .collect(),
        }))
    }

    type WatchCampaignStream = EventStream;

    async fn watch_campaign(
        &self,
        request: Request<pb::WatchCampaignRequest>,
    ) -> Result<Response<Self::WatchCampaignStream>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().campaign_id;
        let live = self.core.watch_campaign(&id);
        // Subscribe first, then read the stored status: a campaign that ends
        // in between is seen as ended, never missed.
        let row = self.campaign_row(&id).await?;
        if row.status != CampaignStatus::Running || live.is_none() {
            let done = pb::CampaignEvent {
                kind: "report_ready".into(),
                detail: row.status.to_string(),
                ..Default::default()
            };
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(done)]))));
        }
        let Some(live) = live else {
            return Err(Status::internal("campaign feed vanished"));
        };
        // The feed closes when the campaign's task ends, right after report_ready.
        let stream = tokio_stream::StreamExt::filter_map(
            tokio_stream::wrappers::BroadcastStream::new(live),
            |event| event.ok().map(|e| Ok(event_pb(e))),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_report(
        &self,
        request: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::GetReportResponse>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().campaign_id;
        let row = self.campaign_row(&id).await?;
        Ok(Response::new(pb::GetReportResponse {
            status: row.status.to_string(),
            report_json: row.report_json.unwrap_or_default(),
        }))
    }

    async fn cancel_campaign(
        &self,
        request: Request<pb::CancelCampaignRequest>,
    ) -> Result<Response<pb::CancelCampaignResponse>, Status> {
        self.authorize(&request)?;
        let id = request.into_inner().campaign_id;
        let (status, stopped_regions) = self.core.cancel_campaign(&id).await?;
        tracing::info!(campaign = %id, %status, stopped = ?stopped_regions, "campaign cancelled");
        Ok(Response::new(pb::CancelCampaignResponse {
            status,
            stopped_regions,
        }))
    }

    async fn list_campaigns(
        &self,
        request: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        self.authorize(&request)?;
        let limit = match request.into_inner().limit {
            0 => 20,
            n => n.min(1000),
        };
        let rows = self.core.store.list_campaigns(limit).await?;
        let campaigns = rows
            .into_iter()
            .map(|row| pb::CampaignSummary {
                url: serde_json::from_str::<serde_json::Value>(&row.target_json)
                    .ok()
                    .and_then(|t| t["url"].as_str().map(str::to_string))
                    .unwrap_or_default(),
                campaign_id: row.campaign_id,
                created_at: rfc3339(row.created_at_ms),
                status: row.status.to_string(),
                regions: row.regions,
            })
            .collect();
        Ok(Response::new(pb::ListCampaignsResponse { campaigns }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.authorize(&request)?;
        let agents = self
            .core
            .list_agents()
            .await?
            .into_iter()
            .map(|view| pb::AgentInfo {
                name: view.record.name,
                region: view.record.region,
                labels: view.record.labels.into_iter().collect(),
                connected: view.connected,
                last_seen: view.record.last_seen_ms.map(rfc3339).unwrap_or_default(),
                version: view.record.version,
                remote_addr: view.remote_addr.unwrap_or_default(),
                revoked: view.record.revoked,
                agent_id: view.record.agent_id,
                role: view.record.role.to_string(),
                spool_bytes: view.record.spool_bytes,
                health: view.health.map(Into::into),
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn create_enrollment_token(
        &self,
        request: Request<pb::CreateEnrollmentTokenRequest>,
    ) -> Result<Response<pb::CreateEnrollmentTokenResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            secs => Duration::from_secs(secs),
        };
        let uses = if req.uses == 0 { 1 } else { req.uses };
        let (token, expires_at_ms) = self.core.create_token(&req.region, ttl, uses).await?;
        Ok(Response::new(pb::CreateEnrollmentTokenResponse {
            token,
            expires_at: rfc3339(expires_at_ms),
        }))
    }

    async fn revoke_agent(
        &self,
        request: Request<pb::RevokeAgentRequest>,
    ) -> Result<Response<pb::RevokeAgentResponse>, Status> {
        self.authorize(&request)?;
        let was_connected = self.core.revoke(&request.into_inner().name).await?;
        Ok(Response::new(pb::RevokeAgentResponse { was_connected }))
    }

    async fn run_plan(
        &self,
        request: Request<pb::RunPlanRequest>,
    ) -> Result<Response<pb::RunPlanResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        let plan_id = self.core.run_plan(&req.agents, req.probes).await?;
        Ok(Response::new(pb::RunPlanResponse { plan_id }))
    }

    async fn get_plan_status(
        &self,
        request: Request<pb::GetPlanStatusRequest>,
    ) -> Result<Response<pb::GetPlanStatusResponse>, Status> {
        self.authorize(&request)?;
        let plan_id = request.into_inner().plan_id;
        let rows = self.core.plan_status(&plan_id).await?;
        let results_stored = rows.iter().map(|r| r.stored).sum();
        let agents = rows
            .into_iter()
            .map(|row| pb::PlanAgentStatus {
                agent: row.agent_name,
                state: row.state.to_string(),
                reason: row.reason.unwrap_or_default(),
                results_stored: row.stored,
                results_expected: row.expected,
            })
            .collect();
        Ok(Response::new(pb::GetPlanStatusResponse {
            plan_id,
            agents,
            results_stored,
        }))
    }
}
