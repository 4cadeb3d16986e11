//! The journal's own faults, against real MLflow servers and judged with the official Python
//! client: an unwritable journal directory, a journal disk that fills up mid-training (a file-size
//! limit, `RLIMIT_FSIZE`, makes every write past it fail as on a full disk), and a program that ends
//! while its server is away (the journal stays and the program says how to upload it).
//!
//! This file has its own `main` (`harness = false` in Cargo.toml): started with
//! `SAPSAN_JOURNAL_CHILD` set, the binary is the training job; otherwise it is the test.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sapsan::tracking::journal::{self, JOURNAL_FILE};
use sapsan::tracking::{Backend, MlflowBackend, RunStatus, Settings};
use serde_json::{Value, json};

const CHILD_ENV: &str = "SAPSAN_JOURNAL_CHILD";
/// Largest file the full-disk child may write: the journal outgrows it after a few epochs.
const FSIZE_LIMIT: u64 = 8 * 1024;
/// Epochs of the full-disk child (2 metrics each, flushed every 10).
const EPOCHS: i64 = 200;
/// Bytes of the artifact the full-disk child logs (more than the file-size limit).
const ARTIFACT_BYTES: usize = 20_000;

fn main() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        sapsan::diag::init_logger();
        match mode.as_str() {
            "full-disk" => full_disk_child(),
            "server-gone" => server_gone_child(),
            "killed" => killed_child(),
            "notice" => {
                child_backend();
            }
            other => panic!("unknown child mode {other}"),
        }
        return;
    }
    let tests: [(&str, fn()); 4] = [
        (
            "unwritable_journal_directory_fails_before_anything_is_created",
            unwritable_journal_directory_fails_before_anything_is_created,
        ),
        (
            "full_journal_disk_keeps_whole_records_and_loses_nothing",
            full_journal_disk_keeps_whole_records_and_loses_nothing,
        ),
        (
            "server_away_at_exit_keeps_the_journal_and_says_how_to_upload",
            server_away_at_exit_keeps_the_journal_and_says_how_to_upload,
        ),
        (
            "kill_9_of_the_job_is_noticed_and_sync_ends_its_runs_killed",
            kill_9_of_the_job_is_noticed_and_sync_ends_its_runs_killed,
        ),
    ];
    common::run_tests(&tests);
}

/// Short backoff, so a dead server is noticed and given up on within a second at exit.
fn quick_settings() -> Settings {
    Settings {
        timeout: Duration::from_secs(5),
        max_retries: 1,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        linger: Duration::from_millis(20),
        // The journal root comes from SAPSAN_JOURNAL_DIR, as the test sets it.
        ..Settings::from_env().unwrap()
    }
}

fn child_backend() -> MlflowBackend {
    child_builder().build().unwrap()
}

fn child_builder() -> sapsan::tracking::MlflowBackendBuilder {
    MlflowBackend::builder()
        .tracking_uri(std::env::var("SAPSAN_TEST_TRACKING_URI").unwrap())
        .experiment(std::env::var("SAPSAN_JOURNAL_EXPERIMENT").unwrap())
        .settings(quick_settings())
}

/// Steps the killed child logs (and delivers) before its server goes away.
const DELIVERED_STEPS: i64 = 200;

/// Starts this binary as a child in `mode`; stdin and stdout piped, stderr captured by a thread.
fn spawn_child(
    mode: &str,
    uri: &str,
    exp: &str,
    journals: &Path,
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, mode)
        .env("SAPSAN_TEST_TRACKING_URI", uri)
        .env("SAPSAN_JOURNAL_EXPERIMENT", exp)
        .env("SAPSAN_JOURNAL_DIR", journals)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).unwrap();
        s
    });
    (child, reader)
}

fn unwritable_journal_directory_fails_before_anything_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    // A path under a regular file cannot be created, whoever runs the test (root included).
    let blocker = tmp.path().join("not-a-directory");
    std::fs::write(&blocker, b"x").unwrap();
    let root = blocker.join("journals");
    let exp = common::unique("unwritable");
    let err = MlflowBackend::builder()
        .tracking_uri(common::tracking_uri())
        .experiment(&exp)
        .journal_root(&root)
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("creating the journal directory")
            && msg.contains(&root.display().to_string())
            && msg.contains("SAPSAN_JOURNAL_DIR")
            && msg.contains("SAPSAN_JOURNAL=0"),
        "{msg}"
    );
    // Nothing half-written: no experiment on the server, nothing on disk.
    let found = common::judge(
        "print(json.dumps(client.get_experiment_by_name(args[0]) is not None))",
        &[&exp],
    );
    assert_eq!(found, json!(false), "the experiment was created anyway");
    assert_eq!(std::fs::read(&blocker).unwrap(), b"x");
    // The fix the message names works.
    let b = MlflowBackend::builder()
        .tracking_uri(common::tracking_uri())
        .experiment(&exp)
        .journal(false)
        .build()
        .unwrap();
    assert!(b.journal_dir().is_none());
}

/// The full-disk job: a train run (param, 2 metrics x EPOCHS, an artifact larger than the limit)
/// and a nested evaluate run, with every file limited to FSIZE_LIMIT bytes.
fn full_disk_child() {
    // SAFETY: plain libc calls at the start of a single-threaded child.
    unsafe {
        // Past the limit a write fails with EFBIG instead of killing the process, as ENOSPC on
        // a full disk.
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: FSIZE_LIMIT,
            rlim_max: FSIZE_LIMIT,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let b = child_backend();
    let train = b.start("train", false, None).unwrap();
    b.log_parameter("lr", "0.01").unwrap();
    for e in 0..EPOCHS {
        b.log_metric_step("loss", 1.0 / (e + 1) as f64, e).unwrap();
        b.log_metric_step("acc", e as f64 / EPOCHS as f64, e)
            .unwrap();
        if e % 10 == 9 {
            b.flush().unwrap();
        }
    }
    b.upload_artifact(&train, "model.txt", &vec![b'w'; ARTIFACT_BYTES])
        .unwrap();
    let eval = b.start("evaluate", true, None).unwrap();
    for s in 0..5 {
        b.log_metric_step("mse", s as f64, s).unwrap();
    }
    b.end().unwrap();
    // What is on disk now: whole records only, every byte of the file accounted for.
    let dir = b.journal_dir().unwrap();
    let len = std::fs::metadata(dir.join(JOURNAL_FILE)).unwrap().len();
    let recs = journal::read_records(&dir, 0, None).unwrap();
    let end = recs.last().map_or(0, |r| r.1);
    println!("JOURNAL len={len} end={end} records={}", recs.len());
    b.end_run(&train, RunStatus::Finished).unwrap();
    println!("RUNS {train} {eval}");
    drop(b);
}

fn full_journal_disk_keeps_whole_records_and_loses_nothing() {
    let journals = tempfile::tempdir().unwrap();
    let exp = common::unique("fulldisk");
    let (child, stderr) = spawn_child("full-disk", &common::tracking_uri(), &exp, journals.path());
    let out = child.wait_with_output().unwrap();
    let stderr = stderr.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    // One specific report, naming the journal, the cause and the fix.
    assert!(
        stderr.contains("writing the journal")
            && stderr.contains("File too large")
            && stderr.contains("held in memory")
            && stderr.contains("SAPSAN_JOURNAL_DIR"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("writing the journal").count(),
        1,
        "reported once: {stderr}"
    );
    assert!(
        stderr.contains("sending artifact \"model.txt\" to MLflow directly"),
        "{stderr}"
    );
    // Nothing half-written: the journal file ends exactly after its last whole record.
    let jl = stdout
        .lines()
        .find_map(|l| l.strip_prefix("JOURNAL "))
        .unwrap();
    let field = |k: &str| -> u64 {
        jl.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(field("len="), field("end="), "{jl}");
    assert!(
        field("len=") <= FSIZE_LIMIT && field("records=") > 0,
        "{jl}"
    );
    // Everything landed, and the delivered journal is gone.
    assert!(common::journal_dirs(journals.path()).is_empty());
    let ids: Vec<&str> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RUNS "))
        .unwrap()
        .split_whitespace()
        .collect();
    let v = common::judge(
        r#"
out = []
for rid in args:
    r = client.get_run(rid)
    hist = {k: sorted(m.step for m in client.get_metric_history(rid, k)) for k in r.data.metrics}
    arts = {f.path: f.file_size for f in client.list_artifacts(rid)}
    out.append({"status": r.info.status, "parent": r.data.tags.get("mlflow.parentRunId"),
                "params": r.data.params, "hist": hist, "arts": arts})
print(json.dumps(out))
"#,
        &ids,
    );
    let (train, eval) = (&v[0], &v[1]);
    let all: Vec<Value> = (0..EPOCHS).map(|s| json!(s)).collect();
    assert_eq!(train["status"], "FINISHED");
    assert_eq!(train["params"]["lr"], "0.01");
    assert_eq!(train["hist"]["loss"], json!(all), "loss history");
    assert_eq!(train["hist"]["acc"], json!(all), "acc history");
    assert_eq!(train["arts"]["model.txt"], json!(ARTIFACT_BYTES));
    assert_eq!(eval["status"], "FINISHED");
    assert_eq!(eval["parent"], json!(ids[0]));
    assert_eq!(eval["hist"]["mse"], json!([0, 1, 2, 3, 4]));
}

/// Logs 10 epochs, says READY, waits for a line on stdin (the server is killed meanwhile), logs
/// 10 more and ends.
fn server_gone_child() {
    let b = child_backend();
    b.start("train", false, None).unwrap();
    for e in 0..10 {
        b.log_metric_step("loss", e as f64, e).unwrap();
    }
    b.flush().unwrap();
    println!("READY {}", b.journal_dir().unwrap().display());
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    for e in 10..20 {
        b.log_metric_step("loss", e as f64, e).unwrap();
    }
    b.end().unwrap();
    drop(b);
}

fn server_away_at_exit_keeps_the_journal_and_says_how_to_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let server = common::private_server(common::free_port(), &tmp.path().join("store"));
    let uri = server.url().to_owned();
    let journals = tmp.path().join("journals");
    let exp = common::unique("gone-exit");
    let (mut child, stderr) = spawn_child("server-gone", &uri, &exp, &journals);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let dir = line
        .trim()
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("child did not get ready: {line:?}"))
        .to_owned();
    common::signal_group(&server, libc::SIGKILL);
    let _ = server.stop();
    writeln!(child.stdin.take().unwrap(), "go").unwrap();
    let status = child.wait().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        Path::new(&dir).join(JOURNAL_FILE).is_file(),
        "journal gone: {stderr}"
    );
    // 10 metrics + the FINISHED status are waiting.
    let expect = format!(
        "the MLflow server at {uri} is unreachable (cannot reach the MLflow server at {uri}"
    );
    assert!(stderr.contains(&expect), "{stderr}");
    let items: usize = stderr
        .split(" logged items (")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no item count: {stderr}"));
    assert_eq!(items, 11, "{stderr}");
    assert!(
        stderr.contains(&format!("journal records) are kept in {dir}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("sapsan sync {dir} --tracking-uri {uri}")),
        "{stderr}"
    );
}

/// A train run with a nested evaluate; 10 points delivered, READY; after a line on stdin (the
/// server is dead by then) 10 more points journaled, LOGGED; then it waits to be killed.
fn killed_child() {
    // A small compaction threshold: the delivered part of the journal is compacted on the way.
    let b = child_builder().journal_rotate_bytes(1024).build().unwrap();
    b.start("train", false, None).unwrap();
    b.log_parameter("lr", "0.01").unwrap();
    b.start("evaluate", true, None).unwrap();
    for s in 0..DELIVERED_STEPS {
        b.log_metric_step("mse", s as f64, s).unwrap();
        if s % 10 == 9 {
            b.flush().unwrap();
        }
    }
    b.flush().unwrap();
    let dir = b.journal_dir().unwrap();
    let len = std::fs::metadata(dir.join(JOURNAL_FILE)).unwrap().len();
    println!("READY {len}");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    for s in DELIVERED_STEPS..DELIVERED_STEPS + 10 {
        b.log_metric_step("mse", s as f64, s).unwrap();
    }
    b.flush().unwrap(); // on disk; the server is away
    println!("LOGGED");
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::park();
    }
}

fn kill_9_of_the_job_is_noticed_and_sync_ends_its_runs_killed() {
    // The job is killed with SIGKILL (as by the out-of-memory killer) while its server is away:
    // no handler runs, the journal holds the last points and no end for either run.
    let tmp = tempfile::tempdir().unwrap();
    let (port, store) = (common::free_port(), tmp.path().join("store"));
    let server = common::private_server(port, &store);
    let uri = server.url().to_owned();
    let journals = tmp.path().join("journals");
    let exp = common::unique("killed");
    let (mut child, stderr) = spawn_child("killed", &uri, &exp, &journals);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // 200 delivered points take ~8 KB of journal: compacted, far less is left.
    let len: u64 = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("child did not get ready: {line:?}"));
    assert!(len < 3000, "journal not compacted: {len} bytes");
    common::signal_group(&server, libc::SIGKILL);
    let _ = server.stop();
    writeln!(child.stdin.take().unwrap(), "go").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "LOGGED");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    stderr.join().unwrap();
    assert_eq!(common::journal_dirs(&journals).len(), 1);

    // The next program using the same journal root says what was left and how to upload it.
    let server = common::private_server(port, &store);
    let (next, next_err) = spawn_child("notice", &uri, &exp, &journals);
    assert!(next.wait_with_output().unwrap().status.success());
    let notice = next_err.join().unwrap();
    assert!(
        notice.contains("1 journal(s) in")
            && notice.contains(&format!(
                "sapsan sync {} --tracking-uri {uri}",
                journals.display()
            )),
        "{notice}"
    );

    // sync delivers the last points and ends both runs KILLED: their program is gone.
    let report = common::sapsan_sync(&journals, &uri);
    assert!(
        report.contains("2 run(s) left open by a program that died were ended KILLED"),
        "{report}"
    );
    let v = common::judge_at(
        &uri,
        r#"
exp = client.get_experiment_by_name(args[0])
out = {}
for r in client.search_runs([exp.experiment_id]):
    h = client.get_metric_history(r.info.run_id, "mse") if "mse" in r.data.metrics else []
    out[r.info.run_name] = {"status": r.info.status, "end": r.info.end_time,
        "steps": sorted(m.step for m in h), "last": max([m.timestamp for m in h], default=None),
        "params": r.data.params}
print(json.dumps(out))
"#,
        &[&exp],
    );
    assert_eq!(v["train"]["status"], "KILLED", "{v}");
    assert_eq!(v["train"]["params"]["lr"], "0.01");
    assert_eq!(v["evaluate"]["status"], "KILLED", "{v}");
    let steps: Vec<Value> = (0..DELIVERED_STEPS + 10).map(|s| json!(s)).collect();
    assert_eq!(v["evaluate"]["steps"], json!(steps), "{v}");
    // Ended when it last logged, not when it was synced.
    assert_eq!(v["evaluate"]["end"], v["evaluate"]["last"], "{v}");
    server.stop().unwrap();
}
