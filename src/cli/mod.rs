//! Command-line parsing and output. One file per subcommand; each validates its
//! arguments, calls the library and prints human-readable text or `--json`. No format
//! or storage logic lives here.

mod backup;
mod copy;
mod init;
mod list;
mod progress;
mod prune;
mod restore;
mod verify;

pub use verify::ProblemsFound;

use std::io::IsTerminal;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::repo::Repository;

/// Block-level backups of LVM thin volumes, block devices and image files.
#[derive(Debug, Parser)]
#[command(name = "thinarc", version, about, long_about = None)]
pub struct Cli {
    /// Repository: a directory path or file:// URL.
    #[arg(
        short = 'r',
        long = "repo",
        env = "THINARC_REPO",
        global = true,
        value_name = "REPO"
    )]
    pub repo: Option<String>,
    /// No progress output.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(init::InitArgs),
    /// Back up an image file or block device as a new point of a volume.
    Backup(backup::BackupArgs),
    /// Restore a point of a volume onto a file or block device.
    Restore(restore::RestoreArgs),
    /// List volumes and their points.
    List(list::ListArgs),
    /// Thin the history of volumes by a retention policy, merging what is dropped.
    Prune(prune::PruneArgs),
    /// Copy points to another repository (created on first use), or consolidate one
    /// point there as a full archive.
    Copy(copy::CopyArgs),
    /// Check the repository (and optionally block data and a source); exit code 4
    /// when problems are found.
    Verify(verify::VerifyArgs),
}

/// What every subcommand gets besides its own arguments.
pub struct Ctx {
    repo: String,
    quiet: bool,
}

impl Ctx {
    /// Opens the repository.
    async fn open(&self) -> anyhow::Result<Repository> {
        Ok(Repository::open_location(&self.repo).await?)
    }

    /// Whether to draw progress bars (stderr is a terminal) or print progress lines.
    fn progress_mode(&self) -> progress::Mode {
        if self.quiet {
            progress::Mode::Off
        } else if std::io::stderr().is_terminal() {
            progress::Mode::Bar
        } else {
            progress::Mode::Lines
        }
    }
}

/// Runs the parsed command line.
///
/// # Errors
/// Any failure, with context for the user.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let repo = cli
        .repo
        .context("no repository given: pass -r REPO or set THINARC_REPO")?;
    let ctx = Ctx {
        repo,
        quiet: cli.quiet,
    };
    let command = async {
        match cli.command {
            Command::Init(a) => init::run(a, &ctx).await,
            Command::Backup(a) => backup::run(a, &ctx).await,
            Command::Restore(a) => restore::run(a, &ctx).await,
            Command::List(a) => list::run(a, &ctx).await,
            Command::Prune(a) => prune::run(a, &ctx).await,
            Command::Verify(a) => verify::run(a, &ctx).await,
            Command::Copy(a) => copy::run(a, &ctx).await,
        }
    };
    // On SIGINT or SIGTERM the command is dropped, which unwinds it like an error: a
    // backup's upload is left uncommitted (removed by a later run) and a new restore
    // target's temporary file is deleted.
    let result = tokio::select! {
        r = command => r,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}: nothing partial was committed or kept")),
    };
    // A command unwound by an error or a signal drops its volume lock: delete it now.
    crate::repo::settle_dropped_locks().await;
    result
}

/// Resolves with the name of the first SIGINT or SIGTERM received.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Parses a byte size: a number with an optional `K`, `M`, `G` or `T` suffix (powers
/// of 1024; `KiB` etc. and a trailing `B` are accepted too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 65536, 64K, 1M)"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches('B')
        .trim_end_matches('I')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?} has an unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Prints `value` as pretty JSON on stdout.
fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Formats bytes for people.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("K").is_err());
    }

    #[test]
    fn parses_commands() {
        let c = Cli::try_parse_from([
            "thinarc",
            "-r",
            "/r",
            "backup",
            "/dev/x",
            "--volume",
            "vg/x",
            "--block-size",
            "16K",
            "--json",
        ])
        .unwrap();
        let Command::Backup(b) = c.command else {
            panic!("not backup")
        };
        assert_eq!(b.volume.as_deref(), Some("vg/x"));
        assert_eq!(b.block_size, Some(16384));
        assert!(b.json);
        let c = Cli::try_parse_from(["thinarc", "restore", "v", "/t", "--at", "3"]).unwrap();
        assert!(matches!(c.command, Command::Restore(_)));
        assert!(Cli::try_parse_from(["thinarc", "restore", "v"]).is_err());
    }
}
