//! Address parsing shared by the agent, the coordinator and the CLI:
//! `host:port` for coordinator addresses and `IP[:PORT]` for resolve
//! overrides and DNS servers.

use std::net::{IpAddr, SocketAddr};

/// An address that is not `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad coordinator address {0:?}: expected host:port")]
pub struct BadAddress(pub String);

/// Splits `host:port` (IPv6 hosts in brackets) into its parts.
pub fn split_host_port(addr: &str) -> Result<(String, u16), BadAddress> {
    if let Ok(sock) = addr.parse::<SocketAddr>() {
        return Ok((sock.ip().to_string(), sock.port()));
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| BadAddress(addr.to_string()))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| BadAddress(addr.to_string()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(BadAddress(addr.to_string()));
    }
    Ok((host.to_string(), port))
}

/// Parses `IP` or `IP:PORT` (IPv6 optionally in brackets); without a port
/// `default_port` is used, like `curl --resolve` takes the URL's port.
pub fn parse_ip_port(text: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(sock) = text.parse::<SocketAddr>() {
        return Some(sock);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("127.0.0.1:80").unwrap(),
            ("127.0.0.1".into(), 80)
        );
        assert_eq!(split_host_port("[::1]:443").unwrap(), ("::1".into(), 443));
        assert_eq!(
            split_host_port("example.com:7443").unwrap(),
            ("example.com".into(), 7443)
        );
        assert!(split_host_port("example.com").is_err());
        assert!(split_host_port(":80").is_err());
        assert!(split_host_port("host:99999").is_err());
    }

    #[test]
    fn overrides_like_curl_resolve() {
        assert_eq!(
            parse_ip_port("192.0.2.1", 80),
            Some("192.0.2.1:80".parse().unwrap())
        );
        assert_eq!(
            parse_ip_port("192.0.2.1:8080", 80),
            Some("192.0.2.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_ip_port("[::1]:8443", 80),
            Some("[::1]:8443".parse().unwrap())
        );
        assert_eq!(
            parse_ip_port("::1", 443),
            Some("[::1]:443".parse().unwrap())
        );
        assert_eq!(parse_ip_port("example.com", 80), None);
    }
}
