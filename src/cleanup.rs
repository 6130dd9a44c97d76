//! Work that a forced exit waits for. After SIGINT or SIGTERM a command gets a few
//! seconds to unwind before the process exits (see `cli::signals`); a section marked
//! with [`guard`] holds that exit back until it is done, for at most [`MAX_WAIT`]: an
//! LVM or thin-tools command in flight (killing thinarc would not stop it, and the
//! unwinding that follows it undoes what it did), and the removal of an LVM snapshot or
//! a created LV, or the release of a thin pool's metadata snapshot. The exit also waits
//! until no section has ended for [`SETTLE`], so the unwinding that starts when a
//! command returns is not cut before its own section begins. A second signal still
//! exits at once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The longest a forced exit waits for sections past its grace period.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long after the last section ended a forced exit waits for another to begin.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Sections in progress.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// When the last section ended, in milliseconds since [`epoch`] (0: never).
static LAST_END: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A section in progress, until dropped.
#[must_use = "the section ends when the guard is dropped"]
#[derive(Debug)]
pub struct Guard(());

/// Marks a section that a forced exit should wait for.
pub fn guard() -> Guard {
    epoch();
    ACTIVE.fetch_add(1, Ordering::SeqCst);
    Guard(())
}

impl Drop for Guard {
    fn drop(&mut self) {
        LAST_END.store(now_ms().max(1), Ordering::SeqCst);
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a section is in progress, or one ended less than [`SETTLE`] ago.
pub fn busy() -> bool {
    if ACTIVE.load(Ordering::SeqCst) > 0 {
        return true;
    }
    let last = LAST_END.load(Ordering::SeqCst);
    last > 0 && now_ms().saturating_sub(last) < SETTLE.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_while_a_section_runs_and_shortly_after() {
        let g = guard();
        assert!(busy());
        drop(g);
        assert!(busy(), "settling");
        std::thread::sleep(SETTLE + Duration::from_millis(50));
        assert!(!busy());
    }
}
