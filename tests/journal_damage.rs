//! A journal damaged on disk (a garbled line, as after a bad sector or a stray write), uploaded
//! with `sapsan sync` to a real MLflow server and judged with the official Python client: the
//! damaged record is lost and named, every other record lands exactly once, and sync exits
//! non-zero.
mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use sapsan::tracking::journal::{self, JOURNAL_FILE, ORIGIN_FILE, Origin, Record, RunRef};
use sapsan::tracking::{Backend, OfflineBackend, RunStatus};
use serde_json::{Value, json};

/// Steps of `loss` the train run logs, journaled in batches of [`FLUSH_EVERY`].
const STEPS: i64 = 50;
const FLUSH_EVERY: i64 = 10;

/// An offline job: train (param `lr`, `loss` steps 0..STEPS) with a nested evaluate (`mse` 0..5),
/// both ended FINISHED, train last. Returns the journal directory.
fn offline_job(exp: &str, root: &Path) -> PathBuf {
    let b = OfflineBackend::with_signals(exp, root, false).unwrap();
    let train = b.start("train", false, None).unwrap();
    b.log_parameter("lr", "0.01").unwrap();
    for s in 0..STEPS {
        b.log_metric_step("loss", s as f64 + 0.5, s).unwrap();
        if s % FLUSH_EVERY == FLUSH_EVERY - 1 {
            b.flush().unwrap();
        }
    }
    b.start("evaluate", true, None).unwrap();
    for s in 0..5 {
        b.log_metric_step("mse", s as f64, s).unwrap();
    }
    b.end().unwrap();
    b.end_run(&train, RunStatus::Finished).unwrap();
    let dir = b.journal_dir();
    drop(b);
    dir
}

/// Each record of the journal with its byte range.
fn lines(dir: &Path) -> Vec<(Record, u64, u64)> {
    let mut start = 0;
    journal::read_records(dir, 0, None)
        .unwrap()
        .into_iter()
        .map(|(r, end)| {
            let out = (r, start, end);
            start = end;
            out
        })
        .collect()
}

/// The key of the run named `name` in the journal.
fn key_of(recs: &[(Record, u64, u64)], run_name: &str) -> String {
    recs.iter()
        .find_map(|(r, ..)| match r {
            Record::Create { key, name, .. } if name == run_name => Some(key.clone()),
            _ => None,
        })
        .unwrap()
}

/// Replaces the first `from` inside bytes `start..end` of the journal by `to` (same length).
fn garble(dir: &Path, start: u64, end: u64, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let path = dir.join(JOURNAL_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let line = &mut bytes[start as usize..end as usize];
    let at = line
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{:?} not in the line", String::from_utf8_lossy(from)));
    line[at..at + to.len()].copy_from_slice(to);
    assert_eq!(line.last(), Some(&b'\n'), "the newline stays");
    std::fs::write(&path, bytes).unwrap();
}

/// `sapsan sync <dir> --tracking-uri <server>`: exit status, stdout, stderr.
fn sync(dir: &Path) -> (Output, String, String) {
    let out = common::sapsan_sync_output(dir, &common::tracking_uri());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// Runs of experiment `exp` by name: status, end time, parent, params, metric histories (steps in
/// the order the server returns them, values) and the last metric timestamp.
fn judge(exp: &str) -> Value {
    common::judge(
        r#"
exp = client.get_experiment_by_name(args[0])
out = {}
for r in client.search_runs([exp.experiment_id]):
    hist = {k: [[m.step, m.value] for m in sorted(client.get_metric_history(r.info.run_id, k),
                                                   key=lambda m: m.step)]
            for k in r.data.metrics}
    last = max([m.timestamp for k in r.data.metrics
                for m in client.get_metric_history(r.info.run_id, k)], default=None)
    out[r.info.run_name] = {"status": r.info.status, "end": r.info.end_time, "id": r.info.run_id,
        "parent": r.data.tags.get("mlflow.parentRunId"), "params": r.data.params,
        "hist": hist, "last": last}
print(json.dumps(out))
"#,
        &[exp],
    )
}

fn loss_history(steps: impl Iterator<Item = i64>) -> Value {
    json!(
        steps
            .map(|s| json!([s, s as f64 + 0.5]))
            .collect::<Vec<_>>()
    )
}

#[test]
fn a_record_damaged_in_the_middle_is_named_and_everything_else_lands_once() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = common::unique("damaged-middle");
    let dir = offline_job(&exp, tmp.path());
    let recs = lines(&dir);
    let train_key = key_of(&recs, "train");
    // The middle one of train's metric batches.
    let batches: Vec<&(Record, u64, u64)> = recs
        .iter()
        .filter(|(r, ..)| {
            matches!(r, Record::Batch { run: RunRef::Key(k), metrics, .. }
                if *k == train_key && !metrics.is_empty())
        })
        .collect();
    assert!(batches.len() >= 3, "{} batches", batches.len());
    let (victim, start, end) = batches[batches.len() / 2].clone();
    let Record::Batch { metrics, .. } = &victim else {
        unreachable!()
    };
    let lost: Vec<i64> = metrics.iter().map(|m| m.step).collect();
    // One digit of a value: still valid JSON, only the checksum can tell.
    let first = format!("\"value\":{:?}", metrics[0].value); // "value":20.5
    let mut to = first.clone().into_bytes();
    let digit = to.len() - 3; // the units digit
    to[digit] = if to[digit] == b'7' { b'3' } else { b'7' };
    garble(&dir, start, end, first.as_bytes(), &to);

    let (out, stdout, stderr) = sync(&dir);
    assert!(!out.status.success(), "sync must fail: {stdout}\n{stderr}");
    let named = format!(
        "damaged journal record (skipped, lost): {} at byte {start} ({} bytes), run key {train_key}",
        dir.join(JOURNAL_FILE).display(),
        end - start
    );
    assert!(stderr.contains(&named), "{stderr}");
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    assert_eq!(
        stderr.matches("damaged journal record (").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("1 damaged journal record(s) could not be read"),
        "{stderr}"
    );
    assert!(stdout.contains("2 runs"), "{stdout}");

    let v = judge(&exp);
    let (train, eval) = (&v["train"], &v["evaluate"]);
    assert_eq!(train["status"], "FINISHED", "{v}");
    assert_eq!(train["params"], json!({"lr": "0.01"}));
    // Every step once, except those of the damaged record.
    assert_eq!(
        train["hist"]["loss"],
        loss_history((0..STEPS).filter(|s| !lost.contains(s))),
        "lost {lost:?}: {v}"
    );
    assert_eq!(eval["status"], "FINISHED");
    assert_eq!(eval["parent"], train["id"]);
    assert_eq!(
        eval["hist"]["mse"],
        json!((0..5).map(|s| json!([s, s as f64])).collect::<Vec<_>>())
    );

    // A second sync changes nothing: still exactly once, the damage still named.
    let (again, _, stderr) = sync(&dir);
    assert!(!again.status.success());
    assert!(stderr.contains(&named), "{stderr}");
    assert_eq!(judge(&exp), v);
}

#[test]
fn a_record_damaged_at_the_end_loses_the_runs_end_and_sync_ends_it_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = common::unique("damaged-end");
    let dir = offline_job(&exp, tmp.path());
    let recs = lines(&dir);
    let train_key = key_of(&recs, "train");
    // The last record is train's FINISHED: garbled with zero bytes, as a bad sector leaves it.
    let (last, start, end) = recs.last().unwrap().clone();
    assert!(
        matches!(&last, Record::Status { run: RunRef::Key(k), status: RunStatus::Finished, .. }
            if *k == train_key),
        "{last:?}"
    );
    garble(&dir, start, end, b"FINISHED", b"FI\0\0\0\0ED");
    // And a torn line after it (a write cut short): not yet written, not damage.
    let path = dir.join(JOURNAL_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"0badf00d {\"t\":\"status\",\"run\":{\"ke");
    std::fs::write(&path, bytes).unwrap();
    // The journal's program is gone (a finished child's pid), so its open runs are ended.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let origin = Origin {
        pid,
        ..Origin::read(&dir).unwrap()
    };
    std::fs::write(dir.join(ORIGIN_FILE), serde_json::to_vec(&origin).unwrap()).unwrap();

    let (out, stdout, stderr) = sync(&dir);
    assert!(!out.status.success(), "sync must fail: {stdout}\n{stderr}");
    let named = format!(
        "damaged journal record (skipped, lost): {} at byte {start} ({} bytes), run key {train_key}",
        path.display(),
        end - start
    );
    assert!(stderr.contains(&named), "{stderr}");
    assert_eq!(
        stderr.matches("damaged journal record (").count(),
        1,
        "the torn line is not reported: {stderr}"
    );
    assert!(
        stdout.contains("1 run(s) left open by a program that died were ended KILLED"),
        "{stdout}"
    );

    let v = judge(&exp);
    let (train, eval) = (&v["train"], &v["evaluate"]);
    assert_eq!(train["status"], "KILLED", "{v}");
    // Ended when it last logged, not when it was synced.
    assert_eq!(train["end"], train["last"], "{v}");
    assert_eq!(train["params"], json!({"lr": "0.01"}));
    assert_eq!(train["hist"]["loss"], loss_history(0..STEPS), "{v}");
    assert_eq!(eval["status"], "FINISHED");
    assert_eq!(eval["parent"], train["id"]);
}
