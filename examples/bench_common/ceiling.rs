//! The server's own ingest ceiling, shared by the tracking benchmarks (`bench_tracking`,
//! `bench_many_jobs`): log-batch requests of [`BATCH`] metrics from a minimal hand-written
//! HTTP/1.1 client over [`CONNECTIONS`] connections, bodies built before the clock starts. Each
//! benchmark brackets its own measurements with it (ceiling, ours, ceiling, ...) and compares
//! each of ours with the mean of the two around it: the server slows as its store grows and the
//! box is shared.
#![allow(dead_code)]
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Instant;

use sapsan::tracking::now_ms;

/// What the benchmarks return.
pub type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Metrics each throughput measurement moves.
pub const N: usize = 100_000;
/// Metrics per log-batch request (the server's limit).
pub const BATCH: usize = 1000;
/// Concurrent connections of the ceiling client (the backend's default `send_concurrency`).
pub const CONNECTIONS: usize = 4;
/// Distinct metric keys: metric `i` is `m{i % KEYS}` at step `i / KEYS`.
pub const KEYS: usize = 10;

/// The body of one log-batch request: metrics `start..start + BATCH`.
pub fn batch_body(run_id: &str, start: usize, ts: i64) -> Vec<u8> {
    let mut s = String::with_capacity(BATCH * 64);
    s.push_str("{\"run_id\":\"");
    s.push_str(run_id);
    s.push_str("\",\"metrics\":[");
    for i in start..start + BATCH {
        if i > start {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"key\":\"m{}\",\"value\":{}.0,\"timestamp\":{ts},\"step\":{}}}",
            i % KEYS,
            i,
            i / KEYS
        ));
    }
    s.push_str("],\"params\":[],\"tags\":[]}");
    s.into_bytes()
}

/// One POST on a fresh connection, hand-written HTTP/1.1; the status code.
pub fn raw_post(addr: SocketAddr, path: &str, body: &[u8]) -> BoxResult<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut answer = Vec::with_capacity(256);
    s.read_to_end(&mut answer)?;
    let line = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
    Ok(status)
}

/// The server's ingest ceiling: N metrics in log-batch requests of BATCH over CONNECTIONS
/// connections, a fresh one per request. Bodies are built before the clock starts. Metrics/s.
pub fn ceiling(addr: SocketAddr, run_id: &str) -> BoxResult<f64> {
    ceiling_spread(addr, &[run_id], CONNECTIONS)
}

/// [`ceiling`] for several writers: request `i` goes to run `run_ids[i % len]`, over
/// `connections` connections (one writer per run: as many connections as runs).
pub fn ceiling_spread(addr: SocketAddr, run_ids: &[&str], connections: usize) -> BoxResult<f64> {
    let ts = now_ms();
    let bodies: Vec<Vec<u8>> = (0..N / BATCH)
        .map(|b| batch_body(run_ids[b % run_ids.len()], b * BATCH, ts))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t = Instant::now();
    let results: Vec<BoxResult<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..connections)
            .map(|_| {
                s.spawn(|| -> BoxResult<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(body) = bodies.get(i) else {
                            return Ok(());
                        };
                        let code = raw_post(addr, "/api/2.0/mlflow/runs/log-batch", body)
                            .map_err(|e| e.to_string())?;
                        if code != 200 {
                            return Err(format!("log-batch answered HTTP {code}").into());
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("ceiling thread panicked".into()))
            })
            .collect()
    });
    let secs = t.elapsed().as_secs_f64();
    for r in results {
        r?;
    }
    Ok(N as f64 / secs)
}

/// The median of `v` (sorted here); `v` is not empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The 1-minute load average (the box is shared: say how busy it was).
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}
