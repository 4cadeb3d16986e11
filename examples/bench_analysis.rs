//! Times the analysis of Evaluate on a 3x64^3 cube pair (786,432 values per array) against the
//! same work done by numpy, scipy and matplotlib (`bench/analysis_peer.py`), on the same data,
//! in the same run.
//!
//! ```text
//! python3 -m venv .venv-bench && .venv-bench/bin/pip install numpy scipy matplotlib
//! cargo run --release --example bench_analysis
//! ```
//!
//! Without the venv only the Rust side runs (and says how to create it). With
//! `SAPSAN_PLOT_DIR=/some/dir` the two PNGs of the last repeat are written there for a look.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ndarray::{Array4, s};
use sapsan::analysis::{
    SortedSample, density_pair, ks_2samp, ks_2samp_sorted, pdf_cdf_png, pdf_cdf_png_sorted,
    slices_png,
};

const SHAPE: (usize, usize, usize, usize) = (3, 64, 64, 64);
const REPEATS: usize = 3;

/// A smooth random field (sum of a few plane waves plus noise) and a noisy "prediction" of it,
/// from a fixed-seed LCG so every run sees the same data.
fn cube_pair() -> (Array4<f32>, Array4<f32>) {
    let mut s = 0x5eed_u64;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u32 << 24) as f32
    };
    let waves: Vec<[f32; 5]> = (0..12)
        .map(|_| {
            [
                next() * 6.0,
                next() * 6.0,
                next() * 6.0,
                next() * std::f32::consts::TAU,
                next() * 0.5,
            ]
        })
        .collect();
    let (c, d, h, w) = SHAPE;
    let mut target = Array4::<f32>::zeros((c, d, h, w));
    let mut prediction = Array4::<f32>::zeros((c, d, h, w));
    for ((ci, z, y, x), v) in target.indexed_iter_mut() {
        let (fz, fy, fx) = (z as f32 / 64.0, y as f32 / 64.0, x as f32 / 64.0);
        let mut acc = 0.0;
        for (k, wv) in waves.iter().enumerate() {
            let phase = wv[0] * fx + wv[1] * fy + wv[2] * fz + wv[3] + ci as f32 * k as f32;
            acc += wv[4] * (std::f32::consts::TAU * phase).sin();
        }
        *v = acc;
    }
    for (p, &t) in prediction.iter_mut().zip(target.iter()) {
        *p = 0.9 * t + 0.15 * (next() - 0.5);
    }
    (target, prediction)
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

fn write_f32(path: &Path, data: &Array4<f32>) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(data.len() * 4);
    for v in data.iter() {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (target, prediction) = cube_pair();
    let tf = target.as_slice().ok_or("cube not contiguous")?;
    let pf = prediction.as_slice().ok_or("cube not contiguous")?;
    let t2 = target.slice(s![0, 0, .., ..]);
    let p2 = prediction.slice(s![0, 0, .., ..]);
    println!(
        "data: two {:?} f32 cubes ({} values each)",
        target.shape(),
        tf.len()
    );

    // Simple API: every function sorts what it needs.
    let mut best_simple = f64::INFINITY;
    // Sort-once path: one SortedSample pair shared by KS and the CDF plot.
    let mut best = [f64::INFINITY; 5];
    let mut result = None;
    let mut sizes = (0, 0);
    for _ in 0..REPEATS {
        let t0 = Instant::now();
        let ks = ks_2samp(tf, pf)?;
        let (_ht, _hp) = density_pair(tf, pf, 100)?;
        let a = pdf_cdf_png(tf, pf, &ks)?;
        let b = slices_png(t2, p2, "Target", "Prediction")?;
        best_simple = best_simple.min(secs(t0));
        sizes = (a.len(), b.len());

        let t0 = Instant::now();
        let (st, sp) = SortedSample::new_pair(tf, pf)?;
        let ks = ks_2samp_sorted(&st, &sp);
        let t_ks = secs(t0);
        let t1 = Instant::now();
        let (_ht, _hp) = density_pair(tf, pf, 100)?;
        let t_hist = secs(t1);
        let t1 = Instant::now();
        let png1 = pdf_cdf_png_sorted(&st, &sp, &ks)?;
        let t_pdf = secs(t1);
        let t1 = Instant::now();
        let png2 = slices_png(t2, p2, "Target", "Prediction")?;
        let t_sl = secs(t1);
        let total = secs(t0);
        if total < best[4] {
            best = [t_ks, t_hist, t_pdf, t_sl, total];
        }
        result = Some(ks);
        if let Some(dir) = std::env::var_os("SAPSAN_PLOT_DIR") {
            std::fs::write(Path::new(&dir).join("pdf_cdf.png"), &png1)?;
            std::fs::write(Path::new(&dir).join("slices_plot.png"), &png2)?;
        }
    }
    let ks = result.ok_or("no repeat ran")?;
    println!(
        "rust:   KS D={:.6} p={:.6e} at {:.6}; PNGs {} + {} bytes",
        ks.statistic, ks.pvalue, ks.position, sizes.0, sizes.1
    );
    println!(
        "rust:   sort+ks_2samp {:.3} s, histograms {:.3} s, pdf_cdf.png {:.3} s, slices.png {:.3} s, total {:.3} s (simple API, sorting twice: {:.3} s); best of {REPEATS}",
        best[0], best[1], best[2], best[3], best[4], best_simple
    );
    if cfg!(debug_assertions) {
        println!(
            "note: this is a debug build; time it with `cargo run --release --example bench_analysis`"
        );
    }

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv-bench/bin/python");
    let script = root.join("bench/analysis_peer.py");
    if !python.exists() {
        println!(
            "python peer skipped: no venv at {}. Create it with\n  python3 -m venv .venv-bench && .venv-bench/bin/pip install numpy scipy matplotlib\n(in {}) and run again.",
            python.display(),
            root.display()
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (tp, pp) = (
        dir.path().join("target.f32"),
        dir.path().join("prediction.f32"),
    );
    write_f32(&tp, &target)?;
    write_f32(&pp, &prediction)?;
    let (c, d, h, w) = SHAPE;
    let out = Command::new(&python)
        .arg(&script)
        .arg(&tp)
        .arg(&pp)
        .args([c, d, h, w, REPEATS].map(|v| v.to_string()))
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let t = &v["times"];
    let f = |k: &str| t[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "python: KS D={:.6} p={:.6e} at {:.6}; PNGs {} + {} bytes",
        v["statistic"].as_f64().unwrap_or(f64::NAN),
        v["pvalue"].as_f64().unwrap_or(f64::NAN),
        v["position"].as_f64().unwrap_or(f64::NAN),
        v["png_bytes"][0],
        v["png_bytes"][1]
    );
    println!(
        "python: ks_2samp {:.3} s, histograms {:.3} s, pdf_cdf.png {:.3} s, slices.png {:.3} s, total {:.3} s; best of {REPEATS}",
        f("ks_2samp"),
        f("histograms"),
        f("pdf_cdf_png"),
        f("slices_png"),
        f("total")
    );
    println!("ratio python / rust (total): {:.1}x", f("total") / best[4]);
    Ok(())
}
