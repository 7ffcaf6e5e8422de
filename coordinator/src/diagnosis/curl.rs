//! The `reproduce` commands: curl invocations in the seed's style
//! (`curl -vo/dev/null '<url>' --resolve host:port:ip`), so that a person can
//! confirm a finding from any shell without vantage.

use super::Target;

/// Splits `ip`, `ip:port`, `v6`, `[v6]` or `[v6]:port` into the bare IP and
/// the port, if one was given.
pub(crate) fn split_address(address: &str) -> (String, Option<u16>) {
    if let Some(rest) = address.strip_prefix('[') {
        if let Some((ip, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return (ip.to_string(), port);
        }
    }
    // More than one colon and no brackets: a bare IPv6 address.
    if address.matches(':').count() == 1 {
        if let Some((ip, port)) = address.split_once(':') {
            if let Ok(port) = port.parse() {
                return (ip.to_string(), Some(port));
            }
        }
    }
    (address.to_string(), None)
}

/// An IP as curl's `--resolve`/`--connect-to` want it: IPv6 in brackets.
fn bracketed(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// Single-quotes `s` for a POSIX shell.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The routing arguments that send the URL's host to `address`: `--resolve`
/// when the port is the URL's, `--connect-to` when the address names another
/// port (Host and SNI stay the URL's either way); nothing for `""`, which
/// means the agent's own resolver.
fn routing(target: &Target, address: &str) -> String {
    if address.is_empty() {
        return String::new();
    }
    let (ip, port) = split_address(address);
    match port {
        Some(port) if port != target.port => format!(
            " --connect-to {}:{}:{}:{}",
            target.host,
            target.port,
            bracketed(&ip),
            port
        ),
        _ => format!(
            " --resolve {}:{}:{}",
            target.host,
            target.port,
            bracketed(&ip)
        ),
    }
}

/// One request to `address` with extra `headers`, bounded by `max_time_s`.
pub(crate) fn curl(
    target: &Target,
    address: &str,
    headers: &[(String, String)],
    max_time_s: Option<u64>,
) -> String {
    let mut cmd = format!(
        "curl -vo/dev/null {}{}",
        quote(&target.url),
        routing(target, address)
    );
    for (name, value) in headers {
        cmd.push_str(" -H ");
        cmd.push_str(&quote(&format!("{name}: {value}")));
    }
    if let Some(secs) = max_time_s {
        cmd.push_str(&format!(" --max-time {secs}"));
    }
    cmd
}

/// A request that prints the time to first byte, to compare with the edge's
/// origin-response timeout.
pub(crate) fn curl_timed(target: &Target, address: &str, max_time_s: u64) -> String {
    format!(
        "curl -so/dev/null -w 'status %{{http_code}} ttfb %{{time_starttransfer}}s\\n' {}{} --max-time {max_time_s}",
        quote(&target.url),
        routing(target, address)
    )
}

/// `count` concurrent requests to `address`, as a shell loop (the seed's
/// step 3.2).
pub(crate) fn burst(target: &Target, address: &str, count: usize) -> String {
    format!(
        "for i in $(seq 1 {}); do curl -so/dev/null -w '%{{http_code}} %{{time_total}}\\n' {}{} --max-time 30 & done; wait",
        count.max(2),
        quote(&target.url),
        routing(target, address)
    )
}

/// What the local resolver answers for the host.
pub(crate) fn dig(target: &Target) -> String {
    format!("dig +short {} A {} AAAA", target.host, target.host)
}
