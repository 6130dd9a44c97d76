//! `thinarc key`: the key slots of an encrypted repository (add, list, remove,
//! passwd) and the writer key of write-only hosts (export-writer).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Ctx, print_json};
use thinarc::format::RepoKey;
use thinarc::nightly::{Need, new_passphrase};
use thinarc::repo::{KeyError, KeySlot, Repository, SlotKind, parse_recipient};

/// Arguments of `key`.
#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

/// The `key` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add a key slot: a new passphrase, or an age recipient whose identity file
    /// unlocks the repository.
    #[command(after_help = "Examples:
  thinarc -r /srv/backup key add --label admin2
  thinarc -r /srv/backup key add --recipient age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq")]
    Add(AddArgs),
    /// List the key slots (no key needed).
    #[command(after_help = "Example:\n  thinarc -r /srv/backup key list --json")]
    List(ListArgs),
    /// Remove a key slot; no archive is rewritten. The last slot cannot be removed.
    #[command(after_help = "Example:\n  thinarc -r /srv/backup key remove 3f2a9c0d1e4b5a68")]
    Remove(RemoveArgs),
    /// Change a passphrase: a new slot replaces the slot that unlocked (or slot ID).
    #[command(after_help = "Example:\n  thinarc -r /srv/backup key passwd")]
    Passwd(PasswdArgs),
    /// Write a writer key: with it a host can back up, but not restore or read
    /// anything.
    #[command(
        after_help = "Example:\n  thinarc -r /srv/backup key export-writer -o /etc/thinarc/writer.key"
    )]
    ExportWriter(ExportArgs),
}

/// Arguments of `key add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// Add a slot for this age recipient (age1…) instead of a passphrase.
    #[arg(long, value_name = "RECIPIENT", conflicts_with = "new_password_file")]
    pub recipient: Option<String>,
    /// A note on the slot (shown by `key list`).
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Read the new passphrase from the first line of FILE [default: a prompt asking
    /// twice].
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
}

/// Arguments of `key list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `key remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The slot id (see `key list`).
    pub id: String,
}

/// Arguments of `key passwd`.
#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// The passphrase slot to replace [default: the one that unlocked].
    pub id: Option<String>,
    /// Read the new passphrase from the first line of FILE [default: a prompt asking
    /// twice].
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
}

/// Arguments of `key export-writer`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write it to FILE (mode 0600, never overwritten) [default: stdout].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// A slot as `key list --json` shows it (no ciphertext).
#[derive(Serialize)]
struct Shown<'a> {
    id: &'a str,
    kind: SlotKind,
    key_id: &'a str,
    created: &'a str,
    label: Option<&'a str>,
    recipient: Option<&'a str>,
}

impl<'a> From<&'a KeySlot> for Shown<'a> {
    fn from(s: &'a KeySlot) -> Shown<'a> {
        Shown {
            id: &s.id,
            kind: s.kind,
            key_id: &s.key_id,
            created: &s.created,
            label: s.label.as_deref(),
            recipient: s.recipient.as_deref(),
        }
    }
}

/// Runs a `key` subcommand.
pub async fn run(args: KeyArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match args.command {
        KeyCommand::List(a) => list(a, ctx).await,
        KeyCommand::Add(a) => add(a, ctx).await,
        KeyCommand::Remove(a) => {
            let repo = unlocked(ctx, Need::Read, "key remove").await?;
            let removed = repo.remove_slot(&a.id).await?;
            if !ctx.quiet {
                match removed {
                    Some(s) => eprintln!("removed {} slot {}", s.kind, s.id),
                    None => eprintln!("removed corrupt slot object {}", a.id),
                }
            }
            Ok(())
        }
        KeyCommand::Passwd(a) => passwd(a, ctx).await,
        KeyCommand::ExportWriter(a) => export_writer(a, ctx).await,
    }
}

/// The repository, unlocked for `action`; refused when it is not encrypted.
async fn unlocked(ctx: &Ctx, need: Need, action: &str) -> anyhow::Result<Repository> {
    let repo = ctx.open().await?;
    if !repo.is_encrypted() {
        return Err(KeyError::NotEncrypted {
            location: repo.location().to_string(),
        }
        .into());
    }
    ctx.unlock_opened(repo, need, action).await
}

/// The repository key `unlocked` gave for `action`.
fn repository_key<'a>(repo: &'a Repository, action: &str) -> anyhow::Result<&'a RepoKey> {
    repo.read_key(action)?
        .context("the repository is encrypted")
}

async fn list(args: ListArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let repo = ctx.open().await?;
    let slots = repo.key_slots().await?;
    for p in &slots.problems {
        tracing::warn!("{p}");
    }
    if args.json {
        let problems: Vec<String> = slots.problems.iter().map(ToString::to_string).collect();
        let shown: Vec<Shown> = slots.slots.iter().map(Shown::from).collect();
        return print_json(&serde_json::json!({ "slots": shown, "problems": problems }));
    }
    println!(
        "{:<16}  {:<10}  {:<20}  {:<16}  RECIPIENT",
        "ID", "KIND", "CREATED", "LABEL"
    );
    for s in &slots.slots {
        println!(
            "{:<16}  {:<10}  {:<20}  {:<16}  {}",
            s.id,
            s.kind.to_string(),
            s.created,
            s.label.as_deref().unwrap_or("-"),
            s.recipient.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

async fn add(args: AddArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let repo = unlocked(ctx, Need::Read, "key add").await?;
    let key = repository_key(&repo, "key add")?;
    let slot = match &args.recipient {
        Some(r) => {
            repo.add_recipient_slot(key, &parse_recipient(r)?, args.label)
                .await?
        }
        None => {
            let p = new_passphrase(
                args.new_password_file.as_deref(),
                None,
                ctx,
                repo.location(),
            )
            .await?;
            repo.add_passphrase_slot(key, p, args.label).await?
        }
    };
    if !ctx.quiet {
        eprintln!("added {} slot {}", slot.kind, slot.id);
    }
    Ok(())
}

async fn passwd(args: PasswdArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let repo = unlocked(ctx, Need::Read, "key passwd").await?;
    let key = repository_key(&repo, "key passwd")?;
    let old = match args.id.or_else(|| ctx.unlocked_slot(repo.location())) {
        Some(id) => id,
        None => anyhow::bail!(
            "key passwd: say which passphrase slot to replace (see `thinarc key list`)"
        ),
    };
    let slots = repo.key_slots().await?;
    let Some(slot) = slots.slots.iter().find(|s| s.id == old) else {
        return Err(KeyError::SlotNotFound {
            location: repo.location().to_string(),
            id: old,
        }
        .into());
    };
    if slot.kind != SlotKind::Passphrase {
        anyhow::bail!("slot {old} is a {} slot, not a passphrase slot", slot.kind);
    }
    let p = new_passphrase(
        args.new_password_file.as_deref(),
        None,
        ctx,
        repo.location(),
    )
    .await?;
    let new = repo.add_passphrase_slot(key, p, slot.label.clone()).await?;
    repo.remove_slot(&old).await?;
    if !ctx.quiet {
        eprintln!(
            "passphrase changed: slot {new} replaces slot {old}",
            new = new.id
        );
    }
    Ok(())
}

async fn export_writer(args: ExportArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let repo = unlocked(ctx, Need::Write, "key export-writer").await?;
    let writer = repo
        .write_key("key export-writer")?
        .context("the repository is encrypted")?;
    let text = repo.writer_key_file(writer)?;
    let Some(path) = &args.output else {
        print!("{text}");
        return Ok(());
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow::Error::from(KeyError::Exists {
                path: path.display().to_string(),
            }),
            _ => anyhow::Error::from(e).context(format!("cannot create {}", path.display())),
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    if !ctx.quiet {
        eprintln!(
            "wrote the writer key of {} to {} (it cannot decrypt; keep it secret all the same)",
            repo.location(),
            path.display()
        );
    }
    Ok(())
}
