//! `sapsan sync`: delivering journals left on disk (a program that ended while the server was
//! away, a job killed outright, an offline job) to a server, once, in order.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::replay::{Replayer, is_transient};
use crate::error::{Error, Result};
use crate::shared::Shared;
use crate::tracking::RunStatus;
use crate::tracking::journal::{self, Record, RunRef, Source};
use crate::tracking::rest::client::HttpClient;
use crate::tracking::rest::settings::Settings;

/// What [`sync_dir`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Journal directories delivered.
    pub journals: usize,
    /// Journal directories skipped: delivered completely to this server by an earlier sync and
    /// unchanged since (their [`SYNC_MARK_FILE`]).
    pub skipped: usize,
    /// Records applied.
    pub records: usize,
    /// Logged items (metrics + params + tags, one per run creation or status change) delivered.
    pub items: usize,
    /// Runs created or found again.
    pub runs: usize,
    /// Logged models created or found again.
    pub models: usize,
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
pub(super) fn open_runs(records: &[(Record, u64)]) -> Vec<(RunRef, i64)> {
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
            // Not about a run's status, or (models) not a run at all.
            Record::Artifact { .. }
            | Record::CreateModel { .. }
            | Record::ModelReady { .. }
            | Record::Inputs { .. }
            | Record::Outputs { .. } => {}
        }
    }
    runs.into_iter()
        .filter(|(_, open, _)| *open)
        .map(|(r, _, t)| (r, t))
        .collect()
}

/// Journals [`sync_dir`] uploads at once unless told otherwise (`sapsan sync --jobs`).
pub const DEFAULT_SYNC_JOBS: usize = 4;

/// The file [`sync_dir`] leaves in a journal directory it delivered completely: the server and
/// the journal's length then. A later sync to the same server skips that journal while its
/// length is unchanged ([`SyncOptions::resend`] sends it again), and programs no longer name it
/// as left over.
pub use crate::tracking::journal::SYNC_MARK_FILE;

/// How [`sync_dir`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncOptions {
    /// What to do with runs a journal leaves open.
    pub open: OpenRuns,
    /// Journals uploaded at once, each by one worker thread sending its records in order
    /// (at least 1).
    pub jobs: usize,
    /// Send journals again even when their [`SYNC_MARK_FILE`] says this server has them (its
    /// store was restored from an older backup, say); nothing lands twice.
    pub resend: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            open: OpenRuns::default(),
            jobs: DEFAULT_SYNC_JOBS,
            resend: false,
        }
    }
}

/// One journal that [`sync_dir`] finished, handed to its progress callback as it finishes.
#[derive(Debug)]
pub struct JournalDone<'a> {
    /// The journal directory.
    pub dir: &'a Path,
    /// Journals finished so far, this one included.
    pub done: usize,
    /// Journals to sync in all.
    pub total: usize,
    /// What was delivered ([`SyncReport::skipped`] is 1 for a journal delivered before), or why
    /// it stopped.
    pub outcome: std::result::Result<&'a SyncReport, &'a Error>,
}

impl SyncReport {
    /// Adds `other`'s counts and notes to this report.
    fn absorb(&mut self, other: SyncReport) {
        self.journals += other.journals;
        self.skipped += other.skipped;
        self.records += other.records;
        self.items += other.items;
        self.runs += other.runs;
        self.models += other.models;
        self.killed += other.killed;
        self.refused.extend(other.refused);
        self.left_open.extend(other.left_open);
        self.damaged.extend(other.damaged);
    }
}

/// Uploads the journal(s) in `dir` (one instance directory, or a root holding several) to the
/// server at `tracking_uri`, recreating runs (nesting, names, start and end times, statuses) that
/// the server does not have. `opts.jobs` journals go at once, each journal's records in order;
/// `progress` is called as each journal finishes (from the worker threads, one call at a time
/// per journal). Runs a journal leaves open are ended KILLED (at the last time anything was
/// logged to them) as `opts.open` says.
///
/// Resumable and idempotent: a journal delivered completely gets a [`SYNC_MARK_FILE`] and is
/// skipped by later syncs to the same server while unchanged; one that was cut short (a killed
/// sync, a server gone) is sent again from its start, which adds nothing twice (runs and models
/// are found again by their key tags, the server drops exact duplicate metric points, params,
/// tags and statuses are set to the same values again). Stops handing out journals at the first
/// error that ends one (a transient one: the server is away, run it again later) and returns it;
/// records refused for good are listed in [`SyncReport::refused`] and skipped, damaged journal
/// lines in [`SyncReport::damaged`].
pub fn sync_dir(
    dir: &Path,
    tracking_uri: &str,
    settings: &Settings,
    opts: &SyncOptions,
    progress: &(dyn Fn(&JournalDone<'_>) + Sync),
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
    let total = dirs.len();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Vec<Shared<Option<Result<SyncReport>>>> =
        dirs.iter().map(|_| Shared::new(None)).collect();
    let worker = || {
        while !stop.load(Ordering::Acquire) {
            let i = next.fetch_add(1, Ordering::AcqRel);
            let Some(d) = dirs.get(i) else { return };
            let r = sync_journal(&http, d, tracking_uri, opts);
            if r.is_err() {
                stop.store(true, Ordering::Release);
            }
            progress(&JournalDone {
                dir: d,
                done: done.fetch_add(1, Ordering::AcqRel) + 1,
                total,
                outcome: r.as_ref(),
            });
            *results[i].lock() = Some(r);
        }
    };
    let jobs = opts.jobs.clamp(1, total);
    std::thread::scope(|s| {
        // The calling thread is one worker; the others are spawned.
        for n in 1..jobs {
            let spawned = std::thread::Builder::new()
                .name(format!("sapsan-sync-{n}"))
                .spawn_scoped(s, worker);
            if let Err(e) = spawned {
                log::warn!("sapsan sync: {n} worker thread(s) instead of {jobs}: {e}");
                break;
            }
        }
        worker();
    });
    let mut report = SyncReport::default();
    for r in &results {
        match r.lock().take() {
            Some(Ok(one)) => report.absorb(one),
            Some(Err(e)) => return Err(e),
            // Not started: an earlier error stopped the sync.
            None => {}
        }
    }
    Ok(report)
}

/// Whether journal `d` was delivered completely to `tracking_uri` by an earlier sync and has not
/// changed since (its [`SYNC_MARK_FILE`]).
fn marked_synced(d: &Path, tracking_uri: &str, len: u64) -> bool {
    let Ok(text) = std::fs::read(d.join(SYNC_MARK_FILE)) else {
        return false;
    };
    let Ok(mark) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return false;
    };
    mark.get("tracking_uri").and_then(serde_json::Value::as_str) == Some(tracking_uri)
        && mark
            .get("journal_bytes")
            .and_then(serde_json::Value::as_u64)
            == Some(len)
}

/// Leaves the [`SYNC_MARK_FILE`] of journal `d`: delivered to `tracking_uri` up to byte `len`.
/// A mark that cannot be written (a read-only copy) only costs a resend next time: logged.
fn mark_synced(d: &Path, tracking_uri: &str, len: u64) {
    let mark = serde_json::json!({"tracking_uri": tracking_uri, "journal_bytes": len});
    let tmp = d.join(format!("{SYNC_MARK_FILE}.tmp"));
    let written = std::fs::write(&tmp, mark.to_string())
        .and_then(|()| std::fs::rename(&tmp, d.join(SYNC_MARK_FILE)));
    if let Err(e) = written {
        log::warn!(
            "sapsan sync: could not write {} (the next sync sends this journal again, \
             which adds nothing twice): {e}",
            d.join(SYNC_MARK_FILE).display()
        );
    }
}

/// Uploads one journal directory, its records in order (see [`sync_dir`]).
fn sync_journal(
    http: &Arc<HttpClient>,
    d: &Path,
    tracking_uri: &str,
    opts: &SyncOptions,
) -> Result<SyncReport> {
    let open = opts.open;
    let path = d.join(journal::JOURNAL_FILE);
    let len = std::fs::metadata(&path)
        .map_err(|e| Error::io("reading the journal", &path, e))?
        .len();
    if !opts.resend && marked_synced(d, tracking_uri, len) {
        return Ok(SyncReport {
            skipped: 1,
            ..SyncReport::default()
        });
    }
    let mut report = SyncReport::default();
    let rep = Replayer::new(http.clone(), Source::Dir(d.to_owned()), false);
    let read = journal::read_journal(d, 0, None)?;
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
    // The replayer maps run keys and model keys alike: count each kind by its creation.
    let ids = rep.ids();
    let ids = ids.lock();
    let (mut runs, mut models) = (HashSet::new(), HashSet::new());
    for (rec, _) in &records {
        match rec {
            Record::Create { key, .. } if ids.contains_key(key) => runs.insert(key),
            Record::CreateModel { key, .. } if ids.contains_key(key) => models.insert(key),
            _ => false,
        };
    }
    report.runs += runs.len();
    report.models += models.len();
    drop(ids);
    report.journals += 1;
    let left_open = open_runs(&records);
    if !left_open.is_empty() {
        let origin = journal::Origin::read(d);
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
            report
                .left_open
                .push(left_open_note(d, left_open.len(), origin.as_ref(), alive));
        }
    }
    // Only a journal with nothing left to do is skipped next time.
    if report.refused.is_empty() && report.left_open.is_empty() && report.damaged.is_empty() {
        mark_synced(d, tracking_uri, len);
    }
    Ok(report)
}

/// Why the open runs of journal `d` stay open, and what to do.
pub(super) fn left_open_note(
    d: &Path,
    count: usize,
    origin: Option<&journal::Origin>,
    alive: Option<bool>,
) -> String {
    let why = match (origin, alive) {
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
    format!("{}: {count} run(s) have no end yet: {why}", d.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::journal::Journal;
    use std::time::Duration;

    /// Journals under `root`, one finished run each.
    fn journals(root: &Path, n: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let mut j = Journal::create_in(root).unwrap();
                let key = format!("k{i}");
                j.append(&[
                    Record::Create {
                        key: key.clone(),
                        experiment: "exp".into(),
                        name: "train".into(),
                        parent: None,
                        start_ms: 5,
                        tags: vec![],
                        id: None,
                    },
                    Record::Status {
                        run: RunRef::Key(key),
                        status: RunStatus::Finished,
                        end_ms: Some(9),
                    },
                ])
                .unwrap();
                j.dir().to_owned()
            })
            .collect()
    }

    /// Nothing listens on port 1: any request fails at once (no retries).
    const NOWHERE: &str = "http://127.0.0.1:1";

    fn no_retries() -> Settings {
        Settings {
            max_retries: 0,
            timeout: Duration::from_secs(5),
            ..Settings::default()
        }
    }

    #[test]
    fn journals_marked_delivered_and_unchanged_are_skipped_without_a_request() {
        let root = tempfile::tempdir().unwrap();
        let dirs = journals(root.path(), 5);
        for d in &dirs {
            let len = std::fs::metadata(d.join(journal::JOURNAL_FILE))
                .unwrap()
                .len();
            mark_synced(d, NOWHERE, len);
        }
        let seen = Shared::new(Vec::new());
        let opts = SyncOptions {
            open: OpenRuns::End,
            jobs: 3,
            resend: false,
        };
        let report = sync_dir(root.path(), NOWHERE, &no_retries(), &opts, &|j| {
            assert_eq!(j.total, 5);
            assert_eq!(j.outcome.map(|r| r.skipped).ok(), Some(1));
            seen.lock().push(j.done);
        })
        .unwrap();
        assert_eq!((report.skipped, report.journals, report.records), (5, 0, 0));
        let mut done = seen.lock().clone();
        done.sort_unstable();
        assert_eq!(done, [1, 2, 3, 4, 5], "one progress call per journal");
        // --resend: sending is tried (and fails: nothing listens there).
        let resend = SyncOptions {
            resend: true,
            ..opts
        };
        let e = sync_dir(root.path(), NOWHERE, &no_retries(), &resend, &|_| {}).unwrap_err();
        assert!(is_transient(&e), "{e}");
    }

    #[test]
    fn a_journal_that_grew_or_a_mark_for_another_server_is_sent_again() {
        let root = tempfile::tempdir().unwrap();
        let dirs = journals(root.path(), 2);
        let len = |d: &Path| {
            std::fs::metadata(d.join(journal::JOURNAL_FILE))
                .unwrap()
                .len()
        };
        mark_synced(&dirs[0], NOWHERE, len(&dirs[0]) - 1);
        mark_synced(&dirs[1], "http://elsewhere:5000", len(&dirs[1]));
        assert!(!marked_synced(&dirs[0], NOWHERE, len(&dirs[0])));
        assert!(!marked_synced(&dirs[1], NOWHERE, len(&dirs[1])));
        assert!(marked_synced(
            &dirs[1],
            "http://elsewhere:5000",
            len(&dirs[1])
        ));
        // Sending is tried (and fails: nothing listens there), with the first error returned.
        let opts = SyncOptions {
            open: OpenRuns::End,
            jobs: 2,
            resend: false,
        };
        let e = sync_dir(root.path(), NOWHERE, &no_retries(), &opts, &|_| {}).unwrap_err();
        assert!(is_transient(&e), "{e}");
    }
}
