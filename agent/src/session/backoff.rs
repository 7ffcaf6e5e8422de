//! The agent's reconnect backoff: the shared, validated, jittered schedule
//! of [`vantage_support::backoff`], re-exported so that the session and the
//! CLI keep their paths (`session::backoff`, `vantage_agent::backoff`).
//!
//! It owns nothing of its own and imports nothing but that module.

pub use vantage_support::backoff::*;
