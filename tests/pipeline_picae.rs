//! Sapsan's PICAE example (`examples/picae.rs`) against a live MLflow server, judged by the
//! official Python client: a train run with PICAE's `model - ...` params and an evaluate run
//! nested under it, both FINISHED, with their metrics (the prediction's divergence about zero)
//! and artifacts.
mod common;

/// The number after `label` on the example's divergence line.
fn divergence(stdout: &str, label: &str) -> f64 {
    stdout
        .lines()
        .find(|l| l.contains("max |div u| / max |u|"))
        .and_then(|l| l.split(label).nth(1))
        .and_then(|rest| rest.split([',', ' ']).find(|w| !w.is_empty()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} divergence in {stdout}"))
}

#[test]
fn picae_example_tracks_a_train_and_a_nested_evaluate_run() {
    let experiment = common::unique("picae");
    let stdout = common::run_estimator_example("picae", &experiment);
    // The evaluate prediction is divergence-free to rounding; the target, with the same
    // differences, is not (so the measure would see a broken curl).
    let (pred_div, target_div) = (
        divergence(&stdout, "prediction"),
        divergence(&stdout, "target"),
    );
    assert!(pred_div < 1e-5, "{pred_div}: {stdout}");
    assert!(target_div > 1e-2, "{target_div}: {stdout}");

    let (train, eval) = common::train_and_nested_evaluate(&stdout);
    let (train, eval) = (&train, &eval);
    let (param, metric) = (common::param, common::metric);

    for r in [train, eval] {
        for (k, v) in [
            ("model - nfilters", "6"),
            ("model - kernel_size", "(3, 3, 3)"),
            ("model - enc_nlayers", "3"),
            ("model - dec_nlayers", "3"),
            ("model - n_epochs", "30"),
            ("model - logdir", "./logs/"),
            ("model - patience", "10"),
            ("model - min_delta", "1e-05"),
            ("model - weight_decay", "1e-05"),
            ("model - lr", "0.01"),
            ("model - min_lr", "0.0001"),
            ("model - device", "cpu"),
            ("model - sampled", "(16, 16, 16)"),
            ("data - features", "u"),
            ("data - target", "u"),
            ("chkpnt - sample to size", "(16, 16, 16)"),
        ] {
            assert_eq!(param(r, k).as_deref(), Some(v), "{k} in {r}");
        }
    }
    assert_eq!(param(eval, "chkpnt - time").as_deref(), Some("[4]"));
    assert_eq!(param(eval, "n_output_channels").as_deref(), Some("3"));

    // The divergence of the prediction on the validation cube, copied into the evaluate run.
    let div = metric(train, "train - max divergence");
    assert!((0.0..1e-5).contains(&div), "{div}");
    assert_eq!(metric(eval, "train - max divergence"), div);
    assert!(metric(train, "train - loss").is_finite());
    let mse = metric(eval, "eval - MSE Loss");
    assert!(mse > 0.0 && mse.is_finite(), "{mse}");
    let ks = metric(eval, "eval - KS Stat");
    assert!(ks > 0.0 && ks <= 1.0, "{ks}");
    common::assert_estimator_artifacts(train, eval);
}
