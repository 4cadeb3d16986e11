//! Tracking throughput against live MLflow servers: our backend, the server's own ingest ceiling,
//! and the official Python client, on a default 4-worker server and on a `--workers 1` server.
//!
//! Run: `cargo run --release --example bench_tracking` (results: `BENCHMARKS.md`, section Tracking).
//!
//! Needs `mlflow` (3.17.2): `SAPSAN_MLFLOW_BIN`, else `mlflow` on `PATH`, else `.venv/bin/mlflow`
//! of this checkout (`bash scripts/setup.sh` creates it). The Python peer runs with the `python`
//! next to that `mlflow` (or `SAPSAN_PYTHON`). `SAPSAN_BENCH_FLUENT` changes the number of metrics
//! the Python fluent client logs (default 2,000: about 2 minutes on the 4-worker server).
//!
//! Per server (each started here with a temporary data directory on a free loopback port):
//! 1. ceiling: 100 log-batch requests of 1000 metrics over 4 concurrent connections from a minimal
//!    HTTP/1.1 client (a fresh connection per request);
//! 2. ours: 100,000 `log_metric_step` calls into one run, each enqueue timed, then `flush`; once
//!    with the journal (the default: every batch appended to a JSON-lines journal in a temporary
//!    directory, fsync per linger round, a background uploader sending it) and once with
//!    `.journal(false)` (the same uploader over a memory store). The server slows as its store
//!    grows and the box is shared, so the ceiling is measured again after each of ours, and each
//!    of ours is compared with the mean of the two ceilings around it. `SAPSAN_BENCH_ROUNDS`
//!    rounds (default 3) of (on, off), the order alternating from round to round; printed: every
//!    round, and the medians of the ratios and of the enqueue p99;
//! 3. Python: fluent `mlflow.log_metric` one by one, and `MlflowClient.log_batch` of 1000;
//! 4. bookkeeping: HTTP requests of one train run plus one evaluate run (20 params, 10 metrics),
//!    with the default (journal) backend.
//!
//! Request counts with the journal on: `http_requests()` counts only the backend's own client, not
//! the journal's (run creations, and everything the uploader sends); one request per journal
//! record (read before the backend is dropped) is added, an upper bound where the uploader merges
//! part-filled metric batches into one request.
//!
//! Then auto-start: the backend starting its own server (one worker, as `MlflowBackend::new` does)
//! until the first metric is accepted, against that server's own boot time.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sapsan::tracking::run::scope::{Report, RunScope};
use sapsan::tracking::server::find_mlflow;
use sapsan::tracking::{Backend, MlflowBackend, MlflowServer, ServerOptions, now_ms};

#[path = "bench_common/ceiling.rs"]
mod ceiling;
use ceiling::{
    BATCH, BoxResult, CONNECTIONS, KEYS, N, batch_body, ceiling, load, median, raw_post,
};

/// A free loopback port (bound, read, released).
fn free_port() -> BoxResult<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The `mlflow` executable: `SAPSAN_MLFLOW_BIN`, `PATH`, or this checkout's `.venv/bin/mlflow`.
fn mlflow_bin() -> BoxResult<PathBuf> {
    let env_bin = std::env::var_os("SAPSAN_MLFLOW_BIN").filter(|v| !v.is_empty());
    if let Ok(p) = find_mlflow(
        env_bin.as_deref().map(Path::new),
        std::env::var_os("PATH").as_deref(),
    ) {
        return Ok(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/mlflow");
    if env_bin.is_none() && venv.is_file() {
        return Ok(venv);
    }
    Err(
        "`mlflow` not found: set SAPSAN_MLFLOW_BIN=/path/to/mlflow, or put it on PATH \
         (`bash scripts/setup.sh` creates .venv with mlflow==3.17.2; then \
         `export PATH=$PWD/.venv/bin:$PATH`)"
            .into(),
    )
}

/// The Python interpreter for the peer: `SAPSAN_PYTHON`, else the `python` next to `mlflow`.
fn python_bin(mlflow: &Path) -> PathBuf {
    match std::env::var_os("SAPSAN_PYTHON").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => mlflow.with_file_name("python"),
    }
}

/// What our backend achieved.
struct Ours {
    per_s: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    enqueue_all: Duration,
    total: Duration,
    /// HTTP requests (`http_requests()`: the journal uploader's included).
    requests: u64,
}

/// How step 2 runs our backend.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Journal on (the default), journal root in a temporary directory.
    Journal,
    /// `.journal(false)`: the in-memory queue sends straight to the server.
    Memory,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Journal => "journal on",
            Mode::Memory => "journal off",
        }
    }
}

/// A backend on `url`, experiment `exp`, with the journal under `root` (or without a journal).
fn backend(url: &str, exp: &str, root: Option<&Path>) -> BoxResult<MlflowBackend> {
    let b = MlflowBackend::builder().tracking_uri(url).experiment(exp);
    let b = match root {
        // `.journal(true)` is the default; said explicitly so `SAPSAN_JOURNAL=0` cannot turn it off.
        Some(r) => b.journal(true).journal_root(r),
        None => b.journal(false),
    };
    Ok(b.build()?)
}

fn ours(url: &str, exp: &str, path: Mode) -> BoxResult<Ours> {
    let root = tempfile::tempdir()?;
    let b = backend(url, exp, (path == Mode::Journal).then_some(root.path()))?;
    b.start(path.label(), false, None)?;
    let keys: Vec<String> = (0..KEYS).map(|k| format!("m{k}")).collect();
    let before = b.http_requests();
    let mut lat = Vec::with_capacity(N);
    let start = Instant::now();
    for i in 0..N {
        let t = Instant::now();
        b.log_metric_step(&keys[i % KEYS], i as f64, (i / KEYS) as i64)?;
        lat.push(t.elapsed());
    }
    let enqueue_all = start.elapsed();
    b.flush()?;
    let total = start.elapsed();
    let requests = b.http_requests() - before;
    b.end()?;
    drop(b);
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Ok(Ours {
        per_s: N as f64 / total.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: lat[lat.len() - 1],
        enqueue_all,
        total,
        requests,
    })
}

/// The Python client's rates: (fluent metrics/s, log_batch metrics/s).
fn python(python: &Path, url: &str, exp: &str, n_fluent: usize) -> BoxResult<(f64, f64)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/tracking_peer.py");
    let out = Command::new(python)
        .arg(&script)
        .args([url, exp, &n_fluent.to_string(), &N.to_string()])
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .output()
        .map_err(|e| format!("running {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed ({}): {}",
            python.display(),
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("peer printed {line:?}: {e}"))?;
    let get = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| format!("peer output has no {k}: {line}"))
    };
    Ok((get("fluent_per_s")?, get("batch_per_s")?))
}

/// HTTP requests of one train run plus one evaluate run through the run scopes, each logging
/// 10 params and 5 metrics (the evaluation also copies the train params and metrics):
/// (requests for the runs, requests of connecting to the experiment).
fn bookkeeping(url: &str, exp: &str) -> BoxResult<(u64, u64)> {
    let root = tempfile::tempdir()?;
    let b = backend(url, exp, Some(root.path()))?;
    let connect = b.http_requests();
    let train = RunScope::train(&b, "train")?;
    for i in 0..10 {
        b.log_parameter(&format!("train_p{i}"), &format!("{}", i as f64 * 0.5))?;
    }
    let mut r = Report::new();
    r.final_epoch(5);
    for e in 0..4 {
        r.metric_at("loss", 1.0 / (e + 1) as f64, e);
    }
    train.finish(&r)?;
    let eval = RunScope::evaluate(&b, "evaluate", None)?;
    for i in 0..10 {
        b.log_parameter(&format!("eval_p{i}"), &i.to_string())?;
    }
    let mut r = Report::new();
    for k in ["mse", "mae", "r2", "pdf", "cdf"] {
        r.metric(k, 0.25);
    }
    eval.finish(&r)?;
    b.end()?;
    b.flush()?;
    let runs = b.http_requests() - connect;
    drop(b);
    Ok((runs, connect))
}

/// One of our measurements and the server's ceiling measured right before and right after it.
struct Bracketed {
    ours: Ours,
    ceiling_before: f64,
    ceiling_after: f64,
}

impl Bracketed {
    /// Ours over the mean of the two ceilings around it.
    fn ratio(&self) -> f64 {
        self.ours.per_s / ((self.ceiling_before + self.ceiling_after) / 2.0)
    }
}

/// Everything measured on one server.
struct ServerResult {
    workers: u32,
    boot: Duration,
    /// Journal on, one per round.
    ours_on: Vec<Bracketed>,
    /// Journal off, one per round.
    ours_off: Vec<Bracketed>,
    py_fluent: f64,
    py_batch: f64,
    n_fluent: usize,
    book_runs: u64,
    book_connect: u64,
    load_start: String,
    load_end: String,
}

/// Measurement rounds per server: `SAPSAN_BENCH_ROUNDS`, default 3.
fn rounds() -> usize {
    std::env::var("SAPSAN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3)
}

fn on_server(
    mlflow: &Path,
    python_bin: &Path,
    workers: u32,
    n_fluent: usize,
) -> BoxResult<ServerResult> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    eprintln!("[bench] starting a {workers}-worker MLflow server on port {port} ...");
    let server = MlflowServer::start(
        "127.0.0.1",
        port,
        &ServerOptions {
            mlflow_bin: Some(mlflow.to_owned()),
            data_dir: Some(dir.path().to_owned()),
            workers: Some(workers),
            ready_timeout: Duration::from_secs(240),
            quiet: true,
            ..ServerOptions::default()
        },
    )?;
    let boot = server.ready_after();
    let load_start = load();
    let url = server.url().to_owned();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    // The ceiling client writes into a run of its own.
    let setup = MlflowBackend::builder()
        .tracking_uri(&url)
        .experiment("ceiling")
        .build()?;
    let ceiling_run = setup.create_run("ceiling", None)?;
    // Warm every worker (imports, DB connections) before anything is timed.
    for _ in 0..(4 * workers) {
        raw_post(
            addr,
            "/api/2.0/mlflow/runs/log-batch",
            &batch_body(&ceiling_run, 0, 1),
        )?;
    }
    // The server slows down as its store grows, and the box is shared: every measurement of ours
    // is bracketed by a ceiling measurement on each side (ceiling, ours, ceiling, ours, ...), and
    // the order of journal on and off alternates from round to round.
    let n_rounds = rounds();
    eprintln!("[bench] ceiling ...");
    let mut last_ceiling = ceiling(addr, &ceiling_run)?;
    let (mut ours_on, mut ours_off) = (Vec::new(), Vec::new());
    for round in 0..n_rounds {
        let order = if (round + workers as usize).is_multiple_of(2) {
            [Mode::Journal, Mode::Memory]
        } else {
            [Mode::Memory, Mode::Journal]
        };
        for p in order {
            eprintln!(
                "[bench] round {}/{n_rounds}: ours, {} ...",
                round + 1,
                p.label()
            );
            let ours = ours(&url, "ours", p)?;
            eprintln!("[bench] round {}/{n_rounds}: ceiling ...", round + 1);
            let after = ceiling(addr, &ceiling_run)?;
            let b = Bracketed {
                ours,
                ceiling_before: last_ceiling,
                ceiling_after: after,
            };
            last_ceiling = after;
            match p {
                Mode::Journal => ours_on.push(b),
                Mode::Memory => ours_off.push(b),
            }
        }
    }
    eprintln!("[bench] python client ({n_fluent} fluent, {N} log_batch) ...");
    let (py_fluent, py_batch) = python(python_bin, &url, "python", n_fluent)?;
    eprintln!("[bench] bookkeeping ...");
    let (book_runs, book_connect) = bookkeeping(&url, "bookkeeping")?;
    setup.set_status(&ceiling_run, sapsan::tracking::RunStatus::Finished)?;
    drop(setup);
    server.stop()?;
    Ok(ServerResult {
        workers,
        boot,
        ours_on,
        ours_off,
        py_fluent,
        py_batch,
        n_fluent,
        book_runs,
        book_connect,
        load_start,
        load_end: load(),
    })
}

/// Auto-start: (time until the first metric is accepted, server's TCP accept time, server's first
/// `/health` OK time), all from the call that starts the backend.
fn auto_start(mlflow: &Path) -> BoxResult<(Duration, Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    // Side thread: when does the port first accept a connection, when does /health first say OK?
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut accept = None;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                    accept.get_or_insert(t0.elapsed());
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let req = format!(
                        "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                    );
                    let mut buf = Vec::new();
                    if s.write_all(req.as_bytes()).is_ok() && s.read_to_end(&mut buf).is_ok() {
                        let text = String::from_utf8_lossy(&buf);
                        if text.starts_with("HTTP/1.1 200") && text.trim_end().ends_with("OK") {
                            return (accept, Some(t0.elapsed()));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (accept, None)
        })
    };
    // What `MlflowBackend::new(exp, "127.0.0.1", port)` does, with a private data directory, the
    // `mlflow` found above, and the server owned (stopped when the backend is dropped).
    let b = MlflowBackend::builder()
        .experiment("autostart")
        .host_port("127.0.0.1", port)
        .server_options(ServerOptions {
            mlflow_bin: Some(mlflow.to_owned()),
            data_dir: Some(dir.path().to_owned()),
            quiet: true,
            ..ServerOptions::default()
        })
        .own_server(true)
        // The default journal, kept out of the working directory.
        .journal_root(dir.path().join("journal"));
    let result = (|| -> BoxResult<Duration> {
        let b = b.build()?;
        let built = t0.elapsed();
        let ready = b.server().map(|s| s.ready_after()).unwrap_or_default();
        b.start("first", false, None)?;
        let run = t0.elapsed();
        b.log_metric("loss", 1.0)?;
        b.flush()?;
        let first_write = t0.elapsed();
        eprintln!(
            "[bench] auto-start steps (s from the call): server spawned -> /health OK {:.2} (its own \
             poll), experiment resolved {:.2}, run created {:.2}, metric delivered {:.2}; {} requests",
            ready.as_secs_f64(),
            built.as_secs_f64(),
            run.as_secs_f64(),
            first_write.as_secs_f64(),
            b.http_requests()
        );
        b.end()?;
        drop(b); // stops the server it owns
        Ok(first_write)
    })();
    stop.store(true, Ordering::Relaxed);
    let (accept, health) = watcher.join().map_err(|_| "watcher panicked")?;
    let first_write = result?;
    Ok((
        first_write,
        accept.ok_or("the port never accepted a connection")?,
        health.ok_or("/health never answered OK")?,
    ))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> BoxResult<()> {
    sapsan::diag::init_logger();
    let mlflow = mlflow_bin()?;
    let python_bin = python_bin(&mlflow);
    let n_fluent: usize = std::env::var("SAPSAN_BENCH_FLUENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    eprintln!(
        "[bench] mlflow: {}  python: {}",
        mlflow.display(),
        python_bin.display()
    );
    let mut results = Vec::new();
    // `SAPSAN_BENCH_ONLY=autostart`: only the auto-start measurement.
    let only_autostart = std::env::var("SAPSAN_BENCH_ONLY").is_ok_and(|v| v == "autostart");
    let servers: &[u32] = if only_autostart { &[] } else { &[4, 1] };
    for &workers in servers {
        results.push(on_server(&mlflow, &python_bin, workers, n_fluent)?);
    }
    eprintln!("[bench] auto-start ...");
    let (first_write, accept, health) = auto_start(&mlflow)?;

    println!(
        "tracking benchmark: {N} metrics ({KEYS} keys) per measurement, loopback, {} (UTC epoch s)",
        now_ms() / 1000
    );
    for r in &results {
        println!();
        println!(
            "== {} worker(s) (server ready after {:.1} s; load average {} -> {})",
            r.workers,
            r.boot.as_secs_f64(),
            r.load_start,
            r.load_end
        );
        println!(
            "ceiling: raw HTTP, {CONNECTIONS} conns, {BATCH}/request, a fresh connection each, measured \
             before and after each of ours"
        );
        for (label, runs) in [("journal on", &r.ours_on), ("journal off", &r.ours_off)] {
            for (i, b) in runs.iter().enumerate() {
                let o = &b.ours;
                println!(
                    "ours, {label}, round {}: {:.0} metrics/s ({N} in {:.3} s; enqueued after {:.1} ms; \
                     {} HTTP requests) between ceilings {:.0} and {:.0}: {:.1}%; enqueue p50 {:.2} us, \
                     p99 {:.2} us, max {:.0} us",
                    i + 1,
                    o.per_s,
                    o.total.as_secs_f64(),
                    o.enqueue_all.as_secs_f64() * 1e3,
                    o.requests,
                    b.ceiling_before,
                    b.ceiling_after,
                    100.0 * b.ratio(),
                    us(o.p50),
                    us(o.p99),
                    us(o.max),
                );
            }
            let ratio = median(runs.iter().map(Bracketed::ratio).collect());
            let p99 = median(runs.iter().map(|b| us(b.ours.p99)).collect());
            println!(
                "ratio ours ({label}) / ceiling, median of {} rounds: {:.1}%   [target >= 95%: {}]",
                runs.len(),
                100.0 * ratio,
                if ratio >= 0.95 { "met" } else { "MISSED" }
            );
            println!(
                "enqueue p99 ({label}), median of {} rounds: {p99:.2} us   [target p99 < 5 us: {}]",
                runs.len(),
                if p99 < 5.0 { "met" } else { "MISSED" }
            );
        }
        let rate = |runs: &[Bracketed]| median(runs.iter().map(|b| b.ours.per_s).collect());
        let (on, off) = (rate(&r.ours_on), rate(&r.ours_off));
        println!(
            "ratio journal on / journal off (medians): {:.1}%",
            100.0 * on / off
        );
        // The comparisons with Python use the default backend (journal on), its median rate.
        println!(
            "python: fluent log_metric {:.1} metrics/s ({} metrics); MlflowClient.log_batch {:.0} metrics/s ({N})",
            r.py_fluent, r.n_fluent, r.py_batch
        );
        let fluent_target = if r.workers == 4 {
            if on >= 500.0 * r.py_fluent {
                "   [target >= 500x: met]"
            } else {
                "   [target >= 500x: MISSED]"
            }
        } else {
            ""
        };
        println!(
            "ratio ours (journal on) / python fluent: {:.0}x{fluent_target}",
            on / r.py_fluent
        );
        println!(
            "ratio ours (journal on) / python log_batch: {:.2}x",
            on / r.py_batch
        );
        println!(
            "bookkeeping (train + evaluate, 20 params, 10 metrics): {} HTTP requests (+{} to find the experiment)   [target <= 8: {}]",
            r.book_runs,
            r.book_connect,
            if r.book_runs <= 8 { "met" } else { "MISSED" }
        );
    }
    println!();
    println!(
        "auto-start (1 worker): first metric accepted {:.2} s after the call; the server's port accepted \
         TCP at {:.2} s, /health OK at {:.2} s; overhead {:.2} s over /health   [target <= 1 s: {}]",
        first_write.as_secs_f64(),
        accept.as_secs_f64(),
        health.as_secs_f64(),
        first_write.as_secs_f64() - health.as_secs_f64(),
        if first_write.saturating_sub(health) <= Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}
