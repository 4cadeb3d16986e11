//! `spectrum.png`: the spectra of target and prediction on log-log axes with a k^(-5/3)
//! reference line (Sapsan's `PowerSpectrum.plot_spectrum`).
use plotters::prelude::*;

use super::{
    PREDICTION_COLOR, TARGET_COLOR, TITLE_SIZE, draw_err, draw_grid, draw_legend, legend_line,
    render_png,
};
use crate::analysis::font::FAMILY;
use crate::analysis::spectrum::{Spectrum, SpectrumKind};
use crate::error::{Error, Result};

/// Colour of the k^(-5/3) reference line.
const REFERENCE_COLOR: RGBColor = RGBColor(40, 40, 40);

/// `spectrum.png` (1440x720): the spectrum of `target` (when given) and of `prediction` against
/// the wavenumber on log-log axes, shells `k >= 1`, with the line `A k^(-5/3)` whose level `A`
/// is fitted to the target (to the prediction without one; see
/// [`Spectrum::kolmogorov_level`]). Shells without energy are left out of the curves. Fails
/// when the two spectra are of different kinds or sizes.
pub fn spectrum_png(target: Option<&Spectrum>, prediction: &Spectrum) -> Result<Vec<u8>> {
    const WHAT: &str = "spectrum.png";
    if let Some(t) = target
        && (t.kind != prediction.kind || t.shells.len() != prediction.shells.len())
    {
        return Err(Error::Analysis(format!(
            "{WHAT} compares spectra of one kind and size, got a {:?} target with {} shells and \
             a {:?} prediction with {}",
            t.kind,
            t.shells.len(),
            prediction.kind,
            prediction.shells.len()
        )));
    }
    let positive = |s: &Spectrum| -> Vec<(f64, f64)> {
        s.points()
            .filter(|&(_, e)| e > 0.0 && e.is_finite())
            .collect()
    };
    let target_pts = target.map(positive);
    let pred_pts = positive(prediction);
    let k_max = (prediction.shells.len().saturating_sub(1)).max(2) as f64;
    let reference_of = target.unwrap_or(prediction);
    let reference: Vec<(f64, f64)> = match reference_of.kolmogorov_level() {
        Some(a) => (0..=40)
            .map(|i| {
                let k = k_max.powf(f64::from(i) / 40.0);
                (k, a * k.powf(-5.0 / 3.0))
            })
            .collect(),
        None => Vec::new(),
    };
    let all = target_pts
        .iter()
        .flatten()
        .chain(&pred_pts)
        .chain(&reference);
    let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), &(_, e)| {
        (lo.min(e), hi.max(e))
    });
    let (ymin, ymax) = if hi > 0.0 {
        (lo / 3.0, hi * 3.0)
    } else {
        (1e-3, 1.0)
    };
    let title = match prediction.kind {
        SpectrumKind::KineticEnergy => "Kinetic energy spectrum",
        SpectrumKind::Power => "Power spectrum",
    };
    render_png(WHAT, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FAMILY, TITLE_SIZE))
            .margin(24)
            .x_label_area_size(70)
            .y_label_area_size(120)
            .build_cartesian_2d((0.9f64..k_max * 1.1).log_scale(), (ymin..ymax).log_scale())
            .map_err(draw_err(WHAT))?;
        draw_grid(&mut chart, ("k", prediction.kind.label()), (10, 10), WHAT)?;
        // The reference first, so the data is drawn over it.
        if !reference.is_empty() {
            let style = REFERENCE_COLOR.stroke_width(2);
            chart
                .draw_series(DashedLineSeries::new(
                    reference.iter().copied(),
                    14,
                    8,
                    style,
                ))
                .map_err(draw_err(WHAT))?
                .label("k^(-5/3)")
                .legend(legend_line(style));
        }
        let curves = target_pts
            .iter()
            .map(|p| (p, TARGET_COLOR, "target"))
            .chain([(&pred_pts, PREDICTION_COLOR, "prediction")]);
        for (pts, color, label) in curves {
            let style = color.stroke_width(3);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), style))
                .map_err(draw_err(WHAT))?
                .label(label)
                .legend(legend_line(style));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 5, color.filled())))
                .map_err(draw_err(WHAT))?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight, WHAT)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::plots::test_png::{decode, write_if_asked};
    use crate::analysis::plots::{HEIGHT, WIDTH};

    fn count(rgb: &[u8], c: RGBColor) -> usize {
        rgb.chunks_exact(3)
            .filter(|p| p[0] == c.0 && p[1] == c.1 && p[2] == c.2)
            .count()
    }

    fn spectrum(kind: SpectrumKind, f: impl Fn(f64) -> f64) -> Spectrum {
        let mut shells: Vec<f64> = (0..=16).map(|k| f(k as f64)).collect();
        shells[0] = 0.0;
        Spectrum { kind, shells }
    }

    #[test]
    fn draws_target_prediction_and_the_reference_line() {
        // A steeper target than the reference, so the line fitted to it stays visible.
        let t = spectrum(SpectrumKind::KineticEnergy, |k| k.powf(-2.5));
        let p = spectrum(SpectrumKind::KineticEnergy, |k| k.powf(-3.0));
        let bytes = spectrum_png(Some(&t), &p).unwrap();
        write_if_asked("spectrum.png", &bytes);
        let (w, h, rgb) = decode(&bytes);
        assert_eq!((w, h), (WIDTH, HEIGHT));
        assert!(count(&rgb, TARGET_COLOR) > 1000, "target curve");
        assert!(count(&rgb, PREDICTION_COLOR) > 1000, "prediction curve");
        assert!(count(&rgb, REFERENCE_COLOR) > 300, "reference line");
        // Without a target: the prediction and the line only.
        let (_, _, rgb) = decode(&spectrum_png(None, &p).unwrap());
        assert_eq!(count(&rgb, TARGET_COLOR), 0);
        assert!(count(&rgb, PREDICTION_COLOR) > 1000);
    }

    #[test]
    fn survives_an_empty_spectrum_and_rejects_mismatched_ones() {
        let zero = spectrum(SpectrumKind::Power, |_| 0.0);
        decode(&spectrum_png(Some(&zero), &zero).unwrap());
        let t = spectrum(SpectrumKind::Power, |k| 1.0 / k);
        let p = spectrum(SpectrumKind::KineticEnergy, |k| 1.0 / k);
        assert!(spectrum_png(Some(&t), &p).is_err());
        let short = Spectrum {
            kind: SpectrumKind::Power,
            shells: vec![0.0, 1.0],
        };
        assert!(spectrum_png(Some(&t), &short).is_err());
        decode(&spectrum_png(None, &short).unwrap());
    }
}
