//! Hostile origins against the real `vantage-agent probe` binary: endless
//! header lines, one endless header line, endless bodies (chunked, and a
//! Content-Length of a terabyte), 10,000 one-byte chunks, invalid UTF-8 in
//! the HTML title, and a gzip bomb. Each origin is a raw-bytes server written
//! here on a loopback port; each case asserts the DESIGN §4 outcome, that
//! what the JSON result keeps stays within the agent's caps, that the probe
//! ends within its timeout, and that the agent's peak resident memory stays
//! under `RSS_CAP_KIB`.
//!
//! How peak memory is measured: the kernel's own high-water mark of the
//! child's resident set (`VmHWM` in `/proc/PID/status`). `getrusage` is not
//! in rustix 1.x and this workspace forbids `unsafe`, so the child is kept
//! alive past the hostile exchange instead: it runs `--attempts 2`, attempts
//! run one after the other, and the origin holds the second connection until
//! the test has read `VmHWM`. The reading therefore covers the whole hostile
//! exchange, with no sampling and no sleeping.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use vantage_lab::process::bin_path;

/// Peak resident memory allowed to the agent, whatever the origin does.
const RSS_CAP_KIB: u64 = 64 * 1024;
/// Body bytes the agent reads at most (`ProbeLimits::max_body_bytes`).
const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// Past the body limit, the agent may have read at most one more read
/// buffer (hyper's reads are bounded by its 100 KiB buffer); a mebibyte is a
/// generous bound that still proves the download stopped.
const MAX_BODY_OVERSHOOT: u64 = 1024 * 1024;
/// Body bytes kept as evidence by `vantage-agent probe` (the engine default).
const BODY_CAPTURE: usize = 1024;
/// Raw reply bytes kept to explain a malformed reply (`probe::RAW_CAPTURE`).
const RAW_CAPTURE: usize = 4096;
/// Header evidence kept per result (`evidence::MAX_HEADER_EVIDENCE`).
const MAX_HEADER_EVIDENCE: usize = 16 * 1024;
/// Longest title kept (`evidence::MAX_TITLE`).
const MAX_TITLE: usize = 256;
/// The probe's own limit (`--timeout`), DNS to last body byte.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// The whole case: two probes plus process start and exit.
const CASE_TIMEOUT: Duration = Duration::from_secs(90);
/// Any endless writer stops after this many bytes even if nobody hangs up.
const WRITE_BOUND: u64 = 4 * 1024 * 1024 * 1024;

/// What the hostile origin sends on the first connection.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    /// A status line, then header lines forever.
    EndlessHeaderLines,
    /// A status line, then one header line that never ends.
    EndlessHeaderLine,
    /// A chunked body that never ends.
    EndlessChunkedBody,
    /// `Content-Length: 1 TiB`, and a body to match.
    HugeContentLength,
    /// A body in 10,000 chunks of one byte each, one write per chunk.
    TinyChunks,
    /// An HTML page whose title is invalid UTF-8 and far longer than kept.
    InvalidUtf8Title,
    /// A valid gzip stream far larger than the body limit, which would
    /// inflate about 159-fold, served with `Content-Encoding: gzip`.
    GzipBomb,
}

/// What the origin saw.
#[derive(Debug, Default)]
struct Seen {
    /// The head of the first (hostile) request.
    request: Vec<u8>,
}

/// A hostile origin on a loopback port. The first connection gets the
/// hostile reply; the second is held until `release` (see the module docs)
/// and then gets an empty 204.
struct Origin {
    addr: SocketAddr,
    second_connection: oneshot::Receiver<()>,
    release: oneshot::Sender<()>,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

async fn read_request_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

impl Origin {
    async fn start(hostile: Hostile) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound address");
        eprintln!("{hostile:?}: hostile origin listening on {addr}");
        let (second_tx, second_connection) = oneshot::channel();
        let (release, release_rx) = oneshot::channel::<()>();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let Ok((mut first, _)) = listener.accept().await else {
                return;
            };
            let request = read_request_head(&mut first).await;
            record.lock().expect("lock").request = request;
            let writer = tokio::spawn(async move {
                let _ = first.set_nodelay(true);
                // Every error means the agent hung up: that is the point.
                let _ = serve(hostile, &mut first).await;
            });
            let Ok((mut second, _)) = listener.accept().await else {
                return;
            };
            read_request_head(&mut second).await;
            let _ = second_tx.send(());
            let _ = release_rx.await;
            let _ = second
                .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                .await;
            let _ = second.shutdown().await;
            let mut sink = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                while matches!(second.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
            writer.abort();
        });
        Origin {
            addr,
            second_connection,
            release,
            seen,
            task,
        }
    }
}

/// Writes `unit` again and again, at most `WRITE_BOUND` bytes in all.
async fn repeat(stream: &mut TcpStream, unit: &[u8]) -> std::io::Result<()> {
    let mut written = 0u64;
    while written < WRITE_BOUND {
        stream.write_all(unit).await?;
        written += unit.len() as u64;
    }
    Ok(())
}

async fn serve(hostile: Hostile, stream: &mut TcpStream) -> std::io::Result<()> {
    match hostile {
        Hostile::EndlessHeaderLines => {
            stream.write_all(b"HTTP/1.1 200 OK\r\n").await?;
            let mut block = Vec::new();
            for i in 0..1000 {
                block.extend_from_slice(format!("X-Flood-{i}: {i}\r\n").as_bytes());
            }
            repeat(stream, &block).await
        }
        Hostile::EndlessHeaderLine => {
            stream.write_all(b"HTTP/1.1 200 OK\r\nX-Endless: ").await?;
            repeat(stream, &vec![b'a'; 64 * 1024]).await
        }
        Hostile::EndlessChunkedBody => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await?;
            let chunk = [b"10000\r\n".as_slice(), &vec![b'x'; 0x10000], b"\r\n"].concat();
            repeat(stream, &chunk).await
        }
        Hostile::HugeContentLength => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n")
                .await?;
            repeat(stream, &vec![b'y'; 64 * 1024]).await
        }
        Hostile::TinyChunks => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await?;
            for byte in tiny_chunks_body() {
                stream
                    .write_all(&[b'1', b'\r', b'\n', byte, b'\r', b'\n'])
                    .await?;
            }
            stream.write_all(b"0\r\n\r\n").await
        }
        Hostile::InvalidUtf8Title => {
            let body = invalid_utf8_page();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await
        }
        Hostile::GzipBomb => {
            let bomb = GzipBomb::new(GZIP_BOMB_UNITS);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                 Content-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                bomb.len()
            );
            stream.write_all(head.as_bytes()).await?;
            bomb.write_to(stream).await
        }
    }
}

fn tiny_chunks_body() -> Vec<u8> {
    (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A page whose title is invalid UTF-8 (lone continuation bytes, a cut
/// multi-byte sequence, bytes that never occur in UTF-8) and 5,000 bytes
/// long, far past both the title cap and the body capture.
fn invalid_utf8_page() -> Vec<u8> {
    let mut title = b"Caf\xc3 \xff\xfe \x80\x80 \xed\xa0\x80 ok ".to_vec();
    while title.len() < 5_000 {
        title.extend_from_slice(b"\xc0\xaf word \xf8\x88\x80\x80\x80 ");
    }
    [
        b"<!doctype html><html><head><title>".as_slice(),
        &title,
        b"</title></head><body>hostile</body></html>",
    ]
    .concat()
}

// ---------------------------------------------------------------------------
// The gzip bomb: a valid gzip member holding one fixed-Huffman deflate block
// of a literal zero byte followed by matches "258 bytes at distance 1". Each
// match is 13 bits, so after the first one the stream is byte-aligned and
// repeats a 13-byte unit of 8 matches (2,064 output bytes) for as long as
// wanted: it is generated on the fly, never held in memory.
// ---------------------------------------------------------------------------

/// 13-byte units in the bomb: 78 MB on the wire (more than the agent's 64 MiB
/// body limit, so the limit is what stops it), 12.4 GB inflated.
const GZIP_BOMB_UNITS: u64 = 6_000_000;
const UNIT_MATCHES: u64 = 8;
const MATCH_LEN: u64 = 258;

/// Deflate's bit order: fields LSB first, Huffman codes MSB first.
#[derive(Default)]
struct BitWriter {
    bytes: Vec<u8>,
    bit: u32,
}

impl BitWriter {
    fn bits(&mut self, value: u32, count: u32) {
        for i in 0..count {
            if self.bit == 0 {
                self.bytes.push(0);
            }
            if (value >> i) & 1 == 1 {
                *self.bytes.last_mut().expect("pushed") |= 1 << self.bit;
            }
            self.bit = (self.bit + 1) % 8;
        }
    }

    fn code(&mut self, code: u32, len: u32) {
        for i in (0..len).rev() {
            self.bits((code >> i) & 1, 1);
        }
    }

    /// A fixed-Huffman match of 258 bytes (length code 285) at distance 1
    /// (distance code 0).
    fn match_258_at_1(&mut self) {
        self.code(0b1100_0101, 8);
        self.code(0, 5);
    }
}

struct GzipBomb {
    prefix: Vec<u8>,
    unit: Vec<u8>,
    units: u64,
    suffix: Vec<u8>,
}

impl GzipBomb {
    fn new(units: u64) -> GzipBomb {
        // gzip header: magic, deflate, no flags, no mtime, Unix.
        let mut prefix = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        let mut head = BitWriter::default();
        head.bits(1, 1); // BFINAL
        head.bits(1, 2); // BTYPE = fixed Huffman
        head.code(0x30, 8); // literal 0x00
        head.match_258_at_1();
        assert_eq!(head.bit, 0, "11 + 13 bits end on a byte boundary");
        prefix.extend_from_slice(&head.bytes);
        let mut unit = BitWriter::default();
        for _ in 0..UNIT_MATCHES {
            unit.match_258_at_1();
        }
        assert_eq!((unit.bytes.len(), unit.bit), (13, 0));
        let mut end = BitWriter::default();
        end.code(0, 7); // end of block
        let inflated = GzipBomb::inflated_len(units);
        let mut suffix = end.bytes;
        suffix.extend_from_slice(&crc32_of_zeros(inflated).to_le_bytes());
        suffix.extend_from_slice(&(inflated as u32).to_le_bytes()); // ISIZE: mod 2^32
        GzipBomb {
            prefix,
            unit: unit.bytes,
            units,
            suffix,
        }
    }

    /// Bytes it inflates to: one literal, then 258 per match.
    fn inflated_len(units: u64) -> u64 {
        1 + MATCH_LEN * (1 + UNIT_MATCHES * units)
    }

    fn len(&self) -> u64 {
        (self.prefix.len() + self.suffix.len()) as u64 + self.unit.len() as u64 * self.units
    }

    async fn write_to(&self, stream: &mut TcpStream) -> std::io::Result<()> {
        stream.write_all(&self.prefix).await?;
        const PER_WRITE: u64 = 5_000;
        let block = self.unit.repeat(PER_WRITE as usize);
        let mut left = self.units;
        while left > 0 {
            let n = left.min(PER_WRITE);
            stream
                .write_all(&block[..(n as usize) * self.unit.len()])
                .await?;
            left -= n;
        }
        stream.write_all(&self.suffix).await
    }
}

/// CRC-32 (IEEE) of `n` zero bytes in O(log n) steps. Over zero input the
/// CRC register evolves linearly over GF(2), so "append 2^k zero bytes" is a
/// 32×32 bit matrix that repeated squaring builds (zlib's crc32_combine
/// technique); 12 GB of zeros would take seconds to hash byte by byte.
fn crc32_of_zeros(n: u64) -> u32 {
    fn apply(matrix: &[u32; 32], vector: u32) -> u32 {
        (0..32)
            .filter(|i| (vector >> i) & 1 == 1)
            .fold(0, |acc, i| acc ^ matrix[i])
    }
    fn square(matrix: &[u32; 32]) -> [u32; 32] {
        std::array::from_fn(|i| apply(matrix, matrix[i]))
    }
    // One zero bit: shift right, folding in the reflected polynomial.
    let mut op: [u32; 32] =
        std::array::from_fn(|i| if i == 0 { 0xEDB8_8320 } else { 1 << (i - 1) });
    for _ in 0..3 {
        op = square(&op); // 1 → 2 → 4 → 8 bits: one zero byte
    }
    let mut register = 0xFFFF_FFFFu32;
    let mut left = n;
    while left > 0 {
        if left & 1 == 1 {
            register = apply(&op, register);
        }
        op = square(&op);
        left >>= 1;
    }
    !register
}

/// The textbook bitwise CRC-32, to check the fast one against.
fn crc32_bitwise(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn crc32_of_zeros_matches_the_bitwise_crc() {
    for n in [0usize, 1, 2, 3, 4, 5, 255, 1_000, 4_097] {
        assert_eq!(crc32_of_zeros(n as u64), crc32_bitwise(&vec![0; n]), "{n}");
    }
    assert_eq!(crc32_of_zeros(4), 0x2144_DF1C);
}

#[test]
fn gzip_bomb_is_well_formed() {
    let bomb = GzipBomb::new(2);
    let mut bytes = bomb.prefix.clone();
    for _ in 0..bomb.units {
        bytes.extend_from_slice(&bomb.unit);
    }
    bytes.extend_from_slice(&bomb.suffix);
    assert_eq!(bytes.len() as u64, bomb.len());
    // 10-byte header, 3 + 2 × 13 bytes of matches, end of block, trailer.
    assert_eq!(bytes.len(), 10 + 3 + 26 + 1 + 8);
    assert_eq!(&bytes[..3], [0x1f, 0x8b, 8]);
    let inflated = GzipBomb::inflated_len(2);
    assert_eq!(inflated, 1 + 258 * 17);
    let n = bytes.len();
    assert_eq!(
        u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()),
        crc32_bitwise(&vec![0; inflated as usize])
    );
    assert_eq!(
        u32::from_le_bytes(bytes[n - 4..].try_into().unwrap()),
        inflated as u32
    );
    let full = GzipBomb::new(GZIP_BOMB_UNITS);
    assert!(full.len() > MAX_BODY_BYTES + MAX_BODY_OVERSHOOT);
    assert!(GzipBomb::inflated_len(GZIP_BOMB_UNITS) > 150 * full.len());
}

// ---------------------------------------------------------------------------
// Running the agent against an origin.
// ---------------------------------------------------------------------------

/// What one case produced.
struct Run {
    /// The first (hostile) request's result, DESIGN §4 JSON.
    result: Value,
    /// The agent's peak resident set after the hostile exchange, KiB.
    peak_rss_kib: u64,
    /// From spawning the agent until it came back for the second request.
    elapsed: Duration,
    /// The head of the hostile request, as the origin saw it.
    request: Vec<u8>,
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn read_all(stream: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(mut stream) = stream {
        let _ = stream.read_to_end(&mut out).await;
    }
    out
}

async fn run_case(hostile: Hostile) -> Run {
    let origin = Origin::start(hostile).await;
    let Origin {
        addr,
        mut second_connection,
        release,
        seen,
        task,
    } = origin;
    let args = [
        format!("http://{addr}/hostile"),
        "--json".into(),
        "--allow-private".into(),
        "--attempts".into(),
        "2".into(),
        "--timeout".into(),
        format!("{}s", PROBE_TIMEOUT.as_secs()),
    ];
    let started = Instant::now();
    let mut child = tokio::process::Command::new(bin_path("vantage-agent"))
        .arg("probe")
        .args(&args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start vantage-agent");
    let pid = child.id().expect("a running child has a pid");
    let stdout = tokio::spawn(read_all(child.stdout.take()));
    let stderr = tokio::spawn(read_all(child.stderr.take()));

    // The agent comes back for its second attempt only when the hostile
    // exchange is over: its memory high-water mark now covers all of it.
    let rendezvous = tokio::time::timeout(CASE_TIMEOUT, async {
        tokio::select! {
            arrived = &mut second_connection => arrived.is_ok(),
            _ = child.wait() => false,
        }
    })
    .await;
    let elapsed = started.elapsed();
    let peak = vm_hwm_kib(pid);
    let _ = release.send(());
    let status = tokio::time::timeout(CASE_TIMEOUT, child.wait()).await;
    let stdout = String::from_utf8_lossy(&stdout.await.expect("stdout")).into_owned();
    let stderr = String::from_utf8_lossy(&stderr.await.expect("stderr")).into_owned();
    assert!(
        matches!(rendezvous, Ok(true)),
        "{hostile:?}: the agent did not finish the hostile request and come back \
         within {CASE_TIMEOUT:?} (rendezvous {rendezvous:?}, exit {status:?}); \
         stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let status = status
        .unwrap_or_else(|_| panic!("{hostile:?}: the agent did not exit; stderr:\n{stderr}"))
        .expect("wait");
    // 1: the hostile request failed, 0: both succeeded. Never a crash.
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "{hostile:?}: {status}; stderr:\n{stderr}"
    );
    task.abort();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "{hostile:?}: one JSON line per attempt:\n{stdout}"
    );
    assert_eq!(lines[1]["status"], 204, "the held second request completes");
    let peak_rss_kib = peak.expect("the agent was alive and its /proc status readable");
    let request = std::mem::take(&mut seen.lock().expect("lock").request);
    let result = lines.into_iter().next().expect("two lines");
    eprintln!(
        "{hostile:?}: outcome {} (curl exit {}), body_bytes {}, {:.2?} until done, \
         peak RSS {} KiB",
        result["outcome"], result["curl_exit"], result["body_bytes"], elapsed, peak_rss_kib
    );
    Run {
        result,
        peak_rss_kib,
        elapsed,
        request,
    }
}

/// The caps and bounds every case shares.
fn check_common(hostile: Hostile, run: &Run) {
    let r = &run.result;
    assert!(
        run.peak_rss_kib <= RSS_CAP_KIB,
        "{hostile:?}: peak RSS {} KiB is over the {} KiB cap",
        run.peak_rss_kib,
        RSS_CAP_KIB
    );
    assert!(run.elapsed < CASE_TIMEOUT, "{hostile:?}");
    let total_ms = r["timings_ms"]["total"].as_f64().expect("total");
    assert!(
        total_ms <= PROBE_TIMEOUT.as_millis() as f64,
        "{hostile:?}: the probe ran {total_ms} ms, past its --timeout"
    );
    // JSON strings are lossy UTF-8 of the kept bytes: one char per byte at most.
    let body_head = r["body_head"].as_str().expect("body_head").chars().count();
    let cap = if r["outcome"] == "malformed_response" {
        RAW_CAPTURE
    } else {
        BODY_CAPTURE
    };
    assert!(
        body_head <= cap,
        "{hostile:?}: {body_head} chars of body kept"
    );
    let headers: usize = r["headers"]
        .as_object()
        .expect("headers")
        .iter()
        .map(|(k, v)| k.len() + v.as_str().expect("string").chars().count())
        .sum();
    assert!(
        headers <= MAX_HEADER_EVIDENCE,
        "{hostile:?}: {headers} header bytes kept"
    );
    let title = r["title"].as_str().expect("title").chars().count();
    assert!(title <= MAX_TITLE, "{hostile:?}");
}

/// A head the agent must refuse: malformed, named as curl's "header too
/// large" (27), raw bytes kept but bounded.
fn check_oversized_head(hostile: Hostile, run: &Run) {
    let r = &run.result;
    assert_eq!(r["outcome"], "malformed_response", "{hostile:?}: {r}");
    assert_eq!(r["curl_exit"], 27, "{hostile:?}: {r}");
    assert_eq!(r["stage"], "read");
    assert_eq!(r["status"], Value::Null, "no status line was accepted");
    let kept = r["body_head"].as_str().expect("body_head");
    assert!(
        kept.starts_with("HTTP/1.1 200 OK\r\nX-"),
        "the raw head is kept: {kept:?}"
    );
}

/// An endless body: read up to the agent's limit, then stopped — an `ok`
/// answer (the status and head are real) that says it was cut.
fn check_body_stopped_at_limit(hostile: Hostile, run: &Run) {
    let r = &run.result;
    assert_eq!(r["outcome"], "ok", "{hostile:?}: {r}");
    assert_eq!(r["curl_exit"], 0);
    assert_eq!(r["status"], 200);
    let read = r["body_bytes"].as_u64().expect("body_bytes");
    assert!(
        (MAX_BODY_BYTES..=MAX_BODY_BYTES + MAX_BODY_OVERSHOOT).contains(&read),
        "{hostile:?}: read {read} body bytes"
    );
    let error = r["error"].as_str().expect("error");
    assert!(error.contains("agent limit"), "{hostile:?}: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_header_lines_are_refused_at_the_header_cap() {
    let hostile = Hostile::EndlessHeaderLines;
    let run = run_case(hostile).await;
    check_common(hostile, &run);
    check_oversized_head(hostile, &run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_endless_header_line_is_refused_at_the_header_cap() {
    let hostile = Hostile::EndlessHeaderLine;
    let run = run_case(hostile).await;
    check_common(hostile, &run);
    check_oversized_head(hostile, &run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_chunked_body_stops_at_the_body_limit() {
    let hostile = Hostile::EndlessChunkedBody;
    let run = run_case(hostile).await;
    check_common(hostile, &run);
    check_body_stopped_at_limit(hostile, &run);
    assert_eq!(run.result["body_head"], "x".repeat(BODY_CAPTURE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terabyte_content_length_stops_at_the_body_limit() {
    let hostile = Hostile::HugeContentLength;
    let run = run_case(hostile).await;
    check_common(hostile, &run);
    check_body_stopped_at_limit(hostile, &run);
    assert_eq!(run.result["body_head"], "y".repeat(BODY_CAPTURE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tiny_chunks_are_reassembled() {
    let hostile = Hostile::TinyChunks;
    let run = run_case(hostile).await;
    check_common(hostile, &run);
    let r = &run.result;
    assert_eq!(r["outcome"], "ok", "{r}");
    let body = tiny_chunks_body();
    assert_eq!(r["body_bytes"], body.len());
    assert_eq!(r["body_sha256"], hex::encode(Sha256::digest(&body)));
    assert_eq!(
        r["body_head"].as_str().expect("body_head").as_bytes(),
        &body[..BODY_CAPTURE]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_title_is_kept_lossy_and_bounded() {
    let hostile = Hostile::InvalidUtf8Title;
    let run = run_case(hostile).await;
    check_common(hostile, &run);
    let r = &run.result;
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["body_bytes"], invalid_utf8_page().len());
    let title = r["title"].as_str().expect("title");
    // Every invalid sequence became U+FFFD; the valid words survive.
    assert!(
        title.starts_with("Caf\u{fffd} \u{fffd}\u{fffd} "),
        "{title:?}"
    );
    assert!(
        title.contains(" ok ") && title.contains("word"),
        "{title:?}"
    );
    // The title comes from the kept body head, so it is cut by both caps.
    assert!(!title.is_empty() && title.chars().count() <= MAX_TITLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bomb_is_not_inflated_and_its_bytes_are_capped() {
    let hostile = Hostile::GzipBomb;
    let run = run_case(hostile).await;
    check_common(hostile, &run);
    // The engine does not decompress: it never asks for compression…
    let request = String::from_utf8_lossy(&run.request).to_ascii_lowercase();
    assert!(request.starts_with("get /hostile"), "{request}");
    assert!(!request.contains("accept-encoding"), "{request}");
    // …and what it reads and keeps is the compressed stream itself, cut at
    // the body limit like any endless body.
    check_body_stopped_at_limit(hostile, &run);
    let r = &run.result;
    assert_eq!(r["headers"]["content-encoding"], "gzip");
    let head: Vec<char> = r["body_head"]
        .as_str()
        .expect("body_head")
        .chars()
        .collect();
    assert_eq!(
        head[..3],
        ['\u{1f}', '\u{fffd}', '\u{8}'],
        "gzip magic, lossy"
    );
}
