//! The lab's PostgreSQL: a server of the test's own
//! ([`vantage_support::pgtest::PgCluster`], stopped when dropped) and the
//! `--database` URL of a new schema in it.
//!
//! Without Debian's `postgresql` a test is skipped (`SKIPPED <test>: …`),
//! and under `CI=true` it fails, as every tier that needs the machine does.

use anyhow::Context as _;
use tokio_postgres::NoTls;
pub use vantage_support::pgtest::PgCluster;

/// A server of the test's own, or `None` (after `SKIPPED`).
pub async fn cluster(test: &str) -> anyhow::Result<Option<PgCluster>> {
    let name = test.to_owned();
    Ok(tokio::task::spawn_blocking(move || PgCluster::for_test(&name)).await??)
}

/// A server of the test's own and the `postgres://` URL of a new schema
/// `vantage_lab_<uuid>` in it, or `None` (after `SKIPPED`). Keep the
/// cluster as long as the URL is used.
pub async fn fresh_database(test: &str) -> anyhow::Result<Option<(String, PgCluster)>> {
    let Some(cluster) = cluster(test).await? else {
        return Ok(None);
    };
    let url = schema_in(&cluster.url()).await?;
    Ok(Some((url, cluster)))
}

/// The URL of a new, empty schema on the server `url` names, whose
/// connections see only that schema.
pub async fn schema_in(url: &str) -> anyhow::Result<String> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("cannot reach the test server {url}"))?;
    let driver = tokio::spawn(connection);
    let schema = format!("vantage_lab_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .context("create the test schema")?;
    drop(client);
    let _ = driver.await;
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(format!(
        "{url}{separator}options=-c%20search_path%3D{schema}"
    ))
}
