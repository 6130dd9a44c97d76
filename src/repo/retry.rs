//! Retrying idempotent store calls that failed in a way that may be transient.
//!
//! The S3 client already retries HTTP-level failures; this covers what reaches thinarc
//! anyway (a connection dropped mid-body, a proxy's error page) for calls that are safe
//! to repeat: ranged reads, and the commit put, whose repeat is recognised by reading
//! the marker back.

use std::future::Future;
use std::time::Duration;

/// Attempts per call.
const ATTEMPTS: u32 = 3;

/// Whether `e` may go away on its own. Answers from the store about the object
/// (missing, exists, precondition, permission, unsupported, a 501 to a conditional
/// write) are final.
pub(crate) fn is_transient(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    ) && super::s3http::conditional_unsupported(e).is_none()
}

/// Runs `f` until it succeeds, fails permanently, or [`ATTEMPTS`] are used up, with
/// 200 ms, 800 ms backoff.
pub(crate) async fn retry<T, F, Fut>(mut f: F) -> Result<T, object_store::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, object_store::Error>>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                tokio::time::sleep(Duration::from_millis(200 * 4u64.pow(attempt - 1))).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}
