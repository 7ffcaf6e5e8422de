//! Plans end to end: pushed to chosen agents, run, every result stored; a
//! full spool refuses plans with a recorded reason; a silent agent is noticed
//! within three heartbeats; the health endpoint answers.

use std::time::Duration;

use vantage::registry::AgentEvent;
use vantage::store::PlanState;
use vantage_agent::session::SessionEvent;
use vantage_lab::lab::{
    enroll_identity, hello_for, raw_session, wait_coordinator_event, wait_plan_finished,
    AgentBuilder, LabCoordinator,
};
use vantage_lab::origin::Origin;
use vantage_proto::domain::Outcome;
use vantage_proto::pb;

fn probe(url: String, attempts: u32, burst: u32) -> pb::ProbeSpec {
    pb::ProbeSpec {
        url,
        route: pb::Route::Direct as i32,
        variant: "baseline".into(),
        attempts,
        burst,
        nonce: "lab".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_runs_on_every_chosen_agent_and_every_result_is_stored() {
    let lab = LabCoordinator::builder().start().await.unwrap();
    let origin = Origin::builder().spawn().await.unwrap();
    let eu = AgentBuilder::new("eu-1", &lab.token("eu").await.unwrap())
        .start()
        .await
        .unwrap();
    let us = AgentBuilder::new("us-1", &lab.token("us").await.unwrap())
        .start()
        .await
        .unwrap();
    let mut events = lab.core().subscribe();

    let plan_id = lab
        .core()
        .run_plan(
            &["eu-1".to_string(), "us-1".to_string()],
            vec![
                probe(origin.url("/a"), 2, 1),
                probe(origin.url("/b?x=1"), 1, 5),
            ],
        )
        .await
        .unwrap();
    let finished = wait_plan_finished(&mut events, &plan_id, 2, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(finished, ["eu-1", "us-1"]);

    let status = lab.core().plan_status(&plan_id).await.unwrap();
    assert_eq!(status.len(), 2);
    for row in &status {
        assert_eq!(row.state, PlanState::Finished, "{row:?}");
        assert_eq!(row.expected, 7);
        assert_eq!(row.stored, 7, "{row:?}");
    }
    assert_eq!(origin.answered(), 14);

    // The stored results carry the evidence of DESIGN §4 that this engine fills.
    let mut client = lab.control().unwrap();
    let listed = client
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.agents.iter().all(|a| a.connected));
    eu.stop().await.unwrap();
    us.stop().await.unwrap();
    origin.stop().await;
    lab.stop().await.unwrap();
}

async fn run_and_collect(
    lab: &LabCoordinator,
    agent: &str,
    probes: Vec<pb::ProbeSpec>,
) -> Vec<pb::ProbeResult> {
    lab.run_and_collect(agent, probes, Duration::from_secs(30))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_carry_outcomes_timings_and_evidence() {
    let lab = LabCoordinator::builder().start().await.unwrap();
    let origin = Origin::builder().spawn().await.unwrap();
    let open = AgentBuilder::new("open-1", &lab.token("eu").await.unwrap())
        .start()
        .await
        .unwrap();
    let guarded = AgentBuilder::new("guarded-1", &lab.token("eu").await.unwrap())
        .deny_private()
        .start()
        .await
        .unwrap();
    // A port nobody listens on: bind one, note it, close it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    let results = run_and_collect(
        &lab,
        "open-1",
        vec![
            probe(origin.url("/page"), 1, 1),
            probe(format!("http://{closed}/"), 1, 1),
        ],
    )
    .await;
    assert_eq!(results.len(), 2);
    let ok = results.iter().find(|r| r.probe_id == "p0").unwrap();
    assert_eq!(Outcome::try_from(ok.outcome).unwrap(), Outcome::Ok);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body_bytes, vantage_lab::origin::BODY.len() as u64);
    assert_eq!(ok.body_head, vantage_lab::origin::BODY.as_bytes());
    assert_eq!(ok.remote_addr, origin.addr().to_string());
    assert_eq!(ok.nonce, "lab-1-0");
    let t = ok.timings.unwrap();
    assert!(
        t.connect_us <= t.ttfb_us && t.ttfb_us <= t.total_us,
        "{t:?}"
    );
    let refused = results.iter().find(|r| r.probe_id == "p1").unwrap();
    assert_eq!(
        Outcome::try_from(refused.outcome).unwrap(),
        Outcome::ConnectRefused
    );
    assert_eq!(refused.curl_exit, 7);

    let results = run_and_collect(&lab, "guarded-1", vec![probe(origin.url("/"), 1, 1)]).await;
    assert_eq!(
        Outcome::try_from(results[0].outcome).unwrap(),
        Outcome::BlockedByPolicy
    );
    assert!(
        results[0].error.contains("--allow-private"),
        "{}",
        results[0].error
    );
    assert_eq!(
        origin.arrived(),
        1,
        "the guarded agent never touched loopback"
    );

    open.stop().await.unwrap();
    guarded.stop().await.unwrap();
    origin.stop().await;
    lab.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_refuses_plans_with_a_recorded_reason() {
    let lab = LabCoordinator::builder().start().await.unwrap();
    let origin = Origin::builder().spawn().await.unwrap();
    let mut agent = AgentBuilder::new("full-1", &lab.token("eu").await.unwrap())
        .spool_max(0)
        .start()
        .await
        .unwrap();
    let mut events = lab.core().subscribe();
    let plan_id = lab
        .core()
        .run_plan(&["full-1".to_string()], vec![probe(origin.url("/"), 1, 1)])
        .await
        .unwrap();
    let event = wait_coordinator_event(&mut events, Duration::from_secs(30), |e| {
        matches!(e, AgentEvent::PlanRejected { .. })
    })
    .await
    .unwrap();
    let AgentEvent::PlanRejected { reason, .. } = event else {
        unreachable!()
    };
    assert!(reason.contains("spool full"), "{reason}");
    agent
        .wait_event(Duration::from_secs(5), |e| {
            matches!(e, SessionEvent::PlanRejected { .. })
        })
        .await
        .unwrap();
    let status = lab.core().plan_status(&plan_id).await.unwrap();
    assert_eq!(status[0].state, PlanState::Rejected);
    assert!(status[0]
        .reason
        .as_deref()
        .unwrap_or("")
        .contains("spool full"));
    assert_eq!(origin.arrived(), 0, "a refused plan sends nothing");
    agent.stop().await.unwrap();
    origin.stop().await;
    lab.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_is_dropped_after_three_missed_heartbeats() {
    let heartbeat = Duration::from_millis(200);
    let lab = LabCoordinator::builder()
        .heartbeat(heartbeat)
        .start()
        .await
        .unwrap();
    let identity = enroll_identity(&lab.token("eu").await.unwrap(), "mute-1")
        .await
        .unwrap();
    let mut events = lab.core().subscribe();
    // Says Hello, then nothing: a hung agent whose TCP connection stays up.
    let session = raw_session(&identity, vec![hello_for(&identity)])
        .await
        .unwrap();
    let mut inbound = session.inbound.unwrap();
    wait_coordinator_event(
        &mut events,
        Duration::from_secs(10),
        |e| matches!(e, AgentEvent::Connected { name, .. } if name == "mute-1"),
    )
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    let event = wait_coordinator_event(
        &mut events,
        Duration::from_secs(10),
        |e| matches!(e, AgentEvent::Disconnected { name, .. } if name == "mute-1"),
    )
    .await
    .unwrap();
    let AgentEvent::Disconnected { reason, .. } = event else {
        unreachable!()
    };
    assert!(reason.contains("three heartbeats"), "{reason}");
    // Never before three intervals have passed.
    assert!(
        started.elapsed() >= heartbeat * 2,
        "dropped too early: {:?}",
        started.elapsed()
    );
    // The agent side sees the stream end with Unavailable (transient: it would reconnect).
    let status = loop {
        match inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("closed without status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        vantage_agent::session::classify(&status),
        vantage_agent::session::Recovery::Transient
    );
    drop(session.tx);
    lab.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers() {
    let lab = LabCoordinator::builder().start().await.unwrap();
    let addr = lab.http_addr().unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/healthz")
        .header("host", addr.to_string())
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    lab.stop().await.unwrap();
}
