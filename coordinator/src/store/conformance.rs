//! The store's contract as tests any backend runs: one `pub async fn` per
//! case, each given a fresh, empty, migrated store, and
//! [`conformance_tests!`](crate::conformance_tests) to instantiate them all
//! as `#[tokio::test]`s for a backend:
//!
//! ```ignore
//! crate::conformance_tests!(|_test| async {
//!     Some((Arc::new(SqliteStore::open_in_memory().unwrap()) as Backend, no_guard()))
//! });
//! ```
//!
//! The maker is async and answers the store with a guard that lives as long
//! as the case (the PostgreSQL backend's is its test server), or `None`:
//! the PostgreSQL maker says so (after printing why) when there is no
//! server to start, and the case returns.
//! Only the [`Store`] trait is used here, never a backend's own API, so
//! both backends run the same cases. What only one backend
//! can show (its migrations, pragmas, lock poisoning) is tested next to it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{
    AgentRole, CampaignStatus, NewAgent, NewPlan, NewToken, Outcome, PlanAgentStatus, PlanState,
    ResultRecord, SeenReport, Sighting, Store, StoreError, TokenGrant, TokenRejection,
};

/// Instantiates every conformance case as a `#[tokio::test]`, each with a
/// store from `$make`: an expression of type `impl Fn(&'static str) -> F`
/// where `F: Future<Output = Option<(Backend, Guard)>>`, given the case's
/// name; a `None` ends the case (the maker has said why).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            schema_version_is_current,
            consume_token_unknown_expired_and_used_up,
            check_token_spends_nothing_and_set_agent_cert_supersedes,
            insert_agent_name_taken_and_replacing_revoked,
            revoke_agent,
            record_seen_touch_and_list,
            insert_results_is_idempotent_and_plan_status_counts,
            an_ended_session_marks_only_unfinished_plans_lost,
            results_for_two_agents_in_one_call,
            plan_status_edge_cases,
            shared_across_tasks,
            campaigns_round_trip_and_list_newest_first,
            sightings_are_idempotent_and_found_by_prefix,
            sweeps_are_named_once_applied_atomically_and_deleted_with_their_history,
            sweep_slots_run_once_and_history_is_kept_newest_first,
            a_paused_sweep_has_no_slot_recorded_or_started,
            alerts_upsert_and_the_outbox_retries_until_delivered,
            installation_secrets_are_set_once_and_dead_coordinators_drop_out,
            what_a_dead_coordinator_left_running_is_adopted_once,
            mail_is_taken_once_in_order_and_holders_are_released_only_by_themselves,
        );
    };
    (@cases $make:expr; $($case:ident,)+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let make = $make;
                let Some((store, _guard)) = make(stringify!($case)).await else {
                    return;
                };
                $crate::store::conformance::$case(store).await;
            }
        )+
    };
}

/// A store under test.
pub type Backend = Arc<dyn Store>;

/// What a store under test needs kept alive while a case runs (its server).
pub type Guard = Box<dyn std::any::Any + Send>;

/// The guard of a store that needs none.
pub fn no_guard() -> Guard {
    Box::new(())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn new_agent(agent_id: &str, name: &str, region: &str) -> NewAgent {
    NewAgent {
        agent_id: agent_id.to_owned(),
        name: name.to_owned(),
        region: region.to_owned(),
        labels: labels(&[("asn", "64500")]),
        version: "0.1.0".to_owned(),
        role: AgentRole::Agent,
        cert_sha256: format!("cert-{agent_id}"),
        enrolled_at_ms: 1_000,
    }
}

fn token(hash: &str, uses: u32) -> NewToken {
    NewToken {
        hash: hash.to_owned(),
        region: "eu-west".to_owned(),
        created_at_ms: 1_000,
        expires_at_ms: 10_000,
        uses,
    }
}

fn plan(plan_id: &str, campaign_id: Option<&str>, agents: &[(&str, u64)]) -> NewPlan {
    NewPlan {
        plan_id: plan_id.to_owned(),
        campaign_id: campaign_id.map(str::to_owned),
        created_at_ms: 1_000,
        probes_json: "[]".to_owned(),
        agents: agents
            .iter()
            .map(|(id, expected)| ((*id).to_owned(), *expected))
            .collect(),
    }
}

/// A result record; its body is opaque bytes that must come back unchanged.
pub fn result(agent_id: &str, plan_id: &str, n: usize) -> ResultRecord {
    ResultRecord {
        result_id: format!("{plan_id}-r{n}"),
        plan_id: plan_id.to_owned(),
        agent_id: agent_id.to_owned(),
        probe_id: format!("probe-{}", n % 7),
        attempt: 1,
        outcome: if n.is_multiple_of(3) {
            Outcome::Reset
        } else {
            Outcome::Ok
        },
        status: 200,
        body: format!("body of {n}").into_bytes(),
    }
}

/// `result` for every `n` in `range`.
pub fn results(agent_id: &str, plan_id: &str, range: std::ops::Range<usize>) -> Vec<ResultRecord> {
    range.map(|n| result(agent_id, plan_id, n)).collect()
}

fn seen(
    at: i64,
    addr: Option<&str>,
    version: &str,
    labels: BTreeMap<String, String>,
    spool: u64,
) -> SeenReport {
    SeenReport {
        seen_at_ms: at,
        remote_addr: addr.map(str::to_owned),
        version: version.to_owned(),
        labels,
        spool_bytes: spool,
    }
}

/// A new store is at the current schema version.
pub async fn schema_version_is_current(store: Backend) {
    assert_eq!(store.schema_version().await.unwrap(), super::SCHEMA_VERSION);
}

/// Tokens: unknown, spent, expired (exclusive), zero-use, duplicate.
pub async fn consume_token_unknown_expired_and_used_up(store: Backend) {
    assert_eq!(
        store.consume_token("nope", 2_000).await.unwrap(),
        Err(TokenRejection::Unknown)
    );

    store.insert_token(token("twice", 2)).await.unwrap();
    let grant = Ok(TokenGrant {
        region: "eu-west".to_owned(),
    });
    assert_eq!(store.consume_token("twice", 2_000).await.unwrap(), grant);
    assert_eq!(store.consume_token("twice", 2_001).await.unwrap(), grant);
    assert_eq!(
        store.consume_token("twice", 2_002).await.unwrap(),
        Err(TokenRejection::UsedUp)
    );
    assert_eq!(
        store.consume_token("twice", 2_003).await.unwrap(),
        Err(TokenRejection::UsedUp)
    );

    store.insert_token(token("old", 5)).await.unwrap();
    assert_eq!(
        store.consume_token("old", 10_000).await.unwrap(),
        Err(TokenRejection::Expired),
        "expiry is exclusive"
    );
    assert_eq!(store.consume_token("old", 9_999).await.unwrap(), grant);

    store.insert_token(token("zero", 0)).await.unwrap();
    assert_eq!(
        store.consume_token("zero", 2_000).await.unwrap(),
        Err(TokenRejection::UsedUp)
    );

    // Duplicate hashes are an error, not a panic.
    assert!(matches!(
        store.insert_token(token("zero", 1)).await,
        Err(StoreError::Duplicate(_))
    ));
}

/// `check_token` spends nothing; a renewed certificate supersedes the old.
pub async fn check_token_spends_nothing_and_set_agent_cert_supersedes(store: Backend) {
    store.insert_token(token("once", 1)).await.unwrap();
    let grant = Ok(TokenGrant {
        region: "eu-west".to_owned(),
    });
    assert_eq!(store.check_token("once", 2_000).await.unwrap(), grant);
    assert_eq!(store.check_token("once", 2_000).await.unwrap(), grant);
    assert_eq!(store.consume_token("once", 2_000).await.unwrap(), grant);
    assert_eq!(
        store.check_token("once", 2_000).await.unwrap(),
        Err(TokenRejection::UsedUp)
    );
    assert_eq!(
        store.check_token("nope", 2_000).await.unwrap(),
        Err(TokenRejection::Unknown)
    );

    store
        .insert_agent(new_agent("a-1", "ams-1", "eu"))
        .await
        .unwrap();
    assert!(store.set_agent_cert("a-1", "renewed").await.unwrap());
    let record = store.agent_by_id("a-1").await.unwrap().unwrap();
    assert_eq!(record.cert_sha256, "renewed");
    assert!(!store.set_agent_cert("missing", "x").await.unwrap());
    store.revoke_agent("ams-1").await.unwrap();
    assert!(!store.set_agent_cert("a-1", "again").await.unwrap());
}

/// A live name is taken; a revoked one is replaced; a duplicate id fails.
pub async fn insert_agent_name_taken_and_replacing_revoked(store: Backend) {
    store
        .insert_agent(new_agent("a-1", "ams-1", "eu"))
        .await
        .unwrap();

    match store.insert_agent(new_agent("a-2", "ams-1", "eu")).await {
        Err(StoreError::NameTaken(name)) => assert_eq!(name, "ams-1"),
        other => panic!("expected NameTaken, got {other:?}"),
    }
    assert!(store.agent_by_id("a-2").await.unwrap().is_none());

    store.revoke_agent("ams-1").await.unwrap().unwrap();
    store
        .insert_agent(new_agent("a-2", "ams-1", "eu"))
        .await
        .unwrap();
    assert!(store.agent_by_id("a-1").await.unwrap().is_none());
    let replaced = store.agent_by_name("ams-1").await.unwrap().unwrap();
    assert_eq!(replaced.agent_id, "a-2");
    assert!(!replaced.revoked);
    assert_eq!(replaced.last_seen_ms, None);
    assert_eq!(replaced.role, AgentRole::Agent);
    assert_eq!(store.list_agents().await.unwrap().len(), 1);

    // A witness keeps its role.
    let mut witness = new_agent("w-1", "origin-1", "eu");
    witness.role = AgentRole::Witness;
    store.insert_agent(witness).await.unwrap();
    assert_eq!(
        store.agent_by_id("w-1").await.unwrap().unwrap().role,
        AgentRole::Witness
    );

    // Bad input surfaces as an error (an unknown role cannot be expressed
    // any more; the schema's CHECK is tested with the SQLite backend).
    let dup_id = new_agent("a-2", "ams-4", "eu");
    assert!(matches!(
        store.insert_agent(dup_id).await,
        Err(StoreError::Duplicate(_))
    ));
}

/// Revoking returns the record, is idempotent, and unknown names are `None`.
pub async fn revoke_agent(store: Backend) {
    assert!(store.revoke_agent("ghost").await.unwrap().is_none());
    store
        .insert_agent(new_agent("a-1", "fra-1", "eu"))
        .await
        .unwrap();
    let revoked = store.revoke_agent("fra-1").await.unwrap().unwrap();
    assert!(revoked.revoked);
    assert_eq!(revoked.agent_id, "a-1");
    assert!(store.agent_by_id("a-1").await.unwrap().unwrap().revoked);
    // Idempotent.
    assert!(store.revoke_agent("fra-1").await.unwrap().unwrap().revoked);
}

/// Session reports, heartbeats, and the listing order.
pub async fn record_seen_touch_and_list(store: Backend) {
    for (id, name, region) in [
        ("a-3", "zrh-1", "eu"),
        ("a-1", "sfo-1", "us"),
        ("a-2", "ams-1", "eu"),
    ] {
        store
            .insert_agent(new_agent(id, name, region))
            .await
            .unwrap();
    }

    let new_labels = labels(&[("isp", "example"), ("tier", "2")]);
    store
        .record_seen(
            "a-1",
            seen(
                5_000,
                Some("192.0.2.1:4433"),
                "0.2.0",
                new_labels.clone(),
                1 << 20,
            ),
        )
        .await
        .unwrap();
    let record = store.agent_by_id("a-1").await.unwrap().unwrap();
    assert_eq!(record.last_seen_ms, Some(5_000));
    assert_eq!(record.remote_addr.as_deref(), Some("192.0.2.1:4433"));
    assert_eq!(record.version, "0.2.0");
    assert_eq!(record.labels, new_labels);
    assert_eq!(record.spool_bytes, 1 << 20);

    // None keeps the last known address; spool beyond i64 saturates.
    store
        .record_seen("a-1", seen(6_000, None, "0.2.1", BTreeMap::new(), u64::MAX))
        .await
        .unwrap();
    let record = store.agent_by_id("a-1").await.unwrap().unwrap();
    assert_eq!(record.remote_addr.as_deref(), Some("192.0.2.1:4433"));
    assert!(record.labels.is_empty());
    assert_eq!(record.spool_bytes, i64::MAX as u64);

    store.touch("a-1", 7_000).await.unwrap();
    let touched = store.agent_by_id("a-1").await.unwrap().unwrap();
    assert_eq!(touched.last_seen_ms, Some(7_000));
    assert_eq!(touched.version, "0.2.1");

    // Unknown agents are no-ops.
    store
        .record_seen("ghost", seen(1, None, "x", BTreeMap::new(), 0))
        .await
        .unwrap();
    store.touch("ghost", 1).await.unwrap();

    let names: Vec<_> = store
        .list_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.region, a.name))
        .collect();
    assert_eq!(
        names,
        [
            ("eu".to_owned(), "ams-1".to_owned()),
            ("eu".to_owned(), "zrh-1".to_owned()),
            ("us".to_owned(), "sfo-1".to_owned()),
        ]
    );
}

/// Replayed results are stored once; plan status counts them per agent;
/// stored records come back exactly as written.
pub async fn insert_results_is_idempotent_and_plan_status_counts(store: Backend) {
    store
        .insert_agent(new_agent("a-1", "ams-1", "eu"))
        .await
        .unwrap();
    store
        .insert_agent(new_agent("a-2", "fra-1", "eu"))
        .await
        .unwrap();
    store
        .insert_plan(plan("p1", Some("c1"), &[("a-1", 120), ("a-2", 50)]))
        .await
        .unwrap();

    let batch = results("a-1", "p1", 0..100);
    assert_eq!(
        store.insert_results(batch.clone(), 2_000).await.unwrap(),
        100
    );
    assert_eq!(store.insert_results(batch.clone(), 3_000).await.unwrap(), 0);
    assert_eq!(store.count_results("p1").await.unwrap(), 100);
    assert_eq!(store.count_all_results().await.unwrap(), 100);

    store
        .set_plan_agent_state("p1", "a-2", PlanState::Rejected, Some("busy"))
        .await
        .unwrap();
    let status = store.plan_status("p1").await.unwrap().unwrap();
    assert_eq!(
        status,
        [
            PlanAgentStatus {
                agent_id: "a-1".to_owned(),
                agent_name: "ams-1".to_owned(),
                state: PlanState::Sent,
                reason: None,
                expected: 120,
                stored: 100,
            },
            PlanAgentStatus {
                agent_id: "a-2".to_owned(),
                agent_name: "fra-1".to_owned(),
                state: PlanState::Rejected,
                reason: Some("busy".to_owned()),
                expected: 50,
                stored: 0,
            },
        ]
    );

    // Every record round-trips, body bytes included, in the order received.
    assert_eq!(store.results_for_plan("p1").await.unwrap(), batch);
    assert!(store.results_for_plan("other").await.unwrap().is_empty());
}

/// An ended session marks only its unfinished plans lost; finishing wins.
pub async fn an_ended_session_marks_only_unfinished_plans_lost(store: Backend) {
    for id in ["running", "done", "refused"] {
        store
            .insert_plan(plan(id, None, &[("a-1", 1)]))
            .await
            .unwrap();
    }
    store
        .insert_plan(plan("other", None, &[("a-2", 1)]))
        .await
        .unwrap();
    store
        .set_plan_agent_state("done", "a-1", PlanState::Finished, None)
        .await
        .unwrap();
    store
        .set_plan_agent_state("refused", "a-1", PlanState::Rejected, Some("full"))
        .await
        .unwrap();

    assert_eq!(store.mark_plans_lost("a-1", "gone").await.unwrap(), 1);
    let state = |id: &'static str| {
        let store = store.clone();
        async move {
            let row = store.plan_status(id).await.unwrap().unwrap()[0].clone();
            (row.state, row.reason)
        }
    };
    assert_eq!(
        state("running").await,
        (PlanState::Lost, Some("gone".into()))
    );
    assert_eq!(state("done").await, (PlanState::Finished, None));
    assert_eq!(
        state("refused").await,
        (PlanState::Rejected, Some("full".into()))
    );
    assert_eq!(
        state("other").await,
        (PlanState::Sent, None),
        "another agent's plan"
    );
    // The agent came back and finished after all: its mark wins.
    store
        .set_plan_agent_state("running", "a-1", PlanState::Finished, None)
        .await
        .unwrap();
    assert_eq!(state("running").await, (PlanState::Finished, None));
    assert_eq!(store.mark_plans_lost("a-1", "gone").await.unwrap(), 0);

    let sent = store
        .plans_sent_to("a-1", &["running".into(), "other".into(), "nope".into()])
        .await
        .unwrap();
    assert_eq!(sent.into_iter().collect::<Vec<_>>(), ["running"]);
}

/// One call may carry several agents' results, replays mixed in.
pub async fn results_for_two_agents_in_one_call(store: Backend) {
    store
        .insert_agent(new_agent("a-1", "ams-1", "eu"))
        .await
        .unwrap();
    store
        .insert_agent(new_agent("a-2", "fra-1", "eu"))
        .await
        .unwrap();
    store
        .insert_plan(plan("p1", None, &[("a-1", 10), ("a-2", 10)]))
        .await
        .unwrap();
    let mut both = results("a-1", "p1", 0..10);
    both.extend(results("a-2", "p1", 10..16));
    // A partial replay of the first batch mixed with new rows.
    let replay = results("a-1", "p1", 8..12);
    assert_eq!(store.insert_results(both, 5).await.unwrap(), 16);
    assert_eq!(store.insert_results(replay, 6).await.unwrap(), 0);
    assert_eq!(store.insert_results(Vec::new(), 7).await.unwrap(), 0);
    let status = store.plan_status("p1").await.unwrap().unwrap();
    let stored: Vec<_> = status
        .iter()
        .map(|s| (s.agent_id.as_str(), s.stored))
        .collect();
    assert_eq!(stored, [("a-1", 10), ("a-2", 6)]);
    assert_eq!(store.count_results("p1").await.unwrap(), 16);
    assert_eq!(store.count_results("other").await.unwrap(), 0);
}

/// Missing and empty plans, vanished agents, no-op updates, duplicates.
pub async fn plan_status_edge_cases(store: Backend) {
    assert!(store.plan_status("missing").await.unwrap().is_none());

    store.insert_plan(plan("empty", None, &[])).await.unwrap();
    assert_eq!(store.plan_status("empty").await.unwrap(), Some(vec![]));

    // An agent whose row is gone (replaced after revocation) still shows,
    // by id.
    store
        .insert_agent(new_agent("a-1", "ams-1", "eu"))
        .await
        .unwrap();
    store
        .insert_plan(plan("p", None, &[("a-1", 3)]))
        .await
        .unwrap();
    store.revoke_agent("ams-1").await.unwrap();
    store
        .insert_agent(new_agent("a-9", "ams-1", "eu"))
        .await
        .unwrap();
    let status = store.plan_status("p").await.unwrap().unwrap();
    assert_eq!(status[0].agent_name, "a-1");

    store
        .set_plan_agent_state("p", "a-1", PlanState::Finished, None)
        .await
        .unwrap();
    assert_eq!(
        store.plan_status("p").await.unwrap().unwrap()[0].state,
        PlanState::Finished
    );
    // Unknown pair is a no-op (an unknown state cannot be expressed any
    // more; the schema's CHECK is tested with the SQLite backend).
    store
        .set_plan_agent_state("p", "nobody", PlanState::Finished, None)
        .await
        .unwrap();
    // Duplicate plan ids are an error and leave the original intact.
    assert!(matches!(
        store.insert_plan(plan("p", None, &[])).await,
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(store.plan_status("p").await.unwrap().unwrap().len(), 1);
    // A failed plan insert (duplicate agent) rolls back entirely.
    assert!(store
        .insert_plan(plan("q", None, &[("a-9", 1), ("a-9", 1)]))
        .await
        .is_err());
    assert!(store.plan_status("q").await.unwrap().is_none());
}

/// Many tasks writing at once lose nothing.
pub async fn shared_across_tasks(store: Backend) {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..4 {
        let store = store.clone();
        tasks.spawn(async move {
            let agent = format!("a-{t}");
            let mut total = 0;
            for chunk in 0..5 {
                let batch = results(&agent, &format!("p-{t}"), chunk * 50..chunk * 50 + 50);
                total += store.insert_results(batch, 1).await.unwrap();
            }
            total
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done.unwrap();
    }
    assert_eq!(total, 1_000);
    assert_eq!(store.count_all_results().await.unwrap(), 1_000);
}

/// Campaigns: running, finished with a verdict, listed newest first, and
/// recovered (still running) oldest first, with their plans.
pub async fn campaigns_round_trip_and_list_newest_first(store: Backend) {
    let regions = vec!["eu".to_string(), "us".to_string()];
    store
        .insert_campaign("c1", 10, "{\"url\":\"http://a/\"}", &regions, "coord-a")
        .await
        .unwrap();
    store
        .insert_campaign("c2", 20, "{}", &regions[..1], "coord-a")
        .await
        .unwrap();
    let running = store.campaign("c1").await.unwrap().unwrap();
    assert_eq!(running.status, CampaignStatus::Running);
    assert_eq!(running.regions, regions);
    assert!(running.report_json.is_none());
    let left: Vec<String> = store
        .running_campaigns()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.campaign_id)
        .collect();
    assert_eq!(left, ["c1", "c2"]);

    store
        .finish_campaign(
            "c1",
            15,
            CampaignStatus::Faulty,
            "{\"schema\":\"vantage.report.v1\"}",
        )
        .await
        .unwrap();
    let done = store.campaign("c1").await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.finished_at_ms),
        (CampaignStatus::Faulty, Some(15))
    );
    assert!(done.report_json.unwrap().contains("vantage.report.v1"));
    let listed: Vec<String> = store
        .list_campaigns(10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.campaign_id)
        .collect();
    assert_eq!(listed, ["c2", "c1"]);
    assert_eq!(store.list_campaigns(1).await.unwrap().len(), 1);
    assert!(store.campaign("nope").await.unwrap().is_none());
    let left: Vec<String> = store
        .running_campaigns()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.campaign_id)
        .collect();
    assert_eq!(left, ["c2"]);

    // Its plans, with the agent's name and region while the row exists.
    store
        .insert_agent(new_agent("a-1", "ams-1", "eu"))
        .await
        .unwrap();
    store
        .insert_plan(plan("p-eu", Some("c2"), &[("a-1", 1), ("a-gone", 1)]))
        .await
        .unwrap();
    store
        .set_plan_agent_state("p-eu", "a-1", PlanState::Finished, None)
        .await
        .unwrap();
    let plans = store.campaign_plan_agents("c2").await.unwrap();
    let summary: Vec<_> = plans
        .iter()
        .map(|p| (p.agent_name.as_str(), p.region.as_deref(), p.state))
        .collect();
    assert_eq!(
        summary,
        [
            ("ams-1", Some("eu"), PlanState::Finished),
            ("a-gone", None, PlanState::Sent)
        ]
    );
    assert!(store.campaign_plan_agents("c1").await.unwrap().is_empty());
}

/// Sightings are stored once and found by a literal prefix.
pub async fn sightings_are_idempotent_and_found_by_prefix(store: Backend) {
    let sighting = |nonce: &str, peer: &str| Sighting {
        nonce: nonce.into(),
        peer: peer.into(),
        seen_at_ms: 7,
        uri: format!("/x?__vantage={nonce}"),
    };
    let batch = vec![
        sighting("abc-eu-0-1-0", "192.0.2.1"),
        sighting("abc-us-3-1-0", "192.0.2.2"),
        sighting("zzz-eu-0-1-0", "192.0.2.1"),
    ];
    assert_eq!(
        store.insert_sightings("w1", batch.clone()).await.unwrap(),
        3
    );
    assert_eq!(
        store.insert_sightings("w1", batch).await.unwrap(),
        0,
        "replays are stored once"
    );
    let found = store.sightings_with_prefix("abc-").await.unwrap();
    assert_eq!(found.len(), 2);
    assert!(
        store.sightings_with_prefix("a*").await.unwrap().is_empty(),
        "GLOB metacharacters are literal"
    );
}

fn sweep_record(name: &str, created_at_ms: i64) -> super::SweepRecord {
    super::SweepRecord {
        name: name.to_owned(),
        definition_json: format!("{{\"name\":\"{name}\"}}"),
        paused: false,
        created_at_ms,
        updated_at_ms: created_at_ms,
        last_slot_ms: None,
    }
}

fn alert(sweep: &str, code: &str, open: bool) -> super::AlertRecord {
    super::AlertRecord {
        sweep: sweep.to_owned(),
        code: code.to_owned(),
        kind: String::new(),
        open,
        streak: 0,
        clean: 0,
        regions: vec!["eu".to_owned()],
        opened_at_ms: Some(5),
        resolved_at_ms: (!open).then_some(9),
        updated_at_ms: 9,
        summary: format!("{code} in eu"),
        campaign_id: "c".to_owned(),
    }
}

/// Sweeps: create (a name once), pause, apply all-or-nothing, delete with
/// their runs and alerts.
pub async fn sweeps_are_named_once_applied_atomically_and_deleted_with_their_history(
    store: Backend,
) {
    use super::{MissedSlot, SweepRunStatus};
    store.insert_sweep(sweep_record("a", 1)).await.unwrap();
    assert!(matches!(
        store.insert_sweep(sweep_record("a", 2)).await,
        Err(StoreError::Duplicate(_))
    ));
    assert!(store.set_sweep_paused("a", true, 3).await.unwrap());
    assert!(!store.set_sweep_paused("nope", true, 3).await.unwrap());
    let a = store.sweep("a").await.unwrap().unwrap();
    assert!(a.paused);
    assert_eq!(a.updated_at_ms, 3);
    // An apply that fails half-way (creating a name that exists) changes nothing.
    let failed = store
        .apply_sweeps(
            vec![sweep_record("b", 4), sweep_record("a", 4)],
            vec![],
            vec![],
            4,
        )
        .await;
    assert!(failed.is_err());
    assert!(store.sweep("b").await.unwrap().is_none());
    store
        .apply_sweeps(
            vec![sweep_record("b", 5)],
            vec![("a".to_owned(), "{\"v\":2}".to_owned())],
            vec![],
            5,
        )
        .await
        .unwrap();
    let a = store.sweep("a").await.unwrap().unwrap();
    assert_eq!(a.definition_json, "{\"v\":2}");
    assert!(a.paused, "an update keeps the pause");
    let names: Vec<String> = store
        .list_sweeps()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    // Runs and alerts go with their sweep.
    let run = store
        .record_sweep_slots("b", vec![], Some((60_000, 60_001)), "coord-a")
        .await
        .unwrap()
        .unwrap();
    store
        .finish_sweep_run(
            run,
            super::SweepRunEnd {
                finished_at_ms: 61_000,
                status: SweepRunStatus::Faulty,
                campaign_id: Some("c".into()),
                findings_json: "[]".into(),
                reason: None,
            },
            vec![alert("b", "origin_down", true)],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(store.sweep_alerts("b").await.unwrap().len(), 1);
    store
        .apply_sweeps(vec![], vec![], vec!["b".to_owned()], 6)
        .await
        .unwrap();
    assert!(store.sweep("b").await.unwrap().is_none());
    assert!(store.sweep_runs("b", 10).await.unwrap().is_empty());
    assert!(store.sweep_alerts("b").await.unwrap().is_empty());
    assert!(store.delete_sweep("a").await.unwrap());
    assert!(!store.delete_sweep("a").await.unwrap());
    // A gone sweep records nothing.
    let none = store
        .record_sweep_slots(
            "a",
            vec![MissedSlot {
                slot_ms: 1,
                reason: "x".into(),
            }],
            Some((2, 2)),
            "coord-a",
        )
        .await
        .unwrap();
    assert_eq!(none, None);
}

/// A paused sweep's slots are neither recorded nor started, whoever asks.
pub async fn a_paused_sweep_has_no_slot_recorded_or_started(store: Backend) {
    use super::MissedSlot;
    store.insert_sweep(sweep_record("p", 0)).await.unwrap();
    assert!(store.set_sweep_paused("p", true, 5).await.unwrap());
    let missed = vec![MissedSlot {
        slot_ms: 10_000,
        reason: "down".into(),
    }];
    // A scheduler that has not heard of the pause yet asks anyway.
    assert_eq!(
        store
            .record_sweep_slots("p", missed.clone(), Some((20_000, 20_001)), "coord-a")
            .await
            .unwrap(),
        None
    );
    assert!(store.sweep_runs("p", 10).await.unwrap().is_empty());
    assert_eq!(store.sweep("p").await.unwrap().unwrap().last_slot_ms, None);
    // Resumed, the same request starts the slot.
    assert!(store.set_sweep_paused("p", false, 6).await.unwrap());
    assert!(store
        .record_sweep_slots("p", missed, Some((20_000, 20_001)), "coord-a")
        .await
        .unwrap()
        .is_some());
    assert_eq!(store.sweep_runs("p", 10).await.unwrap().len(), 2);
}

/// Slots: each runs at most once; missed ones are kept with their reason;
/// the schedule's resume point moves forward only; history is newest
/// first; finishing twice changes nothing; retention prunes finished runs.
pub async fn sweep_slots_run_once_and_history_is_kept_newest_first(store: Backend) {
    use super::{MissedSlot, SweepRunEnd, SweepRunStatus};
    store.insert_sweep(sweep_record("s", 0)).await.unwrap();
    let missed = vec![
        MissedSlot {
            slot_ms: 10_000,
            reason: "down".into(),
        },
        MissedSlot {
            slot_ms: 20_000,
            reason: "down".into(),
        },
    ];
    let run = store
        .record_sweep_slots("s", missed.clone(), Some((30_000, 30_005)), "coord-a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .record_sweep_slots("s", missed, Some((30_000, 30_500)), "coord-a")
            .await
            .unwrap(),
        None,
        "a slot is recorded once"
    );
    assert_eq!(
        store.sweep("s").await.unwrap().unwrap().last_slot_ms,
        Some(30_000)
    );
    store
        .record_sweep_slots(
            "s",
            vec![MissedSlot {
                slot_ms: 5_000,
                reason: "late".into(),
            }],
            None,
            "coord-a",
        )
        .await
        .unwrap();
    assert_eq!(
        store.sweep("s").await.unwrap().unwrap().last_slot_ms,
        Some(30_000),
        "the resume point never moves back"
    );
    assert_eq!(store.running_sweep_runs().await.unwrap().len(), 1);
    let end = SweepRunEnd {
        finished_at_ms: 31_000,
        status: SweepRunStatus::Healthy,
        campaign_id: Some("camp".into()),
        findings_json: "[{\"code\":\"origin_down\"}]".into(),
        reason: None,
    };
    let delivery = super::NewDelivery {
        event_id: "e1".into(),
        url: "https://hooks.example/a".into(),
        body: "{}".into(),
        created_at_ms: 31_000,
    };
    store
        .finish_sweep_run(run, end.clone(), vec![], vec![delivery.clone()])
        .await
        .unwrap();
    // A second finish (a recovery racing a late end) queues nothing more.
    let mut again = end.clone();
    again.status = SweepRunStatus::Missed;
    store
        .finish_sweep_run(
            run,
            again,
            vec![],
            vec![super::NewDelivery {
                event_id: "e2".into(),
                ..delivery
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .claim_deliveries(i64::MAX, 10, i64::MAX)
            .await
            .unwrap()
            .len(),
        1
    );
    let history = store.sweep_runs("s", 10).await.unwrap();
    let slots: Vec<i64> = history.iter().map(|r| r.slot_ms).collect();
    assert_eq!(slots, [30_000, 20_000, 10_000, 5_000]);
    assert_eq!(history[0].status, SweepRunStatus::Healthy);
    assert_eq!(history[0].campaign_id.as_deref(), Some("camp"));
    assert_eq!(history[0].started_at_ms, Some(30_005));
    assert_eq!(history[1].status, SweepRunStatus::Missed);
    assert_eq!(history[1].reason.as_deref(), Some("down"));
    assert!(store.running_sweep_runs().await.unwrap().is_empty());
    assert_eq!(store.sweep_runs("s", 2).await.unwrap().len(), 2);
    // Retention: runs that ended before 15 s go.
    assert_eq!(store.prune_sweep_runs(15_000).await.unwrap(), 2);
    assert_eq!(store.sweep_runs("s", 10).await.unwrap().len(), 2);
}

/// Alerts upsert by (sweep, code, kind); the list shows open ones first.
/// The outbox hands out due POSTs, retries them later and forgets the
/// delivered.
pub async fn alerts_upsert_and_the_outbox_retries_until_delivered(store: Backend) {
    use super::{NewDelivery, SweepRunEnd, SweepRunStatus};
    store.insert_sweep(sweep_record("s", 0)).await.unwrap();
    let end = |at| SweepRunEnd {
        finished_at_ms: at,
        status: SweepRunStatus::Faulty,
        campaign_id: None,
        findings_json: "[]".into(),
        reason: None,
    };
    let r1 = store
        .record_sweep_slots("s", vec![], Some((1_000, 1_000)), "coord-a")
        .await
        .unwrap()
        .unwrap();
    let deliveries = vec![
        NewDelivery {
            event_id: "e1".into(),
            url: "https://a.example/".into(),
            body: "{\"n\":1}".into(),
            created_at_ms: 100,
        },
        NewDelivery {
            event_id: "e1".into(),
            url: "https://b.example/".into(),
            body: "{\"n\":1}".into(),
            created_at_ms: 100,
        },
    ];
    store
        .finish_sweep_run(
            r1,
            end(1_500),
            vec![
                alert("s", "origin_down", true),
                alert("s", "origin_waf", false),
            ],
            deliveries,
        )
        .await
        .unwrap();
    let r2 = store
        .record_sweep_slots("s", vec![], Some((2_000, 2_000)), "coord-a")
        .await
        .unwrap()
        .unwrap();
    let mut changed = alert("s", "origin_down", true);
    changed.regions = vec!["eu".into(), "us".into()];
    store
        .finish_sweep_run(r2, end(2_500), vec![changed], vec![])
        .await
        .unwrap();
    let alerts = store.list_alerts().await.unwrap();
    assert_eq!(alerts.len(), 2);
    assert!(alerts[0].open && alerts[0].code == "origin_down");
    assert_eq!(alerts[0].regions, ["eu", "us"]);
    assert!(!alerts[1].open);
    assert_eq!(store.sweep_alerts("s").await.unwrap().len(), 2);

    assert_eq!(store.next_delivery_at().await.unwrap(), Some(100));
    assert!(store.claim_deliveries(99, 10, 99).await.unwrap().is_empty());
    let due = store.claim_deliveries(100, 10, 1_100).await.unwrap();
    // Claimed: no other outbox gets them until the claim runs out.
    assert!(store
        .claim_deliveries(100, 10, 1_100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(due.len(), 2);
    assert!(due.iter().all(|d| d.event_id == "e1" && d.attempts == 0));
    store
        .delivery_retry("e1", "https://a.example/", 1, 5_000, "HTTP 500")
        .await
        .unwrap();
    store
        .delivery_done("e1", "https://b.example/", 150)
        .await
        .unwrap();
    assert_eq!(store.next_delivery_at().await.unwrap(), Some(5_000));
    assert!(store
        .claim_deliveries(4_999, 10, 4_999)
        .await
        .unwrap()
        .is_empty());
    let due = store.claim_deliveries(5_000, 10, 5_000).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, 1);
    assert_eq!(due[0].body, "{\"n\":1}", "every retry sends the same body");
    store
        .delivery_done("e1", "https://a.example/", 5_100)
        .await
        .unwrap();
    assert_eq!(store.next_delivery_at().await.unwrap(), None);
    // A late retry mark of a delivered POST does not bring it back.
    store
        .delivery_retry("e1", "https://a.example/", 2, 6_000, "late")
        .await
        .unwrap();
    assert!(store
        .claim_deliveries(i64::MAX, 10, i64::MAX)
        .await
        .unwrap()
        .is_empty());
}

/// The installation's secrets are written once (the first writer wins);
/// coordinators are live while they heartbeat, and forgotten long after.
pub async fn installation_secrets_are_set_once_and_dead_coordinators_drop_out(store: Backend) {
    assert_eq!(
        store.installation_secret("installation").await.unwrap(),
        None
    );
    assert!(store
        .insert_installation_secret("installation", vec![1, 2, 3], 10)
        .await
        .unwrap());
    assert!(!store
        .insert_installation_secret("installation", vec![9], 11)
        .await
        .unwrap());
    assert_eq!(
        store.installation_secret("installation").await.unwrap(),
        Some(vec![1, 2, 3])
    );

    let record = |id: &str, started: i64, at: i64| super::CoordinatorRecord {
        coordinator_id: id.to_owned(),
        addrs: vec![format!("{id}.example:7443"), "10.0.0.1:7443".to_owned()],
        started_at_ms: started,
        heartbeat_at_ms: at,
    };
    store
        .coordinator_heartbeat(record("b", 200, 1_000), 0)
        .await
        .unwrap();
    store
        .coordinator_heartbeat(record("a", 100, 1_000), 0)
        .await
        .unwrap();
    let live = store.live_coordinators(1_000).await.unwrap();
    assert_eq!(live, vec![record("a", 100, 1_000), record("b", 200, 1_000)]);
    // b keeps beating (its start time is kept), a goes quiet.
    store
        .coordinator_heartbeat(record("b", 999, 5_000), 0)
        .await
        .unwrap();
    assert_eq!(
        store.live_coordinators(2_000).await.unwrap(),
        vec![record("b", 200, 5_000)]
    );
    // Long after, a's row is forgotten; a clean stop removes b's.
    store
        .coordinator_heartbeat(record("b", 200, 90_000), 50_000)
        .await
        .unwrap();
    assert_eq!(store.live_coordinators(0).await.unwrap().len(), 1);
    store.remove_coordinator("b").await.unwrap();
    assert!(store.live_coordinators(0).await.unwrap().is_empty());
}

/// Running campaigns and sweep runs belong to the coordinator that started
/// them; once it is no longer live, one other adopts them, once.
pub async fn what_a_dead_coordinator_left_running_is_adopted_once(store: Backend) {
    let regions = vec!["eu".to_owned()];
    for (id, at, owner) in [("c-a", 10, "a"), ("c-b", 20, "b"), ("c-a2", 5, "a")] {
        store
            .insert_campaign(id, at, "{}", &regions, owner)
            .await
            .unwrap();
    }
    store
        .finish_campaign("c-a2", 30, CampaignStatus::Healthy, "{}")
        .await
        .unwrap();
    store.insert_sweep(sweep_record("s", 1)).await.unwrap();
    let run_a = store
        .record_sweep_slots("s", vec![], Some((60_000, 60_001)), "a")
        .await
        .unwrap()
        .unwrap();
    store
        .record_sweep_slots("s", vec![], Some((120_000, 120_001)), "b")
        .await
        .unwrap()
        .unwrap();
    for to in ["a", "b"] {
        store
            .post_mail(super::Mail {
                to: to.into(),
                from: "x".into(),
                body: super::MailBody::Event(b"{}".to_vec()),
            })
            .await
            .unwrap();
    }

    // a is gone; c adopts what a left running (not a's finished campaign).
    let live = ["b".to_owned(), "c".to_owned()];
    let (campaigns, runs) = store.adopt_orphans("c", &live).await.unwrap();
    let ids: Vec<&str> = campaigns.iter().map(|c| c.campaign_id.as_str()).collect();
    assert_eq!(ids, ["c-a"]);
    assert_eq!(campaigns[0].status, CampaignStatus::Running);
    assert_eq!(runs.iter().map(|r| r.run_id).collect::<Vec<_>>(), [run_a]);
    assert_eq!(runs[0].slot_ms, 60_000);
    // a's mail goes with it (nobody would read it); live b's stays.
    assert!(store.take_mail("a", 10).await.unwrap().is_empty());
    assert_eq!(store.take_mail("b", 10).await.unwrap().len(), 1);
    // Adopted once: c is live, so nobody takes them again.
    let (campaigns, runs) = store.adopt_orphans("b", &live).await.unwrap();
    assert!(campaigns.is_empty() && runs.is_empty());
    // c dies too: b adopts c's.
    let (campaigns, runs) = store.adopt_orphans("b", &["b".to_owned()]).await.unwrap();
    assert_eq!(campaigns.len(), 1);
    assert_eq!(runs.len(), 1);
    // Adopting changes owners, not states.
    assert_eq!(store.running_campaigns().await.unwrap().len(), 2);
    assert_eq!(store.running_sweep_runs().await.unwrap().len(), 2);
}

/// The mailbox between coordinators delivers each piece once, in order, to
/// its addressee only; an agent's holder is released only by itself; a
/// plan's owner is its campaign's.
pub async fn mail_is_taken_once_in_order_and_holders_are_released_only_by_themselves(
    store: Backend,
) {
    use super::{Mail, MailBody};
    let mail = |to: &str, n: u8| Mail {
        to: to.to_owned(),
        from: "a".to_owned(),
        body: if n.is_multiple_of(2) {
            MailBody::ToAgent {
                agent_id: format!("agent-{n}"),
                message: vec![n, 0, 255],
            }
        } else {
            MailBody::Event(vec![n])
        },
    };
    for n in 0..5 {
        store.post_mail(mail("b", n)).await.unwrap();
    }
    store.post_mail(mail("c", 9)).await.unwrap();
    let first = store.take_mail("b", 3).await.unwrap();
    assert_eq!(first, vec![mail("b", 0), mail("b", 1), mail("b", 2)]);
    let rest = store.take_mail("b", 10).await.unwrap();
    assert_eq!(rest, vec![mail("b", 3), mail("b", 4)]);
    assert!(store.take_mail("b", 10).await.unwrap().is_empty());
    assert_eq!(store.take_mail("c", 10).await.unwrap(), vec![mail("c", 9)]);
    // A message for agent-4 left for b, while the agent moves to c: c gets
    // it; events (no agent) stay where they are.
    store.post_mail(mail("b", 4)).await.unwrap();
    store.post_mail(mail("b", 5)).await.unwrap();
    assert_eq!(store.redirect_agent_mail("agent-4", "c").await.unwrap(), 1);
    assert_eq!(store.redirect_agent_mail("agent-4", "c").await.unwrap(), 0);
    let moved = store.take_mail("c", 10).await.unwrap();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].to, "c");
    assert_eq!(moved[0].body, mail("b", 4).body);
    assert_eq!(store.take_mail("b", 10).await.unwrap(), vec![mail("b", 5)]);

    store
        .insert_agent(new_agent("a-1", "fra-1", "eu"))
        .await
        .unwrap();
    assert_eq!(
        store.agent_by_id("a-1").await.unwrap().unwrap().holder,
        None
    );
    store.hold_agent("a-1", "b").await.unwrap();
    store.hold_agent("a-1", "c").await.unwrap();
    // b's old session ends after c took over: c still holds it.
    store.release_agent("a-1", "b").await.unwrap();
    assert_eq!(
        store
            .agent_by_id("a-1")
            .await
            .unwrap()
            .unwrap()
            .holder
            .as_deref(),
        Some("c")
    );
    store.release_agent("a-1", "c").await.unwrap();
    assert_eq!(
        store.agent_by_id("a-1").await.unwrap().unwrap().holder,
        None
    );

    store
        .insert_campaign("camp", 1, "{}", &["eu".to_owned()], "a")
        .await
        .unwrap();
    store
        .insert_plan(plan("p-camp", Some("camp"), &[("a-1", 1)]))
        .await
        .unwrap();
    store
        .insert_plan(plan("p-loose", None, &[("a-1", 1)]))
        .await
        .unwrap();
    let owners = store
        .plan_owners(&["p-camp".into(), "p-loose".into(), "p-none".into()])
        .await
        .unwrap();
    assert_eq!(owners, vec![("p-camp".to_owned(), "a".to_owned())]);
}
