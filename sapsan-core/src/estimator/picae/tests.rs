use super::*;
use crate::estimator::picae::curl::relative_divergence;
use rand::{RngExt, SeedableRng, rngs::StdRng};

fn quiet() -> TrainOptions {
    TrainOptions {
        progress: false,
        ..TrainOptions::default()
    }
}

fn small(config: PicaeConfig) -> Picae {
    Picae::with_options(config.with_nlayers(2), quiet()).unwrap()
}

fn random_cubes(n: usize, edge: usize, seed: u64) -> Array5<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array5::from_shape_simple_fn((n, 3, edge, edge, edge), || rng.random::<f32>() * 2.0 - 1.0)
}

/// Smooth divergence-free velocity cubes: the curl of a few random Fourier modes (the same
/// difference operators, so their discrete divergence is zero as well).
fn solenoidal(n: usize, edge: usize, seed: u64) -> Array5<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let tau = 2.0 * std::f32::consts::PI / edge as f32;
    let modes: Vec<[f32; 5]> = (0..n * 3)
        .map(|_| {
            let k = |r: &mut StdRng| (r.random::<f32>() * 2.0).floor() + 1.0;
            [
                k(&mut rng),
                k(&mut rng),
                k(&mut rng),
                rng.random(),
                rng.random(),
            ]
        })
        .collect();
    let a = Array5::from_shape_fn((n, 3, edge, edge, edge), |(s, c, i, j, l)| {
        let [ki, kj, kl, amp, phase] = modes[s * 3 + c];
        amp * (tau * (ki * i as f32 + kj * j as f32 + kl * l as f32) + 6.0 * phase).sin()
    });
    let t = train::to_tensor(&a, &Device::Cpu).unwrap();
    let u = curl::curl(&t).unwrap();
    let flat: Vec<f32> = u.flatten_all().unwrap().to_vec1().unwrap();
    Array5::from_shape_vec((n, 3, edge, edge, edge), flat).unwrap()
}

#[test]
fn the_output_of_a_fresh_network_is_divergence_free() {
    // Random weights, random (not divergence-free) input, Sapsan's default three layers.
    let model = Picae::with_options(PicaeConfig::default(), quiet()).unwrap();
    let x = random_cubes(2, 16, 1);
    assert!(relative_divergence(&x).unwrap() > 0.1, "the input is not");
    let y = model.predict(&x).unwrap();
    assert_eq!(y.shape(), x.shape());
    assert!(y.iter().any(|v| v.abs() > 1e-3), "a nonzero prediction");
    let rel = relative_divergence(&y).unwrap();
    assert!(rel < 1e-5, "max |div u| / max |u| = {rel}");
}

#[test]
fn training_lowers_the_loss_and_keeps_the_output_divergence_free() {
    let (x, vx) = (solenoidal(3, 8, 2), solenoidal(1, 8, 3));
    let mut model = small(PicaeConfig::default().with_n_epochs(40).with_lr(1e-2));
    let mut seen = 0;
    let report = model
        .fit(Samples::new(&x, &x), Samples::new(&vx, &vx), &mut |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, report.history.len());
    let (first, last) = (&report.history[0], report.history.last().unwrap());
    assert!(
        last.train_loss < 0.5 * first.train_loss,
        "train loss {} -> {}",
        first.train_loss,
        last.train_loss
    );
    let div = model.max_divergence().unwrap();
    assert!(div < 1e-5, "{div}");
    assert_eq!(model.metrics(), vec![(DIVERGENCE_METRIC.to_string(), div)]);
    let y = model.predict(&vx).unwrap();
    assert!(relative_divergence(&y).unwrap() < 1e-5);
}

#[test]
fn weight_decay_changes_training() {
    // The L2 penalty reaches the optimizer: with it the weights end up smaller.
    let x = solenoidal(2, 8, 4);
    let norm = |wd: f64| {
        let mut m = small(
            PicaeConfig::default()
                .with_n_epochs(5)
                .with_lr(1e-2)
                .with_weight_decay(wd),
        );
        m.fit(Samples::new(&x, &x), Samples::new(&x, &x), &mut |_| Ok(()))
            .unwrap();
        m.varmap
            .all_vars()
            .iter()
            .map(|v| {
                v.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .sum::<f32>()
    };
    assert!(norm(10.0) < norm(0.0));
}

#[test]
fn weights_round_trip_and_the_wrong_architecture_is_named() {
    let x = random_cubes(1, 8, 5);
    let a = small(PicaeConfig::default());
    let bytes = a.save_weights().unwrap();
    let mut b = Picae::with_options(
        PicaeConfig::default().with_nlayers(2),
        TrainOptions { seed: 9, ..quiet() },
    )
    .unwrap();
    assert_ne!(b.predict(&x).unwrap(), a.predict(&x).unwrap());
    b.load_weights(&bytes).unwrap();
    assert_eq!(b.predict(&x).unwrap(), a.predict(&x).unwrap());
    let mut wide = small(PicaeConfig::default().with_nfilters(4));
    let e = wide.load_weights(&bytes).unwrap_err().to_string();
    assert!(
        e.contains("encoder_cell_list.0.weight") || e.contains("shape"),
        "{e}"
    );
    let mut deep = Picae::new(PicaeConfig::default()).unwrap();
    let e = deep.load_weights(&bytes).unwrap_err().to_string();
    assert!(
        e.contains("decoder_cell_list.2") || e.contains("shape"),
        "{e}"
    );
    assert!(deep.load_weights(b"not safetensors").is_err());
}

#[test]
fn shapes_that_do_not_fit_are_refused_with_the_fix() {
    let model = small(PicaeConfig::default());
    let e = model
        .predict(&Array5::zeros((1, 2, 8, 8, 8)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("(N, 3, D, H, W)"), "{e}");
    let e = model
        .predict(&Array5::zeros((1, 3, 8, 6, 8)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("divisible by 4"), "{e}");
    assert_eq!(
        model
            .predict(&Array5::zeros((0, 3, 8, 8, 8)))
            .unwrap()
            .len(),
        0
    );
    assert!(Picae::new(PicaeConfig::default().with_n_epochs(0)).is_err());
}

#[test]
fn it_is_an_estimator_with_sapsans_params_and_deterministic_texts() {
    let model = Picae::new(PicaeConfig::default()).unwrap();
    let e: &dyn Estimator = &model;
    assert_eq!(e.name(), "PICAE");
    let p = e.config().parameters().unwrap();
    assert_eq!(p.get("model - nfilters"), Some("6"));
    assert_eq!(p.get("model - lr"), Some("0.0001"));
    assert_eq!(p.get("model - weight_decay"), Some("1e-05"));
    assert!(e.metrics().is_empty(), "no divergence before training");
    let details = e.model_details();
    assert_eq!(
        details,
        Picae::new(PicaeConfig::default()).unwrap().model_details()
    );
    for want in [
        "(encoder_cell_list.0): Conv3d(3, 6, kernel_size=(3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1))  # 492 parameters",
        "(decoder_cell_list.2): ConvTranspose3d(6, 3, kernel_size=(3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1), output_padding=(1, 1, 1))  # 489 parameters",
        "(curlConv): CentralDifferenceCurl",
        "weight_decay: 1e-05",
        "loss: MSELoss",
    ] {
        assert!(details.contains(want), "{want:?} missing from:\n{details}");
    }
    let forward = e.model_forward();
    assert!(forward.contains("fn forward_unchecked"), "{forward}");
    assert!(forward.contains("curl(&self.potential(x)?)"), "{forward}");
}

#[test]
fn trains_on_boxes_that_are_not_cubes() {
    // Edges 8, 16, 4 (each divisible by 2^2): the convolutions' gradients and the curl's padding
    // work per axis.
    let x = random_cubes(1, 16, 8)
        .slice_move(ndarray::s![.., .., ..8, .., ..4])
        .as_standard_layout()
        .into_owned();
    let mut model = small(PicaeConfig::default().with_n_epochs(2));
    let report = model
        .fit(Samples::new(&x, &x), Samples::new(&x, &x), &mut |_| Ok(()))
        .unwrap();
    assert_eq!(report.final_epoch, 2);
    let y = model.predict(&x).unwrap();
    assert_eq!(y.shape(), &[1, 3, 8, 16, 4]);
    assert!(relative_divergence(&y).unwrap() < 1e-5);
}
