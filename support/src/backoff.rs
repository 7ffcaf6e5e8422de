//! Jittered exponential backoff, and the validation of its configuration:
//! the agent's reconnects to the coordinator and the coordinator's webhook
//! retries share it.
//!
//! The delay doubles with each failed attempt up to a cap, and each delay is
//! drawn at random from the lower part of its slot so that a fleet of agents
//! cut off by the same coordinator restart does not reconnect in lockstep.
//! [`BackoffConfig::delay`] computes a delay from the attempt count alone,
//! for schedules whose count is stored (and so survives a restart).
//!
//! It owns the schedule only; it imports no I/O, no clock and no vantage
//! crate.

use std::time::Duration;

/// Upper bound on `max`: an agent that waits longer than this between
/// reconnect attempts looks dead to its operator, and a webhook retried less
/// often than hourly is as good as dropped.
const MAX_CAP: Duration = Duration::from_secs(3600);

/// Why a [`BackoffConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackoffError {
    /// `min` was zero, which would make the schedule all zeros and spin.
    #[error("backoff minimum must be greater than zero")]
    ZeroMin,
    /// `max` was below `min`.
    #[error("backoff maximum ({max:?}) must not be below the minimum ({min:?})")]
    MaxBelowMin {
        /// The configured minimum.
        min: Duration,
        /// The configured maximum.
        max: Duration,
    },
    /// `max` exceeded one hour.
    #[error("backoff maximum ({max:?}) must not exceed {limit:?}")]
    MaxTooLarge {
        /// The configured maximum.
        max: Duration,
        /// The largest allowed maximum.
        limit: Duration,
    },
    /// `jitter` was NaN, infinite, or outside `0.0..=1.0`.
    #[error("backoff jitter ({jitter}) must be a number between 0.0 and 1.0")]
    InvalidJitter {
        /// The configured jitter.
        jitter: f64,
    },
}

/// Parameters of a retry schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// Delay before the first retry.
    pub min: Duration,
    /// Cap on the delay, however many attempts have failed.
    pub max: Duration,
    /// Fraction of each delay that is randomised: a delay is drawn uniformly
    /// from `[base * (1 - jitter), base]`. `0.0` gives a fixed schedule.
    pub jitter: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            min: Duration::from_millis(500),
            max: Duration::from_secs(30),
            jitter: 0.5,
        }
    }
}

impl BackoffConfig {
    /// Checks that `min > 0`, `min <= max <= 1 hour` and that `jitter` is a
    /// finite number in `0.0..=1.0`.
    pub fn validate(&self) -> Result<(), BackoffError> {
        if self.min.is_zero() {
            return Err(BackoffError::ZeroMin);
        }
        if self.max < self.min {
            return Err(BackoffError::MaxBelowMin {
                min: self.min,
                max: self.max,
            });
        }
        if self.max > MAX_CAP {
            return Err(BackoffError::MaxTooLarge {
                max: self.max,
                limit: MAX_CAP,
            });
        }
        if !(self.jitter.is_finite() && (0.0..=1.0).contains(&self.jitter)) {
            return Err(BackoffError::InvalidJitter {
                jitter: self.jitter,
            });
        }
        Ok(())
    }

    /// The delay after `attempt` failed attempts (0: before the first
    /// retry): the base `min * 2^attempt` capped at `max`, drawn uniformly
    /// from `[base * (1 - jitter), base]`. Any attempt count saturates at
    /// the cap; an unvalidated configuration never panics either.
    pub fn delay<R: rand::Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let base = self.base_nanos(attempt);
        // `as` from f64 saturates and maps NaN to 0, and the clamp keeps the
        // range non-empty, so no input can make the draw panic.
        let low = ((base as f64) * (1.0 - self.jitter)).round() as u64;
        let low = low.min(base);
        let nanos = if low == base {
            base
        } else {
            rng.random_range(low..=base)
        };
        Duration::from_nanos(nanos)
    }

    /// `min * 2^attempt` capped at `max`, in nanoseconds. Worked in `u128`
    /// with checked arithmetic so that any attempt count simply saturates at
    /// the cap.
    fn base_nanos(&self, attempt: u32) -> u64 {
        let max = self.max.as_nanos();
        let scaled = 1u128
            .checked_shl(attempt)
            .and_then(|factor| self.min.as_nanos().checked_mul(factor))
            .unwrap_or(u128::MAX);
        // A validated `max` is at most an hour, far below `u64::MAX` ns.
        u64::try_from(scaled.min(max)).unwrap_or(u64::MAX)
    }
}

/// The state of one reconnect schedule: how many attempts have failed since
/// the last success.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// Starts a schedule, rejecting an invalid configuration.
    pub fn new(config: BackoffConfig) -> Result<Backoff, BackoffError> {
        config.validate()?;
        Ok(Backoff { config, attempt: 0 })
    }

    /// The delay before the next attempt, which is then counted.
    ///
    /// The base delay is `min * 2^attempt`, capped at `max`; the returned
    /// delay is uniform in `[base * (1 - jitter), base]`.
    pub fn next_delay<R: rand::Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let delay = self.config.delay(self.attempt, rng);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Restarts the schedule at `min`, after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays have been handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn config(min_ms: u64, max_ms: u64, jitter: f64) -> BackoffConfig {
        BackoffConfig {
            min: Duration::from_millis(min_ms),
            max: Duration::from_millis(max_ms),
            jitter,
        }
    }

    #[test]
    fn default_is_valid() {
        let c = BackoffConfig::default();
        assert_eq!(c.min, Duration::from_millis(500));
        assert_eq!(c.max, Duration::from_secs(30));
        assert_eq!(c.jitter, 0.5);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn schedule_without_jitter_doubles_up_to_max() {
        let mut b = Backoff::new(config(100, 1000, 0.0)).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let got: Vec<u64> = (0..7)
            .map(|_| b.next_delay(&mut rng).as_millis() as u64)
            .collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(b.attempt(), 7);
    }

    #[test]
    fn default_schedule_without_jitter() {
        let mut b = Backoff::new(BackoffConfig {
            jitter: 0.0,
            ..BackoffConfig::default()
        })
        .unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let got: Vec<Duration> = (0..8).map(|_| b.next_delay(&mut rng)).collect();
        let want: Vec<Duration> = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
            .into_iter()
            .map(Duration::from_millis)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn jittered_delays_stay_in_their_slot_and_vary() {
        for jitter in [0.1, 0.5, 1.0] {
            let cfg = config(100, 5000, jitter);
            let mut rng = StdRng::seed_from_u64(42);
            for attempt in 0..10u32 {
                let base = (Duration::from_millis(100) * 2u32.pow(attempt)).min(cfg.max);
                let low = base.mul_f64(1.0 - jitter);
                let mut seen = std::collections::HashSet::new();
                for _ in 0..200 {
                    let mut b = Backoff::new(cfg).unwrap();
                    for _ in 0..attempt {
                        b.next_delay(&mut rng);
                    }
                    let d = b.next_delay(&mut rng);
                    assert!(
                        d >= low && d <= base,
                        "jitter {jitter} attempt {attempt}: {d:?} outside [{low:?}, {base:?}]"
                    );
                    seen.insert(d);
                }
                assert!(
                    seen.len() > 1,
                    "jitter {jitter} attempt {attempt}: delay is constant"
                );
            }
        }
    }

    #[test]
    fn reset_restarts_at_min() {
        let mut b = Backoff::new(config(250, 10_000, 0.0)).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..5 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.attempt(), 5);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.next_delay(&mut rng), Duration::from_millis(250));
        assert_eq!(b.next_delay(&mut rng), Duration::from_millis(500));
    }

    #[test]
    fn huge_attempt_counts_saturate_at_max() {
        let cfg = BackoffConfig {
            min: Duration::from_nanos(1),
            max: MAX_CAP,
            jitter: 0.0,
        };
        let mut b = Backoff::new(cfg).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..10_000 {
            assert!(b.next_delay(&mut rng) <= MAX_CAP);
        }
        assert_eq!(b.attempt(), 10_000);
        assert_eq!(b.next_delay(&mut rng), MAX_CAP);

        b.attempt = u32::MAX;
        assert_eq!(b.next_delay(&mut rng), MAX_CAP);
        assert_eq!(b.attempt(), u32::MAX, "the counter saturates");

        let mut jittered = Backoff::new(BackoffConfig { jitter: 1.0, ..cfg }).unwrap();
        jittered.attempt = u32::MAX;
        assert!(jittered.next_delay(&mut rng) <= MAX_CAP);
    }

    #[test]
    fn delay_from_a_stored_count_matches_the_schedule() {
        let cfg = config(100, 1000, 0.0);
        let mut rng = StdRng::seed_from_u64(5);
        let mut b = Backoff::new(cfg).unwrap();
        for attempt in 0..8 {
            assert_eq!(cfg.delay(attempt, &mut rng), b.next_delay(&mut rng));
        }
        assert_eq!(cfg.delay(u32::MAX, &mut rng), Duration::from_secs(1));
        let jittered = config(100, 1000, 0.5);
        for attempt in [0, 3, 40, u32::MAX] {
            let d = jittered.delay(attempt, &mut rng);
            let base = (Duration::from_millis(100) * 2u32.saturating_pow(attempt.min(20)))
                .min(Duration::from_secs(1));
            assert!(d >= base / 2 && d <= base, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn min_equal_to_max_is_constant() {
        let mut b = Backoff::new(config(300, 300, 0.0)).unwrap();
        let mut rng = StdRng::seed_from_u64(9);
        for _ in 0..5 {
            assert_eq!(b.next_delay(&mut rng), Duration::from_millis(300));
        }
    }

    #[test]
    fn rejects_zero_min() {
        assert_eq!(
            Backoff::new(config(0, 1000, 0.5)).unwrap_err(),
            BackoffError::ZeroMin
        );
    }

    #[test]
    fn rejects_max_below_min() {
        let err = Backoff::new(config(2000, 1000, 0.5)).unwrap_err();
        assert_eq!(
            err,
            BackoffError::MaxBelowMin {
                min: Duration::from_secs(2),
                max: Duration::from_secs(1)
            }
        );
        assert!(err.to_string().contains("below the minimum"), "{err}");
    }

    #[test]
    fn rejects_max_over_an_hour() {
        let cfg = BackoffConfig {
            max: MAX_CAP + Duration::from_nanos(1),
            ..BackoffConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(BackoffError::MaxTooLarge { .. })
        ));
        let cfg = BackoffConfig {
            max: MAX_CAP,
            ..BackoffConfig::default()
        };
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn rejects_bad_jitter() {
        for jitter in [-0.1, 1.01, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = config(100, 1000, jitter).validate().unwrap_err();
            assert!(
                matches!(err, BackoffError::InvalidJitter { .. }),
                "{jitter}: {err:?}"
            );
        }
        for jitter in [0.0, 1.0] {
            assert_eq!(config(100, 1000, jitter).validate(), Ok(()));
        }
    }
}
