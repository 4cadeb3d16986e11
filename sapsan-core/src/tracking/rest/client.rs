//! The HTTP transport to an MLflow server: one reqwest blocking client built once, authentication,
//! retries with capped exponential backoff, a request counter, and the mapping of every error
//! answer (JSON or not) to [`Error::Mlflow`].
//!
//! The blocking client runs its own small runtime: create and drop it outside any async runtime.
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::{Method, StatusCode, header};
use serde_json::Value;

use super::settings::{Auth, Settings};
use crate::error::{Error, Result};

/// Whether a request may be sent again after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Safe to repeat (reads, log-batch: the server de-duplicates metrics, same params are fine).
    Idempotent,
    /// Repeat only when the request provably never reached the server (connect errors): `runs/create`.
    CreatesOnce,
}

thread_local! {
    /// The per-attempt deadline of the requests this thread sends inside [`with_attempt_timeout`]
    /// (`None`: the client's own).
    static ATTEMPT_TIMEOUT: Cell<Option<Duration>> = const { Cell::new(None) };
}

/// Runs `f` with every request this thread sends in it given `timeout` per attempt instead of
/// the client's own (still a deadline, from connecting to the last byte of the answer).
///
/// For retries of a request that timed out: the server was slower than the timeout, so the same
/// deadline again can fail forever. The uploader lengthens it per failed attempt (see
/// `upload::uploader`).
pub fn with_attempt_timeout<R>(timeout: Duration, f: impl FnOnce() -> R) -> R {
    /// Puts the previous value back, also when `f` panics.
    struct Restore(Option<Duration>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ATTEMPT_TIMEOUT.with(|t| t.set(self.0));
        }
    }
    let _restore = Restore(ATTEMPT_TIMEOUT.with(|t| t.replace(Some(timeout))));
    f()
}

/// The per-attempt deadline [`with_attempt_timeout`] sets on this thread, if any.
#[cfg(test)]
pub(crate) fn attempt_timeout_in_force() -> Option<Duration> {
    ATTEMPT_TIMEOUT.with(Cell::get)
}

/// The HTTP transport. Cheap to share by reference across threads.
pub struct HttpClient {
    client: Client,
    base: String,
    auth: Option<header::HeaderValue>,
    /// Deadline of one attempt, from connecting to the last byte of the answer.
    timeout: Duration,
    max_retries: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    requests: AtomicU64,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("base", &self.base)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("max_retries", &self.max_retries)
            .field("requests", &self.requests.load(Ordering::Relaxed))
            .finish()
    }
}

/// Longest piece of a non-JSON error body kept in an error message.
const MAX_BODY_IN_ERROR: usize = 300;

/// Makes rustls' `ring` provider the process default unless the program installed one already
/// (then that one is used): reqwest is built without a provider of its own, so that a fresh build
/// does not compile aws-lc's C library.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race; either way a provider is installed afterwards.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl HttpClient {
    /// Builds the client for `base` (the tracking URI, without credentials).
    pub fn new(base: &str, settings: &Settings) -> Result<Self> {
        // Every request on a fresh connection: the server (uvicorn) leaves Nagle on, so a reused
        // connection waits ~40 ms for the delayed ACK of each response; a new loopback connection
        // costs ~0.1-1.5 ms. Measured in `tests/tracking_perf.rs`'s report and BENCHMARKS.md.
        install_crypto_provider();
        let mut b = Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(if settings.keep_alive { usize::MAX } else { 0 })
            .tcp_nodelay(true)
            .no_proxy()
            .user_agent(concat!("sapsan-rs/", env!("CARGO_PKG_VERSION")));
        if settings.insecure_tls {
            b = b.tls_danger_accept_invalid_certs(true);
        }
        if let Some(path) = &settings.server_cert_path {
            let pem = std::fs::read(path)
                .map_err(|e| Error::io("reading MLFLOW_TRACKING_SERVER_CERT_PATH", path, e))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::Setting {
                    name: "MLFLOW_TRACKING_SERVER_CERT_PATH".into(),
                    value: path.display().to_string(),
                    reason: format!("not a PEM certificate bundle: {e}"),
                })?;
            if certs.is_empty() {
                return Err(Error::Setting {
                    name: "MLFLOW_TRACKING_SERVER_CERT_PATH".into(),
                    value: path.display().to_string(),
                    reason: "the file holds no PEM certificate (-----BEGIN CERTIFICATE-----); \
                             point it at the CA bundle that signed the server's certificate"
                        .into(),
                });
            }
            b = b.tls_certs_merge(certs);
        }
        let client = b.build().map_err(|e| Error::Setting {
            name: "tracking_uri".into(),
            value: base.to_owned(),
            reason: format!("cannot build the HTTP client: {e}"),
        })?;
        Ok(HttpClient {
            client,
            base: base.trim_end_matches('/').to_owned(),
            auth: auth_header(&settings.auth)?,
            timeout: settings.timeout,
            max_retries: settings.max_retries,
            backoff_base: settings.backoff_base,
            backoff_max: settings.backoff_max,
            requests: AtomicU64::new(0),
        })
    }

    /// The tracking URI this client talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// HTTP requests sent so far (every attempt counts, retries included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// `{base}/api/2.0/mlflow/{path}`.
    pub fn api_url(&self, path: &str) -> String {
        format!("{}/api/2.0/mlflow/{path}", self.base)
    }

    /// GET `api/2.0/mlflow/{path}` with query parameters; the JSON answer.
    pub fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let url = self.api_url(path);
        let resp = self.send(Method::GET, &url, Idempotency::Idempotent, |c| {
            c.get(&url).query(query)
        })?;
        read_json(resp, "GET", &url)
    }

    /// POST JSON `body` to `api/2.0/mlflow/{path}`; the JSON answer.
    pub fn post<T: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
        idem: Idempotency,
    ) -> Result<Value> {
        self.send_json(Method::POST, path, body, idem)
    }

    /// PATCH JSON `body` to `api/2.0/mlflow/{path}` (MLflow 3's logged models); the JSON answer.
    pub fn patch<T: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
        idem: Idempotency,
    ) -> Result<Value> {
        self.send_json(Method::PATCH, path, body, idem)
    }

    /// Sends JSON `body` to `api/2.0/mlflow/{path}` with `method`; the JSON answer.
    fn send_json<T: serde::Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: &T,
        idem: Idempotency,
    ) -> Result<Value> {
        let url = self.api_url(path);
        let bytes = serde_json::to_vec(body).map_err(|e| Error::Internal {
            what: format!("encoding the body of {method} {url}"),
            reason: e.to_string(),
        })?;
        let resp = self.send(method.clone(), &url, idem, |c| {
            c.request(method.clone(), &url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(bytes.clone())
        })?;
        read_json(resp, method.as_str(), &url)
    }

    /// PUT raw bytes to a full URL (artifact upload).
    pub fn put_bytes(&self, url: &str, bytes: &[u8]) -> Result<()> {
        let body = bytes.to_vec();
        self.send(Method::PUT, url, Idempotency::Idempotent, |c| {
            c.put(url)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(body.clone())
        })?;
        Ok(())
    }

    /// GET a full URL with query parameters; the raw bytes.
    pub fn get_bytes(&self, url: &str, query: &[(&str, &str)]) -> Result<Vec<u8>> {
        let resp = self.send(Method::GET, url, Idempotency::Idempotent, |c| {
            c.get(url).query(query)
        })?;
        resp.bytes()
            .map(|b| b.to_vec())
            .map_err(|e| Error::Connection {
                url: url.to_owned(),
                reason: format!("reading the answer failed: {e}"),
            })
    }

    /// GET a full URL; the JSON answer.
    pub fn get_json_url(&self, url: &str, query: &[(&str, &str)]) -> Result<Value> {
        let resp = self.send(Method::GET, url, Idempotency::Idempotent, |c| {
            c.get(url).query(query)
        })?;
        read_json(resp, "GET", url)
    }

    /// GET a full URL outside the REST API (`/health`, `/version`) within `timeout`: the status and
    /// the body as text, whatever the status (non-2xx answers are not errors). Sent once, never
    /// retried; a transport failure is [`Error::Connection`] whose reason starts like every other
    /// (`connection failed (...)`, `timed out (...)`, `request failed (...)`).
    pub fn get_text(&self, url: &str, timeout: Duration) -> Result<(u16, String)> {
        let mut req = self.client.get(url).timeout(timeout);
        if let Some(a) = &self.auth {
            req = req.header(header::AUTHORIZATION, a.clone());
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let fail = |reason| Error::Connection {
            url: url.to_owned(),
            reason,
        };
        let resp = req.send().map_err(|e| fail(describe_reqwest(e)))?;
        let status = resp.status().as_u16();
        let body = resp.text().map_err(|e| {
            fail(format!(
                "HTTP {status}, then reading the body failed: {}",
                describe_reqwest(e)
            ))
        })?;
        Ok((status, body))
    }

    /// A client for another host (an S3 endpoint) with this one's timeout, retries and backoff,
    /// connections kept alive, no MLflow credentials; `insecure_tls` accepts any certificate.
    pub(crate) fn sibling(&self, base: &str, insecure_tls: bool) -> Result<HttpClient> {
        let settings = Settings {
            timeout: self.timeout,
            max_retries: self.max_retries,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max,
            keep_alive: true,
            insecure_tls,
            ..Settings::default()
        };
        HttpClient::new(base, &settings)
    }

    /// Sends `method url` with the headers `headers()` makes for each attempt (a signature with
    /// the attempt's time) and `body` under the one retry policy (as [`Idempotency`] allows): the
    /// successful response, or the error answer as `on_error(status, body)`, or
    /// [`Error::Connection`] once retries are exhausted.
    pub(crate) fn send_raw(
        &self,
        method: Method,
        url: &str,
        headers: &dyn Fn() -> header::HeaderMap,
        body: bytes::Bytes,
        idem: Idempotency,
        on_error: &dyn Fn(u16, &str) -> Error,
    ) -> Result<Response> {
        let map = |resp: Response| {
            let status = resp.status().as_u16();
            on_error(status, &resp.text().unwrap_or_default())
        };
        self.send_mapped(
            url,
            idem,
            |c| {
                c.request(method.clone(), url)
                    .headers(headers())
                    .body(body.clone())
            },
            &map,
        )
    }

    /// Sends a request built by `make`, retrying connection errors, 429 and 5xx (never other 4xx)
    /// with capped exponential backoff. Returns the successful response, or the error answer
    /// mapped to [`Error::Mlflow`], or [`Error::Connection`] once retries are exhausted.
    fn send(
        &self,
        method: Method,
        url: &str,
        idem: Idempotency,
        make: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response> {
        let map = |resp: Response| error_from_response(method.as_str(), url, resp);
        self.send_mapped(url, idem, make, &map)
    }

    /// [`HttpClient::send`] with the error answer mapped by `on_error`.
    fn send_mapped(
        &self,
        url: &str,
        idem: Idempotency,
        make: impl Fn(&Client) -> RequestBuilder,
        on_error: &dyn Fn(Response) -> Error,
    ) -> Result<Response> {
        let mut attempt = 0u32;
        loop {
            // One deadline for the whole attempt, connect to last body byte. The client-wide
            // timeout of reqwest's blocking client only bounds each blocking call on its own (the
            // wait for the headers, then again every body read) and arms no timer where the
            // connection lives; a per-request timeout does both.
            let timeout = ATTEMPT_TIMEOUT.with(Cell::get).unwrap_or(self.timeout);
            let mut req = make(&self.client).timeout(timeout);
            if let Some(a) = &self.auth {
                req = req.header(header::AUTHORIZATION, a.clone());
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let retryable = match req.send() {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        return Ok(resp);
                    }
                    let retry = idem == Idempotency::Idempotent
                        && (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error());
                    let err = on_error(resp);
                    if !retry || attempt >= self.max_retries {
                        return Err(err);
                    }
                    err
                }
                Err(e) => {
                    let reason = describe_reqwest(e);
                    // An untrusted certificate stays untrusted: say what to do, once.
                    if is_certificate_error(&reason) {
                        return Err(Error::Connection {
                            url: url.to_owned(),
                            reason: format!("{reason}; {TLS_HINT}"),
                        });
                    }
                    // A connect error never reached the server: even `runs/create` may go again.
                    let retry =
                        reason.starts_with("connection failed") || idem == Idempotency::Idempotent;
                    let err = Error::Connection {
                        url: url.to_owned(),
                        reason,
                    };
                    if !retry || attempt >= self.max_retries {
                        return Err(match err {
                            Error::Connection { url, reason } if attempt > 0 => Error::Connection {
                                url,
                                reason: format!("{reason} (after {} attempts)", attempt + 1),
                            },
                            other => other,
                        });
                    }
                    err
                }
            };
            drop(retryable);
            std::thread::sleep(self.backoff(attempt));
            attempt += 1;
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.backoff_base
            .checked_mul(factor)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }
}

fn auth_header(auth: &Auth) -> Result<Option<header::HeaderValue>> {
    use base64_lite::encode;
    let raw = match auth {
        Auth::None => return Ok(None),
        Auth::Basic { username, password } => {
            format!(
                "Basic {}",
                encode(format!("{username}:{password}").as_bytes())
            )
        }
        Auth::Bearer(token) => format!("Bearer {token}"),
    };
    let mut v = header::HeaderValue::from_str(&raw).map_err(|_| Error::Setting {
        name: "MLFLOW_TRACKING_TOKEN / MLFLOW_TRACKING_USERNAME".into(),
        value: "<redacted>".into(),
        reason: "credentials contain characters not allowed in an HTTP header".into(),
    })?;
    v.set_sensitive(true);
    Ok(Some(v))
}

/// Standard base64 (RFC 4648) for the Basic authentication header.
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(input: &[u8]) -> String {
        let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// What to do when the server's TLS certificate is not trusted.
pub const TLS_HINT: &str = "the server's TLS certificate is not trusted: set \
MLFLOW_TRACKING_SERVER_CERT_PATH to the PEM file of the CA that signed it (or, for a test server \
only, MLFLOW_TRACKING_INSECURE_TLS=true); not retried";

/// Whether a described transport error is a TLS certificate rejection (rustls words it
/// "invalid peer certificate: ...").
fn is_certificate_error(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("invalid peer certificate") || r.contains("certificate verify failed")
}

fn describe_reqwest(e: reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    // The URL is reported separately.
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    format!("{kind} ({msg})")
}

fn read_json(resp: Response, method: &str, url: &str) -> Result<Value> {
    let bytes = resp.bytes().map_err(|e| Error::Connection {
        url: url.to_owned(),
        reason: format!("reading the answer failed: {e}"),
    })?;
    if bytes.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(&bytes).map_err(|e| Error::Mlflow {
        method: method.to_owned(),
        url: url.to_owned(),
        status: 200,
        error_code: "BAD_RESPONSE".into(),
        message: format!(
            "the answer is not JSON ({e}): {}",
            snippet(&String::from_utf8_lossy(&bytes))
        ),
    })
}

fn error_from_response(method: &str, url: &str, resp: Response) -> Error {
    let status = resp.status().as_u16();
    let body = resp.text().unwrap_or_default();
    with_auth_hint(map_error(method, url, status, &body))
}

/// What to check after a 401/403, appended to the server's message.
pub const AUTH_HINT: &str = "(the server refused the credentials: check MLFLOW_TRACKING_USERNAME and \
MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN, and the user's permissions; not retried)";

/// Adds [`AUTH_HINT`] to the message of a 401 or 403 answer.
fn with_auth_hint(e: Error) -> Error {
    match e {
        Error::Mlflow {
            method,
            url,
            status: status @ (401 | 403),
            error_code,
            message,
        } => Error::Mlflow {
            method,
            url,
            status,
            error_code,
            message: format!("{message} {AUTH_HINT}"),
        },
        other => other,
    }
}

/// Maps an error answer to [`Error::Mlflow`]: MLflow's JSON `{error_code, message}`, or for any other
/// body (plain-text 401/403, HTML 404, plain 503) `HTTP_ERROR` with the start of the text.
pub fn map_error(method: &str, url: &str, status: u16, body: &str) -> Error {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (error_code, message) = match (field("error_code"), field("message")) {
        (Some(c), m) => (c, m.unwrap_or_default()),
        (None, Some(m)) => ("HTTP_ERROR".to_owned(), m),
        (None, None) => {
            let reason = StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("error");
            let text = snippet(body);
            let message = if text.is_empty() {
                reason.to_owned()
            } else {
                format!("{reason}: {text}")
            };
            ("HTTP_ERROR".to_owned(), message)
        }
    };
    Error::Mlflow {
        method: method.to_owned(),
        url: url.to_owned(),
        status,
        error_code,
        message,
    }
}

/// The start of a text body, tags removed and whitespace collapsed (HTML error pages).
fn snippet(body: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    let mut last_space = true;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                if !last_space {
                    out.push(' ');
                    last_space = true;
                }
            }
            _ if in_tag => {}
            c if c.is_whitespace() => {
                if !last_space {
                    out.push(' ');
                    last_space = true;
                }
            }
            c => {
                out.push(c);
                last_space = false;
            }
        }
        if out.len() >= MAX_BODY_IN_ERROR {
            out.push_str("...");
            break;
        }
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(e: Error) -> (u16, String, String) {
        match e {
            Error::Mlflow {
                status,
                error_code,
                message,
                ..
            } => (status, error_code, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_error_bodies_keep_code_and_message() {
        let body = r#"{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run with id=abc not found", "sqlstate": "KAM00"}"#;
        let e = map_error("GET", "http://h/api/2.0/mlflow/runs/get", 404, body);
        let msg = e.to_string();
        assert!(msg.contains("GET http://h/api/2.0/mlflow/runs/get") && msg.contains("HTTP 404"));
        let (s, c, m) = parts(e);
        assert_eq!(
            (s, c.as_str(), m.as_str()),
            (404, "RESOURCE_DOES_NOT_EXIST", "Run with id=abc not found")
        );
    }

    #[test]
    fn plain_text_and_html_bodies_become_http_error() {
        let (s, c, m) = parts(map_error("POST", "u", 403, "Invalid Host header"));
        assert_eq!((s, c.as_str()), (403, "HTTP_ERROR"));
        assert_eq!(m, "Forbidden: Invalid Host header");
        let (_, c, m) = parts(map_error(
            "GET",
            "u",
            401,
            "You are not authenticated. Please see https://x/auth",
        ));
        assert_eq!(c, "HTTP_ERROR");
        assert!(m.starts_with("Unauthorized: You are not authenticated"));
        let html = "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n<p>The requested URL was not found on the server.</p>\n";
        let (s, c, m) = parts(map_error("GET", "u", 404, html));
        assert_eq!((s, c.as_str()), (404, "HTTP_ERROR"));
        assert_eq!(
            m,
            "Not Found: 404 Not Found Not Found The requested URL was not found on the server."
        );
        let (s, c, m) = parts(map_error("POST", "u", 503, ""));
        assert_eq!(
            (s, c.as_str(), m.as_str()),
            (503, "HTTP_ERROR", "Service Unavailable")
        );
        let (_, _, m) = parts(map_error("POST", "u", 502, &"x".repeat(10_000)));
        assert!(m.len() < 400, "long bodies are cut: {}", m.len());
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("user:pass", "dXNlcjpwYXNz"),
        ] {
            assert_eq!(base64_lite::encode(i.as_bytes()), o);
        }
    }

    #[test]
    fn debug_hides_credentials() {
        let s = Settings {
            auth: Auth::Bearer("TOPSECRET".into()),
            ..Settings::default()
        };
        let c = HttpClient::new("http://127.0.0.1:1", &s).unwrap();
        assert!(!format!("{c:?}").contains("TOPSECRET"));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = Settings::default();
        let c = HttpClient::new("http://127.0.0.1:1", &s).unwrap();
        assert_eq!(c.backoff(0), Duration::from_millis(50));
        assert_eq!(c.backoff(1), Duration::from_millis(100));
        assert_eq!(c.backoff(3), Duration::from_millis(400));
        assert_eq!(c.backoff(10), Duration::from_secs(2));
        assert_eq!(c.backoff(40), Duration::from_secs(2));
    }

    #[test]
    fn connection_errors_are_retried_then_reported() {
        // Port 1 on loopback refuses connections.
        let s = Settings {
            max_retries: 2,
            backoff_base: Duration::from_millis(1),
            ..Settings::default()
        };
        let c = HttpClient::new("http://127.0.0.1:1", &s).unwrap();
        let e = c.get("experiments/get-by-name", &[("experiment_name", "x")]);
        match e {
            Err(Error::Connection { url, reason }) => {
                assert_eq!(
                    url,
                    "http://127.0.0.1:1/api/2.0/mlflow/experiments/get-by-name"
                );
                assert!(reason.contains("after 3 attempts"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.requests(), 3);
    }

    /// A loopback HTTP server answering each connection with the next scripted status.
    fn scripted_server(statuses: &'static [u16]) -> String {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for &status in statuses {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                let text = if status == 200 { "{}" } else { "busy" };
                let answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = reader.get_mut().write_all(answer.as_bytes());
            }
        });
        format!("http://{addr}")
    }

    /// A loopback server that accepts connections, reads nothing and never answers.
    fn silent_server() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept() {
                held.push(stream);
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn a_server_that_accepts_and_never_answers_times_out() {
        let s = Settings {
            timeout: Duration::from_millis(500),
            max_retries: 0,
            ..Settings::default()
        };
        let c = HttpClient::new(&silent_server(), &s).unwrap();
        let t = std::time::Instant::now();
        let e = c.post(
            "runs/log-batch",
            &serde_json::json!({}),
            Idempotency::Idempotent,
        );
        let took = t.elapsed();
        match e {
            Err(Error::Connection { reason, .. }) => {
                assert!(reason.contains("timed out"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(took < Duration::from_millis(1500), "took {took:?}");
    }

    #[test]
    fn the_timeout_covers_the_whole_request_body_included() {
        use std::io::{BufRead, BufReader, Write};
        // Headers after 700 ms, then a body that trickles in one byte per 100 ms.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let mut stream = reader.into_inner();
            std::thread::sleep(Duration::from_millis(700));
            let head =
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
            let _ = stream.write_all(head.as_bytes());
            for _ in 0..1000 {
                std::thread::sleep(Duration::from_millis(100));
                if stream.write_all(b" ").is_err() {
                    return;
                }
            }
        });
        let s = Settings {
            timeout: Duration::from_secs(1),
            max_retries: 0,
            ..Settings::default()
        };
        let c = HttpClient::new(&format!("http://{addr}"), &s).unwrap();
        let t = std::time::Instant::now();
        let e = c.get("runs/get", &[("run_id", "r")]);
        let took = t.elapsed();
        assert!(matches!(e, Err(Error::Connection { .. })), "{e:?}");
        // One deadline: about 1 s, not 0.7 s for the headers plus a fresh second for the body.
        assert!(took < Duration::from_millis(1500), "took {took:?}");
    }

    #[test]
    fn a_longer_attempt_timeout_holds_inside_its_scope_only() {
        use std::io::{BufRead, BufReader, Write};
        // Every request is answered after 600 ms: too slow for the client's 300 ms.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                        line.clear();
                    }
                    let mut stream = reader.into_inner();
                    std::thread::sleep(Duration::from_millis(600));
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                });
            }
        });
        let s = Settings {
            timeout: Duration::from_millis(300),
            max_retries: 0,
            ..Settings::default()
        };
        let c = HttpClient::new(&format!("http://{addr}"), &s).unwrap();
        let get = || c.get("runs/get", &[("run_id", "r")]);
        assert!(matches!(get(), Err(Error::Connection { .. })));
        let patient = with_attempt_timeout(Duration::from_secs(5), get);
        assert!(patient.is_ok(), "{patient:?}");
        // Back to the client's own deadline after the scope, also on another thread meanwhile.
        assert!(matches!(get(), Err(Error::Connection { .. })));
        with_attempt_timeout(Duration::from_secs(5), || {
            let other = std::thread::scope(|sc| sc.spawn(get).join().unwrap());
            assert!(matches!(other, Err(Error::Connection { .. })));
        });
    }

    fn fast_retries() -> Settings {
        Settings {
            max_retries: 3,
            backoff_base: Duration::from_millis(1),
            ..Settings::default()
        }
    }

    #[test]
    fn status_503_and_429_are_retried_until_success() {
        let c = HttpClient::new(&scripted_server(&[503, 429, 200]), &fast_retries()).unwrap();
        let v = c.get("runs/get", &[("run_id", "r")]).unwrap();
        assert_eq!(v, serde_json::json!({}));
        assert_eq!(c.requests(), 3);
    }

    #[test]
    fn client_errors_are_never_retried() {
        let c = HttpClient::new(&scripted_server(&[400, 200]), &fast_retries()).unwrap();
        let e = c.get("runs/get", &[("run_id", "r")]).unwrap_err();
        assert_eq!(parts(e).0, 400);
        assert_eq!(c.requests(), 1);
    }

    #[test]
    fn run_creation_that_reached_the_server_is_not_retried() {
        let c = HttpClient::new(&scripted_server(&[503, 200]), &fast_retries()).unwrap();
        let body = serde_json::json!({"experiment_id": "0"});
        let e = c
            .post("runs/create", &body, Idempotency::CreatesOnce)
            .unwrap_err();
        assert_eq!(parts(e).0, 503);
        assert_eq!(
            c.requests(),
            1,
            "a second runs/create could make a duplicate run"
        );
    }
}
