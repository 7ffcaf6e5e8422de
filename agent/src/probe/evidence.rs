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

/// Every header of an HTTP/2 response (hyper's map), in order, as
/// evidence rows; the HTTP/1.1 reader produces the same rows itself.
pub fn headers_of(map: &http::HeaderMap) -> Vec<pb::Header> {
    map.iter()
        .map(|(name, value)| pb::Header {
            name: name.as_str().to_string(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
}

/// Keeps the longest prefix of `headers`, in order, that fits
/// `MAX_HEADER_EVIDENCE` bytes.
pub fn keep_headers(mut headers: Vec<pb::Header>) -> Vec<pb::Header> {
    let mut used = 0usize;
    let fits = headers
        .iter()
        .take_while(|h| {
            used += h.name.len() + h.value.len() + 4;
            used <= MAX_HEADER_EVIDENCE
        })
        .count();
    headers.truncate(fits);
    headers
}

fn first_of(headers: &[pb::Header], names: &[&str]) -> String {
    names
        .iter()
        .find_map(|name| headers.iter().find(|h| h.name == *name))
        .map(|h| String::from_utf8_lossy(&h.value).into_owned())
        .unwrap_or_default()
}

/// The edge's request id, if any known header carries one (names lower-case).
pub fn edge_request_id(headers: &[pb::Header]) -> String {
    first_of(headers, &REQUEST_ID_HEADERS)
}

/// The cache verdict, if any known header carries one (names lower-case).
pub fn cache_status(headers: &[pb::Header]) -> String {
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
        assert_eq!(edge_request_id(&headers_of(&headers)), "8a1b-FRA");
        assert_eq!(cache_status(&headers_of(&headers)), "MISS");
        headers.insert("eo-log-uuid", "abc".parse().unwrap());
        assert_eq!(edge_request_id(&headers_of(&headers)), "abc");
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
        let kept = keep_headers(headers_of(&headers));
        assert!(kept.len() < 20 && !kept.is_empty());
    }
}

/// Property-based fuzzing of the evidence extractors with hostile input:
/// arbitrary body bytes (invalid UTF-8, a title that never closes, markup
/// inside markup) and arbitrary header maps.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// A header value byte that `http::HeaderValue` accepts: tab, visible
    /// ASCII and obs-text (0x80-0xFF).
    fn value_byte() -> impl Strategy<Value = u8> {
        prop_oneof![Just(b'\t'), 0x20u8..=0x7e, 0x80u8..=0xff]
    }

    fn header_map() -> impl Strategy<Value = http::HeaderMap> {
        let name = prop_oneof![
            3 => "[a-z0-9-]{1,24}",
            1 => proptest::sample::select(
                REQUEST_ID_HEADERS
                    .iter()
                    .chain(CACHE_HEADERS.iter())
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
            ),
        ];
        // Long values are a short random pattern repeated: generating
        // kilobytes byte by byte would dominate the run time.
        let value = prop_oneof![
            4 => proptest::collection::vec(value_byte(), 0..64),
            1 => (proptest::collection::vec(value_byte(), 1..16), 100usize..6000)
                .prop_map(|(unit, len)| unit.iter().copied().cycle().take(len).collect()),
        ];
        proptest::collection::vec((name, value), 0..24).prop_map(|pairs| {
            let mut map = http::HeaderMap::new();
            for (name, value) in pairs {
                let name = http::HeaderName::from_bytes(name.as_bytes()).expect("valid name");
                let value = http::HeaderValue::from_bytes(&value).expect("valid value");
                map.append(name, value);
            }
            map
        })
    }

    fn cost(name: &str, value: &[u8]) -> usize {
        name.len() + value.len() + 4
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Any body: no panic, at most `MAX_TITLE` characters, whitespace
        /// collapsed (a cut at `MAX_TITLE` may end on the separating space),
        /// nothing at all without a `<title` tag.
        #[test]
        fn title_of_any_body(body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            (proptest::collection::vec(any::<u8>(), 0..64), proptest::collection::vec(any::<u8>(), 0..1024))
                .prop_map(|(pre, rest)| [pre.as_slice(), b"<TiTlE", rest.as_slice()].concat()),
        ]) {
            let title = title(&body);
            prop_assert!(title.chars().count() <= MAX_TITLE);
            prop_assert_eq!(title.trim_start(), title.as_str());
            if title.chars().count() < MAX_TITLE {
                prop_assert_eq!(title.trim_end(), title.as_str());
            }
            prop_assert!(!title.contains("  "));
            prop_assert!(!title.chars().any(|c| c.is_whitespace() && c != ' '));
            let lower = body.to_ascii_lowercase();
            if !lower.windows(6).any(|w| w == b"<title") {
                prop_assert_eq!(title, "");
            }
        }

        /// A page with a title: exactly its text, whitespace collapsed, cut
        /// at `MAX_TITLE` characters, whatever its bytes (invalid UTF-8
        /// becomes U+FFFD, one per bad sequence).
        #[test]
        fn title_of_a_page(
            before in "[^<]{0,40}",
            attrs in "( [a-z]{1,6}=[a-z0-9\"]{0,6}){0,2}",
            text in proptest::collection::vec(any::<u8>().prop_map(|b| if b == b'<' { b'_' } else { b }), 0..600),
            after in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let page = [before.as_bytes(), b"<title", attrs.as_bytes(), b">", &text, b"</TITLE>", &after].concat();
            let expected: String = String::from_utf8_lossy(&text)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(MAX_TITLE)
                .collect();
            prop_assert_eq!(title(&page), expected);
        }
    }

    proptest! {
        // Header maps are costly to generate in a debug build.
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Header evidence is the longest prefix of the headers, in order,
        /// that fits `MAX_HEADER_EVIDENCE`; ids and cache status come from the
        /// most specific known header.
        #[test]
        fn header_evidence_is_a_bounded_prefix(map in header_map()) {
            let kept = keep_headers(headers_of(&map));
            let all: Vec<(&str, &[u8])> = map.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
            let used: usize = kept.iter().map(|h| cost(&h.name, &h.value)).sum();
            prop_assert!(used <= MAX_HEADER_EVIDENCE);
            prop_assert!(kept.len() <= all.len());
            for (k, (name, value)) in kept.iter().zip(&all) {
                prop_assert_eq!(k.name.as_str(), *name);
                prop_assert_eq!(k.value.as_slice(), *value);
            }
            if let Some((name, value)) = all.get(kept.len()) {
                prop_assert!(used + cost(name, value) > MAX_HEADER_EVIDENCE);
            }
            let first = |names: &[&str]| {
                names.iter().find_map(|n| map.get(*n)).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default()
            };
            prop_assert_eq!(edge_request_id(&headers_of(&map)), first(&REQUEST_ID_HEADERS));
            prop_assert_eq!(cache_status(&headers_of(&map)), first(&CACHE_HEADERS));
        }
    }
}
