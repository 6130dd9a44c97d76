//! Work that a forced exit waits for. After SIGINT or SIGTERM a command gets a few
//! seconds to unwind before the process exits (see `cli::signals`); a section marked
//! with [`guard`] holds that exit back until it is done, for at most [`MAX_WAIT`]: an
//! LVM or thin-tools command in flight (killing thinarc would not stop it, and the
//! unwinding that follows it undoes what it did), and the removal of an LVM snapshot or
//! a created LV, or the release of a thin pool's metadata snapshot. The exit also waits
//! until no section has ended for [`SETTLE`], so the unwinding that starts when a
//! command returns is not cut before its own section begins. A second signal still
//! exits at once.
//!
//! Ground floor. Imports nothing of the crate; `lvm`, `source` and `target` mark their
//! sections with it, and the binary's signal handling waits on it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The longest a forced exit waits for sections past its grace period.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long after the last section ended a forced exit waits for another to begin.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Sections in progress and the end of the last one; one per process ([`SECTIONS`]).
struct Sections {
    /// Sections in progress.
    active: AtomicUsize,
    /// When the last section ended, in milliseconds since [`epoch`] (0: never).
    last_end: AtomicU64,
}

static SECTIONS: Sections = Sections::new();

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Sections {
    const fn new() -> Self {
        Sections {
            active: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
        }
    }

    fn begin(&'static self) -> Guard {
        epoch();
        self.active.fetch_add(1, Ordering::SeqCst);
        Guard(self)
    }

    fn busy(&self) -> bool {
        if self.active.load(Ordering::SeqCst) > 0 {
            return true;
        }
        let last = self.last_end.load(Ordering::SeqCst);
        last > 0 && now_ms().saturating_sub(last) < SETTLE.as_millis() as u64
    }
}

/// A section in progress, until dropped.
#[must_use = "the section ends when the guard is dropped"]
pub struct Guard(&'static Sections);

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Guard")
    }
}

/// Marks a section that a forced exit should wait for.
pub fn guard() -> Guard {
    SECTIONS.begin()
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.last_end.store(now_ms().max(1), Ordering::SeqCst);
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a section is in progress, or one ended less than [`SETTLE`] ago.
pub fn busy() -> bool {
    SECTIONS.busy()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_while_a_section_runs_and_shortly_after() {
        // Its own set of sections: other tests run LVM commands in parallel.
        static MINE: Sections = Sections::new();
        let g = MINE.begin();
        assert!(MINE.busy());
        drop(g);
        assert!(MINE.busy(), "settling");
        std::thread::sleep(SETTLE + Duration::from_millis(50));
        assert!(!MINE.busy());
    }
}
