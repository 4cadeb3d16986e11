//! Seconds to read the checkpoints of a job, ours against h5py (`bench/data_peer.py`), on the same
//! files in one run.
//!
//! ```text
//! sh bench/setup.sh            # once: creates .venv-bench (numpy, ..., h5py)
//! cargo run --release --example bench_data [rounds] [--rust-only]
//! ```
//!
//! The files: 8 checkpoints of synthetic turbulence at 64^3 (`sapsan::data::generate`), each a
//! 3x64^3 float32 velocity file (3 MiB) as the quickstart layout names them. Timed, after one
//! untimed warm-up round on each side (so both read from the page cache):
//! - ours: `Hdf5Dataset::load_all` of the 8 checkpoints with the velocity as the only feature and
//!   the whole cube as one sub-cube (what a job's loader runs: open, checks, read, stack, cut),
//!   and, apart, `read_cube` on each file in turn;
//! - h5py: `h5py.File(path)[name][()]` on each file in turn, into float32 numpy arrays, and the
//!   same followed by `np.stack` into one (8, 3, 64, 64, 64) array (the counterpart of
//!   `load_all`, which also returns one array).
//!
//! Reported: the median round (and the minimum) and the ratios h5py / ours.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sapsan::data::{CheckpointConfig, DataConfig, Hdf5Dataset, generate, read_cube, synthetic};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

const EDGE: usize = 64;
const CHECKPOINTS: usize = 8;

/// Median and minimum of `t`.
fn stats(t: &[f64]) -> (f64, f64) {
    let mut v = t.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = match n {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    };
    (median, v.first().copied().unwrap_or(f64::NAN))
}

/// Times `f` over one warm-up and `rounds` timed rounds; `f` returns the number of values read.
fn time_rounds(rounds: usize, mut f: impl FnMut() -> BoxResult<usize>) -> BoxResult<(f64, f64)> {
    let values = f()?;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t0 = Instant::now();
        let n = f()?;
        times.push(t0.elapsed().as_secs_f64());
        if n != values {
            return Err(format!("read {n} values, the warm-up read {values}").into());
        }
    }
    Ok(stats(&times))
}

/// h5py's seconds per round, median and minimum: reading only, and reading + `np.stack`.
fn peer(python: &Path, rounds: usize, files: &[PathBuf]) -> BoxResult<[(f64, f64); 2]> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("bench/data_peer.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(rounds.to_string())
        .args(files)
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
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "  h5py {} (HDF5 {}): {} files, {} values per round",
        v["h5py"].as_str().unwrap_or("?"),
        v["hdf5"].as_str().unwrap_or("?"),
        v["files"],
        v["values"]
    );
    Ok([
        (f("round_s"), f("round_s_min")),
        (f("stacked_s"), f("stacked_s_min")),
    ])
}

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let rust_only = args.iter().any(|a| a == "--rust-only");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv-bench/bin/python");
    let have_peer = !rust_only && python.exists();
    if !rust_only && !have_peer {
        println!(
            "h5py peer skipped: no venv at {}. Create it with\n  sh bench/setup.sh\n(in {}) and run again.",
            python.display(),
            root.display()
        );
    }
    if cfg!(debug_assertions) {
        println!(
            "note: this is a debug build; time it with `cargo run --release --example bench_data`"
        );
    }
    let dir = tempfile::tempdir()?;
    let checkpoints: Vec<usize> = (0..CHECKPOINTS).collect();
    generate(dir.path(), EDGE, &checkpoints, 1)?;
    let files: Vec<PathBuf> = checkpoints
        .iter()
        .map(|&t| synthetic::file_path(dir.path(), EDGE, t, synthetic::FEATURE))
        .collect();
    let data = DataConfig::new(
        DataConfig::synthetic(dir.path(), EDGE).path,
        [synthetic::FEATURE],
    );
    let edge = [EDGE; 3];
    let dataset = Hdf5Dataset::new(data, CheckpointConfig::new(checkpoints, edge, edge), 1.0);
    println!(
        "{CHECKPOINTS} files of 3x{EDGE}^3 float32, {rounds} timed rounds after one warm-up; \
         RAYON_NUM_THREADS={}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset (all cores)".into())
    );
    let (load, load_min) = time_rounds(rounds, || Ok(dataset.load_all()?.0.features.len()))?;
    println!("  ours: load_all {load:.4} s/round median (min {load_min:.4})");
    let (each, each_min) = time_rounds(rounds, || {
        let mut n = 0;
        for f in &files {
            n += read_cube(f, None)?.len();
        }
        Ok(n)
    })?;
    println!("  ours: read_cube per file {each:.4} s/round median (min {each_min:.4})");
    if have_peer {
        let [(h5, h5_min), (st, st_min)] = peer(&python, rounds, &files)?;
        println!("  h5py: read {h5:.4} s/round median (min {h5_min:.4})");
        println!("  h5py: read + np.stack {st:.4} s/round median (min {st_min:.4})");
        println!(
            "  ratio h5py / ours: load_all vs read + np.stack {:.2}x, read_cube vs read {:.2}x",
            st / load,
            h5 / each,
        );
        println!("\n| read | ours s/round | h5py s/round | h5py / ours |");
        println!("|---|---:|---:|---:|");
        println!(
            "| load_all vs read + np.stack | {load:.4} | {st:.4} | {:.2}x |",
            st / load
        );
        println!(
            "| read_cube vs read, per file | {each:.4} | {h5:.4} | {:.2}x |",
            h5 / each
        );
    }
    Ok(())
}
