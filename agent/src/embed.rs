//! The one door through which another crate runs an agent in its own
//! process: `vantage diagnose --local` embeds one next to an embedded
//! coordinator. The embedder gives a token and a state directory; everything
//! else is the agent's defaults, exactly as `vantage-agent run` would use them.

use std::future::Future;
use std::path::PathBuf;

use vantage_support::env::Env;

use crate::cli::{build_agent, RunArgs};
use crate::session::{Agent, SessionError};

/// What an embedded agent needs from its embedder.
#[derive(Debug, Clone)]
pub struct LocalAgentConfig {
    /// Enrollment token (`vtk1.…`) from the coordinator it should join.
    pub token: String,
    /// Directory for its key, certificate and spool.
    pub state_dir: PathBuf,
    /// Allow probing loopback and private addresses (`--allow-private`).
    pub allow_private: bool,
}

/// The name an embedded agent enrolls as.
pub const LOCAL_AGENT_NAME: &str = "local";

/// An enrolled agent, ready to serve its coordinator's plans.
pub struct LocalAgent {
    agent: Agent,
}

impl LocalAgent {
    /// Validates `config` like `vantage-agent run` would, enrolls, and opens
    /// the spool; nothing runs until [`LocalAgent::run`].
    pub async fn start(config: LocalAgentConfig, env: &dyn Env) -> anyhow::Result<LocalAgent> {
        let config = RunArgs {
            token: Some(config.token),
            state_dir: Some(config.state_dir),
            name: Some(LOCAL_AGENT_NAME.into()),
            allow_private: config.allow_private,
            ..RunArgs::default()
        }
        .validate(env)?;
        Ok(LocalAgent {
            agent: build_agent(&config).await?,
        })
    }

    /// Serves the coordinator's plans until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), SessionError> {
        self.agent.run(shutdown).await
    }
}
