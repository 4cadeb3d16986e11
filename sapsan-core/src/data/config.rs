//! The two groups of data settings Sapsan logs: `data - ...` ([`DataConfig`]) and `chkpnt - ...`
//! ([`CheckpointConfig`]).

/// Which files to read and what to take from them (Sapsan's `data - ...` parameters).
///
/// Its parameter map (`ModelConfig::parameters`) is Sapsan's, key for key and value for value:
/// `data - path`, `data - features` (joined: `u, b`), `data - target` (joined, or `None`),
/// `data - features_label`, `data - target_label` (`['u00000']` or `None`), `data - axis`,
/// `data - shuffle` (`False`).
#[derive(Debug, Clone, PartialEq, crate::ModelConfig)]
#[sapsan(prefix = "data")]
pub struct DataConfig {
    /// Path template, Python `str.format` style, filled per checkpoint and feature, for example
    /// `data/t{checkpoint:1.0f}/{feature}_dim32_fm15.h5` (see [`format_path`](super::format_path)).
    pub path: String,
    /// Input features, one file each per checkpoint, stacked along the channel axis in this order.
    #[sapsan(with = crate::config::formatters::joined)]
    pub features: Vec<String>,
    /// Target features (what the model learns to predict); `None` to load inputs only.
    #[sapsan(with = crate::config::formatters::joined_or_none)]
    pub target: Option<Vec<String>>,
    /// Dataset name inside each feature file, one per feature; `None` takes the last dataset of
    /// each file (names sorted, as h5py lists them).
    pub features_label: Option<Vec<String>>,
    /// Dataset name inside each target file, one per target; `None` takes the last dataset.
    pub target_label: Option<Vec<String>>,
    /// Number of spatial axes of the data. Only 3 (cubes) is supported by the loader.
    pub axis: usize,
    /// Shuffle the sub-cubes (seeded) before the train/validation split.
    pub shuffle: bool,
}

impl DataConfig {
    /// Settings for `features` read through the path template `path`; no target, no labels,
    /// 3 axes, no shuffling.
    pub fn new<S: Into<String>>(
        path: impl Into<String>,
        features: impl IntoIterator<Item = S>,
    ) -> Self {
        DataConfig {
            path: path.into(),
            features: features.into_iter().map(Into::into).collect(),
            target: None,
            features_label: None,
            target_label: None,
            axis: 3,
            shuffle: false,
        }
    }

    /// The same settings with `target` as the target features.
    pub fn with_target<S: Into<String>>(mut self, target: impl IntoIterator<Item = S>) -> Self {
        self.target = Some(target.into_iter().map(Into::into).collect());
        self
    }
}

impl Default for DataConfig {
    /// Sapsan's example: `data/t{checkpoint:1.0f}/{feature}_dim32_fm15.h5`, feature `u`, no target.
    fn default() -> Self {
        DataConfig::new("data/t{checkpoint:1.0f}/{feature}_dim32_fm15.h5", ["u"])
    }
}

/// Which checkpoints to read and how to cut them (Sapsan's `chkpnt - ...` parameters).
///
/// Its parameter map (`ModelConfig::parameters`) is Sapsan's: `chkpnt - time` (`[0, 1]`),
/// `chkpnt - initial size` (a list, `[32, 32, 32]`, as the user gives it in Python),
/// `chkpnt - sample to size` (a tuple, `(16, 16, 16)`, as Python reports the sampled shape;
/// `None` without sampling), `chkpnt - time_granularity` (`1` for a whole number, as Python's
/// default int), `chkpnt - batch_size` (a list), `chkpnt - batch_num`.
#[derive(Debug, Clone, PartialEq, crate::ModelConfig)]
#[sapsan(prefix = "chkpnt")]
pub struct CheckpointConfig {
    /// Checkpoint numbers; file `k` is found with `checkpoint = time_granularity * time[k]`.
    pub time: Vec<usize>,
    /// Size (D, H, W) of the cube stored in each file; files of another size are an error.
    #[sapsan(rename = "initial size")]
    pub initial_size: [usize; 3],
    /// Decimate each cube to this size by taking every `initial / sample` point along each axis
    /// (Sapsan's `EquidistantSampling`); each size must divide the initial size. `None`: keep.
    #[sapsan(rename = "sample to size", with = crate::config::formatters::tuple_or_none)]
    pub sample_to_size: Option<[usize; 3]>,
    /// Factor from checkpoint number to the value put into the path template.
    #[sapsan(with = crate::config::formatters::number)]
    pub time_granularity: f64,
    /// Size (D, H, W) of the sub-cubes the (sampled) cube is cut into; must divide it.
    pub batch_size: [usize; 3],
    /// How many sub-cubes each checkpoint cube contributes, the first ones in cut order;
    /// larger than the number of sub-cubes means all of them; must be at least 1.
    pub batch_num: usize,
}

impl CheckpointConfig {
    /// Checkpoints `time` of cubes of `initial_size`, cut into sub-cubes of `batch_size`, all of
    /// them used; no sampling, time granularity 1.
    pub fn new(
        time: impl Into<Vec<usize>>,
        initial_size: [usize; 3],
        batch_size: [usize; 3],
    ) -> Self {
        let batch_num = initial_size
            .iter()
            .zip(batch_size)
            .map(|(&i, b)| i.checked_div(b).unwrap_or(0))
            .product::<usize>()
            .max(1);
        CheckpointConfig {
            time: time.into(),
            initial_size,
            sample_to_size: None,
            time_granularity: 1.0,
            batch_size,
            batch_num,
        }
    }

    /// The cube size after sampling: `sample_to_size` or else `initial_size`.
    pub fn cube_size(&self) -> [usize; 3] {
        self.sample_to_size.unwrap_or(self.initial_size)
    }
}

impl Default for CheckpointConfig {
    /// Sapsan's CNN3d example: checkpoint 0, a 32^3 cube sampled to 16^3, one 16^3 sub-cube.
    fn default() -> Self {
        CheckpointConfig {
            time: vec![0],
            initial_size: [32, 32, 32],
            sample_to_size: Some([16, 16, 16]),
            time_granularity: 1.0,
            batch_size: [16, 16, 16],
            batch_num: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_and_defaults() {
        let d = DataConfig::default();
        assert_eq!(d.path, "data/t{checkpoint:1.0f}/{feature}_dim32_fm15.h5");
        assert_eq!(
            (d.features.clone(), d.target.clone(), d.axis, d.shuffle),
            (vec!["u".to_string()], None, 3, false)
        );
        let s = DataConfig::synthetic("/d", 16);
        assert_eq!(s.path, "/d/t{checkpoint:1.0f}/{feature}_dim16_fm15.h5");
        assert_eq!(s.target, Some(vec!["tn".to_string()]));

        let c = CheckpointConfig::new(vec![0, 1], [32, 32, 16], [8, 8, 8]);
        assert_eq!(c.batch_num, 4 * 4 * 2, "all sub-cubes by default");
        assert_eq!(
            (c.sample_to_size, c.time_granularity, c.cube_size()),
            (None, 1.0, [32, 32, 16])
        );
        let e = CheckpointConfig::default();
        assert_eq!(e.cube_size(), [16, 16, 16]);
        assert_eq!(
            (e.time.as_slice(), e.initial_size, e.batch_num),
            (&[0][..], [32; 3], 1)
        );
    }
}
