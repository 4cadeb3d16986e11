//! The images Evaluate logs, rendered in memory as PNG bytes, one file each:
//! - [`pdf_cdf`]: densities (log y) and empirical CDFs of target and prediction, with the KS gap
//!   marked (`pdf_cdf.png`);
//! - [`slices`]: a 2D slice of target and prediction side by side on one colour scale
//!   (`slices_plot.png`);
//! - [`spectrum`]: the shell-binned spectra of target and prediction with a k^(-5/3) line
//!   (`spectrum.png`).
//!
//! This file holds what they share: size, colours, fonts, the legend and grid style, and the
//! PNG encoding. All are 1440x720, twice Sapsan's 720x360, so they stay sharp on high-density
//! screens.
use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

use super::font::{FAMILY, ensure_font};
use crate::error::{Error, Result};

pub mod pdf_cdf;
pub mod slices;
pub mod spectrum;

pub use pdf_cdf::{PDF_BINS, pdf_cdf_png, pdf_cdf_png_sorted};
pub use slices::{SlicePanel, render_slices, shared_color_range, slice_panels, slices_png};
pub use spectrum::spectrum_png;

/// Width of both images in pixels.
pub const WIDTH: u32 = 1440;
/// Height of both images in pixels.
pub const HEIGHT: u32 = 720;

/// matplotlib's first two default colours (`tab:blue`, `tab:orange`): target and prediction.
pub(crate) const TARGET_COLOR: RGBColor = RGBColor(31, 119, 180);
pub(crate) const PREDICTION_COLOR: RGBColor = RGBColor(255, 127, 14);
pub(crate) const GRID_COLOR: RGBColor = RGBColor(225, 225, 225);

pub(crate) const TITLE_SIZE: u32 = 32;
pub(crate) const AXIS_DESC_SIZE: u32 = 26;
pub(crate) const TICK_SIZE: u32 = 22;
pub(crate) const LEGEND_SIZE: u32 = 24;

pub(crate) fn draw_err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::Analysis(format!("drawing {what} failed: {e}"))
}

/// Renders with an RGB bitmap backend into memory and encodes the pixels as PNG.
pub(crate) fn render_png(
    what: &'static str,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<Vec<u8>> {
    ensure_font()?;
    let mut pixels = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err(what))?;
        draw(&root)?;
        root.present().map_err(draw_err(what))?;
    }
    encode_png(&pixels, WIDTH, HEIGHT)
        .map_err(|e| Error::Analysis(format!("encoding {what} as PNG failed: {e}")))
}

fn encode_png(
    rgb: &[u8],
    width: u32,
    height: u32,
) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::with_capacity(rgb.len() / 8);
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Default);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

/// Formats like C's `%.{sig}g`: fixed notation for moderate magnitudes, scientific otherwise.
pub(crate) fn fmt_g(v: f64, sig: usize) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.abs().log10().floor() as i32;
    if exp < -4 || exp >= sig as i32 {
        let s = format!("{:.*e}", sig.saturating_sub(1), v);
        // 1.500e-5 -> 1.5e-5
        match s.split_once('e') {
            Some((m, e)) if m.contains('.') => {
                format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.'))
            }
            _ => s,
        }
    } else {
        let decimals = (sig as i32 - 1 - exp).max(0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

/// The legend box of every plot, at `position`; its entries come from the series' labels.
pub(crate) fn draw_legend<'a, DB, CT>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
    what: &'static str,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FAMILY, LEGEND_SIZE))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .margin(14)
        .legend_area_size(52)
        .draw()
        .map_err(draw_err(what))
}

/// A line series' sample in the legend: a 36-pixel stroke in its style.
pub(crate) fn legend_line(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 36, y)], style)
}

/// The axes of a line plot: descriptions, `labels` = (x, y) tick counts, values as `%.3g` on x
/// and `%.2g` on y, a light grid at the major ticks only.
pub(crate) fn draw_grid<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    (x_desc, y_desc): (&str, &str),
    (x_labels, y_labels): (usize, usize),
    what: &'static str,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style((FAMILY, AXIS_DESC_SIZE))
        .label_style((FAMILY, TICK_SIZE))
        .x_labels(x_labels)
        .y_labels(y_labels)
        .x_label_formatter(&|v| fmt_g(*v, 3))
        .y_label_formatter(&|v| fmt_g(*v, 2))
        .bold_line_style(GRID_COLOR)
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(draw_err(what))
}

/// What the plot tests share: decoding the PNG bytes and writing them out for a look.
#[cfg(test)]
pub(crate) mod test_png {
    /// Decodes PNG bytes into (width, height, RGB pixels).
    pub(crate) fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    /// `SAPSAN_PLOT_DIR=/tmp/plots cargo test ...` writes the images for a look.
    pub(crate) fn write_if_asked(name: &str, bytes: impl AsRef<[u8]>) {
        if let Some(dir) = std::env::var_os("SAPSAN_PLOT_DIR") {
            std::fs::write(std::path::Path::new(&dir).join(name), bytes).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fmt_g_matches_printf() {
        assert_eq!(fmt_g(0.0412, 4), "0.0412");
        assert_eq!(fmt_g(1.5e-7, 4), "1.5e-7");
        assert_eq!(fmt_g(123456.0, 4), "1.235e5");
        assert_eq!(fmt_g(2.0, 4), "2");
        assert_eq!(fmt_g(0.99999, 3), "1");
        assert_eq!(fmt_g(-0.25, 3), "-0.25");
    }
}
