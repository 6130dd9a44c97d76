//! Incomplete multipart uploads on S3: listing them and aborting them.
//!
//! An upload that a killed run left behind is invisible to listing and never becomes an
//! object, yet S3 keeps (and bills) its parts until someone aborts it. `object_store`
//! aborts the uploads it started but has no call to list a bucket's uploads, so this
//! module sends the two S3 requests it needs itself: `ListMultipartUploads` (one signed
//! `GET ?uploads&prefix=`) and `AbortMultipartUpload` (`DELETE ?uploadId=`). They are
//! signed with `object_store`'s own SigV4 signer and credentials and go through the
//! same HTTP client (timeouts included) as every other request, so no second AWS SDK is
//! needed. The answer is a small XML document read with plain string matching: only
//! `Key`, `UploadId`, `Initiated` and the pagination markers are used.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{HttpClient, HttpRequest, HttpRequestBody};

use super::{RepoError, Repository, VolumeName};

/// An incomplete multipart upload under the repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingUpload {
    /// Object key, relative to the repository.
    pub key: String,
    /// The upload id S3 gave it.
    pub upload_id: String,
    /// When it was started, by the store's clock.
    pub initiated: DateTime<Utc>,
}

/// The key prefix of `volume`'s uploads.
fn upload_prefix(volume: &VolumeName) -> String {
    format!("{}/", volume.prefix())
}

/// What the S3 requests of this module need.
pub(crate) struct S3Uploads {
    pub(crate) client: HttpClient,
    pub(crate) credentials: AwsCredentialProvider,
    pub(crate) region: String,
    /// `scheme://host[:port]/bucket` (path style) or `scheme://bucket.host` (virtual
    /// hosted), without a trailing `/`.
    pub(crate) bucket_url: String,
    /// The repository's key prefix in the bucket: empty, or ending with `/`.
    pub(crate) prefix: String,
}

impl std::fmt::Debug for S3Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Uploads")
            .field("bucket_url", &self.bucket_url)
            .finish()
    }
}

/// A failed request of this module (an answer that is not 2xx included).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UploadsError(String);

impl S3Uploads {
    /// Sends a signed request with an empty body; returns the answer's body.
    async fn send(&self, method: &str, url: url::Url) -> Result<String, UploadsError> {
        let fail = |what: String| UploadsError(format!("{method} {url}: {what}"));
        let mut req = HttpRequest::new(HttpRequestBody::empty());
        *req.method_mut() = method.parse().map_err(|_| fail("bad method".into()))?;
        *req.uri_mut() = url.as_str().parse().map_err(|_| fail("bad URL".into()))?;
        let cred = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| fail(e.to_string()))?;
        AwsAuthorizer::new(&cred, "s3", &self.region)
            .try_authorize(&mut req, None)
            .map_err(|e| fail(e.to_string()))?;
        let resp = self
            .client
            .execute(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .bytes()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            return Err(fail(format!("HTTP {status}: {}", excerpt(&body))));
        }
        Ok(body)
    }

    /// Every incomplete upload whose key starts with `under` (relative to the
    /// repository), following the pagination.
    async fn list(&self, under: &str) -> Result<Vec<PendingUpload>, UploadsError> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut url = url::Url::parse(&format!("{}/", self.bucket_url))
                .map_err(|e| UploadsError(format!("{}: {e}", self.bucket_url)))?;
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("uploads", "");
                q.append_pair("prefix", &format!("{}{under}", self.prefix));
                if let Some((key, id)) = &markers {
                    q.append_pair("key-marker", key);
                    q.append_pair("upload-id-marker", id);
                }
            }
            let body = self.send("GET", url).await?;
            for upload in elements(&body, "Upload") {
                let (Some(key), Some(upload_id), Some(initiated)) = (
                    element(upload, "Key"),
                    element(upload, "UploadId"),
                    element(upload, "Initiated"),
                ) else {
                    continue;
                };
                let Some(key) = key.strip_prefix(self.prefix.as_str()) else {
                    continue;
                };
                let Ok(initiated) = DateTime::parse_from_rfc3339(&initiated) else {
                    continue;
                };
                out.push(PendingUpload {
                    key: key.to_string(),
                    upload_id,
                    initiated: initiated.with_timezone(&Utc),
                });
            }
            let next = (
                element(&body, "NextKeyMarker"),
                element(&body, "NextUploadIdMarker"),
            );
            match (element(&body, "IsTruncated").as_deref(), next) {
                (Some("true"), (Some(k), Some(i)))
                    if markers.as_ref() != Some(&(k.clone(), i.clone())) =>
                {
                    markers = Some((k, i));
                }
                _ => return Ok(out),
            }
        }
    }

    /// Aborts upload `u`.
    async fn abort(&self, u: &PendingUpload) -> Result<(), UploadsError> {
        let mut url = url::Url::parse(&format!("{}/", self.bucket_url))
            .map_err(|e| UploadsError(format!("{}: {e}", self.bucket_url)))?;
        url.path_segments_mut()
            .map_err(|()| UploadsError(format!("{}: not a base URL", self.bucket_url)))?
            .pop_if_empty()
            .extend(format!("{}{}", self.prefix, u.key).split('/'));
        url.query_pairs_mut().append_pair("uploadId", &u.upload_id);
        self.send("DELETE", url).await.map(|_| ())
    }
}

/// The bodies of the `<name>` elements of `xml`, in order.
fn elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    out
}

/// The text of the first `<name>` element of `xml`, unescaped.
fn element(xml: &str, name: &str) -> Option<String> {
    elements(xml, name).first().map(|t| {
        t.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
    })
}

/// At most 200 characters of `s`, on one line.
fn excerpt(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &one[..i]),
        None => one,
    }
}

impl Repository {
    /// The incomplete multipart uploads of `volume` (of every volume with `None`); always
    /// empty for a local repository.
    ///
    /// # Errors
    /// [`RepoError::Uploads`] when the store cannot list them.
    pub async fn pending_uploads(
        &self,
        volume: Option<&VolumeName>,
    ) -> Result<Vec<PendingUpload>, RepoError> {
        let Some(s3) = &self.uploads else {
            return Ok(Vec::new());
        };
        let under = volume.map_or_else(|| "volumes/".to_string(), upload_prefix);
        s3.list(&under).await.map_err(|e| RepoError::Uploads {
            location: self.location.clone(),
            detail: e.0,
        })
    }

    /// Among `all`, the incomplete uploads of every volume, those of `volume` (as
    /// [`pending_uploads`](Self::pending_uploads) of `volume` lists them).
    pub fn uploads_of(volume: &VolumeName, all: &[PendingUpload]) -> Vec<PendingUpload> {
        let under = upload_prefix(volume);
        all.iter()
            .filter(|u| u.key.starts_with(&under))
            .cloned()
            .collect()
    }

    /// Aborts the incomplete uploads of `volume` started before `cutoff` (a time by the
    /// store's clock): left by killed runs. The caller holds the volume's lock, and
    /// `cutoff` leaves a grace period, since a writer of the volume that lost its lock
    /// may still be uploading. Returns the keys aborted.
    ///
    /// # Errors
    /// [`RepoError::Uploads`] when listing or an abort fails.
    pub(crate) async fn abort_stale_uploads(
        &self,
        volume: &VolumeName,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<String>, RepoError> {
        let mut aborted = Vec::new();
        let Some(s3) = self.uploads.clone() else {
            return Ok(aborted);
        };
        for u in self.pending_uploads(Some(volume)).await? {
            if u.initiated < cutoff {
                s3.abort(&u).await.map_err(|e| RepoError::Uploads {
                    location: self.location.clone(),
                    detail: e.0,
                })?;
                aborted.push(u.key);
            }
        }
        Ok(aborted)
    }
}

/// The S3 request context for `bucket` and `prefix`, from the settings `get` gives (a
/// built `AmazonS3Builder`'s config) and the store's credentials.
pub(crate) fn s3_uploads(
    get: impl Fn(object_store::aws::AmazonS3ConfigKey) -> Option<String>,
    credentials: AwsCredentialProvider,
    client: HttpClient,
    bucket: &str,
    prefix: &str,
) -> Arc<S3Uploads> {
    use object_store::aws::AmazonS3ConfigKey as K;
    let region = get(K::Region).unwrap_or_else(|| "us-east-1".into());
    let virtual_hosted = get(K::VirtualHostedStyleRequest).is_some_and(|v| v == "true");
    let bucket_url = match get(K::Endpoint) {
        Some(e) if virtual_hosted => {
            let e = e.trim_end_matches('/');
            match e.split_once("://") {
                Some((scheme, host)) if !host.starts_with(&format!("{bucket}.")) => {
                    format!("{scheme}://{bucket}.{host}")
                }
                _ => e.to_string(),
            }
        }
        Some(e) => format!("{}/{bucket}", e.trim_end_matches('/')),
        None => format!("https://{bucket}.s3.{region}.amazonaws.com"),
    };
    Arc::new(S3Uploads {
        client,
        credentials,
        region,
        bucket_url,
        prefix: if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_answers_are_read() {
        let xml = r#"<?xml version="1.0"?><ListMultipartUploadsResult><Bucket>b</Bucket>
            <IsTruncated>false</IsTruncated>
            <Upload><Key>r/volumes/a&amp;b/archives/1.tarc</Key><UploadId>X1</UploadId>
            <Initiated>2026-11-30T10:00:00.000Z</Initiated></Upload>
            <Upload><Key>r/volumes/c/archives/2.tarc</Key><UploadId>X2</UploadId>
            <Initiated>2026-11-30T11:00:00.000Z</Initiated></Upload></ListMultipartUploadsResult>"#;
        let ups = elements(xml, "Upload");
        assert_eq!(ups.len(), 2);
        assert_eq!(
            element(ups[0], "Key").as_deref(),
            Some("r/volumes/a&b/archives/1.tarc")
        );
        assert_eq!(element(ups[1], "UploadId").as_deref(), Some("X2"));
        assert_eq!(element(xml, "IsTruncated").as_deref(), Some("false"));
        assert_eq!(element(xml, "NextKeyMarker"), None);
        assert_eq!(excerpt(&"a ".repeat(300)).len(), 203);
    }
}
