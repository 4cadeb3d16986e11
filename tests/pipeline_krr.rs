//! Sapsan's KRR example (`examples/krr.rs`) against a live MLflow server, judged by the official
//! Python client: a train run with KRR's `model - ...` params and an evaluate run nested under
//! it, both FINISHED, with their metrics and artifacts.
mod common;

use serde_json::Value;

fn krr_command() -> std::process::Command {
    common::example_command("krr")
}

const READ_RUNS: &str = r#"
out = {}
for run_id in args:
    r = client.get_run(run_id)
    arts = {f.path: f.file_size for f in client.list_artifacts(run_id)}
    out[run_id] = {'status': r.info.status, 'name': r.info.run_name,
                   'parent': r.data.tags.get('mlflow.parentRunId'),
                   'params': r.data.params, 'metrics': r.data.metrics, 'artifacts': arts}
print(json.dumps(out))
"#;

#[test]
fn krr_example_tracks_a_train_and_a_nested_evaluate_run() {
    let dir = tempfile::tempdir().unwrap();
    let experiment = common::unique("krr");
    let out = krr_command()
        .env("MLFLOW_TRACKING_URI", common::tracking_uri())
        .env("MLFLOW_EXPERIMENT_NAME", &experiment)
        .env("SAPSAN_DATA_DIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "krr failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id_after = |label: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {label:?} line in {stdout}"))
            .to_owned()
    };
    let (train_id, eval_id) = (id_after("train run:"), id_after("evaluate run:"));
    let runs = common::judge(READ_RUNS, &[&train_id, &eval_id]);
    let (train, eval) = (&runs[&train_id], &runs[&eval_id]);
    let param = |r: &Value, k: &str| r["params"][k].as_str().map(str::to_owned);
    let metric = |r: &Value, k: &str| {
        r["metrics"][k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing: {r}"))
    };

    for r in [train, eval] {
        assert_eq!(r["status"], "FINISHED", "{r}");
        assert_eq!(param(r, "model - alpha").as_deref(), Some("0.001"));
        assert_eq!(param(r, "model - gamma").as_deref(), Some("1.778"));
        assert_eq!(param(r, "model - kernel").as_deref(), Some("rbf"));
        assert_eq!(
            param(r, "chkpnt - sample to size").as_deref(),
            Some("(1, 16, 16)")
        );
    }
    assert_eq!(train["name"], "train");
    assert_eq!(train["parent"], Value::Null);
    assert_eq!(eval["name"], "evaluate");
    assert_eq!(eval["parent"].as_str(), Some(train_id.as_str()));
    assert_eq!(param(eval, "chkpnt - time").as_deref(), Some("[4]"));
    assert_eq!(param(eval, "n_output_channels").as_deref(), Some("1"));

    // Three 16^2 training slices; the kernel width used.
    assert_eq!(metric(train, "train - training points"), 768.0);
    assert_eq!(metric(train, "train - gamma"), 1.778);
    assert!(metric(train, "train - loss") < metric(train, "valid - loss"));
    let mse = metric(eval, "eval - MSE Loss");
    assert!(mse > 0.0 && mse.is_finite(), "{mse}");
    let ks = metric(eval, "eval - KS Stat");
    assert!(ks > 0.0 && ks <= 1.0, "{ks}");
    assert_eq!(
        metric(eval, "train - training points"),
        768.0,
        "train metrics copied"
    );

    let names = |r: &Value| -> Vec<String> {
        let mut v: Vec<String> = r["artifacts"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(train),
        [
            "model.safetensors",
            "model_details.txt",
            "model_forward.txt",
            "runtime_log.html"
        ]
    );
    assert_eq!(
        names(eval),
        ["pdf_cdf.png", "slices_plot.png", "spectrum.png"]
    );
    for r in [train, eval] {
        for (name, size) in r["artifacts"].as_object().unwrap() {
            assert!(size.as_u64().unwrap_or(0) > 0, "{name} is empty");
        }
    }
}
