//! What a backend knows about each run it logged to: open or not, its params (immutable once
//! logged), latest metrics and tags. Shared by the MLflow and offline backends.
use std::collections::HashMap;

use crate::error::Result;
use crate::tracking::{LogItem, Metric, RunData, validate};

/// Latest point of a metric, ordered the way MLflow picks its "latest" value.
#[derive(Debug, Clone, Copy)]
struct Latest {
    step: i64,
    ts: i64,
    value: f64,
}

impl Latest {
    fn replaced_by(&self, m: &Metric) -> bool {
        (m.step, m.timestamp_ms) > (self.step, self.ts)
            || ((m.step, m.timestamp_ms) == (self.step, self.ts)
                && m.value.partial_cmp(&self.value) != Some(std::cmp::Ordering::Less))
    }
}

/// What a backend knows about one run (this one, and the offline backend).
#[derive(Debug, Default)]
pub(crate) struct RunState {
    /// Created by this backend: everything it holds was logged here.
    pub(crate) created_here: bool,
    /// RUNNING as far as this backend knows (closed as FINISHED on drop).
    pub(crate) open: bool,
    pub(crate) artifact_uri: Option<String>,
    /// Logged models it produced, in order (their ids as handed out).
    pub(crate) models: Vec<String>,
    params: HashMap<String, String>,
    metrics: HashMap<String, Latest>,
    pub(crate) tags: HashMap<String, String>,
}

impl RunState {
    /// A run just created by this backend, open, with its creation tags.
    pub(crate) fn created(tags: impl Iterator<Item = (String, String)>) -> Self {
        RunState {
            created_here: true,
            open: true,
            tags: tags.collect(),
            ..RunState::default()
        }
    }

    /// Records `item` of run `run_id` (latest metric by step then time, params, tags). `false`:
    /// a param logged again with the same value, nothing to send. A changed param is an error.
    pub(crate) fn record(&mut self, run_id: &str, item: &LogItem) -> Result<bool> {
        match item {
            LogItem::Metric(m) => {
                let new = Latest {
                    step: m.step,
                    ts: m.timestamp_ms,
                    value: m.value,
                };
                match self.metrics.get_mut(&m.key) {
                    Some(l) if l.replaced_by(m) => *l = new,
                    Some(_) => {}
                    None => {
                        self.metrics.insert(m.key.clone(), new);
                    }
                }
            }
            LogItem::Param { key, value } => {
                let old = self.params.get(key).map(String::as_str);
                if !validate::param_change(run_id, old, key, value)? {
                    return Ok(false);
                }
                self.params.insert(key.clone(), value.clone());
            }
            LogItem::Tag { key, value } => {
                self.tags.insert(key.clone(), value.clone());
            }
        }
        Ok(true)
    }

    pub(crate) fn data(&self) -> RunData {
        RunData {
            params: self
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            metrics: self
                .metrics
                .iter()
                .map(|(k, l)| (k.clone(), l.value))
                .collect(),
            tags: self
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_metric_follows_step_then_time() {
        let l = Latest {
            step: 2,
            ts: 10,
            value: 1.0,
        };
        let m = |step, ts, value| Metric {
            key: "k".into(),
            value,
            timestamp_ms: ts,
            step,
            model_id: None,
        };
        assert!(l.replaced_by(&m(3, 0, 0.0)));
        assert!(!l.replaced_by(&m(1, 99, 0.0)));
        assert!(l.replaced_by(&m(2, 11, 0.0)));
        assert!(l.replaced_by(&m(2, 10, 2.0)));
        assert!(!l.replaced_by(&m(2, 10, 0.5)));
    }
}
