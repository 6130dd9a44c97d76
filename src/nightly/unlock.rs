//! Unlocking an encrypted repository, once per command and before any work: the key
//! material comes from its sources (FORMAT.md 15.3, README "Encryption"), in this
//! order: a password file, a password command, `THINARC_PASSWORD`, a prompt on a
//! terminal (through the [`Observer`]); an age identity file; a writer key file. The
//! keys unlocked are kept by the job, and every repository handle it opens afterwards
//! for that location holds them. An unencrypted repository is never unlocked, and a
//! command that needs no key (list, status, structural verify) never asks for one.

use std::path::Path;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::{Job, JobError, Observer};
use crate::config::KeySources;
use crate::format::Keys;
use crate::repo::{KeyError, RepoError, Repository, Secrets, WriterKeyFile, parse_identities};

/// The environment variable that holds a passphrase (after the password file and
/// command, before the prompt).
pub const PASSWORD_ENV: &str = "THINARC_PASSWORD";

/// What [`Job::unlock`] keeps for a location until the command ends.
#[derive(Clone, Default)]
pub(super) struct Unlocked {
    /// The keys.
    keys: Arc<Keys>,
    /// The slot that opened the repository key, if one did.
    slot: Option<String>,
    /// The passphrase that opened it, if one did: a copy's new destination gets a
    /// passphrase slot with it.
    passphrase: Option<Zeroizing<String>>,
}

/// What a command does with an encrypted repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// Reads indexes only when a key is given (list, status and repair tell which
    /// points depend on recorded damaged blocks from them): never prompts, and without
    /// a key source the handle stays locked.
    IfGiven,
    /// Writes archives (backup): a writer key is enough.
    Write,
    /// Reads archives (restore, verify --data/--source, prune, copy, key commands):
    /// the repository key.
    Read,
}

impl Job {
    /// Unlocks the repository at `location` for `action` (e.g. `"restore"`) if it is
    /// encrypted, from `sources`: afterwards [`Job::open`] gives handles holding the
    /// keys. Unlocks once per location; a second call only checks `need`. A command
    /// that has the repository open already unlocks that handle instead
    /// ([`Job::unlock_opened`]).
    ///
    /// # Errors
    /// As [`Job::unlock_opened`].
    pub async fn unlock(
        &self,
        location: &str,
        sources: &KeySources,
        need: Need,
        action: &str,
        observer: &dyn Observer,
    ) -> Result<(), JobError> {
        // A repository that cannot be opened is left to the command, which reports
        // (and records) it as it always has.
        let Ok(repo) = self.open_plain(location).await else {
            return Ok(());
        };
        self.unlock_opened(location, repo, sources, need, action, observer)
            .await
            .map(drop)
    }

    /// [`Job::unlock`] on `repo`, just opened at `location`: no second read of its
    /// config. Returns the handle holding the keys (as is, unencrypted).
    ///
    /// # Errors
    /// [`JobError::Repo`] when its key is `NeedsKey` (no key material, or only a writer key where the repository key is
    /// needed) or `WrongKey`; [`JobError::Keys`] when a source fails or no slot opens.
    pub async fn unlock_opened(
        &self,
        location: &str,
        repo: Repository,
        sources: &KeySources,
        need: Need,
        action: &str,
        observer: &dyn Observer,
    ) -> Result<Repository, JobError> {
        if !repo.is_encrypted() {
            // A host given a writer key expects its backups encrypted: say they are not.
            if matches!(need, Need::Write) && sources.writer_key_file.is_some() {
                tracing::warn!(
                    "{location} is not encrypted: the writer key given is not used, and {action} writes its archive in clear"
                );
            }
            return Ok(repo);
        }
        let cached = self
            .shared
            .keys
            .lock()
            .expect("not poisoned")
            .get(location)
            .cloned();
        let unlocked = match cached {
            Some(u) if !matches!(*u.keys, Keys::Locked) => u,
            _ => read_keys(&repo, sources, need, observer).await?,
        };
        let repo = repo.with_shared_keys(unlocked.keys.clone())?;
        match need {
            Need::IfGiven => {}
            Need::Write => repo.write_key(action).map(drop)?,
            Need::Read => repo.read_key(action).map(drop)?,
        }
        self.shared
            .keys
            .lock()
            .expect("not poisoned")
            .insert(location.to_string(), unlocked);
        Ok(repo)
    }

    /// The id of the key slot that unlocked `location`, if a slot did.
    pub fn unlocked_slot(&self, location: &str) -> Option<String> {
        let keys = self.shared.keys.lock().expect("not poisoned");
        keys.get(location).and_then(|u| u.slot.clone())
    }

    /// Unlocks the destination of a copy, `to`, with its source's `sources` when it
    /// exists already, and keeps the handle for the copies (`Job::destination`). A
    /// destination that does not exist yet is left alone: the copy creates it once
    /// its source is checked, so a copy refused for bad input leaves none behind.
    ///
    /// Returns whether `to` exists.
    ///
    /// # Errors
    /// As [`Job::unlock_opened`]; [`JobError::Destination`] when `to` cannot be
    /// opened.
    pub async fn unlock_destination(
        &self,
        to: &str,
        sources: &KeySources,
        observer: &dyn Observer,
    ) -> Result<bool, JobError> {
        match Repository::open_location(to).await {
            Ok(repo) => {
                let repo = self
                    .unlock_opened(to, repo, sources, Need::Read, "copy", observer)
                    .await?;
                self.keep_destination(to, repo);
                Ok(true)
            }
            Err(RepoError::NotARepository { .. }) => Ok(false),
            Err(e) => Err(destination(to, e)),
        }
    }

    /// The destination `to` of a copy from `src` (at `from`, unlocked and checked),
    /// holding the keys unlocked for it, created if there is none yet: a new
    /// destination of an encrypted source is encrypted with the source's key (so that
    /// archives copy as they are), its slots the source's recipient slots and, when a
    /// passphrase unlocked the source, a passphrase slot with it; one of a plain
    /// source is plain. Returns it and whether it was created. The handle
    /// [`Job::unlock_destination`] or an earlier copy kept is taken: give it back
    /// with [`Job::keep_destination`] once done with it.
    ///
    /// # Errors
    /// [`JobError::Destination`] when it cannot be opened or created;
    /// [`JobError::Repo`] when it holds another key than the one unlocked for it.
    pub(super) async fn destination(
        &self,
        from: &str,
        src: &Repository,
        to: &str,
    ) -> Result<(Repository, bool), JobError> {
        let kept = self
            .shared
            .destinations
            .lock()
            .expect("not poisoned")
            .remove(to);
        let opened = match kept {
            Some(dest) => Ok(dest),
            None => Repository::open_location(to).await,
        };
        let (dest, created) = match opened {
            Ok(dest) => (dest, false),
            Err(RepoError::NotARepository { .. }) if src.is_encrypted() => {
                let source = self
                    .shared
                    .keys
                    .lock()
                    .expect("not poisoned")
                    .get(from)
                    .cloned()
                    .unwrap_or_default();
                let created = src
                    .create_sharing_key(to, source.passphrase.clone())
                    .await
                    .map_err(|e| {
                        destination(
                            to,
                            match e {
                                KeyError::Repo(e) => e,
                                e => RepoError::BadLocation {
                                    location: to.to_string(),
                                    detail: e.to_string(),
                                },
                            },
                        )
                    })?;
                tracing::info!(
                    "created encrypted thinarc repository {} at {to} with the key of {from}",
                    created.config().id
                );
                self.shared.keys.lock().expect("not poisoned").insert(
                    to.to_string(),
                    Unlocked {
                        slot: None,
                        ..source
                    },
                );
                (created, true)
            }
            Err(RepoError::NotARepository { .. }) => (
                Repository::create_location(to, true, None)
                    .await
                    .map_err(|e| destination(to, e))?,
                true,
            ),
            Err(e) => return Err(destination(to, e)),
        };
        Ok((self.keyed(to, dest)?, created))
    }

    /// Keeps `dest`, the destination of a copy at `to` (holding its keys, without
    /// upload limit), for the next copy there.
    pub(super) fn keep_destination(&self, to: &str, dest: Repository) {
        self.shared
            .destinations
            .lock()
            .expect("not poisoned")
            .insert(to.to_string(), dest);
    }

    /// The command line's key sources.
    pub fn key_sources(&self) -> &KeySources {
        &self.given.keys
    }

    /// `repo`, opened at `location`, holding the keys unlocked for it.
    ///
    /// # Errors
    /// [`RepoError::WrongKey`] (the location now holds another repository).
    pub(super) fn keyed(&self, location: &str, repo: Repository) -> Result<Repository, RepoError> {
        match self.keys_of(location) {
            Some(keys) => repo.with_shared_keys(keys),
            None => Ok(repo),
        }
    }

    /// The keys unlocked for `location`, if any.
    fn keys_of(&self, location: &str) -> Option<Arc<Keys>> {
        self.shared
            .keys
            .lock()
            .expect("not poisoned")
            .get(location)
            .map(|u| u.keys.clone())
    }
}

/// [`JobError::Destination`]: the destination `to` of a copy cannot be opened or
/// created.
fn destination(to: &str, error: RepoError) -> JobError {
    JobError::Destination {
        to: to.to_string(),
        error: Box::new(error),
    }
}

/// The keys `sources` give for `repo`: a writer key when writing and one is given;
/// else the repository key from the identity and passphrase sources (the prompt only
/// when neither an identity nor a writer key is given); else the writer key, or
/// nothing. With the repository key, the id of the slot that opened it.
async fn read_keys(
    repo: &Repository,
    sources: &KeySources,
    need: Need,
    observer: &dyn Observer,
) -> Result<Unlocked, KeyError> {
    let writer = match &sources.writer_key_file {
        Some(path) => Some(
            WriterKeyFile::parse(&path.display().to_string(), &read(path, "writer key file")?)?.key,
        ),
        None => None,
    };
    if let (Need::Write, Some(writer)) = (need, &writer) {
        return Ok(Unlocked {
            keys: Arc::new(Keys::Writer(writer.clone())),
            ..Unlocked::default()
        });
    }
    let mut secrets = Secrets::default();
    if let Some(path) = &sources.identity_file {
        let text = Zeroizing::new(read(path, "identity file")?);
        secrets.identities = parse_identities(&path.display().to_string(), &text)?;
    }
    let prompt = secrets.identities.is_empty() && writer.is_none() && need != Need::IfGiven;
    let ask = format!("Passphrase for {}: ", repo.location());
    secrets.passphrase = passphrase(sources, prompt.then_some((observer, ask.as_str()))).await?;
    if secrets.is_empty() {
        return Ok(Unlocked {
            keys: Arc::new(writer.map_or(Keys::Locked, Keys::Writer)),
            ..Unlocked::default()
        });
    }
    let passphrase = secrets.passphrase.clone();
    let unlocked = repo.unlock(secrets).await?;
    for p in &unlocked.problems {
        tracing::warn!("{p}");
    }
    Ok(Unlocked {
        keys: Arc::new(Keys::Owner(unlocked.key)),
        slot: Some(unlocked.slot),
        passphrase,
    })
}

/// The passphrase from `sources`, in order: the password file, the password command,
/// `THINARC_PASSWORD`, then (with `prompt`) the observer's prompt. `None` when none
/// gives one.
///
/// # Errors
/// [`KeyError::Source`] when the file cannot be read, the command fails, or the prompt
/// fails.
pub async fn passphrase(
    sources: &KeySources,
    prompt: Option<(&dyn Observer, &str)>,
) -> Result<Option<Zeroizing<String>>, KeyError> {
    if let Some(path) = &sources.password_file {
        return Ok(Some(first_line(Zeroizing::new(read(
            path,
            "password file",
        )?))));
    }
    if let Some(cmd) = &sources.password_command {
        return password_command(cmd).await.map(Some);
    }
    if let Ok(p) = std::env::var(PASSWORD_ENV) {
        return Ok(Some(Zeroizing::new(p)));
    }
    match prompt {
        Some((observer, text)) => ask(observer, text, false),
        None => Ok(None),
    }
}

/// A new passphrase (for `init`, `key add`, `key passwd`): from `file`, else from the
/// global `sources` when `use_sources`, else a prompt asking twice.
///
/// # Errors
/// [`KeyError::Source`] as [`passphrase`]; [`KeyError::BadPassphrase`] when none is
/// available or it is empty.
pub async fn new_passphrase(
    file: Option<&Path>,
    sources: Option<&KeySources>,
    observer: &dyn Observer,
    what: &str,
) -> Result<Zeroizing<String>, KeyError> {
    let given = match (file, sources) {
        (Some(path), _) => Some(first_line(Zeroizing::new(read(path, "password file")?))),
        (None, Some(sources)) => passphrase(sources, None).await?,
        (None, None) => None,
    };
    let p = match given {
        Some(p) => p,
        None => ask(observer, &format!("New passphrase for {what}: "), true)?.ok_or(
            KeyError::BadPassphrase(
                "no passphrase given and no terminal to ask on: give --password-file, --password-command or THINARC_PASSWORD (for a new passphrase, --new-password-file)",
            ),
        )?,
    };
    if p.is_empty() {
        return Err(KeyError::BadPassphrase("the passphrase is empty"));
    }
    Ok(p)
}

/// Asks the observer (a terminal prompt; `None` without a terminal).
fn ask(
    observer: &dyn Observer,
    text: &str,
    confirm: bool,
) -> Result<Option<Zeroizing<String>>, KeyError> {
    observer
        .passphrase(text, confirm)
        .transpose()
        .map_err(|e| KeyError::Source {
            what: "passphrase prompt".into(),
            detail: e.to_string(),
        })
}

fn read(path: &Path, what: &str) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|e| KeyError::Source {
        what: format!("cannot read {what} {}", path.display()),
        detail: e.to_string(),
    })
}

/// The passphrase of a password file or command's output: its first line, without
/// the line end.
fn first_line(text: Zeroizing<String>) -> Zeroizing<String> {
    let line = text.split('\n').next().unwrap_or_default();
    Zeroizing::new(line.strip_suffix('\r').unwrap_or(line).to_string())
}

/// Longest a password command may run (it may ask a pinentry or an agent).
const PASSWORD_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// Most a password command may print on stdout, and the stderr kept for its error.
const PASSWORD_COMMAND_OUTPUT: u64 = 64 << 10;

/// Runs `cmd` with `sh -c`; its stdout's first line is the passphrase. A command that
/// prints more than 64 KiB, runs longer than 2 minutes or prints no passphrase is an
/// error (it is killed), so a broken command cannot hang or exhaust a nightly run.
async fn password_command(cmd: &str) -> Result<Zeroizing<String>, KeyError> {
    use tokio::io::AsyncReadExt as _;
    let what = format!("password command {}", crate::quote::excerpt(cmd));
    let fail = |detail: String| KeyError::Source {
        what: what.clone(),
        detail,
    };
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(fail("its output could not be read".into()));
    };
    let ran = async {
        let mut out = Zeroizing::new(Vec::new());
        stdout
            .take(PASSWORD_COMMAND_OUTPUT + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| fail(format!("cannot read its output: {e}")))?;
        if out.len() as u64 > PASSWORD_COMMAND_OUTPUT {
            let _ = child.kill().await;
            return Err(fail(format!(
                "it printed more than {} KiB (a passphrase is one line); it was stopped",
                PASSWORD_COMMAND_OUTPUT >> 10
            )));
        }
        let mut err = Vec::new();
        let _ = stderr
            .take(PASSWORD_COMMAND_OUTPUT)
            .read_to_end(&mut err)
            .await;
        let status = child
            .wait()
            .await
            .map_err(|e| fail(format!("cannot wait for it: {e}")))?;
        Ok((out, err, status))
    };
    let (out, err, status) = tokio::time::timeout(PASSWORD_COMMAND_TIMEOUT, ran)
        .await
        .map_err(|_| {
            fail(format!(
                "it did not finish within {} s; it was stopped",
                PASSWORD_COMMAND_TIMEOUT.as_secs()
            ))
        })??;
    if !status.success() {
        let stderr = String::from_utf8_lossy(&err);
        let stderr = stderr.trim();
        return Err(fail(if stderr.is_empty() {
            status.to_string()
        } else {
            format!("{status} ({})", crate::quote::bounded(stderr))
        }));
    }
    let text = std::str::from_utf8(&out).map_err(|_| fail("its output is not UTF-8".into()))?;
    let line = first_line(Zeroizing::new(text.to_string()));
    if line.is_empty() {
        return Err(fail(
            "it printed no passphrase (its first line is empty)".into(),
        ));
    }
    Ok(line)
}
