//! Consistent snapshots: the operator's `pre_snapshot`/`post_snapshot` commands and
//! the built-in freeze (`fs:/mount`, checked to be a mount of the LV and frozen by the
//! kernel while `lvcreate` suspends it; `libvirt:DOMAIN` with `virsh domfsfreeze`),
//! and what the point is: [`Consistency::Crash`] or
//! [`Consistency::Application`].
//!
//! For `lvm:VG/LV` the pre-command runs just before the snapshot is taken, the freeze
//! covers only `lvcreate`, and the post-command runs once the snapshot exists (or its
//! creation failed), never after the upload. A file or device source has no snapshot:
//! its hooks run around the whole read (pre before the source is opened, post after
//! the commit or the failure). The post-command runs whenever the pre-command
//! succeeded: on success, on failure, and when a signal unwinds the backup
//! ([`After`]'s `Drop`); a thaw likewise ([`Frozen`]), and a watchdog thaws when the
//! freeze outlives its timeout.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hook::{Command, HookError};

/// Default time limit of a hook.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// Default upper bound of the frozen time.
pub const DEFAULT_FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a point's image is consistent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// As after a power cut: nothing quiesced the writers.
    #[default]
    Crash,
    /// A pre-command succeeded or the file systems were frozen for the snapshot.
    Application,
}

/// Why a backup stops before its snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsistencyError {
    /// The pre-command failed or hung; the backup did not start.
    #[error("{0}; the backup did not start")]
    Pre(#[source] HookError),
    /// `freeze = "fs:PATH"` names no mount of this LV; nothing was frozen.
    #[error(
        "freeze fs:{path}: {why}, not a mount of {lv} (device {major}:{minor}); nothing was frozen or created"
    )]
    NotThisLv {
        path: String,
        why: String,
        lv: String,
        major: u32,
        minor: u32,
    },
    /// The freeze failed and `freeze_required` is set.
    #[error("{0}; freeze_required is set, so no snapshot was taken")]
    Freeze(#[source] HookError),
}

/// The operator's commands around the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooks {
    /// Run before the snapshot; its failure stops the backup.
    pub pre: Option<String>,
    /// Run after the snapshot, whatever happened, once `pre` succeeded (or when there
    /// is no `pre`).
    pub post: Option<String>,
    /// Time limit of each.
    pub timeout: Duration,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            pre: None,
            post: None,
            timeout: DEFAULT_HOOK_TIMEOUT,
        }
    }
}

/// What the hooks are told (`THINARC_*`).
#[derive(Debug, Clone)]
pub struct HookEnv {
    /// `THINARC_VOLUME`.
    pub volume: String,
    /// `THINARC_SOURCE`: `lvm:VG/LV` or the path.
    pub source: String,
    /// `THINARC_SNAPSHOT`: `VG/LV-thinarc-…` (empty for a file or device source).
    pub snapshot: String,
}

impl Hooks {
    fn command(&self, event: &str, script: &str, env: &HookEnv) -> Command {
        Command::shell(
            format!("{event} command {}", crate::quote::excerpt(script)),
            script,
            self.timeout,
        )
        .env("THINARC_EVENT", event)
        .env("THINARC_VOLUME", &env.volume)
        .env("THINARC_SOURCE", &env.source)
        .env("THINARC_SNAPSHOT", &env.snapshot)
    }

    /// Runs the pre-command and returns the guard that runs the post-command.
    ///
    /// # Errors
    /// [`ConsistencyError::Pre`]: the post-command is not run.
    pub async fn before(&self, env: &HookEnv) -> Result<After, ConsistencyError> {
        if let Some(pre) = &self.pre {
            self.command("pre-snapshot", pre, env)
                .run()
                .await
                .map_err(ConsistencyError::Pre)?;
        }
        Ok(After {
            post: self
                .post
                .as_ref()
                .map(|p| self.command("post-snapshot", p, env)),
            quiesced: self.pre.is_some(),
        })
    }
}

/// The post-command still to run: [`After::finish`], or when dropped (an error or a
/// signal unwinds the backup) with `THINARC_STATUS=failed`.
#[derive(Debug)]
pub struct After {
    post: Option<Command>,
    quiesced: bool,
}

impl After {
    /// Whether a pre-command quiesced the source.
    pub fn quiesced(&self) -> bool {
        self.quiesced
    }

    /// Runs the post-command with `THINARC_STATUS` `ok` or `failed`; a warning if it
    /// failed (the backup stands).
    pub fn finish(mut self, ok: bool) -> Option<String> {
        self.run(ok)
    }

    fn run(&mut self, ok: bool) -> Option<String> {
        let post = self.post.take()?;
        let status = if ok { "ok" } else { "failed" };
        post.env("THINARC_STATUS", status)
            .run_blocking()
            .err()
            .map(|e| e.to_string())
    }
}

impl Drop for After {
    fn drop(&mut self) {
        if let Some(w) = self.run(false) {
            eprintln!("warning: {w}");
        }
    }
}

/// `freeze = "fs:PATH" | "libvirt:DOMAIN"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FreezeTarget {
    /// A mounted file system of the LV.
    Fs(PathBuf),
    /// The file systems of a libvirt guest, through its QEMU guest agent.
    Libvirt(String),
}

impl FreezeTarget {
    /// Parses `fs:/path` or `libvirt:DOMAIN`.
    ///
    /// # Errors
    /// A message saying what is expected.
    pub fn parse(s: &str) -> Result<FreezeTarget, String> {
        match s.split_once(':') {
            Some(("fs", p)) if p.starts_with('/') => Ok(FreezeTarget::Fs(p.into())),
            Some(("libvirt", d)) if !d.is_empty() => Ok(FreezeTarget::Libvirt(d.into())),
            _ => Err(format!(
                "{} is not `fs:/MOUNT/POINT` or `libvirt:DOMAIN`",
                crate::quote::excerpt(s)
            )),
        }
    }
}

/// The built-in freeze of an LVM source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freeze {
    /// What to freeze.
    pub target: FreezeTarget,
    /// Upper bound of the frozen time.
    pub timeout: Duration,
    /// Whether a failed freeze stops the backup (else: crash-consistent, a warning).
    pub required: bool,
}

impl Freeze {
    /// `virsh domfsfreeze`/`domfsthaw` of a libvirt target; none for `fs:` (the
    /// kernel freezes it, see [`Freeze::freeze`]).
    fn commands(&self) -> Option<(Command, Command)> {
        let FreezeTarget::Libvirt(d) = &self.target else {
            return None;
        };
        let t = self.timeout;
        Some((
            Command::tool(
                format!("virsh domfsfreeze {d}"),
                "virsh",
                &["domfsfreeze", d],
                t,
            ),
            Command::tool(
                format!("virsh domfsthaw {d}"),
                "virsh",
                &["domfsthaw", d],
                t,
            ),
        ))
    }

    /// Checks that an `fs:` target is a mount of the LV whose device is `lv_dev`,
    /// before anything is frozen.
    ///
    /// # Errors
    /// [`ConsistencyError::NotThisLv`].
    pub fn check(&self, lv: &str, lv_dev: &Path) -> Result<(), ConsistencyError> {
        let FreezeTarget::Fs(path) = &self.target else {
            return Ok(());
        };
        let refuse = |why: String, (major, minor): (u32, u32)| ConsistencyError::NotThisLv {
            path: path.display().to_string(),
            why,
            lv: lv.into(),
            major,
            minor,
        };
        let want = std::fs::metadata(lv_dev).map(|m| rdev(&m)).map_err(|e| {
            refuse(
                format!("cannot stat the LV's device {}: {e}", lv_dev.display()),
                (0, 0),
            )
        })?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let found = mounts.lines().rev().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && Path::new(&unescape(f[4])) == path.as_path()).then(|| f[2].to_string())
        });
        match found {
            None => Err(refuse("no file system is mounted there".into(), want)),
            Some(dev) if dev == format!("{}:{}", want.0, want.1) => Ok(()),
            Some(dev) => Err(refuse(
                format!("the file system mounted there is on device {dev}"),
                want,
            )),
        }
    }

    /// Freezes. `Ok(None)`: the freeze failed but is not required (the warning says
    /// why); the snapshot is then crash-consistent.
    ///
    /// # Errors
    /// [`ConsistencyError::Freeze`] when it failed and is required.
    ///
    /// An `fs:` target (checked by [`Freeze::check`] to be a mount of the LV itself) is
    /// frozen by the kernel: `lvcreate` suspends the origin with its file system frozen
    /// (device-mapper's `lockfs`, the freeze `fsfreeze` asks for: dirty data written,
    /// writers held) exactly while the snapshot is taken. An `fsfreeze --freeze` before
    /// it would make that suspend fail with EBUSY (a frozen file system cannot be
    /// frozen again), so nothing is run for it.
    pub fn freeze(&self, warnings: &mut Vec<String>) -> Result<Option<Frozen>, ConsistencyError> {
        let Some((freeze, thaw)) = self.commands() else {
            return Ok(Some(Frozen {
                thaw: None,
                timeout: self.timeout,
                stop: None,
                watchdog: None,
            }));
        };
        if let Err(e) = freeze.run_blocking() {
            // A freeze that timed out may have frozen part of it: thaw anyway.
            let _ = thaw.run_blocking();
            if self.required {
                return Err(ConsistencyError::Freeze(e));
            }
            warnings.push(format!(
                "{e}; the snapshot is crash-consistent only (freeze_required = false)"
            ));
            return Ok(None);
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let timeout = self.timeout;
        let watchdog_thaw = thaw.clone();
        let watchdog = std::thread::spawn(move || match stopped.recv_timeout(timeout) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = watchdog_thaw.run_blocking();
                true
            }
            _ => false,
        });
        Ok(Some(Frozen {
            thaw: Some(thaw),
            timeout,
            stop: Some(stop),
            watchdog: Some(watchdog),
        }))
    }
}

/// A frozen file system or guest: thawed by [`Frozen::thaw`], when dropped, or by the
/// watchdog once the freeze timeout has passed.
#[derive(Debug)]
pub struct Frozen {
    /// The thaw command (none: the kernel thaws when `lvcreate` resumes the origin).
    thaw: Option<Command>,
    timeout: Duration,
    stop: Option<mpsc::Sender<()>>,
    watchdog: Option<std::thread::JoinHandle<bool>>,
}

impl Frozen {
    /// Thaws. `Err`: a warning (the thaw failed, or the watchdog had thawed before the
    /// snapshot was taken, so the point is only crash-consistent).
    pub fn thaw(mut self) -> Result<(), String> {
        self.end()
    }

    fn end(&mut self) -> Result<(), String> {
        let Some(stop) = self.stop.take() else {
            return Ok(());
        };
        let _ = stop.send(());
        let timed_out = self
            .watchdog
            .take()
            .is_some_and(|w| w.join().unwrap_or(false));
        if timed_out {
            return Err(format!(
                "the freeze outlived freeze_timeout ({}s) and was thawed before the snapshot was complete: the point is crash-consistent only",
                self.timeout.as_secs_f64()
            ));
        }
        match &self.thaw {
            Some(thaw) => thaw.run_blocking().map(drop).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(w) = self.end() {
            eprintln!("warning: {w}");
        }
    }
}

/// `major:minor` of a device node.
fn rdev(m: &std::fs::Metadata) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt as _;
    let r = m.rdev();
    (libc::major(r), libc::minor(r))
}

/// A mountinfo path with its octal escapes (`\040` for a space) decoded.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_targets_parse() {
        assert_eq!(
            FreezeTarget::parse("fs:/var/lib/mysql"),
            Ok(FreezeTarget::Fs("/var/lib/mysql".into()))
        );
        assert_eq!(
            FreezeTarget::parse("libvirt:web1"),
            Ok(FreezeTarget::Libvirt("web1".into()))
        );
        assert!(FreezeTarget::parse("fs:relative").is_err());
        assert!(FreezeTarget::parse("zfs:x").is_err());
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
    }

    #[test]
    fn fs_freeze_refuses_a_path_that_is_not_a_mount_of_the_lv() {
        let f = Freeze {
            target: FreezeTarget::Fs("/proc".into()),
            timeout: DEFAULT_FREEZE_TIMEOUT,
            required: true,
        };
        let e = f
            .check("vg0/web", Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("freeze fs:/proc: the file system mounted there is on device ")
                && e.ends_with(
                    ", not a mount of vg0/web (device 1:3); nothing was frozen or created"
                ),
            "{e}"
        );
        let f = Freeze {
            target: FreezeTarget::Fs("/no/such/mount".into()),
            ..f
        };
        assert_eq!(
            f.check("vg0/web", Path::new("/dev/null"))
                .unwrap_err()
                .to_string(),
            "freeze fs:/no/such/mount: no file system is mounted there, not a mount of vg0/web (device 1:3); nothing was frozen or created"
        );
    }
}
