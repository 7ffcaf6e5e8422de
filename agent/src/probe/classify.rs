//! Names a failed request: its outcome (DESIGN §4), the stage where it
//! stopped, and the exit code curl gives for the same failure. Decisions come
//! from typed events — the socket error kind, what the wire recorder saw,
//! hyper's error class, rustls' error — never from error-message text.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use vantage_proto::domain::{Outcome, Stage};
use vantage_proto::pb;

use super::record::WireEvents;

/// A failed request, described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What happened.
    pub outcome: Outcome,
    /// Where it stopped.
    pub stage: Stage,
    /// What curl would have exited with.
    pub curl_exit: i32,
    /// A human-readable detail.
    pub error: String,
}

impl Failure {
    /// A failure with the outcome's usual curl exit code.
    pub fn new(outcome: Outcome, stage: Stage, error: impl Into<String>) -> Self {
        Failure {
            outcome,
            stage,
            curl_exit: outcome.curl_exit(),
            error: error.into(),
        }
    }

    /// A failure where curl's exit code differs from the outcome's usual one
    /// (curl names some failures by their cause, e.g. 28 for any timeout).
    pub fn with_exit(
        outcome: Outcome,
        stage: Stage,
        curl_exit: i32,
        error: impl Into<String>,
    ) -> Self {
        Failure {
            outcome,
            stage,
            curl_exit,
            error: error.into(),
        }
    }

    /// Writes the failure into a result.
    pub fn apply(self, result: &mut pb::ProbeResult) {
        result.outcome = pb::Outcome::from(self.outcome) as i32;
        result.curl_exit = self.curl_exit;
        result.stage = pb::Stage::from(self.stage) as i32;
        result.error = self.error;
    }
}

/// A failed TCP connect.
pub fn connect_error(err: &io::Error, addr: SocketAddr) -> Failure {
    let outcome = match err.kind() {
        io::ErrorKind::ConnectionRefused => Outcome::ConnectRefused,
        io::ErrorKind::TimedOut => Outcome::ConnectTimeout,
        _ => Outcome::NetworkUnreachable,
    };
    let exit = if outcome == Outcome::ConnectTimeout {
        28
    } else {
        7
    };
    Failure::with_exit(
        outcome,
        Stage::Connect,
        exit,
        format!("connect {addr}: {err}"),
    )
}

/// A failed TLS handshake (certificate problems are found after the
/// handshake, on the recorded chain, so anything here is the handshake).
pub fn tls_error(err: &io::Error) -> Failure {
    Failure::new(
        Outcome::TlsHandshakeFailed,
        Stage::Tls,
        format!("TLS handshake: {err}"),
    )
}

/// The whole request ran out of time: name the phase it was in.
pub fn total_timeout(result: &pb::ProbeResult, total: Duration) -> Failure {
    let timings = result.timings.unwrap_or_default();
    let (outcome, stage) = if result.status != 0 {
        (Outcome::BodyTimeout, Stage::Content)
    } else if timings.dns_us == 0 {
        (Outcome::DnsFailure, Stage::Dns)
    } else if timings.connect_us == 0 {
        (Outcome::ConnectTimeout, Stage::Connect)
    } else if result.url.starts_with("https") && timings.tls_us == 0 {
        (Outcome::TlsHandshakeFailed, Stage::Tls)
    } else {
        (Outcome::ResponseTimeout, Stage::Read)
    };
    Failure::with_exit(
        outcome,
        stage,
        28,
        format!("no complete answer within {total:?}"),
    )
}

/// The first I/O error in hyper's error chain.
fn io_kind(err: &hyper::Error) -> Option<io::ErrorKind> {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        source = cause.source();
    }
    None
}

fn is_reset(kind: Option<io::ErrorKind>) -> bool {
    matches!(
        kind,
        Some(io::ErrorKind::ConnectionReset)
            | Some(io::ErrorKind::ConnectionAborted)
            | Some(io::ErrorKind::BrokenPipe)
    )
}

/// A failure before the response head was complete.
pub fn http_error(err: &hyper::Error, wire: &WireEvents, tls: bool) -> Failure {
    let detail = err.to_string();
    if wire.bytes_read == 0 && wire.write_error.is_some() && !is_reset(wire.read_error) {
        return Failure::new(
            Outcome::SendFailed,
            Stage::Write,
            format!("sending the request: {detail}"),
        );
    }
    if is_reset(wire.read_error) || (wire.bytes_read == 0 && is_reset(wire.write_error)) {
        return Failure::new(
            Outcome::Reset,
            Stage::Read,
            format!("connection reset: {detail}"),
        );
    }
    if err.is_parse_too_large() {
        // curl caps a response header at 100 KiB and gives up with 27
        // ("out of memory"), not with a protocol error.
        return Failure::with_exit(
            Outcome::MalformedResponse,
            Stage::Read,
            27,
            format!("response header larger than the limit: {detail}"),
        );
    }
    if err.is_parse() || err.is_parse_status() {
        return malformed(wire, detail);
    }
    if wire.bytes_read == 0 {
        // A TLS peer that drops the connection without close_notify is an
        // "unexpected EOF" to curl's TLS layer (56), not an empty reply (52).
        let exit = if tls && wire.read_error == Some(io::ErrorKind::UnexpectedEof) {
            56
        } else {
            52
        };
        return Failure::with_exit(
            Outcome::EmptyReply,
            Stage::Read,
            exit,
            "the server closed the connection without a reply",
        );
    }
    malformed(wire, detail)
}

/// A reply that is not valid HTTP. curl says 1 when the reply does not even
/// start like HTTP (it refuses HTTP/0.9) and 8 ("weird server reply") when it
/// does but breaks the rules.
fn malformed(wire: &WireEvents, detail: String) -> Failure {
    let looks_like_http = wire.head.starts_with(b"HTTP/");
    let exit = if looks_like_http { 8 } else { 1 };
    Failure::with_exit(
        Outcome::MalformedResponse,
        Stage::Read,
        exit,
        format!("not a valid HTTP reply: {detail}"),
    )
}

/// A failure while reading the body.
pub fn body_error(err: &hyper::Error, wire: &WireEvents, _tls: bool) -> Failure {
    if is_reset(wire.read_error) || is_reset(io_kind(err)) {
        return Failure::new(
            Outcome::Reset,
            Stage::Content,
            format!("connection reset mid-body: {err}"),
        );
    }
    if err.is_incomplete_message()
        || wire.eof
        || wire.read_error == Some(io::ErrorKind::UnexpectedEof)
    {
        return Failure::new(
            Outcome::Truncated,
            Stage::Content,
            format!("body cut short: {err}"),
        );
    }
    Failure::new(
        Outcome::Reset,
        Stage::Content,
        format!("body failed: {err}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(bytes: &[u8]) -> WireEvents {
        WireEvents {
            bytes_read: bytes.len() as u64,
            head: bytes.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn connect_errors_by_kind() {
        let addr: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let refused = connect_error(&io::Error::from(io::ErrorKind::ConnectionRefused), addr);
        assert_eq!(
            (refused.outcome, refused.curl_exit, refused.stage),
            (Outcome::ConnectRefused, 7, Stage::Connect)
        );
        let timeout = connect_error(&io::Error::from(io::ErrorKind::TimedOut), addr);
        assert_eq!(
            (timeout.outcome, timeout.curl_exit),
            (Outcome::ConnectTimeout, 28)
        );
        let unreachable = connect_error(&io::Error::from(io::ErrorKind::NetworkUnreachable), addr);
        assert_eq!(
            (unreachable.outcome, unreachable.curl_exit),
            (Outcome::NetworkUnreachable, 7)
        );
    }

    #[test]
    fn malformed_replies_follow_curl() {
        let junk = malformed(&wire(b"SSH-2.0-OpenSSH_9.2\r\n"), "x".into());
        assert_eq!(
            (junk.outcome, junk.curl_exit),
            (Outcome::MalformedResponse, 1)
        );
        let weird = malformed(&wire(b"HTTP/1.1 2OO OK\r\n"), "x".into());
        assert_eq!(
            (weird.outcome, weird.curl_exit),
            (Outcome::MalformedResponse, 8)
        );
    }

    #[test]
    fn total_timeout_names_the_phase() {
        let mut result = pb::ProbeResult {
            url: "http://x/".into(),
            timings: Some(pb::Timings {
                dns_us: 5,
                connect_us: 10,
                ..Default::default()
            }),
            ..Default::default()
        };
        let waiting = total_timeout(&result, Duration::from_secs(1));
        assert_eq!(
            (waiting.outcome, waiting.stage, waiting.curl_exit),
            (Outcome::ResponseTimeout, Stage::Read, 28)
        );
        result.status = 200;
        let body = total_timeout(&result, Duration::from_secs(1));
        assert_eq!(
            (body.outcome, body.stage),
            (Outcome::BodyTimeout, Stage::Content)
        );
        result.status = 0;
        result.timings = Some(pb::Timings {
            dns_us: 5,
            ..Default::default()
        });
        assert_eq!(
            total_timeout(&result, Duration::from_secs(1)).outcome,
            Outcome::ConnectTimeout
        );
    }

    #[test]
    fn failure_applies_to_result() {
        let mut result = pb::ProbeResult::default();
        Failure::new(Outcome::EmptyReply, Stage::Read, "closed").apply(&mut result);
        assert_eq!(result.outcome, pb::Outcome::EmptyReply as i32);
        assert_eq!(result.curl_exit, 52);
        assert_eq!(result.stage, pb::Stage::Read as i32);
    }
}
