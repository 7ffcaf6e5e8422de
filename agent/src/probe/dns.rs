//! Name resolution through a given DNS server (`--dns-server`, or a probe's
//! own `dns_server`): what that resolver answers is evidence — a region whose
//! resolver lies is DNS tampering. Uses hickory's resolver over UDP and TCP.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::Resolver;
use vantage_proto::domain::{Outcome, Stage};

use super::classify::Failure;

/// Asks `server` for the addresses of `host` (A and AAAA).
pub async fn lookup(
    server: SocketAddr,
    host: &str,
    bind_ip: Option<IpAddr>,
) -> Result<Vec<IpAddr>, Failure> {
    let connection = |mut config: ConnectionConfig| {
        config.port = server.port();
        config.bind_addr = bind_ip.map(|ip| SocketAddr::new(ip, 0));
        config
    };
    let mut name_server = NameServerConfig::udp_and_tcp(server.ip());
    name_server.connections = name_server
        .connections
        .into_iter()
        .map(connection)
        .collect();
    let config = ResolverConfig::from_parts(None, Vec::new(), vec![name_server]);
    let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .build()
        .map_err(|e| {
            Failure::new(
                Outcome::DnsFailure,
                Stage::Dns,
                format!("DNS server {server}: {e}"),
            )
        })?;
    let answers = resolver.lookup_ip(host).await.map_err(|e| {
        Failure::new(
            Outcome::DnsFailure,
            Stage::Dns,
            format!("{host} via {server}: {e}"),
        )
    })?;
    Ok(answers.iter().collect())
}
