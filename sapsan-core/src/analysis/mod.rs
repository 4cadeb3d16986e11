//! Analysis of a prediction against its target: the numbers ([`metrics`]: MSE, the two-sample
//! Kolmogorov-Smirnov test, histograms, empirical CDFs), the images Sapsan's Evaluate logs
//! ([`plots`]: `pdf_cdf.png`, `slices_plot.png` and `spectrum.png` of the shell-binned spectra
//! of [`spectrum`]) and the training report Train logs
//! ([`report`]: `runtime_log.html`), and the physical baseline of a subgrid-stress prediction
//! ([`gradient_model`]).
//!
//! Everything is produced in memory (PNG bytes, an HTML string); nothing touches the working
//! directory. Text is drawn with the DejaVu Sans font compiled into the crate, so no system font
//! is needed.

mod colormap;
mod font;
pub mod gradient_model;
pub mod metrics;
pub mod plots;
pub mod report;
pub mod spectrum;

pub use gradient_model::GradientModel;
pub use metrics::{
    Histogram, KsResult, SortedSample, density_pair, joint_range, kolmogorov_sf, ks_2samp,
    ks_2samp_sorted, mse,
};
pub use plots::{
    SlicePanel, pdf_cdf_png, pdf_cdf_png_sorted, slice_panels, slices_png, spectrum_png,
};
pub use report::{EpochLoss, runtime_log_html};
pub use spectrum::{Spectrum, SpectrumKind, field_spectrum, mean_spectrum};
