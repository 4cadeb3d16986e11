//! `pdf_cdf.png`: the densities and empirical CDFs of target and prediction, the KS gap marked.
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{
    LEGEND_SIZE, PREDICTION_COLOR, TARGET_COLOR, TITLE_SIZE, WIDTH, draw_err, draw_grid,
    draw_legend, fmt_g, legend_line, render_png,
};
use crate::analysis::font::FAMILY;
use crate::analysis::metrics::{Histogram, KsResult, SortedSample, joint_range};
use crate::error::Result;

/// Number of histogram bins of the PDF panel (as Sapsan).
pub const PDF_BINS: usize = 100;
/// Points per CDF curve: more than the panel is wide, so the steps are exact to the pixel.
const CDF_POINTS: usize = 2000;
/// The dashed line where the two CDFs are furthest apart.
const GAP_COLOR: RGBColor = RGBColor(214, 39, 40);

/// `pdf_cdf.png`: left, the densities of `target` and `prediction` as step histograms
/// ([`PDF_BINS`] bins over the joint range, log y axis, legend); right, the two empirical CDFs
/// with a red dashed line where they are furthest apart (`ks.position`) and a box giving the KS
/// statistic, p-value and position. Fails on empty inputs, NaN values or no finite value.
pub fn pdf_cdf_png(target: &[f32], prediction: &[f32], ks: &KsResult) -> Result<Vec<u8>> {
    let (t, p) = SortedSample::new_pair(target, prediction)?;
    pdf_cdf_png_sorted(&t, &p, ks)
}

/// [`pdf_cdf_png`] on samples already sorted (for example the ones given to
/// [`crate::analysis::ks_2samp_sorted`]), which saves sorting them twice.
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
    draw_grid(&mut chart, ("Values", "PDF"), (7, 10), WHAT)?;
    for (h, color, label) in [
        (ht, TARGET_COLOR, "target"),
        (hp, PREDICTION_COLOR, "prediction"),
    ] {
        let style = color.stroke_width(3);
        chart
            .draw_series(LineSeries::new(step_outline(h, ymin), style))
            .map_err(draw_err(WHAT))?
            .label(label)
            .legend(legend_line(style));
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight, WHAT)?;
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
    draw_grid(&mut chart, ("Values", "CDF"), (7, 6), WHAT)?;
    for (s, color, label) in [
        (target, TARGET_COLOR, "target"),
        (prediction, PREDICTION_COLOR, "prediction"),
    ] {
        let style = color.stroke_width(3);
        chart
            .draw_series(LineSeries::new(s.cdf_curve(lo, hi, CDF_POINTS), style))
            .map_err(draw_err(WHAT))?
            .label(label)
            .legend(legend_line(style));
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
            .legend(legend_line(gap));
    }
    draw_legend(&mut chart, SeriesLabelPosition::LowerRight, WHAT)?;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::metrics::ks_2samp;
    use crate::analysis::plots::HEIGHT;
    use crate::analysis::plots::test_png::{decode, write_if_asked};

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
}
