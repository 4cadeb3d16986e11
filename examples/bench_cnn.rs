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
//! of 2; 6.3 million parameters, almost all in the last Linear).
//!
//! Both sides run one untimed warm-up epoch; then they take turns in rounds of 3 timed epochs
//! each (after one untimed epoch that absorbs the switch), alternating who goes first, so that
//! both see the same machine: on a shared box the load moves within seconds, and separate runs
//! compare different moments. PyTorch runs as a child process (`bench/cnn_peer.py`) told over
//! stdin when to run an epoch; every answer has a deadline. Timed per epoch: the training pass
//! (forward, SmoothL1 loss, backward, Adam step, reading the loss) apart from the validation pass
//! (a forward over the same samples without gradients). Reported: each side's median epoch, the
//! median over rounds of the per-round ratio and the lowest round. Our side uses the same calls
//! as `sapsan::estimator::train::fit`; a `Cnn3d::train_with_observer` run reports the full epoch
//! of the real training loop as a cross-check. Threads: candle's (`RAYON_NUM_THREADS`, default
//! the physical cores); PyTorch is given the same number.
//! Without the venv only the Rust side runs (and says how to create the venv).
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, ParamsAdamW, VarMap};
use ndarray::Array5;
use sapsan::estimator::adam::Adam;
use sapsan::estimator::init::seeded_var_builder;
use sapsan::estimator::loss::smooth_l1_loss;
use sapsan::estimator::{Cnn3d, Cnn3dConfig, Cnn3dNet, Loss, Samples, TrainOptions};

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

/// One epoch of one side: training pass seconds, validation pass seconds, mean training loss.
struct Epoch {
    train: f64,
    valid: f64,
    loss: f64,
}

/// Our side: the training step of `fit` (the network's fused loss and gradients, the Adam step)
/// per batch, then the validation forward, timed apart.
struct Ours {
    net: Cnn3dNet,
    optimizer: Adam,
    xt: Tensor,
    yt: Tensor,
    samples: usize,
    batch: usize,
}

impl Ours {
    fn new(p: &Problem, x: &Array5<f32>, y: &Array5<f32>) -> BoxResult<Self> {
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
        Ok(Self {
            net,
            optimizer: Adam::new(varmap.all_vars(), params)?,
            xt: to_tensor(x)?,
            yt: to_tensor(y)?,
            samples: p.samples,
            batch: p.batch,
        })
    }

    fn batches(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (n, b) = (self.samples, self.batch);
        (0..n)
            .step_by(b)
            .map(move |start| (start, b.min(n - start)))
    }

    fn epoch(&mut self) -> BoxResult<Epoch> {
        let n = self.samples as f64;
        let t0 = Instant::now();
        let mut total = 0.0;
        for (start, len) in self.batches() {
            let (xb, yb) = (
                self.xt.narrow(0, start, len)?,
                self.yt.narrow(0, start, len)?,
            );
            let (loss, grads) = self.net.loss_and_grads(&xb, &yb, Loss::SmoothL1)?;
            self.optimizer.step(&grads)?;
            total += loss * len as f64;
        }
        let t1 = Instant::now();
        for (start, len) in self.batches() {
            let pred = self.net.forward(&self.xt.narrow(0, start, len)?)?.detach();
            let loss = smooth_l1_loss(&pred, &self.yt.narrow(0, start, len)?)?;
            loss.to_scalar::<f32>()?;
        }
        Ok(Epoch {
            train: (t1 - t0).as_secs_f64(),
            valid: t1.elapsed().as_secs_f64(),
            loss: total / n,
        })
    }
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

/// Timed epochs per block (see `main`).
const BLOCK: usize = 3;

/// The longest wait for one answer of the peer (its warm-up, or one epoch).
const PEER_DEADLINE: Duration = Duration::from_secs(300);

/// PyTorch's side: `bench/cnn_peer.py` on the same data, asked for one epoch at a time.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<std::io::Result<String>>,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// Writes the data as raw f32 files, starts the peer and waits for its warm-up epoch.
    fn start(
        python: &Path,
        p: &Problem,
        x: &Array5<f32>,
        y: &Array5<f32>,
        threads: usize,
    ) -> BoxResult<Self> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let script = root.join("bench/cnn_peer.py");
        let dir = tempfile::tempdir()?;
        let (xp, yp) = (dir.path().join("x.f32"), dir.path().join("y.f32"));
        write_f32(&xp, x)?;
        write_f32(&yp, y)?;
        let mut child = Command::new(python)
            .arg(&script)
            .arg(&xp)
            .arg(shape_arg(x))
            .arg(&yp)
            .arg(shape_arg(y))
            .args([p.batch, threads].map(|v| v.to_string()))
            .arg(Cnn3dConfig::default().lr.to_string())
            .arg("0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("cnn_peer.py: no pipes to the peer".into());
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = Self {
            child,
            stdin,
            lines,
            _dir: dir,
        };
        let hello = peer.answer()?;
        println!(
            "  pytorch: torch {}, {} threads, {} parameters",
            hello["torch"].as_str().unwrap_or("?"),
            hello["threads"],
            hello["num_params"]
        );
        Ok(peer)
    }

    /// The peer's next JSON line, within [`PEER_DEADLINE`].
    fn answer(&mut self) -> BoxResult<serde_json::Value> {
        match self.lines.recv_timeout(PEER_DEADLINE) {
            Ok(line) => Ok(serde_json::from_str(&line?)?),
            Err(RecvTimeoutError::Timeout) => Err(format!(
                "cnn_peer.py sent nothing for {} s; it was stopped",
                PEER_DEADLINE.as_secs()
            )
            .into()),
            Err(RecvTimeoutError::Disconnected) => {
                Err("cnn_peer.py exited early (its error is printed above)".into())
            }
        }
    }

    fn epoch(&mut self) -> BoxResult<Epoch> {
        writeln!(self.stdin, "epoch")?;
        self.stdin.flush()?;
        let v = self.answer()?;
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        Ok(Epoch {
            train: f("train_s"),
            valid: f("valid_s"),
            loss: f("loss"),
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        // The peer exits at once on `quit`; a stuck one is killed rather than waited for.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds per epoch of one side: median and minimum of the training pass, median of the
/// validation pass.
struct Timing {
    train: f64,
    train_min: f64,
    valid: f64,
}

impl Timing {
    fn of(epochs: &[Epoch]) -> Self {
        let train: Vec<f64> = epochs.iter().map(|e| e.train).collect();
        let valid: Vec<f64> = epochs.iter().map(|e| e.valid).collect();
        Self {
            train: median(&train),
            train_min: train.iter().copied().fold(f64::INFINITY, f64::min),
            valid: median(&valid),
        }
    }
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
        let mut ours = Ours::new(p, &x, &y)?;
        ours.epoch()?; // warm-up, not timed
        let mut peer = match have_peer {
            true => Some(Peer::start(&python, p, &x, &y, threads)?),
            false => None,
        };
        // Rounds of one epoch each side, alternating who goes first, so that both sides see
        // the same machine (a shared box's load moves within seconds).
        // Blocks of epochs, alternating sides (and who goes first), so that both sides see
        // the same machine: a shared box's load moves within seconds. Each block starts with an
        // untimed epoch, which absorbs what the other side leaves behind (PyTorch's OpenMP
        // threads spin on for a while after its epoch; caches are cold) and is not the steady
        // state a training run is in.
        let block = |run: &mut dyn FnMut() -> BoxResult<Epoch>| -> BoxResult<Vec<Epoch>> {
            run()?;
            (0..BLOCK).map(|_| run()).collect()
        };
        let (mut mine, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..epochs.div_ceil(BLOCK) {
            let mut ours_block = || block(&mut || ours.epoch());
            let (r, t) = match peer.as_mut() {
                Some(peer) => {
                    let mut peer_block = || block(&mut || peer.epoch());
                    if round % 2 == 1 {
                        let t = peer_block()?;
                        (ours_block()?, t)
                    } else {
                        let r = ours_block()?;
                        (r, peer_block()?)
                    }
                }
                None => (ours_block()?, Vec::new()),
            };
            if !t.is_empty() {
                ratios.push(Timing::of(&t).train / Timing::of(&r).train);
            }
            mine.extend(r);
            theirs.extend(t);
        }
        drop(peer);
        let r = Timing::of(&mine);
        let fit = ours_fit(p, &x, &y, epochs)?;
        let losses = |e: &[Epoch]| {
            (
                e.first().map_or(f64::NAN, |e| e.loss),
                e.last().map_or(f64::NAN, |e| e.loss),
            )
        };
        let (l0, l1) = losses(&mine);
        println!("  rust:    train loss {l0:.4e} -> {l1:.4e}");
        println!(
            "  rust:    train {:.4} s/epoch median (min {:.4}), valid {:.4} s; full fit() epoch {:.4} s",
            r.train, r.train_min, r.valid, fit
        );
        if !theirs.is_empty() {
            let t = Timing::of(&theirs);
            let (l0, l1) = losses(&theirs);
            println!("  pytorch: train loss {l0:.4e} -> {l1:.4e}");
            println!(
                "  pytorch: train {:.4} s/epoch median (min {:.4}), valid {:.4} s",
                t.train, t.train_min, t.valid
            );
            let ratio = median(&ratios);
            let worst = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            println!(
                "  ratio pytorch / rust (train s/epoch), median of {} rounds of {BLOCK} epochs each side: {ratio:.2}x, lowest round {worst:.2}x ({})",
                ratios.len(),
                if ratio >= 1.0 {
                    "we are faster"
                } else {
                    "we are slower"
                }
            );
            rows.push((p.name, r, t, ratio, worst));
        }
    }
    if !rows.is_empty() {
        println!(
            "\n| problem | rust train s/epoch | pytorch train s/epoch | pytorch / rust (median of rounds) | lowest round |"
        );
        println!("|---|---:|---:|---:|---:|");
        for (name, r, t, ratio, worst) in rows {
            println!(
                "| {name} | {:.4} | {:.4} | {ratio:.2}x | {worst:.2}x |",
                r.train, t.train
            );
        }
    }
    Ok(())
}
