//! Reading an experiment's runs without a backend: no journal, no uploader, nothing created on
//! the server. What `sapsan runs` shows: [`RunBrowser`] finds the experiment and its runs,
//! [`run_tree`] nests each run under its parent (tag [`PARENT_RUN_TAG`]), as the MLflow UI
//! folds evaluate runs under their train run.
use std::collections::{BTreeMap, HashSet};

use super::read::{RunInfo, search_runs_in};
use crate::error::{Error, Result};
use crate::tracking::rest::client::HttpClient;
use crate::tracking::rest::settings::Settings;
use crate::tracking::rest::wire::experiment_by_name;

/// The tag naming the run a nested run belongs to.
pub const PARENT_RUN_TAG: &str = "mlflow.parentRunId";

/// Reads runs from an MLflow server through the crate's one HTTP client.
#[derive(Debug)]
pub struct RunBrowser {
    http: HttpClient,
}

impl RunBrowser {
    /// A reader of the server at [`Settings::tracking_uri`], with the settings' credentials,
    /// TLS and timeouts ([`Settings::from_env`] reads them from `MLFLOW_*` variables).
    pub fn new(settings: &Settings) -> Result<Self> {
        settings.check()?;
        let Some(uri) = settings.tracking_uri.as_deref() else {
            return Err(Error::Setting {
                name: "MLFLOW_TRACKING_URI".into(),
                value: String::new(),
                reason: "no MLflow server to read from: set MLFLOW_TRACKING_URI to \
                         http://host:port"
                    .into(),
            });
        };
        Ok(RunBrowser {
            http: HttpClient::new(uri, settings)?,
        })
    }

    /// The server's base URL.
    pub fn tracking_uri(&self) -> &str {
        self.http.base()
    }

    /// The id of experiment `name`; `None` when the server has no experiment of that name (it
    /// is not created). A deleted experiment is [`Error::DeletedExperiment`].
    pub fn experiment_id(&self, name: &str) -> Result<Option<String>> {
        experiment_by_name(&self.http, name)
    }

    /// Every active run of experiment `experiment_id` (all pages), newest first.
    pub fn runs(&self, experiment_id: &str) -> Result<Vec<RunInfo>> {
        search_runs_in(&self.http, experiment_id, "")
    }
}

/// A run with the runs nested under it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunNode {
    /// The run.
    pub run: RunInfo,
    /// Runs whose [`PARENT_RUN_TAG`] names this run, oldest first (the order they ran in).
    pub children: Vec<RunNode>,
}

impl RunNode {
    /// This run and every run below it.
    pub fn len(&self) -> usize {
        1 + self.children.iter().map(RunNode::len).sum::<usize>()
    }

    /// Always `false`: a node holds at least its run.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The parent run id a run names, if any.
pub fn parent_of(run: &RunInfo) -> Option<&str> {
    run.data
        .tags
        .get(PARENT_RUN_TAG)
        .map(String::as_str)
        .filter(|p| !p.is_empty())
}

/// Nests `runs` by their [`PARENT_RUN_TAG`]: the top-level runs newest first, each with its
/// nested runs oldest first, at any depth. A run whose parent is not among `runs` (deleted, or in
/// another experiment) is shown at the top level; so is a run caught in a loop of parent tags
/// (the server checks nothing). Every run appears exactly once.
pub fn run_tree(runs: Vec<RunInfo>) -> Vec<RunNode> {
    let ids: HashSet<String> = runs.iter().map(|r| r.run_id.clone()).collect();
    let mut children: BTreeMap<String, Vec<RunInfo>> = BTreeMap::new();
    let mut roots = Vec::new();
    for run in runs {
        match parent_of(&run).map(str::to_owned) {
            Some(p) if ids.contains(&p) && p != run.run_id => {
                children.entry(p).or_default().push(run)
            }
            _ => roots.push(run),
        }
    }
    let mut tree: Vec<RunNode> = roots.into_iter().map(|r| build(r, &mut children)).collect();
    // What is left hangs off a loop of parent tags: cut the loop where it is first met.
    while let Some((_, runs)) = children.pop_first() {
        for r in runs {
            tree.push(build(r, &mut children));
        }
    }
    tree.sort_by_key(|n| std::cmp::Reverse(n.run.start_time));
    tree
}

/// `run` with its descendants taken out of `children` (each list is taken once, so a loop ends).
fn build(run: RunInfo, children: &mut BTreeMap<String, Vec<RunInfo>>) -> RunNode {
    let mut kids = children.remove(&run.run_id).unwrap_or_default();
    kids.sort_by_key(|k| k.start_time);
    RunNode {
        children: kids.into_iter().map(|k| build(k, children)).collect(),
        run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::RunData;

    fn run(id: &str, start: i64, parent: Option<&str>) -> RunInfo {
        let mut data = RunData::default();
        if let Some(p) = parent {
            data.tags.insert(PARENT_RUN_TAG.into(), p.into());
        }
        RunInfo {
            run_id: id.into(),
            run_name: id.into(),
            experiment_id: "1".into(),
            status: None,
            start_time: Some(start),
            end_time: None,
            artifact_uri: String::new(),
            lifecycle_stage: "active".into(),
            data,
        }
    }

    /// The tree as `id(child, child)` text.
    fn shape(nodes: &[RunNode]) -> String {
        nodes
            .iter()
            .map(|n| {
                if n.children.is_empty() {
                    n.run.run_id.clone()
                } else {
                    format!("{}({})", n.run.run_id, shape(&n.children))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    #[test]
    fn evaluate_runs_nest_under_their_train_run() {
        // As runs/search answers: newest first.
        let runs = vec![
            run("e2b", 9, Some("t2")),
            run("e2a", 8, Some("t2")),
            run("t2", 7, None),
            run("e1", 3, Some("t1")),
            run("t1", 1, None),
        ];
        let tree = run_tree(runs);
        assert_eq!(shape(&tree), "t2(e2a, e2b), t1(e1)");
        assert_eq!(tree.iter().map(RunNode::len).sum::<usize>(), 5);
    }

    #[test]
    fn deeper_nesting_missing_parents_and_loops_keep_every_run_once() {
        let runs = vec![
            run("grandchild", 5, Some("child")),
            run("child", 4, Some("top")),
            run("top", 3, None),
            // Its parent was deleted: shown at the top level.
            run("orphan", 6, Some("gone")),
            // A loop of parent tags, and a run naming itself.
            run("a", 1, Some("b")),
            run("b", 2, Some("a")),
            run("self", 0, Some("self")),
        ];
        let tree = run_tree(runs);
        assert_eq!(shape(&tree), "orphan, top(child(grandchild)), b(a), self");
        assert_eq!(tree.iter().map(RunNode::len).sum::<usize>(), 7);
        assert_eq!(parent_of(&tree[0].run), Some("gone"));
        assert_eq!(run_tree(Vec::new()), Vec::new());
    }

    #[test]
    fn a_browser_needs_a_tracking_uri() {
        let e = RunBrowser::new(&Settings::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("MLFLOW_TRACKING_URI"), "{e}");
    }
}
