//! The server settings every subcommand uses: the tracking URI from `--tracking-uri` or
//! `MLFLOW_TRACKING_URI`, credentials, TLS, timeouts and retries from the `MLFLOW_*` variables
//! (read by [`Settings::from_lookup`], as a program's backend reads them).
use sapsan::tracking::Settings;
use sapsan::tracking::rest::settings::OFFLINE_SCHEME;

use crate::cli::Server;
use crate::error::Result;

/// `MLFLOW_TRACKING_URI`, when it names a server (not empty, not `offline:`).
pub fn env_tracking_uri() -> Option<String> {
    std::env::var("MLFLOW_TRACKING_URI")
        .ok()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty() && !u.starts_with(OFFLINE_SCHEME))
}

/// `MLFLOW_TRACKING_URI` when it selects offline mode (`offline:<dir>`): programs journal
/// instead of talking to a server.
pub fn env_offline_uri() -> Option<String> {
    std::env::var("MLFLOW_TRACKING_URI")
        .ok()
        .map(|u| u.trim().to_owned())
        .filter(|u| u.starts_with(OFFLINE_SCHEME))
}

/// Settings from the environment, with the tracking URI of `--tracking-uri`, else of
/// `MLFLOW_TRACKING_URI`, else none. Credentials embedded in the URI
/// (`http://user:pass@host`) become Basic auth unless the variables set some.
pub fn settings(server: &Server) -> Result<Settings> {
    // The URI is taken below: an `offline:` one (a program's setting) is no server to talk to.
    let mut settings = Settings::from_lookup(|k| {
        (k != "MLFLOW_TRACKING_URI")
            .then(|| std::env::var(k).ok())
            .flatten()
    })?;
    if let Some(uri) = server.tracking_uri.clone().or_else(env_tracking_uri) {
        settings.set_tracking_uri(&uri)?;
    }
    Ok(settings)
}
