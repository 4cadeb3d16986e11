//! REST: the one HTTP client to an MLflow server ([`client`]), its settings from code or the
//! `MLFLOW_*` environment ([`settings`]), the request bodies more than one sender builds
//! ([`wire`]), and artifact transfer through the server's proxy or a local artifact root
//! ([`artifacts`]).
pub mod artifacts;
pub mod client;
mod encoding;
pub mod settings;
pub mod wire;

pub use client::HttpClient;
pub use settings::{Auth, Settings};
