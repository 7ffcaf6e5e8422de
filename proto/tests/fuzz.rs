//! Property-based fuzzing of everything `vantage-proto` reads from outside
//! the process: every protobuf message the agent, the coordinator or the CLI
//! decodes (from the network or, for result batches, from the agent's spool),
//! the domain checks those messages go through next, the JSON rendering of a
//! result, and the enrollment token a person pastes.
//!
//! The contract under test: hostile input never panics, it is refused with a
//! typed error (`prost::DecodeError`, `ProtocolError`, `TokenError`), and what
//! is accepted is exactly what the documented rules accept.

use std::collections::HashMap;
use std::fmt::Debug;

use base64::Engine as _;
use proptest::prelude::*;
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use vantage_proto::domain::{
    check_batch, check_result, stage_from_i32, Hello, Outcome, ProtocolError, Route,
    MAX_BATCH_RESULTS, MAX_LABELS, MAX_LABEL_VALUE_LEN, MAX_NAME_LEN,
};
use vantage_proto::json::{outcome_name, result_json};
use vantage_proto::pb;
use vantage_proto::token::{EnrollmentToken, TokenError};

/// Decoding is cheap, so the byte-level targets can afford many cases; the
/// whole file still runs in a few seconds in a debug build.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig::with_cases(cases)
}

// ---------------------------------------------------------------------------
// Inputs: raw bytes, syntactically valid protobuf with random fields, and
// real messages with byte-level mutations.
// ---------------------------------------------------------------------------

/// One protobuf field of any wire type, possibly a nested message. Random
/// bytes rarely get past the first tag; well-formed wire data with random
/// field numbers and types reaches the per-field decoders and the nested
/// messages (a wrong wire type, invalid UTF-8, an enum number nobody knows).
#[derive(Debug, Clone)]
enum Field {
    Varint(u32, u64),
    Fixed32(u32, u32),
    Fixed64(u32, u64),
    Bytes(u32, Vec<u8>),
    Nested(u32, Vec<Field>),
}

fn field_number() -> impl Strategy<Value = u32> {
    // The messages use numbers 1..=29; the rest are unknown fields, which a
    // decoder must skip. 536_870_911 is the largest legal field number.
    prop_oneof![8 => 1u32..=30, 1 => 31u32..=536_870_911]
}

fn varint_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=20,
        any::<u64>(),
        // Negative enum numbers are sign-extended to ten-byte varints.
        any::<i32>().prop_map(|v| i64::from(v) as u64),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..48),
        ".{0,24}".prop_map(String::into_bytes),
    ]
}

fn wire_fields() -> impl Strategy<Value = Vec<Field>> {
    let leaf = prop_oneof![
        (field_number(), varint_value()).prop_map(|(n, v)| Field::Varint(n, v)),
        (field_number(), any::<u32>()).prop_map(|(n, v)| Field::Fixed32(n, v)),
        (field_number(), any::<u64>()).prop_map(|(n, v)| Field::Fixed64(n, v)),
        (field_number(), payload()).prop_map(|(n, v)| Field::Bytes(n, v)),
    ];
    let field = leaf.prop_recursive(4, 96, 6, |inner| {
        (field_number(), proptest::collection::vec(inner, 0..6))
            .prop_map(|(n, fields)| Field::Nested(n, fields))
    });
    proptest::collection::vec(field, 0..10)
}

fn encode_fields(fields: &[Field], buf: &mut Vec<u8>) {
    for field in fields {
        match field {
            Field::Varint(n, v) => {
                encode_key(*n, WireType::Varint, buf);
                encode_varint(*v, buf);
            }
            Field::Fixed32(n, v) => {
                encode_key(*n, WireType::ThirtyTwoBit, buf);
                buf.extend_from_slice(&v.to_le_bytes());
            }
            Field::Fixed64(n, v) => {
                encode_key(*n, WireType::SixtyFourBit, buf);
                buf.extend_from_slice(&v.to_le_bytes());
            }
            Field::Bytes(n, bytes) => {
                encode_key(*n, WireType::LengthDelimited, buf);
                encode_varint(bytes.len() as u64, buf);
                buf.extend_from_slice(bytes);
            }
            Field::Nested(n, inner) => {
                let mut nested = Vec::new();
                encode_fields(inner, &mut nested);
                encode_key(*n, WireType::LengthDelimited, buf);
                encode_varint(nested.len() as u64, buf);
                buf.extend_from_slice(&nested);
            }
        }
    }
}

/// A byte-level edit of an encoded message.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    /// Repeats a slice: duplicated fields and length prefixes that now lie.
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..12)
        )
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), 1usize..32).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::FlipBit(i, bit) if len > 0 => bytes[i % len] ^= 1 << bit,
            Mutation::SetByte(i, v) if len > 0 => bytes[i % len] = *v,
            Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            Mutation::Insert(i, v) => {
                let at = i % (len + 1);
                bytes.splice(at..at, v.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let at = i % len;
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Duplicate(i, n) if len > 0 => {
                let at = i % len;
                let slice = bytes[at..(at + n).min(len)].to_vec();
                bytes.splice(at..at, slice);
            }
            _ => {}
        }
    }
    bytes
}

// ---------------------------------------------------------------------------
// Real messages with every field set, the seeds for mutation.
// ---------------------------------------------------------------------------

fn full_spec() -> pb::ProbeSpec {
    pb::ProbeSpec {
        probe_id: "direct/baseline".into(),
        url: "https://www.example.com/a.jpg?x=1".into(),
        method: "GET".into(),
        headers: vec![pb::Header {
            name: "X-Forwarded-For".into(),
            value: b"198.51.100.7".to_vec(),
        }],
        route: pb::Route::Direct as i32,
        address_override: "203.0.113.10:443".into(),
        timeouts: Some(pb::PhaseTimeouts {
            connect_ms: 1_000,
            tls_ms: 2_000,
            first_byte_ms: 3_000,
            body_ms: 4_000,
            total_ms: 10_000,
        }),
        verify_tls: true,
        body_capture_bytes: 1024,
        attempts: 3,
        burst: 50,
        concurrency: 20,
        nonce: "0123456789abcdef".into(),
        nonce_param: "__vantage".into(),
        variant: "baseline".into(),
        dns_server: "192.0.2.53".into(),
        max_redirects: 2,
        phase: 1,
        user_agent: "curl/8.5.0".into(),
        attempt_interval_ms: 200,
    }
}

fn full_result() -> pb::ProbeResult {
    pb::ProbeResult {
        result_id: "8f2c1d9e-0000-4000-8000-000000000001".into(),
        plan_id: "plan-1".into(),
        probe_id: "direct/baseline".into(),
        attempt: 2,
        burst_index: 7,
        route: pb::Route::Edge as i32,
        variant: "burst".into(),
        url: "https://www.example.com/".into(),
        nonce: "abc-2-7".into(),
        outcome: pb::Outcome::Reset as i32,
        curl_exit: 56,
        stage: pb::Stage::Read as i32,
        error: "connection reset".into(),
        timings: Some(pb::Timings {
            dns_us: 1,
            connect_us: 2,
            tls_us: 3,
            ttfb_us: 4,
            total_us: 5,
        }),
        remote_addr: "203.0.113.10:443".into(),
        local_addr: "192.0.2.1:50000".into(),
        http_version: "HTTP/1.1".into(),
        status: 520,
        headers: vec![
            pb::Header {
                name: "CF-Ray".into(),
                value: b"8a1b-FRA".to_vec(),
            },
            pb::Header {
                name: "X-Junk".into(),
                value: vec![0xff, 0xfe, 0x00],
            },
        ],
        body_bytes: 12,
        body_sha256: "00".repeat(32),
        body_head: b"<title>x</title>".to_vec(),
        title: "x".into(),
        edge_request_id: "8a1b-FRA".into(),
        cache_status: "MISS".into(),
        tls: Some(pb::TlsPeer {
            subject: "CN=www.example.com".into(),
            issuer: "CN=ca".into(),
            sans: vec!["www.example.com".into()],
            not_before_unix: 1_700_000_000,
            not_after_unix: 253_402_300_799,
            sha256: "11".repeat(32),
            verified: true,
            verify_error: String::new(),
            protocol_version: "TLSv1_3".into(),
            alpn: "h2".into(),
        }),
        dns_answers: vec!["203.0.113.10".into()],
        started_at_unix_ms: 1_700_000_000_000,
        redirects: vec!["http://www.example.com/".into()],
        peer_close: pb::PeerClose::Reset as i32,
    }
}

fn full_hello() -> pb::Hello {
    pb::Hello {
        name: "fra-1".into(),
        region: "eu-central".into(),
        labels: HashMap::from([("provider".into(), "hetzner".into())]),
        version: "0.1.0".into(),
        capabilities: vec!["http2".into(), "dns".into()],
        spool_bytes: 4096,
        spool_batches: 2,
        health: Some(pb::AgentHealth {
            spool_writable: false,
            spool_error: "read-only file system".into(),
            spool_bytes_free: 1 << 30,
        }),
    }
}

fn agent_seeds() -> Vec<pb::AgentMessage> {
    use pb::agent_message::Body;
    [
        Body::Hello(full_hello()),
        Body::Results(pb::ResultBatch {
            seq: 9,
            results: vec![full_result(), full_result()],
            finished_plan_id: "plan-1".into(),
        }),
        Body::Observation(pb::Observation {
            nonce: "abc-1-0".into(),
            peer_addr: "198.51.100.7".into(),
            seen_at_unix_ms: 1_700_000_000_000,
            uri: "/a.jpg?__vantage=abc-1-0".into(),
        }),
        Body::Heartbeat(pb::Heartbeat {
            sent_at_unix_ms: 1_700_000_000_000,
            health: Some(pb::AgentHealth::default()),
            coordinators: Vec::new(),
        }),
        Body::PlanRejected(pb::PlanRejected {
            plan_id: "plan-1".into(),
            reason: "spool full".into(),
        }),
    ]
    .into_iter()
    .map(|body| pb::AgentMessage { body: Some(body) })
    .collect()
}

fn coordinator_seeds() -> Vec<pb::CoordinatorMessage> {
    use pb::coordinator_message::Body;
    [
        Body::Welcome(pb::Welcome {
            agent_id: "a-1".into(),
            heartbeat_interval_ms: 15_000,
            coordinators: vec!["a.example.com:7443".into(), "198.51.100.9:7443".into()],
        }),
        Body::Plan(pb::Plan {
            plan_id: "plan-1".into(),
            campaign_id: "c-1".into(),
            probes: vec![full_spec(), full_spec()],
            budget_ms: 15_600,
        }),
        Body::Cancel(pb::Cancel {
            plan_id: "plan-1".into(),
        }),
        Body::Ack(pb::Ack { seq: 9 }),
        Body::Heartbeat(pb::Heartbeat {
            sent_at_unix_ms: 1,
            health: None,
            coordinators: vec!["a.example.com:7443".into()],
        }),
    ]
    .into_iter()
    .map(|body| pb::CoordinatorMessage { body: Some(body) })
    .collect()
}

// ---------------------------------------------------------------------------
// What every decoder must do.
// ---------------------------------------------------------------------------

/// Decodes `bytes` as `M`: never a panic; a refusal is a typed
/// `DecodeError`; an accepted message re-encodes to bytes that decode to the
/// same message (so what the receiver stores or forwards is what it saw).
fn decode_checked<M: Message + Default + PartialEq + Debug>(bytes: &[u8]) -> Option<M> {
    match M::decode(bytes) {
        Ok(message) => {
            let again = message.encode_to_vec();
            assert_eq!(again.len(), message.encoded_len());
            assert_eq!(M::decode(again.as_slice()).as_ref(), Ok(&message));
            Some(message)
        }
        Err(error) => {
            assert!(!error.to_string().is_empty());
            None
        }
    }
}

/// An accepted result renders as the DESIGN §4 JSON without panicking, with
/// enum numbers this version does not know shown as "unknown".
fn render_checked(result: &pb::ProbeResult) {
    let json = result_json(result);
    assert_eq!(json["outcome"], outcome_name(result.outcome));
    let stage = &json["stage"];
    match stage_from_i32(result.stage) {
        Ok(None) => assert!(stage.is_null()),
        Ok(Some(s)) => assert_eq!(stage.as_str(), Some(s.as_str())),
        Err(_) => assert_eq!(stage.as_str(), Some("unknown")),
    }
    assert_eq!(json["body_bytes"], result.body_bytes);
    serde_json::to_string(&json).expect("a result always serialises");
}

/// A validated result has known enums and bounded ids; a refused one names
/// the field that broke the rule.
fn check_result_oracle(result: &pb::ProbeResult) {
    let verdict = check_result(result);
    let ids_ok = [&result.result_id, &result.plan_id, &result.probe_id]
        .iter()
        .all(|id| id.len() <= 128);
    let expected_ok = !result.result_id.is_empty()
        && ids_ok
        && (1..=15).contains(&result.outcome)
        && (1..=3).contains(&result.route)
        && (0..=6).contains(&result.stage);
    assert_eq!(verdict.is_ok(), expected_ok, "{verdict:?} for {result:?}");
    if let Err(error) = verdict {
        let field = match &error {
            ProtocolError::Missing(f) => *f,
            ProtocolError::TooLong { field, .. } => field,
            ProtocolError::UnknownEnum { field, .. } => field,
            other => panic!("unexpected error for a result: {other:?}"),
        };
        assert!(
            [
                "result_id",
                "plan_id",
                "probe_id",
                "outcome",
                "route",
                "stage"
            ]
            .contains(&field),
            "{error}"
        );
        assert!(!error.to_string().is_empty());
    }
}

/// The rules of `Hello`, written independently of the code under test.
fn hello_is_valid(hello: &pb::Hello) -> bool {
    let name_ok = |s: &str| {
        (1..=MAX_NAME_LEN).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    name_ok(&hello.name)
        && name_ok(&hello.region)
        && hello.labels.len() <= MAX_LABELS
        && hello
            .labels
            .iter()
            .all(|(k, v)| name_ok(k) && v.len() <= MAX_LABEL_VALUE_LEN)
        && hello.version.len() <= MAX_NAME_LEN
        && hello.capabilities.len() <= MAX_LABELS
        && hello.capabilities.iter().all(|c| name_ok(c))
}

fn hello_oracle(hello: &pb::Hello) {
    match Hello::try_from(hello.clone()) {
        Ok(domain) => {
            assert!(
                hello_is_valid(hello),
                "accepted an invalid hello: {hello:?}"
            );
            // Nothing is lost or altered on the way in.
            assert_eq!(&pb::Hello::from(domain), hello);
        }
        Err(error) => {
            assert!(
                !hello_is_valid(hello),
                "refused a valid hello ({error}): {hello:?}"
            );
            assert!(!error.to_string().is_empty());
        }
    }
}

/// What the coordinator does with a decoded agent message before it trusts it.
fn agent_message_checked(message: &pb::AgentMessage) {
    use pb::agent_message::Body;
    match &message.body {
        Some(Body::Hello(hello)) => hello_oracle(hello),
        Some(Body::Results(batch)) => {
            let verdict = check_batch(batch);
            if batch.results.len() > MAX_BATCH_RESULTS {
                assert!(matches!(verdict, Err(ProtocolError::TooMany { .. })));
            } else {
                let first_bad = batch.results.iter().map(check_result).find(Result::is_err);
                assert_eq!(verdict, first_bad.unwrap_or(Ok(())));
            }
            for result in &batch.results {
                check_result_oracle(result);
                render_checked(result);
            }
        }
        _ => {}
    }
}

fn coordinator_message_checked(message: &pb::CoordinatorMessage) {
    use pb::coordinator_message::Body;
    if let Some(Body::Plan(plan)) = &message.body {
        for spec in &plan.probes {
            // The agent turns the route number into an enum: any number
            // converts or is refused with its value.
            match Route::try_from(spec.route) {
                Ok(route) => assert_eq!(pb::Route::from(route) as i32, spec.route),
                Err(e) => assert_eq!(
                    e,
                    ProtocolError::UnknownEnum {
                        field: "route",
                        value: spec.route
                    }
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Every message type decodes arbitrary and well-formed-but-random input.
// ---------------------------------------------------------------------------

macro_rules! decode_targets {
    ($($test:ident => $ty:ty),* $(,)?) => {
        proptest! {
            #![proptest_config(config(256))]
            $(
                #[test]
                fn $test(
                    raw in proptest::collection::vec(any::<u8>(), 0..256),
                    fields in wire_fields(),
                    edits in proptest::collection::vec(mutation(), 0..3),
                ) {
                    decode_checked::<$ty>(&raw);
                    let mut wire = Vec::new();
                    encode_fields(&fields, &mut wire);
                    decode_checked::<$ty>(&wire);
                    decode_checked::<$ty>(&mutate(wire, &edits));
                }
            )*
        }
    };
}

decode_targets! {
    // The coordinator receives these from agents.
    enroll_request => pb::EnrollRequest,
    hello => pb::Hello,
    result_batch => pb::ResultBatch,
    probe_result => pb::ProbeResult,
    observation => pb::Observation,
    plan_rejected => pb::PlanRejected,
    heartbeat => pb::Heartbeat,
    // The agent receives these from the coordinator.
    enroll_response => pb::EnrollResponse,
    welcome => pb::Welcome,
    plan => pb::Plan,
    probe_spec => pb::ProbeSpec,
    cancel => pb::Cancel,
    ack => pb::Ack,
    // The coordinator receives these from the CLI.
    start_campaign_request => pb::StartCampaignRequest,
    watch_campaign_request => pb::WatchCampaignRequest,
    get_report_request => pb::GetReportRequest,
    list_campaigns_request => pb::ListCampaignsRequest,
    list_agents_request => pb::ListAgentsRequest,
    create_enrollment_token_request => pb::CreateEnrollmentTokenRequest,
    revoke_agent_request => pb::RevokeAgentRequest,
    run_plan_request => pb::RunPlanRequest,
    get_plan_status_request => pb::GetPlanStatusRequest,
    // The CLI receives these from the coordinator.
    start_campaign_response => pb::StartCampaignResponse,
    campaign_event => pb::CampaignEvent,
    get_report_response => pb::GetReportResponse,
    list_campaigns_response => pb::ListCampaignsResponse,
    list_agents_response => pb::ListAgentsResponse,
    create_enrollment_token_response => pb::CreateEnrollmentTokenResponse,
    revoke_agent_response => pb::RevokeAgentResponse,
    run_plan_response => pb::RunPlanResponse,
    get_plan_status_response => pb::GetPlanStatusResponse,
}

proptest! {
    #![proptest_config(config(2_000))]

    /// The session stream's two message types, from arbitrary bytes and from
    /// random well-formed wire data, through the checks that follow decoding.
    #[test]
    fn session_messages_from_random_input(
        raw in proptest::collection::vec(any::<u8>(), 0..512),
        fields in wire_fields(),
    ) {
        let mut wire = Vec::new();
        encode_fields(&fields, &mut wire);
        for bytes in [&raw, &wire] {
            if let Some(m) = decode_checked::<pb::AgentMessage>(bytes) {
                agent_message_checked(&m);
            }
            if let Some(m) = decode_checked::<pb::CoordinatorMessage>(bytes) {
                coordinator_message_checked(&m);
            }
        }
    }

    /// Real session messages with every field set, damaged byte by byte
    /// (bit flips, truncation at any offset, lying length prefixes, repeated
    /// fields), then decoded and checked like the peer would.
    #[test]
    fn mutated_session_messages(
        seed in any::<prop::sample::Index>(),
        edits in proptest::collection::vec(mutation(), 1..5),
    ) {
        let agent = agent_seeds();
        let agent_seed = &agent[seed.index(agent.len())];
        let bytes = mutate(agent_seed.encode_to_vec(), &edits);
        if let Some(m) = decode_checked::<pb::AgentMessage>(&bytes) {
            agent_message_checked(&m);
        }
        let coordinator = coordinator_seeds();
        let coordinator_seed = &coordinator[seed.index(coordinator.len())];
        let bytes = mutate(coordinator_seed.encode_to_vec(), &edits);
        if let Some(m) = decode_checked::<pb::CoordinatorMessage>(&bytes) {
            coordinator_message_checked(&m);
        }
    }

    /// Every prefix of a real message is either refused or a valid message:
    /// a connection cut mid-frame never yields a panic.
    #[test]
    fn truncated_session_messages(seed in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>()) {
        let seeds = agent_seeds();
        let bytes = seeds[seed.index(seeds.len())].encode_to_vec();
        let prefix = &bytes[..cut.index(bytes.len() + 1)];
        if let Some(m) = decode_checked::<pb::AgentMessage>(prefix) {
            agent_message_checked(&m);
        }
        // Length-delimited framing, as on a stream: a short frame is refused.
        let framed = seeds[seed.index(seeds.len())].encode_length_delimited_to_vec();
        let short = &framed[..cut.index(framed.len())];
        prop_assert!(pb::AgentMessage::decode_length_delimited(short).is_err());
    }
}

// ---------------------------------------------------------------------------
// Domain conversions on structured values: the oracle decides, not the code.
// ---------------------------------------------------------------------------

/// Names near the rules' edges: valid, empty, too long, bad characters.
fn name_like() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9._-]{1,64}",
        1 => Just(String::new()),
        1 => "[A-Za-z0-9._-]{65,70}",
        1 => "[A-Za-z0-9._-]{0,8}[ /\u{e9}\u{0}:][A-Za-z0-9._-]{0,8}",
        1 => ".{0,80}",
    ]
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![4 => ".{0,16}", 1 => "x{250,260}"]
}

fn hello_strategy() -> impl Strategy<Value = pb::Hello> {
    (
        name_like(),
        name_like(),
        // Mostly a few labels, sometimes around the count limit (with short
        // names: long random ones would dominate the run time).
        prop_oneof![
            4 => proptest::collection::hash_map(name_like(), label_value(), 0..4),
            1 => proptest::collection::hash_map("[a-z]{1,4}", "[a-z]{0,2}", 30..36),
        ],
        prop_oneof![".{0,64}", "v{60,70}"],
        prop_oneof![
            4 => proptest::collection::vec(name_like(), 0..4),
            1 => proptest::collection::vec("[a-z]{1,4}", 30..36),
        ],
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(name, region, labels, version, capabilities, spool_bytes, spool_batches)| pb::Hello {
                name,
                region,
                labels,
                version,
                capabilities,
                spool_bytes,
                spool_batches,
                health: None,
            },
        )
}

fn enum_number(valid: std::ops::RangeInclusive<i32>) -> impl Strategy<Value = i32> {
    prop_oneof![4 => valid, 1 => any::<i32>()]
}

fn id_like() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-z0-9-]{1,40}", 1 => Just(String::new()), 1 => "[a-z]{120,136}"]
}

fn header_strategy() -> impl Strategy<Value = pb::Header> {
    (".{0,12}", proptest::collection::vec(any::<u8>(), 0..16))
        .prop_map(|(name, value)| pb::Header { name, value })
}

fn tls_strategy() -> impl Strategy<Value = pb::TlsPeer> {
    (
        (
            ".{0,12}",
            ".{0,12}",
            proptest::collection::vec(".{0,8}", 0..3),
        ),
        (any::<i64>(), any::<i64>(), any::<bool>(), ".{0,8}"),
    )
        .prop_map(
            |((subject, issuer, sans), (nb, na, verified, alpn))| pb::TlsPeer {
                subject,
                issuer,
                sans,
                not_before_unix: nb,
                not_after_unix: na,
                verified,
                alpn,
                ..Default::default()
            },
        )
}

fn result_strategy() -> impl Strategy<Value = pb::ProbeResult> {
    (
        (id_like(), id_like(), id_like()),
        (
            enum_number(1..=15),
            enum_number(1..=3),
            enum_number(0..=6),
            any::<i32>(),
        ),
        (any::<u32>(), any::<u32>(), any::<u64>(), any::<i64>()),
        (
            proptest::collection::vec(header_strategy(), 0..4),
            proptest::collection::vec(any::<u8>(), 0..64),
            ".{0,32}",
            proptest::option::of(tls_strategy()),
        ),
        proptest::array::uniform5(any::<u64>()),
    )
        .prop_map(
            |(
                (result_id, plan_id, probe_id),
                (outcome, route, stage, curl_exit),
                (attempt, status, body_bytes, started),
                (headers, body_head, title, tls),
                t,
            )| pb::ProbeResult {
                result_id,
                plan_id,
                probe_id,
                outcome,
                route,
                stage,
                curl_exit,
                attempt,
                status,
                body_bytes,
                started_at_unix_ms: started,
                headers,
                body_head,
                title,
                tls,
                timings: Some(pb::Timings {
                    dns_us: t[0],
                    connect_us: t[1],
                    tls_us: t[2],
                    ttfb_us: t[3],
                    total_us: t[4],
                }),
                ..Default::default()
            },
        )
}

proptest! {
    #![proptest_config(config(1_000))]

    /// `Hello` is accepted exactly when the documented limits hold, and an
    /// accepted one converts back unchanged.
    #[test]
    fn hello_validation_matches_the_rules(hello in hello_strategy()) {
        hello_oracle(&hello);
        // And the same hello as the peer would send it, through the wire.
        let message = pb::AgentMessage { body: Some(pb::agent_message::Body::Hello(hello)) };
        let decoded = decode_checked::<pb::AgentMessage>(&message.encode_to_vec());
        prop_assert_eq!(decoded.as_ref(), Some(&message));
        agent_message_checked(&message);
    }

    /// A result is accepted exactly when its ids are bounded and its enums
    /// known; any result, accepted or not, renders as JSON and survives the
    /// wire unchanged.
    #[test]
    fn result_checks_match_the_rules(results in proptest::collection::vec(result_strategy(), 0..4)) {
        for result in &results {
            check_result_oracle(result);
            render_checked(result);
        }
        let batch = pb::ResultBatch { seq: 1, results, finished_plan_id: String::new() };
        let decoded = decode_checked::<pb::ResultBatch>(&batch.encode_to_vec());
        prop_assert_eq!(decoded.as_ref(), Some(&batch));
        let first_bad = batch.results.iter().map(check_result).find(Result::is_err);
        prop_assert_eq!(check_batch(&batch), first_bad.unwrap_or(Ok(())));
    }

    /// Enum numbers: every number converts or is refused with its value, and
    /// known ones round-trip.
    #[test]
    fn enum_conversions_are_total(value in any::<i32>()) {
        match Outcome::try_from(value) {
            Ok(outcome) => {
                prop_assert!((1..=15).contains(&value));
                prop_assert_eq!(pb::Outcome::from(outcome) as i32, value);
                prop_assert_eq!(outcome_name(value), outcome.as_str());
            }
            Err(e) => {
                prop_assert_eq!(e, ProtocolError::UnknownEnum { field: "outcome", value });
                prop_assert_eq!(outcome_name(value), "unknown");
            }
        }
        match Route::try_from(value) {
            Ok(route) => prop_assert_eq!(pb::Route::from(route) as i32, value),
            Err(e) => prop_assert_eq!(e, ProtocolError::UnknownEnum { field: "route", value }),
        }
        match stage_from_i32(value) {
            Ok(None) => prop_assert_eq!(value, 0),
            Ok(Some(stage)) => prop_assert_eq!(pb::Stage::from(stage) as i32, value),
            Err(e) => prop_assert_eq!(e, ProtocolError::UnknownEnum { field: "stage", value }),
        }
    }
}

#[test]
fn oversized_batch_is_refused_before_its_results_are_read() {
    let batch = pb::ResultBatch {
        seq: 1,
        results: vec![pb::ProbeResult::default(); MAX_BATCH_RESULTS + 1],
        finished_plan_id: String::new(),
    };
    assert_eq!(
        check_batch(&batch),
        Err(ProtocolError::TooMany {
            field: "results",
            count: MAX_BATCH_RESULTS + 1,
            limit: MAX_BATCH_RESULTS
        })
    );
}

// ---------------------------------------------------------------------------
// The enrollment token.
// ---------------------------------------------------------------------------

/// Tokens within the documented rules: 1+ addresses of 1..=256 bytes, a
/// 64-digit lowercase hex fingerprint, a 16..=256-byte secret. Addresses and
/// secrets are arbitrary Unicode (quotes, control characters, emoji), which
/// the JSON inside the token must carry unchanged.
fn valid_token() -> impl Strategy<Value = EnrollmentToken> {
    (
        proptest::collection::vec(".{1,64}", 1..4),
        "[0-9a-f]{64}",
        ".{16,64}",
    )
        .prop_map(|(addrs, ca_sha256, secret)| EnrollmentToken {
            addrs,
            ca_sha256,
            secret,
        })
}

/// Tokens near and past every rule's edge.
fn any_token_fields() -> impl Strategy<Value = EnrollmentToken> {
    (
        proptest::collection::vec(prop_oneof![".{0,8}", "a{250,260}"], 0..3),
        prop_oneof!["[0-9a-f]{64}", "[0-9a-fA-F]{63,65}", ".{0,70}"],
        prop_oneof![".{0,20}", "s{250,260}"],
    )
        .prop_map(|(addrs, ca_sha256, secret)| EnrollmentToken {
            addrs,
            ca_sha256,
            secret,
        })
}

fn token_is_valid(t: &EnrollmentToken) -> bool {
    !t.addrs.is_empty()
        && t.addrs.iter().all(|a| (1..=256).contains(&a.len()))
        && t.ca_sha256.len() == 64
        && t.ca_sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && (16..=256).contains(&t.secret.len())
}

/// What a decode must look like for any input: no panic, and an accepted
/// token obeys the rules and re-encodes to a token that decodes to itself.
fn token_decode_checked(text: &str) -> Result<EnrollmentToken, TokenError> {
    let decoded = EnrollmentToken::decode(text);
    match &decoded {
        Ok(token) => {
            assert!(token_is_valid(token), "accepted {token:?} from {text:?}");
            assert_eq!(EnrollmentToken::decode(&token.encode()).as_ref(), Ok(token));
        }
        Err(error) => {
            assert!(!error.to_string().is_empty());
            if text.trim().len() > 4096 {
                assert_eq!(error, &TokenError::TooLong(text.trim().len()));
            }
        }
    }
    decoded
}

/// A character-level edit of a pasted token.
fn edit_token(text: &str, at: prop::sample::Index, op: u8, c: char) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let i = at.index(chars.len() + 1);
    match op % 4 {
        0 if i < chars.len() => chars[i] = c,
        1 if i < chars.len() => {
            chars.remove(i);
        }
        2 => chars.insert(i, c),
        _ => chars.truncate(i),
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(config(2_000))]

    /// Any text at all: refused with a typed error or accepted by the rules.
    #[test]
    fn token_from_any_text(text in prop_oneof![
        ".{0,64}",
        "vtk1\\.[A-Za-z0-9_-]{0,200}",
        "[ \t\n]{0,3}vtk1\\..{0,100}",
        // Around the 4096-byte limit, built by repetition: generating 4 KiB
        // from a regex per case would dominate the run time.
        ("[A-Za-z0-9_-]{1,8}", 4085usize..4100).prop_map(|(unit, n)| {
            format!("vtk1.{}", unit.chars().cycle().take(n).collect::<String>())
        }),
    ]) {
        let _ = token_decode_checked(&text);
    }

    /// A valid token round-trips exactly, also with the whitespace a paste
    /// picks up.
    #[test]
    fn valid_token_round_trips(token in valid_token(), pad in "[ \t\r\n]{0,3}") {
        let encoded = token.encode();
        prop_assert!(encoded.starts_with("vtk1."));
        prop_assert_eq!(EnrollmentToken::decode(&encoded), Ok(token.clone()));
        prop_assert_eq!(EnrollmentToken::decode(&format!("{pad}{encoded}{pad}")), Ok(token));
    }

    /// A damaged valid token never panics; if it still decodes, it is a
    /// valid token (the check runs on whatever the damage produced).
    #[test]
    fn mutated_token(
        token in valid_token(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<char>()), 1..4),
    ) {
        let mut text = token.encode();
        for (at, op, c) in edits {
            text = edit_token(&text, at, op, c);
        }
        let _ = token_decode_checked(&text);
    }

    /// Well-encoded tokens with fields near and past the rules: decoded
    /// exactly when the rules hold, refused as `Invalid` otherwise.
    #[test]
    fn token_fields_are_checked(token in any_token_fields()) {
        let decoded = token_decode_checked(&token.encode());
        if token_is_valid(&token) {
            prop_assert_eq!(decoded, Ok(token));
        } else {
            prop_assert!(matches!(decoded, Err(TokenError::Invalid(_))), "{:?}", decoded);
        }
    }

    /// Arbitrary payloads behind a valid prefix and valid base64: refused as
    /// a bad payload unless they happen to be a valid token's JSON.
    #[test]
    fn token_with_arbitrary_payload(payload in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "\\{\"a\":\\[.{0,10}\\],\"f\":.{0,70},\"s\":.{0,20}\\}".prop_map(String::into_bytes),
        Just(br#"{"a":["x"],"f":null,"s":1}"#.to_vec()),
        Just(b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec()),
    ]) {
        let text = format!(
            "vtk1.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&payload)
        );
        let decoded = token_decode_checked(&text);
        let parsed: Option<EnrollmentToken> = serde_json::from_slice(&payload).ok();
        match parsed {
            None => prop_assert!(matches!(decoded, Err(TokenError::BadPayload(_))), "{:?}", decoded),
            Some(t) if token_is_valid(&t) => prop_assert_eq!(decoded, Ok(t)),
            Some(_) => prop_assert!(matches!(decoded, Err(TokenError::Invalid(_)))),
        }
    }
}
