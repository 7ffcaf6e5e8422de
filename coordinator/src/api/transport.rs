//! The coordinator's listeners, hardened against peers that never
//! authenticate (issue #9): our own accept loops instead of tonic's, so that
//!
//! - the number of open connections is capped (beyond the cap a connection is
//!   accepted and closed at once, so the kernel backlog never fills);
//! - an accept error (EMFILE, ENFILE, …) backs off with a log line instead of
//!   spinning;
//! - the TLS handshake has a deadline;
//! - a connection with no open request for [`TransportLimits::idle_timeout`]
//!   is closed (this is the HTTP/2 "first request" timeout too: a peer that
//!   completes TLS and then sends nothing, half a preface or half a header
//!   block is dropped);
//! - every gRPC message is bounded per method by the length its 5-byte frame
//!   header declares, refused with `RESOURCE_EXHAUSTED` before anything is
//!   buffered ([`LimitedBody`]), and unary request bodies must arrive within
//!   the idle timeout;
//! - ControlService calls without the admin credential are refused before
//!   their body is read (the service's own interceptor,
//!   [`crate::api::control_service::AdminCheck`], checks again behind this).
//!
//! Tonic's router still dispatches the calls; this module hands it the peer
//! certificates through tonic's `TlsConnectInfo`, so `Request::peer_certs`
//! keeps working for mTLS.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tonic::service::Routes;
use tonic::transport::server::Connected as _;
use tonic::Status;
use tower::ServiceExt as _;

use crate::api::control_service::check_admin;
use crate::coordinator::{AgentView, Coordinator};
use crate::store::AgentRole;

/// Largest Enroll or Renew request: a CSR (at most 16 KiB, see `pki`), a
/// name, 32 labels of at most 256 bytes and a version fit in well under this.
pub const ENROLL_MESSAGE_LIMIT: u32 = 64 * 1024;
/// Largest first message of a session (Hello: name, region, labels, version).
pub const HELLO_MESSAGE_LIMIT: u32 = 64 * 1024;
/// Largest later session message. The agent sends results in batches of 256
/// (`agent/src/runner.rs`); a result carries at most 16 KiB of header
/// evidence (`MAX_HEADER_EVIDENCE`) plus URL, title, TLS and timing fields
/// (a few KiB), so a full batch stays under 6 MiB: 16 MiB leaves room.
pub const SESSION_MESSAGE_LIMIT: u32 = 16 * 1024 * 1024;
/// Largest ControlService request (a plan or a campaign target); only read
/// once the admin credential checked out.
pub const CONTROL_MESSAGE_LIMIT: u32 = 4 * 1024 * 1024;
/// HTTP/2 flow-control window per stream and per connection: what one peer
/// can make the server hold in receive buffers before the application reads
/// (1 MiB per connection in all). hyper's defaults, stated here: a smaller
/// stream window did not measurably save memory (oversized messages are
/// refused on their header) and risks slowing result ingest.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Largest request header block (HTTP/2 and HTTP/1).
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Most Enroll/Renew requests being read at once, over all connections:
/// with [`ENROLL_MESSAGE_LIMIT`] this bounds what unauthenticated callers
/// can make the coordinator buffer to 64 MiB; beyond it a call is refused at
/// once with `RESOURCE_EXHAUSTED`.
pub const MAX_ENROLLS_IN_FLIGHT: usize = 1024;

/// Connection limits and timeouts of both listeners (defaults in code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportLimits {
    /// Deadline for a TLS handshake on the gRPC listener.
    pub handshake_timeout: Duration,
    /// A connection with no open request for this long is closed; a request
    /// body (other than a session's stream) must arrive within it too.
    pub idle_timeout: Duration,
    /// Most open gRPC connections; more are accepted and closed at once.
    pub max_connections: usize,
    /// Most open /healthz connections.
    pub max_http_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_streams: u32,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_http_connections: 256,
            max_streams: 32,
        }
    }
}

impl TransportLimits {
    /// Checks the ranges (before any port is bound).
    pub fn validate(&self) -> Result<(), String> {
        let range = Duration::from_millis(100)..=Duration::from_secs(600);
        if !range.contains(&self.handshake_timeout) {
            return Err("--handshake-timeout must be between 100ms and 10m".into());
        }
        if !range.contains(&self.idle_timeout) {
            return Err("--idle-timeout must be between 100ms and 10m".into());
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err("--max-connections must be between 1 and 1000000".into());
        }
        if !(1..=65_536).contains(&self.max_http_connections) {
            return Err("the /healthz connection cap must be between 1 and 65536".into());
        }
        if !(2..=1000).contains(&self.max_streams) {
            return Err("--max-streams must be between 2 and 1000".into());
        }
        Ok(())
    }
}

/// The gRPC listener's TLS configuration, replaceable while running (the
/// server certificate is re-issued before it expires).
pub type SharedTls = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// Builds the TLS server configuration: the server chain, and client
/// certificates optional but, when presented, verified against the CA.
pub fn server_tls_config(
    chain_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem_err = |e: rustls::pki_types::pem::Error| rustls::Error::General(e.to_string());
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem_err)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.map_err(pem_err)?)?;
    }
    let provider = vantage_support::tls::crypto_provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A log line at most once per second for a repeated condition.
#[derive(Debug, Default)]
struct Throttle(Mutex<Option<Instant>>);

impl Throttle {
    fn ready(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match *last {
            Some(at) if now.duration_since(at) < Duration::from_secs(1) => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

/// Accepts connections until `shutdown` turns true, capping them with
/// `permits` and backing off on accept errors; `handle` serves each one.
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let over_cap = Throttle::default();
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(handle(stream, peer, permit));
                    }
                    Err(_) => {
                        // Closing at once frees the descriptor and tells the
                        // peer; leaving it in the backlog would not.
                        drop(stream);
                        if over_cap.ready() {
                            tracing::warn!(
                                listener = name,
                                %peer,
                                "connection limit reached: closing new connections"
                            );
                        }
                    }
                }
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: the listener stays readable, so
                // retrying at once would spin. Back off, 50 ms doubling to 1 s.
                backoff = (backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
                tracing::warn!(listener = name, error = %e, retry_in = ?backoff, "accept failed; backing off");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
        }
    }
}

/// Requests open on one connection and when the last one ended.
#[derive(Debug)]
struct Activity {
    open: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            open: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        })
    }

    fn start(self: &Arc<Self>) -> ActivityGuard {
        self.open.fetch_add(1, Ordering::SeqCst);
        ActivityGuard(self.clone())
    }

    /// How long the connection has had no open request (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.open.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

/// Marks one request open until dropped (with its response body).
#[derive(Debug)]
struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as open until it ends.
struct TrackedBody {
    inner: tonic::body::Body,
    _guard: Option<ActivityGuard>,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a method's request body is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BodyRule {
    /// Largest first message.
    first: u32,
    /// Largest later message.
    rest: u32,
    /// Whether the whole body must arrive within the idle timeout (unary).
    deadline: bool,
    /// Whether the admin credential must be present first.
    admin: bool,
}

fn is_enroll(path: &str) -> bool {
    matches!(
        path,
        "/vantage.v1.AgentService/Enroll" | "/vantage.v1.AgentService/Renew"
    )
}

fn rule_for(path: &str) -> BodyRule {
    let unary = |limit, admin| BodyRule {
        first: limit,
        rest: 0,
        deadline: true,
        admin,
    };
    match path {
        p if is_enroll(p) => unary(ENROLL_MESSAGE_LIMIT, false),
        "/vantage.v1.AgentService/Session" => BodyRule {
            first: HELLO_MESSAGE_LIMIT,
            rest: SESSION_MESSAGE_LIMIT,
            deadline: false,
            admin: false,
        },
        p if p.starts_with("/vantage.v1.ControlService/") => unary(CONTROL_MESSAGE_LIMIT, true),
        // Unknown methods are answered `UNIMPLEMENTED` without reading a body.
        _ => unary(0, false),
    }
}

/// The gRPC framing walk of one request body: where the next 5-byte
/// message header starts and what each declared length may be.
#[derive(Debug, Clone)]
struct Framing {
    rule: BodyRule,
    messages: u64,
    header: [u8; 5],
    header_len: usize,
    remaining: u64,
}

impl Framing {
    fn new(rule: BodyRule) -> Framing {
        Framing {
            rule,
            messages: 0,
            header: [0; 5],
            header_len: 0,
            remaining: 0,
        }
    }

    /// Walks `data`, checking each declared length as its header completes.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.remaining -= skip as u64;
                data = &data[skip..];
                continue;
            }
            let take = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data = &data[take..];
            if self.header_len < 5 {
                break;
            }
            self.header_len = 0;
            let declared = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]);
            let limit = if self.messages == 0 {
                self.rule.first
            } else {
                self.rule.rest
            };
            self.messages += 1;
            if declared > limit {
                return Err(Status::resource_exhausted(format!(
                    "message of {declared} bytes is over this method's limit of {limit} bytes"
                )));
            }
            self.remaining = u64::from(declared);
        }
        Ok(())
    }
}

/// A request body that refuses a gRPC message whose declared length is over
/// the method's bound as soon as its 5-byte header arrives, so nothing
/// larger is ever buffered by tonic's decoder.
pub struct LimitedBody {
    inner: Incoming,
    framing: Framing,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    failed: bool,
}

impl LimitedBody {
    fn new(inner: Incoming, rule: BodyRule, timeout: Duration) -> LimitedBody {
        LimitedBody {
            inner,
            framing: Framing::new(rule),
            deadline: rule.deadline.then(|| Box::pin(tokio::time::sleep(timeout))),
            failed: false,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        if let Some(deadline) = self.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                self.failed = true;
                return Poll::Ready(Some(Err(Status::deadline_exceeded(
                    "the request body did not arrive in time",
                ))));
            }
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.deadline = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.failed = true;
                Poll::Ready(Some(Err(Status::from_error(Box::new(e)))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    if let Err(status) = self.framing.scan(&data) {
                        self.failed = true;
                        return Poll::Ready(Some(Err(status)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Everything a gRPC connection needs.
#[derive(Clone)]
pub struct GrpcShared {
    /// The router with both services.
    pub routes: Routes,
    /// The TLS configuration (current server certificate).
    pub tls: SharedTls,
    /// The shared state (admin credential check).
    pub core: Arc<Coordinator>,
    /// Limits and timeouts.
    pub limits: TransportLimits,
    /// Turns true at shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Enroll/Renew calls in flight ([`MAX_ENROLLS_IN_FLIGHT`]).
    pub enrolls: Arc<Semaphore>,
}

impl std::fmt::Debug for GrpcShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcShared")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Serves one gRPC connection: TLS handshake with a deadline, then HTTP/2
/// until the peer leaves, the connection idles out or the server stops.
pub async fn serve_grpc_connection(
    shared: GrpcShared,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let config = shared.tls.read().unwrap_or_else(|e| e.into_inner()).clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = match tokio::time::timeout(shared.limits.handshake_timeout, acceptor.accept(stream))
        .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let info = tls.connect_info();
    let activity = Activity::new();
    let limits = shared.limits.clone();
    let routes = shared.routes.clone();
    let core = shared.core.clone();
    let enrolls = shared.enrolls.clone();
    let tracker = activity.clone();
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let guard = tracker.start();
        let routes = routes.clone();
        let info = info.clone();
        let core = core.clone();
        let enrolls = enrolls.clone();
        let timeout = limits.idle_timeout;
        async move {
            let (mut parts, body) = request.into_parts();
            let rule = rule_for(parts.uri.path());
            let refuse = |status: Status, guard| {
                let response = status.into_http::<tonic::body::Body>();
                Ok::<_, Infallible>(response.map(|inner| TrackedBody {
                    inner,
                    _guard: Some(guard),
                }))
            };
            // The same check as the service's own interceptor, made here so
            // that a caller without the credential cannot make us read (up to
            // CONTROL_MESSAGE_LIMIT of) its body.
            if rule.admin && check_admin(&core, &parts.headers).is_err() {
                return refuse(
                    Status::unauthenticated("missing or wrong admin credential"),
                    guard,
                );
            }
            // Held until the call is answered (its body has been read by then).
            let _enroll_slot = if is_enroll(parts.uri.path()) {
                match enrolls.try_acquire_owned() {
                    Ok(slot) => Some(slot),
                    Err(_) => {
                        tracing::warn!(source = %peer, "enroll refused: too many enrollments in progress");
                        return refuse(
                            Status::resource_exhausted(
                                "too many enrollments in progress; retry shortly",
                            ),
                            guard,
                        );
                    }
                }
            } else {
                None
            };
            parts.extensions.insert(info);
            let body = LimitedBody::new(body, rule, timeout);
            let response = match routes.oneshot(http::Request::from_parts(parts, body)).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|inner| TrackedBody {
                inner,
                _guard: Some(guard),
            }))
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(shared.limits.max_streams)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buf_size(1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(20));
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    drive(
        connection,
        activity,
        &shared.limits,
        shared.shutdown.clone(),
        peer,
    )
    .await;
}

/// Polls a connection, closing it gracefully once it idles out or at
/// shutdown, and dropping it if the graceful close does not finish.
async fn drive<C>(
    connection: hyper::server::conn::http2::Connection<
        TokioIo<tokio_rustls::server::TlsStream<TcpStream>>,
        C,
        TokioExecutor,
    >,
    activity: Arc<Activity>,
    limits: &TransportLimits,
    mut shutdown: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    C: hyper::service::HttpService<Incoming, ResBody = TrackedBody>,
    C::Future: Send + 'static,
{
    let mut connection = std::pin::pin!(connection);
    let tick = (limits.idle_timeout / 4).max(Duration::from_millis(25));
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.wait_for(|stop| *stop), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
                continue;
            }
        }
        match closing {
            Some(since) if since.elapsed() >= limits.idle_timeout => {
                tracing::debug!(%peer, "connection did not close in time; dropping it");
                return;
            }
            Some(_) => {}
            None if activity.idle_for() >= limits.idle_timeout => {
                tracing::debug!(%peer, "closing an idle connection");
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            None => {}
        }
    }
}

/// Serves one plain-HTTP connection (`/healthz`, and `GET /metrics` from
/// `core`'s metrics): one request per connection, its header read within the
/// idle timeout, the whole exchange within twice that.
pub async fn serve_http_connection(
    stream: TcpStream,
    core: Arc<Coordinator>,
    limits: TransportLimits,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let core = core.clone();
        async move {
            let (status, content_type, body) = match request.uri().path() {
                "/healthz" => (
                    hyper::StatusCode::OK,
                    "text/plain",
                    Bytes::from_static(b"ok\n"),
                ),
                "/metrics" if request.method() == hyper::Method::GET => {
                    match core.list_agents().await {
                        Ok(agents) => (
                            hyper::StatusCode::OK,
                            crate::metrics::CONTENT_TYPE,
                            Bytes::from(core.metrics().encode(&agents_connected(&agents))),
                        ),
                        Err(e) => (
                            hyper::StatusCode::INTERNAL_SERVER_ERROR,
                            "text/plain",
                            Bytes::from(format!("cannot list the agents: {}\n", e.message())),
                        ),
                    }
                }
                "/metrics" => (
                    hyper::StatusCode::METHOD_NOT_ALLOWED,
                    "text/plain",
                    Bytes::from_static(b"method not allowed\n"),
                ),
                _ => (
                    hyper::StatusCode::NOT_FOUND,
                    "text/plain",
                    Bytes::from_static(b"not found\n"),
                ),
            };
            hyper::Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(Full::new(body))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_buf_size(MAX_HEADER_LIST as usize)
        .keep_alive(false);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(limits.idle_timeout * 2, connection).await;
}

/// `vantage_agents_connected`'s map: per region, the connected, unrevoked
/// agents of role `agent`; the regions of enrolled, unrevoked agents with
/// none connected appear with 0.
fn agents_connected(agents: &[AgentView]) -> BTreeMap<String, u64> {
    let mut map = BTreeMap::new();
    for agent in agents {
        if agent.record.revoked || agent.record.role != AgentRole::Agent {
            continue;
        }
        let count = map.entry(agent.record.region.clone()).or_insert(0);
        if agent.connected {
            *count += 1;
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u32) -> Vec<u8> {
        let mut h = vec![0u8];
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    fn rule(first: u32, rest: u32) -> BodyRule {
        BodyRule {
            first,
            rest,
            deadline: false,
            admin: false,
        }
    }

    #[test]
    fn rules_per_method() {
        let enroll = rule_for("/vantage.v1.AgentService/Enroll");
        assert_eq!(enroll.first, ENROLL_MESSAGE_LIMIT);
        assert!(enroll.deadline && !enroll.admin);
        let session = rule_for("/vantage.v1.AgentService/Session");
        assert_eq!(
            (session.first, session.rest),
            (HELLO_MESSAGE_LIMIT, SESSION_MESSAGE_LIMIT)
        );
        assert!(!session.deadline);
        assert!(rule_for("/vantage.v1.ControlService/ListAgents").admin);
        assert_eq!(rule_for("/other/Thing").first, 0);
    }

    #[test]
    fn limits_validate() {
        assert!(TransportLimits::default().validate().is_ok());
        let bad = TransportLimits {
            max_connections: 0,
            ..TransportLimits::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn declared_length_over_the_first_limit_is_refused_on_its_header() {
        let mut framing = Framing::new(rule(100, 1000));
        // The header alone is enough to refuse: no payload needed.
        let err = framing.scan(&header(101)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }

    #[test]
    fn messages_are_walked_across_chunk_boundaries() {
        let mut framing = Framing::new(rule(10, 50));
        let mut wire = header(10);
        wire.extend_from_slice(&[7; 10]);
        wire.extend(header(50));
        wire.extend_from_slice(&[7; 50]);
        wire.extend(header(51));
        // Feed it 3 bytes at a time: headers split across chunks.
        let mut result = Ok(());
        for chunk in wire.chunks(3) {
            result = framing.scan(chunk);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(framing.messages, 3);
        assert_eq!(result.unwrap_err().code(), tonic::Code::ResourceExhausted);
    }

    #[test]
    fn later_messages_use_the_later_limit() {
        let mut framing = Framing::new(rule(10, 0));
        let mut wire = header(10);
        wire.extend_from_slice(&[1; 10]);
        assert!(framing.scan(&wire).is_ok());
        assert!(framing.scan(&header(1)).is_err());
    }

    #[test]
    fn agents_connected_counts_connected_agents_per_region() {
        let view =
            |name: &str, region: &str, role: AgentRole, connected: bool, revoked: bool| AgentView {
                record: crate::store::AgentRecord {
                    agent_id: format!("id-{name}"),
                    name: name.into(),
                    region: region.into(),
                    labels: Default::default(),
                    version: "0".into(),
                    role,
                    cert_sha256: String::new(),
                    enrolled_at_ms: 0,
                    last_seen_ms: None,
                    remote_addr: None,
                    revoked,
                    spool_bytes: 0,
                    holder: None,
                },
                connected,
                remote_addr: None,
                health: None,
            };
        let agents = [
            view("a", "eu", AgentRole::Agent, true, false),
            view("b", "eu", AgentRole::Agent, true, false),
            view("c", "eu", AgentRole::Agent, false, false),
            view("d", "us", AgentRole::Agent, false, false),
            view("w", "eu", AgentRole::Witness, true, false),
            view("w2", "ap", AgentRole::Witness, true, false),
            view("r", "sa", AgentRole::Agent, false, true),
        ];
        let map = agents_connected(&agents);
        let expected: BTreeMap<String, u64> = [("eu".to_string(), 2), ("us".to_string(), 0)]
            .into_iter()
            .collect();
        assert_eq!(map, expected);
    }
}
