//! The `reproduce` commands: curl invocations in the seed's style
//! (`curl -vo/dev/null '<url>' --resolve host:port:ip`), so that a person can
//! confirm a finding from any shell without vantage.

use vantage_proto::domain::Route;

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

/// Where one reproduce command goes: the URL it requests and the host and
/// port that `--resolve` maps.
struct Aim {
    url: String,
    host: String,
    port: u16,
}

/// The request a probe of `route` to `address` made: a direct probe
/// replays the edge's pull (its protocol, Host and path, to the origin's
/// port); the edge route requests the client's URL.
fn aim(target: &Target, route: Route, address: &str) -> Aim {
    if route != Route::Direct {
        return Aim {
            url: target.url.clone(),
            host: target.host.clone(),
            port: target.port,
        };
    }
    let (_, port) = split_address(address);
    let port = port.unwrap_or(target.port);
    Aim {
        url: pull_url(target, port),
        host: target.pull.host.clone(),
        port,
    }
}

/// The pull URL to an origin listening on `port`.
fn pull_url(target: &Target, port: u16) -> String {
    let protocol = target.pull.protocol;
    let host = bracketed(&target.pull.host);
    if port == protocol.default_port() {
        format!("{}://{host}{}", protocol.as_str(), target.pull.path)
    } else {
        format!("{}://{host}:{port}{}", protocol.as_str(), target.pull.path)
    }
}

/// The routing arguments that send the aimed host to `address`:
/// `--resolve` when the port is the URL's, `--connect-to` when the address
/// names another port (Host and SNI stay the URL's either way); nothing for
/// `""`, which means the agent's own resolver.
fn routing(aim: &Aim, address: &str) -> String {
    if address.is_empty() {
        return String::new();
    }
    let (ip, port) = split_address(address);
    match port {
        Some(port) if port != aim.port => format!(
            " --connect-to {}:{}:{}:{}",
            aim.host,
            aim.port,
            bracketed(&ip),
            port
        ),
        _ => format!(" --resolve {}:{}:{}", aim.host, aim.port, bracketed(&ip)),
    }
}

/// `-A 'UA'` when the probes sent a User-Agent other than curl's own, so the
/// command's bytes match the probe's (a middlebox may match on them).
fn user_agent(target: &Target) -> String {
    if target.user_agent.starts_with("curl/") {
        String::new()
    } else {
        format!(" -A {}", quote(&target.user_agent))
    }
}

/// The start of a command: `curl FLAGS 'URL' ROUTING -A 'UA'`.
fn base(target: &Target, route: Route, address: &str, flags: &str) -> String {
    let aim = aim(target, route, address);
    format!(
        "curl {flags} {}{}{}",
        quote(&aim.url),
        routing(&aim, address),
        user_agent(target)
    )
}

/// One request of `route` to `address` with extra `headers`, bounded by
/// `max_time_s`.
pub(crate) fn curl(
    target: &Target,
    route: Route,
    address: &str,
    headers: &[(String, String)],
    max_time_s: Option<u64>,
) -> String {
    let mut cmd = base(target, route, address, "-vo/dev/null");
    for (name, value) in headers {
        cmd.push_str(" -H ");
        cmd.push_str(&quote(&format!("{name}: {value}")));
    }
    if let Some(secs) = max_time_s {
        cmd.push_str(&format!(" --max-time {secs}"));
    }
    cmd
}

/// The HTTPS control of an `http://` target: the same pull over TLS to
/// port 443 of the origin at `address` (`-k`: only the answer matters).
pub(crate) fn curl_https_control(target: &Target, address: &str) -> String {
    let mut https = target.clone();
    https.pull.protocol = crate::campaign::plan::PullProtocol::Https;
    let at = https_control_address(address);
    let mut cmd = base(&https, Route::Direct, &at, "-kvo/dev/null");
    cmd.push_str(" --max-time 30");
    cmd
}

/// Where the HTTPS control for the origin at `address` connects: port 443
/// of the same IP.
pub(crate) fn https_control_address(address: &str) -> String {
    let (ip, _) = split_address(address);
    format!("{}:443", bracketed(&ip))
}

/// A request that prints the time to first byte, to compare with the edge's
/// origin-response timeout.
pub(crate) fn curl_timed(target: &Target, address: &str, max_time_s: u64) -> String {
    format!(
        "{} --max-time {max_time_s}",
        base(
            target,
            Route::Direct,
            address,
            "-so/dev/null -w 'status %{http_code} ttfb %{time_starttransfer}s\\n'"
        )
    )
}

/// `count` concurrent requests to `address`, as a shell loop (the seed's
/// step 3.2).
pub(crate) fn burst(target: &Target, address: &str, count: usize) -> String {
    format!(
        "for i in $(seq 1 {}); do {} --max-time 30 & done; wait",
        count.max(2),
        base(
            target,
            Route::Direct,
            address,
            "-so/dev/null -w '%{http_code} %{time_total}\\n'"
        )
    )
}

/// What the local resolver answers for the host.
pub(crate) fn dig(target: &Target) -> String {
    format!("dig +short {} A {} AAAA", target.host, target.host)
}
