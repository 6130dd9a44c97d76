//! Low-priority mode: CPU nice 19 and the idle I/O scheduling class for the whole
//! process, so a backup on a busy host yields to everything else.
//!
//! Both settings are per thread on Linux and inherited by threads created later, so
//! [`lower`] must run before the async runtime starts its threads.

/// `ioprio_set` `which`: a single process or thread (0 = the caller).
const IOPRIO_WHO_PROCESS: libc::c_int = 1;
/// I/O class "idle": served only when no other process wants the disk.
const IOPRIO_CLASS_IDLE: libc::c_int = 3;
/// I/O class "best effort", the default class.
const IOPRIO_CLASS_BE: libc::c_int = 2;
const IOPRIO_CLASS_SHIFT: libc::c_int = 13;

/// The nice value of low-priority mode (the lowest priority).
pub const LOW_NICE: libc::c_int = 19;

/// How [`lower`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lowered {
    /// The I/O class now in effect: `"idle"`, or `"best-effort 7"` where the I/O
    /// scheduler refuses idle.
    pub io_class: &'static str,
}

/// Sets nice 19 and the idle I/O class (best-effort level 7 if idle is refused) for
/// the calling thread, which threads created afterwards inherit.
///
/// # Errors
/// The OS error text when the nice value or both I/O classes cannot be set.
pub fn lower() -> Result<Lowered, String> {
    // SAFETY: plain syscalls on the calling thread with constant arguments.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, LOW_NICE) };
    if rc != 0 {
        return Err(format!(
            "cannot set nice {LOW_NICE}: {}",
            std::io::Error::last_os_error()
        ));
    }
    if set_ioprio(IOPRIO_CLASS_IDLE, 0) {
        return Ok(Lowered { io_class: "idle" });
    }
    if set_ioprio(IOPRIO_CLASS_BE, 7) {
        return Ok(Lowered {
            io_class: "best-effort 7",
        });
    }
    Err(format!(
        "cannot set the I/O priority: {}",
        std::io::Error::last_os_error()
    ))
}

fn set_ioprio(class: libc::c_int, level: libc::c_int) -> bool {
    let prio = (class << IOPRIO_CLASS_SHIFT) | level;
    // SAFETY: ioprio_set takes three integers and changes only scheduling hints.
    unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, prio) == 0 }
}
