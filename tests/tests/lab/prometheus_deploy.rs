//! The Prometheus deployment files (deploy/prometheus/) are valid for the
//! promtool of the Prometheus they target: the scrape config, the alert
//! rules, and the rules' unit tests (`promtool test rules`). Also the
//! promtool runner the metrics-endpoint tests share.
//!
//! promtool is Debian's `prometheus` package; without it a test prints that
//! it was skipped, except under `CI=true`, where a missing promtool fails.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The repository root (the lab crate is `tests/`).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the lab crate sits in the repository")
        .to_path_buf()
}

/// Runs `promtool ARGS` (feeding `stdin` if given) from the repository root;
/// `None` when promtool is missing outside CI (after printing SKIPPED).
pub(crate) fn promtool(test: &str, args: &[&str], stdin: Option<&str>) -> Option<Output> {
    let spawned = Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: promtool is required under CI=true (apt-get install prometheus)");
            }
            eprintln!("SKIPPED {test}: promtool is missing (apt-get install prometheus)");
            return None;
        }
        Err(e) => panic!("{test}: cannot run promtool: {e}"),
    };
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(text.as_bytes()).expect("write to promtool");
    }
    Some(child.wait_with_output().expect("promtool runs"))
}

/// Asserts that promtool succeeded, showing what it said otherwise.
pub(crate) fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn promtool_accepts_the_scrape_config() {
    let args = ["check", "config", "deploy/prometheus/prometheus.yml"];
    if let Some(output) = promtool("promtool_accepts_the_scrape_config", &args, None) {
        assert_success("promtool check config", &output);
    }
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let args = ["check", "rules", "deploy/prometheus/vantage.rules.yml"];
    let Some(output) = promtool("promtool_accepts_the_alert_rules", &args, None) else {
        return;
    };
    assert_success("promtool check rules", &output);
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("6 rules found"), "{said}");
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let args = ["test", "rules", "deploy/prometheus/vantage.rules.test.yml"];
    if let Some(output) = promtool("the_alert_rules_pass_their_unit_tests", &args, None) {
        assert_success("promtool test rules", &output);
    }
}
