//! The vantage coordinator: enrollment and the agents' sessions over mutually
//! authenticated gRPC, durable result storage, and the operator CLI.
//!
//! The binary (`vantage`) is a thin wrapper over [`cli`]; tests and embedded
//! modes start [`server::start`] in-process and use [`coordinator::Coordinator`].

pub mod api;
pub mod campaign;
pub mod cli;
pub mod cluster;
pub mod coordinator;
pub mod diagnosis;
pub mod metrics;
pub mod pki;
pub mod registry;
pub mod report;
pub mod server;
pub mod store;
pub mod sweep;
pub mod time;
pub mod wire;

// The short paths the lab's tests use; the modules live in their rooms.
pub use api::{agent_service, control_service, enroll_limit, ingest, transport};
pub use cli::client;
