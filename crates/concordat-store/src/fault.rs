//! Fault injection for crash tests: an object store that kills the process at the moment
//! a commit reaches the Delta log, after the data files are written.
//!
//! Enabled only by `CONCORDAT_FAULT=abort_in_commit` in the server's environment; it is
//! how the tests prove a crash mid-commit leaves the last version intact.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// Wraps a store; aborts the process on the first write into a `_delta_log/`.
#[derive(Debug)]
pub struct AbortInCommit {
    inner: Arc<dyn ObjectStore>,
}

impl AbortInCommit {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        AbortInCommit { inner }
    }

    fn check(&self, location: &Path) {
        if location.as_ref().contains("_delta_log/") {
            eprintln!("fault injection: aborting while committing {location}");
            std::process::abort();
        }
    }
}

impl fmt::Display for AbortInCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AbortInCommit({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for AbortInCommit {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.check(location);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.check(location);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.check(to);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.check(to);
        self.inner.rename_opts(from, to, options).await
    }
}
