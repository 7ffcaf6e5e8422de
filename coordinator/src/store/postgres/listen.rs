//! Change announcements between coordinators on one database: PostgreSQL's
//! `LISTEN`/`NOTIFY`, so a sweep created through one coordinator is
//! scheduled by all of them at once, and mail left for one is read within
//! milliseconds, not at the next poll.
//!
//! Writers send `pg_notify` inside the transaction that makes the change
//! ([`notify_sweeps`], and the mailbox insert), so the announcement is
//! delivered at commit and never for a change that rolled back. One task
//! per watching coordinator holds its own connection (not a pooled one: a
//! pooled connection may be recycled, and its `LISTEN` with it) and turns
//! each notification into a wake of the matching [`ChangeWakers`] field.
//! When that connection drops (a database restart), it reconnects with a
//! jittered backoff and then wakes everything once, since what changed
//! while it was away is unknown.

use std::time::Duration;

use futures::StreamExt as _;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;
use vantage_support::backoff::BackoffConfig;

use super::PgConfig;
use crate::store::ChangeWakers;

/// The channel announcing sweep changes.
pub(super) const SWEEPS: &str = "vantage_sweeps";
/// The channel announcing new mail; the payload is the addressee.
pub(super) const MAIL: &str = "vantage_mail";

/// How soon, and at most how rarely, the listener tries to reconnect.
const RECONNECT: BackoffConfig = BackoffConfig {
    min: Duration::from_millis(200),
    max: Duration::from_secs(5),
    jitter: 0.5,
};

/// Announces a sweep change to every listening coordinator, at commit.
pub(super) async fn notify_sweeps(
    client: &impl tokio_postgres::GenericClient,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_notify($1, '')", &[&SWEEPS])
        .await
        .map(|_| ())
}

/// Spawns the listening task. See the module documentation.
pub(super) fn spawn(config: PgConfig, wakers: ChangeWakers) {
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let listened = match &config.tls {
                Some(tls) => {
                    listen_once(&config, MakeRustlsConnect::new((**tls).clone()), &wakers).await
                }
                None => listen_once(&config, NoTls, &wakers).await,
            };
            match listened {
                Ok(()) => failures = 0,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for other coordinators' changes; retrying");
                    failures = failures.saturating_add(1);
                }
            }
            let delay = RECONNECT.delay(failures, &mut rand::rng());
            tokio::time::sleep(delay).await;
        }
    });
}

/// One connection's life: `LISTEN`, wake everything (what changed before
/// it listened is unknown), then forward notifications until it drops.
/// `Ok` when it listened and later dropped, `Err` when it never listened.
async fn listen_once<T>(
    config: &PgConfig,
    tls: T,
    wakers: &ChangeWakers,
) -> Result<(), tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = config.pg.connect(tls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection only makes progress while polled; its messages are
    // the notifications.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx
                        .send((n.channel().to_owned(), n.payload().to_owned()))
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the change listener's connection failed");
                    return;
                }
            }
        }
    });
    let listened = client
        .batch_execute(&format!("LISTEN {SWEEPS}; LISTEN {MAIL}"))
        .await;
    if let Err(e) = listened {
        driver.abort();
        return Err(e);
    }
    wakers.sweeps.notify_one();
    wakers.mail.notify_one();
    while let Some((channel, payload)) = rx.recv().await {
        match channel.as_str() {
            SWEEPS => wakers.sweeps.notify_one(),
            MAIL if wakers.mail_for.as_ref().is_none_or(|me| *me == payload) => {
                wakers.mail.notify_one()
            }
            _ => {}
        }
    }
    // `client` lives until here: dropping it would close the connection.
    drop(client);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reconnect_backoff_is_valid() {
        assert_eq!(super::RECONNECT.validate(), Ok(()));
    }
}
