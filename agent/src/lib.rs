//! The vantage agent: it enrolls with a coordinator, keeps one mutually
//! authenticated session open, runs the probe plans it receives, and never
//! loses a result (spooled on disk until acknowledged).
//!
//! The binary (`vantage-agent`) is a thin wrapper over [`cli`]; tests and the
//! coordinator's embedded local mode use the library directly.

pub mod backoff;
pub mod cli;
pub mod enroll;
pub mod env;
pub mod identity;
pub mod probe;
pub mod runner;
pub mod safety;
pub mod session;
pub mod spool;
pub mod tls;
pub mod witness;
