//! Finding, starting and stopping a local MLflow tracking server, as the seed does it.
//!
//! - [`probe`] tells what listens on a host and port: nothing, an MLflow server, or something else.
//! - [`MlflowServer::start`] runs `mlflow server` in its own process group, waits (polling `/health`)
//!   until it answers, and stops the whole group when dropped unless [`MlflowServer::detach`]ed.
//! - [`ensure_server`] is the seed's behaviour: use the MLflow server on the port, or start one.
//!
//! Probing goes through the crate's one HTTP client ([`HttpClient`]) with the probe's time budget as
//! its timeout and no retries, so it stays within that budget even when a silent or non-HTTP service
//! holds the port.
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::client::HttpClient;
use super::settings::Settings;
use crate::error::{Error, Result};

/// Environment variable naming the `mlflow` executable to start (default: `mlflow` on `PATH`).
pub const MLFLOW_BIN_ENV: &str = "SAPSAN_MLFLOW_BIN";
/// How long [`ensure_server`] gives a busy port to prove it is an MLflow server.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`MlflowServer::stop`] waits after SIGTERM before it sends SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
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

/// How to start an MLflow server. Its `Debug` output shows the names of [`ServerOptions::env`]
/// only, never their values (they may be passwords).
#[derive(Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// The `mlflow` executable: a path, or a bare name looked up on `PATH`. `None`: `mlflow` on `PATH`.
    pub mlflow_bin: Option<PathBuf>,
    /// Directory holding `mlflow.db` and `mlartifacts/`. `None`: the current directory (what
    /// `mlflow ui` uses). Created when missing.
    pub data_dir: Option<PathBuf>,
    /// Number of server workers. `None`: one.
    pub workers: Option<u32>,
    /// How long to wait for a started server to answer `/health`.
    pub ready_timeout: Duration,
    /// Print nothing to stderr (the "server started" line of [`ensure_server`]).
    pub quiet: bool,
    /// More arguments for `mlflow server` (`["--app-name", "basic-auth"]`, ...), after sapsan's own.
    pub extra_args: Vec<String>,
    /// More environment variables for the server process (`MLFLOW_AUTH_ADMIN_PASSWORD`, ...).
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("mlflow_bin", &self.mlflow_bin)
            .field("data_dir", &self.data_dir)
            .field("workers", &self.workers)
            .field("ready_timeout", &self.ready_timeout)
            .field("quiet", &self.quiet)
            .field("extra_args", &self.extra_args)
            .field(
                "env",
                &self
                    .env
                    .iter()
                    .map(|(k, _)| format!("{k}=<redacted>"))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for ServerOptions {
    /// `mlflow` from `SAPSAN_MLFLOW_BIN` or else `PATH`, data in the current directory, one worker,
    /// 60 s to become ready, not quiet.
    fn default() -> Self {
        Self {
            mlflow_bin: std::env::var_os(MLFLOW_BIN_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            data_dir: None,
            workers: Some(1),
            ready_timeout: Duration::from_secs(60),
            quiet: false,
            extra_args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// What listens on a host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortState {
    /// Nothing accepts connections there.
    Free,
    /// An MLflow server: `/health` answered `OK`, `/version` answered `version`.
    Mlflow {
        /// What `GET /version` answered (`3.17.2`, ...).
        version: String,
    },
    /// Something that is not an MLflow server.
    Other {
        /// What it answered, in words (HTTP status and the start of the body, what was wrong with
        /// an answer that is not HTTP, or that it answered nothing in time).
        answered: String,
    },
}

/// The host a client on this machine uses to reach a server bound to `host`: loopback for the
/// unspecified addresses (`0.0.0.0`, `::`), else `host` without IPv6 brackets.
fn client_host(host: &str) -> &str {
    match host {
        "0.0.0.0" => "127.0.0.1",
        "::" | "[::]" => "::1",
        h => h.trim_start_matches('[').trim_end_matches(']'),
    }
}

/// The base URL a client on this machine uses for a server bound to `host:port`
/// (`http://127.0.0.1:5000`; IPv6 hosts in brackets; `0.0.0.0` and `::` become loopback).
pub fn base_url(host: &str, port: u16) -> String {
    let host = client_host(host);
    if host.contains(':') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    }
}

/// What is on `host:port`: nothing, an MLflow server (`GET /health` -> `OK` and `GET /version`), or
/// something else (saying what answered: HTTP status and body start, "accepted TCP but sent no
/// HTTP answer within 2 s", or what was wrong with an answer that is not HTTP). The whole probe
/// takes at most `timeout`.
///
/// Both requests go through the crate's one HTTP client ([`HttpClient::get_text`]), each sent once.
/// A failed request is read by its kind: a connection that could not be made is
/// [`PortState::Free`], a timeout is a listener that said nothing, any other failure is an answer
/// that is not valid HTTP.
pub fn probe(host: &str, port: u16, timeout: Duration) -> PortState {
    let deadline = Instant::now() + timeout;
    let base = base_url(host, port);
    let client = match probe_client(&base, timeout) {
        Ok(c) => c,
        Err(e) => {
            return PortState::Other {
                answered: format!("could not be probed: {e}"),
            };
        }
    };
    let health = match client.get_text(&format!("{base}/health"), timeout) {
        Ok(a) => a,
        Err(e) => {
            return match failure(&e, timeout) {
                None => PortState::Free,
                Some(answered) => PortState::Other { answered },
            };
        }
    };
    if !health_ok(&health) {
        return PortState::Other {
            answered: format!("GET /health answered {}", describe(&health)),
        };
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return PortState::Other {
            answered: format!(
                "GET /health answered OK but no time was left for GET /version within {}",
                fmt_duration(timeout)
            ),
        };
    }
    match client.get_text(&format!("{base}/version"), remaining) {
        Ok(answer) => match version(&answer) {
            Some(version) => PortState::Mlflow { version },
            None => PortState::Other {
                answered: format!(
                    "GET /health answered OK but GET /version answered {}",
                    describe(&answer)
                ),
            },
        },
        Err(e) => PortState::Other {
            answered: match failure(&e, timeout) {
                None => "GET /health answered OK but the connection for GET /version failed".into(),
                Some(a) => format!("GET /health answered OK but GET /version: {a}"),
            },
        },
    }
}

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
    fn spawn_and_wait(host: &str, port: u16, opts: &ServerOptions) -> Result<MlflowServer> {
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

/// The seed's behaviour on `host:port`. Port free: start a server (printing
/// `MLflow server started at <url> (log: <file>)` to stderr unless `opts.quiet`) and return it.
/// An MLflow server there (confirmed within 2 s): use it, `None`. Something else: fail at once with
/// [`Error::PortBusyNotMlflow`] naming the port and what answered.
pub fn ensure_server(host: &str, port: u16, opts: &ServerOptions) -> Result<Option<MlflowServer>> {
    match probe(host, port, CONFIRM_TIMEOUT) {
        PortState::Free => {
            let server = MlflowServer::spawn_and_wait(host, port, opts)?;
            if !opts.quiet {
                eprintln!(
                    "MLflow server started at {} (log: {})",
                    server.url(),
                    server.log_path().display()
                );
            }
            Ok(Some(server))
        }
        PortState::Mlflow { .. } => Ok(None),
        PortState::Other { answered } => Err(Error::PortBusyNotMlflow {
            host: host.into(),
            port,
            answered,
        }),
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

// ---- probing through the HTTP client -----------------------------------------------------------

/// The crate's HTTP client, set up for probing `base`: `timeout` per request, no retries, no
/// credentials.
fn probe_client(base: &str, timeout: Duration) -> Result<HttpClient> {
    let settings = Settings {
        timeout,
        max_retries: 0,
        ..Settings::default()
    };
    HttpClient::new(base, &settings)
}

/// What a failed probe request says about the port: `None` when no connection could be made
/// (refused: nothing listens), else what the listener did, in words. Reads the reason the way
/// [`HttpClient`] words every transport failure (`connection failed (...)`, `timed out (...)`,
/// `request failed (...)`, `HTTP 200, then reading the body failed: ...`).
fn failure(e: &Error, budget: Duration) -> Option<String> {
    let Error::Connection { reason, .. } = e else {
        return Some(e.to_string());
    };
    let within = fmt_duration(budget);
    if let Some(detail) = reason.strip_prefix("connection failed") {
        return detail
            .contains("timed out")
            .then(|| format!("did not accept a TCP connection within {within}"));
    }
    if reason.starts_with("timed out") {
        return Some(format!(
            "accepted TCP but sent no HTTP answer within {within}"
        ));
    }
    if reason.starts_with("request failed") {
        return Some(format!(
            "accepted TCP but sent no valid HTTP answer ({})",
            innermost(reason)
        ));
    }
    Some(format!("sent an incomplete HTTP answer ({reason})"))
}

/// The innermost cause of a described transport error: `invalid HTTP version parsed` out of
/// `request failed (error sending request: client error (SendRequest): invalid HTTP version parsed)`.
fn innermost(reason: &str) -> &str {
    let inner = reason
        .split_once('(')
        .map_or(reason, |(_, rest)| rest.strip_suffix(')').unwrap_or(rest));
    inner.rsplit(": ").next().unwrap_or(inner).trim()
}

/// `GET /health` of an MLflow server: 200 and `OK`.
fn health_ok((status, body): &(u16, String)) -> bool {
    *status == 200 && body.trim() == "OK"
}

/// `GET /version` of an MLflow server: 200 and a short version string.
fn version((status, body): &(u16, String)) -> Option<String> {
    let v = body.trim();
    let plausible = *status == 200
        && !v.is_empty()
        && v.len() <= 64
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+-_".contains(c));
    plausible.then(|| v.to_owned())
}

/// `HTTP 404 "<body start>"`.
fn describe((status, body): &(u16, String)) -> String {
    let body = snippet(body);
    if body.is_empty() {
        format!("HTTP {status} with an empty body")
    } else {
        format!("HTTP {status} {body:?}")
    }
}

/// The first 80 characters of `text`, whitespace collapsed.
fn snippet(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut s: String = collapsed.chars().take(80).collect();
    if collapsed.chars().count() > 80 {
        s.push_str("...");
    }
    s
}

/// `2 s`, `1.5 s`, `300 ms`.
fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn answer(status: u16, body: &str) -> (u16, String) {
        (status, body.to_owned())
    }

    #[test]
    fn recognises_mlflow_answers() {
        assert!(health_ok(&answer(200, "OK\n")));
        assert!(!health_ok(&answer(200, "<html>OK</html>")));
        assert!(!health_ok(&answer(503, "OK")));
        assert_eq!(version(&answer(200, "3.17.2")).as_deref(), Some("3.17.2"));
        assert_eq!(
            version(&answer(200, "<!doctype html><title>Hi</title>")),
            None
        );
        assert_eq!(version(&answer(404, "3.17.2")), None);
        assert_eq!(
            describe(&answer(404, "<h1>Not   Found</h1>\n")),
            "HTTP 404 \"<h1>Not Found</h1>\""
        );
        assert_eq!(describe(&answer(503, "")), "HTTP 503 with an empty body");
    }

    #[test]
    fn reads_transport_failures() {
        let conn = |reason: &str| Error::Connection {
            url: "http://127.0.0.1:1/health".into(),
            reason: reason.into(),
        };
        let two = Duration::from_secs(2);
        let refused = "connection failed (error sending request: client error (Connect): tcp connect error: Connection refused (os error 111))";
        assert_eq!(failure(&conn(refused), two), None);
        assert_eq!(
            failure(&conn("connection failed (operation timed out)"), two).unwrap(),
            "did not accept a TCP connection within 2 s"
        );
        assert_eq!(
            failure(
                &conn("timed out (error sending request: operation timed out)"),
                two
            )
            .unwrap(),
            "accepted TCP but sent no HTTP answer within 2 s"
        );
        let garbage = "request failed (error sending request: client error (SendRequest): invalid HTTP version parsed)";
        assert_eq!(
            failure(&conn(garbage), two).unwrap(),
            "accepted TCP but sent no valid HTTP answer (invalid HTTP version parsed)"
        );
        assert_eq!(innermost("request failed (plain)"), "plain");
    }

    #[test]
    fn formats_urls_durations_and_tails() {
        assert_eq!(base_url("127.0.0.1", 5000), "http://127.0.0.1:5000");
        assert_eq!(base_url("::1", 5000), "http://[::1]:5000");
        assert_eq!(base_url("[::1]", 5000), "http://[::1]:5000");
        assert_eq!(base_url("0.0.0.0", 5000), "http://127.0.0.1:5000");
        assert_eq!(base_url("localhost", 5000), "http://localhost:5000");
        assert_eq!(fmt_duration(Duration::from_secs(2)), "2 s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(fmt_duration(Duration::from_millis(300)), "300 ms");
        assert_eq!(tail_lines("a\nb\n\nc\nd\n", 2), "c\nd");
        assert_eq!(tail_lines("\n\n", 2), "(the log is empty)");
        assert!(snippet(&"x".repeat(100)).ends_with("..."));
    }

    #[test]
    fn default_options() {
        let o = ServerOptions::default();
        assert_eq!(o.workers, Some(1));
        assert_eq!(o.data_dir, None);
        assert_eq!(o.ready_timeout, Duration::from_secs(60));
        assert!(!o.quiet);
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

    /// Serves each connection with `answer` (after reading the request) on a loopback port.
    fn serve(answer: fn(&str) -> Vec<u8>) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let _ = s.write_all(&answer(&req));
            }
        });
        port
    }

    #[test]
    fn probe_tells_mlflow_from_other_http_and_free() {
        let mlflow = serve(|req| {
            let body = if req.starts_with("GET /health ") {
                "OK"
            } else {
                "3.17.2"
            };
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        });
        assert_eq!(
            probe("127.0.0.1", mlflow, Duration::from_secs(2)),
            PortState::Mlflow {
                version: "3.17.2".into()
            }
        );
        let other =
            serve(|_| b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot here!".to_vec());
        assert_eq!(
            probe("127.0.0.1", other, Duration::from_secs(2)),
            PortState::Other {
                answered: "GET /health answered HTTP 404 \"not here!\"".into()
            }
        );
        // A server on every interface is probed through loopback.
        assert!(matches!(
            probe("0.0.0.0", mlflow, Duration::from_secs(2)),
            PortState::Mlflow { .. }
        ));
        let free = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        assert_eq!(
            probe("127.0.0.1", port, Duration::from_secs(2)),
            PortState::Free
        );
    }

    /// A loopback listener that sends `first` on each connection, then holds it open until the peer
    /// closes it (a silent service, or one that speaks another protocol).
    fn hold(first: &'static [u8]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = s.write_all(first);
                    let _ = std::io::copy(&mut s, &mut std::io::sink());
                });
            }
        });
        port
    }

    #[test]
    fn probe_says_what_a_silent_or_non_http_listener_did() {
        let budget = Duration::from_millis(300);
        let t = Instant::now();
        let silent = probe("127.0.0.1", hold(b""), budget);
        let took = t.elapsed();
        assert_eq!(
            silent,
            PortState::Other {
                answered: "accepted TCP but sent no HTTP answer within 300 ms".into()
            }
        );
        assert!(took < budget + Duration::from_millis(200), "{took:?}");

        let t = Instant::now();
        let PortState::Other { answered } =
            probe("127.0.0.1", hold(b"SSH-2.0-OpenSSH_9.6\r\n"), budget)
        else {
            panic!("garbage taken for MLflow or a free port");
        };
        assert!(t.elapsed() < budget, "{:?}", t.elapsed());
        assert_eq!(
            answered,
            "accepted TCP but sent no valid HTTP answer (invalid HTTP version parsed)"
        );
    }
}
