//! iptables rules of the real-server tier, applied inside the case's
//! namespace: carriers that match the way real ones do, and origin-host
//! firewalls.
//!
//! A carrier sits on one region's path, so its rules are in the `OUTPUT`
//! chains and match the region's source address: a DPI box that resets the
//! packet carrying the bytes `Host: <site>` (port 80), an SNI filter that
//! resets the TLS ClientHello naming the site (port 443), a blackhole that
//! drops everything to a destination address, and a diversion (DNAT) of the
//! region's connections to the carrier's injector or TLS middlebox. An
//! origin's own firewall is in front of the origin, for every client, so its
//! rules are in `INPUT` and match the origin's address (and, for an
//! allowlist, the client's).

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use anyhow::{bail, Context as _};

/// One iptables rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Carrier DPI: a TCP packet from `source` to port 80 (of `dest`, or of
    /// any address) whose bytes contain `Host: <host>` is dropped and
    /// answered with a TCP reset.
    HostReset {
        /// The region's source address.
        source: IpAddr,
        /// Only traffic to this address, if set.
        dest: Option<IpAddr>,
        /// The site's host name.
        host: String,
    },
    /// Carrier SNI filter: a TCP packet from `source` to port 443 (of
    /// `dest`, or of any address) that carries the site's name (the
    /// ClientHello's SNI) is dropped and answered with a TCP reset.
    SniReset {
        /// The region's source address.
        source: IpAddr,
        /// Only traffic to this address, if set.
        dest: Option<IpAddr>,
        /// The site's host name.
        host: String,
    },
    /// Carrier blackhole: every packet from `source` to `dest` is dropped.
    Blackhole {
        /// The region's source address.
        source: IpAddr,
        /// The destination address.
        dest: IpAddr,
    },
    /// Carrier diversion: TCP connections from `source` to `port` (of
    /// `dest`, or of any address) go to `to` instead (DNAT).
    Divert {
        /// The region's source address.
        source: IpAddr,
        /// Only traffic to this address, if set.
        dest: Option<IpAddr>,
        /// The destination port matched.
        port: u16,
        /// Where the connections go instead.
        to: SocketAddr,
    },
    /// The origin host's firewall drops every TCP packet to its ports 80
    /// and 443.
    OriginDrop {
        /// The origin's address.
        origin: IpAddr,
    },
    /// The origin host's intrusion-prevention rule resets every plain-HTTP
    /// connection once the request line (`GET /`) arrives.
    OriginResetRequests {
        /// The origin's address.
        origin: IpAddr,
    },
    /// The origin host's firewall allowlist keeps `source` out: its
    /// connections to ports 80 and 443 are refused with a reset.
    OriginRefuse {
        /// The refused client (the edge's pull IP).
        source: IpAddr,
        /// The origin's address.
        origin: IpAddr,
    },
}

fn s(items: &[&str]) -> Vec<String> {
    items.iter().map(|i| i.to_string()).collect()
}

impl Rule {
    /// The table it goes in.
    pub fn table(&self) -> &'static str {
        match self {
            Rule::Divert { .. } => "nat",
            _ => "filter",
        }
    }

    /// The chain it goes in.
    pub fn chain(&self) -> &'static str {
        match self {
            Rule::OriginDrop { .. }
            | Rule::OriginResetRequests { .. }
            | Rule::OriginRefuse { .. } => "INPUT",
            _ => "OUTPUT",
        }
    }

    /// The iptables arguments (after `iptables -w`) that append it.
    pub fn iptables_args(&self) -> Vec<String> {
        let mut args = s(&["-t", self.table(), "-A", self.chain()]);
        let dest = |args: &mut Vec<String>, dest: &Option<IpAddr>| {
            if let Some(dest) = dest {
                args.extend(["-d".to_string(), dest.to_string()]);
            }
        };
        let reset = s(&["-j", "REJECT", "--reject-with", "tcp-reset"]);
        match self {
            Rule::HostReset {
                source,
                dest: d,
                host,
            } => {
                args.extend(["-s".to_string(), source.to_string()]);
                dest(&mut args, d);
                args.extend(s(&[
                    "-p", "tcp", "--dport", "80", "-m", "string", "--algo", "bm",
                ]));
                args.extend(["--string".to_string(), format!("Host: {host}")]);
                args.extend(reset);
            }
            Rule::SniReset {
                source,
                dest: d,
                host,
            } => {
                args.extend(["-s".to_string(), source.to_string()]);
                dest(&mut args, d);
                args.extend(s(&[
                    "-p", "tcp", "--dport", "443", "-m", "string", "--algo", "bm",
                ]));
                args.extend(["--string".to_string(), host.clone()]);
                args.extend(reset);
            }
            Rule::Blackhole { source, dest } => {
                args.extend(s(&["-s", &source.to_string(), "-d", &dest.to_string()]));
                args.extend(s(&["-j", "DROP"]));
            }
            Rule::Divert {
                source,
                dest: d,
                port,
                to,
            } => {
                args.extend(["-s".to_string(), source.to_string()]);
                dest(&mut args, d);
                args.extend(s(&["-p", "tcp", "--dport", &port.to_string()]));
                args.extend(s(&["-j", "DNAT", "--to-destination", &to.to_string()]));
            }
            Rule::OriginDrop { origin } => {
                args.extend(s(&["-d", &origin.to_string(), "-p", "tcp"]));
                args.extend(s(&["-m", "multiport", "--dports", "80,443", "-j", "DROP"]));
            }
            Rule::OriginResetRequests { origin } => {
                args.extend(s(&[
                    "-d",
                    &origin.to_string(),
                    "-p",
                    "tcp",
                    "--dport",
                    "80",
                ]));
                args.extend(s(&["-m", "string", "--algo", "bm", "--string", "GET /"]));
                args.extend(reset);
            }
            Rule::OriginRefuse { source, origin } => {
                args.extend(s(&["-s", &source.to_string(), "-d", &origin.to_string()]));
                args.extend(s(&["-p", "tcp", "-m", "multiport", "--dports", "80,443"]));
                args.extend(reset);
            }
        }
        args
    }
}

/// Appends `rule` inside the namespace `netns`.
pub fn apply(netns: &str, rule: &Rule) -> anyhow::Result<()> {
    let mut args = s(&["netns", "exec", netns, "iptables", "-w"]);
    args.extend(rule.iptables_args());
    let out = Command::new("ip")
        .args(&args)
        .output()
        .context("running ip netns exec iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {} failed: {}",
            rule.iptables_args().join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// How many packets the rules of `rules`' chains matched in total (each
/// table and chain counted once): proof that a rule was exercised.
pub fn hits(netns: &str, rules: &[Rule]) -> anyhow::Result<u64> {
    let mut chains: Vec<(&str, &str)> = rules.iter().map(|r| (r.table(), r.chain())).collect();
    chains.sort_unstable();
    chains.dedup();
    let mut total = 0;
    for (table, chain) in chains {
        let out = Command::new("ip")
            .args([
                "netns", "exec", netns, "iptables", "-w", "-t", table, "-L", chain, "-n", "-v",
                "-x",
            ])
            .output()
            .context("running iptables -L")?;
        if !out.status.success() {
            bail!(
                "iptables -L failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        total += String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carriers_match_the_host_bytes_the_sni_and_the_address() {
        let source: IpAddr = "127.0.2.1".parse().unwrap();
        let rule = Rule::HostReset {
            source,
            dest: None,
            host: "www.example.test".into(),
        };
        assert_eq!(
            rule.iptables_args().join(" "),
            "-t filter -A OUTPUT -s 127.0.2.1 -p tcp --dport 80 -m string --algo bm --string Host: www.example.test -j REJECT --reject-with tcp-reset"
        );
        let rule = Rule::SniReset {
            source,
            dest: Some("127.0.0.20".parse().unwrap()),
            host: "www.example.test".into(),
        };
        assert!(rule
            .iptables_args()
            .join(" ")
            .contains("-d 127.0.0.20 -p tcp --dport 443 -m string --algo bm --string www.example.test -j REJECT"));
        let rule = Rule::Blackhole {
            source,
            dest: "127.0.0.10".parse().unwrap(),
        };
        assert_eq!(
            rule.iptables_args().join(" "),
            "-t filter -A OUTPUT -s 127.0.2.1 -d 127.0.0.10 -j DROP"
        );
        let rule = Rule::OriginRefuse {
            source: "127.0.0.30".parse().unwrap(),
            origin: "127.0.0.10".parse().unwrap(),
        };
        assert_eq!(rule.chain(), "INPUT");
    }
}
