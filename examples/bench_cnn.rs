//! Seconds per training epoch of the CNN3d estimator on the quickstart-size problem: 8 samples of
//! 3 feature channels on a 16^3 cube, a 1-channel 16^3 target, whole set per step, validation on
//! the same 8 samples.
//!
//! Run with `cargo run --release --example bench_cnn [epochs]` (default 20 epochs).
use std::time::Instant;

use ndarray::Array5;
use sapsan::estimator::{Cnn3d, Cnn3dConfig, Samples, TrainOptions};

fn main() -> sapsan::Result<()> {
    let epochs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    // Smooth, deterministic fields so the numbers are the same on every run.
    let x = Array5::from_shape_fn((8, 3, 16, 16, 16), |(n, c, i, j, k)| {
        ((n + 1) as f32 * 0.3 + c as f32 + 0.2 * i as f32 + 0.1 * j as f32 - 0.15 * k as f32).sin()
    });
    let y = Array5::from_shape_fn((8, 1, 16, 16, 16), |(n, _, i, j, k)| {
        ((n + 1) as f32 * 0.3 + 0.2 * i as f32 - 0.1 * j as f32 + 0.05 * k as f32).cos()
    });
    let config = Cnn3dConfig::default()
        .with_n_epochs(epochs)
        .with_patience(epochs + 1);
    let options = TrainOptions {
        progress: false,
        ..TrainOptions::default()
    };
    let mut model = Cnn3d::with_options(config, 3, [1, 16, 16, 16], options)?;
    println!("parameters: {}", model.num_params());
    let mut last = Instant::now();
    let mut times = Vec::with_capacity(epochs);
    let report =
        model.train_with_observer(Samples::new(&x, &y), Samples::new(&x, &y), &mut |r| {
            let now = Instant::now();
            times.push((now - last).as_secs_f64());
            last = now;
            println!(
                "epoch {:3}  train {:.4e}  valid {:.4e}  {:.4} s",
                r.epoch,
                r.train_loss,
                r.valid_loss,
                times.last().copied().unwrap_or_default()
            );
            Ok(())
        })?;
    // The first epoch includes one-off allocation; report the mean of the rest too.
    let mean = |t: &[f64]| t.iter().sum::<f64>() / t.len().max(1) as f64;
    println!(
        "{} epochs: {:.4} s/epoch (all), {:.4} s/epoch (without the first)",
        report.final_epoch,
        mean(&times),
        mean(times.get(1..).unwrap_or(&[]))
    );
    let start = Instant::now();
    model.predict(&x)?;
    println!("predict 8 samples: {:.4} s", start.elapsed().as_secs_f64());
    Ok(())
}
