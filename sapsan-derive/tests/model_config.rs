//! `#[derive(ModelConfig)]`: exact parameter maps, in order, with Python-formatted values.
use std::collections::BTreeMap;
use std::path::PathBuf;

use sapsan_core::config::{Kwargs, ModelConfig as _, PyStr};
use sapsan_core::{Error, ModelConfig};

/// Sapsan's CNN3dConfig, field for field.
#[derive(ModelConfig)]
struct Cnn3dConfig {
    n_epochs: u32,
    logdir: String,
    patience: u32,
    min_delta: f64,
    lr: f64,
    #[sapsan(default = self.lr * 1e-2)]
    min_lr: Option<f64>,
    #[sapsan(kwargs)]
    kwargs: Kwargs,
}

fn cnn3d(kwargs: Kwargs) -> Cnn3dConfig {
    Cnn3dConfig {
        n_epochs: 1,
        logdir: "./logs/".into(),
        patience: 10,
        min_delta: 1e-5,
        lr: 1e-3,
        min_lr: None,
        kwargs,
    }
}

fn pairs(c: &impl sapsan_core::config::ModelConfig) -> Vec<(String, String)> {
    c.parameters().unwrap().into_vec()
}

fn owned(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn cnn3d_parameters_match_python_sapsan() {
    // Python: CNN3dConfig(new_parameter=[16,16,16], flag=False).parameters, values str()-ed.
    let kw = Kwargs::new()
        .with("new_parameter", vec![16, 16, 16])
        .with("flag", false);
    assert_eq!(
        pairs(&cnn3d(kw)),
        owned(&[
            ("model - n_epochs", "1"),
            ("model - logdir", "./logs/"),
            ("model - patience", "10"),
            ("model - min_delta", "1e-05"),
            ("model - lr", "0.001"),
            ("model - min_lr", "1e-05"),
            ("model - new_parameter", "[16, 16, 16]"),
            ("model - flag", "False"),
        ])
    );
}

#[test]
fn derived_default_only_when_none() {
    let mut c = cnn3d(Kwargs::new());
    c.min_lr = Some(0.5);
    assert_eq!(c.parameters().unwrap().get("model - min_lr"), Some("0.5"));
    c.min_lr = None;
    c.lr = 0.1;
    assert_eq!(c.parameters().unwrap().get("model - min_lr"), Some("0.001"));
}

#[test]
fn kwargs_may_not_shadow_fields_or_break_keys() {
    let err = cnn3d(Kwargs::new().with("lr", 1)).parameters().unwrap_err();
    assert!(
        matches!(&err, Error::Config { config, .. } if config == "Cnn3dConfig"),
        "{err}"
    );
    assert!(err.to_string().contains("\"model - lr\""), "{err}");
    let err = cnn3d(Kwargs::new().with("a/", 1)).parameters().unwrap_err();
    assert!(err.to_string().contains("must not end with '/'"), "{err}");
}

fn joined(v: &[String]) -> String {
    v.join(", ")
}

/// Sapsan's checkpoint params: renamed keys, tuples, skipped and custom-formatted fields.
#[derive(ModelConfig)]
#[sapsan(prefix = "chkpnt")]
struct Checkpoints {
    time: Vec<u32>,
    #[sapsan(rename = "initial size")]
    initial_size: (u32, u32, u32),
    #[sapsan(rename = "sample to size")]
    sample_to_size: [u32; 3],
    #[sapsan(skip)]
    _cache: Vec<u8>,
    time_granularity: f64,
    batch_size: Option<(u32, u32, u32)>,
}

#[derive(ModelConfig)]
#[sapsan(prefix = "data")]
struct DataConfig {
    path: PathBuf,
    #[sapsan(with = joined)]
    features: Vec<String>,
    shuffle: bool,
    axis: usize,
    #[sapsan(kwargs)]
    extra: BTreeMap<String, f64>,
}

#[test]
fn other_groups_use_their_prefix() {
    let c = Checkpoints {
        time: vec![0, 1],
        initial_size: (32, 32, 32),
        sample_to_size: [16; 3],
        _cache: vec![],
        time_granularity: 1.0,
        batch_size: None,
    };
    assert_eq!(
        pairs(&c),
        owned(&[
            ("chkpnt - time", "[0, 1]"),
            ("chkpnt - initial size", "(32, 32, 32)"),
            ("chkpnt - sample to size", "[16, 16, 16]"),
            ("chkpnt - time_granularity", "1.0"),
            ("chkpnt - batch_size", "None"),
        ])
    );
    let d = DataConfig {
        path: "data/t{checkpoint:1.0f}/{feature}_dim32_fm15.h5".into(),
        features: vec!["u".into(), "b".into()],
        shuffle: false,
        axis: 3,
        extra: [("z".to_owned(), 1e16), ("a".to_owned(), 0.1)].into(),
    };
    assert_eq!(
        pairs(&d),
        owned(&[
            (
                "data - path",
                "data/t{checkpoint:1.0f}/{feature}_dim32_fm15.h5"
            ),
            ("data - features", "u, b"),
            ("data - shuffle", "False"),
            ("data - axis", "3"),
            ("data - a", "0.1"),
            ("data - z", "1e+16"),
        ])
    );
}

/// Generic fields get a `PyStr` bound; user types implement `PyStr`.
#[derive(ModelConfig)]
struct Generic<T> {
    value: T,
    device: Device,
}

enum Device {
    Cpu,
}

impl PyStr for Device {
    fn py_str(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
        }
    }
}

#[test]
fn generics_and_user_types() {
    let g = Generic {
        value: 1e-4f32,
        device: Device::Cpu,
    };
    assert_eq!(
        pairs(&g),
        owned(&[("model - value", "0.0001"), ("model - device", "cpu")])
    );
    let dynamic: &dyn sapsan_core::config::ModelConfig = &g;
    assert_eq!(dynamic.parameters().unwrap().len(), 2);
}
