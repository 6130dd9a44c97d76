//! Running an operator's command (`sh -c`) or a helper tool with a hard time limit:
//! the `pre_snapshot`/`post_snapshot` hooks and the freeze commands (`virsh
//! domfsfreeze`, `domfsthaw`).
//!
//! Each command runs in a process group of its own, with stdin from `/dev/null` and
//! its stdout and stderr captured. When it ends, or outlives its timeout, the whole
//! group is killed (SIGKILL), so a hook's children (`mysql`, `sleep`, …) go with it and
//! none is left holding the output pipes; a helper that must outlive the command
//! leaves the group with `setsid`. The core,
//! [`Command::run_blocking`], is synchronous, so that a guard's `Drop` (a post-command
//! or a thaw during unwinding) can run it; [`Command::run`] runs it on the blocking pool
//! and kills the group if the future is dropped (SIGINT, SIGTERM).
//!
//! Tools floor (with `lvm` and `throttle`). Imports only `cleanup` and `quote`; must not
//! import the nouns or anything above them.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// How long the output of a finished command is waited for.
const PIPE_WAIT: Duration = Duration::from_secs(1);

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// It could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// It exited unsuccessfully.
    #[error("{what} failed ({status}): {stderr}")]
    Failed {
        what: String,
        status: String,
        /// Its stderr (else stdout) on one line, cut to 240 characters.
        stderr: String,
    },
    /// It outlived its timeout and was killed with its process group.
    #[error(
        "{what} did not finish within {}s and was killed with its process group",
        timeout.as_secs_f64()
    )]
    Timeout { what: String, timeout: Duration },
}

/// What a finished command printed.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// A command to run with a time limit.
#[derive(Debug, Clone)]
pub struct Command {
    /// How messages name it (`pre-snapshot command \`...\``).
    pub what: String,
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    timeout: Duration,
}

impl Command {
    /// `sh -c SCRIPT`, named `what` in messages.
    pub fn shell(what: impl Into<String>, script: &str, timeout: Duration) -> Command {
        Command::tool(what, "sh", &["-c", script], timeout)
    }

    /// `PROGRAM ARGS`, named `what` in messages.
    pub fn tool(
        what: impl Into<String>,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Command {
        Command {
            what: what.into(),
            program: program.into(),
            args: args.iter().map(|a| (*a).to_string()).collect(),
            env: Vec::new(),
            timeout,
        }
    }

    /// Sets an environment variable of the command.
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Command {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the command to its end or its timeout, blocking the thread. A forced exit
    /// after a signal waits for it (see [`crate::cleanup`]).
    ///
    /// # Errors
    /// [`HookError`].
    pub fn run_blocking(&self) -> Result<Output, HookError> {
        let _section = crate::cleanup::guard();
        self.run_tracked(&AtomicI32::new(0))
    }

    /// Runs the command on the blocking pool; dropping the future kills its process
    /// group.
    ///
    /// # Errors
    /// [`HookError`].
    pub async fn run(&self) -> Result<Output, HookError> {
        let group = Arc::new(AtomicI32::new(0));
        let killer = KillOnDrop(group.clone());
        let this = self.clone();
        let result = tokio::task::spawn_blocking(move || this.run_tracked(&group))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        std::mem::forget(killer);
        result
    }

    /// [`Command::run_blocking`], publishing the process group's id in `group` while
    /// it runs.
    fn run_tracked(&self, group: &AtomicI32) -> Result<Output, HookError> {
        let mut child = std::process::Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|source| HookError::Spawn {
                what: self.what.clone(),
                source,
            })?;
        let pid = i32::try_from(child.id()).unwrap_or(0);
        group.store(pid, Ordering::SeqCst);
        let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut text = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut text);
                }
                let _ = tx.send(String::from_utf8_lossy(&text).into_owned());
            });
            rx
        };
        let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
        let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if started.elapsed() >= self.timeout => break None,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break child.wait().ok(),
            }
        };
        // Whatever the command left running in its group goes too (a helper that must
        // outlive it starts with `setsid`): its pipes then close.
        kill_group(pid);
        if status.is_none() {
            let _ = child.wait();
        }
        group.store(0, Ordering::SeqCst);
        // A helper that left the group (`setsid`) may still hold a pipe: its output is
        // not waited for.
        let output = Output {
            stdout: out.recv_timeout(PIPE_WAIT).unwrap_or_default(),
            stderr: err.recv_timeout(PIPE_WAIT).unwrap_or_default(),
        };
        match status {
            None => Err(HookError::Timeout {
                what: self.what.clone(),
                timeout: self.timeout,
            }),
            Some(s) if s.success() => Ok(output),
            Some(s) => {
                let said = if output.stderr.trim().is_empty() {
                    &output.stdout
                } else {
                    &output.stderr
                };
                let said = said.split_whitespace().collect::<Vec<_>>().join(" ");
                Err(HookError::Failed {
                    what: self.what.clone(),
                    status: s.to_string(),
                    stderr: if said.is_empty() {
                        "no output".into()
                    } else {
                        crate::quote::bounded(&said)
                    },
                })
            }
        }
    }
}

/// Kills the process group it names, if any, when dropped.
struct KillOnDrop(Arc<AtomicI32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_group(self.0.load(Ordering::SeqCst));
    }
}

/// Sends SIGKILL to process group `pgid` (nothing for 0).
fn kill_group(pgid: i32) {
    if pgid > 0 {
        // SAFETY: killpg has no memory preconditions; a group that is gone gives ESRCH.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_env_failure_and_timeout() {
        let t = Duration::from_secs(5);
        let out = Command::shell("hook", "echo \"$X\"; echo err >&2", t)
            .env("X", "value")
            .run_blocking()
            .unwrap();
        assert_eq!(out.stdout, "value\n");
        assert_eq!(out.stderr, "err\n");
        let e = Command::shell("hook", "echo 'no such table'  >&2; exit 3", t)
            .run_blocking()
            .unwrap_err();
        assert_eq!(e.to_string(), "hook failed (exit status: 3): no such table");
        let started = Instant::now();
        let e = Command::shell("hook", "sleep 30 & sleep 30", Duration::from_millis(300))
            .run_blocking()
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the group was killed"
        );
        assert_eq!(
            e.to_string(),
            "hook did not finish within 0.3s and was killed with its process group"
        );
    }
}
