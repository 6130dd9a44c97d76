//! Clean-up that a forced exit waits for. After SIGINT or SIGTERM a command gets a
//! few seconds to unwind before the process exits (see `cli::signals`); a section
//! marked with [`guard`] (removing an LVM snapshot or a created LV, releasing a thin
//! pool's metadata snapshot) holds that exit back until it is done, for at most
//! [`MAX_WAIT`], so that an interrupted run does not leave what it was removing. A
//! second signal still exits at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The longest a forced exit waits for clean-up sections past its grace period.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Clean-up sections in progress.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// A clean-up section in progress, until dropped.
#[must_use = "the section ends when the guard is dropped"]
#[derive(Debug)]
pub struct Guard(());

/// Marks a clean-up section that a forced exit should wait for.
pub fn guard() -> Guard {
    ACTIVE.fetch_add(1, Ordering::SeqCst);
    Guard(())
}

impl Drop for Guard {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a clean-up section is in progress.
pub fn active() -> bool {
    ACTIVE.load(Ordering::SeqCst) > 0
}
