//! [`Pipeline`]: the one way logged data travels, for every backend that keeps data:
//!
//! ```text
//! push / append ──> LogQueue ──> SharedJournal (Store: journal file | memory) ──> Uploader ──> server
//! ```
//!
//! - Metrics, params and tags go through the bounded [`LogQueue`], whose worker groups them into
//!   log-batch records and appends them to the store. Run creations, statuses and artifacts are
//!   appended behind everything queued before them, so the store keeps the order of logging.
//! - The store is the journal file by default, memory when the journal is off; the offline
//!   backend has the store and no uploader.
//! - The [`Uploader`] alone talks to the server (through its [`Replayer`]): it replays what the
//!   store holds, and creates a run at once when asked (so a run gets the server's id while the
//!   server answers, a `local-...` id otherwise).
//! - Every wait ends at a deadline: a flush at `flush_timeout`, the end of the program at
//!   `exit_grace` plus one request timeout. What is not delivered by then stays in the journal,
//!   and the program says where and how to send it ([`crate::diag::notice`]).
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::queue::{Deliver, LogQueue, RunBatch};
use super::replay::{NewModelRequest, NewRun, Replayer, is_transient};
use super::uploader::{Backlog, Delivery, UploadOptions, Uploader, Watch};
use crate::error::{Error, Result};
use crate::tracking::inputs::{DatasetInput, LoggedModel};
use crate::tracking::journal::{self, Blob, Reader, Record, RunIds, SharedJournal, Source};
use crate::tracking::{LogItem, RunStatus, now_ms};

pub use crate::tracking::journal::LOCAL_RUN_PREFIX;

/// How long a pipeline's waits may last, and how big its queue grows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// After the first item of a quiet period, how long the queue waits for more.
    pub linger: Duration,
    /// Most items waiting in the queue (see [`LogQueue`]).
    pub queue_capacity: usize,
    /// Longest wait of a flush (and of everything that flushes: status changes, artifacts).
    pub flush_timeout: Duration,
    /// How long the end of the program waits for a server that is away.
    pub exit_grace: Duration,
    /// Timeout of one request (the end of the program may wait for one under way).
    pub request_timeout: Duration,
}

/// A run as the backend asks for it (see [`Pipeline::create_run`]).
#[derive(Debug, Clone, Copy)]
pub struct RunRequest<'a> {
    /// Experiment name.
    pub experiment: &'a str,
    /// Run name.
    pub name: &'a str,
    /// The parent run's id as the backend handed it out, if nested.
    pub parent: Option<&'a str>,
    /// Start time, ms since the Unix epoch.
    pub start_ms: i64,
    /// Tags set at creation (without the run key and the parent id, which this adds).
    pub tags: &'a [(String, String)],
}

/// A run the pipeline created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedRun {
    /// Its id: the server's, or `local-<key>` while the server is away (or offline).
    pub id: String,
    /// Its artifact root, when the server created it.
    pub artifact_uri: Option<String>,
    /// Every tag it was created with (the run key and the parent id included).
    pub tags: Vec<(String, String)>,
}

/// The queue's sink: each round of batches becomes `Batch` records in the store.
#[derive(Debug)]
struct StoreSink(Arc<SharedJournal>);

impl Deliver for StoreSink {
    fn deliver(&mut self, batches: Vec<RunBatch>) -> Result<()> {
        let recs: Vec<Record> = batches
            .into_iter()
            .map(|b| Record::Batch {
                run: self.0.run_ref(&b.run_id),
                metrics: b.metrics,
                params: b.params,
                tags: b.tags,
            })
            .collect();
        self.0.append(&recs)
    }
}

/// The uploader side of an online pipeline.
#[derive(Debug)]
struct Online {
    uploader: Uploader,
    watch: Watch,
    url: String,
}

/// The delivery pipeline of one backend. See the [module docs](self).
#[derive(Debug)]
pub struct Pipeline {
    queue: LogQueue,
    journal: Arc<SharedJournal>,
    online: Option<Online>,
    limits: Limits,
    /// The end of the program ran (drop, or a signal): it runs once.
    finished: AtomicBool,
}

impl Pipeline {
    /// A pipeline with no uploader: everything stays in `journal` (offline mode).
    pub fn offline(journal: SharedJournal, limits: Limits) -> Result<Self> {
        let journal = Arc::new(journal);
        let queue = LogQueue::start(
            StoreSink(journal.clone()),
            limits.linger,
            limits.queue_capacity,
        )?;
        Ok(Pipeline {
            queue,
            journal,
            online: None,
            limits,
            finished: AtomicBool::new(false),
        })
    }

    /// A pipeline whose uploader sends the store's records with `replayer`. `make_journal` gets
    /// the uploader's notifier and its run-id map (for compaction) and returns the store's writer.
    pub fn online(
        source: Source,
        replayer: Arc<Replayer>,
        upload: UploadOptions,
        limits: Limits,
        make_journal: impl FnOnce(Arc<dyn Reader>, RunIds) -> SharedJournal,
    ) -> Result<Self> {
        let url = replayer.http().base().to_owned();
        let ids = replayer.ids();
        let uploader = Uploader::start(source, replayer, upload)?;
        let journal = Arc::new(make_journal(Arc::new(uploader.notifier()), ids));
        let queue = LogQueue::start(
            StoreSink(journal.clone()),
            limits.linger,
            limits.queue_capacity,
        )?;
        let watch = uploader.watch();
        Ok(Pipeline {
            queue,
            journal,
            online: Some(Online {
                uploader,
                watch,
                url,
            }),
            limits,
            finished: AtomicBool::new(false),
        })
    }

    /// Queues `item` for `run_id`; never waits on the network.
    pub fn push(&self, run_id: &str, item: LogItem) {
        self.queue.push(run_id, item);
    }

    /// Appends `records` to the store behind everything queued so far.
    fn append(&self, records: &[Record]) -> Result<()> {
        let flushed = self.queue.flush(self.flush_deadline());
        let appended = self.journal.append(records);
        flushed.and(appended)
    }

    fn flush_deadline(&self) -> Instant {
        Instant::now() + self.limits.flush_timeout
    }

    /// Creates a run: on the server at once when it answers (and the parent is there), else
    /// with a local id, created on the server later by the uploader. Its `Create` record goes to
    /// the store either way (so `sapsan sync` can recreate it elsewhere).
    pub fn create_run(&self, req: RunRequest<'_>) -> Result<CreatedRun> {
        let key = journal::fresh_key();
        let mut tags = req.tags.to_vec();
        tags.push((journal::RUN_KEY_TAG.to_owned(), key.clone()));
        let parent_on_server = req.parent.and_then(|p| self.server_id(p));
        let parent_tag = req.parent.map(|p| {
            let id = parent_on_server.clone().unwrap_or_else(|| p.to_owned());
            ("mlflow.parentRunId".to_owned(), id)
        });
        for (k, v) in tags.iter().chain(parent_tag.iter()) {
            crate::tracking::validate::tag_value(k, v)?;
        }
        // A parent not yet on the server: the child is created after it, by the uploader.
        let parent_is_local = req.parent.is_some() && parent_on_server.is_none();
        let created = match &self.online {
            Some(o) if !parent_is_local => {
                let run = NewRun {
                    key: &key,
                    experiment: req.experiment,
                    name: req.name,
                    parent: parent_on_server.as_deref(),
                    start_ms: req.start_ms,
                    tags: &tags,
                };
                match o.uploader.replayer().create_now(run) {
                    Ok(c) => Some(c),
                    // Server away: the run is stored now, created when the server is back.
                    Err(e) if is_transient(&e) => None,
                    Err(e) => return Err(e),
                }
            }
            _ => None,
        };
        let (id, artifact_uri, server_id) = match created {
            Some((id, uri)) => (id.clone(), uri, Some(id)),
            None => (format!("{LOCAL_RUN_PREFIX}{key}"), None, None),
        };
        let j = &self.journal;
        j.append(&[Record::Create {
            key: key.clone(),
            experiment: req.experiment.to_owned(),
            name: req.name.to_owned(),
            parent: req.parent.map(|p| j.run_ref(p)),
            start_ms: req.start_ms,
            tags: tags.clone(),
            id: server_id,
        }])?;
        j.set_key(&id, &key);
        tags.extend(parent_tag);
        Ok(CreatedRun {
            id,
            artifact_uri,
            tags,
        })
    }

    /// Stores `status` of `run_id` behind everything logged to it, then flushes.
    pub fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()> {
        let end_ms = (status != RunStatus::Running).then(now_ms);
        let rec = Record::Status {
            run: self.journal.run_ref(run_id),
            status,
            end_ms,
        };
        let appended = self.append(&[rec]);
        appended.and(self.flush())
    }

    /// Stores artifact `name` of `run_id` behind everything logged to it, then flushes. Bytes the
    /// journal's disk refuses are sent to the server at once when the run is there. A file is
    /// copied into the journal and sent from there without being read into memory whole (to S3;
    /// the server's proxy takes it in one request).
    pub fn artifact(&self, run_id: &str, name: &str, blob: Blob<'_>) -> Result<()> {
        self.queue.flush(self.flush_deadline())?;
        match self.journal.append_artifact(run_id, name, blob) {
            Ok(()) => self.flush(),
            Err(e) => {
                let (Some(o), Some(server_id)) = (&self.online, self.server_id(run_id)) else {
                    return Err(e);
                };
                log::warn!(
                    target: "sapsan::upload",
                    "{e}; sending artifact {name:?} to MLflow directly"
                );
                let replayer = o.uploader.replayer();
                match blob {
                    Blob::Bytes(bytes) => replayer.put_artifact(&server_id, name, bytes),
                    Blob::File(path) => replayer.put_artifact_file(&server_id, name, path),
                }
            }
        }
    }

    /// Logs `model` as an MLflow 3 logged model produced by run `run_id` of `experiment`: created
    /// on the server at once when it answers (and the run is there), else with a local id and
    /// created by the uploader later; its files follow as artifacts of the model, then it is
    /// finalized READY and recorded as an output of the run. Returns the model's id (the
    /// server's `m-...`, or `local-<key>`), which metrics may name ([`crate::tracking::Metric::model_id`]).
    pub fn log_model(&self, experiment: &str, run_id: &str, model: &LoggedModel) -> Result<String> {
        for (name, _) in &model.files {
            crate::tracking::rest::artifacts::check_name(name)?;
        }
        let key = journal::fresh_key();
        let mut tags = model.tags.clone();
        tags.push((journal::MODEL_KEY_TAG.to_owned(), key.clone()));
        let source_on_server = self.server_id(run_id);
        let created = match (&self.online, &source_on_server) {
            (Some(o), Some(source)) => {
                let req = NewModelRequest {
                    experiment,
                    name: &model.name,
                    source_run: Some(source),
                    model_type: model.model_type.as_deref(),
                    params: &model.params,
                    tags: &tags,
                };
                match o.uploader.replayer().create_model_now(&key, req) {
                    Ok(id) => Some(id),
                    Err(e) if is_transient(&e) => None,
                    Err(e) => return Err(e),
                }
            }
            _ => None,
        };
        let id = created
            .clone()
            .unwrap_or_else(|| format!("{LOCAL_RUN_PREFIX}{key}"));
        let j = &self.journal;
        self.append(&[Record::CreateModel {
            key: key.clone(),
            experiment: experiment.to_owned(),
            name: model.name.clone(),
            source: Some(j.run_ref(run_id)),
            model_type: model.model_type.clone(),
            params: model.params.clone(),
            tags,
            id: created,
        }])?;
        j.set_key(&id, &key);
        for (name, bytes) in &model.files {
            j.append_artifact(&id, name, Blob::Bytes(bytes))?;
        }
        j.append(&[
            Record::ModelReady {
                model: j.run_ref(&id),
            },
            Record::Outputs {
                run: j.run_ref(run_id),
                model: j.run_ref(&id),
                step: 0,
            },
        ])?;
        self.flush()?;
        Ok(id)
    }

    /// Stores the inputs of run `run_id` (datasets with their context, logged models by the ids
    /// [`Pipeline::log_model`] returned) behind everything logged to it.
    pub fn log_inputs(
        &self,
        run_id: &str,
        datasets: &[DatasetInput],
        models: &[String],
    ) -> Result<()> {
        let j = &self.journal;
        self.append(&[Record::Inputs {
            run: j.run_ref(run_id),
            datasets: datasets.to_vec(),
            models: models.iter().map(|m| j.run_ref(m)).collect(),
        }])
    }

    /// Waits until everything logged so far is safe, at most `flush_timeout`: on the server, or
    /// (while the server does not answer) in the journal on disk, from where the uploader sends
    /// it when the server is back. With the journal off, safe means on the server: a server that
    /// does not answer is [`Error::Connection`] and a deadline that passed is [`Error::Timeout`]
    /// (the data stays in memory and is retried). Offline, safe means in the journal. Returns
    /// the first record the server refused since the last flush.
    pub fn flush(&self) -> Result<()> {
        let deadline = self.flush_deadline();
        self.queue.flush(deadline)?;
        let Some(o) = &self.online else {
            return Ok(());
        };
        let started = Instant::now();
        // On disk the data is safe whatever the server does; in memory only the server makes it
        // safe, so a server found away earlier gets one more attempt now.
        let on_disk = self.journal.dir().is_some();
        let outcome = o.watch.wait(deadline, !on_disk)?;
        if on_disk {
            return Ok(());
        }
        match outcome {
            Delivery::Delivered => Ok(()),
            Delivery::ServerAway => Err(Error::Connection {
                url: o.url.clone(),
                reason: format!(
                    "{}; the logged data is kept in memory and sent when the server is back \
                     (the journal is off, so it is lost if the program ends first)",
                    o.watch
                        .progress()
                        .1
                        .unwrap_or_else(|| "not answering".into())
                ),
            }),
            Delivery::TimedOut => Err(Error::Timeout {
                what: format!("delivering the logged data to {}", o.url),
                after: started.elapsed(),
            }),
        }
    }

    /// Waits up to `timeout` until everything logged so far is on the server (asking the
    /// uploader to try at once); whether it all landed. Offline: whether it is all stored.
    pub fn wait_delivered(&self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        self.queue.flush(deadline)?;
        Ok(match &self.online {
            Some(o) => o.watch.wait_delivered(deadline),
            None => true,
        })
    }

    /// How far delivery to the server is (`None` offline).
    pub fn backlog(&self) -> Option<Backlog> {
        self.online.as_ref().map(|o| o.watch.backlog())
    }

    /// The id the server knows run `run_id` by, when it is on the server: `run_id` itself, or
    /// for a `local-...` run the id the uploader created it with.
    pub fn server_id(&self, run_id: &str) -> Option<String> {
        let Some(key) = run_id.strip_prefix(LOCAL_RUN_PREFIX) else {
            return self.online.as_ref().map(|_| run_id.to_owned());
        };
        self.online.as_ref()?.uploader.replayer().run_id(key)
    }

    /// Like [`Pipeline::server_id`], but a `local-...` run not on the server yet makes the
    /// uploader try at once (waiting at most one request timeout); [`Error::RunNotUploaded`]
    /// while the server still does not have it.
    pub fn server_id_now(&self, run_id: &str) -> Result<String> {
        if let Some(id) = self.server_id(run_id) {
            return Ok(id);
        }
        if let Some(o) = &self.online {
            let deadline = Instant::now() + self.limits.request_timeout;
            let _ = self.queue.flush(deadline);
            o.watch.wait_now(deadline);
            if let Some(id) = self.server_id(run_id) {
                return Ok(id);
            }
        }
        let url = self
            .online
            .as_ref()
            .map_or("(offline)", |o| &o.url)
            .to_owned();
        let (kept, hint) = match self.journal.dir() {
            Some(dir) => (
                format!("the journal {}", dir.display()),
                format!(
                    " (or upload it with `sapsan sync {} --tracking-uri {url}`)",
                    dir.display()
                ),
            ),
            None => ("memory (the journal is off)".to_owned(), String::new()),
        };
        Err(Error::RunNotUploaded {
            run_id: run_id.to_owned(),
            url,
            kept,
            hint,
        })
    }

    /// The journal directory (`None` when the store is memory).
    pub fn journal_dir(&self) -> Option<PathBuf> {
        self.journal.dir()
    }

    /// Requests the uploader has sent (every attempt).
    pub fn requests(&self) -> u64 {
        self.online
            .as_ref()
            .map_or(0, |o| o.uploader.replayer().http().requests())
    }

    /// The end of the program (or of the backend): stores `status` for the runs in `open`, waits
    /// for the server (at most `grace` while it is away, plus one request timeout), sends what
    /// the disk refused straight to it, and then removes the delivered journal or says where the
    /// rest is kept and how to send it. Runs once; later calls do nothing.
    pub fn finish(&self, open: &[String], status: RunStatus, grace: Duration) {
        if self.finished.swap(true, Ordering::SeqCst) {
            return;
        }
        let deadline = Instant::now() + grace + self.limits.request_timeout;
        if let Err(e) = self.queue.flush(deadline) {
            log::warn!(target: "sapsan::upload", "could not store everything logged: {e}");
        }
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
            log::warn!(target: "sapsan::upload", "could not store the end of the open runs: {e}");
        }
        let Some(o) = &self.online else {
            self.tell_offline();
            return;
        };
        if let Err(e) = o.watch.wait_at_exit(grace, self.limits.request_timeout) {
            log::warn!(target: "sapsan::upload", "some logged data was refused by MLflow: {e}");
        }
        let drained = o.watch.drained();
        // Records the disk refused follow everything stored: sent only once that has landed.
        let (held, why) = self.journal.take_held();
        let mut undelivered = &held[..];
        if drained {
            let rep = o.uploader.replayer();
            while let Some((r, rest)) = undelivered.split_first() {
                if Instant::now() >= deadline {
                    break;
                }
                match rep.apply(r) {
                    Ok(()) => {}
                    Err(e) if is_transient(&e) => break,
                    Err(e) => log::warn!(
                        target: "sapsan::upload",
                        "some logged data was refused by MLflow: {e}"
                    ),
                }
                undelivered = rest;
            }
        }
        let lost =
            undelivered.iter().map(Record::items).sum::<usize>() as u64 + self.journal.dropped();
        o.uploader.stop(deadline);
        self.tell_online(o, drained && undelivered.is_empty(), lost, why);
    }

    /// Says where an offline journal is and how to upload it.
    fn tell_offline(&self) {
        let Some(dir) = self.journal.dir() else {
            return;
        };
        let items = journal::read_records(&dir, 0, None)
            .map(|r| r.iter().map(|(r, _)| r.items()).sum::<usize>())
            .unwrap_or(0);
        crate::diag::notice(
            "sapsan::journal",
            &format!(
                "offline mode: {items} logged items are kept in {}. Upload them with:\n    \
                 sapsan sync {} --tracking-uri <http://mlflow-server:port>",
                dir.display(),
                dir.display()
            ),
        );
    }

    /// At the end of an online pipeline: removes a fully delivered journal, or says where the
    /// rest is kept (or that it is lost, with the journal off). `lost`: items neither stored nor
    /// sent, and why the store refused them.
    fn tell_online(&self, o: &Online, delivered: bool, lost: u64, why: Option<String>) {
        let (acked, last_error) = o.watch.progress();
        // No error: the server answered, but did not take everything within the exit grace.
        let state = match last_error {
            Some(e) => format!("is unreachable ({e})"),
            None => "did not take everything before the program ended".to_owned(),
        };
        match self.journal.dir() {
            Some(dir) if delivered => journal::remove_dir(&dir),
            Some(dir) => {
                let (records, items) = match journal::read_records(&dir, acked, None) {
                    Ok(r) => (r.len(), r.iter().map(|(r, _)| r.items()).sum::<usize>()),
                    Err(_) => (0, 0),
                };
                crate::diag::notice(
                    "sapsan::journal",
                    &format!(
                        "the MLflow server at {url} {state}; {items} logged items ({records} \
                         journal records) are kept in {d}. Upload them when it is back with:\n    \
                         sapsan sync {d} --tracking-uri {url}",
                        url = o.url,
                        d = dir.display(),
                    ),
                );
            }
            None if delivered => {}
            None => {
                let items: usize = self
                    .journal
                    .source()
                    .read_records(acked, None)
                    .map(|r| r.iter().map(|(r, _)| r.items()).sum())
                    .unwrap_or(0);
                crate::diag::notice(
                    "sapsan::upload",
                    &format!(
                        "the MLflow server at {url} {state}; {items} logged items could not be \
                         delivered and are lost: the journal is off (SAPSAN_JOURNAL=0). Leave it \
                         on to keep such data on disk.",
                        url = o.url,
                    ),
                );
            }
        }
        if lost > 0 {
            crate::diag::notice(
                "sapsan::journal",
                &format!(
                    "{lost} more logged items are lost: the store refused them ({}) and the \
                     server could not take them either",
                    why.unwrap_or_else(|| "memory for held records full".into())
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::journal::{Journal, MemoryStore, RunRef, Store};
    use crate::tracking::{LogItem, Metric};

    fn limits() -> Limits {
        Limits {
            linger: Duration::from_millis(1),
            queue_capacity: 10_000,
            flush_timeout: Duration::from_secs(10),
            exit_grace: Duration::from_millis(100),
            request_timeout: Duration::from_millis(100),
        }
    }

    fn metric(step: i64) -> LogItem {
        LogItem::Metric(Metric {
            key: "m".into(),
            value: step as f64,
            timestamp_ms: 1,
            step,
            model_id: None,
        })
    }

    #[test]
    fn offline_pipeline_stores_runs_items_and_statuses_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::create_in(tmp.path()).unwrap();
        let dir = j.dir().to_owned();
        let p = Pipeline::offline(SharedJournal::new(j, None), limits()).unwrap();
        let run = p
            .create_run(RunRequest {
                experiment: "e",
                name: "train",
                parent: None,
                start_ms: 1,
                tags: &[],
            })
            .unwrap();
        assert!(run.id.starts_with(LOCAL_RUN_PREFIX));
        assert!(run.tags.iter().any(|(k, _)| k == journal::RUN_KEY_TAG));
        for i in 0..5 {
            p.push(&run.id, metric(i));
        }
        p.set_status(&run.id, RunStatus::Finished).unwrap();
        let recs: Vec<Record> = journal::read_records(&dir, 0, None)
            .unwrap()
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert!(matches!(recs[0], Record::Create { .. }));
        assert_eq!(recs[1].items(), 5);
        assert!(
            matches!(&recs[2], Record::Status { run: RunRef::Key(_), status, .. } if *status == RunStatus::Finished)
        );
        assert!(p.server_id(&run.id).is_none());
        p.finish(&[], RunStatus::Finished, Duration::ZERO);
        assert!(dir.exists(), "an offline journal is the data itself");
    }

    #[test]
    fn a_memory_store_is_read_back_like_a_journal() {
        let store = Store::from(MemoryStore::new(1 << 20));
        let src = store.source();
        let p = Pipeline::offline(SharedJournal::new(store, None), limits()).unwrap();
        let run = p
            .create_run(RunRequest {
                experiment: "e",
                name: "eval",
                parent: None,
                start_ms: 1,
                tags: &[],
            })
            .unwrap();
        p.push(&run.id, metric(0));
        p.flush().unwrap();
        assert_eq!(src.read_records(0, None).unwrap().len(), 2);
        assert_eq!(p.journal_dir(), None);
    }
}
