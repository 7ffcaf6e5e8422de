//! The per-target rate cap: a token bucket per destination address, so that
//! no plan — however large, however many probes share a target — can make an
//! agent send more than the operator allows to one host. Requests over the
//! rate wait for a token; nothing is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets idle this long are forgotten when the table grows large.
const IDLE: Duration = Duration::from_secs(60);
/// Table size that triggers forgetting idle buckets.
const PRUNE_AT: usize = 10_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by target address.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// At most `per_second` requests per second to any one target, with a
    /// burst of the same size.
    pub fn new(per_second: u32) -> Self {
        RateLimiter {
            per_second: f64::from(per_second.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// How long the caller must wait before sending to `target` (zero: go now).
    /// Taking a token is part of the call: the caller sends after the wait.
    pub fn reserve(&self, target: IpAddr, now: Instant) -> Duration {
        self.reserve_n(target, 1, now)
    }

    /// [`RateLimiter::reserve`] for `n` packets at once (a DNS lookup may
    /// send an A and an AAAA query).
    pub fn reserve_n(&self, target: IpAddr, n: u32, now: Instant) -> Duration {
        let Ok(mut buckets) = self.buckets.lock() else {
            return Duration::ZERO;
        };
        if buckets.len() > PRUNE_AT {
            buckets.retain(|_, b| now.saturating_duration_since(b.last) < IDLE);
        }
        let bucket = buckets.entry(target).or_insert(Bucket {
            tokens: self.per_second,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.per_second);
        bucket.last = now;
        // Going negative queues the caller behind those already waiting.
        bucket.tokens -= f64::from(n);
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / self.per_second)
        }
    }

    /// Waits for a token for `target`.
    pub async fn acquire(&self, target: IpAddr) {
        self.acquire_n(target, 1).await;
    }

    /// Waits for `n` tokens for `target`.
    pub async fn acquire_n(&self, target: IpAddr, n: u32) {
        let wait = self.reserve_n(target, n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate_per_target() {
        let limiter = RateLimiter::new(10);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(limiter.reserve(a, now), Duration::ZERO);
        }
        // The 11th and 12th wait 0.1 s and 0.2 s; another target is unaffected.
        let eleventh = limiter.reserve(a, now);
        let twelfth = limiter.reserve(a, now);
        assert!((eleventh.as_secs_f64() - 0.1).abs() < 1e-6, "{eleventh:?}");
        assert!((twelfth.as_secs_f64() - 0.2).abs() < 1e-6, "{twelfth:?}");
        assert_eq!(limiter.reserve(b, now), Duration::ZERO);
        // A second later the bucket has refilled what was spent.
        let later = now + Duration::from_secs(1);
        assert!(limiter.reserve(a, later) <= Duration::from_millis(200));
    }

    #[test]
    fn several_packets_take_several_tokens() {
        let limiter = RateLimiter::new(10);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(limiter.reserve_n(a, 2, now), Duration::ZERO);
        }
        // The bucket is empty: two more packets wait 0.2 s.
        let wait = limiter.reserve_n(a, 2, now);
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-6, "{wait:?}");
    }
}
