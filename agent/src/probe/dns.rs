//! Name resolution through a given DNS server (`--dns-server`, or a probe's
//! own `dns_server`): what that resolver answers is evidence — a region whose
//! resolver lies is DNS tampering. Uses hickory's resolver over UDP and TCP.
//!
//! The DNS server is an address the agent sends packets to, so it obeys the
//! same SSRF policy as an HTTP target: the engine checks it before asking
//! (a clear `blocked_by_policy` result), and the resolver's socket factory
//! ([`GuardedRuntime`]) checks every socket hickory opens again, so no query
//! can leave for a refused address whatever hickory decides to retry.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_resolver::net::runtime::{
    RuntimeProvider, TokioHandle, TokioRuntimeProvider, TokioTime,
};
use hickory_resolver::Resolver;
use vantage_proto::domain::{Outcome, Stage};

use super::classify::Failure;
use super::rate::RateLimiter;
use crate::safety::TargetPolicy;

/// Queries one lookup sends in the normal case (A and AAAA): what the
/// per-target rate cap charges for it before it starts, so that the wait is
/// not counted against hickory's own timeouts. Every further socket the
/// lookup opens (a retry after a timeout, TCP after a truncated answer)
/// takes its own token in [`GuardedRuntime`], so no query escapes the cap.
pub const QUERIES_PER_LOOKUP: u32 = 2;

/// hickory's Tokio runtime with the agent's target policy in front of every
/// UDP socket and TCP connection it makes (hickory opens a fresh UDP socket
/// per query), and the per-target rate cap on those past the prepaid ones.
/// One instance serves one lookup.
#[derive(Clone)]
pub struct GuardedRuntime {
    inner: TokioRuntimeProvider,
    policy: TargetPolicy,
    rate: Option<Arc<RateLimiter>>,
    /// Sockets opened so far by this lookup.
    opened: Arc<AtomicU32>,
    /// Sockets already paid for by the caller.
    prepaid: u32,
}

impl GuardedRuntime {
    /// A runtime that refuses to reach what `policy` refuses; without a
    /// rate limiter it charges nothing.
    pub fn new(policy: TargetPolicy) -> Self {
        GuardedRuntime {
            inner: TokioRuntimeProvider::default(),
            policy,
            rate: None,
            opened: Arc::default(),
            prepaid: 0,
        }
    }

    /// Also charges `rate` one token per socket after the first `prepaid`.
    pub fn with_rate(mut self, rate: Option<Arc<RateLimiter>>, prepaid: u32) -> Self {
        self.rate = rate;
        self.prepaid = prepaid;
        self
    }

    fn admit(&self, server: SocketAddr) -> io::Result<()> {
        self.policy
            .check(server.ip())
            .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e.to_string()))
    }

    /// The rate cap's wait for one more socket to `server`, if it is due.
    fn charge(&self, server: SocketAddr) -> Option<impl Future<Output = ()> + Send + 'static> {
        let rate = self.rate.clone()?;
        let opened = self.opened.fetch_add(1, Ordering::Relaxed);
        (opened >= self.prepaid).then_some(async move { rate.acquire(server.ip()).await })
    }
}

impl RuntimeProvider for GuardedRuntime {
    type Handle = TokioHandle;
    type Timer = TokioTime;
    type Udp = tokio::net::UdpSocket;
    type Tcp = AsyncIoTokioAsStd<tokio::net::TcpStream>;

    fn create_handle(&self) -> Self::Handle {
        self.inner.create_handle()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> Pin<Box<dyn Send + Future<Output = Result<Self::Tcp, io::Error>>>> {
        if let Err(e) = self.admit(server_addr) {
            return Box::pin(async move { Err(e) });
        }
        let charge = self.charge(server_addr);
        let connect = self.inner.connect_tcp(server_addr, bind_addr, timeout);
        Box::pin(async move {
            if let Some(wait) = charge {
                wait.await;
            }
            connect.await
        })
    }

    fn bind_udp(
        &self,
        local_addr: SocketAddr,
        server_addr: SocketAddr,
    ) -> Pin<Box<dyn Send + Future<Output = Result<Self::Udp, io::Error>>>> {
        if let Err(e) = self.admit(server_addr) {
            return Box::pin(async move { Err(e) });
        }
        let charge = self.charge(server_addr);
        let bind = self.inner.bind_udp(local_addr, server_addr);
        Box::pin(async move {
            if let Some(wait) = charge {
                wait.await;
            }
            bind.await
        })
    }
}

/// Asks `server` for the addresses of `host` (A and AAAA). The caller has
/// checked `server` against `policy` and taken [`QUERIES_PER_LOOKUP`] of
/// its rate tokens from `rate`; further queries take their own.
pub async fn lookup(
    server: SocketAddr,
    host: &str,
    bind_ip: Option<IpAddr>,
    policy: TargetPolicy,
    rate: Option<Arc<RateLimiter>>,
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
    let runtime = GuardedRuntime::new(policy).with_rate(rate, QUERIES_PER_LOOKUP);
    let resolver = Resolver::builder_with_config(config, runtime)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_guarded_runtime_opens_no_socket_to_a_refused_server() {
        // A bound socket that must receive nothing.
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let runtime = GuardedRuntime::new(TargetPolicy::default());
        let err = runtime
            .bind_udp("127.0.0.1:0".parse().unwrap(), addr)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("loopback"), "{err}");
        let err = runtime
            .connect_tcp(addr, None, None)
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        // Even asked directly, the lookup sends nothing.
        let failure = lookup(addr, "example.com", None, TargetPolicy::default(), None)
            .await
            .unwrap_err();
        assert_eq!(failure.outcome, Outcome::DnsFailure);
        // Loopback delivers a datagram into the socket's buffer when it is
        // sent, so after the lookup has returned anything sent is there.
        let mut buf = [0u8; 512];
        let got = server.try_recv_from(&mut buf);
        assert!(
            matches!(&got, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "a query reached the refused server: {got:?}"
        );
    }

    #[tokio::test]
    async fn sockets_past_the_prepaid_ones_take_rate_tokens() {
        let server: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let open = TargetPolicy {
            allow_private: true,
        };
        let rate = Arc::new(RateLimiter::new(10));
        let runtime = GuardedRuntime::new(open).with_rate(Some(rate.clone()), 2);
        // Two prepaid sockets, then ten more: the ten empty the bucket.
        for _ in 0..12 {
            runtime
                .bind_udp("127.0.0.1:0".parse().unwrap(), server)
                .await
                .unwrap();
        }
        let wait = rate.reserve(server.ip(), std::time::Instant::now());
        assert!(wait > Duration::ZERO, "the bucket was not charged");
        // Prepaid sockets take nothing more.
        let paid = Arc::new(RateLimiter::new(10));
        let runtime = GuardedRuntime::new(open).with_rate(Some(paid.clone()), 12);
        for _ in 0..12 {
            runtime
                .bind_udp("127.0.0.1:0".parse().unwrap(), server)
                .await
                .unwrap();
        }
        assert_eq!(
            paid.reserve(server.ip(), std::time::Instant::now()),
            Duration::ZERO
        );
    }
}
