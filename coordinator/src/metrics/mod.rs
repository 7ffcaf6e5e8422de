//! The coordinator's Prometheus metrics (DESIGN §6a, a contract): the metric
//! families and their names, the per-sweep bookkeeping that makes a sweep's
//! last run replace what its previous run set, and the text exposition that
//! `GET /metrics` serves.
//!
//! It owns the names, labels and meanings of every series; callers report
//! events (`results_ingested`, `campaign_finished`, `sweep_run`, …) and pass
//! plain values. It never imports the store, the registry, the API or the
//! campaign code: the agents-connected map is computed by the caller at
//! scrape time and handed to [`Metrics::encode`].
//!
//! The exposition is the classic Prometheus text format (0.0.4,
//! [`CONTENT_TYPE`]), which every Prometheus scraper and `promtool check
//! metrics` read: prometheus-client writes OpenMetrics, whose counter
//! families are named without `_total` and which ends in `# EOF`;
//! [`Metrics::encode`] renames those families' `# HELP`/`# TYPE` lines to
//! the `_total` sample name and drops `# EOF`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An `f64` gauge.
type FloatGauge = Gauge<f64, AtomicU64>;

/// The counter families, by the name they are registered under (the
/// OpenMetrics family name; their samples end in `_total`).
const COUNTERS: [&str; 4] = [
    "vantage_results_ingested",
    "vantage_campaigns",
    "vantage_sweep_runs",
    "vantage_webhook_deliveries",
];

/// The phases of `probe_http_duration_seconds`, in blackbox_exporter's order.
const PHASES: [&str; 5] = ["resolve", "connect", "tls", "processing", "transfer"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabels {
    region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SweepLabels {
    sweep: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SweepStatusLabels {
    sweep: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    sweep: String,
    code: String,
    kind: String,
    region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    sweep: String,
    region: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    sweep: String,
    region: String,
    route: String,
    phase: &'static str,
}

impl ProbeLabels {
    fn phase(&self, phase: &'static str) -> PhaseLabels {
        PhaseLabels {
            sweep: self.sweep.clone(),
            region: self.region.clone(),
            route: self.route.clone(),
            phase,
        }
    }
}

/// One finding of a sweep's last run, in one region: the series
/// `vantage_finding{sweep,code,kind,region} 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingSeries {
    /// The finding code (DESIGN §5), e.g. `origin_slow`.
    pub code: String,
    /// The finding kind, e.g. `fault`.
    pub kind: String,
    /// The region it was seen in.
    pub region: String,
}

/// The seconds of each phase of one HTTP probe, as blackbox_exporter's
/// `probe_http_duration_seconds{phase}` splits them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PhaseSeconds {
    /// DNS resolution.
    pub resolve: f64,
    /// TCP connect, after resolution.
    pub connect: f64,
    /// TLS handshake, after connect (0 for plain HTTP).
    pub tls: f64,
    /// From the connection being ready to the first response byte.
    pub processing: f64,
    /// From the first response byte to the last.
    pub transfer: f64,
}

impl PhaseSeconds {
    /// The phases from curl-style cumulative marks in milliseconds since the
    /// start (`time_namelookup`, `time_connect`, `time_appconnect`,
    /// `time_starttransfer`, `time_total`). For plain HTTP the TLS mark is 0
    /// or equal to the connect mark; either gives a TLS phase of 0. No phase
    /// is ever negative (a missing or out-of-order mark counts as 0), and
    /// non-finite marks count as 0.
    pub fn from_cumulative_ms(dns: f64, connect: f64, tls: f64, ttfb: f64, total: f64) -> Self {
        let mark = |v: f64| if v.is_finite() && v > 0.0 { v } else { 0.0 };
        let (dns, connect, tls, ttfb, total) =
            (mark(dns), mark(connect), mark(tls), mark(ttfb), mark(total));
        let span = |from: f64, to: f64| ((to - from) / 1000.0).max(0.0);
        let ready = connect.max(tls);
        PhaseSeconds {
            resolve: dns / 1000.0,
            connect: span(dns, connect),
            tls: if tls > connect {
                span(connect, tls)
            } else {
                0.0
            },
            processing: span(ready, ttfb),
            transfer: span(ttfb, total),
        }
    }

    fn by_phase(&self) -> [(&'static str, f64); 5] {
        [
            (PHASES[0], self.resolve),
            (PHASES[1], self.connect),
            (PHASES[2], self.tls),
            (PHASES[3], self.processing),
            (PHASES[4], self.transfer),
        ]
    }
}

/// One (region, route) probe of a sweep's last run, with blackbox_exporter's
/// meanings.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSeries {
    /// The region of the agent that probed.
    pub region: String,
    /// The route (`origin`, `edge`, …).
    pub route: String,
    /// `probe_success`: whether the probe succeeded.
    pub success: bool,
    /// `probe_duration_seconds`: how long the whole probe took.
    pub duration_seconds: f64,
    /// `probe_http_duration_seconds{phase}`.
    pub phases: PhaseSeconds,
    /// `probe_http_status_code` (0 when no response arrived).
    pub status_code: u16,
    /// `probe_ssl_earliest_cert_expiry`, unix seconds; the series is only
    /// written when this is known.
    pub ssl_earliest_cert_expiry: Option<f64>,
}

/// The label sets a sweep has set, so that its next run (or its deletion)
/// removes exactly those.
#[derive(Debug, Default)]
struct SweepSeries {
    statuses: HashSet<String>,
    findings: HashSet<FindingLabels>,
    probes: HashSet<ProbeLabels>,
    ssl: HashSet<ProbeLabels>,
}

/// The coordinator's metrics: cheap to update from any thread, shared as
/// `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    agents_connected: Family<RegionLabels, Gauge>,
    results_ingested: Counter,
    campaigns: Family<StatusLabels, Counter>,
    sweep_runs: Family<SweepStatusLabels, Counter>,
    sweep_last_run: Family<SweepLabels, FloatGauge>,
    finding: Family<FindingLabels, Gauge>,
    alerts_open: Family<SweepLabels, Gauge>,
    webhook_deliveries: Family<ResultLabels, Counter>,
    probe_success: Family<ProbeLabels, Gauge>,
    probe_duration: Family<ProbeLabels, FloatGauge>,
    probe_http_duration: Family<PhaseLabels, FloatGauge>,
    probe_status_code: Family<ProbeLabels, Gauge>,
    probe_ssl_expiry: Family<ProbeLabels, FloatGauge>,
    /// What each sweep has set; held while a sweep's series change, so a
    /// run's replacement and a deletion never interleave.
    sweeps: Mutex<HashMap<String, SweepSeries>>,
    /// Held while the agents gauge is refilled and the registry encoded, so
    /// two scrapes never see each other's half-filled map.
    scrape: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update leaves the families consistent, so a panic elsewhere
    // while holding the lock is no reason to stop serving metrics.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// Every family of the contract, registered and empty.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let agents_connected = Family::<RegionLabels, Gauge>::default();
        registry.register(
            "vantage_agents_connected",
            "Agents connected now, per region (regions of enrolled agents show 0)",
            agents_connected.clone(),
        );
        let results_ingested = Counter::default();
        registry.register(
            COUNTERS[0],
            "Probe results stored",
            results_ingested.clone(),
        );
        let campaigns = Family::<StatusLabels, Counter>::default();
        registry.register(
            COUNTERS[1],
            "Campaigns concluded, by status",
            campaigns.clone(),
        );
        let sweep_runs = Family::<SweepStatusLabels, Counter>::default();
        registry.register(
            COUNTERS[2],
            "Sweep runs, by sweep and status (missed: the slot could not start)",
            sweep_runs.clone(),
        );
        let sweep_last_run = Family::<SweepLabels, FloatGauge>::default();
        registry.register(
            "vantage_sweep_last_run_timestamp_seconds",
            "When the sweep's last run finished, unix seconds",
            sweep_last_run.clone(),
        );
        let finding = Family::<FindingLabels, Gauge>::default();
        registry.register(
            "vantage_finding",
            "1 while the sweep's last run has this finding in this region",
            finding.clone(),
        );
        let alerts_open = Family::<SweepLabels, Gauge>::default();
        registry.register(
            "vantage_alerts_open",
            "Open alerts, per sweep",
            alerts_open.clone(),
        );
        let webhook_deliveries = Family::<ResultLabels, Counter>::default();
        registry.register(
            COUNTERS[3],
            "Webhook delivery attempts, by result",
            webhook_deliveries.clone(),
        );
        let probe_success = Family::<ProbeLabels, Gauge>::default();
        registry.register(
            "probe_success",
            "Whether the probe of the sweep's last run succeeded",
            probe_success.clone(),
        );
        let probe_duration = Family::<ProbeLabels, FloatGauge>::default();
        registry.register(
            "probe_duration_seconds",
            "Returns how long the probe took to complete in seconds",
            probe_duration.clone(),
        );
        let probe_http_duration = Family::<PhaseLabels, FloatGauge>::default();
        registry.register(
            "probe_http_duration_seconds",
            "Duration of http request by phase",
            probe_http_duration.clone(),
        );
        let probe_status_code = Family::<ProbeLabels, Gauge>::default();
        registry.register(
            "probe_http_status_code",
            "Response HTTP status code (0 without a response)",
            probe_status_code.clone(),
        );
        let probe_ssl_expiry = Family::<ProbeLabels, FloatGauge>::default();
        registry.register(
            "probe_ssl_earliest_cert_expiry",
            "Returns last SSL chain expiry in unixtime",
            probe_ssl_expiry.clone(),
        );
        Metrics {
            registry,
            agents_connected,
            results_ingested,
            campaigns,
            sweep_runs,
            sweep_last_run,
            finding,
            alerts_open,
            webhook_deliveries,
            probe_success,
            probe_duration,
            probe_http_duration,
            probe_status_code,
            probe_ssl_expiry,
            sweeps: Mutex::default(),
            scrape: Mutex::default(),
        }
    }

    /// `vantage_results_ingested_total` += `n` (new results stored).
    pub fn results_ingested(&self, n: u64) {
        self.results_ingested.inc_by(n);
    }

    /// `vantage_campaigns_total{status}` += 1; `status` is the campaign's
    /// contract status (`healthy|faulty|inconclusive`).
    pub fn campaign_finished(&self, status: &str) {
        self.campaigns
            .get_or_create(&StatusLabels {
                status: status.to_string(),
            })
            .inc();
    }

    /// A sweep run ended (or its slot was `missed`):
    /// `vantage_sweep_runs_total{sweep,status}` += 1 and
    /// `vantage_sweep_last_run_timestamp_seconds{sweep}` = `finished_at_ms`
    /// in seconds.
    pub fn sweep_run(&self, sweep: &str, status: &str, finished_at_ms: i64) {
        let mut sweeps = lock(&self.sweeps);
        let entry = sweeps.entry(sweep.to_string()).or_default();
        entry.statuses.insert(status.to_string());
        self.sweep_runs
            .get_or_create(&SweepStatusLabels {
                sweep: sweep.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.sweep_last_run
            .get_or_create(&SweepLabels {
                sweep: sweep.to_string(),
            })
            .set(finished_at_ms as f64 / 1000.0);
    }

    /// Replaces everything `sweep`'s previous run set with its last run's
    /// findings (`vantage_finding`) and probes (`probe_*`): series of the
    /// previous run that this one lacks disappear; other sweeps' series are
    /// untouched.
    pub fn sweep_last_run(&self, sweep: &str, findings: &[FindingSeries], probes: &[ProbeSeries]) {
        let mut sweeps = lock(&self.sweeps);
        let entry = sweeps.entry(sweep.to_string()).or_default();

        let new_findings: HashSet<FindingLabels> = findings
            .iter()
            .map(|f| FindingLabels {
                sweep: sweep.to_string(),
                code: f.code.clone(),
                kind: f.kind.clone(),
                region: f.region.clone(),
            })
            .collect();
        for stale in entry.findings.difference(&new_findings) {
            self.finding.remove(stale);
        }
        for labels in &new_findings {
            self.finding.get_or_create(labels).set(1);
        }
        entry.findings = new_findings;

        let mut new_probes = HashSet::new();
        let mut new_ssl = HashSet::new();
        for probe in probes {
            let labels = ProbeLabels {
                sweep: sweep.to_string(),
                region: probe.region.clone(),
                route: probe.route.clone(),
            };
            self.probe_success
                .get_or_create(&labels)
                .set(i64::from(probe.success));
            self.probe_duration
                .get_or_create(&labels)
                .set(probe.duration_seconds.max(0.0));
            for (phase, seconds) in probe.phases.by_phase() {
                self.probe_http_duration
                    .get_or_create(&labels.phase(phase))
                    .set(seconds);
            }
            self.probe_status_code
                .get_or_create(&labels)
                .set(i64::from(probe.status_code));
            if let Some(expiry) = probe.ssl_earliest_cert_expiry {
                self.probe_ssl_expiry.get_or_create(&labels).set(expiry);
                new_ssl.insert(labels.clone());
            }
            new_probes.insert(labels);
        }
        for stale in entry.probes.difference(&new_probes) {
            self.remove_probe(stale);
        }
        for stale in entry.ssl.difference(&new_ssl) {
            self.probe_ssl_expiry.remove(stale);
        }
        entry.probes = new_probes;
        entry.ssl = new_ssl;
    }

    fn remove_probe(&self, labels: &ProbeLabels) {
        self.probe_success.remove(labels);
        self.probe_duration.remove(labels);
        for phase in PHASES {
            self.probe_http_duration.remove(&labels.phase(phase));
        }
        self.probe_status_code.remove(labels);
        self.probe_ssl_expiry.remove(labels);
    }

    /// `vantage_alerts_open{sweep}` = `open`.
    pub fn set_alerts_open(&self, sweep: &str, open: u64) {
        // Held so that a concurrent `forget_sweep` cannot be undone halfway.
        let mut sweeps = lock(&self.sweeps);
        sweeps.entry(sweep.to_string()).or_default();
        self.alerts_open
            .get_or_create(&SweepLabels {
                sweep: sweep.to_string(),
            })
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// `vantage_webhook_deliveries_total{result}` += 1; `result` is
    /// `delivered` or `failed`.
    pub fn webhook_delivery(&self, result: &str) {
        self.webhook_deliveries
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Removes every series of a deleted sweep.
    pub fn forget_sweep(&self, sweep: &str) {
        let mut sweeps = lock(&self.sweeps);
        let Some(entry) = sweeps.remove(sweep) else {
            return;
        };
        for status in &entry.statuses {
            self.sweep_runs.remove(&SweepStatusLabels {
                sweep: sweep.to_string(),
                status: status.clone(),
            });
        }
        let labels = SweepLabels {
            sweep: sweep.to_string(),
        };
        self.sweep_last_run.remove(&labels);
        self.alerts_open.remove(&labels);
        for finding in &entry.findings {
            self.finding.remove(finding);
        }
        for probe in &entry.probes {
            self.remove_probe(probe);
        }
        for probe in &entry.ssl {
            self.probe_ssl_expiry.remove(probe);
        }
    }

    /// The Prometheus text exposition (format 0.0.4, [`CONTENT_TYPE`]), with
    /// `vantage_agents_connected{region}` set from `agents_connected`: every
    /// region in the map appears (with 0 if none is connected), and only
    /// those.
    pub fn encode(&self, agents_connected: &BTreeMap<String, u64>) -> String {
        let _scrape = lock(&self.scrape);
        self.agents_connected.clear();
        for (region, count) in agents_connected {
            self.agents_connected
                .get_or_create(&RegionLabels {
                    region: region.clone(),
                })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        let mut openmetrics = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut openmetrics, &self.registry)
        {
            // Writing into a String cannot fail; keep what was written.
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        to_text_format(&openmetrics)
    }
}

/// prometheus-client's OpenMetrics output as the classic text format: the
/// counter families' `# HELP`/`# TYPE` lines name their `_total` samples,
/// and `# EOF` (and any `# UNIT`) goes.
fn to_text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            COUNTERS
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
