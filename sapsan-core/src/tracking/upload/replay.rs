//! [`Replayer`]: applies stored records to one MLflow server, the only code that sends runs,
//! batches, statuses and artifacts. It creates each run exactly once (found again by its
//! [`RUN_KEY_TAG`] before creating), so a journal may be replayed any number of times: the server
//! drops exact duplicate metric points, a param logged again with the same value is accepted,
//! tags and statuses are set to the same values again.
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::shared::Shared;
use crate::tracking::Metric;
use crate::tracking::inputs::CONTEXT_TAG;
use crate::tracking::journal::{
    LOCAL_RUN_PREFIX, MODEL_KEY_TAG, RUN_KEY_TAG, Record, RunIds, RunRef, Source,
};
use crate::tracking::rest::artifacts;
use crate::tracking::rest::client::{HttpClient, Idempotency, TLS_HINT};
use crate::tracking::rest::s3::S3Slot;
use crate::tracking::rest::wire::{
    BatchBody, create_run_request, get_or_create_experiment, map_unknown_run,
};

/// Whether `e` may go away by itself (server down, frozen, overloaded): retry later. Errors of
/// the library itself ([`Error::Internal`]) and answers that refuse the request are not.
pub fn is_transient(e: &Error) -> bool {
    match e {
        // An untrusted certificate stays untrusted.
        Error::Connection { reason, .. } => !reason.contains(TLS_HINT),
        Error::Mlflow { status, .. } => *status == 429 || *status >= 500,
        Error::ObjectStore { status, reason, .. } => match status {
            None => !reason.contains(crate::tracking::rest::s3::TLS_HINT),
            Some(s) => *s == 429 || *s >= 500,
        },
        _ => false,
    }
}

fn lock<T>(m: &Shared<T>) -> MutexGuard<'_, T> {
    m.lock()
}

/// A run to create on the server now (see [`Replayer::create_now`]).
#[derive(Debug, Clone, Copy)]
pub struct NewRun<'a> {
    /// Client-generated key (also in `tags` as [`RUN_KEY_TAG`]).
    pub key: &'a str,
    /// Experiment name.
    pub experiment: &'a str,
    /// Run name.
    pub name: &'a str,
    /// Server id of the parent run, if nested.
    pub parent: Option<&'a str>,
    /// Start time, ms since the Unix epoch.
    pub start_ms: i64,
    /// Tags set at creation.
    pub tags: &'a [(String, String)],
}

/// A logged model as the server is asked to create it.
struct NewModel<'a> {
    experiment_id: &'a str,
    name: &'a str,
    source_run: Option<&'a str>,
    model_type: Option<&'a str>,
    params: &'a [(String, String)],
    tags: &'a [(String, String)],
}

/// A logged model to create on the server now (see [`Replayer::create_model_now`]).
#[derive(Debug, Clone, Copy)]
pub struct NewModelRequest<'a> {
    /// Experiment name.
    pub experiment: &'a str,
    /// Model name.
    pub name: &'a str,
    /// Server id of the run that produced it.
    pub source_run: Option<&'a str>,
    /// Model type.
    pub model_type: Option<&'a str>,
    /// Params.
    pub params: &'a [(String, String)],
    /// Tags (the model key among them).
    pub tags: &'a [(String, String)],
}

/// Applies stored records to one server. Shared by the uploader thread and its owner (which
/// creates runs at once when the server answers); every method takes `&self`.
#[derive(Debug)]
pub struct Replayer {
    http: Arc<HttpClient>,
    /// Where artifact bytes are read from.
    source: Source,
    /// Run key -> server run id.
    runs: RunIds,
    /// Experiment name -> id.
    experiments: Shared<HashMap<String, String>>,
    /// Server run id -> artifact root.
    artifact_uris: Shared<HashMap<String, String>>,
    /// Trust the ids recorded in `Create` records (same server as when they were written).
    trust_ids: bool,
    /// Held while a run is looked up and created, so it is created once.
    creating: Shared<()>,
    /// The S3 client for runs whose artifacts live in a bucket (built on first use).
    s3: S3Slot,
}

impl Replayer {
    /// A replayer sending the records of `source` with `http`. `trust_ids`: the records were
    /// written against this very server, so run ids recorded at creation are valid (skips the
    /// look-up by key).
    pub fn new(http: Arc<HttpClient>, source: Source, trust_ids: bool) -> Self {
        Replayer {
            http,
            source,
            runs: RunIds::default(),
            experiments: Shared::new(HashMap::new()),
            artifact_uris: Shared::new(HashMap::new()),
            trust_ids,
            creating: Shared::new(()),
            s3: S3Slot::default(),
        }
    }

    /// The run key -> server id map this replayer fills.
    pub fn ids(&self) -> RunIds {
        self.runs.clone()
    }

    /// The HTTP client it sends with.
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// Records that experiment `name` has id `id` on this server.
    pub fn know_experiment(&self, name: &str, id: &str) {
        lock(&self.experiments).insert(name.to_owned(), id.to_owned());
    }

    /// The server id of run key `key`, once its `Create` record has been applied.
    pub fn run_id(&self, key: &str) -> Option<String> {
        lock(&self.runs).get(key).cloned()
    }

    /// The id of experiment `name` on the server (created when missing).
    pub fn experiment(&self, name: &str) -> Result<String> {
        if let Some(id) = lock(&self.experiments).get(name) {
            return Ok(id.clone());
        }
        let id = get_or_create_experiment(&self.http, name)?;
        lock(&self.experiments).insert(name.to_owned(), id.clone());
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

    /// Creates a run that no record names yet (its `Create` record is written after, with the id
    /// this returns): `runs/create` at once, no look-up by key. The server id and artifact root.
    pub fn create_now(&self, run: NewRun<'_>) -> Result<(String, Option<String>)> {
        let exp_id = self.experiment(run.experiment)?;
        let parent_tag = run
            .parent
            .map(|p| ("mlflow.parentRunId".to_owned(), p.to_owned()));
        let (rid, uri) = create_run_request(
            &self.http,
            &exp_id,
            run.name,
            run.start_ms,
            run.tags.iter().chain(parent_tag.as_ref()),
        )?;
        if let Some(uri) = &uri {
            lock(&self.artifact_uris).insert(rid.clone(), uri.clone());
        }
        lock(&self.runs).insert(run.key.to_owned(), rid.clone());
        Ok((rid, uri))
    }

    /// Applies one record (any kind; a `Create` or `CreateModel` is looked up by key before it
    /// is created).
    pub fn apply(&self, rec: &Record) -> Result<()> {
        if let Record::CreateModel { .. } = rec {
            return self.create_model(rec);
        }
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
        let _once = lock(&self.creating);
        if self.already_known(key, id.as_deref()) {
            return Ok(());
        }
        let exp_id = self.experiment(experiment)?;
        if let Some(found) = self.find_by_key(&exp_id, key)? {
            lock(&self.runs).insert(key.clone(), found);
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
            lock(&self.artifact_uris).insert(rid.clone(), uri);
        }
        lock(&self.runs).insert(key.clone(), rid);
        Ok(())
    }

    /// Whether the run or model `key` needs no creation: created (or found) before, or recorded
    /// with its server `id` against this very server. Called with the creation lock held.
    fn already_known(&self, key: &str, id: Option<&str>) -> bool {
        if self.run_id(key).is_some() {
            return true;
        }
        match id {
            Some(id) if self.trust_ids => {
                lock(&self.runs).insert(key.to_owned(), id.to_owned());
                true
            }
            _ => false,
        }
    }

    /// Applies a record that creates nothing (a batch, a status, an artifact); safe to call from
    /// several threads at once. A `Create` record is refused here (use [`Replayer::apply`]).
    pub fn apply_shared(&self, rec: &Record) -> Result<()> {
        match rec {
            Record::Create { key, .. } | Record::CreateModel { key, .. } => Err(Error::Internal {
                what: format!("replaying the creation of journal run or model {key}"),
                reason: "creations go through Replayer::apply".into(),
            }),
            Record::Batch {
                run,
                metrics,
                params,
                tags,
            } => {
                let run_id = self.resolve(run)?;
                let metrics = self.with_server_model_ids(metrics)?;
                let body = BatchBody::new(&run_id, &metrics, params, tags);
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
                let target = self.artifact_target(&run_id, name)?;
                match (&target, self.source.dir()) {
                    // Streamed from the journal's file: one part in memory at a time.
                    (artifacts::Target::S3(_), Some(dir)) => {
                        artifacts::put_file(&self.http, &self.s3, &target, &dir.join(file))?
                    }
                    _ => {
                        let bytes = self.source.read_blob(file)?;
                        artifacts::put(&self.http, &self.s3, &target, &bytes)?
                    }
                }
                self.source.release_blob(file);
                Ok(())
            }
            Record::ModelReady { model } => {
                let id = self.resolve(model)?;
                let body = json!({"model_id": id, "status": "LOGGED_MODEL_READY"});
                self.http.patch(
                    &format!("logged-models/{id}"),
                    &body,
                    Idempotency::Idempotent,
                )?;
                Ok(())
            }
            Record::Inputs {
                run,
                datasets,
                models,
            } => {
                let run_id = self.resolve(run)?;
                let datasets: Vec<Value> = datasets
                    .iter()
                    .map(|d| {
                        json!({
                            "tags": [{"key": CONTEXT_TAG, "value": d.context.as_str()}],
                            "dataset": d.dataset,
                        })
                    })
                    .collect();
                let models = models
                    .iter()
                    .map(|m| Ok(json!({"model_id": self.resolve(m)?})))
                    .collect::<Result<Vec<Value>>>()?;
                let body = json!({"run_id": run_id, "datasets": datasets, "models": models});
                self.http
                    .post("runs/log-inputs", &body, Idempotency::Idempotent)
                    .map_err(|e| map_unknown_run(e, &run_id, self.http.base()))?;
                Ok(())
            }
            Record::Outputs { run, model, step } => {
                let run_id = self.resolve(run)?;
                let model_id = self.resolve(model)?;
                let body = json!({
                    "run_id": run_id,
                    "models": [{"model_id": model_id, "step": step}],
                });
                match self
                    .http
                    .post("runs/outputs", &body, Idempotency::Idempotent)
                {
                    Ok(_) => Ok(()),
                    // Not idempotent on the server (a second insert breaks a unique key): sent
                    // before (a lost answer, a journal synced again) is done.
                    Err(e @ Error::Mlflow { status: 400, .. }) => {
                        if self.has_output(&run_id, &model_id)? {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    }
                    Err(e) => Err(map_unknown_run(e, &run_id, self.http.base())),
                }
            }
        }
    }

    /// Whether run `run_id` already lists model `model_id` among its outputs.
    fn has_output(&self, run_id: &str, model_id: &str) -> Result<bool> {
        let v = self
            .http
            .get("runs/get", &[("run_id", run_id)])
            .map_err(|e| map_unknown_run(e, run_id, self.http.base()))?;
        let outputs = v
            .pointer("/run/outputs/model_outputs")
            .and_then(Value::as_array);
        Ok(outputs.is_some_and(|o| {
            o.iter()
                .any(|m| m.get("model_id").and_then(Value::as_str) == Some(model_id))
        }))
    }

    /// `metrics` with every model id the backend handed out (`local-<key>` while the model was
    /// not on the server) replaced by the server's.
    fn with_server_model_ids<'m>(&self, metrics: &'m [Metric]) -> Result<Cow<'m, [Metric]>> {
        let local = |m: &Metric| {
            m.model_id
                .as_deref()
                .is_some_and(|id| id.starts_with(LOCAL_RUN_PREFIX))
        };
        if !metrics.iter().any(local) {
            return Ok(Cow::Borrowed(metrics));
        }
        let mut out = metrics.to_vec();
        for m in out.iter_mut().filter(|m| local(m)) {
            let key =
                m.model_id.as_deref().unwrap_or_default()[LOCAL_RUN_PREFIX.len()..].to_owned();
            m.model_id = Some(self.resolve(&RunRef::Key(key))?);
        }
        Ok(Cow::Owned(out))
    }

    /// Creates a logged model once: found again by its [`MODEL_KEY_TAG`] before creating (a lost
    /// answer is harmless), or taken from the record when it was created at once on this server.
    fn create_model(&self, rec: &Record) -> Result<()> {
        let Record::CreateModel {
            key,
            experiment,
            name,
            source,
            model_type,
            params,
            tags,
            id,
        } = rec
        else {
            return self.apply(rec);
        };
        let _once = lock(&self.creating);
        if self.already_known(key, id.as_deref()) {
            return Ok(());
        }
        let exp_id = self.experiment(experiment)?;
        let found = self.http.post(
            "logged-models/search",
            &json!({
                "experiment_ids": [exp_id],
                "filter": format!("tags.`{MODEL_KEY_TAG}` = '{key}'"),
                "max_results": 1,
            }),
            Idempotency::Idempotent,
        )?;
        let info = match found.pointer("/models/0/info") {
            Some(info) => info.clone(),
            None => {
                let source = source.as_ref().map(|r| self.resolve(r)).transpose()?;
                let created = self.post_model(&NewModel {
                    experiment_id: &exp_id,
                    name,
                    source_run: source.as_deref(),
                    model_type: model_type.as_deref(),
                    params,
                    tags,
                })?;
                created.pointer("/model/info").cloned().unwrap_or_default()
            }
        };
        self.remember_model(key, &info)
    }

    /// `logged-models` create; the answer.
    fn post_model(&self, m: &NewModel<'_>) -> Result<Value> {
        let kv = |v: &[(String, String)]| -> Vec<Value> {
            v.iter()
                .map(|(k, v)| json!({"key": k, "value": v}))
                .collect()
        };
        let mut body = json!({
            "experiment_id": m.experiment_id,
            "name": m.name,
            "params": kv(m.params),
            "tags": kv(m.tags),
        });
        if let Some(r) = m.source_run {
            body["source_run_id"] = json!(r);
        }
        if let Some(t) = m.model_type {
            body["model_type"] = json!(t);
        }
        self.http
            .post("logged-models", &body, Idempotency::CreatesOnce)
    }

    /// Records the id and artifact location of model `key` from the server's `info`.
    fn remember_model(&self, key: &str, info: &Value) -> Result<()> {
        let id = info
            .get("model_id")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Internal {
                what: format!("creating logged model {key}"),
                reason: format!("the server's answer has no model id: {info}"),
            })?
            .to_owned();
        if let Some(uri) = info.get("artifact_uri").and_then(Value::as_str) {
            lock(&self.artifact_uris).insert(id.clone(), uri.to_owned());
        }
        lock(&self.runs).insert(key.to_owned(), id);
        Ok(())
    }

    /// Creates a logged model that no record names yet (its `CreateModel` record is written
    /// after, with the id this returns). The server id.
    pub fn create_model_now(&self, key: &str, model: NewModelRequest<'_>) -> Result<String> {
        let exp_id = self.experiment(model.experiment)?;
        let created = self.post_model(&NewModel {
            experiment_id: &exp_id,
            name: model.name,
            source_run: model.source_run,
            model_type: model.model_type,
            params: model.params,
            tags: model.tags,
        })?;
        let info = created.pointer("/model/info").cloned().unwrap_or_default();
        self.remember_model(key, &info)?;
        self.run_id(key).ok_or_else(|| Error::Internal {
            what: format!("creating logged model {key}"),
            reason: "its id was not recorded".into(),
        })
    }

    /// Uploads artifact `name` of server run `run_id` (through the server's proxy, into a
    /// local artifact root, or to S3).
    pub fn put_artifact(&self, run_id: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let target = self.artifact_target(run_id, name)?;
        artifacts::put(&self.http, &self.s3, &target, bytes)
    }

    /// Uploads the file at `path` as artifact `name` of server run `run_id` (to S3 streamed, one
    /// part in memory at a time).
    pub fn put_artifact_file(
        &self,
        run_id: &str,
        name: &str,
        path: &std::path::Path,
    ) -> Result<()> {
        let target = self.artifact_target(run_id, name)?;
        artifacts::put_file(&self.http, &self.s3, &target, path)
    }

    /// Where artifact `name` of server run `run_id` goes.
    fn artifact_target(&self, run_id: &str, name: &str) -> Result<artifacts::Target> {
        let uri = self.artifact_uri(run_id)?;
        artifacts::target(self.http.base(), run_id, &uri, name)
    }

    /// The artifact root of `run_id`: remembered from its creation, else read with `runs/get`.
    fn artifact_uri(&self, run_id: &str) -> Result<String> {
        if let Some(u) = lock(&self.artifact_uris).get(run_id) {
            return Ok(u.clone());
        }
        // Logged models have ids `m-<hex>`, runs plain hex.
        let (v, at) = if run_id.starts_with("m-") {
            let v = self.http.get(&format!("logged-models/{run_id}"), &[])?;
            (v, "/model/info/artifact_uri")
        } else {
            let v = self
                .http
                .get("runs/get", &[("run_id", run_id)])
                .map_err(|e| map_unknown_run(e, run_id, self.http.base()))?;
            (v, "/run/info/artifact_uri")
        };
        let uri = v
            .pointer(at)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        lock(&self.artifact_uris).insert(run_id.to_owned(), uri.clone());
        Ok(uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_batch_goes_to_the_wire_in_the_log_batch_format() {
        let metric = |value, step| crate::tracking::Metric::new("loss", value, 7, step);
        let rec = Record::Batch {
            run: RunRef::Key("k".into()),
            metrics: vec![
                metric(0.5, 2),
                metric(f64::NAN, 3),
                metric(f64::NEG_INFINITY, 4),
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
    fn only_the_server_being_away_is_transient() {
        let conn = Error::Connection {
            url: "u".into(),
            reason: "connection failed".into(),
        };
        assert!(is_transient(&conn));
        let tls = Error::Connection {
            url: "u".into(),
            reason: format!("invalid peer certificate; {TLS_HINT}"),
        };
        assert!(
            !is_transient(&tls),
            "a certificate does not become trusted by waiting"
        );
        let http = |status| Error::Mlflow {
            method: "POST".into(),
            url: "u".into(),
            status,
            error_code: "X".into(),
            message: String::new(),
        };
        assert!(is_transient(&http(503)));
        assert!(is_transient(&http(429)));
        assert!(!is_transient(&http(400)));
        // The library's own failures (a thread that did not start, a body that did not encode)
        // would fail the same way again: never retried as if the server were away.
        let internal = Error::Internal {
            what: "starting the uploader thread".into(),
            reason: "Resource temporarily unavailable".into(),
        };
        assert!(!is_transient(&internal));
        assert!(!is_transient(&http(0)));
    }
}
