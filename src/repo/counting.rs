//! An [`ObjectStore`] wrapper that counts the requests a repository handle makes, by
//! kind: what `list`, `status` and a backup's parent lookup cost on an object store
//! is a number of requests, and tests assert it ([`Repository::requests`]). Counting
//! is one relaxed atomic add per call; nothing else changes.
//!
//! [`Repository::requests`]: super::Repository::requests

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

/// Requests made through a repository handle and its clones, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// Listings (`list` and `list_with_delimiter` calls; a paged S3 listing is one).
    pub list: u64,
    /// Reads of an object's bytes, whole or ranged (`get_ranges`: one per call).
    pub get: u64,
    /// Reads of an object's metadata only.
    pub head: u64,
    /// Writes: whole puts and multipart uploads started (parts are not counted).
    pub put: u64,
    /// Objects deleted.
    pub delete: u64,
    /// Copies and renames.
    pub copy: u64,
}

impl std::ops::Add for RequestCounts {
    type Output = RequestCounts;

    fn add(self, o: RequestCounts) -> RequestCounts {
        RequestCounts {
            list: self.list + o.list,
            get: self.get + o.get,
            head: self.head + o.head,
            put: self.put + o.put,
            delete: self.delete + o.delete,
            copy: self.copy + o.copy,
        }
    }
}

impl std::ops::Sub for RequestCounts {
    type Output = RequestCounts;

    fn sub(self, o: RequestCounts) -> RequestCounts {
        RequestCounts {
            list: self.list - o.list,
            get: self.get - o.get,
            head: self.head - o.head,
            put: self.put - o.put,
            delete: self.delete - o.delete,
            copy: self.copy - o.copy,
        }
    }
}

/// The shared counters of a handle.
#[derive(Debug, Default)]
pub(crate) struct Counters([AtomicU64; 6]);

const LIST: usize = 0;
const GET: usize = 1;
const HEAD: usize = 2;
const PUT: usize = 3;
const DELETE: usize = 4;
const COPY: usize = 5;

impl Counters {
    fn add(&self, kind: usize) {
        self.0[kind].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub(crate) fn get(&self) -> RequestCounts {
        let n = |k: usize| self.0[k].load(Ordering::Relaxed);
        RequestCounts {
            list: n(LIST),
            get: n(GET),
            head: n(HEAD),
            put: n(PUT),
            delete: n(DELETE),
            copy: n(COPY),
        }
    }
}

/// A store that counts what goes through it into shared [`Counters`].
#[derive(Debug)]
pub(crate) struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<Counters>,
}

impl CountingStore {
    /// Wraps `inner`, counting into `counters`.
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, counters: Arc<Counters>) -> Self {
        CountingStore { inner, counters }
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.counters.add(PUT);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.counters.add(PUT);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.counters.add(if options.head { HEAD } else { GET });
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.counters.add(GET);
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let counters = self.counters.clone();
        self.inner
            .delete_stream(locations.inspect(move |_| counters.add(DELETE)).boxed())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.counters.add(LIST);
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.counters.add(LIST);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.counters.add(COPY);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.counters.add(COPY);
        self.inner.rename_opts(from, to, options).await
    }
}
