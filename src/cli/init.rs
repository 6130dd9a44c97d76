//! `thinarc init`: create a repository.

use clap::Args;

use super::Ctx;
use crate::repo::Repository;

/// Arguments of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {}

/// Creates the repository at the context's location.
pub async fn run(_args: InitArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let repo = Repository::create_location(&ctx.repo).await?;
    if !ctx.quiet {
        eprintln!(
            "created thinarc repository {} at {}",
            repo.config().id,
            ctx.repo
        );
    }
    Ok(())
}
