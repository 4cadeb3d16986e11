//! `slices_plot.png`: a 2D slice of target and prediction side by side as heat maps on one
//! colour scale, with a colour bar.
use ndarray::ArrayView2;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{HEIGHT, TICK_SIZE, TITLE_SIZE, WIDTH, draw_err, fmt_g, render_png};
use crate::analysis::colormap::{VIRIDIS, viridis};
use crate::analysis::font::FAMILY;
use crate::error::{Error, Result};

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
    use crate::analysis::plots::test_png::{decode, write_if_asked};
    use ndarray::Array2;

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
}
