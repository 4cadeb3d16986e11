//! Loader tests on files written into temporary directories, and the synthetic data end to end.
use std::path::{Path, PathBuf};

use ndarray::{Array, Array4, ArrayD, IxDyn, s};

use super::*;

/// Writes datasets `(name, array)` into a new HDF5 file at `path` (creating directories).
fn write<T: hdf5::H5Type>(path: &Path, sets: &[(&str, ArrayD<T>)]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = hdf5::File::create(path).unwrap();
    for (name, a) in sets {
        f.new_dataset_builder().with_data(a).create(*name).unwrap();
    }
}

/// A cube whose values encode where they come from: t * 1000 + c * 100 + d * 16 + h * 4 + w
/// (exact in float32 for the sizes used).
fn coded(t: usize, shape: [usize; 4], c0: usize) -> Array4<f32> {
    Array4::from_shape_fn(shape, |(c, d, h, w)| {
        (t * 1000 + (c + c0) * 100 + d * 16 + h * 4 + w) as f32
    })
}

const TEMPLATE: &str = "t{checkpoint:1.0f}/{feature}.h5";

fn template(dir: &Path) -> String {
    dir.join(TEMPLATE).to_string_lossy().into_owned()
}

/// Two checkpoints (0, 1) of feature `u` (3, 4, 4, 4) float32 and `b` (4, 4, 4) float64, and
/// target `tn` (1, 4, 4, 4).
fn fixture(dir: &Path) -> Hdf5Dataset {
    for t in 0..2 {
        let td = dir.join(format!("t{t}"));
        write(
            &td.join("u.h5"),
            &[("u00000", coded(t, [3, 4, 4, 4], 0).into_dyn())],
        );
        let b = coded(t, [1, 4, 4, 4], 3)
            .mapv(f64::from)
            .into_shape_with_order((4, 4, 4));
        write(&td.join("b.h5"), &[("b00000", b.unwrap().into_dyn())]);
        write(
            &td.join("tn.h5"),
            &[("tn00000", coded(t, [1, 4, 4, 4], 9).into_dyn())],
        );
    }
    let data = DataConfig::new(template(dir), ["u", "b"]).with_target(["tn"]);
    Hdf5Dataset::new(
        data,
        CheckpointConfig::new(vec![0, 1], [4, 4, 4], [2, 2, 2]),
        1.0,
    )
}

fn err_text(ds: &Hdf5Dataset) -> String {
    ds.load().unwrap_err().to_string()
}

#[test]
fn stacks_features_and_checkpoints_and_cuts_subcubes() {
    let dir = tempfile::tempdir().unwrap();
    let (all, layout) = fixture(dir.path()).load_all().unwrap();
    assert_eq!(all.features.dim(), (16, 4, 2, 2, 2));
    assert_eq!(all.target.as_ref().unwrap().dim(), (16, 1, 2, 2, 2));
    assert_eq!(layout.blocks, [2, 2, 2]);
    assert_eq!(layout.per_cube, 8);
    // Sample 8 + 5 = checkpoint 1, block (1, 0, 1): origin (2, 0, 2).
    let sub: ndarray::ArrayView4<f32> = all.features.slice(s![13, .., .., .., ..]);
    for ((c, d, h, w), v) in sub.indexed_iter() {
        let want = 1000 + 100 * c + 16 * (d + 2) + 4 * h + (w + 2);
        assert_eq!(*v, want as f32, "channel {c} at {d},{h},{w}");
    }
    let tn = all.target.unwrap();
    assert_eq!(tn[[13, 0, 0, 0, 0]], (1000 + 900 + 2 * 16 + 2) as f32);
    assert_eq!(all.index, (0..16).collect::<Vec<_>>());
}

#[test]
fn cut_then_restore_is_the_identity() {
    let cube = coded(0, [2, 8, 4, 6], 0);
    for batch in [[2, 2, 2], [8, 4, 6], [4, 1, 3], [1, 1, 1]] {
        let subs = cut_cube(cube.view(), batch).unwrap();
        let back = restore_cube(subs.view(), [8, 4, 6]).unwrap();
        assert_eq!(back.dim(), (1, 2, 8, 4, 6));
        assert_eq!(
            back.index_axis(ndarray::Axis(0), 0),
            cube,
            "batch {batch:?}"
        );
    }
    // Several cubes: load_all's sub-cubes restore to the files' cubes, checkpoint by checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let (all, layout) = fixture(dir.path()).load_all().unwrap();
    let cubes = restore_cube(all.features.view(), layout.cube_size).unwrap();
    assert_eq!(cubes.dim(), (2, 4, 4, 4, 4));
    for t in 0..2 {
        let u = coded(t, [3, 4, 4, 4], 0);
        assert_eq!(cubes.slice(s![t, ..3, .., .., ..]), u);
        assert_eq!(cubes[[t, 3, 1, 2, 3]], (t * 1000 + 300 + 16 + 8 + 3) as f32);
    }
    // Incomplete sets and non-tiling sizes are errors.
    let e = restore_cube(all.features.slice(s![..7, .., .., .., ..]), [4, 4, 4]).unwrap_err();
    assert!(e.to_string().contains("multiple of 8"), "{e}");
    let e = cut_cube(cube.view(), [3, 2, 2]).unwrap_err().to_string();
    assert!(e.contains("do not tile"), "{e}");
}

#[test]
fn equidistant_sampling_takes_every_nth_point() {
    let cube = coded(0, [1, 8, 8, 4], 0);
    let s = sample_equidistant(cube.view(), [4, 2, 4]).unwrap();
    assert_eq!(s.dim(), (1, 4, 2, 4));
    for ((_, d, h, w), v) in s.indexed_iter() {
        assert_eq!(*v, cube[[0, 2 * d, 4 * h, w]]);
    }
    assert!(sample_equidistant(cube.view(), [3, 8, 4]).is_err());

    // Through the loader: 4^3 sampled to 2^3, one 2^3 sub-cube per checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let mut ds = fixture(dir.path());
    ds.chkpnt.sample_to_size = Some([2, 2, 2]);
    let (all, layout) = ds.load_all().unwrap();
    assert_eq!(layout.per_cube, 1);
    assert_eq!(all.features.dim(), (2, 4, 2, 2, 2));
    assert_eq!(
        all.features[[1, 0, 1, 1, 1]],
        (1000 + 2 * 16 + 2 * 4 + 2) as f32
    );
    // A size that does not divide is a setting error naming the key.
    ds.chkpnt.sample_to_size = Some([3, 2, 2]);
    assert!(err_text(&ds).contains("chkpnt - sample to size"));
}

#[test]
fn batch_num_limits_subcubes_per_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut ds = fixture(dir.path());
    ds.chkpnt.batch_num = 3;
    let (all, layout) = ds.load_all().unwrap();
    assert_eq!(all.features.dim().0, 6);
    assert!(!layout.is_complete());
    // Checkpoint 1's first sub-cube follows checkpoint 0's three.
    assert_eq!(all.features[[3, 0, 0, 0, 0]], 1000.0);
    ds.chkpnt.batch_num = 0;
    assert!(err_text(&ds).contains("chkpnt - batch_num"));
}

#[test]
fn shuffle_is_seeded_and_split_follows_train_fraction() {
    let dir = tempfile::tempdir().unwrap();
    let mut ds = fixture(dir.path());
    ds.train_fraction = 0.75;
    let plain = ds.load().unwrap();
    assert_eq!(plain.train.index, (0..12).collect::<Vec<_>>());
    assert_eq!(plain.valid.index, (12..16).collect::<Vec<_>>());

    ds.data.shuffle = true;
    let a = ds.clone().with_seed(5).load().unwrap();
    let b = ds.clone().with_seed(5).load().unwrap();
    let c = ds.clone().with_seed(6).load().unwrap();
    assert_eq!(a, b);
    assert_ne!(a.train.index, c.train.index);
    assert_ne!(a.train.index, plain.train.index);
    assert_eq!((a.train.len(), a.valid.len()), (12, 4));
    // Every sample once, and each sample is the unshuffled one its index names.
    let mut seen: Vec<usize> = a
        .train
        .index
        .iter()
        .chain(&a.valid.index)
        .copied()
        .collect();
    seen.sort();
    assert_eq!(seen, (0..16).collect::<Vec<_>>());
    let (all, _) = ds.load_all().unwrap();
    for (row, &i) in a.valid.index.iter().enumerate() {
        assert_eq!(
            a.valid.features.slice(s![row, .., .., .., ..]),
            all.features.slice(s![i, .., .., .., ..])
        );
        let (t_all, t_valid) = (
            all.target.as_ref().unwrap(),
            a.valid.target.as_ref().unwrap(),
        );
        assert_eq!(
            t_valid.slice(s![row, .., .., .., ..]),
            t_all.slice(s![i, .., .., .., ..])
        );
    }
    // At least one training sample; a fraction outside (0, 1] is an error.
    ds.train_fraction = 0.01;
    assert_eq!(ds.load().unwrap().train.len(), 1);
    ds.train_fraction = 0.0;
    assert!(err_text(&ds).contains("train_fraction"));
}

#[test]
fn labels_pick_datasets_and_default_is_last_sorted_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t0/u.h5");
    // Created out of name order: h5py lists keys sorted, so the last key is "z".
    let z = Array::from_elem(IxDyn(&[2, 2, 2]), 1.0f32);
    let a = Array::from_elem(IxDyn(&[2, 2, 2]), 2.0f32);
    write(&p, &[("z", z), ("a", a)]);
    let data = DataConfig::new(template(dir.path()), ["u"]);
    let mut ds = Hdf5Dataset::new(
        data,
        CheckpointConfig::new(vec![0], [2, 2, 2], [2, 2, 2]),
        1.0,
    );
    assert_eq!(ds.load().unwrap().train.features[[0, 0, 0, 0, 0]], 1.0);
    ds.data.features_label = Some(vec!["a".into()]);
    assert_eq!(ds.load().unwrap().train.features[[0, 0, 0, 0, 0]], 2.0);
    // One label per feature.
    ds.data.features_label = Some(vec!["a".into(), "z".into()]);
    assert!(err_text(&ds).contains("data - features_label"));
}

#[test]
fn loader_output_feeds_nothing_but_floats() {
    // float64 files load as float32 with the same values.
    let dir = tempfile::tempdir().unwrap();
    let (all, _) = fixture(dir.path()).load_all().unwrap();
    assert_eq!(all.features[[0, 3, 0, 0, 1]], 301.0);
}

// ---- one test per error ----------------------------------------------------------------

fn single(dir: &Path, size: [usize; 3]) -> Hdf5Dataset {
    let data = DataConfig::new(template(dir), ["u"]);
    Hdf5Dataset::new(data, CheckpointConfig::new(vec![0], size, size), 1.0)
}

fn path0(dir: &Path) -> PathBuf {
    dir.join("t0/u.h5")
}

#[test]
fn error_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = err_text(&single(dir.path(), [2, 2, 2]));
    assert!(e.contains(&path0(dir.path()).display().to_string()), "{e}");
    assert!(
        e.contains("file not found") && e.contains("checkpoint 0") && e.contains("\"u\""),
        "{e}"
    );
}

#[test]
fn error_missing_dataset_label() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &path0(dir.path()),
        &[("u00000", Array::zeros(IxDyn(&[2, 2, 2])).mapv(|v: f32| v))],
    );
    let mut ds = single(dir.path(), [2, 2, 2]);
    ds.data.features_label = Some(vec!["velocity".into()]);
    let e = err_text(&ds);
    assert!(
        e.contains("u.h5") && e.contains("(dataset \"velocity\")"),
        "{e}"
    );
    assert!(
        e.contains("[\"u00000\"]") && e.contains("features_label"),
        "{e}"
    );
}

#[test]
fn error_wrong_rank() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &path0(dir.path()),
        &[("u00000", Array::zeros(IxDyn(&[4, 4])).mapv(|v: f32| v))],
    );
    let e = err_text(&single(dir.path(), [2, 2, 2]));
    assert!(
        e.contains("u.h5") && e.contains("u00000") && e.contains("rank 2"),
        "{e}"
    );
}

#[test]
fn error_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &path0(dir.path()),
        &[(
            "u00000",
            Array::zeros(IxDyn(&[3, 4, 4, 4])).mapv(|v: f32| v),
        )],
    );
    let e = err_text(&single(dir.path(), [8, 8, 8]));
    assert!(
        e.contains("u.h5") && e.contains("[4, 4, 4]") && e.contains("[8, 8, 8]"),
        "{e}"
    );
    assert!(e.contains("initial size"), "{e}");
}

#[test]
fn error_non_float_data() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &path0(dir.path()),
        &[("u00000", Array::from_elem(IxDyn(&[2, 2, 2]), 7i32))],
    );
    let e = err_text(&single(dir.path(), [2, 2, 2]));
    assert!(
        e.contains("u.h5") && e.contains("u00000") && e.contains("int32"),
        "{e}"
    );
    assert!(e.contains("float32 or float64"), "{e}");
}

#[test]
fn error_non_finite_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Array::zeros(IxDyn(&[2, 4, 4, 4])).mapv(|v: f32| v);
    a[[1, 2, 3, 0]] = f32::NAN;
    a[[1, 3, 3, 3]] = f32::INFINITY;
    write(&path0(dir.path()), &[("u00000", a)]);
    let e = err_text(&single(dir.path(), [4, 4, 4]));
    assert!(e.contains("u.h5") && e.contains("u00000"), "{e}");
    assert!(
        e.contains("[channel 1, 2, 3, 0] is NaN") && e.contains("2 non-finite"),
        "{e}"
    );
    // float64 beyond the float32 range becomes infinite: said so.
    let big = Array::from_elem(IxDyn(&[2, 2, 2]), 1e300f64);
    write(&path0(dir.path()), &[("u00000", big)]);
    let e = err_text(&single(dir.path(), [2, 2, 2]));
    assert!(e.contains("inf after conversion to float32"), "{e}");
}

#[test]
fn error_empty_selection() {
    let dir = tempfile::tempdir().unwrap();
    let mut ds = single(dir.path(), [2, 2, 2]);
    ds.chkpnt.time.clear();
    let e = err_text(&ds);
    assert!(e.contains("no checkpoints") && e.contains(TEMPLATE), "{e}");
    let mut ds = single(dir.path(), [2, 2, 2]);
    ds.data.features.clear();
    assert!(err_text(&ds).contains("no features"));
    let mut ds = single(dir.path(), [2, 2, 2]);
    ds.data.target = Some(vec![]);
    assert!(err_text(&ds).contains("no target features"));
}

#[test]
fn error_truncated_or_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = path0(dir.path());
    write(
        &p,
        &[(
            "u00000",
            Array::zeros(IxDyn(&[3, 8, 8, 8])).mapv(|v: f32| v),
        )],
    );
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    let e = err_text(&single(dir.path(), [8, 8, 8]));
    assert!(e.contains("u.h5") && e.contains("truncated"), "{e}");
    std::fs::write(&p, b"not an HDF5 file at all").unwrap();
    let e = err_text(&single(dir.path(), [8, 8, 8]));
    assert!(
        e.contains("u.h5") && e.contains("cannot open it as HDF5"),
        "{e}"
    );
}

#[test]
fn error_channels_differ_between_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut ds = fixture(dir.path());
    let p = dir.path().join("t1/u.h5");
    write(&p, &[("u00000", coded(1, [2, 4, 4, 4], 0).into_dyn())]);
    ds.data.target = None;
    let e = err_text(&ds);
    assert!(
        e.contains(&p.display().to_string()) && e.contains("u00000"),
        "{e}"
    );
    assert!(
        e.contains("has 2 channel(s)") && e.contains("checkpoint 0 has 3"),
        "{e}"
    );
}

#[test]
fn error_batch_size_must_divide() {
    let dir = tempfile::tempdir().unwrap();
    let mut ds = fixture(dir.path());
    ds.chkpnt.batch_size = [3, 2, 2];
    let e = err_text(&ds);
    assert!(
        e.contains("chkpnt - batch_size") && e.contains("[3, 2, 2]") && e.contains("[4, 4, 4]"),
        "{e}"
    );
}

#[test]
fn error_unknown_template_placeholder() {
    let dir = tempfile::tempdir().unwrap();
    let mut ds = fixture(dir.path());
    ds.data.path = "data/{step}/{feature}.h5".into();
    let e = err_text(&ds);
    assert!(
        e.contains("data/{step}/{feature}.h5") && e.contains("{step}"),
        "{e}"
    );
}

// ---- synthetic data end to end ---------------------------------------------------------

#[test]
fn synthetic_files_load_and_generation_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let first = generate(dir.path(), 32, &[0, 1], 9).unwrap();
    let data = DataConfig::synthetic(dir.path(), 32);
    let ds = Hdf5Dataset::new(
        data.clone(),
        CheckpointConfig::new(vec![0, 1], [32; 3], [16; 3]),
        0.75,
    );
    let loaded = ds.load().unwrap();
    assert_eq!(first.written.len(), 4);
    assert!(
        first
            .written
            .contains(&dir.path().join("t1/u_dim32_fm15.h5"))
    );
    assert!(
        first
            .written
            .contains(&dir.path().join("t0/tn_dim32_fm15.h5"))
    );
    assert_eq!(loaded.train.features.dim(), (12, 3, 16, 16, 16));
    assert_eq!(
        loaded.valid.target.as_ref().unwrap().dim(),
        (4, 1, 16, 16, 16)
    );

    // The files hold exactly what the generator computes.
    let (u, tau) = Synthetic::new(32, 9).fields(1).unwrap();
    assert_eq!(
        read_cube(&dir.path().join("t1/u_dim32_fm15.h5"), Some("u00000")).unwrap(),
        u
    );
    assert_eq!(
        read_cube(&dir.path().join("t1/tn_dim32_fm15.h5"), None).unwrap(),
        tau
    );
    assert!(tau.iter().all(|&v| v >= -1e-6));

    // Second run: nothing written. A corrupt file is replaced, the rest kept.
    let again = generate(dir.path(), 32, &[0, 1], 9).unwrap();
    assert!(again.written.is_empty());
    assert_eq!(again.skipped.len(), 4);
    let broken = dir.path().join("t0/u_dim32_fm15.h5");
    std::fs::write(&broken, b"garbage").unwrap();
    let fixed = generate(dir.path(), 32, &[0, 1], 9).unwrap();
    assert_eq!(fixed.written, vec![broken]);
    let (all, layout) =
        Hdf5Dataset::new(data, CheckpointConfig::new(vec![0], [32; 3], [32; 3]), 1.0)
            .load_all()
            .unwrap();
    assert!(layout.is_complete());
    let (u0, _) = Synthetic::new(32, 9).fields(0).unwrap();
    assert_eq!(all.features.index_axis(ndarray::Axis(0), 0), u0);
}

#[test]
fn time_granularity_scales_the_checkpoint_in_paths() {
    let mut c = CheckpointConfig::new(vec![3], [2; 3], [2; 3]);
    c.time_granularity = 0.5;
    let ds = Hdf5Dataset::new(
        DataConfig::new("d/t{checkpoint:.2f}/{feature}.h5", ["u"]),
        c,
        1.0,
    );
    assert_eq!(ds.file_path(3, "b").unwrap(), PathBuf::from("d/t1.50/b.h5"));
    let ds = Hdf5Dataset {
        data: DataConfig::new("d/{checkpoint}", ["u"]),
        ..ds
    };
    assert_eq!(ds.file_path(3, "u").unwrap(), PathBuf::from("d/1.5"));
}

#[test]
fn contiguous_and_chunked_datasets_read_the_same() {
    // Contiguous float32 and float64 datasets are read from the file's bytes, chunked ones
    // through HDF5; every route gives the same values.
    let dir = tempfile::tempdir().unwrap();
    let cube = coded(1, [3, 4, 4, 4], 0);
    let p32 = dir.path().join("c32.h5");
    write(&p32, &[("u", cube.clone().into_dyn())]);
    let p64 = dir.path().join("c64.h5");
    write(&p64, &[("u", cube.mapv(f64::from).into_dyn())]);
    let chunked = dir.path().join("chunked.h5");
    hdf5::File::create(&chunked)
        .unwrap()
        .new_dataset_builder()
        .chunk((1, 2, 2, 2))
        .with_data(&cube)
        .create("u")
        .unwrap();
    for p in [&p32, &p64, &chunked] {
        assert_eq!(read_cube(p, None).unwrap(), cube, "{}", p.display());
    }
    let direct = |p: &Path| {
        let file = hdf5::File::open(p).unwrap();
        let ds = file.dataset("u").unwrap();
        let dtype = ds.dtype().unwrap().to_descriptor().unwrap();
        super::read::read_contiguous(p, &ds, &dtype, cube.len()).is_some()
    };
    assert!(direct(&p32) && direct(&p64) && !direct(&chunked));
}
