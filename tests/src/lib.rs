//! vantage-lab: the test harness (builders for coordinators, agents and a
//! loopback origin; real processes or in-process), the workspace integration
//! tests under `tests/`, and the `vantage-lab` binary (the demo and the
//! benchmarks).
//!
//! Rooms, each with its own door (`mod.rs`): [`harness`], [`fixtures`],
//! [`net`], [`scenarios`], [`real`] (the real-server tier: nginx, dnsmasq,
//! iptables) and [`bench`](mod@bench). The short paths below (`vantage_lab::lab`,
//! `vantage_lab::edge`, …) are the names tests use; they point into the
//! rooms.

pub mod bench;
pub mod fixtures;
pub mod harness;
pub mod net;
pub mod postgres;
pub mod real;
pub mod scenarios;

pub use bench::{flood, probe_bench};
pub use fixtures::{fixture, origin, webhook};
pub use harness::{lab, process};
pub use net::{carrier, edge, netns};
pub use scenarios::{demo, scenario};
