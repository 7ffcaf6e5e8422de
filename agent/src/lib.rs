//! The vantage agent: it enrolls with a coordinator, keeps one mutually
//! authenticated session open, runs the probe plans it receives, and never
//! loses a result (spooled on disk until acknowledged).
//!
//! The binary (`vantage-agent`) is a thin wrapper over [`cli`]; the lab's
//! tests use the library directly, the coordinator's embedded local mode
//! (`vantage diagnose --local`) only through [`embed`]. Support code shared
//! with the coordinator (runtime entry, env, TLS, private files, addresses,
//! time) lives in `vantage-support`, plan limits in `vantage-proto`.

pub mod cli;
pub mod embed;
pub mod probe;
pub mod runner;
pub mod safety;
pub mod session;
pub mod spool;
pub mod witness;

// The short paths the lab's tests use; the modules live in the session room.
pub use session::{backoff, enroll, identity};
