//! What system metrics cost a training loop: the same loop of 100 epochs (about 10 ms of float
//! work each, one metric logged per epoch) with system metrics off, on at MLflow's default
//! interval (10 s), on at 50 ms (200 times as often, so every epoch overlaps samples) and on at
//! 1 ms (ten samples an epoch, to show what one sample costs), on an
//! offline backend (journal in a temporary directory, no server). Printed per setting: the
//! median wall time of an epoch and the process CPU time per epoch (the sampler thread's work
//! included), and their difference to "off". Run:
//! `cargo run --release --example bench_system_metrics`.
use std::time::{Duration, Instant};

use sapsan::tracking::system_metrics::SystemMetricsOptions;
use sapsan::tracking::{Backend, OfflineBackend};

const EPOCHS: usize = 100;

/// About 10 ms of float work (the compute of a small epoch).
fn epoch_work(seed: f64) -> f64 {
    let mut x = seed;
    for i in 0..1_500_000 {
        x = (x * 1.000_000_1 + i as f64).sqrt();
    }
    x
}

/// Process CPU time (user + system), all threads.
fn cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// (median epoch wall time, CPU time per epoch) with `opts` (`None`: off).
fn measure(opts: Option<SystemMetricsOptions>) -> Result<(Duration, Duration), sapsan::Error> {
    let dir = tempfile::tempdir().map_err(|e| sapsan::Error::io("temp dir", "/tmp", e))?;
    let mut b = OfflineBackend::with_signals("bench", dir.path(), false)?;
    if let Some(o) = opts {
        b = b.with_system_metrics(o)?;
    }
    b.start("train", false, None)?;
    let mut walls = Vec::with_capacity(EPOCHS);
    let c0 = cpu();
    let mut acc = 0.0;
    for e in 0..EPOCHS {
        let t = Instant::now();
        acc += epoch_work(e as f64);
        b.log_metric_step("loss", acc.fract(), e as i64)?;
        walls.push(t.elapsed());
    }
    let per_epoch_cpu = (cpu() - c0) / EPOCHS as u32;
    b.end()?;
    walls.sort_unstable();
    Ok((walls[EPOCHS / 2], per_epoch_cpu))
}

fn main() -> Result<(), sapsan::Error> {
    let settings = [
        ("off", None),
        (
            "on, every 10 s (MLflow's default)",
            Some(SystemMetricsOptions::default()),
        ),
        (
            "on, every 50 ms",
            Some(SystemMetricsOptions {
                interval: Duration::from_millis(50),
                ..SystemMetricsOptions::default()
            }),
        ),
        // Ten samples an epoch: what one sample costs shows above the noise.
        (
            "on, every 1 ms",
            Some(SystemMetricsOptions {
                interval: Duration::from_millis(1),
                ..SystemMetricsOptions::default()
            }),
        ),
    ];
    // Once to warm up, then measured.
    measure(None)?;
    let mut results = Vec::new();
    for (label, opts) in settings {
        results.push((label, measure(opts)?));
    }
    let (base_wall, base_cpu) = results[0].1;
    println!("system metrics cost: {EPOCHS} epochs of ~10 ms, offline backend");
    for (label, (wall, cpu)) in &results {
        println!(
            "{label:<36} epoch wall median {:>8.1} us ({:+7.1} us), CPU per epoch {:>8.1} us ({:+7.1} us)",
            wall.as_secs_f64() * 1e6,
            (wall.as_secs_f64() - base_wall.as_secs_f64()) * 1e6,
            cpu.as_secs_f64() * 1e6,
            (cpu.as_secs_f64() - base_cpu.as_secs_f64()) * 1e6,
        );
    }
    let (_, (_, fast_cpu)) = results[3];
    let samples_per_epoch = base_wall.as_secs_f64() / 1e-3;
    let per_sample = (fast_cpu.as_secs_f64() - base_cpu.as_secs_f64()) / samples_per_epoch;
    println!(
        "one sample (read /proc and statvfs, 8 metrics queued): about {:.0} us of CPU on the \
         sampler thread; at the default 10 s interval that is {:.4}% of a core",
        per_sample * 1e6,
        100.0 * per_sample / 10.0
    );
    Ok(())
}
