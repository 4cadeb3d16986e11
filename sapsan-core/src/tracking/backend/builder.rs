//! [`MlflowBackendBuilder`]: where the server is, which experiment, settings, journal, server
//! ownership; and the seed's constructors of [`MlflowBackend`].
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::MlflowBackend;
use super::core::Core;
use crate::error::{Error, Result};
use crate::tracking::journal::{self, Journal, MemoryStore, SharedJournal, Store};
use crate::tracking::rest::client::HttpClient;
use crate::tracking::rest::settings::Settings;
use crate::tracking::rest::wire::get_or_create_experiment;
use crate::tracking::server::{ServerOptions, ensure_server};
use crate::tracking::system_metrics::SystemMetricsOptions;
use crate::tracking::upload::{Limits, Pipeline, Replayer, UploadOptions, is_transient};

/// Experiment name used when none is given (the seed's default).
pub const DEFAULT_EXPERIMENT: &str = "experiment";
/// Host used when none is given (the seed's default).
pub const DEFAULT_HOST: &str = "localhost";
/// Port used when none is given (the seed's default).
pub const DEFAULT_PORT: u16 = 5000;

/// Builds an [`MlflowBackend`]: where the server is, which experiment, settings, server ownership.
#[derive(Debug, Default)]
pub struct MlflowBackendBuilder {
    settings: Settings,
    tracking_uri: Option<String>,
    host_port: Option<(String, u16)>,
    experiment: Option<String>,
    server_options: ServerOptions,
    own_server: bool,
    no_signal_handlers: bool,
    journal_rotate_bytes: Option<u64>,
}

impl MlflowBackendBuilder {
    /// A builder with the settings of the environment ([`Settings::from_env`]: `MLFLOW_*` and
    /// `SAPSAN_*` variables): with `MLFLOW_TRACKING_URI` set that server, else the seed's
    /// `localhost:5000` (started there when free).
    pub fn from_env() -> Result<Self> {
        let settings = Settings::from_env()?;
        let b = Self::default().settings(settings.clone());
        Ok(match settings.tracking_uri {
            Some(uri) => b.tracking_uri(uri),
            None => b.host_port(DEFAULT_HOST, DEFAULT_PORT),
        })
    }
    /// Talks to the server at `uri` (`http(s)://host:port`); never starts one.
    pub fn tracking_uri(mut self, uri: impl Into<String>) -> Self {
        self.tracking_uri = Some(uri.into());
        self.host_port = None;
        self
    }
    /// Uses the MLflow server on `host:port`, starting one there when the port is free.
    pub fn host_port(mut self, host: impl Into<String>, port: u16) -> Self {
        self.host_port = Some((host.into(), port));
        self.tracking_uri = None;
        self
    }
    /// The experiment runs go to (created when missing).
    pub fn experiment(mut self, name: impl Into<String>) -> Self {
        self.experiment = Some(name.into());
        self
    }
    /// Client settings (credentials, TLS, timeouts, retries, queue, journal). Replaces what
    /// [`MlflowBackendBuilder::journal`] and [`MlflowBackendBuilder::journal_root`] set before.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }
    /// How to start a server when [`MlflowBackendBuilder::host_port`] finds none.
    pub fn server_options(mut self, opts: ServerOptions) -> Self {
        self.server_options = opts;
        self
    }
    /// `true`: a server started by the backend is stopped when the backend is dropped.
    /// `false` (default): it outlives the program, as in Sapsan.
    pub fn own_server(mut self, own: bool) -> Self {
        self.own_server = own;
        self
    }

    /// `true` (default): SIGINT and SIGTERM mark this backend's open runs KILLED before the
    /// process dies of the signal (handlers installed with the first backend; see
    /// [`crate::tracking::run::signals`]). `false`: this backend is left out, and builds no
    /// handlers.
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.no_signal_handlers = !on;
        self
    }

    /// `true` (default, [`Settings::journal`]): everything goes to a journal on disk first and
    /// the uploader delivers it, surviving server outages (see [`crate::tracking::journal`];
    /// `sapsan sync` uploads what is left). `false`: logged data waits in memory until sent
    /// (at most [`Settings::memory_limit`] bytes).
    pub fn journal(mut self, on: bool) -> Self {
        self.settings.journal = on;
        self
    }
    /// The root directory for journals ([`Settings::journal_root`]).
    pub fn journal_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.settings.journal_root = root.into();
        self
    }
    /// Size in bytes above which the journal is compacted once everything in it was delivered
    /// (default [`journal::DEFAULT_ROTATE_BYTES`], 64 MiB). Before the next append the file is
    /// then replaced by one holding only the runs' creation records and last statuses, so a long
    /// program's journal stays about this size instead of growing with every metric point. A
    /// journal whose data has not all reached the server (server away) is never compacted.
    pub fn journal_rotate_bytes(mut self, bytes: u64) -> Self {
        self.journal_rotate_bytes = Some(bytes);
        self
    }

    /// Logs system metrics (CPU, memory, disk, network under `system/`) to every open run every
    /// `interval` ([`Settings::system_metrics`]; `MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true` turns
    /// them on from the environment). `None` turns them off.
    pub fn system_metrics(mut self, interval: Option<std::time::Duration>) -> Self {
        self.settings.system_metrics = interval.map(|i| SystemMetricsOptions {
            interval: i,
            ..self.settings.system_metrics.clone().unwrap_or_default()
        });
        self
    }

    /// Connects (starting a server if asked and needed) and starts the pipeline. The experiment
    /// is looked up (created when missing) at once when the server answers. A remote server
    /// that does not answer does not stop the program: its runs get local ids, everything is
    /// stored, and the uploader creates the experiment and the runs when the server answers
    /// (or `sapsan sync` does). A local default server is started when its port is free.
    pub fn build(self) -> Result<MlflowBackend> {
        let MlflowBackendBuilder {
            mut settings,
            tracking_uri,
            host_port,
            experiment,
            server_options,
            own_server,
            no_signal_handlers,
            journal_rotate_bytes,
        } = self;
        settings.check()?;
        let mut server = None;
        if let Some(uri) = tracking_uri {
            settings.set_tracking_uri(&uri)?;
        } else if let Some((host, port)) = host_port {
            let mut server_options = server_options;
            if server_options.mlflow_bin.is_none() {
                server_options.mlflow_bin = settings.mlflow_bin.clone();
            }
            server = ensure_server(&host, port, &server_options)?;
            let uri = match &server {
                Some(s) => s.url().to_owned(),
                None => format!("http://{}:{port}", url_host(&host)),
            };
            settings.set_tracking_uri(&uri)?;
        }
        let Some(base) = settings.tracking_uri.clone() else {
            return Err(Error::Setting {
                name: "MLFLOW_TRACKING_URI".into(),
                value: String::new(),
                reason: "no tracking URI: set MLFLOW_TRACKING_URI or give a host and port".into(),
            });
        };
        if let Some(s) = server.take() {
            if own_server {
                server = Some(s);
            } else {
                s.detach();
            }
        }
        let experiment_name = experiment
            .or_else(|| settings.experiment_name.clone())
            .unwrap_or_else(|| DEFAULT_EXPERIMENT.to_owned());
        // Reads (runs, histories, artifacts) retry by themselves; the uploader retries forever
        // with its own backoff, so its client sends each request once.
        let http = Arc::new(HttpClient::new(&base, &settings)?);
        let mut once = settings.clone();
        once.max_retries = 0;
        let http_once = Arc::new(HttpClient::new(&base, &once)?);
        // The journal first: an unwritable journal directory fails before anything is created on
        // the server.
        let store: Store = if settings.journal {
            let j = Journal::create_in(&settings.journal_root)?;
            tell_leftovers(&settings.journal_root, j.dir(), &base);
            j.into()
        } else {
            MemoryStore::new(settings.memory_limit).into()
        };
        let dir = store.dir().map(Path::to_owned);
        let cleanup = || {
            if let Some(d) = &dir {
                journal::remove_dir(d);
            }
        };
        let replayer = Arc::new(Replayer::new(http_once.clone(), store.source(), true));
        // Looked up now so a refused experiment (deleted, no permission) fails here; a server
        // that does not answer is found again by the uploader later.
        let experiment_id = match get_or_create_experiment(&http_once, &experiment_name) {
            Ok(id) => {
                replayer.know_experiment(&experiment_name, &id);
                Some(id)
            }
            Err(e) if is_transient(&e) => {
                crate::diag::notice(
                    "sapsan::upload",
                    &format!(
                        "the MLflow server at {base} does not answer ({e}); logging goes on: \
                         runs get local ids and everything is kept {}, then sent when the server \
                         answers",
                        match &dir {
                            Some(d) => format!("in the journal {}", d.display()),
                            None => "in memory (the journal is off)".to_owned(),
                        }
                    ),
                );
                None
            }
            Err(e) => {
                cleanup();
                return Err(e);
            }
        };
        let limits = Limits {
            linger: settings.linger,
            queue_capacity: settings.queue_capacity,
            flush_timeout: settings.flush_timeout,
            exit_grace: settings.exit_grace,
            request_timeout: settings.timeout,
        };
        let rotate = journal_rotate_bytes.unwrap_or(journal::DEFAULT_ROTATE_BYTES);
        let held_limit = settings.held_limit();
        let source = store.source();
        let pipeline = Pipeline::online(
            source,
            replayer,
            UploadOptions::from_settings(&settings),
            limits,
            |reader, ids| {
                SharedJournal::new(store, Some(reader))
                    .with_rotation(rotate, ids)
                    .with_held_limit(held_limit)
            },
        );
        let core = pipeline.and_then(|p| {
            Core::new(
                p,
                &experiment_name,
                settings.exit_grace,
                !no_signal_handlers,
            )
        });
        let core = core.and_then(|c| {
            c.sample_system(settings.system_metrics.clone())?;
            Ok(c)
        });
        let core = match core {
            Ok(c) => c,
            Err(e) => {
                cleanup();
                return Err(e);
            }
        };
        let known = std::sync::OnceLock::new();
        if let Some(id) = experiment_id {
            let _ = known.set(id);
        }
        Ok(MlflowBackend {
            core,
            http,
            experiment_id: known,
            server,
            s3: Default::default(),
        })
    }
}

/// Says once per program when journals of programs that died before delivering them are in
/// `root` (killed with `kill -9`, out of memory, or ended while the server was away).
fn tell_leftovers(root: &Path, mine: &Path, url: &str) {
    static TOLD: AtomicBool = AtomicBool::new(false);
    let left = journal::leftovers(root, mine);
    if left.is_empty() || TOLD.swap(true, Ordering::Relaxed) {
        return;
    }
    crate::diag::notice(
        "sapsan::journal",
        &format!(
            "{} journal(s) in {} were left by programs that ended before delivering them \
             (killed, or the server was away). Upload them, ending their open runs KILLED, with:\n    \
             sapsan sync {} --tracking-uri {url}",
            left.len(),
            root.display(),
            root.display()
        ),
    );
}

/// `host` as it goes into a URL (IPv6 literals in brackets).
fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

impl MlflowBackend {
    /// The seed's constructor: experiment `experiment` on the MLflow server at `host:port`, started
    /// there (and left running after the program ends) when the port is free. Credentials,
    /// timeouts and the journal come from the environment ([`Settings::from_env`]).
    pub fn new(experiment: &str, host: &str, port: u16) -> Result<Self> {
        Self::builder()
            .settings(Settings::from_env()?)
            .experiment(experiment)
            .host_port(host, port)
            .build()
    }

    /// A builder with default settings (nothing read from the environment; see
    /// [`MlflowBackendBuilder::from_env`]).
    pub fn builder() -> MlflowBackendBuilder {
        MlflowBackendBuilder::default()
    }

    /// Everything from the environment ([`MlflowBackendBuilder::from_env`]).
    pub fn from_env() -> Result<Self> {
        MlflowBackendBuilder::from_env()?.build()
    }
}
