//! A PostgreSQL server of a test's own: a throwaway cluster in a temporary
//! directory, started with Debian's `initdb` and `pg_ctl` (as the
//! `postgres` system user when the test runs as root, since PostgreSQL
//! refuses to run as root), on a free 127.0.0.1 port, trusting loopback
//! connections of the user `vantage`, and stopped and deleted when dropped
//! (a panicking test included). Tests of the PostgreSQL store and of
//! several coordinators use it, so `cargo test --workspace` needs nothing
//! but the `postgresql` package; without it they print `SKIPPED`, and under
//! `CI=true` they fail ([`skip_tier`](crate::env::skip_tier)).
//!
//! `initdb` runs once per build: its result is kept under the target
//! directory and copied for each cluster, which then starts in a fraction
//! of a second.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::env::{skip_tier, Env, ProcessEnv};

/// Everything that can go wrong starting or stopping a test cluster.
#[derive(Debug, thiserror::Error)]
pub enum PgTestError {
    /// A file operation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A PostgreSQL tool failed.
    #[error("{tool} failed: {output}")]
    Tool {
        /// The tool.
        tool: String,
        /// What it printed.
        output: String,
    },
}

/// A running test cluster; see the module documentation.
#[derive(Debug)]
pub struct PgCluster {
    bindir: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    settings: Settings,
}

/// How a cluster's server runs.
#[derive(Debug, Clone, Copy, Default)]
struct Settings {
    /// `fsync` on (benchmarks) or off (tests).
    durable: bool,
    /// `ssl = on`, with the `server.crt` and `server.key` in its data dir.
    tls: bool,
}

fn postgres_bindir() -> Option<PathBuf> {
    let mut found: Option<PathBuf> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let bin = entry.path().join("bin");
        if bin.join("initdb").exists() && found.as_ref().is_none_or(|f| bin > *f) {
            found = Some(bin);
        }
    }
    found
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Runs `program` with `args`, as `postgres` when we are root.
fn run_as_owner(program: &Path, args: &[&str]) -> Result<(), PgTestError> {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let output = command.args(args).output()?;
    if output.status.success() {
        return Ok(());
    }
    Err(PgTestError::Tool {
        tool: program.display().to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

/// Makes `path` the cluster owner's (when we are root).
fn give_to_owner(path: &Path) -> Result<(), PgTestError> {
    if !is_root() {
        return Ok(());
    }
    let output = Command::new("chown")
        .args(["-R", "postgres:"])
        .arg(path)
        .output()?;
    if output.status.success() {
        return Ok(());
    }
    Err(PgTestError::Tool {
        tool: "chown".into(),
        output: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// The initdb'd template, created once under `cache` (atomically: racing
/// test processes each build one and the first rename wins).
fn template(bindir: &Path, cache: &Path) -> Result<PathBuf, PgTestError> {
    let version = bindir
        .parent()
        .and_then(|p| p.file_name())
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    let done = cache.join(format!("vantage-pg-template-{version}"));
    if done.join("PG_VERSION").exists() {
        return Ok(done);
    }
    std::fs::create_dir_all(cache)?;
    let building = tempfile::Builder::new()
        .prefix("vantage-pg-template-")
        .tempdir_in(cache)?;
    give_to_owner(building.path())?;
    let data = building.path().join("data");
    run_as_owner(
        &bindir.join("initdb"),
        &[
            "-D",
            &data.display().to_string(),
            "-U",
            "vantage",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            // An ICU default collation: the tests show key order does not
            // depend on the cluster's locale.
            "--locale-provider=icu",
            "--icu-locale=en-US",
            "--no-sync",
        ],
    )?;
    match std::fs::rename(&data, &done) {
        Ok(()) => {}
        Err(_) if done.join("PG_VERSION").exists() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(done)
}

/// Where the template is kept: the test binary's profile directory
/// (`target/debug`), so it is built once per target dir; the system's
/// temporary directory for a binary outside one.
pub fn default_cache() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir)
}

impl PgCluster {
    /// Starts a cluster for `test` with the template in [`default_cache`].
    pub fn for_test(test: &str) -> Result<Option<PgCluster>, PgTestError> {
        Self::start(test, &default_cache())
    }

    /// Starts a cluster for `test`, or `None` (after `SKIPPED`) when
    /// PostgreSQL is not installed; under `CI=true` that panics. `cache` is
    /// where the initdb'd template is kept between runs (the target dir).
    pub fn start(test: &str, cache: &Path) -> Result<Option<PgCluster>, PgTestError> {
        Self::start_with_env(test, cache, &ProcessEnv)
    }

    /// A cluster with PostgreSQL's default durability (`fsync` on, which
    /// tests turn off), for benchmarks: `None` without `initdb`.
    pub fn durable(cache: &Path) -> Result<Option<PgCluster>, PgTestError> {
        let settings = Settings {
            durable: true,
            ..Settings::default()
        };
        Self::start_as(
            "benchmark",
            cache,
            &crate::env::MapEnv::default(),
            settings,
            None,
        )
    }

    /// [`PgCluster::start`] reading `CI` through `env`.
    pub fn start_with_env(
        test: &str,
        cache: &Path,
        env: &dyn Env,
    ) -> Result<Option<PgCluster>, PgTestError> {
        Self::start_as(test, cache, env, Settings::default(), None)
    }

    /// A cluster for `test` that also accepts TLS (`ssl = on`), presenting
    /// `cert_pem` (its chain) with `key_pem`; plain connections still work.
    pub fn with_tls(
        test: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Option<PgCluster>, PgTestError> {
        let settings = Settings {
            tls: true,
            ..Settings::default()
        };
        Self::start_as(
            test,
            &default_cache(),
            &ProcessEnv,
            settings,
            Some((cert_pem, key_pem)),
        )
    }

    fn start_as(
        test: &str,
        cache: &Path,
        env: &dyn Env,
        settings: Settings,
        identity: Option<(&str, &str)>,
    ) -> Result<Option<PgCluster>, PgTestError> {
        let bindir = postgres_bindir();
        let unavailable = bindir
            .is_none()
            .then(|| "initdb is missing (apt-get install -y postgresql)".to_string());
        if skip_tier(test, "PostgreSQL", env, unavailable) {
            return Ok(None);
        }
        let Some(bindir) = bindir else {
            return Ok(None);
        };
        let template = template(&bindir, cache)?;
        let dir = tempfile::Builder::new().prefix("vantage-pg-").tempdir()?;
        let data = dir.path().join("data");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .output()?;
        if !copied.status.success() {
            return Err(PgTestError::Tool {
                tool: "cp".into(),
                output: String::from_utf8_lossy(&copied.stderr).into_owned(),
            });
        }
        if let Some((cert, key)) = identity {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::write(data.join("server.crt"), cert)?;
            let key_path = data.join("server.key");
            std::fs::write(&key_path, key)?;
            // The server refuses a key others can read.
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
        }
        give_to_owner(dir.path())?;
        // A port picked free can be taken before the server binds it: try
        // a few.
        let mut last = None;
        for _ in 0..5 {
            let port = {
                let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
                probe.local_addr()?.port()
            };
            match start_server(&bindir, dir.path(), port, settings) {
                Ok(()) => {
                    return Ok(Some(PgCluster {
                        bindir,
                        dir,
                        port,
                        settings,
                    }))
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| PgTestError::Tool {
            tool: "pg_ctl".into(),
            output: "no attempt".into(),
        }))
    }

    /// `pg_ctl start -w` again after [`PgCluster::stop_server`].
    pub fn start_server(&self) -> Result<(), PgTestError> {
        start_server(&self.bindir, self.dir.path(), self.port, self.settings)
    }

    /// `pg_ctl stop -m fast`: every connection is closed.
    pub fn stop_server(&self) -> Result<(), PgTestError> {
        let data = self.dir.path().join("data").display().to_string();
        run_as_owner(
            &self.bindir.join("pg_ctl"),
            &["-D", &data, "-w", "-m", "fast", "stop"],
        )
    }

    /// Its URL (user `vantage`, database `postgres`).
    pub fn url(&self) -> String {
        format!("postgres://vantage@127.0.0.1:{}/postgres", self.port)
    }
}

/// `pg_ctl start -w` on `dir/data`: returns once the server accepts
/// connections (its own readiness signal).
fn start_server(
    bindir: &Path,
    dir: &Path,
    port: u16,
    settings: Settings,
) -> Result<(), PgTestError> {
    let data = dir.join("data").display().to_string();
    let log = dir.join("server.log").display().to_string();
    // fsync off for tests: the cluster is thrown away, nothing to keep on a
    // crash; benchmarks keep PostgreSQL's default.
    let options = format!(
        "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} -c fsync={} -c ssl={}",
        dir.display(),
        if settings.durable { "on" } else { "off" },
        if settings.tls { "on" } else { "off" }
    );
    run_as_owner(
        &bindir.join("pg_ctl"),
        &[
            "-D", &data, "-w", "-t", "60", "-l", &log, "-o", &options, "start",
        ],
    )
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.dir.path().join("data/postmaster.pid").exists() {
            let data = self.dir.path().join("data").display().to_string();
            let _ = run_as_owner(
                &self.bindir.join("pg_ctl"),
                &["-D", &data, "-w", "-m", "immediate", "stop"],
            );
        }
    }
}
