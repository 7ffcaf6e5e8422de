//! Hostile-peer clients for the coordinator's listeners (issue #9): half-sent
//! Enroll streams, idle TCP connections, half-sent ClientHellos, TLS
//! connections that never send a request and partial HTTP/1 requests. The
//! hardening tests and `vantage-lab bench-flood` share them. Traffic goes
//! to loopback only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Declared length of a flood Enroll: 63 MiB, as in the issue.
pub const FLOOD_MESSAGE: u32 = 63 * 1024 * 1024;

type FloodBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

/// A TLS connection to the gRPC listener trusting `ca_pem`, without a
/// client certificate.
pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = vantage_support::tls::ca_client_config(ca_pem)?;
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    Ok(tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?)
}

/// One connection holding half-sent Enroll streams open: each declares a
/// [`FLOOD_MESSAGE`]-byte message and sends `send` bytes of it, never the
/// rest. Dropping it closes the connection.
pub struct HalfEnrolls {
    /// Body senders kept alive so the streams stay half-sent.
    _bodies: Vec<mpsc::Sender<Result<Frame<Bytes>, Infallible>>>,
    /// The responses that came back: gRPC status codes (0 for none yet).
    pub statuses: Vec<tokio::sync::oneshot::Receiver<Option<i32>>>,
    _connection: tokio::task::JoinHandle<()>,
}

/// The gRPC status of a response (headers-only or trailers).
async fn grpc_status(response: hyper::Response<hyper::body::Incoming>) -> Option<i32> {
    use http_body_util::BodyExt as _;
    let code = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    if let Some(c) = code(response.headers()) {
        return Some(c);
    }
    let collected = tokio::time::timeout(Duration::from_secs(30), response.into_body().collect())
        .await
        .ok()?
        .ok()?;
    collected.trailers().and_then(code)
}

/// Opens one connection with `streams` half-sent Enrolls of `send` bytes each.
pub async fn half_enrolls(
    addr: SocketAddr,
    ca_pem: &str,
    streams: usize,
    declared: u32,
    send: usize,
) -> anyhow::Result<HalfEnrolls> {
    let tls = tls_connect(addr, ca_pem).await?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake::<_, _, FloodBody>(
        TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .context("HTTP/2 handshake")?;
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut bodies = Vec::with_capacity(streams);
    let mut statuses = Vec::with_capacity(streams);
    for _ in 0..streams {
        let (tx, rx) = mpsc::channel(4);
        let request = http::Request::post(format!("https://{addr}/vantage.v1.AgentService/Enroll"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(StreamBody::new(ReceiverStream::new(rx)))?;
        let mut head = vec![0u8];
        head.extend_from_slice(&declared.to_be_bytes());
        tx.send(Ok(Frame::data(Bytes::from(head)))).await.ok();
        if send > 0 {
            // Sent from a task: flow control may hold it back, which is the point.
            let body = tx.clone();
            tokio::spawn(async move {
                let _ = body
                    .send(Ok(Frame::data(Bytes::from(vec![0u8; send]))))
                    .await;
            });
        }
        sender.ready().await.context("HTTP/2 connection")?;
        let response = sender.send_request(request);
        let (status_tx, status_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let code = match response.await {
                Ok(response) => grpc_status(response).await,
                Err(_) => None,
            };
            let _ = status_tx.send(code);
        });
        bodies.push(tx);
        statuses.push(status_rx);
    }
    Ok(HalfEnrolls {
        _bodies: bodies,
        statuses,
        _connection: connection,
    })
}

/// How a hostile connection misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// TCP only, nothing sent.
    IdleTcp,
    /// The first bytes of a TLS ClientHello, then nothing.
    HalfClientHello,
    /// A complete TLS handshake, then half the HTTP/2 preface.
    TlsThenHalfPreface,
    /// Half an HTTP/1 request (to the /healthz listener).
    HalfHttp1,
}

/// Opens a connection that stalls as `stall` says; returns the stream to
/// watch for the server closing it.
pub async fn stalled(
    addr: SocketAddr,
    ca_pem: &str,
    stall: Stall,
) -> anyhow::Result<Box<dyn tokio::io::AsyncRead + Unpin + Send>> {
    Ok(match stall {
        Stall::IdleTcp => Box::new(TcpStream::connect(addr).await?),
        Stall::HalfClientHello => {
            let mut tcp = TcpStream::connect(addr).await?;
            // A handshake record header announcing 512 bytes, and 4 of them.
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
                .await?;
            Box::new(tcp)
        }
        Stall::TlsThenHalfPreface => {
            let mut tls = tls_connect(addr, ca_pem).await?;
            tls.write_all(b"PRI * HTTP/2.0\r\n").await?;
            tls.flush().await?;
            Box::new(tls)
        }
        Stall::HalfHttp1 => {
            let mut tcp = TcpStream::connect(addr).await?;
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await?;
            Box::new(tcp)
        }
    })
}

/// Waits up to `limit` for the server to close `stream` (EOF or reset);
/// returns how long it took, or `None` if it stayed open.
pub async fn closed_within(
    stream: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
    limit: Duration,
) -> Option<Duration> {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            // The server may answer (an alert, a 408, a GOAWAY) before closing.
            Ok(Ok(_)) => {}
        }
    }
}

/// Resident set size of process `pid`, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc status")
}

/// CPU time (user + system) of process `pid` so far, from /proc.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) in parens.
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .zip(fields.get(12).and_then(|s| s.parse::<u64>().ok()))
        .map(|(u, s)| u + s)
        .context("no utime/stime")?;
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

/// Figures of one phase of `bench-flood`.
#[derive(Debug, Clone, Copy)]
pub struct PhaseFigures {
    /// Coordinator RSS at the end of the phase, KiB (highest sample).
    pub rss_kib: u64,
    /// Coordinator CPU during the phase, in cores (CPU time / wall time).
    pub cpu_cores: f64,
    /// Median latency of `vantage agents` during the phase.
    pub cli_median: Duration,
    /// Slowest `vantage agents` during the phase.
    pub cli_max: Duration,
}

/// What `bench-flood` measured.
#[derive(Debug, Clone, Copy)]
pub struct FloodReport {
    /// No flood.
    pub idle: PhaseFigures,
    /// Half-sent 63 MiB Enrolls, re-opened as they are refused.
    pub enroll: PhaseFigures,
    /// Idle TCP, half ClientHellos and TLS-then-silent connections.
    pub idle_conns: PhaseFigures,
    /// Connections the idle-connection flood held open at once.
    pub idle_conns_opened: usize,
}

async fn measure<F: std::future::Future<Output = ()>>(
    coordinator: &crate::lab::CoordinatorProcess,
    window: Duration,
    cli_runs: usize,
    background: F,
) -> anyhow::Result<PhaseFigures> {
    let pid = coordinator.process.pid().context("coordinator pid")?;
    let cpu0 = cpu_time(pid)?;
    let began = std::time::Instant::now();
    let mut rss = rss_kib(pid)?;
    let mut latencies = Vec::with_capacity(cli_runs);
    let work = async {
        let gap = window / u32::try_from(cli_runs.max(1)).unwrap_or(1);
        for _ in 0..cli_runs {
            let t = std::time::Instant::now();
            let out = coordinator.cli(&["agents"]).await?;
            anyhow::ensure!(
                out.status.success(),
                "vantage agents failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            latencies.push(t.elapsed());
            rss = rss.max(rss_kib(pid)?);
            tokio::time::sleep(gap.saturating_sub(t.elapsed())).await;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        done = work => done?,
        _ = background => anyhow::bail!("the flood ended early"),
    }
    let wall = began.elapsed();
    let cpu = cpu_time(pid)?.saturating_sub(cpu0);
    rss = rss.max(rss_kib(pid)?);
    latencies.sort();
    Ok(PhaseFigures {
        rss_kib: rss,
        cpu_cores: cpu.as_secs_f64() / wall.as_secs_f64(),
        cli_median: latencies
            .get(latencies.len() / 2)
            .copied()
            .unwrap_or_default(),
        cli_max: latencies.last().copied().unwrap_or_default(),
    })
}

/// `vantage-lab bench-flood`: one `vantage serve` (release-style defaults
/// but a lifted enroll rate, so the flood reaches the message limit), then
/// its figures idle, under a half-sent Enroll flood of `enroll_conns`
/// connections x 8 streams kept re-opening, and under `idle_conns` stalled
/// connections, each phase `window` long with `cli_runs` runs of the CLI.
pub async fn bench(
    enroll_conns: usize,
    idle_conns: usize,
    window: Duration,
    cli_runs: usize,
) -> anyhow::Result<FloodReport> {
    let data = tempfile::tempdir()?;
    let coordinator = crate::lab::CoordinatorProcess::start(
        data.path(),
        "127.0.0.1:0".parse()?,
        Duration::from_secs(10),
    )
    .await?;
    let ca = std::fs::read_to_string(data.path().join("ca.crt"))?;
    let addr = coordinator.grpc_addr;
    // Warm up (first CLI run, TLS session setup) before measuring.
    coordinator.cli(&["agents"]).await?;
    let idle = measure(&coordinator, window, cli_runs, std::future::pending()).await?;

    let enroll_flood = async {
        let mut held = std::collections::VecDeque::new();
        loop {
            match half_enrolls(addr, &ca, 8, FLOOD_MESSAGE, 1 << 20).await {
                Ok(conn) => held.push_back(conn),
                Err(e) => tracing::debug!(error = %e, "flood connection failed"),
            }
            if held.len() > enroll_conns {
                held.pop_front();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let enroll = measure(&coordinator, window, cli_runs, enroll_flood).await?;

    let kinds = [
        Stall::IdleTcp,
        Stall::HalfClientHello,
        Stall::TlsThenHalfPreface,
    ];
    let mut stalled_conns = Vec::with_capacity(idle_conns);
    for i in 0..idle_conns {
        match stalled(addr, &ca, kinds[i % kinds.len()]).await {
            Ok(s) => stalled_conns.push(s),
            Err(e) => {
                tracing::warn!(error = %e, opened = stalled_conns.len(), "cannot open more connections");
                break;
            }
        }
    }
    let opened = stalled_conns.len();
    let idle_phase = measure(&coordinator, window, cli_runs, std::future::pending()).await?;
    drop(stalled_conns);
    Ok(FloodReport {
        idle,
        enroll,
        idle_conns: idle_phase,
        idle_conns_opened: opened,
    })
}
