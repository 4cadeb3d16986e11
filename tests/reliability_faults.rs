//! Fault injection against real MLflow servers the tests start themselves: `kill -9` and restart,
//! a frozen server (SIGSTOP), a server gone for good followed by `sapsan sync`, and eight threads
//! logging into one run. Every test reads the result back with the official Python client.
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sapsan::tracking::{Backend, MlflowBackend, RunStatus, Settings};
use serde_json::Value;

/// Fast failure detection: a short request timeout and backoff capped at 300 ms.
fn settings(timeout: Duration) -> Settings {
    Settings {
        timeout,
        max_retries: 1,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        linger: Duration::from_millis(20),
        ..Settings::default()
    }
}

fn backend(uri: &str, exp: &str, journal_root: &Path, timeout: Duration) -> MlflowBackend {
    MlflowBackend::builder()
        .tracking_uri(uri)
        .experiment(exp)
        .settings(settings(timeout))
        .journal(true)
        .journal_root(journal_root)
        .build()
        .unwrap()
}

/// [`backend`] whose journal is compacted once delivered and over 4 KiB.
fn rotating_backend(uri: &str, exp: &str, journal_root: &Path) -> MlflowBackend {
    MlflowBackend::builder()
        .tracking_uri(uri)
        .experiment(exp)
        .settings(settings(Duration::from_secs(2)))
        .journal(true)
        .journal_root(journal_root)
        .journal_rotate_bytes(4096)
        .build()
        .unwrap()
}

/// The size of a backend's journal file, and how often it was seen to shrink (compactions).
#[derive(Debug, Default)]
struct JournalSize {
    last: u64,
    max: u64,
    shrinks: usize,
}

impl JournalSize {
    fn sample(&mut self, b: &MlflowBackend) -> u64 {
        let file = b.journal_dir().unwrap().join("journal.jsonl");
        let len = std::fs::metadata(&file).unwrap().len();
        if len < self.last {
            self.shrinks += 1;
        }
        self.last = len;
        self.max = self.max.max(len);
        len
    }
}

/// Every run of experiment `exp` on `uri`: name, status, parent, end time, params, and for each
/// metric key the list of steps in its history.
fn runs_at(uri: &str, exp: &str) -> Vec<Value> {
    let v = common::judge_at(
        uri,
        r#"
exp = client.get_experiment_by_name(args[0])
out = []
for r in client.search_runs([exp.experiment_id], max_results=1000):
    hist = {}
    for k in r.data.metrics:
        hist[k] = sorted(m.step for m in client.get_metric_history(r.info.run_id, k))
    out.append({"id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
                "parent": r.data.tags.get("mlflow.parentRunId"), "end": r.info.end_time,
                "params": r.data.params, "hist": hist})
print(json.dumps(sorted(out, key=lambda r: r["name"])))
"#,
        &[exp],
    );
    v.as_array().unwrap().clone()
}

fn steps(run: &Value, key: &str) -> Vec<i64> {
    run["hist"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no metric {key} in {run}"))
        .iter()
        .map(|s| s.as_i64().unwrap())
        .collect()
}

/// One epoch of a toy training job: metrics `loss` and `acc` at `epoch`.
fn epoch(b: &MlflowBackend, e: i64) {
    b.log_metric_step("loss", 1.0 / (e as f64 + 1.0), e)
        .unwrap();
    b.log_metric_step("acc", e as f64 / 50.0, e).unwrap();
}

/// The train run (50 epochs, params) with a nested evaluate run, both FINISHED, every history
/// complete (steps 0..n-1, each once), exactly these two runs.
fn assert_job_landed(runs: &[Value], eval_steps: i64) {
    assert_long_job_landed(runs, 50, eval_steps);
}

/// [`assert_job_landed`] for a train run of `epochs` epochs.
fn assert_long_job_landed(runs: &[Value], epochs: i64, eval_steps: i64) {
    assert_eq!(runs.len(), 2, "exactly two runs, no duplicates: {runs:#?}");
    let (eval, train) = (&runs[0], &runs[1]);
    assert_eq!(train["name"], "train");
    assert_eq!(eval["name"], "evaluate");
    assert_eq!(train["status"], "FINISHED");
    assert_eq!(eval["status"], "FINISHED");
    assert!(train["end"].as_i64().unwrap() > 0);
    assert_eq!(eval["parent"], train["id"], "evaluate nested under train");
    assert_eq!(train["params"]["lr"], "0.01");
    for k in ["loss", "acc"] {
        assert_eq!(steps(train, k), (0..epochs).collect::<Vec<_>>(), "{k}");
    }
    assert_eq!(steps(eval, "mse"), (0..eval_steps).collect::<Vec<_>>());
}

#[test]
fn kill_9_mid_training_then_restart_on_the_same_store_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("store");
    let port = common::free_port();
    let server = common::private_server(port, &data);
    let uri = server.url().to_owned();
    let exp = common::unique("kill9");
    let b = backend(
        &uri,
        &exp,
        &tmp.path().join("journal"),
        Duration::from_secs(2),
    );
    let train = b.start("train", false, None).unwrap();
    b.log_parameter("lr", "0.01").unwrap();
    for e in 0..20 {
        epoch(&b, e);
    }
    b.flush().unwrap();
    common::signal_group(&server, libc::SIGKILL);
    let _ = server.stop(); // reaps the killed process
    for e in 20..35 {
        epoch(&b, e);
    }
    // A nested run started while the server is dead: created when it is back, exactly once.
    let eval = b.start("evaluate", true, None).unwrap();
    assert!(eval.starts_with("local-"), "{eval}");
    for s in 0..5 {
        b.log_metric_step("mse", s as f64, s).unwrap();
    }
    // Artifacts are journaled too (bytes in the journal directory), sent when the server is back.
    const NOTE: &[u8] = b"written while the server was dead";
    b.upload_artifact(&eval, "notes/eval.txt", NOTE).unwrap();
    // Reading a run the server does not have yet: a clear error naming the journal.
    let err = b.get_run(&eval).unwrap_err().to_string();
    assert!(
        err.contains("not on it yet") && err.contains("sapsan sync"),
        "{err}"
    );
    b.end().unwrap(); // journaled; does not wait for the dead server
    let server = common::private_server(port, &data);
    for e in 35..50 {
        epoch(&b, e);
    }
    b.end_run(&train, RunStatus::Finished).unwrap();
    b.flush().unwrap();
    // The local id now reads back through the id the uploader created the run with.
    let on_server = b.server_run_id(&eval).unwrap();
    assert!(!on_server.starts_with("local-"), "{on_server}");
    assert_eq!(b.get_run(&eval).unwrap().run_id, on_server);
    assert_eq!(b.metric_history(&eval, "mse").unwrap().len(), 5);
    assert_eq!(b.download_artifact(&eval, "notes/eval.txt").unwrap(), NOTE);
    assert!(b.wait_delivered(Duration::from_secs(120)).unwrap());
    let journal = b.journal_dir().unwrap();
    drop(b);
    assert!(!journal.exists(), "a delivered journal is removed");
    assert_job_landed(&runs_at(&uri, &exp), 5);
    let note = common::judge_at(
        &uri,
        "p = client.download_artifacts(args[0], 'notes/eval.txt')\nprint(json.dumps(open(p).read()))",
        &[&on_server],
    );
    assert_eq!(note, serde_json::json!(String::from_utf8_lossy(NOTE)));
    server.stop().unwrap();
}

/// A job that starts while its remote server is away (a cluster's server restarting): the backend
/// starts anyway with local run ids, and everything lands once the server answers, exactly once.
/// `journal`: with the journal (disk) or the in-memory store.
fn server_away_at_start_then_back(journal: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("store");
    let port = common::free_port();
    let uri = format!("http://127.0.0.1:{port}");
    let exp = common::unique("away-at-start");
    let t = Instant::now();
    let b = MlflowBackend::builder()
        .tracking_uri(&uri)
        .experiment(&exp)
        .settings(settings(Duration::from_secs(2)))
        .journal(journal)
        .journal_root(tmp.path().join("journal"))
        .build()
        .expect("a server away at the start does not stop the job");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(b.experiment_id().is_err(), "no server to ask yet");
    let train = b.start("train", false, None).unwrap();
    assert!(train.starts_with("local-"), "{train}");
    b.log_parameter("lr", "0.01").unwrap();
    for e in 0..30 {
        epoch(&b, e);
    }
    let eval = b.start("evaluate", true, None).unwrap();
    for s in 0..5 {
        b.log_metric_step("mse", s as f64, s).unwrap();
    }
    let ended = b.end();
    if journal {
        // Safe in the journal: ending a run does not wait for the server.
        ended.unwrap();
    } else {
        // In memory only: ending says the server has not taken it yet (kept, retried).
        let e = ended.unwrap_err().to_string();
        assert!(e.contains("kept in memory"), "{e}");
    }
    let server = common::private_server(port, &data);
    for e in 30..50 {
        epoch(&b, e);
    }
    b.end_run(&train, RunStatus::Finished).unwrap();
    assert!(b.wait_delivered(Duration::from_secs(120)).unwrap());
    assert!(!b.server_run_id(&eval).unwrap().starts_with("local-"));
    assert!(b.experiment_id().is_ok());
    drop(b);
    assert_job_landed(&runs_at(&uri, &exp), 5);
    server.stop().unwrap();
}

#[test]
fn server_away_at_start_is_like_a_server_away_later() {
    server_away_at_start_then_back(true);
}

#[test]
fn server_away_at_start_without_the_journal_keeps_the_job_in_memory() {
    server_away_at_start_then_back(false);
}

#[test]
fn frozen_server_never_blocks_logging_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = common::private_server(common::free_port(), &tmp.path().join("store"));
    let uri = server.url().to_owned();
    let exp = common::unique("sigstop");
    let timeout = Duration::from_millis(1500);
    let b = backend(&uri, &exp, &tmp.path().join("journal"), timeout);
    let run = b.start("train", false, None).unwrap();
    b.log_metric_step("loss", 0.0, 0).unwrap();
    b.flush().unwrap();

    common::signal_group(&server, libc::SIGSTOP);
    // "Training" while frozen for twice the request timeout: compute, log, repeat.
    let frozen = Instant::now();
    let (mut in_logging, mut worst, mut step) = (Duration::ZERO, Duration::ZERO, 1i64);
    let mut acc = 0u64;
    while frozen.elapsed() < timeout * 2 {
        for i in 0..20_000u64 {
            acc = acc.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        let t = Instant::now();
        b.log_metric_step("loss", (acc % 1000) as f64, step)
            .unwrap();
        b.log_metric_step("acc", step as f64, step).unwrap();
        let d = t.elapsed();
        in_logging += d;
        worst = worst.max(d);
        step += 1;
    }
    let training = frozen.elapsed();
    common::signal_group(&server, libc::SIGCONT);
    eprintln!(
        "[reliability] frozen {training:?}: {step} steps, time in logging calls {in_logging:?} \
         ({:.3}% of training), slowest call {worst:?}",
        100.0 * in_logging.as_secs_f64() / training.as_secs_f64()
    );
    assert!(
        in_logging < training / 10,
        "logging took {in_logging:?} of {training:?}"
    );
    assert!(worst < Duration::from_millis(100), "a call took {worst:?}");
    b.end_run(&run, RunStatus::Finished).unwrap();
    // The thawed server works through the requests it queued while frozen: wait for it to take
    // everything (the exit grace alone is short with these settings).
    assert!(
        b.wait_delivered(Duration::from_secs(120)).unwrap(),
        "not delivered within 2 minutes of SIGCONT"
    );
    let journal = b.journal_dir().unwrap();
    drop(b);
    assert!(!journal.exists(), "a delivered journal is removed");
    let runs = runs_at(&uri, &exp);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "FINISHED");
    assert_eq!(steps(&runs[0], "loss"), (0..step).collect::<Vec<_>>());
    assert_eq!(steps(&runs[0], "acc"), (1..step).collect::<Vec<_>>());
    server.stop().unwrap();
}

#[test]
fn server_gone_for_good_then_sapsan_sync_delivers_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let server = common::private_server(common::free_port(), &tmp.path().join("store-1"));
    let exp = common::unique("gone");
    let root = tmp.path().join("journal");
    let b = backend(server.url(), &exp, &root, Duration::from_secs(2));
    let train = b.start("train", false, None).unwrap();
    b.log_parameter("lr", "0.01").unwrap();
    for e in 0..10 {
        epoch(&b, e);
    }
    b.flush().unwrap();
    common::signal_group(&server, libc::SIGKILL);
    let _ = server.stop();
    for e in 10..50 {
        epoch(&b, e);
    }
    b.end_run(&train, RunStatus::Finished).unwrap();
    // The seed keeps train open for evaluations: resume it, nest evaluate, leave train open.
    b.resume(&train).unwrap();
    b.start("evaluate", true, None).unwrap();
    for s in 0..7 {
        b.log_metric_step("mse", s as f64, s).unwrap();
    }
    b.end().unwrap();
    let journal = b.journal_dir().unwrap();
    drop(b); // closes train as FINISHED in the journal; the journal stays
    assert!(journal.join("journal.jsonl").is_file());

    // A new server on a new store; everything arrives, twice changes nothing.
    let server = common::private_server(common::free_port(), &tmp.path().join("store-2"));
    let first = common::sapsan_sync(&root, server.url());
    assert!(first.contains("2 runs"), "{first}");
    let runs = runs_at(server.url(), &exp);
    assert_job_landed(&runs, 7);
    common::sapsan_sync_resend(&root, server.url());
    assert_eq!(
        runs_at(server.url(), &exp),
        runs,
        "a second sync changes nothing"
    );
    server.stop().unwrap();
}

#[test]
fn eight_threads_80000_metrics_one_run_all_present_once() {
    let tmp = tempfile::tempdir().unwrap();
    let uri = common::tracking_uri();
    let exp = common::unique("threads");
    let b = Arc::new(backend(
        &uri,
        &exp,
        &tmp.path().join("journal"),
        Duration::from_secs(30),
    ));
    let run = b.start("train", false, None).unwrap();
    let threads: Vec<_> = (0..8i64)
        .map(|t| {
            let (b, run) = (b.clone(), run.clone());
            std::thread::spawn(move || {
                for i in 0..10_000i64 {
                    let m = sapsan::tracking::Metric::new("x", i as f64, 1, t * 10_000 + i);
                    b.enqueue(&run, sapsan::tracking::LogItem::Metric(m))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    b.end_run(&run, RunStatus::Finished).unwrap();
    let b = Arc::into_inner(b).unwrap();
    drop(b);
    let v = common::judge_at(
        &uri,
        "h = client.get_metric_history(args[0], 'x')\n\
         print(json.dumps([len(h), len({m.step for m in h}), min(m.step for m in h), max(m.step for m in h)]))",
        &[&run],
    );
    assert_eq!(v, serde_json::json!([80_000, 80_000, 0, 79_999]));
}

/// A long job against a healthy server: the delivered journal is compacted again and again, so it
/// stays a few KB instead of growing with every point, and everything lands exactly once.
#[test]
fn a_long_jobs_delivered_journal_is_compacted_and_everything_lands_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = common::private_server(common::free_port(), &tmp.path().join("store"));
    let uri = server.url().to_owned();
    let exp = common::unique("rotate");
    let b = rotating_backend(&uri, &exp, &tmp.path().join("journal"));
    let train = b.start("train", false, None).unwrap();
    b.log_parameter("lr", "0.01").unwrap();
    let mut size = JournalSize::default();
    const EPOCHS: i64 = 3000;
    for e in 0..EPOCHS {
        epoch(&b, e);
        if e % 100 == 99 {
            b.flush().unwrap();
            size.sample(&b);
        }
    }
    b.start("evaluate", true, None).unwrap();
    for s in 0..5 {
        b.log_metric_step("mse", s as f64, s).unwrap();
    }
    b.end().unwrap();
    b.end_run(&train, RunStatus::Finished).unwrap();
    b.flush().unwrap();
    let end = size.sample(&b);
    eprintln!(
        "[reliability] rotation: {} metric points, journal at most {} bytes (at the end {end}), \
         seen compacted {} times",
        2 * EPOCHS + 5,
        size.max,
        size.shrinks
    );
    // Without compaction the file would hold every point: well over 200 KB.
    assert!(size.max < 64 * 1024, "journal grew to {} bytes", size.max);
    assert!(end < 64 * 1024, "journal is {end} bytes at the end");
    let journal = b.journal_dir().unwrap();
    drop(b);
    assert!(!journal.exists(), "a delivered journal is removed");
    assert_long_job_landed(&runs_at(&uri, &exp), EPOCHS, 5);
    server.stop().unwrap();
}

/// Compaction and a server killed mid-way: after several compactions the server dies, the journal
/// keeps everything logged meanwhile (no compaction while the uploader is behind), a nested run is
/// started, the server comes back on the same store, and every point lands exactly once.
#[test]
fn compaction_then_kill_9_and_restart_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("store");
    let port = common::free_port();
    let server = common::private_server(port, &data);
    let uri = server.url().to_owned();
    let exp = common::unique("rotate-kill9");
    let b = rotating_backend(&uri, &exp, &tmp.path().join("journal"));
    let train = b.start("train", false, None).unwrap();
    b.log_parameter("lr", "0.01").unwrap();
    let mut size = JournalSize::default();
    for e in 0..1000 {
        epoch(&b, e);
        if e % 100 == 99 {
            b.flush().unwrap();
            size.sample(&b);
        }
    }
    // 2000 points, over 60 KB without compaction; compacted after every delivered flush.
    assert!(size.max < 24 * 1024, "journal grew to {} bytes", size.max);
    common::signal_group(&server, libc::SIGKILL);
    let _ = server.stop(); // reaps the killed process
    let shrinks = size.shrinks;
    let before = size.last;
    for e in 1000..1500 {
        epoch(&b, e);
        if e % 100 == 99 {
            b.flush().unwrap(); // returns once the uploader finds the server away
            size.sample(&b);
        }
    }
    // A nested run started while the server is dead: created when it is back, exactly once.
    let eval = b.start("evaluate", true, None).unwrap();
    assert!(eval.starts_with("local-"), "{eval}");
    for s in 0..5 {
        b.log_metric_step("mse", s as f64, s).unwrap();
    }
    b.end().unwrap(); // journaled; does not wait for the dead server
    let during = size.sample(&b);
    assert_eq!(
        size.shrinks, shrinks,
        "never compacted while the server was away"
    );
    // 1000 undelivered points, each tens of bytes, all still in the file.
    assert!(
        during > before + 1000 * 20,
        "journal {before} -> {during} bytes"
    );
    let server = common::private_server(port, &data);
    // Asks the uploader to retry at once: the backlog and the nested run land.
    let on_server = b.server_run_id(&eval).unwrap();
    assert!(!on_server.starts_with("local-"), "{on_server}");
    for e in 1500..2000 {
        epoch(&b, e);
        if e % 100 == 99 {
            b.flush().unwrap();
            size.sample(&b);
        }
    }
    b.end_run(&train, RunStatus::Finished).unwrap();
    b.flush().unwrap();
    size.sample(&b);
    assert!(size.shrinks > shrinks, "compacted again once delivered");
    assert!(size.last < 24 * 1024, "journal is {} bytes", size.last);
    eprintln!(
        "[reliability] rotation and kill -9: journal {before} bytes before the kill, {during} \
         with the server away, {} at the end",
        size.last
    );
    let journal = b.journal_dir().unwrap();
    drop(b);
    assert!(!journal.exists(), "a delivered journal is removed");
    assert_long_job_landed(&runs_at(&uri, &exp), 2000, 5);
    server.stop().unwrap();
}
