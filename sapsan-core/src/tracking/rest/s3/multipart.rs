//! Uploading a file to S3 with flat memory: one PUT up to a part's size, else a multipart upload
//! whose parts are read from the file one at a time into one reused buffer.
//!
//! Exactly once: uploads of the same key left open by a process that died are aborted before a
//! new one starts; a failed upload is aborted; a `CompleteMultipartUpload` whose answer was lost
//! (`NoSuchUpload` when sent again) counts as done when the object has the file's size.
use std::fs::File;
use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use reqwest::Method;

use super::{S3Client, S3Object, xml};
use crate::error::{Error, Result};
use crate::tracking::rest::client::Idempotency;

impl S3Client {
    /// Uploads the file at `path` as `obj`: one PUT when it fits in a part, else a multipart
    /// upload holding one part in memory at a time.
    pub fn upload_file(&self, obj: &S3Object, path: &Path) -> Result<()> {
        let mut file = File::open(path).map_err(|e| Error::io("opening artifact", path, e))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io("reading the size of artifact", path, e))?
            .len();
        let part = self.part_size_for(size);
        if size <= part as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes)
                .map_err(|e| Error::io("reading artifact", path, e))?;
            return self.put_object(obj, &bytes);
        }
        self.abort_stale(obj)?;
        let id = self.create_upload(obj)?;
        let uploaded = self
            .upload_parts(obj, &id, &mut file, path, size, part)
            .and_then(|etags| self.complete(obj, &id, &etags, size));
        if let Err(e) = &uploaded {
            if let Err(a) = self.abort(obj, &id) {
                log::warn!(
                    target: "sapsan::s3",
                    "aborting the failed upload of s3://{}/{} failed too ({a}); the next upload \
                     of this key aborts it",
                    obj.bucket, obj.key
                );
            }
            log::debug!(target: "sapsan::s3", "multipart upload failed: {e}");
        }
        uploaded
    }

    fn op_error(&self, obj: &S3Object, operation: &str, reason: String) -> Error {
        Error::ObjectStore {
            operation: operation.to_owned(),
            bucket: obj.bucket.clone(),
            key: obj.key.clone(),
            status: None,
            reason,
        }
    }

    /// Reads an answer's body as text.
    fn text(
        &self,
        obj: &S3Object,
        operation: &str,
        resp: reqwest::blocking::Response,
    ) -> Result<String> {
        resp.text()
            .map_err(|e| self.op_error(obj, operation, format!("reading the answer failed: {e}")))
    }

    /// Aborts the open multipart uploads of exactly `obj.key` (left by a process that died).
    fn abort_stale(&self, obj: &S3Object) -> Result<()> {
        let op = "list multipart uploads";
        let resp = self.send(
            op,
            Method::GET,
            &obj.bucket,
            "",
            &[("uploads", ""), ("prefix", &obj.key)],
            Bytes::new(),
            Idempotency::Idempotent,
        )?;
        let body = self.text(obj, op, resp)?;
        for upload in xml::blocks(&body, "Upload") {
            if xml::first(upload, "Key").as_deref() != Some(obj.key.as_str()) {
                continue;
            }
            if let Some(id) = xml::first(upload, "UploadId") {
                log::info!(
                    target: "sapsan::s3",
                    "aborting an unfinished upload of s3://{}/{} left by an earlier attempt",
                    obj.bucket, obj.key
                );
                self.abort(obj, &id)?;
            }
        }
        Ok(())
    }

    fn create_upload(&self, obj: &S3Object) -> Result<String> {
        let op = "create multipart upload";
        // Not repeated once it reached the store: a second one would be left open.
        let resp = self.send(
            op,
            Method::POST,
            &obj.bucket,
            &obj.key,
            &[("uploads", "")],
            Bytes::new(),
            Idempotency::CreatesOnce,
        )?;
        let body = self.text(obj, op, resp)?;
        xml::first(&body, "UploadId")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                self.op_error(obj, op, format!("the answer has no UploadId: {body:.300}"))
            })
    }

    /// Sends the parts; their ETags in order.
    fn upload_parts(
        &self,
        obj: &S3Object,
        id: &str,
        file: &mut File,
        path: &Path,
        size: u64,
        part: usize,
    ) -> Result<Vec<String>> {
        let mut etags = Vec::new();
        let mut sent = 0u64;
        while sent < size {
            let n = part.min((size - sent) as usize);
            // A fresh buffer per part, handed to the HTTP client without a copy (retries share
            // it); freed when the part is sent, before the next one is read.
            let mut buf = vec![0u8; n];
            file.read_exact(&mut buf)
                .map_err(|e| Error::io("reading artifact", path, e))?;
            let number = (etags.len() + 1).to_string();
            let resp = self.send(
                "upload part",
                Method::PUT,
                &obj.bucket,
                &obj.key,
                &[("partNumber", &number), ("uploadId", id)],
                Bytes::from(buf),
                Idempotency::Idempotent,
            )?;
            let etag = resp
                .headers()
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| {
                    self.op_error(
                        obj,
                        "upload part",
                        format!("part {number}: the answer has no ETag"),
                    )
                })?;
            etags.push(etag);
            sent += n as u64;
        }
        Ok(etags)
    }

    fn complete(&self, obj: &S3Object, id: &str, etags: &[String], size: u64) -> Result<()> {
        let op = "complete multipart upload";
        let mut body = String::from("<CompleteMultipartUpload>");
        for (i, e) in etags.iter().enumerate() {
            body.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                i + 1,
                xml::escape(e)
            ));
        }
        body.push_str("</CompleteMultipartUpload>");
        let sent = self.send(
            op,
            Method::POST,
            &obj.bucket,
            &obj.key,
            &[("uploadId", id)],
            Bytes::from(body),
            Idempotency::Idempotent,
        );
        match sent {
            Ok(resp) => {
                // S3 may answer 200 and still fail, with an <Error> body.
                let answer = self.text(obj, op, resp)?;
                if answer.contains("<Error>") {
                    let code = xml::first(&answer, "Code").unwrap_or_default();
                    let message = xml::first(&answer, "Message").unwrap_or_default();
                    let status = if code == "InternalError" { 500 } else { 400 };
                    return Err(Error::ObjectStore {
                        operation: op.to_owned(),
                        bucket: obj.bucket.clone(),
                        key: obj.key.clone(),
                        status: Some(status),
                        reason: format!("{code}: {message}"),
                    });
                }
                Ok(())
            }
            // A retry after a completion whose answer was lost: done if the object is whole.
            Err(Error::ObjectStore {
                status: Some(404),
                reason,
                ..
            }) if reason.contains("NoSuchUpload") && self.head_size(obj)? == Some(size) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn abort(&self, obj: &S3Object, id: &str) -> Result<()> {
        match self.send(
            "abort multipart upload",
            Method::DELETE,
            &obj.bucket,
            &obj.key,
            &[("uploadId", id)],
            Bytes::new(),
            Idempotency::Idempotent,
        ) {
            Ok(_) => Ok(()),
            // Already gone (completed or aborted): nothing is left open.
            Err(Error::ObjectStore {
                status: Some(404), ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
