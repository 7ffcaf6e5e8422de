//! The harness room: builders for coordinators and agents (in-process or as
//! real processes, [`lab`]) and the child-process wrapper that waits on what
//! a process says ([`process`]). It knows the workspace's binaries and
//! libraries; it never imports a fixture, a network simulator or a scenario.

pub mod lab;
pub mod process;
