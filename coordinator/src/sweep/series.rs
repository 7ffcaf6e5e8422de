//! A sweep run's report as metric series (DESIGN §6a): `vantage_finding`
//! per finding and region, and blackbox_exporter's `probe_*` per region and
//! route of the run.
//!
//! Per (region, route) the series describe the route's first `baseline`
//! probe, the one request the seed's procedure starts with (blackbox's
//! `probe_*` also describe one request). `dns` probes have no HTTP phases
//! and are left out.

use crate::diagnosis::Variant;
use crate::metrics::{FindingSeries, PhaseSeconds, ProbeSeries};
use crate::report::Report;
use vantage_proto::domain::{Outcome, Route};

/// The finding and probe series of one run's report.
pub fn of_report(report: &Report) -> (Vec<FindingSeries>, Vec<ProbeSeries>) {
    let mut findings = Vec::new();
    for finding in &report.findings {
        for region in &finding.regions {
            findings.push(FindingSeries {
                code: finding.code.as_str().to_string(),
                kind: finding.kind.map_or("", |k| k.as_str()).to_string(),
                region: region.clone(),
            });
        }
    }
    let mut probes = Vec::new();
    for region in report.regions.iter().filter(|r| !r.lost) {
        for route in [Route::Direct, Route::Edge] {
            let Some(probe) = region
                .probes
                .iter()
                .find(|p| p.route == route && p.variant == Variant::Baseline)
            else {
                continue;
            };
            let t = &probe.timings_ms;
            // The leaf is the one certificate an agent reports; in a sane
            // chain it is also the one that expires first.
            let ssl_earliest_cert_expiry = region
                .probes
                .iter()
                .filter(|p| p.route == route)
                .filter_map(|p| p.tls_not_after_unix)
                .min()
                .map(|s| s as f64);
            probes.push(ProbeSeries {
                region: region.region.clone(),
                route: route.as_str().to_string(),
                success: probe.outcome == Outcome::Ok
                    && probe.status.is_some_and(|s| (200..400).contains(&s)),
                duration_seconds: t.total / 1000.0,
                phases: PhaseSeconds::from_cumulative_ms(t.dns, t.connect, t.tls, t.ttfb, t.total),
                status_code: probe.status.unwrap_or(0),
                ssl_earliest_cert_expiry,
            });
        }
    }
    (findings, probes)
}
