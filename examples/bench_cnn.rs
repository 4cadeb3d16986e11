//! Seconds per training epoch of our CNN3d against the same network in PyTorch
//! (`bench/cnn_peer.py`), on the same data, batch size and thread count, in one run.
//!
//! ```text
//! sh bench/setup.sh            # once: creates .venv-bench with numpy, scipy, matplotlib, torch
//! cargo run --release --example bench_cnn [timed_epochs] [--rust-only] [--problem PREFIX]
//! ```
//!
//! Three problems: the quickstart size (8 samples of a 3-channel 16^3 cube, a 1-channel 16^3
//! target, the whole set per step, as `Cnn3d` trains by default), a larger one (32 samples of
//! 3x32^3 to 1x32^3 in batches of 8) and the 64^3 one (8 samples of 3x64^3 to 1x64^3 in batches
//! of 2; 6.3 million parameters, almost all in the last Linear). Both sides run one untimed warm-up epoch, then time every
//! epoch's training pass (forward, SmoothL1 loss, backward, Adam step, reading the loss) apart
//! from the validation pass (a forward over the same samples without gradients). Our side uses
//! the same calls as `sapsan::estimator::train::fit`; a `Cnn3d::train_with_observer` run reports
//! the full epoch of the real training loop as a cross-check. Threads: candle's
//! (`RAYON_NUM_THREADS`, default the physical cores); PyTorch is given the same number.
//! Without the venv only the Rust side runs (and says how to create the venv).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, ParamsAdamW, VarMap};
use ndarray::Array5;
use sapsan::estimator::adam::Adam;
use sapsan::estimator::init::seeded_var_builder;
use sapsan::estimator::loss::smooth_l1_loss;
use sapsan::estimator::{Cnn3d, Cnn3dConfig, Cnn3dNet, Samples, TrainOptions};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// One benchmark problem.
struct Problem {
    name: &'static str,
    samples: usize,
    channels: usize,
    edge: usize,
    target_channels: usize,
    batch: usize,
}

const PROBLEMS: [Problem; 3] = [
    Problem {
        name: "quickstart 8 x 3x16^3 -> 1x16^3, batch 8",
        samples: 8,
        channels: 3,
        edge: 16,
        target_channels: 1,
        batch: 8,
    },
    Problem {
        name: "larger 32 x 3x32^3 -> 1x32^3, batch 8",
        samples: 32,
        channels: 3,
        edge: 32,
        target_channels: 1,
        batch: 8,
    },
    Problem {
        name: "64^3 8 x 3x64^3 -> 1x64^3, batch 2",
        samples: 8,
        channels: 3,
        edge: 64,
        target_channels: 1,
        batch: 2,
    },
];

/// Seconds per epoch of one side: median and minimum of the training pass, median of the
/// validation pass.
#[derive(Debug, Default, Clone, Copy)]
struct Timing {
    train: f64,
    train_min: f64,
    valid: f64,
}

/// Smooth, deterministic fields so every run (and both sides) sees the same numbers.
fn data(p: &Problem) -> (Array5<f32>, Array5<f32>) {
    let e = p.edge as f32;
    let x = Array5::from_shape_fn(
        (p.samples, p.channels, p.edge, p.edge, p.edge),
        |(n, c, i, j, k)| {
            let (i, j, k) = (i as f32 / e, j as f32 / e, k as f32 / e);
            ((n + 1) as f32 * 0.3 + c as f32 + 3.2 * i + 1.6 * j - 2.4 * k).sin()
        },
    );
    let y = Array5::from_shape_fn(
        (p.samples, p.target_channels, p.edge, p.edge, p.edge),
        |(n, c, i, j, k)| {
            let (i, j, k) = (i as f32 / e, j as f32 / e, k as f32 / e);
            ((n + 1) as f32 * 0.3 + c as f32 + 3.2 * i - 1.6 * j + 0.8 * k).cos()
        },
    );
    (x, y)
}

fn to_tensor(a: &Array5<f32>) -> BoxResult<Tensor> {
    let values: Vec<f32> = a.iter().copied().collect();
    Ok(Tensor::from_vec(values, a.shape(), &Device::Cpu)?)
}

/// Median of the epoch times: robust against the other jobs of a shared machine.
fn median(t: &[f64]) -> f64 {
    let mut v = t.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Our side: the training step of `fit` (forward, loss, Adam `backward_step`, loss read back)
/// per batch, then the validation forward, timed apart; one warm-up epoch first.
fn ours(p: &Problem, x: &Array5<f32>, y: &Array5<f32>, epochs: usize) -> BoxResult<Timing> {
    // As `fit` does: keep freed gradient-sized blocks for the next step.
    sapsan::estimator::heap::retain_freed_memory();
    let config = Cnn3dConfig::default();
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
    let target = [p.target_channels, p.edge, p.edge, p.edge];
    let net = Cnn3dNet::new(vb, p.channels, target)?;
    let params = ParamsAdamW {
        lr: config.lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut optimizer = Adam::new(varmap.all_vars(), params)?;
    let (xt, yt) = (to_tensor(x)?, to_tensor(y)?);
    let n = p.samples;
    let mut train_epoch = |net: &Cnn3dNet| -> BoxResult<f64> {
        let mut total = 0.0;
        for start in (0..n).step_by(p.batch) {
            let len = p.batch.min(n - start);
            let (xb, yb) = (xt.narrow(0, start, len)?, yt.narrow(0, start, len)?);
            let loss = smooth_l1_loss(&net.forward(&xb)?, &yb)?;
            optimizer.backward_step(&loss)?;
            total += loss.to_scalar::<f32>()? as f64 * len as f64;
        }
        Ok(total / n as f64)
    };
    let valid_epoch = |net: &Cnn3dNet| -> BoxResult<f64> {
        let mut total = 0.0;
        for start in (0..n).step_by(p.batch) {
            let len = p.batch.min(n - start);
            let pred = net.forward(&xt.narrow(0, start, len)?)?.detach();
            let loss = smooth_l1_loss(&pred, &yt.narrow(0, start, len)?)?;
            total += loss.to_scalar::<f32>()? as f64 * len as f64;
        }
        Ok(total / n as f64)
    };
    train_epoch(&net)?;
    valid_epoch(&net)?;
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    let mut losses = Vec::new();
    for _ in 0..epochs {
        let t0 = Instant::now();
        losses.push(train_epoch(&net)?);
        let t1 = Instant::now();
        valid_epoch(&net)?;
        train.push((t1 - t0).as_secs_f64());
        valid.push(t1.elapsed().as_secs_f64());
    }
    println!(
        "  rust:    train loss {:.4e} -> {:.4e}",
        losses.first().copied().unwrap_or(f64::NAN),
        losses.last().copied().unwrap_or(f64::NAN)
    );
    Ok(Timing {
        train: median(&train),
        train_min: train.iter().copied().fold(f64::INFINITY, f64::min),
        valid: median(&valid),
    })
}

/// The real training loop (`Cnn3d::train_with_observer`): seconds per full epoch (training pass,
/// validation pass, schedule), median, first epoch excluded.
fn ours_fit(p: &Problem, x: &Array5<f32>, y: &Array5<f32>, epochs: usize) -> BoxResult<f64> {
    let config = Cnn3dConfig::default()
        .with_n_epochs(epochs + 1)
        .with_patience(epochs + 2);
    let options = TrainOptions {
        batch_size: Some(p.batch),
        progress: false,
        ..TrainOptions::default()
    };
    let target = [p.target_channels, p.edge, p.edge, p.edge];
    let mut model = Cnn3d::with_options(config, p.channels, target, options)?;
    let mut last = Instant::now();
    let mut times = Vec::new();
    model.train_with_observer(Samples::new(x, y), Samples::new(x, y), &mut |_| {
        let now = Instant::now();
        times.push((now - last).as_secs_f64());
        last = now;
        Ok(())
    })?;
    Ok(median(times.get(1..).unwrap_or(&[])))
}

fn write_f32(path: &Path, data: &Array5<f32>) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(data.len() * 4);
    for v in data.iter() {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes)
}

fn shape_arg(a: &Array5<f32>) -> String {
    a.shape()
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// PyTorch's side: writes the data as raw f32 files and runs `bench/cnn_peer.py`.
fn peer(
    python: &Path,
    p: &Problem,
    x: &Array5<f32>,
    y: &Array5<f32>,
    epochs: usize,
    threads: usize,
) -> BoxResult<Timing> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("bench/cnn_peer.py");
    let dir = tempfile::tempdir()?;
    let (xp, yp) = (dir.path().join("x.f32"), dir.path().join("y.f32"));
    write_f32(&xp, x)?;
    write_f32(&yp, y)?;
    let out = Command::new(python)
        .arg(&script)
        .arg(&xp)
        .arg(shape_arg(x))
        .arg(&yp)
        .arg(shape_arg(y))
        .args([p.batch, epochs, threads].map(|v| v.to_string()))
        .arg(Cnn3dConfig::default().lr.to_string())
        .arg("0")
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "  pytorch: train loss {:.4e} -> {:.4e} (torch {}, {} threads, {} parameters)",
        f("first_loss"),
        f("last_loss"),
        v["torch"].as_str().unwrap_or("?"),
        v["threads"],
        v["num_params"]
    );
    Ok(Timing {
        train: f("train_s_per_epoch"),
        train_min: f("train_s_min"),
        valid: f("valid_s_per_epoch"),
    })
}

fn main() -> BoxResult<()> {
    let epochs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let threads = candle_core::utils::get_num_threads();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv-bench/bin/python");
    let rust_only = std::env::args().any(|a| a == "--rust-only");
    let have_peer = !rust_only && python.exists();
    if !rust_only && !have_peer {
        println!(
            "PyTorch peer skipped: no venv at {}. Create it with\n  sh bench/setup.sh\n(in {}) and run again.",
            python.display(),
            root.display()
        );
    }
    if cfg!(debug_assertions) {
        println!(
            "note: this is a debug build; time it with `cargo run --release --example bench_cnn`"
        );
    }
    println!("{epochs} timed epochs after one warm-up epoch; {threads} threads on both sides");
    let mut rows = Vec::new();
    // `--problem PREFIX` runs only the problems whose name starts with PREFIX (e.g. `64`).
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--problem")
        .and_then(|i| args.get(i + 1));
    for p in PROBLEMS
        .iter()
        .filter(|p| only.is_none_or(|o| p.name.starts_with(o.as_str())))
    {
        println!("{}:", p.name);
        let (x, y) = data(p);
        let r = ours(p, &x, &y, epochs)?;
        let fit = ours_fit(p, &x, &y, epochs)?;
        println!(
            "  rust:    train {:.4} s/epoch median (min {:.4}), valid {:.4} s; full fit() epoch {:.4} s",
            r.train, r.train_min, r.valid, fit
        );
        if have_peer {
            let t = peer(&python, p, &x, &y, epochs, threads)?;
            println!(
                "  pytorch: train {:.4} s/epoch median (min {:.4}), valid {:.4} s",
                t.train, t.train_min, t.valid
            );
            println!(
                "  ratio pytorch / rust (train s/epoch): {:.2}x ({})",
                t.train / r.train,
                if r.train <= t.train {
                    "we are faster"
                } else {
                    "we are slower"
                }
            );
            rows.push((p.name, r, t));
        }
    }
    if !rows.is_empty() {
        println!("\n| problem | rust train s/epoch | pytorch train s/epoch | pytorch / rust |");
        println!("|---|---:|---:|---:|");
        for (name, r, t) in rows {
            println!(
                "| {name} | {:.4} | {:.4} | {:.2}x |",
                r.train,
                t.train,
                t.train / r.train
            );
        }
    }
    Ok(())
}
