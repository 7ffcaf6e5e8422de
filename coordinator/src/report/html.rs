//! The report as one self-contained HTML page (`--html FILE`, issue #12
//! item 4): findings first (evidence, advice, copyable reproduce commands),
//! then a region × probe matrix coloured by outcome with its text in every
//! cell, a timing waterfall per region as inline SVG, the target, witness
//! and timestamps, every request, and the raw JSON.
//!
//! The page fetches nothing: inline CSS and SVG only, no script, font or
//! image, and a Content-Security-Policy (`default-src 'none'`) that would
//! block anything else. Every string that came from the network or the
//! command line (URL, titles and headers quoted in evidence, error texts,
//! request ids) is escaped with [`escape`] before it is written, in text
//! and in attributes alike.
//!
//! A "probe" column of the matrix is one (route, variant, address) step of
//! the plan, as the terminal table's rows are: the requests of a region
//! with that key are summarised in one cell (`data-region`, `data-probe`,
//! `data-outcome`, `data-state`).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::render::counted;
use super::{FollowupState, Report, ReportProbe};
use crate::diagnosis::Variant;
use vantage_proto::domain::{Outcome, Route};

/// What the page shows beside the report itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HtmlMeta {
    /// When the campaign started (RFC 3339), if known.
    pub started_at: Option<String>,
    /// When it finished (RFC 3339), if known.
    pub finished_at: Option<String>,
    /// When this page was written (RFC 3339).
    pub rendered_at: String,
    /// The report exactly as the coordinator stored it (shown in the raw
    /// JSON block); `None` shows the typed report re-serialised.
    pub raw_json: Option<String>,
}

/// The policy the page declares: nothing may load, only inline styles and
/// `data:` images are allowed.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

/// Escapes text for HTML text and double- or single-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters other than tab and newline say nothing in
            // a page and can confuse a parser: shown as U+FFFD.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// One column of the matrix: a plan step and the address it went to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ProbeKey {
    route: Route,
    variant: Variant,
    address: String,
}

impl ProbeKey {
    fn of(p: &ReportProbe) -> ProbeKey {
        ProbeKey {
            route: p.route,
            variant: p.variant,
            address: p.address.clone(),
        }
    }

    fn matches(&self, p: &ReportProbe) -> bool {
        p.route == self.route && p.variant == self.variant && p.address == self.address
    }

    /// `direct/baseline 192.0.2.1:80` (`dns`, or no address: the resolver).
    fn label(&self) -> String {
        let step = if self.route == Route::Dns {
            "dns".to_string()
        } else {
            format!("{}/{}", self.route, self.variant)
        };
        if self.address.is_empty() {
            step
        } else {
            format!("{step} {}", self.address)
        }
    }
}

/// The matrix's columns: every (route, variant, address) any region ran,
/// in the report's order (route, variant, address).
pub(crate) fn probe_columns(report: &Report) -> Vec<ProbeKey> {
    let keys: BTreeSet<ProbeKey> = report
        .regions
        .iter()
        .flat_map(|r| r.probes.iter().map(ProbeKey::of))
        .collect();
    keys.into_iter().collect()
}

/// How a cell reads at a glance (and its colour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Every request got a response below 400.
    Good,
    /// Responses came, but some with a 4xx/5xx status.
    HttpError,
    /// Every request failed below HTTP.
    Failed,
    /// Some failed, some did not.
    Mixed,
    /// The region ran no such request.
    NotRun,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Good => "good",
            State::HttpError => "http-error",
            State::Failed => "failed",
            State::Mixed => "mixed",
            State::NotRun => "not-run",
        }
    }

    fn legend(self) -> &'static str {
        match self {
            State::Good => "response, status < 400",
            State::HttpError => "response with a 4xx/5xx status",
            State::Failed => "no HTTP response (reset, refused, timeout, …)",
            State::Mixed => "some requests failed, some did not",
            State::NotRun => "not run in this region",
        }
    }

    const ALL: [State; 5] = [
        State::Good,
        State::HttpError,
        State::Failed,
        State::Mixed,
        State::NotRun,
    ];
}

fn state_of(probes: &[&ReportProbe]) -> State {
    if probes.is_empty() {
        return State::NotRun;
    }
    let failed = probes.iter().filter(|p| p.outcome != Outcome::Ok).count();
    if failed == probes.len() {
        State::Failed
    } else if failed > 0 {
        State::Mixed
    } else if probes.iter().any(|p| p.status.is_some_and(|s| s >= 400)) {
        State::HttpError
    } else {
        State::Good
    }
}

/// The request whose total time is the median of `probes`.
fn median<'a>(probes: &[&'a ReportProbe]) -> Option<&'a ReportProbe> {
    let mut sorted = probes.to_vec();
    sorted.sort_by(|a, b| a.timings_ms.total.total_cmp(&b.timings_ms.total));
    sorted.get(sorted.len() / 2).copied()
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.0} ms")
    }
}

const STYLE: &str = r#"
:root { --fg:#1b1f24; --muted:#57606a; --line:#d0d7de; --bg:#ffffff; --panel:#f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 0 0 6px; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
pre { background: var(--panel); border: 1px solid var(--line); border-radius: 4px; padding: 8px 10px; overflow-x: auto; white-space: pre-wrap; word-break: break-all; margin: 4px 0; }
.muted { color: var(--muted); }
.status { display: inline-block; padding: 2px 10px; border-radius: 12px; font-weight: 700; border: 2px solid; }
.status-healthy { color: #116329; border-color: #1a7f37; background: #dafbe1; }
.status-faulty { color: #82071e; border-color: #cf222e; background: #ffebe9; }
.status-inconclusive { color: #7d4e00; border-color: #bf8700; background: #fff8c5; }
.summary { font-size: 15px; margin: 8px 0 0; }
.finding { border: 1px solid var(--line); border-left: 6px solid #cf222e; border-radius: 4px; padding: 12px 16px; margin: 12px 0; break-inside: avoid; }
.finding .meta { margin: 0 0 6px; }
.badge { display: inline-block; border: 1px solid var(--line); border-radius: 10px; padding: 0 8px; margin-right: 4px; font-size: 12px; background: var(--panel); }
.conf-high { border-color: #cf222e; }
.conf-medium { border-color: #bf8700; }
.conf-low { border-color: #8c959f; }
.finding ul { margin: 4px 0 8px; padding-left: 20px; }
.label { font-weight: 600; }
table { border-collapse: collapse; }
.matrix th, .matrix td { border: 1px solid var(--line); padding: 4px 6px; text-align: center; vertical-align: middle; }
.matrix th.probe { font-weight: 600; font-size: 12px; max-width: 150px; word-break: break-word; }
.matrix th.region { text-align: left; white-space: nowrap; }
.cell { min-width: 84px; }
.cell b { display: block; font-size: 14px; }
.cell small { display: block; font-size: 11px; color: #333; }
.cell[data-state="good"] { background: #dafbe1; }
.cell[data-state="http-error"] { background: #ffd8a8; }
.cell[data-state="failed"] { background: #ffc1c0; }
.cell[data-state="mixed"] { background: repeating-linear-gradient(45deg, #ffc1c0 0 6px, #dafbe1 6px 12px); }
.cell[data-state="not-run"] { background: #ffffff; color: var(--muted); }
.legend { list-style: none; padding: 0; margin: 8px 0; display: flex; flex-wrap: wrap; gap: 6px 18px; font-size: 12px; }
.legend .swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #57606a; vertical-align: -2px; margin-right: 4px; }
.swatch[data-state="good"] { background: #dafbe1; }
.swatch[data-state="http-error"] { background: #ffd8a8; }
.swatch[data-state="failed"] { background: #ffc1c0; }
.swatch[data-state="mixed"] { background: repeating-linear-gradient(45deg, #ffc1c0 0 3px, #dafbe1 3px 6px); }
.swatch[data-state="not-run"] { background: #ffffff; }
.waterfall { margin: 8px 0 16px; break-inside: avoid; }
.waterfall svg { width: 100%; max-width: 1100px; height: auto; display: block; }
.waterfall figcaption { font-weight: 600; margin-bottom: 2px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; word-break: break-all; }
.requests th, .requests td { border: 1px solid var(--line); padding: 2px 6px; font-size: 12px; text-align: left; vertical-align: top; }
.requests td.err { max-width: 360px; word-break: break-word; }
details { margin: 8px 0; }
summary { cursor: pointer; font-weight: 600; }
@media print {
  :root { --bg:#ffffff; --panel:#ffffff; }
  body { padding: 0; font-size: 11pt; color: #000; background: #fff; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  pre { white-space: pre-wrap; border-color: #999; }
  .finding, .waterfall, .matrix, tr { break-inside: avoid; }
  h2 { break-after: avoid; }
  details > summary { list-style: none; }
}
"#;

/// The report as one self-contained HTML page.
pub fn render_html(report: &Report, meta: &HtmlMeta) -> String {
    let mut out = String::new();
    let status = report.status.as_str();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>vantage report: {} — {}</title>\n<style>{STYLE}</style>\n</head>\n\
         <body data-campaign=\"{}\" data-status=\"{status}\">\n",
        escape(status),
        escape(&report.target.url),
        escape(&report.campaign),
    );
    header(&mut out, report, meta);
    findings(&mut out, report);
    matrix(&mut out, report);
    waterfalls(&mut out, report);
    target_and_witness(&mut out, report, meta);
    requests(&mut out, report);
    raw(&mut out, report, meta);
    out.push_str("</body>\n</html>\n");
    out
}

fn header(out: &mut String, report: &Report, meta: &HtmlMeta) {
    let status = report.status.as_str();
    let _ = write!(
        out,
        "<header>\n<h1>vantage report <span class=\"status status-{status}\">{status}</span></h1>\n\
         <div class=\"muted\"><code>{}</code> · campaign <code id=\"campaign-id\">{}</code>",
        escape(&report.target.url),
        escape(&report.campaign),
    );
    if let Some(s) = &meta.started_at {
        let _ = write!(out, " · started {}", escape(s));
    }
    if let Some(f) = &meta.finished_at {
        let _ = write!(out, " · finished {}", escape(f));
    }
    let _ = writeln!(out, "</div>");
    if !report.summary.is_empty() {
        let _ = writeln!(out, "<p class=\"summary\">{}</p>", escape(&report.summary));
    }
    if !report.missing.is_empty() {
        let _ = writeln!(out, "<p><span class=\"label\">Missing:</span></p><ul>");
        for m in &report.missing {
            let _ = writeln!(out, "<li>{}</li>", escape(m));
        }
        let _ = writeln!(out, "</ul>");
    }
    out.push_str("</header>\n");
}

fn findings(out: &mut String, report: &Report) {
    let _ = writeln!(
        out,
        "<section id=\"findings\">\n<h2>Findings ({})</h2>",
        report.findings.len()
    );
    if report.findings.is_empty() {
        let _ = writeln!(out, "<p>No finding.</p>");
    }
    for (i, f) in report.findings.iter().enumerate() {
        let code = f.code.as_str();
        let kind = f.kind.map(|k| k.as_str()).unwrap_or("");
        let conf = f.confidence.as_str();
        let _ = writeln!(
            out,
            "<article class=\"finding\" id=\"finding-{i}\" data-code=\"{code}\" data-kind=\"{kind}\">"
        );
        let title = if kind.is_empty() {
            format!("<code>{code}</code>")
        } else {
            format!("<code>{code}</code> / <code>{kind}</code>")
        };
        let _ = writeln!(
            out,
            "<h3>{title}</h3>\n<p class=\"meta\"><span class=\"badge conf-{conf}\">confidence: {conf}</span>\
             <span class=\"badge\">regions: {}</span></p>",
            escape(&f.regions.join(", "))
        );
        let _ = writeln!(out, "<p>{}</p>", escape(&f.summary));
        if !f.evidence.is_empty() {
            let _ = writeln!(
                out,
                "<div class=\"label\">Evidence</div><ul class=\"evidence\">"
            );
            for e in &f.evidence {
                let _ = writeln!(out, "<li>{}</li>", escape(e));
            }
            let _ = writeln!(out, "</ul>");
        }
        if !f.advice.is_empty() {
            let _ = writeln!(
                out,
                "<p><span class=\"label\">Advice:</span> {}</p>",
                escape(&f.advice)
            );
        }
        if !f.reproduce.is_empty() {
            let _ = writeln!(out, "<div class=\"label\">Reproduce</div>");
            for c in &f.reproduce {
                let _ = writeln!(
                    out,
                    "<pre class=\"reproduce\"><code>{}</code></pre>",
                    escape(c)
                );
            }
        }
        let _ = writeln!(out, "</article>");
    }
    let _ = writeln!(out, "</section>");
}

fn matrix(out: &mut String, report: &Report) {
    let columns = probe_columns(report);
    let _ = writeln!(
        out,
        "<section id=\"matrix\">\n<h2>Region × probe</h2>\n<p class=\"muted\">One column per plan step \
         (route/variant and address); each cell sums up the region's requests of that step: \
         status code(s) in bold, then outcome and median time to first byte.</p>"
    );
    let _ = writeln!(out, "<ul class=\"legend\">");
    for s in State::ALL {
        let _ = writeln!(
            out,
            "<li><span class=\"swatch\" data-state=\"{0}\"></span>{0}: {1}</li>",
            s.as_str(),
            s.legend()
        );
    }
    let _ = writeln!(out, "</ul>");
    let _ = writeln!(out, "<table class=\"matrix\">\n<thead><tr><th>region</th>");
    for c in &columns {
        let _ = write!(out, "<th class=\"probe\">{}</th>", escape(&c.label()));
    }
    let _ = writeln!(out, "</tr></thead>\n<tbody>");
    for r in &report.regions {
        let name = if r.lost {
            format!("{} (lost)", r.region)
        } else {
            r.region.clone()
        };
        let _ = write!(out, "<tr><th class=\"region\">{}</th>", escape(&name));
        for c in &columns {
            let probes: Vec<&ReportProbe> = r.probes.iter().filter(|p| c.matches(p)).collect();
            let state = state_of(&probes);
            let outcome = if probes.is_empty() {
                "none".to_string()
            } else {
                let set: BTreeSet<&str> = probes.iter().map(|p| p.outcome.as_str()).collect();
                if set.len() == 1 {
                    set.into_iter().next().unwrap_or("none").to_string()
                } else {
                    "mixed".to_string()
                }
            };
            let (main, sub) = if probes.is_empty() {
                ("—".to_string(), "not run".to_string())
            } else {
                let statuses: Vec<String> = probes
                    .iter()
                    .filter_map(|p| p.status)
                    .map(|s| s.to_string())
                    .collect();
                let outcomes = counted(probes.iter().map(|p| p.outcome.as_str().to_string()));
                let mut ttfbs: Vec<f64> = probes
                    .iter()
                    .map(|p| p.timings_ms.ttfb)
                    .filter(|t| *t > 0.0)
                    .collect();
                ttfbs.sort_by(f64::total_cmp);
                let ttfb = ttfbs.get(ttfbs.len() / 2).map(|t| format!(" · {}", ms(*t)));
                if statuses.is_empty() {
                    (outcomes, format!("{} request(s)", probes.len()))
                } else {
                    (
                        counted(statuses.into_iter()),
                        format!("{outcomes}{}", ttfb.unwrap_or_default()),
                    )
                }
            };
            let errors: BTreeSet<&str> = probes
                .iter()
                .map(|p| p.error.as_str())
                .filter(|e| !e.is_empty())
                .collect();
            let tip = if errors.is_empty() {
                format!("{} · {}", r.region, c.label())
            } else {
                format!(
                    "{} · {}: {}",
                    r.region,
                    c.label(),
                    errors.into_iter().collect::<Vec<_>>().join("; ")
                )
            };
            let _ = write!(
                out,
                "<td class=\"cell\" data-region=\"{}\" data-probe=\"{}\" data-outcome=\"{}\" data-state=\"{}\" title=\"{}\"><b>{}</b><small>{}</small></td>",
                escape(&r.region),
                escape(&c.label()),
                escape(&outcome),
                state.as_str(),
                escape(&tip),
                escape(&main),
                escape(&sub),
            );
        }
        let _ = writeln!(out, "</tr>");
    }
    let _ = writeln!(out, "</tbody>\n</table>\n</section>");
}

/// The waterfall's phases: name, fill, and where each starts and ends.
const PHASES: [(&str, &str); 6] = [
    ("dns", "#8250df"),
    ("connect", "#d4a72c"),
    ("tls", "#218bff"),
    ("first byte", "#2da44e"),
    ("transfer", "#8c959f"),
    ("no response", "#ff8182"),
];

/// The segments of one request: (phase index into [`PHASES`], start, end)
/// in ms. Without a first byte, the time from the last mark to the end is
/// "no response" (waiting, then the failure), not a transfer.
fn segments(p: &ReportProbe) -> Vec<(usize, f64, f64)> {
    let t = &p.timings_ms;
    let mut out = Vec::new();
    let mut at = 0.0_f64;
    let last = if t.ttfb > 0.0 { 4 } else { 5 };
    for (i, mark) in [
        (0, t.dns),
        (1, t.connect),
        (2, t.tls),
        (3, t.ttfb),
        (last, t.total),
    ] {
        if mark.is_finite() && mark > at {
            out.push((i, at, mark));
            at = mark;
        }
    }
    out
}

/// `200 · dns 1.0 · conn 2.0 · ttfb 40 · total 50 ms`: the marks that
/// were reached.
fn marks_text(what: &str, p: &ReportProbe) -> String {
    let t = &p.timings_ms;
    let mut parts = vec![what.to_string()];
    for (name, v) in [
        ("dns", t.dns),
        ("conn", t.connect),
        ("tls", t.tls),
        ("ttfb", t.ttfb),
    ] {
        if v > 0.0 {
            parts.push(format!("{name} {}", num(v)));
        }
    }
    parts.push(format!("total {}", ms(t.total)));
    parts.join(" · ")
}

fn num(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A round step (1, 2 or 5 × 10^k) that gives at most about 6 ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = (max / 6.0).max(0.001);
    let base = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * base)
}

fn waterfalls(out: &mut String, report: &Report) {
    let columns = probe_columns(report);
    let max_total = report
        .regions
        .iter()
        .flat_map(|r| r.probes.iter())
        .map(|p| p.timings_ms.total)
        .filter(|t| t.is_finite())
        .fold(0.0_f64, f64::max);
    let step = tick_step(max_total.max(1.0));
    let scale_max = (max_total.max(1.0) / step).ceil() * step;
    let _ = writeln!(
        out,
        "<section id=\"timings\">\n<h2>Timings</h2>\n<p class=\"muted\">Per region and route, the request \
         with the median total time of each step (n: how many the step ran); phases are cumulative as curl's <code>-w</code> \
         times (dns, connect, tls, first byte, total). One scale for every region: 0–{}.</p>",
        ms(scale_max)
    );
    let _ = write!(out, "<ul class=\"legend\">");
    for (name, fill) in PHASES {
        let _ = write!(
            out,
            "<li><svg width=\"14\" height=\"14\" aria-hidden=\"true\"><rect width=\"14\" height=\"14\" fill=\"{fill}\" stroke=\"#57606a\"/></svg> {name}</li>"
        );
    }
    let _ = writeln!(out, "</ul>");
    const LABEL_W: f64 = 210.0;
    const BAR_W: f64 = 520.0;
    const TEXT_W: f64 = 350.0;
    const ROW_H: f64 = 22.0;
    const TOP: f64 = 24.0;
    for r in &report.regions {
        let rows: Vec<(&ProbeKey, &ReportProbe, usize)> = columns
            .iter()
            .filter_map(|c| {
                let probes: Vec<&ReportProbe> = r.probes.iter().filter(|p| c.matches(p)).collect();
                median(&probes).map(|p| (c, p, probes.len()))
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        #[allow(clippy::cast_precision_loss)] // a handful of rows
        let height = TOP + ROW_H * rows.len() as f64 + 8.0;
        let width = LABEL_W + BAR_W + TEXT_W;
        let _ = writeln!(
            out,
            "<figure class=\"waterfall\" data-region=\"{0}\"><figcaption>{0}</figcaption>\n\
             <svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {height}\" role=\"img\" \
             aria-label=\"timing waterfall for region {0}\" font-family=\"system-ui, sans-serif\" font-size=\"11\">",
            escape(&r.region)
        );
        // The scale: ticks every `step` ms, labelled.
        let mut tick = 0.0;
        while tick <= scale_max + step / 2.0 {
            let x = LABEL_W + BAR_W * tick / scale_max;
            let _ = write!(
                out,
                "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#d0d7de\"/>\
                 <text x=\"{x:.1}\" y=\"12\" text-anchor=\"middle\" fill=\"#57606a\">{}</text>",
                TOP - 6.0,
                height - 4.0,
                ms(tick)
            );
            tick += step;
        }
        for (i, (key, p, n)) in rows.iter().enumerate() {
            #[allow(clippy::cast_precision_loss)] // a handful of rows
            let y = TOP + ROW_H * i as f64;
            let _ = write!(
                out,
                "<g class=\"bar\" data-probe=\"{}\"><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#1b1f24\">{}</text>",
                escape(&key.label()),
                LABEL_W - 8.0,
                y + 14.0,
                escape(&key.label())
            );
            for (phase, start, end) in segments(p) {
                let (name, fill) = PHASES[phase];
                let x = LABEL_W + BAR_W * start / scale_max;
                let w = (BAR_W * (end - start) / scale_max).max(1.0);
                let _ = write!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"14\" fill=\"{fill}\" stroke=\"#ffffff\" stroke-width=\"0.5\"><title>{name}: {} → {}</title></rect>",
                    y + 3.0,
                    ms(start),
                    ms(end)
                );
            }
            let what = match p.status {
                Some(s) if p.outcome == Outcome::Ok => s.to_string(),
                _ => p.outcome.as_str().to_string(),
            };
            let of = if *n > 1 {
                format!(" · n={n}")
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#1b1f24\">{}{}</text></g>",
                LABEL_W + BAR_W + 8.0,
                y + 14.0,
                escape(&marks_text(&what, p)),
                escape(&of)
            );
        }
        let _ = writeln!(out, "</svg></figure>");
    }
    let _ = writeln!(out, "</section>");
}

fn target_and_witness(out: &mut String, report: &Report, meta: &HtmlMeta) {
    let t = &report.target;
    let fact = |out: &mut String, k: &str, v: &str| {
        let _ = writeln!(out, "<dt>{k}</dt><dd>{}</dd>", escape(v));
    };
    let _ = writeln!(
        out,
        "<section id=\"target\">\n<h2>Target</h2>\n<dl class=\"facts\">"
    );
    fact(out, "URL", &t.url);
    fact(out, "origin", &t.origin.join(", "));
    fact(
        out,
        "edge",
        &if t.edge.is_empty() {
            "(each agent's resolver)".to_string()
        } else {
            t.edge.join(", ")
        },
    );
    fact(
        out,
        "CDN",
        &format!(
            "{} (origin-response timeout {} ms)",
            t.cdn, t.edge_timeout_ms
        ),
    );
    fact(
        out,
        "pull",
        &format!("{}://{}{}", t.pull.protocol, t.pull.host, t.pull.path),
    );
    fact(
        out,
        "timeouts",
        &format!(
            "connect {} / tls {} / ttfb {} / edge ttfb {} / total {} ms",
            t.timeouts_ms.connect,
            t.timeouts_ms.tls,
            t.timeouts_ms.ttfb,
            t.timeouts_ms.edge_ttfb,
            t.timeouts_ms.total
        ),
    );
    fact(out, "User-Agent", &t.user_agent);
    fact(out, "campaign", &report.campaign);
    fact(out, "status", report.status.as_str());
    fact(
        out,
        "started",
        meta.started_at.as_deref().unwrap_or("unknown"),
    );
    fact(
        out,
        "finished",
        meta.finished_at.as_deref().unwrap_or("unknown"),
    );
    fact(out, "page written", &meta.rendered_at);
    fact(
        out,
        "regions",
        &report
            .regions
            .iter()
            .map(|r| {
                format!(
                    "{} ({}{})",
                    r.region,
                    r.agents.join(", "),
                    if r.lost { ", lost" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    );
    let _ = writeln!(out, "</dl>\n</section>");

    let w = &report.witness;
    let _ = writeln!(out, "<section id=\"witness\">\n<h2>Origin witness</h2>");
    if w.present {
        let _ = writeln!(out, "<dl class=\"facts\">");
        fact(out, "requests seen", &w.seen.to_string());
        for (route, n) in &w.by_route {
            fact(
                out,
                &format!("route {}", escape(route)),
                &format!("{} of {} seen", n.seen, n.sent),
            );
        }
        for (region, n) in &w.by_region {
            fact(
                out,
                &format!("region {}", escape(region)),
                &format!("{} of {} seen", n.seen, n.sent),
            );
        }
        fact(
            out,
            "edge pull IPs",
            &if w.edge_pull_ips.is_empty() {
                "none".to_string()
            } else {
                w.edge_pull_ips.join(", ")
            },
        );
        let _ = writeln!(out, "</dl>");
    } else {
        let _ = writeln!(out, "<p>No witness ran on the origin.</p>");
    }
    if let Some(f) = &report.ttfb_followup {
        let _ = writeln!(out, "<h3>TTFB follow-up</h3>");
        match f.state {
            FollowupState::Running => {
                let _ = writeln!(
                    out,
                    "<p>Still measuring the origin's real time to first byte (waits up to {} s).</p>",
                    f.wait_ms / 1000
                );
            }
            FollowupState::Done => {
                let _ = writeln!(out, "<ul>");
                for m in &f.measurements {
                    let seen = match m.ttfb_ms {
                        Some(v) if m.outcome == Outcome::Ok => {
                            format!("first byte after {}", ms(v))
                        }
                        _ => format!(
                            "{} (no first byte within {} s)",
                            m.outcome,
                            f.wait_ms / 1000
                        ),
                    };
                    let _ = writeln!(
                        out,
                        "<li>{} → {}: {}</li>",
                        escape(&m.region),
                        escape(&m.address),
                        escape(&seen)
                    );
                }
                let _ = writeln!(out, "</ul>");
            }
        }
    }
    let _ = writeln!(out, "</section>");
}

fn requests(out: &mut String, report: &Report) {
    let n: usize = report.regions.iter().map(|r| r.probes.len()).sum();
    let _ = writeln!(
        out,
        "<section id=\"requests\">\n<details><summary>Every request ({n})</summary>\n<table class=\"requests\">\n\
         <thead><tr><th>region</th><th>probe</th><th>outcome</th><th>status</th><th>curl exit</th>\
         <th>dns</th><th>connect</th><th>tls</th><th>ttfb</th><th>total</th><th>edge request id</th><th>nonce</th><th>error</th></tr></thead>\n<tbody>"
    );
    for r in &report.regions {
        for p in &r.probes {
            let t = &p.timings_ms;
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td class=\"err\">{}</td></tr>",
                escape(&r.region),
                escape(&ProbeKey::of(p).label()),
                p.outcome.as_str(),
                p.status.map_or_else(|| "-".to_string(), |s| s.to_string()),
                p.curl_exit,
                ms(t.dns),
                ms(t.connect),
                ms(t.tls),
                ms(t.ttfb),
                ms(t.total),
                escape(&p.edge_request_id),
                escape(&p.nonce),
                escape(&p.error)
            );
        }
    }
    let _ = writeln!(out, "</tbody>\n</table>\n</details>\n</section>");
}

fn raw(out: &mut String, report: &Report, meta: &HtmlMeta) {
    let json = meta
        .raw_json
        .as_deref()
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .or_else(|| serde_json::to_string_pretty(report).ok())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "<section id=\"raw\">\n<details><summary>Raw report (JSON, schema {})</summary>\n<pre><code>{}</code></pre>\n</details>\n</section>",
        escape(&report.schema),
        escape(&json)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::report;

    fn meta() -> HtmlMeta {
        HtmlMeta {
            started_at: Some("2026-12-02T17:00:00.000Z".into()),
            finished_at: Some("2026-12-02T17:00:03.000Z".into()),
            rendered_at: "2026-12-02T17:00:04Z".into(),
            raw_json: None,
        }
    }

    /// Every tag of `html` (the text between `<` and `>`): text is escaped,
    /// so every `<` left starts a tag the renderer wrote.
    fn tags(html: &str) -> Vec<&str> {
        html.split('<')
            .skip(1)
            .filter_map(|s| s.split_once('>').map(|(tag, _)| tag))
            .collect()
    }

    /// The value of attribute `name` in each tag that has it.
    fn attr_values<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
        let needle = format!(" {name}=\"");
        tags(html)
            .into_iter()
            .flat_map(|t| {
                t.match_indices(&needle).filter_map(|(i, _)| {
                    let rest = &t[i + needle.len()..];
                    rest.split_once('"').map(|(v, _)| v)
                })
            })
            .collect()
    }

    fn cells(html: &str) -> Vec<&str> {
        tags(html)
            .into_iter()
            .filter(|t| t.starts_with("td class=\"cell\""))
            .collect()
    }

    fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
        let needle = format!(" {name}=\"");
        let i = tag.find(&needle)?;
        tag[i + needle.len()..].split_once('"').map(|(v, _)| v)
    }

    #[test]
    fn page_is_self_contained_with_a_strict_policy() {
        let html = render_html(&report(), &meta());
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains(&format!(
            "<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
        )));
        // Nothing loads: no src/href/action at all to anything with a
        // scheme or a network path, no script, no CSS url() or @import.
        for name in ["src", "href", "action", "xlink:href", "poster", "srcset"] {
            for v in attr_values(&html, name) {
                assert!(
                    !v.contains("://") && !v.starts_with("//"),
                    "{name}={v:?} would fetch"
                );
            }
        }
        for t in tags(&html) {
            let lower = t.to_ascii_lowercase();
            for banned in ["script", "link", "img", "iframe", "object", "embed"] {
                assert!(
                    !lower.starts_with(banned) && !lower.starts_with(&format!("/{banned}")),
                    "<{t}>"
                );
            }
        }
        assert!(!html.contains("url("), "no CSS url()");
        assert!(!html.contains("@import"));
        // The only URL-looking text in a tag is the SVG namespace (an
        // identifier, never fetched).
        for t in tags(&html) {
            let rest = t.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            assert!(
                !rest.contains("http://") && !rest.contains("https://"),
                "<{t}>"
            );
        }
    }

    #[test]
    fn findings_come_first_with_evidence_and_reproduce_blocks() {
        let r = report();
        let html = render_html(&r, &meta());
        let findings = html.find("id=\"findings\"").unwrap_or(usize::MAX);
        let matrix = html.find("id=\"matrix\"").unwrap_or(0);
        let timings = html.find("id=\"timings\"").unwrap_or(0);
        assert!(findings < matrix && matrix < timings, "section order");
        assert!(!r.findings.is_empty());
        for f in &r.findings {
            assert!(
                html.contains(&format!("data-code=\"{}\"", f.code.as_str())),
                "{}",
                f.code
            );
            for e in &f.evidence {
                assert!(html.contains(&format!("<li>{}</li>", escape(e))), "{e}");
            }
            for c in &f.reproduce {
                assert!(
                    html.contains(&format!(
                        "<pre class=\"reproduce\"><code>{}</code></pre>",
                        escape(c)
                    )),
                    "{c}"
                );
            }
        }
        assert_eq!(
            html.matches("<article class=\"finding\"").count(),
            r.findings.len()
        );
        assert!(html.contains("confidence: high"));
        assert!(html.contains("campaign <code id=\"campaign-id\">c-123</code>"));
        assert!(html.contains("started 2026-12-02T17:00:00.000Z"));
        assert!(html.contains("<details><summary>Raw report (JSON"));
        assert!(html.contains("&quot;schema&quot;: &quot;vantage.report.v1&quot;"));
    }

    #[test]
    fn one_cell_per_region_and_probe_each_with_text() {
        let mut r = report();
        // One region ran an extra step the others did not: the others get
        // a "not run" cell for it, never a missing one.
        let mut extra = r.regions[0].probes[0].clone();
        extra.variant = Variant::Burst;
        extra.outcome = Outcome::Reset;
        r.regions[0].probes.push(extra);
        let html = render_html(&r, &meta());
        let columns: BTreeSet<(String, String, String)> = r
            .regions
            .iter()
            .flat_map(|g| g.probes.iter())
            .map(|p| {
                (
                    p.route.to_string(),
                    p.variant.to_string(),
                    p.address.clone(),
                )
            })
            .collect();
        let cells = cells(&html);
        assert_eq!(cells.len(), r.regions.len() * columns.len());
        let pairs: BTreeSet<(&str, &str)> = cells
            .iter()
            .filter_map(|c| Some((attr(c, "data-region")?, attr(c, "data-probe")?)))
            .collect();
        assert_eq!(pairs.len(), cells.len(), "every pair once");
        let not_run = cells
            .iter()
            .filter(|c| attr(c, "data-outcome") == Some("none"))
            .count();
        assert_eq!(not_run, r.regions.len() - 1);
        // The edge's 521 is an HTTP error, the refused origin a failure,
        // each with its text, not only its colour.
        assert!(html.contains("data-outcome=\"ok\" data-state=\"http-error\""));
        assert!(html.contains("data-outcome=\"connect_refused\" data-state=\"failed\""));
        assert!(html.contains("<b>521</b>"));
        assert!(html.contains("<b>connect_refused</b>"));
        for s in State::ALL {
            assert!(html.contains(&format!(
                "<span class=\"swatch\" data-state=\"{}\">",
                s.as_str()
            )));
        }
    }

    #[test]
    fn waterfall_per_region_with_a_scale_in_ms() {
        let r = report();
        let html = render_html(&r, &meta());
        assert_eq!(
            html.matches("<figure class=\"waterfall\"").count(),
            r.regions.len()
        );
        // The fixtures' requests take 50 ms: ticks up to 50 ms, every
        // phase drawn and titled.
        assert!(html.contains(">50 ms</text>"), "{html}");
        assert!(html.contains(">0.0 ms</text>"));
        for phase in ["dns", "connect", "tls", "no response"] {
            assert!(html.contains(&format!("<title>{phase}: ")), "{phase}");
        }
        assert!(html.contains("total 50 ms"));
        assert!(html.contains("@media print"));
    }

    #[test]
    fn segments_follow_the_cumulative_marks_and_skip_missing_ones() {
        let mut p = report().regions[0].probes[0].clone();
        p.timings_ms = crate::diagnosis::Timings::cumulative(1.0, 3.0, 0.0, 0.0, 9.0);
        let s = segments(&p);
        assert_eq!(s, vec![(0, 0.0, 1.0), (1, 1.0, 3.0), (5, 3.0, 9.0)]);
        p.timings_ms = crate::diagnosis::Timings::cumulative(1.0, 3.0, 0.0, 8.0, 9.0);
        assert_eq!(
            segments(&p),
            vec![(0, 0.0, 1.0), (1, 1.0, 3.0), (3, 3.0, 8.0), (4, 8.0, 9.0)]
        );
        assert_eq!(
            marks_text("200", &p),
            "200 · dns 1.0 · conn 3.0 · ttfb 8.0 · total 9.0 ms"
        );
        assert_eq!(tick_step(50.0), 10.0);
        assert_eq!(tick_step(7000.0), 2000.0);
        assert_eq!(tick_step(1.0), 0.2);
    }

    #[test]
    fn network_text_is_escaped_everywhere() {
        let mut r = report();
        let evil = "<script>alert(1)</script>\"'&";
        r.target.url = "http://x.test/\"><script>alert(2)</script>".to_string();
        r.regions[0].probes[0].error = format!("tls: {evil}");
        r.regions[0].probes[0].edge_request_id = evil.to_string();
        r.regions[0].region = format!("eu{evil}");
        r.findings[0]
            .evidence
            .push(format!("us: title '{evil}' differs"));
        r.findings[0].reproduce.push(format!("curl -H 'X: {evil}'"));
        r.findings[0].summary = format!("title {evil}");
        r.missing.push(format!("ap: {evil}"));
        let raw = serde_json::to_string(&r).unwrap_or_default();
        let html = render_html(
            &r,
            &HtmlMeta {
                raw_json: Some(raw),
                ..meta()
            },
        );
        assert!(!html.to_ascii_lowercase().contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"));
        assert!(html.contains("&lt;script&gt;alert(2)&lt;/script&gt;"));
        // Attributes stay closed: every tag's quotes pair up.
        for t in tags(&html) {
            assert_eq!(t.matches('"').count() % 2, 0, "<{t}>");
        }
        assert_eq!(escape("a\u{0}b\nc"), "a\u{fffd}b\nc");
    }

    #[test]
    fn an_empty_report_still_renders() {
        let mut r = report();
        r.findings.clear();
        r.regions.clear();
        r.witness.present = false;
        let html = render_html(&r, &HtmlMeta::default());
        assert!(html.contains("<p>No finding.</p>"));
        assert!(cells(&html).is_empty());
        assert!(html.contains("No witness ran on the origin."));
        assert!(html.ends_with("</html>\n"));
    }
}
