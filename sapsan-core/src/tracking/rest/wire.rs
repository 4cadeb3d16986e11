//! MLflow's REST requests and bodies that more than one sender builds: run creation, experiment
//! get-or-create, the log-batch body, and the mapping of "no such run" answers.
use serde::Serialize;
use serde_json::{Value, json};

use super::client::{HttpClient, Idempotency};
use crate::error::{Error, Result};
use crate::tracking::Metric;

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

/// The id of experiment `name`, `None` when the server has no experiment of that name; a
/// deleted one is [`Error::DeletedExperiment`].
pub(crate) fn experiment_by_name(http: &HttpClient, name: &str) -> Result<Option<String>> {
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
}

/// Finds experiment `name`, creating it when missing; safe against a concurrent creator.
pub(crate) fn get_or_create_experiment(http: &HttpClient, name: &str) -> Result<String> {
    let by_name = || experiment_by_name(http, name);
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

/// A string field, or a number read as a string (protobuf JSON ids).
pub(crate) fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An int64 field, sent as a number or (protobuf JSON) as a string.
pub(crate) fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
