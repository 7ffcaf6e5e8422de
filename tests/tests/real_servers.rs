//! The real-server tier (DESIGN §8, issue 8 item 5): every case of
//! [`vantage_lab::real::matrix::cases`] — nginx as origin, edge, injector
//! and TLS middlebox, dnsmasq per region, iptables carriers that match on
//! the `Host:` bytes, the SNI and the destination address — diagnosed by a
//! real `vantage diagnose` with the CLI's default flags, each case in its
//! own network namespace, several at a time.
//!
//! Each case prints `FIGURE real <case>: correct|wrong …`; the run ends with
//! `FIGURE real-matrix: C/T correct, F false findings on clean regions`, and
//! fails when any case is wrong — after every case has been reported.
//!
//! Needs root, `ip`, `iptables`, `nginx` and `dnsmasq`; without them it prints
//! `SKIPPED real_server_matrix: <reason>` and passes, except under
//! `CI=true`, where a skip fails.
//!
//! `VANTAGE_REAL_CASES=a,b` runs only the cases whose name contains `a` or
//! `b`; `VANTAGE_REAL_JOBS=N` runs N cases at a time (default 8);
//! `VANTAGE_REAL_REPORTS=DIR` keeps each case's JSON report in DIR.

use vantage_lab::real::{self, matrix};

#[test]
fn real_server_matrix() {
    if real::skipped("real_server_matrix") {
        return;
    }
    let filter: Vec<String> = std::env::var("VANTAGE_REAL_CASES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let cases: Vec<matrix::Case> = matrix::cases()
        .into_iter()
        .filter(|c| filter.is_empty() || filter.iter().any(|f| c.name().contains(f.as_str())))
        .collect();
    assert!(
        !cases.is_empty(),
        "VANTAGE_REAL_CASES={filter:?} selects no case"
    );
    let jobs = std::env::var("VANTAGE_REAL_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(8);
    eprintln!(
        "real-server matrix: {} cases, {jobs} at a time",
        cases.len()
    );
    for case in &cases {
        eprintln!("CASE {}", case.name());
    }
    let started = std::time::Instant::now();
    let judged = matrix::run_matrix(&cases, jobs);
    let correct = judged.iter().filter(|j| j.correct).count();
    let false_findings: usize = judged.iter().map(|j| j.false_findings).sum();
    eprintln!(
        "FIGURE real-matrix: {correct}/{} correct, {false_findings} false findings on clean regions ({:.0} s, {jobs} at a time)",
        judged.len(),
        started.elapsed().as_secs_f64()
    );
    let wrong: Vec<&str> = judged
        .iter()
        .filter(|j| !j.correct)
        .map(|j| j.name.as_str())
        .collect();
    assert!(
        wrong.is_empty(),
        "{} wrong case(s): {wrong:#?}",
        wrong.len()
    );
}
