//! Where and how to reach S3: the settings the Python client reads, from the environment.
use super::sign::Credentials;
use crate::error::{Error, Result};

/// Default part size of multipart uploads (`MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE`, as MLflow): 10 MiB.
pub const DEFAULT_PART_SIZE: usize = 10 << 20;
/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;

/// Where and how to reach S3, from the environment ([`S3Config::from_lookup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`); `None` when unset.
    pub credentials: Option<Credentials>,
    /// `AWS_DEFAULT_REGION` (or `AWS_REGION`), default `us-east-1`.
    pub region: String,
    /// `MLFLOW_S3_ENDPOINT_URL`: an S3-compatible store, addressed path-style
    /// (`{endpoint}/{bucket}/{key}`). `None`: AWS, `https://{bucket}.s3.{region}.amazonaws.com`.
    pub endpoint: Option<String>,
    /// `MLFLOW_S3_IGNORE_TLS`: accept any certificate.
    pub ignore_tls: bool,
    /// Part size of multipart uploads (`MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE`, at least 5 MiB);
    /// files up to this size go up in one PUT.
    pub part_size: usize,
}

/// An [`Error::Setting`].
pub(super) fn setting(name: &str, value: &str, reason: impl Into<String>) -> Error {
    Error::Setting {
        name: name.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

impl S3Config {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the settings through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let nonempty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let credentials = match (
            nonempty("AWS_ACCESS_KEY_ID"),
            nonempty("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(access_key), Some(secret_key)) => Some(Credentials {
                access_key: access_key.trim().to_owned(),
                secret_key: secret_key.trim().to_owned(),
                session_token: nonempty("AWS_SESSION_TOKEN").map(|t| t.trim().to_owned()),
            }),
            (Some(_), None) => {
                return Err(setting(
                    "AWS_SECRET_ACCESS_KEY",
                    "<unset>",
                    "AWS_ACCESS_KEY_ID is set: set the secret key that goes with it",
                ));
            }
            (None, Some(_)) => {
                return Err(setting(
                    "AWS_ACCESS_KEY_ID",
                    "<unset>",
                    "AWS_SECRET_ACCESS_KEY is set: set the access key id that goes with it",
                ));
            }
            (None, None) => None,
        };
        let region = nonempty("AWS_DEFAULT_REGION")
            .or_else(|| nonempty("AWS_REGION"))
            .map_or_else(|| "us-east-1".to_owned(), |r| r.trim().to_owned());
        let endpoint = match nonempty("MLFLOW_S3_ENDPOINT_URL") {
            Some(e) => {
                let e = e.trim().trim_end_matches('/').to_owned();
                match reqwest::Url::parse(&e) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                    _ => {
                        return Err(setting(
                            "MLFLOW_S3_ENDPOINT_URL",
                            &e,
                            "expected the store's URL, http(s)://host[:port]",
                        ));
                    }
                }
                Some(e)
            }
            None => None,
        };
        let ignore_tls = match nonempty("MLFLOW_S3_IGNORE_TLS") {
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    return Err(setting(
                        "MLFLOW_S3_IGNORE_TLS",
                        &v,
                        "expected `true` or `false`",
                    ));
                }
            },
            None => false,
        };
        let part_size = match nonempty("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE") {
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n >= MIN_PART_SIZE)
                .ok_or_else(|| {
                    setting(
                        "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE",
                        &v,
                        format!(
                            "expected a number of bytes >= {MIN_PART_SIZE} (S3's smallest part)"
                        ),
                    )
                })?,
            None => DEFAULT_PART_SIZE,
        };
        Ok(S3Config {
            credentials,
            region,
            endpoint,
            ignore_tls,
            part_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<S3Config> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        S3Config::from_lookup(|k| m.get(k).cloned())
    }

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const TOKEN: &str = "FwoGZXIvYXdzEXAMPLETOKEN";

    #[test]
    fn reads_the_standard_settings() {
        let c = config(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_SESSION_TOKEN", TOKEN),
            ("AWS_DEFAULT_REGION", "eu-west-3"),
            ("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9000/"),
            ("MLFLOW_S3_IGNORE_TLS", "true"),
        ])
        .unwrap();
        assert_eq!(c.region, "eu-west-3");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(c.ignore_tls);
        assert_eq!(c.part_size, DEFAULT_PART_SIZE);
        let creds = c.credentials.as_ref().unwrap();
        assert_eq!(creds.session_token.as_deref(), Some(TOKEN));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(SECRET) && !dbg.contains(TOKEN), "{dbg}");
        assert_eq!(config(&[]).unwrap().region, "us-east-1");
        for (pairs, name) in [
            (vec![("AWS_ACCESS_KEY_ID", "AKID")], "AWS_SECRET_ACCESS_KEY"),
            (vec![("AWS_SECRET_ACCESS_KEY", SECRET)], "AWS_ACCESS_KEY_ID"),
            (
                vec![("MLFLOW_S3_ENDPOINT_URL", "minio:9000")],
                "MLFLOW_S3_ENDPOINT_URL",
            ),
            (
                vec![("MLFLOW_S3_IGNORE_TLS", "maybe")],
                "MLFLOW_S3_IGNORE_TLS",
            ),
            (
                vec![("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", "1000")],
                "MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE",
            ),
        ] {
            match config(&pairs) {
                Err(e @ Error::Setting { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(name), "{msg}");
                    assert!(!msg.contains(SECRET), "{msg}");
                }
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
    }
}
