//! The lab's integration tests, in one test binary (issue #10): each file
//! under `tests/tests/lab/` is a module here, so the workspace is linked
//! once for all of them instead of once per file. The module names are the
//! old binary names, so test paths stay recognisable:
//! `cargo test -p vantage-lab --test lab netns_interference::` runs the
//! network-namespace tier, `load_faults::` the faults under load. The
//! real-server tier keeps its own binary (`--test real_servers`, see
//! tests/Cargo.toml).
//!
//! Sharing one process is safe for these tests: none sets an environment
//! variable or changes a limit of its own process (`hardening_transport`
//! lowers the descriptor limit of the coordinator child it spawned, by pid),
//! signals go to child processes only, every `#[tokio::test]` builds its own
//! runtime, and network namespaces are named `vantage-lab-<pid>-<n>` from a
//! process-wide counter and entered on a thread of their own.

mod campaign_lifecycle;
mod conformance;
mod crash_recovery;
mod demo;
mod deploy;
mod edge_sim;
mod engine;
mod enrollment;
mod fixture_curl;
mod grafana_dashboard;
mod hardening_agent;
mod hardening_transport;
mod hostile_origin;
mod html_report;
mod load_faults;
mod metrics_endpoint;
mod netns_interference;
mod packages;
mod plans;
mod postgres;
mod progress;
mod prometheus_deploy;
mod protocol_abuse;
mod revocation;
mod scenarios;
mod support;
mod sweeps;
mod wire_head;
mod witness;
