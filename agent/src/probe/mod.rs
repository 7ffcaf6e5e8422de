//! The probe engine — the curl of vantage. One request of a probe spec runs
//! as explicit phases on a socket this module connects itself: resolve (or
//! take the `--resolve`-style override), connect (from `--bind-ip`), TLS
//! (rustls; the chain is always captured, then verified), then HTTP/1.1 on
//! the engine's own one-request reader (`h1`) or HTTP/2 (by ALPN) on
//! hyper's connection-level client. Timings are
//! cumulative from the start with curl's meanings, and every failure is
//! named from the socket, TLS and HTTP events that a [`record::Recorder`]
//! saw, with the exit code curl gives for the same failure.

pub mod classify;
pub mod dns;
pub mod evidence;
mod h1;
pub mod head;
pub mod rate;
pub mod record;
#[cfg(test)]
mod testing;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use rustls::pki_types::ServerName;
use sha2::{Digest, Sha256};
use tokio::net::{TcpSocket, TcpStream};
use vantage_proto::domain::{Outcome, Stage};
use vantage_proto::pb;
use vantage_proto::spec::{
    timeout as ms, DEFAULT_BODY_STALL, DEFAULT_CONNECT, DEFAULT_FIRST_BYTE, DEFAULT_TLS,
    DEFAULT_TOTAL,
};
use vantage_support::addr::parse_ip_port;
use vantage_support::time::now_ms;

use crate::safety::TargetPolicy;
use classify::{Failure, HttpFault};
use record::{Events, Recorder};

/// Body bytes kept as evidence when the spec does not say.
const DEFAULT_BODY_CAPTURE: usize = 1024;
/// Raw reply bytes kept to explain a malformed answer.
const RAW_CAPTURE: usize = 4096;

/// Agent-side limits that a plan cannot raise.
#[derive(Debug, Clone, Copy)]
pub struct ProbeLimits {
    /// Largest response head accepted (curl's limit is 100 KiB).
    pub max_header_bytes: usize,
    /// Body bytes read at most; the rest is not downloaded.
    pub max_body_bytes: u64,
    /// Body bytes kept as evidence at most.
    pub max_body_capture: usize,
    /// Requests per second to any one target address (None: no cap).
    pub max_rate_per_target: Option<u32>,
    /// Redirects followed at most, whatever a spec asks for.
    pub max_redirects: u32,
}

/// Requests per second to one target address unless configured otherwise.
pub const DEFAULT_MAX_RATE_PER_TARGET: u32 = 200;

impl Default for ProbeLimits {
    fn default() -> Self {
        ProbeLimits {
            max_header_bytes: 100 * 1024,
            max_body_bytes: 64 * 1024 * 1024,
            max_body_capture: 64 * 1024,
            max_rate_per_target: Some(DEFAULT_MAX_RATE_PER_TARGET),
            max_redirects: 10,
        }
    }
}

/// Runs single requests. Cheap to clone: it holds only settings.
#[derive(Debug, Clone)]
pub struct ProbeEngine {
    policy: TargetPolicy,
    bind_ip: Option<IpAddr>,
    limits: ProbeLimits,
    tls: Arc<std::sync::OnceLock<Result<tls::ProbeTls, String>>>,
    extra_ca_pem: Option<Arc<str>>,
    rate: Option<Arc<rate::RateLimiter>>,
    dns_server: Option<SocketAddr>,
}

impl Default for ProbeEngine {
    fn default() -> Self {
        ProbeEngine::new(TargetPolicy::default(), None)
    }
}

/// A probe engine setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProbeSetupError {
    /// The extra CA file is not usable PEM.
    #[error("CA certificates: {0}")]
    Ca(String),
}

/// One request of a spec: which attempt and which burst slot.
#[derive(Debug, Clone, Copy)]
pub struct RequestSlot {
    /// 1-based attempt number.
    pub attempt: u32,
    /// 0-based index inside the burst.
    pub burst_index: u32,
    /// The end of the plan's time budget, if it has one: the request's
    /// total limit never reaches past it.
    pub deadline: Option<Instant>,
}

fn micros(since: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(since).as_micros()).unwrap_or(u64::MAX)
}

/// The nonce of one request: the spec's base nonce plus the slot, so that
/// every request is a cache miss and the witness can tell them apart.
pub fn request_nonce(spec: &pb::ProbeSpec, slot: RequestSlot) -> String {
    let base = if spec.nonce.is_empty() {
        uuid::Uuid::new_v4().simple().to_string()
    } else {
        spec.nonce.clone()
    };
    format!("{base}-{}-{}", slot.attempt, slot.burst_index)
}

fn with_nonce(path_and_query: &str, param: &str, nonce: &str) -> String {
    let sep = if path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{path_and_query}{sep}{param}={nonce}")
}

/// Everything one exchange needs, resolved from the spec.
struct Target {
    uri: http::Uri,
    host: String,
    port: u16,
    tls: bool,
}

fn parse_target(url: &str) -> Result<Target, Failure> {
    let uri: http::Uri = url.parse().map_err(|e| {
        Failure::with_exit(
            Outcome::DnsFailure,
            Stage::Dns,
            3,
            format!("bad URL {url:?}: {e}"),
        )
    })?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        other => {
            return Err(Failure::with_exit(
                Outcome::DnsFailure,
                Stage::Dns,
                1,
                format!("unsupported scheme {other:?}: use http:// or https://"),
            ))
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| Failure::with_exit(Outcome::DnsFailure, Stage::Dns, 3, "URL has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok(Target {
        uri,
        host,
        port,
        tls,
    })
}

/// A connection after connect (and TLS): plain or TLS, one type for hyper.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// The recorded connection and what was negotiated on it.
struct Wire {
    io: Recorder<Box<dyn Io>>,
    tls: bool,
    h2: bool,
}

impl ProbeEngine {
    /// An engine that enforces `policy` and sends from `bind_ip`.
    pub fn new(policy: TargetPolicy, bind_ip: Option<IpAddr>) -> Self {
        ProbeEngine {
            policy,
            bind_ip,
            limits: ProbeLimits::default(),
            tls: Arc::default(),
            extra_ca_pem: None,
            rate: ProbeLimits::default()
                .max_rate_per_target
                .map(|r| Arc::new(rate::RateLimiter::new(r))),
            dns_server: None,
        }
    }

    /// Also trusts the CA certificates in `pem` (like `curl --cacert`, but in
    /// addition to the system roots).
    pub fn with_ca_pem(mut self, pem: &str) -> Result<Self, ProbeSetupError> {
        if vantage_support::tls::first_cert_der(pem).is_err() {
            return Err(ProbeSetupError::Ca("no PEM certificate found".into()));
        }
        self.extra_ca_pem = Some(Arc::from(pem));
        self.tls = Arc::default();
        Ok(self)
    }

    /// Resolves names with this DNS server instead of the system resolver
    /// (a spec's own `dns_server` still wins).
    pub fn with_dns_server(mut self, server: Option<SocketAddr>) -> Self {
        self.dns_server = server;
        self
    }

    /// Replaces the agent-side limits.
    pub fn with_limits(mut self, limits: ProbeLimits) -> Self {
        self.limits = limits;
        self.rate = limits
            .max_rate_per_target
            .map(|r| Arc::new(rate::RateLimiter::new(r)));
        self
    }

    /// The TLS setup, built on first use (loading system roots is not free).
    fn probe_tls(&self) -> Result<&tls::ProbeTls, Failure> {
        self.tls
            .get_or_init(|| {
                tls::ProbeTls::new(self.extra_ca_pem.as_deref()).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| {
                Failure::new(
                    Outcome::TlsHandshakeFailed,
                    Stage::Tls,
                    format!("TLS setup: {e}"),
                )
            })
    }

    /// Runs one request of `spec` and describes what happened.
    pub async fn run(
        &self,
        plan_id: &str,
        spec: &pb::ProbeSpec,
        slot: RequestSlot,
    ) -> pb::ProbeResult {
        let allowed = spec.max_redirects.min(self.limits.max_redirects) as usize;
        let mut current = std::borrow::Cow::Borrowed(spec);
        let mut redirects = Vec::new();
        loop {
            let mut result = self.run_once(plan_id, &current, slot).await;
            let next = (redirects.len() < allowed)
                .then(|| redirect_target(&result))
                .flatten();
            let Some(next_url) = next else {
                result.redirects = redirects;
                return result;
            };
            redirects.push(current.url.clone());
            let mut next_spec = current.into_owned();
            // Like curl --resolve, the override applies only to its own host:port.
            if authority_of(&next_url) != authority_of(&next_spec.url) {
                next_spec.address_override.clear();
            }
            // Like curl without --location-trusted: the plan's own headers
            // (credentials, cookies, debug keys) are for the plan's host, not
            // for whichever host a redirect names.
            if host_of(&next_url) != host_of(&next_spec.url) {
                next_spec.headers.clear();
            }
            if result.status == 303 {
                next_spec.method = "GET".into();
            }
            next_spec.url = next_url;
            current = std::borrow::Cow::Owned(next_spec);
        }
    }

    /// One request, no redirects.
    async fn run_once(
        &self,
        plan_id: &str,
        spec: &pb::ProbeSpec,
        slot: RequestSlot,
    ) -> pb::ProbeResult {
        let started_at_unix_ms = now_ms();
        let nonce = request_nonce(spec, slot);
        let mut result = pb::ProbeResult {
            result_id: uuid::Uuid::new_v4().to_string(),
            plan_id: plan_id.to_string(),
            probe_id: spec.probe_id.clone(),
            attempt: slot.attempt,
            burst_index: slot.burst_index,
            route: spec.route,
            variant: spec.variant.clone(),
            url: spec.url.clone(),
            nonce: nonce.clone(),
            started_at_unix_ms,
            timings: Some(pb::Timings::default()),
            ..Default::default()
        };
        let mut start = Instant::now();
        let mut total = ms(
            spec.timeouts.as_ref().map_or(0, |t| t.total_ms),
            DEFAULT_TOTAL,
        );
        if let Some(deadline) = slot.deadline {
            total = total.min(deadline.saturating_duration_since(start));
        }
        let outcome =
            match tokio::time::timeout(total, self.exchange(spec, &nonce, &mut start, &mut result))
                .await
            {
                Ok(outcome) => outcome,
                Err(_) => Err(classify::total_timeout(&result, total)),
            };
        if let Some(t) = result.timings.as_mut() {
            t.total_us = micros(start, Instant::now());
        }
        match outcome {
            Ok(()) => {
                result.outcome = pb::Outcome::from(Outcome::Ok) as i32;
                result.curl_exit = 0;
            }
            Err(failure) => failure.apply(&mut result),
        }
        result
    }

    /// A DNS server is a target like any other: the policy decides whether
    /// the agent may send it a packet, and its queries count against the
    /// per-target rate cap (the wait is not network time: the clock skips it).
    async fn admit_dns_server(
        &self,
        server: SocketAddr,
        start: &mut Instant,
    ) -> Result<(), Failure> {
        self.policy.check(server.ip()).map_err(|e| {
            Failure::new(
                Outcome::BlockedByPolicy,
                Stage::Dns,
                format!("DNS server: {e}"),
            )
        })?;
        if let Some(rate) = &self.rate {
            let before = Instant::now();
            rate.acquire_n(server.ip(), dns::QUERIES_PER_LOOKUP).await;
            *start += before.elapsed();
        }
        Ok(())
    }

    async fn resolve(
        &self,
        spec: &pb::ProbeSpec,
        target: &Target,
        start: &mut Instant,
        result: &mut pb::ProbeResult,
    ) -> Result<SocketAddr, Failure> {
        let addr = if !spec.address_override.is_empty() {
            parse_ip_port(&spec.address_override, target.port).ok_or_else(|| {
                Failure::with_exit(
                    Outcome::DnsFailure,
                    Stage::Dns,
                    3,
                    format!(
                        "bad address override {:?}: expected IP or IP:PORT",
                        spec.address_override
                    ),
                )
            })?
        } else if let Ok(ip) = target.host.parse::<IpAddr>() {
            SocketAddr::new(ip, target.port)
        } else {
            let server = if spec.dns_server.is_empty() {
                self.dns_server
            } else {
                Some(parse_ip_port(&spec.dns_server, 53).ok_or_else(|| {
                    Failure::with_exit(
                        Outcome::DnsFailure,
                        Stage::Dns,
                        3,
                        format!(
                            "bad DNS server {:?}: expected IP or IP:PORT",
                            spec.dns_server
                        ),
                    )
                })?)
            };
            let answers = match server {
                Some(server) => {
                    self.admit_dns_server(server, start).await?;
                    dns::lookup(
                        server,
                        &target.host,
                        self.bind_ip,
                        self.policy,
                        self.rate.clone(),
                    )
                    .await?
                }
                None => tokio::net::lookup_host((target.host.as_str(), target.port))
                    .await
                    .map_err(|e| {
                        Failure::new(
                            Outcome::DnsFailure,
                            Stage::Dns,
                            format!("cannot resolve {}: {e}", target.host),
                        )
                    })?
                    .map(|a| a.ip())
                    .collect(),
            };
            result.dns_answers = answers.iter().map(ToString::to_string).collect();
            let ip = *answers.first().ok_or_else(|| {
                Failure::new(
                    Outcome::DnsFailure,
                    Stage::Dns,
                    format!("{} has no address", target.host),
                )
            })?;
            SocketAddr::new(ip, target.port)
        };
        if let Some(t) = result.timings.as_mut() {
            t.dns_us = micros(*start, Instant::now());
        }
        Ok(addr)
    }

    async fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Failure> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| Failure::new(Outcome::NetworkUnreachable, Stage::Connect, e.to_string()))?;
        if let Some(ip) = self.bind_ip {
            socket.bind(SocketAddr::new(ip, 0)).map_err(|e| {
                Failure::with_exit(
                    Outcome::NetworkUnreachable,
                    Stage::Connect,
                    45,
                    format!("cannot bind {ip}: {e}"),
                )
            })?;
        }
        match tokio::time::timeout(timeout, socket.connect(addr)).await {
            Ok(Ok(stream)) => {
                // A probe connection carries one request and is closed by
                // the probe once the answer is read (curl closes the same
                // way, first). Closing with a reset instead of a FIN keeps
                // no TIME_WAIT socket per request on the agent's host: at
                // thousands of probes a second those fill the port range
                // and make every later connect() search it. The origin has
                // answered in full by then, so nothing it sent is lost.
                let _ = stream.set_zero_linger();
                Ok(stream)
            }
            Ok(Err(e)) => Err(classify::connect_error(&e, addr)),
            Err(_) => Err(Failure::new(
                Outcome::ConnectTimeout,
                Stage::Connect,
                format!("connect {addr}: no answer within {timeout:?}"),
            )),
        }
    }

    async fn handshake(
        &self,
        spec: &pb::ProbeSpec,
        target: &Target,
        stream: TcpStream,
        timeout: Duration,
        result: &mut pb::ProbeResult,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
        let probe_tls = self.probe_tls()?;
        let name = ServerName::try_from(target.host.clone()).map_err(|e| {
            Failure::new(
                Outcome::TlsHandshakeFailed,
                Stage::Tls,
                format!("bad TLS server name: {e}"),
            )
        })?;
        let connector = tokio_rustls::TlsConnector::from(probe_tls.config());
        let tls = match tokio::time::timeout(timeout, connector.connect(name.clone(), stream)).await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(classify::tls_error(&e)),
            Err(_) => {
                return Err(Failure::with_exit(
                    Outcome::TlsHandshakeFailed,
                    Stage::Tls,
                    28,
                    format!("TLS handshake: no answer within {timeout:?}"),
                ))
            }
        };
        let (_, session) = tls.get_ref();
        let chain: Vec<_> = session
            .peer_certificates()
            .map(<[_]>::to_vec)
            .unwrap_or_default();
        let mut peer = tls::describe(&chain);
        peer.protocol_version = session
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        peer.alpn = session
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let verified = probe_tls.verify(&chain, &name);
        peer.verified = verified.is_ok();
        peer.verify_error = verified.as_ref().err().cloned().unwrap_or_default();
        result.tls = Some(peer);
        if spec.verify_tls {
            if let Err(reason) = verified {
                return Err(Failure::new(
                    Outcome::TlsCertInvalid,
                    Stage::Tls,
                    format!("certificate not trusted for {}: {reason}", target.host),
                ));
            }
        }
        Ok(tls)
    }

    async fn exchange(
        &self,
        spec: &pb::ProbeSpec,
        nonce: &str,
        start: &mut Instant,
        result: &mut pb::ProbeResult,
    ) -> Result<(), Failure> {
        let target = parse_target(&spec.url)?;
        let addr = self.resolve(spec, &target, start, result).await?;
        if spec.route == pb::Route::Dns as i32 {
            if result.dns_answers.is_empty() {
                result.dns_answers.push(addr.ip().to_string());
            }
            return Ok(());
        }
        self.policy
            .check(addr.ip())
            .map_err(|e| Failure::new(Outcome::BlockedByPolicy, Stage::Connect, e.to_string()))?;
        if let Some(rate) = &self.rate {
            // Waiting for the rate cap is not network time: the clock skips it.
            let before = Instant::now();
            rate.acquire(addr.ip()).await;
            *start += before.elapsed();
        }
        let start = *start;
        let timeouts = spec.timeouts.unwrap_or_default();
        let stream = self
            .connect(addr, ms(timeouts.connect_ms, DEFAULT_CONNECT))
            .await?;
        if let Some(t) = result.timings.as_mut() {
            t.connect_us = micros(start, Instant::now());
        }
        result.remote_addr = addr.to_string();
        result.local_addr = stream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        if target.tls {
            // The request follows the client's handshake flight: Nagle would
            // hold it until that flight is acknowledged. A plain HTTP/1.1
            // head is a single write, which Nagle never delays.
            let _ = stream.set_nodelay(true);
        }

        let (wire, events) = if target.tls {
            let tls = self
                .handshake(
                    spec,
                    &target,
                    stream,
                    ms(timeouts.tls_ms, DEFAULT_TLS),
                    result,
                )
                .await?;
            if let Some(t) = result.timings.as_mut() {
                t.tls_us = micros(start, Instant::now());
            }
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let (io, events) = Recorder::new(Box::new(tls) as Box<dyn Io>, RAW_CAPTURE);
            (Wire { io, tls: true, h2 }, events)
        } else {
            let (io, events) = Recorder::new(Box::new(stream) as Box<dyn Io>, RAW_CAPTURE);
            (
                Wire {
                    io,
                    tls: false,
                    h2: false,
                },
                events,
            )
        };
        let outcome = self
            .http(spec, &target, nonce, wire, &events, start, result)
            .await;
        if let Err(failure) = &outcome {
            if failure.outcome == Outcome::MalformedResponse && result.body_head.is_empty() {
                // Keep the raw reply: a block page or a middlebox's junk is evidence.
                result.body_head = events.snapshot().head;
            }
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn http(
        &self,
        spec: &pb::ProbeSpec,
        target: &Target,
        nonce: &str,
        wire: Wire,
        events: &Events,
        start: Instant,
        result: &mut pb::ProbeResult,
    ) -> Result<(), Failure> {
        let param = if spec.nonce_param.is_empty() {
            vantage_proto::spec::DEFAULT_NONCE_PARAM
        } else {
            spec.nonce_param.as_str()
        };
        let path = with_nonce(
            target.uri.path_and_query().map_or("/", |p| p.as_str()),
            param,
            nonce,
        );
        let authority = host_header(target);
        let method = if spec.method.is_empty() {
            "GET"
        } else {
            spec.method.as_str()
        };
        let user_agent = if spec.user_agent.is_empty() {
            vantage_proto::spec::DEFAULT_USER_AGENT
        } else {
            spec.user_agent.as_str()
        };
        check_headers(spec, method, user_agent)?;
        let mut sink = BodySink::new(spec, &self.limits);
        if wire.h2 {
            self.http2(
                spec, &authority, &path, method, user_agent, wire, events, start, result, &mut sink,
            )
            .await?;
        } else {
            let extra: Vec<(&str, &[u8])> = spec
                .headers
                .iter()
                .map(|h| (h.name.as_str(), h.value.as_slice()))
                .collect();
            let head = head::render(method, &path, &authority, user_agent, &extra);
            self.http1(
                spec,
                &head,
                method.eq_ignore_ascii_case("HEAD"),
                wire,
                events,
                start,
                result,
                &mut sink,
            )
            .await?;
        }
        sink.finish(result);
        Ok(())
    }

    /// HTTP/1.1 on the engine's own reader: curl's head byte for byte, one
    /// request, the body read by its framing.
    #[allow(clippy::too_many_arguments)]
    async fn http1(
        &self,
        spec: &pb::ProbeSpec,
        head: &[u8],
        head_request: bool,
        wire: Wire,
        events: &Events,
        start: Instant,
        result: &mut pb::ProbeResult,
        sink: &mut BodySink,
    ) -> Result<(), Failure> {
        let timeouts = timeouts_of(spec);
        let is_tls = wire.tls;
        let mut conn = h1::Connection::new(wire.io);
        let max_head = self.limits.max_header_bytes.max(8192);
        let first_byte = ms(timeouts.first_byte_ms, DEFAULT_FIRST_BYTE);
        let exchange = async {
            conn.send(head).await?;
            conn.read_head(max_head, head_request).await
        };
        let response = match tokio::time::timeout(first_byte, exchange).await {
            Ok(Ok(response)) => response,
            Ok(Err(fault)) => return Err(classify::http_error(&fault, &events.snapshot(), is_tls)),
            Err(_) => return Err(no_response_within(first_byte)),
        };
        record_first_byte(events, start, result);
        result.status = u32::from(response.status);
        result.http_version = response.version.into();
        result.edge_request_id = evidence::edge_request_id(&response.headers);
        result.cache_status = evidence::cache_status(&response.headers);
        result.headers = evidence::keep_headers(response.headers);

        let stall = ms(timeouts.body_ms, DEFAULT_BODY_STALL);
        loop {
            let data = match tokio::time::timeout(stall, conn.next_body_chunk()).await {
                Ok(Ok(Some(data))) => data,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(fault)) => {
                    sink.finish_partial(result);
                    return Err(classify::body_error(&fault, &events.snapshot(), is_tls));
                }
                Err(_) => {
                    sink.finish_partial(result);
                    return Err(sink.stalled(stall));
                }
            };
            if sink.take(data, result) {
                return Ok(());
            }
        }
    }

    /// HTTP/2 (by ALPN) on hyper's connection-level client, driven inside
    /// this task.
    #[allow(clippy::too_many_arguments)]
    async fn http2(
        &self,
        spec: &pb::ProbeSpec,
        authority: &str,
        path: &str,
        method: &str,
        user_agent: &str,
        wire: Wire,
        events: &Events,
        start: Instant,
        result: &mut pb::ProbeResult,
        sink: &mut BodySink,
    ) -> Result<(), Failure> {
        let timeouts = timeouts_of(spec);
        let is_tls = wire.tls;
        let fail = |e: hyper::Error| {
            classify::http_error(&HttpFault::from(&e), &events.snapshot(), is_tls)
        };
        // HTTP/2 carries the authority in the request URI and lower-cases
        // names by rule.
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("https://{authority}{path}"))
            .header(http::header::USER_AGENT, user_agent)
            .header(http::header::ACCEPT, "*/*");
        for header in &spec.headers {
            request = request.header(header.name.as_str(), header.value.as_slice());
        }
        let request = request.body(Empty::<Bytes>::new()).map_err(|e| {
            Failure::with_exit(
                Outcome::SendFailed,
                Stage::Write,
                43,
                format!("bad request: {e}"),
            )
        })?;
        let io = hyper_util::rt::TokioIo::new(wire.io);
        // The connection is driven inside this task, not a spawned one: no
        // cross-task wake-ups per request.
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(fail)?;
        let send: BoxFuture<_> = Box::pin(async move { sender.send_request(request).await });
        let mut conn: ConnFuture = Box::pin(connection);
        let mut conn_done = false;

        let first_byte = ms(timeouts.first_byte_ms, DEFAULT_FIRST_BYTE);
        let response =
            match tokio::time::timeout(first_byte, drive(send, &mut conn, &mut conn_done)).await {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => return Err(fail(e)),
                Err(_) => return Err(no_response_within(first_byte)),
            };
        record_first_byte(events, start, result);
        result.status = u32::from(response.status().as_u16());
        result.http_version = "HTTP/2".into();
        let headers = evidence::headers_of(response.headers());
        result.edge_request_id = evidence::edge_request_id(&headers);
        result.cache_status = evidence::cache_status(&headers);
        result.headers = evidence::keep_headers(headers);

        let stall = ms(timeouts.body_ms, DEFAULT_BODY_STALL);
        let mut body = response.into_body();
        loop {
            let frame =
                match tokio::time::timeout(stall, drive(body.frame(), &mut conn, &mut conn_done))
                    .await
                {
                    Ok(Some(Ok(frame))) => frame,
                    Ok(None) => return Ok(()),
                    Ok(Some(Err(e))) => {
                        sink.finish_partial(result);
                        return Err(classify::body_error(
                            &HttpFault::from(&e),
                            &events.snapshot(),
                            is_tls,
                        ));
                    }
                    Err(_) => {
                        sink.finish_partial(result);
                        return Err(sink.stalled(stall));
                    }
                };
            if let Some(data) = frame.data_ref() {
                if sink.take(data, result) {
                    return Ok(());
                }
            }
        }
    }
}

/// The spec's phase timeouts (defaults where it gives none).
fn timeouts_of(spec: &pb::ProbeSpec) -> pb::PhaseTimeouts {
    spec.timeouts.unwrap_or_default()
}

fn no_response_within(first_byte: Duration) -> Failure {
    Failure::new(
        Outcome::ResponseTimeout,
        Stage::Read,
        format!("no response within {first_byte:?}"),
    )
}

/// Time to first byte: the instant the recorder saw the reply's first byte.
fn record_first_byte(events: &Events, start: Instant, result: &mut pb::ProbeResult) {
    let first_byte_at = events.first_byte_at();
    if let Some(t) = result.timings.as_mut() {
        t.ttfb_us = micros(start, first_byte_at.unwrap_or_else(Instant::now));
    }
}

/// Where a response body goes: its SHA-256, its size, and the first bytes
/// kept as evidence, up to the agent's download limit.
struct BodySink {
    hasher: Sha256,
    total_bytes: u64,
    capture: usize,
    max_bytes: u64,
}

impl BodySink {
    fn new(spec: &pb::ProbeSpec, limits: &ProbeLimits) -> Self {
        let capture = match spec.body_capture_bytes {
            0 => DEFAULT_BODY_CAPTURE,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        }
        .min(limits.max_body_capture);
        BodySink {
            hasher: Sha256::new(),
            total_bytes: 0,
            capture,
            max_bytes: limits.max_body_bytes,
        }
    }

    /// Takes one piece of the body; true when the agent's limit says stop.
    fn take(&mut self, data: &[u8], result: &mut pb::ProbeResult) -> bool {
        self.hasher.update(data);
        self.total_bytes += data.len() as u64;
        let room = self.capture.saturating_sub(result.body_head.len());
        result
            .body_head
            .extend_from_slice(&data[..room.min(data.len())]);
        if self.total_bytes >= self.max_bytes {
            result.error = format!(
                "stopped reading after {} body bytes (agent limit)",
                self.total_bytes
            );
            return true;
        }
        false
    }

    /// The body failed: only its size so far is known.
    fn finish_partial(&self, result: &mut pb::ProbeResult) {
        result.body_bytes = self.total_bytes;
    }

    fn stalled(&self, stall: Duration) -> Failure {
        Failure::new(
            Outcome::BodyTimeout,
            Stage::Content,
            format!(
                "body stalled for {stall:?} after {} bytes",
                self.total_bytes
            ),
        )
    }

    /// The body is complete (or stopped at the limit).
    fn finish(self, result: &mut pb::ProbeResult) {
        result.body_bytes = self.total_bytes;
        result.body_sha256 = hex::encode(self.hasher.finalize());
        result.title = evidence::title(&result.body_head);
    }
}

/// The Host header curl sends: the URL's host (IPv6 in brackets), with the
/// port only when it is not the scheme's default.
fn host_header(target: &Target) -> String {
    let host = if target.host.contains(':') {
        format!("[{}]", target.host)
    } else {
        target.host.clone()
    };
    let default_port = if target.tls { 443 } else { 80 };
    if target.port == default_port {
        host
    } else {
        format!("{host}:{}", target.port)
    }
}

/// Checks that the request head is one HTTP/1.1 head: a header name that is
/// not a token, or a value with a line break, would smuggle another header
/// or request (curl's exit 43: bad function argument).
fn check_headers(spec: &pb::ProbeSpec, method: &str, user_agent: &str) -> Result<(), Failure> {
    let bad = |what: String| {
        Failure::with_exit(
            Outcome::SendFailed,
            Stage::Write,
            43,
            format!("bad request: {what}"),
        )
    };
    http::Method::from_bytes(method.as_bytes())
        .map_err(|_| bad(format!("method {method:?} is not a token")))?;
    http::HeaderValue::from_str(user_agent)
        .map_err(|_| bad("the User-Agent has a control character".into()))?;
    for header in &spec.headers {
        http::HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| bad(format!("header name {:?} is not a token", header.name)))?;
        http::HeaderValue::from_bytes(&header.value)
            .map_err(|_| bad(format!("header {} has a control character", header.name)))?;
    }
    Ok(())
}

/// Where a successful 3xx answer points, as an absolute URL.
fn redirect_target(result: &pb::ProbeResult) -> Option<String> {
    if result.outcome != pb::Outcome::Ok as i32
        || !matches!(result.status, 301 | 302 | 303 | 307 | 308)
    {
        return None;
    }
    let location = result
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("location"))
        .map(|h| String::from_utf8_lossy(&h.value).trim().to_string())?;
    join_url(&result.url, &location)
}

/// Resolves `location` against `base` (absolute, scheme-relative,
/// absolute-path and relative-path references).
fn join_url(base: &str, location: &str) -> Option<String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Some(location.to_string());
    }
    let base: http::Uri = base.parse().ok()?;
    let scheme = base.scheme_str()?;
    if let Some(rest) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{rest}"));
    }
    let authority = base.authority()?.as_str();
    if location.starts_with('/') {
        return Some(format!("{scheme}://{authority}{location}"));
    }
    let dir = base.path().rsplit_once('/').map_or("", |(dir, _)| dir);
    Some(format!("{scheme}://{authority}{dir}/{location}"))
}

fn authority_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    Some(uri.authority()?.as_str().to_ascii_lowercase())
}

/// The URL's host name, lower-cased (no port): what decides whether a
/// redirect stays on the same host.
fn host_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    Some(uri.host()?.to_ascii_lowercase())
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
/// hyper's connection task, polled alongside the request it serves.
type ConnFuture = BoxFuture<Result<(), hyper::Error>>;

/// Awaits `fut` while also driving the connection. When the connection ends
/// (cleanly or not), hyper hands its error to the pending request, so `fut`
/// alone decides the result.
async fn drive<T>(
    fut: impl std::future::Future<Output = T>,
    conn: &mut ConnFuture,
    done: &mut bool,
) -> T {
    tokio::pin!(fut);
    loop {
        if *done {
            return fut.await;
        }
        tokio::select! {
            biased;
            out = &mut fut => return out,
            _ = conn.as_mut() => *done = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_locations_resolve_like_a_browser() {
        let base = "http://a.test:8080/x/y?q=1";
        assert_eq!(
            join_url(base, "https://b.test/z").as_deref(),
            Some("https://b.test/z")
        );
        assert_eq!(
            join_url(base, "//c.test/w").as_deref(),
            Some("http://c.test/w")
        );
        assert_eq!(
            join_url(base, "/root").as_deref(),
            Some("http://a.test:8080/root")
        );
        assert_eq!(
            join_url(base, "sib").as_deref(),
            Some("http://a.test:8080/x/sib")
        );
        assert_eq!(
            authority_of("http://A.test:8080/"),
            Some("a.test:8080".into())
        );
        assert_eq!(host_of("https://A.test:8443/x"), Some("a.test".into()));
        assert_eq!(host_of("http://a.test/"), host_of("https://A.TEST:81/y"));
        assert_ne!(host_of("http://a.test/"), host_of("http://b.test/"));
    }

    #[test]
    fn nonce_is_appended_as_query_parameter() {
        assert_eq!(with_nonce("/a", "__vantage", "n1"), "/a?__vantage=n1");
        assert_eq!(
            with_nonce("/a?b=1", "__vantage", "n1"),
            "/a?b=1&__vantage=n1"
        );
        let spec = pb::ProbeSpec {
            nonce: "abc".into(),
            ..Default::default()
        };
        assert_eq!(
            request_nonce(
                &spec,
                RequestSlot {
                    attempt: 2,
                    burst_index: 3,
                    deadline: None,
                }
            ),
            "abc-2-3"
        );
    }
}
