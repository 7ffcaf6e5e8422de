//! Wire fidelity (DESIGN §4 "On the wire", issue 8): a carrier's DPI rule
//! matches bytes such as `Host: www.example.com`, so the probe's HTTP/1.1
//! request head must be shaped exactly like curl's. A loopback server
//! captures the raw head of the system curl and of the engine (in-process,
//! and through the shipped `vantage-agent probe`), for the direct and the
//! edge route, with and without extra headers; the header names, their
//! order and their letter case must be the same (the User-Agent value and
//! the nonce in the path aside), and nothing else may be sent.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use vantage_agent::probe::{ProbeEngine, RequestSlot};
use vantage_agent::safety::TargetPolicy;
use vantage_lab::process::bin_path;
use vantage_proto::pb;

const HOST: &str = "www.wire.test";

/// Accepts connections on 127.0.0.1:0 and sends each request head it reads
/// (up to the blank line) to the returned channel, answering 200.
async fn capture_server() -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned()).await;
            });
        }
    });
    (addr, rx)
}

/// The head's shape: the method, then each header line with the values of
/// User-Agent (which differs by design) and the path (the nonce) blanked.
fn shape(head: &str) -> Vec<String> {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let method = request_line.split(' ').next().unwrap_or_default();
    let version = request_line.rsplit(' ').next().unwrap_or_default();
    let mut out = vec![format!("{method} <path> {version}")];
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(": ").unwrap_or((line, ""));
        if name.eq_ignore_ascii_case("user-agent") {
            out.push(format!("{name}: <ua>"));
        } else {
            out.push(format!("{name}: {value}"));
        }
    }
    out
}

async fn next_head(rx: &mut mpsc::Receiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a request arrived")
        .expect("the server runs")
}

async fn curl_head(
    rx: &mut mpsc::Receiver<String>,
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> String {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "--max-time", "10", "--resolve"])
        .arg(format!("{HOST}:{}:127.0.0.1", addr.port()));
    for (name, value) in headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    let status = cmd
        .arg(format!("http://{HOST}:{}/a.jpg", addr.port()))
        .status()
        .await
        .expect("curl runs (.ci/run installs it)");
    assert!(status.success(), "curl failed: {status}");
    next_head(rx).await
}

async fn engine_head(
    rx: &mut mpsc::Receiver<String>,
    addr: SocketAddr,
    route: pb::Route,
    headers: &[(&str, &str)],
) -> String {
    let engine = ProbeEngine::new(
        TargetPolicy {
            allow_private: true,
        },
        None,
    );
    let spec = pb::ProbeSpec {
        url: format!("http://{HOST}:{}/a.jpg", addr.port()),
        route: route as i32,
        address_override: addr.to_string(),
        headers: headers
            .iter()
            .map(|(name, value)| pb::Header {
                name: name.to_string(),
                value: value.as_bytes().to_vec(),
            })
            .collect(),
        ..Default::default()
    };
    let slot = RequestSlot {
        attempt: 1,
        burst_index: 0,
        deadline: None,
    };
    let result = engine.run("wire", &spec, slot).await;
    assert_eq!(result.status, 200, "{result:?}");
    next_head(rx).await
}

/// The CDN pull headers, in the mixed case real CDNs send them.
const PULL: &[(&str, &str)] = &[
    ("EO-Connecting-IP", "198.51.100.10"),
    ("X-Forwarded-For", "198.51.100.10"),
    ("CDN-Loop", "TencentEdgeOne; loops=1"),
    ("x-lower-case", "kept"),
];

#[tokio::test]
async fn the_engine_sends_curls_request_head_on_both_routes() {
    let (addr, mut rx) = capture_server().await;
    for headers in [&[][..], PULL] {
        let curl = curl_head(&mut rx, addr, headers).await;
        for route in [pb::Route::Direct, pb::Route::Edge] {
            let ours = engine_head(&mut rx, addr, route, headers).await;
            assert_eq!(
                shape(&ours),
                shape(&curl),
                "route {route:?}, headers {headers:?}\nours:\n{ours}\ncurl:\n{curl}"
            );
            // The bytes a DPI rule matches on are there, exactly.
            assert!(ours.contains(&format!("\r\nHost: {HOST}:{}\r\n", addr.port())));
            assert!(!ours.to_ascii_lowercase().contains("connection:"));
        }
    }
}

#[tokio::test]
async fn the_shipped_probe_sends_curls_head_and_its_user_agent() {
    let (addr, mut rx) = capture_server().await;
    let curl = curl_head(&mut rx, addr, PULL).await;
    let mut cmd = tokio::process::Command::new(bin_path("vantage-agent"));
    cmd.args([
        "probe",
        "--allow-private",
        "--user-agent",
        "Mozilla/5.0 (X11)",
    ])
    .arg(format!("http://{HOST}:{}/a.jpg", addr.port()))
    .arg("--resolve-to")
    .arg(addr.to_string());
    for (name, value) in PULL {
        cmd.arg("--header").arg(format!("{name}: {value}"));
    }
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("the probe ends")
        .expect("vantage-agent runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = next_head(&mut rx).await;
    assert_eq!(shape(&ours), shape(&curl), "ours:\n{ours}\ncurl:\n{curl}");
    assert!(
        ours.contains("\r\nUser-Agent: Mozilla/5.0 (X11)\r\n"),
        "{ours}"
    );
}
