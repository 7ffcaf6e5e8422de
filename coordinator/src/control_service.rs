//! `vantage.v1.ControlService`: the operator API behind the `vantage` CLI,
//! authenticated by the admin credential (`authorization: Bearer …`). Each
//! call is a thin translation onto [`Coordinator`].

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use vantage_proto::pb;

use crate::coordinator::Coordinator;
use crate::time::rfc3339;

/// Default enrollment-token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The service implementation.
#[derive(Debug, Clone)]
pub struct ControlService {
    pub(crate) core: Arc<Coordinator>,
}

impl ControlService {
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

#[tonic::async_trait]
impl pb::control_service_server::ControlService for ControlService {
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
                role: view.record.role,
                spool_bytes: view.record.spool_bytes,
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
                state: row.state,
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
