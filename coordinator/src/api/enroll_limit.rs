//! Per-source-address rate limit of `Enroll` (issue #9): a token bucket per
//! IP address, so one host cannot grind through token guesses or CSRs.
//! Defaults in code: 10 attempts a minute, bursts of 5.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most source addresses tracked; beyond it, full buckets are forgotten
/// (they carry no state), then the oldest.
const MAX_TRACKED: usize = 65_536;

/// Rate-limit settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnrollRate {
    /// Attempts refilled per minute.
    pub per_minute: u32,
    /// Bucket size: attempts allowed back to back.
    pub burst: u32,
}

impl Default for EnrollRate {
    fn default() -> Self {
        EnrollRate {
            per_minute: 10,
            burst: 5,
        }
    }
}

impl EnrollRate {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100_000).contains(&self.per_minute) {
            return Err("--enroll-per-minute must be between 1 and 100000".into());
        }
        if !(1..=100_000).contains(&self.burst) {
            return Err("--enroll-burst must be between 1 and 100000".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The per-address buckets.
#[derive(Debug)]
pub struct EnrollLimiter {
    rate: EnrollRate,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl EnrollLimiter {
    /// A limiter with `rate`.
    pub fn new(rate: EnrollRate) -> EnrollLimiter {
        EnrollLimiter {
            rate,
            buckets: Mutex::default(),
        }
    }

    /// Takes one attempt for `ip` at `now`; `Err` says how long until the
    /// next one is allowed.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let per_sec = f64::from(self.rate.per_minute) / 60.0;
        let burst = f64::from(self.rate.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&ip) {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec < burst
            });
            if buckets.len() >= MAX_TRACKED {
                if let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k) {
                    buckets.remove(&oldest);
                }
            }
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * per_sec;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_per_address() {
        let limiter = EnrollLimiter::new(EnrollRate {
            per_minute: 10,
            burst: 5,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check(a, t0).is_ok());
        }
        let wait = limiter.check(a, t0).unwrap_err();
        assert!(wait > Duration::from_secs(5) && wait <= Duration::from_secs(6));
        // Another address has its own bucket.
        assert!(limiter.check(b, t0).is_ok());
        // 6 s later one attempt has been refilled, not two.
        let t1 = t0 + Duration::from_secs(6);
        assert!(limiter.check(a, t1).is_ok());
        assert!(limiter.check(a, t1).is_err());
    }
}
