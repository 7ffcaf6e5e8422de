//! The origin witness (DESIGN §5): the agent in witness mode on the origin
//! host follows the web server's access log and reports every probe nonce it
//! sees, with the peer address and the logged time. That turns "capture
//! packets on the origin" into data, and names the CDN's pull addresses.
//!
//! This module owns the log side: [`Witness`] ties a [`follow::Follower`] to
//! a [`parse::LogFormat`] and yields [`Sighting`]s; [`run`] drives it on a
//! timer and hands the sightings to whoever reports them.

pub mod follow;
pub mod parse;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::follow::{FollowStats, Follower};
use self::parse::{nonce_in, parse_line, LogFormat};

pub use vantage_proto::spec::DEFAULT_NONCE_PARAM;

/// Shortest interval [`run`] polls at: a zero interval would spin.
const MIN_EVERY: Duration = Duration::from_millis(10);

/// One probe request seen in the origin's access log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sighting {
    /// The nonce from the request's query string.
    pub nonce: String,
    /// The client (peer) address as logged, without any port: for requests
    /// through a CDN, one of its pull addresses.
    pub peer: String,
    /// The request target as logged (path and query).
    pub uri: String,
    /// The time as logged, when the log records one.
    pub logged_time: Option<String>,
}

/// Counters over a witness's lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WitnessStats {
    /// What the follower read.
    pub follow: FollowStats,
    /// Lines that could not be parsed in the configured format.
    pub unparsed: u64,
    /// Parsed lines without a (valid) nonce: ordinary traffic.
    pub without_nonce: u64,
    /// Sightings returned.
    pub seen: u64,
}

/// Follows an access log and turns the lines that carry a nonce into
/// [`Sighting`]s.
#[derive(Debug)]
pub struct Witness {
    follower: Follower,
    format: LogFormat,
    nonce_param: String,
    unparsed: u64,
    without_nonce: u64,
    seen: u64,
}

impl Witness {
    /// A witness over an existing follower.
    pub fn new(follower: Follower, format: LogFormat, nonce_param: impl Into<String>) -> Witness {
        Witness {
            follower,
            format,
            nonce_param: nonce_param.into(),
            unparsed: 0,
            without_nonce: 0,
            seen: 0,
        }
    }

    /// Follows the log at `path` (see [`Follower::open`]).
    pub fn open(
        path: &Path,
        from_start: bool,
        format: LogFormat,
        nonce_param: impl Into<String>,
    ) -> io::Result<Witness> {
        Ok(Witness::new(
            Follower::open(path, from_start)?,
            format,
            nonce_param,
        ))
    }

    /// The sightings in the lines available now. Lines that do not parse or
    /// carry no nonce are counted and skipped, never fatal; only reading the
    /// log can fail.
    pub fn poll(&mut self) -> io::Result<Vec<Sighting>> {
        let lines = self.follower.poll()?;
        let mut sightings = Vec::new();
        for line in lines {
            if line.trim().is_empty() {
                continue;
            }
            let entry = match parse_line(&self.format, &line) {
                Ok(entry) => entry,
                Err(err) => {
                    self.unparsed += 1;
                    tracing::debug!(error = %err, "witness: unparsed access-log line");
                    continue;
                }
            };
            let Some(nonce) = nonce_in(&entry.uri, &self.nonce_param) else {
                self.without_nonce += 1;
                continue;
            };
            self.seen += 1;
            sightings.push(Sighting {
                nonce,
                peer: peer_ip(&entry.client),
                uri: entry.uri,
                logged_time: entry.time,
            });
        }
        Ok(sightings)
    }

    /// Whether the log has more data already written than the last poll
    /// read (see [`Follower::has_backlog`]).
    pub fn has_backlog(&self) -> bool {
        self.follower.has_backlog()
    }

    /// Counters so far.
    pub fn stats(&self) -> WitnessStats {
        WitnessStats {
            follow: self.follower.stats(),
            unparsed: self.unparsed,
            without_nonce: self.without_nonce,
            seen: self.seen,
        }
    }
}

/// The client address without its port: `1.2.3.4:5` and `[2001:db8::1]:5`
/// lose the port, a bare IPv6 address keeps all its colons, anything else
/// (a host name) is kept as logged.
fn peer_ip(client: &str) -> String {
    if let Ok(ip) = client.parse::<IpAddr>() {
        return ip.to_string();
    }
    if let Ok(addr) = client.parse::<SocketAddr>() {
        return addr.ip().to_string();
    }
    if let Some(ip) = client
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse::<IpAddr>().ok())
    {
        return ip.to_string();
    }
    client.to_owned()
}

/// Polls `witness` every `every` and sends each sighting to `tx`, until the
/// receiver is dropped. Read errors are logged and retried on the next tick
/// (the log may be unreadable for a moment during rotation); a backlog is
/// read without waiting for the next tick.
pub async fn run(mut witness: Witness, every: Duration, tx: tokio::sync::mpsc::Sender<Sighting>) {
    let mut ticker = tokio::time::interval(every.max(MIN_EVERY));
    // After a slow poll, wait a whole period rather than firing a burst.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = tx.closed() => return,
        }
        loop {
            // File I/O blocks; keep it off the async workers.
            let polled = tokio::task::spawn_blocking(move || {
                let result = witness.poll();
                (witness, result)
            })
            .await;
            let result;
            (witness, result) = match polled {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::error!(error = %err, "witness: poll task failed");
                    return;
                }
            };
            match result {
                Ok(sightings) => {
                    failing = false;
                    for sighting in sightings {
                        if tx.send(sighting).await.is_err() {
                            return;
                        }
                    }
                }
                Err(err) => {
                    // Once per run of failures, not once per tick.
                    if !failing {
                        tracing::warn!(error = %err, "witness: reading the access log failed");
                    }
                    failing = true;
                }
            }
            if !witness.has_backlog() {
                break;
            }
        }
    }
}

/// Follows the log every `every` and forwards each sighting as a protocol
/// observation into `observations` (the agent session sends them while
/// connected). Sightings whose client is not an IP address are skipped: a
/// log that records host names cannot name pull IPs.
pub fn spawn_forwarding(
    witness: Witness,
    every: Duration,
    observations: tokio::sync::mpsc::Sender<vantage_proto::pb::Observation>,
) {
    let (sightings_tx, mut sightings) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(run(witness, every, sightings_tx));
    tokio::spawn(async move {
        while let Some(sighting) = sightings.recv().await {
            if sighting.peer.parse::<std::net::IpAddr>().is_err() {
                tracing::warn!(peer = %sighting.peer, "log line's client is not an IP address; skipped");
                continue;
            }
            let observation = vantage_proto::pb::Observation {
                nonce: sighting.nonce,
                peer_addr: sighting.peer,
                seen_at_unix_ms: vantage_support::time::now_ms(),
                uri: sighting.uri.chars().take(4096).collect(),
            };
            if observations.send(observation).await.is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;

    fn append(path: &Path, data: &str) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(data.as_bytes()).unwrap();
    }

    #[test]
    fn poll_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        append(
            &path,
            "9.9.9.9 - - [24/Nov/2026:02:10:00 +0000] \"GET /?__vantage=before-0-0 HTTP/1.1\" 200 1 \"-\" \"-\"\n",
        );
        let mut w = Witness::open(&path, false, LogFormat::Auto, DEFAULT_NONCE_PARAM).unwrap();
        assert!(w.poll().unwrap().is_empty());

        append(
            &path,
            concat!(
                "203.0.113.5 - - [24/Nov/2026:02:10:39 +0000] \"GET /a?__vantage=3f2a-1-0 HTTP/1.1\" 200 123 \"-\" \"curl/7.88.1\"\n",
                "203.0.113.5 - - [24/Nov/2026:02:10:40 +0000] \"GET /favicon.ico HTTP/1.1\" 404 0 \"-\" \"curl/7.88.1\"\n",
                "198.51.100.1 - - [24/Nov/2026:02:10:41 +0000] \"-\" 400 0 \"-\" \"-\"\n",
                "\n",
                "[2001:db8::7]:51000 - - [24/Nov/2026:02:10:42 +0000] \"GET /b?x=1&__vantage=3f2a-2-1 HTTP/2.0\" 200 5 \"-\" \"-\"\n",
                "{\"remote_addr\":\"192.0.2.44:8080\",\"request_uri\":\"/c?__vantage=3f2a-3-0\"}\n",
                "203.0.113.6 - - [24/Nov/2026:02:10:43 +0000] \"GET /d?__vantage=3f2a-4",
            ),
        );
        let got = w.poll().unwrap();
        assert_eq!(
            got,
            vec![
                Sighting {
                    nonce: "3f2a-1-0".into(),
                    peer: "203.0.113.5".into(),
                    uri: "/a?__vantage=3f2a-1-0".into(),
                    logged_time: Some("24/Nov/2026:02:10:39 +0000".into()),
                },
                Sighting {
                    nonce: "3f2a-2-1".into(),
                    peer: "2001:db8::7".into(),
                    uri: "/b?x=1&__vantage=3f2a-2-1".into(),
                    logged_time: Some("24/Nov/2026:02:10:42 +0000".into()),
                },
                Sighting {
                    nonce: "3f2a-3-0".into(),
                    peer: "192.0.2.44".into(),
                    uri: "/c?__vantage=3f2a-3-0".into(),
                    logged_time: None,
                },
            ]
        );
        // The half-written last line is reported once it is complete.
        append(&path, "-0 HTTP/1.1\" 200 1 \"-\" \"-\"\n");
        let got = w.poll().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].nonce, "3f2a-4-0");
        assert_eq!(got[0].peer, "203.0.113.6");

        let stats = w.stats();
        assert_eq!(stats.seen, 4);
        assert_eq!(stats.unparsed, 1);
        assert_eq!(stats.without_nonce, 1);
        // Six lines in the second write (one blank), then the completed one.
        assert_eq!(stats.follow.lines, 7);
    }

    #[test]
    fn custom_parameter_and_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.json");
        let format = LogFormat::JsonLines {
            uri_field: "u".into(),
            client_field: "c".into(),
            time_field: Some("t".into()),
        };
        let mut w = Witness::open(&path, false, format, "probe").unwrap();
        append(
            &path,
            "{\"u\":\"https://o.example/x?probe=n-1-0\",\"c\":\"10.0.0.1\",\"t\":\"now\"}\n\
             {\"u\":\"/x?__vantage=n-2-0\",\"c\":\"10.0.0.1\"}\n\
             not json\n",
        );
        let got = w.poll().unwrap();
        assert_eq!(
            got,
            vec![Sighting {
                nonce: "n-1-0".into(),
                peer: "10.0.0.1".into(),
                uri: "/x?probe=n-1-0".into(),
                logged_time: Some("now".into()),
            }]
        );
        assert_eq!((w.stats().unparsed, w.stats().without_nonce), (1, 1));
    }

    #[test]
    fn peer_without_port() {
        for (client, peer) in [
            ("1.2.3.4", "1.2.3.4"),
            ("1.2.3.4:5678", "1.2.3.4"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[::1]", "::1"),
            ("edge.example.net", "edge.example.net"),
            ("unix:", "unix:"),
        ] {
            assert_eq!(peer_ip(client), peer, "{client}");
        }
    }

    #[tokio::test]
    async fn run_stops_when_the_receiver_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        append(
            &path,
            "1.1.1.1 - - [t] \"GET /?__vantage=r-1-0 HTTP/1.1\" 200 1 \"-\" \"-\"\n",
        );
        let w = Witness::open(&path, true, LogFormat::Combined, DEFAULT_NONCE_PARAM).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(run(w, Duration::from_millis(10), tx));
        let got = rx.recv().await.unwrap();
        assert_eq!(got.nonce, "r-1-0");
        drop(rx);
        // `run` returns on its own once nobody listens; no sleeping needed.
        task.await.unwrap();
    }
}
