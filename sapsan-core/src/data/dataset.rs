//! [`Hdf5Dataset`]: Sapsan's HDF5 layout read into sub-cube batches.
//!
//! For every checkpoint and feature one file, named by the path template
//! ([`format_path`](super::format_path)); inside it one dataset of shape (C, D, H, W) or (D, H, W)
//! (read as C = 1), float32 or float64. Per checkpoint the features are stacked along C, the cube is
//! optionally decimated ([`sample_equidistant`]) and cut into non-overlapping sub-cubes
//! ([`cut_cube`]); the checkpoints follow each other along the sample axis N. [`restore_cube`]
//! undoes the cut.
use std::path::PathBuf;

use ndarray::{Array4, Array5, ArrayView4, ArrayView5, ArrayViewMut5, Axis, s};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use super::config::{CheckpointConfig, DataConfig};
use super::read::read_named;
use super::template::format_path;
use crate::{Error, Result};

/// Loads Sapsan-layout HDF5 data: [`DataConfig`] says which files, [`CheckpointConfig`] which
/// checkpoints and how to cut them.
#[derive(Debug, Clone, PartialEq)]
pub struct Hdf5Dataset {
    /// Files, features, targets, labels, shuffling.
    pub data: DataConfig,
    /// Checkpoints, cube size, sampling, sub-cube size.
    pub chkpnt: CheckpointConfig,
    /// Share of the sub-cubes used for training, in (0, 1]; the rest is validation.
    pub train_fraction: f64,
    /// Seed of the shuffle (used when `data.shuffle` is set).
    pub seed: u64,
}

/// A set of sub-cubes with their targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    /// Input sub-cubes, shape (N, C, D, H, W) with C the stacked feature channels.
    pub features: Array5<f32>,
    /// Target sub-cubes, shape (N, C_target, D, H, W), when a target was configured.
    pub target: Option<Array5<f32>>,
    /// Where each sample sits in cut order: `checkpoint_position * per_cube + sub_cube`.
    pub index: Vec<usize>,
}

impl Samples {
    /// Number of samples (N).
    pub fn len(&self) -> usize {
        self.features.len_of(Axis(0))
    }

    /// `true` when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How the cubes were cut: what [`restore_cube`] needs to put sub-cubes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CubeLayout {
    /// Number of checkpoints loaded.
    pub checkpoints: usize,
    /// Size (D, H, W) of each checkpoint's cube after sampling.
    pub cube_size: [usize; 3],
    /// Size (D, H, W) of one sub-cube.
    pub batch_size: [usize; 3],
    /// Sub-cubes along each axis: `cube_size / batch_size`.
    pub blocks: [usize; 3],
    /// Sub-cubes taken from each cube: `min(batch_num, blocks product)`.
    pub per_cube: usize,
}

impl CubeLayout {
    /// `true` when every sub-cube of each cube is kept, so [`restore_cube`] can rebuild the cubes.
    pub fn is_complete(&self) -> bool {
        self.per_cube == self.blocks.iter().product::<usize>()
    }
}

/// The result of [`Hdf5Dataset::load`].
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// Training samples (the first `floor(N * train_fraction)`, at least one, after shuffling).
    pub train: Samples,
    /// Validation samples: the rest (may be empty, for example with `train_fraction = 1`).
    pub valid: Samples,
    /// How the cubes were cut.
    pub layout: CubeLayout,
}

impl Hdf5Dataset {
    /// A dataset reading `data` at the checkpoints of `chkpnt`, training on `train_fraction` of
    /// the sub-cubes; shuffle seed 0. Settings are checked by [`load`](Self::load).
    pub fn new(data: DataConfig, chkpnt: CheckpointConfig, train_fraction: f64) -> Self {
        Hdf5Dataset {
            data,
            chkpnt,
            train_fraction,
            seed: 0,
        }
    }

    /// The same dataset with shuffle seed `seed`.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The file holding `feature` at checkpoint `checkpoint` (a checkpoint number, multiplied by
    /// the time granularity before formatting).
    pub fn file_path(&self, checkpoint: usize, feature: &str) -> Result<PathBuf> {
        let value = self.chkpnt.time_granularity * checkpoint as f64;
        format_path(&self.data.path, value, feature).map(PathBuf::from)
    }

    /// Checks the settings and returns how the cubes will be cut.
    pub fn layout(&self) -> Result<CubeLayout> {
        let c = &self.chkpnt;
        let template = PathBuf::from(&self.data.path);
        if c.time.is_empty() {
            return Err(Error::Data {
                path: template,
                dataset: None,
                reason: "no checkpoints selected (chkpnt - time is empty); list at least one"
                    .into(),
            });
        }
        if self.data.features.is_empty() {
            return Err(Error::Data {
                path: template,
                dataset: None,
                reason: "no features selected (data - features is empty); list at least one".into(),
            });
        }
        if self.data.target.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::Data {
                path: template,
                dataset: None,
                reason: "no target features selected (data - target is an empty list); list at \
                         least one or set it to None"
                    .into(),
            });
        }
        check_labels(
            "data - features_label",
            &self.data.features,
            &self.data.features_label,
        )?;
        if let Some(t) = &self.data.target {
            check_labels("data - target_label", t, &self.data.target_label)?;
        }
        if self.data.axis != 3 {
            return Err(setting(
                "data - axis",
                self.data.axis,
                "only 3D cubes (axis = 3) are supported".into(),
            ));
        }
        if !(self.train_fraction > 0.0 && self.train_fraction <= 1.0) {
            return Err(setting(
                "train_fraction",
                self.train_fraction,
                "must be in (0, 1]".into(),
            ));
        }
        if !(c.time_granularity.is_finite()) {
            return Err(setting(
                "chkpnt - time_granularity",
                c.time_granularity,
                "must be a finite number".into(),
            ));
        }
        if c.initial_size.contains(&0) {
            return Err(setting(
                "chkpnt - initial size",
                py_list(&c.initial_size),
                "sizes must be at least 1".into(),
            ));
        }
        if let Some(to) = c.sample_to_size {
            for a in 0..3 {
                if to[a] == 0 || !c.initial_size[a].is_multiple_of(to[a]) {
                    return Err(setting(
                        "chkpnt - sample to size",
                        py_list(&to),
                        format!(
                            "equidistant sampling takes every n-th point, so each size must divide \
                             the initial size {}; axis {a} does not",
                            py_list(&c.initial_size)
                        ),
                    ));
                }
            }
        }
        let cube = c.cube_size();
        let mut blocks = [0; 3];
        for a in 0..3 {
            if c.batch_size[a] == 0 || !cube[a].is_multiple_of(c.batch_size[a]) {
                return Err(setting(
                    "chkpnt - batch_size",
                    py_list(&c.batch_size),
                    format!(
                        "sub-cubes must tile the cube {} exactly; axis {a} does not divide (choose \
                         a divisor of each cube size)",
                        py_list(&cube)
                    ),
                ));
            }
            blocks[a] = cube[a] / c.batch_size[a];
        }
        if c.batch_num == 0 {
            return Err(setting(
                "chkpnt - batch_num",
                0,
                "must be at least 1 (sub-cubes taken per checkpoint)".into(),
            ));
        }
        Ok(CubeLayout {
            checkpoints: c.time.len(),
            cube_size: cube,
            batch_size: c.batch_size,
            blocks,
            per_cube: c.batch_num.min(blocks.iter().product()),
        })
    }

    /// Reads every checkpoint and returns all sub-cubes in cut order (checkpoints in the order of
    /// `chkpnt.time`, sub-cubes of each cube as [`cut_cube`] orders them), unshuffled and unsplit:
    /// what evaluation and [`restore_cube`] want.
    pub fn load_all(&self) -> Result<(Samples, CubeLayout)> {
        let layout = self.layout()?;
        // Sub-cubes are cut straight into the result, allocated once the channels are known.
        let (mut features, mut targets) = (None, None);
        let mut position = 0;
        // Channels of each file at the first checkpoint: later checkpoints must match.
        let (mut x_channels, mut y_channels) = (Vec::new(), Vec::new());
        // The files of as many checkpoints as there are threads are read at once (contiguous
        // datasets are read outside HDF5's lock, see `read`); then stacked and cut in order.
        // Groups bound the memory to one group of whole cubes besides the cut sub-cubes.
        let group = rayon::current_num_threads().max(1);
        for times in self.chkpnt.time.chunks(group) {
            let read: Vec<_> = times
                .par_iter()
                .map(|&t| {
                    let x = self.read_files(
                        t,
                        &self.data.features,
                        self.data.features_label.as_deref(),
                    );
                    let y = self.data.target.as_ref().map(|target| {
                        self.read_files(t, target, self.data.target_label.as_deref())
                    });
                    (x, y)
                })
                .collect();
            for (&t, (x, y)) in times.iter().zip(read) {
                let x = self.stack(t, x?, &mut x_channels)?;
                cut_into(x.view(), &layout, position, &mut features)?;
                if let Some(y) = y {
                    let y = self.stack(t, y?, &mut y_channels)?;
                    cut_into(y.view(), &layout, position, &mut targets)?;
                }
                position += 1;
            }
        }
        let features = features.unwrap_or_else(|| Array5::zeros((0, 0, 0, 0, 0)));
        let n = features.len_of(Axis(0));
        Ok((
            Samples {
                features,
                target: targets,
                index: (0..n).collect(),
            },
            layout,
        ))
    }

    /// Reads every checkpoint, cuts the cubes, shuffles the sub-cubes when `data.shuffle` is set
    /// (seeded by `seed`) and splits them into training and validation samples.
    pub fn load(&self) -> Result<Loaded> {
        let (all, layout) = self.load_all()?;
        let n = all.len();
        let mut order: Vec<usize> = (0..n).collect();
        if self.data.shuffle {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(self.seed);
            order.shuffle(&mut rng);
        }
        let n_train = ((n as f64 * self.train_fraction).floor() as usize).clamp(1, n);
        let pick = |idx: &[usize]| Samples {
            features: all.features.select(Axis(0), idx),
            target: all.target.as_ref().map(|t| t.select(Axis(0), idx)),
            index: idx.to_vec(),
        };
        Ok(Loaded {
            train: pick(&order[..n_train]),
            valid: pick(&order[n_train..]),
            layout,
        })
    }

    /// The files of `columns` at checkpoint `t`: for each its path, cube and dataset name.
    fn read_files(
        &self,
        t: usize,
        columns: &[String],
        labels: Option<&[String]>,
    ) -> Result<Vec<(PathBuf, Array4<f32>, String)>> {
        let mut parts = Vec::with_capacity(columns.len());
        for (i, feature) in columns.iter().enumerate() {
            let path = self.file_path(t, feature)?;
            if !path.is_file() {
                return Err(Error::Data {
                    path,
                    dataset: labels.map(|l| l[i].clone()),
                    reason: format!(
                        "file not found (checkpoint {t}, feature {feature:?}, from data - path {:?}); \
                         check the template, the checkpoint list and the working directory",
                        self.data.path
                    ),
                });
            }
            let (cube, name) = read_named(&path, labels.map(|l| l[i].as_str()))?;
            parts.push((path, cube, name));
        }
        Ok(parts)
    }

    /// The (C, D, H, W) cube of checkpoint `t` from its files `read` (see [`Self::read_files`]):
    /// the columns stacked along C, sampled. `channels` holds each column's channel count from
    /// the first checkpoint (empty before it).
    fn stack(
        &self,
        t: usize,
        read: Vec<(PathBuf, Array4<f32>, String)>,
        channels: &mut Vec<usize>,
    ) -> Result<Array4<f32>> {
        let first = channels.is_empty();
        let mut parts = Vec::with_capacity(read.len());
        for (i, (path, cube, name)) in read.into_iter().enumerate() {
            let (_, d, h, w) = cube.dim();
            if [d, h, w] != self.chkpnt.initial_size {
                return Err(Error::Data {
                    path,
                    dataset: Some(name),
                    reason: format!(
                        "the cube is {}, but chkpnt - initial size is {}; set initial_size to the \
                         size of the files",
                        py_list(&[d, h, w]),
                        py_list(&self.chkpnt.initial_size)
                    ),
                });
            }
            let c = cube.dim().0;
            if first {
                channels.push(c);
            } else if channels[i] != c {
                return Err(Error::Data {
                    path,
                    dataset: Some(name),
                    reason: format!(
                        "has {c} channel(s) but the same feature at checkpoint {} has {}; every \
                         checkpoint must hold the same channels",
                        self.chkpnt.time[0], channels[i]
                    ),
                });
            }
            parts.push(cube);
        }
        let cube = if parts.len() == 1 {
            parts.pop().unwrap_or_else(|| Array4::zeros((0, 0, 0, 0)))
        } else {
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Data {
                path: PathBuf::from(&self.data.path),
                dataset: None,
                reason: format!("cannot stack the features of checkpoint {t}: {e}"),
            })?
        };
        match self.chkpnt.sample_to_size {
            Some(to) => sample_equidistant(cube.view(), to),
            None => Ok(cube),
        }
    }
}

/// Cuts the first `layout.per_cube` sub-cubes of the cube of the checkpoint at `position` (in
/// `chkpnt.time` order) into their rows of `out`, allocating `out` for all checkpoints with the
/// cube's channels when it is `None`.
fn cut_into(
    cube: ArrayView4<f32>,
    layout: &CubeLayout,
    position: usize,
    out: &mut Option<Array5<f32>>,
) -> Result<()> {
    let [c, ..] = dims(&cube);
    let [bd, bh, bw] = layout.batch_size;
    let per_cube = layout.per_cube;
    let out =
        out.get_or_insert_with(|| Array5::zeros((layout.checkpoints * per_cube, c, bd, bh, bw)));
    let rows = s![
        position * per_cube..(position + 1) * per_cube,
        ..,
        ..,
        ..,
        ..
    ];
    cut_cube_into(cube, layout.batch_size, out.slice_mut(rows))
}

/// Sapsan's `EquidistantSampling`: keeps every `size / to`-th point along each spatial axis,
/// starting at 0. Each `to` must divide the cube's size.
pub fn sample_equidistant(cube: ArrayView4<f32>, to: [usize; 3]) -> Result<Array4<f32>> {
    let [_, d, h, w] = dims(&cube);
    let from = [d, h, w];
    let mut step = [1isize; 3];
    for a in 0..3 {
        if to[a] == 0 || !from[a].is_multiple_of(to[a]) {
            return Err(setting(
                "chkpnt - sample to size",
                py_list(&to),
                format!("each size must divide the cube size {}", py_list(&from)),
            ));
        }
        step[a] = (from[a] / to[a]) as isize;
    }
    Ok(cube
        .slice(s![.., ..;step[0], ..;step[1], ..;step[2]])
        .to_owned())
}

/// Cuts a (C, D, H, W) cube into non-overlapping sub-cubes of `batch` = (d, h, w), returned as
/// (N, C, d, h, w). Order: the D block index varies slowest, the W block index fastest (row-major
/// over the block grid). Each `batch` size must divide the cube's size.
pub fn cut_cube(cube: ArrayView4<f32>, batch: [usize; 3]) -> Result<Array5<f32>> {
    let [c, d, h, w] = dims(&cube);
    let size = [d, h, w];
    let blocks = block_grid(size, batch, "chkpnt - batch_size")?;
    let n = blocks.iter().product();
    let mut out = Array5::<f32>::zeros((n, c, batch[0], batch[1], batch[2]));
    cut_cube_into(cube, batch, out.view_mut())?;
    Ok(out)
}

/// [`cut_cube`] into `out`: its N rows receive the first N sub-cubes in cut order. `out` must
/// have the cube's channels and the sub-cube size.
fn cut_cube_into(
    cube: ArrayView4<f32>,
    batch: [usize; 3],
    mut out: ArrayViewMut5<f32>,
) -> Result<()> {
    let [c, d, h, w] = dims(&cube);
    let blocks = block_grid([d, h, w], batch, "chkpnt - batch_size")?;
    let (n, oc, od, oh, ow) = out.dim();
    if [oc, od, oh, ow] != [c, batch[0], batch[1], batch[2]] || n > blocks.iter().product() {
        return Err(setting(
            "data - features",
            py_list(&[c, d, h, w]),
            format!(
                "checkpoints disagree in their channels or sizes: {n} sub-cubes of {} do not fit                  {}; every checkpoint's files must hold the same channels",
                py_list(&[c, batch[0], batch[1], batch[2]]),
                py_list(&[oc, od, oh, ow])
            ),
        ));
    }
    if n == 1 && blocks == [1, 1, 1] {
        // The whole cube is the one sub-cube: a flat copy when both are contiguous.
        if let (Some(src), Some(dst)) = (cube.as_slice(), out.as_slice_mut()) {
            dst.copy_from_slice(src);
            return Ok(());
        }
    }
    for (i, mut sub) in out.outer_iter_mut().enumerate() {
        let (z, y, x) = block_origin(i, blocks, batch);
        sub.assign(&cube.slice(s![.., z..z + batch[0], y..y + batch[1], x..x + batch[2]]));
    }
    Ok(())
}

/// Puts sub-cubes (N, C, d, h, w) in [`cut_cube`] order back into full cubes of `cube_size`,
/// returned as (N / per_cube, C, D, H, W). N must be a whole number of cubes.
pub fn restore_cube(subcubes: ArrayView5<f32>, cube_size: [usize; 3]) -> Result<Array5<f32>> {
    let (n, c, bd, bh, bw) = subcubes.dim();
    let batch = [bd, bh, bw];
    let blocks = block_grid(cube_size, batch, "cube size")?;
    let per_cube: usize = blocks.iter().product();
    if !n.is_multiple_of(per_cube) {
        return Err(setting(
            "sub-cubes",
            n,
            format!(
                "a cube of {} holds {per_cube} sub-cubes of {}, so the count must be a multiple \
                 of {per_cube} (were some dropped by chkpnt - batch_num or the split?)",
                py_list(&cube_size),
                py_list(&batch)
            ),
        ));
    }
    let mut out = Array5::<f32>::zeros((n / per_cube, c, cube_size[0], cube_size[1], cube_size[2]));
    for (i, sub) in subcubes.outer_iter().enumerate() {
        let (z, y, x) = block_origin(i % per_cube, blocks, batch);
        out.slice_mut(s![i / per_cube, .., z..z + bd, y..y + bh, x..x + bw])
            .assign(&sub);
    }
    Ok(out)
}

fn block_grid(size: [usize; 3], batch: [usize; 3], name: &str) -> Result<[usize; 3]> {
    let mut blocks = [0; 3];
    for a in 0..3 {
        if batch[a] == 0 || !size[a].is_multiple_of(batch[a]) {
            return Err(setting(
                name,
                py_list(&batch),
                format!(
                    "sub-cubes of {} do not tile a cube of {} (axis {a}); choose sizes that divide",
                    py_list(&batch),
                    py_list(&size)
                ),
            ));
        }
        blocks[a] = size[a] / batch[a];
    }
    Ok(blocks)
}

fn block_origin(i: usize, blocks: [usize; 3], batch: [usize; 3]) -> (usize, usize, usize) {
    let x = i % blocks[2];
    let y = (i / blocks[2]) % blocks[1];
    let z = i / (blocks[2] * blocks[1]);
    (z * batch[0], y * batch[1], x * batch[2])
}

fn dims(cube: &ArrayView4<f32>) -> [usize; 4] {
    let (c, d, h, w) = cube.dim();
    [c, d, h, w]
}

fn check_labels(name: &str, columns: &[String], labels: &Option<Vec<String>>) -> Result<()> {
    match labels {
        Some(l) if l.len() != columns.len() => Err(setting(
            name,
            format!("{l:?}"),
            format!(
                "gives {} label(s) for {} feature(s) {columns:?}; give one dataset name per \
                 feature or None",
                l.len(),
                columns.len()
            ),
        )),
        _ => Ok(()),
    }
}

fn setting(name: &str, value: impl ToString, reason: String) -> Error {
    Error::Setting {
        name: name.to_string(),
        value: value.to_string(),
        reason,
    }
}

/// `[32, 32, 32]`, as Python prints a list.
fn py_list(v: &[usize]) -> String {
    let items: Vec<String> = v.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(", "))
}
