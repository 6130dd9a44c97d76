//! Command-line parsing and output. One file per subcommand; each validates its
//! arguments, calls the library and prints human-readable text or `--json`. No format
//! or storage logic lives here.
//!
//! A module of the binary, not of the library: the library cannot import it, and only
//! here and in `main.rs` is `clap` named. Imports any module of the library.

mod backup;
mod copy;
mod init;
mod list;
mod progress;
mod prune;
mod repair;
mod restore;
mod run;
pub mod signals;
mod status;
mod verify;

pub use verify::ProblemsFound;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use signals::interrupted;
use thinarc::config::Config;
use thinarc::repo::{Repository, VolumeName};
use thinarc::source::SourceSpec;
use thinarc::status::alert::Alert;
use thinarc::status::{Operation, Record, Records};
use thinarc::throttle::{RateLimiter, parse_rate};

/// Block-level backups of LVM thin volumes, block devices and image files.
#[derive(Debug, Parser)]
#[command(name = "thinarc", version, about, long_about = None)]
pub struct Cli {
    /// Repository: a directory path, file:// or s3:// URL.
    #[arg(
        short = 'r',
        long = "repo",
        env = "THINARC_REPO",
        global = true,
        value_name = "REPO"
    )]
    pub repo: Option<String>,
    /// No progress output, and only warnings and errors in the log.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More log detail (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Limit source reads and uploads, each to RATE bytes per second (e.g. 50M).
    #[arg(long, global = true, value_name = "RATE", value_parser = parse_rate)]
    pub rate_limit: Option<u64>,
    /// Limit source reads to RATE bytes per second (overrides --rate-limit).
    #[arg(long, global = true, value_name = "RATE", value_parser = parse_rate)]
    pub read_limit: Option<u64>,
    /// Limit uploads to RATE bytes per second (overrides --rate-limit).
    #[arg(long, global = true, value_name = "RATE", value_parser = parse_rate)]
    pub upload_limit: Option<u64>,
    /// Worker threads for hashing, compression and decoding (default: one per core).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Run at the lowest CPU priority (nice 19) and the idle I/O class.
    #[arg(long, global = true)]
    pub low_priority: bool,
    /// Where result records are kept on this host (default /var/lib/thinarc for root,
    /// else ~/.local/state/thinarc).
    #[arg(long, global = true, env = "THINARC_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Run CMD with `sh -c` when the command fails: the failure summary is on its
    /// stdin and in THINARC_* environment variables.
    #[arg(long, global = true, value_name = "CMD")]
    pub on_failure: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(init::InitArgs),
    /// Back up an image file, block device or thin LV (lvm:VG/LV) as a new point of a
    /// volume.
    Backup(backup::BackupArgs),
    /// Restore a point of a volume onto a file, block device or LV (lvm:VG/LV).
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
    /// Bring a damaged volume's catalog back: set corrupt commit markers aside,
    /// commit again complete archives whose marker is lost, and (--drop-damaged) unlist
    /// points that depend on damaged data.
    Repair(repair::RepairArgs),
    /// Show each volume's last backups, failures, chain and stored bytes.
    Status(status::StatusArgs),
    /// Back up, prune and copy everything in the config file (the nightly job).
    Run(run::RunArgs),
}

impl Cli {
    /// Parses the command line and checks what clap alone cannot (the retention a
    /// prune's options give, by the library's check that a config's retention table
    /// also goes through), so that every usage error exits with 2 before any work.
    ///
    /// # Errors
    /// A clap error naming what is wrong.
    pub fn parse_checked() -> Result<Cli, clap::Error> {
        let cli = Cli::try_parse()?;
        if let Command::Prune(p) = &cli.command
            && let Err(e) = p.retention()
        {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            cmd.build();
            let prune = cmd
                .find_subcommand_mut("prune")
                .expect("prune is a subcommand");
            return Err(prune.error(clap::error::ErrorKind::ValueValidation, e));
        }
        Ok(cli)
    }

    /// The log verbosity: uses of `-v`, or -1 for `-q`.
    pub fn verbosity(&self) -> i8 {
        if self.quiet {
            -1
        } else {
            i8::try_from(self.verbose).unwrap_or(i8::MAX)
        }
    }
}

/// Settings given on the command line, which win over a config file's.
#[derive(Debug, Clone, Default)]
struct Given {
    read_limit: Option<u64>,
    upload_limit: Option<u64>,
    threads: Option<u16>,
    state_dir: Option<PathBuf>,
    on_failure: Option<String>,
}

/// What every subcommand gets besides its own arguments.
pub struct Ctx {
    repo: Option<String>,
    quiet: bool,
    given: Given,
    threads: usize,
    read_limit: Option<Arc<RateLimiter>>,
    upload_limit: Option<Arc<RateLimiter>>,
    state_dir: PathBuf,
    shared: Arc<Shared>,
}

/// State of the command shared by a context and those derived from it by
/// [`Ctx::with_config`], so that an interruption and the final alert see it.
#[derive(Default)]
struct Shared {
    /// The on-failure hook.
    on_failure: Mutex<Option<String>>,
    /// The record of the operation in progress, finished as interrupted if a signal
    /// stops the command.
    current: Mutex<Option<(Option<Repository>, Records, Record)>>,
    /// Failures of the command, for the on-failure hook.
    failures: Mutex<Vec<Record>>,
}

impl Ctx {
    /// The context for `given` command-line settings, completed by `config`'s.
    fn new(
        repo: Option<String>,
        quiet: bool,
        given: Given,
        config: Option<&Config>,
        shared: Arc<Shared>,
    ) -> Ctx {
        let limit = |rate: Option<u64>| rate.map(|r| Arc::new(RateLimiter::new(r)));
        Ctx {
            repo,
            quiet,
            threads: given
                .threads
                .or(config.and_then(|c| c.threads))
                .map_or_else(
                    || std::thread::available_parallelism().map_or(2, |n| n.get()),
                    usize::from,
                ),
            read_limit: limit(given.read_limit.or(config.and_then(|c| c.read_limit))),
            upload_limit: limit(given.upload_limit.or(config.and_then(|c| c.upload_limit))),
            state_dir: given
                .state_dir
                .clone()
                .or(config.map(|c| c.state_dir.clone()))
                .unwrap_or_else(default_state_dir),
            given,
            shared,
        }
    }

    /// This context with `config`'s settings where the command line gave none.
    fn with_config(&self, config: &Config) -> Ctx {
        if self.given.on_failure.is_none() {
            *self.shared.on_failure.lock().expect("not poisoned") = config.on_failure.clone();
        }
        Ctx::new(
            self.repo.clone(),
            self.quiet,
            self.given.clone(),
            Some(config),
            self.shared.clone(),
        )
    }

    /// Runs the on-failure hook, if any, for `command` which failed with `error`.
    async fn alert(&self, command: &str, error: &anyhow::Error) {
        let Some(hook) = self.shared.on_failure.lock().expect("not poisoned").clone() else {
            return;
        };
        let alert = Alert {
            command: command.to_string(),
            error: error_message(error),
            failures: std::mem::take(&mut *self.shared.failures.lock().expect("not poisoned")),
        };
        if let Err(h) = alert.send(&hook).await {
            tracing::warn!("on-failure command: {h}");
        }
    }

    /// The repository location.
    fn location(&self) -> anyhow::Result<&str> {
        self.repo
            .as_deref()
            .context("no repository given: pass -r REPO or set THINARC_REPO")
    }

    /// Opens the repository (with the upload limit, if any).
    async fn open(&self) -> anyhow::Result<Repository> {
        self.open_at(self.location()?).await
    }

    /// Opens the repository at `location` (with the upload limit, if any).
    async fn open_at(&self, location: &str) -> anyhow::Result<Repository> {
        Ok(self.limit_uploads(Repository::open_location(location).await?))
    }

    /// `repo` with this command's upload limit, if any.
    fn limit_uploads(&self, repo: Repository) -> Repository {
        match &self.upload_limit {
            Some(limit) => repo.with_upload_limit(limit.clone()),
            None => repo,
        }
    }

    /// Runs `work` on the repository at `location` as `operation` on `volume`,
    /// recording its start and outcome (see [`thinarc::status::record`]); `describe`
    /// adds the result's details to the success record.
    async fn recorded<T>(
        &self,
        location: &str,
        operation: Operation,
        volume: &VolumeName,
        work: impl AsyncFnOnce(&Repository) -> anyhow::Result<T>,
        describe: impl FnOnce(&T, &mut Record),
    ) -> anyhow::Result<T> {
        let records = Records::new(location, Some(self.state_dir.clone()));
        let record = Record::start(operation, volume, location);
        let repo = self.open_at(location).await;
        for w in records.write(repo.as_ref().ok(), &record).await {
            tracing::warn!("{w}");
        }
        *self.shared.current.lock().expect("not poisoned") =
            Some((repo.as_ref().ok().cloned(), records.clone(), record.clone()));
        let result = match &repo {
            Ok(repo) => work(repo).await,
            Err(e) => Err(anyhow::anyhow!("{}", error_message(e))),
        };
        self.shared.current.lock().expect("not poisoned").take();
        let mut record = record.finish(result.as_ref().map(|_| ()).map_err(error_message));
        if let Ok(value) = &result {
            describe(value, &mut record);
        } else {
            self.shared
                .failures
                .lock()
                .expect("not poisoned")
                .push(record.clone());
        }
        for w in records.write(repo.as_ref().ok(), &record).await {
            tracing::warn!("{w}");
        }
        result
    }

    /// Writes a finished `record` of an operation on the repository at `location`
    /// (`repo` if it could be opened); a failure is also kept for the on-failure hook.
    async fn write_record(&self, location: &str, repo: Option<&Repository>, record: Record) {
        if record.result == thinarc::status::Outcome::Failure {
            self.shared
                .failures
                .lock()
                .expect("not poisoned")
                .push(record.clone());
        }
        let records = Records::new(location, Some(self.state_dir.clone()));
        for w in records.write(repo, &record).await {
            tracing::warn!("{w}");
        }
    }

    /// Finishes the operation in progress, if any, as failed with `why`.
    async fn abandon(&self, why: &str) {
        let current = self.shared.current.lock().expect("not poisoned").take();
        if let Some((repo, records, record)) = current {
            let record = record.finish(Err(why.to_string()));
            self.shared
                .failures
                .lock()
                .expect("not poisoned")
                .push(record.clone());
            records.write(repo.as_ref(), &record).await;
        }
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
    let given = Given {
        read_limit: cli.read_limit.or(cli.rate_limit),
        upload_limit: cli.upload_limit.or(cli.rate_limit),
        threads: cli.threads,
        state_dir: cli.state_dir,
        on_failure: cli.on_failure,
    };
    let shared = Arc::new(Shared {
        on_failure: Mutex::new(given.on_failure.clone()),
        ..Shared::default()
    });
    let ctx = Ctx::new(cli.repo, cli.quiet, given, None, shared);
    let name = cli.command.name();
    let command = async {
        match cli.command {
            Command::Init(a) => init::run(a, &ctx).await,
            Command::Backup(a) => backup::run(a, &ctx).await,
            Command::Restore(a) => restore::run(a, &ctx).await,
            Command::List(a) => list::run(a, &ctx).await,
            Command::Status(a) => status::run(a, &ctx).await,
            Command::Run(a) => run::run(a, &ctx).await,
            Command::Prune(a) => prune::run(a, &ctx).await,
            Command::Verify(a) => verify::run(a, &ctx).await,
            Command::Copy(a) => copy::run(a, &ctx).await,
            Command::Repair(a) => repair::run(a, &ctx).await,
        }
    };
    // On SIGINT or SIGTERM (see [`signals`]) the command is dropped, which unwinds it
    // like an error: an upload in progress is aborted (what an abort misses is removed
    // by a later run) and a new restore target's temporary file is deleted. The
    // operation in progress is recorded as failed.
    let result = tokio::select! {
        r = command => r,
        signal = interrupted() => {
            // The dropped command's uploads are being aborted: say only what happened.
            let uploads = thinarc::repo::settle_dropped_uploads().await;
            let why = format!(
                "interrupted by {signal}: nothing partial was committed{}",
                interrupted_uploads(&uploads)
            );
            ctx.abandon(&why).await;
            Err(anyhow::anyhow!(why))
        }
    };
    // A command unwound by an error may have dropped an upload: let its abort finish.
    thinarc::repo::settle_dropped_uploads().await;
    // A command unwound by an error or a signal drops its volume lock: delete it now.
    thinarc::repo::settle_dropped_locks().await;
    if let Err(e) = &result {
        ctx.alert(name, e).await;
    }
    result
}

/// What the interrupted message says of the uploads the signal cut short.
fn interrupted_uploads(u: &thinarc::repo::DroppedUploads) -> String {
    match (u.aborted, u.failed.first()) {
        (_, Some(e)) => format!(
            "; a partial upload could not be removed ({e}): the next run of the volume removes it"
        ),
        (0, None) => String::new(),
        (_, None) => ", and the partial upload was removed".into(),
    }
}

impl Command {
    /// The subcommand's name.
    fn name(&self) -> &'static str {
        match self {
            Command::Init(_) => "init",
            Command::Backup(_) => "backup",
            Command::Restore(_) => "restore",
            Command::List(_) => "list",
            Command::Status(_) => "status",
            Command::Run(_) => "run",
            Command::Prune(_) => "prune",
            Command::Verify(_) => "verify",
            Command::Copy(_) => "copy",
            Command::Repair(_) => "repair",
        }
    }
}

/// Where result records are kept by default: `/var/lib/thinarc` for root, else
/// `$XDG_STATE_HOME/thinarc` or `~/.local/state/thinarc`.
fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from(thinarc::config::DEFAULT_STATE_DIR);
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("thinarc")
}

/// Whether `e` is (or was caused by) a volume locked by another run, or another
/// `thinarc run` going on: such errors keep their own message and exit with code 3.
pub fn is_locked(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<thinarc::repo::LockError>(),
            Some(
                thinarc::repo::LockError::Held { .. } | thinarc::repo::LockError::Unreadable { .. }
            )
        ) || matches!(
            c.downcast_ref::<thinarc::status::RunLockError>(),
            Some(thinarc::status::RunLockError::Locked(_))
        ) || c.is::<thinarc::status::RunLocked>()
    })
}

/// Adds `context` to `e`, unless `e` says the volume is locked: that message is complete
/// as it is.
fn context_unless_locked(e: anyhow::Error, context: impl FnOnce() -> String) -> anyhow::Error {
    if is_locked(&e) {
        e
    } else {
        e.context(context())
    }
}

/// The error and its causes on one line, skipping a cause whose text the message
/// already holds (object_store errors repeat their sources in their own text).
pub fn error_message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// clap's parser of a source (`backup SOURCE`, `verify --source`): the library's one
/// [`SourceSpec::parse`], on the raw argument so that a path need not be UTF-8. A bad
/// name is a usage error (exit 2).
fn source_spec() -> impl clap::builder::TypedValueParser<Value = SourceSpec> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().try_map(SourceSpec::parse)
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
