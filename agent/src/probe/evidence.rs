//! Evidence kept from a response: headers up to a byte cap, the HTML title,
//! the CDN's request id and cache status. Each is what a person would paste
//! into a support ticket to prove what answered.

use vantage_proto::pb;

/// Response header bytes kept per result, at most.
pub const MAX_HEADER_EVIDENCE: usize = 16 * 1024;
/// Longest title kept.
const MAX_TITLE: usize = 256;

/// Headers that carry an edge's request id, most specific first.
const REQUEST_ID_HEADERS: [&str; 6] = [
    "eo-log-uuid",
    "cf-ray",
    "x-amz-cf-id",
    "x-nws-log-uuid",
    "x-served-by",
    "x-request-id",
];
/// Headers that carry a cache verdict, most specific first.
const CACHE_HEADERS: [&str; 5] = [
    "eo-cache-status",
    "cf-cache-status",
    "x-cache",
    "x-cache-status",
    "x-cache-lookup",
];

/// Keeps headers in order until `MAX_HEADER_EVIDENCE` bytes.
pub fn keep_headers(headers: &http::HeaderMap) -> Vec<pb::Header> {
    let mut used = 0usize;
    let mut kept = Vec::new();
    for (name, value) in headers {
        used += name.as_str().len() + value.len() + 4;
        if used > MAX_HEADER_EVIDENCE {
            break;
        }
        kept.push(pb::Header {
            name: name.as_str().to_string(),
            value: value.as_bytes().to_vec(),
        });
    }
    kept
}

fn first_of(headers: &http::HeaderMap, names: &[&str]) -> String {
    names
        .iter()
        .find_map(|name| headers.get(*name))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// The edge's request id, if any known header carries one.
pub fn edge_request_id(headers: &http::HeaderMap) -> String {
    first_of(headers, &REQUEST_ID_HEADERS)
}

/// The cache verdict, if any known header carries one.
pub fn cache_status(headers: &http::HeaderMap) -> String {
    first_of(headers, &CACHE_HEADERS)
}

/// The text of the first `<title>` in `body`, whitespace collapsed.
pub fn title(body: &[u8]) -> String {
    let lower: Vec<u8> = body.iter().map(u8::to_ascii_lowercase).collect();
    let Some(open) = find(&lower, b"<title") else {
        return String::new();
    };
    let Some(start) = lower[open..]
        .iter()
        .position(|&b| b == b'>')
        .map(|p| open + p + 1)
    else {
        return String::new();
    };
    let end = find(&lower[start..], b"</title").map_or(body.len(), |p| start + p);
    let text = String::from_utf8_lossy(&body[start..end]);
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.chars().take(MAX_TITLE).collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles() {
        assert_eq!(
            title(b"<html><TITLE>\n  Access   Denied </title>"),
            "Access Denied"
        );
        assert_eq!(title(b"<title lang=en>x</title>"), "x");
        assert_eq!(title(b"<title>cut off"), "cut off");
        assert_eq!(title(b"no title"), "");
        assert_eq!(
            title(b"<title>\xff\xfe</title>").chars().count(),
            2,
            "invalid UTF-8 is replaced"
        );
    }

    #[test]
    fn ids_and_cache_status() {
        let mut headers = http::HeaderMap::new();
        headers.insert("cf-ray", "8a1b-FRA".parse().unwrap());
        headers.insert("x-cache", "MISS".parse().unwrap());
        assert_eq!(edge_request_id(&headers), "8a1b-FRA");
        assert_eq!(cache_status(&headers), "MISS");
        headers.insert("eo-log-uuid", "abc".parse().unwrap());
        assert_eq!(edge_request_id(&headers), "abc");
    }

    #[test]
    fn header_evidence_is_capped() {
        let mut headers = http::HeaderMap::new();
        for i in 0..100 {
            headers.insert(
                http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                "v".repeat(1000).parse().unwrap(),
            );
        }
        let kept = keep_headers(&headers);
        assert!(kept.len() < 20 && !kept.is_empty());
    }
}
