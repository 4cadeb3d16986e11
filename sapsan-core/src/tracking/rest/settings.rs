//! Settings of the MLflow client: where the server is, how to authenticate, timeouts and retries.
//!
//! Read from the same environment variables the Python client honours ([`Settings::from_env`]) or set
//! one by one. Credentials never appear in URLs, errors or `Debug` output.
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::tracking::system_metrics::SystemMetricsOptions;

/// Default of `MLFLOW_HTTP_REQUEST_TIMEOUT`: 120 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Default of `MLFLOW_HTTP_REQUEST_MAX_RETRIES`: 7.
pub const DEFAULT_MAX_RETRIES: u32 = 7;

/// How the client authenticates.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// HTTP Basic (`MLFLOW_TRACKING_USERNAME` + `MLFLOW_TRACKING_PASSWORD`); wins over a token.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// `Authorization: Bearer <token>` (`MLFLOW_TRACKING_TOKEN`).
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => write!(f, "None"),
            Auth::Basic { username, .. } => write!(f, "Basic({username:?}, password: <redacted>)"),
            Auth::Bearer(_) => write!(f, "Bearer(<redacted>)"),
        }
    }
}

/// Client settings. Build with [`Settings::default`] plus setters, or [`Settings::from_env`].
#[derive(Clone)]
pub struct Settings {
    /// Tracking URI (`http://host:port`, no credentials; those go to [`Settings::auth`]).
    pub tracking_uri: Option<String>,
    /// Experiment name (`MLFLOW_EXPERIMENT_NAME`).
    pub experiment_name: Option<String>,
    /// Credentials.
    pub auth: Auth,
    /// Accept any TLS certificate (`MLFLOW_TRACKING_INSECURE_TLS`).
    pub insecure_tls: bool,
    /// Extra CA certificate (PEM) to trust (`MLFLOW_TRACKING_SERVER_CERT_PATH`).
    pub server_cert_path: Option<PathBuf>,
    /// Timeout of one HTTP request (`MLFLOW_HTTP_REQUEST_TIMEOUT`, default 120 s).
    pub timeout: Duration,
    /// Retries after a connection error, 429 or 5xx (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, default 7).
    pub max_retries: u32,
    /// First backoff delay; doubles per retry up to [`Settings::backoff_max`] (default 50 ms).
    pub backoff_base: Duration,
    /// Longest backoff delay (default 2 s).
    pub backoff_max: Duration,
    /// How long the background sender waits for more items after the first one before it sends
    /// (default 200 ms; `flush`, a full batch and ending a run cut it short).
    pub linger: Duration,
    /// Log-batch requests sent at once by the background sender (default 4).
    pub send_concurrency: usize,
    /// Reuse HTTP connections (default `false`: a fresh connection per request, which is faster
    /// against MLflow's uvicorn server; see `HttpClient::new`).
    pub keep_alive: bool,
    /// Keep everything in a journal on disk until the server has it (`SAPSAN_JOURNAL`, default
    /// on; `0`, `false`, `off` or `no` turn it off: data then waits in memory).
    pub journal: bool,
    /// Where journals go (`SAPSAN_JOURNAL_DIR`, default `./.sapsan-journal`).
    pub journal_root: PathBuf,
    /// Offline mode: journal under this root and never talk to a server
    /// (`MLFLOW_TRACKING_URI=offline:<dir>`, or `SAPSAN_OFFLINE=1` for [`Settings::journal_root`]).
    pub offline_root: Option<PathBuf>,
    /// Longest wait of a flush, a status change or an artifact (`SAPSAN_FLUSH_TIMEOUT` seconds,
    /// default 60).
    pub flush_timeout: Duration,
    /// How long the end of the program waits for a server that is away before it leaves the
    /// rest in the journal (`SAPSAN_EXIT_GRACE` seconds, default 6); one request under way may
    /// add a request timeout.
    pub exit_grace: Duration,
    /// Most logged items waiting in the log queue before logging waits for the store (its disk
    /// or memory, never the network); default 1,048,576.
    pub queue_capacity: usize,
    /// Most bytes of undelivered data kept in memory: by the in-memory store when the journal is
    /// off, and for records the journal's disk refused. Past it metric points are dropped (and
    /// counted and reported), never params, tags, runs or statuses. Default 256 MiB.
    pub memory_limit: usize,
    /// The `mlflow` executable for a server the backend starts (`SAPSAN_MLFLOW_BIN`; default
    /// `mlflow` on `PATH`).
    pub mlflow_bin: Option<PathBuf>,
    /// System metrics, when on (`MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true`; interval, samples
    /// and node from `MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`,
    /// `MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING`, `MLFLOW_SYSTEM_METRICS_NODE_ID`). See
    /// [`crate::tracking::system_metrics`]. Default off.
    pub system_metrics: Option<SystemMetricsOptions>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tracking_uri: None,
            experiment_name: None,
            auth: Auth::None,
            insecure_tls: false,
            server_cert_path: None,
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            linger: Duration::from_millis(200),
            send_concurrency: 4,
            keep_alive: false,
            journal: true,
            journal_root: PathBuf::from(DEFAULT_JOURNAL_ROOT),
            offline_root: None,
            flush_timeout: Duration::from_secs(60),
            exit_grace: Duration::from_secs(6),
            queue_capacity: 1 << 20,
            memory_limit: 256 << 20,
            mlflow_bin: None,
            system_metrics: None,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("tracking_uri", &self.tracking_uri)
            .field("experiment_name", &self.experiment_name)
            .field("auth", &self.auth)
            .field("insecure_tls", &self.insecure_tls)
            .field("server_cert_path", &self.server_cert_path)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("linger", &self.linger)
            .field("send_concurrency", &self.send_concurrency)
            .field("keep_alive", &self.keep_alive)
            .field("journal", &self.journal)
            .field("journal_root", &self.journal_root)
            .field("offline_root", &self.offline_root)
            .field("flush_timeout", &self.flush_timeout)
            .field("exit_grace", &self.exit_grace)
            .field("queue_capacity", &self.queue_capacity)
            .field("memory_limit", &self.memory_limit)
            .field("mlflow_bin", &self.mlflow_bin)
            .field("system_metrics", &self.system_metrics)
            .finish()
    }
}

/// Environment variable naming the journal root directory.
pub const JOURNAL_DIR_ENV: &str = "SAPSAN_JOURNAL_DIR";
/// Environment variable that turns the journal off when `0`, `false`, `off` or `no`.
pub const JOURNAL_ENV: &str = "SAPSAN_JOURNAL";
/// Environment variable that selects offline mode when `1` or `true`.
pub const OFFLINE_ENV: &str = "SAPSAN_OFFLINE";
/// Tracking-URI scheme that selects offline mode: `offline:/journal/root`.
pub const OFFLINE_SCHEME: &str = "offline:";
/// Environment variable with the flush timeout in seconds.
pub const FLUSH_TIMEOUT_ENV: &str = "SAPSAN_FLUSH_TIMEOUT";
/// Environment variable with the exit grace in seconds.
pub const EXIT_GRACE_ENV: &str = "SAPSAN_EXIT_GRACE";
/// Environment variable naming the `mlflow` executable for servers the backend starts.
pub const MLFLOW_BIN_ENV: &str = "SAPSAN_MLFLOW_BIN";
/// The journal root when none is set (relative to the working directory).
pub const DEFAULT_JOURNAL_ROOT: &str = ".sapsan-journal";

/// A positive number of seconds.
fn seconds(name: &str, value: &str) -> Result<Duration> {
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| setting(name, value, "expected a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
        return Err(setting(
            name,
            value,
            "expected a positive number of seconds",
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn setting(name: &str, value: &str, reason: impl Into<String>) -> Error {
    Error::Setting {
        name: name.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// Parses a boolean the way MLflow does (`true`/`false`, also `1`/`0`, `yes`/`no`).
fn parse_bool(name: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(setting(name, value, "expected `true` or `false`")),
    }
}

impl Settings {
    /// Reads every `MLFLOW_*` variable this client honours from the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`Settings::from_env`], reading variables through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut s = Settings::default();
        let nonempty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if let Some(root) = nonempty(JOURNAL_DIR_ENV) {
            s.journal_root = PathBuf::from(root);
        }
        if let Some(v) = nonempty(JOURNAL_ENV) {
            s.journal = parse_bool(JOURNAL_ENV, &v)?;
        }
        if let Some(v) = nonempty(OFFLINE_ENV)
            && parse_bool(OFFLINE_ENV, &v)?
        {
            s.offline_root = Some(s.journal_root.clone());
        }
        s.mlflow_bin = nonempty(MLFLOW_BIN_ENV).map(PathBuf::from);
        if let Some(v) = nonempty("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING")
            && parse_bool("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", &v)?
        {
            let mut o = SystemMetricsOptions::default();
            if let Some(v) = nonempty("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") {
                o.interval = seconds("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", &v)?;
            }
            if let Some(v) = nonempty("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING") {
                o.samples_before_logging =
                    v.trim().parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                        setting(
                            "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING",
                            &v,
                            "expected a whole number >= 1",
                        )
                    })?;
            }
            o.node_id = nonempty("MLFLOW_SYSTEM_METRICS_NODE_ID").map(|n| n.trim().to_owned());
            s.system_metrics = Some(o);
        }
        if let Some(v) = nonempty(FLUSH_TIMEOUT_ENV) {
            s.flush_timeout = seconds(FLUSH_TIMEOUT_ENV, &v)?;
        }
        if let Some(v) = nonempty(EXIT_GRACE_ENV) {
            s.exit_grace = seconds(EXIT_GRACE_ENV, &v)?;
        }
        match nonempty("MLFLOW_TRACKING_URI") {
            Some(uri) if uri.trim().starts_with(OFFLINE_SCHEME) => {
                let p = uri.trim()[OFFLINE_SCHEME.len()..].trim_start_matches("//");
                s.offline_root = Some(if p.is_empty() {
                    s.journal_root.clone()
                } else {
                    PathBuf::from(p)
                });
            }
            Some(uri) => s.set_tracking_uri_named("MLFLOW_TRACKING_URI", &uri)?,
            None => {}
        }
        s.experiment_name = nonempty("MLFLOW_EXPERIMENT_NAME");
        let user = nonempty("MLFLOW_TRACKING_USERNAME");
        let pass = get("MLFLOW_TRACKING_PASSWORD");
        match (user, pass) {
            (Some(username), Some(password)) => s.auth = Auth::Basic { username, password },
            (Some(_), None) => {
                return Err(setting(
                    "MLFLOW_TRACKING_USERNAME",
                    "<set>",
                    "MLFLOW_TRACKING_PASSWORD must be set too for Basic authentication",
                ));
            }
            (None, Some(_)) => {
                return Err(setting(
                    "MLFLOW_TRACKING_PASSWORD",
                    "<redacted>",
                    "MLFLOW_TRACKING_USERNAME must be set too for Basic authentication",
                ));
            }
            (None, None) => {}
        }
        if s.auth == Auth::None
            && let Some(token) = nonempty("MLFLOW_TRACKING_TOKEN")
        {
            s.auth = Auth::Bearer(token);
        }
        if let Some(v) = get("MLFLOW_TRACKING_INSECURE_TLS") {
            s.insecure_tls = parse_bool("MLFLOW_TRACKING_INSECURE_TLS", &v)?;
        }
        if let Some(v) = nonempty("MLFLOW_TRACKING_SERVER_CERT_PATH") {
            s.server_cert_path = Some(PathBuf::from(v));
        }
        if let Some(v) = nonempty("MLFLOW_HTTP_REQUEST_TIMEOUT") {
            s.timeout = seconds("MLFLOW_HTTP_REQUEST_TIMEOUT", &v)?;
        }
        if let Some(v) = nonempty("MLFLOW_HTTP_REQUEST_MAX_RETRIES") {
            s.max_retries = v.trim().parse().map_err(|_| {
                setting(
                    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                    &v,
                    "expected a whole number >= 0",
                )
            })?;
        }
        s.check()?;
        Ok(s)
    }

    /// Sets the tracking URI. Credentials embedded in it (`http://user:pass@host`) are moved to
    /// [`Settings::auth`] (unless credentials are already set) so they never show up in URLs.
    pub fn set_tracking_uri(&mut self, uri: &str) -> Result<()> {
        self.set_tracking_uri_named("tracking_uri", uri)
    }

    fn set_tracking_uri_named(&mut self, name: &str, uri: &str) -> Result<()> {
        let mut url = reqwest::Url::parse(uri.trim()).map_err(|e| {
            setting(
                name,
                &redact_uri(uri),
                format!("not a URL ({e}); expected http://host:port"),
            )
        })?;
        match url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(setting(
                    name,
                    &redact_uri(uri),
                    format!(
                        "scheme `{other}:` is not supported; sapsan talks to an MLflow server over \
                         http(s)://host:port (start one with `mlflow server`)"
                    ),
                ));
            }
        }
        if url.host_str().is_none() {
            return Err(setting(name, &redact_uri(uri), "the URL has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            let username = super::encoding::percent_decode(url.username());
            let password = url
                .password()
                .map(super::encoding::percent_decode)
                .unwrap_or_default();
            if self.auth == Auth::None {
                self.auth = Auth::Basic { username, password };
            }
            // Cannot fail for http(s) URLs with a host.
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        let s = url.as_str().trim_end_matches('/').to_owned();
        self.tracking_uri = Some(s);
        Ok(())
    }

    /// Most items held in memory while the journal's disk refuses writes (a metric point takes
    /// about 100 bytes there).
    pub fn held_limit(&self) -> usize {
        (self.memory_limit / 100).max(1000)
    }

    /// Checks settings that only make sense together.
    pub fn check(&self) -> Result<()> {
        if self.insecure_tls && self.server_cert_path.is_some() {
            return Err(setting(
                "MLFLOW_TRACKING_INSECURE_TLS",
                "true",
                "cannot be combined with MLFLOW_TRACKING_SERVER_CERT_PATH; set only one of them",
            ));
        }
        if self.send_concurrency == 0 {
            return Err(setting("send_concurrency", "0", "must be at least 1"));
        }
        Ok(())
    }
}

/// `uri` with any `user:password@` part replaced, for messages.
pub(crate) fn redact_uri(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}<redacted>@{}", &uri[..s + 3], &uri[at + 1..]),
        _ => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Settings> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let s = env(&[]).unwrap();
        assert_eq!(s.tracking_uri, None);
        assert_eq!(s.timeout, Duration::from_secs(120));
        assert_eq!(s.max_retries, 7);
        assert_eq!(s.auth, Auth::None);
        assert!(!s.insecure_tls);
    }

    #[test]
    fn reads_every_variable() {
        let s = env(&[
            ("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000/"),
            ("MLFLOW_EXPERIMENT_NAME", "turb"),
            ("MLFLOW_TRACKING_TOKEN", "tok"),
            ("MLFLOW_TRACKING_INSECURE_TLS", "TRUE"),
            ("MLFLOW_HTTP_REQUEST_TIMEOUT", "2.5"),
            ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"),
        ])
        .unwrap();
        assert_eq!(s.tracking_uri.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(s.experiment_name.as_deref(), Some("turb"));
        assert_eq!(s.auth, Auth::Bearer("tok".into()));
        assert!(s.insecure_tls);
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert_eq!(s.max_retries, 0);
    }

    #[test]
    fn system_metrics_read_mlflows_variables() {
        assert_eq!(env(&[]).unwrap().system_metrics, None);
        let off = env(&[("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")]).unwrap();
        assert_eq!(off.system_metrics, None);
        let on = env(&[("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")]).unwrap();
        assert_eq!(on.system_metrics, Some(SystemMetricsOptions::default()));
        assert_eq!(
            SystemMetricsOptions::default().interval,
            Duration::from_secs(10)
        );
        let s = env(&[
            ("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "1"),
            ("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5"),
            ("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "3"),
            ("MLFLOW_SYSTEM_METRICS_NODE_ID", "node_0"),
        ])
        .unwrap();
        let o = s.system_metrics.unwrap();
        assert_eq!(o.interval, Duration::from_millis(500));
        assert_eq!(o.samples_before_logging, 3);
        assert_eq!(o.prefix(), "system/node_0/");
        for (k, v) in [
            ("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "often"),
            ("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "0"),
        ] {
            let e = env(&[("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true"), (k, v)])
                .unwrap_err()
                .to_string();
            assert!(e.contains(k), "{e}");
        }
    }

    #[test]
    fn basic_wins_over_token() {
        let s = env(&[
            ("MLFLOW_TRACKING_USERNAME", "ann"),
            ("MLFLOW_TRACKING_PASSWORD", "pw"),
            ("MLFLOW_TRACKING_TOKEN", "tok"),
        ])
        .unwrap();
        assert_eq!(
            s.auth,
            Auth::Basic {
                username: "ann".into(),
                password: "pw".into()
            }
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("MLFLOW_HTTP_REQUEST_TIMEOUT", "soon"),
            ("MLFLOW_HTTP_REQUEST_TIMEOUT", "-1"),
            ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "many"),
            ("MLFLOW_TRACKING_INSECURE_TLS", "maybe"),
            ("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
            ("MLFLOW_TRACKING_URI", "not a url"),
        ] {
            match env(&[(k, v)]) {
                Err(Error::Setting { name, .. }) => assert_eq!(name, k),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
        match env(&[("MLFLOW_TRACKING_USERNAME", "ann")]) {
            Err(e @ Error::Setting { .. }) => assert!(e.to_string().contains("PASSWORD")),
            other => panic!("{other:?}"),
        }
        match env(&[
            ("MLFLOW_TRACKING_INSECURE_TLS", "true"),
            ("MLFLOW_TRACKING_SERVER_CERT_PATH", "/ca.pem"),
        ]) {
            Err(Error::Setting { name, .. }) => assert_eq!(name, "MLFLOW_TRACKING_INSECURE_TLS"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn credentials_never_show() {
        let s = env(&[
            (
                "MLFLOW_TRACKING_URI",
                "https://bob:s3cr%40t@example.org:8443",
            ),
            ("MLFLOW_TRACKING_TOKEN", "tok-SECRET"),
        ])
        .unwrap();
        assert_eq!(s.tracking_uri.as_deref(), Some("https://example.org:8443"));
        assert_eq!(
            s.auth,
            Auth::Basic {
                username: "bob".into(),
                password: "s3cr@t".into()
            }
        );
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("s3cr"), "{dbg}");
        assert!(dbg.contains("redacted"), "{dbg}");
        let t = env(&[("MLFLOW_TRACKING_TOKEN", "tok-SECRET")]).unwrap();
        assert!(!format!("{t:?}").contains("SECRET"));
        let e = env(&[("MLFLOW_TRACKING_URI", "ftp://bob:pw@h")]).unwrap_err();
        assert!(!e.to_string().contains("pw@"), "{e}");
        assert!(!format!("{e:?}").contains(":pw"), "{e:?}");
    }

    #[test]
    fn journal_offline_and_waits_come_from_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let s = Settings::from_lookup(env(&[])).unwrap();
        assert!(s.journal);
        assert_eq!(s.journal_root, PathBuf::from(DEFAULT_JOURNAL_ROOT));
        assert_eq!(s.offline_root, None);
        let s = Settings::from_lookup(env(&[
            ("SAPSAN_JOURNAL", "0"),
            ("SAPSAN_JOURNAL_DIR", "/j"),
            ("SAPSAN_FLUSH_TIMEOUT", "2.5"),
            ("SAPSAN_EXIT_GRACE", "1"),
        ]))
        .unwrap();
        assert!(!s.journal);
        assert_eq!(s.journal_root, PathBuf::from("/j"));
        assert_eq!(s.flush_timeout, Duration::from_millis(2500));
        assert_eq!(s.exit_grace, Duration::from_secs(1));
        let s = Settings::from_lookup(env(&[("MLFLOW_TRACKING_URI", "offline:/tmp/j")])).unwrap();
        assert_eq!(s.offline_root, Some(PathBuf::from("/tmp/j")));
        assert_eq!(s.tracking_uri, None);
        let s = Settings::from_lookup(env(&[
            ("SAPSAN_OFFLINE", "1"),
            ("SAPSAN_JOURNAL_DIR", "/r"),
        ]))
        .unwrap();
        assert_eq!(s.offline_root, Some(PathBuf::from("/r")));
        let s = Settings::from_lookup(env(&[("SAPSAN_OFFLINE", "0")])).unwrap();
        assert_eq!(s.offline_root, None);
        let e = Settings::from_lookup(env(&[("SAPSAN_FLUSH_TIMEOUT", "soon")])).unwrap_err();
        assert!(e.to_string().contains("SAPSAN_FLUSH_TIMEOUT"), "{e}");
    }
}
