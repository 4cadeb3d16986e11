//! Honest run status and bad input against the real server, judged with the official Python
//! client: an `Err` or a panic in tracked work ends the run FAILED with the error text; a deleted
//! run is a specific error and nothing is written to it.
mod common;

use sapsan::Error;
use sapsan::tracking::run::scope::{ERROR_TAG, RunScope, last_run_id};
use sapsan::tracking::{Backend, LogItem, Metric, MlflowBackend};

fn backend(experiment: &str) -> MlflowBackend {
    MlflowBackend::builder()
        .tracking_uri(common::tracking_uri())
        .experiment(experiment)
        .handle_signals(false)
        .build()
        .unwrap()
}

const READ: &str = r#"
r = client.get_run(args[0])
print(json.dumps({"status": r.info.status, "start": r.info.start_time, "end": r.info.end_time,
                  "stage": r.info.lifecycle_stage, "tags": r.data.tags, "metrics": r.data.metrics}))
"#;

fn assert_failed_with(run_id: &str, text: &str) {
    let r = common::judge(READ, &[run_id]);
    assert_eq!(r["status"], "FAILED", "{r}");
    assert!(
        r["end"]
            .as_i64()
            .is_some_and(|e| e >= r["start"].as_i64().unwrap()),
        "{r}"
    );
    let tag = r["tags"][ERROR_TAG].as_str().unwrap_or_default();
    assert!(
        tag.contains(text),
        "tag {ERROR_TAG} = {tag:?}, expected {text:?}: {r}"
    );
}

#[test]
fn err_in_tracked_work_ends_the_run_failed_with_the_error_text() {
    let b = backend(&common::unique("status-err"));
    let scope = RunScope::train(&b, "train").unwrap();
    let run = scope.run_id().unwrap().to_owned();
    let out: Result<(), Error> = Err(Error::Estimator("loss became NaN at epoch 3".into()));
    // The failure is recorded (the caller still gets its own `Err` back from the function).
    assert_eq!(scope.finish(&out).unwrap(), run);
    assert_eq!(last_run_id().as_deref(), Some(run.as_str()));
    assert_eq!(
        b.active_run_id(),
        None,
        "a failed train run leaves the stack"
    );
    assert_failed_with(&run, "loss became NaN at epoch 3");
}

#[test]
fn panic_in_tracked_work_ends_the_run_failed() {
    let b = backend(&common::unique("status-panic"));
    let run = std::sync::Mutex::new(String::new());
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let scope = RunScope::train(&b, "train").unwrap();
        *run.lock().unwrap() = scope.run_id().unwrap().to_owned();
        panic!("the GPU caught fire");
    }));
    assert!(caught.is_err());
    let run = run.into_inner().unwrap();
    assert_eq!(b.active_run_id(), None);
    assert_failed_with(&run, "panicked");
}

#[test]
fn deleted_run_is_reported_as_such_and_nothing_is_written() {
    let b = backend(&common::unique("deleted-run"));
    let run = b.start("train", false, None).unwrap();
    b.log_metric_step("loss", 1.0, 0).unwrap();
    b.end().unwrap();
    common::judge(
        "client.delete_run(args[0])\nprint(json.dumps(True))",
        &[&run],
    );

    match b.resume(&run) {
        Err(Error::DeletedRun { run_id, url }) => {
            assert_eq!(run_id, run);
            assert_eq!(url, common::tracking_uri().trim_end_matches('/'));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(b.active_run_id(), None, "a failed resume opens nothing");
    let e = b.set_run_tag(&run, "note", "x").unwrap_err();
    assert!(matches!(e, Error::DeletedRun { .. }), "{e}");
    assert!(e.to_string().contains("mlflow runs restore"), "{e}");
    b.enqueue(
        &run,
        LogItem::Metric(Metric::new("loss", 2.0, sapsan::tracking::now_ms(), 1)),
    )
    .unwrap();
    assert!(matches!(b.flush(), Err(Error::DeletedRun { .. })));

    let r = common::judge(READ, &[&run]);
    assert_eq!(r["stage"], "deleted", "{r}");
    assert_eq!(
        r["status"], "FINISHED",
        "the failed resume must not reopen it: {r}"
    );
    assert_eq!(r["metrics"]["loss"], 1.0, "nothing new written: {r}");
    assert!(r["tags"].get("note").is_none(), "{r}");
}
