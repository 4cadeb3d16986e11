//! S3 artifact stores: a run whose artifact root is `s3://bucket/prefix` (an MLflow server started
//! with `--no-serve-artifacts --default-artifact-root s3://...`) has its artifacts written and read
//! here, directly, with the settings the Python client reads: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`, `MLFLOW_S3_ENDPOINT_URL`
//! (any S3-compatible store: path-style addressing) and `MLFLOW_S3_IGNORE_TLS`.
//!
//! Requests are signed with AWS Signature V4 ([`sign`]) and sent by the one HTTP client
//! ([`HttpClient`], a sibling of the tracking client: the same retry policy and deadlines).
//! Files larger than one part go up as a multipart upload read one part at a time
//! ([`S3Client::upload_file`]), so memory stays flat whatever the file's size.
use std::sync::OnceLock;

use bytes::Bytes;
use reqwest::Method;
use reqwest::blocking::Response;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::client::{HttpClient, Idempotency};
use super::encoding::encode_path;
use crate::error::{Error, Result};

mod config;
mod multipart;
pub mod sign;
mod xml;

use config::setting;
pub use config::{DEFAULT_PART_SIZE, MIN_PART_SIZE, S3Config};
pub use sign::Credentials;

/// What to do when the object store's TLS certificate is not trusted.
pub const TLS_HINT: &str = "the object store's TLS certificate is not trusted (for a test store \
only, MLFLOW_S3_IGNORE_TLS=true accepts it); not retried";

/// S3's most parts in one upload.
const MAX_PARTS: u64 = 10_000;

/// An artifact root in a bucket: `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Root {
    /// The bucket.
    pub bucket: String,
    /// Key prefix of the root, without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl S3Root {
    /// Reads `s3://bucket[/prefix]`; `None` for anything else.
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        (!bucket.is_empty()).then(|| S3Root {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        })
    }

    /// The key of `name` (a checked artifact name) under this root.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// The object of `name` under this root.
    pub fn object(&self, name: &str) -> S3Object {
        S3Object {
            bucket: self.bucket.clone(),
            key: self.key(name),
        }
    }
}

/// One object: bucket and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Object {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
}

/// Files and sub-directories right under a prefix ([`S3Client::list`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Objects: key and size in bytes.
    pub objects: Vec<(String, u64)>,
    /// Common prefixes (sub-directories), each ending with `/`.
    pub prefixes: Vec<String>,
}

/// An S3 client: signs each request and sends it with an [`HttpClient`].
#[derive(Debug)]
pub struct S3Client {
    http: HttpClient,
    config: S3Config,
}

impl S3Client {
    /// A client with `config`, sending with a sibling of `like` (same timeouts and retries).
    pub fn new(like: &HttpClient, config: S3Config) -> Result<Self> {
        let base = config
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", config.region));
        Ok(S3Client {
            http: like.sibling(&base, config.ignore_tls)?,
            config,
        })
    }

    /// HTTP requests sent so far.
    pub fn requests(&self) -> u64 {
        self.http.requests()
    }

    /// The settings in use.
    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// The URL of `key` in `bucket` (no query) and the host to sign.
    fn address(&self, bucket: &str, key: &str) -> Result<(String, String)> {
        let (origin, path) = match &self.config.endpoint {
            Some(e) => (
                e.clone(),
                format!("/{}/{}", encode_path(bucket), encode_path(key)),
            ),
            None => (
                format!("https://{bucket}.s3.{}.amazonaws.com", self.config.region),
                format!("/{}", encode_path(key)),
            ),
        };
        // A bucket listing is `/bucket` path-style, `/` virtual-hosted.
        let path = match path.strip_suffix('/') {
            Some(p) if key.is_empty() && !p.is_empty() => p.to_owned(),
            _ => path,
        };
        let url = format!("{origin}{path}");
        let parsed = reqwest::Url::parse(&url).map_err(|e| {
            setting(
                "MLFLOW_S3_ENDPOINT_URL",
                &origin,
                format!("cannot address s3://{bucket}/{key} there: {e}"),
            )
        })?;
        let host = match (parsed.host_str(), parsed.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => String::new(),
        };
        Ok((url, host))
    }

    /// Signs and sends one request for `key` in `bucket` (`key` empty: the bucket itself).
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        operation: &str,
        method: Method,
        bucket: &str,
        key: &str,
        query: &[(&str, &str)],
        body: Bytes,
        idem: Idempotency,
    ) -> Result<Response> {
        let creds = self.config.credentials.as_ref().ok_or_else(|| {
            setting(
                "AWS_ACCESS_KEY_ID",
                "<unset>",
                format!(
                    "s3://{bucket}/{key} needs credentials: set AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones)"
                ),
            )
        })?;
        let (url, host) = self.address(bucket, key)?;
        let canonical_uri = url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()))
            .unwrap_or_else(|| "/".to_owned());
        let canonical_query = sign::canonical_query(query);
        let url = if canonical_query.is_empty() {
            url
        } else {
            format!("{url}?{canonical_query}")
        };
        let payload = if body.is_empty() {
            sign::EMPTY_SHA256.to_owned()
        } else {
            sign::sha256_hex(&body)
        };
        // Signed headers for the time of signing: built once to check them, then again for
        // every attempt, so a retry after a long backoff carries a fresh date.
        let signed_headers = |date: &str| -> Result<HeaderMap> {
            let mut signed: Vec<(&str, &str)> = vec![
                ("host", &host),
                ("x-amz-content-sha256", &payload),
                ("x-amz-date", date),
            ];
            if let Some(t) = &creds.session_token {
                signed.push(("x-amz-security-token", t));
            }
            let req = sign::Request {
                method: method.as_str(),
                canonical_uri: &canonical_uri,
                canonical_query: &canonical_query,
                headers: &signed,
                payload_hash: &payload,
            };
            let authorization = sign::authorization(creds, &req, &self.config.region, date);
            let mut headers = HeaderMap::new();
            for (name, value) in signed
                .iter()
                .filter(|(n, _)| *n != "host")
                .copied()
                .chain([("authorization", authorization.as_str())])
            {
                let mut v = HeaderValue::from_str(value).map_err(|_| {
                    setting(
                        "AWS_ACCESS_KEY_ID / AWS_SESSION_TOKEN",
                        "<redacted>",
                        "the credentials hold characters not allowed in an HTTP header",
                    )
                })?;
                if matches!(name, "authorization" | "x-amz-security-token") {
                    v.set_sensitive(true);
                }
                headers.insert(HeaderName::from_static(name), v);
            }
            Ok(headers)
        };
        let now = || sign::amz_date(crate::tracking::now_ms());
        let first = signed_headers(&now())?;
        let per_attempt = || signed_headers(&now()).unwrap_or_else(|_| first.clone());
        let on_error =
            |status: u16, text: &str| self.answer_error(operation, bucket, key, status, text);
        self.http
            .send_raw(method.clone(), &url, &per_attempt, body, idem, &on_error)
            .map_err(|e| self.unreachable(operation, bucket, key, e))
    }

    /// The error for an answer with `status` and `body` (S3's `<Error><Code>..<Message>..`).
    fn answer_error(
        &self,
        operation: &str,
        bucket: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Error {
        let code = xml::first(body, "Code").unwrap_or_default();
        let message = xml::first(body, "Message").unwrap_or_default();
        let hint = match (status, code.as_str()) {
            (_, "NoSuchBucket") => format!(
                "the bucket {bucket:?} does not exist: create it, or start the MLflow server with \
                 --default-artifact-root naming an existing bucket"
            ),
            (
                _,
                "AuthorizationHeaderMalformed"
                | "PermanentRedirect"
                | "IllegalLocationConstraintException",
            )
            | (301, _) => format!(
                "the bucket is in another region than {:?}: set AWS_DEFAULT_REGION to the \
                 bucket's region",
                self.config.region
            ),
            (
                _,
                "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken"
                | "TokenRefreshRequired",
            ) => "the store refused the credentials: check AWS_ACCESS_KEY_ID, \
                  AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN"
                .to_owned(),
            (401 | 403, _) => "access denied: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY \
                              and AWS_SESSION_TOKEN, and the bucket's permissions for this key"
                .to_owned(),
            (_, "NoSuchKey") | (404, "") => "no such object".to_owned(),
            _ => String::new(),
        };
        let said = match (code.is_empty(), message.is_empty()) {
            (true, _) => String::new(),
            (false, true) => format!(" {code}"),
            (false, false) => format!(" {code}: {message}"),
        };
        Error::ObjectStore {
            operation: operation.to_owned(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            status: Some(status),
            reason: if hint.is_empty() {
                format!("HTTP {status}{said}")
            } else {
                format!("HTTP {status}{said} ({hint})")
            },
        }
    }

    /// A transport failure, said in the store's terms.
    fn unreachable(&self, operation: &str, bucket: &str, key: &str, e: Error) -> Error {
        match e {
            Error::Connection { reason, .. } => {
                let reason = match reason.split_once(super::client::TLS_HINT) {
                    Some((before, _)) => format!("{before}{TLS_HINT}"),
                    None => {
                        let at = match &self.config.endpoint {
                            Some(e) => format!("MLFLOW_S3_ENDPOINT_URL={e}"),
                            None => format!(
                                "AWS S3 in {} (MLFLOW_S3_ENDPOINT_URL is unset)",
                                self.config.region
                            ),
                        };
                        format!("cannot reach the store: {reason}; check {at}")
                    }
                };
                Error::ObjectStore {
                    operation: operation.to_owned(),
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                    status: None,
                    reason,
                }
            }
            other => other,
        }
    }

    /// PUT `bytes` as `obj` in one request.
    pub fn put_object(&self, obj: &S3Object, bytes: &[u8]) -> Result<()> {
        self.send(
            "PUT",
            Method::PUT,
            &obj.bucket,
            &obj.key,
            &[],
            Bytes::copy_from_slice(bytes),
            Idempotency::Idempotent,
        )?;
        Ok(())
    }

    /// The bytes of `obj`.
    pub fn get_object(&self, obj: &S3Object) -> Result<Vec<u8>> {
        let resp = self.send(
            "GET",
            Method::GET,
            &obj.bucket,
            &obj.key,
            &[],
            Bytes::new(),
            Idempotency::Idempotent,
        )?;
        resp.bytes()
            .map(|b| b.to_vec())
            .map_err(|e| Error::ObjectStore {
                operation: "GET".into(),
                bucket: obj.bucket.clone(),
                key: obj.key.clone(),
                status: None,
                reason: format!("reading the answer failed: {e}"),
            })
    }

    /// The size of `obj`, `None` when there is no such object.
    pub fn head_size(&self, obj: &S3Object) -> Result<Option<u64>> {
        match self.send(
            "HEAD",
            Method::HEAD,
            &obj.bucket,
            &obj.key,
            &[],
            Bytes::new(),
            Idempotency::Idempotent,
        ) {
            Ok(resp) => Ok(resp
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            Err(Error::ObjectStore {
                status: Some(404), ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The objects and sub-directories right under `prefix` in `bucket` (ListObjectsV2 with
    /// delimiter `/`, every page).
    pub fn list(&self, bucket: &str, prefix: &str) -> Result<Listing> {
        let mut out = Listing::default();
        let mut token = String::new();
        loop {
            let mut q = vec![("list-type", "2"), ("prefix", prefix), ("delimiter", "/")];
            if !token.is_empty() {
                q.push(("continuation-token", &token));
            }
            let resp = self.send(
                "list",
                Method::GET,
                bucket,
                "",
                &q,
                Bytes::new(),
                Idempotency::Idempotent,
            )?;
            let body = resp.text().map_err(|e| Error::ObjectStore {
                operation: "list".into(),
                bucket: bucket.to_owned(),
                key: prefix.to_owned(),
                status: None,
                reason: format!("reading the answer failed: {e}"),
            })?;
            for c in xml::blocks(&body, "Contents") {
                if let Some(k) = xml::first(c, "Key") {
                    let size = xml::first(c, "Size")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    out.objects.push((k, size));
                }
            }
            for p in xml::blocks(&body, "CommonPrefixes") {
                out.prefixes.extend(xml::first(p, "Prefix"));
            }
            match xml::first(&body, "NextContinuationToken") {
                Some(t) if xml::first(&body, "IsTruncated").as_deref() == Some("true") => token = t,
                _ => return Ok(out),
            }
        }
    }

    /// The part size for a file of `size` bytes: the configured one, larger when S3's 10,000
    /// parts would not hold the file.
    fn part_size_for(&self, size: u64) -> usize {
        let needed = size.div_ceil(MAX_PARTS) as usize;
        self.config.part_size.max(needed)
    }
}

/// An [`S3Client`] built from the environment on first use (most runs never need one).
#[derive(Debug, Default)]
pub struct S3Slot(OnceLock<S3Client>);

impl S3Slot {
    /// The client, built with [`S3Config::from_env`] and a sibling of `like` the first time.
    pub fn get(&self, like: &HttpClient) -> Result<&S3Client> {
        if let Some(c) = self.0.get() {
            return Ok(c);
        }
        let c = S3Client::new(like, S3Config::from_env()?)?;
        Ok(self.0.get_or_init(|| c))
    }

    /// A slot holding `client` (tests, benchmarks).
    pub fn with(client: S3Client) -> Self {
        let s = S3Slot::default();
        let _ = s.0.set(client);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::rest::Settings;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<S3Config> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        S3Config::from_lookup(|k| m.get(k).cloned())
    }

    fn client(pairs: &[(&str, &str)]) -> S3Client {
        let like = HttpClient::new("http://127.0.0.1:1", &Settings::default()).unwrap();
        S3Client::new(&like, config(pairs).unwrap()).unwrap()
    }

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const TOKEN: &str = "FwoGZXIvYXdzEXAMPLETOKEN";

    #[test]
    fn roots_and_keys() {
        let r = S3Root::parse("s3://bkt/mlruns/1/abc/artifacts/").unwrap();
        assert_eq!(r.bucket, "bkt");
        assert_eq!(r.prefix, "mlruns/1/abc/artifacts");
        assert_eq!(
            r.key("plots/a b.png"),
            "mlruns/1/abc/artifacts/plots/a b.png"
        );
        assert_eq!(S3Root::parse("s3://bkt").unwrap().key("x"), "x");
        assert_eq!(S3Root::parse("s3:///x"), None);
        assert_eq!(S3Root::parse("gs://bkt/x"), None);
    }

    #[test]
    fn path_style_with_an_endpoint_virtual_hosted_without() {
        let c = client(&[("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9000")]);
        assert_eq!(
            c.address("bkt", "a/b c.txt").unwrap(),
            (
                "http://127.0.0.1:9000/bkt/a/b%20c.txt".into(),
                "127.0.0.1:9000".into()
            )
        );
        assert_eq!(c.address("bkt", "").unwrap().0, "http://127.0.0.1:9000/bkt");
        let aws = client(&[("AWS_DEFAULT_REGION", "eu-west-3")]);
        assert_eq!(
            aws.address("bkt", "k").unwrap(),
            (
                "https://bkt.s3.eu-west-3.amazonaws.com/k".into(),
                "bkt.s3.eu-west-3.amazonaws.com".into()
            )
        );
        assert_eq!(
            aws.address("bkt", "").unwrap().0,
            "https://bkt.s3.eu-west-3.amazonaws.com/"
        );
    }

    #[test]
    fn errors_name_bucket_key_and_setting_never_a_secret() {
        let c = client(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_SESSION_TOKEN", TOKEN),
        ]);
        // S3 echoes the canonical request (with the token) in SignatureDoesNotMatch answers.
        let body = format!(
            "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The \
             request signature we calculated does not match</Message><AWSAccessKeyId>AKID\
             </AWSAccessKeyId><CanonicalRequest>x-amz-security-token:{TOKEN}</CanonicalRequest>\
             </Error>"
        );
        let e = c.answer_error("PUT", "bkt", "1/r/artifacts/model.pt", 403, &body);
        let msg = e.to_string();
        assert!(msg.contains("s3://bkt/1/r/artifacts/model.pt"), "{msg}");
        assert!(msg.contains("AWS_SECRET_ACCESS_KEY"), "{msg}");
        assert!(!msg.contains(TOKEN) && !msg.contains(SECRET), "{msg}");
        let e = c.answer_error(
            "PUT",
            "nobkt",
            "k",
            404,
            "<Error><Code>NoSuchBucket</Code></Error>",
        );
        assert!(e.to_string().contains("--default-artifact-root"), "{e}");
        let e = c.answer_error(
            "GET",
            "b",
            "k",
            400,
            "<Error><Code>AuthorizationHeaderMalformed</Code></Error>",
        );
        assert!(e.to_string().contains("AWS_DEFAULT_REGION"), "{e}");
        // Nothing listens on port 1: the endpoint setting is named.
        let c = client(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:1"),
        ]);
        let c = S3Client {
            http: HttpClient::new(
                "http://127.0.0.1:1",
                &Settings {
                    max_retries: 0,
                    ..Settings::default()
                },
            )
            .unwrap(),
            config: c.config,
        };
        let e = c
            .put_object(&S3Root::parse("s3://bkt/p").unwrap().object("x.txt"), b"hi")
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("s3://bkt/p/x.txt"), "{msg}");
        assert!(
            msg.contains("MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:1"),
            "{msg}"
        );
        assert!(matches!(e, Error::ObjectStore { status: None, .. }));
        assert!(!msg.contains(SECRET), "{msg}");
        // No credentials: the setting is named, with the object.
        let e = client(&[]).get_object(&S3Object {
            bucket: "bkt".into(),
            key: "k".into(),
        });
        match e {
            Err(e @ Error::Setting { .. }) => {
                let m = e.to_string();
                assert!(
                    m.contains("AWS_ACCESS_KEY_ID") && m.contains("s3://bkt/k"),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// A retry is signed again: a loopback store that answers 503 and then 200 sees two
    /// different `x-amz-date`s (a second apart) and two different signatures.
    #[test]
    fn every_attempt_is_signed_with_its_own_time() {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for status in [503, 200] {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let mut dates = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if lower.starts_with("x-amz-date:") || lower.starts_with("authorization:") {
                        dates.push(line.trim().to_owned());
                    }
                }
                log.lock().unwrap().push(dates);
                let answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = reader.get_mut().write_all(answer.as_bytes());
            }
        });
        let endpoint = format!("http://{addr}");
        let like = HttpClient::new(
            &endpoint,
            &Settings {
                max_retries: 1,
                backoff_base: std::time::Duration::from_millis(1100),
                ..Settings::default()
            },
        )
        .unwrap();
        let c = S3Client::new(
            &like,
            config(&[
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", SECRET),
                ("MLFLOW_S3_ENDPOINT_URL", &endpoint),
            ])
            .unwrap(),
        )
        .unwrap();
        c.get_object(&S3Root::parse("s3://bkt/p").unwrap().object("x"))
            .unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].len(), 2, "{seen:?}");
        assert_ne!(
            seen[0], seen[1],
            "the retry reused the first signature: {seen:?}"
        );
    }

    #[test]
    fn parts_grow_past_ten_thousand() {
        let c = client(&[]);
        assert_eq!(c.part_size_for(1 << 30), DEFAULT_PART_SIZE);
        let huge = 200u64 << 30;
        assert!(c.part_size_for(huge) as u64 * MAX_PARTS >= huge);
    }
}
