//! Peak memory of a large artifact on its way to an S3 artifact store, beside boto3 measured in
//! the same run. Needs an S3-compatible store and an MLflow server keeping artifacts in it, as
//! `scripts/server.sh` starts them (BENCHMARKS.md, "Object store" has the command):
//! `MLFLOW_S3_ENDPOINT_URL`, `AWS_*`, `SAPSAN_BENCH_TRACKING_URI` (the S3-backed MLflow server)
//! and `SAPSAN_BENCH_BUCKET`. `SAPSAN_BENCH_BYTES` sets the file's size (default 1 GiB).
//!
//! Measured, one after the other, each with the peak resident memory (VmHWM) reset before it:
//! 1. **sapsan, S3 client**: `S3Client::upload_file` of the file (multipart, 10 MiB parts);
//! 2. **sapsan, whole path**: `MlflowBackend::log_artifact` of the file in a run of the S3-backed
//!    server (copied into the journal, then sent from there), ended with `end()`;
//! 3. **boto3**: `upload_file` of the same file (its default transfer: 8 MiB parts, 10 threads),
//!    in a Python process (peak RSS of the upload minus that after the imports).
//!
//! Each object is read back (size) and deleted after its measurement.
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use sapsan::tracking::rest::HttpClient;
use sapsan::tracking::rest::s3::{S3Client, S3Config, S3Root};
use sapsan::tracking::{Backend, MlflowBackend, Settings};

type R<T> = Result<T, Box<dyn std::error::Error>>;

/// A `kB` field of /proc/self/status, in MiB.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resets the peak resident memory to the current one (Linux `clear_refs` 5).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Writes `size` bytes of varied content (each 1 MiB block stamped with its number).
fn make_file(path: &Path, size: u64) -> R<()> {
    let mut block: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut left = size;
    let mut n = 0u64;
    while left > 0 {
        block[..8].copy_from_slice(&n.to_le_bytes());
        let k = left.min(block.len() as u64) as usize;
        f.write_all(&block[..k])?;
        left -= k as u64;
        n += 1;
    }
    f.flush()?;
    Ok(())
}

fn python() -> String {
    std::env::var("SAPSAN_PYTHON").unwrap_or_else(|_| ".venv/bin/python".into())
}

/// boto3's `upload_file` of `path` to `bucket/key`: (seconds, peak RSS growth in MiB), then the
/// object's size read back and the object deleted.
fn boto3_upload(path: &Path, bucket: &str, key: &str) -> R<(f64, f64, u64)> {
    let script = r#"
import os, sys, time, resource, boto3
path, bucket, key = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
s3.list_buckets()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.time()
s3.upload_file(path, bucket, key)
dt = time.time() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
s3.delete_object(Bucket=bucket, Key=key)
print(dt, (peak - base) / 1024.0, size)
"#;
    let out = std::process::Command::new(python())
        .args(["-c", script])
        .arg(path)
        .args([bucket, key])
        .output()?;
    if !out.status.success() {
        return Err(format!("boto3 failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<&str> = text.split_whitespace().collect();
    Ok((v[0].parse()?, v[1].parse()?, v[2].parse()?))
}

/// Deletes an object with boto3 (the bench's clean-up; sapsan itself never deletes artifacts).
fn delete(bucket: &str, key: &str) -> R<()> {
    let out = std::process::Command::new(python())
        .args([
            "-c",
            "import os, sys, boto3; boto3.client('s3', endpoint_url=os.environ['MLFLOW_S3_ENDPOINT_URL']).delete_object(Bucket=sys.argv[1], Key=sys.argv[2])",
            bucket,
            key,
        ])
        .output()?;
    if !out.status.success() {
        return Err(format!("delete failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

fn env(name: &str) -> R<String> {
    std::env::var(name).map_err(|_| {
        format!("{name} is not set: start the store and server as BENCHMARKS.md says").into()
    })
}

fn main() -> R<()> {
    let size: u64 = std::env::var("SAPSAN_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let bucket = env("SAPSAN_BENCH_BUCKET")?;
    let tracking = env("SAPSAN_BENCH_TRACKING_URI")?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("big.bin");
    make_file(&path, size)?;
    let mib = size as f64 / (1 << 20) as f64;
    println!(
        "file: {mib:.0} MiB; resident now {:.1} MiB",
        status_mib("VmRSS:")
    );
    if !reset_peak() {
        println!("(cannot reset VmHWM here: peaks below include everything before)");
    }

    // 1. The S3 client alone.
    let http = HttpClient::new("http://127.0.0.1:1", &Settings::default())?;
    let s3 = S3Client::new(&http, S3Config::from_env()?)?;
    let root =
        S3Root::parse(&format!("s3://{bucket}/bench-{}", std::process::id())).ok_or("bucket")?;
    let obj = root.object("big.bin");
    reset_peak();
    let direct_before = status_mib("VmRSS:");
    let t = Instant::now();
    s3.upload_file(&obj, &path)?;
    let direct_s = t.elapsed().as_secs_f64();
    let direct_peak = status_mib("VmHWM:");
    let got = s3.head_size(&obj)?.ok_or("object missing after upload")?;
    assert_eq!(got, size, "object size");
    delete(&obj.bucket, &obj.key)?;
    println!(
        "sapsan S3Client::upload_file: {direct_s:.1} s ({:.0} MiB/s), peak RSS {direct_peak:.1} MiB \
         ({:+.1} MiB over the {direct_before:.1} MiB before), {} requests",
        mib / direct_s,
        direct_peak - direct_before,
        s3.requests()
    );

    // 2. The whole path: log_artifact in a run of the S3-backed server.
    let journal = tempfile::tempdir()?;
    let settings = Settings {
        flush_timeout: std::time::Duration::from_secs(1800),
        journal_root: journal.path().to_owned(),
        ..Settings::from_env()?
    };
    let backend = MlflowBackend::builder()
        .settings(settings)
        .tracking_uri(&tracking)
        .experiment("bench-s3-upload")
        .build()?;
    let run = backend.start("upload", false, None)?;
    reset_peak();
    let before = status_mib("VmRSS:");
    let t = Instant::now();
    backend.log_artifact(&path)?;
    backend.end()?;
    let whole_s = t.elapsed().as_secs_f64();
    let whole_peak = status_mib("VmHWM:");
    let info = backend.get_run(&run)?;
    let listed = backend.list_artifacts(&run, None)?;
    let run_root = S3Root::parse(&info.artifact_uri).ok_or("the run's artifacts are not in S3")?;
    assert_eq!(
        listed.iter().map(|f| f.file_size).collect::<Vec<_>>(),
        [Some(size)],
        "{listed:?}"
    );
    delete(&run_root.bucket, &run_root.key("big.bin"))?;
    println!(
        "sapsan log_artifact + end (journal copy, then S3): {whole_s:.1} s, peak RSS \
         {whole_peak:.1} MiB ({:+.1} MiB over the {before:.1} MiB before)",
        whole_peak - before
    );

    // 3. boto3.
    let (boto_s, boto_growth, boto_size) = boto3_upload(&path, &bucket, &root.key("boto3.bin"))?;
    assert_eq!(boto_size, size, "boto3 object size");
    println!(
        "boto3 upload_file: {boto_s:.1} s ({:.0} MiB/s), peak RSS growth {boto_growth:.1} MiB",
        mib / boto_s
    );
    println!(
        "ratios (sapsan / boto3): S3 client time {:.2}, peak growth {:.2}; whole path peak growth {:.2}",
        direct_s / boto_s,
        (direct_peak - direct_before).max(0.0) / boto_growth,
        (whole_peak - before).max(0.0) / boto_growth
    );
    Ok(())
}
