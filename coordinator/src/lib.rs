//! The vantage coordinator: enrollment and the agents' sessions over mutually
//! authenticated gRPC, durable result storage, and the operator CLI.
//!
//! The binary (`vantage`) is a thin wrapper over [`cli`]; tests and embedded
//! modes start [`server::start`] in-process and use [`coordinator::Coordinator`].

pub mod agent_service;
pub mod campaign;
pub mod cli;
pub mod client;
pub mod control_service;
pub mod coordinator;
pub mod diagnose_cli;
pub mod diagnosis;
pub mod enroll_limit;
pub mod ingest;
pub mod pki;
pub mod registry;
pub mod report;
pub mod server;
pub mod store;
pub mod time;
pub mod transport;
