//! Domain types for the protocol's enums and session messages, and their
//! checked conversions from the generated protobuf types.
//!
//! Limits on sizes live here, in one place, so that the coordinator and the
//! agent agree on what a sane message is.

use std::collections::BTreeMap;
use std::fmt;

use crate::pb;

/// Longest agent name, region, label key or capability accepted.
pub const MAX_NAME_LEN: usize = 64;
/// Longest label value accepted.
pub const MAX_LABEL_VALUE_LEN: usize = 256;
/// Most labels an agent may carry.
pub const MAX_LABELS: usize = 32;
/// Most results in one batch.
pub const MAX_BATCH_RESULTS: usize = 10_000;

/// A protocol message that is missing a field or carries an absurd one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A required field was empty.
    #[error("field `{0}` is required")]
    Missing(&'static str),
    /// A field was longer than its limit.
    #[error("field `{field}` is {len} bytes long, the limit is {limit}")]
    TooLong {
        /// The field's name.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Too many items in a repeated field.
    #[error("field `{field}` has {count} entries, the limit is {limit}")]
    TooMany {
        /// The field's name.
        field: &'static str,
        /// How many entries it had.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A field had characters outside its alphabet.
    #[error("field `{field}` has invalid characters: {value:?}")]
    BadCharacters {
        /// The field's name.
        field: &'static str,
        /// The offending value (truncated).
        value: String,
    },
    /// An enum field carried a number this version does not know.
    #[error("field `{field}` has unknown value {value}")]
    UnknownEnum {
        /// The field's name.
        field: &'static str,
        /// The raw number.
        value: i32,
    },
}

/// Checks a name-like field: non-empty, bounded, and made of `[A-Za-z0-9._-]`.
pub fn check_name(field: &'static str, value: &str) -> Result<(), ProtocolError> {
    if value.is_empty() {
        return Err(ProtocolError::Missing(field));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(ProtocolError::TooLong {
            field,
            len: value.len(),
            limit: MAX_NAME_LEN,
        });
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(ProtocolError::BadCharacters {
            field,
            value: value.chars().take(MAX_NAME_LEN).collect(),
        });
    }
    Ok(())
}

/// Checks a label map: bounded count, valid keys, bounded values.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ProtocolError> {
    if labels.len() > MAX_LABELS {
        return Err(ProtocolError::TooMany {
            field: "labels",
            count: labels.len(),
            limit: MAX_LABELS,
        });
    }
    for (key, value) in labels {
        check_name("labels.key", key)?;
        if value.len() > MAX_LABEL_VALUE_LEN {
            return Err(ProtocolError::TooLong {
                field: "labels.value",
                len: value.len(),
                limit: MAX_LABEL_VALUE_LEN,
            });
        }
    }
    Ok(())
}

/// How a probe reaches its target.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// Straight to the origin address.
    Direct,
    /// Through the CDN edge.
    Edge,
    /// Resolve only.
    Dns,
}

impl Route {
    /// The stable name used in reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Edge => "edge",
            Route::Dns => "dns",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<i32> for Route {
    type Error = ProtocolError;
    fn try_from(value: i32) -> Result<Self, Self::Error> {
        match pb::Route::try_from(value) {
            Ok(pb::Route::Direct) => Ok(Route::Direct),
            Ok(pb::Route::Edge) => Ok(Route::Edge),
            Ok(pb::Route::Dns) => Ok(Route::Dns),
            Ok(pb::Route::Unspecified) | Err(_) => Err(ProtocolError::UnknownEnum {
                field: "route",
                value,
            }),
        }
    }
}

impl From<Route> for pb::Route {
    fn from(route: Route) -> Self {
        match route {
            Route::Direct => pb::Route::Direct,
            Route::Edge => pb::Route::Edge,
            Route::Dns => pb::Route::Dns,
        }
    }
}

/// What happened to one request (DESIGN §4; the names are a public contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A complete HTTP response was received.
    Ok,
    /// The host name could not be resolved.
    DnsFailure,
    /// The peer refused the TCP connection.
    ConnectRefused,
    /// No TCP connection within the connect timeout.
    ConnectTimeout,
    /// No route to the target.
    NetworkUnreachable,
    /// The TLS handshake failed.
    TlsHandshakeFailed,
    /// The peer's certificate did not verify.
    TlsCertInvalid,
    /// The request could not be written.
    SendFailed,
    /// The connection was reset after the request was sent.
    Reset,
    /// The peer closed the connection without sending a byte.
    EmptyReply,
    /// No first response byte within the timeout.
    ResponseTimeout,
    /// The reply was not valid HTTP.
    MalformedResponse,
    /// The body ended before its announced length.
    Truncated,
    /// The body stalled mid-way.
    BodyTimeout,
    /// The agent refused the target by policy.
    BlockedByPolicy,
}

impl Outcome {
    /// Every outcome, in protocol order.
    pub const ALL: [Outcome; 15] = [
        Outcome::Ok,
        Outcome::DnsFailure,
        Outcome::ConnectRefused,
        Outcome::ConnectTimeout,
        Outcome::NetworkUnreachable,
        Outcome::TlsHandshakeFailed,
        Outcome::TlsCertInvalid,
        Outcome::SendFailed,
        Outcome::Reset,
        Outcome::EmptyReply,
        Outcome::ResponseTimeout,
        Outcome::MalformedResponse,
        Outcome::Truncated,
        Outcome::BodyTimeout,
        Outcome::BlockedByPolicy,
    ];

    /// The stable snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::DnsFailure => "dns_failure",
            Outcome::ConnectRefused => "connect_refused",
            Outcome::ConnectTimeout => "connect_timeout",
            Outcome::NetworkUnreachable => "network_unreachable",
            Outcome::TlsHandshakeFailed => "tls_handshake_failed",
            Outcome::TlsCertInvalid => "tls_cert_invalid",
            Outcome::SendFailed => "send_failed",
            Outcome::Reset => "reset",
            Outcome::EmptyReply => "empty_reply",
            Outcome::ResponseTimeout => "response_timeout",
            Outcome::MalformedResponse => "malformed_response",
            Outcome::Truncated => "truncated",
            Outcome::BodyTimeout => "body_timeout",
            Outcome::BlockedByPolicy => "blocked_by_policy",
        }
    }

    /// The exit code curl would have given for this outcome. For a malformed
    /// response curl says 1 or 8 depending on the malformation; 8 ("weird
    /// server reply") is the default here and the engine refines it.
    pub fn curl_exit(self) -> i32 {
        match self {
            Outcome::Ok => 0,
            Outcome::DnsFailure => 6,
            Outcome::ConnectRefused | Outcome::NetworkUnreachable => 7,
            Outcome::ConnectTimeout | Outcome::ResponseTimeout | Outcome::BodyTimeout => 28,
            Outcome::TlsHandshakeFailed => 35,
            Outcome::TlsCertInvalid => 60,
            Outcome::SendFailed => 55,
            Outcome::Reset => 56,
            Outcome::EmptyReply => 52,
            Outcome::MalformedResponse => 8,
            Outcome::Truncated => 18,
            // curl has no policy refusal; 7 is what a refused target looks like to it.
            Outcome::BlockedByPolicy => 7,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Outcome> for pb::Outcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Ok => pb::Outcome::Ok,
            Outcome::DnsFailure => pb::Outcome::DnsFailure,
            Outcome::ConnectRefused => pb::Outcome::ConnectRefused,
            Outcome::ConnectTimeout => pb::Outcome::ConnectTimeout,
            Outcome::NetworkUnreachable => pb::Outcome::NetworkUnreachable,
            Outcome::TlsHandshakeFailed => pb::Outcome::TlsHandshakeFailed,
            Outcome::TlsCertInvalid => pb::Outcome::TlsCertInvalid,
            Outcome::SendFailed => pb::Outcome::SendFailed,
            Outcome::Reset => pb::Outcome::Reset,
            Outcome::EmptyReply => pb::Outcome::EmptyReply,
            Outcome::ResponseTimeout => pb::Outcome::ResponseTimeout,
            Outcome::MalformedResponse => pb::Outcome::MalformedResponse,
            Outcome::Truncated => pb::Outcome::Truncated,
            Outcome::BodyTimeout => pb::Outcome::BodyTimeout,
            Outcome::BlockedByPolicy => pb::Outcome::BlockedByPolicy,
        }
    }
}

impl TryFrom<i32> for Outcome {
    type Error = ProtocolError;
    fn try_from(value: i32) -> Result<Self, Self::Error> {
        Outcome::ALL
            .into_iter()
            .find(|o| pb::Outcome::from(*o) as i32 == value)
            .ok_or(ProtocolError::UnknownEnum {
                field: "outcome",
                value,
            })
    }
}

/// Where a failed request stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Name resolution.
    Dns,
    /// TCP connect.
    Connect,
    /// TLS handshake.
    Tls,
    /// Writing the request.
    Write,
    /// Reading the response head.
    Read,
    /// Reading the body.
    Content,
}

impl Stage {
    /// The stable name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Dns => "dns",
            Stage::Connect => "connect",
            Stage::Tls => "tls",
            Stage::Write => "write",
            Stage::Read => "read",
            Stage::Content => "content",
        }
    }
}

impl From<Stage> for pb::Stage {
    fn from(stage: Stage) -> Self {
        match stage {
            Stage::Dns => pb::Stage::Dns,
            Stage::Connect => pb::Stage::Connect,
            Stage::Tls => pb::Stage::Tls,
            Stage::Write => pb::Stage::Write,
            Stage::Read => pb::Stage::Read,
            Stage::Content => pb::Stage::Content,
        }
    }
}

/// Converts an optional stage field: 0 means "none" (success).
pub fn stage_from_i32(value: i32) -> Result<Option<Stage>, ProtocolError> {
    match pb::Stage::try_from(value) {
        Ok(pb::Stage::Unspecified) => Ok(None),
        Ok(pb::Stage::Dns) => Ok(Some(Stage::Dns)),
        Ok(pb::Stage::Connect) => Ok(Some(Stage::Connect)),
        Ok(pb::Stage::Tls) => Ok(Some(Stage::Tls)),
        Ok(pb::Stage::Write) => Ok(Some(Stage::Write)),
        Ok(pb::Stage::Read) => Ok(Some(Stage::Read)),
        Ok(pb::Stage::Content) => Ok(Some(Stage::Content)),
        Err(_) => Err(ProtocolError::UnknownEnum {
            field: "stage",
            value,
        }),
    }
}

/// How the peer ended a connection before the exchange was complete: the
/// packet-level fact a carrier verdict rests on, kept apart from the outcome
/// (curl calls a reset during the TLS handshake a handshake failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerClose {
    /// The peer closed the connection (FIN).
    Fin,
    /// The peer reset the connection (RST).
    Reset,
}

impl PeerClose {
    /// The stable name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerClose::Fin => "fin",
            PeerClose::Reset => "reset",
        }
    }

    /// The wire value of an optional close: `None` is "unspecified".
    pub fn to_wire(close: Option<PeerClose>) -> i32 {
        match close {
            None => pb::PeerClose::Unspecified as i32,
            Some(PeerClose::Fin) => pb::PeerClose::Fin as i32,
            Some(PeerClose::Reset) => pb::PeerClose::Reset as i32,
        }
    }

    /// Reads the optional wire field; unknown values read as `None` (an
    /// older or newer agent's close is not evidence we can use).
    pub fn from_wire(value: i32) -> Option<PeerClose> {
        match pb::PeerClose::try_from(value) {
            Ok(pb::PeerClose::Fin) => Some(PeerClose::Fin),
            Ok(pb::PeerClose::Reset) => Some(PeerClose::Reset),
            _ => None,
        }
    }
}

/// A validated `Hello`: the first message of every session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The agent's name (unique per coordinator).
    pub name: String,
    /// Its region.
    pub region: String,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// The agent's version string.
    pub version: String,
    /// Capabilities it advertises.
    pub capabilities: Vec<String>,
    /// Bytes currently held in its spool.
    pub spool_bytes: u64,
    /// Batches currently held in its spool.
    pub spool_batches: u64,
    /// Its health when it connected (`None` from agents that send none).
    pub health: Option<AgentHealth>,
}

/// Longest spool error an agent may report, in bytes.
pub const MAX_HEALTH_ERROR_LEN: usize = 1024;

/// What an agent reports of its own state, in Hello and every Heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentHealth {
    /// Whether a test write in its spool directory worked.
    pub spool_writable: bool,
    /// Why it failed (empty when writable).
    pub spool_error: String,
    /// Bytes still free on the spool's file system.
    pub spool_bytes_free: u64,
}

impl TryFrom<pb::AgentHealth> for AgentHealth {
    type Error = ProtocolError;
    fn try_from(health: pb::AgentHealth) -> Result<Self, Self::Error> {
        if health.spool_error.len() > MAX_HEALTH_ERROR_LEN {
            return Err(ProtocolError::TooLong {
                field: "spool_error",
                len: health.spool_error.len(),
                limit: MAX_HEALTH_ERROR_LEN,
            });
        }
        Ok(AgentHealth {
            spool_writable: health.spool_writable,
            spool_error: health.spool_error,
            spool_bytes_free: health.spool_bytes_free,
        })
    }
}

impl From<AgentHealth> for pb::AgentHealth {
    fn from(health: AgentHealth) -> Self {
        pb::AgentHealth {
            spool_writable: health.spool_writable,
            spool_error: health.spool_error,
            spool_bytes_free: health.spool_bytes_free,
        }
    }
}

impl TryFrom<pb::Hello> for Hello {
    type Error = ProtocolError;
    fn try_from(hello: pb::Hello) -> Result<Self, Self::Error> {
        check_name("name", &hello.name)?;
        check_name("region", &hello.region)?;
        let labels: BTreeMap<String, String> = hello.labels.into_iter().collect();
        check_labels(&labels)?;
        if hello.version.len() > MAX_NAME_LEN {
            return Err(ProtocolError::TooLong {
                field: "version",
                len: hello.version.len(),
                limit: MAX_NAME_LEN,
            });
        }
        if hello.capabilities.len() > MAX_LABELS {
            return Err(ProtocolError::TooMany {
                field: "capabilities",
                count: hello.capabilities.len(),
                limit: MAX_LABELS,
            });
        }
        for capability in &hello.capabilities {
            check_name("capabilities", capability)?;
        }
        Ok(Hello {
            name: hello.name,
            region: hello.region,
            labels,
            version: hello.version,
            capabilities: hello.capabilities,
            spool_bytes: hello.spool_bytes,
            spool_batches: hello.spool_batches,
            health: hello.health.map(AgentHealth::try_from).transpose()?,
        })
    }
}

impl From<Hello> for pb::Hello {
    fn from(hello: Hello) -> Self {
        pb::Hello {
            name: hello.name,
            region: hello.region,
            labels: hello.labels.into_iter().collect(),
            version: hello.version,
            capabilities: hello.capabilities,
            spool_bytes: hello.spool_bytes,
            spool_batches: hello.spool_batches,
            health: hello.health.map(Into::into),
        }
    }
}

/// Checks one result as it arrives: ids present and bounded, enums known.
pub fn check_result(result: &pb::ProbeResult) -> Result<(), ProtocolError> {
    if result.result_id.is_empty() {
        return Err(ProtocolError::Missing("result_id"));
    }
    for (field, value) in [
        ("result_id", &result.result_id),
        ("plan_id", &result.plan_id),
        ("probe_id", &result.probe_id),
    ] {
        if value.len() > 128 {
            return Err(ProtocolError::TooLong {
                field,
                len: value.len(),
                limit: 128,
            });
        }
    }
    Outcome::try_from(result.outcome)?;
    Route::try_from(result.route)?;
    stage_from_i32(result.stage)?;
    Ok(())
}

/// Checks a result batch: bounded size, and every result sane.
pub fn check_batch(batch: &pb::ResultBatch) -> Result<(), ProtocolError> {
    if batch.results.len() > MAX_BATCH_RESULTS {
        return Err(ProtocolError::TooMany {
            field: "results",
            count: batch.results.len(),
            limit: MAX_BATCH_RESULTS,
        });
    }
    batch.results.iter().try_for_each(check_result)
}

/// Defines a closed set of names with `as_str`, `parse` and `Display`: the
/// names are stored and sent on the wire as these exact strings.
macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stable name stored and sent on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value with this exact name, if any.
            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// What an enrolled process is (DESIGN: `EnrollRequest.role`).
    AgentRole {
        /// Runs probe plans.
        Agent => "agent",
        /// Watches the origin's access log and reports sightings.
        Witness => "witness",
    }
}

named_enum! {
    /// Delivery state of one plan on one agent, as the control API reports it.
    PlanState {
        /// Sent; the agent has not finished it yet.
        Sent => "sent",
        /// The agent refused it.
        Rejected => "rejected",
        /// The agent reported it finished.
        Finished => "finished",
        /// The agent's session ended before it finished.
        Lost => "lost",
    }
}

named_enum! {
    /// A campaign's status: running, then its report's verdict.
    CampaignStatus {
        /// Still collecting evidence.
        Running => "running",
        /// Finished, nothing wrong.
        Healthy => "healthy",
        /// Finished with at least one finding.
        Faulty => "faulty",
        /// Finished without enough evidence to say.
        Inconclusive => "inconclusive",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> pb::Hello {
        pb::Hello {
            name: "fra-1".into(),
            region: "eu-central".into(),
            version: "0.1.0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn outcome_names_and_curl_exits_follow_the_contract() {
        let expected = [
            ("ok", 0),
            ("dns_failure", 6),
            ("connect_refused", 7),
            ("connect_timeout", 28),
            ("network_unreachable", 7),
            ("tls_handshake_failed", 35),
            ("tls_cert_invalid", 60),
            ("send_failed", 55),
            ("reset", 56),
            ("empty_reply", 52),
            ("response_timeout", 28),
            ("malformed_response", 8),
            ("truncated", 18),
            ("body_timeout", 28),
            ("blocked_by_policy", 7),
        ];
        for (outcome, (name, exit)) in Outcome::ALL.into_iter().zip(expected) {
            assert_eq!(outcome.as_str(), name);
            assert_eq!(outcome.curl_exit(), exit, "{name}");
            let wire = pb::Outcome::from(outcome) as i32;
            assert_eq!(Outcome::try_from(wire), Ok(outcome));
        }
    }

    #[test]
    fn unknown_enums_are_rejected() {
        assert_eq!(
            Outcome::try_from(999),
            Err(ProtocolError::UnknownEnum {
                field: "outcome",
                value: 999
            })
        );
        assert!(Route::try_from(0).is_err());
        assert!(stage_from_i32(42).is_err());
        assert_eq!(stage_from_i32(0), Ok(None));
    }

    #[test]
    fn hello_validation() {
        assert!(Hello::try_from(hello()).is_ok());
        let mut empty_region = hello();
        empty_region.region.clear();
        assert_eq!(
            Hello::try_from(empty_region),
            Err(ProtocolError::Missing("region"))
        );
        let mut huge_label = hello();
        huge_label
            .labels
            .insert("big".into(), "x".repeat(10 * 1024 * 1024));
        assert!(matches!(
            Hello::try_from(huge_label),
            Err(ProtocolError::TooLong {
                field: "labels.value",
                ..
            })
        ));
        let mut bad_name = hello();
        bad_name.name = "a b/c".into();
        assert!(matches!(
            Hello::try_from(bad_name),
            Err(ProtocolError::BadCharacters { .. })
        ));
    }

    #[test]
    fn batch_with_unknown_outcome_is_rejected() {
        let batch = pb::ResultBatch {
            seq: 1,
            results: vec![pb::ProbeResult {
                result_id: "r1".into(),
                route: pb::Route::Direct as i32,
                outcome: 77,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(matches!(
            check_batch(&batch),
            Err(ProtocolError::UnknownEnum {
                field: "outcome",
                value: 77
            })
        ));
    }

    #[test]
    fn named_enums_round_trip_their_stored_names() {
        for role in AgentRole::ALL {
            assert_eq!(AgentRole::parse(role.as_str()), Some(*role));
        }
        for state in PlanState::ALL {
            assert_eq!(PlanState::parse(state.as_str()), Some(*state));
        }
        for status in CampaignStatus::ALL {
            assert_eq!(CampaignStatus::parse(&status.to_string()), Some(*status));
        }
        assert_eq!(AgentRole::parse("admin"), None);
        assert_eq!(PlanState::parse("Sent"), None, "names are exact");
        assert_eq!(
            CampaignStatus::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
            ["running", "healthy", "faulty", "inconclusive"]
        );
    }
}
