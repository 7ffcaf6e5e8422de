//! Property-based fuzzing of the probe engine's reply handling: arbitrary
//! bytes and structured-but-mangled HTTP/1.x replies (random status lines,
//! header lines with invalid bytes, absurd Content-Length values, chunked
//! bodies with lying sizes, invalid UTF-8 in `<title>`, a connection closed
//! at any offset) are served from a loopback socket to the real engine —
//! socket, wire recorder, the HTTP/1.1 reader, evidence capture and the failure
//! classifier together.
//!
//! Properties: the engine never panics and always ends with one of the
//! DESIGN §4 outcomes whose stage and curl exit code agree with it; what it
//! keeps (raw reply bytes, body head, header evidence, title) stays within
//! the caps; well-formed replies cut at any offset are named exactly; and the
//! verdict does not depend on how TCP happened to segment the reply.

use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vantage_agent::probe::evidence::{self, MAX_HEADER_EVIDENCE};
use vantage_agent::probe::{ProbeEngine, ProbeLimits, RequestSlot};
use vantage_agent::safety::TargetPolicy;
use vantage_proto::domain::{stage_from_i32, Outcome, Stage};
use vantage_proto::json::result_json;
use vantage_proto::pb;

/// Raw reply bytes the engine keeps to explain a malformed answer
/// (`probe::RAW_CAPTURE`).
const RAW_CAPTURE: usize = 4096;
/// Body bytes kept when a spec leaves `body_capture_bytes` at 0
/// (`probe::DEFAULT_BODY_CAPTURE`).
const DEFAULT_BODY_CAPTURE: usize = 1024;
/// Longest title kept (`evidence::MAX_TITLE`).
const MAX_TITLE_CHARS: usize = 256;
/// Every server here answers and closes at once, so nothing may wait this long.
const TOTAL_MS: u32 = 10_000;

const SLOT: RequestSlot = RequestSlot {
    attempt: 1,
    burst_index: 0,
    deadline: None,
};

// ---------------------------------------------------------------------------
// The loopback origin: reads the request head, writes the reply in the given
// pieces, then closes its side (FIN, never RST) and waits for the agent to
// hang up.
// ---------------------------------------------------------------------------

/// How a reply goes on the wire.
#[derive(Debug, Clone)]
struct Reply {
    bytes: Vec<u8>,
    /// Offsets at which to start a new write (a new TCP segment, usually).
    splits: Vec<usize>,
}

async fn serve_once(reply: Reply) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    let server = tokio::spawn(async move {
        let Ok(Ok((mut stream, _))) =
            tokio::time::timeout(Duration::from_secs(10), listener.accept()).await
        else {
            return;
        };
        let _ = stream.set_nodelay(true);
        // The request has no body: reading its head whole means closing
        // below sends a FIN, not a RST for unread data.
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let mut points: Vec<usize> = reply
            .splits
            .iter()
            .map(|&s| s.min(reply.bytes.len()))
            .collect();
        points.push(reply.bytes.len());
        points.sort_unstable();
        let mut from = 0;
        for to in points {
            if to > from {
                if stream.write_all(&reply.bytes[from..to]).await.is_err() {
                    return;
                }
                let _ = stream.flush().await;
                from = to;
            }
        }
        let _ = stream.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
    });
    (addr, server)
}

/// Agent-side limits and the spec's capture request for one case.
#[derive(Debug, Clone, Copy)]
struct Caps {
    spec_capture: u32,
    max_body_capture: usize,
}

impl Caps {
    const DEFAULT: Caps = Caps {
        spec_capture: 0,
        max_body_capture: 64 * 1024,
    };

    /// Body bytes the engine may keep, as `probe::ProbeEngine::http` computes it.
    fn body_capture(self) -> usize {
        match self.spec_capture {
            0 => DEFAULT_BODY_CAPTURE,
            n => n as usize,
        }
        .min(self.max_body_capture)
    }
}

fn caps() -> impl Strategy<Value = Caps> {
    (
        prop_oneof![Just(0u32), 1u32..=64, 1u32..=100_000],
        prop_oneof![Just(64 * 1024usize), 1usize..=2048],
    )
        .prop_map(|(spec_capture, max_body_capture)| Caps {
            spec_capture,
            max_body_capture,
        })
}

/// Serves `reply` once and probes it with the real engine.
fn probe(reply: &Reply, caps: Caps) -> pb::ProbeResult {
    thread_local! {
        // One runtime per test thread, reused by every case it runs:
        // building one per case costs more than the probe itself.
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
    }
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let (addr, server) = serve_once(reply.clone()).await;
            let engine = ProbeEngine::new(
                TargetPolicy {
                    allow_private: true,
                },
                None,
            )
            .with_limits(ProbeLimits {
                max_body_capture: caps.max_body_capture,
                // Thousands of requests to one address: the per-target rate cap
                // would only slow the run down.
                max_rate_per_target: None,
                ..ProbeLimits::default()
            });
            let spec = pb::ProbeSpec {
                url: format!("http://{addr}/fuzz"),
                route: pb::Route::Direct as i32,
                body_capture_bytes: caps.spec_capture,
                timeouts: Some(pb::PhaseTimeouts {
                    total_ms: TOTAL_MS,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let result = engine.run("fuzz", &spec, SLOT).await;
            server.await.expect("the origin task never panics");
            result
        })
    })
}

// ---------------------------------------------------------------------------
// What must hold for any reply.
// ---------------------------------------------------------------------------

/// The verdict fields that must not depend on TCP segmentation. The raw
/// bytes kept for a malformed reply are left out: they are whatever had
/// arrived when the parser gave up, which depends on segmentation by nature
/// (both are prefixes of the reply, which `check_invariants` checks).
fn verdict(r: &pb::ProbeResult) -> (i32, i32, i32, u32, u64, Vec<u8>) {
    let malformed = r.outcome == pb::Outcome::MalformedResponse as i32;
    (
        r.outcome,
        r.curl_exit,
        r.stage,
        r.status,
        r.body_bytes,
        if malformed {
            Vec::new()
        } else {
            r.body_head.clone()
        },
    )
}

/// Checks every invariant of a result for a server that sent `sent` and
/// closed. Returns the outcome for further, case-specific checks.
fn check_invariants(r: &pb::ProbeResult, sent: &[u8], caps: Caps) -> Outcome {
    let outcome = Outcome::try_from(r.outcome)
        .unwrap_or_else(|e| panic!("not a DESIGN §4 outcome: {e}; {r:?}"));
    let stage = stage_from_i32(r.stage).unwrap_or_else(|e| panic!("unknown stage: {e}; {r:?}"));
    let ctx = || {
        format!(
            "{outcome} exit {} stage {stage:?}: {}",
            r.curl_exit, r.error
        )
    };

    // Outcome, stage and curl exit code agree (DESIGN §4).
    match outcome {
        Outcome::Ok => {
            assert_eq!((stage, r.curl_exit), (None, 0), "{}", ctx());
            assert!((100..=999).contains(&r.status), "{}", ctx());
            assert_eq!(r.body_sha256.len(), 64, "{}", ctx());
            assert!(r.error.is_empty(), "{}", ctx());
        }
        Outcome::EmptyReply => {
            assert_eq!((stage, r.curl_exit), (Some(Stage::Read), 52), "{}", ctx());
            assert!(sent.is_empty(), "bytes were sent: {}", ctx());
            assert_eq!(r.status, 0);
        }
        Outcome::MalformedResponse => {
            assert_eq!(stage, Some(Stage::Read), "{}", ctx());
            assert_eq!(r.status, 0, "{}", ctx());
            // The raw reply is kept as evidence, bounded, byte for byte.
            assert!(r.body_head.len() <= RAW_CAPTURE, "{}", ctx());
            assert!(sent.starts_with(&r.body_head), "{}", ctx());
            assert!(!r.body_head.is_empty(), "{}", ctx());
            match r.curl_exit {
                // curl refuses a reply that does not start like HTTP with 1
                // and calls one that does but breaks the rules "weird" (8).
                1 => assert!(!r.body_head.starts_with(b"HTTP/"), "{}", ctx()),
                8 => assert!(r.body_head.starts_with(b"HTTP/"), "{}", ctx()),
                // A head past the limit: curl's "out of memory".
                27 => {}
                other => panic!("curl exit {other} for a malformed reply: {}", ctx()),
            }
        }
        Outcome::Truncated => {
            assert_eq!(
                (stage, r.curl_exit),
                (Some(Stage::Content), 18),
                "{}",
                ctx()
            );
            assert_ne!(r.status, 0, "{}", ctx());
        }
        Outcome::Reset => {
            // The server never resets; a body that breaks the chunked framing
            // is what curl reports as a receive error (56) too.
            assert_eq!(
                (stage, r.curl_exit),
                (Some(Stage::Content), 56),
                "{}",
                ctx()
            );
            assert_ne!(r.status, 0, "{}", ctx());
        }
        other => panic!(
            "{other} from a server that answers at once and closes: {}",
            ctx()
        ),
    }

    // Captured bytes stay within the caps.
    if outcome != Outcome::MalformedResponse {
        assert!(r.body_head.len() <= caps.body_capture(), "{}", ctx());
        assert!(r.body_head.len() as u64 <= r.body_bytes, "{}", ctx());
    }
    assert!(r.body_bytes <= sent.len() as u64, "{}", ctx());
    let header_bytes: usize = r
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 4)
        .sum();
    assert!(header_bytes <= MAX_HEADER_EVIDENCE, "{}", ctx());
    assert!(r.title.chars().count() <= MAX_TITLE_CHARS, "{}", ctx());
    if outcome == Outcome::Ok {
        assert_eq!(r.title, evidence::title(&r.body_head));
    } else {
        assert!(r.title.is_empty(), "{}", ctx());
    }

    // Timings are cumulative (curl's time_* meanings).
    let t = r.timings.unwrap_or_default();
    assert!(
        t.dns_us <= t.connect_us && t.connect_us <= t.total_us,
        "{t:?}"
    );
    if t.ttfb_us > 0 {
        assert!(
            t.connect_us <= t.ttfb_us && t.ttfb_us <= t.total_us,
            "{t:?}"
        );
    }
    // A first byte is timed once a response head arrived; nothing sent, no
    // first byte.
    if r.status != 0 {
        assert!(t.ttfb_us > 0, "{t:?}, {}", ctx());
    }
    if sent.is_empty() {
        assert_eq!(t.ttfb_us, 0, "{t:?}, {}", ctx());
    }

    // And the result renders as the DESIGN §4 JSON.
    let json = result_json(r);
    assert_eq!(json["outcome"], outcome.as_str());
    serde_json::to_string(&json).expect("a result always serialises");
    outcome
}

// ---------------------------------------------------------------------------
// Reply generators.
// ---------------------------------------------------------------------------

fn splits() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0usize..4096, 0..4)
}

fn eol() -> impl Strategy<Value = &'static [u8]> {
    // httparse accepts a bare LF as a line end, as curl does.
    prop_oneof![9 => Just(&b"\r\n"[..]), 1 => Just(&b"\n"[..])]
}

fn status_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => (prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0")], 100u16..=999, "[ -~]{0,20}")
            .prop_map(|(v, code, reason)| format!("{v} {code} {reason}").into_bytes()),
        2 => "HTTP/[0-9.]{0,4} [0-9A-Za-z]{0,5}[ -~]{0,20}".prop_map(String::into_bytes),
        1 => Just(b"HTTP/1.1 200".to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

fn content_length(body_len: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(body_len.to_string()),
        1 => (0usize..=body_len + 16).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => prop_oneof![
            Just("-1".to_string()),
            Just("18446744073709551615".to_string()),
            Just("18446744073709551616".to_string()),
            Just("99999999999999999999999".to_string()),
            Just("0x10".to_string()),
            Just(" 3 ".to_string()),
            Just("3, 3".to_string()),
            Just("3, 4".to_string()),
            Just(String::new()),
        ],
    ]
}

/// A header value byte: mostly visible ASCII and obs-text (0x80-0xFF, which
/// HTTP allows), sometimes a control byte (which it does not); never a line
/// break, which would end the line.
fn value_byte() -> impl Strategy<Value = u8> {
    prop_oneof![9 => 0x20u8..=0xff, 1 => any::<u8>()].prop_map(|b| {
        if b == b'\n' || b == b'\r' {
            b'_'
        } else {
            b
        }
    })
}

fn header_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        24 => "[A-Za-z0-9-]{1,16}: [ -~]{0,40}".prop_map(String::into_bytes),
        // obs-text and control bytes in the value (no line breaks).
        4 => ("[A-Za-z-]{1,12}", proptest::collection::vec(value_byte(), 0..40))
            .prop_map(|(name, value)| [name.as_bytes(), b": ", &value].concat()),
        // Names with spaces, colons, nothing; obs-fold continuation lines.
        1 => "[ -~]{0,16}".prop_map(String::into_bytes),
        1 => Just(b" folded continuation".to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..40),
        2 => prop_oneof![
            Just("Transfer-Encoding: chunked"),
            Just("Transfer-Encoding: gzip, chunked"),
            Just("Transfer-Encoding: chunked, gzip"),
            Just("Transfer-Encoding: identity"),
            Just("Content-Encoding: gzip"),
            Just("Connection: keep-alive"),
        ]
        .prop_map(|s| s.as_bytes().to_vec()),
    ]
}

fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..512),
        // An HTML page whose title is arbitrary bytes, invalid UTF-8 included.
        2 => (proptest::collection::vec(any::<u8>(), 0..400), "[ -~]{0,64}")
            .prop_map(|(title, tail)| [
                b"<html><head><TITLE lang=x>".as_slice(),
                &title,
                b"</title></head><body>",
                tail.as_bytes(),
            ].concat()),
        1 => (1usize..3000).prop_map(|n| b"<title>".iter().copied().chain(std::iter::repeat_n(b'w', n)).collect()),
    ]
}

/// A chunk whose size line may lie about its data.
fn chunk() -> impl Strategy<Value = (String, Vec<u8>)> {
    (
        proptest::collection::vec(any::<u8>(), 0..64),
        0u8..10,
        "[0-9a-zA-Z;=-]{0,22}",
    )
        .prop_map(|(data, pick, junk)| {
            let size = match pick {
                0..=6 => format!("{:x}", data.len()),
                7 => format!("{:x};ext=1", data.len()),
                8 => format!("{:x}", data.len() + 3),
                _ => junk,
            };
            (size, data)
        })
}

/// How the body is delimited.
#[derive(Debug, Clone)]
enum Framing {
    Length(String, Vec<u8>),
    Chunked(Vec<(String, Vec<u8>)>, bool, Vec<Vec<u8>>),
    Close(Vec<u8>),
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        body_bytes().prop_flat_map(|body| {
            let len = body.len();
            content_length(len).prop_map(move |cl| Framing::Length(cl, body.clone()))
        }),
        (
            proptest::collection::vec(chunk(), 0..8),
            any::<bool>(),
            proptest::collection::vec(header_line(), 0..2),
        )
            .prop_map(|(chunks, last, trailers)| Framing::Chunked(chunks, last, trailers)),
        body_bytes().prop_map(Framing::Close),
    ]
}

/// A reply that looks like HTTP/1.x, mangled anywhere, possibly cut short.
fn mangled_reply() -> impl Strategy<Value = Reply> {
    (
        status_line(),
        eol(),
        proptest::collection::vec(header_line(), 0..6),
        framing(),
        proptest::option::weighted(0.3, any::<Index>()),
        splits(),
    )
        .prop_map(|(status, eol, headers, framing, cut, splits)| {
            let mut bytes = status;
            bytes.extend_from_slice(eol);
            for h in headers {
                bytes.extend_from_slice(&h);
                bytes.extend_from_slice(eol);
            }
            match framing {
                Framing::Length(cl, body) => {
                    bytes.extend_from_slice(format!("Content-Length: {cl}").as_bytes());
                    bytes.extend_from_slice(eol);
                    bytes.extend_from_slice(eol);
                    bytes.extend_from_slice(&body);
                }
                Framing::Chunked(chunks, last, trailers) => {
                    bytes.extend_from_slice(b"Transfer-Encoding: chunked");
                    bytes.extend_from_slice(eol);
                    bytes.extend_from_slice(eol);
                    for (size, data) in chunks {
                        bytes.extend_from_slice(size.as_bytes());
                        bytes.extend_from_slice(b"\r\n");
                        bytes.extend_from_slice(&data);
                        bytes.extend_from_slice(b"\r\n");
                    }
                    if last {
                        bytes.extend_from_slice(b"0\r\n");
                        for t in trailers {
                            bytes.extend_from_slice(&t);
                            bytes.extend_from_slice(b"\r\n");
                        }
                        bytes.extend_from_slice(b"\r\n");
                    }
                }
                Framing::Close(body) => {
                    bytes.extend_from_slice(eol);
                    bytes.extend_from_slice(&body);
                }
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            Reply { bytes, splits }
        })
}

/// A well-formed reply: its head, its body as the client should see it, and
/// the wire bytes with, for every offset, how much body precedes it.
#[derive(Debug, Clone)]
struct WellFormed {
    status: u16,
    wire: Vec<u8>,
    head_len: usize,
    body: Vec<u8>,
    /// For chunked bodies: body bytes contained in `wire[..k]`, per offset k.
    body_before: Vec<usize>,
}

fn well_formed() -> impl Strategy<Value = WellFormed> {
    (
        prop::sample::select(vec![200u16, 201, 403, 404, 429, 500, 502, 503, 520, 522]),
        proptest::collection::vec("[A-Za-z0-9-]{1,16}: [ -~]{0,40}", 0..6),
        proptest::collection::vec(body_bytes(), 1..5),
        any::<bool>(),
    )
        .prop_map(|(status, headers, pieces, chunked)| {
            let mut wire = format!("HTTP/1.1 {status} Whatever\r\n").into_bytes();
            for h in headers {
                // Framing headers from the random set would change the
                // meaning of the body.
                let lower = h.to_ascii_lowercase();
                if !lower.starts_with("content-length") && !lower.starts_with("transfer-encoding") {
                    wire.extend_from_slice(h.as_bytes());
                    wire.extend_from_slice(b"\r\n");
                }
            }
            let body: Vec<u8> = pieces.concat();
            let mut body_before;
            if chunked {
                wire.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                let head_len = wire.len();
                body_before = vec![0; head_len + 1];
                let mut seen = 0;
                let mut push = |wire: &mut Vec<u8>, bytes: &[u8], data: bool| {
                    for &b in bytes {
                        wire.push(b);
                        if data {
                            seen += 1;
                        }
                        body_before.push(seen);
                    }
                };
                for piece in pieces.iter().filter(|p| !p.is_empty()) {
                    push(
                        &mut wire,
                        format!("{:x}\r\n", piece.len()).as_bytes(),
                        false,
                    );
                    push(&mut wire, piece, true);
                    push(&mut wire, b"\r\n", false);
                }
                push(&mut wire, b"0\r\n\r\n", false);
                WellFormed {
                    status,
                    wire,
                    head_len,
                    body,
                    body_before,
                }
            } else {
                wire.extend_from_slice(
                    format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                );
                let head_len = wire.len();
                body_before = (0..=head_len).map(|_| 0).collect();
                body_before.extend(1..=body.len());
                wire.extend_from_slice(&body);
                WellFormed {
                    status,
                    wire,
                    head_len,
                    body,
                    body_before,
                }
            }
        })
}

/// The exact verdict for `reply.wire` cut after `k` bytes.
fn check_cut(reply: &WellFormed, k: usize, r: &pb::ProbeResult, caps: Caps) {
    let sent = &reply.wire[..k];
    let outcome = check_invariants(r, sent, caps);
    let body_seen = reply.body_before[k];
    let expected_head = &reply.body[..body_seen.min(caps.body_capture())];
    if k == 0 {
        assert_eq!(outcome, Outcome::EmptyReply);
    } else if k < reply.head_len {
        assert_eq!(
            outcome,
            Outcome::MalformedResponse,
            "cut at {k}: {}",
            r.error
        );
        assert_eq!(r.curl_exit, if k >= 5 { 8 } else { 1 });
        assert_eq!(r.body_head, sent, "the partial head is kept as evidence");
    } else if k < reply.wire.len() {
        assert_eq!(outcome, Outcome::Truncated, "cut at {k}: {}", r.error);
        assert_eq!(r.status, u32::from(reply.status));
        assert_eq!(r.body_bytes, body_seen as u64);
        assert_eq!(r.body_head, expected_head);
    } else {
        assert_eq!(outcome, Outcome::Ok, "{}", r.error);
        assert_eq!(r.status, u32::from(reply.status));
        assert_eq!(r.body_bytes, reply.body.len() as u64);
        assert_eq!(r.body_sha256, hex::encode(Sha256::digest(&reply.body)));
        assert_eq!(r.body_head, expected_head);
    }
}

// ---------------------------------------------------------------------------
// The targets.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Anything at all, with or without an HTTP-looking start.
    #[test]
    fn arbitrary_bytes(
        prefix in prop_oneof![Just(&b""[..]), Just(&b"HTTP/1.1 "[..]), Just(&b"HTTP/1.1 200 OK\r\n"[..])],
        tail in proptest::collection::vec(any::<u8>(), 0..2048),
        splits in splits(),
        caps in caps(),
    ) {
        let reply = Reply { bytes: [prefix, &tail].concat(), splits };
        let r = probe(&reply, caps);
        check_invariants(&r, &reply.bytes, caps);
    }

    /// HTTP/1.x replies mangled anywhere: status line, header bytes,
    /// Content-Length, chunk sizes, trailers, title bytes, an early close.
    #[test]
    fn mangled_replies(reply in mangled_reply(), caps in caps()) {
        let r = probe(&reply, caps);
        check_invariants(&r, &reply.bytes, caps);
    }
}

proptest! {
    // Two probes per case.
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// The verdict is a property of the bytes, not of how TCP segmented
    /// them: the same reply in one write and in many gives the same result.
    #[test]
    fn segmentation_does_not_change_the_verdict(reply in mangled_reply()) {
        let whole = probe(&Reply { bytes: reply.bytes.clone(), splits: Vec::new() }, Caps::DEFAULT);
        let pieces: Vec<usize> = (1..reply.bytes.len()).step_by(7).collect();
        let split = probe(&Reply { bytes: reply.bytes.clone(), splits: pieces }, Caps::DEFAULT);
        check_invariants(&whole, &reply.bytes, Caps::DEFAULT);
        check_invariants(&split, &reply.bytes, Caps::DEFAULT);
        prop_assert_eq!(verdict(&whole), verdict(&split), "{} / {}", whole.error, split.error);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// A well-formed reply closed after any number of bytes is named
    /// exactly: empty reply, malformed (partial head), truncated (partial
    /// body, with the body bytes that did arrive) or ok.
    #[test]
    fn well_formed_reply_cut_anywhere(
        reply in well_formed(),
        cut in any::<Index>(),
        whole in prop::bool::weighted(0.2),
        splits in splits(),
        caps in caps(),
    ) {
        let k = if whole { reply.wire.len() } else { cut.index(reply.wire.len() + 1) };
        let r = probe(&Reply { bytes: reply.wire[..k].to_vec(), splits }, caps);
        check_cut(&reply, k, &r, caps);
    }
}

/// Every offset of one reply that has everything: chunk extensions,
/// trailers, an invalid-UTF-8 title, a body longer than the capture.
#[test]
fn one_reply_cut_at_every_offset() {
    let caps = Caps {
        spec_capture: 64,
        ..Caps::DEFAULT
    };
    let mut body = b"<html><title>caf\xc3 \xff\xfe\xe9 broken</title>".to_vec();
    body.extend(std::iter::repeat_n(b'z', 150));
    let mut wire = b"HTTP/1.1 503 Busy\r\nServer: hostile\r\nX-Bytes: \xff\x80\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let head_len = wire.len();
    let mut body_before = vec![0; head_len + 1];
    let mut seen = 0;
    for (i, piece) in body.chunks(90).enumerate() {
        let size = if i == 0 {
            format!("{:X};name=value\r\n", piece.len())
        } else {
            format!("{:x}\r\n", piece.len())
        };
        for &b in size.as_bytes() {
            wire.push(b);
            body_before.push(seen);
        }
        for &b in piece {
            wire.push(b);
            seen += 1;
            body_before.push(seen);
        }
        for &b in b"\r\n" {
            wire.push(b);
            body_before.push(seen);
        }
    }
    for &b in b"0\r\nX-Trailer: t\r\n\r\n" {
        wire.push(b);
        body_before.push(seen);
    }
    let reply = WellFormed {
        status: 503,
        wire,
        head_len,
        body,
        body_before,
    };
    for k in 0..=reply.wire.len() {
        let r = probe(
            &Reply {
                bytes: reply.wire[..k].to_vec(),
                splits: Vec::new(),
            },
            caps,
        );
        check_cut(&reply, k, &r, caps);
        if k == reply.wire.len() {
            assert!(
                r.title
                    .starts_with("caf\u{fffd} \u{fffd}\u{fffd}\u{fffd} broken"),
                "{:?}",
                r.title
            );
        }
    }
}

/// Replies whose verdict curl fixes, one of each malformation family.
#[test]
fn named_malformations() {
    let cases: [(&[u8], Outcome, i32); 12] = [
        (b"SSH-2.0-OpenSSH_9.2\r\n", Outcome::MalformedResponse, 1),
        (b"HTTP/1.1 2OO OK\r\n\r\n", Outcome::MalformedResponse, 8),
        (b"HTTP/1.1 99 OK\r\n\r\n", Outcome::MalformedResponse, 8),
        (b"HTTP/1.1 1000 OK\r\n\r\n", Outcome::MalformedResponse, 8),
        (
            b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",
            Outcome::MalformedResponse,
            8,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nabc",
            Outcome::MalformedResponse,
            8,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
            Outcome::MalformedResponse,
            8,
        ),
        // A length beyond 63 bits is ignored, as curl ignores it ("overflow
        // content-length"; curl 7.88 exits 0 with 3 bytes): the body runs
        // until the close.
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\nabc",
            Outcome::Ok,
            0,
        ),
        // Bytes past the announced length are not part of the body.
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef",
            Outcome::Ok,
            0,
        ),
        // A size line that is not hex, or a chunk longer than announced,
        // breaks the framing mid-body: curl's receive error.
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            Outcome::Reset,
            56,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n",
            Outcome::Reset,
            56,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nabc\r\n",
            Outcome::Reset,
            56,
        ),
    ];
    for (bytes, outcome, exit) in cases {
        let reply = Reply {
            bytes: bytes.to_vec(),
            splits: Vec::new(),
        };
        let r = probe(&reply, Caps::DEFAULT);
        let got = check_invariants(&r, bytes, Caps::DEFAULT);
        assert_eq!(
            (got, r.curl_exit),
            (outcome, exit),
            "{:?}: {}",
            String::from_utf8_lossy(bytes),
            r.error
        );
    }
}
