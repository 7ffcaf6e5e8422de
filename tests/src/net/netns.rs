//! The network-namespace lab: one private network namespace per test, with
//! interference applied by iptables inside that namespace only.
//!
//! A test body runs on a thread that has entered the namespace (`setns`), in
//! its own tokio runtime. Everything that thread and its runtime create —
//! the in-process origin, edge, resolvers and injectors, and every child
//! process (coordinator, agents, witness, CLI) — lives in the namespace, so
//! the same harness code works inside and outside it, and nothing the test
//! does can touch the host's network.
//!
//! The namespace has a unique name (`vantage-lab-<pid>-<n>`, so that
//! `ip netns exec <name> iptables -L -v` works while a test runs) and is
//! deleted when the test ends, passes or fails. Namespaces left by a run that
//! was killed are swept by the next run (their pid is gone).
//!
//! Without root, `ip` or `iptables` the tier cannot run: [`run`] prints that
//! it was skipped and why, or fails under `CI=true`, where a skipped tier
//! would hide a regression.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context as _};
use vantage_support::env::{Env, ProcessEnv};

const NETNS_DIR: &str = "/run/netns";
const PREFIX: &str = "vantage-lab-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A private network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// Packet-level interference of one region's traffic to one target, as a
/// carrier would apply it. Every rule matches on the region's source address
/// only, so the other regions keep a clean path to the same target.
#[derive(Debug, Clone)]
pub enum Interference {
    /// Connections from `source` to `target` are answered by `injector`
    /// instead (DNAT): a block page or a redirect where the site should be.
    HttpInjection {
        /// The region's source address.
        source: IpAddr,
        /// The address the region meant to reach.
        target: SocketAddr,
        /// The carrier's injector that answers instead.
        injector: SocketAddr,
    },
    /// The packet that carries `marker` (e.g. the site's host name in the
    /// request) from `source` to `target` is dropped and answered with a TCP
    /// reset, like a DPI box: the request never arrives.
    TcpReset {
        /// The region's source address.
        source: IpAddr,
        /// The address the region meant to reach.
        target: SocketAddr,
        /// The bytes the middlebox looks for.
        marker: String,
    },
    /// Every packet from `source` to `target` is dropped silently.
    Blackhole {
        /// The region's source address.
        source: IpAddr,
        /// The address the region meant to reach.
        target: SocketAddr,
    },
    /// TLS from `source` to `target` is diverted to `interceptor`, a
    /// middlebox presenting its own certificate.
    TlsInterception {
        /// The region's source address.
        source: IpAddr,
        /// The address the region meant to reach.
        target: SocketAddr,
        /// The intercepting middlebox.
        interceptor: SocketAddr,
    },
}

impl Interference {
    /// The iptables arguments (after `iptables -w`) that apply it.
    pub fn iptables_args(&self) -> Vec<String> {
        let matching = |source: &IpAddr, target: &SocketAddr| {
            vec![
                "-p".to_string(),
                "tcp".into(),
                "-s".into(),
                source.to_string(),
                "-d".into(),
                target.ip().to_string(),
                "--dport".into(),
                target.port().to_string(),
            ]
        };
        let divert = |source: &IpAddr, target: &SocketAddr, to: &SocketAddr| {
            let mut args = vec!["-t".to_string(), "nat".into(), "-A".into(), "OUTPUT".into()];
            args.extend(matching(source, target));
            args.extend(["-j".into(), "DNAT".into(), "--to-destination".into()]);
            args.push(to.to_string());
            args
        };
        match self {
            Interference::HttpInjection {
                source,
                target,
                injector,
            } => divert(source, target, injector),
            Interference::TlsInterception {
                source,
                target,
                interceptor,
            } => divert(source, target, interceptor),
            Interference::TcpReset {
                source,
                target,
                marker,
            } => {
                let mut args = vec!["-A".to_string(), "OUTPUT".into()];
                args.extend(matching(source, target));
                args.extend([
                    "-m".into(),
                    "string".into(),
                    "--algo".into(),
                    "bm".into(),
                    "--string".into(),
                    marker.clone(),
                    "-j".into(),
                    "REJECT".into(),
                    "--reject-with".into(),
                    "tcp-reset".into(),
                ]);
                args
            }
            Interference::Blackhole { source, target } => {
                let mut args = vec!["-A".to_string(), "OUTPUT".into()];
                args.extend(matching(source, target));
                args.extend(["-j".into(), "DROP".into()]);
                args
            }
        }
    }
}

/// Why the namespace tier cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (network namespaces and iptables)".into());
    }
    for (tool, flag) in [("ip", "-V"), ("iptables", "-V")] {
        match Command::new(tool).arg(flag).output() {
            Ok(out) if out.status.success() => {}
            _ => {
                return Some(format!(
                    "`{tool}` is missing (apt-get install -y iproute2 iptables)"
                ))
            }
        }
    }
    None
}

/// Runs `body` inside a fresh namespace and deletes it afterwards; re-raises
/// the body's panic. When the tier cannot run, prints `SKIPPED` with the
/// reason — or panics when `CI` is `true` (read through `env`).
pub fn run_with_env<F, Fut>(test: &str, env: &dyn Env, body: F)
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    if skip(test, env, unavailable()) {
        return;
    }
    let netns = Netns::create().unwrap_or_else(|e| panic!("{test}: {e:#}"));
    let outcome = netns.block_on(body);
    drop(netns);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Whether to skip, given why the tier cannot run (if it cannot): prints
/// the reason, or panics under `CI=true`.
fn skip(test: &str, env: &dyn Env, unavailable: Option<String>) -> bool {
    vantage_support::env::skip_tier(test, "network-namespace", env, unavailable)
}

/// For tests that set up their own namespace (the `mixed` demo): true when
/// the tier cannot run here and the test should return; the reason is
/// printed, and under `CI=true` this panics instead.
pub fn skipped(test: &str) -> bool {
    skip(test, &ProcessEnv, unavailable())
}

/// [`run_with_env`] with the process environment.
pub fn run<F, Fut>(test: &str, body: F)
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    run_with_env(test, &ProcessEnv, body)
}

impl Netns {
    /// Creates a uniquely named namespace with loopback up, after deleting
    /// namespaces left behind by runs that no longer exist.
    pub fn create() -> anyhow::Result<Netns> {
        sweep_stale();
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let netns = Netns { name };
        ip(&["-n", &netns.name, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `body(name)` on a new thread that has entered the namespace, in
    /// its own tokio runtime, and returns its output (or its panic).
    pub fn block_on<F, Fut, T>(&self, body: F) -> std::thread::Result<T>
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let name = self.name.clone();
        let path = Path::new(NETNS_DIR).join(&name);
        let thread = std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                let file = std::fs::File::open(&path)
                    .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&file),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
                // Built after setns: its worker and blocking threads are
                // spawned from this thread and so start inside the namespace.
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("runtime: {e}"));
                runtime.block_on(body(name))
            });
        match thread {
            Ok(thread) => thread.join(),
            Err(e) => Err(Box::new(format!("cannot spawn the namespace thread: {e}"))),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Applies `rule` inside the namespace `netns` (by name, so it works from
/// any thread).
pub fn apply(netns: &str, rule: &Interference) -> anyhow::Result<()> {
    let mut args = vec!["netns", "exec", netns, "iptables", "-w"];
    let rule_args = rule.iptables_args();
    args.extend(rule_args.iter().map(String::as_str));
    ip(&args).with_context(|| format!("applying {rule:?}"))
}

/// How many packets each rule of the namespace's `table` OUTPUT chain
/// matched, in rule order: proof that the interference was exercised.
pub fn rule_hits(netns: &str, table: &str) -> anyhow::Result<Vec<u64>> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", netns, "iptables", "-w", "-t", table, "-L", "OUTPUT", "-n", "-v", "-x",
        ])
        .output()
        .context("running iptables -L")?;
    if !out.status.success() {
        bail!(
            "iptables -L failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes `vantage-lab-<pid>-<n>` namespaces whose process is gone.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_support::env::MapEnv;

    #[test]
    fn rules_match_only_the_region_source() {
        let source: IpAddr = "127.0.2.1".parse().unwrap();
        let target: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let rule = Interference::Blackhole { source, target };
        assert_eq!(
            rule.iptables_args().join(" "),
            "-A OUTPUT -p tcp -s 127.0.2.1 -d 127.0.0.1 --dport 8080 -j DROP"
        );
        let rule = Interference::HttpInjection {
            source,
            target,
            injector: "127.0.0.99:9000".parse().unwrap(),
        };
        assert_eq!(
            rule.iptables_args().join(" "),
            "-t nat -A OUTPUT -p tcp -s 127.0.2.1 -d 127.0.0.1 --dport 8080 -j DNAT --to-destination 127.0.0.99:9000"
        );
        let rule = Interference::TcpReset {
            source,
            target,
            marker: "origin.lab.test".into(),
        };
        assert!(rule.iptables_args().join(" ").ends_with(
            "-m string --algo bm --string origin.lab.test -j REJECT --reject-with tcp-reset"
        ));
    }

    #[test]
    fn a_skipped_tier_fails_under_ci_and_is_reported_elsewhere() {
        let why = || Some("needs root".to_string());
        let ci = MapEnv::from_pairs([("CI", "true")]);
        let result = std::panic::catch_unwind(|| skip("t", &ci, why()));
        assert!(result.is_err(), "a skip under CI=true must fail");
        let local = MapEnv::from_pairs([("CI", "false")]);
        assert!(skip("t", &local, why()));
        assert!(!skip("t", &ci, None), "an available tier runs");
    }
}
