//! The fault-scripted loopback origin of the lab: one [`Fault`] per fixture,
//! served over plain HTTP/1.1 or TLS ([`TlsMode`]) with certificates from a
//! per-fixture lab CA, an nginx-style *combined* access log that an origin
//! witness can tail, and [`CURL_CASES`], the exit codes the system `curl`
//! was observed to give for each fault — the ground truth our probe engine's
//! `curl_exit` must match.
//!
//! Most faults are byte-level (a reset after the request head, a body cut
//! short, junk instead of a status line), which an HTTP library would refuse
//! to produce, so HTTP/1.1 is spoken by hand here. Only [`TlsMode::Http2Only`]
//! goes through hyper, because hand-rolling HTTP/2 framing buys nothing.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use http_body_util::Full;
use hyper::body::Bytes;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// The host name in every fixture URL (Host header and SNI). It resolves
/// nowhere: clients reach the fixture through an address override
/// ([`Fixture::resolve_arg`] for curl), exactly as an operator pins an origin.
pub const LAB_HOST: &str = "origin.lab.test";

/// The host the [`TlsMode::WrongHost`] certificate is issued for instead.
pub const WRONG_HOST: &str = "other.lab.test";

/// The `<title>` of [`HEALTHY_BODY`].
pub const HEALTHY_TITLE: &str = "vantage lab origin";

/// The body of a healthy answer (also of [`Fault::SlowFirstByte`],
/// [`Fault::SlowBody`] and [`Fault::OversizedHeader`]), so a probe's body
/// hash can be compared across faults.
pub const HEALTHY_BODY: &str = "<!DOCTYPE html>\n\
<html><head><title>vantage lab origin</title></head>\n\
<body><p>hello from the vantage lab origin</p></body></html>\n";

/// The `Server` header of every HTTP answer.
pub const SERVER_HEADER: &str = "vantage-lab";

/// What [`Fault::GarbageReply`] sends instead of a status line: an SSH
/// banner (a classic wrong-port/middlebox symptom) followed by binary junk.
pub const GARBAGE: &[u8] =
    b"SSH-2.0-OpenSSH_9.2\r\n\x00\x00\x01\x14\x0a\x14\xde\xad\xbe\xef\xff\xfe\x00\x01";

/// `Content-Length` announced by [`Fault::StalledBody`] and
/// [`Fault::TruncatedBody`].
pub const CUT_BODY_DECLARED: usize = 100_000;

/// Body bytes actually sent by [`Fault::StalledBody`] and
/// [`Fault::TruncatedBody`] before they stall or close.
pub const CUT_BODY_SENT: usize = 1_000;

/// Length of the one header line (name, value and CRLF) that
/// [`Fault::OversizedHeader`] sends: 1 MiB, far above curl's 100 KiB limit.
pub const OVERSIZED_HEADER_LINE: usize = 1 << 20;

/// The longest request head the fixture reads before giving up on it.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// After a clean close, how long the fixture keeps reading what the client
/// still sends, so unread bytes do not turn the close into a reset.
const LINGERING_CLOSE: Duration = Duration::from_secs(1);

/// What the origin does with each connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// `200 OK` with [`HEALTHY_BODY`], `Content-Length`, `Server:
    /// vantage-lab`, `X-Cache: MISS` and a fresh `EO-LOG-UUID` per request.
    Healthy,
    /// Nothing listens: the port was bound and released, so a connect gets
    /// `ECONNREFUSED`.
    Refuse,
    /// Reads the request head, then closes with `SO_LINGER` 0 (a TCP RST).
    ResetAfterRequest,
    /// Reads the request head, then closes cleanly without sending a byte.
    EmptyReply,
    /// Reads the request head, then never answers (until the fixture stops).
    HangBeforeFirstByte,
    /// Waits this long after the request head, then answers like
    /// [`Fault::Healthy`].
    SlowFirstByte(Duration),
    /// Sends the healthy headers at once (`Content-Length` of the whole
    /// [`HEALTHY_BODY`]), then the body in `chunks` pieces with `delay`
    /// before each (so the body takes `chunks × delay`; `chunks` is clamped
    /// to 1..=body length).
    SlowBody {
        /// How many pieces the body is cut into.
        chunks: u32,
        /// The pause before each piece.
        delay: Duration,
    },
    /// Announces [`CUT_BODY_DECLARED`] bytes, sends [`CUT_BODY_SENT`], then
    /// hangs.
    StalledBody,
    /// Announces [`CUT_BODY_DECLARED`] bytes, sends [`CUT_BODY_SENT`], then
    /// closes cleanly.
    TruncatedBody,
    /// Answers with [`GARBAGE`] instead of HTTP, then closes cleanly.
    GarbageReply,
    /// A `200` whose one extra header line is [`OVERSIZED_HEADER_LINE`] long,
    /// then [`HEALTHY_BODY`].
    OversizedHeader,
    /// A normal answer with this status (e.g. 503, 429) and a small body.
    Status(u16),
    /// Rate limiting by concurrency: each client address may have at most
    /// `per_client` requests in progress; answers take `hold`; a request over
    /// the limit gets an empty reply (what the seed's step 3.2 looks for).
    ConcurrencyLimit {
        /// Requests in progress allowed per client address.
        per_client: u32,
        /// How long each answer takes (so that concurrency builds up).
        hold: Duration,
    },
    /// A WAF rule: a request carrying this header (any value, name
    /// case-insensitive) gets `403 Forbidden`; others are answered healthy.
    RejectHeader(String),
    /// Geo content: `200 OK` with a page made for the client's address (its
    /// third octet picks the "country" edition: another title, another
    /// length), as an origin that localizes does. Every request is logged.
    GeoContent,
    /// An allowlist/firewall: connections from this address are reset before
    /// the web server reads (and logs) anything; others are answered healthy.
    RejectClient(IpAddr),
}

/// How the fixture speaks on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain HTTP/1.1.
    Plain,
    /// TLS with a certificate for [`LAB_HOST`] from the lab CA.
    Valid,
    /// TLS with a self-signed certificate for [`LAB_HOST`], not from the lab
    /// CA.
    Untrusted,
    /// TLS with a certificate for [`LAB_HOST`] from the lab CA that expired
    /// (valid 2020-01-01 to 2021-01-01).
    Expired,
    /// TLS with a certificate from the lab CA for [`WRONG_HOST`] only.
    WrongHost,
    /// TLS with a valid certificate whose ALPN offers only `h2`; the server
    /// speaks HTTP/2 (hyper). Only [`Fault::Healthy`],
    /// [`Fault::SlowFirstByte`], [`Fault::HangBeforeFirstByte`],
    /// [`Fault::Status`] and [`Fault::Refuse`] are scripted over it.
    Http2Only,
}

impl TlsMode {
    fn is_tls(self) -> bool {
        self != TlsMode::Plain
    }
}

/// One observed run of the system curl (7.88.1) against a fixture:
/// `curl -sS -o /dev/null --max-time <max_time_secs> --resolve
/// <Fixture::resolve_arg> [--cacert <Fixture::ca_file> when TLS]
/// <curl_args…> <url>`.
#[derive(Debug, Clone, PartialEq)]
pub struct CurlCase {
    /// A stable name for the case (also used in the request path).
    pub name: &'static str,
    /// The scripted fault.
    pub fault: Fault,
    /// The wire mode.
    pub tls: TlsMode,
    /// Extra curl arguments placed before the URL (e.g. `--http2`).
    pub curl_args: &'static [&'static str],
    /// curl's `--max-time`, in seconds; the probe engine's total timeout
    /// must be the same for its `curl_exit` to be comparable.
    pub max_time_secs: u32,
    /// curl's exit code.
    pub exit: i32,
    /// Whether the request head reaches the origin (and so its access log).
    pub reaches_origin: bool,
}

const fn case(
    name: &'static str,
    fault: Fault,
    tls: TlsMode,
    curl_args: &'static [&'static str],
    max_time_secs: u32,
    exit: i32,
    reaches_origin: bool,
) -> CurlCase {
    CurlCase {
        name,
        fault,
        tls,
        curl_args,
        max_time_secs,
        exit,
        reaches_origin,
    }
}

const SLOW_FIRST_BYTE: Fault = Fault::SlowFirstByte(Duration::from_millis(200));
const SLOW_BODY: Fault = Fault::SlowBody {
    chunks: 4,
    delay: Duration::from_millis(50),
};
// The body needs 4 × 600 ms = 2.4 s, more than curl's 1 s budget.
const SLOW_BODY_TOO_SLOW: Fault = Fault::SlowBody {
    chunks: 4,
    delay: Duration::from_millis(600),
};

/// The exit codes observed from curl 7.88.1 (Debian 12, OpenSSL 3.0) against
/// this fixture — produced by `tests/tests/lab/fixture_curl.rs`, which re-checks
/// every row against the real curl. These are what our probe engine's
/// `curl_exit` must equal for the same fault, TLS mode and timeout.
#[rustfmt::skip] // one row per line reads as the table it is
pub const CURL_CASES: &[CurlCase] = &[
    // Plain HTTP/1.1.
    case("healthy", Fault::Healthy, TlsMode::Plain, &[], 3, 0, true),
    case("refuse", Fault::Refuse, TlsMode::Plain, &[], 3, 7, false),
    case("reset_after_request", Fault::ResetAfterRequest, TlsMode::Plain, &[], 3, 56, true),
    case("empty_reply", Fault::EmptyReply, TlsMode::Plain, &[], 3, 52, true),
    case("hang_before_first_byte", Fault::HangBeforeFirstByte, TlsMode::Plain, &[], 1, 28, true),
    case("slow_first_byte", SLOW_FIRST_BYTE, TlsMode::Plain, &[], 3, 0, true),
    case("slow_body", SLOW_BODY, TlsMode::Plain, &[], 3, 0, true),
    case("slow_body_too_slow", SLOW_BODY_TOO_SLOW, TlsMode::Plain, &[], 1, 28, true),
    case("stalled_body", Fault::StalledBody, TlsMode::Plain, &[], 1, 28, true),
    case("truncated_body", Fault::TruncatedBody, TlsMode::Plain, &[], 3, 18, true),
    // Not "weird server reply" (8): without --http0.9 curl takes a reply that
    // does not start with "HTTP/" as HTTP/0.9 and refuses it, CURLE_UNSUPPORTED_PROTOCOL.
    case("garbage_reply", Fault::GarbageReply, TlsMode::Plain, &[], 3, 1, true),
    // curl 7.88.1 caps one header line at 100 KiB (CURL_MAX_HTTP_HEADER) and
    // reports a longer one as CURLE_OUT_OF_MEMORY (27), not as a malformed
    // response (1/8): observed 102300 bytes → 0, 102500 bytes → 27.
    case("oversized_header", Fault::OversizedHeader, TlsMode::Plain, &[], 3, 27, true),
    case("status_503", Fault::Status(503), TlsMode::Plain, &[], 3, 0, true),
    case("status_429", Fault::Status(429), TlsMode::Plain, &[], 3, 0, true),
    // The same faults inside TLS with a valid certificate.
    case("tls_healthy", Fault::Healthy, TlsMode::Valid, &[], 3, 0, true),
    case("tls_refuse", Fault::Refuse, TlsMode::Valid, &[], 3, 7, false),
    case("tls_reset_after_request", Fault::ResetAfterRequest, TlsMode::Valid, &[], 3, 56, true),
    case("tls_empty_reply", Fault::EmptyReply, TlsMode::Valid, &[], 3, 52, true),
    case("tls_hang_before_first_byte", Fault::HangBeforeFirstByte, TlsMode::Valid, &[], 1, 28, true),
    case("tls_slow_first_byte", SLOW_FIRST_BYTE, TlsMode::Valid, &[], 3, 0, true),
    case("tls_slow_body", SLOW_BODY, TlsMode::Valid, &[], 3, 0, true),
    case("tls_slow_body_too_slow", SLOW_BODY_TOO_SLOW, TlsMode::Valid, &[], 1, 28, true),
    case("tls_stalled_body", Fault::StalledBody, TlsMode::Valid, &[], 1, 28, true),
    case("tls_truncated_body", Fault::TruncatedBody, TlsMode::Valid, &[], 3, 18, true),
    case("tls_garbage_reply", Fault::GarbageReply, TlsMode::Valid, &[], 3, 1, true),
    case("tls_oversized_header", Fault::OversizedHeader, TlsMode::Valid, &[], 3, 27, true),
    case("tls_status_503", Fault::Status(503), TlsMode::Valid, &[], 3, 0, true),
    // Certificates curl must reject (the request never leaves curl)...
    case("tls_untrusted", Fault::Healthy, TlsMode::Untrusted, &[], 3, 60, false),
    case("tls_expired", Fault::Healthy, TlsMode::Expired, &[], 3, 60, false),
    case("tls_wrong_host", Fault::Healthy, TlsMode::WrongHost, &[], 3, 60, false),
    // ...unless verification is off.
    case("tls_untrusted_insecure", Fault::Healthy, TlsMode::Untrusted, &["--insecure"], 3, 0, true),
    case("tls_expired_insecure", Fault::Healthy, TlsMode::Expired, &["--insecure"], 3, 0, true),
    case("tls_wrong_host_insecure", Fault::Healthy, TlsMode::WrongHost, &["--insecure"], 3, 0, true),
    // An origin that speaks only HTTP/2.
    case("h2_healthy", Fault::Healthy, TlsMode::Http2Only, &["--http2"], 3, 0, true),
    case("h2_healthy_default", Fault::Healthy, TlsMode::Http2Only, &[], 3, 0, true),
    // rustls answers an ALPN offer without h2 with a no_application_protocol
    // alert: a handshake failure (35), not a certificate one.
    case("h2_healthy_http1_only", Fault::Healthy, TlsMode::Http2Only, &["--http1.1"], 3, 35, false),
    case("h2_slow_first_byte", SLOW_FIRST_BYTE, TlsMode::Http2Only, &["--http2"], 3, 0, true),
    case("h2_hang_before_first_byte", Fault::HangBeforeFirstByte, TlsMode::Http2Only, &["--http2"], 1, 28, true),
    case("h2_status_503", Fault::Status(503), TlsMode::Http2Only, &["--http2"], 3, 0, true),
];

/// The row of [`CURL_CASES`] with this name.
pub fn curl_case(name: &str) -> Option<&'static CurlCase> {
    CURL_CASES.iter().find(|case| case.name == name)
}

/// curl's observed exit code for `fault` over `tls` with no extra curl
/// arguments (the first such row of [`CURL_CASES`]); `None` if that
/// combination was not observed. Timeouts matter: hangs were observed with
/// `--max-time 1`, everything else with 3.
pub fn curl_expected_exit(fault: &Fault, tls: TlsMode) -> Option<i32> {
    CURL_CASES
        .iter()
        .find(|case| case.fault == *fault && case.tls == tls && case.curl_args.is_empty())
        .map(|case| case.exit)
}

/// Builds a [`Fixture`].
#[derive(Debug, Clone)]
pub struct FixtureBuilder {
    fault: Fault,
    tls: TlsMode,
    access_log: Option<PathBuf>,
}

impl FixtureBuilder {
    /// Serve over this [`TlsMode`] (default [`TlsMode::Plain`]).
    pub fn tls(mut self, tls: TlsMode) -> Self {
        self.tls = tls;
        self
    }

    /// Append the access log to this file (default: `access.log` in a
    /// temporary directory the fixture owns).
    pub fn access_log(mut self, path: PathBuf) -> Self {
        self.access_log = Some(path);
        self
    }

    /// Binds 127.0.0.1:0, writes the lab CA, and starts serving (for
    /// [`Fault::Refuse`]: releases the port again).
    pub async fn spawn(self) -> anyhow::Result<Fixture> {
        if self.tls == TlsMode::Http2Only
            && !matches!(
                self.fault,
                Fault::Healthy
                    | Fault::SlowFirstByte(_)
                    | Fault::HangBeforeFirstByte
                    | Fault::Status(_)
                    | Fault::Refuse
            )
        {
            bail!(
                "fault {:?} is not scripted over HTTP/2 (TlsMode::Http2Only)",
                self.fault
            );
        }
        let dir = tempfile::tempdir().context("fixture tempdir")?;
        let pki = Pki::generate(self.tls)?;
        let ca_file = dir.path().join("lab-ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).context("writing the lab CA")?;
        let access_log_path = self
            .access_log
            .unwrap_or_else(|| dir.path().join("access.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&access_log_path)
            .with_context(|| format!("opening {}", access_log_path.display()))?;

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (requests_tx, requests) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            fault: self.fault.clone(),
            log: Mutex::new(log),
            requests: requests_tx,
            in_progress: Mutex::default(),
        });

        let (stop, task) = if self.fault == Fault::Refuse {
            // Dropping the listener closes the socket: the port now refuses.
            drop(listener);
            (None, None)
        } else {
            let acceptor = match pki.server {
                Some((chain, key)) => Some(tls_acceptor(self.tls, chain, key)?),
                None => None,
            };
            let (stop_tx, stop_rx) = oneshot::channel();
            let task = tokio::spawn(serve(
                listener,
                shared,
                acceptor,
                self.tls == TlsMode::Http2Only,
                stop_rx,
            ));
            (Some(stop_tx), Some(task))
        };

        Ok(Fixture {
            addr,
            tls: self.tls,
            ca_pem: pki.ca_pem,
            ca_file,
            access_log_path,
            requests,
            stop,
            task,
            _dir: dir,
        })
    }
}

/// A running fault-scripted origin. Dropping it stops it too (without
/// re-raising a panic); prefer [`Fixture::stop`].
pub struct Fixture {
    addr: SocketAddr,
    tls: TlsMode,
    ca_pem: String,
    ca_file: PathBuf,
    access_log_path: PathBuf,
    requests: watch::Receiver<u64>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("access_log_path", &self.access_log_path)
            .finish_non_exhaustive()
    }
}

impl Fixture {
    /// A builder for a fixture scripted with `fault` (plain HTTP unless
    /// [`FixtureBuilder::tls`] says otherwise).
    pub fn builder(fault: Fault) -> FixtureBuilder {
        FixtureBuilder {
            fault,
            tls: TlsMode::Plain,
            access_log: None,
        }
    }

    /// The bound address, 127.0.0.1:port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http(s)://origin.lab.test:{port}{path}`; reach it through
    /// [`Fixture::resolve_arg`] or an equivalent address override.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_tls() { "https" } else { "http" };
        format!("{scheme}://{LAB_HOST}:{}{path}", self.addr.port())
    }

    /// `origin.lab.test:{port}:127.0.0.1`, for `curl --resolve`.
    pub fn resolve_arg(&self) -> String {
        format!("{LAB_HOST}:{}:{}", self.addr.port(), self.addr.ip())
    }

    /// The lab CA (PEM) that signed the Valid, Expired, WrongHost and
    /// Http2Only certificates (generated for every mode).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// [`Fixture::ca_pem`] written to a file, for `curl --cacert`.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Request heads fully received so far.
    pub fn requests(&self) -> u64 {
        *self.requests.borrow()
    }

    /// Waits until at least `n` request heads were received; false if
    /// `timeout` passed first.
    pub async fn wait_requests(&self, n: u64, timeout: Duration) -> bool {
        let mut requests = self.requests.clone();
        tokio::time::timeout(timeout, requests.wait_for(|seen| *seen >= n))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    /// The access log (one combined-format line per request head). The
    /// default one lives in the fixture's temporary directory and is deleted
    /// with the fixture: read it before [`Fixture::stop`].
    pub fn access_log_path(&self) -> &Path {
        &self.access_log_path
    }

    /// Stops serving (open connections are dropped); a panic inside the
    /// server is re-raised here.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }
}

/// State every connection of one fixture shares.
struct Shared {
    fault: Fault,
    log: Mutex<File>,
    requests: watch::Sender<u64>,
    in_progress: Mutex<std::collections::HashMap<IpAddr, u32>>,
}

/// A parsed request head: just what the access log needs.
struct RequestHead {
    method: String,
    target: String,
    version: String,
    referer: Option<String>,
    user_agent: Option<String>,
    header_names: Vec<String>,
}

impl Shared {
    /// Counts the request and appends its access-log line. `status` and
    /// `body_bytes` are what the fault is about to send (`None`/0 when it
    /// sends no response).
    fn record(&self, peer: IpAddr, head: &RequestHead, status: Option<u16>, body_bytes: usize) {
        let line = access_log_line(peer, SystemTime::now(), head, status, body_bytes);
        {
            let mut log = self.log.lock().expect("access log lock");
            // The witness tails this file, so every line is flushed at once.
            log.write_all(line.as_bytes())
                .and_then(|()| log.flush())
                .expect("writing the fixture access log");
        }
        self.requests.send_modify(|n| *n += 1);
    }
}

/// The accept loop. It ends when `stop` fires (or its sender is dropped);
/// open connections are then aborted. A panic in any connection is re-raised
/// from this task so that [`Fixture::stop`] surfaces it.
async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    acceptor: Option<TlsAcceptor>,
    http2: bool,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let (tcp, peer) = accepted.expect("fixture accept failed");
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                connections.spawn(connection(tcp, peer.ip(), shared, acceptor, http2));
            }
            Some(done) = connections.join_next(), if !connections.is_empty() => reraise_panic(done),
        }
    }
    connections.abort_all();
    while let Some(done) = connections.join_next().await {
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

/// One accepted connection: the TLS handshake if any, then the fault. I/O
/// errors are the client's business (curl hanging up is part of most
/// faults), so they end the connection silently.
async fn connection(
    tcp: TcpStream,
    peer: IpAddr,
    shared: Arc<Shared>,
    acceptor: Option<TlsAcceptor>,
    http2: bool,
) {
    if let Fault::RejectClient(rejected) = &shared.fault {
        if *rejected == peer {
            // A firewall: the web server never sees (or logs) this client.
            let _ = tcp.set_zero_linger();
            return;
        }
    }
    if shared.fault == Fault::ResetAfterRequest {
        // Set before any TLS wrapping: whenever this socket is dropped the
        // kernel sends RST instead of FIN, which is the whole fault.
        let _ = tcp.set_zero_linger();
    }
    let _ = tcp.set_nodelay(true);
    let Some(acceptor) = acceptor else {
        let _ = http1(tcp, peer, &shared).await;
        return;
    };
    let Ok(tls) = acceptor.accept(tcp).await else {
        return; // the client rejected our certificate (or ALPN): its verdict
    };
    if http2 {
        http2_connection(tls, peer, shared).await;
    } else {
        let _ = http1(tls, peer, &shared).await;
    }
}

/// The [`Fault::GeoContent`] page for a client: the edition's length grows
/// with the octet, so editions differ by more than any "same page" margin.
fn geo_page(peer: IpAddr) -> String {
    let edition = match peer {
        IpAddr::V4(v4) => v4.octets()[2],
        IpAddr::V6(v6) => v6.octets()[13],
    };
    format!(
        "<!DOCTYPE html>\n<html><head><title>vantage lab origin, edition {edition}</title></head>\n\
         <body>{}</body></html>\n",
        "local news ".repeat(200 * (usize::from(edition) + 1))
    )
}

/// Reads a request head (up to the blank line, at most
/// [`MAX_REQUEST_HEAD`]); `None` if the client closed or sent too much
/// first.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<RequestHead>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    // Bounded: every iteration either grows `buf` or returns.
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            return Ok(parse_head(&buf[..end]));
        }
        if buf.len() >= MAX_REQUEST_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn parse_head(raw: &[u8]) -> Option<RequestHead> {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    let version = request_line.next().unwrap_or("HTTP/0.9").to_string();
    let mut head = RequestHead {
        method,
        target,
        version,
        referer: None,
        user_agent: None,
        header_names: Vec::new(),
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        head.header_names.push(name.trim().to_ascii_lowercase());
        let value = Some(value.trim().to_string());
        if name.eq_ignore_ascii_case("user-agent") {
            head.user_agent = value;
        } else if name.eq_ignore_ascii_case("referer") {
            head.referer = value;
        }
    }
    Some(head)
}

/// Plays the fixture's fault on one HTTP/1.1 connection (plain or TLS).
async fn http1<S>(mut stream: S, peer: IpAddr, shared: &Shared) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(head) = read_head(&mut stream).await? else {
        return Ok(());
    };
    let head_only = head.method.eq_ignore_ascii_case("HEAD");
    let body_len = |n: usize| if head_only { 0 } else { n };
    let healthy = HEALTHY_BODY.as_bytes();
    match &shared.fault {
        // Refuse never gets a connection; answer like Healthy if it somehow does.
        Fault::Healthy | Fault::Refuse => {
            shared.record(peer, &head, Some(200), body_len(healthy.len()));
            respond(&mut stream, 200, healthy, head_only).await?;
            close(stream).await
        }
        Fault::ResetAfterRequest => {
            shared.record(peer, &head, None, 0);
            // Linger 0 was set at accept: this drop resets the connection.
            drop(stream);
            Ok(())
        }
        Fault::EmptyReply => {
            shared.record(peer, &head, None, 0);
            close(stream).await
        }
        Fault::HangBeforeFirstByte => {
            shared.record(peer, &head, None, 0);
            hang(stream).await
        }
        Fault::SlowFirstByte(delay) => {
            shared.record(peer, &head, Some(200), body_len(healthy.len()));
            tokio::time::sleep(*delay).await; // the delay is the fault itself
            respond(&mut stream, 200, healthy, head_only).await?;
            close(stream).await
        }
        Fault::SlowBody { chunks, delay } => {
            shared.record(peer, &head, Some(200), body_len(healthy.len()));
            stream
                .write_all(&response_head(200, healthy.len(), None))
                .await?;
            stream.flush().await?;
            if !head_only {
                let chunks = (*chunks as usize).clamp(1, healthy.len());
                let size = healthy.len().div_ceil(chunks);
                for piece in healthy.chunks(size) {
                    tokio::time::sleep(*delay).await; // the delay is the fault itself
                    stream.write_all(piece).await?;
                    stream.flush().await?;
                }
            }
            close(stream).await
        }
        Fault::StalledBody | Fault::TruncatedBody => {
            shared.record(peer, &head, Some(200), body_len(CUT_BODY_SENT));
            stream
                .write_all(&response_head(200, CUT_BODY_DECLARED, None))
                .await?;
            if !head_only {
                stream.write_all(&filler(CUT_BODY_SENT)).await?;
            }
            stream.flush().await?;
            if shared.fault == Fault::StalledBody {
                hang(stream).await
            } else {
                close(stream).await
            }
        }
        Fault::GarbageReply => {
            // No status: the combined format's "-" for "no HTTP answer".
            shared.record(peer, &head, None, GARBAGE.len());
            stream.write_all(GARBAGE).await?;
            stream.flush().await?;
            close(stream).await
        }
        Fault::OversizedHeader => {
            shared.record(peer, &head, Some(200), body_len(healthy.len()));
            let name = b"X-Oversized: ";
            let mut line = Vec::with_capacity(OVERSIZED_HEADER_LINE);
            line.extend_from_slice(name);
            line.resize(OVERSIZED_HEADER_LINE - 2, b'a');
            line.extend_from_slice(b"\r\n");
            let mut bytes = response_head(200, healthy.len(), Some(&line));
            if !head_only {
                bytes.extend_from_slice(healthy);
            }
            // curl gives up mid-header and hangs up: the write may fail.
            stream.write_all(&bytes).await?;
            stream.flush().await?;
            close(stream).await
        }
        Fault::Status(code) => {
            let body = status_body(*code);
            shared.record(peer, &head, Some(*code), body_len(body.len()));
            respond(&mut stream, *code, body.as_bytes(), head_only).await?;
            close(stream).await
        }
        Fault::ConcurrencyLimit { per_client, hold } => {
            let admitted = {
                let mut busy = shared.in_progress.lock().unwrap_or_else(|e| e.into_inner());
                let count = busy.entry(peer).or_insert(0);
                if *count >= *per_client {
                    false
                } else {
                    *count += 1;
                    true
                }
            };
            if !admitted {
                shared.record(peer, &head, None, 0);
                return close(stream).await;
            }
            shared.record(peer, &head, Some(200), body_len(healthy.len()));
            tokio::time::sleep(*hold).await; // the slowness is the fault itself
            let sent = respond(&mut stream, 200, healthy, head_only).await;
            if let Ok(mut busy) = shared.in_progress.lock() {
                if let Some(count) = busy.get_mut(&peer) {
                    *count = count.saturating_sub(1);
                }
            }
            sent?;
            close(stream).await
        }
        Fault::GeoContent => {
            let page = geo_page(peer);
            shared.record(peer, &head, Some(200), body_len(page.len()));
            respond(&mut stream, 200, page.as_bytes(), head_only).await?;
            close(stream).await
        }
        Fault::RejectHeader(name) => {
            if head
                .header_names
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
            {
                let body = b"<html><title>403 Forbidden</title><body>Request blocked by WAF rule</body></html>\n";
                shared.record(peer, &head, Some(403), body_len(body.len()));
                respond(&mut stream, 403, body, head_only).await?;
            } else {
                shared.record(peer, &head, Some(200), body_len(healthy.len()));
                respond(&mut stream, 200, healthy, head_only).await?;
            }
            close(stream).await
        }
        Fault::RejectClient(_) => {
            shared.record(peer, &head, Some(200), body_len(healthy.len()));
            respond(&mut stream, 200, healthy, head_only).await?;
            close(stream).await
        }
    }
}

/// Writes a whole response with `body` (only its length when `head_only`).
async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut bytes = response_head(status, body.len(), None);
    if !head_only {
        bytes.extend_from_slice(body);
    }
    stream.write_all(&bytes).await?;
    stream.flush().await
}

/// A status line and the fixture's headers, up to and including the blank
/// line. `extra` is one raw header line (with its CRLF).
fn response_head(status: u16, content_length: usize, extra: Option<&[u8]>) -> Vec<u8> {
    let mut text = String::with_capacity(256);
    let _ = write!(
        text,
        "HTTP/1.1 {status} {}\r\nServer: {SERVER_HEADER}\r\nDate: {}\r\n\
         Content-Type: text/html; charset=utf-8\r\nContent-Length: {content_length}\r\n\
         EO-LOG-UUID: {}\r\nX-Cache: MISS\r\nConnection: close\r\n",
        reason(status),
        http_date(SystemTime::now()),
        uuid::Uuid::new_v4(),
    );
    let mut bytes = text.into_bytes();
    if let Some(extra) = extra {
        bytes.extend_from_slice(extra);
    }
    bytes.extend_from_slice(b"\r\n");
    bytes
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Unknown")
}

fn status_body(status: u16) -> String {
    format!("{status} {}\n", reason(status))
}

/// Deterministic, recognisable body bytes for the cut-short faults.
fn filler(len: usize) -> Vec<u8> {
    b"vantage-lab-body."
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// Closes cleanly: FIN (after close_notify over TLS), then reads whatever
/// the client still sends for a bounded while, so that unread bytes in our
/// receive buffer cannot turn the close into an RST.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> std::io::Result<()> {
    stream.shutdown().await?;
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    let _ = tokio::time::timeout(LINGERING_CLOSE, async {
        // Bounded by bytes as well as by the timeout.
        while drained < MAX_REQUEST_HEAD {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    Ok(())
}

/// Holds the connection open without answering until the fixture stops
/// (which aborts this task).
async fn hang<S>(stream: S) -> std::io::Result<()> {
    let _open = stream; // closed only when the task is aborted
    std::future::pending().await
}

/// Serves one HTTP/2 connection with hyper, scripted by the fault.
async fn http2_connection<S>(stream: S, peer: IpAddr, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(http2_answer(request, peer, &shared).await) }
    });
    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

async fn http2_answer<B>(
    request: hyper::Request<B>,
    peer: IpAddr,
    shared: &Shared,
) -> hyper::Response<Full<Bytes>> {
    let header = |name: http::header::HeaderName| {
        request
            .headers()
            .get(name)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let head = RequestHead {
        method: request.method().to_string(),
        target: request
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), ToString::to_string),
        version: "HTTP/2.0".to_string(), // what nginx logs for h2
        referer: header(http::header::REFERER),
        user_agent: header(http::header::USER_AGENT),
        header_names: request
            .headers()
            .keys()
            .map(|k| k.as_str().to_string())
            .collect(),
    };
    let (status, body) = match &shared.fault {
        Fault::Status(code) => (*code, status_body(*code).into_bytes()),
        _ => (200, HEALTHY_BODY.as_bytes().to_vec()),
    };
    let sends = shared.fault != Fault::HangBeforeFirstByte;
    shared.record(
        peer,
        &head,
        sends.then_some(status),
        if sends { body.len() } else { 0 },
    );
    match &shared.fault {
        Fault::HangBeforeFirstByte => std::future::pending::<()>().await,
        Fault::SlowFirstByte(delay) => tokio::time::sleep(*delay).await, // the fault itself
        _ => {}
    }
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        http::header::SERVER,
        http::HeaderValue::from_static(SERVER_HEADER),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert("x-cache", http::HeaderValue::from_static("MISS"));
    if let Ok(id) = http::HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert("eo-log-uuid", id);
    }
    response
}

/// The lab CA and, for TLS modes, the server's chain and key.
struct Pki {
    ca_pem: String,
    server: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl Pki {
    fn generate(tls: TlsMode) -> anyhow::Result<Pki> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "vantage lab CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca_pem = ca_cert.pem();
        if !tls.is_tls() {
            return Ok(Pki {
                ca_pem,
                server: None,
            });
        }
        let issuer = Issuer::new(ca_params, ca_key);

        let host = if tls == TlsMode::WrongHost {
            WRONG_HOST
        } else {
            LAB_HOST
        };
        let leaf_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![host.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if tls == TlsMode::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let leaf = if tls == TlsMode::Untrusted {
            params.self_signed(&leaf_key)?
        } else {
            params.signed_by(&leaf_key, &issuer)?
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        Ok(Pki {
            ca_pem,
            server: Some((vec![leaf.der().clone()], key)),
        })
    }
}

fn tls_acceptor(
    tls: TlsMode,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<TlsAcceptor> {
    let provider = vantage_support::tls::crypto_provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = if tls == TlsMode::Http2Only {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// One combined-format line (with its newline):
/// `ip - - [dd/Mon/yyyy:hh:mm:ss +0000] "request" status bytes "referer" "ua"`.
fn access_log_line(
    peer: IpAddr,
    at: SystemTime,
    head: &RequestHead,
    status: Option<u16>,
    body_bytes: usize,
) -> String {
    let request = format!("{} {} {}", head.method, head.target, head.version);
    let status = status.map_or_else(|| "-".to_string(), |code| code.to_string());
    format!(
        "{peer} - - [{}] \"{}\" {status} {body_bytes} \"{}\" \"{}\"\n",
        clf_date(at),
        escape(&request),
        escape(head.referer.as_deref().unwrap_or("-")),
        escape(head.user_agent.as_deref().unwrap_or("-")),
    )
}

/// Escapes like nginx does: quotes, backslashes and non-printable bytes as
/// `\xHH`, so a hostile request cannot forge log fields or lines.
fn escape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    for byte in field.bytes() {
        if byte == b'"' || byte == b'\\' || !(0x20..0x7f).contains(&byte) {
            let _ = write!(out, "\\x{byte:02X}");
        } else {
            out.push(char::from(byte));
        }
    }
    out
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `24/Nov/2026:02:10:39 +0000` (UTC), the common log format's timestamp.
fn clf_date(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{day:02}/{}/{year:04}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `Mon, 23 Nov 2026 02:13:20 GMT`, the HTTP `Date` header format.
fn http_date(at: SystemTime) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let rem = secs % 86_400;
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize], // 1970-01-01 was a Thursday
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) in the
/// proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clf_dates_match_known_instants() {
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(clf_date(at(0)), "01/Jan/1970:00:00:00 +0000");
        // date -u -d @1795400000 → Mon Nov 23 02:13:20 UTC 2026
        assert_eq!(clf_date(at(1_795_400_000)), "23/Nov/2026:02:13:20 +0000");
        // A leap day.
        assert_eq!(clf_date(at(951_782_400)), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(http_date(at(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(at(1_795_400_000)),
            "Mon, 23 Nov 2026 02:13:20 GMT"
        );
        assert_eq!(http_date(at(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn the_curl_table_has_unique_names_and_answers_lookups() {
        let mut names: Vec<&str> = CURL_CASES.iter().map(|case| case.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CURL_CASES.len(), "duplicate case names");
        assert_eq!(curl_case("empty_reply").map(|case| case.exit), Some(52));
        assert_eq!(curl_expected_exit(&Fault::Refuse, TlsMode::Plain), Some(7));
        assert_eq!(
            curl_expected_exit(&Fault::Healthy, TlsMode::Expired),
            Some(60)
        );
        assert_eq!(
            curl_expected_exit(&Fault::Status(418), TlsMode::Plain),
            None
        );
    }

    #[test]
    fn access_log_lines_are_combined_format_and_escaped() {
        let head = RequestHead {
            method: "GET".into(),
            target: "/p?__vantage=abc".into(),
            version: "HTTP/1.1".into(),
            referer: None,
            user_agent: Some("evil\" agent".into()),
            header_names: Vec::new(),
        };
        let line = access_log_line(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            UNIX_EPOCH,
            &head,
            Some(200),
            12,
        );
        assert_eq!(
            line,
            "127.0.0.1 - - [01/Jan/1970:00:00:00 +0000] \"GET /p?__vantage=abc HTTP/1.1\" \
             200 12 \"-\" \"evil\\x22 agent\"\n"
        );
        let line = access_log_line(IpAddr::V4(Ipv4Addr::LOCALHOST), UNIX_EPOCH, &head, None, 0);
        assert!(line.contains("\" - 0 \"-\""), "{line}");
    }
}
