//! The `vantage-agent` binary's command-line contract.

use std::process::Command;

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vantage-agent"))
        .args(args)
        .env_remove("VANTAGE_TOKEN")
        .env_remove("VANTAGE_AGENT_STATE_DIR")
        .env_remove("VANTAGE_LOG")
        .output()
        .unwrap()
}

#[test]
fn run_help_documents_every_flag() {
    let out = agent(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--token",
        "--state-dir",
        "--name",
        "--bind-ip",
        "--dns-server",
        "--spool-max",
        "--allow-private",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn not_enrolled_without_token_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&["run", "--state-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not enrolled yet"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_spool_size_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&[
        "run",
        "--state-dir",
        dir.path().to_str().unwrap(),
        "--spool-max",
        "plenty",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--spool-max"));
}

/// A loopback HTTP server that answers every connection with one fixed
/// HTTP/1.1 response, for at most `connections` connections (the thread then
/// ends; a test that fails early leaves it blocked in accept, which the test
/// process's exit cleans up).
fn tiny_http_server(connections: usize) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            // Read the request head so that closing does not reset a request
            // still being written.
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 31\r\n\
                  Connection: close\r\n\r\n<title>tiny</title><p>hello</p>",
            );
        }
    });
    port
}

/// A loopback port with nothing listening: bound, then released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}

#[test]
fn probe_help_documents_every_flag_and_the_exit_codes() {
    let out = agent(&["probe", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "<URL>",
        "--resolve-to",
        "--header",
        "--method",
        "--attempts",
        "--burst",
        "--concurrency",
        "--timeout",
        "--bind-ip",
        "--insecure",
        "--cacert",
        "--allow-private",
        "--json",
        "curl --resolve",
        "Exit status",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn probe_bad_header_is_a_usage_error_naming_the_flag() {
    let out = agent(&["probe", "http://192.0.2.1/", "--header", "no-colon-here"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: --header"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn probe_refuses_loopback_without_allow_private() {
    // No server: the policy refuses the address before any connection.
    let out = agent(&["probe", "http://127.0.0.1:9/", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "blocked_by_policy");
    assert_eq!(lines[0]["status"], serde_json::Value::Null);
}

#[test]
fn probe_json_reports_a_loopback_server_ok() {
    let port = tiny_http_server(1);
    let url = format!("http://127.0.0.1:{port}/page");
    let out = agent(&["probe", &url, "--allow-private", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let result = &lines[0];
    assert_eq!(result["outcome"], "ok");
    assert_eq!(result["curl_exit"], 0);
    assert_eq!(result["status"], 200);
    assert_eq!(result["url"], url.as_str());
    assert_eq!(result["remote_addr"], format!("127.0.0.1:{port}"));
    assert_eq!(result["body_bytes"], 31);
    let timings = &result["timings_ms"];
    let (ttfb, total) = (
        timings["ttfb"].as_f64().unwrap(),
        timings["total"].as_f64().unwrap(),
    );
    assert!(ttfb > 0.0 && total >= ttfb, "{timings}");
}

#[test]
fn probe_table_reports_a_burst_with_a_summary() {
    let port = tiny_http_server(4);
    let url = format!("http://127.0.0.1:{port}/");
    let out = agent(&[
        "probe",
        &url,
        "--allow-private",
        "--attempts",
        "2",
        "--burst",
        "2",
        "--concurrency",
        "1",
        "--header",
        "X-Test: 1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" ok ") && l.contains(" 200 "))
        .collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    assert!(stdout.contains("4 requests: 4 ok"), "{stdout}");
    assert!(stdout.contains("p50"), "{stdout}");
}

#[test]
fn probe_refused_port_exits_1_like_curl_7() {
    let port = closed_port();
    let url = format!("http://127.0.0.1:{port}/");
    let out = agent(&["probe", &url, "--allow-private", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "connect_refused");
    assert_eq!(lines[0]["curl_exit"], 7);
    assert_eq!(lines[0]["stage"], "connect");

    let out = agent(&["probe", &url, "--allow-private"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("connect_refused"));
}
