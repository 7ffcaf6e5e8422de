//! What a person sees on stderr while a campaign runs (`diagnose`,
//! `campaign watch`). On a terminal: one progress bar per region, with
//! the results stored against the plan's expected requests, the counts by
//! outcome, and the time since the plan was sent against the region's
//! deadline (indicatif). Anywhere else (a pipe, a file, CI): plain lines,
//! one per plan sent, region done or lost and report ready, and no
//! per-result noise.
//!
//! Owns nothing but the drawing: the events come from the caller, decoded
//! by `wire`. Never imports the coordinator's internals.

use std::collections::HashMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use vantage_proto::domain::Outcome;

use crate::campaign::CampaignEvent;

/// How the bars look: region, bar, results, elapsed against the deadline
/// and the outcome counts (in the message).
const TEMPLATE: &str = "  {prefix:<14} {bar:28.cyan/blue} {pos:>4}/{len:<4} {elapsed:>3} of {msg}";

/// Shown outcomes per bar; the rest are summed as "other".
const SHOWN_OUTCOMES: usize = 3;

/// Progress of one campaign on stderr.
pub struct CampaignProgress {
    draw: Draw,
}

enum Draw {
    /// A terminal: bars.
    Bars {
        multi: MultiProgress,
        regions: HashMap<String, RegionBar>,
    },
    /// Not a terminal: plain lines.
    Lines,
}

struct RegionBar {
    bar: ProgressBar,
    deadline: Duration,
}

/// `12 ok, 2 connect_refused, 1 other`: the counts, most frequent first.
pub fn outcome_counts(outcomes: &[(Outcome, u64)]) -> String {
    let mut parts: Vec<String> = outcomes
        .iter()
        .take(SHOWN_OUTCOMES)
        .map(|(outcome, n)| format!("{n} {}", outcome.as_str()))
        .collect();
    let other: u64 = outcomes.iter().skip(SHOWN_OUTCOMES).map(|(_, n)| n).sum();
    if other > 0 {
        parts.push(format!("{other} other"));
    }
    parts.join(", ")
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64().ceil() as u64)
}

/// The plain line of an event (`None` for per-result progress).
pub fn plain_line(event: &CampaignEvent) -> Option<String> {
    Some(match event {
        CampaignEvent::PlanSent {
            region,
            agent,
            expected,
            deadline,
        } => format!(
            "  {region:<14} plan sent to {agent} ({expected} requests, due within {})",
            seconds(*deadline)
        ),
        CampaignEvent::Progress { .. } => return None,
        CampaignEvent::RegionDone { region } => format!("  {region:<14} done"),
        CampaignEvent::RegionLost { region, reason } => format!("  {region:<14} LOST: {reason}"),
        CampaignEvent::ReportReady { status } => format!("  report ready: {status}"),
    })
}

impl CampaignProgress {
    /// Bars when `terminal`, else plain lines; both on stderr.
    pub fn new(terminal: bool) -> Self {
        let draw = if terminal {
            Draw::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                regions: HashMap::new(),
            }
        } else {
            Draw::Lines
        };
        CampaignProgress { draw }
    }

    /// A line above the bars (or a plain line).
    pub fn note(&self, line: &str) {
        match &self.draw {
            Draw::Bars { multi, .. } => {
                // Printing through the MultiProgress keeps the bars intact.
                if multi.println(line).is_err() {
                    eprintln!("{line}");
                }
            }
            Draw::Lines => eprintln!("{line}"),
        }
    }

    /// Shows one event.
    pub fn event(&mut self, event: &CampaignEvent) {
        let (multi, regions) = match &mut self.draw {
            Draw::Lines => {
                if let Some(line) = plain_line(event) {
                    eprintln!("{line}");
                }
                return;
            }
            Draw::Bars { multi, regions } => (multi, regions),
        };
        match event {
            CampaignEvent::PlanSent {
                region,
                expected,
                deadline,
                ..
            } => {
                let bar = multi.add(ProgressBar::new(*expected));
                if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_prefix(region.clone());
                bar.set_message(seconds(*deadline));
                bar.enable_steady_tick(Duration::from_millis(200));
                regions.insert(
                    region.clone(),
                    RegionBar {
                        bar,
                        deadline: *deadline,
                    },
                );
            }
            CampaignEvent::Progress {
                region,
                done,
                outcomes,
            } => {
                if let Some(r) = regions.get(region) {
                    let len = r.bar.length().unwrap_or(*done);
                    r.bar.set_position((*done).min(len));
                    r.bar.set_message(format!(
                        "{}  {}",
                        seconds(r.deadline),
                        outcome_counts(outcomes)
                    ));
                }
            }
            CampaignEvent::RegionDone { region } => {
                if let Some(r) = regions.get(region) {
                    if let Some(len) = r.bar.length() {
                        r.bar.set_position(len);
                    }
                    let message = r.bar.message();
                    r.bar.finish_with_message(format!("{message}  done"));
                }
            }
            CampaignEvent::RegionLost { region, reason } => match regions.get(region) {
                Some(r) => {
                    let message = r.bar.message();
                    r.bar
                        .abandon_with_message(format!("{message}  LOST: {reason}"));
                }
                None => {
                    let _ = multi.println(format!("  {region:<14} LOST: {reason}"));
                }
            },
            CampaignEvent::ReportReady { status } => {
                for r in regions.values() {
                    if !r.bar.is_finished() {
                        r.bar.abandon();
                    }
                }
                let _ = multi.println(format!("  report ready: {status}"));
            }
        }
    }

    /// Stops drawing; finished bars stay on the screen.
    pub fn finish(&mut self) {
        if let Draw::Bars { regions, .. } = &mut self.draw {
            for r in regions.values() {
                if !r.bar.is_finished() {
                    r.bar.abandon();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_counts_show_the_three_most_frequent_and_sum_the_rest() {
        let counts = [
            (Outcome::Ok, 12),
            (Outcome::ConnectRefused, 2),
            (Outcome::ConnectTimeout, 1),
            (Outcome::Reset, 1),
            (Outcome::EmptyReply, 1),
        ];
        assert_eq!(
            outcome_counts(&counts),
            "12 ok, 2 connect_refused, 1 connect_timeout, 2 other"
        );
        assert_eq!(outcome_counts(&[]), "");
    }

    #[test]
    fn plain_lines_name_each_step_and_skip_per_result_progress() {
        let sent = CampaignEvent::PlanSent {
            region: "eu".into(),
            agent: "fra-1".into(),
            expected: 14,
            deadline: Duration::from_millis(15_300),
        };
        assert_eq!(
            plain_line(&sent).unwrap(),
            "  eu             plan sent to fra-1 (14 requests, due within 16s)"
        );
        let progress = CampaignEvent::Progress {
            region: "eu".into(),
            done: 3,
            outcomes: vec![(Outcome::Ok, 3)],
        };
        assert_eq!(plain_line(&progress), None);
        let lost = CampaignEvent::RegionLost {
            region: "ap".into(),
            reason: "agent lost".into(),
        };
        assert_eq!(
            plain_line(&lost).unwrap(),
            "  ap             LOST: agent lost"
        );
    }
}
