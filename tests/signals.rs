//! SIGTERM and SIGINT to a training process: its open runs end KILLED with an end time, what it
//! logged arrived, and the process dies of the signal. Judged with the official Python client.
//!
//! This file has its own `main` (`harness = false` in Cargo.toml): started with
//! `SAPSAN_SIGNAL_CHILD` set, the binary is the victim, a small training job that logs in a loop;
//! otherwise it is the test, which starts victims and signals them.
mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use sapsan::tracking::{Backend, MlflowBackendBuilder, OfflineBackend};
use serde_json::Value;

const CHILD_ENV: &str = "SAPSAN_SIGNAL_CHILD";
/// Steps the victim logs (and delivers) before it says it is ready to be signalled.
const READY_STEPS: i64 = 20;

fn main() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        victim(&mode);
        return;
    }
    let tests: [(&str, fn()); 6] = [
        ("sigterm_marks_every_open_run_killed", || {
            signalled_runs_end_killed(libc::SIGTERM)
        }),
        ("sigint_marks_every_open_run_killed", || {
            signalled_runs_end_killed(libc::SIGINT)
        }),
        (
            "opt_out_leaves_the_signal_alone",
            opt_out_leaves_the_signal_alone,
        ),
        ("ignored_sigint_stays_ignored", ignored_sigint_stays_ignored),
        (
            "sigterm_with_the_server_away_keeps_killed_in_the_journal",
            sigterm_with_the_server_away_keeps_killed_in_the_journal,
        ),
        (
            "sigterm_to_an_offline_job_journals_killed",
            sigterm_to_an_offline_job_journals_killed,
        ),
    ];
    common::run_tests(&tests);
}

/// The victim: two backends (as two parts of a program might have), a train run with a nested
/// evaluation in the first and a train run in the second; logs `loss` at steps 0, 1, 2, ...
/// Prints `READY <run ids>` once the first steps are delivered, then logs until it is killed.
fn victim(mode: &str) {
    sapsan::diag::init_logger();
    let experiment = std::env::var("SAPSAN_SIGNAL_EXPERIMENT").unwrap();
    if mode == "offline" {
        offline_victim(&experiment);
        return;
    }
    let build = |on: bool| {
        // The journal root comes from SAPSAN_JOURNAL_DIR, as the test sets it.
        MlflowBackendBuilder::from_env()
            .unwrap()
            .tracking_uri(common::tracking_uri())
            .experiment(&experiment)
            .handle_signals(on)
            .build()
            .unwrap()
    };
    let on = mode != "opt-out";
    let a = build(on);
    let b = build(on);
    let train = a.start("train", false, None).unwrap();
    a.log_parameter("model - lr", "0.001").unwrap();
    let eval = a.start("evaluate", true, None).unwrap();
    let other = b.start("train", false, None).unwrap();
    let mut step = 0i64;
    loop {
        a.log_metric_step("loss", 1.0 / (step + 1) as f64, step)
            .unwrap();
        b.log_metric_step("loss", step as f64, step).unwrap();
        step += 1;
        if step == READY_STEPS {
            a.flush().unwrap();
            b.flush().unwrap();
            println!("READY {train} {eval} {other}");
        }
        // One "epoch" of training.
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// What became of a victim.
struct Victim {
    status: std::process::ExitStatus,
    /// Run ids: train and evaluate of the first backend, train of the second.
    ids: Vec<String>,
    /// Its stderr.
    stderr: String,
    /// Its journal root (`SAPSAN_JOURNAL_DIR`).
    journals: tempfile::TempDir,
    /// Its experiment.
    experiment: String,
}

/// Starts a victim in `mode` against the server at `uri`, waits for READY, calls `before_signal`,
/// sends `sig`, and waits for the victim's end.
fn run_victim(
    mode: &str,
    uri: &str,
    sig: libc::c_int,
    ignore_sigint: bool,
    before_signal: impl FnOnce(),
) -> Victim {
    let exp = common::unique("signals");
    let journals = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD_ENV, mode)
        .env("SAPSAN_SIGNAL_EXPERIMENT", &exp)
        .env("SAPSAN_TEST_TRACKING_URI", uri)
        .env("SAPSAN_JOURNAL_DIR", journals.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    {
        use std::os::unix::process::CommandExt;
        // The victim starts with SIGINT ignored exactly when the case asks for it. Set both ways:
        // a test run launched in the background of a non-interactive shell (`cmd &`, nohup)
        // inherits SIGINT ignored, and the victim would rightly keep ignoring it.
        let disposition = if ignore_sigint {
            libc::SIG_IGN
        } else {
            libc::SIG_DFL
        };
        // SAFETY: only `signal` between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::signal(libc::SIGINT, disposition);
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err_pipe, &mut s).unwrap();
        eprint!("{s}");
        s
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ids: Vec<String> = line
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("victim did not get ready: {line:?}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 3, "{line}");
    // What the victim does with each signal, as the kernel reports it.
    let (ignored, caught) = signal_masks(child.id());
    let bit = |s: libc::c_int| 1u64 << (s - 1);
    let handled = mode != "opt-out";
    assert_eq!(
        caught & bit(libc::SIGTERM) != 0,
        handled,
        "SigCgt {caught:x}"
    );
    assert_eq!(
        caught & bit(libc::SIGINT) != 0,
        handled && !ignore_sigint,
        "SigCgt {caught:x}"
    );
    assert_eq!(
        ignored & bit(libc::SIGINT) != 0,
        ignore_sigint,
        "SigIgn {ignored:x}"
    );
    before_signal();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
    let status = child.wait().unwrap();
    Victim {
        status,
        ids,
        stderr: err_reader.join().unwrap(),
        journals,
        experiment: exp,
    }
}

/// `SigIgn` and `SigCgt` of process `pid` from /proc.
fn signal_masks(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line[name.len()..].trim(), 16).unwrap()
    };
    (field("SigIgn:"), field("SigCgt:"))
}

const READ_RUNS: &str = r#"
out = []
for rid in args:
    r = client.get_run(rid)
    hist = sorted(m.step for m in client.get_metric_history(rid, "loss"))
    out.append({"status": r.info.status, "start": r.info.start_time, "end": r.info.end_time,
                "steps": hist, "params": r.data.params})
print(json.dumps(out))
"#;

fn read_runs(ids: &[String]) -> Vec<Value> {
    read_runs_at(&common::tracking_uri(), ids)
}

fn read_runs_at(uri: &str, ids: &[String]) -> Vec<Value> {
    let args: Vec<&str> = ids.iter().map(String::as_str).collect();
    common::judge_at(uri, READ_RUNS, &args)
        .as_array()
        .unwrap()
        .clone()
}

/// Steps 0..=max, each once, with at least the READY steps.
fn assert_complete_history(run: &Value) {
    let steps: Vec<i64> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_i64().unwrap())
        .collect();
    assert!(steps.len() as i64 >= READY_STEPS, "{run}");
    let expected: Vec<i64> = (0..steps.len() as i64).collect();
    assert_eq!(steps, expected, "gaps or duplicates: {run}");
}

fn signalled_runs_end_killed(sig: libc::c_int) {
    let v = run_victim("handle", &common::tracking_uri(), sig, false, || {});
    let (status, ids) = (v.status, &v.ids);
    assert_eq!(status.signal(), Some(sig), "exit status: {status:?}");
    // KILLED went through the journal and was delivered: both journals are removed.
    assert!(
        common::journal_dirs(v.journals.path()).is_empty(),
        "journals left: {}",
        v.stderr
    );
    let runs = read_runs(ids);
    for (id, run) in ids.iter().zip(&runs) {
        assert_eq!(run["status"], "KILLED", "run {id}: {run}");
        let (start, end) = (run["start"].as_i64().unwrap(), run["end"].as_i64());
        assert!(
            end.is_some_and(|e| e >= start),
            "run {id} has no end time: {run}"
        );
    }
    // `a` logs to its active run, the nested evaluation; `b` to its train run.
    assert_complete_history(&runs[1]);
    assert_complete_history(&runs[2]);
    assert_eq!(runs[0]["params"]["model - lr"], "0.001");
}

fn opt_out_leaves_the_signal_alone() {
    let v = run_victim(
        "opt-out",
        &common::tracking_uri(),
        libc::SIGTERM,
        false,
        || {},
    );
    assert_eq!(v.status.signal(), Some(libc::SIGTERM), "{:?}", v.status);
    // Nobody ended the runs: they stay RUNNING (what the handlers exist to prevent).
    for run in read_runs(&v.ids) {
        assert_eq!(run["status"], "RUNNING", "{run}");
    }
}

fn ignored_sigint_stays_ignored() {
    // A job started with SIGINT ignored (nohup, `&` in a script) keeps ignoring it; SIGTERM still
    // ends its runs KILLED.
    let v = run_victim(
        "handle",
        &common::tracking_uri(),
        libc::SIGTERM,
        true,
        || {},
    );
    assert_eq!(v.status.signal(), Some(libc::SIGTERM), "{:?}", v.status);
    for run in read_runs(&v.ids) {
        assert_eq!(run["status"], "KILLED", "{run}");
    }
}

fn sigterm_with_the_server_away_keeps_killed_in_the_journal() {
    // The server dies (kill -9) while the victim trains; then the victim gets SIGTERM. Its runs
    // cannot be marked on the server, so KILLED goes into the journal with everything logged,
    // the journal stays and stderr says how to upload it; `sapsan sync` later delivers it all.
    let tmp = tempfile::tempdir().unwrap();
    let (port, store) = (common::free_port(), tmp.path().join("store"));
    let server = common::private_server(port, &store);
    let uri = server.url().to_owned();
    let v = run_victim("handle", &uri, libc::SIGTERM, false, || {
        common::signal_group(&server, libc::SIGKILL);
    });
    let _ = server.stop();
    assert_eq!(v.status.signal(), Some(libc::SIGTERM), "{:?}", v.status);
    let kept = common::journal_dirs(v.journals.path());
    assert_eq!(kept.len(), 2, "one journal per backend: {}", v.stderr);
    for dir in &kept {
        assert!(
            v.stderr.contains(&format!("sapsan sync {}", dir.display())),
            "stderr does not say how to upload {}: {}",
            dir.display(),
            v.stderr
        );
    }
    let server = common::private_server(port, &store);
    let out = common::sapsan_sync(v.journals.path(), server.url());
    assert!(out.contains("2 journal(s)"), "{out}");
    let runs = read_runs_at(server.url(), &v.ids);
    for (id, run) in v.ids.iter().zip(&runs) {
        assert_eq!(run["status"], "KILLED", "run {id}: {run}");
        assert!(run["end"].as_i64().is_some(), "run {id}: {run}");
    }
    assert_complete_history(&runs[1]);
    assert_complete_history(&runs[2]);
    server.stop().unwrap();
}

/// An offline job (no server): a train run with a nested evaluate, logging `loss` into the
/// evaluate run until killed. Prints `READY <ids>` like the online victim (ids are local).
fn offline_victim(experiment: &str) {
    let root = std::env::var("SAPSAN_JOURNAL_DIR").unwrap();
    let b = OfflineBackend::new(experiment, std::path::Path::new(&root)).unwrap();
    let train = b.start("train", false, None).unwrap();
    let eval = b.start("evaluate", true, None).unwrap();
    let mut step = 0i64;
    loop {
        b.log_metric_step("loss", step as f64, step).unwrap();
        step += 1;
        if step == READY_STEPS {
            b.flush().unwrap();
            println!("READY {train} {eval} {eval}");
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn sigterm_to_an_offline_job_journals_killed() {
    // A batch scheduler ends an offline job: KILLED is journaled for both runs, the process dies
    // of the signal, and stderr says how to upload the journal.
    let v = run_victim("offline", "offline:", libc::SIGTERM, false, || {});
    assert_eq!(v.status.signal(), Some(libc::SIGTERM), "{:?}", v.status);
    assert!(
        v.ids.iter().all(|id| id.starts_with("local-")),
        "{:?}",
        v.ids
    );
    let kept = common::journal_dirs(v.journals.path());
    assert_eq!(kept.len(), 1, "{}", v.stderr);
    assert!(
        v.stderr
            .contains(&format!("sapsan sync {}", kept[0].display())),
        "{}",
        v.stderr
    );
    let out = common::sapsan_sync(v.journals.path(), &common::tracking_uri());
    assert!(
        !out.contains("ended KILLED"),
        "KILLED came from the journal: {out}"
    );
    let exp = v.experiment.clone();
    let runs = common::judge(
        r#"
exp = client.get_experiment_by_name(args[0])
out = {}
for r in client.search_runs([exp.experiment_id]):
    h = client.get_metric_history(r.info.run_id, "loss") if "loss" in r.data.metrics else []
    out[r.info.run_name] = {"status": r.info.status, "end": r.info.end_time,
                            "steps": sorted(m.step for m in h)}
print(json.dumps(out))
"#,
        &[&exp],
    );
    for name in ["train", "evaluate"] {
        assert_eq!(runs[name]["status"], "KILLED", "{runs}");
        assert!(runs[name]["end"].as_i64().is_some(), "{runs}");
    }
    let steps = runs["evaluate"]["steps"].as_array().unwrap();
    assert!(steps.len() as i64 >= READY_STEPS, "{runs}");
    let expected: Vec<Value> = (0..steps.len() as i64).map(Value::from).collect();
    assert_eq!(steps, &expected, "gaps or duplicates: {runs}");
}
