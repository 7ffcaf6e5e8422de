//! The benchmarks room: every figure in docs/BENCHMARKS.md that needs more
//! than `cargo bench`, each measured beside its peer or floor in the same
//! run — whole-system runs through the real binaries (`system`: ingest,
//! footprint, diagnose, time budget), the probe engine against ab and curl
//! ([`probe_bench`]), the coordinator under a flood ([`flood`]), and the sweep scheduler
//! at fleet scale ([`sweeps`]).
//! Tests never import this room.

pub mod flood;
pub mod probe_bench;
pub mod sweeps;
mod system;

pub use system::{
    budget, diagnose, footprint, ingest, proc_kib, synthetic_result, BudgetFigure, DiagnoseReport,
    FootprintReport, IngestParams, IngestReport,
};
