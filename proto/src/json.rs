//! The JSON form of a probe result (DESIGN §4, a public contract): the names
//! and units that `vantage-agent probe --json` prints and that reports embed.
//!
//! The protobuf result is built for the wire (microseconds, enum numbers,
//! header values as bytes); this is the form people and scripts read
//! (milliseconds, snake_case names, strings), so every conversion is lossy on
//! purpose and happens here, once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::domain::{stage_from_i32, Outcome, PeerClose, Route};
use crate::pb;

/// Name used for an enum number this version does not know, so that a newer
/// agent's result still prints instead of failing.
const UNKNOWN: &str = "unknown";

/// The last second humantime can format (end of year 9999); certificates use
/// 9999-12-31T23:59:59Z as "never expires", so this bound is reachable.
const LAST_FORMATTABLE_SECOND: i64 = 253_402_300_799;

/// The DESIGN §4 JSON object for one result.
///
/// Timings are cumulative milliseconds with microsecond precision (curl's
/// `time_*` meaning). `status` is null when no status line arrived, `stage`
/// when the request did not fail, `tls` when there was no handshake.
/// Header values and the body head are decoded as lossy UTF-8 (the raw bytes
/// stay in the protobuf form); repeated header names are joined with ", ".
pub fn result_json(result: &pb::ProbeResult) -> Value {
    let timings = result.timings.unwrap_or_default();
    json!({
        "timings_ms": {
            "dns": micros_to_ms(timings.dns_us),
            "connect": micros_to_ms(timings.connect_us),
            "tls": micros_to_ms(timings.tls_us),
            "ttfb": micros_to_ms(timings.ttfb_us),
            "total": micros_to_ms(timings.total_us),
        },
        "outcome": outcome_name(result.outcome),
        "curl_exit": result.curl_exit,
        "stage": stage_name(result.stage),
        "peer_close": PeerClose::from_wire(result.peer_close).map(PeerClose::as_str),
        "route": route_name(result.route),
        "variant": result.variant,
        "url": result.url,
        "nonce": result.nonce,
        "attempt": result.attempt,
        "burst_index": result.burst_index,
        "remote_addr": result.remote_addr,
        "local_addr": result.local_addr,
        "http_version": result.http_version,
        "status": (result.status != 0).then_some(result.status),
        "headers": headers_json(&result.headers),
        "body_bytes": result.body_bytes,
        "body_sha256": result.body_sha256,
        "body_head": String::from_utf8_lossy(&result.body_head),
        "title": result.title,
        "edge_request_id": result.edge_request_id,
        "cache_status": result.cache_status,
        "tls": result.tls.as_ref().map(tls_json),
        "dns_answers": result.dns_answers,
        "redirects": result.redirects,
        "error": result.error,
        "result_id": result.result_id,
        "started_at": started_at(result.started_at_unix_ms),
    })
}

/// The snake_case name of a wire outcome number, `"unknown"` if this version
/// does not know it.
pub fn outcome_name(outcome: i32) -> &'static str {
    Outcome::try_from(outcome).map_or(UNKNOWN, Outcome::as_str)
}

/// Microseconds as milliseconds with 3 decimals. One correctly rounded
/// division of the integer is the nearest double to the exact decimal, so it
/// prints as `1.234`, never `1.2340000000000002` (exact up to 2^53 µs, which
/// is 285 years).
fn micros_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn stage_name(stage: i32) -> Value {
    match stage_from_i32(stage) {
        Ok(Some(stage)) => Value::from(stage.as_str()),
        Ok(None) => Value::Null,
        Err(_) => Value::from(UNKNOWN),
    }
}

fn route_name(route: i32) -> Value {
    if route == pb::Route::Unspecified as i32 {
        return Value::Null;
    }
    Value::from(Route::try_from(route).map_or(UNKNOWN, Route::as_str))
}

/// Header names are case-insensitive, so `Via` and `via` are one header; the
/// first spelling seen names it and values keep their order, as
/// RFC 9110 §5.3 allows for combining field lines.
fn headers_json(headers: &[pb::Header]) -> Value {
    let mut merged: Vec<(&str, String)> = Vec::with_capacity(headers.len());
    for header in headers {
        let value = String::from_utf8_lossy(&header.value);
        match merged
            .iter_mut()
            .find(|(name, _)| name.eq_ignore_ascii_case(&header.name))
        {
            Some((_, joined)) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            None => merged.push((header.name.as_str(), value.into_owned())),
        }
    }
    Value::Object(
        merged
            .into_iter()
            .map(|(name, value)| (name.to_string(), Value::from(value)))
            .collect::<Map<String, Value>>(),
    )
}

fn tls_json(tls: &pb::TlsPeer) -> Value {
    json!({
        "subject": tls.subject,
        "issuer": tls.issuer,
        "sans": tls.sans,
        "not_before": cert_time(tls.not_before_unix),
        "not_after": cert_time(tls.not_after_unix),
        "sha256": tls.sha256,
        "verified": tls.verified,
        "verify_error": tls.verify_error,
        "protocol_version": tls.protocol_version,
        "alpn": tls.alpn,
    })
}

/// A certificate validity bound as RFC 3339 seconds; null when unset (0) or
/// outside what RFC 3339 formatting supports (before 1970, after 9999).
fn cert_time(unix_seconds: i64) -> Value {
    if !(1..=LAST_FORMATTABLE_SECOND).contains(&unix_seconds) {
        return Value::Null;
    }
    let secs = unix_seconds.unsigned_abs();
    match UNIX_EPOCH.checked_add(Duration::from_secs(secs)) {
        Some(time) => Value::from(humantime::format_rfc3339_seconds(time).to_string()),
        None => Value::Null,
    }
}

/// When the request started, as RFC 3339 with milliseconds; null when unset.
fn started_at(unix_ms: i64) -> Value {
    let max_ms = LAST_FORMATTABLE_SECOND.saturating_mul(1000);
    if !(1..=max_ms).contains(&unix_ms) {
        return Value::Null;
    }
    let time: Option<SystemTime> =
        UNIX_EPOCH.checked_add(Duration::from_millis(unix_ms.unsigned_abs()));
    match time {
        Some(time) => Value::from(humantime::format_rfc3339_millis(time).to_string()),
        None => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Stage;

    fn header(name: &str, value: &[u8]) -> pb::Header {
        pb::Header {
            name: name.into(),
            value: value.to_vec(),
        }
    }

    fn full() -> pb::ProbeResult {
        pb::ProbeResult {
            result_id: "r-1".into(),
            plan_id: "p-1".into(),
            probe_id: "direct/baseline".into(),
            attempt: 2,
            burst_index: 3,
            route: pb::Route::Direct as i32,
            variant: "baseline".into(),
            url: "https://example.com/".into(),
            nonce: "abc-2-3".into(),
            outcome: pb::Outcome::from(Outcome::Ok) as i32,
            curl_exit: 0,
            stage: 0,
            error: String::new(),
            timings: Some(pb::Timings {
                dns_us: 1_234,
                connect_us: 10_001,
                tls_us: 25_500,
                ttfb_us: 80_000,
                total_us: 81_999,
            }),
            remote_addr: "192.0.2.1:443".into(),
            local_addr: "198.51.100.7:50000".into(),
            http_version: "HTTP/1.1".into(),
            status: 200,
            headers: vec![
                header("Content-Type", b"text/html"),
                header("Via", b"1.1 a"),
                header("via", b"1.1 b"),
                header("X-Odd", b"caf\xe9"),
            ],
            body_bytes: 5,
            body_sha256: "00ff".into(),
            body_head: b"<html".to_vec(),
            title: "Home".into(),
            edge_request_id: "eo-1".into(),
            cache_status: "MISS".into(),
            tls: Some(pb::TlsPeer {
                subject: "CN=example.com".into(),
                issuer: "CN=Test CA".into(),
                sans: vec!["example.com".into(), "www.example.com".into()],
                not_before_unix: 1_700_000_000,
                not_after_unix: 0,
                sha256: "ab".repeat(32),
                verified: true,
                verify_error: String::new(),
                protocol_version: "TLSv1.3".into(),
                alpn: "http/1.1".into(),
            }),
            dns_answers: vec!["192.0.2.1".into()],
            started_at_unix_ms: 1_700_000_000_123,
            redirects: Vec::new(),
            peer_close: 0,
        }
    }

    #[test]
    fn a_full_result_uses_the_contract_names_and_units() {
        let v = result_json(&full());
        assert_eq!(
            v["timings_ms"],
            json!({"dns": 1.234, "connect": 10.001, "tls": 25.5, "ttfb": 80.0, "total": 81.999})
        );
        assert_eq!(v["outcome"], "ok");
        assert_eq!(v["curl_exit"], 0);
        assert_eq!(v["stage"], Value::Null);
        assert_eq!(v["route"], "direct");
        assert_eq!(v["variant"], "baseline");
        assert_eq!(v["url"], "https://example.com/");
        assert_eq!(v["nonce"], "abc-2-3");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["burst_index"], 3);
        assert_eq!(v["remote_addr"], "192.0.2.1:443");
        assert_eq!(v["local_addr"], "198.51.100.7:50000");
        assert_eq!(v["http_version"], "HTTP/1.1");
        assert_eq!(v["status"], 200);
        assert_eq!(
            v["headers"],
            json!({"Content-Type": "text/html", "Via": "1.1 a, 1.1 b", "X-Odd": "caf\u{fffd}"})
        );
        assert_eq!(v["body_bytes"], 5);
        assert_eq!(v["body_sha256"], "00ff");
        assert_eq!(v["body_head"], "<html");
        assert_eq!(v["title"], "Home");
        assert_eq!(v["edge_request_id"], "eo-1");
        assert_eq!(v["cache_status"], "MISS");
        assert_eq!(v["tls"]["not_before"], "2023-11-14T22:13:20Z");
        assert_eq!(v["tls"]["not_after"], Value::Null);
        assert_eq!(v["tls"]["sans"], json!(["example.com", "www.example.com"]));
        assert_eq!(v["tls"]["verified"], true);
        assert_eq!(v["tls"]["protocol_version"], "TLSv1.3");
        assert_eq!(v["tls"]["alpn"], "http/1.1");
        assert_eq!(v["dns_answers"], json!(["192.0.2.1"]));
        assert_eq!(v["error"], "");
        assert_eq!(v["result_id"], "r-1");
        assert_eq!(v["started_at"], "2023-11-14T22:13:20.123Z");
        // Exactly the contract's fields, nothing wire-only (plan/probe ids,
        // raw microseconds) leaks in.
        let mut keys: Vec<&str> = v
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "attempt",
                "body_bytes",
                "body_head",
                "body_sha256",
                "burst_index",
                "cache_status",
                "curl_exit",
                "dns_answers",
                "edge_request_id",
                "error",
                "headers",
                "http_version",
                "local_addr",
                "nonce",
                "outcome",
                "peer_close",
                "redirects",
                "remote_addr",
                "result_id",
                "route",
                "stage",
                "started_at",
                "status",
                "timings_ms",
                "title",
                "tls",
                "url",
                "variant",
            ]
        );
    }

    #[test]
    fn a_failed_result_has_nulls_where_nothing_happened() {
        let result = pb::ProbeResult {
            result_id: "r-2".into(),
            route: pb::Route::Edge as i32,
            outcome: pb::Outcome::from(Outcome::ConnectRefused) as i32,
            curl_exit: 7,
            stage: pb::Stage::from(Stage::Connect) as i32,
            error: "connect 192.0.2.1:80: Connection refused".into(),
            timings: Some(pb::Timings {
                dns_us: 15,
                connect_us: 0,
                tls_us: 0,
                ttfb_us: 0,
                total_us: 480,
            }),
            ..Default::default()
        };
        let v = result_json(&result);
        assert_eq!(v["outcome"], "connect_refused");
        assert_eq!(v["curl_exit"], 7);
        assert_eq!(v["stage"], "connect");
        assert_eq!(v["route"], "edge");
        assert_eq!(v["status"], Value::Null);
        assert_eq!(v["tls"], Value::Null);
        assert_eq!(v["headers"], json!({}));
        assert_eq!(v["body_head"], "");
        assert_eq!(v["started_at"], Value::Null);
        assert_eq!(v["error"], "connect 192.0.2.1:80: Connection refused");
        assert_eq!(
            v["timings_ms"],
            json!({"dns": 0.015, "connect": 0.0, "tls": 0.0, "ttfb": 0.0, "total": 0.48})
        );
    }

    #[test]
    fn unknown_enums_and_missing_parts_still_print() {
        let v = result_json(&pb::ProbeResult {
            outcome: 999,
            stage: 42,
            route: 77,
            ..Default::default()
        });
        assert_eq!(v["outcome"], "unknown");
        assert_eq!(v["stage"], "unknown");
        assert_eq!(v["route"], "unknown");
        assert_eq!(v["timings_ms"]["total"], 0.0);
        assert_eq!(
            result_json(&pb::ProbeResult::default())["route"],
            Value::Null
        );
    }

    #[test]
    fn certificate_times_out_of_range_are_null_not_a_panic() {
        assert_eq!(cert_time(-1), Value::Null);
        assert_eq!(cert_time(i64::MAX), Value::Null);
        assert_eq!(cert_time(LAST_FORMATTABLE_SECOND), "9999-12-31T23:59:59Z");
        assert_eq!(started_at(i64::MAX), Value::Null);
        assert_eq!(started_at(-5), Value::Null);
    }
}
