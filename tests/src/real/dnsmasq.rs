//! dnsmasq as a region's resolver: one process per region, listening on the
//! region's resolver address port 53 (agents get `--dns-server IP:53`),
//! answering the site's name with one address — the truth (the edge, or the
//! origin when there is no CDN), or, for a lying resolver, the carrier's
//! block-page server. It reads no configuration file, no `/etc/hosts`, no
//! upstream servers, and logs every query to its stderr, which the lab
//! captures (the count of queries proves the resolver was asked).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use anyhow::Context as _;

use crate::process::ChildProcess;

/// A running dnsmasq.
#[derive(Debug)]
pub struct Dnsmasq {
    process: ChildProcess,
    listen: IpAddr,
    answer: Ipv4Addr,
}

impl Dnsmasq {
    /// The command-line arguments of a resolver on `listen`:53 answering
    /// `site` with `answer`.
    pub fn args(listen: IpAddr, site: &str, answer: Ipv4Addr) -> Vec<String> {
        vec![
            "--no-daemon".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={listen}"),
            "--port=53".into(),
            format!("--address=/{site}/{answer}"),
            "--log-facility=-".into(),
            "--log-queries".into(),
            "--pid-file=".into(),
        ]
    }

    /// Starts it and waits for its `started` log line (it binds its sockets
    /// before it says so).
    pub async fn start(listen: IpAddr, site: &str, answer: Ipv4Addr) -> anyhow::Result<Dnsmasq> {
        let mut process = ChildProcess::spawn(
            &format!("dnsmasq {listen}"),
            &PathBuf::from("dnsmasq"),
            &Self::args(listen, site, answer),
        )?;
        process
            .wait_for_line(super::READY, |_, line| line.contains("started, version"))
            .await
            .with_context(|| format!("dnsmasq on {listen}"))?;
        Ok(Dnsmasq {
            process,
            listen,
            answer,
        })
    }

    /// Where it listens (port 53).
    pub fn listen(&self) -> IpAddr {
        self.listen
    }

    /// The address it answers for the site.
    pub fn answer(&self) -> Ipv4Addr {
        self.answer
    }

    /// How many queries for `site` it logged.
    pub fn queries(&self, site: &str) -> usize {
        self.process
            .output()
            .lines()
            .filter(|l| l.contains("query[") && l.contains(site))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_from_its_command_line() {
        let args = Dnsmasq::args(
            "127.0.1.53".parse().unwrap(),
            "www.example.test",
            Ipv4Addr::new(127, 0, 0, 20),
        );
        for needle in [
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--listen-address=127.0.1.53",
            "--address=/www.example.test/127.0.0.20",
        ] {
            assert!(args.iter().any(|a| a == needle), "{needle}: {args:?}");
        }
    }
}
