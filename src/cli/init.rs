//! `thinarc init`: create a repository.

use clap::Args;

use super::Ctx;
use crate::repo::{Repository, open_store};

/// Arguments of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {}

/// Creates the repository at the context's location.
pub async fn run(_args: InitArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let store = open_store(&ctx.repo, true)?;
    let repo = Repository::create(store, &ctx.repo).await?;
    if !ctx.quiet {
        eprintln!("created thinarc repository {} at {}", repo.config().id, ctx.repo);
    }
    Ok(())
}
