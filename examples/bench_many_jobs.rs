//! A job array against a team server, and `sapsan sync --jobs` at scale, measured side by side
//! with their peers in one run.
//!
//! Run (the server: MLflow with 4 workers on a private PostgreSQL, as `scripts/test.sh` starts it;
//! `mlflow` from `.venv`):
//!
//! ```text
//! cargo build --example job --example bench_many_jobs
//! PATH=$PWD/.venv/bin:$PATH bash -c 'source scripts/server.sh && trap pg_server_stop EXIT &&
//!   pg_server_start && SAPSAN_BENCH_TRACKING_URI=$PG_SERVER_URL
//!   target/debug/examples/bench_many_jobs'
//! ```
//!
//! (results: `BENCHMARKS.md`, section Many jobs). The job programs are `examples/job.rs`, found
//! beside this program.
//!
//! 1. Many jobs: `SAPSAN_BENCH_ROUNDS` rounds (default 3) of: the server's ingest ceiling (the
//!    raw-HTTP client of `bench_tracking`, `bench_common/ceiling.rs`, here with 8 connections
//!    writing into 8 runs, as the 8 jobs do), then 8 `job` programs
//!    started at once (each: a train run, 10,000 loss points, params, an artifact, 2 nested
//!    evaluate runs), then the ceiling again. Their combined rate is the 80,000 points over the
//!    wall time from the first start to the last exit (process start, run creation, evaluate
//!    runs and the final flush included), compared with the mean of the two ceilings around it.
//! 2. Sync: 100 offline journals of `job` (`SAPSAN_BENCH_SYNC_METRICS` loss points each, default
//!    1,000), made twice (two experiments, so neither upload finds the other's runs), uploaded
//!    with `sapsan sync`'s code (`sync_dir`) one at a time (`--jobs 1`) and `--jobs 4`.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sapsan::tracking::upload::{OpenRuns, SyncOptions, SyncReport, sync_dir};
use sapsan::tracking::{Backend, MlflowBackend, RunStatus, Settings};

#[path = "bench_common/ceiling.rs"]
mod ceiling;
use ceiling::{BoxResult, batch_body, ceiling_spread, load, median, raw_post};

/// Programs started at once.
const JOBS: u32 = 8;
/// Loss points each logs.
const POINTS: u32 = 10_000;
/// Offline journals uploaded by the sync measurement.
const JOURNALS: u32 = 100;
/// Journals uploaded at once in the parallel sync.
const SYNC_JOBS: usize = 4;

/// The `job` example beside this program.
fn job_bin() -> BoxResult<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("job");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build --example job` (the same profile as this one)",
            bin.display()
        )
        .into())
    }
}

/// Job `index` of experiment `exp` on `uri` (a server, or `offline:<dir>`), started.
fn spawn_job(
    bin: &Path,
    uri: &str,
    exp: &str,
    index: u32,
    points: u32,
    journals: &Path,
) -> BoxResult<Child> {
    Ok(Command::new(bin)
        .arg(index.to_string())
        .env("MLFLOW_TRACKING_URI", uri)
        .env("MLFLOW_EXPERIMENT_NAME", exp)
        .env("SAPSAN_JOB_METRICS", points.to_string())
        .env("SAPSAN_JOB_EVALS", "2")
        .env("SAPSAN_JOURNAL_DIR", journals)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// Waits for `children` (each at most 10 minutes from `started`); an error names the first that
/// failed.
fn wait_all(children: Vec<Child>, started: Instant) -> BoxResult<()> {
    let deadline = Duration::from_secs(600);
    for (i, mut c) in children.into_iter().enumerate() {
        loop {
            if c.try_wait()?.is_some() {
                break;
            }
            if started.elapsed() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return Err(format!("job {i} did not end within {deadline:?}").into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = c.wait_with_output()?;
        if !out.status.success() {
            return Err(format!(
                "job {i} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
    }
    Ok(())
}

/// One round of 8 jobs at once: points per second over the wall time.
fn many_jobs(bin: &Path, uri: &str, exp: &str) -> BoxResult<(f64, Duration)> {
    let journals = tempfile::tempdir()?;
    let t = Instant::now();
    let children = (0..JOBS)
        .map(|i| spawn_job(bin, uri, exp, i, POINTS, journals.path()))
        .collect::<BoxResult<Vec<_>>>()?;
    wait_all(children, t)?;
    let wall = t.elapsed();
    Ok((f64::from(JOBS * POINTS) / wall.as_secs_f64(), wall))
}

/// `JOURNALS` offline journals of experiment `exp` under a new temporary directory.
fn offline_journals(bin: &Path, exp: &str, points: u32) -> BoxResult<tempfile::TempDir> {
    let root = tempfile::tempdir()?;
    let uri = format!("offline:{}", root.path().display());
    for first in (0..JOURNALS).step_by(JOBS as usize) {
        let t = Instant::now();
        let children = (first..(first + JOBS).min(JOURNALS))
            .map(|i| spawn_job(bin, &uri, exp, i, points, root.path()))
            .collect::<BoxResult<Vec<_>>>()?;
        wait_all(children, t)?;
    }
    Ok(root)
}

/// Uploads the journals under `root` to `uri`, `jobs` at once: the report and the time.
fn sync(root: &Path, uri: &str, jobs: usize) -> BoxResult<(SyncReport, Duration)> {
    let opts = SyncOptions {
        open: OpenRuns::End,
        jobs,
        resend: false,
    };
    let t = Instant::now();
    let report = sync_dir(root, uri, &Settings::default(), &opts, &|_| {})?;
    let took = t.elapsed();
    if report.journals != JOURNALS as usize || !report.refused.is_empty() {
        return Err(format!("the sync did not deliver every journal: {report:?}").into());
    }
    Ok((report, took))
}

fn main() -> BoxResult<()> {
    sapsan::diag::init_logger();
    let uri = std::env::var("SAPSAN_BENCH_TRACKING_URI").map_err(|_| {
        "SAPSAN_BENCH_TRACKING_URI is not set: start a team server (see this program's docs: \
         `source scripts/server.sh && pg_server_start`) and set it to $PG_SERVER_URL"
    })?;
    let uri = uri.trim_end_matches('/').to_owned();
    let addr: SocketAddr = uri
        .strip_prefix("http://")
        .ok_or("SAPSAN_BENCH_TRACKING_URI must be http://HOST:PORT (a loopback server)")?
        .parse()
        .map_err(|e| format!("SAPSAN_BENCH_TRACKING_URI {uri}: not HOST:PORT ({e})"))?;
    let bin = job_bin()?;
    let rounds: usize = std::env::var("SAPSAN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);
    let sync_points: u32 = std::env::var("SAPSAN_BENCH_SYNC_METRICS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let stamp = sapsan::tracking::now_ms();
    let load_start = load();

    // The ceiling client writes into a run of its own; every worker warmed first.
    let setup = MlflowBackend::builder()
        .tracking_uri(&uri)
        .experiment(format!("ceiling-{stamp}"))
        .journal(false)
        .build()?;
    // One run per writer, as the jobs have: rows of one run are a point of contention that 8
    // programs with a run each do not share.
    let ceiling_runs = (0..JOBS)
        .map(|i| setup.create_run(&format!("ceiling {i}"), None))
        .collect::<Result<Vec<_>, _>>()?;
    let runs: Vec<&str> = ceiling_runs.iter().map(String::as_str).collect();
    let ceiling = || ceiling_spread(addr, &runs, JOBS as usize);
    for r in &runs {
        for _ in 0..2 {
            raw_post(addr, "/api/2.0/mlflow/runs/log-batch", &batch_body(r, 0, 1))?;
        }
    }

    eprintln!("[bench] ceiling ...");
    let mut last = ceiling()?;
    let mut lines = Vec::new();
    let mut ratios = Vec::new();
    for round in 0..rounds {
        eprintln!(
            "[bench] round {}/{rounds}: {JOBS} jobs at once ...",
            round + 1
        );
        let (rate, wall) = many_jobs(&bin, &uri, &format!("jobs-{stamp}-{round}"))?;
        eprintln!("[bench] round {}/{rounds}: ceiling ...", round + 1);
        let after = ceiling()?;
        let ratio = rate / ((last + after) / 2.0);
        lines.push(format!(
            "round {}: {JOBS} jobs at once, {:.0} points/s combined ({} in {:.2} s) between \
             ceilings {last:.0} and {after:.0}: {:.1}%",
            round + 1,
            rate,
            JOBS * POINTS,
            wall.as_secs_f64(),
            100.0 * ratio
        ));
        ratios.push(ratio);
        last = after;
    }
    for r in &runs {
        setup.set_status(r, RunStatus::Finished)?;
    }
    drop(setup);

    eprintln!("[bench] making 2 x {JOURNALS} offline journals ({sync_points} points each) ...");
    let serial = offline_journals(&bin, &format!("sync1-{stamp}"), sync_points)?;
    let parallel = offline_journals(&bin, &format!("sync{SYNC_JOBS}-{stamp}"), sync_points)?;
    eprintln!("[bench] sync --jobs 1 ...");
    let (report, one) = sync(serial.path(), &uri, 1)?;
    eprintln!("[bench] sync --jobs {SYNC_JOBS} ...");
    let (_, many) = sync(parallel.path(), &uri, SYNC_JOBS)?;

    println!(
        "many-jobs benchmark against {uri} ({} UTC epoch s; load average {load_start} -> {})",
        stamp / 1000,
        load()
    );
    println!(
        "ceiling: raw HTTP, {JOBS} conns into {JOBS} runs, {}/request, a fresh connection each, \
         measured before and after each round",
        ceiling::BATCH
    );
    for l in &lines {
        println!("{l}");
    }
    let ratio = median(ratios);
    println!(
        "ratio {JOBS} jobs combined / ceiling, median of {rounds} rounds: {:.1}%   [target >= 90%: {}]",
        100.0 * ratio,
        if ratio >= 0.9 { "met" } else { "MISSED" }
    );
    println!(
        "sync of {JOURNALS} journals ({} runs, {} records, {} items each way): --jobs 1 {:.2} s, \
         --jobs {SYNC_JOBS} {:.2} s: {:.2}x faster",
        report.runs,
        report.records,
        report.items,
        one.as_secs_f64(),
        many.as_secs_f64(),
        one.as_secs_f64() / many.as_secs_f64()
    );
    Ok(())
}
