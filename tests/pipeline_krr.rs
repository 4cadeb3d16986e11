//! Sapsan's KRR example (`examples/krr.rs`) against a live MLflow server, judged by the official
//! Python client: a train run with KRR's `model - ...` params and an evaluate run nested under
//! it, both FINISHED, with their metrics and artifacts.
mod common;

#[test]
fn krr_example_tracks_a_train_and_a_nested_evaluate_run() {
    let experiment = common::unique("krr");
    let stdout = common::run_estimator_example("krr", &experiment);
    let (train, eval) = common::train_and_nested_evaluate(&stdout);
    let (train, eval) = (&train, &eval);
    let (param, metric) = (common::param, common::metric);

    for r in [train, eval] {
        assert_eq!(param(r, "model - alpha").as_deref(), Some("0.001"));
        assert_eq!(param(r, "model - gamma").as_deref(), Some("1.778"));
        assert_eq!(param(r, "model - kernel").as_deref(), Some("rbf"));
        assert_eq!(
            param(r, "chkpnt - sample to size").as_deref(),
            Some("(1, 16, 16)")
        );
    }
    assert_eq!(param(eval, "chkpnt - time").as_deref(), Some("[4]"));
    assert_eq!(param(eval, "n_output_channels").as_deref(), Some("1"));

    // Three 16^2 training slices; the kernel width used.
    assert_eq!(metric(train, "train - training points"), 768.0);
    assert_eq!(metric(train, "train - gamma"), 1.778);
    assert!(metric(train, "train - loss") < metric(train, "valid - loss"));
    let mse = metric(eval, "eval - MSE Loss");
    assert!(mse > 0.0 && mse.is_finite(), "{mse}");
    let ks = metric(eval, "eval - KS Stat");
    assert!(ks > 0.0 && ks <= 1.0, "{ks}");
    assert_eq!(
        metric(eval, "train - training points"),
        768.0,
        "train metrics copied"
    );
    common::assert_estimator_artifacts(train, eval);
}
