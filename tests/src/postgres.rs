//! The lab's PostgreSQL: a fresh, empty schema per test on the server
//! `VANTAGE_TEST_POSTGRES` names (`tests/with-postgres.sh` starts one), as
//! a `--database` URL whose connections see only that schema.
//!
//! Without the variable a test is skipped (`SKIPPED <test>: …`), and under
//! `CI=true` it fails, as every tier that needs the machine does.

use anyhow::Context as _;
use tokio_postgres::NoTls;
use vantage_support::env::{Env, ProcessEnv};

/// The variable naming the test server.
pub const TEST_URL: &str = "VANTAGE_TEST_POSTGRES";

/// A `postgres://` URL of a new schema `vantage_lab_<uuid>` on the test
/// server, or `None` (after `SKIPPED`) when there is no server.
pub async fn fresh_database(test: &str) -> anyhow::Result<Option<String>> {
    fresh_database_with_env(test, &ProcessEnv).await
}

/// [`fresh_database`] reading the variables through `env`.
pub async fn fresh_database_with_env(test: &str, env: &dyn Env) -> anyhow::Result<Option<String>> {
    let url = env.var(TEST_URL);
    let unavailable = url
        .is_none()
        .then(|| format!("{TEST_URL} is not set (tests/with-postgres.sh starts a server)"));
    if vantage_support::env::skip_tier(test, "PostgreSQL", env, unavailable) {
        return Ok(None);
    }
    let url = url.context("checked above")?;
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .with_context(|| format!("cannot reach the test server {TEST_URL}"))?;
    let driver = tokio::spawn(connection);
    let schema = format!("vantage_lab_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .context("create the test schema")?;
    drop(client);
    let _ = driver.await;
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(Some(format!(
        "{url}{separator}options=-c%20search_path%3D{schema}"
    )))
}

/// A PostgreSQL cluster of the test's own, in a temporary directory, that
/// the test may stop and start (the shared one of `VANTAGE_TEST_POSTGRES`
/// must stay up for the others): `initdb` and `pg_ctl` from Debian's
/// `postgresql`, run as the `postgres` user when the test runs as root,
/// trusting connections from 127.0.0.1 only, on a port picked free.
#[derive(Debug)]
pub struct PrivateCluster {
    bindir: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

fn postgres_bindir() -> Option<std::path::PathBuf> {
    let mut found = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let bin = entry.path().join("bin");
        if bin.join("initdb").exists() {
            found = Some(bin);
        }
    }
    found
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

impl PrivateCluster {
    /// Starts a new cluster, or `None` (after `SKIPPED`) when PostgreSQL is
    /// not installed; under `CI=true` that fails the test.
    pub async fn start(test: &str) -> anyhow::Result<Option<PrivateCluster>> {
        let bindir = postgres_bindir();
        let unavailable = bindir
            .is_none()
            .then(|| "initdb is missing (apt-get install -y postgresql)".to_string());
        if vantage_support::env::skip_tier(test, "PostgreSQL", &ProcessEnv, unavailable) {
            return Ok(None);
        }
        let bindir = bindir.context("checked above")?;
        let dir = tempfile::tempdir()?;
        if is_root() {
            let chowned = std::process::Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()?;
            anyhow::ensure!(
                chowned.success(),
                "chown postgres: {}",
                dir.path().display()
            );
        }
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.port()
        };
        let cluster = PrivateCluster { bindir, dir, port };
        let data = cluster.dir.path().join("data");
        cluster.run(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "vantage",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
        )?;
        cluster.start_server()?;
        Ok(Some(cluster))
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bindir.join(tool);
        let mut command = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            std::process::Command::new(&program)
        };
        let output = command.args(args).output()?;
        anyhow::ensure!(
            output.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// `pg_ctl start -w`: returns once the server accepts connections.
    pub fn start_server(&self) -> anyhow::Result<()> {
        let data = self.dir.path().join("data").display().to_string();
        let log = self.dir.path().join("server.log").display().to_string();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={}",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-w", "-t", "60", "-l", &log, "-o", &options, "start",
            ],
        )
    }

    /// `pg_ctl stop -m fast`: every connection is closed.
    pub fn stop_server(&self) -> anyhow::Result<()> {
        let data = self.dir.path().join("data").display().to_string();
        self.run("pg_ctl", &["-D", &data, "-w", "-m", "fast", "stop"])
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("postgres://vantage@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data").display().to_string();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
    }
}
