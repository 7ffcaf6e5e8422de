//! `vantage-agent probe`: one curl-like probe from this host with no
//! coordinator: its flags, the spec they build, and the table (or JSON
//! Lines) it prints, with outcome counts and TTFB percentiles.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use tokio::sync::mpsc;
use vantage_proto::domain::Outcome;
use vantage_proto::json::{outcome_name, result_json};
use vantage_proto::limits::PlanCaps;
use vantage_proto::pb;

use crate::probe::{ProbeEngine, ProbeLimits};
use crate::runner::{Runner, RunnerLimits};
use crate::safety::TargetPolicy;
use vantage_support::addr::parse_ip_port;

use super::{emit, read_ca_pem, MAX_RATE_LIMIT};

/// Flags of `vantage-agent probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The URL to request (http:// or https://). Every request appends its
    /// own nonce as a query parameter (`__vantage=…`), so that it misses every
    /// cache and can be found in the origin's access log.
    #[arg(value_name = "URL")]
    pub url: String,
    /// Connect to this address instead of resolving the URL's host: an IP, or
    /// IP:PORT (`[IPv6]:PORT`); without a port, the URL's port. The Host header
    /// and the TLS SNI stay the URL's host, exactly like
    /// `curl --resolve host:port:ADDR`. Use it to reach the origin behind a
    /// CDN directly.
    #[arg(long, value_name = "ADDR")]
    pub resolve_to: Option<String>,
    /// Add a request header, written 'Name: value', like `curl -H`
    /// (repeatable). Replaying a CDN's pull headers this way (e.g.
    /// 'X-Forwarded-For: 198.51.100.7') shows whether the origin's WAF
    /// blocks them.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// HTTP method, like `curl -X`. No request body is sent.
    #[arg(long, short = 'X', value_name = "METHOD", default_value = "GET")]
    pub method: String,
    /// Repeat the request N times (1-100), one attempt after the other: each
    /// attempt starts when the previous one has finished.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub attempts: u32,
    /// Send N requests per attempt (1-20000) at once, on separate
    /// connections — the concurrent-curl test that shows rate limiting at
    /// the origin (empty replies, resets, 429/503 under load). With
    /// --concurrency C it is `ab -n N -c C`. (A coordinator's plan may ask
    /// for at most 200; this is your own command.)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub burst: u32,
    /// At most C requests of a burst in flight at once (1 to --burst;
    /// default: the whole burst). A new one starts as soon as one finishes.
    #[arg(long, value_name = "C")]
    pub concurrency: Option<u32>,
    /// Give up on a request after this long in total, DNS to last body byte,
    /// like `curl --max-time`. Written 500ms, 2s, 1m.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Send from this local address (multi-homed hosts), like
    /// `curl --interface IP`.
    #[arg(long, value_name = "IP")]
    pub bind_ip: Option<IpAddr>,
    /// Do not verify the server's TLS certificate, like `curl -k`; the
    /// certificate is still recorded. Needed for an origin whose certificate
    /// does not name the site.
    #[arg(long, short = 'k')]
    pub insecure: bool,
    /// Also trust the CA certificate(s) in this PEM file, in addition to the
    /// system roots (unlike `curl --cacert`, which replaces them).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Allow loopback, private, link-local and other special-purpose targets.
    /// Without it such requests end as `blocked_by_policy`, as they would on
    /// an agent serving a coordinator.
    #[arg(long)]
    pub allow_private: bool,
    /// Follow up to N redirects, like `curl -L --max-redirs N` (0: do not
    /// follow; the agent never follows more than 10).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_redirects: u32,
    /// Most requests per second to any one target address, as on a serving
    /// agent (`run --max-rate`): the probe is never a flood by accident.
    /// Raise it (up to 100000) to load-test your own server.
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub max_rate: u32,
    /// The User-Agent header to send (default: vantage/VERSION), like
    /// `curl -A`. The request head is shaped like curl's: Host, User-Agent,
    /// Accept: */*, then your --header lines in the order and case given.
    #[arg(long, short = 'A', value_name = "UA")]
    pub user_agent: Option<String>,
    /// Print one JSON object per request (JSON Lines: timings_ms, outcome,
    /// curl_exit, stage, status, headers, tls, error…) and nothing else on
    /// stdout; logs go to stderr.
    #[arg(long)]
    pub json: bool,
}

/// A validated `probe` invocation.
#[derive(Debug)]
pub struct ProbeConfig {
    /// The spec to run: one attempt × burst grid of requests.
    pub spec: pb::ProbeSpec,
    /// Source address.
    pub bind_ip: Option<IpAddr>,
    /// Target policy.
    pub policy: TargetPolicy,
    /// Extra CA certificates to trust.
    pub cacert: Option<PathBuf>,
    /// JSON Lines output instead of the table.
    pub json: bool,
    /// Requests per second per target address at most.
    pub max_rate: u32,
}

/// The runner's limits for `vantage-agent probe`: the agent's, but a burst
/// as large as a load test's (`ab -n`), since the operator, not a
/// coordinator, asks for it (and `--max-rate` still caps the rate).
fn probe_limits() -> RunnerLimits {
    RunnerLimits {
        plan: PlanCaps {
            max_burst: 20_000,
            ..PlanCaps::default()
        },
        ..RunnerLimits::default()
    }
}

/// The plan id that results of `vantage-agent probe` carry: they belong to
/// no coordinator plan.
const PROBE_PLAN_ID: &str = "local-probe";
/// Results `vantage-agent probe` holds between two writes to stdout.
const PROBE_OUTPUT_QUEUE: usize = 2048;
/// How often `vantage-agent probe` writes to stdout during a burst.
const PROBE_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Checks one `--header` value and turns it into a wire header.
fn parse_header(text: &str) -> anyhow::Result<pb::Header> {
    let Some((name, value)) = text.split_once(':') else {
        bail!("--header {text:?}: expected 'Name: value'");
    };
    let name = name.trim();
    // Only the optional whitespace after the colon is syntax (RFC 9110
    // §5.5); anything else in the value is sent as written.
    let value = value.trim_start_matches([' ', '\t']);
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        bail!("--header {text:?}: {name:?} is not a valid header name (expected 'Name: value')");
    }
    if http::HeaderValue::from_str(value).is_err() {
        bail!("--header {text:?}: the value must not contain control characters such as newlines");
    }
    Ok(pb::Header {
        name: name.to_string(),
        value: value.as_bytes().to_vec(),
    })
}

impl ProbeArgs {
    /// Checks every flag and builds the spec; nothing touches the network.
    pub fn validate(self) -> anyhow::Result<ProbeConfig> {
        let uri: http::Uri = self
            .url
            .parse()
            .with_context(|| format!("URL {:?} is not a valid URL", self.url))?;
        let default_port = match uri.scheme_str() {
            Some("http") => 80,
            Some("https") => 443,
            _ => bail!("URL {:?}: must start with http:// or https://", self.url),
        };
        if uri.host().is_none_or(str::is_empty) {
            bail!("URL {:?} has no host", self.url);
        }
        let port = uri.port_u16().unwrap_or(default_port);
        if let Some(addr) = &self.resolve_to {
            if parse_ip_port(addr, port).is_none() {
                bail!("--resolve-to {addr:?}: expected an IP address or IP:PORT (like 203.0.113.10 or [2001:db8::1]:8443)");
            }
        }
        let headers = self
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if http::Method::from_bytes(self.method.as_bytes()).is_err() {
            bail!(
                "--method {:?}: not a valid HTTP method (a token such as GET or HEAD)",
                self.method
            );
        }
        let limits = probe_limits().plan;
        if !(1..=limits.max_attempts).contains(&self.attempts) {
            bail!(
                "--attempts {}: must be between 1 and {}",
                self.attempts,
                limits.max_attempts
            );
        }
        if !(1..=limits.max_burst).contains(&self.burst) {
            bail!(
                "--burst {}: must be between 1 and {}",
                self.burst,
                limits.max_burst
            );
        }
        let concurrency = self.concurrency.unwrap_or(self.burst);
        if !(1..=self.burst).contains(&concurrency) {
            bail!(
                "--concurrency {concurrency}: must be between 1 and --burst ({})",
                self.burst
            );
        }
        if !(1..=MAX_RATE_LIMIT).contains(&self.max_rate) {
            bail!(
                "--max-rate {}: must be between 1 and {MAX_RATE_LIMIT}",
                self.max_rate
            );
        }
        let user_agent = self.user_agent.unwrap_or_default();
        if http::HeaderValue::from_str(&user_agent).is_err() {
            bail!("--user-agent: must not contain control characters such as newlines");
        }
        let total_ms = u32::try_from(self.timeout.as_millis())
            .ok()
            .filter(|ms| *ms > 0)
            .with_context(|| {
                format!(
                    "--timeout {}: must be between 1ms and 49 days",
                    humantime::format_duration(self.timeout)
                )
            })?;
        let spec = pb::ProbeSpec {
            probe_id: "probe".into(),
            url: self.url,
            method: self.method,
            headers,
            route: if self.resolve_to.is_some() {
                pb::Route::Direct
            } else {
                pb::Route::Edge
            } as i32,
            address_override: self.resolve_to.unwrap_or_default(),
            timeouts: Some(pb::PhaseTimeouts {
                total_ms,
                ..Default::default()
            }),
            verify_tls: !self.insecure,
            max_redirects: self.max_redirects.min(10),
            attempts: self.attempts,
            burst: self.burst,
            concurrency,
            // One random base per invocation: each request appends its own
            // attempt and slot, so two runs never share a nonce.
            nonce: uuid::Uuid::new_v4().simple().to_string(),
            user_agent,
            ..Default::default()
        };
        Ok(ProbeConfig {
            spec,
            bind_ip: self.bind_ip,
            policy: TargetPolicy {
                allow_private: self.allow_private,
            },
            cacert: self.cacert,
            json: self.json,
            max_rate: self.max_rate,
        })
    }
}

/// The value at percentile `pct` (0-100) of ascending `sorted` values, by
/// the nearest-rank method: the smallest value with at least `pct`% of the
/// values at or below it. `None` for no values.
pub fn nearest_rank(sorted: &[u64], pct: u32) -> Option<u64> {
    let n = sorted.len() as u64;
    // rank = ceil(pct/100 × n), at least 1; integer arithmetic keeps p99 of
    // 100 values the 99th, with no float rounding at the boundaries.
    let rank = (u64::from(pct.min(100)) * n).div_ceil(100).max(1);
    let index = usize::try_from(rank - 1).ok()?;
    sorted.get(index).copied()
}

fn ms(us: u64) -> String {
    Millis(us).to_string()
}

/// Microseconds shown as milliseconds with three decimals (exact: integer
/// arithmetic, no float formatting on the per-request path).
struct Millis(u64);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::io::Write as _;
        let mut digits = [0u8; 32];
        let mut cursor = std::io::Cursor::new(&mut digits[..]);
        // u64::MAX µs is 20 digits plus a point and three decimals: it fits.
        let _ = write!(cursor, "{}.{:03}", self.0 / 1000, self.0 % 1000);
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        f.pad(std::str::from_utf8(&digits[..len]).unwrap_or("?"))
    }
}

/// A phase that was not reached shows as `-`, not as a misleading 0.
struct Phase(u64);

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == 0 {
            f.pad("-")
        } else {
            Millis(self.0).fmt(f)
        }
    }
}

/// The column titles above [`human_line`]s.
fn human_header() -> String {
    format!(
        "{:<7} {:<20} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}  remote",
        "req", "outcome", "status", "dns", "connect", "tls", "ttfb", "total"
    )
}

/// One request as a table row: attempt/slot, outcome, status, cumulative
/// phase times in ms, peer, and the error if it failed.
#[cfg(test)]
fn human_line(result: &pb::ProbeResult) -> String {
    let mut line = String::new();
    write_human_line(&mut line, result);
    line
}

/// [`human_line`] appended to `line` (one buffer reused for every request).
fn write_human_line(line: &mut String, result: &pb::ProbeResult) {
    use std::fmt::Write as _;
    let t = result.timings.unwrap_or_default();
    let remote = if result.remote_addr.is_empty() {
        "-"
    } else {
        result.remote_addr.as_str()
    };
    let slot_start = line.len();
    let _ = write!(line, "{}/{}", result.attempt, result.burst_index);
    let slot_len = line.len() - slot_start;
    line.extend(std::iter::repeat_n(
        ' ',
        8usize.saturating_sub(slot_len).max(1),
    ));
    let _ = write!(line, "{:<20} ", outcome_name(result.outcome));
    match result.status {
        0 => line.push_str("     -"),
        code => {
            let _ = write!(line, "{code:>6}");
        }
    }
    let _ = write!(
        line,
        " {:>9} {:>9} {:>9} {:>9} {:>9}  {remote}",
        Phase(t.dns_us),
        Phase(t.connect_us),
        Phase(t.tls_us),
        Phase(t.ttfb_us),
        Millis(t.total_us),
    );
    if !result.error.is_empty() {
        line.push_str("  ");
        line.push_str(&result.error);
    }
}

/// What the summary needs from each result.
#[derive(Debug, Default)]
struct Tally {
    outcomes: Vec<i32>,
    /// First-byte times of requests that got one.
    ttfb_us: Vec<u64>,
}

impl Tally {
    fn add(&mut self, result: &pb::ProbeResult) {
        self.outcomes.push(result.outcome);
        let ttfb = result.timings.map_or(0, |t| t.ttfb_us);
        if ttfb > 0 {
            self.ttfb_us.push(ttfb);
        }
    }

    fn all_ok(&self) -> bool {
        let ok = pb::Outcome::from(Outcome::Ok) as i32;
        self.outcomes.iter().all(|o| *o == ok)
    }

    /// Counts per outcome (in protocol order, unknown last), then the ttfb
    /// percentiles.
    fn summary(&self) -> Vec<String> {
        let mut counts: Vec<(&str, usize)> = Outcome::ALL
            .into_iter()
            .map(|o| {
                let wire = pb::Outcome::from(o) as i32;
                (
                    o.as_str(),
                    self.outcomes.iter().filter(|x| **x == wire).count(),
                )
            })
            .collect();
        let known: usize = counts.iter().map(|(_, n)| n).sum();
        counts.push(("unknown", self.outcomes.len() - known));
        let counts: Vec<String> = counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{n} {name}"))
            .collect();
        let mut lines = vec![format!(
            "{} requests: {}",
            self.outcomes.len(),
            counts.join(", ")
        )];
        let mut sorted = self.ttfb_us.clone();
        sorted.sort_unstable();
        let pct = |p| nearest_rank(&sorted, p).map_or_else(|| "-".to_string(), ms);
        lines.push(if sorted.is_empty() {
            "ttfb: no request got a first byte".to_string()
        } else {
            format!(
                "ttfb ms over {} requests with a first byte: p50 {}  p90 {}  p99 {}",
                sorted.len(),
                pct(50),
                pct(90),
                pct(99)
            )
        });
        lines
    }
}

pub(super) async fn probe(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let config = args.validate()?;
    let mut engine = ProbeEngine::new(config.policy, config.bind_ip).with_limits(ProbeLimits {
        max_rate_per_target: Some(config.max_rate),
        ..ProbeLimits::default()
    });
    if let Some(path) = &config.cacert {
        engine = engine
            .with_ca_pem(&read_ca_pem(path)?)
            .with_context(|| format!("--cacert {}", path.display()))?;
    }
    let runner = Runner::new(engine, probe_limits());
    let expected = runner.limits().plan.requests(&config.spec);
    let (tx, mut rx) = mpsc::channel(PROBE_OUTPUT_QUEUE);
    let spec = config.spec;
    let task = tokio::spawn(async move { runner.run_spec(PROBE_PLAN_ID, spec, tx).await });

    // Output is written in batches at least `PROBE_FLUSH_EVERY` apart: a
    // result after a quiet spell goes out at once, one that comes sooner
    // waits for the rest of the period. A reader of a pipe sees each line
    // within that period, and a fast burst costs one write (and no wake-up
    // of this task) per period instead of one per request; the queue holds
    // a period's results at 20k req/s.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
    let write_error = |e: std::io::Error| anyhow::anyhow!("cannot write to stdout: {e}");
    if !config.json {
        writeln!(out, "{}", human_header()).map_err(write_error)?;
        out.flush().map_err(write_error)?;
    }
    let mut tally = Tally::default();
    let mut line = String::new();
    let mut last_flush = tokio::time::Instant::now();
    while let Some(first) = rx.recv().await {
        if last_flush.elapsed() < PROBE_FLUSH_EVERY {
            tokio::time::sleep_until(last_flush + PROBE_FLUSH_EVERY).await;
        }
        let mut next = Some(first);
        while let Some(result) = next {
            line.clear();
            if config.json {
                serde_json::to_writer(&mut out, &result_json(&result))
                    .context("cannot encode a result")?;
            } else {
                write_human_line(&mut line, &result);
            }
            line.push('\n');
            out.write_all(line.as_bytes()).map_err(write_error)?;
            tally.add(&result);
            next = rx.try_recv().ok();
        }
        out.flush().map_err(write_error)?;
        last_flush = tokio::time::Instant::now();
    }
    drop(out);
    task.await
        .context("the probe runner stopped unexpectedly")?;

    let received = tally.outcomes.len() as u64;
    if !config.json && received > 1 {
        for line in tally.summary() {
            emit(&line)?;
        }
    }
    if received < expected {
        // Only a crashed request task loses a result; count it as a failure
        // rather than report success on partial evidence.
        tracing::warn!(
            "{} of {expected} requests produced no result",
            expected - received
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::from(if tally.all_ok() { 0 } else { 1 }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn probe_args(args: &[&str]) -> Result<ProbeArgs, clap::Error> {
        let mut argv = vec!["vantage-agent", "probe"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Probe(args) => args,
            other => panic!("parsed as {other:?}"),
        })
    }

    fn probe_config(args: &[&str]) -> anyhow::Result<ProbeConfig> {
        probe_args(args).unwrap().validate()
    }

    #[test]
    fn probe_defaults_build_a_single_request_spec() {
        let config = probe_config(&["http://example.com/a?b=1"]).unwrap();
        let spec = &config.spec;
        assert_eq!(spec.url, "http://example.com/a?b=1");
        assert_eq!(spec.method, "GET");
        assert_eq!(spec.route, pb::Route::Edge as i32);
        assert!(spec.address_override.is_empty());
        assert_eq!((spec.attempts, spec.burst, spec.concurrency), (1, 1, 1));
        assert_eq!(spec.timeouts.unwrap().total_ms, 10_000);
        assert!(spec.verify_tls);
        assert_eq!(spec.nonce.len(), 32, "a fresh random base nonce");
        assert!(
            spec.nonce_param.is_empty(),
            "the engine's default parameter"
        );
        assert!(!config.policy.allow_private);
        assert!(!config.json);
        assert!(config.bind_ip.is_none() && config.cacert.is_none());
        let again = probe_config(&["http://example.com/"]).unwrap();
        assert_ne!(again.spec.nonce, spec.nonce);
    }

    #[test]
    fn probe_flags_reach_the_spec() {
        let config = probe_config(&[
            "https://www.example.com/",
            "--resolve-to",
            "203.0.113.10:8443",
            "--header",
            "X-Forwarded-For: 198.51.100.7",
            "-H",
            "CDN-Loop:TencentEdgeOne; loops=1",
            "--method",
            "HEAD",
            "--attempts",
            "3",
            "--burst",
            "20",
            "--concurrency",
            "5",
            "--timeout",
            "1500ms",
            "--bind-ip",
            "192.0.2.9",
            "--insecure",
            "--allow-private",
            "--json",
        ])
        .unwrap();
        let spec = &config.spec;
        assert_eq!(spec.route, pb::Route::Direct as i32);
        assert_eq!(spec.address_override, "203.0.113.10:8443");
        assert_eq!(spec.method, "HEAD");
        let headers: Vec<(&str, &[u8])> = spec
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_slice()))
            .collect();
        assert_eq!(
            headers,
            [
                ("X-Forwarded-For", &b"198.51.100.7"[..]),
                ("CDN-Loop", &b"TencentEdgeOne; loops=1"[..]),
            ]
        );
        assert_eq!((spec.attempts, spec.burst, spec.concurrency), (3, 20, 5));
        assert_eq!(spec.timeouts.unwrap().total_ms, 1_500);
        assert!(!spec.verify_tls);
        assert_eq!(config.bind_ip, Some("192.0.2.9".parse().unwrap()));
        assert!(config.policy.allow_private);
        assert!(config.json);
        // Without --concurrency the whole burst is in flight at once.
        let config = probe_config(&["http://example.com/", "--burst", "7"]).unwrap();
        assert_eq!(config.spec.concurrency, 7);
        // A bare IP (v4 or v6) takes the URL's port, like curl --resolve.
        for addr in ["203.0.113.10", "2001:db8::1", "[2001:db8::1]:8080"] {
            assert!(probe_config(&["http://example.com/", "--resolve-to", addr]).is_ok());
        }
    }

    #[test]
    fn bad_probe_flags_are_named_before_any_network() {
        let cases: [(&[&str], &str); 19] = [
            (&["http://x/", "--header", "no colon"], "--header"),
            (&["http://x/", "--header", ": empty name"], "--header"),
            (&["http://x/", "--header", "Bad Name: v"], "--header"),
            (&["http://x/", "--header", "X-A: line\nbreak"], "--header"),
            (
                &["http://x/", "--resolve-to", "origin.example"],
                "--resolve-to",
            ),
            (
                &["http://x/", "--resolve-to", "1.2.3.4:99999"],
                "--resolve-to",
            ),
            (&["http://x/", "--method", "GE T"], "--method"),
            (&["http://x/", "--attempts", "0"], "--attempts"),
            (&["http://x/", "--attempts", "101"], "--attempts"),
            (&["http://x/", "--burst", "0"], "--burst"),
            (&["http://x/", "--burst", "20001"], "--burst"),
            (
                &["http://x/", "--burst", "4", "--concurrency", "5"],
                "--concurrency",
            ),
            (&["http://x/", "--concurrency", "0"], "--concurrency"),
            (&["http://x/", "--timeout", "0ms"], "--timeout"),
            (&["http://x/", "--max-rate", "0"], "--max-rate"),
            (&["http://x/", "--max-rate", "100001"], "--max-rate"),
            (&["http://x/", "--user-agent", "a\nb"], "--user-agent"),
            (&["ftp://x/"], "URL"),
            (&["not a url"], "URL"),
        ];
        for (args, flag) in cases {
            let err = probe_config(args).unwrap_err();
            assert!(format!("{err:#}").contains(flag), "{args:?}: {err:#}");
        }
        // Malformed numbers, durations and addresses are clap's usage errors,
        // which also name the flag.
        for (args, flag) in [
            (&["http://x/", "--timeout", "soon"][..], "--timeout"),
            (&["http://x/", "--attempts", "many"][..], "--attempts"),
            (&["http://x/", "--bind-ip", "eth0"][..], "--bind-ip"),
        ] {
            let err = probe_args(args).unwrap_err();
            assert!(err.to_string().contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(nearest_rank(&[], 50), None);
        assert_eq!(nearest_rank(&[7], 0), Some(7));
        assert_eq!(nearest_rank(&[7], 99), Some(7));
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&hundred, 50), Some(50));
        assert_eq!(nearest_rank(&hundred, 90), Some(90));
        assert_eq!(nearest_rank(&hundred, 99), Some(99));
        assert_eq!(nearest_rank(&hundred, 100), Some(100));
        // The classic example: 5 values, p30 is the 2nd, p40 the 2nd, p50 the 3rd.
        let five = [15, 20, 35, 40, 50];
        assert_eq!(nearest_rank(&five, 30), Some(20));
        assert_eq!(nearest_rank(&five, 40), Some(20));
        assert_eq!(nearest_rank(&five, 50), Some(35));
        assert_eq!(nearest_rank(&five, 100), Some(50));
        assert_eq!(nearest_rank(&five, 250), Some(50), "clamped to 100");
    }

    fn result(outcome: Outcome, ttfb_us: u64) -> pb::ProbeResult {
        pb::ProbeResult {
            attempt: 1,
            burst_index: 4,
            outcome: pb::Outcome::from(outcome) as i32,
            status: if ttfb_us > 0 { 200 } else { 0 },
            timings: Some(pb::Timings {
                dns_us: 10,
                connect_us: 250,
                tls_us: 0,
                ttfb_us,
                total_us: ttfb_us + 1_000,
            }),
            remote_addr: "192.0.2.1:80".into(),
            ..Default::default()
        }
    }

    #[test]
    fn human_lines_and_summary() {
        let line = human_line(&result(Outcome::Ok, 12_345));
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            columns,
            [
                "1/4",
                "ok",
                "200",
                "0.010",
                "0.250",
                "-",
                "12.345",
                "13.345",
                "192.0.2.1:80"
            ]
        );
        assert_eq!(
            human_header().split_whitespace().count(),
            columns.len(),
            "one title per column"
        );
        let mut failed = result(Outcome::ConnectRefused, 0);
        failed.error = "connect 192.0.2.1:80: refused".into();
        assert!(human_line(&failed).ends_with("192.0.2.1:80  connect 192.0.2.1:80: refused"));

        let mut tally = Tally::default();
        for r in [
            result(Outcome::Ok, 3_000),
            result(Outcome::Ok, 1_000),
            result(Outcome::Ok, 2_000),
            failed,
            result(Outcome::EmptyReply, 0),
        ] {
            tally.add(&r);
        }
        assert!(!tally.all_ok());
        assert_eq!(
            tally.summary(),
            [
                "5 requests: 3 ok, 1 connect_refused, 1 empty_reply",
                "ttfb ms over 3 requests with a first byte: p50 2.000  p90 3.000  p99 3.000",
            ]
        );
        let mut none = Tally::default();
        none.add(&pb::ProbeResult {
            outcome: 999,
            ..Default::default()
        });
        assert_eq!(
            none.summary(),
            ["1 requests: 1 unknown", "ttfb: no request got a first byte"]
        );
        let mut ok = Tally::default();
        ok.add(&result(Outcome::Ok, 5));
        assert!(ok.all_ok());
    }
}
