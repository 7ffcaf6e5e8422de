//! Support code that every vantage binary shares, so that the coordinator
//! does not borrow it from the agent:
//!
//! - [`runtime`]: the entry of every binary (tracing, the tokio runtime, one
//!   `error: …` line and exit code 2);
//! - [`env`](mod@env): the one place where environment variables are read;
//! - [`tls`]: the crypto provider, PEM helpers, the client configurations and
//!   the connector every channel to a coordinator goes through;
//! - [`fs`]: files and directories readable by their owner only;
//! - [`addr`]: `host:port` and `IP[:PORT]` parsing;
//! - [`netrange`]: the special-purpose address ranges every egress guard
//!   checks (the agent's targets, the coordinator's webhooks);
//! - [`backoff`]: the validated, jittered retry schedule;
//! - [`clidoc`]: shell completions and man pages from a binary's parser;
//! - [`time`]: wall-clock unix milliseconds.
//!
//! It owns no domain and no service: it must never import a tonic service,
//! the store, the probe engine, the session or anything else of the agent or
//! the coordinator (it depends on `vantage-proto` only for the certificate
//! fingerprint). Domain limits and types live in `vantage-proto`.

pub mod addr;
pub mod backoff;
pub mod clidoc;
pub mod env;
pub mod fs;
pub mod netrange;
pub mod pgtest;
pub mod runtime;
pub mod time;
pub mod tls;
