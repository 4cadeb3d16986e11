//! Shared helpers of the integration tests: the live MLflow server the test command started, and
//! the official Python MLflow client as the judge of what landed on it.
#![allow(dead_code)]

use std::process::Command;

/// URL of the MLflow server started by `scripts/test.sh`. A missing server is a failure, never a skip.
pub fn tracking_uri() -> String {
    match std::env::var("SAPSAN_TEST_TRACKING_URI") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "SAPSAN_TEST_TRACKING_URI is not set: the integration tests need a live MLflow server. \
             Run the suite with `bash scripts/test.sh`, which installs MLflow, starts a server and sets it."
        ),
    }
}

/// URL of the MLflow server started by `scripts/test.sh` that keeps artifacts in an S3 store
/// (`--no-serve-artifacts`, `s3://` artifact root; the store's address and credentials are in
/// `MLFLOW_S3_ENDPOINT_URL` and `AWS_*`). A missing server is a failure, never a skip.
pub fn s3_tracking_uri() -> String {
    match std::env::var("SAPSAN_TEST_S3_TRACKING_URI") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "SAPSAN_TEST_S3_TRACKING_URI is not set: the object-store tests need an MLflow server \
             with artifacts in an S3 store. Run them with `bash scripts/test.sh`, which starts \
             one (moto) and sets it."
        ),
    }
}

/// The Python interpreter of the venv that holds the official MLflow client.
pub fn python() -> String {
    std::env::var("SAPSAN_PYTHON").unwrap_or_else(|_| {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
        assert!(
            std::path::Path::new(venv).exists(),
            "no Python with MLflow: run `bash scripts/setup.sh` (creates .venv) or set SAPSAN_PYTHON"
        );
        venv.to_owned()
    })
}

/// A unique name for an experiment or run, so tests never see each other's data.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// URL of the team server `scripts/test.sh` started: MLflow with 4 workers on PostgreSQL, proxied
/// artifacts. A missing server is a failure, never a skip.
pub fn team_tracking_uri() -> String {
    match std::env::var("SAPSAN_TEST_TEAM_TRACKING_URI") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!(
            "SAPSAN_TEST_TEAM_TRACKING_URI is not set: this test needs the team server (MLflow on \
             PostgreSQL). Run it with `bash scripts/test.sh`, which starts one and sets it."
        ),
    }
}

/// Example `name` as `cargo test` built it (beside the test binary, in `examples/`), so the test
/// never rebuilds the dependencies with another feature set; `cargo run` when it is missing. Runs
/// in the repository root.
pub fn example_command(name: &str) -> Command {
    let built = std::env::current_exe().ok().and_then(|exe| {
        let bin = exe.parent()?.parent()?.join("examples").join(name);
        bin.is_file().then_some(bin)
    });
    let mut cmd = match built {
        Some(bin) => Command::new(bin),
        None => {
            let mut c = Command::new(env!("CARGO"));
            c.args(["run", "--quiet", "--example", name, "--"]);
            c
        }
    };
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

/// Runs `script` with the official Python client (`mlflow`, `client = MlflowClient()` and `json` are
/// in scope; `args` is `sys.argv[1:]`), pointed at the test server. The script prints one JSON value
/// on its last line of stdout; that value is returned.
pub fn judge(script: &str, args: &[&str]) -> serde_json::Value {
    judge_at(&tracking_uri(), script, args)
}

/// [`judge`] against the server at `uri` (a server the test started itself).
pub fn judge_at(uri: &str, script: &str, args: &[&str]) -> serde_json::Value {
    let prelude = "import json, sys, mlflow\nfrom mlflow import MlflowClient\nclient = MlflowClient()\nargs = sys.argv[1:]\n";
    let out = Command::new(python())
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .args(args)
        .env("MLFLOW_TRACKING_URI", uri)
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .output()
        .expect("cannot run the Python judge");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Python judge failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("judge printed no JSON ({e}): {stdout}"))
}

/// A loopback port nothing listens on, for a server a test starts itself. Taken below Linux's
/// ephemeral range (32768+), so no other test's `bind(0)` listener or outgoing connection (nor a
/// probe connecting to itself) can hold it between this call and the server's start.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 600) as u16 * 20;
    for _ in 0..12_000 {
        let port = 20_000 + (base - 20_000 + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000");
}

/// Starts a one-worker MLflow server of its own on `127.0.0.1:port` with its store in `data_dir`
/// (for tests that kill, freeze or restart it).
pub fn private_server(port: u16, data_dir: &std::path::Path) -> sapsan::tracking::MlflowServer {
    let opts = sapsan::tracking::ServerOptions {
        data_dir: Some(data_dir.to_owned()),
        workers: Some(1),
        ready_timeout: std::time::Duration::from_secs(180),
        quiet: true,
        ..Default::default()
    };
    sapsan::tracking::MlflowServer::start("127.0.0.1", port, &opts)
        .unwrap_or_else(|e| panic!("cannot start a private MLflow server on port {port}: {e}"))
}

/// Sends `sig` to the process group of `server` (the server and its workers).
pub fn signal_group(server: &sapsan::tracking::MlflowServer, sig: i32) {
    // SAFETY: signalling a process group this test started.
    let rc = unsafe { libc::killpg(server.pid() as i32, sig) };
    assert_eq!(rc, 0, "killpg({}, {sig}) failed", server.pid());
}

/// Runs `sapsan sync <dir> --tracking-uri <uri>` (the workspace binary); its stdout.
pub fn sapsan_sync(dir: &std::path::Path, uri: &str) -> String {
    stdout_of_success(sapsan_sync_output(dir, uri), "sapsan sync")
}

/// The stdout of a finished command `what`; a failed one panics with both streams.
pub fn stdout_of_success(out: std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `sapsan sync <dir> --tracking-uri <uri>`; its exit status and output, whatever they are.
pub fn sapsan_sync_output(dir: &std::path::Path, uri: &str) -> std::process::Output {
    sapsan_sync_with(dir, uri, &[])
}

/// Runs `sapsan sync <dir> --tracking-uri <uri> --resend`: journals delivered before are sent
/// again (to check that this adds nothing twice); its stdout.
pub fn sapsan_sync_resend(dir: &std::path::Path, uri: &str) -> String {
    stdout_of_success(
        sapsan_sync_with(dir, uri, &["--resend"]),
        "sapsan sync --resend",
    )
}

/// Runs `sapsan sync <dir> --tracking-uri <uri> <extra>`; its exit status and output.
fn sapsan_sync_with(dir: &std::path::Path, uri: &str, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sapsan"))
        .args(["sync"])
        .arg(dir)
        .args(["--tracking-uri", uri])
        .args(extra)
        .output()
        .expect("cannot run the sapsan binary")
}

/// The journal instance directories under `root` (none when `root` does not exist).
pub fn journal_dirs(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(root) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("journal.jsonl").is_file())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The test runner of the `harness = false` test files: runs each test, prints libtest-like lines.
pub fn run_tests(tests: &[(&str, fn())]) {
    for (name, t) in tests {
        eprint!("test {name} ... ");
        t();
        eprintln!("ok");
    }
    eprintln!("test result: ok. {} passed; 0 failed", tests.len());
}

/// A [`judge`] script: for every run id in `args`, its status, name, parent run (tag
/// `mlflow.parentRunId`), params, metrics and top-level artifacts (path to size), keyed by id.
pub const READ_RUNS: &str = r#"
out = {}
for run_id in args:
    r = client.get_run(run_id)
    arts = {f.path: f.file_size for f in client.list_artifacts(run_id)}
    out[run_id] = {'status': r.info.status, 'name': r.info.run_name,
                   'parent': r.data.tags.get('mlflow.parentRunId'),
                   'params': r.data.params, 'metrics': r.data.metrics, 'artifacts': arts}
print(json.dumps(out))
"#;

/// The id printed after `label` (e.g. `train run:`) on a line of an example's `stdout`.
pub fn id_after(stdout: &str, label: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {label:?} line in {stdout}"))
        .to_owned()
}

/// Runs example `name` against the test server, logging into `experiment`, its data in a fresh
/// directory; its stdout (a failed run panics with both streams).
pub fn run_estimator_example(name: &str, experiment: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = example_command(name)
        .env("MLFLOW_TRACKING_URI", tracking_uri())
        .env("MLFLOW_EXPERIMENT_NAME", experiment)
        .env("SAPSAN_DATA_DIR", dir.path())
        .output()
        .unwrap();
    stdout_of_success(out, name)
}

/// The train and evaluate runs an example printed (`train run: <id>`, `evaluate run: <id>`), as
/// the Python client reads them back ([`READ_RUNS`]), after checking that they are both
/// FINISHED, named `train` and `evaluate`, and the evaluate run nested under the train run.
pub fn train_and_nested_evaluate(stdout: &str) -> (serde_json::Value, serde_json::Value) {
    let train_id = id_after(stdout, "train run:");
    let eval_id = id_after(stdout, "evaluate run:");
    let runs = judge(READ_RUNS, &[&train_id, &eval_id]);
    let (train, eval) = (runs[&train_id].clone(), runs[&eval_id].clone());
    for r in [&train, &eval] {
        assert_eq!(r["status"], "FINISHED", "{r}");
    }
    assert_eq!(train["name"], "train");
    assert_eq!(train["parent"], serde_json::Value::Null);
    assert_eq!(eval["name"], "evaluate");
    assert_eq!(eval["parent"].as_str(), Some(train_id.as_str()));
    (train, eval)
}

/// Param `key` of a run read by [`READ_RUNS`].
pub fn param(run: &serde_json::Value, key: &str) -> Option<String> {
    run["params"][key].as_str().map(str::to_owned)
}

/// Metric `key` of a run read by [`READ_RUNS`] (panics, naming it, when missing).
pub fn metric(run: &serde_json::Value, key: &str) -> f64 {
    run["metrics"][key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing: {run}"))
}

/// Asserts what every estimator's train and evaluate runs log as artifacts (the model, its
/// details, forward listing and runtime log; the three evaluation plots), none of them empty.
pub fn assert_estimator_artifacts(train: &serde_json::Value, eval: &serde_json::Value) {
    let names = |r: &serde_json::Value| -> Vec<String> {
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
