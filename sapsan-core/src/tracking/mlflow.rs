//! [`MlflowBackend`]: the [`Backend`] that tracks runs on an MLflow server over its REST API.
//!
//! Logging calls validate, remember, enqueue and return in microseconds; a background thread sends
//! log-batch requests (see [`super::queue`]). Run creation, status changes and artifacts are sent
//! at once. Each backend has its own run stack and its own view of the runs it logged to.
//!
//! By default (see [`MlflowBackendBuilder::journal`]) everything, run creations and status changes
//! included, first goes to a journal on disk ([`super::journal`]) and a background uploader
//! ([`super::sync::Uploader`]) sends it, retrying while the server is away. A run started while the
//! server is away gets a local id (`local-...`) and is created on the server later, exactly once.
//! `flush` and status changes wait for delivery only while the server answers.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use super::artifacts;
use super::client::{HttpClient, Idempotency};
use super::journal::{self, Journal, JournalSink, Record, SharedJournal};
use super::queue::{Deliver, LogQueue, RunBatch};
use super::server::{MlflowServer, ServerOptions, ensure_server};
use super::settings::Settings;
use super::signals::{self, KILL_GRACE, SignalTarget};
use super::sync::{Replayer, RunIds, UploadOptions, Uploader, Watch, is_transient};
use super::validate;
use super::{Backend, LogItem, Metric, RunData, RunStack, RunStatus, now_ms};
use crate::error::{Error, Result};

/// Experiment name used when none is given (the seed's default).
pub const DEFAULT_EXPERIMENT: &str = "experiment";
/// Host used when none is given (the seed's default).
pub const DEFAULT_HOST: &str = "localhost";
/// Port used when none is given (the seed's default).
pub const DEFAULT_PORT: u16 = 5000;

/// A run as the server reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    /// Run id.
    pub run_id: String,
    /// Run name.
    pub run_name: String,
    /// Experiment id.
    pub experiment_id: String,
    /// Status (`None` for a status this client does not know, such as `SCHEDULED`).
    pub status: Option<RunStatus>,
    /// Start time, ms since the Unix epoch.
    pub start_time: Option<i64>,
    /// End time, ms since the Unix epoch (kept by MLflow when a run is resumed).
    pub end_time: Option<i64>,
    /// Where the run's artifacts live.
    pub artifact_uri: String,
    /// `active` or `deleted`.
    pub lifecycle_stage: String,
    /// Params, latest metrics and tags.
    pub data: RunData,
}

/// One entry of an artifact listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFile {
    /// Path relative to the run's artifact root.
    pub path: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Size in bytes (files only).
    pub file_size: Option<u64>,
}

/// Latest point of a metric, ordered the way MLflow picks its "latest" value.
#[derive(Debug, Clone, Copy)]
struct Latest {
    step: i64,
    ts: i64,
    value: f64,
}

impl Latest {
    fn replaced_by(&self, m: &Metric) -> bool {
        (m.step, m.timestamp_ms) > (self.step, self.ts)
            || ((m.step, m.timestamp_ms) == (self.step, self.ts)
                && m.value.partial_cmp(&self.value) != Some(std::cmp::Ordering::Less))
    }
}

/// What a backend knows about one run (this one, and the offline backend).
#[derive(Debug, Default)]
pub(crate) struct RunState {
    /// Created by this backend: everything it holds was logged here.
    created_here: bool,
    /// RUNNING as far as this backend knows (closed as FINISHED on drop).
    pub(crate) open: bool,
    artifact_uri: Option<String>,
    params: HashMap<String, String>,
    metrics: HashMap<String, Latest>,
    tags: HashMap<String, String>,
}

impl RunState {
    /// A run just created by this backend, open, with its creation tags.
    pub(crate) fn created(tags: impl Iterator<Item = (String, String)>) -> Self {
        RunState {
            created_here: true,
            open: true,
            tags: tags.collect(),
            ..RunState::default()
        }
    }

    /// Records `item` of run `run_id` (latest metric by step then time, params, tags). `false`:
    /// a param logged again with the same value, nothing to send. A changed param is an error.
    pub(crate) fn record(&mut self, run_id: &str, item: &LogItem) -> Result<bool> {
        match item {
            LogItem::Metric(m) => {
                let new = Latest {
                    step: m.step,
                    ts: m.timestamp_ms,
                    value: m.value,
                };
                match self.metrics.get_mut(&m.key) {
                    Some(l) if l.replaced_by(m) => *l = new,
                    Some(_) => {}
                    None => {
                        self.metrics.insert(m.key.clone(), new);
                    }
                }
            }
            LogItem::Param { key, value } => {
                let old = self.params.get(key).map(String::as_str);
                if !validate::param_change(run_id, old, key, value)? {
                    return Ok(false);
                }
                self.params.insert(key.clone(), value.clone());
            }
            LogItem::Tag { key, value } => {
                self.tags.insert(key.clone(), value.clone());
            }
        }
        Ok(true)
    }

    pub(crate) fn data(&self) -> RunData {
        RunData {
            params: self
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            metrics: self
                .metrics
                .iter()
                .map(|(k, l)| (k.clone(), l.value))
                .collect(),
            tags: self
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// The MLflow tracking backend. See the [module docs](self).
///
/// Dropping it delivers everything queued, ends the runs it left open as FINISHED, and stops a
/// server it owns. SIGINT or SIGTERM while it is alive end its open runs as KILLED before the
/// process dies of the signal (see [`super::signals`]; opt out with
/// [`MlflowBackendBuilder::handle_signals`]). Create and drop it outside any async runtime (it uses a blocking HTTP client).
pub struct MlflowBackend {
    http: Arc<HttpClient>,
    experiment_name: String,
    experiment_id: String,
    system_tags: Vec<(String, String)>,
    state: Arc<Mutex<HashMap<String, RunState>>>,
    queue: Arc<LogQueue>,
    runs: RunStack,
    server: Option<MlflowServer>,
    /// What the SIGINT/SIGTERM path reaches through a weak reference (see [`super::signals`]).
    _signal_hook: Option<Arc<dyn SignalTarget>>,
    /// The durable path (`None`: in-memory queue straight to HTTP).
    durable: Option<Durable>,
}

/// The journal and its background uploader.
#[derive(Debug)]
struct Durable {
    delivery: Arc<Delivery>,
    uploader: Option<Uploader>,
}

/// What the backend, its drop and the signal path share about the journal's delivery.
#[derive(Debug)]
struct Delivery {
    journal: Arc<SharedJournal>,
    watch: Watch,
    /// A client that does not retry (run creation; the uploader retries by itself).
    http_once: Arc<HttpClient>,
    /// Journal run key -> server run id, filled by the uploader.
    ids: RunIds,
    experiment_name: String,
    experiment_id: String,
    /// How long the end of the program waits for an away server before leaving the journal.
    exit_grace: Duration,
}

impl Delivery {
    /// The server id of a run created while the server was away, once the uploader created it.
    fn created_id(&self, local_id: &str) -> Option<String> {
        let key = local_id.strip_prefix(LOCAL_RUN_PREFIX)?;
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Journals `status` for the runs in `open`, waits (up to the grace) for the server to take
    /// everything, sends what the disk refused straight to it, then removes the fully delivered
    /// journal or says on stderr where it is kept and how to upload it.
    fn finish(&self, open: &[String], status: RunStatus, grace: Duration) {
        let end_ms = Some(now_ms());
        let recs: Vec<Record> = open
            .iter()
            .map(|run| Record::Status {
                run: self.journal.run_ref(run),
                status,
                end_ms,
            })
            .collect();
        if let Err(e) = self.journal.append(&recs) {
            eprintln!("sapsan: could not journal the end of the open runs: {e}");
        }
        if let Err(e) = self.watch.wait_with_grace(grace) {
            eprintln!("sapsan: some logged data was refused by MLflow: {e}");
        }
        let drained = self.watch.drained();
        // Records the disk refused follow everything on disk: sent only once that has landed.
        let (held, why) = self.journal.take_held();
        let mut undelivered = &held[..];
        if drained && !held.is_empty() {
            let dir = self.journal.dir();
            let mut rep =
                Replayer::new(self.http_once.clone(), &dir, true).with_ids(self.ids.clone());
            rep.know_experiment(&self.experiment_name, &self.experiment_id);
            while let Some((r, rest)) = undelivered.split_first() {
                match rep.apply(r) {
                    Ok(()) => {}
                    Err(e) if is_transient(&e) => break,
                    Err(e) => eprintln!("sapsan: some logged data was refused by MLflow: {e}"),
                }
                undelivered = rest;
            }
        }
        let lost: usize = undelivered.iter().map(Record::items).sum();
        let (acked, last_error) = self.watch.progress();
        finish_journal(
            &self.journal.dir(),
            drained && undelivered.is_empty(),
            acked,
            last_error,
            self.http_once.base(),
            (lost > 0).then(|| (lost, why.unwrap_or_default())),
        );
    }
}

impl std::fmt::Debug for MlflowBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlflowBackend")
            .field("tracking_uri", &self.http.base())
            .field("experiment_name", &self.experiment_name)
            .field("experiment_id", &self.experiment_id)
            .field("runs", &self.runs)
            .field("server", &self.server)
            .finish()
    }
}

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
    use_journal: Option<bool>,
    journal_root: Option<PathBuf>,
    journal_rotate_bytes: Option<u64>,
}

impl MlflowBackendBuilder {
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
    /// Client settings (credentials, TLS, timeouts, retries, queue behaviour).
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

    /// `true` (default): SIGINT and SIGTERM mark this backend's open runs KILLED before the process
    /// dies of the signal (handlers installed with the first backend; see [`super::signals`]).
    /// `false`: this backend is left out, and builds no handlers.
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.no_signal_handlers = !on;
        self
    }

    /// `true` (default): everything goes to a journal on disk first and a background uploader
    /// delivers it, surviving server outages (see [`super::journal`]; `sapsan sync` uploads what
    /// is left). `false`: logged data lives in memory until sent. Without this call the
    /// environment decides: `SAPSAN_JOURNAL=0` turns the journal off.
    pub fn journal(mut self, on: bool) -> Self {
        self.use_journal = Some(on);
        self
    }
    /// The root directory for journals (default: `SAPSAN_JOURNAL_DIR`, else `./.sapsan-journal`).
    pub fn journal_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.journal_root = Some(root.into());
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

    /// Connects (starting a server if asked and needed), resolves the experiment (get-or-create),
    /// and starts the background sender.
    pub fn build(self) -> Result<MlflowBackend> {
        let MlflowBackendBuilder {
            mut settings,
            tracking_uri,
            host_port,
            experiment,
            server_options,
            own_server,
            no_signal_handlers,
            use_journal,
            journal_root,
            journal_rotate_bytes,
        } = self;
        settings.check()?;
        let mut server = None;
        if let Some(uri) = tracking_uri {
            settings.set_tracking_uri(&uri)?;
        } else if let Some((host, port)) = host_port {
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
        let http = Arc::new(HttpClient::new(&base, &settings)?);
        let use_journal = use_journal.unwrap_or_else(journal::enabled_by_env);
        // The journal first: an unwritable journal directory fails before anything is created on
        // the server (the directory is removed again if a later step fails).
        let journal = if use_journal {
            let root = journal_root.unwrap_or_else(journal::journal_root);
            let j = Journal::create_in(&root)?;
            tell_leftovers(&root, j.dir(), &base);
            Some(j)
        } else {
            None
        };
        let cleanup = |j: &Option<Journal>| {
            if let Some(j) = j {
                journal::remove_dir(j.dir());
            }
        };
        let experiment_id = match get_or_create_experiment(&http, &experiment_name) {
            Ok(id) => id,
            Err(e) => {
                cleanup(&journal);
                return Err(e);
            }
        };
        let (queue, durable) = match journal {
            None => {
                let sender = HttpSender {
                    http: http.clone(),
                    concurrency: settings.send_concurrency,
                };
                (LogQueue::start(sender, settings.linger)?, None)
            }
            Some(j) => {
                let dir = j.dir().to_owned();
                let started = (|| {
                    // The uploader retries by itself, forever, without blocking anyone.
                    let mut once = settings.clone();
                    once.max_retries = 0;
                    let http_once = Arc::new(HttpClient::new(&base, &once)?);
                    let mut rep = Replayer::new(http_once.clone(), &dir, true);
                    rep.know_experiment(&experiment_name, &experiment_id);
                    let ids = rep.ids();
                    let uploader =
                        Uploader::start(&dir, rep, UploadOptions::from_settings(&settings))?;
                    let rotate = journal_rotate_bytes.unwrap_or(journal::DEFAULT_ROTATE_BYTES);
                    let shared = Arc::new(
                        SharedJournal::new(j, Some(uploader.notifier()))
                            .with_rotation(rotate, ids.clone()),
                    );
                    let queue = LogQueue::start(JournalSink(shared.clone()), settings.linger)?;
                    let delivery = Delivery {
                        journal: shared,
                        watch: uploader.watch(),
                        http_once,
                        ids,
                        experiment_name: experiment_name.clone(),
                        experiment_id: experiment_id.clone(),
                        exit_grace: (settings.backoff_max * 3).min(Duration::from_secs(10)),
                    };
                    let durable = Durable {
                        delivery: Arc::new(delivery),
                        uploader: Some(uploader),
                    };
                    Ok::<_, Error>((queue, Some(durable)))
                })();
                match started {
                    Ok(qd) => qd,
                    Err(e) => {
                        journal::remove_dir(&dir);
                        return Err(e);
                    }
                }
            }
        };
        let queue = Arc::new(queue);
        let state = Arc::new(Mutex::new(HashMap::new()));
        let signal_hook = if no_signal_handlers {
            None
        } else {
            let hook: Arc<dyn SignalTarget> = Arc::new(SignalHook {
                http: http.clone(),
                state: state.clone(),
                queue: queue.clone(),
                delivery: durable.as_ref().map(|d| d.delivery.clone()),
            });
            signals::register(&hook)?;
            Some(hook)
        };
        Ok(MlflowBackend {
            http,
            experiment_name,
            experiment_id,
            system_tags: system_tags(),
            state,
            queue,
            runs: RunStack::default(),
            server,
            _signal_hook: signal_hook,
            durable,
        })
    }
}

/// Says once per program when journals of programs that died before delivering them are in
/// `root` (killed with `kill -9`, out of memory, or ended while the server was away).
fn tell_leftovers(root: &Path, mine: &Path, url: &str) {
    static TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let left = journal::leftovers(root, mine);
    if left.is_empty() || TOLD.swap(true, Ordering::Relaxed) {
        return;
    }
    eprintln!(
        "sapsan: {} journal(s) in {} were left by programs that ended before delivering them \
         (killed, or the server was away). Upload them, ending their open runs KILLED, with:\n    \
         sapsan sync {} --tracking-uri {url}",
        left.len(),
        root.display(),
        root.display()
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
    /// there (and left running after the program ends) when the port is free.
    pub fn new(experiment: &str, host: &str, port: u16) -> Result<Self> {
        Self::builder()
            .experiment(experiment)
            .host_port(host, port)
            .build()
    }

    /// A builder with default settings.
    pub fn builder() -> MlflowBackendBuilder {
        MlflowBackendBuilder::default()
    }

    /// Settings from the `MLFLOW_*` environment variables. With `MLFLOW_TRACKING_URI` set that server
    /// is used as is; otherwise the seed's `localhost:5000`, started there when free.
    pub fn from_env() -> Result<Self> {
        let settings = Settings::from_env()?;
        let b = Self::builder().settings(settings.clone());
        match settings.tracking_uri {
            Some(uri) => b.tracking_uri(uri),
            None => b.host_port(DEFAULT_HOST, DEFAULT_PORT),
        }
        .build()
    }

    /// HTTP requests this backend has sent so far (every attempt, retries included; the journal
    /// uploader's too).
    pub fn http_requests(&self) -> u64 {
        let uploader = self
            .durable
            .as_ref()
            .map_or(0, |d| d.delivery.http_once.requests());
        self.http.requests() + uploader
    }

    /// The tracking URI (never with credentials).
    pub fn tracking_uri(&self) -> &str {
        self.http.base()
    }

    /// Name of the experiment runs go to.
    pub fn experiment_name(&self) -> &str {
        &self.experiment_name
    }

    /// Id of the experiment runs go to.
    pub fn experiment_id(&self) -> &str {
        &self.experiment_id
    }

    /// The server this backend started and owns, if any.
    pub fn server(&self) -> Option<&MlflowServer> {
        self.server.as_ref()
    }

    fn state(&self) -> MutexGuard<'_, HashMap<String, RunState>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unknown_run(&self, run_id: &str, e: Error) -> Error {
        map_unknown_run(e, run_id, self.http.base())
    }

    /// Waits up to `timeout` until everything logged so far is on the server (asking the journal
    /// uploader to try at once, as when the server just came back); whether it all landed. Unlike
    /// [`Backend::flush`], which returns as soon as the data is on disk while the server is away,
    /// this waits for the server (before shutting a machine down, or after an outage). Without a
    /// journal it is a flush.
    pub fn wait_delivered(&self, timeout: Duration) -> Result<bool> {
        let deadline = std::time::Instant::now() + timeout;
        self.queue.flush()?;
        Ok(match &self.durable {
            Some(d) => d.delivery.watch.wait_delivered(deadline),
            None => true,
        })
    }

    /// The id the server knows run `run_id` by: `run_id` itself, or for a run started while the
    /// server was away (`local-...`) the id it was created with later (asking the uploader to
    /// try the server at once, and waiting for it). [`Error::RunNotUploaded`] while it is not on the server yet.
    pub fn server_run_id(&self, run_id: &str) -> Result<String> {
        let Some(d) = self.durable.as_ref().map(|d| &d.delivery) else {
            return Ok(run_id.to_owned());
        };
        if !run_id.starts_with(LOCAL_RUN_PREFIX) {
            return Ok(run_id.to_owned());
        }
        if let Some(id) = d.created_id(run_id) {
            return Ok(id);
        }
        let _ = self.queue.flush();
        d.watch.wait_now();
        d.created_id(run_id).ok_or_else(|| Error::RunNotUploaded {
            run_id: run_id.to_owned(),
            url: self.http.base().to_owned(),
            journal: d.journal.dir(),
        })
    }

    /// Reads a run from the server (`runs/get`); `local-...` ids are resolved first.
    pub fn get_run(&self, run_id: &str) -> Result<RunInfo> {
        let run_id = self.server_run_id(run_id)?;
        let run_id = run_id.as_str();
        let v = self
            .http
            .get("runs/get", &[("run_id", run_id)])
            .map_err(|e| self.unknown_run(run_id, e))?;
        Ok(parse_run(v.get("run").unwrap_or(&Value::Null)))
    }

    /// Runs of this backend's experiment matching `filter` (MLflow search syntax, `""` for all),
    /// newest first; every page is read.
    pub fn search_runs(&self, filter: &str) -> Result<Vec<RunInfo>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut body = json!({
                "experiment_ids": [self.experiment_id],
                "filter": filter,
                "max_results": 1000,
                "order_by": ["attributes.start_time DESC"],
            });
            if let Some(t) = &token {
                body["page_token"] = json!(t);
            }
            let v = self
                .http
                .post("runs/search", &body, Idempotency::Idempotent)?;
            if let Some(runs) = v.get("runs").and_then(Value::as_array) {
                out.extend(runs.iter().map(parse_run));
            }
            match v.get("next_page_token").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    /// Every logged point of metric `key` of `run_id` (all pages), as the server stores them.
    pub fn metric_history(&self, run_id: &str, key: &str) -> Result<Vec<Metric>> {
        validate::key(key)?;
        let run_id = self.server_run_id(run_id)?;
        let run_id = run_id.as_str();
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let mut q = vec![
                ("run_id", run_id),
                ("metric_key", key),
                ("max_results", "25000"),
            ];
            if !token.is_empty() {
                q.push(("page_token", &token));
            }
            let v = self
                .http
                .get("metrics/get-history", &q)
                .map_err(|e| self.unknown_run(run_id, e))?;
            if let Some(ms) = v.get("metrics").and_then(Value::as_array) {
                out.extend(ms.iter().map(parse_metric));
            }
            match v.get("next_page_token").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => token = t.to_owned(),
                _ => return Ok(out),
            }
        }
    }

    /// Sets tag `key` of `run_id` at once (`runs/set-tag`), bypassing the queue.
    pub fn set_run_tag(&self, run_id: &str, key: &str, value: &str) -> Result<()> {
        validate::key(key)?;
        validate::tag_value(key, value)?;
        let server_id = self.server_run_id(run_id)?;
        self.http
            .post(
                "runs/set-tag",
                &json!({"run_id": server_id, "key": key, "value": value}),
                Idempotency::Idempotent,
            )
            .map_err(|e| self.unknown_run(run_id, e))?;
        self.state()
            .entry(run_id.to_owned())
            .or_default()
            .tags
            .insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// The artifact URI of `run_id`: remembered from its creation, else read once with `runs/get`.
    fn artifact_uri(&self, run_id: &str) -> Result<String> {
        if let Some(u) = self
            .state()
            .get(run_id)
            .and_then(|s| s.artifact_uri.clone())
        {
            return Ok(u);
        }
        let uri = self.get_run(run_id)?.artifact_uri;
        self.state()
            .entry(run_id.to_owned())
            .or_default()
            .artifact_uri = Some(uri.clone());
        Ok(uri)
    }

    /// Where to put artifact `name` of `run_id`: a proxy URL or a local path.
    fn artifact_target(&self, run_id: &str, name: &str) -> Result<artifacts::Target> {
        artifacts::check_name(name)?;
        let uri = self.artifact_uri(run_id)?;
        artifacts::target(self.http.base(), run_id, &uri, name)
    }

    /// Lists the artifacts of `run_id` under `path` (`None`: the root).
    pub fn list_artifacts(&self, run_id: &str, path: Option<&str>) -> Result<Vec<ArtifactFile>> {
        let run_id = self.server_run_id(run_id)?;
        let run_id = run_id.as_str();
        let mut q = vec![("run_id", run_id)];
        if let Some(p) = path {
            artifacts::check_name(p)?;
            q.push(("path", p));
        }
        let v = self
            .http
            .get("artifacts/list", &q)
            .map_err(|e| self.unknown_run(run_id, e))?;
        Ok(v.get("files")
            .and_then(Value::as_array)
            .map(|fs| {
                fs.iter()
                    .map(|f| ArtifactFile {
                        path: f
                            .get("path")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        is_dir: f.get("is_dir").and_then(Value::as_bool).unwrap_or(false),
                        file_size: f.get("file_size").and_then(as_i64).map(|n| n as u64),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The bytes of artifact `name` of `run_id`.
    pub fn download_artifact(&self, run_id: &str, name: &str) -> Result<Vec<u8>> {
        match self.artifact_target(run_id, name)? {
            artifacts::Target::Url(url) => self.http.get_bytes(&url, &[]),
            artifacts::Target::Path(dir, name) => {
                let p = dir.join(name);
                std::fs::read(&p).map_err(|e| Error::io("reading artifact", p, e))
            }
        }
    }

    /// Sends `runs/create` with `http`; the new run's id and artifact URI.
    fn create_on_server(
        &self,
        http: &HttpClient,
        run_name: &str,
        start: i64,
        parent_tag: Option<&(String, String)>,
        tags: &[(String, String)],
    ) -> Result<(String, Option<String>)> {
        create_run_request(
            http,
            &self.experiment_id,
            run_name,
            start,
            tags.iter().chain(parent_tag),
        )
    }

    /// Records a run this backend created.
    fn remember_created(
        &self,
        run_id: &str,
        artifact_uri: Option<String>,
        tags: impl Iterator<Item = (String, String)>,
    ) {
        let mut state = RunState::created(tags);
        state.artifact_uri = artifact_uri;
        self.state().insert(run_id.to_owned(), state);
    }

    /// The journal directory of this backend (`None` without a journal). It is removed when the
    /// backend is dropped with everything delivered.
    pub fn journal_dir(&self) -> Option<PathBuf> {
        self.durable.as_ref().map(|d| d.delivery.journal.dir())
    }

    /// Sends `runs/update` for `run_id` (no flush) and records whether it is open.
    fn update_status(&self, run_id: &str, status: RunStatus) -> Result<()> {
        send_status(&self.http, &self.state, run_id, status)
    }
}

/// Sends `runs/update` for `run_id` (no flush) and records in `state` whether it is open.
fn send_status(
    http: &HttpClient,
    state: &Mutex<HashMap<String, RunState>>,
    run_id: &str,
    status: RunStatus,
) -> Result<()> {
    let mut body = json!({"run_id": run_id, "status": status.as_str()});
    if status != RunStatus::Running {
        body["end_time"] = json!(now_ms());
    }
    http.post("runs/update", &body, Idempotency::Idempotent)
        .map_err(|e| map_unknown_run(e, run_id, http.base()))?;
    state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(run_id.to_owned())
        .or_default()
        .open = status == RunStatus::Running;
    Ok(())
}

/// The parts of a backend the signal path needs; held strongly by the backend only.
struct SignalHook {
    http: Arc<HttpClient>,
    state: Arc<Mutex<HashMap<String, RunState>>>,
    queue: Arc<LogQueue>,
    delivery: Option<Arc<Delivery>>,
}

impl SignalTarget for SignalHook {
    fn kill_open_runs(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = self.queue.flush() {
            problems.push(format!(
                "some logged data could not be delivered to MLflow: {e}"
            ));
        }
        let open: Vec<String> = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, s)| s.open)
            .map(|(id, _)| id.clone())
            .collect();
        if let Some(d) = &self.delivery {
            // KILLED goes into the journal behind everything logged; the journal is kept (and
            // the program says so) when the server does not take it within the grace.
            d.finish(&open, RunStatus::Killed, d.exit_grace.min(KILL_GRACE / 5));
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for run in &open {
                st.entry(run.clone()).or_default().open = false;
            }
            return problems;
        }
        for run in open {
            if let Err(e) = send_status(&self.http, &self.state, &run, RunStatus::Killed) {
                problems.push(format!("could not mark MLflow run {run} KILLED: {e}"));
            }
        }
        problems
    }
}

impl Backend for MlflowBackend {
    fn create_run(&self, run_name: &str, parent: Option<&str>) -> Result<String> {
        let start = now_ms();
        let mut tags: Vec<(String, String)> = Vec::with_capacity(self.system_tags.len() + 3);
        tags.push(("mlflow.runName".into(), run_name.to_owned()));
        tags.extend(self.system_tags.iter().cloned());
        let key = self.durable.as_ref().map(|_| journal::fresh_key());
        if let Some(k) = &key {
            tags.push((journal::RUN_KEY_TAG.into(), k.clone()));
        }
        // A parent created while the server was away has a server id once the uploader made it.
        let parent_on_server: Option<String> = parent.and_then(|p| {
            if !p.starts_with(LOCAL_RUN_PREFIX) {
                return Some(p.to_owned());
            }
            self.durable.as_ref()?.delivery.created_id(p)
        });
        let parent_tag = parent.map(|p| {
            let id = parent_on_server.clone().unwrap_or_else(|| p.to_owned());
            ("mlflow.parentRunId".to_owned(), id)
        });
        for (k, v) in tags.iter().chain(parent_tag.iter()) {
            validate::tag_value(k, v)?;
        }
        let (Some(d), Some(key)) = (&self.durable, key) else {
            let (run_id, artifact_uri) =
                self.create_on_server(&self.http, run_name, start, parent_tag.as_ref(), &tags)?;
            self.remember_created(&run_id, artifact_uri, tags.into_iter().chain(parent_tag));
            return Ok(run_id);
        };
        // A parent not yet on the server: the child is created lazily after it, by the uploader.
        let parent_is_local = parent.is_some() && parent_on_server.is_none();
        let created = if parent_is_local {
            None
        } else {
            match self.create_on_server(
                &d.delivery.http_once,
                run_name,
                start,
                parent_tag.as_ref(),
                &tags,
            ) {
                Ok(c) => Some(c),
                // Server away: journal the run now, create it when the server is back.
                Err(e) if is_transient(&e) => None,
                Err(e) => return Err(e),
            }
        };
        let (run_id, artifact_uri, server_id) = match created {
            Some((id, uri)) => (id.clone(), uri, Some(id)),
            None => (format!("{LOCAL_RUN_PREFIX}{key}"), None, None),
        };
        let j = &d.delivery.journal;
        j.append(&[Record::Create {
            key: key.clone(),
            experiment: self.experiment_name.clone(),
            name: run_name.to_owned(),
            parent: parent.map(|p| j.run_ref(p)),
            start_ms: start,
            tags: tags.clone(),
            id: server_id,
        }])?;
        j.set_key(&run_id, &key);
        self.remember_created(&run_id, artifact_uri, tags.into_iter().chain(parent_tag));
        Ok(run_id)
    }

    fn enqueue(&self, run_id: &str, item: LogItem) -> Result<()> {
        validate::item(&item)?;
        let send = match self.state().get_mut(run_id) {
            Some(run) => run.record(run_id, &item)?,
            None => {
                let mut run = RunState::default();
                let send = run.record(run_id, &item)?;
                self.state().insert(run_id.to_owned(), run);
                send
            }
        };
        if send {
            self.queue.push(run_id, item);
        }
        Ok(())
    }

    fn upload_artifact(&self, run_id: &str, name: &str, bytes: &[u8]) -> Result<()> {
        if let Some(d) = &self.durable {
            artifacts::check_name(name)?;
            match d.delivery.journal.append_artifact(run_id, name, bytes) {
                // Sent by the uploader; wait as for a flush (not while the server is away).
                Ok(()) => return d.delivery.watch.wait(),
                // The bytes did not fit on the journal's disk: send them at once if the run is
                // on the server, else say why nothing was kept.
                Err(e) => {
                    if run_id.starts_with(LOCAL_RUN_PREFIX)
                        && d.delivery.created_id(run_id).is_none()
                    {
                        return Err(e);
                    }
                    eprintln!("sapsan: {e}; sending artifact {name:?} to MLflow directly");
                }
            }
        }
        let target = self.artifact_target(run_id, name)?;
        artifacts::put(&self.http, &target, bytes)
    }

    fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()> {
        if let Some(d) = &self.durable {
            // Into the journal in order (queued items first); sent by the uploader.
            let flushed = self.queue.flush();
            let end_ms = (status != RunStatus::Running).then(now_ms);
            let j = &d.delivery.journal;
            let journaled = j.append(&[Record::Status {
                run: j.run_ref(run_id),
                status,
                end_ms,
            }]);
            self.state().entry(run_id.to_owned()).or_default().open = status == RunStatus::Running;
            let delivered = match &d.uploader {
                Some(u) => u.wait(),
                None => Ok(()),
            };
            return flushed.and(journaled).and(delivered);
        }
        let flushed = if status == RunStatus::Running {
            Ok(())
        } else {
            self.queue.flush()
        };
        // The status is set even when delivery failed; the delivery error is reported first.
        let updated = self.update_status(run_id, status);
        flushed.and(updated)
    }

    fn flush(&self) -> Result<()> {
        let flushed = self.queue.flush();
        match self.durable.as_ref().and_then(|d| d.uploader.as_ref()) {
            Some(u) => flushed.and(u.wait()),
            None => flushed,
        }
    }

    fn run_data(&self, run_id: &str) -> Result<RunData> {
        {
            let st = self.state();
            if let Some(s) = st.get(run_id)
                && s.created_here
            {
                return Ok(s.data());
            }
        }
        let mut data = self.get_run(run_id)?.data;
        if let Some(s) = self.state().get(run_id) {
            let mine = s.data();
            data.params.extend(mine.params);
            data.metrics.extend(mine.metrics);
            data.tags.extend(mine.tags);
        }
        Ok(data)
    }

    fn runs(&self) -> &RunStack {
        &self.runs
    }
}

impl Drop for MlflowBackend {
    /// Delivers what is queued, ends the runs left open as FINISHED, stops an owned server.
    fn drop(&mut self) {
        if let Err(e) = self.queue.flush() {
            eprintln!("sapsan: some logged data could not be delivered to MLflow: {e}");
        }
        let open: Vec<String> = self
            .state()
            .iter()
            .filter(|(_, s)| s.open)
            .map(|(id, _)| id.clone())
            .collect();
        if let Some(d) = &mut self.durable {
            d.delivery
                .finish(&open, RunStatus::Finished, d.delivery.exit_grace);
            if let Some(up) = d.uploader.take() {
                up.stop();
            }
        } else {
            for run in open {
                if let Err(e) = self.update_status(&run, RunStatus::Finished) {
                    eprintln!("sapsan: could not end MLflow run {run}: {e}");
                }
            }
        }
        self.runs.drain();
        if let Some(s) = self.server.take()
            && let Err(e) = s.stop()
        {
            eprintln!("sapsan: could not stop the MLflow server: {e}");
        }
    }
}

/// Run ids handed out for runs created while the server was away (created on it lazily).
pub const LOCAL_RUN_PREFIX: &str = "local-";

/// At the end of a backend: removes a fully delivered journal, or says where the rest is kept.
/// `lost`: items the disk refused that could not be sent either, and why the disk refused them.
fn finish_journal(
    dir: &Path,
    drained: bool,
    acked: u64,
    last_error: Option<String>,
    url: &str,
    lost: Option<(usize, String)>,
) {
    if drained {
        journal::remove_dir(dir);
        return;
    }
    let (records, items) = match journal::read_records(dir, acked, None) {
        Ok(r) => (r.len(), r.iter().map(|(r, _)| r.items()).sum::<usize>()),
        Err(_) => (0, 0),
    };
    eprintln!(
        "sapsan: the MLflow server at {url} is unreachable ({}); {items} logged items \
         ({records} journal records) are kept in {}. Upload them when it is back with:\n    \
         sapsan sync {} --tracking-uri {url}",
        last_error.as_deref().unwrap_or("not answering"),
        dir.display(),
        dir.display(),
    );
    if let Some((n, why)) = lost {
        eprintln!(
            "sapsan: {n} more logged items are lost: the journal's disk refused them ({why}) \
             and the server could not take them either"
        );
    }
}

/// Sends `runs/create` (never re-sent on a lost answer); the new run's id and artifact URI.
pub(crate) fn create_run_request<'t>(
    http: &HttpClient,
    experiment_id: &str,
    run_name: &str,
    start_ms: i64,
    tags: impl Iterator<Item = &'t (String, String)>,
) -> Result<(String, Option<String>)> {
    let body = json!({
        "experiment_id": experiment_id,
        "run_name": run_name,
        "start_time": start_ms,
        "tags": tags.map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
    });
    let v = http.post("runs/create", &body, Idempotency::CreatesOnce)?;
    let info = v.pointer("/run/info").unwrap_or(&Value::Null);
    let run_id = info
        .get("run_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::Mlflow {
            method: "POST".into(),
            url: http.api_url("runs/create"),
            status: 200,
            error_code: "BAD_RESPONSE".into(),
            message: "the answer has no run.info.run_id".into(),
        })?
        .to_owned();
    let uri = info
        .get("artifact_uri")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((run_id, uri))
}

/// Maps the server's RESOURCE_DOES_NOT_EXIST for a run to [`Error::UnknownRun`].
/// Also maps "The run <id> must be in the 'active' state. Current state is deleted." to
/// [`Error::DeletedRun`].
pub(crate) fn map_unknown_run(e: Error, run_id: &str, base: &str) -> Error {
    match e {
        Error::Mlflow { ref error_code, .. } if error_code == "RESOURCE_DOES_NOT_EXIST" => {
            Error::UnknownRun {
                run_id: run_id.to_owned(),
                url: base.to_owned(),
            }
        }
        Error::Mlflow {
            ref error_code,
            ref message,
            ..
        } if error_code == "INVALID_PARAMETER_VALUE"
            && message.contains(&format!("run {run_id} must be in the 'active' state"))
            && message.contains("deleted") =>
        {
            Error::DeletedRun {
                run_id: run_id.to_owned(),
                url: base.to_owned(),
            }
        }
        other => other,
    }
}

/// Finds experiment `name`, creating it when missing; safe against a concurrent creator.
pub(crate) fn get_or_create_experiment(http: &HttpClient, name: &str) -> Result<String> {
    let by_name = || -> Result<Option<String>> {
        match http.get("experiments/get-by-name", &[("experiment_name", name)]) {
            Ok(v) => {
                let exp = v.get("experiment").unwrap_or(&Value::Null);
                if exp.get("lifecycle_stage").and_then(Value::as_str) == Some("deleted") {
                    return Err(Error::DeletedExperiment {
                        name: name.to_owned(),
                        url: http.base().to_owned(),
                    });
                }
                Ok(exp
                    .get("experiment_id")
                    .and_then(as_string)
                    .filter(|s| !s.is_empty()))
            }
            Err(e) if e.mlflow_error_code() == Some("RESOURCE_DOES_NOT_EXIST") => Ok(None),
            Err(e) => Err(e),
        }
    };
    if let Some(id) = by_name()? {
        return Ok(id);
    }
    match http.post(
        "experiments/create",
        &json!({"name": name}),
        Idempotency::Idempotent,
    ) {
        Ok(v) => v
            .get("experiment_id")
            .and_then(as_string)
            .ok_or_else(|| Error::Mlflow {
                method: "POST".into(),
                url: http.api_url("experiments/create"),
                status: 200,
                error_code: "BAD_RESPONSE".into(),
                message: "the answer has no experiment_id".into(),
            }),
        // Someone else created it in between (or it is deleted): read it again.
        Err(e) if e.mlflow_error_code() == Some("RESOURCE_ALREADY_EXISTS") => by_name()?.ok_or(e),
        Err(e) => Err(e),
    }
}

/// The system tags the Python client sets, computed once per backend.
pub(crate) fn system_tags() -> Vec<(String, String)> {
    let mut tags = vec![
        ("mlflow.user".to_owned(), user_name()),
        ("mlflow.source.type".to_owned(), "LOCAL".to_owned()),
    ];
    let source = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .or_else(|| std::env::args().next())
        .unwrap_or_default();
    if !source.is_empty() {
        tags.push(("mlflow.source.name".to_owned(), source));
    }
    if let Some(commit) = git_commit() {
        tags.push(("mlflow.source.git.commit".to_owned(), commit));
    }
    tags
}

fn user_name() -> String {
    for var in ["LOGNAME", "USER", "LNAME", "USERNAME"] {
        if let Ok(u) = std::env::var(var)
            && !u.is_empty()
        {
            return u;
        }
    }
    std::process::Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The commit checked out in the current directory's git repository, if any.
fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && s.len() >= 40 && s.chars().all(|c| c.is_ascii_hexdigit())).then_some(s)
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An int64 field, sent as a number or (protobuf JSON) as a string.
fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn str_field(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn parse_metric(m: &Value) -> Metric {
    Metric {
        key: str_field(m, "key"),
        value: m
            .get("value")
            .and_then(validate::decode_f64)
            .unwrap_or(f64::NAN),
        timestamp_ms: m.get("timestamp").and_then(as_i64).unwrap_or(0),
        step: m.get("step").and_then(as_i64).unwrap_or(0),
    }
}

fn parse_status(s: &str) -> Option<RunStatus> {
    match s {
        "RUNNING" => Some(RunStatus::Running),
        "FINISHED" => Some(RunStatus::Finished),
        "FAILED" => Some(RunStatus::Failed),
        "KILLED" => Some(RunStatus::Killed),
        _ => None,
    }
}

fn kv_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|kv| (str_field(kv, "key"), str_field(kv, "value")))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_run(run: &Value) -> RunInfo {
    let info = run.get("info").unwrap_or(&Value::Null);
    let data = run.get("data").unwrap_or(&Value::Null);
    RunInfo {
        run_id: str_field(info, "run_id"),
        run_name: str_field(info, "run_name"),
        experiment_id: info
            .get("experiment_id")
            .and_then(as_string)
            .unwrap_or_default(),
        status: info
            .get("status")
            .and_then(Value::as_str)
            .and_then(parse_status),
        start_time: info.get("start_time").and_then(as_i64),
        end_time: info.get("end_time").and_then(as_i64),
        artifact_uri: str_field(info, "artifact_uri"),
        lifecycle_stage: str_field(info, "lifecycle_stage"),
        data: RunData {
            params: kv_map(data.get("params")),
            tags: kv_map(data.get("tags")),
            metrics: data
                .get("metrics")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|m| {
                            let m = parse_metric(m);
                            (m.key, m.value)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        },
    }
}

/// Delivers batches as log-batch requests, several at once over separate connections.
struct HttpSender {
    http: Arc<HttpClient>,
    concurrency: usize,
}

#[derive(Serialize)]
struct WireKv<'a> {
    key: &'a str,
    value: &'a str,
}

/// A log-batch request body, serialized straight from borrowed data (no `serde_json::Value` and
/// no copy per metric: [`Metric`] serializes as MLflow's metric).
#[derive(Serialize)]
pub(crate) struct BatchBody<'a> {
    run_id: &'a str,
    metrics: &'a [Metric],
    params: Vec<WireKv<'a>>,
    tags: Vec<WireKv<'a>>,
}

impl<'a> BatchBody<'a> {
    /// The body for `metrics`, `params` and `tags` of `run_id`.
    pub(crate) fn new(
        run_id: &'a str,
        metrics: &'a [Metric],
        params: &'a [(String, String)],
        tags: &'a [(String, String)],
    ) -> Self {
        let kv = |v: &'a [(String, String)]| -> Vec<WireKv<'a>> {
            v.iter().map(|(k, v)| WireKv { key: k, value: v }).collect()
        };
        BatchBody {
            run_id,
            metrics,
            params: kv(params),
            tags: kv(tags),
        }
    }
}

/// The log-batch request body for `b`.
fn batch_body(b: &RunBatch) -> BatchBody<'_> {
    BatchBody::new(&b.run_id, &b.metrics, &b.params, &b.tags)
}

impl HttpSender {
    fn send_one(&self, b: &RunBatch) -> Result<()> {
        self.http
            .post("runs/log-batch", &batch_body(b), Idempotency::Idempotent)
            .map(drop)
            .map_err(|e| map_unknown_run(e, &b.run_id, self.http.base()))
    }
}

impl Deliver for HttpSender {
    fn deliver(&mut self, batches: Vec<RunBatch>) -> Result<()> {
        let n = batches.len();
        let workers = self.concurrency.min(n);
        if workers <= 1 {
            let mut first = Ok(());
            for b in &batches {
                if let Err(e) = self.send_one(b) {
                    first = first.and(Err(e));
                }
            }
            return first;
        }
        let next = AtomicUsize::new(0);
        let first_err: Mutex<Option<Error>> = Mutex::new(None);
        let this = &*self;
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(b) = batches.get(i) else { break };
                        if let Err(e) = this.send_one(b) {
                            first_err
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                        }
                    }
                });
            }
        });
        match first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_batch_encodes_nan_and_inf_as_strings() {
        let b = RunBatch {
            run_id: Arc::from("r1"),
            metrics: [1.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY]
                .iter()
                .enumerate()
                .map(|(i, &v)| Metric {
                    key: "m".into(),
                    value: v,
                    timestamp_ms: 7,
                    step: i as i64,
                })
                .collect(),
            params: vec![("p".into(), "1".into())],
            tags: vec![],
        };
        let v = serde_json::to_value(batch_body(&b)).unwrap();
        assert_eq!(
            v,
            json!({
                "run_id": "r1",
                "metrics": [
                    {"key": "m", "value": 1.5, "timestamp": 7, "step": 0},
                    {"key": "m", "value": "NaN", "timestamp": 7, "step": 1},
                    {"key": "m", "value": "Infinity", "timestamp": 7, "step": 2},
                    {"key": "m", "value": "-Infinity", "timestamp": 7, "step": 3},
                ],
                "params": [{"key": "p", "value": "1"}],
                "tags": [],
            })
        );
    }

    #[test]
    fn parses_runs_with_strings_or_numbers() {
        let v = json!({
            "info": {"run_id": "abc", "run_name": "train", "experiment_id": "3", "status": "FINISHED",
                     "start_time": "17", "end_time": 18, "artifact_uri": "mlflow-artifacts:/3/abc/artifacts",
                     "lifecycle_stage": "active"},
            "data": {"metrics": [{"key": "l", "value": "NaN", "timestamp": 1, "step": 0},
                                 {"key": "i", "value": 1.7976931348623157e308, "timestamp": 1}],
                     "params": [{"key": "p", "value": "1"}],
                     "tags": [{"key": "mlflow.runName", "value": "train"}]}
        });
        let r = parse_run(&v);
        assert_eq!(r.run_id, "abc");
        assert_eq!(r.status, Some(RunStatus::Finished));
        assert_eq!((r.start_time, r.end_time), (Some(17), Some(18)));
        assert!(r.data.metrics["l"].is_nan());
        assert_eq!(r.data.metrics["i"], f64::MAX);
        assert_eq!(r.data.params["p"], "1");
        assert_eq!(r.data.tags["mlflow.runName"], "train");
        let empty = parse_run(&Value::Null);
        assert_eq!(empty.status, None);
    }

    #[test]
    fn unknown_run_mapping_only_for_missing_resources() {
        let e = super::super::client::map_error(
            "GET",
            "u",
            404,
            r#"{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"Run with id=x not found"}"#,
        );
        assert!(matches!(
            map_unknown_run(e, "x", "http://h"),
            Error::UnknownRun { ref run_id, .. } if run_id == "x"
        ));
        let e = super::super::client::map_error("GET", "u", 400, "{}");
        assert!(matches!(
            map_unknown_run(e, "x", "http://h"),
            Error::Mlflow { .. }
        ));
        let deleted = r#"{"error_code":"INVALID_PARAMETER_VALUE","message":"The run x must be in the 'active' state. Current state is deleted."}"#;
        let e = super::super::client::map_error("POST", "u", 400, deleted);
        assert!(matches!(
            map_unknown_run(e, "x", "http://h"),
            Error::DeletedRun { ref run_id, .. } if run_id == "x"
        ));
        // Another run's message is not this run's deletion.
        let e = super::super::client::map_error("POST", "u", 400, deleted);
        assert!(matches!(
            map_unknown_run(e, "y", "http://h"),
            Error::Mlflow { .. }
        ));
    }

    #[test]
    fn latest_metric_follows_step_then_time() {
        let l = Latest {
            step: 2,
            ts: 10,
            value: 1.0,
        };
        let m = |step, ts, value| Metric {
            key: "k".into(),
            value,
            timestamp_ms: ts,
            step,
        };
        assert!(l.replaced_by(&m(3, 0, 0.0)));
        assert!(!l.replaced_by(&m(1, 99, 0.0)));
        assert!(l.replaced_by(&m(2, 11, 0.0)));
        assert!(l.replaced_by(&m(2, 10, 2.0)));
        assert!(!l.replaced_by(&m(2, 10, 0.5)));
    }

    #[test]
    fn system_tags_are_complete() {
        let t: BTreeMap<_, _> = system_tags().into_iter().collect();
        assert_eq!(t["mlflow.source.type"], "LOCAL");
        assert!(!t["mlflow.user"].is_empty());
        assert!(!t["mlflow.source.name"].is_empty());
        // The tests run inside the project's git checkout.
        assert_eq!(t["mlflow.source.git.commit"].len(), 40);
    }
}
