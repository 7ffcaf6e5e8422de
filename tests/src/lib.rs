//! vantage-lab: the test harness (builders for coordinators, agents and a
//! loopback origin; real processes or in-process), the workspace integration
//! tests under `tests/`, and the `vantage-lab` binary (the demo and the
//! benchmarks).

pub mod bench;
pub mod carrier;
pub mod demo;
pub mod edge;
pub mod fixture;
pub mod flood;
pub mod lab;
pub mod netns;
pub mod origin;
pub mod probe_bench;
pub mod process;
pub mod real;
pub mod scenario;
