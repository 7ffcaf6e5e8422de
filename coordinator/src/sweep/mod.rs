//! Sweeps (issue #11, DESIGN §6a): campaigns the coordinator runs by itself
//! on a schedule, and the alerts their verdicts confirm.
//!
//! So far the room holds its pure cores, each tested on its own:
//! [`schedule`] (a sweep's slots at a stable offset inside its interval,
//! and what a late or restarted scheduler owes: missed slots and the one
//! due), [`alert`] (the per-(sweep, code, kind) state machine that opens
//! after `--confirm` runs, changes with the regions, and resolves after as
//! many clean runs) and [`apply`] (the create/update/delete plan of `sweep
//! apply`). The scheduler task, the sweep store, the CLI and webhooks are
//! not built yet; they build on these. The room never reads a clock itself and never
//! imports the API or the CLI.

pub mod alert;
pub mod apply;
pub mod model;
pub mod schedule;
pub mod scheduler;
