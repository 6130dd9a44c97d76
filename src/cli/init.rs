//! `thinarc init`: create a repository.

use clap::Args;

use super::Ctx;
use thinarc::repo::Repository;

/// Arguments of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Create the repository even if the store ignores create-if-absent writes. Two
    /// concurrent backups of one volume could then both commit the same point, and
    /// one would be lost without an error.
    #[arg(long)]
    pub allow_unsafe_store: bool,
}

/// Creates the repository at the context's location.
pub async fn run(args: InitArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let location = ctx.location()?;
    let repo = Repository::create_location(location, !args.allow_unsafe_store, None).await?;
    if !ctx.quiet {
        eprintln!(
            "created thinarc repository {} at {}",
            repo.config().id,
            location
        );
    }
    Ok(())
}
