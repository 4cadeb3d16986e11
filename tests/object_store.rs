//! Artifacts in an object store: the team set-up, an MLflow server started with
//! `--no-serve-artifacts --default-artifact-root s3://...` in front of an S3-compatible store
//! (moto on loopback, started by `scripts/test.sh`). The client writes and reads artifacts in the
//! bucket itself; the official Python client (with boto3) reads every one back.
mod common;

use sapsan::tracking::rest::HttpClient;
use sapsan::tracking::rest::s3::{S3Client, S3Config, S3Root};
use sapsan::tracking::{Backend, MlflowBackend, OfflineBackend};
use serde_json::Value;

/// Every artifact of the runs `args` and of the logged models they produced, downloaded with
/// `mlflow.artifacts.download_artifacts`: path -> [size listed, bytes read, sha256]. Also the
/// runs' artifact URIs and the multipart uploads left open in the bucket.
const READ_ALL: &str = r#"
import hashlib, os, tempfile, boto3
def walk(list_fn, path=None):
    for f in list_fn(path):
        if f.is_dir:
            yield from walk(list_fn, f.path)
        else:
            yield f
def read(uri):
    d = tempfile.mkdtemp()
    p = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=d)
    data = open(p, 'rb').read()
    return [len(data), hashlib.sha256(data).hexdigest()]
out = {"runs": {}, "models": {}}
for run_id in args:
    r = client.get_run(run_id)
    files = {}
    for f in walk(lambda p: client.list_artifacts(run_id, p)):
        files[f.path] = [f.file_size] + read(r.info.artifact_uri + "/" + f.path)
    out["runs"][run_id] = {"uri": r.info.artifact_uri, "files": files}
    for m in client.search_logged_models(experiment_ids=[r.info.experiment_id]):
        if m.source_run_id != run_id:
            continue
        files = {}
        for f in walk(lambda p: client.list_logged_model_artifacts(m.model_id, p)):
            files[f.path] = [f.file_size] + read(m.artifact_location + "/" + f.path)
        out["models"][m.model_id] = {"uri": m.artifact_location, "files": files}
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
out["open_uploads"] = [u["Key"] for b in s3.list_buckets()["Buckets"]
                       for u in s3.list_multipart_uploads(Bucket=b["Name"]).get("Uploads", [])]
print(json.dumps(out))
"#;

fn sha256(bytes: &[u8]) -> String {
    sapsan::tracking::rest::s3::sign::sha256_hex(bytes)
}

fn files(v: &Value) -> Vec<String> {
    let mut f: Vec<String> = v["files"].as_object().unwrap().keys().cloned().collect();
    f.sort();
    f
}

/// Every file listed was read whole: listed size = bytes read, and not empty.
fn assert_whole(v: &Value) {
    for (path, f) in v["files"].as_object().unwrap() {
        assert_eq!(f[0], f[1], "{path}: listed size vs bytes read: {v}");
        assert!(f[1].as_u64().unwrap() > 0, "{path} is empty: {v}");
    }
}

/// The main job against the S3-backed server: every artifact of the train run, both evaluations
/// and the logged model is in the bucket and reads back with the Python client; the Rust read
/// paths (listing, `download_artifact`, `download_model_file`) read the same bytes.
#[test]
fn main_job_writes_every_artifact_to_the_bucket() {
    let uri = common::s3_tracking_uri();
    let dir = tempfile::tempdir().unwrap();
    let experiment = common::unique("object-store");
    let out = common::example_command("quickstart")
        .env("MLFLOW_TRACKING_URI", &uri)
        .env("MLFLOW_EXPERIMENT_NAME", &experiment)
        .env("SAPSAN_DATA_DIR", dir.path())
        .env("SAPSAN_EPOCHS", "2")
        .env_remove("SAPSAN_MODEL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "quickstart failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id_after = |label: &str| -> Vec<String> {
        stdout
            .lines()
            .filter_map(|l| l.trim().strip_prefix(label))
            .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
            .collect()
    };
    let (train, evals) = (id_after("train run:"), id_after("evaluate run:"));
    assert_eq!((train.len(), evals.len()), (1, 2), "{stdout}");
    let ids: Vec<&str> = train.iter().chain(&evals).map(String::as_str).collect();

    let v = common::judge_at(&uri, READ_ALL, &ids);
    let t = &v["runs"][ids[0]];
    assert!(t["uri"].as_str().unwrap().starts_with("s3://"), "{v}");
    assert_eq!(
        files(t),
        [
            "model.safetensors",
            "model_details.txt",
            "model_forward.txt",
            "runtime_log.html"
        ],
        "{v}"
    );
    assert_whole(t);
    for e in &ids[1..] {
        let r = &v["runs"][*e];
        assert!(r["uri"].as_str().unwrap().starts_with("s3://"), "{v}");
        for plot in ["pdf_cdf.png", "slices_plot.png", "spectrum.png"] {
            assert!(files(r).iter().any(|f| f == plot), "{plot}: {v}");
        }
        assert_whole(r);
    }
    let models = v["models"].as_object().unwrap();
    assert_eq!(models.len(), 1, "{v}");
    let (model_id, m) = models.iter().next().unwrap();
    assert!(m["uri"].as_str().unwrap().starts_with("s3://"), "{v}");
    assert_eq!(files(m), ["MLmodel", "model.safetensors"], "{v}");
    assert_whole(m);
    assert_eq!(v["open_uploads"], serde_json::json!([]), "{v}");

    // The Rust read side reads the same bytes from the bucket.
    let backend = MlflowBackend::builder()
        .tracking_uri(&uri)
        .experiment(&experiment)
        .build()
        .unwrap();
    let weights = backend
        .download_artifact(ids[0], "model.safetensors")
        .unwrap();
    assert_eq!(sha256(&weights), t["files"]["model.safetensors"][2], "{v}");
    let model_weights = backend
        .download_model_file(&format!("models:/{model_id}"), "model.safetensors")
        .unwrap();
    assert_eq!(
        sha256(&model_weights),
        m["files"]["model.safetensors"][2],
        "{v}"
    );
    let listed: Vec<(String, Option<u64>)> = backend
        .list_artifacts(ids[1], None)
        .unwrap()
        .into_iter()
        .map(|f| (f.path, f.file_size))
        .collect();
    let r = &v["runs"][ids[1]];
    let want: Vec<(String, Option<u64>)> = files(r)
        .into_iter()
        .map(|p| {
            let size = r["files"][&p][0].as_u64();
            (p, size)
        })
        .collect();
    assert_eq!(listed, want, "{v}");
}

/// A job journaled offline, then `sapsan sync` to the S3-backed server: a file larger than one
/// part goes up as a multipart upload, each artifact lands once, a second sync sends nothing
/// again, and no upload is left open in the bucket.
#[test]
fn offline_journal_replays_to_the_bucket_exactly_once() {
    let uri = common::s3_tracking_uri();
    let root = tempfile::tempdir().unwrap();
    let experiment = common::unique("object-store-offline");
    let inputs = tempfile::tempdir().unwrap();
    // 12 MiB + 3 bytes: three 5 MiB parts at the smallest part size; bytes that differ per part.
    let big: Vec<u8> = (0..(12u32 << 20) + 3)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let big_path = inputs.path().join("big.bin");
    std::fs::write(&big_path, &big).unwrap();
    let small_path = inputs.path().join("notes.txt");
    std::fs::write(&small_path, "small artifact\n").unwrap();
    {
        let backend = OfflineBackend::new(&experiment, root.path()).unwrap();
        backend.start("train", false, None).unwrap();
        backend.log_parameter("model - lr", "0.1").unwrap();
        backend.log_artifact(&big_path).unwrap();
        backend.log_artifact(&small_path).unwrap();
        backend.end().unwrap();
    }
    let sync = |what: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sapsan"))
            .args(["sync"])
            .arg(root.path())
            .args(["--tracking-uri", &uri])
            .env(
                "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE",
                (5u32 << 20).to_string(),
            )
            .output()
            .unwrap();
        common::stdout_of_success(out, &format!("{what} sync"))
    };
    let first = sync("first");
    assert!(
        first.contains("1 runs") || first.contains("1 run"),
        "{first}"
    );
    let second = sync("second");

    let v = common::judge_at(
        &uri,
        &format!(
            "exp = client.get_experiment_by_name(args[0])\n\
             ids = [r.info.run_id for r in client.search_runs([exp.experiment_id])]\n\
             args = ids\n{READ_ALL}\n"
        ),
        &[&experiment],
    );
    let runs = v["runs"].as_object().unwrap();
    assert_eq!(
        runs.len(),
        1,
        "one run, created once: {v}\n{first}\n{second}"
    );
    let r = runs.values().next().unwrap();
    assert!(r["uri"].as_str().unwrap().starts_with("s3://"), "{v}");
    assert_eq!(files(r), ["big.bin", "notes.txt"], "{v}");
    assert_eq!(r["files"]["big.bin"][1], big.len() as u64, "{v}");
    assert_eq!(r["files"]["big.bin"][2], sha256(&big), "{v}");
    assert_eq!(
        r["files"]["notes.txt"][2],
        sha256(b"small artifact\n"),
        "{v}"
    );
    assert_eq!(v["open_uploads"], serde_json::json!([]), "{v}");

    // Exactly once in the bucket: the run's prefix holds these two objects and nothing else.
    let prefix = S3Root::parse(r["uri"].as_str().unwrap()).unwrap();
    let s3 = s3_client();
    let listing = s3
        .list(&prefix.bucket, &format!("{}/", prefix.prefix))
        .unwrap();
    let keys: Vec<&str> = listing.objects.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [prefix.key("big.bin"), prefix.key("notes.txt")],
        "{listing:?}"
    );
}

fn s3_client() -> S3Client {
    let _ = common::s3_tracking_uri();
    let config = S3Config::from_env().unwrap();
    assert!(
        config.endpoint.is_some(),
        "MLFLOW_S3_ENDPOINT_URL is not set: run the tests with `bash scripts/test.sh`"
    );
    let http = HttpClient::new("http://127.0.0.1:1", &Default::default()).unwrap();
    S3Client::new(
        &http,
        S3Config {
            part_size: 5 << 20,
            ..config
        },
    )
    .unwrap()
}

/// A multipart upload left open by a process that died is aborted when the key is uploaded again,
/// and the new upload completes once: one object of the file's size and bytes, no open upload.
/// Six parts, each read from the file in turn.
#[test]
fn an_upload_left_open_is_aborted_and_the_new_one_completes() {
    let s3 = s3_client();
    let bucket = std::env::var("SAPSAN_TEST_S3_BUCKET")
        .expect("SAPSAN_TEST_S3_BUCKET is not set: run the tests with `bash scripts/test.sh`");
    let root = S3Root::parse(&format!("s3://{bucket}/{}", common::unique("stale"))).unwrap();
    let obj = root.object("big.bin");
    let opened = common::judge_at(
        &common::s3_tracking_uri(),
        r#"
import os, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
u = s3.create_multipart_upload(Bucket=args[0], Key=args[1])
s3.upload_part(Bucket=args[0], Key=args[1], UploadId=u["UploadId"], PartNumber=1, Body=b"x" * (5 << 20))
print(json.dumps([x["Key"] for x in s3.list_multipart_uploads(Bucket=args[0], Prefix=args[1]).get("Uploads", [])]))
"#,
        &[&obj.bucket, &obj.key],
    );
    assert_eq!(opened, serde_json::json!([obj.key]));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    // 26 MiB + 7 bytes: six 5 MiB parts (the last one short).
    let len = (26u32 << 20) + 7;
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &bytes).unwrap();
    s3.upload_file(&obj, &path).unwrap();
    assert_eq!(s3.head_size(&obj).unwrap(), Some(bytes.len() as u64));
    assert_eq!(sha256(&s3.get_object(&obj).unwrap()), sha256(&bytes));

    let left = common::judge_at(
        &common::s3_tracking_uri(),
        r#"
import os, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
print(json.dumps([x["Key"] for x in s3.list_multipart_uploads(Bucket=args[0], Prefix=args[1]).get("Uploads", [])]))
"#,
        &[&obj.bucket, &obj.key],
    );
    assert_eq!(left, serde_json::json!([]));
}

/// The store's refusals come back as errors that name the object and what to fix: a bucket that
/// does not exist, an object that does not exist. No credential is in them.
#[test]
fn refusals_name_the_object_and_the_fix() {
    let s3 = s3_client();
    let missing = S3Root::parse("s3://no-such-bucket-sapsan/p")
        .unwrap()
        .object("a.txt");
    let e = s3.put_object(&missing, b"x").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("s3://no-such-bucket-sapsan/p/a.txt"), "{msg}");
    assert!(
        msg.contains("NoSuchBucket") && msg.contains("--default-artifact-root"),
        "{msg}"
    );
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap();
    assert!(!format!("{e:?}").contains(&format!("={secret}")), "{e:?}");

    let bucket = std::env::var("SAPSAN_TEST_S3_BUCKET")
        .expect("SAPSAN_TEST_S3_BUCKET is not set: run the tests with `bash scripts/test.sh`");
    let absent = S3Root::parse(&format!("s3://{bucket}/{}", common::unique("absent")))
        .unwrap()
        .object("model.safetensors");
    let e = s3.get_object(&absent).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&absent.key) && msg.contains("HTTP 404"),
        "{msg}"
    );
    assert_eq!(s3.head_size(&absent).unwrap(), None);
}
