//! `sapsan sync --dry-run`: what a sync would send, read from the journals alone.
use std::path::{Path, PathBuf};

use super::sync::{OpenRuns, journal_dirs, left_open_note, open_runs};
use crate::error::{Error, Result};
use crate::tracking::RunStatus;
use crate::tracking::journal::{self, Record, RunRef};

/// One run of a journal, as [`plan_sync`] finds it: what `sapsan sync` would send for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRun {
    /// The run as the journal names it: a client key for a run created through the journal, a
    /// server id for a run that existed before (resumed).
    pub run: RunRef,
    /// Run name (runs created through the journal).
    pub name: Option<String>,
    /// Experiment name (runs created through the journal).
    pub experiment: Option<String>,
    /// The run it is nested under, if any.
    pub parent: Option<RunRef>,
    /// Params in its batches.
    pub params: usize,
    /// Metric points in its batches.
    pub metrics: usize,
    /// Tags: those set at creation and those in its batches.
    pub tags: usize,
    /// Artifacts.
    pub artifacts: usize,
    /// Dataset inputs.
    pub datasets: usize,
    /// Logged models it produced (their files are not counted in `artifacts`).
    pub models: usize,
    /// Status changes in the order they were recorded (creation is `RUNNING`).
    pub statuses: Vec<RunStatus>,
    /// The journal leaves the run open; `true` when `sapsan sync` would end it KILLED, `false`
    /// when it would leave it open (the note of its [`JournalPlan`] says why).
    pub open: Option<bool>,
}

impl PlannedRun {
    fn new(run: RunRef) -> Self {
        PlannedRun {
            run,
            datasets: 0,
            models: 0,
            name: None,
            experiment: None,
            parent: None,
            params: 0,
            metrics: 0,
            tags: 0,
            artifacts: 0,
            statuses: Vec::new(),
            open: None,
        }
    }

    /// How the run is named in messages: `"train"`, or `<id> (an existing run)` for a run
    /// the journal did not create.
    pub fn label(&self) -> String {
        match (&self.name, &self.run) {
            (Some(n), _) => format!("{n:?}"),
            (None, RunRef::Id(id)) => format!("{id} (an existing run)"),
            (None, RunRef::Key(k)) => format!("with key {k}"),
        }
    }
}

/// What [`plan_sync`] found in one journal directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalPlan {
    /// The journal directory.
    pub dir: PathBuf,
    /// Intact records.
    pub records: usize,
    /// Logged items they stand for ([`Record::items`]).
    pub items: usize,
    /// Its runs, in the order the journal first names them.
    pub runs: Vec<PlannedRun>,
    /// Why runs it leaves open would stay open (see [`OpenRuns`]), and what to do.
    pub left_open: Option<String>,
}

/// What [`sync_dir`](super::sync_dir) would send: [`plan_sync`]'s answer, read from the journals alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// Each journal directory, oldest first.
    pub journals: Vec<JournalPlan>,
    /// Journal lines that could not be read back; `sapsan sync` would skip them.
    pub damaged: Vec<journal::DamagedRecord>,
}

impl SyncPlan {
    /// Runs in all journals.
    pub fn runs(&self) -> usize {
        self.journals.iter().map(|j| j.runs.len()).sum()
    }
    /// Intact records in all journals.
    pub fn records(&self) -> usize {
        self.journals.iter().map(|j| j.records).sum()
    }
    /// Logged items in all journals.
    pub fn items(&self) -> usize {
        self.journals.iter().map(|j| j.items).sum()
    }
}

impl std::fmt::Display for SyncPlan {
    /// One line per journal, then one per run: its name, nesting, what would be sent, statuses.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for j in &self.journals {
            writeln!(
                f,
                "journal {}: {} records ({} items), {} run(s)",
                j.dir.display(),
                j.records,
                j.items,
                j.runs.len()
            )?;
            for r in &j.runs {
                let mut line = format!("  run {}", r.label());
                if let Some(e) = &r.experiment {
                    line.push_str(&format!(" in experiment {e:?}"));
                }
                if let Some(p) = &r.parent {
                    let parent = j.runs.iter().find(|x| &x.run == p);
                    let label = parent
                        .map_or_else(|| PlannedRun::new(p.clone()).label(), PlannedRun::label);
                    line.push_str(&format!(", nested under {label}"));
                }
                line.push_str(&format!(
                    ": {} params, {} metric points, {} tags, {} artifacts",
                    r.params, r.metrics, r.tags, r.artifacts
                ));
                if r.datasets > 0 {
                    line.push_str(&format!(", {} datasets", r.datasets));
                }
                if r.models > 0 {
                    line.push_str(&format!(", {} logged models", r.models));
                }
                line.push_str("; status ");
                let statuses: Vec<&str> = r.statuses.iter().map(|s| s.as_str()).collect();
                line.push_str(&if statuses.is_empty() {
                    "unchanged".to_owned()
                } else {
                    statuses.join(" -> ")
                });
                match r.open {
                    Some(true) => line.push_str(" -> KILLED (left open by a program that is gone)"),
                    Some(false) => line.push_str(" (left open)"),
                    None => {}
                }
                writeln!(f, "{line}")?;
            }
            if let Some(note) = &j.left_open {
                writeln!(f, "  {note}")?;
            }
        }
        for d in &self.damaged {
            writeln!(f, "damaged journal record (would be skipped, lost): {d}")?;
        }
        Ok(())
    }
}

/// What [`sync_dir`](super::sync_dir) with the same `dir` and `open` would send, read from the journals alone:
/// nothing is sent and no server is needed. A run the server already has is listed too (a sync
/// would find it and send only what it lacks, which the journal cannot tell).
pub fn plan_sync(dir: &Path, open: OpenRuns) -> Result<SyncPlan> {
    let dirs = journal_dirs(dir)?;
    if dirs.is_empty() {
        return Err(Error::io(
            "no journal (journal.jsonl) found in",
            dir,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let mut plan = SyncPlan::default();
    for d in dirs {
        let read = journal::read_journal(&d, 0, None)?;
        plan.damaged.extend(read.damaged);
        let records = read.records;
        let mut runs: Vec<PlannedRun> = Vec::new();
        let mut models: Vec<RunRef> = Vec::new();
        let mut items = 0;
        for (rec, _) in &records {
            items += rec.items();
            match rec {
                Record::Create {
                    key,
                    experiment,
                    name,
                    parent,
                    tags,
                    ..
                } => {
                    let r = planned(&mut runs, &RunRef::Key(key.clone()));
                    r.name = Some(name.clone());
                    r.experiment = Some(experiment.clone());
                    r.parent = parent.clone();
                    r.tags += tags.len() + usize::from(parent.is_some());
                    r.statuses.push(RunStatus::Running);
                }
                Record::Batch {
                    run: rr,
                    metrics,
                    params,
                    tags,
                } => {
                    let r = planned(&mut runs, rr);
                    r.metrics += metrics.len();
                    r.params += params.len();
                    r.tags += tags.len();
                }
                Record::Status {
                    run: rr, status, ..
                } => {
                    planned(&mut runs, rr).statuses.push(*status);
                }
                Record::Artifact { run: rr, .. } => {
                    // A logged model's files belong to the model, counted with its run.
                    if !models.contains(rr) {
                        planned(&mut runs, rr).artifacts += 1;
                    }
                }
                Record::CreateModel { key, source, .. } => {
                    models.push(RunRef::Key(key.clone()));
                    if let Some(src) = source {
                        planned(&mut runs, src).models += 1;
                    }
                }
                Record::Inputs {
                    run: rr, datasets, ..
                } => {
                    planned(&mut runs, rr).datasets += datasets.len();
                }
                Record::ModelReady { .. } | Record::Outputs { .. } => {}
            }
        }
        let left_open = open_runs(&records);
        let mut note = None;
        if !left_open.is_empty() {
            let origin = journal::Origin::read(&d);
            let alive = origin.as_ref().and_then(journal::Origin::alive);
            let ended = open == OpenRuns::End || alive == Some(false);
            for (r, _) in &left_open {
                planned(&mut runs, r).open = Some(ended);
            }
            if !ended {
                note = Some(left_open_note(&d, left_open.len(), origin.as_ref(), alive));
            }
        }
        plan.journals.push(JournalPlan {
            dir: d,
            records: records.len(),
            items,
            runs,
            left_open: note,
        });
    }
    Ok(plan)
}

/// The entry of `run` in `runs`, added when missing.
fn planned<'a>(runs: &'a mut Vec<PlannedRun>, run: &RunRef) -> &'a mut PlannedRun {
    let i = match runs.iter().position(|x| &x.run == run) {
        Some(i) => i,
        None => {
            runs.push(PlannedRun::new(run.clone()));
            runs.len() - 1
        }
    };
    &mut runs[i]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::Metric;
    use crate::tracking::journal::Journal;

    fn metric(key: &str, step: i64) -> Metric {
        Metric::new(key, 0.5, 10 + step, step)
    }

    fn create(key: &str, name: &str, parent: Option<&str>) -> Record {
        Record::Create {
            key: key.into(),
            experiment: "exp".into(),
            name: name.into(),
            parent: parent.map(|p| RunRef::Key(p.into())),
            start_ms: 5,
            tags: vec![("mlflow.user".into(), "me".into())],
            id: None,
        }
    }

    /// A train run with two evaluate runs nested under it, one of them left open, and a resumed
    /// run known by its server id.
    fn journal(root: &Path) -> PathBuf {
        let mut j = Journal::create_in(root).unwrap();
        let train = RunRef::Key("t".into());
        let eval = |k: &str| RunRef::Key(k.into());
        j.append(&[
            create("t", "train", None),
            Record::Batch {
                run: train.clone(),
                metrics: vec![metric("train - loss", 0), metric("train - loss", 1)],
                params: vec![("model - lr".into(), "0.1".into())],
                tags: vec![],
            },
            Record::Artifact {
                run: train.clone(),
                name: "model.safetensors".into(),
                file: "artifacts/1".into(),
            },
            create("e1", "evaluate", Some("t")),
            Record::Batch {
                run: eval("e1"),
                metrics: vec![metric("eval - MSE Loss", 0)],
                params: vec![],
                tags: vec![("note".into(), "x".into())],
            },
            Record::Status {
                run: eval("e1"),
                status: RunStatus::Finished,
                end_ms: Some(20),
            },
            create("e2", "evaluate 2", Some("t")),
            Record::Status {
                run: train.clone(),
                status: RunStatus::Finished,
                end_ms: Some(30),
            },
            Record::Batch {
                run: RunRef::Id("abc123".into()),
                metrics: vec![metric("extra", 0)],
                params: vec![],
                tags: vec![],
            },
        ])
        .unwrap();
        j.dir().to_owned()
    }

    #[test]
    fn a_plan_counts_what_each_run_would_send_and_reads_no_server() {
        let root = tempfile::tempdir().unwrap();
        let dir = journal(root.path());
        // This program wrote the journal and is alive: the open run would stay open.
        let plan = plan_sync(root.path(), OpenRuns::EndIfWriterGone).unwrap();
        assert_eq!(plan.journals.len(), 1);
        let j = &plan.journals[0];
        assert_eq!(j.dir, dir);
        assert_eq!((j.records, plan.records(), plan.runs()), (9, 9, 4));
        assert_eq!(plan.items(), 1 + 3 + 1 + 1 + 2 + 1 + 1 + 1 + 1);
        let by_name = |n: &str| {
            j.runs
                .iter()
                .find(|r| r.name.as_deref() == Some(n))
                .unwrap()
        };
        let train = by_name("train");
        assert_eq!(
            (train.params, train.metrics, train.tags, train.artifacts),
            (1, 2, 1, 1)
        );
        assert_eq!(train.statuses, [RunStatus::Running, RunStatus::Finished]);
        assert_eq!((train.parent.as_ref(), train.open), (None, None));
        let e1 = by_name("evaluate");
        assert_eq!(e1.parent, Some(RunRef::Key("t".into())));
        // The creation tags, the parent tag, one batch tag.
        assert_eq!((e1.metrics, e1.tags), (1, 3));
        assert_eq!(by_name("evaluate 2").open, Some(false));
        let resumed = &j.runs[3];
        assert_eq!(resumed.run, RunRef::Id("abc123".into()));
        assert_eq!(
            (resumed.label(), resumed.metrics),
            ("abc123 (an existing run)".into(), 1)
        );
        let note = j.left_open.as_deref().unwrap();
        assert!(note.contains("1 run(s) have no end yet"), "{note}");

        let text = plan.to_string();
        assert!(
            text.contains(
                "run \"evaluate\" in experiment \"exp\", nested under \"train\": 0 params, \
                 1 metric points, 3 tags, 0 artifacts; status RUNNING -> FINISHED"
            ),
            "{text}"
        );
        assert!(
            text.contains("run \"evaluate 2\" in experiment \"exp\", nested under \"train\"")
                && text.contains("status RUNNING (left open)"),
            "{text}"
        );
        assert!(
            text.contains("run abc123 (an existing run): 0 params, 1 metric points"),
            "{text}"
        );

        // --end-open: the open run would be ended KILLED, no note.
        let plan = plan_sync(&dir, OpenRuns::End).unwrap();
        let j = &plan.journals[0];
        assert_eq!(j.runs[2].open, Some(true));
        assert_eq!(j.left_open, None);
        assert!(plan.to_string().contains("-> KILLED"));
    }

    #[test]
    fn a_plan_of_a_directory_without_journal_names_it() {
        let root = tempfile::tempdir().unwrap();
        let e = plan_sync(root.path(), OpenRuns::End)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no journal") && e.contains(&root.path().display().to_string()));
    }
}
