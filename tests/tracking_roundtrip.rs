//! The MLflow backend against the real server the test command started, with the official Python
//! client as the judge of what landed there.
mod common;

use sapsan::Error;
use sapsan::tracking::{Backend, MlflowBackend, RunStatus, Settings};
use std::time::Duration;

fn backend(experiment: &str) -> MlflowBackend {
    MlflowBackend::builder()
        .tracking_uri(common::tracking_uri())
        .experiment(experiment)
        .build()
        .unwrap()
}

/// Reads a run back with the Python client: info, params, tags, latest metrics, a metric history.
const READ_RUN: &str = r#"
r = client.get_run(args[0])
hist = [[m.step, repr(m.value)] for m in client.get_metric_history(args[0], args[1])] if len(args) > 1 else []
print(json.dumps({
    "name": r.info.run_name, "status": r.info.status, "start": r.info.start_time, "end": r.info.end_time,
    "experiment_id": r.info.experiment_id,
    "params": r.data.params, "tags": r.data.tags,
    "metrics": {k: repr(v) for k, v in r.data.metrics.items()}, "history": hist,
}))
"#;

#[test]
fn train_with_two_nested_evaluations_reads_back_in_python() {
    roundtrip(true);
}

/// The same through the in-memory path (`SAPSAN_JOURNAL=0`, `.journal(false)`).
#[test]
fn without_the_journal_the_same_reads_back_in_python() {
    roundtrip(false);
}

fn roundtrip(journal: bool) {
    let exp = common::unique("roundtrip");
    let b = MlflowBackend::builder()
        .tracking_uri(common::tracking_uri())
        .experiment(&exp)
        .journal(journal)
        .build()
        .unwrap();
    assert_eq!(b.journal_dir().is_some(), journal);
    let train = b.start("train", false, None).unwrap();
    for (k, v) in [
        ("model - lr", "0.001"),
        ("model - n_epochs", "3"),
        ("data - axis", "3"),
    ] {
        b.log_parameter(k, v).unwrap();
    }
    b.log_parameter("model - lr", "0.001").unwrap(); // the same value again is fine
    for (step, loss) in [(0, 1.0), (1, 0.5), (2, 0.25)] {
        b.log_metric_step("train - loss", loss, step).unwrap();
    }
    b.log_metric_step("weird", f64::NAN, 0).unwrap();
    b.log_metric_step("weird", f64::INFINITY, 1).unwrap();
    b.log_metric_step("weird", f64::NEG_INFINITY, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model_details.txt");
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    std::fs::write(&file, &bytes).unwrap();
    b.log_artifact(&file).unwrap();
    b.upload_artifact(&train, "plots/slices plot.bin", b"\x00\x01binary")
        .unwrap();

    let mut evals = Vec::new();
    for i in 1..=2 {
        let e = b.start(&format!("evaluate {i}"), true, None).unwrap();
        assert_eq!(b.active_run_id().as_deref(), Some(e.as_str()));
        let copied = b.run_data(&train).unwrap();
        assert_eq!(copied.params["model - lr"], "0.001");
        assert_eq!(copied.metrics["train - loss"], 0.25);
        for (k, v) in &copied.params {
            b.log_parameter(k, v).unwrap();
        }
        b.log_metric("eval - MSE Loss", 0.1 * f64::from(i)).unwrap();
        b.end().unwrap();
        // Ending the nested run never ends its parent.
        assert_eq!(b.active_run_id().as_deref(), Some(train.as_str()));
        evals.push(e);
    }
    b.end().unwrap();
    assert_eq!(b.active_run_id(), None);

    let t = common::judge(READ_RUN, &[&train, "weird"]);
    assert_eq!(t["name"], "train");
    assert_eq!(t["status"], "FINISHED");
    assert!(t["end"].as_i64().unwrap() >= t["start"].as_i64().unwrap());
    assert_eq!(t["params"]["model - n_epochs"], "3");
    assert_eq!(t["params"].as_object().unwrap().len(), 3);
    assert_eq!(t["tags"]["mlflow.runName"], "train");
    assert_eq!(t["tags"]["mlflow.source.type"], "LOCAL");
    assert!(!t["tags"]["mlflow.user"].as_str().unwrap().is_empty());
    assert!(!t["tags"]["mlflow.source.name"].as_str().unwrap().is_empty());
    assert_eq!(
        t["tags"]["mlflow.source.git.commit"]
            .as_str()
            .unwrap()
            .len(),
        40
    );
    assert!(t["tags"].get("mlflow.parentRunId").is_none());
    assert_eq!(t["metrics"]["train - loss"], "0.25");
    // NaN stays NaN; the SQL store keeps +-inf as +-f64::MAX.
    assert_eq!(
        t["history"],
        serde_json::json!([
            [0, "nan"],
            [1, "1.7976931348623157e+308"],
            [2, "-1.7976931348623157e+308"]
        ])
    );
    let h = common::judge(READ_RUN, &[&train, "train - loss"]);
    assert_eq!(
        h["history"],
        serde_json::json!([[0, "1.0"], [1, "0.5"], [2, "0.25"]])
    );
    // Our own reader agrees and decodes the same values.
    let ours = b.metric_history(&train, "weird").unwrap();
    assert!(ours[0].value.is_nan());
    assert_eq!(ours[1].value, f64::MAX);

    for (i, e) in evals.iter().enumerate() {
        let v = common::judge(READ_RUN, &[e]);
        assert_eq!(v["name"], format!("evaluate {}", i + 1));
        assert_eq!(v["status"], "FINISHED");
        assert_eq!(v["tags"]["mlflow.parentRunId"], train.as_str());
        assert_eq!(v["params"]["model - lr"], "0.001");
        assert_eq!(
            v["metrics"]["eval - MSE Loss"],
            format!("{:?}", 0.1 * (i + 1) as f64)
        );
        assert!(v["end"].as_i64().is_some());
    }
    // The Python client finds the children through the parent tag.
    let children = common::judge(
        "rs = client.search_runs([args[0]], f\"tags.`mlflow.parentRunId` = '{args[1]}'\")\nprint(json.dumps(sorted(r.info.run_name for r in rs)))",
        &[&b.experiment_id().unwrap(), &train],
    );
    assert_eq!(children, serde_json::json!(["evaluate 1", "evaluate 2"]));
    let ours: Vec<String> = b
        .search_runs(&format!("tags.`mlflow.parentRunId` = '{train}'"))
        .unwrap()
        .into_iter()
        .map(|r| r.run_name)
        .collect();
    assert_eq!(ours.len(), 2);

    // Artifact bytes, downloaded by the Python client.
    let got = common::judge(
        "import hashlib, os, tempfile\nd = tempfile.mkdtemp()\nout = {}\nfor a in args[1:]:\n    p = mlflow.artifacts.download_artifacts(run_id=args[0], artifact_path=a, dst_path=d)\n    out[a] = hashlib.sha256(open(p, 'rb').read()).hexdigest()\nprint(json.dumps(out))",
        &[&train, "model_details.txt", "plots/slices plot.bin"],
    );
    assert_eq!(got["model_details.txt"], sha256_hex(&bytes));
    assert_eq!(got["plots/slices plot.bin"], sha256_hex(b"\x00\x01binary"));
    assert_eq!(
        b.download_artifact(&train, "model_details.txt").unwrap(),
        bytes
    );
    let listed = b.list_artifacts(&train, None).unwrap();
    assert!(
        listed
            .iter()
            .any(|f| f.path == "model_details.txt" && f.file_size == Some(70_000))
    );
    assert!(listed.iter().any(|f| f.path == "plots" && f.is_dir));
}

fn sha256_hex(data: &[u8]) -> String {
    let out = std::process::Command::new(common::python())
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn resume_and_log_after_the_run_ended() {
    let exp = common::unique("resume");
    let run_id = {
        let b = backend(&exp);
        let id = b.start("evaluate", false, None).unwrap();
        b.log_parameter("model - lr", "0.1").unwrap();
        b.end().unwrap();
        id
    };
    let first = common::judge(READ_RUN, &[&run_id]);
    assert_eq!(first["status"], "FINISHED");

    // The seed's 3 steps, from a fresh backend (a new program).
    let b = backend(&exp);
    b.resume(&run_id).unwrap();
    assert_eq!(b.active_run_id().as_deref(), Some(run_id.as_str()));
    b.log_metric("new_metric", 42.0).unwrap();
    b.log_parameter("model - lr", "0.1").unwrap();
    b.end().unwrap();

    let v = common::judge(READ_RUN, &[&run_id, "new_metric"]);
    assert_eq!(v["status"], "FINISHED");
    assert_eq!(v["history"], serde_json::json!([[0, "42.0"]]));
    assert_eq!(v["params"]["model - lr"], "0.1");
    assert!(v["end"].as_i64().unwrap() >= first["end"].as_i64().unwrap());
    // run_data of a run this backend did not create: read back once, plus what it logged.
    let d = b.run_data(&run_id).unwrap();
    assert_eq!(d.params["model - lr"], "0.1");
    assert_eq!(d.metrics["new_metric"], 42.0);
}

#[test]
fn ending_a_nested_run_never_ends_its_parent_and_drop_closes_open_runs() {
    let exp = common::unique("nesting");
    let (train, eval) = {
        let b = backend(&exp);
        let train = b.start("train", false, None).unwrap();
        let eval = b.start("evaluate", true, None).unwrap();
        b.end().unwrap();
        let t = common::judge(READ_RUN, &[&train]);
        assert_eq!(t["status"], "RUNNING", "the parent stays open");
        assert_eq!(b.active_run_id().as_deref(), Some(train.as_str()));
        b.log_metric("late", 1.0).unwrap();
        (train, eval)
        // Dropped here with the train run still open.
    };
    let t = common::judge(READ_RUN, &[&train, "late"]);
    assert_eq!(t["status"], "FINISHED", "drop ends runs left open");
    assert_eq!(
        t["history"],
        serde_json::json!([[0, "1.0"]]),
        "drop flushes"
    );
    assert_eq!(common::judge(READ_RUN, &[&eval])["status"], "FINISHED");
}

#[test]
fn train_plus_evaluate_bookkeeping_takes_at_most_8_requests() {
    let exp = common::unique("requests");
    let b = backend(&exp);
    let train = b.start("train", false, None).unwrap();
    for i in 0..20 {
        b.log_parameter(&format!("model - p{i}"), &i.to_string())
            .unwrap();
    }
    for i in 0..10 {
        b.log_metric_step("train - loss", 1.0 / f64::from(i + 1), i64::from(i))
            .unwrap();
    }
    let eval = b.start("evaluate", true, None).unwrap();
    let data = b.run_data(&train).unwrap();
    for (k, v) in &data.params {
        b.log_parameter(k, v).unwrap();
    }
    for (k, v) in &data.metrics {
        b.log_metric(k, *v).unwrap();
    }
    b.log_metric("eval - MSE Loss", 0.01).unwrap();
    b.log_metric("eval - KS Stat", 0.02).unwrap();
    b.end().unwrap();
    b.end_run(&train, RunStatus::Finished).unwrap();
    let n = b.http_requests();
    eprintln!("train + evaluate bookkeeping: {n} HTTP requests (experiment created too)");
    assert!(n <= 8, "{n} requests");
    let v = common::judge(READ_RUN, &[&eval, "train - loss"]);
    assert_eq!(v["params"].as_object().unwrap().len(), 20);
    assert_eq!(v["metrics"]["eval - KS Stat"], "0.02");
    let t = common::judge(READ_RUN, &[&train, "train - loss"]);
    assert_eq!(t["history"].as_array().unwrap().len(), 10);
}

#[test]
fn seed_constructor_uses_the_running_server() {
    let uri = common::tracking_uri();
    let url = reqwest_url(&uri);
    let exp = common::unique("seed");
    let b = MlflowBackend::new(&exp, &url.0, url.1).unwrap();
    assert!(
        b.server().is_none(),
        "a running server is used, not started"
    );
    let id = b.start("train", false, None).unwrap();
    b.end().unwrap();
    assert_eq!(common::judge(READ_RUN, &[&id])["status"], "FINISHED");
}

fn reqwest_url(uri: &str) -> (String, u16) {
    let rest = uri.trim_start_matches("http://");
    let (h, p) = rest.rsplit_once(':').unwrap();
    (h.to_owned(), p.trim_end_matches('/').parse().unwrap())
}

#[test]
fn experiment_get_or_create_is_race_safe() {
    let exp = common::unique("race");
    let ids: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| backend(&exp).experiment_id().unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
}

// ---- error cases, each with its specific error ---------------------------------------------

#[test]
fn invalid_key_is_rejected_before_any_request() {
    let b = backend(&common::unique("badkey"));
    b.start("train", false, None).unwrap();
    let before = b.http_requests();
    match b.log_metric("acc@1", 1.0) {
        Err(Error::InvalidKey { key, rule }) => {
            assert_eq!(key, "acc@1");
            assert!(rule.contains("'@'"), "{rule}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        b.log_parameter("a//b", "1"),
        Err(Error::InvalidKey { .. })
    ));
    b.flush().unwrap();
    assert_eq!(b.http_requests(), before, "nothing was sent");
}

#[test]
fn param_of_6001_characters_is_rejected() {
    let b = backend(&common::unique("longparam"));
    let id = b.start("train", false, None).unwrap();
    b.log_parameter("ok", &"x".repeat(6000)).unwrap();
    match b.log_parameter("too long", &"x".repeat(6001)) {
        Err(Error::ValueTooLong {
            key,
            kind,
            len,
            max,
        }) => {
            assert_eq!(
                (key.as_str(), kind, len, max),
                ("too long", "param", 6001, 6000)
            );
        }
        other => panic!("{other:?}"),
    }
    b.end().unwrap();
    let v = common::judge(READ_RUN, &[&id]);
    assert_eq!(v["params"]["ok"].as_str().unwrap().len(), 6000);
    assert!(v["params"].get("too long").is_none());
}

#[test]
fn changed_param_is_rejected_at_enqueue() {
    let b = backend(&common::unique("changed"));
    let id = b.start("train", false, None).unwrap();
    b.log_parameter("model - lr", "0.1").unwrap();
    match b.log_parameter("model - lr", "0.2") {
        Err(Error::ParamChanged {
            run_id,
            key,
            old,
            new,
        }) => {
            assert_eq!(run_id, id);
            assert_eq!(
                (key.as_str(), old.as_str(), new.as_str()),
                ("model - lr", "0.1", "0.2")
            );
        }
        other => panic!("{other:?}"),
    }
    b.end().unwrap();
    assert_eq!(
        common::judge(READ_RUN, &[&id])["params"]["model - lr"],
        "0.1"
    );
}

#[test]
fn unknown_run_id_is_reported_as_such() {
    let b = backend(&common::unique("unknown"));
    let missing = "0123456789abcdef0123456789abcdef";
    match b.resume(missing) {
        Err(Error::UnknownRun { run_id, url }) => {
            assert_eq!(run_id, missing);
            assert_eq!(url, common::tracking_uri().trim_end_matches('/'));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(b.active_run_id(), None, "a failed resume opens nothing");
    assert!(matches!(b.run_data(missing), Err(Error::UnknownRun { .. })));
    // Logging to it fails at delivery, and flush reports it.
    b.enqueue(
        missing,
        sapsan::tracking::LogItem::Param {
            key: "k".into(),
            value: "v".into(),
        },
    )
    .unwrap();
    assert!(matches!(b.flush(), Err(Error::UnknownRun { .. })));
}

#[test]
fn deleted_experiment_is_reported_as_such() {
    let exp = common::unique("deleted");
    common::judge(
        "client.delete_experiment(client.create_experiment(args[0]))\nprint(json.dumps(True))",
        &[&exp],
    );
    match MlflowBackend::builder()
        .tracking_uri(common::tracking_uri())
        .experiment(&exp)
        .build()
    {
        Err(Error::DeletedExperiment { name, .. }) => assert_eq!(name, exp),
        other => panic!("{other:?}"),
    }
}

#[test]
fn server_errors_carry_status_and_code() {
    let b = backend(&common::unique("errors"));
    // An artifact name escaping the run's directory never reaches the server.
    let id = b.start("train", false, None).unwrap();
    assert!(matches!(
        b.upload_artifact(&id, "../escape.txt", b"x"),
        Err(Error::Artifact { .. })
    ));
    // A JSON error from the server keeps its code; an unknown route (HTML 404) maps too.
    let e = b.metric_history(&id, "x//y").unwrap_err();
    assert!(matches!(e, Error::InvalidKey { .. }));
    let settings = Settings {
        max_retries: 0,
        timeout: Duration::from_secs(5),
        ..Settings::default()
    };
    let bad = MlflowBackend::builder()
        .tracking_uri(format!("{}/no/such/prefix", common::tracking_uri()))
        .experiment("x")
        .settings(settings)
        .build();
    match bad {
        Err(Error::Mlflow {
            status, error_code, ..
        }) => {
            assert_eq!(status, 404);
            assert_eq!(error_code, "HTTP_ERROR");
        }
        other => panic!("{other:?}"),
    }
    b.end().unwrap();
}
