//! Value formatters for the `data - ...` and `chkpnt - ...` parameters whose Python `str()` is not
//! the plain [`PyStr`] of the Rust field (used through `#[sapsan(with = ...)]`).
use crate::config::PyStr;

/// `["u", "b"]` as Sapsan logs `data - features`: `str(list)[1:-1]` without quotes, `u, b`.
pub fn joined(items: &[String]) -> String {
    items.join(", ")
}

/// [`joined`], or `None` when there is no list (Sapsan's default target `["None"]` prints so).
pub fn joined_or_none(items: &Option<Vec<String>>) -> String {
    items.as_deref().map_or_else(|| "None".to_owned(), joined)
}

/// A size as Python prints a shape tuple, `(16, 16, 16)`, or `None`.
pub fn tuple_or_none(size: &Option<[usize; 3]>) -> String {
    match size {
        Some([d, h, w]) => (*d, *h, *w).py_str(),
        None => "None".to_owned(),
    }
}

/// A number as Python prints what the user most likely wrote: a whole number as an int (`1`,
/// Sapsan's default `time_granularity`), anything else as a float (`0.01`).
pub fn number(value: &f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", *value as i64)
    } else {
        value.py_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::data::{CheckpointConfig, DataConfig};
    use crate::estimator::Cnn3dConfig;

    fn pairs(p: crate::config::Params) -> Vec<(String, String)> {
        p.into_vec()
    }

    fn own(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn model_parameters_are_sapsans() {
        let p = Cnn3dConfig::default().parameters().unwrap();
        assert_eq!(
            pairs(p),
            own(&[
                ("model - n_epochs", "1"),
                ("model - logdir", "./logs/"),
                ("model - patience", "10"),
                ("model - min_delta", "1e-05"),
                ("model - lr", "0.001"),
                ("model - min_lr", "1e-05"),
                ("model - device", "cpu"),
            ])
        );
        let c = Cnn3dConfig::default()
            .with_n_epochs(50)
            .with_lr(0.01)
            .with_kwarg("new_parameter", "True")
            .with_kwarg("batch", 4);
        assert_eq!(
            pairs(c.parameters().unwrap()),
            own(&[
                ("model - n_epochs", "50"),
                ("model - logdir", "./logs/"),
                ("model - patience", "10"),
                ("model - min_delta", "1e-05"),
                ("model - lr", "0.01"),
                ("model - min_lr", "0.0001"),
                ("model - device", "cpu"),
                ("model - batch", "4"),
                ("model - new_parameter", "True"),
            ])
        );
        let given = Cnn3dConfig::default().with_min_lr(2e-6);
        assert_eq!(
            given.parameters().unwrap().get("model - min_lr"),
            Some("2e-06")
        );
    }

    #[test]
    fn data_parameters_are_sapsans() {
        let d = DataConfig::new(
            "data/t{checkpoint:1.0f}/{feature}_dim32_fm15.h5",
            ["u", "b"],
        )
        .with_target(["tn"]);
        assert_eq!(
            pairs(d.parameters().unwrap()),
            own(&[
                (
                    "data - path",
                    "data/t{checkpoint:1.0f}/{feature}_dim32_fm15.h5"
                ),
                ("data - features", "u, b"),
                ("data - target", "tn"),
                ("data - features_label", "None"),
                ("data - target_label", "None"),
                ("data - axis", "3"),
                ("data - shuffle", "False"),
            ])
        );
        let labelled = DataConfig {
            features_label: Some(vec!["u00000".into()]),
            shuffle: true,
            ..DataConfig::default()
        };
        let p = labelled.parameters().unwrap();
        assert_eq!(p.get("data - target"), Some("None"));
        assert_eq!(p.get("data - features_label"), Some("['u00000']"));
        assert_eq!(p.get("data - shuffle"), Some("True"));
    }

    #[test]
    fn checkpoint_parameters_are_sapsans() {
        let c = CheckpointConfig {
            time: vec![0, 1, 2],
            ..CheckpointConfig::default()
        };
        assert_eq!(
            pairs(c.parameters().unwrap()),
            own(&[
                ("chkpnt - time", "[0, 1, 2]"),
                ("chkpnt - initial size", "[32, 32, 32]"),
                ("chkpnt - sample to size", "(16, 16, 16)"),
                ("chkpnt - time_granularity", "1"),
                ("chkpnt - batch_size", "[16, 16, 16]"),
                ("chkpnt - batch_num", "1"),
            ])
        );
        let mut plain = CheckpointConfig::new(vec![5], [32, 32, 16], [8, 8, 8]);
        plain.time_granularity = 0.01;
        let p = plain.parameters().unwrap();
        assert_eq!(p.get("chkpnt - sample to size"), Some("None"));
        assert_eq!(p.get("chkpnt - time_granularity"), Some("0.01"));
        assert_eq!(p.get("chkpnt - initial size"), Some("[32, 32, 16]"));
        assert_eq!(p.get("chkpnt - batch_num"), Some("32"));
    }

    #[test]
    fn formatters() {
        assert_eq!(joined(&["u".to_owned()]), "u");
        assert_eq!(joined_or_none(&None), "None");
        assert_eq!(tuple_or_none(&Some([8, 4, 2])), "(8, 4, 2)");
        assert_eq!(number(&2.0), "2");
        assert_eq!(number(&2.5), "2.5");
        assert_eq!(number(&1e-5), "1e-05");
    }
}
