//! Progress counters shared between a running operation and whoever displays it.
//!
//! Ground floor. Imports nothing of the crate.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes done out of a total; updated by the library, read by the CLI's display.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    total: AtomicU64,
}

impl Progress {
    /// Sets the total amount of work, in bytes.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// Adds `n` bytes of work done.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// `(done, total)` bytes.
    pub fn get(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}
