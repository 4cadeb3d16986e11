//! The `mlflow server` process group: finding the executable, starting it, waiting until it answers,
//! stopping the whole group (or leaving it running), and the log tail quoted in errors.
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{
    CONFIRM_TIMEOUT, PortState, STOP_GRACE, ServerOptions, base_url, health_ok, probe, probe_client,
};
use crate::error::{Error, Result};

/// Pause between two `/health` polls while a server boots.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Longest single `/health` request while polling (a booting server answers fast or not at all).
const POLL_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for the group to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Lines of the server log quoted in errors.
const TAIL_LINES: usize = 20;
/// Bytes of the server log read for the quoted tail.
const TAIL_BYTES: u64 = 8192;

/// Finds the `mlflow` executable: `bin` when given (a path, or a bare name looked up on
/// `path_var`), else `mlflow` on `path_var` (the value of `PATH`). Returns an absolute path, or
/// [`Error::MlflowNotInstalled`] saying how to install it.
pub fn find_mlflow(bin: Option<&Path>, path_var: Option<&OsStr>) -> Result<PathBuf> {
    let program = bin.unwrap_or(Path::new("mlflow"));
    let not_installed = |reason: String| Error::MlflowNotInstalled {
        program: program.display().to_string(),
        reason,
    };
    if program.as_os_str().is_empty() {
        return Err(not_installed("the configured path is empty".into()));
    }
    if program.components().count() > 1 || program.is_absolute() {
        return match executable(program) {
            Ok(()) => std::path::absolute(program).map_err(|e| not_installed(e.to_string())),
            Err(why) => Err(not_installed(why)),
        };
    }
    let dirs: Vec<PathBuf> = path_var
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    for dir in &dirs {
        let candidate = dir.join(program);
        if executable(&candidate).is_ok() {
            return std::path::absolute(&candidate).map_err(|e| not_installed(e.to_string()));
        }
    }
    Err(not_installed(if dirs.is_empty() {
        "PATH is empty or unset".into()
    } else {
        format!("not on PATH (searched {} directories)", dirs.len())
    }))
}

/// Whether `path` is an executable file; the reason when it is not.
fn executable(path: &Path) -> std::result::Result<(), String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("no such file".into()),
        Err(e) => Err(e.to_string()),
        Ok(m) if !m.is_file() => Err("not a file".into()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err("not executable".into()),
        Ok(_) => Ok(()),
    }
}

/// A running `mlflow server` process group. Dropping it stops the group unless it was detached.
#[derive(Debug)]
pub struct MlflowServer {
    child: Option<Child>,
    pgid: i32,
    url: String,
    log_path: PathBuf,
    data_dir: PathBuf,
    ready_after: Duration,
    detached: bool,
}

impl MlflowServer {
    /// Starts `mlflow server` bound to `host:port` (one worker unless set,
    /// `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`, backend store `sqlite:///<abs data_dir>/mlflow.db`,
    /// `--artifacts-destination <abs data_dir>/mlartifacts`) in its own process group, and polls
    /// `/health` every 50 ms until it answers `OK` or `opts.ready_timeout` passes. The server's
    /// output goes to `sapsan-mlflow-<port>.log` in the temp directory; errors name that file and
    /// quote its last lines. Fails at once when the port is already taken or the process exits
    /// during start-up; on any failure the process group is stopped.
    pub fn start(host: &str, port: u16, opts: &ServerOptions) -> Result<MlflowServer> {
        match probe(host, port, CONFIRM_TIMEOUT) {
            PortState::Free => Self::spawn_and_wait(host, port, opts),
            PortState::Mlflow { version } => Err(Error::Setting {
                name: "port".into(),
                value: port.to_string(),
                reason: format!(
                    "an MLflow server (version {version}) already listens at {}; use it (ensure_server does) or choose another port",
                    base_url(host, port)
                ),
            }),
            PortState::Other { answered } => Err(Error::PortBusyNotMlflow {
                host: host.into(),
                port,
                answered,
            }),
        }
    }

    /// [`MlflowServer::start`] without checking the port first.
    pub(super) fn spawn_and_wait(
        host: &str,
        port: u16,
        opts: &ServerOptions,
    ) -> Result<MlflowServer> {
        let url = base_url(host, port);
        let program = find_mlflow(
            opts.mlflow_bin.as_deref(),
            std::env::var_os("PATH").as_deref(),
        )?;
        let workers = opts.workers.unwrap_or(1);
        if workers == 0 {
            return Err(Error::Setting {
                name: "workers".into(),
                value: "0".into(),
                reason: "an MLflow server needs at least one worker".into(),
            });
        }
        let data_dir = match &opts.data_dir {
            Some(d) => d.clone(),
            None => std::env::current_dir()
                .map_err(|e| Error::io("reading the current directory", ".", e))?,
        };
        let data_dir = std::path::absolute(&data_dir)
            .map_err(|e| Error::io("resolving the data directory", &data_dir, e))?;
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| Error::io("creating the MLflow data directory", &data_dir, e))?;
        let store = format!("sqlite:///{}", data_dir.join("mlflow.db").display());
        let artifacts = data_dir.join("mlartifacts");

        let log_path = log_path_for(port);
        let log = File::create(&log_path)
            .map_err(|e| Error::io("creating the MLflow server log", &log_path, e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io("opening the MLflow server log", &log_path, e))?;

        let mut cmd = Command::new(&program);
        cmd.arg("server")
            .args(["--host", host, "--port", &port.to_string()])
            .args(["--backend-store-uri", &store])
            .arg("--artifacts-destination")
            .arg(&artifacts)
            .args(["--workers", &workers.to_string()])
            .args(&opts.extra_args)
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&data_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        let started = Instant::now();
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                Error::MlflowNotInstalled {
                    program: program.display().to_string(),
                    reason: e.to_string(),
                }
            }
            _ => Error::io("starting", &program, e),
        })?;
        let pgid = child.id() as i32;
        let mut server = MlflowServer {
            child: Some(child),
            pgid,
            url,
            log_path,
            data_dir,
            ready_after: Duration::ZERO,
            detached: false,
        };
        // On error `server` is dropped here, which stops the process group.
        server.wait_ready(started, opts.ready_timeout)?;
        server.ready_after = started.elapsed();
        Ok(server)
    }

    /// Polls `/health` until it answers `OK`, the child exits, or the timeout passes.
    fn wait_ready(&mut self, started: Instant, timeout: Duration) -> Result<()> {
        let deadline = started + timeout;
        let client = probe_client(&self.url, POLL_REQUEST_TIMEOUT)?;
        let health = format!("{}/health", self.url);
        loop {
            self.check_alive()?;
            let request_timeout = deadline
                .saturating_duration_since(Instant::now())
                .min(POLL_REQUEST_TIMEOUT);
            if !request_timeout.is_zero()
                && client
                    .get_text(&health, request_timeout)
                    .is_ok_and(|answer| health_ok(&answer))
            {
                // Our child must still be the one answering (not a server that took the port).
                return self.check_alive();
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::ServerTimeout {
                    url: self.url.clone(),
                    seconds: timeout.as_secs_f64().ceil() as u64,
                    log: self.log_path.display().to_string(),
                    tail: log_tail(&self.log_path),
                });
            }
            std::thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }

    /// An error when the server process has exited.
    fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::ServerExited {
                url: self.url.clone(),
                status: describe_status(status),
                log: self.log_path.display().to_string(),
                tail: log_tail(&self.log_path),
            }),
            Err(e) => Err(Error::io(
                "waiting for the MLflow server, log",
                &self.log_path,
                e,
            )),
        }
    }

    /// The server's base URL (`http://127.0.0.1:5000`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The file the server's stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The absolute directory holding `mlflow.db` and `mlartifacts/`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Process id of the `mlflow` process, which is also the id of its process group (give it to
    /// [`stop_process_group`] to stop a detached server).
    pub fn pid(&self) -> u32 {
        self.pgid as u32
    }

    /// Time from spawning the process to the first `OK` from `/health`.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// Stops the whole process group (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and waits until
    /// every process of it is gone.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    /// Lets the server outlive this program (the seed's default behaviour). It keeps running in
    /// its own process group, writing to [`MlflowServer::log_path`].
    pub fn detach(mut self) {
        self.detached = true;
        // Dropping a `Child` neither kills nor waits for it.
        self.child = None;
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        stop_group(self.pgid, Some(&mut child), STOP_GRACE).map_err(|e| {
            Error::io(
                "stopping the MLflow server process group, log",
                &self.log_path,
                e,
            )
        })
    }
}

impl Drop for MlflowServer {
    /// Stops the process group unless the server was detached.
    fn drop(&mut self) {
        if !self.detached {
            let _ = self.shutdown();
        }
    }
}

/// Stops the process group `pgid` (a detached server's [`MlflowServer::pid`]): SIGTERM, SIGKILL
/// after `grace`, and waits until every process of the group is gone. A group that is already gone
/// is fine.
pub fn stop_process_group(pgid: u32, grace: Duration) -> Result<()> {
    let pgid = i32::try_from(pgid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| Error::Setting {
            name: "pgid".into(),
            value: pgid.to_string(),
            reason: "not a process group id".into(),
        })?;
    stop_group(pgid, None, grace).map_err(|e| {
        Error::io(
            "stopping process group",
            PathBuf::from(format!("-{pgid}")),
            e,
        )
    })
}

/// Where a server on `port` writes its output.
fn log_path_for(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("sapsan-mlflow-{port}.log"))
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// The last lines of the log at `path` (or why it cannot be read).
fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let from = len.saturating_sub(TAIL_BYTES);
        f.seek(SeekFrom::Start(from))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => tail_lines(&text, TAIL_LINES),
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

/// The last `n` non-empty lines of `text`, or `(the log is empty)`.
fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "(the log is empty)".into();
    }
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---- process groups ----------------------------------------------------------------------------

/// Whether any process (not yet reaped) is in group `pgid`.
fn group_alive(pgid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(-pgid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Reaps the group leader if it is our child, so that it does not linger as a zombie.
fn reap(pgid: i32, child: &mut Option<&mut Child>) {
    match child {
        Some(c) => {
            let _ = c.try_wait();
        }
        None => {
            let mut status = 0;
            // SAFETY: WNOHANG never blocks; ECHILD (not our child) is ignored.
            unsafe { libc::waitpid(pgid, &mut status, libc::WNOHANG) };
        }
    }
}

/// Live (not zombie) processes of group `pgid`, from `/proc`; `None` where there is no `/proc`.
fn live_members(pgid: i32) -> Option<Vec<i32>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command name in parentheses: state, ppid, pgrp, ...
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut fields = stat[close + 1..].split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        if pgrp == Some(pgid) && state != Some("Z") {
            out.push(pid);
        }
    }
    Some(out)
}

/// Polls until group `pgid` is gone (true) or `deadline` passes (false). With `lone_leader_kill`,
/// a leader left alone after its children exited gets SIGKILL: `mlflow server` only forwards the
/// signal to uvicorn and waits, and its interpreter then takes seconds to tear down.
fn wait_group_gone(
    pgid: i32,
    child: &mut Option<&mut Child>,
    deadline: Instant,
    mut lone_leader_kill: bool,
) -> bool {
    loop {
        reap(pgid, child);
        if !group_alive(pgid) {
            return true;
        }
        if lone_leader_kill && live_members(pgid).is_some_and(|m| m == [pgid]) {
            // SAFETY: the leader of the group we are stopping; its server children are gone.
            unsafe { libc::kill(pgid, libc::SIGKILL) };
            lone_leader_kill = false;
            continue;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10).min(deadline - now));
    }
}

fn stop_group(pgid: i32, mut child: Option<&mut Child>, grace: Duration) -> std::io::Result<()> {
    // Only a leader that had children (the server workers) is cut short once they are gone.
    let had_children = live_members(pgid).is_some_and(|m| m.len() >= 2 && m.contains(&pgid));
    // SAFETY: signalling a process group we started; ESRCH (already gone) is fine.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    if wait_group_gone(pgid, &mut child, Instant::now() + grace, had_children) {
        return Ok(());
    }
    // SAFETY: as above.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if wait_group_gone(pgid, &mut child, Instant::now() + KILL_WAIT, false) {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "process group {pgid} is still alive {} s after SIGKILL",
        KILL_WAIT.as_secs()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_log_lines() {
        assert_eq!(tail_lines("a\nb\n\nc\nd\n", 2), "c\nd");
        assert_eq!(tail_lines("\n\n", 2), "(the log is empty)");
    }

    #[test]
    fn finds_mlflow_on_a_given_path() {
        let dir = tempfile::tempdir().unwrap();
        let empty = tempfile::tempdir().unwrap();
        let bin = dir.path().join("mlflow");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([empty.path(), dir.path()]).unwrap();
        assert_eq!(find_mlflow(None, Some(&path)).unwrap(), bin);
        assert_eq!(find_mlflow(Some(&bin), None).unwrap(), bin);

        let err = find_mlflow(None, Some(empty.path().as_os_str())).unwrap_err();
        assert!(matches!(err, Error::MlflowNotInstalled { .. }), "{err}");
        assert!(err.to_string().contains("not on PATH"), "{err}");
        assert!(
            err.to_string().contains("pip install mlflow==3.17.2"),
            "{err}"
        );

        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = find_mlflow(Some(&bin), None).unwrap_err();
        assert!(err.to_string().contains("not executable"), "{err}");
        let err = find_mlflow(None, Some(&path)).unwrap_err();
        assert!(matches!(err, Error::MlflowNotInstalled { .. }), "{err}");
    }
}
