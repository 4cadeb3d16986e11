//! The `sapsan` command. `sapsan sync <journal-dir> [--tracking-uri URI]` uploads a journal left
//! on disk (server away at the end of a program, or offline mode) to an MLflow server. The URI
//! defaults to `MLFLOW_TRACKING_URI`; credentials and TLS come from the usual `MLFLOW_*` variables.
//! Running it twice changes nothing on the server. Exits non-zero when the server refused a
//! record for good or a journal line was damaged (each is named on stderr; the rest is delivered).
use std::path::PathBuf;
use std::process::ExitCode;

use sapsan::tracking::Settings;
use sapsan::tracking::upload::{OpenRuns, sync_dir};

const USAGE: &str = "usage: sapsan sync <journal-dir> [--tracking-uri http://host:port] [--end-open]\n\
    Uploads a sapsan journal (a directory with journal.jsonl, or a root holding several) to MLflow.\n\
    The tracking URI defaults to MLFLOW_TRACKING_URI. Runs a journal leaves open (its program was\n\
    killed) are ended KILLED when the program ran here and is gone; --end-open ends them KILLED\n\
    in any case (a journal copied from another machine).";

fn main() -> ExitCode {
    sapsan::diag::init_logger();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("sapsan: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("sync") => {}
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return Ok(());
        }
        _ => return Err(USAGE.to_owned()),
    }
    let mut dir: Option<PathBuf> = None;
    let mut uri: Option<String> = None;
    let mut open = OpenRuns::EndIfWriterGone;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--tracking-uri" => uri = Some(it.next().ok_or(USAGE)?.clone()),
            "--end-open" => open = OpenRuns::End,
            s if s.starts_with("--tracking-uri=") => {
                uri = Some(s["--tracking-uri=".len()..].to_owned())
            }
            s if dir.is_none() && !s.starts_with('-') => dir = Some(PathBuf::from(s)),
            _ => return Err(USAGE.to_owned()),
        }
    }
    let dir = dir.ok_or(USAGE)?;
    let uri = uri
        .or_else(|| std::env::var("MLFLOW_TRACKING_URI").ok())
        .filter(|u| !u.is_empty() && !u.starts_with("offline:"))
        .ok_or("no MLflow server to sync to: pass --tracking-uri http://host:port or set MLFLOW_TRACKING_URI")?;
    // Only credentials, TLS and timeouts are taken from the environment here.
    let settings = Settings::from_lookup(|k| {
        (k != "MLFLOW_TRACKING_URI")
            .then(|| std::env::var(k).ok())
            .flatten()
    })
    .map_err(|e| e.to_string())?;
    let report = sync_dir(&dir, &uri, &settings, open).map_err(|e| e.to_string())?;
    println!(
        "sapsan sync: {} journal(s), {} runs, {} records ({} items) delivered to {uri}",
        report.journals, report.runs, report.records, report.items
    );
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
        Err(problems.join("; "))
    }
}
