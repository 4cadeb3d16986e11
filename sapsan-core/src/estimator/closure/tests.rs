use ndarray::{Array5, Axis};

use super::*;
use crate::analysis::GradientModel;
use crate::data::synthetic::{box_filter, velocity_field};

/// Filtered random velocity cubes `(n, 3, 8, 8, 8)` and, as the target, the gradient model's
/// tau_11 of them: a local function of the features the closure can represent.
fn gradient_model_data(n: usize, seed: u64) -> (Array5<f32>, Array5<f32>) {
    let g = 8;
    let mut x = Array5::<f32>::zeros((n, 3, g, g, g));
    let mut y = Array5::<f32>::zeros((n, 1, g, g, g));
    for i in 0..n {
        let u = velocity_field(g, seed + i as u64);
        for c in 0..3 {
            let f = box_filter(u.index_axis(Axis(0), c), 2);
            x.index_axis_mut(Axis(0), i)
                .index_axis_mut(Axis(0), c)
                .assign(&f.mapv(|v| v as f32));
        }
        let tau = GradientModel::tau_11(2.0)
            .predict(x.index_axis(Axis(0), i))
            .unwrap();
        y.index_axis_mut(Axis(0), i)
            .index_axis_mut(Axis(0), 0)
            .assign(&tau[0].mapv(|v| v as f32));
    }
    (x, y)
}

fn r2(target: &Array5<f32>, prediction: &Array5<f32>) -> f64 {
    let n = target.len() as f64;
    let mean = target.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = target
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let mse = target
        .iter()
        .zip(prediction)
        .map(|(&t, &p)| f64::from(t - p).powi(2))
        .sum::<f64>()
        / n;
    1.0 - mse / var
}

fn quiet() -> TrainOptions {
    TrainOptions {
        batch_size: Some(256),
        shuffle: true,
        progress: false,
        ..TrainOptions::default()
    }
}

#[test]
fn learns_a_local_closure_on_held_out_cubes() {
    let (x, y) = gradient_model_data(6, 1);
    let (vx, vy) = gradient_model_data(2, 100);
    let config = LocalClosureConfig::default()
        .with_n_epochs(40)
        .with_lr(3e-3)
        .with_hidden(16);
    let mut m = LocalClosure::with_options(config, 3, 1, quiet()).unwrap();
    let before = r2(&vy, &m.predict(&vx).unwrap());
    let mut epochs = 0;
    let report = m
        .fit(Samples::new(&x, &y), Samples::new(&vx, &vy), &mut |_| {
            epochs += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(epochs, report.final_epoch);
    let after = r2(&vy, &m.predict(&vx).unwrap());
    assert!(after > 0.9, "held-out R^2 {before} -> {after}");
    // The reported validation loss is the MSE of standardised targets.
    let last = report.history.last().unwrap();
    let std = m.standardiser().target_std[0] as f64;
    let mse = vy
        .iter()
        .zip(m.predict(&vx).unwrap().iter())
        .map(|(t, p)| f64::from(t - p).powi(2))
        .sum::<f64>()
        / vy.len() as f64;
    assert!(
        (last.valid_loss - mse / (std * std)).abs() < 1e-3 * last.valid_loss + 1e-6,
        "{} vs {}",
        last.valid_loss,
        mse / (std * std)
    );
}

#[test]
fn weights_and_standardisation_round_trip() {
    let (x, y) = gradient_model_data(2, 7);
    let mut m = LocalClosure::with_options(
        LocalClosureConfig::default().with_n_epochs(2),
        3,
        1,
        quiet(),
    )
    .unwrap();
    m.fit(Samples::new(&x, &y), Samples::new(&x, &y), &mut |_| Ok(()))
        .unwrap();
    let bytes = m.save_weights().unwrap();
    let fresh = || {
        LocalClosure::with_options(
            LocalClosureConfig::default(),
            3,
            1,
            TrainOptions { seed: 9, ..quiet() },
        )
        .unwrap()
    };
    let mut other = fresh();
    assert_ne!(other.predict(&x).unwrap(), m.predict(&x).unwrap());
    other.load_weights(&bytes).unwrap();
    assert_eq!(other.predict(&x).unwrap(), m.predict(&x).unwrap());
    assert_eq!(other.standardiser(), m.standardiser());
    // Another architecture or no safetensors at all: clear errors.
    let mut wide = LocalClosure::new(LocalClosureConfig::default().with_hidden(4), 3, 1).unwrap();
    let e = wide.load_weights(&bytes).unwrap_err().to_string();
    assert!(e.contains("hidden width"), "{e}");
    assert!(fresh().load_weights(b"junk").is_err());
}

#[test]
fn details_forward_and_shape_errors() {
    let m = LocalClosure::new(LocalClosureConfig::default(), 3, 1).unwrap();
    let text = m.model_details();
    assert!(text.contains("PeriodicCentralDifference(3 -> 12"), "{text}");
    assert!(text.contains("MSELoss"), "{text}");
    assert!(text.contains(&format!("total parameters: {}", m.num_params())));
    assert_eq!(m.num_params(), (12 * 32 + 32) + (32 * 32 + 32) + 33);
    assert_eq!(text, m.model_details(), "deterministic");
    assert!(m.model_forward().contains("periodic_central_difference"));
    let x = Array5::<f32>::zeros((1, 2, 4, 4, 4));
    assert!(m.predict(&x).is_err());
    let mut m = m;
    let (x, _) = gradient_model_data(1, 3);
    let y = Array5::<f32>::zeros((1, 2, 8, 8, 8));
    let e = m
        .fit(Samples::new(&x, &y), Samples::new(&x, &y), &mut |_| Ok(()))
        .unwrap_err();
    assert!(e.to_string().contains("target channels"), "{e}");
}
