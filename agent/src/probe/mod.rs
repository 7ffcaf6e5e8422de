//! The minimal probe engine of the foundation: plain-HTTP GET probes with
//! phase timings, the SSRF guard, and the failure classes that can be told
//! apart from socket events. The curl-grade engine (TLS, HTTP/2, the whole
//! outcome taxonomy) replaces this module in the probe-engine issue; the
//! interface — a spec in, a [`pb::ProbeResult`] out — stays.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use sha2::{Digest, Sha256};
use tokio::net::{TcpSocket, TcpStream};
use vantage_proto::domain::{Outcome, Stage};
use vantage_proto::pb;

use crate::safety::TargetPolicy;

/// Default per-phase limits when a spec leaves them at 0.
const DEFAULT_CONNECT: Duration = Duration::from_secs(10);
const DEFAULT_FIRST_BYTE: Duration = Duration::from_secs(30);
const DEFAULT_TOTAL: Duration = Duration::from_secs(60);
/// Body bytes kept as evidence when the spec does not say.
const DEFAULT_BODY_CAPTURE: usize = 1024;
/// Agent-side cap on captured body bytes; a plan cannot raise it.
const MAX_BODY_CAPTURE: usize = 64 * 1024;

/// Runs single requests. Cheap to clone: it holds only settings.
#[derive(Debug, Clone, Default)]
pub struct ProbeEngine {
    policy: TargetPolicy,
    bind_ip: Option<IpAddr>,
    extra_ca_pem: Option<std::sync::Arc<str>>,
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
}

fn ms(value: u32, default: Duration) -> Duration {
    if value == 0 {
        default
    } else {
        Duration::from_millis(u64::from(value))
    }
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
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

struct Failure {
    outcome: Outcome,
    stage: Stage,
    error: String,
}

impl Failure {
    fn new(outcome: Outcome, stage: Stage, error: impl Into<String>) -> Self {
        Failure {
            outcome,
            stage,
            error: error.into(),
        }
    }
}

fn classify_connect_error(err: &std::io::Error) -> Outcome {
    match err.kind() {
        std::io::ErrorKind::ConnectionRefused => Outcome::ConnectRefused,
        std::io::ErrorKind::TimedOut => Outcome::ConnectTimeout,
        _ => Outcome::NetworkUnreachable,
    }
}

fn io_cause(err: &hyper::Error) -> Option<std::io::ErrorKind> {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = cause.source();
    }
    None
}

fn classify_response_error(err: &hyper::Error) -> Outcome {
    if err.is_parse() || err.is_parse_status() {
        return Outcome::MalformedResponse;
    }
    match io_cause(err) {
        Some(std::io::ErrorKind::ConnectionReset) | Some(std::io::ErrorKind::BrokenPipe) => {
            Outcome::Reset
        }
        _ if err.is_incomplete_message() => Outcome::EmptyReply,
        _ => Outcome::Reset,
    }
}

impl ProbeEngine {
    /// An engine that enforces `policy` and sends from `bind_ip`.
    pub fn new(policy: TargetPolicy, bind_ip: Option<IpAddr>) -> Self {
        ProbeEngine {
            policy,
            bind_ip,
            extra_ca_pem: None,
        }
    }

    /// Also trusts the CA certificates in `pem` (like `curl --cacert`, but in
    /// addition to the system roots).
    pub fn with_ca_pem(mut self, pem: &str) -> Result<Self, ProbeSetupError> {
        if crate::tls::first_cert_der(pem).is_err() {
            return Err(ProbeSetupError::Ca("no PEM certificate found".into()));
        }
        self.extra_ca_pem = Some(std::sync::Arc::from(pem));
        Ok(self)
    }

    /// Runs one request of `spec` and describes what happened.
    pub async fn run(
        &self,
        plan_id: &str,
        spec: &pb::ProbeSpec,
        slot: RequestSlot,
    ) -> pb::ProbeResult {
        let started_at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
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
            ..Default::default()
        };
        let start = Instant::now();
        let total = ms(
            spec.timeouts.as_ref().map_or(0, |t| t.total_ms),
            DEFAULT_TOTAL,
        );
        let outcome = match tokio::time::timeout(
            total,
            self.exchange(spec, &nonce, start, &mut result),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(Failure::new(
                if result.status == 0 {
                    Outcome::ResponseTimeout
                } else {
                    Outcome::BodyTimeout
                },
                if result.status == 0 {
                    Stage::Read
                } else {
                    Stage::Content
                },
                format!("no complete answer within {total:?}"),
            )),
        };
        let timings = result.timings.get_or_insert_with(Default::default);
        timings.total_us = micros(start);
        match outcome {
            Ok(()) => {
                result.outcome = pb::Outcome::from(Outcome::Ok) as i32;
                result.curl_exit = 0;
            }
            Err(failure) => {
                result.outcome = pb::Outcome::from(failure.outcome) as i32;
                result.curl_exit = failure.outcome.curl_exit();
                result.stage = pb::Stage::from(failure.stage) as i32;
                result.error = failure.error;
            }
        }
        result
    }

    async fn target(
        &self,
        spec: &pb::ProbeSpec,
        uri: &http::Uri,
        start: Instant,
        result: &mut pb::ProbeResult,
    ) -> Result<SocketAddr, Failure> {
        let host = uri
            .host()
            .ok_or_else(|| Failure::new(Outcome::MalformedResponse, Stage::Dns, "URL has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        let addr = if !spec.address_override.is_empty() {
            parse_override(&spec.address_override, port).ok_or_else(|| {
                Failure::new(
                    Outcome::DnsFailure,
                    Stage::Dns,
                    format!("bad address override {:?}", spec.address_override),
                )
            })?
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            SocketAddr::new(ip, port)
        } else {
            let mut answers = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| {
                    Failure::new(
                        Outcome::DnsFailure,
                        Stage::Dns,
                        format!("cannot resolve {host}: {e}"),
                    )
                })?;
            answers.next().ok_or_else(|| {
                Failure::new(
                    Outcome::DnsFailure,
                    Stage::Dns,
                    format!("{host} has no address"),
                )
            })?
        };
        result.timings.get_or_insert_with(Default::default).dns_us = micros(start);
        self.policy
            .check(addr.ip())
            .map_err(|e| Failure::new(Outcome::BlockedByPolicy, Stage::Connect, e.to_string()))?;
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
                Failure::new(
                    Outcome::NetworkUnreachable,
                    Stage::Connect,
                    format!("cannot bind {ip}: {e}"),
                )
            })?;
        }
        match tokio::time::timeout(timeout, socket.connect(addr)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(Failure::new(
                classify_connect_error(&e),
                Stage::Connect,
                format!("connect {addr}: {e}"),
            )),
            Err(_) => Err(Failure::new(
                Outcome::ConnectTimeout,
                Stage::Connect,
                format!("connect {addr}: no answer within {timeout:?}"),
            )),
        }
    }

    async fn exchange(
        &self,
        spec: &pb::ProbeSpec,
        nonce: &str,
        start: Instant,
        result: &mut pb::ProbeResult,
    ) -> Result<(), Failure> {
        let uri: http::Uri = spec.url.parse().map_err(|e| {
            Failure::new(
                Outcome::MalformedResponse,
                Stage::Dns,
                format!("bad URL {:?}: {e}", spec.url),
            )
        })?;
        if uri.scheme_str() != Some("http") {
            return Err(Failure::new(
                Outcome::TlsHandshakeFailed,
                Stage::Tls,
                "this agent's engine probes plain http:// only",
            ));
        }
        let addr = self.target(spec, &uri, start, result).await?;
        let timeouts = spec.timeouts.unwrap_or_default();
        let stream = self
            .connect(addr, ms(timeouts.connect_ms, DEFAULT_CONNECT))
            .await?;
        let timings = result.timings.get_or_insert_with(Default::default);
        timings.connect_us = micros(start);
        timings.tls_us = timings.connect_us;
        result.remote_addr = addr.to_string();
        result.local_addr = stream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let _ = stream.set_nodelay(true);

        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| Failure::new(Outcome::SendFailed, Stage::Write, e.to_string()))?;
        let driver = tokio::spawn(connection);

        let param = if spec.nonce_param.is_empty() {
            "__vantage"
        } else {
            spec.nonce_param.as_str()
        };
        let path = with_nonce(
            uri.path_and_query().map_or("/", |p| p.as_str()),
            param,
            nonce,
        );
        let authority = uri.authority().map_or_else(String::new, |a| a.to_string());
        let method = if spec.method.is_empty() {
            "GET"
        } else {
            spec.method.as_str()
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority)
            .header(
                http::header::USER_AGENT,
                concat!("vantage/", env!("CARGO_PKG_VERSION")),
            );
        for header in &spec.headers {
            request = request.header(header.name.as_str(), header.value.as_slice());
        }
        let request = request.body(Empty::<Bytes>::new()).map_err(|e| {
            Failure::new(
                Outcome::SendFailed,
                Stage::Write,
                format!("bad request: {e}"),
            )
        })?;

        let first_byte = ms(timeouts.first_byte_ms, DEFAULT_FIRST_BYTE);
        let response = match tokio::time::timeout(first_byte, sender.send_request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                driver.abort();
                return Err(Failure::new(
                    classify_response_error(&e),
                    Stage::Read,
                    e.to_string(),
                ));
            }
            Err(_) => {
                driver.abort();
                return Err(Failure::new(
                    Outcome::ResponseTimeout,
                    Stage::Read,
                    format!("no response within {first_byte:?}"),
                ));
            }
        };
        result.timings.get_or_insert_with(Default::default).ttfb_us = micros(start);
        result.status = u32::from(response.status().as_u16());
        result.http_version = format!("{:?}", response.version());
        result.headers = response
            .headers()
            .iter()
            .map(|(name, value)| pb::Header {
                name: name.as_str().to_string(),
                value: value.as_bytes().to_vec(),
            })
            .collect();

        let capture = match spec.body_capture_bytes {
            0 => DEFAULT_BODY_CAPTURE,
            n => usize::try_from(n)
                .unwrap_or(MAX_BODY_CAPTURE)
                .min(MAX_BODY_CAPTURE),
        };
        let mut body = response.into_body();
        let mut hasher = Sha256::new();
        let mut total_bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Failure::new(
                    if e.is_incomplete_message() {
                        Outcome::Truncated
                    } else {
                        classify_response_error(&e)
                    },
                    Stage::Content,
                    e.to_string(),
                )
            })?;
            if let Some(data) = frame.data_ref() {
                hasher.update(data);
                total_bytes += data.len() as u64;
                let room = capture.saturating_sub(result.body_head.len());
                result
                    .body_head
                    .extend_from_slice(&data[..room.min(data.len())]);
            }
        }
        driver.abort();
        result.body_bytes = total_bytes;
        result.body_sha256 = hex::encode(hasher.finalize());
        Ok(())
    }
}

/// Parses `IP` or `IP:PORT` (IPv6 optionally in brackets); without a port the
/// URL's port is used, like `curl --resolve`.
pub fn parse_override(text: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(sock) = text.parse::<SocketAddr>() {
        return Some(sock);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_like_curl_resolve() {
        assert_eq!(
            parse_override("192.0.2.1", 80),
            Some("192.0.2.1:80".parse().unwrap())
        );
        assert_eq!(
            parse_override("192.0.2.1:8080", 80),
            Some("192.0.2.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_override("[::1]:8443", 80),
            Some("[::1]:8443".parse().unwrap())
        );
        assert_eq!(
            parse_override("::1", 443),
            Some("[::1]:443".parse().unwrap())
        );
        assert_eq!(parse_override("example.com", 80), None);
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
                    burst_index: 3
                }
            ),
            "abc-2-3"
        );
    }
}
