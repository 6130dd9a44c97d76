//! Turning a repository location (path or URL) into an object store.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;

use super::RepoError;

/// Opens the object store for `location`: a file system path or a `file://` URL.
/// Also returns the directory of a local repository.
///
/// With `create`, a missing local directory is created (used by `init`). The local
/// store fsyncs files and directories before a write returns, so a committed archive
/// survives a power cut.
///
/// # Errors
/// [`RepoError::BadLocation`] for an unsupported scheme or an unusable directory,
/// [`RepoError::NotARepository`] for a missing directory without `create`.
pub fn open_store(
    location: &str,
    create: bool,
) -> Result<(Arc<dyn ObjectStore>, Option<std::path::PathBuf>), RepoError> {
    let bad = |detail: String| RepoError::BadLocation {
        location: location.to_string(),
        detail,
    };
    let path = if let Some(rest) = location.strip_prefix("file://") {
        let url =
            url::Url::parse(location).map_err(|e| bad(format!("not a valid file URL: {e}")))?;
        url.to_file_path()
            .map_err(|()| bad(format!("{rest:?} is not an absolute local path")))?
    } else if location.contains("://") {
        let scheme = location.split("://").next().unwrap_or_default();
        return Err(bad(format!(
            "unsupported scheme {scheme:?} (use a path or file:// URL)"
        )));
    } else {
        std::path::PathBuf::from(location)
    };
    if create {
        std::fs::create_dir_all(&path).map_err(|e| bad(format!("cannot create directory: {e}")))?;
    }
    match std::fs::metadata(&path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("not a directory".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RepoError::NotARepository {
                location: location.to_string(),
            });
        }
        Err(e) => return Err(bad(e.to_string())),
    }
    let store = LocalFileSystem::new_with_prefix(&path).map_err(|e| bad(e.to_string()))?;
    Ok((
        Arc::new(store.with_fsync(true).with_automatic_cleanup(true)),
        Some(path),
    ))
}
