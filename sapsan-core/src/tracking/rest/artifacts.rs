//! Where a run's artifacts go: the server's `mlflow-artifacts` proxy, a directory on this machine
//! (server started with `--no-serve-artifacts` or a `file:` store), an S3 bucket (`s3://`, see
//! [`super::s3`]), or something unsupported. The one place that routes artifact transfers by
//! location: [`put`], [`put_file`], [`get`].
use std::path::{Path, PathBuf};

use super::client::HttpClient;
use super::encoding::encode_path;
use super::encoding::percent_decode;
use super::s3::{S3Object, S3Root, S3Slot};
use crate::error::{Error, Result};

/// A run's artifact store, from its `artifact_uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactLocation {
    /// Through the tracking server: `{tracking}/api/2.0/mlflow-artifacts/artifacts/{path}/...`.
    Proxy {
        /// Path under the proxy root (`<exp>/<run>/artifacts`).
        path: String,
    },
    /// A directory on the server's disk.
    Local(PathBuf),
    /// An S3 bucket (or any S3-compatible store): `s3://bucket/prefix`.
    S3(S3Root),
    /// Anything else (`gs://`, `wasbs://`, `hdfs://`, ...).
    Unsupported(String),
}

impl ArtifactLocation {
    /// Reads a run's `artifact_uri`.
    pub fn parse(uri: &str) -> Self {
        if let Some(rest) = uri.strip_prefix("mlflow-artifacts:") {
            // `mlflow-artifacts:/p` or `mlflow-artifacts://host:port/p` (the host is the tracking server).
            let path = match rest.strip_prefix("//") {
                Some(with_host) => with_host.split_once('/').map_or("", |(_, p)| p),
                None => rest,
            };
            return ArtifactLocation::Proxy {
                path: path.trim_matches('/').to_owned(),
            };
        }
        if let Some(rest) = uri.strip_prefix("file://") {
            // file:///abs or file://localhost/abs
            let p = rest.strip_prefix("localhost").unwrap_or(rest);
            return ArtifactLocation::Local(PathBuf::from(percent_decode(p)));
        }
        if let Some(rest) = uri.strip_prefix("file:") {
            return ArtifactLocation::Local(PathBuf::from(percent_decode(rest)));
        }
        if uri.starts_with('/') {
            return ArtifactLocation::Local(PathBuf::from(uri));
        }
        if let Some(root) = S3Root::parse(uri) {
            return ArtifactLocation::S3(root);
        }
        ArtifactLocation::Unsupported(uri.to_owned())
    }
}

/// Checks an artifact name: a relative `/`-separated path without `..`, `.` or empty parts.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::Artifact {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name.starts_with('/') || name.starts_with('\\') || Path::new(name).is_absolute() {
        return bad("absolute paths are not allowed; give a name relative to the run's artifacts");
    }
    if name.contains('\\') {
        return bad("use '/' to separate directories");
    }
    if name.split('/').any(|s| s == "..") {
        return bad("'..' is not allowed in artifact names");
    }
    if name.split('/').any(|s| s.is_empty() || s == ".") {
        return bad("empty or '.' path parts are not allowed");
    }
    if name.chars().any(char::is_control) {
        return bad("control characters are not allowed");
    }
    Ok(())
}

/// Whether a tracking server at `host` shares this machine's disk (a loopback address).
pub(crate) fn is_local_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Where one artifact of a run is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// PUT to this URL on the tracking server's artifact proxy.
    Url(String),
    /// Write to `dir/name` on this machine.
    Path(PathBuf, String),
    /// An object in an S3 bucket.
    S3(S3Object),
}

/// Where artifact `name` of `run_id` (whose artifact root is `artifact_uri`) goes, for the tracking
/// server at `base`: a proxy URL, or a local directory when the store is on this machine.
pub fn target(base: &str, run_id: &str, artifact_uri: &str, name: &str) -> Result<Target> {
    check_name(name)?;
    match ArtifactLocation::parse(artifact_uri) {
        ArtifactLocation::Proxy { path } => Ok(Target::Url(format!(
            "{base}/api/2.0/mlflow-artifacts/artifacts/{}/{}",
            encode_path(&path),
            encode_path(name)
        ))),
        ArtifactLocation::Local(dir) => {
            let host = reqwest::Url::parse(base)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            if is_local_host(&host) || dir.exists() {
                Ok(Target::Path(dir, name.to_owned()))
            } else {
                Err(Error::Artifact {
                    name: name.to_owned(),
                    reason: format!(
                        "run {run_id} stores artifacts in {} on the server's machine ({host}), \
                         which is not reachable from here; start the server with artifact \
                         proxying (the default; not --no-serve-artifacts)",
                        dir.display()
                    ),
                })
            }
        }
        ArtifactLocation::S3(root) => Ok(Target::S3(root.object(name))),
        ArtifactLocation::Unsupported(u) => {
            let scheme = u.split_once("://").map_or(u.as_str(), |(s, _)| s);
            Err(Error::Artifact {
                name: name.to_owned(),
                reason: format!(
                    "run {run_id} stores artifacts at {u}: sapsan cannot write to `{scheme}` \
                     stores; it writes through the server's proxy (mlflow-artifacts:, the \
                     default, --serve-artifacts), to a local directory (file:) or to S3 and \
                     S3-compatible stores (s3://, with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY \
                     and MLFLOW_S3_ENDPOINT_URL); start the MLflow server with artifact proxying \
                     so artifacts go through it"
                ),
            })
        }
    }
}

/// Writes `bytes` to `target` (a PUT through `http`, a local file, or an S3 object with the
/// client in `s3`, built from the environment on first use).
pub fn put(http: &HttpClient, s3: &S3Slot, target: &Target, bytes: &[u8]) -> Result<()> {
    match target {
        Target::Url(url) => http.put_bytes(url, bytes),
        Target::Path(dir, name) => write_local(dir, name, bytes),
        Target::S3(obj) => s3.get(http)?.put_object(obj, bytes),
    }
}

/// Writes the file at `path` to `target`: to S3 streamed (one part in memory at a time), else
/// as [`put`] of its bytes.
pub fn put_file(http: &HttpClient, s3: &S3Slot, target: &Target, path: &Path) -> Result<()> {
    match target {
        Target::S3(obj) => s3.get(http)?.upload_file(obj, path),
        _ => {
            let bytes = std::fs::read(path).map_err(|e| Error::io("reading artifact", path, e))?;
            put(http, s3, target, &bytes)
        }
    }
}

/// The bytes at `target`.
pub fn get(http: &HttpClient, s3: &S3Slot, target: &Target) -> Result<Vec<u8>> {
    match target {
        Target::Url(url) => http.get_bytes(url, &[]),
        Target::Path(dir, name) => {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| Error::io("reading artifact", p, e))
        }
        Target::S3(obj) => s3.get(http)?.get_object(obj),
    }
}

/// Writes `bytes` to `dir/name`, creating directories (a local artifact store).
pub(crate) fn write_local(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io("creating artifact directory", parent, e))?;
    }
    std::fs::write(&path, bytes).map_err(|e| Error::io("writing artifact", &path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_artifact_uris() {
        assert_eq!(
            ArtifactLocation::parse("mlflow-artifacts:/1/abc/artifacts"),
            ArtifactLocation::Proxy {
                path: "1/abc/artifacts".into()
            }
        );
        assert_eq!(
            ArtifactLocation::parse("mlflow-artifacts://h:5000/1/abc/artifacts"),
            ArtifactLocation::Proxy {
                path: "1/abc/artifacts".into()
            }
        );
        assert_eq!(
            ArtifactLocation::parse("/srv/mlruns/1/abc/artifacts"),
            ArtifactLocation::Local("/srv/mlruns/1/abc/artifacts".into())
        );
        assert_eq!(
            ArtifactLocation::parse("file:///srv/ml%20runs/1"),
            ArtifactLocation::Local("/srv/ml runs/1".into())
        );
        assert_eq!(
            ArtifactLocation::parse("s3://bucket/1/abc"),
            ArtifactLocation::S3(S3Root {
                bucket: "bucket".into(),
                prefix: "1/abc".into()
            })
        );
        assert!(matches!(
            ArtifactLocation::parse("gs://bucket/1/abc"),
            ArtifactLocation::Unsupported(_)
        ));
    }

    #[test]
    fn rejects_escaping_names() {
        for n in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "",
            "a//b",
            "./a",
            "a\\b",
        ] {
            assert!(
                matches!(check_name(n), Err(Error::Artifact { .. })),
                "{n:?} accepted"
            );
        }
        for n in ["model_details.txt", "plots/pdf cdf.png", "a..b"] {
            check_name(n).unwrap();
        }
    }

    #[test]
    fn encodes_url_paths() {
        assert_eq!(encode_path("plots/pdf cdf.png"), "plots/pdf%20cdf.png");
        assert_eq!(encode_path("a#b?c"), "a%23b%3Fc");
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_local_host("127.0.0.1"));
        assert!(is_local_host("localhost"));
        assert!(is_local_host("[::1]"));
        assert!(!is_local_host("example.org"));
        assert!(!is_local_host("10.0.0.1"));
    }

    #[test]
    fn routes_s3_and_names_unsupported_schemes() {
        let t = target(
            "http://h:5000",
            "r1",
            "s3://bkt/7/r1/artifacts",
            "plots/a.png",
        )
        .unwrap();
        assert_eq!(
            t,
            Target::S3(S3Object {
                bucket: "bkt".into(),
                key: "7/r1/artifacts/plots/a.png".into()
            })
        );
        let e = target("http://h:5000", "r1", "gs://bkt/7/r1/artifacts", "a.png")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`gs` stores") && e.contains("s3://"), "{e}");
    }

    #[test]
    fn writes_local_files() {
        let d = tempfile::tempdir().unwrap();
        write_local(d.path(), "sub/x.txt", b"hi").unwrap();
        assert_eq!(std::fs::read(d.path().join("sub/x.txt")).unwrap(), b"hi");
    }
}
