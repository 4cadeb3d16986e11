//! Finding, starting and stopping a local MLflow tracking server, as the seed does it.
//!
//! - [`probe`] tells what listens on a host and port: nothing, an MLflow server, or something else.
//! - [`MlflowServer::start`] runs `mlflow server` in its own process group, waits (polling `/health`)
//!   until it answers, and stops the whole group when dropped unless [`MlflowServer::detach`]ed.
//! - [`ensure_server`] is the seed's behaviour: use the MLflow server on the port, or start one.
//!
//! This file holds the options, [`probe`] and [`ensure_server`]; `process.rs` holds the process
//! group ([`MlflowServer`], [`find_mlflow`], [`stop_process_group`]).
//!
//! Probing goes through the crate's one HTTP client ([`HttpClient`]) with the probe's time budget as
//! its timeout and no retries, so it stays within that budget even when a silent or non-HTTP service
//! holds the port.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::rest::client::HttpClient;
use super::rest::settings::Settings;
use crate::error::{Error, Result};

mod process;
pub use process::{MlflowServer, find_mlflow, stop_process_group};

/// How long [`ensure_server`] gives a busy port to prove it is an MLflow server.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`MlflowServer::stop`] waits after SIGTERM before it sends SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How to start an MLflow server. Its `Debug` output shows the names of [`ServerOptions::env`]
/// only, never their values (they may be passwords).
#[derive(Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// The `mlflow` executable: a path, or a bare name looked up on `PATH`. `None`: `mlflow` on `PATH`.
    pub mlflow_bin: Option<PathBuf>,
    /// Directory holding `mlflow.db` and `mlartifacts/`. `None`: the current directory (what
    /// `mlflow ui` uses). Created when missing.
    pub data_dir: Option<PathBuf>,
    /// Number of server workers. `None`: one.
    pub workers: Option<u32>,
    /// How long to wait for a started server to answer `/health`.
    pub ready_timeout: Duration,
    /// Print nothing to stderr (the "server started" line of [`ensure_server`]).
    pub quiet: bool,
    /// More arguments for `mlflow server` (`["--app-name", "basic-auth"]`, ...), after sapsan's own.
    pub extra_args: Vec<String>,
    /// More environment variables for the server process (`MLFLOW_AUTH_ADMIN_PASSWORD`, ...).
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("mlflow_bin", &self.mlflow_bin)
            .field("data_dir", &self.data_dir)
            .field("workers", &self.workers)
            .field("ready_timeout", &self.ready_timeout)
            .field("quiet", &self.quiet)
            .field("extra_args", &self.extra_args)
            .field(
                "env",
                &self
                    .env
                    .iter()
                    .map(|(k, _)| format!("{k}=<redacted>"))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for ServerOptions {
    /// `mlflow` on `PATH` (the builder's settings may name another, `SAPSAN_MLFLOW_BIN`), data in
    /// the current directory, one worker,
    /// 60 s to become ready, not quiet.
    fn default() -> Self {
        Self {
            mlflow_bin: None,
            data_dir: None,
            workers: Some(1),
            ready_timeout: Duration::from_secs(60),
            quiet: false,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// What listens on a host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortState {
    /// Nothing accepts connections there.
    Free,
    /// An MLflow server: `/health` answered `OK`, `/version` answered `version`.
    Mlflow {
        /// What `GET /version` answered (`3.17.2`, ...).
        version: String,
    },
    /// Something that is not an MLflow server.
    Other {
        /// What it answered, in words (HTTP status and the start of the body, what was wrong with
        /// an answer that is not HTTP, or that it answered nothing in time).
        answered: String,
    },
}

/// The host a client on this machine uses to reach a server bound to `host`: loopback for the
/// unspecified addresses (`0.0.0.0`, `::`), else `host` without IPv6 brackets.
fn client_host(host: &str) -> &str {
    match host {
        "0.0.0.0" => "127.0.0.1",
        "::" | "[::]" => "::1",
        h => h.trim_start_matches('[').trim_end_matches(']'),
    }
}

/// The base URL a client on this machine uses for a server bound to `host:port`
/// (`http://127.0.0.1:5000`; IPv6 hosts in brackets; `0.0.0.0` and `::` become loopback).
pub fn base_url(host: &str, port: u16) -> String {
    let host = client_host(host);
    if host.contains(':') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    }
}

/// What is on `host:port`: nothing, an MLflow server (`GET /health` -> `OK` and `GET /version`), or
/// something else (saying what answered: HTTP status and body start, "accepted TCP but sent no
/// HTTP answer within 2 s", or what was wrong with an answer that is not HTTP). The whole probe
/// takes at most `timeout`.
///
/// Both requests go through the crate's one HTTP client ([`HttpClient::get_text`]), each sent once.
/// A failed request is read by its kind: a connection that could not be made is
/// [`PortState::Free`], a timeout is a listener that said nothing, any other failure is an answer
/// that is not valid HTTP.
pub fn probe(host: &str, port: u16, timeout: Duration) -> PortState {
    let deadline = Instant::now() + timeout;
    let base = base_url(host, port);
    let client = match probe_client(&base, timeout) {
        Ok(c) => c,
        Err(e) => {
            return PortState::Other {
                answered: format!("could not be probed: {e}"),
            };
        }
    };
    let health = match client.get_text(&format!("{base}/health"), timeout) {
        Ok(a) => a,
        Err(e) => {
            return match failure(&e, timeout) {
                None => PortState::Free,
                Some(answered) => PortState::Other { answered },
            };
        }
    };
    if !health_ok(&health) {
        return PortState::Other {
            answered: format!("GET /health answered {}", describe(&health)),
        };
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return PortState::Other {
            answered: format!(
                "GET /health answered OK but no time was left for GET /version within {}",
                fmt_duration(timeout)
            ),
        };
    }
    match client.get_text(&format!("{base}/version"), remaining) {
        Ok(answer) => match version(&answer) {
            Some(version) => PortState::Mlflow { version },
            None => PortState::Other {
                answered: format!(
                    "GET /health answered OK but GET /version answered {}",
                    describe(&answer)
                ),
            },
        },
        Err(e) => PortState::Other {
            answered: match failure(&e, timeout) {
                None => "GET /health answered OK but the connection for GET /version failed".into(),
                Some(a) => format!("GET /health answered OK but GET /version: {a}"),
            },
        },
    }
}

/// The seed's behaviour on `host:port`. Port free: start a server (printing
/// `MLflow server started at <url> (log: <file>)` to stderr unless `opts.quiet`) and return it.
/// An MLflow server there (confirmed within 2 s): use it, `None`. Something else: fail at once with
/// [`Error::PortBusyNotMlflow`] naming the port and what answered.
pub fn ensure_server(host: &str, port: u16, opts: &ServerOptions) -> Result<Option<MlflowServer>> {
    match probe(host, port, CONFIRM_TIMEOUT) {
        PortState::Free => {
            let server = MlflowServer::spawn_and_wait(host, port, opts)?;
            if !opts.quiet {
                log::info!(
                    target: "sapsan::server",
                    "MLflow server started at {} (log: {})",
                    server.url(),
                    server.log_path().display()
                );
            }
            Ok(Some(server))
        }
        PortState::Mlflow { .. } => Ok(None),
        PortState::Other { answered } => Err(Error::PortBusyNotMlflow {
            host: host.into(),
            port,
            answered,
        }),
    }
}

// ---- probing through the HTTP client -----------------------------------------------------------

/// The crate's HTTP client, set up for probing `base`: `timeout` per request, no retries, no
/// credentials.
fn probe_client(base: &str, timeout: Duration) -> Result<HttpClient> {
    let settings = Settings {
        timeout,
        max_retries: 0,
        ..Settings::default()
    };
    HttpClient::new(base, &settings)
}

/// What a failed probe request says about the port: `None` when no connection could be made
/// (refused: nothing listens), else what the listener did, in words. Reads the reason the way
/// [`HttpClient`] words every transport failure (`connection failed (...)`, `timed out (...)`,
/// `request failed (...)`, `HTTP 200, then reading the body failed: ...`).
fn failure(e: &Error, budget: Duration) -> Option<String> {
    let Error::Connection { reason, .. } = e else {
        return Some(e.to_string());
    };
    let within = fmt_duration(budget);
    if let Some(detail) = reason.strip_prefix("connection failed") {
        return detail
            .contains("timed out")
            .then(|| format!("did not accept a TCP connection within {within}"));
    }
    if reason.starts_with("timed out") {
        return Some(format!(
            "accepted TCP but sent no HTTP answer within {within}"
        ));
    }
    if reason.starts_with("request failed") {
        return Some(format!(
            "accepted TCP but sent no valid HTTP answer ({})",
            innermost(reason)
        ));
    }
    Some(format!("sent an incomplete HTTP answer ({reason})"))
}

/// The innermost cause of a described transport error: `invalid HTTP version parsed` out of
/// `request failed (error sending request: client error (SendRequest): invalid HTTP version parsed)`.
fn innermost(reason: &str) -> &str {
    let inner = reason
        .split_once('(')
        .map_or(reason, |(_, rest)| rest.strip_suffix(')').unwrap_or(rest));
    inner.rsplit(": ").next().unwrap_or(inner).trim()
}

/// `GET /health` of an MLflow server: 200 and `OK`.
fn health_ok((status, body): &(u16, String)) -> bool {
    *status == 200 && body.trim() == "OK"
}

/// `GET /version` of an MLflow server: 200 and a short version string.
fn version((status, body): &(u16, String)) -> Option<String> {
    let v = body.trim();
    let plausible = *status == 200
        && !v.is_empty()
        && v.len() <= 64
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+-_".contains(c));
    plausible.then(|| v.to_owned())
}

/// `HTTP 404 "<body start>"`.
fn describe((status, body): &(u16, String)) -> String {
    let body = snippet(body);
    if body.is_empty() {
        format!("HTTP {status} with an empty body")
    } else {
        format!("HTTP {status} {body:?}")
    }
}

/// The first 80 characters of `text`, whitespace collapsed.
fn snippet(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut s: String = collapsed.chars().take(80).collect();
    if collapsed.chars().count() > 80 {
        s.push_str("...");
    }
    s
}

/// `2 s`, `1.5 s`, `300 ms`.
fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn answer(status: u16, body: &str) -> (u16, String) {
        (status, body.to_owned())
    }

    #[test]
    fn recognises_mlflow_answers() {
        assert!(health_ok(&answer(200, "OK\n")));
        assert!(!health_ok(&answer(200, "<html>OK</html>")));
        assert!(!health_ok(&answer(503, "OK")));
        assert_eq!(version(&answer(200, "3.17.2")).as_deref(), Some("3.17.2"));
        assert_eq!(
            version(&answer(200, "<!doctype html><title>Hi</title>")),
            None
        );
        assert_eq!(version(&answer(404, "3.17.2")), None);
        assert_eq!(
            describe(&answer(404, "<h1>Not   Found</h1>\n")),
            "HTTP 404 \"<h1>Not Found</h1>\""
        );
        assert_eq!(describe(&answer(503, "")), "HTTP 503 with an empty body");
    }

    #[test]
    fn reads_transport_failures() {
        let conn = |reason: &str| Error::Connection {
            url: "http://127.0.0.1:1/health".into(),
            reason: reason.into(),
        };
        let two = Duration::from_secs(2);
        let refused = "connection failed (error sending request: client error (Connect): tcp connect error: Connection refused (os error 111))";
        assert_eq!(failure(&conn(refused), two), None);
        assert_eq!(
            failure(&conn("connection failed (operation timed out)"), two).unwrap(),
            "did not accept a TCP connection within 2 s"
        );
        assert_eq!(
            failure(
                &conn("timed out (error sending request: operation timed out)"),
                two
            )
            .unwrap(),
            "accepted TCP but sent no HTTP answer within 2 s"
        );
        let garbage = "request failed (error sending request: client error (SendRequest): invalid HTTP version parsed)";
        assert_eq!(
            failure(&conn(garbage), two).unwrap(),
            "accepted TCP but sent no valid HTTP answer (invalid HTTP version parsed)"
        );
        assert_eq!(innermost("request failed (plain)"), "plain");
    }

    #[test]
    fn formats_urls_and_durations() {
        assert_eq!(base_url("127.0.0.1", 5000), "http://127.0.0.1:5000");
        assert_eq!(base_url("::1", 5000), "http://[::1]:5000");
        assert_eq!(base_url("[::1]", 5000), "http://[::1]:5000");
        assert_eq!(base_url("0.0.0.0", 5000), "http://127.0.0.1:5000");
        assert_eq!(base_url("localhost", 5000), "http://localhost:5000");
        assert_eq!(fmt_duration(Duration::from_secs(2)), "2 s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(fmt_duration(Duration::from_millis(300)), "300 ms");
        assert!(snippet(&"x".repeat(100)).ends_with("..."));
    }

    #[test]
    fn default_options() {
        let o = ServerOptions::default();
        assert_eq!(o.workers, Some(1));
        assert_eq!(o.data_dir, None);
        assert_eq!(o.ready_timeout, Duration::from_secs(60));
        assert!(!o.quiet);
    }

    /// Serves each connection with `answer` (after reading the request) on a loopback port.
    fn serve(answer: fn(&str) -> Vec<u8>) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let _ = s.write_all(&answer(&req));
            }
        });
        port
    }

    #[test]
    fn probe_tells_mlflow_from_other_http_and_free() {
        let mlflow = serve(|req| {
            let body = if req.starts_with("GET /health ") {
                "OK"
            } else {
                "3.17.2"
            };
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        });
        assert_eq!(
            probe("127.0.0.1", mlflow, Duration::from_secs(2)),
            PortState::Mlflow {
                version: "3.17.2".into()
            }
        );
        let other =
            serve(|_| b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot here!".to_vec());
        assert_eq!(
            probe("127.0.0.1", other, Duration::from_secs(2)),
            PortState::Other {
                answered: "GET /health answered HTTP 404 \"not here!\"".into()
            }
        );
        // A server on every interface is probed through loopback.
        assert!(matches!(
            probe("0.0.0.0", mlflow, Duration::from_secs(2)),
            PortState::Mlflow { .. }
        ));
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        assert_eq!(
            probe("127.0.0.1", port, Duration::from_secs(2)),
            PortState::Free
        );
    }

    /// A loopback listener that reads the request, answers `answer` (which need not be HTTP), then
    /// holds the connection open until the peer closes it.
    fn hold(answer: &'static [u8]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = s.read(&mut [0u8; 1024]);
                    let _ = s.write_all(answer);
                    let _ = std::io::copy(&mut s, &mut std::io::sink());
                });
            }
        });
        port
    }

    #[test]
    fn probe_says_what_a_silent_or_non_http_listener_did() {
        let budget = Duration::from_millis(300);
        let t = Instant::now();
        let silent = probe("127.0.0.1", hold(b""), budget);
        let took = t.elapsed();
        assert_eq!(
            silent,
            PortState::Other {
                answered: "accepted TCP but sent no HTTP answer within 300 ms".into()
            }
        );
        assert!(took < budget + Duration::from_millis(200), "{took:?}");

        let t = Instant::now();
        let PortState::Other { answered } =
            probe("127.0.0.1", hold(b"SSH-2.0-OpenSSH_9.6\r\n"), budget)
        else {
            panic!("garbage taken for MLflow or a free port");
        };
        assert!(t.elapsed() < budget, "{:?}", t.elapsed());
        assert_eq!(
            answered,
            "accepted TCP but sent no valid HTTP answer (invalid HTTP version parsed)"
        );
    }
}
