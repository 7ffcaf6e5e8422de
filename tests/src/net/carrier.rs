//! A carrier's middleboxes for the namespace lab: the HTTP injector that
//! answers in the site's place (a block page or a redirect), and DNS
//! resolvers — an honest one and one that lies about the site's address.
//! Each binds port 0 on an address the test chooses and counts what it
//! served, so a test can prove the interference was exercised.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// The title of the injector's block page.
pub const BLOCK_TITLE: &str = "Access to this site is restricted";

/// Where the injector's redirect points.
pub const REDIRECT_TO: &str = "http://warning.carrier.test/blocked";

/// What the injector answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedReply {
    /// `200 OK` with a block page titled [`BLOCK_TITLE`].
    BlockPage,
    /// `302 Found` to [`REDIRECT_TO`].
    Redirect,
}

impl InjectedReply {
    fn bytes(self) -> Vec<u8> {
        match self {
            InjectedReply::BlockPage => {
                let body = format!(
                    "<html><head><title>{BLOCK_TITLE}</title></head>\
                     <body>This site is blocked by order of the operator.</body></html>"
                );
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            }
            InjectedReply::Redirect => format!(
                "HTTP/1.1 302 Found\r\nLocation: {REDIRECT_TO}\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            )
            .into_bytes(),
        }
    }
}

/// A running injector.
#[derive(Debug)]
pub struct Injector {
    addr: SocketAddr,
    answered: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Injector {
    /// Listens on `ip`, port 0, and answers every request with `reply`.
    pub async fn spawn(ip: IpAddr, reply: InjectedReply) -> anyhow::Result<Injector> {
        let listener = TcpListener::bind((ip, 0)).await.context("injector bind")?;
        let addr = listener.local_addr()?;
        let answered = Arc::new(AtomicU64::new(0));
        let count = answered.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    // Read the request head (bounded), as a DPI box would.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while head.len() < 64 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if stream.write_all(&reply.bytes()).await.is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(Injector {
            addr,
            answered,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests it answered.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A carrier hijacking plain HTTP: starts an injector on `ip` answering
/// `reply`, and diverts every connection from each of `sources` to `target`
/// to it with iptables inside the namespace `netns`.
pub async fn hijack_http(
    netns: &str,
    ip: IpAddr,
    reply: InjectedReply,
    sources: &[IpAddr],
    target: SocketAddr,
) -> anyhow::Result<Injector> {
    let injector = Injector::spawn(ip, reply).await?;
    for source in sources {
        crate::netns::apply(
            netns,
            &crate::netns::Interference::HttpInjection {
                source: *source,
                target,
                injector: injector.addr(),
            },
        )?;
    }
    Ok(injector)
}

/// A DNS server (UDP) that answers every `A` query with one address and
/// every other query with no records.
#[derive(Debug)]
pub struct Resolver {
    addr: SocketAddr,
    queries: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Resolver {
    /// Listens on `ip`, port 0, answering `A` queries with `answer`.
    pub async fn spawn(ip: IpAddr, answer: Ipv4Addr) -> anyhow::Result<Resolver> {
        let socket = UdpSocket::bind((ip, 0)).await.context("resolver bind")?;
        let addr = socket.local_addr()?;
        let queries = Arc::new(AtomicU64::new(0));
        let count = queries.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                // A query that does not parse gets no answer, like a real server.
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                if let Ok(bytes) = answer_for(&query, answer).to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Ok(Resolver {
            addr,
            queries,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many queries it answered.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer_for(query: &Message, answer: Ipv4Addr) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = ResponseCode::NoError;
    for q in &query.queries {
        reply.add_query(q.clone());
        if q.query_type() == RecordType::A {
            reply.add_answer(Record::from_rdata(
                q.name().clone(),
                60,
                RData::A(A(answer)),
            ));
        }
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    #[test]
    fn answers_a_queries_with_the_configured_address_and_echoes_the_id() {
        let mut query = Message::query();
        query.metadata.id = 4242;
        query.add_query(Query::query(
            Name::from_ascii("origin.lab.test.").unwrap(),
            RecordType::A,
        ));
        let bytes = answer_for(&query, Ipv4Addr::new(10, 10, 34, 35))
            .to_vec()
            .unwrap();
        let reply = Message::from_vec(&bytes).unwrap();
        assert_eq!(reply.metadata.id, 4242);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(
            reply.answers[0].data,
            RData::A(A(Ipv4Addr::new(10, 10, 34, 35)))
        );

        let mut aaaa = Message::query();
        aaaa.add_query(Query::query(
            Name::from_ascii("origin.lab.test.").unwrap(),
            RecordType::AAAA,
        ));
        assert!(answer_for(&aaaa, Ipv4Addr::LOCALHOST).answers.is_empty());
    }
}
