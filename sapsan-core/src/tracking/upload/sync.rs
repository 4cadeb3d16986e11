//! `sapsan sync`: delivering journals left on disk (a program that ended while the server was
//! away, a job killed outright, an offline job) to a server, once, in order.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::replay::{Replayer, is_transient};
use crate::error::{Error, Result};
use crate::tracking::RunStatus;
use crate::tracking::journal::{self, Record, RunRef, Source};
use crate::tracking::rest::client::HttpClient;
use crate::tracking::rest::settings::Settings;

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
        let rep = Replayer::new(http.clone(), Source::Dir(d.clone()), false);
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
            report
                .left_open
                .push(left_open_note(&d, left_open.len(), origin.as_ref(), alive));
        }
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
