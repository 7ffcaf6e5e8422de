//! The edge simulator against fault-scripted origins: each pull failure
//! becomes the 52x code the profile's CDN answers, every response carries
//! the profile's request id header, and the pull carries the profile's
//! headers from the configured source address. Clients are the system curl,
//! pinned to an edge address with `--resolve` exactly as the seed's step 4.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use vantage_lab::edge::{Edge, EdgeBuilder};
use vantage_lab::fixture::{Fault, Fixture, TlsMode, HEALTHY_BODY, LAB_HOST};
use vantage_proto::cdn::CdnProfile;

/// curl's own budget per request: far above any scripted delay, so only a
/// real hang fails a test.
const CURL_MAX_TIME_SECS: &str = "10";

/// What curl saw: status, headers (names lower-cased) and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Every edge response names its pull and is a cache miss.
    fn assert_edge_headers(&self, profile: CdnProfile) {
        let id = self.header(profile.request_id_header());
        assert!(
            id.is_some_and(|id| !id.is_empty()),
            "{profile}: no {} in {self:?}",
            profile.request_id_header()
        );
        assert_eq!(self.header("x-cache"), Some("MISS"), "{self:?}");
    }
}

/// `curl -s -i --resolve LAB_HOST:port:edgeip http://LAB_HOST:port{path}`.
async fn curl(edge: SocketAddr, path: &str) -> Answer {
    let output = tokio::process::Command::new("curl")
        .args(["-s", "-i", "--max-time", CURL_MAX_TIME_SECS, "--resolve"])
        .arg(format!("{LAB_HOST}:{}:{}", edge.port(), edge.ip()))
        .arg(format!("http://{LAB_HOST}:{}{path}", edge.port()))
        .output()
        .await
        .expect("running curl");
    assert!(
        output.status.success(),
        "curl failed ({:?}): {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// An edge with `profile` in front of `origin`, on 127.0.0.1.
async fn edge(profile: CdnProfile, origin: SocketAddr) -> Edge {
    EdgeBuilder::new(profile, origin)
        .spawn()
        .await
        .expect("edge spawn")
}

/// A tiny origin that answers every request with the peer address and the
/// request headers in its body (`peer=ip` then `name: value` lines), so a
/// test can see exactly what the edge pulled with.
struct EchoOrigin {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EchoOrigin {
    async fn spawn() -> EchoOrigin {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("echo bind");
        let addr = listener.local_addr().expect("echo addr");
        let task = tokio::spawn(async move {
            // Ends when the test aborts it in `stop`.
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request: hyper::Request<_>| async move {
                            let mut body = format!("peer={}\n", peer.ip());
                            for (name, value) in request.headers() {
                                body.push_str(&format!(
                                    "{name}: {}\n",
                                    String::from_utf8_lossy(value.as_bytes())
                                ));
                            }
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        EchoOrigin { addr, task }
    }

    async fn stop(self) {
        self.task.abort();
        if let Err(e) = self.task.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

/// The echoed headers: lower-cased name → value.
fn echoed(body: &str) -> HashMap<String, String> {
    body.lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[tokio::test]
async fn healthy_origin_is_pulled_and_logged() {
    let origin = Fixture::builder(Fault::Healthy).spawn().await.unwrap();
    let edge = edge(CdnProfile::EdgeOne, origin.addr()).await;
    let answer = curl(edge.addrs()[0], "/healthy?__vantage=n1").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, HEALTHY_BODY);
    answer.assert_edge_headers(CdnProfile::EdgeOne);
    assert_eq!(edge.pulls(), 1);
    assert!(origin.wait_requests(1, Duration::from_secs(5)).await);
    let log = std::fs::read_to_string(origin.access_log_path()).unwrap();
    assert!(
        log.contains("\"GET /healthy?__vantage=n1 HTTP/1.1\" 200"),
        "{log}"
    );
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn pulls_carry_the_profile_headers_and_the_response_id() {
    let origin = EchoOrigin::spawn().await;
    for profile in CdnProfile::ALL {
        let edge = edge(profile, origin.addr).await;
        let front = edge.addrs()[0];
        let answer = curl(front, "/echo").await;
        assert_eq!(answer.status, 200, "{profile}: {answer:?}");
        answer.assert_edge_headers(profile);
        let pulled = echoed(&answer.body);
        let id = answer.header(profile.request_id_header()).unwrap();
        for (name, value) in profile.pull_headers("127.0.0.1", "http", id) {
            assert_eq!(
                pulled.get(&name.to_ascii_lowercase()),
                Some(&value),
                "{profile}: pull header {name} in {:?}",
                answer.body
            );
        }
        assert_eq!(
            pulled.get("host"),
            Some(&format!("{LAB_HOST}:{}", front.port())),
            "{profile}: the pull keeps the site's Host"
        );
        edge.stop().await;
    }
    origin.stop().await;
}

#[tokio::test]
async fn pulls_come_from_the_source_ip() {
    let origin = EchoOrigin::spawn().await;
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let edge = EdgeBuilder::new(CdnProfile::Generic, origin.addr)
        .source_ip(source)
        .spawn()
        .await
        .unwrap();
    let answer = curl(edge.addrs()[0], "/from").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.starts_with("peer=127.0.0.2\n"), "{answer:?}");
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn a_refused_pull_is_521_for_every_profile() {
    let origin = Fixture::builder(Fault::Refuse).spawn().await.unwrap();
    for profile in CdnProfile::ALL {
        let edge = edge(profile, origin.addr()).await;
        let answer = curl(edge.addrs()[0], "/refused").await;
        assert_eq!(answer.status, 521, "{profile}: {answer:?}");
        assert!(
            answer.body.contains("521: Web server is down"),
            "{answer:?}"
        );
        answer.assert_edge_headers(profile);
        assert_eq!(edge.pulls(), 1);
        edge.stop().await;
    }
    origin.stop().await;
}

#[tokio::test]
async fn an_origin_that_never_answers_is_524_after_the_origin_timeout() {
    let origin = Fixture::builder(Fault::HangBeforeFirstByte)
        .spawn()
        .await
        .unwrap();
    let timeout = Duration::from_millis(300);
    for profile in CdnProfile::ALL {
        let edge = EdgeBuilder::new(profile, origin.addr())
            .origin_timeout(timeout)
            .spawn()
            .await
            .unwrap();
        let started = Instant::now();
        let answer = curl(edge.addrs()[0], "/hang").await;
        let took = started.elapsed();
        assert_eq!(answer.status, 524, "{profile}: {answer:?}");
        assert!(
            answer.body.contains("524: A timeout occurred"),
            "{answer:?}"
        );
        answer.assert_edge_headers(profile);
        // Not before the timeout, and well before curl's own budget.
        assert!(took >= timeout && took < Duration::from_secs(5), "{took:?}");
        edge.stop().await;
    }
    origin.stop().await;
}

#[tokio::test]
async fn broken_answers_from_the_origin_are_520() {
    for fault in [
        Fault::EmptyReply,
        Fault::ResetAfterRequest,
        Fault::GarbageReply,
    ] {
        let origin = Fixture::builder(fault.clone()).spawn().await.unwrap();
        for profile in CdnProfile::ALL {
            let edge = edge(profile, origin.addr()).await;
            let answer = curl(edge.addrs()[0], "/broken").await;
            assert_eq!(answer.status, 520, "{fault:?} {profile}: {answer:?}");
            assert!(answer.body.contains("520: "), "{answer:?}");
            answer.assert_edge_headers(profile);
            edge.stop().await;
        }
        origin.stop().await;
    }
}

#[tokio::test]
async fn a_tls_pull_to_a_plain_origin_is_525() {
    // The fixture waits for an HTTP head that a ClientHello never completes,
    // so its handshake fails by the (scaled-down) handshake timeout; the echo
    // origin (hyper) rejects the ClientHello with a plain-text 400, so its
    // handshake fails on an invalid TLS record at once.
    let fixture = Fixture::builder(Fault::Healthy).spawn().await.unwrap();
    let echo = EchoOrigin::spawn().await;
    for profile in CdnProfile::ALL {
        for origin in [fixture.addr(), echo.addr] {
            let edge = EdgeBuilder::new(profile, origin)
                .origin_tls(true)
                .connect_timeout(Duration::from_millis(500))
                .spawn()
                .await
                .unwrap();
            let answer = curl(edge.addrs()[0], "/tls").await;
            assert_eq!(answer.status, 525, "{profile} {origin}: {answer:?}");
            assert!(answer.body.contains("525: SSL handshake failed"));
            answer.assert_edge_headers(profile);
            edge.stop().await;
        }
    }
    fixture.stop().await;
    echo.stop().await;
}

#[tokio::test]
async fn origin_certificates_are_checked_only_when_asked() {
    let untrusted = Fixture::builder(Fault::Healthy)
        .tls(TlsMode::Untrusted)
        .spawn()
        .await
        .unwrap();
    let valid = Fixture::builder(Fault::Healthy)
        .tls(TlsMode::Valid)
        .spawn()
        .await
        .unwrap();
    let cases = [
        (&untrusted, false, 200),
        (&untrusted, true, 526),
        (&valid, true, 200),
    ];
    for (origin, verify, expected) in cases {
        let edge = EdgeBuilder::new(CdnProfile::Cloudflare, origin.addr())
            .origin_tls(true)
            .verify_origin(verify)
            .origin_ca(origin.ca_pem())
            .spawn()
            .await
            .unwrap();
        let answer = curl(edge.addrs()[0], "/cert").await;
        assert_eq!(answer.status, expected, "verify={verify}: {answer:?}");
        answer.assert_edge_headers(CdnProfile::Cloudflare);
        edge.stop().await;
    }
    untrusted.stop().await;
    valid.stop().await;
}

#[tokio::test]
async fn one_broken_edge_address_fails_while_the_other_pulls() {
    let origin = Fixture::builder(Fault::Healthy).spawn().await.unwrap();
    let good = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let bad = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let edge = EdgeBuilder::new(CdnProfile::EdgeOne, origin.addr())
        .listen(vec![good, bad])
        .broken_for(bad, 502)
        .spawn()
        .await
        .unwrap();
    let addrs = edge.addrs();
    assert_eq!(addrs.len(), 2);
    assert_eq!((addrs[0].ip(), addrs[1].ip()), (good, bad));
    let ok = curl(addrs[0], "/good").await;
    assert_eq!(ok.status, 200, "{ok:?}");
    ok.assert_edge_headers(CdnProfile::EdgeOne);
    let broken = curl(addrs[1], "/bad").await;
    assert_eq!(broken.status, 502, "{broken:?}");
    assert!(broken.body.contains("502: "), "{broken:?}");
    broken.assert_edge_headers(CdnProfile::EdgeOne);
    // The broken node never pulled: one pull, one origin request.
    assert_eq!(edge.pulls(), 1);
    assert!(origin.wait_requests(1, Duration::from_secs(5)).await);
    assert_eq!(origin.requests(), 1);
    edge.stop().await;
    origin.stop().await;
}
