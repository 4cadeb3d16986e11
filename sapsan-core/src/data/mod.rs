//! Data: Sapsan's HDF5 layout, samplers, sub-cube batching and synthetic turbulence.
//!
//! - [`DataConfig`] / [`CheckpointConfig`]: Sapsan's `data - ...` and `chkpnt - ...` settings.
//! - [`format_path`]: the Python-style path template (`t{checkpoint:1.0f}/{feature}_dim32_fm15.h5`).
//! - [`Hdf5Dataset`]: reads the files, stacks features, samples, cuts sub-cubes, shuffles and
//!   splits; [`restore_cube`] puts sub-cubes back together.
//! - [`read_cube`]: one dataset of one file (contiguous datasets straight from the file's
//!   bytes, the rest through HDF5).
//! - `describe`: the dataset as a run's MLflow input ([`Hdf5Dataset::describe`], with a
//!   digest of the files' contents).
//! - [`synthetic`]: writes divergence-free Kolmogorov-spectrum turbulence in that layout.
mod config;
mod dataset;
mod describe;
pub(crate) mod fft;
mod read;
pub mod synthetic;
mod template;

pub use config::{CheckpointConfig, DataConfig};
pub use dataset::{
    CubeLayout, Hdf5Dataset, Loaded, Samples, cut_cube, restore_cube, sample_equidistant,
};
pub use read::read_cube;
pub use synthetic::{Generated, Synthetic, generate};
pub use template::format_path;

#[cfg(test)]
mod tests;
