//! The fault-scripted origin against the system `curl`: every row of
//! `CURL_CASES` is re-run with the real curl, the way an operator would run
//! it, and curl's exit code must equal the recorded one (that table is the
//! ground truth the probe engine's conformance tests compare against). Each
//! request that reaches the origin must also appear in its access log.

use std::process::Stdio;
use std::time::Duration;

use vantage_lab::fixture::{
    CurlCase, Fault, Fixture, TlsMode, CURL_CASES, HEALTHY_BODY, LAB_HOST, SERVER_HEADER,
};

const CURL: &str = "/usr/bin/curl";

/// What one curl run gave.
struct Run {
    exit: i32,
    stderr: String,
    stdout: Vec<u8>,
}

/// `curl -sS -o /dev/null --max-time N --resolve … [--cacert …] <args> <url>`,
/// bounded well beyond curl's own `--max-time`.
async fn curl(fixture: &Fixture, tls: TlsMode, max_time: u32, args: &[&str], url: &str) -> Run {
    let mut command = tokio::process::Command::new(CURL);
    command
        .args(["-sS", "--max-time", &max_time.to_string()])
        .args(["--resolve", &fixture.resolve_arg()]);
    if tls != TlsMode::Plain {
        command.arg("--cacert").arg(fixture.ca_file());
    }
    command
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let bound = Duration::from_secs(u64::from(max_time) + 10);
    let output = tokio::time::timeout(bound, command.output())
        .await
        .unwrap_or_else(|_| panic!("curl outlived its --max-time {max_time} by {bound:?}"))
        .expect("running /usr/bin/curl");
    Run {
        exit: output.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        stdout: output.stdout,
    }
}

/// Runs one row; `Err` describes every way it disagreed with the table.
async fn check(case: &CurlCase) -> Result<String, String> {
    let fixture = Fixture::builder(case.fault.clone())
        .tls(case.tls)
        .spawn()
        .await
        .map_err(|e| format!("{}: fixture: {e:#}", case.name))?;
    let path = format!("/fixture/{}?__vantage={}", case.name, case.name);
    let url = fixture.url(&path);
    let mut args = vec!["-o", "/dev/null"];
    args.extend_from_slice(case.curl_args);
    let run = curl(&fixture, case.tls, case.max_time_secs, &args, &url).await;

    let mut problems = Vec::new();
    if run.exit != case.exit {
        problems.push(format!(
            "curl exited {} (expected {}): {}",
            run.exit, case.exit, run.stderr
        ));
    }
    if case.reaches_origin {
        // The line is written before the fault acts; waiting for the count
        // makes that ordering explicit instead of assumed.
        if !fixture.wait_requests(1, Duration::from_secs(5)).await {
            problems.push("no request head reached the fixture".to_string());
        }
    }
    let requests = fixture.requests();
    // Read before stopping: the default log lives in the fixture's tempdir.
    let log = std::fs::read_to_string(fixture.access_log_path()).expect("reading the access log");
    fixture.stop().await;
    let lines: Vec<&str> = log.lines().collect();
    if case.reaches_origin {
        let request = if case.tls == TlsMode::Http2Only {
            format!("\"GET {path} HTTP/2.0\"")
        } else {
            format!("\"GET {path} HTTP/1.1\"")
        };
        let logged = lines.len() == 1
            && lines[0].starts_with("127.0.0.1 - - [")
            && lines[0].contains(&request)
            && lines[0].ends_with(&format!("\"-\" \"curl/{}\"", curl_version()));
        if !logged || requests != 1 {
            problems.push(format!(
                "expected one access-log line with {request}; {requests} requests, log: {log:?}"
            ));
        }
    } else if requests != 0 || !lines.is_empty() {
        problems.push(format!(
            "expected nothing at the origin; {requests} requests, log: {log:?}"
        ));
    }

    let summary = format!(
        "{:<28} exit {:>3}  {}",
        case.name,
        run.exit,
        run.stderr.lines().next().unwrap_or("")
    );
    if problems.is_empty() {
        Ok(summary)
    } else {
        Err(format!("{summary}\n    {}", problems.join("\n    ")))
    }
}

/// `7.88.1` from `curl/7.88.1`, as curl puts it in its User-Agent.
fn curl_version() -> String {
    let output = std::process::Command::new(CURL)
        .arg("--version")
        .output()
        .expect("curl --version");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .expect("a version after `curl`")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn curl_exit_codes_match_the_recorded_table() {
    // Independent fixtures on their own ports: run every row at once, so the
    // slow rows (1 s timeouts) overlap, and report every disagreement.
    let runs = futures::future::join_all(CURL_CASES.iter().map(check)).await;
    let mut failures = Vec::new();
    for run in runs {
        match run {
            Ok(summary) => eprintln!("{summary}"),
            Err(failure) => {
                eprintln!("{failure}");
                failures.push(failure);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows disagree with curl:\n{}",
        failures.len(),
        CURL_CASES.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn healthy_answer_carries_the_edge_headers_and_the_body() {
    for tls in [TlsMode::Plain, TlsMode::Valid, TlsMode::Http2Only] {
        let fixture = Fixture::builder(Fault::Healthy)
            .tls(tls)
            .spawn()
            .await
            .unwrap();
        let url = fixture.url("/healthy");
        assert!(url.contains(LAB_HOST), "{url}");
        let run = curl(&fixture, tls, 3, &["--include"], &url).await;
        assert_eq!(run.exit, 0, "{tls:?}: {}", run.stderr);
        let text = String::from_utf8(run.stdout).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/"), "{tls:?}: {head}");
        assert!(head.contains(" 200"), "{tls:?}: {head}");
        assert!(
            head.contains(&format!("server: {SERVER_HEADER}")),
            "{tls:?}: {head}"
        );
        assert!(head.contains("x-cache: miss"), "{tls:?}: {head}");
        let id = head
            .lines()
            .find_map(|line| line.strip_prefix("eo-log-uuid: "))
            .unwrap_or_else(|| panic!("{tls:?}: no EO-LOG-UUID in {head}"));
        assert_eq!(id.len(), 36, "{tls:?}: uuid-like id {id}");
        assert_eq!(body, HEALTHY_BODY, "{tls:?}");
        assert_eq!(fixture.requests(), 1, "{tls:?}");
        fixture.stop().await;
    }
}

#[tokio::test]
async fn status_faults_log_their_status_and_body_length() {
    let fixture = Fixture::builder(Fault::Status(429)).spawn().await.unwrap();
    let url = fixture.url("/limited");
    let run = curl(
        &fixture,
        TlsMode::Plain,
        3,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-A",
            "lab-agent",
            "-e",
            "https://ref.example/",
        ],
        &url,
    )
    .await;
    assert_eq!(run.exit, 0, "{}", run.stderr);
    assert_eq!(run.stdout, b"429");
    let log = std::fs::read_to_string(fixture.access_log_path()).unwrap();
    fixture.stop().await;
    assert!(
        log.ends_with("\"GET /limited HTTP/1.1\" 429 22 \"https://ref.example/\" \"lab-agent\"\n"),
        "{log}"
    );
}

#[tokio::test]
async fn an_access_log_path_of_the_callers_choice_is_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("origin-access.log");
    for _ in 0..2 {
        let fixture = Fixture::builder(Fault::EmptyReply)
            .access_log(path.clone())
            .spawn()
            .await
            .unwrap();
        assert_eq!(fixture.access_log_path(), path);
        let url = fixture.url("/empty");
        let run = curl(&fixture, TlsMode::Plain, 3, &["-o", "/dev/null"], &url).await;
        assert_eq!(run.exit, 52, "{}", run.stderr);
        fixture.stop().await;
    }
    let log = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    for line in lines {
        assert!(line.contains("\"GET /empty HTTP/1.1\" - 0 \"-\""), "{line}");
    }
}

#[tokio::test]
async fn refuse_releases_the_port_and_the_ca_is_always_written() {
    let fixture = Fixture::builder(Fault::Refuse).spawn().await.unwrap();
    assert!(fixture.addr().ip().is_loopback());
    assert!(tokio::net::TcpStream::connect(fixture.addr())
        .await
        .is_err());
    let ca = std::fs::read_to_string(fixture.ca_file()).unwrap();
    assert_eq!(ca, fixture.ca_pem());
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    assert_eq!(
        fixture.resolve_arg(),
        format!("{LAB_HOST}:{}:127.0.0.1", fixture.addr().port())
    );
    fixture.stop().await;
}

#[tokio::test]
async fn http2_only_refuses_byte_level_faults_it_cannot_script() {
    let error = Fixture::builder(Fault::TruncatedBody)
        .tls(TlsMode::Http2Only)
        .spawn()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("HTTP/2"), "{error:#}");
}
