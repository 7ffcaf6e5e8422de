//! The SQLite backend: the whole conformance suite, plus what only SQLite
//! can show (its pragmas, the schema's own checks, corrupt rows, a poisoned
//! lock, a file shared by threads).

use std::sync::Arc;

use super::*;
use crate::store::conformance;

crate::conformance_tests!(|_test| async {
    Some((
        Arc::new(SqliteStore::open_in_memory().unwrap()) as conformance::Backend,
        conformance::no_guard(),
    ))
});

#[tokio::test]
async fn conformance_on_a_file() {
    // The suite above runs in memory; WAL only exists on disk.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
    conformance::shared_across_tasks(store.clone()).await;
    drop(store);
    let reopened = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    assert_eq!(reopened.count_all_results().await.unwrap(), 1_000);
}

#[test]
fn open_configures_connection() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("p.db")).unwrap();
    let conn = store.lock().unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = conn
        .pragma_query_value(None, "foreign_keys", |r| r.get(0))
        .unwrap();
    assert_eq!(fk, 1);
    let sync: i64 = conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 1, "NORMAL");
    let busy: i64 = conn
        .pragma_query_value(None, "busy_timeout", |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 5_000);
}

#[tokio::test]
async fn corrupt_rows_are_an_error() {
    let store = SqliteStore::open_in_memory().unwrap();
    store.insert_agent(conformance_agent()).await.unwrap();
    store
        .lock()
        .unwrap()
        .execute("UPDATE agents SET labels_json = 'not json'", [])
        .unwrap();
    assert!(matches!(
        store.agent_by_id("a-1").await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.list_agents().await,
        Err(StoreError::Corrupt(_))
    ));

    // A result whose outcome code this binary does not know.
    store
        .insert_results(vec![conformance::result("a-2", "p", 0)], 1)
        .await
        .unwrap();
    store
        .lock()
        .unwrap()
        .execute("UPDATE results SET outcome = 999", [])
        .unwrap();
    assert!(matches!(
        store.results_for_plan("p").await,
        Err(StoreError::Corrupt(_))
    ));
}

fn conformance_agent() -> NewAgent {
    NewAgent {
        agent_id: "a-1".into(),
        name: "x".into(),
        region: "eu".into(),
        labels: BTreeMap::new(),
        version: "0.1.0".into(),
        role: AgentRole::Agent,
        cert_sha256: "c".into(),
        enrolled_at_ms: 1,
    }
}

#[test]
fn the_schema_still_refuses_unknown_names() {
    // The typed API cannot express a bad role, state or status any more;
    // the schema's CHECK constraints still guard the file against anyone
    // else writing to it.
    let store = SqliteStore::open_in_memory().unwrap();
    let conn = store.lock().unwrap();
    assert!(conn
        .execute(
            "INSERT INTO agents (agent_id, name, region, version, role, cert_sha256, enrolled_at) \
             VALUES ('a', 'n', 'eu', 'v', 'admin', 'c', 1)",
            [],
        )
        .is_err());
    conn.execute(
        "INSERT INTO plans (plan_id, created_at, probes_json) VALUES ('p', 1, '[]')",
        [],
    )
    .unwrap();
    assert!(conn
        .execute(
            "INSERT INTO plan_agents (plan_id, agent_id, state) VALUES ('p', 'a', 'exploded')",
            [],
        )
        .is_err());
    assert!(conn
        .execute(
            "INSERT INTO campaigns (campaign_id, created_at, target_json, regions_json, status) \
             VALUES ('c', 1, '{}', '[]', 'bogus')",
            [],
        )
        .is_err());
    // And the names the enums store are the ones it allows.
    for role in AgentRole::ALL {
        conn.execute(
            "INSERT INTO agents (agent_id, name, region, version, role, cert_sha256, enrolled_at) \
             VALUES (?1, ?1, 'eu', 'v', ?1, 'c', 1)",
            [role.as_str()],
        )
        .unwrap();
    }
    for state in PlanState::ALL {
        conn.execute(
            "INSERT INTO plan_agents (plan_id, agent_id, state) VALUES ('p', ?1, ?1)",
            [state.as_str()],
        )
        .unwrap();
    }
    for status in CampaignStatus::ALL {
        conn.execute(
            "INSERT INTO campaigns (campaign_id, created_at, target_json, regions_json, status) \
             VALUES (?1, 1, '{}', '[]', ?1)",
            [status.as_str()],
        )
        .unwrap();
    }
}

#[tokio::test]
async fn poisoned_lock_is_an_error() {
    let store = SqliteStore::open_in_memory().unwrap();
    let poisoner = store.clone();
    let joined = std::thread::spawn(move || {
        let _guard = poisoner.conn.lock().unwrap();
        panic!("poison the store lock");
    })
    .join();
    assert!(joined.is_err());
    assert!(matches!(
        store.count_all_results().await,
        Err(StoreError::Poisoned)
    ));
}

#[test]
fn the_store_is_object_safe_and_shareable() {
    // Callers hold an `Arc<dyn Store>` across tasks; fail the build, not
    // the deployment, if that ever breaks.
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<dyn Store>();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    drop(store);
}
