//! SIGINT and SIGTERM: every command ends promptly, whatever it is blocked on (a read
//! from a slow device or a FIFO, a throttled stream, a stalled store).
//!
//! [`install`] blocks both signals in the calling thread before the runtime starts, so
//! every thread inherits the mask (child processes get a clean mask from
//! `std::process`), and one watcher thread takes them with `sigwait`: a signal is seen
//! even when every runtime worker is stuck in a blocking call. On the first signal
//! the watcher removes the temporary files of unfinished restores and wakes
//! [`interrupted`], and the command is dropped, which unwinds it: its lock is deleted,
//! its upload left uncommitted, and it exits with code 1 and one `error:` line. If the
//! unwinding has not finished within [`GRACE`], the process exits with code 1 anyway
//! (once the sections of [`thinarc::cleanup`] in progress are done: an LVM command, the
//! removal of an LVM snapshot); a second signal exits at once with 128 + its number
//! (130 for SIGINT, 143 for SIGTERM). What a forced exit leaves (a lock, an upload) is
//! removed by a later run.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::Notify;

/// How long a command may take to unwind after the first signal.
pub const GRACE: Duration = Duration::from_secs(4);

/// The name of the first signal received.
static RECEIVED: OnceLock<&'static str> = OnceLock::new();
/// Wakes [`interrupted`].
static WOKEN: Notify = Notify::const_new();

/// Blocks SIGINT and SIGTERM in this thread (call it before any other thread starts)
/// and starts the watcher thread; `error_prefix` starts the lines it prints (the
/// journal's priority).
///
/// # Errors
/// The signal mask cannot be set or the thread cannot start.
pub fn install(error_prefix: &'static str) -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the
    // calls only read and write `set`.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    };
    // SAFETY: pthread_sigmask reads `set`, which lives for the call.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || watch(&set, error_prefix))?;
    Ok(())
}

/// Resolves with the name of the first SIGINT or SIGTERM received (never, if
/// [`install`] was not called: the signals then keep their default action).
pub async fn interrupted() -> &'static str {
    loop {
        let woken = WOKEN.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if let Some(name) = RECEIVED.get() {
            return name;
        }
        woken.await;
    }
}

/// The watcher: the first signal starts the unwinding, the grace or a second signal
/// ends the process.
fn watch(set: &libc::sigset_t, error_prefix: &str) {
    let Some(first) = wait(set, None) else {
        return;
    };
    let name = signal_name(first);
    let _ = RECEIVED.set(name);
    WOKEN.notify_waiters();
    thinarc::target::remove_unfinished();
    let mut second = wait(set, Some(GRACE));
    let waited = std::time::Instant::now();
    while second.is_none()
        && thinarc::cleanup::busy()
        && waited.elapsed() < thinarc::cleanup::MAX_WAIT
    {
        second = wait(set, Some(Duration::from_millis(100)));
    }
    match second {
        Some(second) => {
            eprintln!(
                "{error_prefix}error: {} again: exiting at once; a later run removes what this one left",
                signal_name(second)
            );
            std::process::exit(128 + second);
        }
        None => {
            eprintln!(
                "{error_prefix}error: interrupted by {name}: the command did not end within {}s, exiting; a later run removes what it left",
                GRACE.as_secs()
            );
            std::process::exit(1);
        }
    }
}

/// Waits for a signal of `set` (at most `timeout`); `None` on timeout or error.
fn wait(set: &libc::sigset_t, timeout: Option<Duration>) -> Option<i32> {
    loop {
        let r = match timeout {
            None => {
                let mut sig = 0;
                // SAFETY: sigwait reads `set` and writes `sig`, both alive for the call.
                match unsafe { libc::sigwait(set, &mut sig) } {
                    0 => sig,
                    _ => -1,
                }
            }
            Some(t) => {
                let ts = libc::timespec {
                    tv_sec: t.as_secs() as libc::time_t,
                    tv_nsec: libc::c_long::from(t.subsec_nanos()),
                };
                // SAFETY: sigtimedwait reads `set` and `ts`, alive for the call; no
                // siginfo is asked for.
                unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) }
            }
        };
        if r > 0 {
            return Some(r);
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return None;
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        _ => "SIGTERM",
    }
}
