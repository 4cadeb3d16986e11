//! Train / Evaluate against an in-memory backend that keeps everything logged.
use std::collections::HashMap;
use std::sync::Mutex;

use super::quickstart::{Quickstart, QuickstartModel};
use super::*;
use crate::data::{CheckpointConfig, synthetic};
use crate::tracking::{Backend, FakeBackend, LogItem, RunData, RunStack, RunStatus};

#[derive(Debug, Default)]
struct Run {
    parent: Option<String>,
    status: Option<RunStatus>,
    data: RunData,
    steps: HashMap<String, Vec<i64>>,
    artifacts: HashMap<String, Vec<u8>>,
}

/// Keeps every run's params, metrics (latest value and steps), artifacts, status and parent.
#[derive(Debug, Default)]
struct Memory {
    runs: Mutex<Vec<(String, Run)>>,
    stack: RunStack,
}

impl Memory {
    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Run) -> T) -> T {
        let mut runs = self.runs.lock().unwrap();
        let run = &mut runs.iter_mut().find(|(r, _)| r == id).unwrap().1;
        f(run)
    }
}

impl Backend for Memory {
    fn create_run(&self, _name: &str, parent: Option<&str>) -> Result<String> {
        let mut runs = self.runs.lock().unwrap();
        let id = format!("run{}", runs.len());
        let run = Run {
            parent: parent.map(str::to_owned),
            status: Some(RunStatus::Running),
            ..Run::default()
        };
        runs.push((id.clone(), run));
        Ok(id)
    }
    fn enqueue(&self, run_id: &str, item: LogItem) -> Result<()> {
        self.with(run_id, |r| match item {
            LogItem::Metric(m) => {
                r.data.metrics.insert(m.key.clone(), m.value);
                r.steps.entry(m.key).or_default().push(m.step);
            }
            LogItem::Param { key, value } => {
                assert!(
                    r.data.params.insert(key.clone(), value).is_none(),
                    "param {key} twice"
                );
            }
            LogItem::Tag { key, value } => {
                r.data.tags.insert(key, value);
            }
        });
        Ok(())
    }
    fn upload_artifact(&self, run_id: &str, name: &str, bytes: &[u8]) -> Result<()> {
        self.with(run_id, |r| r.artifacts.insert(name.into(), bytes.to_vec()));
        Ok(())
    }
    fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()> {
        self.with(run_id, |r| r.status = Some(status));
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn run_data(&self, run_id: &str) -> Result<RunData> {
        Ok(self.with(run_id, |r| r.data.clone()))
    }
    fn runs(&self) -> &RunStack {
        &self.stack
    }
}

fn small(dir: &std::path::Path) -> Quickstart {
    Quickstart {
        data_dir: dir.to_path_buf(),
        grid: 16,
        sample_to: 8,
        train_checkpoints: vec![0, 1],
        evaluations: vec![vec![2], vec![2, 3]],
        n_epochs: 3,
        seed: 1,
        model: QuickstartModel::Cnn3d,
    }
}

#[test]
fn quickstart_records_the_seed_tables() {
    let dir = tempfile::tempdir().unwrap();
    let q = small(dir.path());
    let b = Memory::default();
    let mut lines = Vec::new();
    let out = q.run(&b, &mut |l| lines.push(l.to_owned())).unwrap();
    assert_eq!(lines.len(), 7, "{lines:?}");
    assert!(lines[3].contains("(target variance "), "{lines:?}");
    assert!(lines[4].contains("gradient model MSE"), "{lines:?}");
    assert_eq!(out.final_epoch, 3);
    assert_eq!(out.evaluations.len(), 2);

    let runs = b.runs.lock().unwrap();
    let get = |id: &str| &runs.iter().find(|(r, _)| r == id).unwrap().1;
    let train = get(&out.train_run_id);
    assert_eq!(train.parent, None);
    assert_eq!(train.status, Some(RunStatus::Running), "stays open");
    let p = &train.data.params;
    assert_eq!(p["model - n_epochs"], "3");
    assert_eq!(p["model - min_lr"], "1e-05");
    assert_eq!(p["data - features"], "u");
    assert_eq!(p["data - target"], "tn");
    assert_eq!(p["chkpnt - time"], "[0, 1]");
    assert_eq!(p["chkpnt - sample to size"], "(8, 8, 8)");
    assert_eq!(p.len(), 7 + 7 + 6);
    for key in ["train - loss", "valid - loss", "lr"] {
        assert_eq!(train.steps[key], vec![1, 2, 3], "{key}");
    }
    assert_eq!(train.data.metrics["train - final epoch"], 3.0);
    assert!(train.data.metrics["train - runtime"] > 0.0);
    for name in [
        "model_details.txt",
        "model_forward.txt",
        "runtime_log.html",
        WEIGHTS_ARTIFACT,
    ] {
        assert!(!train.artifacts[name].is_empty(), "{name}");
    }

    for (e, time) in out.evaluations.iter().zip(["[2]", "[2, 3]"]) {
        let eval = get(&e.run_id);
        assert_eq!(eval.parent.as_deref(), Some(out.train_run_id.as_str()));
        assert_eq!(eval.status, Some(RunStatus::Finished));
        let p = &eval.data.params;
        assert_eq!(p["chkpnt - time"], time, "its own data params");
        assert_eq!(p["model - n_epochs"], "3");
        assert_eq!(p["n_output_channels"], "1");
        let m = &eval.data.metrics;
        assert_eq!(m["eval - MSE Loss"], e.mse);
        assert!(e.ks > 0.0 && e.ks <= 1.0);
        assert_eq!(m["eval - KS Stat"], e.ks);
        assert_eq!(m["eval - gradient model MSE"], e.gradient_model_mse);
        assert!(e.gradient_model_mse > 0.0 && e.gradient_model_mse.is_finite());
        for key in [
            "train - final epoch",
            "train - loss",
            "train - runtime",
            "valid - loss",
            "lr",
        ] {
            assert_eq!(m[key], train.data.metrics[key], "{key} copied");
        }
        assert!(m["eval - runtime"] > 0.0);
        for name in ["pdf_cdf.png", "slices_plot.png", "spectrum.png"] {
            assert!(eval.artifacts[name].starts_with(b"\x89PNG"), "{name}");
        }
    }
}

#[test]
fn evaluate_covers_every_sample_and_restores_cubes() {
    let dir = tempfile::tempdir().unwrap();
    let q = small(dir.path());
    synthetic::generate(dir.path(), 16, &[0, 1], 1).unwrap();
    // 16^3 cut into 8 sub-cubes of 8^3 per checkpoint, no sampling.
    let chkpnt = CheckpointConfig::new(vec![0, 1], [16; 3], [8; 3]);
    let dataset = Hdf5Dataset::new(q.data(), chkpnt, 1.0);
    let model = Cnn3d::new(Cnn3dConfig::default(), 3, [1, 8, 8, 8]).unwrap();
    let b = Memory::default();
    let mut eval = Evaluate::new(&model, dataset.clone(), &b);
    let out = eval.run().unwrap();
    assert_eq!(out.prediction.shape(), &[2, 1, 16, 16, 16]);
    let target = out.target.unwrap();
    // The restored target is the file's cube.
    let file =
        crate::data::read_cube(&synthetic::file_path(dir.path(), 16, 1, "tn"), None).unwrap();
    assert_eq!(target.slice(s![1, .., .., .., ..]), file);
    // The prediction of each sub-cube sits where the sub-cube came from.
    let (samples, _) = dataset.load_all().unwrap();
    let direct = model.predict(&samples.features).unwrap();
    assert_eq!(
        out.prediction.slice(s![1, .., 8.., 0..8, 8..]),
        direct.slice(s![8 + 5, .., .., .., ..])
    );
    let want = analysis::mse(
        target.as_slice().unwrap(),
        out.prediction.as_slice().unwrap(),
    );
    assert_eq!(out.mse, Some(want.unwrap()));
    // spectrum.png compares the spectra of the restored cubes: power, as tau_11 has one channel.
    let ts = out.target_spectrum.clone().unwrap();
    assert_eq!(ts, analysis::mean_spectrum(target.view()).unwrap());
    assert_eq!(ts.kind, analysis::SpectrumKind::Power);
    assert_eq!(ts.shells.len(), 16 / 2 + 1);
    assert_eq!(
        out.prediction_spectrum,
        analysis::mean_spectrum(out.prediction.view()).unwrap()
    );
    assert!(out.spectrum_png.starts_with(b"\x89PNG"));
    assert!(eval.run_id().is_some());
    // No train run: a top-level evaluate run, without copied metrics.
    let id = eval.run_id().unwrap();
    b.with(id, |r| {
        assert_eq!(r.parent, None);
        assert!(!r.data.metrics.contains_key("lr"));
    });
}

#[test]
fn evaluate_without_target_logs_ks_minus_one_and_no_mse() {
    let dir = tempfile::tempdir().unwrap();
    let q = small(dir.path());
    synthetic::generate(dir.path(), 16, &[0], 1).unwrap();
    let mut data = q.data();
    data.target = None;
    let model = Cnn3d::new(Cnn3dConfig::default(), 3, [1, 8, 8, 8]).unwrap();
    let b = Memory::default();
    let mut eval = Evaluate::new(&model, Hdf5Dataset::new(data, q.checkpoints(&[0]), 1.0), &b);
    let out = eval.run().unwrap();
    assert!(out.target.is_none() && out.mse.is_none() && out.pdf_cdf_png.is_none());
    assert!(out.target_spectrum.is_none());
    b.with(eval.run_id().unwrap(), |r| {
        assert_eq!(r.data.metrics["eval - KS Stat"], -1.0);
        assert!(!r.data.metrics.contains_key("eval - MSE Loss"));
        assert_eq!(r.data.params["data - target"], "None");
        assert!(r.artifacts["slices_plot.png"].starts_with(b"\x89PNG"));
        assert!(r.artifacts["spectrum.png"].starts_with(b"\x89PNG"));
        assert!(!r.artifacts.contains_key("pdf_cdf.png"));
    });
}

#[test]
fn errors_end_runs_failed() {
    let dir = tempfile::tempdir().unwrap();
    let q = small(dir.path());
    let b = Memory::default();
    // No files: the train run fails with the missing file named.
    let model = Cnn3d::new(Cnn3dConfig::default(), 3, [1, 8, 8, 8]).unwrap();
    let mut train = Train::new(
        model,
        Hdf5Dataset::new(q.data(), q.checkpoints(&[0]), 1.0),
        &b,
    );
    let err = train.run().unwrap_err();
    assert!(err.to_string().contains("file not found"), "{err}");
    b.with(train.run_id().unwrap(), |r| {
        assert_eq!(r.status, Some(RunStatus::Failed))
    });
    // Sub-cubes dropped by batch_num: cubes cannot be restored, said so.
    synthetic::generate(dir.path(), 16, &[0], 1).unwrap();
    let mut chkpnt = CheckpointConfig::new(vec![0], [16; 3], [8; 3]);
    chkpnt.batch_num = 2;
    let mut eval = Evaluate::new(train.model(), Hdf5Dataset::new(q.data(), chkpnt, 1.0), &b);
    let err = eval.run().unwrap_err();
    assert!(
        err.to_string().contains("set batch_num to at least 8"),
        "{err}"
    );
    b.with(eval.run_id().unwrap(), |r| {
        assert_eq!(r.status, Some(RunStatus::Failed))
    });
}

#[test]
fn weights_artifact_reloads_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let q = small(dir.path());
    let b = Memory::default();
    q.run(&b, &mut |_| {}).unwrap();
    let runs = b.runs.lock().unwrap();
    let weights = &runs[0].1.artifacts[WEIGHTS_ARTIFACT];
    let config = Cnn3dConfig::default().with_n_epochs(3);
    let loaded = Cnn3d::load_safetensors(weights, config.clone(), 3, [1, 8, 8, 8]).unwrap();
    let fresh = Cnn3d::new(config, 3, [1, 8, 8, 8]).unwrap();
    let (samples, _) = Hdf5Dataset::new(q.data(), q.checkpoints(&[2]), 1.0)
        .load_all()
        .unwrap();
    let a = loaded.predict(&samples.features).unwrap();
    assert_ne!(
        a,
        fresh.predict(&samples.features).unwrap(),
        "trained weights"
    );
}

#[test]
fn gradient_model_mse_is_the_baselines_error_on_the_restored_cubes() {
    let dir = tempfile::tempdir().unwrap();
    let q = small(dir.path());
    synthetic::generate(dir.path(), 16, &[0], 1).unwrap();
    // Sub-cubes of 8^3: the baseline is computed on the restored (periodic) cube.
    let chkpnt = CheckpointConfig::new(vec![0], [16; 3], [8; 3]);
    let model = Cnn3d::new(Cnn3dConfig::default(), 3, [1, 8, 8, 8]).unwrap();
    let g = GradientModel::tau_11(4.0);
    let out = Evaluate::new(
        &model,
        Hdf5Dataset::new(q.data(), chkpnt, 1.0),
        &FakeBackend::new(),
    )
    .with_gradient_model(g.clone())
    .run()
    .unwrap();
    let u = crate::data::read_cube(&synthetic::file_path(dir.path(), 16, 0, "u"), None).unwrap();
    let tau = crate::data::read_cube(&synthetic::file_path(dir.path(), 16, 0, "tn"), None).unwrap();
    let pred = &g.predict(u.view()).unwrap()[0];
    let want = pred
        .iter()
        .zip(tau.iter())
        .map(|(p, t)| (p - f64::from(*t)).powi(2))
        .sum::<f64>()
        / pred.len() as f64;
    let got = out.gradient_model_mse.unwrap();
    assert!((got - want).abs() < 1e-12 * want, "{got} vs {want}");
    // Without the setting there is no baseline; with a wrong channel count, a clear error.
    let plain = Evaluate::new(
        &model,
        Hdf5Dataset::new(q.data(), q.checkpoints(&[0]), 1.0),
        &FakeBackend::new(),
    )
    .run()
    .unwrap();
    assert_eq!(plain.gradient_model_mse, None);
    let two = GradientModel {
        filter_width: 4.0,
        components: vec![[0, 0], [1, 1]],
    };
    let err = Evaluate::new(
        &model,
        Hdf5Dataset::new(q.data(), q.checkpoints(&[0]), 1.0),
        &FakeBackend::new(),
    )
    .with_gradient_model(two)
    .run()
    .unwrap_err();
    assert!(err.to_string().contains("one stress component"), "{err}");
}

/// Train and Evaluate take any estimator: a toy one written against the trait alone (in
/// `estimator::api`) goes through the same tracked runs, with its params and metrics.
#[test]
fn train_and_evaluate_are_generic_over_the_estimator() {
    let dir = tempfile::tempdir().unwrap();
    let q = small(dir.path());
    synthetic::generate(dir.path(), 16, &[0, 1], 1).unwrap();
    let b = Memory::default();
    let toy = crate::estimator::api::tests::toy();
    let mut train = Train::new(
        toy,
        Hdf5Dataset::new(q.data(), q.checkpoints(&[0, 1]), 0.5),
        &b,
    );
    let out = train.run().unwrap();
    assert_eq!(out.report.final_epoch, 1);
    assert!(out.details.starts_with("Mean(value="));
    let mut eval = Evaluate::new(
        train.model(),
        Hdf5Dataset::new(q.data(), q.checkpoints(&[1]), 1.0),
        &b,
    );
    let cubes = eval.run().unwrap();
    assert!(cubes.mse.unwrap() > 0.0);
    b.with(train.run_id().unwrap(), |r| {
        assert_eq!(r.data.params["model - n_epochs"], "1");
        assert_eq!(r.data.params["model - flag"], "True");
        assert_eq!(r.data.params["data - target"], "tn");
        assert!(r.data.metrics.contains_key("train - mean"));
        assert_eq!(r.steps["valid - loss"], vec![1]);
        assert_eq!(r.artifacts[WEIGHTS_ARTIFACT].len(), 4);
    });
    b.with(eval.run_id().unwrap(), |r| {
        assert_eq!(r.parent.as_deref(), train.run_id());
        assert_eq!(r.data.params["model - flag"], "True");
        assert!(r.data.metrics.contains_key("train - mean"), "copied");
    });
}

#[test]
fn quickstart_with_the_local_closure_logs_its_params_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    // The main job's data and model, 3 epochs.
    let q = Quickstart {
        data_dir: dir.path().to_path_buf(),
        n_epochs: 3,
        evaluations: vec![vec![4]],
        ..Quickstart::default()
    };
    let b = Memory::default();
    let out = q.run(&b, &mut |_| {}).unwrap();
    let runs = b.runs.lock().unwrap();
    let train = &runs.iter().find(|(r, _)| *r == out.train_run_id).unwrap().1;
    let p = &train.data.params;
    assert_eq!(p["model - hidden"], "32");
    assert_eq!(p["model - lr"], "0.003");
    assert_eq!(p["model - min_lr"], "3e-05");
    assert_eq!(p["model - device"], "cpu");
    assert_eq!(p.len(), 8 + 7 + 6);
    assert!(
        String::from_utf8_lossy(&train.artifacts["model_details.txt"]).contains("LocalClosure(")
    );
    // Three epochs already reach the main job's goal on a held-out checkpoint.
    let e = &out.evaluations[0];
    assert!(
        e.r2() >= 0.5,
        "R^2 {} after {} epochs",
        e.r2(),
        out.final_epoch
    );
    assert!(e.gradient_model_mse.is_finite());
    // The logged weights (with the standardisation) reload into a fresh model: same MSE.
    let mut fresh = crate::estimator::LocalClosure::new(Default::default(), 3, 1).unwrap();
    crate::estimator::Estimator::load_weights(&mut fresh, &train.artifacts[WEIGHTS_ARTIFACT])
        .unwrap();
    let again = Evaluate::new(
        &fresh,
        Hdf5Dataset::new(q.data(), q.checkpoints(&[4]), 1.0),
        &FakeBackend::new(),
    )
    .run()
    .unwrap();
    assert_eq!(again.mse, Some(e.mse));
}
