//! `sapsan ui`: the local MLflow server a program would use (started when its port is free,
//! exactly as the backend does it), or the configured remote one; prints the UI's address.
use std::time::Duration;

use sapsan::tracking::backend::DEFAULT_PORT;
use sapsan::tracking::rest::HttpClient;
use sapsan::tracking::server::base_url;
use sapsan::tracking::{ServerOptions, ensure_server};

use crate::cli::UiArgs;
use crate::env;
use crate::error::{CliError, Result};

/// How long a configured server gets to answer `/health`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `sapsan ui`.
pub fn run(args: &UiArgs) -> Result<()> {
    let settings = env::settings(&args.server)?;
    if args.port.is_none()
        && let Some(uri) = settings.tracking_uri.as_deref()
    {
        return remote(uri, &settings);
    }
    let port = args.port.unwrap_or(DEFAULT_PORT);
    let opts = ServerOptions {
        mlflow_bin: settings.mlflow_bin.clone(),
        data_dir: args.data_dir.clone(),
        ready_timeout: Duration::from_secs(args.ready_timeout),
        quiet: true,
        ..ServerOptions::default()
    };
    match ensure_server(&args.host, port, &opts)? {
        None => {
            println!("MLflow UI: {}", base_url(&args.host, port));
            println!("sapsan ui: an MLflow server was already running there; it was left as it is");
        }
        Some(server) => {
            let pgid = server.pid();
            println!("MLflow UI: {}", server.url());
            println!(
                "sapsan ui: started `mlflow server` (store {}, log {}); it keeps running after \
                 this command. Stop it with:\n    kill -TERM -- -{pgid}",
                server.data_dir().join("mlflow.db").display(),
                server.log_path().display()
            );
            // As a program's backend does: the server outlives the command.
            server.detach();
        }
    }
    Ok(())
}

/// The configured server: checks that it answers, prints its address; starts nothing.
fn remote(uri: &str, settings: &sapsan::tracking::Settings) -> Result<()> {
    let http = HttpClient::new(uri, settings)?;
    let unreachable = |reason: String| CliError::Unreachable {
        url: uri.to_owned(),
        reason,
    };
    match http.get_text(&format!("{uri}/health"), HEALTH_TIMEOUT) {
        Ok((200, _)) => {}
        Ok((status, body)) => {
            let start: String = body.chars().take(80).collect();
            return Err(unreachable(format!(
                "GET /health answered HTTP {status} {start:?}"
            )));
        }
        Err(e) => return Err(unreachable(e.to_string())),
    }
    println!("MLflow UI: {uri}");
    println!(
        "sapsan ui: the server of MLFLOW_TRACKING_URI (or --tracking-uri) answers; nothing was \
         started (pass --port to use a local one)"
    );
    Ok(())
}
