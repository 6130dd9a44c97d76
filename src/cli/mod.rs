//! Command-line parsing and output: a module of the binary, not of the library. One
//! file per subcommand; each validates its arguments, calls one library function (a
//! [`thinarc::nightly`] one for the commands that record, lock and alert) and prints
//! human-readable text or `--json`. No decision, format or storage logic lives here;
//! signals are caught here and handed to the job ([`thinarc::nightly::Job::interrupted`]).
//!
//! Only here and in `main.rs` is `clap` named. Imports any module of the library.

mod backup;
mod copy;
mod docs;
mod init;
mod key;
mod list;
mod mount;
mod progress;
mod prune;
mod repair;
mod restore;
mod run;
mod serve;
pub mod signals;
mod status;
mod verify;

pub use verify::ProblemsFound;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use signals::interrupted;
use thinarc::config::{Config, ConfigError, KeySources};
use thinarc::nightly::{Given, Job, JobError, Need, Observer, Shown};
use thinarc::progress::Progress;
use thinarc::repo::{KeyError, Repository};
use thinarc::size::human;
use thinarc::source::{ChangedBlocksError, SourceSpec};
use thinarc::status::prometheus::TextfileError;
use thinarc::throttle::parse_rate;

/// The help headings of the global options, shown after each command's own options in
/// this order (`--help` and the man pages alike).
const REPOSITORY: &str = "Repository";
const LIMITS: &str = "Limits";
const LOGGING: &str = "Logging and alerts";

/// Block-level backups of LVM thin volumes, block devices and image files.
#[derive(Debug, Parser)]
#[command(
    name = "thinarc",
    version,
    about,
    long_about = None,
    after_help = "Examples:
  thinarc -r /srv/backup init
  thinarc -r /srv/backup backup lvm:vg0/web
  thinarc -r /srv/backup restore vg0/web /var/tmp/web.img
  thinarc run --config /etc/thinarc/thinarc.toml

Each command has its own --help, and its man page: thinarc-COMMAND(1)."
)]
pub struct Cli {
    /// Repository: a directory path, file:// or s3:// URL.
    #[arg(
        short = 'r',
        long = "repo",
        env = "THINARC_REPO",
        global = true,
        value_name = "REPO",
        value_parser = location,
        help_heading = REPOSITORY
    )]
    pub repo: Option<String>,
    /// Read the passphrase of an encrypted repository from the first line of FILE.
    #[arg(long, global = true, env = "THINARC_PASSWORD_FILE", value_name = "FILE", help_heading = REPOSITORY)]
    pub password_file: Option<PathBuf>,
    /// Run CMD with `sh -c` for the passphrase (the first line of its output, e.g.
    /// `pass show thinarc`); after it THINARC_PASSWORD, then a prompt on a terminal.
    #[arg(long, global = true, value_name = "CMD", help_heading = REPOSITORY)]
    pub password_command: Option<String>,
    /// An age identity file that opens a recipient key slot (`key add --recipient`).
    #[arg(long, global = true, env = "THINARC_IDENTITY_FILE", value_name = "FILE", help_heading = REPOSITORY)]
    pub identity: Option<PathBuf>,
    /// A writer key file (`key export-writer`): enough to back up, never to read.
    #[arg(long, global = true, env = "THINARC_WRITER_KEY_FILE", value_name = "FILE", help_heading = REPOSITORY)]
    pub writer_key: Option<PathBuf>,
    /// Limit source reads and uploads, each to RATE bytes per second (e.g. 50M).
    #[arg(long, global = true, value_name = "RATE", value_parser = parse_rate, help_heading = LIMITS)]
    pub rate_limit: Option<u64>,
    /// Limit source reads to RATE bytes per second (overrides --rate-limit).
    #[arg(long, global = true, value_name = "RATE", value_parser = parse_rate, help_heading = LIMITS)]
    pub read_limit: Option<u64>,
    /// Limit uploads to RATE bytes per second (overrides --rate-limit).
    #[arg(long, global = true, value_name = "RATE", value_parser = parse_rate, help_heading = LIMITS)]
    pub upload_limit: Option<u64>,
    /// Worker threads for hashing, compression and decoding [default: one per core].
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..), help_heading = LIMITS)]
    pub threads: Option<u16>,
    /// Run at the lowest CPU priority (nice 19) and the idle I/O class.
    #[arg(long, global = true, help_heading = LIMITS)]
    pub low_priority: bool,
    /// No progress output, and only warnings and errors in the log.
    #[arg(short, long, global = true, help_heading = LOGGING)]
    pub quiet: bool,
    /// More log detail (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = LOGGING)]
    pub verbose: u8,
    /// Where result records are kept on this host [default: /var/lib/thinarc for root,
    /// else ~/.local/state/thinarc].
    #[arg(long, global = true, env = "THINARC_STATE_DIR", value_name = "DIR", help_heading = LOGGING)]
    pub state_dir: Option<PathBuf>,
    /// Run CMD with `sh -c` when the command fails: the failure summary is on its
    /// stdin and in THINARC_* environment variables.
    #[arg(long, global = true, value_name = "CMD", help_heading = LOGGING)]
    pub on_failure: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands, each with an example line under its `--help`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository.
    #[command(after_help = "Example:\n  thinarc -r s3://backups/thinarc init")]
    Init(init::InitArgs),
    /// Manage the key slots of an encrypted repository, and export a writer key for
    /// write-only hosts.
    #[command(
        after_help = "Examples:\n  thinarc -r /srv/backup key add --label laptop\n  thinarc -r /srv/backup key export-writer -o /etc/thinarc/writer.key"
    )]
    Key(key::KeyArgs),
    /// Back up an image file, block device or thin LV (lvm:VG/LV) as a new point of a
    /// volume.
    #[command(after_help = "Examples:
  thinarc -r /srv/backup backup lvm:vg0/web
  thinarc -r /srv/backup backup disk.img --changed-blocks cb.txt")]
    Backup(backup::BackupArgs),
    /// Restore a point of a volume onto a file, block device or LV (lvm:VG/LV).
    #[command(after_help = "Examples:
  thinarc -r /srv/backup restore vg0/web /var/tmp/web.img --at 12
  thinarc -r /srv/backup restore vg0/web lvm:vg1/web --create --pool vg1/pool")]
    Restore(restore::RestoreArgs),
    /// Serve a point of a volume as an NBD export, read-only or with writes kept in a
    /// local overlay (no restore needed).
    #[command(after_help = "Examples:
  thinarc -r /srv/backup serve vg0/web --at 12 --socket /run/web.sock
  qemu-img convert nbd+unix:///?socket=/run/web.sock web.img
  thinarc -r /srv/backup serve vg0/web --socket /run/web.sock --overlay /var/tmp/web.ovl
  thinarc -r /srv/backup serve vg0/web --listen 10809")]
    Serve(serve::ServeArgs),
    /// Mount a point's file system through a kernel NBD device (read-only, or
    /// read-write with an overlay), until `thinarc umount`.
    #[command(after_help = "Examples:
  thinarc -r /srv/backup mount vg0/web /mnt/web --at 12
  thinarc umount /mnt/web")]
    Mount(mount::MountArgs),
    /// Unmount a `thinarc mount` and disconnect its NBD device.
    #[command(after_help = "Examples:
  thinarc umount /mnt/web
  thinarc umount /dev/nbd0")]
    Umount(mount::UmountArgs),
    /// List volumes and their points.
    #[command(after_help = "Example:\n  thinarc -r /srv/backup list vg0/web --json")]
    List(list::ListArgs),
    /// Thin the history of volumes by a retention policy, merging what is dropped.
    #[command(
        after_help = "Example:\n  thinarc -r /srv/backup prune --keep-daily 7 --keep-weekly 4 --dry-run"
    )]
    Prune(prune::PruneArgs),
    /// Copy points to another repository (created on first use), or consolidate one
    /// point there as a full archive.
    #[command(
        after_help = "Example:\n  thinarc -r /srv/backup copy --to /mnt/offline vg0/web --consolidate"
    )]
    Copy(copy::CopyArgs),
    /// Check the repository (and optionally block data and a source); exit code 4
    /// when problems are found.
    #[command(after_help = "Example:\n  thinarc -r /srv/backup verify vg0/web --data-subset 5%")]
    Verify(verify::VerifyArgs),
    /// Bring a damaged volume's catalog back: set corrupt commit markers aside,
    /// commit again complete archives whose marker is lost, and (--drop-damaged) unlist
    /// points that depend on damaged data.
    #[command(after_help = "Example:\n  thinarc -r /srv/backup repair vg0/web --dry-run")]
    Repair(repair::RepairArgs),
    /// Show each volume's last backups, failures, chain and stored bytes.
    #[command(
        after_help = "Example:\n  thinarc -r /srv/backup status --prometheus /var/lib/prometheus/node-exporter/thinarc.prom"
    )]
    Status(status::StatusArgs),
    /// Back up, prune and copy everything in the config file (the nightly job), thin
    /// LVs of whole pools included (source patterns).
    #[command(after_help = "Examples:
  thinarc run --config /etc/thinarc/thinarc.toml
  thinarc run --dry-run")]
    Run(run::RunArgs),
    /// Print a shell completion script on stdout.
    #[command(after_help = "Example:\n  thinarc completions bash > /etc/bash_completion.d/thinarc")]
    Completions(docs::CompletionsArgs),
    /// Write the man pages (thinarc.1 and thinarc-COMMAND.1) into DIR.
    #[command(hide = true, after_help = "Example:\n  thinarc man target/man")]
    Man(docs::ManArgs),
}

impl Cli {
    /// Parses the command line and checks what clap alone cannot (the retention a
    /// prune's options give, by the library's check that a config's retention table
    /// also goes through; options that apply to `lvm:` sources or targets only), so
    /// that every usage error exits with 2 before any work.
    ///
    /// # Errors
    /// A clap error naming what is wrong.
    pub fn parse_checked() -> Result<Cli, clap::Error> {
        let cli = Cli::try_parse()?;
        let problem = match &cli.command {
            Command::Prune(p) => p.retention().err().map(|e| e.to_string()),
            Command::Backup(b) => b.check().err(),
            Command::Restore(r) => r.check().err(),
            _ => None,
        };
        if let Some(problem) = problem {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            cmd.build();
            let sub = cmd
                .find_subcommand_mut(cli.command.name())
                .expect("a subcommand");
            return Err(sub.error(clap::error::ErrorKind::ValueValidation, problem));
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

/// What every subcommand gets besides its own arguments: the repository, `--quiet`,
/// and the library's [`Job`] (settings, records, alerts), which it derefs to.
pub struct Ctx {
    repo: Option<String>,
    quiet: bool,
    job: Job,
}

impl std::ops::Deref for Ctx {
    type Target = Job;

    fn deref(&self) -> &Job {
        &self.job
    }
}

impl Ctx {
    /// This context with `config`'s settings where the command line gave none.
    fn with_config(&self, config: &Config) -> Ctx {
        Ctx {
            repo: self.repo.clone(),
            quiet: self.quiet,
            job: self.job.with_config(config),
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
        Ok(self.job.open(self.location()?).await?)
    }

    /// Opens the repository and unlocks it for `action` if it is encrypted (see
    /// [`Job::unlock_opened`]), before any work: one read of its config.
    async fn open_unlocked(&self, need: Need, action: &str) -> anyhow::Result<Repository> {
        let repo = self.open().await?;
        self.unlock_opened(repo, need, action).await
    }

    /// `repo`, just opened, unlocked for `action` if it is encrypted (see
    /// [`Job::unlock_opened`]; with [`Need::IfGiven`] only when a key source is given,
    /// never prompting).
    async fn unlock_opened(
        &self,
        repo: Repository,
        need: Need,
        action: &str,
    ) -> anyhow::Result<Repository> {
        let sources = self.job.key_sources();
        Ok(self
            .job
            .unlock_opened(self.location()?, repo, sources, need, action, self)
            .await?)
    }

    /// Unlocks the repository for `action` if it is encrypted (see [`Job::unlock`]),
    /// before any work, for a command the job opens the repository for itself.
    async fn unlock(&self, need: Need, action: &str) -> anyhow::Result<()> {
        let sources = self.job.key_sources();
        Ok(self
            .job
            .unlock(self.location()?, sources, need, action, self)
            .await?)
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

/// Shows the progress of a job's operations (see [`progress::Display`]).
impl Observer for Ctx {
    fn show(&self, what: String, progress: Arc<Progress>) -> Box<dyn Shown> {
        Box::new(progress::Display::start(
            self.progress_mode(),
            what,
            progress,
        ))
    }

    /// Prompts on the terminal (rpassword reads it without echo); `None` when stdin is
    /// not a terminal.
    fn passphrase(
        &self,
        prompt: &str,
        confirm: bool,
    ) -> Option<std::io::Result<zeroize::Zeroizing<String>>> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        let ask = |p: &str| rpassword::prompt_password(p).map(zeroize::Zeroizing::new);
        Some((|| {
            let first = ask(prompt)?;
            if confirm && *ask("Repeat it: ")? != *first {
                return Err(std::io::Error::other("the two passphrases differ"));
            }
            Ok(first)
        })())
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
        keys: KeySources {
            password_file: cli.password_file,
            password_command: cli.password_command,
            identity_file: cli.identity,
            writer_key_file: cli.writer_key,
        },
    };
    let ctx = Ctx {
        repo: cli.repo,
        quiet: cli.quiet,
        job: Job::new(given),
    };
    let name = cli.command.name();
    let command = async {
        match cli.command {
            Command::Init(a) => init::run(a, &ctx).await,
            Command::Key(a) => key::run(a, &ctx).await,
            Command::Backup(a) => backup::run(a, &ctx).await,
            Command::Restore(a) => restore::run(a, &ctx).await,
            Command::Serve(a) => serve::run(a, &ctx).await,
            Command::Mount(a) => mount::run(a, &ctx).await,
            Command::Umount(a) => mount::run_umount(a, &ctx).await,
            Command::List(a) => list::run(a, &ctx).await,
            Command::Status(a) => status::run(a, &ctx).await,
            Command::Run(a) => run::run(a, &ctx).await,
            Command::Prune(a) => prune::run(a, &ctx).await,
            Command::Verify(a) => verify::run(a, &ctx).await,
            Command::Copy(a) => copy::run(a, &ctx).await,
            Command::Repair(a) => repair::run(a, &ctx).await,
            Command::Completions(a) => {
                docs::completions(&a);
                Ok(())
            }
            Command::Man(a) => docs::man(&a),
        }
    };
    // On SIGINT or SIGTERM (see [`signals`]) the command is dropped, which unwinds it
    // like an error: an upload in progress is aborted (what an abort misses is removed
    // by a later run) and a new restore target's temporary file is deleted. The
    // operation in progress is recorded as failed.
    // `serve` and `mount` run until a signal: they end themselves then, cleanly.
    let result = if matches!(name, "serve" | "mount") {
        command.await
    } else {
        tokio::select! {
            r = command => r,
            signal = interrupted() => Err(ctx.interrupted(signal).await.into()),
        }
    };
    ctx.finish(name, result.as_ref().err().map(error_message))
        .await;
    result
}

impl Command {
    /// The subcommand's name.
    fn name(&self) -> &'static str {
        match self {
            Command::Init(_) => "init",
            Command::Key(_) => "key",
            Command::Backup(_) => "backup",
            Command::Restore(_) => "restore",
            Command::Serve(_) => "serve",
            Command::Mount(_) => "mount",
            Command::Umount(_) => "umount",
            Command::List(_) => "list",
            Command::Status(_) => "status",
            Command::Run(_) => "run",
            Command::Prune(_) => "prune",
            Command::Verify(_) => "verify",
            Command::Copy(_) => "copy",
            Command::Repair(_) => "repair",
            Command::Completions(_) => "completions",
            Command::Man(_) => "man",
        }
    }
}

/// Whether `e` is (or was caused by) a volume locked by another run, or another
/// `thinarc run` going on (see [`thinarc::nightly::is_locked`]): exit code 3.
pub fn is_locked(e: &anyhow::Error) -> bool {
    thinarc::nightly::is_locked(e.as_ref())
}

/// Whether `e` is (or was caused by) bad input found once the command runs: a config
/// file that does not check out, a `--changed-blocks` line, a key file or recipient
/// that is not one, a textfile (`--prometheus`) whose folder is missing. Exit code 2, as for the usage errors clap finds; input that is
/// well formed but names nothing that exists (a missing file, volume or point) is a
/// failure (1).
pub fn is_usage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ConfigError>(),
            Some(ConfigError::Invalid { .. })
        ) || c.is::<ChangedBlocksError>()
            || c.downcast_ref::<KeyError>().is_some_and(bad_key_input)
            // A job's key error is transparent: its source is the key error's source.
            || matches!(c.downcast_ref::<JobError>(), Some(JobError::Keys(k)) if bad_key_input(k))
            // A textfile folder that is not there is a typo: the folder is the collector's.
            || matches!(
                c.downcast_ref::<TextfileError>(),
                Some(TextfileError::NoFolder { .. })
            )
            || matches!(
                c.downcast_ref::<JobError>(),
                Some(JobError::Textfile(TextfileError::NoFolder { .. }))
            )
            // A partitioned image needs (another) `--partition`.
            || matches!(
                c.downcast_ref::<thinarc::serve::MountError>(),
                Some(thinarc::serve::MountError::Partition { .. })
            )
    })
}

/// Whether a key error is about key material given that is not key material.
fn bad_key_input(e: &KeyError) -> bool {
    matches!(
        e,
        KeyError::BadKeyFile { .. } | KeyError::BadRecipient { .. }
    )
}

/// clap's parser of a repository location (`-r`, `copy --to`): the library's
/// [`thinarc::repo::parse_location`], touching nothing.
fn location(s: &str) -> Result<String, String> {
    thinarc::repo::parse_location(s).map(|_| s.to_owned())
}

/// The error and its causes on one line (see [`thinarc::nightly::error_message`]).
pub fn error_message(e: &anyhow::Error) -> String {
    thinarc::nightly::error_message(e.as_ref())
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
        assert_eq!(b.volume.as_ref().map(|v| v.as_str()), Some("vg/x"));
        assert_eq!(b.block_size.map(|b| b.get()), Some(16384));
        assert!(b.json);
        let c = Cli::try_parse_from(["thinarc", "restore", "v", "/t", "--at", "3"]).unwrap();
        assert!(matches!(c.command, Command::Restore(_)));
        assert!(Cli::try_parse_from(["thinarc", "restore", "v"]).is_err());
    }

    #[test]
    fn help_examples_parse() {
        use clap::CommandFactory as _;
        let top = Cli::command();
        let mut examples = 0;
        for cmd in std::iter::once(&top).chain(top.get_subcommands()) {
            let after = cmd.get_after_help().map(ToString::to_string);
            let after = after.unwrap_or_else(|| panic!("{} has no example", cmd.get_name()));
            for line in after.lines().filter(|l| l.starts_with("  thinarc ")) {
                // A shell redirection is not an argument.
                let line = line.split(" > ").next().unwrap();
                let parsed = Cli::try_parse_from(line.split_whitespace());
                assert!(parsed.is_ok(), "{line}: {}", parsed.unwrap_err());
                examples += 1;
            }
        }
        assert!(examples > top.get_subcommands().count(), "{examples}");
    }
}
