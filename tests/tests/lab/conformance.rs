//! Conformance with curl: for every scripted fault, the probe engine and the
//! system curl face the same origin with the same `--resolve`, CA and time
//! limit, and the engine's `curl_exit` must equal curl's real exit code; where
//! curl got a response, the status and the body hash must agree too. A
//! mismatch is a bug in the engine until proven otherwise.

use std::time::Duration;

use sha2::{Digest, Sha256};
use vantage_agent::probe::{ProbeEngine, RequestSlot};
use vantage_agent::safety::TargetPolicy;
use vantage_lab::fixture::{CurlCase, Fixture, CURL_CASES};
use vantage_proto::domain::Outcome;
use vantage_proto::pb;

/// curl options the engine has no equivalent for (it always offers h2 and
/// http/1.1 by ALPN, like curl's default).
const INEXPRESSIBLE: &[&str] = &["--http1.1"];

struct Observed {
    exit: i32,
    status: u32,
    body_sha256: String,
    outcome: String,
}

async fn run_curl(case: &CurlCase, fixture: &Fixture, url: &str) -> Observed {
    let body = tempfile::NamedTempFile::new().unwrap();
    let mut command = tokio::process::Command::new("curl");
    command
        .args(["-sS", "-o"])
        .arg(body.path())
        .args([
            "-w",
            "%{http_code}",
            "--max-time",
            &case.max_time_secs.to_string(),
        ])
        .args(["--resolve", &fixture.resolve_arg(), "--cacert"])
        .arg(fixture.ca_file())
        .args(case.curl_args)
        .arg(url)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("curl finished")
        .expect("curl runs (is it installed? .ci/run installs it)");
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let bytes = std::fs::read(body.path()).unwrap_or_default();
    Observed {
        exit: out.status.code().unwrap_or(-1),
        status,
        body_sha256: hex::encode(Sha256::digest(&bytes)),
        outcome: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

async fn run_engine(case: &CurlCase, fixture: &Fixture, url: &str) -> Observed {
    let engine = ProbeEngine::new(
        TargetPolicy {
            allow_private: true,
        },
        None,
    )
    .with_ca_pem(fixture.ca_pem())
    .unwrap();
    let insecure = case
        .curl_args
        .iter()
        .any(|a| *a == "--insecure" || *a == "-k");
    let spec = pb::ProbeSpec {
        url: url.to_string(),
        route: pb::Route::Direct as i32,
        address_override: fixture.addr().to_string(),
        verify_tls: !insecure,
        timeouts: Some(pb::PhaseTimeouts {
            total_ms: case.max_time_secs * 1000,
            ..Default::default()
        }),
        ..Default::default()
    };
    let result = engine
        .run(
            "conformance",
            &spec,
            RequestSlot {
                attempt: 1,
                burst_index: 0,
                deadline: None,
            },
        )
        .await;
    let outcome = Outcome::try_from(result.outcome)
        .map(|o| o.as_str())
        .unwrap_or("?");
    Observed {
        exit: result.curl_exit,
        status: result.status,
        body_sha256: result.body_sha256.clone(),
        outcome: format!("{outcome}: {}", result.error),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_matches_curl_for_every_fault() {
    let mut mismatches = Vec::new();
    let mut compared = 0;
    for case in CURL_CASES {
        if case.curl_args.iter().any(|a| INEXPRESSIBLE.contains(a)) {
            continue;
        }
        let fixture = Fixture::builder(case.fault.clone())
            .tls(case.tls)
            .spawn()
            .await
            .unwrap();
        let url = fixture.url(&format!("/conformance/{}", case.name));
        let (curl, ours) = tokio::join!(
            run_curl(case, &fixture, &url),
            run_engine(case, &fixture, &url)
        );
        compared += 1;
        if curl.exit != case.exit {
            mismatches.push(format!(
                "{}: curl itself exited {} where {} was observed before ({})",
                case.name, curl.exit, case.exit, curl.outcome
            ));
        }
        if ours.exit != curl.exit {
            mismatches.push(format!(
                "{}: engine says curl_exit {} ({}), curl exited {} ({})",
                case.name, ours.exit, ours.outcome, curl.exit, curl.outcome
            ));
        } else if curl.exit == 0
            && (ours.status != curl.status || ours.body_sha256 != curl.body_sha256)
        {
            mismatches.push(format!(
                "{}: engine got {} {}, curl got {} {}",
                case.name, ours.status, ours.body_sha256, curl.status, curl.body_sha256
            ));
        }
        fixture.stop().await;
    }
    assert!(compared >= 30, "only {compared} cases compared");
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
