//! The journal shared by a backend, its log queue and its uploader: held records, rotation.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{BLOB_DIR, Blob, Reader, Record, RunIds, RunRef, Source, Store};
use crate::error::Result;

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
                Record::Create { .. } | Record::CreateModel { .. } => self.creates.push(r.clone()),
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

    /// The compacted file: every run's `Create` and every model's `CreateModel` record (with the
    /// server's id once the uploader knows it), then the last status of each run.
    fn compact(creates: &[Record], statuses: &[Record], ids: &RunIds) -> Vec<Record> {
        let ids = ids.lock();
        let mut out: Vec<Record> = creates
            .iter()
            .map(|c| {
                let mut c = c.clone();
                if let Record::Create { key, id, .. } | Record::CreateModel { key, id, .. } = &mut c
                    && let Some(known) = ids.get(key.as_str())
                {
                    *id = Some(known.clone());
                }
                c
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
    pub fn append_artifact(&self, run_id: &str, name: &str, bytes: Blob<'_>) -> Result<()> {
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
    use std::fs::{File, OpenOptions};

    use super::*;
    use crate::tracking::journal::{Journal, MemoryStore};

    /// Puts `f` under the journal's writer, as if the disk behaved like `f`.
    fn set_file(shared: &SharedJournal, f: File) {
        if let Store::File(j) = &mut shared.lock_journal().journal {
            j.file = f;
        }
    }

    use crate::tracking::journal::{JOURNAL_FILE, ROTATE_TMP_FILE, RUN_KEY_TAG, read_records};
    use crate::tracking::{Metric, RunStatus};

    #[test]
    fn refused_writes_are_held_in_order_and_written_first_later() {
        let tmp = tempfile::tempdir().unwrap();
        let mut j = Journal::create_in(tmp.path()).unwrap();
        let dir = j.dir().to_owned();
        // A read-only handle: every write fails, as on a full disk.
        j.file = File::open("/dev/null").unwrap();
        let shared = SharedJournal::new(j, None);
        let status = |s: RunStatus| Record::Status {
            run: RunRef::Id("r".into()),
            status: s,
            end_ms: None,
        };
        shared.append(&[status(RunStatus::Running)]).unwrap();
        shared.append(&[status(RunStatus::Finished)]).unwrap();
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
        shared.append(&[status(RunStatus::Failed)]).unwrap();
        assert_eq!(shared.held_items(), 0);
        assert!(shared.problem().is_none());
        let back: Vec<RunStatus> = read_records(&dir, 0, None)
            .unwrap()
            .into_iter()
            .map(|(r, _)| match r {
                Record::Status { status, .. } => status,
                other => panic!("{other:?}"),
            })
            .collect();
        use RunStatus::{Failed, Finished, Running};
        assert_eq!(back, [Running, Finished, Failed]);
        // What is still held at the end is handed over for direct delivery.
        set_file(&shared, File::open("/dev/null").unwrap());
        shared.append(&[status(RunStatus::Killed)]).unwrap();
        let (held, why) = shared.take_held();
        assert_eq!(held, vec![status(RunStatus::Killed)]);
        assert!(why.is_some());
    }

    fn metric(key: &str, value: f64, timestamp_ms: i64, step: i64) -> Metric {
        Metric {
            key: key.into(),
            value,
            timestamp_ms,
            step,
            model_id: None,
        }
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

    fn status(run: &str, s: RunStatus) -> Record {
        Record::Status {
            run: RunRef::Key(run.into()),
            status: s,
            end_ms: None,
        }
    }

    fn points(run: &str, n: i64) -> Record {
        Record::Batch {
            run: RunRef::Key(run.into()),
            metrics: (0..n).map(|i| metric("loss", 0.5, 7, i)).collect(),
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
        shared.append(std::slice::from_ref(&with_param)).unwrap();
        for _ in 0..10 {
            shared.append(&[points("a", 100)]).unwrap();
        }
        shared.append(&[status("a", RunStatus::Finished)]).unwrap();
        assert!(shared.held_items() <= 250, "{}", shared.held_items());
        assert_eq!(shared.dropped(), 800, "the oldest metric points go first");
        let (held, why) = shared.take_held();
        assert!(why.unwrap().contains("memory_limit"));
        // The run, its param and its end are never dropped; the newest points are kept.
        assert_eq!(held[0], create("a", None, None));
        assert_eq!(held[1], with_param);
        assert_eq!(held.last(), Some(&status("a", RunStatus::Finished)));
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
            .append(&[create("k1", None, None), status("k1", RunStatus::Running)])
            .unwrap();
        shared
            .append(&[create("k2", Some("k1"), Some("s2")), points("k1", 20)])
            .unwrap();
        shared.set_key("local-k1", "k1");
        shared
            .append_artifact("local-k1", "a.txt", Blob::Bytes(b"bytes"))
            .unwrap();
        let blob = dir.join(BLOB_DIR).join("1");
        assert!(blob.is_file());
        shared.append(&[status("k1", RunStatus::Finished)]).unwrap();
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
                status("k1", RunStatus::Finished),
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
        shared.append(&[status("k1", RunStatus::Running)]).unwrap();
        assert_eq!(shared.held_items(), 1);
        // Everything on disk is delivered, but records are held: no compaction.
        n.ack_for_test(l1);
        shared.append(&[status("k1", RunStatus::Finished)]).unwrap();
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
        shared.append(&[status("k1", RunStatus::Failed)]).unwrap();
        assert_eq!(shared.held_items(), 0);
        assert_eq!(on_disk(&dir).len(), 5);
        assert_eq!(n.offsets(), (l1, shared.len()));
        // Once those are delivered too, the next append compacts.
        n.ack_for_test(shared.len());
        shared.append(&[status("k1", RunStatus::Killed)]).unwrap();
        assert_eq!(
            on_disk(&dir),
            vec![
                create("k1", None, None),
                status("k1", RunStatus::Failed),
                status("k1", RunStatus::Killed)
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
}
