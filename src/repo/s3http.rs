//! The HTTP client under the S3 store: `object_store`'s reqwest client, wrapped so that
//! two answers the retry loop would otherwise retry for minutes end an operation at once,
//! with a message that names them.
//!
//! - **A stall.** A request that gets no byte for the read timeout (or no connection
//!   within the connect timeout) times out; `object_store` retries it. When the same
//!   request (method and URL) times out a second time in a row, the endpoint is taken as
//!   silent and the error is final: an unresponsive endpoint ends an operation after two
//!   timeouts instead of after the whole retry budget.
//! - **HTTP 501 to a conditional write.** A store that does not implement
//!   `If-None-Match: *` answers 501, which `object_store` retries as a server error.
//!   Retrying cannot help: the answer becomes a final [`ConditionalWritesUnsupported`],
//!   which [`super::Repository::put_create`] recognises.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::{ClientOptions, Error};

/// The store answered HTTP 501 to a create-if-absent put.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the store at {endpoint} does not support conditional writes (If-None-Match: *, HTTP 501): thinarc needs them to commit safely; use a store that does, or --allow-unsafe-store to accept the risk of two writers"
)]
pub struct ConditionalWritesUnsupported {
    /// Scheme, host and port of the store.
    pub endpoint: String,
}

/// A request got no answer in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "no answer from the store to {method} {url} within the timeouts (connect {connect}s, read {read}s){again}"
)]
struct Stalled {
    method: String,
    url: String,
    connect: u64,
    read: u64,
    again: &'static str,
}

/// Whether `e` (or one of its causes) is a [`ConditionalWritesUnsupported`].
pub(crate) fn conditional_unsupported(e: &Error) -> Option<&ConditionalWritesUnsupported> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(u) = c.downcast_ref::<ConditionalWritesUnsupported>() {
            return Some(u);
        }
        cause = c.source();
    }
    None
}

/// Builds [`Guarded`] clients over `object_store`'s reqwest client.
#[derive(Debug)]
pub(crate) struct GuardedConnector {
    /// The connect and read timeouts given to the client (for messages).
    pub(crate) connect: Duration,
    pub(crate) read: Duration,
}

impl HttpConnector for GuardedConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(Guarded {
            inner: ReqwestConnector::default().connect(options)?,
            stalled: Arc::default(),
            connect: self.connect,
            read: self.read,
        }))
    }
}

/// The wrapped client.
#[derive(Debug)]
struct Guarded {
    inner: HttpClient,
    /// Requests (`METHOD URL`) whose last attempt timed out.
    stalled: Arc<Mutex<HashSet<String>>>,
    connect: Duration,
    read: Duration,
}

#[async_trait]
impl HttpService for Guarded {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let conditional = req.headers().contains_key("if-none-match");
        let uri = req.uri().clone();
        let id = format!("{} {uri}", req.method());
        let result = self.inner.execute(req).await;
        match result {
            Ok(r) => {
                self.stalled.lock().expect("not poisoned").remove(&id);
                if conditional && r.status().as_u16() == 501 {
                    let endpoint = format!(
                        "{}://{}",
                        uri.scheme_str().unwrap_or("http"),
                        uri.authority().map_or("", |a| a.as_str())
                    );
                    return Err(HttpError::new(
                        HttpErrorKind::Unknown,
                        ConditionalWritesUnsupported { endpoint },
                    ));
                }
                Ok(r)
            }
            Err(e) if e.kind() == HttpErrorKind::Timeout => {
                // The first stall of a request is remembered, the second ends it (and
                // is forgotten: a later operation on the same URL starts afresh).
                let again = {
                    let mut seen = self.stalled.lock().expect("not poisoned");
                    !seen.insert(id.clone()) && seen.remove(&id)
                };
                let (method, url) = id.split_once(' ').unwrap_or((&id, ""));
                let s = Stalled {
                    method: method.to_string(),
                    url: url.split('?').next().unwrap_or(url).to_string(),
                    connect: self.connect.as_secs(),
                    read: self.read.as_secs(),
                    again: if again {
                        ", twice in a row: the endpoint is not answering"
                    } else {
                        ""
                    },
                };
                // A second stall of the same request is final: the retry loop stops.
                let kind = if again {
                    HttpErrorKind::Unknown
                } else {
                    HttpErrorKind::Timeout
                };
                Err(HttpError::new(kind, s))
            }
            Err(e) => Err(e),
        }
    }
}
