//! Hostile or broken protocol messages: each is refused with a clear status,
//! and the coordinator keeps serving every other agent.

use std::time::Duration;

use tonic::Code;
use vantage_lab::lab::{
    enroll_identity, hello_for, raw_session, AgentBuilder, CoordinatorProcess, LabCoordinator,
};
use vantage_lab::origin::Origin;
use vantage_proto::pb;
use vantage_proto::pb::agent_message::Body as Up;

fn up(body: Up) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body) }
}

/// The status that ends the session, whether it refused the stream or ended it later.
async fn final_status(session: vantage_lab::lab::RawSession) -> tonic::Status {
    let mut inbound = match session.inbound {
        Err(status) => return status,
        Ok(inbound) => inbound,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, inbound.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("stream closed without a status"),
            Ok(Err(status)) => return status,
            Err(_) => panic!("the coordinator never rejected the message"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_messages_are_rejected_and_others_keep_being_served() {
    let lab = LabCoordinator::builder().start().await.unwrap();
    let origin = Origin::builder().spawn().await.unwrap();
    let good = AgentBuilder::new("good-1", &lab.token("eu").await.unwrap())
        .start()
        .await
        .unwrap();
    let bad = enroll_identity(&lab.token("eu").await.unwrap(), "bad-1")
        .await
        .unwrap();

    // Empty region.
    let mut hello = hello_for(&bad);
    if let Some(Up::Hello(h)) = &mut hello.body {
        h.region.clear();
    }
    let status = final_status(raw_session(&bad, vec![hello]).await.unwrap()).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("region"), "{status:?}");

    // A 10 MB label: over the Hello message limit (64 KiB), refused on the
    // message's declared length before it is buffered.
    let mut hello = hello_for(&bad);
    if let Some(Up::Hello(h)) = &mut hello.body {
        h.labels.insert("big".into(), "x".repeat(10 * 1024 * 1024));
    }
    let status = final_status(raw_session(&bad, vec![hello]).await.unwrap()).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("limit"), "{status:?}");

    // A label just over its 256-byte bound, in a Hello within the limit.
    let mut hello = hello_for(&bad);
    if let Some(Up::Hello(h)) = &mut hello.body {
        h.labels.insert("big".into(), "x".repeat(300));
    }
    let status = final_status(raw_session(&bad, vec![hello]).await.unwrap()).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("labels.value"), "{status:?}");

    // A session that does not start with Hello.
    let beat = up(Up::Heartbeat(pb::Heartbeat::default()));
    let status = final_status(raw_session(&bad, vec![beat]).await.unwrap()).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("Hello"), "{status:?}");

    // A Hello that claims another agent's name.
    let mut hello = hello_for(&bad);
    if let Some(Up::Hello(h)) = &mut hello.body {
        h.name = "good-1".into();
    }
    let status = final_status(raw_session(&bad, vec![hello]).await.unwrap()).await;
    assert_eq!(status.code(), Code::InvalidArgument);

    // A result with an unknown outcome, after a valid Hello.
    let batch = up(Up::Results(pb::ResultBatch {
        seq: 1,
        results: vec![pb::ProbeResult {
            result_id: "r-1".into(),
            route: pb::Route::Direct as i32,
            outcome: 4242,
            ..Default::default()
        }],
        ..Default::default()
    }));
    let status = final_status(
        raw_session(&bad, vec![hello_for(&bad), batch])
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("outcome"), "{status:?}");
    assert_eq!(
        lab.core().store().count_all_results().await.unwrap(),
        0,
        "nothing invalid was stored"
    );

    // A result without an id.
    let batch = up(Up::Results(pb::ResultBatch {
        seq: 2,
        results: vec![pb::ProbeResult {
            route: pb::Route::Direct as i32,
            outcome: pb::Outcome::Ok as i32,
            ..Default::default()
        }],
        ..Default::default()
    }));
    let status = final_status(
        raw_session(&bad, vec![hello_for(&bad), batch])
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("result_id"), "{status:?}");

    // The well-behaved agent was never disturbed: it still runs plans.
    let mut events = lab.core().subscribe();
    let plan_id = lab
        .core()
        .run_plan(
            &["good-1".to_string()],
            vec![pb::ProbeSpec {
                url: origin.url("/"),
                route: pb::Route::Direct as i32,
                attempts: 3,
                ..Default::default()
            }],
        )
        .await
        .unwrap();
    vantage_lab::lab::wait_plan_finished(&mut events, &plan_id, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(lab.core().store().count_results(&plan_id).await.unwrap(), 3);
    good.stop().await.unwrap();
    origin.stop().await;
    lab.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_with_absurd_fields_is_rejected() {
    let lab = LabCoordinator::builder().start().await.unwrap();
    let token = lab.token("eu").await.unwrap();
    let decoded = vantage_proto::token::EnrollmentToken::decode(&token).unwrap();
    let config = vantage_support::tls::pinned_client_config(std::sync::Arc::new(
        vantage_support::tls::PinnedCaVerifier::new(&decoded.ca_sha256),
    ))
    .unwrap();
    let channel = vantage_support::tls::TlsConnector::new(&decoded.addrs[0], config, None)
        .unwrap()
        .channel(Duration::from_secs(5))
        .unwrap();
    let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
    let base = pb::EnrollRequest {
        token: decoded.secret.clone(),
        csr_pem: "not a csr".into(),
        name: "n1".into(),
        ..Default::default()
    };
    let cases = [
        (
            pb::EnrollRequest {
                name: String::new(),
                ..base.clone()
            },
            "name",
        ),
        (
            pb::EnrollRequest {
                role: "overlord".into(),
                ..base.clone()
            },
            "role",
        ),
        (base.clone(), "certificate signing request"),
    ];
    for (request, expected) in cases {
        let status = client.enroll(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{status:?}");
    }
    // None of the refusals spent the token.
    vantage_lab::lab::enroll_identity(&token, "n1")
        .await
        .unwrap();
    lab.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_observations_are_stored_and_checked() {
    let lab = LabCoordinator::builder().start().await.unwrap();
    let witness =
        vantage_lab::lab::enroll_identity_as(&lab.token("origin").await.unwrap(), "w-1", "witness")
            .await
            .unwrap();
    let observation = |nonce: &str, peer: &str| {
        up(Up::Observation(pb::Observation {
            nonce: nonce.into(),
            peer_addr: peer.into(),
            seen_at_unix_ms: 42,
            uri: format!("/a?__vantage={nonce}"),
        }))
    };
    let session = raw_session(
        &witness,
        vec![
            hello_for(&witness),
            observation("camp1-eu-0-1-0", "192.0.2.7"),
            observation("camp1-eu-0-1-0", "192.0.2.7"),
            observation("camp1-us-4-1-0", "2001:db8::9"),
        ],
    )
    .await
    .unwrap();
    // A bad observation ends the session; everything before it is stored.
    session
        .tx
        .send(observation("camp1-eu-9-1-0", "not-an-ip"))
        .await
        .unwrap();
    let status = final_status(session).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("not an IP"), "{status:?}");
    let seen = lab
        .core()
        .store()
        .sightings_with_prefix("camp1-")
        .await
        .unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen
        .iter()
        .any(|s| s.peer == "2001:db8::9" && s.seen_at_ms == 42));

    // Plain agents may not report observations.
    let agent = enroll_identity(&lab.token("eu").await.unwrap(), "a-1")
        .await
        .unwrap();
    let status = final_status(
        raw_session(
            &agent,
            vec![hello_for(&agent), observation("camp1-x-0-1-0", "192.0.2.1")],
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument);
    lab.stop().await.unwrap();
}

/// A result that passes every field check (only ownership is in question).
fn valid_result(plan_id: &str, result_id: &str) -> pb::ProbeResult {
    pb::ProbeResult {
        result_id: result_id.into(),
        plan_id: plan_id.into(),
        probe_id: "direct/baseline".into(),
        attempt: 1,
        route: pb::Route::Direct as i32,
        variant: "baseline".into(),
        url: "http://www.example.com/".into(),
        nonce: format!("n-{result_id}"),
        outcome: pb::Outcome::ConnectRefused as i32,
        curl_exit: 7,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_marks_are_refused_for_plans_sent_to_another_agent() {
    // The real `vantage serve`; the victim is a connected session that the
    // coordinator sends a plan to, the forger another enrolled agent.
    let data = tempfile::tempdir().unwrap();
    let coordinator = CoordinatorProcess::start(
        data.path(),
        "127.0.0.1:0".parse().unwrap(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let victim = enroll_identity(&coordinator.create_token("eu").await.unwrap(), "victim-1")
        .await
        .unwrap();
    let forger = enroll_identity(&coordinator.create_token("us").await.unwrap(), "forger-1")
        .await
        .unwrap();
    let witness = vantage_lab::lab::enroll_identity_as(
        &coordinator.create_token("origin").await.unwrap(),
        "w-1",
        "witness",
    )
    .await
    .unwrap();
    let victim_session = raw_session(&victim, vec![hello_for(&victim)])
        .await
        .unwrap();
    let mut victim_inbound = victim_session.inbound.unwrap();
    let mut control = coordinator.control().unwrap();
    // RunPlan needs the agent's session registered: retry until it is.
    let plan_id = vantage_lab::process::poll_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let mut control = control.clone();
            async move {
                control
                    .run_plan(pb::RunPlanRequest {
                        agents: vec!["victim-1".into()],
                        probes: vec![pb::ProbeSpec {
                            url: "http://192.0.2.1/".into(),
                            route: pb::Route::Direct as i32,
                            ..Default::default()
                        }],
                    })
                    .await
                    .ok()
                    .map(|r| r.into_inner().plan_id)
            }
        },
    )
    .await
    .unwrap();
    // The victim's session really got it.
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(Some(pb::CoordinatorMessage {
                body: Some(pb::coordinator_message::Body::Plan(plan)),
            })) = victim_inbound.message().await
            {
                return plan.plan_id;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, plan_id);
    let state_of_victim = |mut control: vantage::client::ControlClient, plan_id: String| async move {
        let status = control
            .get_plan_status(pb::GetPlanStatusRequest { plan_id })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.agents.len(), 1);
        (status.agents[0].state.clone(), status.results_stored)
    };

    // Forged results for the victim's plan, then a forged "finished" mark on
    // an otherwise empty batch, then a forged rejection: each is refused by
    // name and nothing changes.
    let forged = [
        Up::Results(pb::ResultBatch {
            seq: 1,
            results: (0..30)
                .map(|i| valid_result(&plan_id, &format!("forged-{i}")))
                .collect(),
            ..Default::default()
        }),
        Up::Results(pb::ResultBatch {
            seq: 2,
            finished_plan_id: plan_id.clone(),
            ..Default::default()
        }),
        Up::PlanRejected(pb::PlanRejected {
            plan_id: plan_id.clone(),
            reason: "forged".into(),
        }),
    ];
    for message in forged {
        let status = final_status(
            raw_session(&forger, vec![hello_for(&forger), up(message)])
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains(&plan_id) && status.message().contains("forger-1"),
            "{status:?}"
        );
        assert_eq!(
            state_of_victim(control.clone(), plan_id.clone()).await,
            ("sent".to_string(), 0)
        );
    }

    // A plan that was never sent to anyone is refused the same way.
    let status = final_status(
        raw_session(
            &forger,
            vec![
                hello_for(&forger),
                up(Up::Results(pb::ResultBatch {
                    seq: 3,
                    results: vec![valid_result("no-such-plan", "stray-1")],
                    ..Default::default()
                })),
            ],
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // A witness sends observations only.
    let status = final_status(
        raw_session(
            &witness,
            vec![
                hello_for(&witness),
                up(Up::Results(pb::ResultBatch {
                    seq: 1,
                    results: vec![valid_result(&plan_id, "w-result")],
                    ..Default::default()
                })),
            ],
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("witness"), "{status:?}");

    // The refusals are logged with the agent's name.
    let log = coordinator.process.output();
    assert!(
        log.contains("forger-1") && log.contains("not sent to this agent"),
        "{log}"
    );

    // The plan's own agent is accepted: its results are stored and acked,
    // and its "finished" mark lands.
    victim_session
        .tx
        .send(up(Up::Results(pb::ResultBatch {
            seq: 1,
            results: (0..3)
                .map(|i| valid_result(&plan_id, &format!("own-{i}")))
                .collect(),
            finished_plan_id: plan_id.clone(),
        })))
        .await
        .unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match victim_inbound.message().await {
                Ok(Some(pb::CoordinatorMessage {
                    body: Some(pb::coordinator_message::Body::Ack(ack)),
                })) => return ack.seq,
                Ok(Some(_)) => continue,
                other => panic!("the owner's batch was not acknowledged: {other:?}"),
            }
        }
    })
    .await
    .expect("an Ack within 20 s");
    assert_eq!(acked, 1);
    assert_eq!(
        state_of_victim(control.clone(), plan_id.clone()).await,
        ("finished".to_string(), 3)
    );
    let _ = &mut control;
}
