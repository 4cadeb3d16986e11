//! `sapsan runs`: an experiment's runs as a terminal tree, each train run with its evaluate runs
//! (nested runs) under it: name, status, duration, the seed's key metrics and the run id.
use std::io::IsTerminal;

use sapsan::tracking::backend::{DEFAULT_EXPERIMENT, DEFAULT_HOST, DEFAULT_PORT};
use sapsan::tracking::backend::{RunBrowser, RunNode, run_tree};
use sapsan::tracking::server::base_url;
use sapsan::tracking::{RunInfo, RunStatus};

use crate::cli::{ColorWhen, RunsArgs};
use crate::env;
use crate::error::{CliError, Result};

/// The seed's key metrics, shown when a run has them. Nested runs hold copies of their train
/// run's `train - ...` metrics; those are not repeated.
const KEY_METRICS: [&str; 3] = ["train - final epoch", "eval - MSE Loss", "eval - KS Stat"];

/// Runs `sapsan runs`.
pub fn run(args: &RunsArgs) -> Result<()> {
    let mut settings = env::settings(&args.server)?;
    if settings.tracking_uri.is_none() {
        if let Some(offline) = env::env_offline_uri() {
            return Err(CliError::Offline { uri: offline });
        }
        // As a program's backend: the seed's local server.
        settings.set_tracking_uri(&base_url(DEFAULT_HOST, DEFAULT_PORT))?;
    }
    let name = args
        .experiment
        .clone()
        .or_else(|| settings.experiment_name.clone())
        .unwrap_or_else(|| DEFAULT_EXPERIMENT.to_owned());
    let browser = RunBrowser::new(&settings)?;
    let url = browser.tracking_uri().to_owned();
    let reached = |e: sapsan::Error| match e {
        sapsan::Error::Connection { reason, .. } => CliError::Unreachable {
            url: url.clone(),
            reason,
        },
        other => other.into(),
    };
    let Some(id) = browser.experiment_id(&name).map_err(reached)? else {
        return Err(CliError::UnknownExperiment { name, url });
    };
    let tree = run_tree(browser.runs(&id).map_err(reached)?);
    let style = Style::new(match args.color {
        ColorWhen::Always => true,
        ColorWhen::Never => false,
        ColorWhen::Auto => {
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    });
    print!(
        "{}",
        render(
            &name,
            &id,
            &url,
            &tree,
            args.limit,
            sapsan::tracking::now_ms(),
            style
        )
    );
    Ok(())
}

/// ANSI colours, or none.
#[derive(Debug, Clone, Copy)]
struct Style {
    on: bool,
}

impl Style {
    fn new(on: bool) -> Self {
        Style { on }
    }
    fn paint(self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    fn bold(self, t: &str) -> String {
        self.paint("1", t)
    }
    fn dim(self, t: &str) -> String {
        self.paint("2", t)
    }
    fn metric(self, t: &str) -> String {
        self.paint("36", t)
    }
    fn status(self, s: Option<RunStatus>) -> String {
        match s {
            Some(RunStatus::Finished) => self.paint("32", "FINISHED"),
            Some(RunStatus::Running) => self.paint("33", "RUNNING"),
            Some(RunStatus::Failed) => self.paint("31;1", "FAILED"),
            Some(RunStatus::Killed) => self.paint("35", "KILLED"),
            None => self.paint("2", "UNKNOWN"),
        }
    }
}

/// The whole listing: a header line, the newest `limit` top-level runs (0: all) with their
/// nested runs, and a line saying how many older ones were left out.
fn render(
    experiment: &str,
    id: &str,
    url: &str,
    tree: &[RunNode],
    limit: usize,
    now_ms: i64,
    style: Style,
) -> String {
    let total: usize = tree.iter().map(RunNode::len).sum();
    let mut out = format!(
        "{} {experiment:?} (id {id}) at {url}: {} top-level run(s), {total} in all\n",
        style.bold("experiment"),
        tree.len()
    );
    if tree.is_empty() {
        out.push_str("  no runs yet\n");
        return out;
    }
    let shown = if limit == 0 {
        tree.len()
    } else {
        limit.min(tree.len())
    };
    for node in &tree[..shown] {
        node_lines(node, "", "", false, now_ms, style, &mut out);
    }
    if shown < tree.len() {
        out.push_str(&format!(
            "{} older top-level run(s) not shown (--limit {} shows more, 0 all)\n",
            tree.len() - shown,
            tree.len()
        ));
    }
    out
}

/// `node` on one line after `lead`, its nested runs below with `indent`.
fn node_lines(
    node: &RunNode,
    lead: &str,
    indent: &str,
    nested: bool,
    now_ms: i64,
    style: Style,
    out: &mut String,
) {
    out.push_str(lead);
    out.push_str(&run_line(&node.run, nested, now_ms, style));
    out.push('\n');
    let n = node.children.len();
    for (i, child) in node.children.iter().enumerate() {
        let last = i + 1 == n;
        let lead = format!("{indent}{}", if last { "└── " } else { "├── " });
        let indent = format!("{indent}{}", if last { "    " } else { "│   " });
        node_lines(child, &lead, &indent, true, now_ms, style, out);
    }
}

/// `name  STATUS  duration  key metrics  run id`.
fn run_line(run: &RunInfo, nested: bool, now_ms: i64, style: Style) -> String {
    let name = if run.run_name.is_empty() {
        "(no name)"
    } else {
        &run.run_name
    };
    let mut parts = vec![style.bold(name), style.status(run.status)];
    if let Some(d) = duration(run, now_ms) {
        parts.push(d);
    }
    for key in KEY_METRICS {
        if nested && key.starts_with("train - ") {
            continue;
        }
        if let Some(v) = run.data.metrics.get(key) {
            parts.push(style.metric(&format!("{key} = {}", number(*v))));
        }
    }
    parts.push(style.dim(&run.run_id));
    parts.join("  ")
}

/// How long the run took (`12.3s`, `4m 05s`, `2h 03m`); a run still RUNNING counts to now
/// (`... so far`).
fn duration(run: &RunInfo, now_ms: i64) -> Option<String> {
    let start = run.start_time?;
    let (end, so_far) = match (run.status, run.end_time) {
        (Some(RunStatus::Running), _) => (now_ms, true),
        (_, Some(end)) => (end, false),
        (_, None) => return None,
    };
    let ms = (end - start).max(0);
    let text = if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, ms / 1000 % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, ms / 60_000 % 60)
    };
    Some(if so_far {
        format!("{text} so far")
    } else {
        text
    })
}

/// A metric value, short: whole numbers as such, else 4 significant digits.
fn number(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() || v.abs() >= 1.0e300 {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    if v.abs() >= 1e-3 && v.abs() < 1e6 {
        return sig4(v);
    }
    format!("{v:.3e}")
}

/// `v` rounded to 4 significant digits, without trailing zeros.
fn sig4(v: f64) -> String {
    let mag = v.abs().log10().floor() as i32;
    let decimals = (3 - mag).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sapsan::tracking::RunData;

    fn run(id: &str, name: &str, start: i64, end: i64, status: RunStatus) -> RunInfo {
        RunInfo {
            run_id: id.into(),
            run_name: name.into(),
            experiment_id: "1".into(),
            status: Some(status),
            start_time: Some(start),
            end_time: Some(end),
            artifact_uri: String::new(),
            lifecycle_stage: "active".into(),
            data: RunData::default(),
        }
    }

    #[test]
    fn numbers_and_durations_are_short() {
        assert_eq!(number(50.0), "50");
        assert_eq!(number(0.012346), "0.01235");
        assert_eq!(number(123.456), "123.5");
        assert_eq!(number(1.5e-7), "1.500e-7");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::MAX), "inf");
        let r = run("a", "t", 0, 12_340, RunStatus::Finished);
        assert_eq!(duration(&r, 0).as_deref(), Some("12.3s"));
        let r = run("a", "t", 0, 245_000, RunStatus::Failed);
        assert_eq!(duration(&r, 0).as_deref(), Some("4m 05s"));
        let r = run("a", "t", 0, 7_380_000, RunStatus::Killed);
        assert_eq!(duration(&r, 0).as_deref(), Some("2h 03m"));
        let r = run("a", "t", 1000, 0, RunStatus::Running);
        assert_eq!(duration(&r, 3000).as_deref(), Some("2.0s so far"));
    }

    #[test]
    fn the_tree_indents_nested_runs_and_colours_only_when_asked() {
        let mut train = run("t1", "train", 0, 10_000, RunStatus::Finished);
        train.data.metrics.insert("train - final epoch".into(), 5.0);
        let mut e1 = run("e1", "evaluate", 11_000, 12_000, RunStatus::Finished);
        e1.data.metrics.insert("eval - MSE Loss".into(), 0.25);
        e1.data.metrics.insert("eval - KS Stat".into(), 0.5);
        e1.data.metrics.insert("train - final epoch".into(), 5.0);
        let e2 = run("e2", "evaluate", 13_000, 14_000, RunStatus::Failed);
        let old = run("t0", "old", -5000, -4000, RunStatus::Killed);
        let tree = [
            RunNode {
                run: train,
                children: vec![
                    RunNode {
                        run: e1,
                        children: vec![],
                    },
                    RunNode {
                        run: e2,
                        children: vec![],
                    },
                ],
            },
            RunNode {
                run: old,
                children: vec![],
            },
        ];
        let text = render("exp", "7", "http://h:1", &tree, 1, 0, Style::new(false));
        assert_eq!(
            text,
            "experiment \"exp\" (id 7) at http://h:1: 2 top-level run(s), 4 in all\n\
             train  FINISHED  10.0s  train - final epoch = 5  t1\n\
             ├── evaluate  FINISHED  1.0s  eval - MSE Loss = 0.25  eval - KS Stat = 0.5  e1\n\
             └── evaluate  FAILED  1.0s  e2\n\
             1 older top-level run(s) not shown (--limit 2 shows more, 0 all)\n"
        );
        assert!(!text.contains('\x1b'));
        let all = render("exp", "7", "u", &tree, 0, 0, Style::new(false));
        assert!(
            all.contains("old  KILLED") && !all.contains("not shown"),
            "{all}"
        );
        let colour = render("exp", "7", "u", &tree, 0, 0, Style::new(true));
        assert!(colour.contains("\x1b[32mFINISHED\x1b[0m"), "{colour}");
        assert!(colour.contains("\x1b[31;1mFAILED\x1b[0m"), "{colour}");
        let empty = render("exp", "7", "u", &[], 20, 0, Style::new(false));
        assert!(empty.ends_with("no runs yet\n"), "{empty}");
    }
}
