//! A job array against the team server (MLflow with 4 workers on PostgreSQL, proxied artifacts,
//! started by `scripts/test.sh`): 8 programs (`examples/job.rs`) logging at once, and offline
//! journals of many jobs uploaded by `sapsan sync --jobs`, also after a sync killed mid-way.
//! Judged by the official Python client: every run FINISHED and nested as logged, every metric
//! point there exactly once.
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any one wait here may take (8 jobs on a shared 2-core box, or a sync).
const DEADLINE: Duration = Duration::from_secs(600);

/// Checks experiment `args[0]`: `args[1]` train runs, each with `args[2]` evaluate runs nested
/// under it, all FINISHED; each train run's `train - step loss` history has every step
/// `0..steps` (its `model - steps` param) exactly once with the job's value, and its artifact;
/// each evaluate
/// run's `eval - MSE Loss` exactly one point. Prints the problems found (none: `[]`) and counts.
const JUDGE: &str = r#"
exp = client.get_experiment_by_name(args[0])
n_jobs, n_evals = int(args[1]), int(args[2])
runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
problems, points = [], 0
train = {r.info.run_id: r for r in runs if r.info.run_name.startswith('train')}
evals = [r for r in runs if r.info.run_name.startswith('evaluate')]
if len(train) != n_jobs or len(evals) != n_jobs * n_evals:
    problems.append(f'{len(train)} train and {len(evals)} evaluate runs, expected {n_jobs} and {n_jobs * n_evals}')
for r in runs:
    if r.info.status != 'FINISHED':
        problems.append(f'{r.info.run_name} {r.info.run_id} is {r.info.status}')
indices = set()
for rid, r in train.items():
    idx = int(r.data.params.get('model - index', -1))
    indices.add(idx)
    steps = int(r.data.params.get('model - steps', -1))
    if steps < 0:
        problems.append(f'{rid}: params {r.data.params}')
    hist = client.get_metric_history(rid, 'train - step loss')
    points += len(hist)
    by_step = {}
    for m in hist:
        by_step.setdefault(m.step, []).append(m.value)
    dup = [s for s, v in by_step.items() if len(v) > 1]
    missing = [s for s in range(steps) if s not in by_step]
    wrong = [s for s, v in by_step.items() if abs(v[0] - (1.0 / (1.0 + s) + idx * 1e-3)) > 1e-12]
    if len(hist) != steps or dup or missing or wrong:
        problems.append(f'{rid} (job {idx}): {len(hist)} points, duplicated steps {dup[:5]}, missing {missing[:5]}, wrong values at {wrong[:5]}')
    arts = [f.path for f in client.list_artifacts(rid)]
    if 'weights.txt' not in arts:
        problems.append(f'{rid}: artifacts {arts}')
if indices != set(range(n_jobs)):
    problems.append(f'job indices {sorted(indices)}')
for r in evals:
    if r.data.tags.get('mlflow.parentRunId') not in train:
        problems.append(f'{r.info.run_id} is not nested under a train run of this experiment')
    n = len(client.get_metric_history(r.info.run_id, 'eval - MSE Loss'))
    if n != 1:
        problems.append(f'{r.info.run_id}: {n} eval - MSE Loss points')
print(json.dumps({'problems': problems, 'points': points, 'runs': len(runs)}))
"#;

/// Waits for `child` until `DEADLINE` (killed then); its stdout, asserting it succeeded.
fn finish(name: &str, child: Child, started: Instant) -> String {
    let mut child = child;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} did not end within {DEADLINE:?}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("waiting for {name}: {e}"),
        }
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Job `index` of experiment `exp` sending to `uri` (a server, or `offline:<dir>`), started.
fn spawn_job(uri: &str, exp: &str, index: u32, steps: u32, journals: &Path) -> Child {
    common::example_command("job")
        .arg(index.to_string())
        .env("MLFLOW_TRACKING_URI", uri)
        .env("MLFLOW_EXPERIMENT_NAME", exp)
        .env("SAPSAN_JOB_METRICS", steps.to_string())
        .env("SAPSAN_JOB_EVALS", "2")
        .env("SAPSAN_JOURNAL_DIR", journals)
        .env_remove("SAPSAN_OFFLINE")
        .env_remove("SAPSAN_JOURNAL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start examples/job (cargo build --example job)")
}

/// Runs jobs `0..n` offline into journals under `root`, `at_once` at a time.
fn offline_jobs(root: &Path, exp: &str, n: u32, steps: impl Fn(u32) -> u32, at_once: u32) {
    let uri = format!("offline:{}", root.display());
    let mut i = 0;
    while i < n {
        let started = Instant::now();
        let batch: Vec<(u32, Child)> = (i..n.min(i + at_once))
            .map(|j| (j, spawn_job(&uri, exp, j, steps(j), root)))
            .collect();
        for (j, c) in batch {
            finish(&format!("offline job {j}"), c, started);
        }
        i += at_once;
    }
}

/// `sapsan sync <dir> --tracking-uri <uri> --jobs <jobs>`, not yet waited for.
fn sync_command(dir: &Path, uri: &str, jobs: u32) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sapsan"));
    c.arg("sync")
        .arg(dir)
        .args(["--tracking-uri", uri, "--jobs", &jobs.to_string()]);
    c
}

/// [`JUDGE`] on experiment `exp` of `jobs` jobs: no problem, `points` points in all.
fn assert_judged(uri: &str, exp: &str, jobs: u32, points: u32) -> Value {
    let v = common::judge_at(uri, JUDGE, &[exp, &jobs.to_string(), "2"]);
    assert_eq!(v["problems"], serde_json::json!([]), "{v}");
    assert_eq!(v["points"], u64::from(points), "{v}");
    v
}

/// 8 jobs at once, each 10,000 loss points, params, an artifact and 2 nested evaluate runs: all
/// 24 runs FINISHED, 80,000 points, each exactly once.
#[test]
fn eight_jobs_at_once_land_every_run_and_every_point_once() {
    let uri = common::team_tracking_uri();
    let exp = common::unique("job-array");
    let journals = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let children: Vec<Child> = (0..8)
        .map(|i| spawn_job(&uri, &exp, i, 10_000, journals.path()))
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = finish(&format!("job {i}"), c, started);
        assert_eq!(out.matches("evaluate run: ").count(), 2, "{out}");
    }
    let v = assert_judged(&uri, &exp, 8, 8 * 10_000);
    assert_eq!(v["runs"], 24, "{v}");
}

/// 20 offline journals uploaded 4 at a time: one progress line per journal, every run and point
/// once; a second sync skips them all.
#[test]
fn twenty_offline_journals_sync_four_at_a_time() {
    let uri = common::team_tracking_uri();
    let exp = common::unique("sync-jobs");
    let root = tempfile::tempdir().unwrap();
    offline_jobs(root.path(), &exp, 20, |_| 300, 4);
    assert_eq!(common::journal_dirs(root.path()).len(), 20);

    let out = finish(
        "sapsan sync --jobs 4",
        sync_command(root.path(), &uri, 4)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Instant::now(),
    );
    for k in 1..=20 {
        assert_eq!(
            out.matches(&format!("[{k}/20] ")).count(),
            1,
            "one whole line per journal: {out}"
        );
    }
    assert!(out.contains("sapsan sync: 20 journal(s), 60 runs"), "{out}");
    assert_judged(&uri, &exp, 20, 20 * 300);

    let again = finish(
        "a second sapsan sync",
        sync_command(root.path(), &uri, 4)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Instant::now(),
    );
    assert!(
        again.contains("sapsan sync: 0 journal(s), 0 runs")
            && again.contains("20 journal(s) skipped"),
        "{again}"
    );
    assert_judged(&uri, &exp, 20, 20 * 300);
}

/// A sync killed (SIGKILL) while one journal is half sent, then run again: the finished journals
/// are skipped, the cut one is sent again from its start, and every point is there once.
#[test]
fn a_sync_killed_mid_way_resumes_and_lands_every_point_once() {
    let uri = common::team_tracking_uri();
    let exp = common::unique("sync-killed");
    let root = tempfile::tempdir().unwrap();
    // Journal 0 is small (its worker finishes first), the others large: when the first journal's
    // line appears, the other worker is in the middle of a large one.
    const LARGE: u32 = 20_000;
    let steps = |j: u32| if j == 0 { LARGE / 100 } else { LARGE };
    // One at a time: the journals sort in the order they were made, job 0 first.
    offline_jobs(root.path(), &exp, 4, steps, 1);
    let mut child = sync_command(root.path(), &uri, 2)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first.contains("[1/4]"), "{first}");

    // Before the resume: some run is there but not complete (the kill cut a journal).
    let partial = common::judge_at(
        &uri,
        r#"
exp = client.get_experiment_by_name(args[0])
runs = client.search_runs([exp.experiment_id]) if exp else []
print(json.dumps([r.info.status for r in runs]))
"#,
        &[&exp],
    );
    let statuses: Vec<&str> = partial
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        statuses.contains(&"RUNNING"),
        "the kill should have cut a journal mid-way: {statuses:?}"
    );

    let out = finish(
        "the resumed sapsan sync",
        sync_command(root.path(), &uri, 2)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Instant::now(),
    );
    assert!(out.contains("journal(s) skipped"), "{out}");
    assert_judged(&uri, &exp, 4, 3 * LARGE + LARGE / 100);
}
