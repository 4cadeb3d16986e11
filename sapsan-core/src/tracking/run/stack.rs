//! [`RunStack`]: the runs a backend has started or resumed and not yet ended.
use std::sync::MutexGuard;

use crate::shared::Shared;

/// The stack of runs a backend has started or resumed and not yet ended (innermost last).
#[derive(Debug, Default)]
pub struct RunStack(Shared<Vec<String>>);

impl RunStack {
    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        self.0.lock()
    }
    /// Pushes a run on top.
    pub fn push(&self, run_id: &str) {
        self.lock().push(run_id.to_owned());
    }
    /// The innermost open run.
    pub fn top(&self) -> Option<String> {
        self.lock().last().cloned()
    }
    /// Removes `run_id` wherever it is (ending a nested run never ends its parent).
    pub fn remove(&self, run_id: &str) {
        self.lock().retain(|r| r != run_id);
    }
    /// Takes all runs, innermost first.
    pub fn drain(&self) -> Vec<String> {
        let mut v = std::mem::take(&mut *self.lock());
        v.reverse();
        v
    }
    /// Whether `run_id` is open on this stack.
    pub fn contains(&self, run_id: &str) -> bool {
        self.lock().iter().any(|r| r == run_id)
    }
    /// Snapshot, outermost first.
    pub fn snapshot(&self) -> Vec<String> {
        self.lock().clone()
    }
}
