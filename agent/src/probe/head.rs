//! The HTTP/1.1 request head exactly as curl shapes it (DESIGN §4 "On the
//! wire"): the request line, `Host`, `User-Agent`, `Accept: */*`, then the
//! spec's extra headers in their order and letter case, then `\r\n`.
//!
//! Middleboxes match bytes (`Host: www.example.com`), so a probe whose head
//! differs from a browser's or curl's in case or order can slip past a
//! carrier rule that curl trips — the probe must be the traffic it stands
//! for. The engine's HTTP/1.1 reader (`h1`) writes this head as
//! it is.

/// Renders the request head curl would send for `method target` to
/// `authority` with `user_agent` and `extra` headers (`-H`).
///
/// curl's rules for overrides are kept: an extra `Host` takes the place of
/// curl's own (first line after the request line); an extra `User-Agent` or
/// `Accept` replaces curl's, at the extra header's own position.
pub fn render(
    method: &str,
    target: &str,
    authority: &str,
    user_agent: &str,
    extra: &[(&str, &[u8])],
) -> Vec<u8> {
    let has = |name: &str| extra.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = Vec::with_capacity(128 + extra.len() * 48);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    match extra.iter().find(|(n, _)| n.eq_ignore_ascii_case("host")) {
        Some((name, value)) => push_header(&mut head, name, value),
        None => push_header(&mut head, "Host", authority.as_bytes()),
    }
    if !has("user-agent") && !user_agent.is_empty() {
        push_header(&mut head, "User-Agent", user_agent.as_bytes());
    }
    if !has("accept") {
        push_header(&mut head, "Accept", b"*/*");
    }
    for (name, value) in extra {
        if !name.eq_ignore_ascii_case("host") {
            push_header(&mut head, name, value);
        }
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn push_header(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_curls_default_order_and_case() {
        let head = render(
            "GET",
            "/a?x=1",
            "www.example.com",
            "curl/8.0",
            &[("EO-Connecting-IP", b"1.2.3.4"), ("x-lower", b"v")],
        );
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /a?x=1 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: curl/8.0\r\n\
             Accept: */*\r\nEO-Connecting-IP: 1.2.3.4\r\nx-lower: v\r\n\r\n"
        );
    }

    #[test]
    fn overrides_follow_curl() {
        let head = render(
            "GET",
            "/",
            "a.test",
            "ua",
            &[
                ("X-A", b"1"),
                ("accept", b"text/html"),
                ("HOST", b"b.test"),
                ("User-Agent", b"mine"),
            ],
        );
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET / HTTP/1.1\r\nHOST: b.test\r\nX-A: 1\r\naccept: text/html\r\nUser-Agent: mine\r\n\r\n"
        );
    }
}
