//! Seconds and peak resident memory to evaluate CNN3d on a 128^3 three-channel cube: read the
//! checkpoint, cut it into sub-cubes, predict every sub-cube, stitch the predictions back into a
//! 128^3 cube.
//!
//! ```text
//! cargo run --release --example bench_eval [repeats]
//! ```
//!
//! The cube: synthetic turbulence at 128^3 (`sapsan::data::generate`, written once into a
//! temporary directory, not timed). Two sub-cube sizes, 32^3 (64 sub-cubes) and 16^3 (512), each
//! with a CNN3d built for that size (3 channels in, 1 out; untrained weights: the cost does not
//! depend on their values). Timed, per repeat: `Hdf5Dataset::load_all` (read + cut),
//! `Cnn3d::predict` over all sub-cubes in one batch, `restore_cube` (stitching). The timed part
//! runs in a child process so its peak resident set (`VmHWM`) is the evaluation's own, not the
//! data generation's. Targets: under 2 s and under 1 GB.
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use sapsan::data::{CheckpointConfig, DataConfig, Hdf5Dataset, generate, restore_cube, synthetic};
use sapsan::estimator::{Cnn3d, Cnn3dConfig};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

const EDGE: usize = 128;

/// Peak resident set of this process in bytes (`VmHWM` of `/proc/self/status`; Linux only).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The timed evaluation (child process): every repeat reads, cuts, predicts and stitches.
fn evaluate(dir: &Path, sub: usize, repeats: usize) -> BoxResult<()> {
    let data = DataConfig::new(DataConfig::synthetic(dir, EDGE).path, [synthetic::FEATURE]);
    let chkpnt = CheckpointConfig::new([0], [EDGE; 3], [sub; 3]);
    let dataset = Hdf5Dataset::new(data, chkpnt, 1.0);
    let model = Cnn3d::new(Cnn3dConfig::default(), 3, [1, sub, sub, sub])?;
    let mut totals = Vec::new();
    for _ in 0..repeats {
        let t0 = Instant::now();
        let (samples, layout) = dataset.load_all()?;
        let t1 = Instant::now();
        let prediction = model.predict(&samples.features)?;
        let t2 = Instant::now();
        let cube = restore_cube(prediction.view(), layout.cube_size)?;
        let t3 = Instant::now();
        if cube.shape() != [1, 1, EDGE, EDGE, EDGE] {
            return Err(format!("stitched cube has shape {:?}", cube.shape()).into());
        }
        let total = (t3 - t0).as_secs_f64();
        println!(
            "    read+cut {:.3} s, predict {} sub-cubes {:.3} s, stitch {:.3} s: total {total:.3} s",
            (t1 - t0).as_secs_f64(),
            samples.len(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
        );
        totals.push(total);
    }
    totals.sort_by(f64::total_cmp);
    let rss = peak_rss().map_or("unknown".to_string(), |b| {
        format!("{:.0} MB", b as f64 / 1e6)
    });
    println!(
        "  {sub}^3 sub-cubes: total {:.3} s median of {repeats} (min {:.3}), peak resident {rss}",
        totals[totals.len() / 2],
        totals[0]
    );
    Ok(())
}

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, dir, sub, repeats] = args.as_slice()
        && flag == "--child"
    {
        return evaluate(Path::new(dir), sub.parse()?, repeats.parse()?);
    }
    let repeats: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    if cfg!(debug_assertions) {
        println!(
            "note: this is a debug build; time it with `cargo run --release --example bench_eval`"
        );
    }
    let dir = tempfile::tempdir()?;
    let t0 = Instant::now();
    generate(dir.path(), EDGE, &[0], 1)?;
    println!(
        "evaluate CNN3d on a 3x{EDGE}^3 cube (generated in {:.1} s, not timed); {repeats} repeats; \
         RAYON_NUM_THREADS={}",
        t0.elapsed().as_secs_f64(),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset (all cores)".into())
    );
    let exe = std::env::current_exe()?;
    for sub in [32, 16] {
        let out = Command::new(&exe)
            .arg("--child")
            .arg(dir.path())
            .args([sub.to_string(), repeats.to_string()])
            .output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            return Err(format!(
                "evaluation at {sub}^3 failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
    }
    Ok(())
}
