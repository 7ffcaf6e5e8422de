//! The API room: everything a peer reaches over the network. The
//! coordinator's own accept loops and per-method limits ([`transport`]),
//! the agents' service (enrollment, sessions; [`agent_service`]) with its
//! per-address enrollment limit ([`enroll_limit`]) and the result writer
//! ([`ingest`]), and the operator's service behind one admin check
//! ([`control_service`]).
//!
//! This is the wire edge: `pb` types are converted to the domain here and
//! go no further. It calls into [`crate::coordinator::Coordinator`] and the
//! store trait; it never imports the CLI or the renderers.

pub mod agent_service;
pub mod control_service;
pub mod enroll_limit;
pub mod ingest;
pub mod transport;
