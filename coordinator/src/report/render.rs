//! The human renderings of a [`Report`]: the terminal view (optionally in
//! colour) and Markdown. Both draw the same region × probe table from
//! [`rows`], sorted by region, route, variant and address as the report is.

use std::fmt::Write as _;

use super::{Report, ReportProbe};
use crate::diagnosis::{Status, Variant};
use vantage_proto::domain::{Outcome, Route};

/// One row of the region × probe table: a region's requests of one
/// route/variant/address, summarised.
struct Row {
    region: String,
    probe: String,
    outcome: String,
    status: String,
    ttfb: String,
    failed: bool,
}

fn rows(report: &Report) -> Vec<Row> {
    let mut out = Vec::new();
    for r in &report.regions {
        let mut keys: Vec<(Route, Variant, &str)> = Vec::new();
        for p in &r.probes {
            let key = (p.route, p.variant, p.address.as_str());
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        for (route, variant, address) in keys {
            let probes: Vec<&ReportProbe> = r
                .probes
                .iter()
                .filter(|p| p.route == route && p.variant == variant && p.address == address)
                .collect();
            let outcome = counted(probes.iter().map(|p| p.outcome.as_str().to_string()));
            let status = counted(
                probes
                    .iter()
                    .map(|p| p.status.map_or_else(|| "-".to_string(), |s| s.to_string())),
            );
            let mut ttfbs: Vec<f64> = probes
                .iter()
                .map(|p| p.timings_ms.ttfb)
                .filter(|t| *t > 0.0)
                .collect();
            ttfbs.sort_by(f64::total_cmp);
            let ttfb = ttfbs
                .get(ttfbs.len() / 2)
                .map_or_else(|| "-".to_string(), |t| format!("{t:.0} ms"));
            let failed = probes
                .iter()
                .any(|p| p.outcome != Outcome::Ok || p.status.is_some_and(|s| s >= 500));
            let where_ = if address.is_empty() {
                String::new()
            } else {
                format!(" {address}")
            };
            out.push(Row {
                region: if r.lost {
                    format!("{} (lost)", r.region)
                } else {
                    r.region.clone()
                },
                probe: format!("{route}/{variant}{where_}"),
                outcome,
                status,
                ttfb,
                failed,
            });
        }
    }
    out
}

/// `ok` or `ok ×2, reset ×1`: each item with its count, in first-seen
/// order (the terminal table and the HTML matrix both use it).
pub(super) fn counted(items: impl Iterator<Item = String>) -> String {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for i in items {
        match seen.iter_mut().find(|(s, _)| *s == i) {
            Some((_, n)) => *n += 1,
            None => seen.push((i, 1)),
        }
    }
    if seen.len() == 1 {
        return seen.remove(0).0;
    }
    seen.iter()
        .map(|(s, n)| format!("{s} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// The report for a terminal: verdict and findings first (summary, evidence,
/// advice, reproduce), then the region × probe table. ANSI colour only when
/// `color`.
pub fn render_terminal(report: &Report, color: bool) -> String {
    let paint = |code: &str, s: &str| {
        if color {
            format!("{code}{s}{RESET}")
        } else {
            s.to_string()
        }
    };
    let status_colour = match report.status {
        Status::Healthy => GREEN,
        Status::Faulty => RED,
        Status::Inconclusive => YELLOW,
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}  ({}, campaign {})",
        paint(BOLD, "vantage:"),
        paint(status_colour, report.status.as_str()),
        report.target.url,
        report.campaign
    );
    if !report.summary.is_empty() {
        let _ = writeln!(out, "  {}", report.summary);
    }
    let t = &report.target;
    let _ = writeln!(
        out,
        "  pull {}://{}{} · edge timeout {} ms · timeouts connect {} / tls {} / ttfb {} ms · UA {}",
        t.pull.protocol,
        t.pull.host,
        t.pull.path,
        t.edge_timeout_ms,
        t.timeouts_ms.connect,
        t.timeouts_ms.tls,
        t.timeouts_ms.ttfb,
        t.user_agent
    );
    for f in &report.findings {
        let title = match &f.kind {
            Some(k) => format!("{}/{k}", f.code),
            None => f.code.to_string(),
        };
        let _ = writeln!(
            out,
            "\n{} [{}] in {}",
            paint(&format!("{BOLD}{RED}"), &title),
            f.confidence.as_str(),
            f.regions.join(", ")
        );
        let _ = writeln!(out, "  {}", f.summary);
        for e in &f.evidence {
            let _ = writeln!(out, "    - {e}");
        }
        let _ = writeln!(out, "  {} {}", paint(BOLD, "advice:"), f.advice);
        let _ = writeln!(out, "  {}", paint(BOLD, "reproduce:"));
        for c in &f.reproduce {
            let _ = writeln!(out, "    $ {c}");
        }
    }
    if let Some(f) = &report.ttfb_followup {
        let _ = writeln!(out, "\n{}", paint(BOLD, "ttfb follow-up:"));
        match f.state {
            crate::report::FollowupState::Running => {
                let _ = writeln!(
                    out,
                    "  measuring the origin's real time to first byte (waits up to {} s); see `vantage campaign show {}` later",
                    f.wait_ms / 1000,
                    report.campaign
                );
            }
            crate::report::FollowupState::Done => {
                for m in &f.measurements {
                    let seen = match m.ttfb_ms {
                        Some(ms) if m.outcome == Outcome::Ok => {
                            format!("first byte after {:.1} s", ms / 1000.0)
                        }
                        _ => format!(
                            "{} (no first byte within {} s)",
                            m.outcome,
                            f.wait_ms / 1000
                        ),
                    };
                    let _ = writeln!(out, "  {} → {}: {seen}", m.region, m.address);
                }
            }
        }
    }
    if !report.missing.is_empty() {
        let _ = writeln!(out, "\n{}", paint(YELLOW, "missing:"));
        for m in &report.missing {
            let _ = writeln!(out, "  - {m}");
        }
    }
    let rows = rows(report);
    let mut table = vec![["region", "probe", "outcome", "status", "ttfb"].map(String::from)];
    table.extend(rows.iter().map(|r| {
        [
            r.region.clone(),
            r.probe.clone(),
            r.outcome.clone(),
            r.status.clone(),
            r.ttfb.clone(),
        ]
    }));
    out.push('\n');
    out.push_str(&columns(&table, |row, column, cell| {
        match (row.checked_sub(1).map(|r| &rows[r]), column) {
            (Some(r), 2) if r.failed => paint(RED, &cell),
            (Some(_), 2) => paint(GREEN, &cell),
            _ => cell,
        }
    }));
    let w = &report.witness;
    if w.present {
        let routes: Vec<String> = w
            .by_route
            .iter()
            .map(|(route, n)| format!("{route} {}/{}", n.seen, n.sent))
            .collect();
        let _ = writeln!(
            out,
            "\nwitness: saw {} request(s) ({}; per region {}); edge pull IPs: {}",
            w.seen,
            routes.join(", "),
            w.by_region
                .iter()
                .map(|(region, n)| format!("{region} {}/{}", n.seen, n.sent))
                .collect::<Vec<_>>()
                .join(", "),
            if w.edge_pull_ips.is_empty() {
                "none".to_string()
            } else {
                w.edge_pull_ips.join(", ")
            }
        );
    } else {
        let _ = writeln!(out, "\nwitness: none ran");
    }
    out
}

/// Lays `rows` out in columns two spaces apart, each as wide as its widest
/// cell, one line per row (trailing spaces trimmed). `paint(row, column,
/// cell)` gets each cell already padded, so colour escapes added there never
/// skew the columns.
pub(crate) fn columns<const N: usize>(
    rows: &[[String; N]],
    paint: impl Fn(usize, usize, String) -> String,
) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (r, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(c, (cell, width))| paint(r, c, format!("{cell:<width$}")))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Escapes a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The report as Markdown for a support ticket: findings, the region × probe
/// table, and the edge's request ids (e.g. `EO-LOG-UUID`) that the CDN's
/// support can look up.
pub fn render_markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# vantage report: {}\n", report.status.as_str());
    let _ = writeln!(
        out,
        "- verdict: {}\n- URL: `{}`\n- pull: `{}://{}{}` (User-Agent `{}`)\n- origin: {}\n- edge: {}\n- CDN: {} (origin-response timeout {} ms)\n- campaign: `{}`",
        report.summary,
        report.target.url,
        report.target.pull.protocol,
        report.target.pull.host,
        report.target.pull.path,
        report.target.user_agent,
        report.target.origin.join(", "),
        if report.target.edge.is_empty() {
            "(resolver)".to_string()
        } else {
            report.target.edge.join(", ")
        },
        report.target.cdn,
        report.target.edge_timeout_ms,
        report.campaign
    );
    if !report.findings.is_empty() {
        let _ = writeln!(out, "\n## Findings");
    }
    for f in &report.findings {
        let title = match &f.kind {
            Some(k) => format!("`{}` / `{k}`", f.code),
            None => format!("`{}`", f.code),
        };
        let _ = writeln!(
            out,
            "\n### {title}\n\n**Regions:** {} — **confidence:** {}\n\n{}\n",
            f.regions.join(", "),
            f.confidence.as_str(),
            f.summary
        );
        for e in &f.evidence {
            let _ = writeln!(out, "- {e}");
        }
        let _ = writeln!(out, "\n**Advice:** {}\n\n```sh", f.advice);
        for c in &f.reproduce {
            let _ = writeln!(out, "{c}");
        }
        let _ = writeln!(out, "```");
    }
    if !report.missing.is_empty() {
        let _ = writeln!(out, "\n## Missing evidence\n");
        for m in &report.missing {
            let _ = writeln!(out, "- {m}");
        }
    }
    let _ = writeln!(
        out,
        "\n## Probes\n\n| region | probe | outcome | status | ttfb |\n|---|---|---|---|---|"
    );
    for r in rows(report) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            cell(&r.region),
            cell(&r.probe),
            cell(&r.outcome),
            cell(&r.status),
            cell(&r.ttfb)
        );
    }
    let id_header = report
        .target
        .cdn
        .parse::<vantage_proto::cdn::CdnProfile>()
        .map(|p| p.request_id_header())
        .unwrap_or("request id");
    let ids: Vec<(String, &ReportProbe)> = report
        .regions
        .iter()
        .flat_map(|r| r.probes.iter().map(move |p| (r.region.clone(), p)))
        .filter(|(_, p)| !p.edge_request_id.is_empty())
        .collect();
    if !ids.is_empty() {
        let _ = writeln!(
            out,
            "\n## Edge request ids ({id_header})\n\n| region | edge | status | {id_header} |\n|---|---|---|---|"
        );
        for (region, p) in ids {
            let _ = writeln!(
                out,
                "| {} | {} | {} | `{}` |",
                cell(&region),
                cell(if p.address.is_empty() {
                    "(resolver)"
                } else {
                    &p.address
                }),
                p.status.map_or_else(|| "-".to_string(), |s| s.to_string()),
                cell(&p.edge_request_id)
            );
        }
    }
    let w = &report.witness;
    let _ = writeln!(
        out,
        "\n## Origin witness\n\n{}",
        if w.present {
            format!(
                "Saw {} request(s); edge pull IPs: {}",
                w.seen,
                if w.edge_pull_ips.is_empty() {
                    "none".to_string()
                } else {
                    w.edge_pull_ips.join(", ")
                }
            )
        } else {
            "No witness ran on the origin.".to_string()
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::columns;

    #[test]
    fn columns_align_on_the_widest_cell_and_paint_after_padding() {
        let rows = [
            ["a".to_string(), "bb".to_string(), "c".to_string()],
            ["long".to_string(), "x".to_string(), "".to_string()],
        ];
        let plain = columns(&rows, |_, _, cell| cell);
        assert_eq!(plain, "a     bb  c\nlong  x\n");
        let painted = columns(&rows, |row, column, cell| {
            if row == 1 && column == 0 {
                format!("<{cell}>")
            } else {
                cell
            }
        });
        assert_eq!(painted, "a     bb  c\n<long>  x\n");
    }
}
