//! The benchmarks room: every figure in docs/BENCHMARKS.md that needs more
//! than `cargo bench`, each measured beside its peer or floor in the same
//! run — whole-system runs through the real binaries (`system`: ingest,
//! footprint, diagnose, time budget), the probe engine against ab and curl
//! ([`probe_bench`]), the coordinator under a flood ([`flood`]), and sweeps at fleet scale, simulated runs on the
//! scheduler ([`sweeps`]) and real campaigns through the shipped binaries
//! ([`sweeps_live`]).
//! Tests never import this room.

pub mod flood;
pub mod probe_bench;
pub mod sweeps;
pub mod sweeps_live;
mod system;

pub use system::{
    budget, cpu_seconds_of, diagnose, failover, footprint, ingest, ingest_through, percentile,
    proc_kib, sessions, synthetic_result, BudgetFigure, DiagnoseReport, FailoverReport,
    FootprintReport, IngestParams, IngestReport, IngestRun, SessionsReport,
};
