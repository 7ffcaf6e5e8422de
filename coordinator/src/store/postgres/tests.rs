//! The PostgreSQL backend: the whole conformance suite, plus what only a
//! shared server can show (two coordinators racing on one token, one sweep
//! slot, one result batch, one outbox; concurrent migrations; byte-order
//! sorting under an ICU collation).
//!
//! Every case gets a server of its own ([`PgCluster`]: a throwaway cluster
//! from Debian's `postgresql`, stopped when the case ends) and a schema in
//! it, so the suite runs in parallel and `options=-c search_path=` is
//! exercised by every case. Without `initdb` the cases print `SKIPPED`,
//! and under `CI=true` they fail.

use std::sync::Arc;

use tokio_postgres::NoTls;
use vantage_support::pgtest::PgCluster;

use super::*;
use crate::store::conformance::{self, Backend, Guard};
use crate::store::SCHEMA_VERSION;

/// A server of the case's own with a new, empty schema, and the
/// configuration whose connections see only that schema; `None` (after
/// `SKIPPED`) when PostgreSQL is not installed.
async fn fresh_schema(test: &str) -> Option<(PgConfig, PgCluster)> {
    let name = test.to_owned();
    let cluster = tokio::task::spawn_blocking(move || PgCluster::for_test(&name))
        .await
        .expect("the cluster starter panicked")
        .expect("start a test cluster")?;
    let config = PgConfig::parse(&cluster.url()).expect("the test URL parses");
    let (client, connection) = config.pg.connect(NoTls).await.expect("test server answers");
    let driver = tokio::spawn(connection);
    let schema = format!("vantage_test_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create the test schema");
    drop(client);
    let _ = driver.await;
    Some((config.with_search_path(&schema), cluster))
}

async fn pg_store(test: &'static str) -> Option<(Backend, Guard)> {
    let (config, cluster) = fresh_schema(test).await?;
    let store = PgStore::connect(&config)
        .await
        .expect("connect and migrate");
    Some((Arc::new(store) as Backend, Box::new(cluster) as Guard))
}

crate::conformance_tests!(pg_store);

#[test]
fn migrations_mirror_sqlite_step_for_step() {
    // One version number, one meaning, on both backends.
    assert_eq!(migrations::MIGRATIONS.len(), SCHEMA_VERSION as usize);
}

#[test]
fn urls_are_checked_before_anything_connects() {
    let config = PgConfig::parse("postgres://vantage:s3cret@db.internal:6543/fleet").unwrap();
    assert_eq!(config.display_target(), "vantage@db.internal:6543/fleet");
    assert!(!format!("{config:?} {config}").contains("s3cret"));
    assert!(!config.uses_tls(), "prefer, the default, is in clear");
    for (url, says) in [
        ("postgres:///fleet?user=vantage", "no host"),
        ("postgres://db.internal/fleet", "no user"),
        (
            "postgres://vantage@db.internal/fleet?sslmode=sometimes",
            "expected disable, prefer, require",
        ),
        (
            "postgres://vantage@db.internal/fleet?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "sslrootcert=/nonexistent/ca.pem: cannot read it",
        ),
        (
            "postgres://vantage@db.internal:notaport/fleet",
            "not a PostgreSQL URL",
        ),
    ] {
        match PgConfig::parse(url) {
            Err(StoreError::Invalid(message)) => {
                assert!(message.contains(says), "{url}: {message}")
            }
            other => panic!("{url}: expected Invalid, got {other:?}"),
        }
    }
    let scoped = config.with_search_path("vantage_a");
    assert_eq!(scoped.pg.get_options(), Some("-c search_path=vantage_a"));

    // libpq's TLS parameters, in both forms; the rest of the string is
    // passed on untouched.
    let (_, ca_pem, _, _) = test_pki(&["db.internal"]);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &ca_pem).unwrap();
    let ca = ca.display().to_string();
    for (text, tls) in [
        (format!("postgres://vantage@db.internal/fleet?sslmode=verify-full&sslrootcert={ca}&connect_timeout=3"), true),
        (format!("postgres://vantage@db.internal/fleet?sslrootcert={ca}"), true),
        (format!("host=db.internal user=vantage dbname=fleet sslmode=require sslrootcert={ca}"), true),
        ("postgres://vantage@db.internal/fleet?sslmode=disable".to_owned(), false),
        (format!("postgres://vantage@db.internal/fleet?sslmode=disable&sslrootcert={ca}"), false),
    ] {
        let parsed = PgConfig::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed.uses_tls(), tls, "{text}");
        assert_eq!(parsed.display_target(), "vantage@db.internal:5432/fleet", "{text}");
    }
    let timed = PgConfig::parse(&format!(
        "postgres://vantage@db.internal/fleet?sslmode=verify-full&sslrootcert={ca}&connect_timeout=3"
    ))
    .unwrap();
    assert_eq!(
        timed.pg.get_connect_timeout(),
        Some(&std::time::Duration::from_secs(3))
    );
}

/// A CA and a server certificate it signed for `names`: (cert PEM, CA PEM,
/// key PEM, another CA's PEM that did not sign it).
fn test_pki(names: &[&str]) -> (String, String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), Issuer::new(params, key))
    };
    let (ca_pem, issuer) = ca("test CA");
    let (other_pem, _) = ca("another CA");
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), ca_pem, key.serialize_pem(), other_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_is_reached_verified_and_a_wrong_ca_is_refused() {
    let (cert, ca_pem, key, other_pem) = test_pki(&["127.0.0.1", "localhost"]);
    let test = "a_tls_server_is_reached_verified_and_a_wrong_ca_is_refused";
    let Some(cluster) = tokio::task::spawn_blocking(move || PgCluster::with_tls(test, &cert, &key))
        .await
        .unwrap()
        .expect("start a TLS test cluster")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    std::fs::write(&ca, &ca_pem).unwrap();
    std::fs::write(&other, &other_pem).unwrap();
    let url = |root: &std::path::Path| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            cluster.url(),
            root.display()
        )
    };
    let config = PgConfig::parse(&url(&ca)).unwrap();
    let store = PgStore::connect(&config).await.expect("connect over TLS");
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let row = store
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the pooled connection is encrypted");
    // The listening connection goes over TLS too: it wakes once listening.
    let wakers = ChangeWakers::default();
    store.announce_changes(wakers.clone());
    woken(&wakers.sweeps, "the TLS listener's start").await;
    // A CA that did not sign the server's certificate is refused.
    let wrong = PgConfig::parse(&url(&other)).unwrap();
    let refused = PgStore::connect(&wrong).await.unwrap_err();
    // What `serve` prints: the error and its causes.
    let said = format!("{:#}", anyhow::Error::new(refused));
    assert!(said.contains("TLS handshake"), "{said}");
    assert!(said.contains("UnknownIssuer"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_to_stops_at_a_version_and_refuses_the_future() {
    let Some((config, _cluster)) =
        fresh_schema("migrate_to_stops_at_a_version_and_refuses_the_future").await
    else {
        return;
    };
    let store = PgStore::connect_at(&config, 1).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 1);
    store
        .insert_token(NewToken {
            hash: "h".into(),
            region: "eu".into(),
            created_at_ms: 1,
            expires_at_ms: 10,
            uses: 1,
        })
        .await
        .unwrap();
    // Connecting again at the current version upgrades and keeps the data.
    let store = PgStore::connect(&config).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    assert!(store.check_token("h", 2).await.unwrap().is_ok());
    // A schema from a newer coordinator is refused, not used.
    store
        .client()
        .await
        .unwrap()
        .execute("UPDATE vantage_schema SET version = 99", &[])
        .await
        .unwrap();
    match PgStore::connect(&config).await {
        Err(StoreError::TooNew { found, supported }) => {
            assert_eq!((found, supported), (99, SCHEMA_VERSION));
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    assert_eq!(store.schema_version().await.unwrap(), 99);
}

/// Waits for `notify`, bounded so a lost announcement fails the test.
async fn woken(notify: &tokio::sync::Notify, what: &str) {
    tokio::time::timeout(std::time::Duration::from_secs(20), notify.notified())
        .await
        .unwrap_or_else(|_| panic!("not woken for {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_coordinators_sweep_changes_and_mail_wake_this_one() {
    let Some((a, b, _cluster)) =
        two_coordinators("another_coordinators_sweep_changes_and_mail_wake_this_one").await
    else {
        return;
    };
    let wakers = ChangeWakers {
        mail_for: Some("coord-b".into()),
        ..ChangeWakers::default()
    };
    b.announce_changes(wakers.clone());
    // Listening starts by waking both: what changed before is unknown.
    woken(&wakers.sweeps, "the start").await;
    woken(&wakers.mail, "the start").await;
    a.insert_sweep(conformance_sweep("s")).await.unwrap();
    woken(&wakers.sweeps, "a created sweep").await;
    a.set_sweep_paused("s", true, 2).await.unwrap();
    woken(&wakers.sweeps, "a pause").await;
    a.apply_sweeps(vec![], vec![("s".into(), "{}".into())], vec![], 3)
        .await
        .unwrap();
    woken(&wakers.sweeps, "an applied file").await;
    a.delete_sweep("s").await.unwrap();
    woken(&wakers.sweeps, "a deletion").await;
    // Mail for another coordinator is filtered out; its own wakes it.
    for to in ["coord-c", "coord-b"] {
        a.post_mail(Mail {
            to: to.into(),
            from: "coord-a".into(),
            body: MailBody::Event(b"{}".to_vec()),
        })
        .await
        .unwrap();
    }
    woken(&wakers.mail, "mail").await;
    assert_eq!(b.take_mail("coord-b", 10).await.unwrap().len(), 1);
}

fn conformance_sweep(name: &str) -> SweepRecord {
    SweepRecord {
        name: name.to_owned(),
        definition_json: "{}".into(),
        paused: false,
        created_at_ms: 1,
        updated_at_ms: 1,
        last_slot_ms: None,
    }
}

/// Two coordinators (two pools) on one schema, and their server.
async fn two_coordinators(test: &str) -> Option<(PgStore, PgStore, PgCluster)> {
    let (config, cluster) = fresh_schema(test).await?;
    // Both migrate at once: the advisory lock lets one apply each step.
    let (a, b) = tokio::join!(PgStore::connect(&config), PgStore::connect(&config));
    Some((a.unwrap(), b.unwrap(), cluster))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_spend_a_token_once_and_claim_a_slot_once() {
    let Some((a, b, _cluster)) =
        two_coordinators("two_coordinators_spend_a_token_once_and_claim_a_slot_once").await
    else {
        return;
    };
    assert_eq!(a.schema_version().await.unwrap(), SCHEMA_VERSION);
    for round in 0..20 {
        let hash = format!("token-{round}");
        a.insert_token(NewToken {
            hash: hash.clone(),
            region: "eu".into(),
            created_at_ms: 1,
            expires_at_ms: 1_000,
            uses: 1,
        })
        .await
        .unwrap();
        let (x, y) = tokio::join!(a.consume_token(&hash, 5), b.consume_token(&hash, 5));
        let granted = [x.unwrap(), y.unwrap()];
        assert_eq!(
            granted.iter().filter(|g| g.is_ok()).count(),
            1,
            "{granted:?}"
        );
        assert!(
            granted.contains(&Err(TokenRejection::UsedUp)),
            "{granted:?}"
        );
    }

    a.insert_sweep(sweep_named("home")).await.unwrap();
    for slot in 1..=20i64 {
        let slot_ms = slot * 60_000;
        let (x, y) = tokio::join!(
            a.record_sweep_slots("home", Vec::new(), Some((slot_ms, slot_ms + 1)), "a"),
            b.record_sweep_slots("home", Vec::new(), Some((slot_ms, slot_ms + 2)), "b")
        );
        let runs: Vec<i64> = [x.unwrap(), y.unwrap()].into_iter().flatten().collect();
        assert_eq!(runs.len(), 1, "slot {slot_ms} started {runs:?}");
    }
    let runs = b.sweep_runs("home", 100).await.unwrap();
    assert_eq!(runs.len(), 20);
    assert_eq!(
        b.sweep("home").await.unwrap().unwrap().last_slot_ms,
        Some(20 * 60_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_replayed_to_another_coordinator_is_stored_once() {
    let Some((a, b, _cluster)) =
        two_coordinators("a_batch_replayed_to_another_coordinator_is_stored_once").await
    else {
        return;
    };
    a.insert_plan(NewPlan {
        plan_id: "p".into(),
        campaign_id: None,
        created_at_ms: 1,
        probes_json: "[]".into(),
        agents: vec![("a-1".into(), 3_000)],
    })
    .await
    .unwrap();
    // The agent sent to one coordinator, lost the ack, and replays the
    // same results (overlapping) to the other at the same time.
    let first = conformance::results("a-1", "p", 0..2_000);
    let replay = conformance::results("a-1", "p", 1_000..3_000);
    let (x, y) = tokio::join!(a.insert_results(first, 10), b.insert_results(replay, 11));
    assert_eq!(x.unwrap() + y.unwrap(), 3_000);
    assert_eq!(a.count_results("p").await.unwrap(), 3_000);
    let stored = b.results_for_plan("p").await.unwrap();
    let mut ids: Vec<&str> = stored.iter().map(|r| r.result_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_sort_by_byte_whatever_the_cluster_locale() {
    let Some((store, _guard)) = pg_store("keys_sort_by_byte_whatever_the_cluster_locale").await
    else {
        return;
    };
    for name in ["b", "B", "a", "_z", "A"] {
        store.insert_sweep(sweep_named(name)).await.unwrap();
    }
    let names: Vec<String> = store
        .list_sweeps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    // SQLite's BINARY order: upper case, then '_', then lower case.
    assert_eq!(names, ["A", "B", "_z", "a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_outboxes_claim_each_webhook_post_once() {
    let Some((a, b, _cluster)) =
        two_coordinators("two_outboxes_claim_each_webhook_post_once").await
    else {
        return;
    };
    a.insert_sweep(sweep_named("s")).await.unwrap();
    let run = a
        .record_sweep_slots("s", Vec::new(), Some((60_000, 60_001)), "a")
        .await
        .unwrap()
        .unwrap();
    let deliveries: Vec<NewDelivery> = (0..60)
        .map(|i| NewDelivery {
            event_id: format!("event-{i}"),
            url: "https://hooks.example/".into(),
            body: "{}".into(),
            created_at_ms: 61_000 + i,
        })
        .collect();
    a.finish_sweep_run(
        run,
        SweepRunEnd {
            finished_at_ms: 61_000,
            status: crate::store::SweepRunStatus::Faulty,
            campaign_id: None,
            findings_json: "[]".into(),
            reason: None,
        },
        Vec::new(),
        deliveries,
    )
    .await
    .unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let (x, y) = tokio::join!(
            a.claim_deliveries(100_000, 7, 200_000),
            b.claim_deliveries(100_000, 7, 200_000)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        if x.is_empty() && y.is_empty() {
            break;
        }
        for delivery in x.into_iter().chain(y) {
            assert!(
                seen.insert(delivery.event_id.clone()),
                "{} twice",
                delivery.event_id
            );
        }
    }
    assert_eq!(seen.len(), 60);
    // Unanswered claims come back once they run out.
    assert_eq!(
        a.claim_deliveries(200_000, 100, 300_000)
            .await
            .unwrap()
            .len(),
        60
    );
}

/// A sweep row with nothing but its name.
fn sweep_named(name: &str) -> SweepRecord {
    SweepRecord {
        name: name.into(),
        definition_json: "{}".into(),
        paused: false,
        created_at_ms: 1,
        updated_at_ms: 1,
        last_slot_ms: None,
    }
}
