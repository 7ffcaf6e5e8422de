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
