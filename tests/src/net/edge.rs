//! The lab's edge (CDN) simulator (DESIGN §8): a plain HTTP/1.1 front that
//! pulls every request from one origin with a [`CdnProfile`]'s pull headers
//! and origin-response timeout, and answers the 52x codes the way the
//! profile's CDN does when the pull fails (the seed's 520/524 guide):
//!
//! | pull outcome | status |
//! |---|---|
//! | connect refused (or any other connect error) | 521 |
//! | connect timeout | 522 |
//! | no response head within the origin timeout | 524 |
//! | reset, empty reply, invalid HTTP | 520 |
//! | TLS handshake failure (or timeout) | 525 |
//! | invalid certificate, with [`EdgeBuilder::verify_origin`] | 526 |
//! | the edge could not even open its pull socket | 502 |
//!
//! Every response, pulled or generated, carries the profile's request id
//! header and `X-Cache: MISS`, so a probe can always name the pull it caused.
//! Failures are classified from typed errors (`io::ErrorKind`, hyper's error
//! classes, `rustls::Error`), never from message text.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsConnector;
use vantage_proto::cdn::CdnProfile;

/// The default connect timeout of a pull (past it: 522).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1): never
/// copied across the edge in either direction.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The body type of every edge response: a pulled body streams through,
/// a generated one is a small in-memory page.
type EdgeBody = BoxBody<Bytes, hyper::Error>;

/// Configures and starts an [`Edge`].
#[derive(Debug, Clone)]
pub struct EdgeBuilder {
    profile: CdnProfile,
    origin: SocketAddr,
    origin_tls: bool,
    verify_origin: bool,
    origin_ca_pem: Option<String>,
    origin_timeout: Duration,
    connect_timeout: Duration,
    listen: Vec<IpAddr>,
    broken: Vec<(IpAddr, u16)>,
    source_ip: Option<IpAddr>,
}

impl EdgeBuilder {
    /// An edge for `profile` pulling from `origin` over plain HTTP, with the
    /// profile's origin timeout, a 5 s connect timeout, listening on
    /// 127.0.0.1.
    pub fn new(profile: CdnProfile, origin: SocketAddr) -> Self {
        EdgeBuilder {
            profile,
            origin,
            origin_tls: false,
            verify_origin: false,
            origin_ca_pem: None,
            origin_timeout: profile.edge_timeout(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            listen: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            broken: Vec::new(),
            source_ip: None,
        }
    }

    /// Pulls over HTTPS. The origin's certificate is not verified unless
    /// [`EdgeBuilder::verify_origin`] is on (like a CDN's "full" rather than
    /// "strict" mode); a handshake failure answers 525.
    pub fn origin_tls(mut self, on: bool) -> Self {
        self.origin_tls = on;
        self
    }

    /// Verifies the origin's certificate (against [`EdgeBuilder::origin_ca`]
    /// only: the lab never trusts the system roots); an invalid certificate
    /// answers 526.
    pub fn verify_origin(mut self, on: bool) -> Self {
        self.verify_origin = on;
        self
    }

    /// The CA (PEM) that [`EdgeBuilder::verify_origin`] trusts, typically
    /// [`crate::fixture::Fixture::ca_pem`].
    pub fn origin_ca(mut self, pem: impl Into<String>) -> Self {
        self.origin_ca_pem = Some(pem.into());
        self
    }

    /// How long the edge waits for the origin's response head (past it:
    /// 524). Defaults to the profile's [`CdnProfile::edge_timeout`]; tests
    /// scale it down.
    pub fn origin_timeout(mut self, d: Duration) -> Self {
        self.origin_timeout = d;
        self
    }

    /// How long the edge waits for the pull's TCP connect (past it: 522) and
    /// for the TLS handshake (past it: 525).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The addresses to listen on, one listener (port 0) per address, so a
    /// test can give each region its own edge address. Defaults to
    /// `[127.0.0.1]`.
    pub fn listen(mut self, addrs: Vec<IpAddr>) -> Self {
        self.listen = addrs;
        self
    }

    /// Makes the listener on `addr` answer `status` itself without pulling:
    /// one bad edge node (the `edge_fault` finding).
    pub fn broken_for(mut self, addr: IpAddr, status: u16) -> Self {
        self.broken.push((addr, status));
        self
    }

    /// Binds every pull connection to this source address, so an origin
    /// allowlist can refuse the edge's pull IP.
    pub fn source_ip(mut self, ip: IpAddr) -> Self {
        self.source_ip = Some(ip);
        self
    }

    /// Binds every listen address (port 0) and starts serving.
    pub async fn spawn(self) -> anyhow::Result<Edge> {
        anyhow::ensure!(!self.listen.is_empty(), "an edge needs a listen address");
        let tls = if self.origin_tls {
            Some(TlsConnector::from(Arc::new(client_config(
                self.verify_origin,
                self.origin_ca_pem.as_deref(),
            )?)))
        } else {
            None
        };
        let pulls = Arc::new(AtomicU64::new(0));
        let ctx = Arc::new(Ctx {
            profile: self.profile,
            origin: self.origin,
            tls,
            verify_origin: self.verify_origin,
            origin_timeout: self.origin_timeout,
            connect_timeout: self.connect_timeout,
            source_ip: self.source_ip,
            pulls: pulls.clone(),
        });
        let mut listeners = Vec::with_capacity(self.listen.len());
        let mut addrs = Vec::with_capacity(self.listen.len());
        for ip in &self.listen {
            let listener = TcpListener::bind((*ip, 0))
                .await
                .with_context(|| format!("edge: binding {ip}:0"))?;
            addrs.push(listener.local_addr()?);
            let broken = self
                .broken
                .iter()
                .rev() // the last broken_for for an address wins
                .find(|(addr, _)| addr == ip)
                .map(|&(_, status)| status);
            listeners.push((listener, broken));
        }
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(listeners, ctx, stop_rx));
        Ok(Edge {
            addrs,
            pulls,
            stop,
            task,
        })
    }
}

/// A running edge simulator. Dropping it leaves its task running until the
/// runtime ends; prefer [`Edge::stop`].
#[derive(Debug)]
pub struct Edge {
    addrs: Vec<SocketAddr>,
    pulls: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Edge {
    /// The bound addresses, in the order given to [`EdgeBuilder::listen`].
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// How many pulls (connect attempts to the origin) the edge has made.
    pub fn pulls(&self) -> u64 {
        self.pulls.load(Ordering::SeqCst)
    }

    /// Stops serving (open connections are dropped); a panic inside the edge
    /// is re-raised here.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        reraise_panic(self.task.await);
    }
}

/// What every connection of one edge shares.
struct Ctx {
    profile: CdnProfile,
    origin: SocketAddr,
    tls: Option<TlsConnector>,
    verify_origin: bool,
    origin_timeout: Duration,
    connect_timeout: Duration,
    source_ip: Option<IpAddr>,
    pulls: Arc<AtomicU64>,
}

/// Runs one accept loop per listener until `stop` turns true; a panic in any
/// of them (or in a connection) is re-raised from this task so that
/// [`Edge::stop`] surfaces it.
async fn serve(
    listeners: Vec<(TcpListener, Option<u16>)>,
    ctx: Arc<Ctx>,
    mut stop: watch::Receiver<bool>,
) {
    let mut loops = JoinSet::new();
    for (listener, broken) in listeners {
        loops.spawn(accept_loop(listener, broken, ctx.clone()));
    }
    loop {
        tokio::select! {
            changed = stop.changed() => {
                // A dropped sender means nobody can stop us any more: stop now.
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            Some(done) = loops.join_next() => reraise_panic(done),
        }
    }
    // Dropping an accept loop drops its JoinSet, which aborts its connections.
    loops.abort_all();
    while let Some(done) = loops.join_next().await {
        reraise_panic(done);
    }
}

fn reraise_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Accepts connections on one listen address for as long as the edge runs.
async fn accept_loop(listener: TcpListener, broken: Option<u16>, ctx: Arc<Ctx>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                // A failed accept (e.g. the client already gave up) concerns
                // that client only; the listener itself is still fine.
                let Ok((tcp, peer)) = accepted else { continue };
                connections.spawn(front_connection(tcp, peer.ip(), broken, ctx.clone()));
            }
            Some(done) = connections.join_next(), if !connections.is_empty() => reraise_panic(done),
        }
    }
}

/// Serves one client connection with hyper's HTTP/1.1 server.
async fn front_connection(tcp: TcpStream, client_ip: IpAddr, broken: Option<u16>, ctx: Arc<Ctx>) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(request, client_ip, broken, &ctx).await) }
    });
    // Client-side I/O errors (curl hanging up) are the client's business.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), service)
        .await;
}

/// One client request: answer it as a broken node, or pull it.
async fn handle(
    request: Request<Incoming>,
    client_ip: IpAddr,
    broken: Option<u16>,
    ctx: &Ctx,
) -> Response<EdgeBody> {
    let id = request_id(ctx.profile);
    let mut response = match broken {
        Some(status) => generated(status, "The edge node failed"),
        None => match pull(ctx, request, client_ip, &id).await {
            Ok(response) => forwarded(response),
            Err(failure) => generated(failure.status(), failure.title()),
        },
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        // Replaces any id the origin sent: the edge's id is the one a person
        // hands to the CDN's support.
        headers.insert(ctx.profile.request_id_header(), value);
    }
    headers.insert("x-cache", HeaderValue::from_static("MISS"));
    response
}

/// A fresh request id in the profile's style: a Cloudflare ray is 16 hex
/// digits and a location code, the others a UUID.
fn request_id(profile: CdnProfile) -> String {
    let uuid = uuid::Uuid::new_v4();
    match profile {
        CdnProfile::Cloudflare => format!("{}-LAB", &uuid.simple().to_string()[..16]),
        CdnProfile::EdgeOne | CdnProfile::Generic => uuid.to_string(),
    }
}

/// Why a pull failed; each maps to the status the CDN answers.
#[derive(Debug)]
enum PullFailure {
    /// The edge could not open its own socket (e.g. bind to the source IP).
    Local,
    /// The connect failed (refused, unreachable, ...).
    ConnectFailed,
    /// The connect did not complete in time.
    ConnectTimeout,
    /// The TLS handshake failed or timed out.
    TlsHandshake,
    /// The origin's certificate was refused (only with verification on).
    TlsCertificate,
    /// No response head within the origin timeout.
    OriginTimeout,
    /// Reset, empty reply or invalid HTTP.
    BadResponse(&'static str),
}

impl PullFailure {
    fn status(&self) -> u16 {
        match self {
            PullFailure::Local => 502,
            PullFailure::ConnectFailed => 521,
            PullFailure::ConnectTimeout => 522,
            PullFailure::TlsHandshake => 525,
            PullFailure::TlsCertificate => 526,
            PullFailure::OriginTimeout => 524,
            PullFailure::BadResponse(_) => 520,
        }
    }

    /// The page title, in the words the real CDNs use.
    fn title(&self) -> &'static str {
        match self {
            PullFailure::Local => "Bad gateway",
            PullFailure::ConnectFailed => "Web server is down",
            PullFailure::ConnectTimeout => "Connection timed out",
            PullFailure::TlsHandshake => "SSL handshake failed",
            PullFailure::TlsCertificate => "Invalid SSL certificate",
            PullFailure::OriginTimeout => "A timeout occurred",
            PullFailure::BadResponse(what) => what,
        }
    }
}

/// Connects to the origin (from the source IP, over TLS if configured),
/// sends the request with the profile's pull headers and waits for the
/// response head.
async fn pull(
    ctx: &Ctx,
    request: Request<Incoming>,
    client_ip: IpAddr,
    id: &str,
) -> Result<Response<Incoming>, PullFailure> {
    let (parts, body) = request.into_parts();
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| ctx.origin.to_string());
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut headers = end_to_end(&parts.headers);
    if let Ok(value) = HeaderValue::from_str(&host) {
        headers.insert(http::header::HOST, value);
    }
    for (name, value) in ctx.profile.pull_headers(&client_ip.to_string(), "http", id) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    let mut outgoing = Request::new(body);
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = target
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    *outgoing.headers_mut() = headers;

    ctx.pulls.fetch_add(1, Ordering::SeqCst);
    let tcp = connect(ctx).await?;
    match &ctx.tls {
        None => exchange(tcp, outgoing, ctx.origin_timeout).await,
        Some(connector) => {
            let tls = tls_handshake(ctx, connector, tcp, &host).await?;
            exchange(tls, outgoing, ctx.origin_timeout).await
        }
    }
}

/// The TCP connect of a pull, bound to the source IP when one is set.
async fn connect(ctx: &Ctx) -> Result<TcpStream, PullFailure> {
    let socket = match ctx.origin {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|_| PullFailure::Local)?;
    if let Some(ip) = ctx.source_ip {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|_| PullFailure::Local)?;
    }
    match tokio::time::timeout(ctx.connect_timeout, socket.connect(ctx.origin)).await {
        Err(_) => Err(PullFailure::ConnectTimeout),
        // The kernel's own connect timeout is a 522 too; anything else
        // (refused, unreachable) means nothing answers there: 521.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => Err(PullFailure::ConnectTimeout),
        Ok(Err(_)) => Err(PullFailure::ConnectFailed),
        Ok(Ok(tcp)) => Ok(tcp),
    }
}

/// The TLS handshake of a pull, with SNI from the Host header (without its
/// port); a refused certificate is told apart from every other failure by
/// the `rustls::Error` inside the I/O error.
async fn tls_handshake(
    ctx: &Ctx,
    connector: &TlsConnector,
    tcp: TcpStream,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, PullFailure> {
    let name = host_without_port(host);
    let server_name = ServerName::try_from(name.to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(ctx.origin.ip().into()));
    match tokio::time::timeout(ctx.connect_timeout, connector.connect(server_name, tcp)).await {
        Err(_) => Err(PullFailure::TlsHandshake),
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => {
            let rustls_error = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            let certificate = matches!(
                rustls_error,
                Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
            );
            if certificate && ctx.verify_origin {
                Err(PullFailure::TlsCertificate)
            } else {
                Err(PullFailure::TlsHandshake)
            }
        }
    }
}

/// `host`, `host:port`, `[v6]:port` → the name for SNI.
fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// One HTTP/1.1 exchange with hyper's connection-level client: the response
/// head must arrive within `origin_timeout`; the body then streams to the
/// client while the connection task keeps running.
async fn exchange<S>(
    io: S,
    request: Request<Incoming>,
    origin_timeout: Duration,
) -> Result<Response<Incoming>, PullFailure>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| PullFailure::BadResponse(classify(&e)))?;
    // The connection ends with the origin's body (or its failure, which the
    // client then sees as a cut-short body, as with a real CDN).
    tokio::spawn(async move {
        let _ = connection.await;
    });
    match tokio::time::timeout(origin_timeout, sender.send_request(request)).await {
        Err(_) => Err(PullFailure::OriginTimeout),
        Ok(Err(e)) => Err(PullFailure::BadResponse(classify(&e))),
        Ok(Ok(response)) => Ok(response),
    }
}

/// Names what went wrong with the origin's answer, from hyper's error class
/// and the I/O error underneath; every one of them is a 520.
fn classify(e: &hyper::Error) -> &'static str {
    let io_kind = std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    if matches!(
        io_kind,
        Some(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
    ) {
        "Connection reset by the origin"
    } else if e.is_incomplete_message() {
        "Empty reply from the origin"
    } else if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        "Invalid response from the origin"
    } else {
        "Web server returned an unknown error"
    }
}

/// The request or response headers minus the hop-by-hop ones (and those the
/// `Connection` header names).
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let lower = name.as_str();
        if HOP_BY_HOP.contains(&lower) || named.iter().any(|n| n == lower) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The client's copy of a pulled response: status, end-to-end headers and
/// the streamed body.
fn forwarded(response: Response<Incoming>) -> Response<EdgeBody> {
    let (parts, body) = response.into_parts();
    let mut out = Response::new(body.boxed());
    *out.status_mut() = parts.status;
    *out.headers_mut() = end_to_end(&parts.headers);
    out
}

/// A response the edge makes itself: a small HTML page naming the code, as
/// the real CDNs do ("524: A timeout occurred").
fn generated(status: u16, title: &str) -> Response<EdgeBody> {
    let page = format!(
        "<!DOCTYPE html>\n<html><head><title>{status}: {title}</title></head>\n\
         <body><h1>{status}: {title}</h1><p>vantage lab edge</p></body></html>\n"
    );
    let mut response = Response::new(
        Full::new(Bytes::from(page))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// The pull's TLS client configuration: verifying against `ca_pem` only, or
/// accepting any certificate (handshake signatures are still checked).
fn client_config(verify: bool, ca_pem: Option<&str>) -> anyhow::Result<ClientConfig> {
    let provider = vantage_support::tls::crypto_provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = if verify {
        let mut roots = RootCertStore::empty();
        if let Some(pem) = ca_pem {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(cert.context("edge: parsing the origin CA")?)
                    .context("edge: adding the origin CA")?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(vantage_support::tls::AnyCertificate::new(
                provider,
            )))
            .with_no_client_auth()
    };
    // The pull speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_without_port("origin.lab.test:8080"), "origin.lab.test");
        assert_eq!(host_without_port("origin.lab.test"), "origin.lab.test");
        assert_eq!(host_without_port("[::1]:443"), "::1");
        assert_eq!(host_without_port("127.0.0.1:80"), "127.0.0.1");
    }

    #[test]
    fn request_ids_follow_the_profile() {
        let ray = request_id(CdnProfile::Cloudflare);
        assert!(ray.ends_with("-LAB") && ray.len() == 20, "{ray}");
        assert_eq!(request_id(CdnProfile::EdgeOne).len(), 36);
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        let out = end_to_end(&headers);
        assert_eq!(out.len(), 1);
        assert!(out.contains_key("x-kept"));
    }
}
