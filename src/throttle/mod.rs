//! Throttling: a byte-rate limiter shared by the threads of one run, an object store
//! wrapper that limits upload bandwidth with it, and a low-priority mode
//! ([`priority`]).
//!
//! The limiter is a virtual-time token bucket (GCRA): every `acquire(n)` reserves the
//! next `n / rate` seconds of the budget and sleeps until the reservation starts, less a
//! small burst allowance. Callers may ask for any amount at once; a large request
//! simply waits longer, so the long-run rate is exact whatever the request sizes.
//!
//! Tools floor (with `lvm`). Imports only `quote` and `size`; must not import `repo`,
//! which wraps its stores with the limiter, nor anything else above it.

pub mod priority;
mod store;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::quote::excerpt;

pub use store::ThrottledStore;

/// How far ahead of the steady rate a caller may run (absorbs scheduling jitter
/// without letting the rate overshoot by more than this much budget).
const BURST: Duration = Duration::from_millis(100);

/// A byte-rate limit, shared by reference (`Arc`) between threads and tasks.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    /// The virtual time at which the budget handed out so far is used up.
    horizon: Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimiter {
            bytes_per_sec: bytes_per_sec.max(1),
            horizon: Mutex::new(Instant::now()),
        }
    }

    /// The configured rate in bytes per second.
    pub fn rate(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Reserves `bytes` of budget and returns how long the caller must wait before
    /// using it.
    fn reserve(&self, bytes: u64) -> Duration {
        let now = Instant::now();
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let mut horizon = self.horizon.lock().unwrap_or_else(|e| e.into_inner());
        // Unused budget does not pile up beyond the burst allowance.
        let start = (*horizon).max(now.checked_sub(BURST).unwrap_or(now));
        *horizon = start + cost;
        (*horizon).saturating_duration_since(now + BURST)
    }

    /// Waits (blocking the thread) until `bytes` may be used.
    pub fn acquire_blocking(&self, bytes: u64) {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// Waits (asynchronously) until `bytes` may be used.
    pub async fn acquire(&self, bytes: u64) {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Parses a rate: a size (see [`crate::size::parse_size`]) optionally followed by `/s`,
/// e.g. `50M`, `50M/s`, `1G/s`.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let size = t.strip_suffix("/s").unwrap_or(t);
    match crate::size::parse_size(size) {
        Ok(0) => Err(format!("{}: a rate limit must be more than 0", excerpt(s))),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "{} is not a rate (bytes per second, e.g. 50M or 50M/s)",
            excerpt(s)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50M"), Ok(50 << 20));
        assert_eq!(parse_rate("50M/s"), Ok(50 << 20));
        assert_eq!(parse_rate("1024"), Ok(1024));
        assert!(parse_rate("0").unwrap_err().contains("more than 0"));
        assert!(parse_rate("fast").unwrap_err().contains("is not a rate"));
    }

    #[test]
    fn reservations_follow_the_rate() {
        let l = RateLimiter::new(1000);
        // The burst allowance is free, after that each byte costs 1 ms.
        assert_eq!(l.reserve(100), Duration::ZERO);
        let wait = l.reserve(500);
        assert!(
            wait > Duration::from_millis(480) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        let wait = l.reserve(1000);
        assert!(wait > Duration::from_millis(1480), "{wait:?}");
    }

    #[test]
    fn blocking_rate_is_kept() {
        let l = RateLimiter::new(1 << 20);
        let start = Instant::now();
        for _ in 0..24 {
            l.acquire_blocking(16 << 10);
        }
        // 384 KiB at 1 MiB/s, less the 100 ms burst.
        let t = start.elapsed().as_secs_f64();
        assert!((0.25..0.40).contains(&t), "{t}");
    }
}
