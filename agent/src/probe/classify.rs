//! Names a failed request: its outcome (DESIGN §4), the stage where it
//! stopped, and the exit code curl gives for the same failure. Decisions come
//! from typed events — the socket error kind, what the wire recorder saw,
//! hyper's error class, rustls' error — never from error-message text.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use vantage_proto::domain::{Outcome, PeerClose, Stage};
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
    /// How the peer ended the connection, when it did.
    pub peer_close: Option<PeerClose>,
}

impl Failure {
    /// A failure with the outcome's usual curl exit code.
    pub fn new(outcome: Outcome, stage: Stage, error: impl Into<String>) -> Self {
        Failure {
            outcome,
            stage,
            curl_exit: outcome.curl_exit(),
            error: error.into(),
            peer_close: None,
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
            peer_close: None,
        }
    }

    /// Notes how the peer ended the connection.
    pub fn closed_by(mut self, close: PeerClose) -> Self {
        self.peer_close = Some(close);
        self
    }

    /// Writes the failure into a result.
    pub fn apply(self, result: &mut pb::ProbeResult) {
        result.outcome = pb::Outcome::from(self.outcome) as i32;
        result.curl_exit = self.curl_exit;
        result.stage = pb::Stage::from(self.stage) as i32;
        result.error = self.error;
        result.peer_close = PeerClose::to_wire(self.peer_close);
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
    let failure = Failure::new(
        Outcome::TlsHandshakeFailed,
        Stage::Tls,
        format!("TLS handshake: {err}"),
    );
    // A reset here is what SNI filtering does; curl still says 35.
    match err.kind() {
        kind if is_reset(Some(kind)) => failure.closed_by(PeerClose::Reset),
        io::ErrorKind::UnexpectedEof => failure.closed_by(PeerClose::Fin),
        _ => failure,
    }
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

/// A failure in the HTTP layer, by class: what the classifier needs from
/// hyper's error (HTTP/2) or from the engine's own HTTP/1.1 reader
/// (`h1`), so both are named by one set of rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpFault {
    /// Its class.
    pub kind: HttpFaultKind,
    /// The socket error underneath, if one caused it.
    pub io: Option<io::ErrorKind>,
    /// A human-readable detail.
    pub detail: String,
}

/// The classes of [`HttpFault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpFaultKind {
    /// The reply breaks HTTP's syntax (or its status code is not one).
    Parse,
    /// The response head is larger than the limit.
    TooLarge,
    /// The peer closed before the message was complete.
    Incomplete,
    /// Anything else: a socket error, a broken chunk, a protocol error.
    Other,
}

impl HttpFault {
    /// A fault of `kind` with no socket error underneath.
    pub fn new(kind: HttpFaultKind, detail: impl Into<String>) -> Self {
        HttpFault {
            kind,
            io: None,
            detail: detail.into(),
        }
    }

    /// A fault caused by a socket error.
    pub fn io(err: &io::Error, detail: String) -> Self {
        HttpFault {
            kind: HttpFaultKind::Other,
            io: Some(err.kind()),
            detail,
        }
    }
}

impl std::fmt::Display for HttpFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl From<&hyper::Error> for HttpFault {
    fn from(err: &hyper::Error) -> Self {
        let kind = if err.is_parse_too_large() {
            HttpFaultKind::TooLarge
        } else if err.is_parse() || err.is_parse_status() {
            HttpFaultKind::Parse
        } else if err.is_incomplete_message() {
            HttpFaultKind::Incomplete
        } else {
            HttpFaultKind::Other
        };
        HttpFault {
            kind,
            io: io_kind(err),
            detail: err.to_string(),
        }
    }
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
pub fn http_error(err: &HttpFault, wire: &WireEvents, tls: bool) -> Failure {
    let detail = &err.detail;
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
        )
        .closed_by(PeerClose::Reset);
    }
    if err.kind == HttpFaultKind::TooLarge {
        // curl caps a response header at 100 KiB and gives up with 27
        // ("out of memory"), not with a protocol error.
        return Failure::with_exit(
            Outcome::MalformedResponse,
            Stage::Read,
            27,
            format!("response header larger than the limit: {detail}"),
        );
    }
    if err.kind == HttpFaultKind::Parse {
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
        )
        .closed_by(PeerClose::Fin);
    }
    malformed(wire, detail)
}

/// A reply that is not valid HTTP. curl says 1 when the reply does not even
/// start like HTTP (it refuses HTTP/0.9) and 8 ("weird server reply") when it
/// does but breaks the rules.
fn malformed(wire: &WireEvents, detail: &str) -> Failure {
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
pub fn body_error(err: &HttpFault, wire: &WireEvents, _tls: bool) -> Failure {
    if is_reset(wire.read_error) || is_reset(err.io) {
        return Failure::new(
            Outcome::Reset,
            Stage::Content,
            format!("connection reset mid-body: {err}"),
        )
        .closed_by(PeerClose::Reset);
    }
    if err.kind == HttpFaultKind::Incomplete
        || wire.eof
        || wire.read_error == Some(io::ErrorKind::UnexpectedEof)
    {
        return Failure::new(
            Outcome::Truncated,
            Stage::Content,
            format!("body cut short: {err}"),
        )
        .closed_by(PeerClose::Fin);
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
        let junk = malformed(&wire(b"SSH-2.0-OpenSSH_9.2\r\n"), "x");
        assert_eq!(
            (junk.outcome, junk.curl_exit),
            (Outcome::MalformedResponse, 1)
        );
        let weird = malformed(&wire(b"HTTP/1.1 2OO OK\r\n"), "x");
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

/// Property-based fuzzing of the classifier: real hyper errors of every
/// class the engine meets, combined with any wire history (bytes or none,
/// clean close, resets, failed writes, TLS or not), always name a DESIGN §4
/// outcome whose stage and curl exit code agree, and the decisive wire
/// events win in the documented order.
#[cfg(test)]
mod fuzz {
    use std::sync::OnceLock;

    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use proptest::prelude::*;

    use super::super::h1;
    use super::super::record::Recorder;
    use super::super::testing::Peer;
    use super::*;

    /// Where a reply failed: before its head was complete, or in its body.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Phase {
        Head,
        Body,
    }

    /// The fault hyper gives for the peer's reply, before or during the body.
    async fn hyper_fault<S>(peer: S, reply: &[u8]) -> (Phase, HttpFault)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(8192)
            .handshake(hyper_util::rt::TokioIo::new(peer))
            .await
            .expect("handshake on a pipe");
        tokio::spawn(conn);
        let request = http::Request::builder()
            .uri("/")
            .header("host", "fuzz.test")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let mut body = match sender.send_request(request).await {
            Err(e) => return (Phase::Head, HttpFault::from(&e)),
            Ok(response) => response.into_body(),
        };
        loop {
            match body.frame().await {
                Some(Err(e)) => return (Phase::Body, HttpFault::from(&e)),
                Some(Ok(_)) => {}
                None => panic!("{:?} is a complete reply", String::from_utf8_lossy(reply)),
            }
        }
    }

    /// The fault the engine's own HTTP/1.1 reader gives for the same reply.
    async fn h1_fault<S>(peer: S, reply: &[u8]) -> (Phase, HttpFault)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut conn = h1::Connection::new(peer);
        if let Err(e) = conn
            .send(b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n")
            .await
        {
            return (Phase::Head, e);
        }
        if let Err(e) = conn.read_head(8192, false).await {
            return (Phase::Head, e);
        }
        loop {
            match conn.next_body_chunk().await {
                Err(e) => return (Phase::Body, e),
                Ok(Some(_)) => {}
                Ok(None) => panic!("{:?} is a complete reply", String::from_utf8_lossy(reply)),
            }
        }
    }

    /// Replies that fail, each with how the peer ends after it.
    fn cases() -> Vec<(Vec<u8>, Option<io::ErrorKind>)> {
        let huge_head = [b"HTTP/1.1 200 OK\r\nX-Big: ".as_slice(), &[b'a'; 20_000]].concat();
        let cases: Vec<(&[u8], Option<io::ErrorKind>)> = vec![
            // Before the head is complete.
            (b"HTTP/1.1 099 Odd\r\n\r\n", None),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                None,
            ),
            (b"", None),
            (b"", Some(io::ErrorKind::ConnectionReset)),
            (b"", Some(io::ErrorKind::UnexpectedEof)),
            (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", None),
            (b"HTTP/1.1 2OO OK\r\n\r\n", None),
            (b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", None),
            (b"HTTP/1.1 200 OK\r\nX-Cut", None),
            (
                b"HTTP/1.1 200 OK\r\nX-Cut",
                Some(io::ErrorKind::ConnectionReset),
            ),
            (&huge_head, None),
            // In the body.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", None),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                Some(io::ErrorKind::ConnectionReset),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                Some(io::ErrorKind::UnexpectedEof),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                None,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                None,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                Some(io::ErrorKind::ConnectionReset),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
                None,
            ),
            (
                b"HTTP/1.0 200 OK\r\n\r\nab",
                Some(io::ErrorKind::ConnectionReset),
            ),
        ];
        cases
            .into_iter()
            .map(|(reply, end)| (reply.to_vec(), end))
            .collect()
    }

    fn block_on<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(fut)
    }

    /// One real fault per class the engine classifies, from hyper and from
    /// the engine's own reader.
    fn errors() -> &'static [HttpFault] {
        static ERRORS: OnceLock<Vec<HttpFault>> = OnceLock::new();
        ERRORS.get_or_init(|| {
            cases()
                .iter()
                .flat_map(|(reply, end)| {
                    [
                        block_on(hyper_fault(Peer::new(reply, *end), reply)).1,
                        block_on(h1_fault(Peer::new(reply, *end), reply)).1,
                    ]
                })
                .collect()
        })
    }

    fn classify(phase: Phase, fault: &HttpFault, wire: &WireEvents, tls: bool) -> Failure {
        match phase {
            Phase::Head => http_error(fault, wire, tls),
            Phase::Body => body_error(fault, wire, tls),
        }
    }

    /// The engine's HTTP/1.1 reader fails every broken reply where hyper
    /// did, and the classifier names both failures alike (outcome, stage,
    /// curl exit, how the peer closed), whatever the read sizes.
    #[test]
    fn the_engine_reader_fails_like_hyper_on_every_broken_reply() {
        for (reply, end) in cases() {
            for tls in [false, true] {
                let (hyper_io, hyper_events) = Recorder::new(Peer::new(&reply, end), 4096);
                let (phase, fault) = block_on(hyper_fault(hyper_io, &reply));
                let by_hyper = classify(phase, &fault, &hyper_events.snapshot(), tls);
                for step in [1, 5, usize::MAX] {
                    let peer = Peer::new(&reply, end).in_steps_of(step);
                    let (h1_io, h1_events) = Recorder::new(peer, 4096);
                    let (h1_phase, h1_fault) = block_on(h1_fault(h1_io, &reply));
                    let by_h1 = classify(h1_phase, &h1_fault, &h1_events.snapshot(), tls);
                    let what = format!(
                        "{:?} then {end:?} (tls {tls}, reads of {step}): hyper {fault:?}, engine {h1_fault:?}",
                        String::from_utf8_lossy(&reply[..reply.len().min(80)])
                    );
                    assert_eq!(h1_phase, phase, "{what}");
                    assert_eq!(
                        (
                            by_h1.outcome,
                            by_h1.stage,
                            by_h1.curl_exit,
                            by_h1.peer_close
                        ),
                        (
                            by_hyper.outcome,
                            by_hyper.stage,
                            by_hyper.curl_exit,
                            by_hyper.peer_close
                        ),
                        "{what}"
                    );
                }
            }
        }
    }

    fn kind() -> impl Strategy<Value = Option<io::ErrorKind>> {
        proptest::option::of(proptest::sample::select(vec![
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::TimedOut,
            io::ErrorKind::Other,
        ]))
    }

    fn wire_events() -> impl Strategy<Value = WireEvents> {
        (
            prop_oneof![Just(0u64), any::<u64>()],
            prop_oneof![
                Just(Vec::new()),
                proptest::collection::vec(any::<u8>(), 0..32),
                proptest::collection::vec(any::<u8>(), 0..32).prop_map(|tail| [
                    b"HTTP/".as_slice(),
                    &tail
                ]
                .concat()),
            ],
            any::<bool>(),
            kind(),
            kind(),
        )
            .prop_map(
                |(bytes_read, head, eof, read_error, write_error)| WireEvents {
                    bytes_read,
                    head,
                    eof,
                    read_error,
                    write_error,
                    ..Default::default()
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn head_failures_are_consistent(
            which in any::<proptest::sample::Index>(),
            wire in wire_events(),
            tls in any::<bool>(),
        ) {
            let err = &errors()[which.index(errors().len())];
            let f = http_error(err, &wire, tls);
            let reset = is_reset(wire.read_error)
                || (wire.bytes_read == 0 && is_reset(wire.write_error));
            let send_failed = wire.bytes_read == 0
                && wire.write_error.is_some()
                && !is_reset(wire.read_error);
            match (f.outcome, f.stage, f.curl_exit) {
                (Outcome::SendFailed, Stage::Write, 55) => prop_assert!(send_failed),
                (Outcome::Reset, Stage::Read, 56) => prop_assert!(reset && !send_failed),
                (Outcome::MalformedResponse, Stage::Read, exit) => {
                    prop_assert!(!reset && !send_failed);
                    match exit {
                        27 => prop_assert_eq!(err.kind, HttpFaultKind::TooLarge),
                        8 => prop_assert!(wire.head.starts_with(b"HTTP/")),
                        1 => prop_assert!(!wire.head.starts_with(b"HTTP/")),
                        other => return Err(TestCaseError::fail(format!("exit {other} for {}", f.error))),
                    }
                }
                (Outcome::EmptyReply, Stage::Read, exit) => {
                    prop_assert!(!reset && !send_failed && wire.bytes_read == 0);
                    prop_assert!(!matches!(err.kind, HttpFaultKind::Parse | HttpFaultKind::TooLarge));
                    let tls_eof = tls && wire.read_error == Some(io::ErrorKind::UnexpectedEof);
                    prop_assert_eq!(exit, if tls_eof { 56 } else { 52 });
                }
                other => return Err(TestCaseError::fail(format!("{other:?} before the head: {}", f.error))),
            }
            prop_assert!(!f.error.is_empty());
        }

        #[test]
        fn body_failures_are_consistent(
            which in any::<proptest::sample::Index>(),
            wire in wire_events(),
            tls in any::<bool>(),
        ) {
            let err = &errors()[which.index(errors().len())];
            let f = body_error(err, &wire, tls);
            let reset = is_reset(wire.read_error) || is_reset(err.io);
            let cut = err.kind == HttpFaultKind::Incomplete
                || wire.eof
                || wire.read_error == Some(io::ErrorKind::UnexpectedEof);
            match (f.outcome, f.stage, f.curl_exit) {
                (Outcome::Reset, Stage::Content, 56) => prop_assert!(reset || !cut),
                (Outcome::Truncated, Stage::Content, 18) => prop_assert!(cut && !reset),
                other => return Err(TestCaseError::fail(format!("{other:?} in the body: {}", f.error))),
            }
        }

        /// Whatever had happened when the total deadline hit, the phase it
        /// names agrees with the stage, and curl's exit is 28.
        #[test]
        fn total_timeout_names_a_consistent_phase(
            status in prop_oneof![Just(0u32), 100u32..1000],
            https in any::<bool>(),
            timings in proptest::option::of(proptest::array::uniform3(prop_oneof![Just(0u64), 1u64..u64::MAX])),
        ) {
            let result = pb::ProbeResult {
                url: if https { "https://x.test/" } else { "http://x.test/" }.into(),
                status,
                timings: timings.map(|[dns_us, connect_us, tls_us]| pb::Timings { dns_us, connect_us, tls_us, ..Default::default() }),
                ..Default::default()
            };
            let f = total_timeout(&result, Duration::from_millis(1500));
            prop_assert_eq!(f.curl_exit, 28);
            let expected_stage = match f.outcome {
                Outcome::BodyTimeout => Stage::Content,
                Outcome::DnsFailure => Stage::Dns,
                Outcome::ConnectTimeout => Stage::Connect,
                Outcome::TlsHandshakeFailed => Stage::Tls,
                Outcome::ResponseTimeout => Stage::Read,
                other => return Err(TestCaseError::fail(format!("{other} on a total timeout"))),
            };
            prop_assert_eq!(f.stage, expected_stage);
            prop_assert_eq!(f.outcome == Outcome::BodyTimeout, status != 0);
            if f.outcome == Outcome::TlsHandshakeFailed {
                prop_assert!(https);
            }
            let mut applied = pb::ProbeResult::default();
            f.clone().apply(&mut applied);
            prop_assert_eq!(applied.outcome, pb::Outcome::from(f.outcome) as i32);
            prop_assert_eq!(applied.stage, pb::Stage::from(f.stage) as i32);
            prop_assert_eq!(applied.curl_exit, 28);
            prop_assert_eq!(applied.error, f.error);
        }

        #[test]
        fn connect_failures_are_consistent(kind in kind(), port in any::<u16>()) {
            let kind = kind.unwrap_or(io::ErrorKind::ConnectionRefused);
            let addr = SocketAddr::from(([192, 0, 2, 1], port));
            let f = connect_error(&io::Error::from(kind), addr);
            prop_assert_eq!(f.stage, Stage::Connect);
            let expected = match kind {
                io::ErrorKind::ConnectionRefused => (Outcome::ConnectRefused, 7),
                io::ErrorKind::TimedOut => (Outcome::ConnectTimeout, 28),
                _ => (Outcome::NetworkUnreachable, 7),
            };
            prop_assert_eq!((f.outcome, f.curl_exit), expected);
            prop_assert!(f.error.contains(&addr.to_string()));
        }
    }
}
