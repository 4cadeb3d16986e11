//! The append-only journal: every run creation, status change and batch of metrics, params and
//! tags is written to local disk (JSON lines, fsync at each append) before it goes to the server.
//!
//! One directory per backend instance (`<root>/<ms>-<pid>-<n>/journal.jsonl`), where the root is
//! `SAPSAN_JOURNAL_DIR` or `./.sapsan-journal`. A backend removes its directory once everything in
//! it has landed on the server; when the server stayed away, the directory stays and the program
//! says so on exit. `sapsan sync <dir>` (see [`crate::tracking::upload`]) uploads it later.
//!
//! Runs are named in the journal by a client-generated *key* (also stored on the run as the tag
//! [`RUN_KEY_TAG`]), so a run is created on a server exactly once: before creating, the uploader
//! looks for a run with that tag.
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::tracking::Metric;
use crate::tracking::rest::settings::DEFAULT_JOURNAL_ROOT;

mod store;
pub use store::{MemoryStore, Source, Store};

/// Journal run key -> server run id, filled by the uploader as it creates runs (the backend
/// resolves `local-...` ids with it; a compacted journal records the ids).
pub type RunIds = Arc<crate::shared::Shared<HashMap<String, String>>>;

/// The journal's reader as its writer sees it (the uploader): told of every append, and asked
/// before the file is compacted.
pub trait Reader: std::fmt::Debug + Send + Sync {
    /// The store now ends at offset `len`.
    fn written(&self, len: u64);
    /// When everything up to `len` (the file's current length) was delivered and no request is
    /// in flight, runs `swap` (which puts a compact file in its place and returns its length
    /// `p`) and then treats the compact file as delivered. `Ok(false)` without calling `swap`
    /// when delivery is behind; `swap`'s error (offsets unchanged) when it fails.
    fn restart_if_delivered(&self, len: u64, swap: &mut dyn FnMut() -> Result<u64>)
    -> Result<bool>;
}

/// File name of the journal inside its directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// File beside the journal saying which program on which machine writes it ([`Origin`]).
pub const ORIGIN_FILE: &str = "writer.json";
/// Subdirectory of a journal directory holding the bytes of journaled artifacts.
pub const BLOB_DIR: &str = "artifacts";
/// Temporary file a compacted journal is written to before it replaces [`JOURNAL_FILE`].
pub const ROTATE_TMP_FILE: &str = "journal.jsonl.tmp";
/// Size above which a fully delivered journal is compacted by default (64 MiB; see
/// [`SharedJournal::with_rotation`]).
pub const DEFAULT_ROTATE_BYTES: u64 = 64 << 20;
/// Tag holding a run's client-generated key (exactly-once run creation).
pub const RUN_KEY_TAG: &str = "sapsan.runKey";
/// A run as the journal names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunRef {
    /// A run created through the journal, by its client-generated key.
    Key(String),
    /// A run that existed before (resumed by its server id).
    Id(String),
}

/// A metric value in JSON: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JsonF64(pub f64);

impl Serialize for JsonF64 {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_finite() {
            s.serialize_f64(v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if v > 0.0 {
            s.serialize_str("Infinity")
        } else {
            s.serialize_str("-Infinity")
        }
    }
}

impl<'de> Deserialize<'de> for JsonF64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        crate::tracking::validate::decode_f64(&v)
            .map(JsonF64)
            .ok_or_else(|| serde::de::Error::custom(format!("not a metric value: {v}")))
    }
}

/// One metric point in the journal: `[key, value, timestamp_ms, step]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JMetric(pub String, pub JsonF64, pub i64, pub i64);

impl From<&Metric> for JMetric {
    fn from(m: &Metric) -> Self {
        JMetric(m.key.clone(), JsonF64(m.value), m.timestamp_ms, m.step)
    }
}

impl JMetric {
    /// Back to a [`Metric`].
    pub fn to_metric(&self) -> Metric {
        Metric {
            key: self.0.clone(),
            value: self.1.0,
            timestamp_ms: self.2,
            step: self.3,
        }
    }
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    /// A run was started.
    Create {
        /// Client-generated key of the run.
        key: String,
        /// Experiment name.
        experiment: String,
        /// Run name.
        name: String,
        /// Parent run (nesting), if any.
        parent: Option<RunRef>,
        /// Start time, ms since the Unix epoch.
        start_ms: i64,
        /// Tags set at creation (system tags, run name, run key; not the parent id).
        tags: Vec<(String, String)>,
        /// The id the server gave the run, when it was created at once (`None`: created lazily).
        id: Option<String>,
    },
    /// Metrics, params and tags of one run (within the server's log-batch limits).
    Batch {
        /// The run.
        run: RunRef,
        /// Metric points.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        metrics: Vec<JMetric>,
        /// Params (key, value).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        params: Vec<(String, String)>,
        /// Tags (key, value).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tags: Vec<(String, String)>,
    },
    /// The status of a run changed.
    Status {
        /// The run.
        run: RunRef,
        /// `RUNNING`, `FINISHED`, `FAILED` or `KILLED`.
        status: String,
        /// End time for a terminal status.
        end_ms: Option<i64>,
    },
    /// An artifact of a run; its bytes are in `file` (relative to the journal directory).
    Artifact {
        /// The run.
        run: RunRef,
        /// Artifact path inside the run (already checked by [`crate::tracking::rest::artifacts::check_name`]).
        name: String,
        /// The file holding the bytes, relative to the journal directory.
        file: String,
    },
}

impl Record {
    /// How many logged items the record stands for (metrics + params + tags; 1 for the others).
    pub fn items(&self) -> usize {
        match self {
            Record::Batch {
                metrics,
                params,
                tags,
                ..
            } => metrics.len() + params.len() + tags.len(),
            _ => 1,
        }
    }
}

/// Removes a journal instance directory (delivered, or never used), and the default root
/// `.sapsan-journal` when that leaves it empty. Problems are reported on stderr, never fatal.
pub fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!(
            target: "sapsan::journal",
            "could not remove the journal {}: {e}",
            dir.display()
        );
        return;
    }
    if let Some(root) = dir.parent()
        && root.file_name() == Some(std::ffi::OsStr::new(DEFAULT_JOURNAL_ROOT))
    {
        // Fails (and is meant to) while other journals are in it.
        let _ = std::fs::remove_dir(root);
    }
}

/// Which program writes a journal: read by `sapsan sync` to tell a journal whose program died (its
/// open runs are ended KILLED) from one still being written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Host name of the machine.
    pub host: String,
    /// Process id of the program.
    pub pid: u32,
    /// When the journal was started, ms since the Unix epoch.
    pub started_ms: i64,
}

impl Origin {
    /// This program on this machine, now.
    pub fn here() -> Self {
        Origin {
            host: host_name(),
            pid: std::process::id(),
            started_ms: crate::tracking::now_ms(),
        }
    }

    /// The origin recorded in journal directory `dir`, if any.
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read(dir.join(ORIGIN_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Whether the program is still running: `Some(false)` when it ran on this machine and its
    /// process is gone, `None` when that cannot be told (another machine).
    pub fn alive(&self) -> Option<bool> {
        if self.host != host_name() {
            return None;
        }
        if self.pid == std::process::id() {
            return Some(true);
        }
        let Ok(pid) = libc::pid_t::try_from(self.pid) else {
            return Some(false);
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let rc = unsafe { libc::kill(pid, 0) };
        Some(rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH))
    }
}

/// This machine's host name (empty when it cannot be read).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Journal directories under `root` other than `except` whose program ended on this machine
/// without delivering them (oldest first).
pub fn leftovers(root: &Path, except: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p != except && p.join(JOURNAL_FILE).is_file())
        .filter(|p| Origin::read(p).and_then(|o| o.alive()) == Some(false))
        .collect();
    out.sort();
    out
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh, hard-to-guess key (run keys, directory names): time, pid, a counter and hashed entropy.
pub fn fresh_key() -> String {
    use std::hash::{BuildHasher, Hasher};
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(t);
    h.write_u64(n);
    h.write_u32(std::process::id());
    format!(
        "{:012x}{:08x}{:016x}",
        t as u64 & 0xffff_ffff_ffff,
        n,
        h.finish()
    )
}

/// The append-only journal file of one backend instance.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    /// Bytes written so far (the file's length).
    len: u64,
}

impl Journal {
    /// Creates a new instance directory under `root`, records this program as its [`Origin`],
    /// and opens its journal.
    pub fn create_in(root: &Path) -> Result<Self> {
        let name = format!(
            "{}-{}-{}",
            crate::tracking::now_ms(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = root.join(name);
        let j = Self::open(&dir)?;
        let origin = dir.join(ORIGIN_FILE);
        let bytes = serde_json::to_vec(&Origin::here()).unwrap_or_default();
        if let Err(e) = std::fs::write(&origin, bytes) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::io("writing the journal's origin", origin, e));
        }
        Ok(j)
    }

    /// Opens (creating if needed) the journal in `dir`, appending after what is there.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::io(
                "creating the journal directory (set SAPSAN_JOURNAL_DIR to a writable place, \
                 or SAPSAN_JOURNAL=0 to log without a journal)",
                dir,
                e,
            )
        })?;
        let path = dir.join(JOURNAL_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("opening the journal", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("reading the journal's size", &path, e))?
            .len();
        Ok(Journal {
            dir: dir.to_owned(),
            file,
            len,
        })
    }

    /// The instance directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `records` (one line each) and syncs them to disk; returns the new length. On a
    /// failed write the file is cut back to its previous length, so no half line stays.
    pub fn append(&mut self, records: &[Record]) -> Result<u64> {
        let buf = encode(records, &self.dir)?;
        let path = self.dir.join(JOURNAL_FILE);
        let res = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = res {
            let _ = self.file.set_len(self.len);
            return Err(Error::io("writing the journal", path, e));
        }
        self.len += buf.len() as u64;
        Ok(self.len)
    }

    /// Replaces the whole file by one holding just `records`, atomically: they are written to a
    /// temporary file in the same directory and synced, the temporary file is renamed over the
    /// journal and the directory synced; appends then go to the new file. Returns the new length.
    /// On an error before the rename the journal is left as it was. (A failed sync of the
    /// directory after the rename is not reported: the rename is done and cannot be undone.)
    pub fn replace(&mut self, records: &[Record]) -> Result<u64> {
        let buf = encode(records, &self.dir)?;
        let tmp = self.dir.join(ROTATE_TMP_FILE);
        let path = self.dir.join(JOURNAL_FILE);
        let write = || -> std::io::Result<File> {
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(f)
        };
        let file = write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io("compacting the journal", &path, e)
        })?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.file = file;
        self.len = buf.len() as u64;
        Ok(self.len)
    }
}

/// Reads the records of the journal in `dir` from byte `from` up to byte `upto` (`None`: the end).
/// Returns each record with the offset just after it. A torn last line (the program died while
/// writing it) ends the reading; it was never acknowledged to anyone.
pub fn read_records(dir: &Path, from: u64, upto: Option<u64>) -> Result<Vec<(Record, u64)>> {
    let path = dir.join(JOURNAL_FILE);
    let mut f = File::open(&path).map_err(|e| Error::io("opening the journal", &path, e))?;
    f.seek(SeekFrom::Start(from))
        .map_err(|e| Error::io("reading the journal", &path, e))?;
    store::read_lines(BufReader::new(f), from, upto, dir)
}

/// Encodes `records` as journal lines (`dir` names the journal in an error).
fn encode(records: &[Record], dir: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(256 * records.len());
    for r in records {
        serde_json::to_writer(&mut buf, r).map_err(|e| Error::Internal {
            what: format!("encoding a journal record for {}", dir.display()),
            reason: e.to_string(),
        })?;
        buf.push(b'\n');
    }
    Ok(buf)
}

/// A journal shared by a backend and its log queue: appends, tells the uploader, and knows which
/// run ids stand for which journal run keys.
///
/// When the disk refuses a write (full, over a size limit), nothing half-written stays in the file:
/// the records are held in memory, in order, and written before anything newer as soon as the disk
/// takes them again; what is still held at the end of the program is sent straight to the server
/// (see [`SharedJournal::take_held`]). The first such failure is reported once on stderr.
///
/// With [`SharedJournal::with_rotation`], a journal that grew past a size and was delivered in
/// full is compacted before the next append, so a long program's journal does not grow without
/// bound; see there.
#[derive(Debug)]
pub struct SharedJournal {
    journal: Mutex<Writer>,
    keys: Mutex<HashMap<String, String>>,
    notify: Option<Arc<dyn Reader>>,
}

#[derive(Debug)]
struct Writer {
    journal: Store,
    /// Records the disk refused, oldest first; written before any newer record.
    held: Vec<Record>,
    /// Items in `held`.
    held_items: usize,
    /// Most items `held` keeps (see [`SharedJournal::with_held_limit`]).
    held_limit: usize,
    /// Metric points dropped because `held` was full.
    dropped: u64,
    /// Why the disk refused the last write (while records are held).
    problem: Option<String>,
    /// Whether the refusal was reported on stderr.
    reported: bool,
    blobs: u64,
    /// Compaction of a delivered journal (`None`: the file only grows).
    rotation: Option<Rotation>,
    /// Every `Create` record appended so far, in order (the compacted file keeps them).
    creates: Vec<Record>,
    /// The last `Status` record of each run, in order of first change (kept too, so that
    /// `sapsan sync` does not take a finished run for one its program left open).
    statuses: Vec<Record>,
    /// Artifact files named by records in the current file (deleted when it is compacted).
    files: Vec<String>,
}

#[derive(Debug)]
struct Rotation {
    /// Size above which a delivered journal is compacted.
    threshold: u64,
    /// The uploader's run key -> server id map (ids of lazily created runs).
    ids: RunIds,
    /// Compact when the file is longer than this.
    at: u64,
}

/// Most logged items held in memory while the store refuses writes, by default.
pub const DEFAULT_HELD_LIMIT: usize = 2_000_000;

impl Writer {
    /// Holds `records` (the store refused them), dropping the oldest metric-only batches while
    /// more than `held_limit` items are held.
    fn hold(&mut self, records: Vec<Record>) {
        self.held = records;
        self.held_items = self.held.iter().map(Record::items).sum();
        if self.held_items <= self.held_limit {
            return;
        }
        let mut over = self.held_items - self.held_limit;
        let mut dropped = 0usize;
        self.held.retain(|r| {
            let metrics_only = matches!(r, Record::Batch { params, tags, .. }
                if params.is_empty() && tags.is_empty());
            if over > 0 && metrics_only {
                let n = r.items();
                over = over.saturating_sub(n);
                dropped += n;
                return false;
            }
            true
        });
        self.held_items -= dropped;
        self.dropped += dropped as u64;
    }

    /// Remembers what a compacted file must keep from `records` (called before writing them).
    fn remember(&mut self, records: &[Record]) {
        if self.rotation.is_none() {
            return;
        }
        for r in records {
            match r {
                Record::Create { .. } => self.creates.push(r.clone()),
                Record::Status { run, .. } => {
                    let same = |s: &Record| matches!(s, Record::Status { run: x, .. } if x == run);
                    match self.statuses.iter_mut().find(|s| same(s)) {
                        Some(s) => *s = r.clone(),
                        None => self.statuses.push(r.clone()),
                    }
                }
                _ => {}
            }
        }
    }

    /// Notes the artifact files named by `records`, now in the file.
    fn written(&mut self, records: &[Record]) {
        if self.rotation.is_none() {
            return;
        }
        for r in records {
            if let Record::Artifact { file, .. } = r {
                self.files.push(file.clone());
            }
        }
    }

    /// The compacted file: every run's `Create` record (with the server's id once the uploader
    /// knows it), then the last status of each run.
    fn compact(creates: &[Record], statuses: &[Record], ids: &RunIds) -> Vec<Record> {
        let ids = ids.lock();
        let mut out: Vec<Record> = creates
            .iter()
            .map(|c| match c {
                Record::Create { key, .. } if ids.contains_key(key) => {
                    let mut c = c.clone();
                    if let Record::Create { id, .. } = &mut c {
                        *id = ids.get(key).cloned();
                    }
                    c
                }
                _ => c.clone(),
            })
            .collect();
        out.extend(statuses.iter().cloned());
        out
    }

    /// Compacts the journal when it is over the threshold, nothing is held in memory and the
    /// uploader delivered all of it (checked and done under the uploader's lock, see
    /// [`Reader::restart_if_delivered`]). Artifact files of the old file are deleted. Any
    /// failure leaves the journal as it was (tried again once it grew by the threshold).
    fn rotate_if_due(&mut self, notify: &dyn Reader) {
        let len = self.journal.len();
        let Some(rot) = &self.rotation else { return };
        if !self.held.is_empty() || len <= rot.at {
            return;
        }
        // Built once delivery is confirmed, so every run the uploader created has its id.
        let (creates, statuses, ids) = (&self.creates, &self.statuses, &rot.ids);
        let journal = &mut self.journal;
        let Store::File(journal) = journal else {
            return;
        };
        let res = notify.restart_if_delivered(len, &mut || {
            journal.replace(&Self::compact(creates, statuses, ids))
        });
        let Some(rot) = self.rotation.as_mut() else {
            return;
        };
        match res {
            Ok(true) => {
                if let Some(dir) = self.journal.dir().map(Path::to_owned) {
                    for f in self.files.drain(..) {
                        let _ = std::fs::remove_file(dir.join(f));
                    }
                }
                rot.at = rot.threshold.max(2 * self.journal.len());
            }
            // Delivery is behind (server away): everything stays; try at the next append.
            Ok(false) => {}
            Err(e) => {
                rot.at = len.saturating_add(rot.threshold);
                log::warn!(target: "sapsan::journal", "{e}; the journal keeps growing for now");
            }
        }
    }
}

impl SharedJournal {
    /// Wraps `journal`; `notify` (if any) is told about every append.
    pub fn new(journal: impl Into<Store>, notify: Option<Arc<dyn Reader>>) -> Self {
        SharedJournal {
            journal: Mutex::new(Writer {
                journal: journal.into(),
                held: Vec::new(),
                held_items: 0,
                held_limit: DEFAULT_HELD_LIMIT,
                dropped: 0,
                problem: None,
                reported: false,
                blobs: 0,
                rotation: None,
                creates: Vec::new(),
                statuses: Vec::new(),
                files: Vec::new(),
            }),
            keys: Mutex::new(HashMap::new()),
            notify,
        }
    }

    /// Compacts the journal once it is longer than `threshold` bytes and everything in it was
    /// delivered (the uploader told through the notifier acknowledged all of it, no request in
    /// flight, nothing held in memory): before the next append, the file is replaced (atomically)
    /// by one holding a `Create` record per run created through this journal (with the server's
    /// id from `ids`, the uploader's map, once known) and the last status of each run, the
    /// uploader carries on from the end of that, and the artifact files of the old file are
    /// deleted. So `sapsan sync` still knows every run, and disk use stays bounded. Never
    /// compacts while the uploader is behind (the server is away) or without a notifier (an
    /// offline journal is the data itself).
    pub fn with_rotation(self, threshold: u64, ids: RunIds) -> Self {
        if self.notify.is_some() && matches!(self.lock_journal().journal, Store::File(_)) {
            self.lock_journal().rotation = Some(Rotation {
                threshold,
                ids,
                at: threshold,
            });
        }
        self
    }

    fn lock_journal(&self) -> MutexGuard<'_, Writer> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_keys(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends and syncs `records` (after any held ones), then tells the uploader. A write the disk
    /// refuses leaves the file as it was and holds the records in memory (never an error: the data
    /// is kept and delivered; see the type's docs).
    pub fn append(&self, records: &[Record]) -> Result<()> {
        let mut w = self.lock_journal();
        if let Some(n) = &self.notify {
            w.rotate_if_due(n.as_ref());
        }
        w.remember(records);
        let res = if w.held.is_empty() {
            let r = w.journal.append(records);
            match r {
                Ok(_) => w.written(records),
                Err(_) => w.hold(records.to_vec()),
            }
            r
        } else {
            // Older records first, in one write, so the order on disk stays the order of logging.
            let mut all = std::mem::take(&mut w.held);
            w.held_items = 0;
            all.extend_from_slice(records);
            let r = w.journal.append(&all);
            match r {
                Ok(_) => w.written(&all),
                Err(_) => w.hold(all),
            }
            r
        };
        match res {
            Ok(len) => {
                w.problem = None;
                // Told with the journal locked, so the uploader hears of lengths in order and
                // never of a file that was compacted since (see `Reader::restart_if_delivered`).
                if let Some(n) = &self.notify {
                    n.written(len);
                }
            }
            Err(e) => {
                w.problem = Some(e.to_string());
                if !w.reported {
                    w.reported = true;
                    let fix = match w.journal.dir() {
                        Some(dir) => format!(
                            "Free space under {} or set SAPSAN_JOURNAL_DIR to a disk with room.",
                            dir.display()
                        ),
                        None => {
                            "The server is not taking the data as fast as it is logged.".to_owned()
                        }
                    };
                    crate::diag::notice(
                        "sapsan::journal",
                        &format!(
                            "{e}. Logging goes on: the records are held in memory (up to {} items; \
                             beyond that the oldest metric points are dropped and counted) and \
                             stored when there is room again, or sent straight to the server at \
                             the end of the program. {fix}",
                            w.held_limit
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Most logged items held in memory while the store refuses writes (default
    /// [`DEFAULT_HELD_LIMIT`]). Past it the oldest metric points are dropped, and counted in
    /// [`SharedJournal::dropped`]; params, tags, run creations and statuses are always kept.
    pub fn with_held_limit(self, items: usize) -> Self {
        self.lock_journal().held_limit = items.max(1);
        self
    }

    /// Metric points dropped so far because the store refused writes and the memory for held
    /// records was full.
    pub fn dropped(&self) -> u64 {
        self.lock_journal().dropped
    }

    /// The read side of the store.
    pub fn source(&self) -> Source {
        self.lock_journal().journal.source()
    }

    /// Takes the records the disk refused (oldest first), with the reason; empty when none.
    pub fn take_held(&self) -> (Vec<Record>, Option<String>) {
        let mut w = self.lock_journal();
        let held = std::mem::take(&mut w.held);
        w.held_items = 0;
        (held, w.problem.take())
    }

    /// Why the disk refused the last journal write, while records are held in memory.
    pub fn problem(&self) -> Option<String> {
        self.lock_journal().problem.clone()
    }

    /// Journals artifact `name` of run `run_id`: its bytes go to a file in the journal directory
    /// (synced), then an [`Record::Artifact`] names it. Fails (nothing journaled) when the bytes
    /// cannot be written.
    pub fn append_artifact(&self, run_id: &str, name: &str, bytes: &[u8]) -> Result<()> {
        crate::tracking::rest::artifacts::check_name(name)?;
        let file = {
            let mut w = self.lock_journal();
            w.blobs += 1;
            let file = format!("{BLOB_DIR}/{}", w.blobs);
            w.journal.put_blob(&file, bytes)?;
            file
        };
        self.append(&[Record::Artifact {
            run: self.run_ref(run_id),
            name: name.to_owned(),
            file,
        }])
    }

    /// The instance directory (`None` for a memory store).
    pub fn dir(&self) -> Option<PathBuf> {
        self.lock_journal().journal.dir().map(Path::to_owned)
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.lock_journal().journal.len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items held in memory because the disk refused them.
    pub fn held_items(&self) -> usize {
        self.lock_journal().held_items
    }

    /// Remembers that run id `id` (as handed to the user) is journal run key `key`.
    pub fn set_key(&self, id: &str, key: &str) {
        self.lock_keys().insert(id.to_owned(), key.to_owned());
    }

    /// How the journal names run `id`.
    pub fn run_ref(&self, id: &str) -> RunRef {
        match self.lock_keys().get(id) {
            Some(k) => RunRef::Key(k.clone()),
            None => RunRef::Id(id.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Puts `f` under the journal's writer, as if the disk behaved like `f`.
    fn set_file(shared: &SharedJournal, f: File) {
        if let Store::File(j) = &mut shared.lock_journal().journal {
            j.file = f;
        }
    }

    #[test]
    fn records_round_trip_and_torn_tail_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let mut j = Journal::create_in(tmp.path()).unwrap();
        let recs = vec![
            Record::Create {
                key: "k1".into(),
                experiment: "e".into(),
                name: "train".into(),
                parent: None,
                start_ms: 5,
                tags: vec![("a".into(), "b".into())],
                id: None,
            },
            Record::Batch {
                run: RunRef::Key("k1".into()),
                metrics: vec![
                    JMetric("m".into(), JsonF64(f64::NAN), 1, 0),
                    JMetric("m".into(), JsonF64(f64::NEG_INFINITY), 1, 1),
                    JMetric("m".into(), JsonF64(0.25), 1, 2),
                ],
                params: vec![("p".into(), "1".into())],
                tags: vec![],
            },
            Record::Status {
                run: RunRef::Id("abc".into()),
                status: "FINISHED".into(),
                end_ms: Some(9),
            },
        ];
        let end = j.append(&recs).unwrap();
        assert_eq!(end, j.len());
        // A torn line at the end, as after a crash mid-write.
        let path = j.dir().join(JOURNAL_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"t":"status","run":{"id":"x"},"sta"#)
            .unwrap();
        let back = read_records(j.dir(), 0, None).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2].1, end);
        assert_eq!(back[0].0, recs[0]);
        assert_eq!(back[2].0, recs[2]);
        match &back[1].0 {
            Record::Batch { metrics, .. } => {
                assert!(metrics[0].1.0.is_nan());
                assert_eq!(metrics[1].1.0, f64::NEG_INFINITY);
                assert_eq!(metrics[2].to_metric().value, 0.25);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(back[1].0.items(), 4);
        // Reading from the middle gives the rest.
        let rest = read_records(j.dir(), back[0].1, Some(back[1].1)).unwrap();
        assert_eq!(rest.len(), 1);
    }

    #[test]
    fn unwritable_directory_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let e = Journal::create_in(&file).unwrap_err();
        assert!(e.to_string().contains("SAPSAN_JOURNAL_DIR"), "{e}");
    }

    #[test]
    fn the_default_root_goes_with_its_last_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join(DEFAULT_JOURNAL_ROOT);
        let a = Journal::create_in(&root).unwrap();
        let b = Journal::create_in(&root).unwrap();
        remove_dir(a.dir());
        assert!(!a.dir().exists());
        assert!(root.is_dir(), "another journal is still in it");
        remove_dir(b.dir());
        assert!(!root.exists(), "an empty default root is removed");
        // A root the user named stays.
        let named = tmp.path().join("mine");
        let c = Journal::create_in(&named).unwrap();
        remove_dir(c.dir());
        assert!(named.is_dir());
    }

    #[test]
    fn refused_writes_are_held_in_order_and_written_first_later() {
        let tmp = tempfile::tempdir().unwrap();
        let mut j = Journal::create_in(tmp.path()).unwrap();
        let dir = j.dir().to_owned();
        // A read-only handle: every write fails, as on a full disk.
        j.file = File::open("/dev/null").unwrap();
        let shared = SharedJournal::new(j, None);
        let status = |s: &str| Record::Status {
            run: RunRef::Id("r".into()),
            status: s.into(),
            end_ms: None,
        };
        shared.append(&[status("A")]).unwrap();
        shared.append(&[status("B")]).unwrap();
        assert_eq!(shared.held_items(), 2);
        assert!(shared.problem().unwrap().contains("writing the journal"));
        assert_eq!(shared.len(), 0, "nothing half-written");
        // The disk takes writes again: held records go first, in order.
        set_file(
            &shared,
            OpenOptions::new()
                .append(true)
                .open(dir.join(JOURNAL_FILE))
                .unwrap(),
        );
        shared.append(&[status("C")]).unwrap();
        assert_eq!(shared.held_items(), 0);
        assert!(shared.problem().is_none());
        let back: Vec<String> = read_records(&dir, 0, None)
            .unwrap()
            .into_iter()
            .map(|(r, _)| match r {
                Record::Status { status, .. } => status,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(back, ["A", "B", "C"]);
        // What is still held at the end is handed over for direct delivery.
        set_file(&shared, File::open("/dev/null").unwrap());
        shared.append(&[status("D")]).unwrap();
        let (held, why) = shared.take_held();
        assert_eq!(held, vec![status("D")]);
        assert!(why.is_some());
    }

    fn create(key: &str, parent: Option<&str>, id: Option<&str>) -> Record {
        Record::Create {
            key: key.into(),
            experiment: "e".into(),
            name: key.into(),
            parent: parent.map(|p| RunRef::Key(p.into())),
            start_ms: 1,
            tags: vec![(RUN_KEY_TAG.into(), key.into())],
            id: id.map(str::to_owned),
        }
    }

    fn status(run: &str, s: &str) -> Record {
        Record::Status {
            run: RunRef::Key(run.into()),
            status: s.into(),
            end_ms: None,
        }
    }

    fn points(run: &str, n: i64) -> Record {
        Record::Batch {
            run: RunRef::Key(run.into()),
            metrics: (0..n)
                .map(|i| JMetric("loss".into(), JsonF64(0.5), 7, i))
                .collect(),
            params: vec![],
            tags: vec![],
        }
    }

    #[test]
    fn a_full_memory_store_holds_a_bounded_number_of_items_and_drops_only_metric_points() {
        // A store that takes nothing (the server away, memory full) and room for 250 held items.
        let shared = SharedJournal::new(MemoryStore::new(0), None).with_held_limit(250);
        let with_param = Record::Batch {
            run: RunRef::Key("a".into()),
            metrics: vec![],
            params: vec![("lr".into(), "0.1".into())],
            tags: vec![],
        };
        shared.append(&[create("a", None, None)]).unwrap();
        shared.append(&[with_param.clone()]).unwrap();
        for _ in 0..10 {
            shared.append(&[points("a", 100)]).unwrap();
        }
        shared.append(&[status("a", "FINISHED")]).unwrap();
        assert!(shared.held_items() <= 250, "{}", shared.held_items());
        assert_eq!(shared.dropped(), 800, "the oldest metric points go first");
        let (held, why) = shared.take_held();
        assert!(why.unwrap().contains("memory_limit"));
        // The run, its param and its end are never dropped; the newest points are kept.
        assert_eq!(held[0], create("a", None, None));
        assert_eq!(held[1], with_param);
        assert_eq!(held.last(), Some(&status("a", "FINISHED")));
        assert_eq!(held.iter().map(Record::items).sum::<usize>(), 203);
    }

    fn on_disk(dir: &Path) -> Vec<Record> {
        read_records(dir, 0, None)
            .unwrap()
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    }

    #[test]
    fn a_delivered_journal_is_compacted_to_its_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::create_in(tmp.path()).unwrap();
        let dir = j.dir().to_owned();
        let n = crate::tracking::upload::uploader::Notifier::detached();
        let ids = RunIds::default();
        let shared =
            SharedJournal::new(j, Some(Arc::new(n.clone()))).with_rotation(300, ids.clone());
        shared
            .append(&[create("k1", None, None), status("k1", "RUNNING")])
            .unwrap();
        shared
            .append(&[create("k2", Some("k1"), Some("s2")), points("k1", 20)])
            .unwrap();
        shared.set_key("local-k1", "k1");
        shared
            .append_artifact("local-k1", "a.txt", b"bytes")
            .unwrap();
        let blob = dir.join(BLOB_DIR).join("1");
        assert!(blob.is_file());
        shared.append(&[status("k1", "FINISHED")]).unwrap();
        // Bytes of an artifact not journaled yet (being written by another thread) must stay.
        let pending = dir.join(BLOB_DIR).join("99");
        std::fs::write(&pending, b"pending").unwrap();
        let full = shared.len();
        assert!(full > 300);
        // Not delivered yet: nothing is dropped.
        shared.append(&[points("k2", 3)]).unwrap();
        let before = on_disk(&dir);
        assert_eq!(before.len(), 7);
        assert_eq!(n.offsets(), (0, shared.len()));
        // Delivered (the uploader created k1 lazily as s1): the next append compacts first.
        n.ack_for_test(shared.len());
        ids.lock().insert("k1".into(), "s1".into());
        shared.append(&[points("k2", 2)]).unwrap();
        let after = on_disk(&dir);
        assert_eq!(
            after,
            vec![
                create("k1", None, Some("s1")),
                create("k2", Some("k1"), Some("s2")),
                status("k1", "FINISHED"),
                points("k2", 2),
            ]
        );
        let prefix = read_records(&dir, 0, None).unwrap()[2].1;
        assert_eq!(n.offsets(), (prefix, shared.len()));
        assert_eq!(
            std::fs::metadata(dir.join(JOURNAL_FILE)).unwrap().len(),
            shared.len()
        );
        assert!(!blob.exists(), "the delivered artifact's bytes are removed");
        assert!(pending.is_file(), "bytes not journaled yet stay");
        assert!(!dir.join(ROTATE_TMP_FILE).exists());
        // Short again: appends go on without compacting.
        n.ack_for_test(shared.len());
        shared.append(&[create("k3", None, None)]).unwrap();
        assert_eq!(on_disk(&dir).len(), 5);
        assert_eq!(n.offsets().1, shared.len());
    }

    #[test]
    fn no_compaction_while_records_are_held_or_without_an_uploader() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::create_in(tmp.path()).unwrap();
        let dir = j.dir().to_owned();
        let n = crate::tracking::upload::uploader::Notifier::detached();
        let shared =
            SharedJournal::new(j, Some(Arc::new(n.clone()))).with_rotation(100, RunIds::default());
        shared
            .append(&[create("k1", None, None), points("k1", 10)])
            .unwrap();
        let l1 = shared.len();
        assert!(l1 > 100);
        // The disk refuses a write while delivery is behind: held.
        set_file(&shared, File::open("/dev/null").unwrap());
        shared.append(&[status("k1", "A")]).unwrap();
        assert_eq!(shared.held_items(), 1);
        // Everything on disk is delivered, but records are held: no compaction.
        n.ack_for_test(l1);
        shared.append(&[status("k1", "B")]).unwrap();
        assert_eq!(shared.held_items(), 2);
        assert_eq!(on_disk(&dir).len(), 2, "the file is as it was");
        assert_eq!(n.offsets(), (l1, l1));
        // The disk takes writes again: the held records are written first, not compacted away.
        set_file(
            &shared,
            OpenOptions::new()
                .append(true)
                .open(dir.join(JOURNAL_FILE))
                .unwrap(),
        );
        shared.append(&[status("k1", "C")]).unwrap();
        assert_eq!(shared.held_items(), 0);
        assert_eq!(on_disk(&dir).len(), 5);
        assert_eq!(n.offsets(), (l1, shared.len()));
        // Once those are delivered too, the next append compacts.
        n.ack_for_test(shared.len());
        shared.append(&[status("k1", "D")]).unwrap();
        assert_eq!(
            on_disk(&dir),
            vec![
                create("k1", None, None),
                status("k1", "C"),
                status("k1", "D")
            ]
        );

        // Without an uploader (offline backend) the journal is the data: never compacted.
        let j = Journal::create_in(tmp.path()).unwrap();
        let dir = j.dir().to_owned();
        let offline = SharedJournal::new(j, None).with_rotation(100, RunIds::default());
        for _ in 0..5 {
            offline.append(&[points("k1", 10)]).unwrap();
        }
        assert_eq!(on_disk(&dir).len(), 5);
    }

    #[test]
    fn origin_tells_a_dead_writer_from_a_live_one() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::create_in(tmp.path()).unwrap();
        let mine = Origin::read(j.dir()).unwrap();
        assert_eq!(mine.pid, std::process::id());
        assert_eq!(mine.alive(), Some(true));
        // A finished child's pid: gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead = Origin {
            pid: dead_pid,
            ..mine.clone()
        };
        assert_eq!(dead.alive(), Some(false));
        let elsewhere = Origin {
            host: format!("{}-elsewhere", mine.host),
            ..mine.clone()
        };
        assert_eq!(elsewhere.alive(), None);
        // Only the dead writer's journal is a leftover.
        let other = Journal::create_in(tmp.path()).unwrap();
        std::fs::write(
            other.dir().join(ORIGIN_FILE),
            serde_json::to_vec(&dead).unwrap(),
        )
        .unwrap();
        let third = Journal::create_in(tmp.path()).unwrap();
        assert_eq!(
            leftovers(tmp.path(), third.dir()),
            vec![other.dir().to_owned()]
        );
    }

    #[test]
    fn keys_are_unique() {
        let a = fresh_key();
        let b = fresh_key();
        assert_ne!(a, b);
        assert!(crate::tracking::validate::tag_value(RUN_KEY_TAG, &a).is_ok());
    }
}
