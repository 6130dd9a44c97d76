//! `thinarc completions SHELL` and the hidden `thinarc man DIR`: shell completion
//! scripts and man pages, both generated from the clap definitions of [`Cli`], so they
//! never disagree with `--help`. They need no repository.

use std::path::{Path, PathBuf};

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
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    write_pages(&cmd, dir)
}

/// Writes the man page of `cmd` and of each of its visible subcommands into `dir`.
/// The example lines of `--help` become the EXAMPLES section (clap_mangen's EXTRA).
fn write_pages(cmd: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir)?;
    }
    let mut cmd = cmd.clone();
    if let Some(after) = cmd.get_after_help().map(ToString::to_string) {
        // Without its first line, the `Example:` heading of `--help`.
        let examples = after
            .split_once('\n')
            .map_or("", |(_, rest)| rest)
            .to_owned();
        cmd = cmd.after_help(examples);
    }
    let man = clap_mangen::Man::new(cmd);
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)?;
    let page = String::from_utf8_lossy(&page).replace("\n.SH EXTRA\n", "\n.SH EXAMPLES\n");
    std::fs::write(&path, page)
        .with_context(|| format!("cannot write the man page {}", path.display()))
}
