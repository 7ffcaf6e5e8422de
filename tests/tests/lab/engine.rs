//! Probe-engine behaviour beyond curl conformance: TLS evidence, HTTP/2,
//! raw bytes kept from junk replies, redirects, IPv6, and hostile servers
//! (slowloris, endless body) that must end in their outcome within their
//! limits.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vantage_agent::probe::{ProbeEngine, ProbeLimits, RequestSlot};
use vantage_agent::safety::TargetPolicy;
use vantage_lab::fixture::{Fault, Fixture, TlsMode, GARBAGE};
use vantage_lab::origin::Origin;
use vantage_proto::domain::Outcome;
use vantage_proto::pb;

const SLOT: RequestSlot = RequestSlot {
    attempt: 1,
    burst_index: 0,
    deadline: None,
};

fn engine() -> ProbeEngine {
    ProbeEngine::new(
        TargetPolicy {
            allow_private: true,
        },
        None,
    )
}

fn spec(url: &str, override_addr: Option<std::net::SocketAddr>) -> pb::ProbeSpec {
    pb::ProbeSpec {
        url: url.into(),
        route: pb::Route::Direct as i32,
        address_override: override_addr.map(|a| a.to_string()).unwrap_or_default(),
        verify_tls: true,
        timeouts: Some(pb::PhaseTimeouts {
            total_ms: 5_000,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn outcome(result: &pb::ProbeResult) -> Outcome {
    Outcome::try_from(result.outcome).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_evidence_is_kept_with_and_without_verification() {
    let fixture = Fixture::builder(Fault::Healthy)
        .tls(TlsMode::WrongHost)
        .spawn()
        .await
        .unwrap();
    let engine = engine().with_ca_pem(fixture.ca_pem()).unwrap();
    let mut probe = spec(&fixture.url("/"), Some(fixture.addr()));

    let refused = engine.run("t", &probe, SLOT).await;
    assert_eq!(outcome(&refused), Outcome::TlsCertInvalid);
    assert_eq!(refused.curl_exit, 60);
    let tls = refused
        .tls
        .clone()
        .expect("the certificate is evidence even when refused");
    assert!(!tls.verified);
    assert!(!tls.verify_error.is_empty());
    assert!(
        tls.sans.iter().any(|s| s == "other.lab.test"),
        "{:?}",
        tls.sans
    );
    assert_eq!(tls.sha256.len(), 64);
    assert!(tls.not_after_unix > tls.not_before_unix);
    assert_eq!(
        fixture.requests(),
        0,
        "no request is sent over an untrusted connection"
    );

    probe.verify_tls = false;
    let insecure = engine.run("t", &probe, SLOT).await;
    assert_eq!(outcome(&insecure), Outcome::Ok, "{}", insecure.error);
    assert_eq!(insecure.status, 200);
    let tls = insecure.tls.unwrap();
    assert!(
        !tls.verified,
        "verification off still reports the certificate's problem"
    );
    assert!(!insecure.title.is_empty());
    assert!(
        insecure.edge_request_id.len() > 4,
        "EO-LOG-UUID is captured"
    );
    assert_eq!(insecure.cache_status, "MISS");
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_negotiated_by_alpn() {
    let fixture = Fixture::builder(Fault::Healthy)
        .tls(TlsMode::Http2Only)
        .spawn()
        .await
        .unwrap();
    let engine = engine().with_ca_pem(fixture.ca_pem()).unwrap();
    let result = engine
        .run("t", &spec(&fixture.url("/h2"), Some(fixture.addr())), SLOT)
        .await;
    assert_eq!(outcome(&result), Outcome::Ok, "{}", result.error);
    assert_eq!(result.http_version, "HTTP/2");
    let tls = result.tls.unwrap();
    assert_eq!(tls.alpn, "h2");
    assert!(tls.verified, "{}", tls.verify_error);
    let t = result.timings.unwrap();
    assert!(
        t.dns_us <= t.connect_us
            && t.connect_us <= t.tls_us
            && t.tls_us <= t.ttfb_us
            && t.ttfb_us <= t.total_us,
        "{t:?}"
    );
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_replies_are_kept_as_bytes() {
    let fixture = Fixture::builder(Fault::GarbageReply).spawn().await.unwrap();
    let result = engine()
        .run("t", &spec(&fixture.url("/"), Some(fixture.addr())), SLOT)
        .await;
    assert_eq!(outcome(&result), Outcome::MalformedResponse);
    assert_eq!(result.curl_exit, 1);
    assert!(
        result.body_head.starts_with(&GARBAGE[..8]),
        "{:?}",
        result.body_head
    );
    fixture.stop().await;
}

/// A loopback server that answers each connection with `respond(path)`.
async fn scripted_server(
    respond: fn(&str) -> Vec<u8>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        for _ in 0..100 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let path = text
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .split('?')
                    .next()
                    .unwrap_or("/")
                    .to_string();
                let _ = stream.write_all(&respond(&path)).await;
            });
        }
    });
    (addr, task)
}

fn redirects(path: &str) -> Vec<u8> {
    match path {
        "/start" => b"HTTP/1.1 302 Found\r\nLocation: /end\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        "/loop" => b"HTTP/1.1 301 Moved\r\nLocation: /loop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone".to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_off_by_default_and_bounded_when_on() {
    let (addr, server) = scripted_server(redirects).await;
    let start = format!("http://{addr}/start");
    let off = engine().run("t", &spec(&start, None), SLOT).await;
    assert_eq!((outcome(&off), off.status), (Outcome::Ok, 302));
    assert!(off.redirects.is_empty());

    let mut follow = spec(&start, None);
    follow.max_redirects = 5;
    let followed = engine().run("t", &follow, SLOT).await;
    assert_eq!(followed.status, 200);
    assert_eq!(followed.redirects, vec![start.clone()]);
    assert_eq!(followed.url, format!("http://{addr}/end"));

    let mut looping = spec(&format!("http://{addr}/loop"), None);
    looping.max_redirects = 1_000;
    let capped = engine()
        .with_limits(ProbeLimits {
            max_redirects: 3,
            ..ProbeLimits::default()
        })
        .run("t", &looping, SLOT)
        .await;
    assert_eq!(
        capped.status, 301,
        "a redirect loop stops at the agent's cap"
    );
    assert_eq!(capped.redirects.len(), 3);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_loopback_works() {
    let origin = Origin::builder()
        .listen("[::1]:0".parse().unwrap())
        .spawn()
        .await
        .unwrap();
    let result = engine()
        .run(
            "t",
            &spec(&format!("http://{}/v6", origin.addr()), None),
            SLOT,
        )
        .await;
    assert_eq!(outcome(&result), Outcome::Ok, "{}", result.error);
    assert!(
        result.remote_addr.starts_with("[::1]:"),
        "{}",
        result.remote_addr
    );
    // ...and the SSRF guard knows v6 loopback too.
    let guarded = ProbeEngine::new(TargetPolicy::default(), None)
        .run(
            "t",
            &spec(&format!("http://{}/v6", origin.addr()), None),
            SLOT,
        )
        .await;
    assert_eq!(outcome(&guarded), Outcome::BlockedByPolicy);
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_ends_as_a_response_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nX-Drip: ").await;
        // One byte every 20 ms, never finishing the head: the attack itself.
        let mut drip = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..1_000 {
            drip.tick().await;
            if stream.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut probe = spec(&format!("http://{addr}/"), None);
    probe.timeouts = Some(pb::PhaseTimeouts {
        first_byte_ms: 300,
        total_ms: 5_000,
        ..Default::default()
    });
    let result = engine().run("t", &probe, SLOT).await;
    assert_eq!(
        outcome(&result),
        Outcome::ResponseTimeout,
        "{}",
        result.error
    );
    assert_eq!(result.curl_exit, 28);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_body_is_cut_at_the_agent_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            .await;
        let chunk = vec![b'x'; 64 * 1024];
        // Bounded so the test stops on its own: far more than the limit.
        for _ in 0..1_000 {
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let limits = ProbeLimits {
        max_body_bytes: 1024 * 1024,
        ..ProbeLimits::default()
    };
    let result = engine()
        .with_limits(limits)
        .run("t", &spec(&format!("http://{addr}/"), None), SLOT)
        .await;
    assert_eq!(outcome(&result), Outcome::Ok);
    assert!(
        result.body_bytes >= 1024 * 1024 && result.body_bytes < 2 * 1024 * 1024,
        "{}",
        result.body_bytes
    );
    assert!(result.error.contains("agent limit"), "{}", result.error);
    assert!(result.body_head.len() <= 1024, "evidence stays bounded");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_route_records_the_resolvers_answers() {
    let mut probe = spec("http://localhost:9/", None);
    probe.route = pb::Route::Dns as i32;
    let result = engine().run("t", &probe, SLOT).await;
    assert_eq!(outcome(&result), Outcome::Ok, "{}", result.error);
    assert!(
        result
            .dns_answers
            .iter()
            .any(|a| a == "127.0.0.1" || a == "::1"),
        "{:?}",
        result.dns_answers
    );
    assert!(
        result.remote_addr.is_empty(),
        "a DNS probe connects nowhere"
    );

    probe.url = "http://does-not-exist.invalid/".into();
    let failed = engine().run("t", &probe, SLOT).await;
    assert_eq!(outcome(&failed), Outcome::DnsFailure);
    assert_eq!(failed.curl_exit, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_ip_sets_the_source_address() {
    let origin = Origin::builder().spawn().await.unwrap();
    let source: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let result = ProbeEngine::new(
        TargetPolicy {
            allow_private: true,
        },
        Some(source),
    )
    .run("t", &spec(&origin.url("/src"), None), SLOT)
    .await;
    assert_eq!(outcome(&result), Outcome::Ok, "{}", result.error);
    assert!(
        result.local_addr.starts_with("127.0.0.2:"),
        "{}",
        result.local_addr
    );
    origin.stop().await;
}

/// A one-record DNS server for the test: answers every A query with
/// `answer` (hand-built packets: just enough DNS to be a resolver's peer).
async fn fake_dns(answer: [u8; 4]) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        for _ in 0..50 {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            if n < 12 {
                continue;
            }
            let query = &buf[..n];
            // The question ends after the name's zero byte plus type and class.
            let Some(end) = query[12..].iter().position(|&b| b == 0).map(|p| 12 + p + 5) else {
                continue;
            };
            let qtype = u16::from_be_bytes([query[end - 4], query[end - 3]]);
            let mut reply = Vec::with_capacity(64);
            reply.extend_from_slice(&query[..2]); // id
            reply.extend_from_slice(&[0x81, 0x80]); // response, recursion available, no error
            reply.extend_from_slice(&[0, 1]); // one question
            reply.extend_from_slice(&[0, u8::from(qtype == 1)]); // one answer for A, none otherwise
            reply.extend_from_slice(&[0, 0, 0, 0]);
            reply.extend_from_slice(&query[12..end]);
            if qtype == 1 {
                reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                reply.extend_from_slice(&answer);
            }
            let _ = socket.send_to(&reply, peer).await;
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_dns_server_is_asked_and_its_answer_recorded() {
    let (server, task) = fake_dns([192, 0, 2, 55]).await;
    let mut probe = spec("http://www.lab.test/", None);
    probe.route = pb::Route::Dns as i32;
    probe.dns_server = server.to_string();
    let result = engine().run("t", &probe, SLOT).await;
    assert_eq!(outcome(&result), Outcome::Ok, "{}", result.error);
    assert_eq!(result.dns_answers, vec!["192.0.2.55".to_string()]);

    // The agent-wide default applies when the spec names none; the lying
    // answer is then refused by the SSRF guard like any other target.
    probe.dns_server.clear();
    probe.route = pb::Route::Edge as i32;
    let open = ProbeEngine::new(
        TargetPolicy {
            allow_private: true,
        },
        None,
    )
    .with_dns_server(Some(server))
    .run("t", &probe, SLOT)
    .await;
    assert_eq!(open.dns_answers, vec!["192.0.2.55".to_string()]);

    // A DNS server is a target too: a guarded engine sends a loopback
    // resolver nothing and says why (issue #9).
    let guarded = ProbeEngine::new(TargetPolicy::default(), None)
        .with_dns_server(Some(server))
        .run("t", &probe, SLOT)
        .await;
    assert!(guarded.dns_answers.is_empty(), "{:?}", guarded.dns_answers);
    assert_eq!(
        outcome(&guarded),
        Outcome::BlockedByPolicy,
        "{}",
        guarded.error
    );
    assert_eq!(guarded.stage, pb::Stage::Dns as i32);
    assert!(
        guarded.error.contains("DNS server") && guarded.error.contains("--allow-private"),
        "{}",
        guarded.error
    );
    task.abort();
}
