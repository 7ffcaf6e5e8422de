//! Access-log line parsing for the origin witness: the nginx/Apache
//! `combined` and `common` formats, JSON-lines logs, and the extraction of a
//! probe nonce from a request URI.
//!
//! Everything here is total: any input line, however malformed, yields either
//! an entry or a [`ParseError`] whose message is bounded in length, because
//! an access log is written by whoever sends requests to the origin.

use serde_json::{Map, Value};

/// Longest excerpt of the offending input quoted in a [`ParseError`], so that
/// a 64 KiB garbage line does not become a 64 KiB log message.
const SNIPPET_CHARS: usize = 48;

/// Longest accepted nonce value; real nonces are far shorter, anything longer
/// is somebody else's parameter or an attack on our memory.
const MAX_NONCE_CHARS: usize = 128;

/// Longest accepted client field in text formats: an IPv6 address with a
/// port, or a reverse-resolved host name, both fit well within this.
const MAX_CLIENT_CHARS: usize = 256;

/// Field names tried, in order, when [`LogFormat::Auto`] meets a JSON line
/// and so has no configured names: the usual nginx variable names first.
const AUTO_URI_FIELDS: &[&str] = &["request_uri", "uri", "url", "request", "path"];
const AUTO_CLIENT_FIELDS: &[&str] = &[
    "remote_addr",
    "client",
    "client_ip",
    "clientip",
    "remote_ip",
    "ip",
];
const AUTO_TIME_FIELDS: &[&str] = &[
    "time",
    "time_local",
    "time_iso8601",
    "timestamp",
    "@timestamp",
];
const JSON_METHOD_FIELDS: &[&str] = &["request_method", "method"];
const JSON_STATUS_FIELDS: &[&str] = &["status", "status_code"];

/// How the lines of the followed access log are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    /// NCSA combined (the nginx and Apache default): common plus quoted
    /// referer and user agent. Extra fields after the user agent are
    /// tolerated, since many sites append some.
    Combined,
    /// NCSA common: client, ident, user, `[time]`, `"request"`, status, bytes.
    Common,
    /// One flat JSON object per line, with the named fields.
    JsonLines {
        /// Field holding the request URI (path and query, or a full URL, or
        /// a whole request line such as nginx's `$request`).
        uri_field: String,
        /// Field holding the client (peer) address.
        client_field: String,
        /// Field holding the time, when the log records one worth reporting.
        time_field: Option<String>,
    },
    /// JSON (with the usual nginx field names) if the line starts with `{`,
    /// else combined, else common.
    Auto,
}

/// One access-log line, as logged: nothing is normalised here, so that what
/// the witness reports can be matched against the log by a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The client as logged: an IP address, `IP:port`, `[IPv6]:port`, or a
    /// host name when the server resolves them.
    pub client: String,
    /// The request method; empty when a JSON log does not record it.
    pub method: String,
    /// The request target: path and query (a full URL is cut down to them).
    pub uri: String,
    /// The response status, when logged as a number.
    pub status: Option<u16>,
    /// The time as logged (the text between `[` and `]` for NCSA formats).
    pub time: Option<String>,
}

/// Why a line could not be parsed. Messages quote at most a short excerpt of
/// the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line was empty or only whitespace.
    #[error("empty line")]
    Empty,
    /// A required field was absent (the line ended early).
    #[error("missing {0}")]
    Missing(&'static str),
    /// A field was present but not in the expected shape.
    #[error("malformed {field}: {excerpt:?}")]
    Malformed {
        /// Which field.
        field: &'static str,
        /// A bounded excerpt of what was found there.
        excerpt: String,
    },
    /// A JSON line was not a JSON object.
    #[error("not a JSON object: {0}")]
    Json(String),
}

/// Parses one access-log line (without its newline) in the given format.
///
/// Invalid UTF-8 is the caller's business: convert lossily first (the
/// follower does), since the nonce and the address are ASCII anyway.
pub fn parse_line(format: &LogFormat, line: &str) -> Result<LogEntry, ParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    match format {
        LogFormat::Combined => parse_ncsa(line, true),
        LogFormat::Common => parse_ncsa(line, false),
        LogFormat::JsonLines {
            uri_field,
            client_field,
            time_field,
        } => {
            let time_fields: &[&str] = match time_field {
                Some(name) => &[name.as_str()],
                None => &[],
            };
            parse_json(
                line,
                &[uri_field.as_str()],
                &[client_field.as_str()],
                time_fields,
            )
        }
        LogFormat::Auto => {
            if line.trim_start().starts_with('{') {
                parse_json(line, AUTO_URI_FIELDS, AUTO_CLIENT_FIELDS, AUTO_TIME_FIELDS)
            } else {
                // Combined first: it is the default almost everywhere, and
                // its error is the more informative one when both fail.
                parse_ncsa(line, true).or_else(|err| parse_ncsa(line, false).map_err(|_| err))
            }
        }
    }
}

/// Finds `param=value` in the query string of `uri` and returns the value.
///
/// Pairs may be separated by `&` or `;`, a `#fragment` is ignored, and the
/// first occurrence with a valid value wins. A valid value is 1 to 128
/// characters of `[A-Za-z0-9._-]` — the shape of the nonces the agent sends —
/// so that a value that is not ours (or an attempt to inject text into the
/// report) is ignored rather than cut to fit. No percent-decoding is done:
/// the agent never sends characters that would need it.
pub fn nonce_in(uri: &str, param: &str) -> Option<String> {
    if param.is_empty() {
        return None;
    }
    let without_fragment = uri.split('#').next().unwrap_or(uri);
    let (_, query) = without_fragment.split_once('?')?;
    query
        .split(['&', ';'])
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| *key == param)
        .map(|(_, value)| value)
        .find(|value| valid_nonce(value))
        .map(str::to_owned)
}

fn valid_nonce(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_NONCE_CHARS
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A bounded, printable excerpt of `s` for error messages.
fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(SNIPPET_CHARS).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn malformed(field: &'static str, found: &str) -> ParseError {
    ParseError::Malformed {
        field,
        excerpt: excerpt(found),
    }
}

/// A cursor over an NCSA-style line.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn skip_spaces(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t']);
    }

    /// The next space-delimited token.
    fn token(&mut self, field: &'static str) -> Result<&'a str, ParseError> {
        self.skip_spaces();
        if self.rest.is_empty() {
            return Err(ParseError::Missing(field));
        }
        let end = self.rest.find([' ', '\t']).unwrap_or(self.rest.len());
        let (token, rest) = self.rest.split_at(end);
        self.rest = rest;
        Ok(token)
    }

    /// The text between `[` and the next `]`.
    fn bracketed(&mut self, field: &'static str) -> Result<&'a str, ParseError> {
        self.skip_spaces();
        let Some(inner) = self.rest.strip_prefix('[') else {
            return Err(if self.rest.is_empty() {
                ParseError::Missing(field)
            } else {
                malformed(field, self.rest)
            });
        };
        let end = inner.find(']').ok_or_else(|| malformed(field, self.rest))?;
        self.rest = &inner[end + 1..];
        Ok(&inner[..end])
    }

    /// The text between `"` and the next unescaped `"`, with `\"` and `\\`
    /// unescaped (other escapes such as nginx's `\xHH` are kept as logged:
    /// they stand for bytes that are not text).
    fn quoted(&mut self, field: &'static str) -> Result<String, ParseError> {
        self.skip_spaces();
        let Some(inner) = self.rest.strip_prefix('"') else {
            return Err(if self.rest.is_empty() {
                ParseError::Missing(field)
            } else {
                malformed(field, self.rest)
            });
        };
        let mut out = String::new();
        let mut chars = inner.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &inner[i + 1..];
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, e @ ('"' | '\\'))) => out.push(e),
                    Some((_, e)) => {
                        out.push('\\');
                        out.push(e);
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(malformed(field, self.rest))
    }
}

/// Parses the NCSA common layout, and with `combined` also the quoted referer
/// and user agent after it.
fn parse_ncsa(line: &str, combined: bool) -> Result<LogEntry, ParseError> {
    let mut cur = Cursor { rest: line };
    let client = cur.token("client")?;
    if client.len() > MAX_CLIENT_CHARS
        || client.starts_with('"')
        || client.chars().any(char::is_control)
    {
        return Err(malformed("client", client));
    }
    cur.token("ident")?;
    cur.token("user")?;
    let time = cur.bracketed("time")?;
    let request = cur.quoted("request")?;
    let (method, uri) = parse_request_line(&request)?;
    let status = cur.token("status")?;
    let status = match status {
        "-" => None,
        s if s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()) => {
            Some(s.parse::<u16>().map_err(|_| malformed("status", s))?)
        }
        s => return Err(malformed("status", s)),
    };
    let bytes = cur.token("bytes")?;
    if bytes != "-" && !bytes.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("bytes", bytes));
    }
    if combined {
        cur.quoted("referer")?;
        cur.quoted("user agent")?;
    } else {
        // Common must end here, or a combined line whose user agent could
        // not be read would pass as common with its tail ignored silently.
        cur.skip_spaces();
        if !cur.rest.is_empty() {
            return Err(malformed("end of line", cur.rest));
        }
    }
    Ok(LogEntry {
        client: client.to_owned(),
        method: method.to_owned(),
        uri: uri.to_owned(),
        status,
        time: Some(time.to_owned()),
    })
}

/// Splits `METHOD target [HTTP/x.y]` into method and target.
fn parse_request_line(request: &str) -> Result<(&str, &str), ParseError> {
    let mut parts = request.split(' ');
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let protocol = parts.next();
    // A method is an RFC 9110 token; uppercase letters in practice, and
    // insisting on them rejects TLS handshakes and scanners' binary junk,
    // which nginx logs as `\x16\x03...` in the request field.
    let method_ok = !method.is_empty()
        && method.len() <= 32
        && method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
    let protocol_ok = protocol.is_none_or(|p| p.starts_with("HTTP/"));
    if !method_ok || target.is_empty() || !protocol_ok || parts.next().is_some() {
        return Err(malformed("request", request));
    }
    Ok((method, target))
}

/// Parses a JSON-lines entry, taking the first present field of each list.
fn parse_json(
    line: &str,
    uri_fields: &[&str],
    client_fields: &[&str],
    time_fields: &[&str],
) -> Result<LogEntry, ParseError> {
    let object: Map<String, Value> =
        serde_json::from_str(line).map_err(|_| ParseError::Json(excerpt(line)))?;
    let uri_value = first_field(&object, uri_fields).ok_or(ParseError::Missing("uri"))?;
    let client = first_field(&object, client_fields).ok_or(ParseError::Missing("client"))?;
    if client.is_empty() || client.len() > MAX_CLIENT_CHARS {
        return Err(malformed("client", &client));
    }
    let time = first_field(&object, time_fields);
    let mut method = first_field(&object, JSON_METHOD_FIELDS).unwrap_or_default();

    // The field may hold a whole request line (nginx `$request`).
    let uri = if uri_value.contains(' ') {
        let (m, target) = parse_request_line(&uri_value)?;
        if method.is_empty() {
            method = m.to_owned();
        }
        target.to_owned()
    } else {
        uri_value
    };
    let uri = path_and_query(&uri).ok_or_else(|| malformed("uri", &uri))?;
    let status = first_field(&object, JSON_STATUS_FIELDS).and_then(|s| s.parse::<u16>().ok());
    Ok(LogEntry {
        client,
        method,
        uri,
        status,
        time,
    })
}

/// The first of `names` present in `object` with a string or number value.
fn first_field(object: &Map<String, Value>, names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| match object.get(*name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// The path and query of a request target: origin-form targets are kept, an
/// absolute URL loses its scheme and authority.
fn path_and_query(uri: &str) -> Option<String> {
    if uri.is_empty() {
        return None;
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Some(uri.to_owned());
    };
    // `/a?u=http://x` is a path whose query holds a URL, not a URL.
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Some(uri.to_owned());
    }
    match rest.find(['/', '?', '#']) {
        Some(i) if rest.as_bytes()[i] == b'/' => Some(rest[i..].to_owned()),
        // `http://host?q` has an empty path, which means `/`.
        Some(i) => Some(format!("/{}", &rest[i..])),
        None => Some("/".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn combined(line: &str) -> LogEntry {
        match parse_line(&LogFormat::Combined, line) {
            Ok(entry) => entry,
            Err(err) => panic!("{line:?}: {err}"),
        }
    }

    #[test]
    fn nginx_combined() {
        let e = combined(
            r#"1.2.3.4 - - [24/Nov/2026:02:10:39 +0000] "GET /a?__vantage=x-1-0 HTTP/1.1" 200 123 "-" "curl/7.88.1""#,
        );
        assert_eq!(e.client, "1.2.3.4");
        assert_eq!(e.method, "GET");
        assert_eq!(e.uri, "/a?__vantage=x-1-0");
        assert_eq!(e.status, Some(200));
        assert_eq!(e.time.as_deref(), Some("24/Nov/2026:02:10:39 +0000"));
    }

    #[test]
    fn apache_combined_with_user_and_referer() {
        let e = combined(
            r#"203.0.113.9 - frank [10/Oct/2026:13:55:36 -0700] "POST /login.php?next=%2F HTTP/1.0" 302 - "http://example.com/start.html" "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36""#,
        );
        assert_eq!(e.client, "203.0.113.9");
        assert_eq!(e.method, "POST");
        assert_eq!(e.uri, "/login.php?next=%2F");
        assert_eq!(e.status, Some(302));
    }

    #[test]
    fn ipv6_clients() {
        let e = combined(
            r#"2001:db8::1 - - [24/Nov/2026:02:10:39 +0000] "GET /?__vantage=ab-2-1 HTTP/2.0" 200 5 "-" "curl/8.5.0""#,
        );
        assert_eq!(e.client, "2001:db8::1");
        let e = combined(
            r#"[2001:db8::2]:50432 - - [24/Nov/2026:02:10:39 +0000] "GET / HTTP/1.1" 200 5 "-" "-""#,
        );
        assert_eq!(e.client, "[2001:db8::2]:50432");
        let e = combined(
            r#"::ffff:198.51.100.7 - - [24/Nov/2026:02:10:39 +0000] "HEAD /x HTTP/1.1" 404 0 "-" "-""#,
        );
        assert_eq!(e.client, "::ffff:198.51.100.7");
        assert_eq!(e.method, "HEAD");
        assert_eq!(e.status, Some(404));
    }

    #[test]
    fn http2_and_http09_request_lines() {
        let e = combined(
            r#"10.0.0.1 - - [24/Nov/2026:02:10:39 +0000] "GET /img/a.png?__vantage=q-3-0 HTTP/2.0" 200 10 "-" "h2load""#,
        );
        assert_eq!(e.uri, "/img/a.png?__vantage=q-3-0");
        let e = combined(r#"10.0.0.1 - - [24/Nov/2026:02:10:39 +0000] "GET /old" 200 10 "-" "-""#);
        assert_eq!(e.uri, "/old");
    }

    #[test]
    fn escaped_quotes_in_request_and_agent() {
        let e = combined(
            r#"10.0.0.2 - - [24/Nov/2026:02:10:39 +0000] "GET /q?s=\"hi\"&__vantage=n-1-0 HTTP/1.1" 200 1 "-" "Evil \"agent\" \x22x\x22""#,
        );
        assert_eq!(e.uri, r#"/q?s="hi"&__vantage=n-1-0"#);
        assert_eq!(nonce_in(&e.uri, "__vantage").as_deref(), Some("n-1-0"));
        // A backslash at the end of a quoted field does not escape the quote
        // once it is itself escaped.
        let e = combined(
            r#"10.0.0.2 - - [24/Nov/2026:02:10:39 +0000] "GET /a\\ HTTP/1.1" 200 1 "-" "ua\\""#,
        );
        assert_eq!(e.uri, r"/a\");
    }

    #[test]
    fn malformed_request_lines_are_errors() {
        for request in [
            "-",
            r"\x16\x03\x01\x02\x00\x01\x00\x01\xFC\x03\x03",
            "",
            "GET",
            "get / HTTP/1.1",
            "GET / HTTP/1.1 extra",
            "GET / SPDY/3",
            "PRI * HTTP/2.0 junk",
        ] {
            let line = format!(
                r#"192.0.2.1 - - [24/Nov/2026:02:10:39 +0000] "{request}" 400 150 "-" "-""#
            );
            let err = parse_line(&LogFormat::Combined, &line)
                .err()
                .unwrap_or_else(|| panic!("{request:?} parsed"));
            assert!(
                matches!(
                    err,
                    ParseError::Malformed {
                        field: "request",
                        ..
                    }
                ),
                "{request:?}: {err:?}"
            );
            assert!(parse_line(&LogFormat::Auto, &line).is_err());
        }
    }

    #[test]
    fn common_format_and_missing_fields() {
        let line = r#"127.0.0.1 - - [24/Nov/2026:02:10:39 +0000] "GET /c?__vantage=c-0-0 HTTP/1.1" 200 2326"#;
        let e = parse_line(&LogFormat::Common, line).unwrap();
        assert_eq!(e.uri, "/c?__vantage=c-0-0");
        // Combined wants the referer and agent; auto falls back to common.
        assert_eq!(
            parse_line(&LogFormat::Combined, line),
            Err(ParseError::Missing("referer"))
        );
        assert_eq!(parse_line(&LogFormat::Auto, line).unwrap(), e);
        // Common refuses trailing junk, combined takes extra trailing fields.
        let combined_line = format!(r#"{line} "-" "curl/8" "198.51.100.1" 0.003"#);
        assert!(parse_line(&LogFormat::Common, &combined_line).is_err());
        assert_eq!(parse_line(&LogFormat::Combined, &combined_line).unwrap(), e);

        for (line, want) in [
            ("127.0.0.1", ParseError::Missing("ident")),
            ("127.0.0.1 - -", ParseError::Missing("time")),
            (
                "127.0.0.1 - - [24/Nov/2026:02:10:39 +0000]",
                ParseError::Missing("request"),
            ),
            (
                r#"127.0.0.1 - - [24/Nov/2026:02:10:39 +0000] "GET / HTTP/1.1""#,
                ParseError::Missing("status"),
            ),
            (
                r#"127.0.0.1 - - [24/Nov/2026:02:10:39 +0000] "GET / HTTP/1.1" 200"#,
                ParseError::Missing("bytes"),
            ),
            ("   ", ParseError::Empty),
        ] {
            assert_eq!(parse_line(&LogFormat::Common, line), Err(want), "{line:?}");
        }
        let unterminated = r#"127.0.0.1 - - [24/Nov/2026:02:10:39 +0000] "GET / HTTP/1.1 200 1"#;
        assert!(matches!(
            parse_line(&LogFormat::Common, unterminated),
            Err(ParseError::Malformed {
                field: "request",
                ..
            })
        ));
        let bad_status = r#"127.0.0.1 - - [t] "GET / HTTP/1.1" 2000 1"#;
        assert!(matches!(
            parse_line(&LogFormat::Common, bad_status),
            Err(ParseError::Malformed {
                field: "status",
                ..
            })
        ));
        let dash_status = r#"127.0.0.1 - - [t] "GET / HTTP/1.1" - -"#;
        assert_eq!(
            parse_line(&LogFormat::Common, dash_status).unwrap().status,
            None
        );
    }

    #[test]
    fn garbage_is_an_error_with_a_bounded_message() {
        let alphabet = ['"', '[', ']', '{', '}', ' ', '\\', 'x', '\u{1}', '\u{fffd}'];
        let garbage: String = (0..10 * 1024)
            .map(|i| alphabet[i % alphabet.len()])
            .collect();
        for format in [LogFormat::Combined, LogFormat::Common, LogFormat::Auto] {
            let err = parse_line(&format, &garbage).unwrap_err();
            assert!(err.to_string().len() < 256, "{format:?}: {err}");
        }
        let json_garbage = format!("{{{garbage}");
        let err = parse_line(&LogFormat::Auto, &json_garbage).unwrap_err();
        assert!(err.to_string().len() < 256, "{err}");
        let long_client = format!(
            "{} - - [t] \"GET / HTTP/1.1\" 200 1 \"-\" \"-\"",
            "a".repeat(10_000)
        );
        let err = parse_line(&LogFormat::Combined, &long_client).unwrap_err();
        assert!(matches!(
            err,
            ParseError::Malformed {
                field: "client",
                ..
            }
        ));
        assert!(err.to_string().len() < 256, "{err}");
    }

    #[test]
    fn lossily_converted_invalid_utf8_parses() {
        let bytes = b"10.1.1.1 - - [24/Nov/2026:02:10:39 +0000] \"GET /\xff\xfe?__vantage=u-1-0 HTTP/1.1\" 200 1 \"-\" \"\xc3(\"";
        let line = String::from_utf8_lossy(bytes);
        let e = combined(&line);
        assert_eq!(nonce_in(&e.uri, "__vantage").as_deref(), Some("u-1-0"));
    }

    #[test]
    fn json_lines() {
        let format = LogFormat::JsonLines {
            uri_field: "req".into(),
            client_field: "peer".into(),
            time_field: Some("ts".into()),
        };
        let e = parse_line(
            &format,
            r#"{"req":"/j?__vantage=j-1-0","peer":"198.51.100.4:443","ts":"2026-11-24T02:10:39Z","status":200,"method":"GET"}"#,
        )
        .unwrap();
        assert_eq!(e.uri, "/j?__vantage=j-1-0");
        assert_eq!(e.client, "198.51.100.4:443");
        assert_eq!(e.time.as_deref(), Some("2026-11-24T02:10:39Z"));
        assert_eq!(e.status, Some(200));
        assert_eq!(e.method, "GET");

        // A full URL keeps only path and query; a numeric time is fine.
        let e = parse_line(
            &format,
            r#"{"req":"https://origin.example:8443/p/q?__vantage=k-2-0","peer":"2001:db8::9","ts":1795918239.5}"#,
        )
        .unwrap();
        assert_eq!(e.uri, "/p/q?__vantage=k-2-0");
        assert_eq!(e.time.as_deref(), Some("1795918239.5"));
        assert_eq!(e.method, "");
        assert_eq!(e.status, None);
        let e = parse_line(&format, r#"{"req":"http://h?__vantage=z","peer":"a"}"#).unwrap();
        assert_eq!(e.uri, "/?__vantage=z");
        // A URL inside the query is not mistaken for an absolute URL.
        let e = parse_line(&format, r#"{"req":"/r?u=http://x/y","peer":"a"}"#).unwrap();
        assert_eq!(e.uri, "/r?u=http://x/y");

        // A whole request line in the URI field.
        let e = parse_line(
            &format,
            r#"{"req":"PUT /up?__vantage=r-1-1 HTTP/1.1","peer":"a"}"#,
        )
        .unwrap();
        assert_eq!(
            (e.method.as_str(), e.uri.as_str()),
            ("PUT", "/up?__vantage=r-1-1")
        );

        assert_eq!(
            parse_line(&format, r#"{"peer":"a"}"#),
            Err(ParseError::Missing("uri"))
        );
        assert_eq!(
            parse_line(&format, r#"{"req":"/","peer":{"ip":"a"}}"#),
            Err(ParseError::Missing("client"))
        );
        assert!(matches!(
            parse_line(&format, "[1,2]"),
            Err(ParseError::Json(_))
        ));
        assert!(matches!(
            parse_line(&format, r#"{"req":"/""#),
            Err(ParseError::Json(_))
        ));
        assert!(parse_line(&format, r#"{"req":"-","peer":"a"}"#).is_ok());
        assert!(parse_line(&format, r#"{"req":"","peer":"a"}"#).is_err());
    }

    #[test]
    fn auto_detects_json_with_nginx_names() {
        let e = parse_line(
            &LogFormat::Auto,
            r#"  {"time_local":"24/Nov/2026:02:10:39 +0000","remote_addr":"192.0.2.8","request_uri":"/n?__vantage=a-1-0","status":"304"}"#,
        )
        .unwrap();
        assert_eq!(e.client, "192.0.2.8");
        assert_eq!(e.uri, "/n?__vantage=a-1-0");
        assert_eq!(e.status, Some(304));
        assert_eq!(e.time.as_deref(), Some("24/Nov/2026:02:10:39 +0000"));
    }

    #[test]
    fn nonce_extraction() {
        let p = "__vantage";
        let cases: &[(&str, Option<&str>)] = &[
            ("/a?__vantage=3f2a9c-1-0", Some("3f2a9c-1-0")),
            ("/a?x=1&__vantage=n-1-0&y=2", Some("n-1-0")),
            ("/a?x=1;__vantage=n-1-0;y=2", Some("n-1-0")),
            ("/a?__vantage=n-1-0#frag", Some("n-1-0")),
            ("/a#?__vantage=n-1-0", None),
            ("/a?__vantage=", None),
            ("/a?__vantage", None),
            ("/a?__vantagex=n-1-0", None),
            ("/a?x__vantage=n-1-0", None),
            ("/a/__vantage=n-1-0", None),
            ("/a?__vantage=n%2D1", None),
            ("/a?__vantage=<script>&__vantage=ok.2_x-1", Some("ok.2_x-1")),
            ("/a?__vantage=a=b", None),
            ("/a?__VANTAGE=n-1-0", None),
            ("", None),
            ("?__vantage=q", Some("q")),
        ];
        for (uri, want) in cases {
            assert_eq!(nonce_in(uri, p).as_deref(), *want, "{uri:?}");
        }
        let long = format!("/a?__vantage={}", "a".repeat(MAX_NONCE_CHARS));
        assert_eq!(nonce_in(&long, p).map(|n| n.len()), Some(MAX_NONCE_CHARS));
        let too_long = format!("/a?__vantage={}", "a".repeat(MAX_NONCE_CHARS + 1));
        assert_eq!(nonce_in(&too_long, p), None);
        assert_eq!(nonce_in("/a?=x", ""), None);
        assert_eq!(nonce_in("/a?n=x", "n").as_deref(), Some("x"));
    }
}
