//! The entry of every vantage binary: parse the arguments, set up logging
//! and the crypto provider, run on a multi-threaded tokio runtime, and turn an
//! error into one `error: …` line with exit code 2.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use crate::env::Env;

/// The shared shape of every vantage binary: parse `args` into `C` (usage
/// errors exit 2, `--help` exits 0), set up logging and the crypto provider,
/// run `body` on a multi-threaded runtime, and print an error as one line,
/// `error: …`, with exit code 2.
pub fn run_main<C, F, Fut>(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    env: &dyn Env,
    body: F,
) -> ExitCode
where
    C: Parser + LogDefault,
    F: FnOnce(C) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    run_main_with_code(args, env, |cli: C| async move {
        body(cli).await.map(|()| ExitCode::SUCCESS)
    })
}

/// [`run_main`] for commands whose success has more than one exit code
/// (`probe` exits 1 when a request failed, like curl): `body` returns the
/// code; an error still prints one line and exits 2.
pub fn run_main_with_code<C, F, Fut>(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    env: &dyn Env,
    body: F,
) -> ExitCode
where
    C: Parser + LogDefault,
    F: FnOnce(C) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let cli = match C::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_tracing(env, cli.default_log());
    crate::tls::crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(body(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, `context: cause: cause`, as
/// anyhow's `{:#}` writes it, except that a cause is left out when the
/// message before it already spells it out (an error whose text includes
/// its source's and also reports it as the source would say it twice).
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !previous.is_empty() && previous.contains(&text) {
            previous = text;
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
        previous = text;
    }
    line
}

/// The log level a command runs with unless `VANTAGE_LOG` says otherwise:
/// daemons narrate (`info`), one-shot commands keep stderr for what matters.
pub trait LogDefault {
    /// The default filter for this invocation.
    fn default_log(&self) -> &'static str {
        "warn"
    }
}

/// Logs to stderr; `VANTAGE_LOG` (e.g. `debug`) overrides `default`.
pub fn init_tracing(env: &dyn Env, default: &str) {
    let filter = env
        .var("VANTAGE_LOG")
        .unwrap_or_else(|| default.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Resolves when the process is asked to stop: SIGINT (Ctrl-C) or SIGTERM
/// (what systemd, docker and Kubernetes send). Every long-running command
/// of both binaries stops on it.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("seal.key is missing")]
    struct Missing;

    #[derive(Debug, thiserror::Error)]
    #[error("installation: {0}")]
    struct Installation(#[from] Missing);

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let error = anyhow::Error::new(Installation(Missing)).context("cannot start");
        assert_eq!(
            one_line(&error),
            "cannot start: installation: seal.key is missing"
        );
        // Causes that say something new are all kept, as `{:#}` keeps them.
        let plain = anyhow::anyhow!("connection refused").context("cannot reach the database");
        assert_eq!(one_line(&plain), format!("{plain:#}"));
    }
}
