//! A backend that records nothing: same API, no server, for dry runs and tests.
use super::Backend;
use crate::config::keys::check_key;
use crate::error::{Error, Result};
use crate::tracking::run::RunStack;
use crate::tracking::{LogItem, RunData, RunStatus};
use std::sync::atomic::{AtomicU64, Ordering};

/// Same trait as the MLflow backend; keeps a run stack and checks keys, stores nothing.
#[derive(Debug, Default)]
pub struct FakeBackend {
    runs: RunStack,
    next: AtomicU64,
}

impl FakeBackend {
    /// A new fake backend.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Backend for FakeBackend {
    fn create_run(&self, _run_name: &str, _parent: Option<&str>) -> Result<String> {
        Ok(format!(
            "fake{:028}",
            self.next.fetch_add(1, Ordering::Relaxed)
        ))
    }
    fn enqueue(&self, _run_id: &str, item: LogItem) -> Result<()> {
        let key = match &item {
            LogItem::Metric(m) => &m.key,
            LogItem::Param { key, .. } | LogItem::Tag { key, .. } => key,
        };
        check_key(key).map_err(|rule| Error::InvalidKey {
            key: key.clone(),
            rule: rule.to_string(),
        })
    }
    fn upload_artifact(&self, _run_id: &str, _name: &str, _bytes: &[u8]) -> Result<()> {
        Ok(())
    }
    fn set_status(&self, _run_id: &str, _status: RunStatus) -> Result<()> {
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn run_data(&self, _run_id: &str) -> Result<RunData> {
        Ok(RunData::default())
    }
    fn runs(&self) -> &RunStack {
        &self.runs
    }
}
