//! `runtime_log.html`, the "Training Progress" page of Sapsan's Train: loss against epoch for the
//! train and (when there is one) the validation loader, on a log y axis.
//!
//! One self-contained HTML page with an inline SVG chart and a small table of the final values:
//! no script, no external URL, works offline, about 30 KB for 1000 epochs (Python Sapsan writes
//! 4.8 MB with plotly.js inlined).
use std::fmt::Write as _;

use super::plots::fmt_g;

/// The losses of one epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochLoss {
    /// Epoch number (Sapsan counts from 1).
    pub epoch: usize,
    /// Mean train loss of the epoch.
    pub train: f64,
    /// Mean validation loss of the epoch, when validation ran.
    pub valid: Option<f64>,
}

impl From<(usize, f64, Option<f64>)> for EpochLoss {
    fn from((epoch, train, valid): (usize, f64, Option<f64>)) -> Self {
        Self {
            epoch,
            train,
            valid,
        }
    }
}

const W: f64 = 960.0;
const H: f64 = 540.0;
const LEFT: f64 = 100.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 70.0;
const TRAIN_COLOR: &str = "#1f77b4";
const VALID_COLOR: &str = "#ff7f0e";
/// Markers are drawn on the lines up to this many epochs.
const MARKERS_UP_TO: usize = 100;

/// A log-scaled y axis over `[10^lo, 10^hi]` mapped to pixel rows.
#[derive(Debug, Clone, Copy)]
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    /// Axis covering the positive `values`, padded a little.
    fn covering(min: f64, max: f64) -> Self {
        let (lmin, lmax) = (min.log10(), max.log10());
        let pad = if lmax > lmin {
            ((lmax - lmin) * 0.05).max(0.02)
        } else {
            0.5
        };
        Self {
            lo: lmin - pad,
            hi: lmax + pad,
        }
    }

    /// Pixel row of a positive value.
    fn px(&self, v: f64) -> f64 {
        TOP + (self.hi - v.log10()) / (self.hi - self.lo) * (H - TOP - BOTTOM)
    }

    /// Tick values: decades, plus 2x and 5x (or every integer multiple) when few decades show.
    fn ticks(&self) -> Vec<f64> {
        let span = self.hi - self.lo;
        let (k0, k1) = (self.lo.floor() as i32, self.hi.ceil() as i32);
        let decade_step = (span / 8.0).ceil().max(1.0) as i32;
        let in_range = |v: f64| {
            let l = v.log10();
            l >= self.lo - 1e-12 && l <= self.hi + 1e-12
        };
        let with = |mults: &[f64]| -> Vec<f64> {
            let mut out = Vec::new();
            let mut k = k0;
            while k <= k1 {
                for &m in mults {
                    let v = m * 10f64.powi(k);
                    if in_range(v) {
                        out.push(v);
                    }
                }
                k += decade_step;
            }
            out
        };
        for mults in [&[1.0][..], &[1.0, 2.0, 5.0][..]] {
            let t = with(mults);
            if t.len() >= 3 {
                return t;
            }
        }
        // Less than half a decade: evenly spaced round values, as a linear axis would have.
        let (a, b) = (10f64.powf(self.lo), 10f64.powf(self.hi));
        nice_linear_ticks(a, b, 5)
    }
}

/// Round values (multiples of 1, 2 or 5 times a power of ten) in `[a, b]`, about `n` of them.
fn nice_linear_ticks(a: f64, b: f64, n: usize) -> Vec<f64> {
    let raw = (b - a) / n as f64;
    let e = raw.log10().floor() as i32;
    let mag = 10f64.powi(e);
    let m = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|m| m * mag >= raw)
        .unwrap_or(10.0);
    let step = m * mag;
    // (k * m) scaled by an exact power of ten, so 3 * 0.2 prints as 0.6.
    let at = |k: i64| {
        let units = k as f64 * m;
        if e < 0 {
            units / 10f64.powi(-e)
        } else {
            units * mag
        }
    };
    let first = (a / step).ceil() as i64;
    let last = (b / step).floor() as i64;
    (first..=last).map(at).collect()
}

/// x axis over epochs.
#[derive(Debug, Clone, Copy)]
struct EpochAxis {
    lo: f64,
    hi: f64,
}

impl EpochAxis {
    fn px(&self, epoch: f64) -> f64 {
        LEFT + (epoch - self.lo) / (self.hi - self.lo) * (W - LEFT - RIGHT)
    }

    fn ticks(&self) -> Vec<f64> {
        nice_linear_ticks(self.lo, self.hi, 8)
            .into_iter()
            .filter(|t| t.fract() == 0.0)
            .collect()
    }
}

/// Values that a log axis cannot show, by epoch.
#[derive(Debug, Default)]
struct Skipped(Vec<(usize, f64)>);

impl Skipped {
    fn describe(&self, series: &str) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let shown: Vec<String> = self
            .0
            .iter()
            .take(10)
            .map(|(e, v)| format!("{} at epoch {e}", fmt_g(*v, 6)))
            .collect();
        let more = if self.0.len() > 10 {
            format!(" and {} more", self.0.len() - 10)
        } else {
            String::new()
        };
        Some(format!(
            "{} {series} loss value{} not drawn (a log axis shows only finite positive values): {}{more}.",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" },
            shown.join(", ")
        ))
    }
}

/// A drawable point: index in the history, epoch, loss.
type Point = (usize, usize, f64);

/// Splits a series of `(index, epoch, loss)` into drawable points and skipped values.
fn drawable(points: impl Iterator<Item = Point>) -> (Vec<Point>, Skipped) {
    let mut ok = Vec::new();
    let mut skipped = Skipped::default();
    for (i, e, v) in points {
        if v.is_finite() && v > 0.0 {
            ok.push((i, e, v));
        } else {
            skipped.0.push((e, v));
        }
    }
    (ok, skipped)
}

/// SVG path through the points; a skipped value (a hole in the history indices) breaks the line
/// rather than bridging it.
fn path_d(pts: &[Point], x: EpochAxis, y: LogAxis) -> String {
    let mut d = String::with_capacity(pts.len() * 14);
    let mut prev: Option<usize> = None;
    for &(i, e, v) in pts {
        let cmd = if prev.is_some_and(|p| p + 1 == i) {
            'L'
        } else {
            'M'
        };
        let _ = write!(d, "{cmd}{:.1} {:.1}", x.px(e as f64), y.px(v));
        prev = Some(i);
    }
    d
}

/// Renders the "Training Progress" page for `history` (in epoch order). Non-finite and
/// non-positive losses are left out of the chart and listed in a note under it; an empty history
/// gives a page that says so.
pub fn runtime_log_html(history: &[EpochLoss]) -> String {
    let mut html = String::with_capacity(8 * 1024 + history.len() * 40);
    html.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Training Progress</title>\n<style>\n\
         body{font-family:'DejaVu Sans',Verdana,Arial,sans-serif;margin:24px;color:#222}\n\
         h1{font-size:22px;font-weight:normal}\n\
         svg{max-width:100%;height:auto}\n\
         svg text{font-family:inherit;font-size:15px;fill:#222}\n\
         table{border-collapse:collapse;margin-top:12px}\n\
         td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}\n\
         th{background:#f4f4f4;text-align:left}\n\
         .note{color:#8a4b00}\n</style>\n</head>\n<body>\n<h1>Training Progress</h1>\n",
    );
    if history.is_empty() {
        html.push_str("<p>No epochs were recorded.</p>\n</body>\n</html>\n");
        return html;
    }
    let epochs: Vec<usize> = history.iter().map(|h| h.epoch).collect();
    let (train, train_skipped) = drawable(
        history
            .iter()
            .enumerate()
            .map(|(i, h)| (i, h.epoch, h.train)),
    );
    let has_valid = history.iter().any(|h| h.valid.is_some());
    let (valid, valid_skipped) = drawable(
        history
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.valid.map(|v| (i, h.epoch, v))),
    );
    let drawn = train.iter().chain(&valid).map(|&(_, _, v)| v);
    let (vmin, vmax) = drawn.fold((f64::INFINITY, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));

    if vmax > 0.0 {
        let y = LogAxis::covering(vmin, vmax);
        let (emin, emax) = (
            *epochs.iter().min().unwrap_or(&0) as f64,
            *epochs.iter().max().unwrap_or(&0) as f64,
        );
        let x = if emax > emin {
            EpochAxis { lo: emin, hi: emax }
        } else {
            EpochAxis {
                lo: emin - 1.0,
                hi: emax + 1.0,
            }
        };
        write_chart(
            &mut html,
            x,
            y,
            epochs.len(),
            &train,
            has_valid.then_some(&valid[..]),
        );
    } else {
        html.push_str("<p class=\"note\">No loss value can be drawn on a log axis.</p>\n");
    }
    for note in [
        train_skipped.describe("train"),
        valid_skipped.describe("validation"),
    ]
    .into_iter()
    .flatten()
    {
        let _ = writeln!(html, "<p class=\"note\">{note}</p>");
    }
    write_table(&mut html, history, has_valid);
    html.push_str("</body>\n</html>\n");
    html
}

fn write_chart(
    html: &mut String,
    x: EpochAxis,
    y: LogAxis,
    n_epochs: usize,
    train: &[Point],
    valid: Option<&[Point]>,
) {
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, TOP, H - BOTTOM);
    let _ = writeln!(
        html,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" \
         font-family=\"DejaVu Sans, Verdana, Arial, sans-serif\" font-size=\"15\" \
         role=\"img\" aria-label=\"Loss against epoch, log scale\">"
    );
    let _ = writeln!(
        html,
        "<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#fff\"/>"
    );
    // Grid and ticks.
    html.push_str("<g stroke=\"#e4e4e4\" stroke-width=\"1\">\n");
    for t in y.ticks() {
        let py = y.px(t);
        let _ = writeln!(
            html,
            "<line x1=\"{x0}\" y1=\"{py:.1}\" x2=\"{x1}\" y2=\"{py:.1}\"/>"
        );
    }
    for t in x.ticks() {
        let px = x.px(t);
        let _ = writeln!(
            html,
            "<line x1=\"{px:.1}\" y1=\"{y0}\" x2=\"{px:.1}\" y2=\"{y1}\"/>"
        );
    }
    html.push_str("</g>\n");
    let _ = writeln!(
        html,
        "<rect x=\"{x0}\" y=\"{y0}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>",
        x1 - x0,
        y1 - y0
    );
    html.push_str("<g text-anchor=\"end\">\n");
    for t in y.ticks() {
        let _ = writeln!(
            html,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            x0 - 8.0,
            y.px(t) + 5.0,
            fmt_g(t, 3)
        );
    }
    html.push_str("</g>\n<g text-anchor=\"middle\">\n");
    for t in x.ticks() {
        let _ = writeln!(
            html,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            x.px(t),
            y1 + 22.0,
            fmt_g(t, 6)
        );
    }
    let _ = writeln!(
        html,
        "<text x=\"{:.1}\" y=\"{:.1}\">epoch</text>",
        (x0 + x1) / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        html,
        "<text transform=\"translate(24 {:.1}) rotate(-90)\">loss (log scale)</text>",
        (y0 + y1) / 2.0
    );
    html.push_str("</g>\n");
    // Series.
    let mut series = vec![("train", TRAIN_COLOR, train)];
    if let Some(v) = valid {
        series.push(("validation", VALID_COLOR, v));
    }
    for (name, color, pts) in &series {
        let _ = writeln!(
            html,
            "<path class=\"{name}\" d=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" \
             stroke-linejoin=\"round\"/>",
            path_d(pts, x, y)
        );
        if n_epochs <= MARKERS_UP_TO {
            let _ = write!(html, "<g fill=\"{color}\">");
            for &(_, e, v) in pts.iter() {
                let _ = write!(
                    html,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\"/>",
                    x.px(e as f64),
                    y.px(v)
                );
            }
            html.push_str("</g>\n");
        }
    }
    // Legend, upper right inside the plot.
    let lw = 150.0;
    let lh = 12.0 + 24.0 * series.len() as f64;
    let (lx, ly) = (x1 - lw - 12.0, y0 + 12.0);
    let _ = writeln!(
        html,
        "<rect x=\"{lx:.1}\" y=\"{ly:.1}\" width=\"{lw}\" height=\"{lh}\" fill=\"#fff\" fill-opacity=\"0.9\" stroke=\"#999\"/>"
    );
    for (i, (name, color, _)) in series.iter().enumerate() {
        let cy = ly + 18.0 + 24.0 * i as f64;
        let _ = writeln!(
            html,
            "<line x1=\"{:.1}\" y1=\"{cy:.1}\" x2=\"{:.1}\" y2=\"{cy:.1}\" stroke=\"{color}\" stroke-width=\"3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{name}</text>",
            lx + 10.0,
            lx + 40.0,
            lx + 50.0,
            cy + 5.0
        );
    }
    html.push_str("</svg>\n");
}

fn write_table(html: &mut String, history: &[EpochLoss], has_valid: bool) {
    let last = history[history.len() - 1];
    let best = |f: &dyn Fn(&EpochLoss) -> Option<f64>| {
        history
            .iter()
            .filter_map(|h| f(h).filter(|v| v.is_finite()).map(|v| (h.epoch, v)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    };
    let cell = |v: Option<f64>| v.map_or_else(|| "&mdash;".to_string(), |v| fmt_g(v, 6));
    let best_cell = |b: Option<(usize, f64)>| {
        b.map_or_else(
            || "&mdash;".to_string(),
            |(e, v)| format!("{} (epoch {e})", fmt_g(v, 6)),
        )
    };
    html.push_str("<table>\n<tr><th></th><th>train</th>");
    if has_valid {
        html.push_str("<th>validation</th>");
    }
    html.push_str("</tr>\n");
    let _ = write!(
        html,
        "<tr><th>final loss (epoch {})</th><td>{}</td>",
        last.epoch,
        cell(Some(last.train))
    );
    if has_valid {
        let _ = write!(html, "<td>{}</td>", cell(last.valid));
    }
    let _ = write!(
        html,
        "</tr>\n<tr><th>lowest loss</th><td>{}</td>",
        best_cell(best(&|h| Some(h.train)))
    );
    if has_valid {
        let _ = write!(html, "<td>{}</td>", best_cell(best(&|h| h.valid)));
    }
    let _ = writeln!(
        html,
        "</tr>\n<tr><th>epochs</th><td{}>{}</td></tr>\n</table>",
        if has_valid { " colspan=\"2\"" } else { "" },
        history.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(n: usize, valid: bool) -> Vec<EpochLoss> {
        (1..=n)
            .map(|e| EpochLoss {
                epoch: e,
                train: 0.5 * (-(e as f64) / 200.0).exp() + 1e-3,
                valid: valid.then(|| 0.6 * (-(e as f64) / 250.0).exp() + 2e-3),
            })
            .collect()
    }

    #[test]
    fn page_is_offline_small_and_has_both_series_at_1000_epochs() {
        let page = runtime_log_html(&history(1000, true));
        crate::analysis::plots::test_png::write_if_asked("runtime_log.html", &page);
        assert!(page.len() < 300 * 1024, "{} bytes", page.len());
        let without_xmlns = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!without_xmlns.contains("http://") && !without_xmlns.contains("https://"));
        assert!(!page.contains("<script"));
        assert!(page.contains("<title>Training Progress</title>"));
        assert!(page.contains(">epoch</text>") && page.contains(">loss (log scale)</text>"));
        for class in ["train", "validation"] {
            let start = page.find(&format!("<path class=\"{class}\" d=\"")).unwrap();
            let d = &page[start..page[start..].find("\"/>").unwrap() + start];
            // One move and 999 line segments: every epoch is drawn.
            assert_eq!(d.matches('M').count(), 1, "{class}");
            assert_eq!(d.matches('L').count(), 999, "{class}");
        }
        assert!(page.contains(">validation</text>"));
        assert!(page.contains("final loss (epoch 1000)"));
    }

    #[test]
    fn train_only_history_has_no_validation_series() {
        let page = runtime_log_html(&history(5, false));
        assert!(page.contains("<path class=\"train\""));
        assert!(!page.contains("validation"));
        // Few epochs: markers on the line.
        assert_eq!(page.matches("<circle").count(), 5);
    }

    #[test]
    fn non_finite_losses_are_skipped_with_a_note() {
        let mut h = history(10, true);
        h[3].train = f64::NAN;
        h[6].train = f64::INFINITY;
        h[8].valid = Some(0.0);
        let page = runtime_log_html(&h);
        crate::analysis::plots::test_png::write_if_asked("runtime_log_gaps.html", &page);
        assert!(page.contains(
            "2 train loss values not drawn (a log axis shows only finite positive values): \
             NaN at epoch 4, inf at epoch 7."
        ));
        assert!(page.contains("1 validation loss value not drawn"));
        // The train line breaks at the gaps: 3 pieces.
        let start = page.find("<path class=\"train\" d=\"").unwrap();
        let d = &page[start..page[start..].find("\"/>").unwrap() + start];
        assert_eq!(d.matches('M').count(), 3);
        assert!(
            !page.contains("NaN\"") && !page.contains("inf\""),
            "no NaN coordinates"
        );
        // All-NaN history: still a page, no chart.
        let page = runtime_log_html(&[EpochLoss::from((1, f64::NAN, None))]);
        assert!(page.contains("No loss value can be drawn"));
        assert!(!page.contains("<svg"));
        assert!(runtime_log_html(&[]).contains("No epochs were recorded."));
    }

    #[test]
    fn y_axis_is_logarithmic() {
        let y = LogAxis { lo: -3.0, hi: 0.0 };
        let (a, b, c) = (y.px(1.0), y.px(0.1), y.px(0.01));
        assert!((a - TOP).abs() < 1e-9);
        assert!(((b - a) - (c - b)).abs() < 1e-9, "decades equally spaced");
        assert_eq!(y.ticks(), vec![0.001, 0.01, 0.1, 1.0]);
        let t = LogAxis::covering(0.2, 0.9).ticks();
        assert_eq!(t, vec![0.2, 0.4, 0.6, 0.8]);
        let t = LogAxis::covering(0.47, 0.6).ticks();
        assert_eq!(t, vec![0.45, 0.5, 0.55, 0.6]);
        assert_eq!(
            EpochAxis {
                lo: 1.0,
                hi: 1000.0
            }
            .ticks(),
            vec![200.0, 400.0, 600.0, 800.0, 1000.0]
        );
        assert_eq!(EpochAxis { lo: 0.0, hi: 2.0 }.ticks(), vec![0.0, 1.0, 2.0]);
    }

    #[test]
    fn table_holds_final_and_best_values() {
        let h = vec![
            EpochLoss::from((1, 1.0, Some(2.0))),
            EpochLoss::from((2, 0.25, Some(0.5))),
            EpochLoss::from((3, 0.5, Some(0.75))),
        ];
        let page = runtime_log_html(&h);
        assert!(page.contains("<tr><th>final loss (epoch 3)</th><td>0.5</td><td>0.75</td>"));
        assert!(page.contains("<td>0.25 (epoch 2)</td><td>0.5 (epoch 2)</td>"));
    }
}
