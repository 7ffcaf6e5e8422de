//! `vantage serve`: prepares the data dir (store, CA, admin credential) and
//! then binds the gRPC (TLS) and HTTP listeners. Everything that can fail on
//! bad input fails before a port is bound.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tonic::service::Routes;
use vantage_proto::pb::agent_service_server::AgentServiceServer;
use vantage_proto::token::hash_secret;
use vantage_support::fs::{create_private_dir, write_private};

use crate::api::agent_service::AgentService;
use crate::api::enroll_limit::EnrollRate;
use crate::api::transport::{self, GrpcShared, SharedTls, TransportLimits};
use crate::coordinator::{Coordinator, CoordinatorSettings};
use crate::pki::{Pki, SERVER_CERT_LIFETIME};
use crate::store::{Database, PgStore, SqliteStore};

/// File names inside the data dir.
pub const DB_FILE: &str = "vantage.db";
/// The admin credential (mode 0600).
pub use crate::pki::ADMIN_TOKEN_FILE;
/// Where a running coordinator says how to reach it.
pub const ENDPOINT_FILE: &str = "coordinator.json";
/// The CA certificate.
pub const CA_FILE: &str = "ca.crt";

/// Default lifetime of an agent certificate; agents renew it over their
/// session once less than a third is left.
pub const DEFAULT_AGENT_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// How to run the coordinator.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Where state is kept; `None` is SQLite in the data dir
    /// ([`DB_FILE`]).
    pub database: Option<crate::store::Database>,
    /// gRPC (TLS) listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Plain HTTP listen address for /healthz.
    pub http_listen: Option<SocketAddr>,
    /// Names or addresses agents use to reach this coordinator (`host` or `host:port`).
    pub advertise: Vec<String>,
    /// Heartbeat interval sent to agents; three missed ones end a session.
    pub heartbeat: Duration,
    /// Connection caps and timeouts of both listeners.
    pub transport: TransportLimits,
    /// Per-source-address rate limit of Enroll.
    pub enroll_rate: EnrollRate,
    /// Lifetime of the agent certificates issued from now on (default
    /// [`DEFAULT_AGENT_CERT_LIFETIME`]).
    pub agent_cert_lifetime: Duration,
    /// How the sweep scheduler is bounded.
    pub scheduler: crate::sweep::scheduler::SchedulerConfig,
    /// Whether webhooks may point at special-purpose addresses.
    pub webhook_allow_private: bool,
}

impl ServeConfig {
    /// A configuration with every hardening setting at its default.
    pub fn new(data_dir: PathBuf, listen: SocketAddr, http_listen: Option<SocketAddr>) -> Self {
        ServeConfig {
            data_dir,
            database: None,
            listen,
            http_listen,
            advertise: Vec::new(),
            heartbeat: Duration::from_secs(10),
            transport: TransportLimits::default(),
            enroll_rate: EnrollRate::default(),
            agent_cert_lifetime: DEFAULT_AGENT_CERT_LIFETIME,
            scheduler: crate::sweep::scheduler::SchedulerConfig::default(),
            webhook_allow_private: false,
        }
    }
}

/// Errors starting the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The ingest writer thread could not start.
    #[error("cannot start the ingest thread: {0}")]
    Thread(std::io::Error),
    /// The data dir is unusable.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The store could not be opened.
    #[error("database {target}: {source}")]
    Store {
        /// The file or server (never with its password).
        target: String,
        /// The cause.
        source: crate::store::StoreError,
    },
    /// The CA could not be loaded or created.
    #[error("certificate authority: {0}")]
    Pki(#[from] crate::pki::PkiError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The installation (CA, admin credential) could not be joined or
    /// created in the shared database.
    #[error("installation: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    /// This coordinator could not list itself among the installation's.
    #[error("cannot join the installation's coordinators: {0}")]
    Membership(crate::store::StoreError),
    /// The gRPC server could not be configured.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// What `coordinator.json` holds: how the CLI finds a running coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `host:port` of the gRPC listener, reachable from this host.
    pub grpc: String,
    /// `host:port` of the HTTP listener, if any.
    pub http: Option<String>,
}

/// A running coordinator.
pub struct RunningCoordinator {
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound HTTP address.
    pub http_addr: Option<SocketAddr>,
    /// The address written to the endpoint file and tokens' first entry.
    pub endpoint: Endpoint,
    core: Arc<Coordinator>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    http: Option<tokio::task::JoinHandle<()>>,
    renewal: tokio::task::JoinHandle<()>,
    /// The sweep scheduler and the webhook outbox.
    sweeps: Vec<tokio::task::JoinHandle<()>>,
    connections: Arc<Semaphore>,
    max_connections: usize,
    /// This process's row among the installation's coordinators (on a
    /// shared database).
    membership: Option<crate::cluster::Membership>,
}

impl std::fmt::Debug for RunningCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningCoordinator")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

fn data_dir_error(path: &Path, reason: impl Into<String>) -> ServeError {
    ServeError::DataDir {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn load_or_create_admin_token(dir: &Path) -> Result<String, ServeError> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(secret) if !secret.trim().is_empty() => return Ok(secret.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(data_dir_error(&path, e.to_string())),
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    write_private(&path, format!("{secret}\n").as_bytes(), 0o600)
        .map_err(|e| data_dir_error(dir, e.to_string()))?;
    Ok(secret)
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The names the server certificate covers and the addresses tokens carry.
fn names_and_addrs(bound: SocketAddr, advertise: &[String]) -> (Vec<String>, Vec<String>, String) {
    let port = bound.port();
    let local = if bound.ip().is_unspecified() {
        if bound.is_ipv4() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
        }
    } else {
        bound.ip()
    };
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
        local.to_string(),
    ];
    let mut addrs = Vec::new();
    for entry in advertise {
        let (host, with_port) = match vantage_support::addr::split_host_port(entry) {
            Ok((host, p)) => (host.clone(), join_host_port(&host, p)),
            Err(_) => (entry.clone(), join_host_port(entry, port)),
        };
        names.push(host);
        addrs.push(with_port);
    }
    if addrs.is_empty() {
        if bound.ip().is_unspecified() {
            if let Some(host) = host_name() {
                names.push(host.clone());
                addrs.push(join_host_port(&host, port));
            }
        }
        addrs.push(join_host_port(&local.to_string(), port));
    }
    names.sort();
    names.dedup();
    (names, addrs, join_host_port(&local.to_string(), port))
}

/// Opens (creating and migrating) the store `database` names, or the SQLite
/// file in the data dir.
async fn open_store(
    database: Option<&Database>,
    dir: &Path,
) -> Result<Arc<dyn crate::store::Store>, ServeError> {
    let store_error = |target: String| move |source| ServeError::Store { target, source };
    match database {
        Some(Database::Postgres(config)) => {
            let store = PgStore::connect(config)
                .await
                .map_err(store_error(config.to_string()))?;
            tracing::info!(database = %config, "store: PostgreSQL");
            Ok(Arc::new(store))
        }
        sqlite => {
            let db_path = match sqlite {
                Some(Database::Sqlite(path)) => path.clone(),
                _ => dir.join(DB_FILE),
            };
            let parent = db_path.parent().filter(|p| !p.as_os_str().is_empty());
            private_db_files(&db_path)
                .map_err(|e| data_dir_error(parent.unwrap_or(dir), e.to_string()))?;
            let store = SqliteStore::open(&db_path)
                .map_err(store_error(format!("sqlite://{}", db_path.display())))?;
            Ok(Arc::new(store))
        }
    }
}

/// Prepares the data dir and starts serving.
pub async fn start(config: ServeConfig) -> Result<RunningCoordinator, ServeError> {
    vantage_support::tls::crypto_provider();
    // Settings first, each checked once: a bad one fails before the data
    // dir is touched or any port is bound.
    if config.heartbeat < Duration::from_millis(100) || config.heartbeat > Duration::from_secs(600)
    {
        return Err(ServeError::Invalid(format!(
            "--heartbeat {}: must be between 100ms and 10m",
            humantime::format_duration(config.heartbeat)
        )));
    }
    config.transport.validate().map_err(ServeError::Invalid)?;
    config.enroll_rate.validate().map_err(ServeError::Invalid)?;
    config.scheduler.validate().map_err(ServeError::Invalid)?;
    if config.agent_cert_lifetime < Duration::from_secs(5)
        || config.agent_cert_lifetime > Duration::from_secs(3650 * 24 * 3600)
    {
        return Err(ServeError::Invalid(
            "--agent-cert-lifetime must be between 5s and 10 years".into(),
        ));
    }
    let dir = &config.data_dir;
    if dir.exists() && !dir.is_dir() {
        return Err(data_dir_error(dir, "exists and is not a directory"));
    }
    create_private_dir(dir).map_err(|e| data_dir_error(dir, e.to_string()))?;
    let store = open_store(config.database.as_ref(), dir).await?;
    // On a shared database the CA and the admin credential are the
    // installation's: joined from the database, or created here and offered.
    let shared_database = matches!(config.database, Some(Database::Postgres(_)));
    let vacant = if shared_database {
        match crate::cluster::join_installation(store.as_ref(), dir).await? {
            crate::cluster::Joined::Existing => None,
            crate::cluster::Joined::Vacant(key) => Some(key),
        }
    } else {
        None
    };
    let pki = Pki::load_or_create(dir)?;
    let admin_token = load_or_create_admin_token(dir)?;
    if let Some(key) = vacant {
        crate::cluster::offer_installation(store.as_ref(), dir, &key).await?;
    }

    // Nothing above binds a port: a bad data dir fails before any listener exists.
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let grpc_addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let http_listener = match config.http_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?,
        ),
        None => None,
    };
    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());

    let (names, token_addrs, local_endpoint) = names_and_addrs(grpc_addr, &config.advertise);
    let server_cert = pki.issue_server_cert(&names)?;
    let tls: SharedTls = Arc::new(std::sync::RwLock::new(transport::server_tls_config(
        &server_cert.chain_pem,
        &server_cert.key_pem,
        pki.ca_pem(),
    )?));
    let settings = CoordinatorSettings {
        admin_hash: hash_secret(&admin_token),
        coordinator_id: uuid::Uuid::new_v4().to_string(),
        shared_database,
        token_addrs,
        heartbeat: config.heartbeat,
        enroll_rate: config.enroll_rate,
        agent_cert_lifetime: config.agent_cert_lifetime,
        webhook_allow_private: config.webhook_allow_private,
    };
    let membership = if shared_database {
        Some(
            crate::cluster::Membership::join(
                store.clone(),
                settings.coordinator_id.clone(),
                settings.token_addrs.clone(),
            )
            .await
            .map_err(ServeError::Membership)?,
        )
    } else {
        None
    };
    let (core, _ingest_thread) =
        Coordinator::new(store, pki, settings).map_err(ServeError::Thread)?;
    let core = Arc::new(core);

    // Before any agent can connect: campaigns that a coordinator process
    // now gone (a previous one of this data dir, or a peer on a shared
    // database) left running are finished from what it stored; its sweep
    // runs are ended once the sweep room starts.
    let live = if shared_database {
        crate::cluster::live_coordinator_ids(core.store.as_ref())
            .await
            .map_err(ServeError::Membership)?
    } else {
        Vec::new()
    };
    let orphan_runs = core.adopt_orphans(&live, false).await.unwrap_or_else(|e| {
        tracing::error!(error = %e.message(), "cannot adopt what was left running");
        Vec::new()
    });

    // Session stays large (a result batch with evidence); Enroll, Hello and
    // ControlService requests are bounded far lower, per method, by
    // `transport::LimitedBody` before tonic buffers anything.
    let agent_service = AgentServiceServer::new(AgentService { core: core.clone() })
        .max_decoding_message_size(transport::SESSION_MESSAGE_LIMIT as usize);
    // Every ControlService method behind the admin check (one interceptor).
    let control_service = crate::api::control_service::server(core.clone());
    let routes = Routes::new(agent_service)
        .add_service(control_service)
        .prepare();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let limits = config.transport.clone();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let shared = GrpcShared {
        routes,
        tls: tls.clone(),
        core: core.clone(),
        limits: limits.clone(),
        shutdown: shutdown_rx.clone(),
        enrolls: Arc::new(Semaphore::new(transport::MAX_ENROLLS_IN_FLIGHT)),
    };
    let server = tokio::spawn(transport::accept_loop(
        "grpc",
        listener,
        connections.clone(),
        shutdown_rx.clone(),
        move |stream, peer, permit| {
            transport::serve_grpc_connection(shared.clone(), stream, peer, permit)
        },
    ));
    let http = http_listener.map(|listener| {
        let limits = limits.clone();
        let core = core.clone();
        tokio::spawn(transport::accept_loop(
            "http",
            listener,
            Arc::new(Semaphore::new(limits.max_http_connections)),
            shutdown_rx.clone(),
            move |stream, _peer, permit| {
                transport::serve_http_connection(stream, core.clone(), limits.clone(), permit)
            },
        ))
    });
    let renewal = tokio::spawn(renew_server_cert(core.clone(), names, tls));
    if shared_database {
        // Stops with the others on shutdown; joined by none.
        let wakers = crate::store::ChangeWakers {
            sweeps: core.sweep_shared.changed.clone(),
            mail: Arc::new(tokio::sync::Notify::new()),
            mail_for: Some(core.coordinator_id.clone()),
        };
        core.store.announce_changes(wakers.clone());
        // What agents are told of the installation: fresh at every
        // membership heartbeat, so they learn of coordinators that joined.
        core.refresh_installation_addrs().await;
        let refreshing = core.clone();
        let mut stop = shutdown_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(crate::cluster::HEARTBEAT) => {}
                    _ = stop.changed() => return,
                }
                refreshing.refresh_installation_addrs().await;
            }
        });
        tokio::spawn(crate::cluster::relay::run(
            core.store.clone(),
            core.registry.clone(),
            core.coordinator_id.clone(),
            wakers.mail,
            shutdown_rx.clone(),
        ));
    }
    let sweeps = crate::sweep::start(
        &core,
        config.scheduler.clone(),
        shutdown_rx.clone(),
        crate::sweep::Orphans {
            adopted: orphan_runs,
            keep_adopting: shared_database,
        },
    );

    let endpoint = Endpoint {
        grpc: local_endpoint,
        http: http_addr.map(|a| a.to_string()),
    };
    let endpoint_json = serde_json::to_vec_pretty(&endpoint).unwrap_or_default();
    write_private(&dir.join(ENDPOINT_FILE), &endpoint_json, 0o644)
        .map_err(|e| data_dir_error(dir, e.to_string()))?;
    tracing::info!(%grpc_addr, ?http_addr, data_dir = %dir.display(), "coordinator ready");
    Ok(RunningCoordinator {
        grpc_addr,
        http_addr,
        endpoint,
        core,
        shutdown,
        server,
        http,
        renewal,
        sweeps,
        connections,
        max_connections: limits.max_connections,
        membership,
    })
}

/// Creates the database file 0600 before SQLite opens it, and narrows an
/// existing one (and its -wal/-shm files) to 0600: SQLite gives the -wal and
/// -shm files the database file's mode, and a data dir that already existed
/// says nothing about the files' modes.
fn private_db_files(db_path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    drop(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(db_path)?,
    );
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = db_path.as_os_str().to_owned();
        name.push(suffix);
        let path = PathBuf::from(name);
        match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Re-issues the server certificate while running, once a third of its
/// lifetime is left, so a coordinator that runs for months never serves an
/// expired one. New connections get the new certificate.
async fn renew_server_cert(core: Arc<Coordinator>, names: Vec<String>, tls: SharedTls) {
    loop {
        tokio::time::sleep(SERVER_CERT_LIFETIME * 2 / 3).await;
        let renewed = core
            .pki
            .issue_server_cert(&names)
            .map_err(|e| e.to_string())
            .and_then(|cert| {
                transport::server_tls_config(&cert.chain_pem, &cert.key_pem, core.pki.ca_pem())
                    .map_err(|e| e.to_string())
            });
        match renewed {
            Ok(config) => {
                *tls.write().unwrap_or_else(|e| e.into_inner()) = config;
                tracing::info!("server certificate re-issued");
            }
            Err(e) => tracing::error!(error = %e, "cannot re-issue the server certificate"),
        }
    }
}

impl RunningCoordinator {
    /// The coordinator's operations (tests and embedded modes call these).
    pub fn core(&self) -> Arc<Coordinator> {
        self.core.clone()
    }

    /// Stops accepting, ends sessions and waits (a bounded time) for the
    /// open connections to close.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        self.renewal.abort();
        // First: new tokens stop naming a coordinator that is going away.
        if let Some(membership) = self.membership.take() {
            membership.leave().await;
        }
        self.core.registry.kill_all(tonic::Status::unavailable(
            "the coordinator is shutting down",
        ));
        let _ = self.shutdown.send(true);
        for task in self.sweeps.drain(..) {
            // The scheduler stops between wakes; the outbox between POSTs.
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        if let Some(http) = self.http.take() {
            let _ = http.await;
        }
        let _ = (&mut self.server).await;
        // Every connection holds a permit until it is gone.
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.connections.acquire_many(all)).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_advertises_loopback() {
        let (names, addrs, local) = names_and_addrs("0.0.0.0:7443".parse().unwrap(), &[]);
        assert!(names.contains(&"127.0.0.1".to_string()));
        assert_eq!(addrs.last().unwrap(), "127.0.0.1:7443");
        assert_eq!(local, "127.0.0.1:7443");
    }

    #[test]
    fn advertised_names_are_covered_and_carried() {
        let (names, addrs, _) = names_and_addrs(
            "127.0.0.1:7443".parse().unwrap(),
            &["vantage.example.com".into(), "203.0.113.9:9443".into()],
        );
        assert!(names.contains(&"vantage.example.com".to_string()));
        assert!(names.contains(&"203.0.113.9".to_string()));
        assert_eq!(addrs, vec!["vantage.example.com:7443", "203.0.113.9:9443"]);
    }
}
