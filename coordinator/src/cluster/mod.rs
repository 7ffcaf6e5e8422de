//! What the coordinators of one installation share through a PostgreSQL
//! database (issue #13, DESIGN §7), and nothing else: no coordinator talks
//! to another directly.
//!
//! - **The installation's secrets.** The first coordinator on an empty
//!   database offers its CA (certificate and key) and admin credential,
//!   sealed with the installation's seal key ([`seal`]); every later one
//!   opens them with its copy of `seal.key` and writes them into its data
//!   dir, so it signs agent certificates with the same CA and accepts the
//!   same admin credential. The database never holds them in clear; the
//!   seal key never enters it.
//! - **Who is alive.** Each coordinator process heartbeats a row with the
//!   addresses agents reach it at ([`Membership`]); enrollment tokens carry
//!   every live coordinator's addresses ([`token_addrs`]), so an agent can
//!   reach any of them and move to another when its own dies.
//!
//! - **Reaching what another coordinator holds** ([`relay`]): plans and
//!   cancels for its agents, and its agents' events for our campaigns, go
//!   through the database's mailbox.
//!
//! The room: it uses the store through the [`Store`] trait only, the
//! registry (sessions and events, for [`relay`]), the PKI's file names and
//! the support crate's private-file writer; it never imports the gRPC
//! services, the CLI or the server.

pub mod relay;
pub mod seal;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::store::{CoordinatorRecord, Store, StoreError};
use crate::time::now_ms;
use seal::{SealError, SealKey};

/// How often a coordinator refreshes its row.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A coordinator silent this long is no longer listed in new tokens.
pub const LEASE: Duration = Duration::from_secs(15);
/// A coordinator silent this long is forgotten.
const FORGET: Duration = Duration::from_secs(24 * 3600);
/// The name the sealed secrets are stored (and sealed) under.
const INSTALLATION: &str = "installation";

/// What an installation shares, as sealed in the database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Secrets {
    ca_cert_pem: String,
    ca_key_pem: String,
    admin_token: String,
}

/// Everything that can go wrong joining or creating an installation.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The seal key is missing, malformed or wrong.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The database failed.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// A data dir file cannot be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The data dir belongs to another installation.
    #[error(
        "{0} holds a CA other than this database's installation: start this coordinator with \
         an empty data dir holding only the installation's seal.key"
    )]
    OtherInstallation(PathBuf),
    /// Another coordinator created the installation at the same moment.
    #[error(
        "another coordinator created this installation at the same time; copy its seal.key \
         into {0} (replacing the one written here) and start again"
    )]
    LostRace(PathBuf),
    /// The opened secrets do not parse.
    #[error("the installation's secrets are damaged: {0}")]
    Corrupt(String),
}

/// Where a coordinator stands towards its database's installation.
#[derive(Debug)]
pub enum Joined {
    /// The database holds an installation; its CA and admin credential are
    /// now in the data dir.
    Existing,
    /// The database holds none: create the CA and credential in the data
    /// dir as a single coordinator does, then [`offer_installation`] them
    /// with this (new or existing) seal key.
    Vacant(Box<SealKey>),
}

fn read(path: &Path) -> Result<String, ClusterError> {
    std::fs::read_to_string(path).map_err(|e| ClusterError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), ClusterError> {
    vantage_support::fs::write_private(path, contents.as_bytes(), mode).map_err(|e| {
        ClusterError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })
}

/// Joins the installation the database holds, if it holds one: opens its
/// secrets with `dir/seal.key` and writes the CA and admin credential into
/// `dir`. A data dir with another CA is refused rather than overwritten.
pub async fn join_installation(store: &dyn Store, dir: &Path) -> Result<Joined, ClusterError> {
    let Some(sealed) = store.installation_secret(INSTALLATION).await? else {
        return Ok(Joined::Vacant(Box::new(SealKey::load_or_create(dir)?)));
    };
    let key = SealKey::load(dir)?;
    let plain = key.open(INSTALLATION, &sealed)?;
    let secrets: Secrets =
        serde_json::from_slice(&plain).map_err(|e| ClusterError::Corrupt(e.to_string()))?;
    let cert_path = dir.join(crate::pki::CA_CERT);
    match std::fs::read_to_string(&cert_path) {
        Ok(local) if local.trim() != secrets.ca_cert_pem.trim() => {
            return Err(ClusterError::OtherInstallation(dir.to_path_buf()))
        }
        _ => {}
    }
    // Key first: a CA certificate without its key would be useless.
    write(&dir.join(crate::pki::CA_KEY), &secrets.ca_key_pem, 0o600)?;
    write(&cert_path, &secrets.ca_cert_pem, 0o644)?;
    write(
        &dir.join(crate::pki::ADMIN_TOKEN_FILE),
        &format!("{}\n", secrets.admin_token.trim()),
        0o600,
    )?;
    tracing::info!(data_dir = %dir.display(), "joined the database's installation");
    Ok(Joined::Existing)
}

/// Offers the CA and admin credential now in `dir` as the installation's,
/// sealed with `key`. Of coordinators racing to do so one wins; the others
/// get [`ClusterError::LostRace`] (their seal keys differ from the
/// winner's), and start again with its key.
pub async fn offer_installation(
    store: &dyn Store,
    dir: &Path,
    key: &SealKey,
) -> Result<(), ClusterError> {
    let secrets = Secrets {
        ca_cert_pem: read(&dir.join(crate::pki::CA_CERT))?,
        ca_key_pem: read(&dir.join(crate::pki::CA_KEY))?,
        admin_token: read(&dir.join(crate::pki::ADMIN_TOKEN_FILE))?
            .trim()
            .to_owned(),
    };
    let plain = serde_json::to_vec(&secrets).map_err(|e| ClusterError::Corrupt(e.to_string()))?;
    let sealed = key.seal(INSTALLATION, &plain);
    if !store
        .insert_installation_secret(INSTALLATION, sealed, now_ms())
        .await?
    {
        return Err(ClusterError::LostRace(dir.to_path_buf()));
    }
    tracing::warn!(
        seal_key = %dir.join(seal::SEAL_KEY_FILE).display(),
        "created the installation in the database: copy seal.key (0600) into the data dir of \
         every other coordinator of this installation before starting it"
    );
    Ok(())
}

/// A coordinator process's row among the installation's live coordinators,
/// kept fresh by a task until [`Membership::leave`].
#[derive(Debug)]
pub struct Membership {
    store: Arc<dyn Store>,
    coordinator_id: String,
    beating: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Writes this process's row (a new id, `addrs`) and starts its
    /// heartbeat. The first write is awaited, so a coordinator that says it
    /// is ready is already listed.
    pub async fn join(
        store: Arc<dyn Store>,
        coordinator_id: String,
        addrs: Vec<String>,
    ) -> Result<Membership, StoreError> {
        let started_at_ms = now_ms();
        let record = CoordinatorRecord {
            coordinator_id,
            addrs,
            started_at_ms,
            heartbeat_at_ms: started_at_ms,
        };
        let forget = forget_before(started_at_ms);
        store.coordinator_heartbeat(record.clone(), forget).await?;
        let coordinator_id = record.coordinator_id.clone();
        let beating = tokio::spawn(heartbeat(store.clone(), record));
        Ok(Membership {
            store,
            coordinator_id,
            beating,
        })
    }

    /// This process's id among the installation's coordinators.
    pub fn coordinator_id(&self) -> &str {
        &self.coordinator_id
    }

    /// Stops the heartbeat and removes the row: new tokens stop listing
    /// this coordinator at once rather than after [`LEASE`].
    pub async fn leave(self) {
        self.beating.abort();
        if let Err(e) = self.store.remove_coordinator(&self.coordinator_id).await {
            tracing::warn!(error = %e, "cannot remove this coordinator from the installation");
        }
    }
}

fn forget_before(now_ms: i64) -> i64 {
    now_ms.saturating_sub(i64::try_from(FORGET.as_millis()).unwrap_or(i64::MAX))
}

async fn heartbeat(store: Arc<dyn Store>, mut record: CoordinatorRecord) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        record.heartbeat_at_ms = now_ms();
        let forget = forget_before(record.heartbeat_at_ms);
        if let Err(e) = store.coordinator_heartbeat(record.clone(), forget).await {
            // The next beat retries; a database that stays down makes this
            // coordinator drop out of new tokens after LEASE, as it should.
            tracing::warn!(error = %e, "coordinator heartbeat failed");
        }
    }
}

/// The ids of the coordinators alive now (heartbeat within [`LEASE`]).
pub async fn live_coordinator_ids(store: &dyn Store) -> Result<Vec<String>, StoreError> {
    let since = now_ms().saturating_sub(i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX));
    Ok(store
        .live_coordinators(since)
        .await?
        .into_iter()
        .map(|c| c.coordinator_id)
        .collect())
}

/// The addresses a new token carries: this coordinator's own first (the
/// agent tries them in order), then every other live coordinator's.
pub async fn token_addrs(store: &dyn Store, own: &[String]) -> Vec<String> {
    match live_addrs(store, own).await {
        Ok(addrs) => addrs,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the other coordinators; the token names this one only");
            own.to_vec()
        }
    }
}

/// `own` addresses first, then every other live coordinator's.
pub async fn live_addrs(store: &dyn Store, own: &[String]) -> Result<Vec<String>, StoreError> {
    let since = now_ms().saturating_sub(i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX));
    let mut addrs = own.to_vec();
    for addr in store
        .live_coordinators(since)
        .await?
        .into_iter()
        .flat_map(|c| c.addrs)
    {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn the_second_coordinator_gets_the_first_ones_ca_and_credential() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
        let first = tempfile::tempdir().unwrap();
        let Joined::Vacant(key) = join_installation(store.as_ref(), first.path())
            .await
            .unwrap()
        else {
            panic!("an empty database holds no installation");
        };
        let pki = crate::pki::Pki::load_or_create(first.path()).unwrap();
        std::fs::write(first.path().join(crate::pki::ADMIN_TOKEN_FILE), "s3cret\n").unwrap();
        offer_installation(store.as_ref(), first.path(), &key)
            .await
            .unwrap();
        let sealed = store
            .installation_secret(INSTALLATION)
            .await
            .unwrap()
            .unwrap();
        let ca_key = std::fs::read_to_string(first.path().join(crate::pki::CA_KEY)).unwrap();
        assert!(
            !String::from_utf8_lossy(&sealed).contains(ca_key.lines().nth(1).unwrap()),
            "the CA key is in the database in clear"
        );
        assert!(!String::from_utf8_lossy(&sealed).contains("s3cret"));

        // Without the seal key, the second is told what to copy.
        let second = tempfile::tempdir().unwrap();
        let missing = join_installation(store.as_ref(), second.path())
            .await
            .unwrap_err();
        assert!(matches!(
            missing,
            ClusterError::Seal(SealError::Missing { .. })
        ));
        assert!(missing.to_string().contains("copy seal.key"), "{missing}");
        std::fs::copy(
            first.path().join(seal::SEAL_KEY_FILE),
            second.path().join(seal::SEAL_KEY_FILE),
        )
        .unwrap();
        assert!(matches!(
            join_installation(store.as_ref(), second.path())
                .await
                .unwrap(),
            Joined::Existing
        ));
        let joined = crate::pki::Pki::load_or_create(second.path()).unwrap();
        assert_eq!(joined.ca_fingerprint(), pki.ca_fingerprint());
        assert_eq!(
            std::fs::read_to_string(second.path().join(crate::pki::ADMIN_TOKEN_FILE)).unwrap(),
            "s3cret\n"
        );
        // A racing creator loses, and a data dir of another installation is
        // refused rather than overwritten.
        let third = tempfile::tempdir().unwrap();
        crate::pki::Pki::load_or_create(third.path()).unwrap();
        std::fs::write(third.path().join(crate::pki::ADMIN_TOKEN_FILE), "other\n").unwrap();
        let stranger = SealKey::load_or_create(third.path()).unwrap();
        assert!(matches!(
            offer_installation(store.as_ref(), third.path(), &stranger).await,
            Err(ClusterError::LostRace(_))
        ));
        std::fs::copy(
            first.path().join(seal::SEAL_KEY_FILE),
            third.path().join(seal::SEAL_KEY_FILE),
        )
        .unwrap();
        assert!(matches!(
            join_installation(store.as_ref(), third.path()).await,
            Err(ClusterError::OtherInstallation(_))
        ));
    }

    #[tokio::test]
    async fn tokens_name_this_coordinator_first_then_the_live_others() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
        let own = vec!["a.example:7443".to_owned()];
        assert_eq!(token_addrs(store.as_ref(), &own).await, own);
        let b = Membership::join(
            store.clone(),
            "b".into(),
            vec!["b.example:7443".into(), "a.example:7443".into()],
        )
        .await
        .unwrap();
        assert_eq!(b.coordinator_id(), "b");
        assert_eq!(live_coordinator_ids(store.as_ref()).await.unwrap(), ["b"]);
        store
            .coordinator_heartbeat(
                CoordinatorRecord {
                    coordinator_id: "dead".into(),
                    addrs: vec!["dead.example:7443".into()],
                    started_at_ms: 1,
                    heartbeat_at_ms: 1,
                },
                0,
            )
            .await
            .unwrap();
        assert_eq!(
            token_addrs(store.as_ref(), &own).await,
            ["a.example:7443", "b.example:7443"]
        );
        b.leave().await;
        assert_eq!(token_addrs(store.as_ref(), &own).await, own);
    }
}
