//! Builders for the pieces of a lab: coordinators and agents, in-process (fast,
//! observable through events) or as real processes (for crash tests and the
//! CLI contract). Every piece binds port 0 and reports its address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::sync::{broadcast, oneshot};
use vantage::client::{self, ControlClient, Target};
use vantage::coordinator::Coordinator;
use vantage::registry::AgentEvent;
use vantage::server::{self, RunningCoordinator, ServeConfig};
use vantage_agent::backoff::BackoffConfig;
use vantage_agent::cli::{build_agent, RunConfig};
use vantage_agent::safety::TargetPolicy;
use vantage_agent::session::{SessionError, SessionEvent};
use vantage_proto::token::EnrollmentToken;
use vantage_support::env::MapEnv;

use crate::process::{bin_path, ChildProcess, Stream};

/// How long a lab piece may take to become ready.
pub const READY: Duration = Duration::from_secs(30);

/// Reconnect quickly in the lab: tests wait for reconnects.
pub fn fast_backoff() -> BackoffConfig {
    BackoffConfig {
        min: Duration::from_millis(50),
        max: Duration::from_millis(500),
        jitter: 0.5,
    }
}

/// Builds an in-process coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorBuilder {
    heartbeat: Duration,
}

impl Default for CoordinatorBuilder {
    fn default() -> Self {
        CoordinatorBuilder {
            heartbeat: Duration::from_secs(1),
        }
    }
}

impl CoordinatorBuilder {
    /// Heartbeat interval (dead agents are noticed after three).
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// Starts it on 127.0.0.1:0 with a fresh data dir.
    pub async fn start(self) -> anyhow::Result<LabCoordinator> {
        let dir = tempfile::tempdir()?;
        let running = server::start(ServeConfig {
            heartbeat: self.heartbeat,
            // The lab enrolls many agents from loopback at once.
            enroll_rate: vantage::enroll_limit::EnrollRate {
                per_minute: 100_000,
                burst: 100_000,
            },
            ..ServeConfig::new(
                dir.path().to_path_buf(),
                "127.0.0.1:0".parse()?,
                Some("127.0.0.1:0".parse()?),
            )
        })
        .await?;
        Ok(LabCoordinator { running, dir })
    }
}

/// An in-process coordinator with its own data dir.
#[derive(Debug)]
pub struct LabCoordinator {
    running: RunningCoordinator,
    dir: tempfile::TempDir,
}

impl LabCoordinator {
    /// A builder.
    pub fn builder() -> CoordinatorBuilder {
        CoordinatorBuilder::default()
    }

    /// The coordinator's operations.
    pub fn core(&self) -> Arc<Coordinator> {
        self.running.core()
    }

    /// Its data dir.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.running.grpc_addr
    }

    /// Its HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.running.http_addr
    }

    /// Sends `probes` to the connected `agent` as one plan, waits until the
    /// agent has durably finished it (at most `timeout`) and returns the
    /// stored results.
    pub async fn run_and_collect(
        &self,
        agent: &str,
        probes: Vec<vantage_proto::pb::ProbeSpec>,
        timeout: Duration,
    ) -> anyhow::Result<Vec<vantage_proto::pb::ProbeResult>> {
        let mut events = self.core().subscribe();
        let plan_id = self
            .core()
            .run_plan(&[agent.to_string()], probes)
            .await
            .map_err(|s| anyhow::anyhow!("run_plan: {}", s.message()))?;
        wait_plan_finished(&mut events, &plan_id, 1, timeout).await?;
        self.core()
            .stored_results(&plan_id)
            .await
            .map_err(|s| anyhow::anyhow!("stored results: {}", s.message()))
    }

    /// Creates a one-use token for `region`.
    pub async fn token(&self, region: &str) -> anyhow::Result<String> {
        Ok(self
            .core()
            .create_token(region, Duration::from_secs(600), 1)
            .await?
            .0)
    }

    /// A control client, as the CLI would build it.
    pub fn control(&self) -> anyhow::Result<ControlClient> {
        client::connect(&Target::discover(
            None,
            self.dir.path(),
            &MapEnv::default(),
        )?)
    }

    /// Stops it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.running.shutdown().await?;
        Ok(())
    }
}

/// Builds an in-process agent.
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    token: Option<String>,
    name: String,
    labels: BTreeMap<String, String>,
    spool_max: u64,
    state_dir: Option<PathBuf>,
    allow_private: bool,
    bind_ip: Option<std::net::IpAddr>,
    dns_server: Option<std::net::SocketAddr>,
    witness_log: Option<PathBuf>,
}

impl AgentBuilder {
    /// An agent named `name` that enrolls with `token`.
    pub fn new(name: &str, token: &str) -> Self {
        AgentBuilder {
            token: Some(token.to_string()),
            name: name.to_string(),
            labels: BTreeMap::new(),
            spool_max: 64 * 1024 * 1024,
            state_dir: None,
            allow_private: true,
            bind_ip: None,
            dns_server: None,
            witness_log: None,
        }
    }

    /// Resolve names through this DNS server (`run --dns-server`).
    pub fn dns_server(mut self, server: std::net::SocketAddr) -> Self {
        self.dns_server = Some(server);
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Spool limit in bytes (0 makes the spool permanently full).
    pub fn spool_max(mut self, bytes: u64) -> Self {
        self.spool_max = bytes;
        self
    }

    /// Source address for probes and the coordinator link (`127.0.N.1`
    /// makes each lab region distinct).
    pub fn bind_ip(mut self, ip: std::net::IpAddr) -> Self {
        self.bind_ip = Some(ip);
        self
    }

    /// Make this a witness following `access_log` (role `witness`).
    pub fn witness(mut self, access_log: &Path) -> Self {
        self.witness_log = Some(access_log.to_path_buf());
        self
    }

    /// Keep the default SSRF guard (loopback targets are refused).
    pub fn deny_private(mut self) -> Self {
        self.allow_private = false;
        self
    }

    /// Use this state dir instead of a fresh one.
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    /// Enrolls (if needed), starts the session and waits until connected.
    pub async fn start(self) -> anyhow::Result<LabAgent> {
        let temp = tempfile::tempdir()?;
        let state_dir = self.state_dir.unwrap_or_else(|| temp.path().join("state"));
        let config = RunConfig {
            token: self
                .token
                .as_deref()
                .map(EnrollmentToken::decode)
                .transpose()?,
            state_dir,
            name: self.name.clone(),
            labels: self.labels,
            bind_ip: self.bind_ip,
            dns_server: self.dns_server,
            cacert_pem: None,
            spool_max: self.spool_max,
            policy: TargetPolicy {
                allow_private: self.allow_private,
            },
            backoff: fast_backoff(),
            max_concurrency: 64,
            max_rate: 1000,
            role: if self.witness_log.is_some() {
                "witness"
            } else {
                "agent"
            },
        };
        let mut agent = build_agent(&config).await?;
        if let Some(log) = &self.witness_log {
            let witness = vantage_agent::witness::Witness::open(
                log,
                true,
                vantage_agent::witness::parse::LogFormat::Auto,
                vantage_agent::witness::DEFAULT_NONCE_PARAM,
            )?;
            let (observations, queued) = tokio::sync::mpsc::channel(10_000);
            agent = agent.with_observations(queued);
            vantage_agent::witness::spawn_forwarding(
                witness,
                Duration::from_millis(20),
                observations,
            );
        }
        let mut events = agent.subscribe();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            agent
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        let deadline = tokio::time::Instant::now() + READY;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Ok(SessionEvent::Connected { .. })) => break,
                Ok(Ok(SessionEvent::Fatal { reason })) => {
                    bail!("agent {} refused: {reason}", self.name)
                }
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => {
                    bail!("agent {} did not connect within {READY:?}", self.name)
                }
            }
        }
        Ok(LabAgent {
            name: self.name,
            events,
            stop: Some(stop),
            task,
            _temp: temp,
        })
    }
}

/// A running in-process agent.
pub struct LabAgent {
    /// Its name.
    pub name: String,
    /// Its session events since it connected.
    pub events: broadcast::Receiver<SessionEvent>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), SessionError>>,
    _temp: tempfile::TempDir,
}

impl std::fmt::Debug for LabAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabAgent")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl LabAgent {
    /// Waits for an event matching `pred`.
    pub async fn wait_event(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&SessionEvent) -> bool,
    ) -> anyhow::Result<SessionEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Ok(event)) if pred(&event) => return Ok(event),
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    bail!("agent {} stopped", self.name)
                }
                Err(_) => bail!(
                    "agent {}: expected event not seen within {timeout:?}",
                    self.name
                ),
            }
        }
    }

    /// Stops the agent and returns how its run ended; panics inside are re-raised.
    pub async fn stop(mut self) -> Result<(), SessionError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Ok(()),
        }
    }
}

/// Waits on a coordinator's event feed for an event matching `pred`.
pub async fn wait_coordinator_event(
    events: &mut broadcast::Receiver<AgentEvent>,
    timeout: Duration,
    mut pred: impl FnMut(&AgentEvent) -> bool,
) -> anyhow::Result<AgentEvent> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event)) if pred(&event) => return Ok(event),
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => bail!("coordinator stopped"),
            Err(_) => bail!("expected coordinator event not seen within {timeout:?}"),
        }
    }
}

/// Waits until `agents` agents have durably finished `plan_id`; returns their names.
pub async fn wait_plan_finished(
    events: &mut broadcast::Receiver<AgentEvent>,
    plan_id: &str,
    agents: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let mut finished = Vec::with_capacity(agents);
    while finished.len() < agents {
        let event = wait_coordinator_event(
            events,
            timeout,
            |e| matches!(e, AgentEvent::PlanFinished { plan_id: p, .. } if p == plan_id),
        )
        .await?;
        if let AgentEvent::PlanFinished { agent, .. } = event {
            finished.push(agent);
        }
    }
    finished.sort();
    Ok(finished)
}

/// A `vantage serve` process.
#[derive(Debug)]
pub struct CoordinatorProcess {
    /// The process.
    pub process: ChildProcess,
    /// Its bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Its bound HTTP address (/healthz, /metrics).
    pub http_addr: Option<SocketAddr>,
    data_dir: PathBuf,
    heartbeat: Duration,
}

impl CoordinatorProcess {
    /// Starts `vantage serve` on `listen` (port 0 for a free one) and waits
    /// for its readiness line.
    pub async fn start(
        data_dir: &Path,
        listen: SocketAddr,
        heartbeat: Duration,
    ) -> anyhow::Result<CoordinatorProcess> {
        // The lab enrolls many agents from loopback at once: lift the
        // per-address enroll limit (the hardening tests set their own).
        let lifted = ["--enroll-per-minute", "100000", "--enroll-burst", "100000"];
        CoordinatorProcess::start_with(data_dir, listen, heartbeat, &lifted).await
    }

    /// [`CoordinatorProcess::start`] with extra `serve` flags (and the
    /// enroll limit at its default unless `extra` sets it).
    pub async fn start_with(
        data_dir: &Path,
        listen: SocketAddr,
        heartbeat: Duration,
        extra: &[&str],
    ) -> anyhow::Result<CoordinatorProcess> {
        let mut args = vec![
            "--data-dir".to_string(),
            data_dir.display().to_string(),
            "serve".into(),
            "--listen".into(),
            listen.to_string(),
            "--http-listen".into(),
            "127.0.0.1:0".into(),
            "--heartbeat".into(),
            humantime::format_duration(heartbeat).to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut process = ChildProcess::spawn("vantage serve", &bin_path("vantage"), &args)?;
        let ready = process
            .wait_for_line(READY, |stream, line| {
                stream == Stream::Stdout && line.contains("coordinator ready")
            })
            .await?;
        let grpc_addr = ready
            .split_whitespace()
            .find_map(|field| field.strip_prefix("grpc="))
            .context("readiness line without grpc=")?
            .parse()?;
        let http_addr = ready
            .split_whitespace()
            .find_map(|field| field.strip_prefix("http="))
            .and_then(|a| a.parse().ok());
        Ok(CoordinatorProcess {
            process,
            grpc_addr,
            http_addr,
            data_dir: data_dir.to_path_buf(),
            heartbeat,
        })
    }

    /// `kill -9` it.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.process.kill9().await
    }

    /// Starts it again on the same data dir and port.
    pub async fn restart(&self) -> anyhow::Result<CoordinatorProcess> {
        CoordinatorProcess::start(&self.data_dir, self.grpc_addr, self.heartbeat).await
    }

    /// Starts it again on the same data dir and port with `extra` flags
    /// (as [`CoordinatorProcess::start_with`]).
    pub async fn restart_with(&self, extra: &[&str]) -> anyhow::Result<CoordinatorProcess> {
        CoordinatorProcess::start_with(&self.data_dir, self.grpc_addr, self.heartbeat, extra).await
    }

    /// A control client.
    pub fn control(&self) -> anyhow::Result<ControlClient> {
        client::connect(&Target::discover(None, &self.data_dir, &MapEnv::default())?)
    }

    /// Starts the `vantage` CLI against this coordinator without waiting.
    pub fn cli_spawn(&self, args: &[String]) -> anyhow::Result<tokio::process::Child> {
        Ok(tokio::process::Command::new(bin_path("vantage"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?)
    }

    /// Starts a campaign against `origin`'s `/asset.js` (the origin named as
    /// such) from every region with a connected agent; returns its id.
    pub async fn start_campaign(&self, origin: &crate::origin::Origin) -> anyhow::Result<String> {
        let addr = origin.addr().to_string();
        let request =
            vantage::campaign::plan::TargetRequest::new(&origin.url("/asset.js"), &[addr.as_str()]);
        Ok(self
            .control()?
            .start_campaign(vantage::wire::target_pb(&request, &[]))
            .await?
            .into_inner()
            .campaign_id)
    }

    /// Runs a plan of `probes` direct baseline probes of `url` on `agent`;
    /// returns its id.
    pub async fn run_baseline_plan(
        &self,
        agent: &str,
        url: &str,
        probes: u64,
    ) -> anyhow::Result<String> {
        use vantage_proto::pb;
        let probes = (0..probes)
            .map(|i| pb::ProbeSpec {
                probe_id: format!("p{i}"),
                url: url.to_string(),
                route: pb::Route::Direct as i32,
                variant: "baseline".into(),
                attempts: 1,
                ..Default::default()
            })
            .collect();
        Ok(self
            .control()?
            .run_plan(pb::RunPlanRequest {
                agents: vec![agent.to_string()],
                probes,
            })
            .await?
            .into_inner()
            .plan_id)
    }

    /// Creates a one-use enrollment token with `vantage token create`.
    pub async fn create_token(&self, region: &str) -> anyhow::Result<String> {
        let out = self.cli(&["token", "create", "--region", region]).await?;
        if !out.status.success() {
            bail!(
                "token create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// Enrolls a `vantage-agent run` process named `name` in `region` with
    /// a fresh token and waits until its session is up; the state dir
    /// lives as long as the returned guard.
    pub async fn connected_agent(
        &self,
        region: &str,
        name: &str,
    ) -> anyhow::Result<(ChildProcess, tempfile::TempDir)> {
        let token = self.create_token(region).await?;
        let state = tempfile::tempdir()?;
        let mut agent = spawn_agent_process(state.path(), &["--token", &token, "--name", name])?;
        wait_agent_connected(&mut agent).await?;
        Ok((agent, state))
    }

    /// Its data dir (where the CLI finds the admin credential).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Runs the `vantage` CLI against this coordinator.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let mut argv = vec![
            "--data-dir".to_string(),
            self.data_dir.display().to_string(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        crate::process::run_cli(&bin_path("vantage"), &argv, Duration::from_secs(30)).await
    }
}

/// Starts a `vantage-agent run` process with lab defaults (`--allow-private`,
/// fast reconnects) plus `extra` flags.
pub fn spawn_agent_process(state_dir: &Path, extra: &[&str]) -> anyhow::Result<ChildProcess> {
    let mut args = vec![
        "run".to_string(),
        "--state-dir".into(),
        state_dir.display().to_string(),
        "--allow-private".into(),
        "--reconnect-min".into(),
        "50ms".into(),
        "--reconnect-max".into(),
        "500ms".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    ChildProcess::spawn("vantage-agent", &bin_path("vantage-agent"), &args)
}

/// Starts a real `vantage-agent witness` that follows `access_log`, enrolled
/// with a fresh `origin` token of `coordinator`, plus `extra` flags, and
/// waits until its session is established.
pub async fn start_witness_process(
    coordinator: &CoordinatorProcess,
    access_log: &Path,
    state_dir: &Path,
    extra: &[&str],
) -> anyhow::Result<ChildProcess> {
    let token = coordinator.create_token("origin").await?;
    let mut args: Vec<String> = vec![
        "witness".into(),
        "--token".into(),
        token,
        "--access-log".into(),
        access_log.display().to_string(),
        "--state-dir".into(),
        state_dir.display().to_string(),
        "--name".into(),
        "witness-1".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut witness =
        ChildProcess::spawn("vantage-agent witness", &bin_path("vantage-agent"), &args)?;
    wait_agent_connected(&mut witness)
        .await
        .context("witness")?;
    Ok(witness)
}

/// Waits until an agent process logs that its session is established.
pub async fn wait_agent_connected(agent: &mut ChildProcess) -> anyhow::Result<()> {
    agent
        .wait_for_line(READY, |_, line| line.contains("session established"))
        .await
        .map(|_| ())
}

/// A hand-driven session for protocol tests: the test decides every message.
pub struct RawSession {
    /// Messages to send.
    pub tx: tokio::sync::mpsc::Sender<vantage_proto::pb::AgentMessage>,
    /// What the coordinator answered (Err if it refused the stream).
    pub inbound: Result<tonic::Streaming<vantage_proto::pb::CoordinatorMessage>, tonic::Status>,
}

/// Enrolls `name` with `token` through the library and returns its identity.
pub async fn enroll_identity(
    token: &str,
    name: &str,
) -> anyhow::Result<vantage_agent::identity::Identity> {
    enroll_identity_as(token, name, "agent").await
}

/// Enrolls `name` with `role` (`agent` or `witness`).
pub async fn enroll_identity_as(
    token: &str,
    name: &str,
    role: &str,
) -> anyhow::Result<vantage_agent::identity::Identity> {
    let token = EnrollmentToken::decode(token)?;
    Ok(vantage_agent::enroll::enroll(
        &token,
        &vantage_agent::enroll::EnrollRequest {
            name: name.into(),
            labels: BTreeMap::new(),
            role: role.into(),
        },
    )
    .await?)
}

/// Opens a session as `identity`, first sending `first` (usually a Hello).
pub async fn raw_session(
    identity: &vantage_agent::identity::Identity,
    first: Vec<vantage_proto::pb::AgentMessage>,
) -> anyhow::Result<RawSession> {
    let config = identity.client_config()?;
    let channel =
        vantage_support::tls::TlsConnector::new(&identity.info.coordinator[0], config, None)?
            .channel(Duration::from_secs(5))?;
    let mut client = vantage_proto::pb::agent_service_client::AgentServiceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for message in first {
        tx.send(message).await?;
    }
    let inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map(tonic::Response::into_inner);
    Ok(RawSession { tx, inbound })
}

/// A Hello that matches `identity`.
pub fn hello_for(identity: &vantage_agent::identity::Identity) -> vantage_proto::pb::AgentMessage {
    vantage_proto::pb::AgentMessage {
        body: Some(vantage_proto::pb::agent_message::Body::Hello(
            vantage_proto::pb::Hello {
                name: identity.info.name.clone(),
                region: identity.info.region.clone(),
                version: "test".into(),
                ..Default::default()
            },
        )),
    }
}
