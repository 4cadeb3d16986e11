//! MLflow server start-up (TEMPORARY stand-in).
//!
//! This file only checks for a running server so the tracking client can be built and tested; the
//! real start-up (spawning `mlflow server`, polling `/health`, owning the process group) replaces it
//! at merge with the same signatures.
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// How to start an MLflow server when none is running.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The `mlflow` executable (default: `mlflow` from `PATH`).
    pub mlflow_bin: Option<PathBuf>,
    /// Directory for `mlflow.db` and `mlartifacts` (default: the current directory).
    pub data_dir: Option<PathBuf>,
    /// Worker processes (default: 1).
    pub workers: Option<u32>,
    /// How long to wait for `/health` (default: 60 s).
    pub ready_timeout: Duration,
    /// Do not print the server's URL.
    pub quiet: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            mlflow_bin: None,
            data_dir: None,
            workers: None,
            ready_timeout: Duration::from_secs(60),
            quiet: false,
        }
    }
}

/// A server started by this process.
#[derive(Debug)]
pub struct MlflowServer {
    url: String,
}

impl MlflowServer {
    /// The server's URL (`http://host:port`).
    pub fn url(&self) -> &str {
        &self.url
    }
    /// Stops the server (its whole process group).
    pub fn stop(self) -> Result<()> {
        Ok(())
    }
    /// Lets the server outlive this program.
    pub fn detach(self) {}
}

/// Uses an MLflow server already on `host:port`, or starts one; `Some(server)` when started here.
///
/// This stand-in only checks for a running server.
pub fn ensure_server(host: &str, port: u16, _opts: &ServerOptions) -> Result<Option<MlflowServer>> {
    let url = format!("http://{host}:{port}");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .map_err(|e| Error::Connection {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    match client.get(format!("{url}/health")).send() {
        Ok(r) => {
            let status = r.status();
            let body = r.text().unwrap_or_default();
            if status.is_success() && body.trim() == "OK" {
                Ok(None)
            } else {
                Err(Error::PortBusyNotMlflow {
                    host: host.to_owned(),
                    port,
                    answered: format!(
                        "GET /health answered HTTP {status}: {}",
                        body.chars().take(80).collect::<String>()
                    ),
                })
            }
        }
        Err(e) => Err(Error::Connection {
            url,
            reason: format!("no MLflow server answers there ({e})"),
        }),
    }
}
