//! The two images of Sapsan's Evaluate, rendered in memory as PNG bytes:
//! - [`pdf_cdf_png`]: densities (log y) and empirical CDFs of target and prediction, with the KS
//!   gap marked (`pdf_cdf.png`);
//! - [`slices_png`]: a 2D slice of target and prediction side by side on one colour scale
//!   (`slices_plot.png`).
//!
//! Both are 1440x720, twice Sapsan's 720x360, so they stay sharp on high-density screens.
use ndarray::ArrayView2;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::colormap::{VIRIDIS, viridis};
use super::font::{FAMILY, ensure_font};
use super::metrics::{Histogram, KsResult, SortedSample, joint_range};
use crate::error::{Error, Result};

/// Width of both images in pixels.
pub const WIDTH: u32 = 1440;
/// Height of both images in pixels.
pub const HEIGHT: u32 = 720;
/// Number of histogram bins of the PDF panel (as Sapsan).
pub const PDF_BINS: usize = 100;
/// Points per CDF curve: more than the panel is wide, so the steps are exact to the pixel.
const CDF_POINTS: usize = 2000;

/// matplotlib's first two default colours (`tab:blue`, `tab:orange`): target and prediction.
pub(super) const TARGET_COLOR: RGBColor = RGBColor(31, 119, 180);
pub(super) const PREDICTION_COLOR: RGBColor = RGBColor(255, 127, 14);
const GAP_COLOR: RGBColor = RGBColor(214, 39, 40);
pub(super) const GRID_COLOR: RGBColor = RGBColor(225, 225, 225);

pub(super) const TITLE_SIZE: u32 = 32;
pub(super) const AXIS_DESC_SIZE: u32 = 26;
pub(super) const TICK_SIZE: u32 = 22;
pub(super) const LEGEND_SIZE: u32 = 24;

pub(super) fn draw_err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::Analysis(format!("drawing {what} failed: {e}"))
}

/// Renders with an RGB bitmap backend into memory and encodes the pixels as PNG.
pub(super) fn render_png(
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

/// `pdf_cdf.png`: left, the densities of `target` and `prediction` as step histograms
/// ([`PDF_BINS`] bins over the joint range, log y axis, legend); right, the two empirical CDFs
/// with a red dashed line where they are furthest apart (`ks.position`) and a box giving the KS
/// statistic, p-value and position. Fails on empty inputs, NaN values or no finite value.
pub fn pdf_cdf_png(target: &[f32], prediction: &[f32], ks: &KsResult) -> Result<Vec<u8>> {
    let (t, p) = SortedSample::new_pair(target, prediction)?;
    pdf_cdf_png_sorted(&t, &p, ks)
}

/// [`pdf_cdf_png`] on samples already sorted (for example the ones given to
/// [`super::ks_2samp_sorted`]), which saves sorting them twice.
pub fn pdf_cdf_png_sorted(
    target: &SortedSample,
    prediction: &SortedSample,
    ks: &KsResult,
) -> Result<Vec<u8>> {
    let (lo, hi) = joint_range(target.values(), prediction.values())?;
    let ht = Histogram::new(target.values(), lo, hi, PDF_BINS)?;
    let hp = Histogram::new(prediction.values(), lo, hi, PDF_BINS)?;
    render_png("pdf_cdf.png", |root| {
        let (left, right) = root.split_horizontally(WIDTH / 2);
        draw_pdf_panel(&left, &ht, &hp)?;
        draw_cdf_panel(&right, target, prediction, ks, lo, hi)
    })
}

/// Step outline of a density histogram, dropped to `floor` where a bin is empty (a log axis has
/// no zero).
fn step_outline(h: &Histogram, floor: f64) -> Vec<(f64, f64)> {
    let edges = h.edges();
    let mut pts = Vec::with_capacity(2 * h.bins() + 2);
    pts.push((edges[0], floor));
    for (i, d) in h.density().into_iter().enumerate() {
        let d = if d > 0.0 { d } else { floor };
        pts.push((edges[i], d));
        pts.push((edges[i + 1], d));
    }
    pts.push((edges[h.bins()], floor));
    pts
}

fn draw_pdf_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    ht: &Histogram,
    hp: &Histogram,
) -> Result<()> {
    const WHAT: &str = "the PDF panel of pdf_cdf.png";
    let positive = ht
        .density()
        .into_iter()
        .chain(hp.density())
        .filter(|&d| d > 0.0);
    let (dmin, dmax) = positive.fold((f64::INFINITY, 0.0f64), |(a, b), d| (a.min(d), b.max(d)));
    // Room below the smallest bar (where empty bins drop to) and above the highest.
    let (ymin, ymax) = if dmax > 0.0 {
        (dmin / 3.0, dmax * 3.0)
    } else {
        (0.1, 10.0)
    };
    let mut chart = ChartBuilder::on(area)
        .caption("Probability density", (FAMILY, TITLE_SIZE))
        .margin(20)
        .x_label_area_size(70)
        .y_label_area_size(110)
        .build_cartesian_2d(ht.lo..ht.hi, (ymin..ymax).log_scale())
        .map_err(draw_err(WHAT))?;
    chart
        .configure_mesh()
        .x_desc("Values")
        .y_desc("PDF")
        .axis_desc_style((FAMILY, AXIS_DESC_SIZE))
        .label_style((FAMILY, TICK_SIZE))
        .x_labels(7)
        .x_label_formatter(&|v| fmt_g(*v, 3))
        .y_label_formatter(&|v| fmt_g(*v, 2))
        .bold_line_style(GRID_COLOR)
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(draw_err(WHAT))?;
    for (h, color, label) in [
        (ht, TARGET_COLOR, "target"),
        (hp, PREDICTION_COLOR, "prediction"),
    ] {
        let style = color.stroke_width(3);
        chart
            .draw_series(LineSeries::new(step_outline(h, ymin), style))
            .map_err(draw_err(WHAT))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 36, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, LEGEND_SIZE))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .margin(14)
        .legend_area_size(52)
        .draw()
        .map_err(draw_err(WHAT))?;
    Ok(())
}

fn draw_cdf_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    target: &SortedSample,
    prediction: &SortedSample,
    ks: &KsResult,
    lo: f64,
    hi: f64,
) -> Result<()> {
    const WHAT: &str = "the CDF panel of pdf_cdf.png";
    let mut chart = ChartBuilder::on(area)
        .caption("Cumulative distribution", (FAMILY, TITLE_SIZE))
        .margin(20)
        .x_label_area_size(70)
        .y_label_area_size(90)
        .build_cartesian_2d(lo..hi, -0.02f64..1.02f64)
        .map_err(draw_err(WHAT))?;
    chart
        .configure_mesh()
        .x_desc("Values")
        .y_desc("CDF")
        .axis_desc_style((FAMILY, AXIS_DESC_SIZE))
        .label_style((FAMILY, TICK_SIZE))
        .x_labels(7)
        .y_labels(6)
        .x_label_formatter(&|v| fmt_g(*v, 3))
        .y_label_formatter(&|v| fmt_g(*v, 2))
        .bold_line_style(GRID_COLOR)
        .light_line_style(TRANSPARENT)
        .draw()
        .map_err(draw_err(WHAT))?;
    for (s, color, label) in [
        (target, TARGET_COLOR, "target"),
        (prediction, PREDICTION_COLOR, "prediction"),
    ] {
        let style = color.stroke_width(3);
        chart
            .draw_series(LineSeries::new(s.cdf_curve(lo, hi, CDF_POINTS), style))
            .map_err(draw_err(WHAT))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 36, y)], style));
    }
    let gap = GAP_COLOR.stroke_width(3);
    if ks.position.is_finite() {
        let (ct, cp) = (target.cdf(ks.position), prediction.cdf(ks.position));
        chart
            .draw_series(DashedLineSeries::new(
                [(ks.position, ct), (ks.position, cp)],
                14,
                8,
                gap,
            ))
            .map_err(draw_err(WHAT))?
            .label("largest gap")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 36, y)], gap));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FAMILY, LEGEND_SIZE))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .margin(14)
        .legend_area_size(52)
        .draw()
        .map_err(draw_err(WHAT))?;

    // The KS box, in the upper left of the plotting area (CDFs rise from lower left to upper
    // right, so that corner is free).
    let lines = [
        format!("KS stat: {}", fmt_g(ks.statistic, 4)),
        format!("p-value: {}", fmt_g(ks.pvalue, 4)),
        format!("position: {}", fmt_g(ks.position, 4)),
    ];
    let font: TextStyle<'_> = (FAMILY, LEGEND_SIZE).into();
    let plot = chart.plotting_area();
    let (xr, yr) = plot.get_pixel_range();
    let screen = plot.strip_coord_spec();
    let mut text_w = 0;
    for l in &lines {
        let (w, _) = screen
            .estimate_text_size(l, &font)
            .map_err(draw_err(WHAT))?;
        text_w = text_w.max(w as i32);
    }
    let (pad, line_h) = (14, LEGEND_SIZE as i32 + 10);
    let x0 = 20;
    let y0 = 20;
    let box_w = text_w + 2 * pad;
    let box_h = line_h * lines.len() as i32 + 2 * pad - 10;
    debug_assert!(xr.start < xr.end && yr.start < yr.end);
    screen
        .draw(&Rectangle::new(
            [(x0, y0), (x0 + box_w, y0 + box_h)],
            WHITE.mix(0.9).filled(),
        ))
        .map_err(draw_err(WHAT))?;
    screen
        .draw(&Rectangle::new(
            [(x0, y0), (x0 + box_w, y0 + box_h)],
            BLACK.mix(0.4).stroke_width(1),
        ))
        .map_err(draw_err(WHAT))?;
    for (i, l) in lines.iter().enumerate() {
        screen
            .draw(&Text::new(
                l.as_str(),
                (x0 + pad, y0 + pad + i as i32 * line_h),
                font.clone(),
            ))
            .map_err(draw_err(WHAT))?;
    }
    Ok(())
}

/// One heat-map panel of [`slices_png`]: the title drawn over it and the data drawn in it.
#[derive(Debug, Clone)]
pub struct SlicePanel<'a> {
    /// Title over the panel.
    pub title: &'a str,
    /// The 2D slice, row 0 at the top.
    pub data: ArrayView2<'a, f32>,
}

/// The panels of [`slices_png`] in drawing order, left to right: `target` under
/// `title_target`, then `prediction` under `title_pred`. (Python Sapsan pairs them the other way
/// round; the pairing is data here so it can be tested.)
pub fn slice_panels<'a>(
    target: ArrayView2<'a, f32>,
    prediction: ArrayView2<'a, f32>,
    title_target: &'a str,
    title_pred: &'a str,
) -> [SlicePanel<'a>; 2] {
    [
        SlicePanel {
            title: title_target,
            data: target,
        },
        SlicePanel {
            title: title_pred,
            data: prediction,
        },
    ]
}

/// Smallest and largest finite values over all panels: the one shared colour scale.
pub fn shared_color_range(panels: &[SlicePanel<'_>]) -> Option<(f64, f64)> {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for p in panels {
        for &v in p.data.iter() {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    (lo <= hi).then_some((f64::from(lo), f64::from(hi)))
}

/// `slices_plot.png`: `target` and `prediction` (2D slices, row 0 at the top as matplotlib's
/// `imshow`) side by side as viridis heat maps on ONE colour scale (min and max over both), with
/// a colour bar, `title_target` over the target and `title_pred` over the prediction.
/// Non-finite cells are drawn light grey. Fails when a slice is empty.
pub fn slices_png(
    target: ArrayView2<'_, f32>,
    prediction: ArrayView2<'_, f32>,
    title_target: &str,
    title_pred: &str,
) -> Result<Vec<u8>> {
    render_slices(&slice_panels(target, prediction, title_target, title_pred))
}

/// Draws [`SlicePanel`]s left to right with a shared colour bar (the body of [`slices_png`]).
pub fn render_slices(panels: &[SlicePanel<'_>]) -> Result<Vec<u8>> {
    const WHAT: &str = "slices_plot.png";
    if panels.is_empty() || panels.iter().any(|p| p.data.is_empty()) {
        return Err(Error::Analysis(format!(
            "{WHAT} needs non-empty 2D slices, got shapes {:?}",
            panels
                .iter()
                .map(|p| p.data.shape().to_vec())
                .collect::<Vec<_>>()
        )));
    }
    let (vmin, vmax) = shared_color_range(panels).unwrap_or((0.0, 1.0));
    // A constant slice still needs a non-empty scale.
    let (vmin, vmax) = if vmax > vmin {
        (vmin, vmax)
    } else {
        (vmin - 0.5, vmax + 0.5)
    };
    render_png(WHAT, |root| {
        const BAR_W: u32 = 190;
        let (maps, bar) = root.split_horizontally(WIDTH - BAR_W);
        let areas = maps.split_evenly((1, panels.len()));
        let mut plot_y = None;
        for (panel, area) in panels.iter().zip(&areas) {
            plot_y = Some(draw_heat_map(area, panel, vmin, vmax)?);
        }
        let (top, bottom) = plot_y.unwrap_or((60, HEIGHT as i32 - 60));
        draw_color_bar(&bar, vmin, vmax, top, bottom)
    })
}

/// Tick positions for `n` cells: multiples of 1, 2, 5, 10, 20, 50, ... giving at most 7 ticks.
fn nice_ticks(n: usize) -> Vec<usize> {
    let mut step = 1;
    let mut k = 0;
    while n.div_ceil(step) > 7 {
        step = [2, 5, 10][k % 3] * 10usize.pow((k / 3) as u32);
        k += 1;
    }
    (0..n).step_by(step).collect()
}

/// Draws one heat map with square cells (cell `(i, j)` centred on `(j, rows - 1 - i)`, so row 0
/// is at the top and ticks mark cell centres, as matplotlib's `imshow`); returns the top and
/// bottom pixel rows of its plotting area (for lining up the colour bar).
fn draw_heat_map<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &SlicePanel<'_>,
    vmin: f64,
    vmax: f64,
) -> Result<(i32, i32)> {
    const WHAT: &str = "a heat map of slices_plot.png";
    let (rows, cols) = panel.data.dim();
    let (title_band, area) = area.split_vertically(70);
    let (bw, bh) = title_band.dim_in_pixel();
    title_band
        .draw_text(
            panel.title,
            &TextStyle::from((FAMILY, TITLE_SIZE).into_font())
                .pos(Pos::new(HPos::Center, VPos::Center)),
            (bw as i32 / 2, bh as i32 / 2 + 6),
        )
        .map_err(draw_err(WHAT))?;
    let (aw, ah) = area.dim_in_pixel();
    let (y_lab, x_lab, m) = (70i32, 50i32, 16i32);
    let avail_w = aw as i32 - y_lab - 2 * m;
    let avail_h = ah as i32 - x_lab - 2 * m;
    // Largest plot with square cells that fits, centred.
    let cell = (f64::from(avail_w) / cols as f64).min(f64::from(avail_h) / rows as f64);
    let (pw, ph) = (
        (cell * cols as f64).floor() as i32,
        (cell * rows as f64).floor() as i32,
    );
    let extra_w = (avail_w - pw).max(0);
    let extra_h = (avail_h - ph).max(0);
    let mut chart = ChartBuilder::on(&area)
        .margin_left(m + extra_w / 2)
        .margin_right(m + extra_w - extra_w / 2)
        .margin_top(m + extra_h / 2)
        .margin_bottom(m + extra_h - extra_h / 2)
        .x_label_area_size(x_lab)
        .y_label_area_size(y_lab)
        .build_cartesian_2d(-0.5f64..cols as f64 - 0.5, -0.5f64..rows as f64 - 0.5)
        .map_err(draw_err(WHAT))?;
    // Axes only; the ticks (at cell centres, row 0 at the top) are drawn below.
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(0)
        .y_labels(0)
        .draw()
        .map_err(draw_err(WHAT))?;
    let base = area.get_base_pixel();
    let rel = |(x, y): (i32, i32)| (x - base.0, y - base.1);
    let tick_font = TextStyle::from((FAMILY, TICK_SIZE).into_font());
    for c in nice_ticks(cols) {
        let (x, y) = rel(chart.backend_coord(&(c as f64, -0.5)));
        area.draw(&PathElement::new(vec![(x, y), (x, y + 8)], BLACK))
            .map_err(draw_err(WHAT))?;
        area.draw_text(
            &c.to_string(),
            &tick_font.pos(Pos::new(HPos::Center, VPos::Top)),
            (x, y + 12),
        )
        .map_err(draw_err(WHAT))?;
    }
    for r in nice_ticks(rows) {
        let (x, y) = rel(chart.backend_coord(&(-0.5, (rows - 1 - r) as f64)));
        area.draw(&PathElement::new(vec![(x - 8, y), (x, y)], BLACK))
            .map_err(draw_err(WHAT))?;
        area.draw_text(
            &r.to_string(),
            &tick_font.pos(Pos::new(HPos::Right, VPos::Center)),
            (x - 12, y),
        )
        .map_err(draw_err(WHAT))?;
    }
    let span = vmax - vmin;
    chart
        .draw_series(panel.data.indexed_iter().map(|((i, j), &v)| {
            let color = if v.is_finite() {
                let [r, g, b] = viridis((f64::from(v) - vmin) / span);
                RGBColor(r, g, b)
            } else {
                RGBColor(210, 210, 210)
            };
            let (x, y) = (j as f64, (rows - 1 - i) as f64);
            Rectangle::new([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)], color.filled())
        }))
        .map_err(draw_err(WHAT))?;
    let (_, yr) = chart.plotting_area().get_pixel_range();
    Ok((yr.start, yr.end))
}

fn draw_color_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    vmin: f64,
    vmax: f64,
    top: i32,
    bottom: i32,
) -> Result<()> {
    const WHAT: &str = "the colour bar of slices_plot.png";
    let (_, yr) = area.get_pixel_range();
    let (_, h) = area.dim_in_pixel();
    let margin_top = (top - yr.start).max(0);
    let margin_bottom = (yr.start + h as i32 - bottom).max(0);
    let mut chart = ChartBuilder::on(area)
        .margin_top(margin_top)
        .margin_bottom(margin_bottom)
        .margin_left(10)
        .margin_right(10)
        .right_y_label_area_size(110)
        .build_cartesian_2d(0f64..1f64, vmin..vmax)
        .map_err(draw_err(WHAT))?;
    let n = VIRIDIS.len();
    let step = (vmax - vmin) / n as f64;
    chart
        .draw_series(VIRIDIS.iter().enumerate().map(|(k, &[r, g, b])| {
            let y0 = vmin + step * k as f64;
            Rectangle::new([(0.0, y0), (1.0, y0 + step)], RGBColor(r, g, b).filled())
        }))
        .map_err(draw_err(WHAT))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .label_style((FAMILY, TICK_SIZE))
        .y_labels(8)
        .y_label_formatter(&|v| fmt_g(*v, 3))
        .draw()
        .map_err(draw_err(WHAT))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::metrics::ks_2samp;
    use ndarray::Array2;

    /// Decodes PNG bytes into (width, height, RGB pixels).
    fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn half(rgb: &[u8], w: u32, h: u32, right: bool) -> Vec<[u8; 3]> {
        let (w, h) = (w as usize, h as usize);
        let mut out = Vec::with_capacity(w * h / 2);
        for y in 0..h {
            let xs = if right { w / 2..w } else { 0..w / 2 };
            for x in xs {
                let i = 3 * (y * w + x);
                out.push([rgb[i], rgb[i + 1], rgb[i + 2]]);
            }
        }
        out
    }

    fn count(px: &[[u8; 3]], c: [u8; 3]) -> usize {
        px.iter().filter(|&&p| p == c).count()
    }

    fn sample(n: usize, shift: f32) -> Vec<f32> {
        // Deterministic, roughly bell-shaped values.
        let mut s = 12345u64;
        (0..n)
            .map(|_| {
                let mut acc = 0.0;
                for _ in 0..4 {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    acc += (s >> 40) as f32 / (1u32 << 24) as f32;
                }
                acc - 2.0 + shift
            })
            .collect()
    }

    fn write_if_asked(name: &str, bytes: &[u8]) {
        // SAPSAN_PLOT_DIR=/tmp/plots cargo test ... writes the images for a look.
        if let Some(dir) = std::env::var_os("SAPSAN_PLOT_DIR") {
            std::fs::write(std::path::Path::new(&dir).join(name), bytes).unwrap();
        }
    }

    #[test]
    fn pdf_cdf_png_has_size_content_and_both_panels() {
        let t = sample(20_000, 0.0);
        let p = sample(15_000, 0.3);
        let ks = ks_2samp(&t, &p).unwrap();
        let bytes = pdf_cdf_png(&t, &p, &ks).unwrap();
        write_if_asked("pdf_cdf.png", &bytes);
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let (w, h, rgb) = decode(&bytes);
        assert_eq!((w, h), (WIDTH, HEIGHT));
        let (l, r) = (half(&rgb, w, h, false), half(&rgb, w, h, true));
        assert_ne!(l, r);
        for px in [&l, &r] {
            let white = count(px, [255, 255, 255]);
            assert!(white < px.len() * 98 / 100, "panel is blank");
            // Both series are drawn in both panels.
            assert!(count(px, [31, 119, 180]) > 500);
            assert!(count(px, [255, 127, 14]) > 500);
        }
        // The red dashed KS line is in the CDF panel only.
        assert!(count(&r, [214, 39, 40]) > 50);
        assert_eq!(count(&l, [214, 39, 40]), 0);
    }

    #[test]
    fn pdf_cdf_png_survives_constant_and_disjoint_data() {
        let t = vec![1.0f32; 100];
        let p = vec![5.0f32; 50];
        let ks = ks_2samp(&t, &p).unwrap();
        assert_eq!(ks.statistic, 1.0);
        let (w, h, _) = decode(&pdf_cdf_png(&t, &p, &ks).unwrap());
        assert_eq!((w, h), (WIDTH, HEIGHT));
        let ks = ks_2samp(&t, &t).unwrap();
        decode(&pdf_cdf_png(&t, &t, &ks).unwrap());
        assert!(pdf_cdf_png(&[], &p, &ks).is_err());
    }

    #[test]
    fn slice_panels_pair_titles_with_their_data() {
        let t = Array2::<f32>::zeros((3, 4));
        let p = Array2::<f32>::ones((3, 4));
        let panels = slice_panels(t.view(), p.view(), "Target", "Prediction");
        assert_eq!(panels[0].title, "Target");
        assert_eq!(panels[0].data.as_ptr(), t.as_ptr());
        assert_eq!(panels[1].title, "Prediction");
        assert_eq!(panels[1].data.as_ptr(), p.as_ptr());
        assert_eq!(shared_color_range(&panels), Some((0.0, 1.0)));
    }

    #[test]
    fn slices_png_uses_one_color_scale_and_puts_target_left() {
        // Target: 0 with its top-left quarter at the maximum 1; prediction: 0.5 everywhere.
        let mut t = Array2::<f32>::zeros((32, 32));
        t.slice_mut(ndarray::s![..16, ..16]).fill(1.0);
        let p = Array2::<f32>::from_elem((32, 32), 0.5);
        let bytes = slices_png(t.view(), p.view(), "Target", "Prediction").unwrap();
        write_if_asked("slices_plot.png", &bytes);
        let (w, h, rgb) = decode(&bytes);
        assert_eq!((w, h), (WIDTH, HEIGHT));
        // The panels sit left of the colour bar; split them at their middle.
        let maps_w = (WIDTH - 190) as usize;
        let px = |x: usize, y: usize| {
            let i = 3 * (y * w as usize + x);
            [rgb[i], rgb[i + 1], rgb[i + 2]]
        };
        let (mut left_top, mut left_mid, mut right_top, mut right_mid) = (0, 0, 0, 0);
        let top = VIRIDIS[255];
        let mid = viridis(0.5);
        for y in 0..h as usize {
            for x in 0..maps_w {
                let c = px(x, y);
                let left = x < maps_w / 2;
                match (left, c == top, c == mid) {
                    (true, true, _) => left_top += 1,
                    (true, _, true) => left_mid += 1,
                    (false, true, _) => right_top += 1,
                    (false, _, true) => right_mid += 1,
                    _ => {}
                }
            }
        }
        // A quarter of a ~540 px square panel is ~70k pixels of the top colour, on the left.
        assert!(
            left_top > 40_000,
            "left panel top-colour pixels: {left_top}"
        );
        assert_eq!(right_top, 0);
        // The prediction, 0.5 on the shared 0..1 scale, is viridis(0.5) on the right.
        assert!(
            right_mid > 150_000,
            "right panel mid-colour pixels: {right_mid}"
        );
        assert_eq!(left_mid, 0);
        // The target's maximum is in its top-left quarter: check that corner of the left map.
        let row = (0..h as usize).find(|&y| (0..maps_w / 2).any(|x| px(x, y) == top));
        let row = row.unwrap();
        let col = (0..maps_w / 2).find(|&x| px(x, row) == top).unwrap();
        assert!(
            row < h as usize / 2 && col < maps_w / 4,
            "max drawn at ({col}, {row})"
        );
        // The colour bar holds the full scale.
        let bar_has =
            |c: [u8; 3]| (maps_w..w as usize).any(|x| (0..h as usize).any(|y| px(x, y) == c));
        assert!(bar_has(VIRIDIS[0]) && bar_has(VIRIDIS[255]));
    }

    #[test]
    fn slices_png_rejects_empty_slices() {
        let t = Array2::<f32>::zeros((0, 4));
        let p = Array2::<f32>::zeros((2, 4));
        assert!(slices_png(t.view(), p.view(), "Target", "Prediction").is_err());
    }

    #[test]
    fn nice_ticks_are_round_and_few() {
        assert_eq!(nice_ticks(4), vec![0, 1, 2, 3]);
        assert_eq!(nice_ticks(32), vec![0, 5, 10, 15, 20, 25, 30]);
        assert_eq!(nice_ticks(64), vec![0, 10, 20, 30, 40, 50, 60]);
        assert_eq!(nice_ticks(1000), vec![0, 200, 400, 600, 800]);
    }

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
