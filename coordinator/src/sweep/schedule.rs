//! When a sweep runs (DESIGN §6a): every `every`, at a stable offset
//! inside its interval derived from its name, so a fleet of sweeps spreads
//! over the interval instead of all starting on the minute (the way
//! Grafana's synthetic-monitoring agent and Sentry's uptime checker spread
//! theirs), and so the same sweep keeps its slots across coordinator
//! restarts.
//!
//! Time here is milliseconds since the Unix epoch (what the store keeps);
//! the scheduler turns slots into tokio instants. Nothing here reads a clock.

use std::time::Duration;

use sha2::{Digest, Sha256};

/// The shortest interval a sweep may have.
pub const MIN_EVERY: Duration = Duration::from_secs(1);
/// The longest interval a sweep may have (a week).
pub const MAX_EVERY: Duration = Duration::from_secs(7 * 24 * 3600);
/// The interval of a sweep created without `--every`.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(5 * 60);

/// An interval that cannot be a sweep's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--every {given}: must be between 1s and 7days")]
pub struct BadInterval {
    /// The interval asked for, as humantime prints it.
    pub given: String,
}

/// A sweep's slots: `offset`, `offset + every`, `offset + 2·every`, … (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    every_ms: u64,
    offset_ms: u64,
}

impl Schedule {
    /// The schedule of sweep `name` running every `every`.
    pub fn new(name: &str, every: Duration) -> Result<Self, BadInterval> {
        if !(MIN_EVERY..=MAX_EVERY).contains(&every) {
            return Err(BadInterval {
                given: humantime::format_duration(every).to_string(),
            });
        }
        // Whole milliseconds: what the store keeps and what slots align to.
        let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        Ok(Schedule {
            every_ms,
            offset_ms: offset_of(name) % every_ms,
        })
    }

    /// The interval.
    pub fn every(&self) -> Duration {
        Duration::from_millis(self.every_ms)
    }

    /// Where inside each interval the sweep's slots fall.
    pub fn offset(&self) -> Duration {
        Duration::from_millis(self.offset_ms)
    }

    /// The first slot at or after `at_ms`.
    pub fn slot_at_or_after(&self, at_ms: u64) -> u64 {
        let base = at_ms.saturating_sub(self.offset_ms) / self.every_ms * self.every_ms;
        let slot = base.saturating_add(self.offset_ms);
        if slot >= at_ms {
            slot
        } else {
            slot.saturating_add(self.every_ms)
        }
    }

    /// The first slot strictly after `slot_ms`.
    pub fn slot_after(&self, slot_ms: u64) -> u64 {
        self.slot_at_or_after(slot_ms.saturating_add(1))
    }

    /// The slots a scheduler owes for the time from `last_slot_ms` (the
    /// last slot it ran or recorded, if any) up to `now_ms`: every slot in
    /// between that has already ended (its successor is due) is `missed`,
    /// and the newest slot that has started is `due` (run it now). A
    /// restart after a long stop thus records what it missed instead of
    /// running every missed slot at once, and never skips one silently.
    /// At most `limit` missed slots are listed (the oldest are dropped: a
    /// sweep stopped for a month does not write 8,640 rows); `dropped` says
    /// how many.
    pub fn owed(&self, last_slot_ms: Option<u64>, now_ms: u64, limit: usize) -> Owed {
        let first = match last_slot_ms {
            Some(last) => self.slot_after(last),
            // A new sweep starts at its next slot; it owes nothing before it.
            None => return Owed::default(),
        };
        if first > now_ms {
            return Owed::default();
        }
        // The newest slot at or before now.
        let newest = self.slot_at_or_after(now_ms.saturating_sub(self.every_ms - 1));
        let newest = if newest > now_ms {
            newest - self.every_ms
        } else {
            newest
        };
        let missed_count = (newest - first) / self.every_ms;
        let kept = missed_count.min(limit as u64);
        let first_kept = newest - kept * self.every_ms;
        Owed {
            missed: (0..kept).map(|i| first_kept + i * self.every_ms).collect(),
            dropped: missed_count - kept,
            due: Some(newest),
        }
    }
}

/// What a scheduler owes a sweep when it (re)starts or wakes late.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owed {
    /// Slots that ended without a run, oldest first: record them `missed`.
    pub missed: Vec<u64>,
    /// Missed slots older than those, not listed.
    pub dropped: u64,
    /// The slot that has started and not ended: run it now.
    pub due: Option<u64>,
}

/// A stable 64-bit number for `name`: the first 8 bytes of its SHA-256. Not
/// `std`'s hasher, whose output may change between Rust releases, which
/// would move every sweep's slots on an upgrade.
fn offset_of(name: &str) -> u64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn intervals_outside_the_contract_are_refused() {
        assert!(Schedule::new("a", Duration::from_millis(999)).is_err());
        assert!(Schedule::new("a", MIN_EVERY).is_ok());
        assert!(Schedule::new("a", MAX_EVERY).is_ok());
        let err = Schedule::new("a", MAX_EVERY + Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("between 1s and 7days"), "{err}");
    }

    #[test]
    fn the_offset_is_stable_and_inside_the_interval() {
        let a = Schedule::new("checkout-eu", MINUTE).unwrap();
        assert_eq!(a, Schedule::new("checkout-eu", MINUTE).unwrap());
        assert!(a.offset() < MINUTE);
        // Pinned (the first 8 bytes of SHA-256("checkout-eu"), as Python's
        // hashlib gives them): a change here would move every deployed
        // sweep's slots.
        assert_eq!(offset_of("checkout-eu"), 17_161_721_622_839_889_187);
        assert_eq!(a.offset(), Duration::from_millis(9_187));
        assert_ne!(offset_of("checkout-eu"), offset_of("checkout-us"));
    }

    #[test]
    fn a_thousand_sweeps_spread_over_the_interval() {
        // 1,000 sweeps at 1 minute: no second of the minute holds more than
        // a few times the average (1000 / 60 ≈ 17).
        let mut per_second = [0u32; 60];
        for i in 0..1000 {
            let s = Schedule::new(&format!("sweep-{i}"), MINUTE).unwrap();
            per_second[(s.offset().as_secs() % 60) as usize] += 1;
        }
        let busiest = per_second.iter().max().copied().unwrap_or(0);
        let emptiest = per_second.iter().min().copied().unwrap_or(0);
        assert!(busiest <= 40, "{per_second:?}");
        assert!(emptiest >= 3, "{per_second:?}");
    }

    #[test]
    fn slots_are_the_offset_plus_whole_intervals() {
        let s = Schedule::new("x", MINUTE).unwrap();
        let off = s.offset_ms;
        let t = 1_700_000_000_000u64;
        let slot = s.slot_at_or_after(t);
        assert!(slot >= t && slot < t + 60_000);
        assert_eq!(slot % 60_000, off % 60_000);
        assert_eq!(
            s.slot_at_or_after(slot),
            slot,
            "a slot is its own first slot"
        );
        assert_eq!(s.slot_after(slot), slot + 60_000);
        assert_eq!(s.slot_at_or_after(slot + 1), slot + 60_000);
    }

    #[test]
    fn a_new_sweep_owes_nothing_and_an_on_time_one_owes_its_slot() {
        let s = Schedule::new("x", MINUTE).unwrap();
        let slot = s.slot_at_or_after(1_700_000_000_000);
        assert_eq!(s.owed(None, slot + 5, 100), Owed::default());
        // Last ran one slot ago; the next slot started 5 ms ago: run it.
        let owed = s.owed(Some(slot - 60_000), slot + 5, 100);
        assert_eq!(
            owed,
            Owed {
                missed: vec![],
                dropped: 0,
                due: Some(slot)
            }
        );
        // Not yet due.
        assert_eq!(s.owed(Some(slot), slot + 59_999, 100), Owed::default());
    }

    #[test]
    fn a_restart_records_what_it_missed_and_runs_only_the_current_slot() {
        let s = Schedule::new("x", MINUTE).unwrap();
        let last = s.slot_at_or_after(1_700_000_000_000);
        // Down for 10 minutes and 30 s: slots last+1 … last+9 ended unrun,
        // last+10 has started.
        let now = last + 10 * 60_000 + 30_000;
        let owed = s.owed(Some(last), now, 100);
        assert_eq!(owed.due, Some(last + 10 * 60_000));
        assert_eq!(
            owed.missed,
            (1..10).map(|i| last + i * 60_000).collect::<Vec<_>>()
        );
        assert_eq!(owed.dropped, 0);
        // With a cap, the oldest are counted, not listed.
        let capped = s.owed(Some(last), now, 4);
        assert_eq!(
            capped.missed,
            (6..10).map(|i| last + i * 60_000).collect::<Vec<_>>()
        );
        assert_eq!(capped.dropped, 5);
        assert_eq!(capped.due, Some(last + 10 * 60_000));
    }
}
