//! The read side of [`MlflowBackend`]: runs, metric histories and artifacts as the server holds
//! them. `local-...` ids (runs started while the server was away) are resolved first.
use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::MlflowBackend;
use crate::error::{Error, Result};
use crate::tracking::rest::artifacts::{self, ArtifactLocation};
use crate::tracking::rest::client::{HttpClient, Idempotency};
use crate::tracking::rest::s3::S3Root;
use crate::tracking::rest::wire::{as_i64, as_string};
use crate::tracking::{Metric, RunData, RunStatus, validate};

/// How MLflow names a logged model in a URI: `models:/<model id>`.
pub const MODEL_URI_SCHEME: &str = "models:/";

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

impl MlflowBackend {
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
        search_runs_in(&self.http, &self.experiment_id()?, filter)
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

    /// The artifact URI of server run `run_id`: remembered from its creation, else read once
    /// with `runs/get`.
    fn artifact_uri(&self, run_id: &str) -> Result<String> {
        if let Some(u) = self.core.artifact_uri(run_id) {
            return Ok(u);
        }
        let uri = self.get_run(run_id)?.artifact_uri;
        self.core.remember_artifact_uri(run_id, &uri);
        Ok(uri)
    }

    /// Lists the artifacts of `run_id` under `path` (`None`: the root): from the bucket itself
    /// when they are in S3, else through the server.
    pub fn list_artifacts(&self, run_id: &str, path: Option<&str>) -> Result<Vec<ArtifactFile>> {
        let run_id = self.server_run_id(run_id)?;
        let run_id = run_id.as_str();
        let mut q = vec![("run_id", run_id)];
        if let Some(p) = path {
            artifacts::check_name(p)?;
            q.push(("path", p));
        }
        if let ArtifactLocation::S3(root) = ArtifactLocation::parse(&self.artifact_uri(run_id)?) {
            return self.list_s3(&root, path);
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
        artifacts::check_name(name)?;
        let run_id = self.server_run_id(run_id)?;
        let uri = self.artifact_uri(&run_id)?;
        self.download(&run_id, &uri, name)
    }

    /// The bytes of file `name` of a logged model: `model` is `models:/<id>` or the id
    /// [`crate::tracking::Backend::log_model`] returned.
    pub fn download_model_file(&self, model: &str, name: &str) -> Result<Vec<u8>> {
        artifacts::check_name(name)?;
        let id = model.strip_prefix(MODEL_URI_SCHEME).unwrap_or(model);
        let id = self.server_run_id(id)?;
        let uri = match self.core.artifact_uri(&id) {
            Some(u) => u,
            None => {
                let v = self.http.get(&format!("logged-models/{id}"), &[])?;
                let uri = v
                    .pointer("/model/info/artifact_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::Artifact {
                        name: name.to_owned(),
                        reason: format!("the server's answer for model {id} has no artifact_uri"),
                    })?
                    .to_owned();
                self.core.remember_artifact_uri(&id, &uri);
                uri
            }
        };
        self.download(&id, &uri, name)
    }

    /// `name` under artifact root `uri` of run or model `id`.
    fn download(&self, id: &str, uri: &str, name: &str) -> Result<Vec<u8>> {
        let target = artifacts::target(self.http.base(), id, uri, name)?;
        artifacts::get(&self.http, &self.s3, &target)
    }

    /// The files and directories right under `path` of an artifact root in S3, as MLflow lists
    /// them (paths relative to the root).
    fn list_s3(&self, root: &S3Root, path: Option<&str>) -> Result<Vec<ArtifactFile>> {
        let under = match path {
            Some(p) => format!("{}/", root.key(p)),
            None if root.prefix.is_empty() => String::new(),
            None => format!("{}/", root.prefix),
        };
        let listing = self.s3.get(&self.http)?.list(&root.bucket, &under)?;
        let relative = |k: &str| {
            let k = k.strip_prefix(root.prefix.as_str()).unwrap_or(k);
            k.trim_matches('/').to_owned()
        };
        let mut out: Vec<ArtifactFile> = listing
            .prefixes
            .iter()
            .map(|p| ArtifactFile {
                path: relative(p),
                is_dir: true,
                file_size: None,
            })
            .chain(listing.objects.iter().map(|(k, size)| ArtifactFile {
                path: relative(k),
                is_dir: false,
                file_size: Some(*size),
            }))
            .filter(|f| !f.path.is_empty())
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

/// Runs of experiment `experiment_id` matching `filter` (MLflow search syntax, `""` for all),
/// newest first; every page is read.
pub(crate) fn search_runs_in(
    http: &HttpClient,
    experiment_id: &str,
    filter: &str,
) -> Result<Vec<RunInfo>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut body = json!({
            "experiment_ids": [experiment_id],
            "filter": filter,
            "max_results": 1000,
            "order_by": ["attributes.start_time DESC"],
        });
        if let Some(t) = &token {
            body["page_token"] = json!(t);
        }
        let v = http.post("runs/search", &body, Idempotency::Idempotent)?;
        if let Some(runs) = v.get("runs").and_then(Value::as_array) {
            out.extend(runs.iter().map(parse_run));
        }
        match v.get("next_page_token").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => return Ok(out),
        }
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
        model_id: m.get("model_id").and_then(as_string),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
