//! Starting, finding and stopping MLflow servers (`sapsan::tracking::server`).
//!
//! Two tests start a real `mlflow server` (from `PATH`, which `scripts/test.sh` points at `.venv/bin`);
//! the others use the suite's server, TCP listeners, or small scripts standing in for `mlflow`.
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sapsan::Error;
use sapsan::tracking::server::{
    MlflowServer, PortState, ServerOptions, ensure_server, find_mlflow, probe, stop_process_group,
};

const LOOPBACK: &str = "127.0.0.1";

fn opts(data_dir: &Path) -> ServerOptions {
    ServerOptions {
        data_dir: Some(data_dir.to_owned()),
        quiet: true,
        // A real boot takes 6-10 s on a quiet 2-core box, but 45 s were seen under parallel builds.
        ready_timeout: Duration::from_secs(180),
        ..ServerOptions::default()
    }
}

/// Whether any process of group `pgid` still exists (`kill(-pgid, 0)`).
fn group_exists(pgid: u32) -> bool {
    let r = unsafe { libc::kill(-(pgid as i32), 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Pid and command line of every process in group `pgid`, from /proc.
fn group_members(pgid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name in parentheses: state, ppid, pgrp, ...
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        if after.split_whitespace().nth(2) == Some(&pgid.to_string()) {
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            out.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
        }
    }
    out
}

/// Writes an executable script.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Raw HTTP/1.1 request; returns (status, body).
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect((LOOPBACK, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

// ---- real servers (two) ---------------------------------------------------------------------

#[test]
fn start_probe_and_stop_a_real_server() {
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let t0 = Instant::now();
    let server = MlflowServer::start(LOOPBACK, port, &opts(data.path())).unwrap();
    eprintln!(
        "[server_start] real server ready after {:.2} s (spawn to first /health OK: {:.2} s)",
        t0.elapsed().as_secs_f64(),
        server.ready_after().as_secs_f64()
    );
    assert_eq!(server.url(), format!("http://{LOOPBACK}:{port}"));
    assert_eq!(
        probe(LOOPBACK, port, Duration::from_secs(2)),
        PortState::Mlflow {
            version: "3.17.2".into()
        }
    );

    // The store and the artifacts live in the data dir: the db at once, artifacts once written.
    assert!(data.path().join("mlflow.db").is_file());
    let (status, body) = http(
        port,
        "PUT",
        "/api/2.0/mlflow-artifacts/artifacts/0/probe/artifacts/hello.txt",
        b"hello",
    );
    assert_eq!(status, 200, "artifact upload failed: {body}");
    let stored = data.path().join("mlartifacts/0/probe/artifacts/hello.txt");
    assert_eq!(std::fs::read(&stored).unwrap(), b"hello");

    // The log is outside the cwd, carries the port in its name, and holds the server's output.
    let log = server.log_path().to_owned();
    assert!(log.to_string_lossy().contains(&port.to_string()), "{log:?}");
    assert!(
        !log.starts_with(std::env::current_dir().unwrap()),
        "{log:?}"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("Uvicorn running")
    );

    // The group holds the mlflow CLI and its uvicorn worker; stop() ends all of them.
    let pgid = server.pid();
    let members = group_members(pgid);
    assert!(
        members.len() >= 2,
        "expected mlflow + uvicorn in the group: {members:?}"
    );
    let t = Instant::now();
    server.stop().unwrap();
    eprintln!(
        "[server_start] stop took {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        !group_exists(pgid),
        "left behind: {:?}",
        group_members(pgid)
    );
    assert_eq!(
        probe(LOOPBACK, port, Duration::from_secs(2)),
        PortState::Free
    );
}

#[test]
fn ensure_server_starts_on_a_free_port_and_detach_leaves_it_running() {
    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let server = ensure_server(LOOPBACK, port, &opts(data.path()))
        .unwrap()
        .expect("a free port must get a new server");
    eprintln!(
        "[server_start] ensure_server: ready after {:.2} s",
        server.ready_after().as_secs_f64()
    );
    let pid = server.pid();
    server.detach();
    // The handle is gone; the server is not.
    assert!(group_exists(pid));
    assert!(matches!(
        probe(LOOPBACK, port, Duration::from_secs(2)),
        PortState::Mlflow { .. }
    ));
    // A second call finds it and starts nothing.
    let t = Instant::now();
    let again = ensure_server(LOOPBACK, port, &opts(data.path())).unwrap();
    assert!(again.is_none());
    assert!(t.elapsed() < Duration::from_secs(2));

    stop_process_group(pid, Duration::from_secs(10)).unwrap();
    assert!(!group_exists(pid), "left behind: {:?}", group_members(pid));
    assert_eq!(
        probe(LOOPBACK, port, Duration::from_secs(2)),
        PortState::Free
    );
}

// ---- the suite's server ----------------------------------------------------------------------

#[test]
fn ensure_server_uses_a_running_mlflow_server() {
    let uri = common::tracking_uri();
    let hostport = uri.trim_start_matches("http://").trim_end_matches('/');
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let no_bin = tempfile::tempdir().unwrap();
    let o = ServerOptions {
        // Starting a server would fail: proves none is started.
        mlflow_bin: Some(no_bin.path().join("mlflow")),
        ..opts(no_bin.path())
    };
    let t = Instant::now();
    let r = ensure_server(host, port, &o).unwrap();
    assert!(r.is_none());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(
        probe(host, port, Duration::from_secs(2)),
        PortState::Mlflow {
            version: "3.17.2".into()
        }
    );
}

// ---- busy ports ------------------------------------------------------------------------------

/// A loopback listener whose connections get `answer` (then stay open until the peer closes). An
/// HTTP `answer` waits for the request, as HTTP servers do (the client, hyper, rejects bytes that
/// arrive before its request as an unexpected message); anything else is sent at once, as an SSH
/// banner is.
fn busy_port(answer: &'static [u8]) -> u16 {
    let l = TcpListener::bind((LOOPBACK, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            if answer.starts_with(b"HTTP/") {
                let _ = s.read(&mut [0u8; 4096]);
            }
            let _ = s.write_all(answer);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    });
    port
}

fn assert_busy_not_mlflow(port: u16, expect: &str) {
    let data = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let err = ensure_server(LOOPBACK, port, &opts(data.path())).unwrap_err();
    let took = t.elapsed();
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    match &err {
        Error::PortBusyNotMlflow {
            port: p, answered, ..
        } => {
            assert_eq!(*p, port);
            assert!(answered.contains(expect), "{answered}");
        }
        other => panic!("expected PortBusyNotMlflow, got {other}"),
    }
    assert!(err.to_string().contains(&format!("port {port}")), "{err}");
}

#[test]
fn busy_port_with_garbage_is_not_mlflow() {
    // The HTTP client (hyper) rejects the banner: "invalid HTTP version parsed" when it arrives as
    // the answer, "received unexpected message from connection" when it beats the request.
    let port = busy_port(b"SSH-2.0-OpenSSH_9.6\r\n");
    assert_busy_not_mlflow(port, "accepted TCP but sent no valid HTTP answer (");
}

#[test]
fn busy_port_that_says_nothing_is_not_mlflow() {
    let port = busy_port(b"");
    assert_busy_not_mlflow(port, "accepted TCP but sent no HTTP answer within 2 s");
}

#[test]
fn busy_port_with_other_http_is_not_mlflow() {
    let port = busy_port(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot here!");
    assert_busy_not_mlflow(port, "HTTP 404 \"not here!\"");
}

// ---- mlflow missing ------------------------------------------------------------------------

#[test]
fn missing_mlflow_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = ServerOptions {
        mlflow_bin: Some(dir.path().join("no-such-mlflow")),
        ..opts(dir.path())
    };
    let err = ensure_server(LOOPBACK, common::free_port(), &o).unwrap_err();
    assert!(matches!(err, Error::MlflowNotInstalled { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("no-such-mlflow"), "{msg}");
    assert!(msg.contains("bash scripts/setup.sh"), "{msg}");
    assert!(msg.contains("pip install mlflow==3.17.2"), "{msg}");

    // `mlflow` looked up on a PATH without it.
    let err = find_mlflow(None, Some(dir.path().as_os_str())).unwrap_err();
    assert!(matches!(err, Error::MlflowNotInstalled { .. }), "{err}");
    assert!(err.to_string().contains("not on PATH"), "{err}");
    assert!(
        err.to_string().contains("pip install mlflow==3.17.2"),
        "{err}"
    );
    // ... and found on the PATH the test command set.
    let path = std::env::var_os("PATH").unwrap();
    let found = find_mlflow(None, Some(&path)).unwrap();
    assert!(
        found.ends_with("mlflow") && found.is_absolute(),
        "{found:?}"
    );
}

// ---- scripted stand-ins for mlflow ----------------------------------------------------------

#[test]
fn a_server_that_dies_during_start_up_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        "mlflow",
        "#!/bin/sh\necho 'starting up'\necho 'ERROR: [Errno 98] address already in use' >&2\nexit 1\n",
    );
    let o = ServerOptions {
        mlflow_bin: Some(bin),
        ..opts(dir.path())
    };
    let port = common::free_port();
    let t = Instant::now();
    let err = MlflowServer::start(LOOPBACK, port, &o).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(matches!(err, Error::ServerExited { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("exit code 1"), "{msg}");
    assert!(msg.contains("address already in use"), "{msg}");
    assert!(msg.contains(&format!("sapsan-mlflow-{port}.log")), "{msg}");
}

#[test]
fn a_server_that_never_answers_times_out_with_its_log_and_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let bin = script(
        dir.path(),
        "mlflow",
        &format!(
            "#!/bin/sh\necho $$ > '{}'\necho 'still importing modules'\nexec sleep 60\n",
            pidfile.display()
        ),
    );
    let o = ServerOptions {
        mlflow_bin: Some(bin),
        ready_timeout: Duration::from_millis(300),
        ..opts(dir.path())
    };
    let port = common::free_port();
    let err = MlflowServer::start(LOOPBACK, port, &o).unwrap_err();
    match &err {
        Error::ServerTimeout { url, log, tail, .. } => {
            assert_eq!(url, &format!("http://{LOOPBACK}:{port}"));
            assert!(log.contains(&port.to_string()), "{log}");
            assert!(tail.contains("still importing modules"), "{tail}");
        }
        other => panic!("expected ServerTimeout, got {other}"),
    }
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!group_exists(pid), "left behind: {:?}", group_members(pid));
}

/// A stand-in for `mlflow server`: records its arguments and environment, starts a grandchild
/// (like uvicorn), and answers /health and /version.
fn fake_mlflow(dir: &Path) -> PathBuf {
    let body = format!(
        r#"#!{py}
import http.server, json, os, subprocess, sys
args = sys.argv[1:]
with open(os.path.join({dir:?}, "record.json"), "w") as f:
    json.dump({{"args": args, "cwd": os.getcwd(),
               "jobs": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION")}}, f)
subprocess.Popen(["sleep", "300"])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"OK" if self.path == "/health" else b"3.17.2"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
http.server.HTTPServer((host, port), H).serve_forever()
"#,
        py = common::python(),
        dir = dir.display().to_string(),
    );
    script(dir, "mlflow", &body)
}

#[test]
fn start_passes_the_agreed_command_line_and_drop_stops_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let bin = fake_mlflow(dir.path());
    let data = dir.path().join("store");
    let o = ServerOptions {
        mlflow_bin: Some(bin),
        ..opts(&data)
    };
    let port = common::free_port();
    let server = MlflowServer::start(LOOPBACK, port, &o).unwrap();
    let pgid = server.pid();
    assert_eq!(
        probe(LOOPBACK, port, Duration::from_secs(2)),
        PortState::Mlflow {
            version: "3.17.2".into()
        }
    );
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("record.json")).unwrap())
            .unwrap();
    let args: Vec<String> = serde_json::from_value(rec["args"].clone()).unwrap();
    let data = data.clone();
    let expected = [
        "server".to_owned(),
        "--host".into(),
        LOOPBACK.into(),
        "--port".into(),
        port.to_string(),
        "--backend-store-uri".into(),
        format!("sqlite:///{}/mlflow.db", data.display()),
        "--artifacts-destination".into(),
        format!("{}/mlartifacts", data.display()),
        "--workers".into(),
        "1".into(),
    ];
    assert_eq!(args, expected);
    assert_eq!(rec["jobs"], "false");
    assert_eq!(rec["cwd"], data.display().to_string());

    let members = group_members(pgid);
    assert!(
        members.iter().any(|(_, c)| c.starts_with("sleep 300")),
        "{members:?}"
    );
    drop(server);
    assert!(
        !group_exists(pgid),
        "left behind: {:?}",
        group_members(pgid)
    );
    assert_eq!(
        probe(LOOPBACK, port, Duration::from_secs(2)),
        PortState::Free
    );
}

#[test]
// `stop_process_group` reaps the child itself (waitpid on the group leader).
#[allow(clippy::zombie_processes)]
fn stop_process_group_kills_what_ignores_sigterm() {
    // SIGTERM is ignored by the shell and (inherited) by its `sleep`. Wait until both are set up:
    // a SIGTERM sent before the `trap` ran would end the group at once.
    let mut child = std::process::Command::new("sh")
        .args(["-c", "trap '' TERM; sleep 60 & echo ready; wait"])
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let pgid = child.id();
    let t = Instant::now();
    stop_process_group(pgid, Duration::from_millis(200)).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert!(
        !group_exists(pgid),
        "left behind: {:?}",
        group_members(pgid)
    );
}
