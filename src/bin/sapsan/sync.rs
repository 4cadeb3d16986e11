//! `sapsan sync <journal-dir>`: upload journals to a server, or with `--dry-run` say what would
//! be sent.
use std::io::Write;

use sapsan::tracking::upload::{JournalDone, OpenRuns, SyncOptions, plan_sync, sync_dir};

use crate::cli::SyncArgs;
use crate::env;
use crate::error::{CliError, Result};

/// Runs `sapsan sync`.
pub fn run(args: &SyncArgs) -> Result<()> {
    let open = if args.end_open {
        OpenRuns::End
    } else {
        OpenRuns::EndIfWriterGone
    };
    let settings = env::settings(&args.server)?;
    if args.dry_run {
        return dry_run(args, open, settings.tracking_uri.as_deref());
    }
    let Some(uri) = settings.tracking_uri.clone() else {
        return Err(CliError::NoServer { what: "sync to" });
    };
    let opts = SyncOptions {
        open,
        jobs: args.jobs,
        resend: args.resend,
    };
    let report = sync_dir(&args.dir, &uri, &settings, &opts, &progress)?;
    println!(
        "sapsan sync: {} journal(s), {} runs, {} records ({} items) delivered to {uri}",
        report.journals, report.runs, report.records, report.items
    );
    if report.skipped > 0 {
        println!(
            "sapsan sync: {} journal(s) skipped: delivered to {uri} before and unchanged since \
             (--resend sends them again)",
            report.skipped
        );
    }
    if report.models > 0 {
        println!("sapsan sync: {} logged model(s)", report.models);
    }
    if report.killed > 0 {
        println!(
            "sapsan sync: {} run(s) left open by a program that died were ended KILLED",
            report.killed
        );
    }
    for note in &report.left_open {
        eprintln!("sapsan sync: {note}");
    }
    for r in &report.refused {
        eprintln!("sapsan sync: refused by the server (skipped): {r}");
    }
    for d in &report.damaged {
        eprintln!("sapsan sync: damaged journal record (skipped, lost): {d}");
    }
    let mut problems = Vec::new();
    if !report.refused.is_empty() {
        problems.push(format!(
            "{} record(s) refused by the server",
            report.refused.len()
        ));
    }
    if !report.damaged.is_empty() {
        problems.push(format!(
            "{} damaged journal record(s) could not be read (everything else was delivered)",
            report.damaged.len()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::SyncIncomplete(problems.join("; ")))
    }
}

/// One whole line per journal as it finishes (the workers finish in any order; each line is
/// written at once under the stdout lock, so lines never interleave).
fn progress(j: &JournalDone<'_>) {
    let what = match j.outcome {
        Ok(r) if r.skipped > 0 => "already delivered, unchanged: skipped".to_owned(),
        Ok(r) => format!(
            "{} runs, {} records ({} items) delivered",
            r.runs, r.records, r.items
        ),
        Err(e) => format!("stopped: {e}"),
    };
    let line = format!(
        "sapsan sync: [{}/{}] {}: {what}\n",
        j.done,
        j.total,
        j.dir.display()
    );
    let mut out = std::io::stdout().lock();
    // A closed stdout (a pipe whose reader left) must not stop the upload.
    let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
}

/// `--dry-run`: the journals alone are read; nothing is sent, no server is needed.
fn dry_run(args: &SyncArgs, open: OpenRuns, uri: Option<&str>) -> Result<()> {
    let plan = plan_sync(&args.dir, open)?;
    println!("sapsan sync --dry-run: nothing is sent");
    print!("{plan}");
    let to = uri.map_or_else(
        || "(no server given: a sync needs --tracking-uri or MLFLOW_TRACKING_URI)".to_owned(),
        |u| format!("to {u}"),
    );
    println!(
        "sapsan sync --dry-run: {} journal(s), {} runs, {} records ({} items) would be sent {to}",
        plan.journals.len(),
        plan.runs(),
        plan.records(),
        plan.items()
    );
    Ok(())
}
