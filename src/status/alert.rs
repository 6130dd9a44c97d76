//! The on-failure hook: a command run with `sh -c` when a command or a nightly run had
//! failures, so that mail, a chat webhook or a pager can be plugged in.
//!
//! The hook gets the failure summary twice: as its standard input (so
//! `mail -s "thinarc failed" root` sends it as the body) and in the environment:
//!
//! | variable | value |
//! |---|---|
//! | `THINARC_EVENT` | `failure` |
//! | `THINARC_COMMAND` | the thinarc command that failed (`backup`, `run`, ...) |
//! | `THINARC_HOST` | this host's name |
//! | `THINARC_ERROR` | the command's error line |
//! | `THINARC_FAILURES` | number of failed operations |
//! | `THINARC_FAILED_VOLUMES` | the volumes concerned, space-separated |
//! | `THINARC_SUMMARY` | the full summary (same text as stdin) |
//!
//! The hook may take up to [`HOOK_TIMEOUT`]; after that it is killed.

use std::fmt::Write as _;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::record::Record;
use crate::repo::hostname;

/// How long the hook may run.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// What went wrong, for the hook.
#[derive(Debug, Clone)]
pub struct Alert {
    /// The thinarc command.
    pub command: String,
    /// Its error line.
    pub error: String,
    /// The failed operations, with their records.
    pub failures: Vec<Record>,
}

impl Alert {
    /// The summary text.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "thinarc {} failed on {}: {}\n",
            self.command,
            hostname(),
            self.error
        );
        for r in &self.failures {
            let _ = writeln!(
                s,
                "- {} of {} in {} at {}: {}",
                r.operation.name(),
                r.volume,
                r.repository,
                r.time().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                r.error.as_deref().unwrap_or("failed")
            );
        }
        s
    }

    /// Runs `hook` with `sh -c`, the summary on stdin and in the environment.
    ///
    /// # Errors
    /// A message when the hook cannot start, fails, or times out.
    pub async fn send(&self, hook: &str) -> Result<(), String> {
        let summary = self.summary();
        let mut volumes: Vec<&str> = self.failures.iter().map(|r| r.volume.as_str()).collect();
        volumes.sort_unstable();
        volumes.dedup();
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(hook)
            .env("THINARC_EVENT", "failure")
            .env("THINARC_COMMAND", &self.command)
            .env("THINARC_HOST", hostname())
            .env("THINARC_ERROR", &self.error)
            .env("THINARC_FAILURES", self.failures.len().max(1).to_string())
            .env("THINARC_FAILED_VOLUMES", volumes.join(" "))
            .env("THINARC_SUMMARY", &summary)
            .stdin(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start `sh -c {hook}`: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A hook that does not read its input is fine.
            let _ = stdin.write_all(summary.as_bytes()).await;
        }
        match tokio::time::timeout(HOOK_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("`{hook}` exited with {status}")),
            Ok(Err(e)) => Err(format!("`{hook}`: {e}")),
            Err(_) => Err(format!(
                "`{hook}` did not finish within {}s and was killed",
                HOOK_TIMEOUT.as_secs()
            )),
        }
    }
}
