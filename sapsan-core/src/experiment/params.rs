//! Tests of the exact `model - ...`, `data - ...` and `chkpnt - ...` parameter maps Train/Evaluate
//! log (the formatters live in [`crate::config::formatters`]).
use crate::config::formatters::{joined, joined_or_none, number, tuple_or_none};

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
            .with_kwarg("new_parameter", true)
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
                ("model - new_parameter", "True"),
                ("model - batch", "4"),
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
