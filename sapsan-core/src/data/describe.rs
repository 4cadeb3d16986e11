//! How a dataset is recorded on a run (MLflow 3's dataset inputs): its files, a digest of their
//! contents, where they came from and what the samples look like.
use std::io::Read;
use std::path::PathBuf;

use ndarray::Array5;
use serde_json::json;

use super::{Hdf5Dataset, Samples};
use crate::error::{Error, Result};
use crate::tracking::{DataContext, Dataset, DatasetInput};

impl Hdf5Dataset {
    /// The files this dataset reads, in reading order: for each checkpoint, the features, then
    /// the target.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for &t in &self.chkpnt.time {
            let target = self.data.target.iter().flatten();
            for f in self.data.features.iter().chain(target) {
                out.push(self.file_path(t, f)?);
            }
        }
        Ok(out)
    }

    /// A digest of the files' contents in reading order: 8 hex digits (CRC-32 over every byte),
    /// the same for the same data wherever it lies, different when any byte differs.
    pub fn digest(&self) -> Result<String> {
        let mut h = crc32fast::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        for path in self.files()? {
            let mut f = std::fs::File::open(&path)
                .map_err(|e| Error::io("reading a data file for its digest", &path, e))?;
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(|e| Error::io("reading a data file for its digest", &path, e))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
        Ok(format!("{:08x}", h.finalize()))
    }

    /// The dataset as MLflow records it on a run that read `samples` from it: name (the data
    /// directory and checkpoints), [`Hdf5Dataset::digest`], source (path template, checkpoints,
    /// features, target), schema (features and target tensors with shapes and dtype, as
    /// MLflow's tensor spec) and profile (sample count and shapes).
    pub fn describe(&self, samples: &Samples, context: DataContext) -> Result<DatasetInput> {
        let template = &self.data.path;
        // The last directory before the first placeholder: what a person calls the data.
        let fixed = template.split('{').next().unwrap_or(template);
        let fixed = fixed.rsplit_once('/').map_or("", |(d, _)| d);
        let dir = std::path::Path::new(fixed)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "data".to_owned());
        let times: Vec<String> = self.chkpnt.time.iter().map(|t| t.to_string()).collect();
        let name = format!("{dir} t={}", times.join(","));
        let spec = |name: String, a: &Array5<f32>| {
            let mut shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
            shape[0] = -1;
            json!([{"type": "tensor", "name": name, "tensor-spec": {"dtype": "float32", "shape": shape}}])
                .to_string()
        };
        let mut schema = json!({"features": spec(self.data.features.join(","), &samples.features)});
        let mut profile = json!({
            "num_rows": samples.len(),
            "features_shape": samples.features.shape(),
        });
        if let (Some(t), Some(target)) = (&samples.target, &self.data.target) {
            schema["targets"] = json!(spec(target.join(","), t));
            profile["targets_shape"] = json!(t.shape());
        }
        Ok(DatasetInput {
            dataset: Dataset {
                name,
                digest: self.digest()?,
                source_type: "local".into(),
                source: json!({
                    "uri": template,
                    "checkpoints": self.chkpnt.time,
                    "features": self.data.features,
                    "target": self.data.target,
                })
                .to_string(),
                schema: json!({"mlflow_tensorspec": schema}).to_string(),
                profile: profile.to_string(),
            },
            context,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use ndarray::Array4;

    use super::*;
    use crate::data::{CheckpointConfig, DataConfig};

    /// Two checkpoints of `u` (3 x 8^3) and `tn` (1 x 8^3) under `dir/cubes/`, values from `seed`.
    fn write(dir: &Path, seed: f32) -> Hdf5Dataset {
        for t in 0..2usize {
            for (name, c) in [("u", 3), ("tn", 1)] {
                let p = dir.join(format!("cubes/t{t}/{name}.h5"));
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                let a = Array4::from_shape_fn((c, 8, 8, 8), |(c, i, j, k)| {
                    seed + (t * 1000 + c * 100 + i * 64 + j * 8 + k) as f32
                });
                let f = hdf5::File::create(&p).unwrap();
                f.new_dataset_builder()
                    .with_data(&a)
                    .create(format!("{name}00000").as_str())
                    .unwrap();
            }
        }
        let template = dir.join("cubes/t{checkpoint:1.0f}/{feature}.h5");
        let data = DataConfig::new(template.to_string_lossy(), ["u"]).with_target(["tn"]);
        Hdf5Dataset::new(
            data,
            CheckpointConfig::new(vec![0, 1], [8, 8, 8], [4, 4, 4]),
            1.0,
        )
    }

    #[test]
    fn a_dataset_is_described_with_a_content_digest_schema_and_profile() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let ds = write(a.path(), 0.0);
        let (samples, _) = ds.load_all().unwrap();
        let d = ds.describe(&samples, DataContext::Training).unwrap();
        assert_eq!(d.context, DataContext::Training);
        assert_eq!(d.dataset.name, "cubes t=0,1");
        assert_eq!(d.dataset.source_type, "local");
        let digest = &d.dataset.digest;
        assert_eq!(digest.len(), 8);
        assert!(digest.chars().all(|c| c.is_ascii_hexdigit()));
        // The same bytes elsewhere: the same digest; one value changed: another.
        assert_eq!(&write(b.path(), 0.0).digest().unwrap(), digest);
        assert_ne!(&write(c.path(), 0.5).digest().unwrap(), digest);

        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        let profile = v(&d.dataset.profile);
        // 2 checkpoints x 8 sub-cubes of 4^3.
        assert_eq!(profile["num_rows"], 16);
        assert_eq!(profile["features_shape"], json!([16, 3, 4, 4, 4]));
        assert_eq!(profile["targets_shape"], json!([16, 1, 4, 4, 4]));
        let schema = v(&d.dataset.schema);
        let features = v(schema["mlflow_tensorspec"]["features"].as_str().unwrap());
        assert_eq!(
            features,
            json!([{"type": "tensor", "name": "u",
                "tensor-spec": {"dtype": "float32", "shape": [-1, 3, 4, 4, 4]}}])
        );
        let targets = v(schema["mlflow_tensorspec"]["targets"].as_str().unwrap());
        assert_eq!(targets[0]["tensor-spec"]["shape"], json!([-1, 1, 4, 4, 4]));
        let source = v(&d.dataset.source);
        assert_eq!(source["checkpoints"], json!([0, 1]));
        assert!(source["uri"].as_str().unwrap().ends_with("{feature}.h5"));
    }

    #[test]
    fn a_missing_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let ds = write(dir.path(), 0.0);
        std::fs::remove_file(dir.path().join("cubes/t1/tn.h5")).unwrap();
        let e = ds.digest().unwrap_err().to_string();
        assert!(e.contains("t1/tn.h5"), "{e}");
    }
}
