//! Confirmed alerts (DESIGN §6a), as an explicit state machine per
//! (sweep, code, kind): an alert opens after `confirm` consecutive runs
//! carry the finding, changes when its regions change while open, and
//! resolves after `confirm` consecutive runs without it. One flapping run
//! neither opens nor resolves anything.
//!
//! A `missed` or `inconclusive` run says nothing about the finding, so it
//! neither counts towards opening nor towards resolving: it leaves the
//! machine where it was. The machine is pure (no clock, no store); the
//! scheduler feeds it each run's findings and stores its state.

use std::collections::BTreeSet;

/// Consecutive runs that confirm an alert (and its resolution) unless the
/// sweep says otherwise.
pub const DEFAULT_CONFIRM: u32 = 2;
/// The most a sweep may ask for (at 1 s runs, an hour of confirmation).
pub const MAX_CONFIRM: u32 = 3600;

/// What one run said about this alert's finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunSays {
    /// The finding was there, in these regions.
    Present(BTreeSet<String>),
    /// The run was conclusive and the finding was not there.
    Absent,
    /// The run was missed or inconclusive: no evidence either way.
    Unknown,
}

/// Where an alert is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertState {
    /// Not open; `streak` consecutive runs have carried the finding so far
    /// (0: the last conclusive run did not).
    Quiet {
        /// Consecutive runs with the finding.
        streak: u32,
    },
    /// Open, in `regions`; `clean` consecutive runs have lacked it so far.
    Open {
        /// Where it holds (as of the last run that carried it).
        regions: BTreeSet<String>,
        /// Consecutive conclusive runs without the finding.
        clean: u32,
    },
}

impl Default for AlertState {
    fn default() -> Self {
        AlertState::Quiet { streak: 0 }
    }
}

/// What a run made of an alert, to be stored and delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertEvent {
    /// It opened, in these regions.
    Opened(BTreeSet<String>),
    /// It was open and now holds in other regions.
    Changed(BTreeSet<String>),
    /// It was open and `confirm` runs in a row did not carry it.
    Resolved,
}

impl AlertEvent {
    /// The contract name of the event (`opened|changed|resolved`).
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertEvent::Opened(_) => "opened",
            AlertEvent::Changed(_) => "changed",
            AlertEvent::Resolved => "resolved",
        }
    }
}

impl AlertState {
    /// Whether the alert is open.
    pub fn is_open(&self) -> bool {
        matches!(self, AlertState::Open { .. })
    }

    /// Moves the machine by one run. `confirm` is the sweep's `--confirm`
    /// (at least 1).
    pub fn step(self, run: RunSays, confirm: u32) -> (AlertState, Option<AlertEvent>) {
        let confirm = confirm.max(1);
        match (self, run) {
            (state, RunSays::Unknown) => (state, None),
            (AlertState::Quiet { streak }, RunSays::Present(regions)) => {
                let streak = streak.saturating_add(1);
                if streak >= confirm {
                    (
                        AlertState::Open {
                            regions: regions.clone(),
                            clean: 0,
                        },
                        Some(AlertEvent::Opened(regions)),
                    )
                } else {
                    (AlertState::Quiet { streak }, None)
                }
            }
            (AlertState::Quiet { .. }, RunSays::Absent) => (AlertState::Quiet { streak: 0 }, None),
            (AlertState::Open { regions, .. }, RunSays::Present(now)) => {
                let event = (now != regions).then(|| AlertEvent::Changed(now.clone()));
                (
                    AlertState::Open {
                        regions: now,
                        clean: 0,
                    },
                    event,
                )
            }
            (AlertState::Open { regions, clean }, RunSays::Absent) => {
                let clean = clean.saturating_add(1);
                if clean >= confirm {
                    (AlertState::Quiet { streak: 0 }, Some(AlertEvent::Resolved))
                } else {
                    (AlertState::Open { regions, clean }, None)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(regions: &[&str]) -> RunSays {
        RunSays::Present(regions.iter().map(|r| r.to_string()).collect())
    }

    /// Feeds `runs` from a quiet alert; returns the event names in order.
    fn events(runs: Vec<RunSays>, confirm: u32) -> Vec<&'static str> {
        let mut state = AlertState::default();
        let mut out = Vec::new();
        for run in runs {
            let (next, event) = state.step(run, confirm);
            state = next;
            if let Some(e) = event {
                out.push(e.as_str());
            }
        }
        out
    }

    #[test]
    fn an_alert_opens_only_after_confirm_runs_in_a_row() {
        assert_eq!(events(vec![at(&["eu"])], 2), Vec::<&str>::new());
        assert_eq!(events(vec![at(&["eu"]), at(&["eu"])], 2), ["opened"]);
        // A clean run in between starts the count again.
        assert_eq!(
            events(vec![at(&["eu"]), RunSays::Absent, at(&["eu"])], 2),
            Vec::<&str>::new()
        );
        assert_eq!(events(vec![at(&["eu"])], 1), ["opened"]);
        assert_eq!(events(vec![at(&["eu"]); 2], 3), Vec::<&str>::new());
        assert_eq!(events(vec![at(&["eu"]); 3], 3), ["opened"]);
    }

    #[test]
    fn an_open_alert_changes_with_its_regions_and_resolves_after_confirm_clean_runs() {
        let runs = vec![
            at(&["eu"]),
            at(&["eu"]),
            at(&["eu"]),
            at(&["eu", "us"]),
            RunSays::Absent,
            at(&["eu", "us"]),
            RunSays::Absent,
            RunSays::Absent,
        ];
        assert_eq!(events(runs, 2), ["opened", "changed", "resolved"]);
    }

    #[test]
    fn missed_and_inconclusive_runs_are_no_evidence_either_way() {
        // Unknown between two sightings still confirms.
        assert_eq!(
            events(vec![at(&["eu"]), RunSays::Unknown, at(&["eu"])], 2),
            ["opened"]
        );
        // Unknown between two clean runs still resolves.
        let runs = vec![
            at(&["eu"]),
            at(&["eu"]),
            RunSays::Absent,
            RunSays::Unknown,
            RunSays::Absent,
        ];
        assert_eq!(events(runs, 2), ["opened", "resolved"]);
        // And alone it changes nothing.
        let open = AlertState::Open {
            regions: ["eu".to_string()].into(),
            clean: 1,
        };
        assert_eq!(open.clone().step(RunSays::Unknown, 2), (open, None));
    }

    #[test]
    fn the_same_regions_again_are_not_a_change() {
        assert_eq!(events(vec![at(&["us", "eu"]); 5], 2), ["opened"]);
    }
}
