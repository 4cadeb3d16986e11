//! A backend that records every call, to prove what the macros' expansions do.
#![allow(dead_code)]
use std::collections::BTreeMap;
use std::sync::Mutex;

use sapsan_core::Result;
use sapsan_core::tracking::{Backend, LogItem, RunData, RunStack, RunStatus};

/// One recorded call.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Create {
        name: String,
        parent: Option<String>,
        id: String,
    },
    Param {
        run: String,
        key: String,
        value: String,
    },
    Metric {
        run: String,
        key: String,
        value: f64,
        step: i64,
    },
    Tag {
        run: String,
        key: String,
        value: String,
    },
    Artifact {
        run: String,
        name: String,
        bytes: Vec<u8>,
    },
    Status {
        run: String,
        status: RunStatus,
    },
    Flush,
}

/// Records every call and keeps each run's data so `run_data` answers like a server.
#[derive(Default)]
pub struct RecordingBackend {
    runs: RunStack,
    pub calls: Mutex<Vec<Call>>,
    data: Mutex<BTreeMap<String, RunData>>,
    /// When set, `create_run` fails (a dead server).
    pub refuse_runs: bool,
}

impl RecordingBackend {
    pub fn new() -> Self {
        Self::default()
    }
    /// A backend whose server refuses to create runs.
    pub fn refusing() -> Self {
        Self {
            refuse_runs: true,
            ..Self::default()
        }
    }
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    pub fn data(&self, run: &str) -> RunData {
        self.data
            .lock()
            .unwrap()
            .get(run)
            .cloned()
            .unwrap_or_default()
    }
    /// Param keys of `run` in the order they were logged.
    pub fn param_order(&self, run: &str) -> Vec<(String, String)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Param { run: r, key, value } if r == run => Some((key, value)),
                _ => None,
            })
            .collect()
    }
    pub fn status(&self, run: &str) -> Option<RunStatus> {
        self.calls().into_iter().rev().find_map(|c| match c {
            Call::Status { run: r, status } if r == run => Some(status),
            _ => None,
        })
    }
    pub fn created(&self) -> Vec<(String, Option<String>, String)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Create { name, parent, id } => Some((name, parent, id)),
                _ => None,
            })
            .collect()
    }
    fn push(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }
}

impl Backend for RecordingBackend {
    fn create_run(&self, run_name: &str, parent: Option<&str>) -> Result<String> {
        if self.refuse_runs {
            return Err(sapsan_core::Error::Connection {
                url: "http://127.0.0.1:9".into(),
                reason: "connection refused".into(),
            });
        }
        let id = format!("run{}", self.created().len());
        self.push(Call::Create {
            name: run_name.into(),
            parent: parent.map(Into::into),
            id: id.clone(),
        });
        Ok(id)
    }
    fn enqueue(&self, run_id: &str, item: LogItem) -> Result<()> {
        if let Err(rule) = sapsan_core::config::keys::check_key(match &item {
            LogItem::Metric(m) => &m.key,
            LogItem::Param { key, .. } | LogItem::Tag { key, .. } => key,
        }) {
            return Err(sapsan_core::Error::InvalidKey {
                key: format!("{item:?}"),
                rule: rule.to_string(),
            });
        }
        let mut data = self.data.lock().unwrap();
        let d = data.entry(run_id.to_owned()).or_default();
        let run = run_id.to_owned();
        match item {
            LogItem::Metric(m) => {
                d.metrics.insert(m.key.clone(), m.value);
                self.push(Call::Metric {
                    run,
                    key: m.key,
                    value: m.value,
                    step: m.step,
                });
            }
            LogItem::Param { key, value } => {
                d.params.insert(key.clone(), value.clone());
                self.push(Call::Param { run, key, value });
            }
            LogItem::Tag { key, value } => {
                d.tags.insert(key.clone(), value.clone());
                self.push(Call::Tag { run, key, value });
            }
        }
        Ok(())
    }
    fn upload_artifact(&self, run_id: &str, name: &str, bytes: &[u8]) -> Result<()> {
        self.push(Call::Artifact {
            run: run_id.into(),
            name: name.into(),
            bytes: bytes.to_vec(),
        });
        Ok(())
    }
    fn set_status(&self, run_id: &str, status: RunStatus) -> Result<()> {
        self.push(Call::Status {
            run: run_id.into(),
            status,
        });
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        self.push(Call::Flush);
        Ok(())
    }
    fn run_data(&self, run_id: &str) -> Result<RunData> {
        Ok(self.data(run_id))
    }
    fn runs(&self) -> &RunStack {
        &self.runs
    }
}
