//! `thinarc completions SHELL` and the hidden `thinarc man DIR`: shell completion
//! scripts and man pages, both generated from the clap definitions of [`Cli`], so they
//! never disagree with `--help`. They need no repository.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::Cli;

/// Arguments of `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Arguments of `man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write `thinarc.1` and `thinarc-COMMAND.1` into (created if
    /// missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Prints the completion script for `args.shell` on stdout.
pub fn completions(args: &CompletionsArgs) {
    clap_complete::generate(
        args.shell,
        &mut Cli::command(),
        "thinarc",
        &mut std::io::stdout(),
    );
}

/// Writes `thinarc(1)` and one man page per (visible) subcommand into `args.dir`.
///
/// # Errors
/// The directory cannot be created or a page cannot be written.
pub fn man(args: &ManArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create man page directory {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))
}
