//! Logging never slows training: enqueue latency and sustained delivery rate against the live server.
//!
//! `SAPSAN_PERF_METRICS` (default 20,000) sets how many metrics are logged; `SAPSAN_PERF_KEEPALIVE=1`
//! reuses connections instead of opening one per request (to compare the two strategies).
mod common;

use sapsan::tracking::{Backend, MlflowBackend, Settings};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Timing tests run one at a time so they do not measure each other.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn enqueue_is_microseconds_and_everything_arrives() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n: usize = std::env::var("SAPSAN_PERF_METRICS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let keep_alive = std::env::var("SAPSAN_PERF_KEEPALIVE").is_ok_and(|v| v == "1");
    let settings = Settings {
        keep_alive,
        ..Settings::default()
    };
    let b = MlflowBackend::builder()
        .tracking_uri(common::tracking_uri())
        .experiment(common::unique("perf"))
        .settings(settings)
        .build()
        .unwrap();
    let run = b.start("train", false, None).unwrap();
    let requests_before = b.http_requests();
    let keys: Vec<String> = (0..10).map(|i| format!("train - m{i}")).collect();
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let key = keys[i % keys.len()].clone();
        let t = Instant::now();
        b.log_metric_step(&key, i as f64, (i / keys.len()) as i64)
            .unwrap();
        lat.push(t.elapsed());
    }
    let enqueued = start.elapsed();
    b.flush().unwrap();
    let total = start.elapsed();
    let requests = b.http_requests() - requests_before;
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let rate = n as f64 / total.as_secs_f64();
    eprintln!(
        "perf: {n} metrics, keep_alive={keep_alive}: enqueue p50 {:?} p99 {:?} max {:?} \
         (all enqueued in {enqueued:?}); delivered in {total:?} = {rate:.0} metrics/s over \
         {requests} requests",
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1]
    );
    // Debug builds on a shared 2-core box: a loose bound that still catches a network wait.
    assert!(
        pct(0.99) < Duration::from_micros(100),
        "p99 {:?}",
        pct(0.99)
    );
    // Batches are full: at most one request per 1000 metrics, plus a partial batch per round.
    assert!(requests as usize <= n / 1000 + 10, "{requests} requests");
    let points = b.metric_history(&run, &keys[3]).unwrap();
    assert_eq!(points.len(), n / keys.len());
    b.end().unwrap();
}

/// Small synchronous requests (`runs/get`) with a fresh connection each (the default) and with kept-alive
/// connections: prints the mean time per request of both, so the strategy can be checked on any server.
#[test]
fn small_request_latency_per_connection_strategy() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let exp = common::unique("latency");
    for keep_alive in [false, true] {
        let b = MlflowBackend::builder()
            .tracking_uri(common::tracking_uri())
            .experiment(&exp)
            .settings(Settings {
                keep_alive,
                ..Settings::default()
            })
            .build()
            .unwrap();
        let run = b.start("train", false, None).unwrap();
        let n = 20;
        let t = Instant::now();
        for _ in 0..n {
            assert_eq!(b.get_run(&run).unwrap().run_id, run);
        }
        let per = t.elapsed() / n;
        eprintln!("perf: small request, keep_alive={keep_alive}: {per:?} per request");
        b.end().unwrap();
    }
}
