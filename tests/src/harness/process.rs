//! Child processes of the real binaries, with their output captured line by
//! line so that tests wait on what a process says (its readiness line, its
//! error) instead of sleeping. Children are killed when dropped, so a failing
//! test never leaves a server behind.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Path of a workspace binary (`vantage`, `vantage-agent`) next to the test
/// executable: `cargo test --workspace` builds them before running tests.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| {
            if deps.ends_with("deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so the binaries are built",
        path.display()
    );
    path
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A running child process with captured output.
pub struct ChildProcess {
    name: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<(Stream, String)>,
    log: Arc<Mutex<Vec<String>>>,
    // The pumps finish when the child's pipes close; `wait_exit` joins them so
    // that `output()` after an exit holds everything the child printed.
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildProcess")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ChildProcess {
    /// Spawns `program args…` with `VANTAGE_LOG=info` and no colour.
    pub fn spawn(name: &str, program: &PathBuf, args: &[String]) -> anyhow::Result<ChildProcess> {
        let mut child = Command::new(program)
            .args(args)
            .env("VANTAGE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let (tx, lines) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut pumps = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(
                BufReader::new(stdout),
                Stream::Stdout,
                tx.clone(),
                log.clone(),
            )));
        }
        if let Some(stderr) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(
                BufReader::new(stderr),
                Stream::Stderr,
                tx,
                log.clone(),
            )));
        }
        Ok(ChildProcess {
            name: name.to_string(),
            child,
            lines,
            log,
            pumps,
        })
    }

    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits for a line matching `pred`, up to `timeout`; returns it.
    pub async fn wait_for_line(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(Stream, &str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((stream, line))) if pred(stream, &line) => return Ok(line),
                Ok(Some(_)) => {}
                Ok(None) => bail!(
                    "{} exited before printing the expected line; output:\n{}",
                    self.name,
                    self.output()
                ),
                Err(_) => bail!(
                    "{} did not print the expected line within {timeout:?}; output:\n{}",
                    self.name,
                    self.output()
                ),
            }
        }
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                self.drain_output().await;
                Ok(status)
            }
            Err(_) => bail!(
                "{} did not exit within {timeout:?}; output:\n{}",
                self.name,
                self.output()
            ),
        }
    }

    /// SIGKILL, like `kill -9`: no cleanup runs in the child.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        self.drain_output().await;
        Ok(())
    }

    /// Joins the output pumps of an exited child. Bounded, because a
    /// grandchild that inherited the pipes could keep them open.
    async fn drain_output(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        for pump in self.pumps.drain(..) {
            let _ = tokio::time::timeout_at(deadline, pump).await;
        }
    }

    /// SIGTERM, then wait for the exit.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        self.wait_exit(timeout).await
    }
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(
    reader: BufReader<R>,
    stream: Stream,
    tx: mpsc::UnboundedSender<(Stream, String)>,
    log: Arc<Mutex<Vec<String>>>,
) {
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(mut log) = log.lock() {
            log.push(line.clone());
        }
        let _ = tx.send((stream, line));
    }
}

/// Runs a CLI command to completion (bounded by `timeout`).
pub async fn run_cli(
    program: &PathBuf,
    args: &[String],
    timeout: Duration,
) -> anyhow::Result<std::process::Output> {
    let output = Command::new(program)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, output).await {
        Ok(output) => Ok(output?),
        Err(_) => bail!(
            "{} {args:?} did not finish within {timeout:?}",
            program.display()
        ),
    }
}

/// Polls `check` every `every` until it returns `Some`, up to `timeout`. For
/// conditions that only exist in another process (a row count); in-process
/// conditions use events instead.
pub async fn poll_until<T, F, Fut>(
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("condition not reached within {timeout:?}");
        }
    }
}
