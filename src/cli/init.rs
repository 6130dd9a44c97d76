//! `thinarc init`: create a repository, encrypted unless `--no-encryption`.

use anyhow::Context as _;
use clap::Args;

use super::Ctx;
use thinarc::format::RepoKey;
use thinarc::nightly::new_passphrase;
use thinarc::repo::{RepoError, Repository, parse_recipient};

/// Arguments of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Create the repository even if the store ignores create-if-absent writes. Two
    /// concurrent backups of one volume could then both commit the same point, and
    /// one would be lost without an error.
    #[arg(long)]
    pub allow_unsafe_store: bool,
    /// Create an unencrypted repository: anyone who can read the store can read its
    /// backups.
    #[arg(long, conflicts_with_all = ["recipient", "label"])]
    pub no_encryption: bool,
    /// Protect the repository key with this age recipient (age1…) instead of a
    /// passphrase: its identity file (--identity) unlocks the repository.
    #[arg(long, value_name = "RECIPIENT")]
    pub recipient: Option<String>,
    /// A note on the first key slot (shown by `key list`).
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
}

/// Creates the repository at the context's location: by default encrypted, with a
/// fresh repository key in one key slot (the passphrase from --password-file,
/// --password-command, THINARC_PASSWORD or a prompt asking twice; or --recipient).
/// The passphrase is read before anything is written.
pub async fn run(args: InitArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let location = ctx.location()?;
    let check = !args.allow_unsafe_store;
    if args.no_encryption {
        let repo = Repository::create_location(location, check, None).await?;
        if !ctx.quiet {
            eprintln!(
                "created unencrypted thinarc repository {} at {location}",
                repo.config().id
            );
        }
        return Ok(());
    }
    // A repository that exists is refused before the passphrase is asked for.
    match Repository::open_location(location).await {
        Ok(_) => {
            return Err(RepoError::AlreadyInitialized {
                location: location.to_string(),
            }
            .into());
        }
        Err(RepoError::NotARepository { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let first = match args.recipient.as_deref() {
        Some(r) => First::Recipient(parse_recipient(r)?),
        None => First::Passphrase(
            new_passphrase(None, Some(ctx.key_sources()), ctx, location)
                .await
                .context(
                    "init creates an encrypted repository: give its passphrase, or --recipient age1…, or --no-encryption",
                )?,
        ),
    };
    let key = RepoKey::generate();
    let repo = Repository::create_location(location, check, Some(key.writer())).await?;
    let slot = match first {
        First::Recipient(r) => repo.add_recipient_slot(&key, &r, args.label).await?,
        First::Passphrase(p) => repo.add_passphrase_slot(&key, p, args.label).await?,
    };
    if !ctx.quiet {
        eprintln!(
            "created encrypted thinarc repository {} at {location} (key {}, {} slot {})",
            repo.config().id,
            key.key_id(),
            slot.kind,
            slot.id
        );
    }
    Ok(())
}

/// What the first key slot wraps the repository key with.
enum First {
    Recipient(age::x25519::Recipient),
    Passphrase(zeroize::Zeroizing<String>),
}
