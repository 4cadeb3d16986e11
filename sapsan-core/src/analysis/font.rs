//! The font compiled into the crate and its registration with plotters.
use std::sync::OnceLock;

use plotters::style::FontStyle;

use crate::error::{Error, Result};

/// DejaVu Sans 2.37 (see `sapsan-core/assets/README.md` for its licence).
static DEJAVU_SANS: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Font family name the plots ask plotters for.
pub(crate) const FAMILY: &str = "sapsan-dejavu-sans";

/// Registers the shipped font (once per process) under [`FAMILY`] and under `sans-serif`, the
/// family plotters falls back to where a style names none.
pub(crate) fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            for name in [FAMILY, "sans-serif"] {
                plotters::style::register_font(name, FontStyle::Normal, DEJAVU_SANS)
                    .map_err(|_| format!("the shipped font could not be parsed as {name}"))?;
            }
            Ok(())
        })
        .clone()
        .map_err(Error::Analysis)
}
