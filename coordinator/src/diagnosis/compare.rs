//! Answer comparison (DESIGN §5): whether two regions got "the same page".
//!
//! Dynamic pages differ byte for byte between requests (the nonce, a date,
//! a session id), so a hash mismatch alone cannot mean injection. As in
//! censorship measurement practice, two answers are the same when their
//! status matches, their lengths are within 30 % (min/max > 0.7), their
//! titles have the same words and they carry the same uncommon header names;
//! an equal hash short-cuts all of that.

use std::collections::BTreeSet;

use super::Observation;

/// Header names every server may or may not send; they say nothing about
/// who produced the answer, so they are left out of the comparison.
const COMMON_HEADERS: &[&str] = &[
    "accept-ranges",
    "age",
    "cache-control",
    "connection",
    "content-encoding",
    "content-language",
    "content-length",
    "content-type",
    "date",
    "etag",
    "expires",
    "keep-alive",
    "last-modified",
    "pragma",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "vary",
    "via",
    "x-cache",
    "eo-log-uuid",
    "eo-cache-status",
    "cf-ray",
    "cf-cache-status",
    "x-request-id",
];

/// Whether two successful answers are the same page.
pub(crate) fn same_page(a: &Observation, b: &Observation) -> bool {
    if a.status != b.status {
        return false;
    }
    if !a.body_sha256.is_empty() && a.body_sha256 == b.body_sha256 {
        return true;
    }
    similar_length(a.body_bytes, b.body_bytes)
        && title_words(&a.title) == title_words(&b.title)
        && uncommon_headers(&a.header_names) == uncommon_headers(&b.header_names)
}

/// Length proportion min/max > 0.7 (two empty bodies are alike).
pub(crate) fn similar_length(a: u64, b: u64) -> bool {
    let (min, max) = (a.min(b), a.max(b));
    if max == 0 {
        return true;
    }
    // Precision loss above 2^53 bytes is irrelevant to a 0.7 threshold.
    (min as f64) / (max as f64) > 0.7
}

fn title_words(title: &str) -> BTreeSet<String> {
    title
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn uncommon_headers(names: &[String]) -> BTreeSet<String> {
    names
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .filter(|n| !COMMON_HEADERS.contains(&n.as_str()))
        .collect()
}
