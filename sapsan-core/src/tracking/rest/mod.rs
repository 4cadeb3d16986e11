//! REST: the one HTTP client to an MLflow server ([`client`]), its settings from code or the
//! `MLFLOW_*` environment ([`settings`]), the request bodies more than one sender builds
//! ([`wire`]), and artifact transfer through the server's proxy, a local artifact root
//! ([`artifacts`]) or an S3 bucket ([`s3`]).
pub mod artifacts;
pub mod client;
mod encoding;
pub mod s3;
pub mod settings;
pub mod wire;

pub use client::HttpClient;
pub use settings::{Auth, Settings};
