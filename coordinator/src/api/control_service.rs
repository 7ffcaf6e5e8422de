//! `vantage.v1.ControlService`: the operator API behind the `vantage` CLI,
//! authenticated by the admin credential (`authorization: Bearer …`). Each
//! call is a thin translation onto [`Coordinator`].
//!
//! The credential is checked once, in front of the whole service
//! ([`AdminCheck`], installed by [`server`]), not in each handler: a method
//! added later is covered without anyone remembering to call a check.
//! `transport` refuses the same calls even earlier (before their body is
//! read) with [`check_admin`] too, so both layers agree on what an admin is.

use crate::store::CampaignStatus;
use std::sync::Arc;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::{Request, Response, Status};
use vantage_proto::pb;
use vantage_proto::pb::control_service_server::ControlServiceServer;

use crate::coordinator::Coordinator;
use crate::time::rfc3339;
use crate::wire::{
    alert_pb, event_pb, sweep_definition_of, sweep_info_pb, sweep_run_pb, target_of,
};

/// Default enrollment-token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The service implementation. Its handlers assume the caller is the
/// admin: serve it only through [`server`], which puts [`AdminCheck`] in
/// front of every method.
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
}

/// Checks the admin credential in a call's headers: `authorization: Bearer
/// <secret>` (or the bare secret). Anything else, an agent's client
/// certificate included, is not the admin: the certificate says which agent
/// is calling, never that it may operate the coordinator.
pub fn check_admin(core: &Coordinator, headers: &http::HeaderMap) -> Result<(), Status> {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Status::unauthenticated("missing admin credential"))?;
    let secret = header.strip_prefix("Bearer ").unwrap_or(header);
    if core.is_admin(secret) {
        Ok(())
    } else {
        Err(Status::unauthenticated("wrong admin credential"))
    }
}

/// The admin check in front of every ControlService method, run by tonic
/// before the request message is decoded and before any handler.
#[derive(Debug, Clone)]
pub struct AdminCheck {
    core: Arc<Coordinator>,
}

impl Interceptor for AdminCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        check_admin(&self.core, request.metadata().as_ref())?;
        Ok(request)
    }
}

/// The ControlService as served: every method behind [`AdminCheck`].
pub type ControlServer = InterceptedService<ControlServiceServer<ControlService>, AdminCheck>;

/// Builds the ControlService server for `core`: the only way the service is
/// served, so no method can be reached without the admin credential.
/// Messages are capped at [`crate::api::transport::CONTROL_MESSAGE_LIMIT`]
/// (`transport` refuses larger ones before tonic buffers anything).
pub fn server(core: Arc<Coordinator>) -> ControlServer {
    let service = ControlServiceServer::new(ControlService { core: core.clone() })
        .max_decoding_message_size(crate::api::transport::CONTROL_MESSAGE_LIMIT as usize);
    InterceptedService::new(service, AdminCheck { core })
}

type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::CampaignEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::control_service_server::ControlService for ControlService {
    async fn start_campaign(
        &self,
        request: Request<pb::StartCampaignRequest>,
    ) -> Result<Response<pb::StartCampaignResponse>, Status> {
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
        let (said, live) = live;
        // What was said before this watcher came (the plans sent, each
        // region's progress), then the live feed, which closes when the
        // campaign's task ends, right after report_ready.
        let live = tokio_stream::StreamExt::filter_map(
            tokio_stream::wrappers::BroadcastStream::new(live),
            |event| event.ok().map(|e| Ok(event_pb(e))),
        );
        let stream = tokio_stream::StreamExt::chain(
            futures::stream::iter(said.into_iter().map(|e| Ok(event_pb(e)))),
            live,
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_report(
        &self,
        request: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::GetReportResponse>, Status> {
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
        let id = request.into_inner().campaign_id;
        let (status, stopped_regions) = self.core.cancel_campaign(&id).await?;
        tracing::info!(campaign = %id, %status, stopped = ?stopped_regions, "campaign cancelled");
        Ok(Response::new(pb::CancelCampaignResponse {
            status: status.as_str().to_string(),
            stopped_regions,
        }))
    }

    async fn create_sweep(
        &self,
        request: Request<pb::CreateSweepRequest>,
    ) -> Result<Response<pb::SweepInfo>, Status> {
        let definition = request
            .into_inner()
            .definition
            .ok_or_else(|| Status::invalid_argument("a sweep needs a definition"))?;
        let (name, definition) = sweep_definition_of(definition)?;
        let view = self.core.create_sweep(&name, definition).await?;
        tracing::info!(sweep = %name, "sweep created");
        Ok(Response::new(sweep_info_pb(&view)))
    }

    async fn list_sweeps(
        &self,
        _request: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        let sweeps = self.core.sweep_views().await?;
        Ok(Response::new(pb::ListSweepsResponse {
            sweeps: sweeps.iter().map(sweep_info_pb).collect(),
        }))
    }

    async fn get_sweep(
        &self,
        request: Request<pb::GetSweepRequest>,
    ) -> Result<Response<pb::SweepInfo>, Status> {
        let view = self.core.sweep_view(&request.into_inner().name).await?;
        Ok(Response::new(sweep_info_pb(&view)))
    }

    async fn sweep_history(
        &self,
        request: Request<pb::SweepHistoryRequest>,
    ) -> Result<Response<pb::SweepHistoryResponse>, Status> {
        let request = request.into_inner();
        let runs = self
            .core
            .sweep_history(&request.name, request.limit)
            .await?;
        Ok(Response::new(pb::SweepHistoryResponse {
            runs: runs.iter().map(sweep_run_pb).collect(),
        }))
    }

    async fn set_sweep_paused(
        &self,
        request: Request<pb::SetSweepPausedRequest>,
    ) -> Result<Response<pb::SweepInfo>, Status> {
        let request = request.into_inner();
        let view = self.core.pause_sweep(&request.name, request.paused).await?;
        tracing::info!(sweep = %request.name, paused = request.paused, "sweep paused or resumed");
        Ok(Response::new(sweep_info_pb(&view)))
    }

    async fn delete_sweep(
        &self,
        request: Request<pb::DeleteSweepRequest>,
    ) -> Result<Response<pb::DeleteSweepResponse>, Status> {
        let name = request.into_inner().name;
        self.core.delete_sweep(&name).await?;
        tracing::info!(sweep = %name, "sweep deleted");
        Ok(Response::new(pb::DeleteSweepResponse {}))
    }

    async fn apply_sweeps(
        &self,
        request: Request<pb::ApplySweepsRequest>,
    ) -> Result<Response<pb::ApplySweepsResponse>, Status> {
        let request = request.into_inner();
        let wanted = request
            .sweeps
            .into_iter()
            .map(sweep_definition_of)
            .collect::<Result<Vec<_>, _>>()?;
        let plan = self.core.apply_sweeps(wanted, request.dry_run).await?;
        let names = |items: &[(String, _)]| items.iter().map(|(n, _)| n.clone()).collect();
        Ok(Response::new(pb::ApplySweepsResponse {
            create: names(&plan.create),
            update: names(&plan.update),
            delete: plan.delete.clone(),
            unchanged: plan.unchanged.clone(),
            applied: !request.dry_run && !plan.is_empty(),
        }))
    }

    async fn list_alerts(
        &self,
        _request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let alerts = self.core.alerts().await?;
        Ok(Response::new(pb::ListAlertsResponse {
            alerts: alerts.iter().map(alert_pb).collect(),
        }))
    }

    async fn list_campaigns(
        &self,
        request: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
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
        _request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
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
        let was_connected = self.core.revoke(&request.into_inner().name).await?;
        Ok(Response::new(pb::RevokeAgentResponse { was_connected }))
    }

    async fn run_plan(
        &self,
        request: Request<pb::RunPlanRequest>,
    ) -> Result<Response<pb::RunPlanResponse>, Status> {
        let req = request.into_inner();
        let plan_id = self.core.run_plan(&req.agents, req.probes).await?;
        Ok(Response::new(pb::RunPlanResponse { plan_id }))
    }

    async fn get_plan_status(
        &self,
        request: Request<pb::GetPlanStatusRequest>,
    ) -> Result<Response<pb::GetPlanStatusResponse>, Status> {
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

#[cfg(test)]
mod tests {
    //! Every ControlService method refuses callers without the admin
    //! credential, at both layers: [`server`]'s interceptor on its own, and
    //! the real listener (`transport` in front of it) for an anonymous
    //! client and for an enrolled agent's certificate.

    use super::*;
    use crate::api::enroll_limit::EnrollRate;
    use crate::pki::Pki;
    use crate::server::{ServeConfig, ADMIN_TOKEN_FILE};
    use crate::store::SqliteStore;
    use http_body_util::BodyExt as _;
    use hyper::body::Bytes;
    use tonic::Code;
    use tower::ServiceExt as _;
    use vantage_proto::token::hash_secret;
    use vantage_support::tls::{ca_client_config, mtls_client_config, TlsConnector};

    /// The methods `control.proto` declares, read from the proto itself so
    /// that a method added there is checked here without editing this test.
    fn proto_methods() -> Vec<String> {
        let proto = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../proto/vantage/v1/control.proto"
        ));
        let methods: Vec<String> = proto
            .lines()
            .filter_map(|line| line.trim().strip_prefix("rpc "))
            .filter_map(|rest| rest.split('(').next())
            .map(|name| name.trim().to_string())
            .collect();
        // Guards the parser: the methods the service had when this was written.
        for known in [
            "ListAgents",
            "CreateEnrollmentToken",
            "RevokeAgent",
            "RunPlan",
            "GetPlanStatus",
            "StartCampaign",
            "WatchCampaign",
            "GetReport",
            "ListCampaigns",
            "CancelCampaign",
        ] {
            assert!(methods.iter().any(|m| m == known), "{known} in {methods:?}");
        }
        methods
    }

    /// Calls `method` with an empty message (every field at its default)
    /// and returns the gRPC status it ended with, from the headers of a
    /// refusal or the trailers of an answer.
    async fn call<S, B>(service: S, method: &str, authorization: Option<&str>) -> Status
    where
        S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
        S::Error: std::fmt::Debug,
        B: hyper::body::Body,
        B::Error: std::fmt::Debug,
    {
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("/vantage.v1.ControlService/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        // One gRPC frame: uncompressed, zero bytes long.
        let body = http_body_util::Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]));
        let request = request.body(tonic::body::Body::new(body)).unwrap();
        let response = service.oneshot(request).await.expect("transport error");
        if let Some(status) = Status::from_header_map(response.headers()) {
            return status;
        }
        let collected = response.into_body().collect().await.expect("body error");
        collected
            .trailers()
            .and_then(Status::from_header_map)
            .unwrap_or_else(|| Status::unknown("no grpc-status"))
    }

    fn assert_refused(status: &Status, message: &str, what: &str) {
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert_eq!(status.message(), message, "{what}");
    }

    /// The admin's call reached a handler: not refused, and routed (a
    /// method name that did not exist would be `UNIMPLEMENTED`).
    fn assert_admitted(status: &Status, what: &str) {
        assert!(
            !matches!(status.code(), Code::Unauthenticated | Code::Unimplemented),
            "{what}: {status:?}"
        );
    }

    #[tokio::test]
    async fn interceptor_refuses_every_method_without_the_admin_credential() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::store::Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
        let settings = crate::coordinator::CoordinatorSettings {
            coordinator_id: "test-coordinator".into(),
            shared_database: false,
            admin_hash: hash_secret("the-admin-secret"),
            token_addrs: vec!["127.0.0.1:7443".into()],
            heartbeat: Duration::from_secs(10),
            enroll_rate: EnrollRate::default(),
            agent_cert_lifetime: Duration::from_secs(3600),
            webhook_allow_private: false,
        };
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let (core, _ingest) = Coordinator::new(store, pki, settings).unwrap();
        // No transport in front: this is the service as `server` builds it.
        let service = server(Arc::new(core));
        for method in proto_methods() {
            let status = call(service.clone(), &method, None).await;
            assert_refused(&status, "missing admin credential", &method);
            for wrong in ["Bearer not-the-secret", "not-the-secret", "Bearer "] {
                let status = call(service.clone(), &method, Some(wrong)).await;
                assert_refused(&status, "wrong admin credential", &method);
            }
            let status = call(service.clone(), &method, Some("Bearer the-admin-secret")).await;
            assert_admitted(&status, &method);
        }
    }

    #[tokio::test]
    async fn served_coordinator_refuses_anonymous_clients_and_agents_on_every_method() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServeConfig::new(
            dir.path().join("data"),
            "127.0.0.1:0".parse().unwrap(),
            None,
        );
        let running = crate::server::start(config).await.unwrap();
        let core = running.core();
        let addr = running.grpc_addr.to_string();
        let admin = std::fs::read_to_string(dir.path().join("data").join(ADMIN_TOKEN_FILE))
            .unwrap()
            .trim()
            .to_string();

        // An agent's identity as enrollment gives it: its own key, a
        // certificate for its agent id signed by the coordinator's CA.
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let (cert_pem, _) = core
            .pki
            .sign_agent_csr(&csr, "agent-under-test", Duration::from_secs(3600))
            .unwrap();
        let ca = core.pki.ca_pem();
        let channel = |config| {
            TlsConnector::new(&addr, config, None)
                .unwrap()
                .channel(Duration::from_secs(5))
                .unwrap()
        };
        let anonymous = channel(ca_client_config(ca).unwrap());
        let agent = channel(mtls_client_config(ca, &cert_pem, &key.serialize_pem()).unwrap());

        for method in proto_methods() {
            for (who, client) in [("anonymous", &anonymous), ("agent", &agent)] {
                for authorization in [None, Some("Bearer not-the-secret")] {
                    let status = call(client.clone(), &method, authorization).await;
                    // `transport` answers before the body is read, with its
                    // own (unchanged) message.
                    assert_refused(
                        &status,
                        "missing or wrong admin credential",
                        &format!("{method} as {who} with {authorization:?}"),
                    );
                }
            }
            let bearer = format!("Bearer {admin}");
            let status = call(anonymous.clone(), &method, Some(&bearer)).await;
            assert_admitted(&status, &method);
        }
        running.shutdown().await.unwrap();
    }
}
