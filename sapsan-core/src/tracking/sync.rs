//! Delivering a journal to an MLflow server: the [`Replayer`] applies journal records one by one
//! (creating each run exactly once, found again by its [`RUN_KEY_TAG`]), the [`Uploader`] does it
//! in the background while a backend writes the journal, and [`sync_dir`] does it once for a
//! journal left on disk (the `sapsan sync` command).
//!
//! Every step is idempotent, so a journal may be replayed any number of times: runs are looked up
//! by key before being created, the server drops exact duplicate metric points, a param logged
//! again with the same value is accepted, tags and statuses are set to the same values again.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

use super::artifacts;
use super::client::{HttpClient, Idempotency};
use super::journal::{self, RUN_KEY_TAG, Record, RunRef};
use super::mlflow::{BatchBody, create_run_request, get_or_create_experiment, map_unknown_run};
use super::queue::MAX_METRICS;
use super::settings::Settings;
use super::{Metric, RunStatus};
use crate::error::{Error, Result};

/// Whether `e` may go away by itself (server down, frozen, overloaded): retry later.
pub fn is_transient(e: &Error) -> bool {
    match e {
        Error::Connection { .. } => true,
        Error::Mlflow { status, .. } => *status == 0 || *status == 429 || *status >= 500,
        _ => false,
    }
}

/// Journal run key -> server run id, shared between the uploader and the backend (which resolves
/// `local-...` ids with it).
pub type RunIds = Arc<Mutex<HashMap<String, String>>>;

/// Applies journal records to one server.
#[derive(Debug)]
pub struct Replayer {
    http: Arc<HttpClient>,
    /// The journal directory (artifact bytes are read from it).
    dir: PathBuf,
    /// Run key -> server run id.
    runs: RunIds,
    /// Experiment name -> id.
    experiments: HashMap<String, String>,
    /// Server run id -> artifact root.
    artifact_uris: Mutex<HashMap<String, String>>,
    /// Trust the ids recorded in `Create` records (same server as when they were written).
    trust_ids: bool,
}

impl Replayer {
    /// A replayer sending the journal in `dir` with `http`. `trust_ids`: the journal was written
    /// against this very server, so run ids recorded at creation are valid (skips the look-up by
    /// key).
    pub fn new(http: Arc<HttpClient>, dir: &Path, trust_ids: bool) -> Self {
        Replayer {
            http,
            dir: dir.to_owned(),
            runs: RunIds::default(),
            experiments: HashMap::new(),
            artifact_uris: Mutex::new(HashMap::new()),
            trust_ids,
        }
    }

    /// Shares `ids` (run key -> server id) with others; keys already in it count as created.
    pub fn with_ids(mut self, ids: RunIds) -> Self {
        self.runs = ids;
        self
    }

    /// The run key -> server id map this replayer fills.
    pub fn ids(&self) -> RunIds {
        self.runs.clone()
    }

    /// Records that experiment `name` has id `id` on this server.
    pub fn know_experiment(&mut self, name: &str, id: &str) {
        self.experiments.insert(name.to_owned(), id.to_owned());
    }

    /// The server id of run key `key`, once its `Create` record has been applied.
    pub fn run_id(&self, key: &str) -> Option<String> {
        lock_ids(&self.runs).get(key).cloned()
    }

    fn experiment(&mut self, name: &str) -> Result<String> {
        if let Some(id) = self.experiments.get(name) {
            return Ok(id.clone());
        }
        let id = get_or_create_experiment(&self.http, name)?;
        self.experiments.insert(name.to_owned(), id.clone());
        Ok(id)
    }

    fn resolve(&self, run: &RunRef) -> Result<String> {
        match run {
            RunRef::Id(id) => Ok(id.clone()),
            RunRef::Key(k) => self.run_id(k).ok_or_else(|| Error::UnknownRun {
                run_id: format!("(journal run key {k}: its creation record is missing)"),
                url: self.http.base().to_owned(),
            }),
        }
    }

    /// The run with tag `sapsan.runKey = key` in experiment `exp_id`, if the server has one.
    fn find_by_key(&self, exp_id: &str, key: &str) -> Result<Option<String>> {
        let body = json!({
            "experiment_ids": [exp_id],
            "filter": format!("tags.`{RUN_KEY_TAG}` = '{key}'"),
            "max_results": 1,
            "run_view_type": "ALL",
        });
        let v = self
            .http
            .post("runs/search", &body, Idempotency::Idempotent)?;
        Ok(v.pointer("/runs/0/info/run_id")
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    /// Applies one record.
    pub fn apply(&mut self, rec: &Record) -> Result<()> {
        let Record::Create {
            key,
            experiment,
            name,
            parent,
            start_ms,
            tags,
            id,
        } = rec
        else {
            return self.apply_shared(rec);
        };
        if self.run_id(key).is_some() {
            return Ok(());
        }
        if self.trust_ids
            && let Some(id) = id
        {
            lock_ids(&self.runs).insert(key.clone(), id.clone());
            return Ok(());
        }
        let exp_id = self.experiment(experiment)?;
        if let Some(found) = self.find_by_key(&exp_id, key)? {
            lock_ids(&self.runs).insert(key.clone(), found);
            return Ok(());
        }
        let parent_tag = match parent {
            Some(p) => Some(("mlflow.parentRunId".to_owned(), self.resolve(p)?)),
            None => None,
        };
        // A lost answer is harmless: the next attempt finds the run by its key.
        let (rid, uri) = create_run_request(
            &self.http,
            &exp_id,
            name,
            *start_ms,
            tags.iter().chain(parent_tag.as_ref()),
        )?;
        if let Some(uri) = uri {
            lock_ids(&self.artifact_uris).insert(rid.clone(), uri);
        }
        lock_ids(&self.runs).insert(key.clone(), rid);
        Ok(())
    }

    /// Applies a record that creates nothing (a batch, a status, an artifact); safe to call from
    /// several threads at once. A `Create` record is refused here (use [`Replayer::apply`]).
    pub fn apply_shared(&self, rec: &Record) -> Result<()> {
        match rec {
            Record::Create { key, .. } => Err(Error::UnknownRun {
                run_id: format!("(journal run key {key}: creation must go through apply)"),
                url: self.http.base().to_owned(),
            }),
            Record::Batch {
                run,
                metrics,
                params,
                tags,
            } => {
                let run_id = self.resolve(run)?;
                let body = BatchBody::new(&run_id, metrics, params, tags);
                self.http
                    .post("runs/log-batch", &body, Idempotency::Idempotent)
                    .map_err(|e| map_unknown_run(e, &run_id, self.http.base()))?;
                Ok(())
            }
            Record::Status {
                run,
                status,
                end_ms,
            } => {
                let run_id = self.resolve(run)?;
                let mut body = json!({"run_id": run_id, "status": status});
                if let Some(t) = end_ms {
                    body["end_time"] = json!(t);
                }
                self.http
                    .post("runs/update", &body, Idempotency::Idempotent)
                    .map_err(|e| map_unknown_run(e, &run_id, self.http.base()))?;
                Ok(())
            }
            Record::Artifact { run, name, file } => {
                let run_id = self.resolve(run)?;
                let uri = self.artifact_uri(&run_id)?;
                let target = artifacts::target(self.http.base(), &run_id, &uri, name)?;
                let path = self.dir.join(file);
                let bytes = std::fs::read(&path)
                    .map_err(|e| Error::io("reading a journaled artifact", &path, e))?;
                artifacts::put(&self.http, &target, &bytes)
            }
        }
    }

    /// The artifact root of `run_id`: remembered from its creation, else read with `runs/get`.
    fn artifact_uri(&self, run_id: &str) -> Result<String> {
        if let Some(u) = lock_ids(&self.artifact_uris).get(run_id) {
            return Ok(u.clone());
        }
        let v = self
            .http
            .get("runs/get", &[("run_id", run_id)])
            .map_err(|e| map_unknown_run(e, run_id, self.http.base()))?;
        let uri = v
            .pointer("/run/info/artifact_uri")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        lock_ids(&self.artifact_uris).insert(run_id.to_owned(), uri.clone());
        Ok(uri)
    }
}

fn lock_ids<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`sync_dir`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Journal directories read.
    pub journals: usize,
    /// Records applied.
    pub records: usize,
    /// Logged items (metrics + params + tags, one per run creation or status change) delivered.
    pub items: usize,
    /// Runs created or found again.
    pub runs: usize,
    /// Records the server refused for good (an unknown run, a changed param), with the reason;
    /// they are skipped, everything else is delivered.
    pub refused: Vec<String>,
    /// Runs the journal left open that were ended KILLED (their program died).
    pub killed: usize,
    /// Journals whose open runs were left open, with the reason and what to do.
    pub left_open: Vec<String>,
    /// Journal lines that could not be read back (bad checksum or JSON): skipped, everything
    /// else was delivered. A run whose end was in one is treated as left open.
    pub damaged: Vec<journal::DamagedRecord>,
}

/// The journal directories under `dir`: `dir` itself when it holds a journal, else its
/// subdirectories that do (sorted, oldest first by name).
pub fn journal_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join(journal::JOURNAL_FILE).is_file() {
        return Ok(vec![dir.to_owned()]);
    }
    let rd =
        std::fs::read_dir(dir).map_err(|e| Error::io("reading the journal directory", dir, e))?;
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(journal::JOURNAL_FILE).is_file())
        .collect();
    out.sort();
    Ok(out)
}

/// How [`sync_dir`] treats runs a journal leaves open (no FINISHED, FAILED or KILLED recorded: the
/// program died without a chance to say, e.g. `kill -9` or out of memory).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OpenRuns {
    /// End them KILLED when the journal's program is known to be gone (it ran on this machine
    /// and its process has ended); leave them open otherwise, with a note in the report.
    #[default]
    EndIfWriterGone,
    /// End them KILLED in any case (the program ran elsewhere and is known to be over).
    End,
}

/// Which runs a journal leaves open, with the last time anything was logged to each.
fn open_runs(records: &[(Record, u64)]) -> Vec<(RunRef, i64)> {
    let mut runs: Vec<(RunRef, bool, i64)> = Vec::new();
    let mut touch = |run: &RunRef, open: Option<bool>, t: i64| {
        let i = match runs.iter().position(|(r, ..)| r == run) {
            Some(i) => i,
            None => {
                runs.push((run.clone(), false, t));
                runs.len() - 1
            }
        };
        if let Some(o) = open {
            runs[i].1 = o;
        }
        runs[i].2 = runs[i].2.max(t);
    };
    for (rec, _) in records {
        match rec {
            Record::Create { key, start_ms, .. } => {
                touch(&RunRef::Key(key.clone()), Some(true), *start_ms)
            }
            Record::Batch { run, metrics, .. } => {
                let t = metrics.iter().map(|m| m.timestamp_ms).max().unwrap_or(0);
                touch(run, None, t)
            }
            Record::Status {
                run,
                status,
                end_ms,
            } => touch(
                run,
                Some(*status == RunStatus::Running),
                end_ms.unwrap_or(0),
            ),
            Record::Artifact { .. } => {}
        }
    }
    runs.into_iter()
        .filter(|(_, open, _)| *open)
        .map(|(r, _, t)| (r, t))
        .collect()
}

/// Uploads the journal(s) in `dir` (one instance directory, or a root holding several) to the
/// server at `tracking_uri`, recreating runs (nesting, names, start and end times, statuses) that
/// the server does not have. Runs the journal leaves open are ended KILLED (at the last time
/// anything was logged to them) as `open` says. Idempotent: a second call changes nothing on the
/// server. Stops at the first transient error (server away: run it again later); records refused
/// for good are listed in [`SyncReport::refused`] and skipped, damaged journal lines in
/// [`SyncReport::damaged`].
pub fn sync_dir(
    dir: &Path,
    tracking_uri: &str,
    settings: &Settings,
    open: OpenRuns,
) -> Result<SyncReport> {
    let mut settings = settings.clone();
    settings.set_tracking_uri(tracking_uri)?;
    let http = Arc::new(HttpClient::new(tracking_uri, &settings)?);
    let dirs = journal_dirs(dir)?;
    if dirs.is_empty() {
        return Err(Error::io(
            "no journal (journal.jsonl) found in",
            dir,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let mut report = SyncReport::default();
    for d in dirs {
        let mut rep = Replayer::new(http.clone(), &d, false);
        let read = journal::read_journal(&d, 0, None)?;
        report.damaged.extend(read.damaged);
        let records = read.records;
        for (rec, _) in &records {
            match rep.apply(rec) {
                Ok(()) => {
                    report.records += 1;
                    report.items += rec.items();
                }
                Err(e) if is_transient(&e) => return Err(e),
                Err(e) => report.refused.push(format!("{}: {e}", d.display())),
            }
        }
        report.runs += lock_ids(&rep.runs).len();
        report.journals += 1;
        let left_open = open_runs(&records);
        if left_open.is_empty() {
            continue;
        }
        let origin = journal::Origin::read(&d);
        let alive = origin.as_ref().and_then(journal::Origin::alive);
        if open == OpenRuns::End || alive == Some(false) {
            for (run, last_ms) in left_open {
                let rec = Record::Status {
                    run,
                    status: RunStatus::Killed,
                    end_ms: Some(last_ms),
                };
                match rep.apply(&rec) {
                    Ok(()) => report.killed += 1,
                    Err(e) if is_transient(&e) => return Err(e),
                    Err(e) => report.refused.push(format!("{}: {e}", d.display())),
                }
            }
        } else {
            let why = match (&origin, alive) {
                (Some(o), Some(true)) => format!(
                    "its program (pid {}) is still running; sync again when it has ended",
                    o.pid
                ),
                (Some(o), _) => format!(
                    "it was written on {}; if its program is over, run `sapsan sync` with \
                     --end-open to end them KILLED",
                    o.host
                ),
                (None, _) => "its program is unknown; if it is over, run `sapsan sync` with \
                              --end-open to end them KILLED"
                    .to_owned(),
            };
            report.left_open.push(format!(
                "{}: {} run(s) have no end yet: {why}",
                d.display(),
                left_open.len()
            ));
        }
    }
    Ok(report)
}

/// How the [`Uploader`] retries, and how many requests it keeps in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadOptions {
    /// First delay after a failed attempt; doubles per attempt up to `backoff_max`.
    pub backoff_base: Duration,
    /// Longest delay between attempts.
    pub backoff_max: Duration,
    /// Log-batch requests sent at once for consecutive batch records (at least 1). Run creations,
    /// status changes and artifacts are sent one at a time, in order.
    pub concurrency: usize,
}

impl UploadOptions {
    /// The uploader's options from client settings.
    pub fn from_settings(s: &Settings) -> Self {
        UploadOptions {
            backoff_base: s.backoff_base,
            backoff_max: s.backoff_max,
            concurrency: s.send_concurrency.max(1),
        }
    }
}

/// Most batch requests sent in one concurrent window. Every connection waits for the slowest
/// request at a window's end, so a window holds a whole backlog (ten 1000-metric requests per
/// connection and more) and its end is rare; the acknowledged offset still advances request by
/// request.
const WINDOW: usize = 1024;

#[derive(Debug, Default)]
struct UpState {
    /// Journal length the uploader may read up to.
    written: u64,
    /// Offset up to which everything landed on the server.
    acked: u64,
    /// The last attempt reached the server (or none failed yet).
    healthy: bool,
    /// The last transient error, while unhealthy.
    last_error: Option<String>,
    /// First permanent (non-retryable) error since the last [`Watch::wait`].
    first_error: Option<Error>,
    stop: bool,
    gone: bool,
    /// Requests in flight.
    in_flight: usize,
    /// Failed attempts so far (transient errors).
    failures: u64,
    /// Bumped to cut the backoff waits short (see [`Watch::wait_now`]).
    nudges: u64,
}

#[derive(Debug)]
struct UpShared {
    st: Mutex<UpState>,
    cv: Condvar,
}

fn lock(m: &Mutex<UpState>) -> MutexGuard<'_, UpState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The background sender of a journal: reads what the backend wrote, applies it to the server in
/// order (consecutive log batches several at once), and retries transient failures forever with
/// capped exponential backoff (never blocking the writer).
#[derive(Debug)]
pub struct Uploader {
    shared: Arc<UpShared>,
    worker: Option<JoinHandle<()>>,
    dir: PathBuf,
}

impl Uploader {
    /// Starts the uploader thread for the journal in `dir`, sending with `replayer`.
    pub fn start(dir: &Path, replayer: Replayer, opts: UploadOptions) -> Result<Self> {
        let shared = Arc::new(UpShared {
            st: Mutex::new(UpState {
                healthy: true,
                ..UpState::default()
            }),
            cv: Condvar::new(),
        });
        let s = shared.clone();
        let d = dir.to_owned();
        let worker = std::thread::Builder::new()
            .name("sapsan-journal-uploader".into())
            .spawn(move || upload_loop(s, d, replayer, opts))
            .map_err(|e| Error::Connection {
                url: String::new(),
                reason: format!("cannot start the journal uploader thread: {e}"),
            })?;
        Ok(Uploader {
            shared,
            worker: Some(worker),
            dir: dir.to_owned(),
        })
    }

    /// A handle that tells the uploader about new journal bytes (for the journal's writers).
    pub fn notifier(&self) -> Notifier {
        Notifier(self.shared.clone())
    }

    /// A handle that waits for delivery (for whoever must wait while the backend owns the uploader).
    pub fn watch(&self) -> Watch {
        Watch(self.shared.clone())
    }

    /// See [`Watch::wait`].
    pub fn wait(&self) -> Result<()> {
        self.watch().wait()
    }

    /// Stops the thread (after its current requests); returns the offset up to which everything
    /// landed and the last transient error, if the server was away.
    pub fn stop(mut self) -> (u64, Option<String>) {
        self.halt();
        let g = lock(&self.shared.st);
        (g.acked, g.last_error.clone())
    }

    fn halt(&mut self) {
        lock(&self.shared.st).stop = true;
        self.shared.cv.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Waits for an [`Uploader`]'s delivery. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Watch(Arc<UpShared>);

impl Watch {
    /// Waits until everything written so far landed, or the server is found unreachable (then the
    /// data stays in the journal and is sent when the server is back). Returns the first permanent
    /// delivery error since the last call.
    pub fn wait(&self) -> Result<()> {
        let mut g = lock(&self.0.st);
        while g.acked < g.written && g.healthy && !g.gone {
            g = self.0.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        match g.first_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Asks the uploader to retry at once (cutting its backoff short) and waits for the outcome:
    /// until everything written so far landed, or the next attempt failed too. For reads that
    /// need the server anyway; delivery errors are left for the next [`Watch::wait`].
    pub fn wait_now(&self) {
        let mut g = lock(&self.0.st);
        g.nudges += 1;
        let failures = g.failures;
        self.0.cv.notify_all();
        while g.acked < g.written && !g.gone && (g.healthy || g.failures == failures) {
            g = self.0.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Asks the uploader to retry at once and waits until everything written so far landed, or
    /// `deadline` passed; whether it all landed. Delivery errors are left for [`Watch::wait`].
    pub fn wait_delivered(&self, deadline: std::time::Instant) -> bool {
        let mut g = lock(&self.0.st);
        g.nudges += 1;
        self.0.cv.notify_all();
        while g.acked < g.written && !g.gone {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            g = self
                .0
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        g.acked >= g.written
    }

    /// Like [`Watch::wait`], but while the server is away keeps waiting up to `grace` (plus the
    /// requests in flight at that time) for it to come back (used at the end of a program, so a
    /// server that just restarted still gets everything).
    pub fn wait_with_grace(&self, grace: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + grace;
        let mut g = lock(&self.0.st);
        while g.acked < g.written && !g.gone {
            let now = std::time::Instant::now();
            if g.healthy || g.in_flight > 0 {
                g = self.0.cv.wait(g).unwrap_or_else(|e| e.into_inner());
            } else if now < deadline {
                g = self
                    .0
                    .cv
                    .wait_timeout(g, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            } else {
                break;
            }
        }
        match g.first_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether everything written so far landed on the server.
    pub fn drained(&self) -> bool {
        let g = lock(&self.0.st);
        g.acked >= g.written
    }

    /// Whether the last attempt reached the server.
    pub fn healthy(&self) -> bool {
        lock(&self.0.st).healthy
    }

    /// The offset up to which everything landed, and the last transient error (server away).
    pub fn progress(&self) -> (u64, Option<String>) {
        let g = lock(&self.0.st);
        (g.acked, g.last_error.clone())
    }
}

/// Tells an [`Uploader`] that the journal grew. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier(Arc<UpShared>);

impl Notifier {
    /// The journal now has `len` bytes.
    pub fn written(&self, len: u64) {
        let mut g = lock(&self.0.st);
        if len > g.written {
            g.written = len;
        }
        drop(g);
        self.0.cv.notify_all();
    }

    /// Lets the journal's writer replace the file (see [`super::journal::SharedJournal`]'s
    /// rotation): when everything up to `len` — the file's current length — landed and no
    /// request is in flight, runs `swap` (which puts a compact file in its place and returns that
    /// file's length `p`) and then treats the compact file as delivered (acknowledged and written
    /// offsets both `p`). Returns `Ok(false)` without calling `swap` when delivery is behind, and
    /// `swap`'s error (offsets unchanged) when it fails.
    ///
    /// Why the uploader can never read the old file at the new offsets, or the new file at the old
    /// ones:
    /// - The uploader thread reads the file only for a range `[acked, written)` it took under the
    ///   state lock with `acked < written`, and `acked` reaches the end of that range only after
    ///   every record in it was read and sent (artifact bytes are read while the request is in
    ///   flight, before it is acknowledged). So `acked == written` means no read is going on and
    ///   none starts until `written` grows.
    /// - Only the journal's writer makes `written` grow, and it calls this under its own lock,
    ///   which also covers its [`Notifier::written`] calls (so no notice of an older, longer file
    ///   can arrive after the swap), and `written == len` means the last append was announced.
    /// - `swap` runs with the state lock held, so the uploader cannot take a range while the files
    ///   change places; when it gets the lock again the offsets already describe the new file.
    pub fn restart_if_delivered(
        &self,
        len: u64,
        swap: impl FnOnce() -> Result<u64>,
    ) -> Result<bool> {
        let mut g = lock(&self.0.st);
        if g.acked != g.written || g.written != len || g.in_flight > 0 {
            return Ok(false);
        }
        let p = swap()?;
        g.acked = p;
        g.written = p;
        drop(g);
        self.0.cv.notify_all();
        Ok(true)
    }
}

#[cfg(test)]
impl Notifier {
    /// A notifier with no uploader thread behind it (tests play the uploader).
    pub(crate) fn detached() -> Self {
        Notifier(Arc::new(UpShared {
            st: Mutex::new(UpState {
                healthy: true,
                ..UpState::default()
            }),
            cv: Condvar::new(),
        }))
    }

    /// Acknowledges everything up to `end`, as the uploader does.
    pub(crate) fn ack_for_test(&self, end: u64) {
        ack(&self.0, end);
    }

    /// The acknowledged and written offsets.
    pub(crate) fn offsets(&self) -> (u64, u64) {
        let g = lock(&self.0.st);
        (g.acked, g.written)
    }
}

/// Records that everything up to `end` landed.
fn ack(shared: &UpShared, end: u64) {
    let mut g = lock(&shared.st);
    if end > g.acked {
        g.acked = end;
    }
    drop(g);
    shared.cv.notify_all();
}

/// Sends one record with `f`, retrying transient failures with backoff until it lands or is
/// refused for good (reported, skipped). `false`: the uploader was stopped first.
fn send(shared: &UpShared, opts: &UploadOptions, mut f: impl FnMut() -> Result<()>) -> bool {
    let mut attempt = 0u32;
    loop {
        lock(&shared.st).in_flight += 1;
        let res = f();
        let mut g = lock(&shared.st);
        g.in_flight -= 1;
        match res {
            Ok(()) => {
                g.healthy = true;
                g.last_error = None;
                return true;
            }
            Err(e) if is_transient(&e) => {
                let wait = opts
                    .backoff_base
                    .checked_mul(1u32 << attempt.min(16))
                    .unwrap_or(opts.backoff_max)
                    .min(opts.backoff_max);
                attempt += 1;
                g.healthy = false;
                g.last_error = Some(e.to_string());
                g.failures += 1;
                shared.cv.notify_all();
                let deadline = std::time::Instant::now() + wait;
                let nudges = g.nudges;
                loop {
                    if g.stop {
                        return false;
                    }
                    let now = std::time::Instant::now();
                    if g.nudges != nudges || now >= deadline {
                        break;
                    }
                    g = shared
                        .cv
                        .wait_timeout(g, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            Err(e) => {
                // Permanent (bad request, unknown run): report it, skip the record.
                g.first_error.get_or_insert(e);
                return true;
            }
        }
    }
}

/// The end of the window of batch records starting at `i` that may be sent at once: consecutive
/// batches, at most [`WINDOW`], no tag of a run set twice (a later value must not be overtaken).
fn window_end(recs: &[(Record, u64)], i: usize) -> usize {
    let mut seen = HashSet::new();
    let mut j = i;
    while j < recs.len() && j - i < WINDOW {
        let Record::Batch { run, tags, .. } = &recs[j].0 else {
            break;
        };
        if !tags.iter().all(|(k, _)| seen.insert((run, k.as_str()))) {
            break;
        }
        j += 1;
    }
    j.max(i + 1)
}

/// Sends the batch records `recs` over `opts.concurrency` connections; the acknowledged offset
/// advances over the longest delivered prefix. `false`: the uploader was stopped first.
fn send_window(
    shared: &UpShared,
    rep: &Replayer,
    opts: &UploadOptions,
    recs: &[(Record, u64)],
) -> bool {
    let n = recs.len();
    let next = AtomicUsize::new(0);
    let stopped = AtomicBool::new(false);
    let done = Mutex::new((vec![false; n], 0usize));
    std::thread::scope(|s| {
        for _ in 0..opts.concurrency.clamp(1, n) {
            s.spawn(|| {
                while !stopped.load(Ordering::Relaxed) {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some((rec, _)) = recs.get(k) else { break };
                    if !send(shared, opts, || rep.apply_shared(rec)) {
                        stopped.store(true, Ordering::Relaxed);
                        break;
                    }
                    let mut d = lock_ids(&done);
                    d.0[k] = true;
                    let mut p = d.1;
                    while p < n && d.0[p] {
                        p += 1;
                    }
                    if p > d.1 {
                        d.1 = p;
                        ack(shared, recs[p - 1].1);
                    }
                }
            });
        }
    });
    !stopped.load(Ordering::Relaxed)
}

/// Whether `rec` is a batch of metrics only (no params, no tags), which [`coalesce`] may merge.
fn metrics_only(rec: &Record) -> bool {
    matches!(rec, Record::Batch { metrics, params, tags, .. }
        if !metrics.is_empty() && params.is_empty() && tags.is_empty())
}

/// Re-packs runs of consecutive metrics-only batch records of one run into requests of
/// [`MAX_METRICS`] metrics (the last one of a run of records may be smaller); other records pass
/// through unchanged. The log queue cuts a batch short at the end of every linger round, so a
/// backlog read from the journal holds many part-filled batches; sending each alone costs the
/// server a request apiece.
///
/// `from` is the journal offset the records start at. Each output record carries the offset up to
/// which the journal is delivered once it and everything before it landed: the end of the last
/// input record whose metrics are all in it or earlier (metrics of a record split over two
/// requests count only when both landed; replaying them is harmless, the server drops exact
/// duplicate points).
fn coalesce(recs: Vec<(Record, u64)>, from: u64) -> Vec<(Record, u64)> {
    let mut out = Vec::with_capacity(recs.len());
    let mut covered = from;
    let mut it = recs.into_iter().peekable();
    while let Some((rec, end)) = it.next() {
        if !metrics_only(&rec) {
            covered = end;
            out.push((rec, end));
            continue;
        }
        let Record::Batch { run, metrics, .. } = rec else {
            continue;
        };
        // The group: this record and the metrics-only batches of the same run right after it.
        let mut group = metrics;
        let mut ends = vec![(group.len(), end)];
        while let Some((next, _)) = it.peek() {
            let same_run = matches!(next, Record::Batch { run: r, .. } if *r == run);
            if !(same_run && metrics_only(next)) {
                break;
            }
            if let Some((Record::Batch { metrics, .. }, e)) = it.next() {
                group.extend(metrics);
                ends.push((group.len(), e));
            }
        }
        let mut sent = 0;
        let mut ends = ends.into_iter().peekable();
        let mut points = group.into_iter();
        loop {
            let chunk: Vec<Metric> = points.by_ref().take(MAX_METRICS).collect();
            if chunk.is_empty() {
                break;
            }
            sent += chunk.len();
            while let Some((_, e)) = ends.next_if(|(n, _)| *n <= sent) {
                covered = e;
            }
            out.push((
                Record::Batch {
                    run: run.clone(),
                    metrics: chunk,
                    params: Vec::new(),
                    tags: Vec::new(),
                },
                covered,
            ));
        }
    }
    out
}

fn upload_loop(shared: Arc<UpShared>, dir: PathBuf, mut rep: Replayer, opts: UploadOptions) {
    'outer: loop {
        let (from, upto) = {
            let mut g = lock(&shared.st);
            while g.acked >= g.written && !g.stop {
                g = shared.cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            if g.acked >= g.written {
                break;
            }
            (g.acked, g.written)
        };
        let recs = match journal::read_journal(&dir, from, Some(upto)) {
            Ok(r) => {
                // Skipped: waiting on a record that cannot be read would stall all after it.
                if let Some(d) = r.damaged.into_iter().next() {
                    lock(&shared.st).first_error.get_or_insert(Error::Io {
                        action: "reading the journal (a damaged record was skipped)",
                        path: d.path.clone(),
                        source: std::io::Error::other(d.place_and_reason()),
                    });
                }
                r.records
            }
            Err(e) => {
                let mut g = lock(&shared.st);
                g.first_error.get_or_insert(e);
                break;
            }
        };
        if recs.is_empty() {
            // Only damaged lines (as after the last record of the range before), or nothing
            // complete (cannot happen: the writer syncs whole lines first). No compaction can
            // have come between: that needs everything acknowledged.
            ack(&shared, upto);
            continue;
        }
        let recs = coalesce(recs, from);
        let mut i = 0;
        while i < recs.len() {
            let j = window_end(&recs, i);
            if j > i + 1 {
                if !send_window(&shared, &rep, &opts, &recs[i..j]) {
                    break 'outer;
                }
            } else {
                let (rec, end) = &recs[i];
                if !send(&shared, &opts, || rep.apply(rec)) {
                    break 'outer;
                }
                ack(&shared, *end);
            }
            i = j;
        }
    }
    lock(&shared.st).gone = true;
    shared.cv.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(key: &str, value: f64, timestamp_ms: i64, step: i64) -> Metric {
        Metric {
            key: key.into(),
            value,
            timestamp_ms,
            step,
        }
    }

    fn batch(run: &str, n: usize, first: usize) -> Record {
        Record::Batch {
            run: RunRef::Key(run.into()),
            metrics: (first..first + n)
                .map(|i| metric("m", i as f64, 1, i as i64))
                .collect(),
            params: vec![],
            tags: vec![],
        }
    }

    fn values(rec: &Record) -> Vec<f64> {
        match rec {
            Record::Batch { metrics, .. } => metrics.iter().map(|m| m.value).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn coalesce_repacks_part_filled_batches_and_acks_whole_records_only() {
        let status = Record::Status {
            run: RunRef::Key("a".into()),
            status: RunStatus::Finished,
            end_ms: Some(1),
        };
        let with_param = Record::Batch {
            run: RunRef::Key("a".into()),
            metrics: vec![],
            params: vec![("p".into(), "1".into())],
            tags: vec![],
        };
        // Rounds of the log queue: 1000 + 400, 1000 + 300 metrics of run a; then a param batch,
        // 200 metrics of run b, 500 of run a, a status.
        let recs = vec![
            (batch("a", 1000, 0), 110),
            (batch("a", 400, 1000), 120),
            (batch("a", 1000, 1400), 130),
            (batch("a", 300, 2400), 140),
            (with_param.clone(), 150),
            (batch("b", 200, 0), 160),
            (batch("a", 500, 2700), 170),
            (status.clone(), 180),
        ];
        let out = coalesce(recs, 100);
        let sizes: Vec<usize> = out.iter().map(|(r, _)| r.items()).collect();
        assert_eq!(sizes, [1000, 1000, 700, 1, 200, 500, 1]);
        let offsets: Vec<u64> = out.iter().map(|(_, o)| *o).collect();
        // The second request holds the 400 of the second record and 600 of the third: only the
        // second record is complete after it.
        assert_eq!(offsets, [110, 120, 140, 150, 160, 170, 180]);
        // Every metric of run a once, in order.
        let a: Vec<f64> = out[..3].iter().flat_map(|(r, _)| values(r)).collect();
        assert_eq!(a, (0..2700).map(|i| i as f64).collect::<Vec<_>>());
        assert_eq!(out[3].0, with_param);
        assert_eq!(out[5].0, batch("a", 500, 2700));
        assert_eq!(out[6].0, status);
        assert!(matches!(&out[4].0, Record::Batch { run: RunRef::Key(k), .. } if k == "b"));
    }

    #[test]
    fn coalesce_keeps_a_lone_record_and_its_offset() {
        let out = coalesce(vec![(batch("a", 3, 0), 40)], 10);
        assert_eq!(out, vec![(batch("a", 3, 0), 40)]);
        assert!(coalesce(Vec::new(), 10).is_empty());
    }

    #[test]
    fn a_journal_batch_goes_to_the_wire_in_the_log_batch_format() {
        let rec = Record::Batch {
            run: RunRef::Key("k".into()),
            metrics: vec![
                metric("loss", 0.5, 7, 2),
                metric("loss", f64::NAN, 7, 3),
                metric("loss", f64::NEG_INFINITY, 7, 4),
            ],
            params: vec![("lr".to_owned(), "0.1".to_owned())],
            tags: vec![("t".to_owned(), "v".to_owned())],
        };
        // As the replayer gets it: written to the journal and read back.
        let line = serde_json::to_vec(&rec).unwrap();
        let Record::Batch {
            metrics,
            params,
            tags,
            ..
        } = serde_json::from_slice(&line).unwrap()
        else {
            panic!("not a batch")
        };
        let v = serde_json::to_value(BatchBody::new("r1", &metrics, &params, &tags)).unwrap();
        assert_eq!(
            v,
            json!({
                "run_id": "r1",
                "metrics": [
                    {"key": "loss", "value": 0.5, "timestamp": 7, "step": 2},
                    {"key": "loss", "value": "NaN", "timestamp": 7, "step": 3},
                    {"key": "loss", "value": "-Infinity", "timestamp": 7, "step": 4},
                ],
                "params": [{"key": "lr", "value": "0.1"}],
                "tags": [{"key": "t", "value": "v"}],
            })
        );
    }

    #[test]
    fn offsets_restart_only_when_everything_landed_and_nothing_is_in_flight() {
        let n = Notifier::detached();
        let called = std::cell::Cell::new(0);
        let swap = |p: u64| {
            let called = &called;
            move || {
                called.set(called.get() + 1);
                Ok(p)
            }
        };
        n.written(100);
        // Behind: not swapped.
        assert!(!n.restart_if_delivered(100, swap(30)).unwrap());
        n.ack_for_test(60);
        assert!(!n.restart_if_delivered(100, swap(30)).unwrap());
        n.ack_for_test(100);
        // A request in flight.
        lock(&n.0.st).in_flight = 1;
        assert!(!n.restart_if_delivered(100, swap(30)).unwrap());
        lock(&n.0.st).in_flight = 0;
        // The file is longer than the uploader was told (an append not yet announced).
        assert!(!n.restart_if_delivered(120, swap(30)).unwrap());
        assert_eq!(called.get(), 0);
        assert_eq!(n.offsets(), (100, 100));
        // A failed swap leaves the offsets alone.
        let failed = n.restart_if_delivered(100, || {
            Err(Error::io(
                "compacting the journal",
                "/x",
                std::io::Error::other("disk full"),
            ))
        });
        assert!(failed.is_err());
        assert_eq!(n.offsets(), (100, 100));
        // Delivered: the compact file counts as delivered and the uploader goes on after it.
        assert!(n.restart_if_delivered(100, swap(30)).unwrap());
        assert_eq!(called.get(), 1);
        assert_eq!(n.offsets(), (30, 30));
        assert!(Watch(n.0.clone()).drained());
        n.written(45);
        assert_eq!(n.offsets(), (30, 45));
        assert!(!Watch(n.0.clone()).drained());
    }

    fn tagged(run: &str, tags: &[&str]) -> (Record, u64) {
        let rec = Record::Batch {
            run: RunRef::Key(run.into()),
            metrics: vec![metric("m", 1.0, 0, 0)],
            params: vec![],
            tags: tags.iter().map(|t| (t.to_string(), "v".into())).collect(),
        };
        (rec, 0)
    }

    #[test]
    fn windows_hold_consecutive_batches_without_a_tag_set_twice() {
        let status = Record::Status {
            run: RunRef::Key("a".into()),
            status: RunStatus::Finished,
            end_ms: Some(1),
        };
        let recs = vec![
            tagged("a", &["t"]),
            tagged("b", &["t"]), // another run's tag: fine
            tagged("a", &[]),
            tagged("a", &["t"]), // a's tag again: a new window
            tagged("a", &[]),
            (status, 0), // alone, in order
            tagged("a", &[]),
        ];
        assert_eq!(window_end(&recs, 0), 3);
        assert_eq!(window_end(&recs, 3), 5);
        assert_eq!(window_end(&recs, 5), 6);
        assert_eq!(window_end(&recs, 6), 7);
        let many: Vec<_> = (0..WINDOW + 5).map(|_| tagged("a", &[])).collect();
        assert_eq!(window_end(&many, 0), WINDOW);
    }

    /// A loopback stand-in for MLflow that answers `{}` to every request and keeps the bodies.
    fn recording_server() -> (String, Arc<Mutex<Vec<Value>>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
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
                if let Ok(v) = serde_json::from_slice(&body) {
                    lock_ids(&seen).push(v);
                }
                let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                              Content-Length: 2\r\nConnection: close\r\n\r\n{}";
                let _ = reader.get_mut().write_all(answer.as_bytes());
            }
        });
        (format!("http://{addr}"), bodies)
    }

    #[test]
    fn the_uploader_skips_a_damaged_record_and_reports_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut j = journal::Journal::create_in(tmp.path()).unwrap();
        let batch = |step: i64| Record::Batch {
            run: RunRef::Id("r1".into()),
            metrics: vec![metric("loss", 0.5, 7, step)],
            params: vec![("p".into(), step.to_string())],
            tags: vec![],
        };
        let mut recs: Vec<Record> = (0..4).map(batch).collect();
        recs.push(Record::Status {
            run: RunRef::Id("r1".into()),
            status: RunStatus::Finished,
            end_ms: Some(9),
        });
        let len = j.append(&recs).unwrap();
        // Damage the second record on disk (a changed digit; the newline stays), and the last.
        let path = j.dir().join(journal::JOURNAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = journal::read_records(j.dir(), 0, None).unwrap()[0].1 as usize;
        let at = second
            + bytes[second..]
                .windows(7)
                .position(|w| w == b"\"step\":")
                .unwrap();
        bytes[at + 7] = b'8';
        let at = bytes.windows(8).position(|w| w == b"FINISHED").unwrap();
        bytes[at] = b'X';
        std::fs::write(&path, &bytes).unwrap();

        let (url, bodies) = recording_server();
        let http = Arc::new(HttpClient::new(&url, &Settings::default()).unwrap());
        let rep = Replayer::new(http, j.dir(), true);
        let up = Uploader::start(
            j.dir(),
            rep,
            UploadOptions::from_settings(&Settings::default()),
        )
        .unwrap();
        up.notifier().written(len);
        let err = up.wait().unwrap_err().to_string();
        assert!(
            err.contains("damaged record was skipped")
                && err.contains(&format!("at byte {second}"))
                && err.contains("run r1")
                && err.contains("checksum mismatch"),
            "{err}"
        );
        assert!(
            up.watch().drained(),
            "delivery went on past the damaged records"
        );
        let mut steps: Vec<i64> = lock_ids(&bodies)
            .iter()
            .flat_map(|b| b["metrics"].as_array().cloned().unwrap_or_default())
            .map(|m| m["step"].as_i64().unwrap())
            .collect();
        steps.sort(); // batches go out several at once
        assert_eq!(steps, [0, 2, 3]);
        let statuses = lock_ids(&bodies)
            .iter()
            .filter(|b| b.get("status").is_some())
            .count();
        assert_eq!(statuses, 0, "the status record was the damaged last one");
        assert_eq!(up.stop().0, len);
    }
}
