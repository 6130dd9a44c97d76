//! Turning a repository location (path or URL) into an object store.
//!
//! - A path or `file://` URL: the local file system, with fsync on.
//! - `s3://bucket[/prefix]`: Amazon S3 or any S3-compatible store, configured from the
//!   standard `AWS_*` environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!   `AWS_REGION`, `AWS_ENDPOINT_URL` or `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, ...).
//!   Transient failures (timeouts, connection resets, 5xx, throttling) are retried with
//!   exponential backoff for up to `THINARC_RETRY_TIMEOUT` seconds (default 180). A
//!   connection must open within 5 s and an answer must not stall for more than 20 s
//!   (both at most `THINARC_RETRY_TIMEOUT`); a request that stalls twice in a row ends
//!   the operation (see `s3http`), so a silent endpoint fails within about 45 s, or
//!   `THINARC_RETRY_TIMEOUT` plus one timeout.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, RetryConfig};

use super::RepoError;

/// Default for `THINARC_RETRY_TIMEOUT`: how long one request is retried.
const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer may stall (no byte received).
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one request may take in all (a backstop: stalls end at the read timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// An opened store, with what only its kind offers.
pub struct OpenedStore {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The directory behind a local repository.
    pub local_root: Option<std::path::PathBuf>,
    /// Listing and aborting incomplete multipart uploads, on S3.
    pub(crate) uploads: Option<Arc<super::uploads::S3Uploads>>,
}

/// Where a repository location points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location<'a> {
    /// A directory on this machine.
    Local(std::path::PathBuf),
    /// A bucket and key prefix (possibly empty) on S3.
    S3 {
        /// Bucket name.
        bucket: &'a str,
        /// Key prefix inside the bucket, without leading or trailing `/`.
        prefix: &'a str,
    },
}

/// Parses a location (a path, `file://` or `s3://` URL) without touching the store.
///
/// # Errors
/// What is wrong with it, for [`RepoError::BadLocation`] or a config file error.
pub fn parse_location(location: &str) -> Result<Location<'_>, String> {
    if let Some(rest) = location.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err("no bucket name (use s3://BUCKET/PREFIX)".into());
        }
        Ok(Location::S3 {
            bucket,
            prefix: prefix.trim_matches('/'),
        })
    } else if let Some(rest) = location.strip_prefix("file://") {
        let url = url::Url::parse(location).map_err(|e| format!("not a valid file URL: {e}"))?;
        url.to_file_path()
            .map(Location::Local)
            .map_err(|()| format!("{rest:?} is not an absolute local path"))
    } else if location.contains("://") {
        let scheme = location.split("://").next().unwrap_or_default();
        Err(format!(
            "unsupported scheme {scheme:?} (use a path, file:// or s3:// URL)"
        ))
    } else if location.is_empty() {
        Err("empty location (use a path, file:// or s3:// URL)".into())
    } else if let Some(scheme) = url_scheme(location) {
        // `s3:/bucket` or `file:dir` is a mistyped URL, not a directory to create
        // here: a copy meant for object storage must not land on the local disk.
        Err(format!(
            "{scheme:?} looks like a URL scheme without \"//\" (use s3://BUCKET/PREFIX, file:///PATH, or ./{} for a local directory with a colon in its name)",
            crate::quote::head(location).unwrap_or(location)
        ))
    } else {
        Ok(Location::Local(std::path::PathBuf::from(location)))
    }
}

/// The scheme of a location written like a URL without `//` (`s3:/bucket`,
/// `file:dir`): letters, digits, `+`, `-` or `.` after a letter, then a colon.
fn url_scheme(location: &str) -> Option<&str> {
    let (scheme, _) = location.split_once(':')?;
    let mut chars = scheme.chars();
    let url_like = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    url_like.then_some(scheme)
}

/// Opens the object store for `location`.
///
/// With `create`, a missing local directory is created (used by `init`). The local
/// store fsyncs files and directories before a write returns, so a committed archive
/// survives a power cut.
///
/// # Errors
/// [`RepoError::BadLocation`] for an unsupported scheme, an unusable directory or an
/// S3 configuration that does not build, [`RepoError::NotARepository`] for a missing
/// directory without `create`.
pub fn open_store(location: &str, create: bool) -> Result<OpenedStore, RepoError> {
    let bad = |detail: String| RepoError::BadLocation {
        location: location.to_string(),
        detail,
    };
    let path = match parse_location(location).map_err(bad)? {
        Location::S3 { bucket, prefix } => {
            return open_s3(bucket, prefix).map_err(bad);
        }
        Location::Local(path) => path,
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
    Ok(OpenedStore {
        store: Arc::new(store.with_fsync(true).with_automatic_cleanup(true)),
        local_root: Some(path),
        uploads: None,
    })
}

impl super::Repository {
    /// Bytes an unprivileged writer may still use on the file system of a local
    /// repository (statvfs); `None` for an object store or when it cannot be read.
    pub fn free_space(&self) -> Option<u64> {
        let root = self.local_root.as_ref()?;
        let path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: a zeroed statvfs is a valid out-parameter and `path` a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

/// Builds the S3 store for `bucket` and `prefix` from the environment.
fn open_s3(bucket: &str, prefix: &str) -> Result<OpenedStore, String> {
    let retry_timeout = match std::env::var("THINARC_RETRY_TIMEOUT") {
        Ok(v) => Duration::from_secs_f64(
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| format!("THINARC_RETRY_TIMEOUT={v:?} is not a number of seconds"))?,
        ),
        Err(_) => DEFAULT_RETRY_TIMEOUT,
    };
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: 10,
        retry_timeout,
    };
    // Each timeout is bounded by the retry timeout too, so that the whole wait of one
    // operation is at most about THINARC_RETRY_TIMEOUT plus one timeout.
    let bounded = |d: Duration| d.min(retry_timeout).max(Duration::from_secs(1));
    let (connect, read) = (bounded(CONNECT_TIMEOUT), bounded(READ_TIMEOUT));
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    // Timeouts go in as config keys: `with_client_options` would replace the client
    // settings read from the environment (AWS_ALLOW_HTTP among them).
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry)
        .with_http_connector(super::s3http::GuardedConnector { connect, read })
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            secs(REQUEST_TIMEOUT.max(read)),
        )
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            secs(connect),
        )
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ReadTimeout),
            secs(read),
        );
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        builder = builder.with_region("us-east-1");
    }
    // The client for the requests object_store lacks (see `uploads`): the same
    // connector and client settings.
    let mut options = object_store::ClientOptions::new();
    for key in [
        ClientConfigKey::AllowHttp,
        ClientConfigKey::AllowInvalidCertificates,
        ClientConfigKey::ConnectTimeout,
        ClientConfigKey::ReadTimeout,
        ClientConfigKey::Timeout,
        ClientConfigKey::ProxyUrl,
        ClientConfigKey::ProxyCaCertificate,
        ClientConfigKey::ProxyExcludes,
        ClientConfigKey::UserAgent,
    ] {
        if let Some(v) = builder.get_config_value(&AmazonS3ConfigKey::Client(key)) {
            options = options.with_config(key, v);
        }
    }
    let client = object_store::client::HttpConnector::connect(
        &super::s3http::GuardedConnector { connect, read },
        &options,
    )
    .map_err(|e| e.to_string())?;
    let s3 = builder.clone().build().map_err(|e| e.to_string())?;
    let uploads = super::uploads::s3_uploads(
        |k| builder.get_config_value(&k),
        s3.credentials().clone(),
        client,
        bucket,
        prefix,
    );
    Ok(OpenedStore {
        store: if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        },
        local_root: None,
        uploads: Some(uploads),
    })
}
