//! Credentials: basic auth against `mlflow server --app-name basic-auth` (the `mlflow[auth]` extra),
//! bearer tokens, 401/403 answered by exactly one request and one clear error, and no credential in
//! any error message or `Debug` string.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use sapsan::Error;
use sapsan::tracking::rest::client::{AUTH_HINT, HttpClient};
use sapsan::tracking::{
    Auth, Backend, MlflowBackend, MlflowServer, RunStatus, ServerOptions, Settings,
};

const ADMIN_PASSWORD: &str = "Adm1n-s3cret-Pw-4-sapsan";
const WRONG_PASSWORD: &str = "Wr0ng-s3cret-Pw-4-sapsan";
const TOKEN: &str = "tok-s3cret-7f3a9c-sapsan";

fn basic(password: &str) -> Settings {
    Settings {
        auth: Auth::Basic {
            username: "admin".into(),
            password: password.into(),
        },
        max_retries: 3,
        ..Settings::default()
    }
}

/// Fails when `text` shows any credential (as is, or base64-encoded in a header).
fn assert_no_secret(what: &str, text: &str) {
    let b64 = |s: &str| {
        // `admin:<password>` as it goes into the Basic header, standard base64.
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let input = format!("admin:{s}").into_bytes();
        let mut out = String::new();
        for c in input.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                out.push(if i <= c.len() {
                    A[((n >> (18 - 6 * i)) & 63) as usize] as char
                } else {
                    '='
                });
            }
        }
        out
    };
    for secret in [
        ADMIN_PASSWORD.to_owned(),
        WRONG_PASSWORD.to_owned(),
        TOKEN.to_owned(),
        b64(ADMIN_PASSWORD),
        b64(WRONG_PASSWORD),
    ] {
        assert!(!text.contains(&secret), "{what} shows a credential: {text}");
    }
}

/// Every way an error can be shown: `Display` and `Debug`.
fn shown(e: &Error) -> String {
    format!("{e}\n{e:?}")
}

#[test]
fn basic_auth_wrong_password_is_one_clear_error_right_one_works() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ServerOptions {
        data_dir: Some(dir.path().to_owned()),
        quiet: true,
        ready_timeout: Duration::from_secs(180),
        extra_args: vec!["--app-name".into(), "basic-auth".into()],
        env: vec![
            ("MLFLOW_AUTH_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()),
            (
                "MLFLOW_FLASK_SERVER_SECRET_KEY".into(),
                "sapsan-test-secret-key".into(),
            ),
        ],
        ..ServerOptions::default()
    };
    assert_no_secret("ServerOptions Debug", &format!("{opts:?}"));
    let server = MlflowServer::start("127.0.0.1", common::free_port(), &opts).unwrap();
    let url = server.url().to_owned();
    let mut seen = format!("{server:?}\n");

    // Wrong password: one request, one error that says what to check.
    let http = HttpClient::new(&url, &basic(WRONG_PASSWORD)).unwrap();
    let t = Instant::now();
    let e = http
        .get("experiments/get-by-name", &[("experiment_name", "x")])
        .unwrap_err();
    assert_eq!(http.requests(), 1, "a refused request must not be retried");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    match &e {
        Error::Mlflow {
            status, message, ..
        } => {
            assert_eq!(*status, 401, "{e}");
            assert!(message.contains(AUTH_HINT), "{e}");
        }
        other => panic!("expected a 401, got {other}"),
    }
    seen += &shown(&e);
    seen += &format!("{http:?}\n");

    // The same through the backend builder: the build fails at once with the 401.
    let e = MlflowBackend::builder()
        .settings(basic(WRONG_PASSWORD))
        .tracking_uri(&url)
        .experiment("auth")
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::Mlflow { status: 401, .. }), "{e}");
    seen += &shown(&e);

    // Credentials in the URI move to the Basic header and never into messages.
    let with_creds = url.replace("http://", &format!("http://admin:{WRONG_PASSWORD}@"));
    let e = MlflowBackend::builder()
        .tracking_uri(&with_creds)
        .experiment("auth")
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::Mlflow { status: 401, .. }), "{e}");
    seen += &shown(&e);

    // Right password: a run is created, logged to and ended.
    let b = MlflowBackend::builder()
        .settings(basic(ADMIN_PASSWORD))
        .tracking_uri(&url)
        .experiment("auth")
        .handle_signals(false)
        .build()
        .unwrap();
    let run = b.start("train", false, None).unwrap();
    b.log_metric_step("loss", 0.5, 0).unwrap();
    b.end().unwrap();
    let info = b.get_run(&run).unwrap();
    assert_eq!(info.status, Some(RunStatus::Finished));
    assert_eq!(info.data.metrics.get("loss"), Some(&0.5));
    seen += &format!("{b:?}\n{:?}\n", basic(ADMIN_PASSWORD));
    // An error with the right credentials (unknown run) shows none of them either.
    let e = b.get_run("0123456789abcdef0123456789abcdef").unwrap_err();
    seen += &shown(&e);
    drop(b);

    assert_no_secret("messages and Debug output", &seen);
    server.stop().unwrap();
}

/// A one-shot HTTP server on loopback that answers `status` with `body` and returns the request
/// head it received, plus how many connections came in.
fn one_answer_server(
    status: &str,
    body: &'static str,
) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let url = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
    let status = status.to_owned();
    let h = std::thread::spawn(move || {
        l.set_nonblocking(false).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut head = String::new();
        let mut r = BufReader::new(s.try_clone().unwrap());
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        let mut buf = vec![0; len];
        r.read_exact(&mut buf).unwrap();
        write!(
            s,
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // A retry would connect again: count connections for a moment after the answer.
        l.set_nonblocking(true).unwrap();
        let mut heads = vec![head];
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            if let Ok((s2, _)) = l.accept() {
                drop(s2);
                heads.push("retry".into());
            }
            std::thread::yield_now();
        }
        heads
    });
    (url, h)
}

#[test]
fn bearer_token_is_sent_and_a_403_is_not_retried() {
    let (url, server) = one_answer_server("403 Forbidden", "Permission denied");
    let settings = Settings {
        auth: Auth::Bearer(TOKEN.into()),
        max_retries: 3,
        ..Settings::default()
    };
    let http = HttpClient::new(&url, &settings).unwrap();
    let e = http
        .post(
            "runs/log-batch",
            &serde_json::json!({"run_id": "r"}),
            sapsan::tracking::rest::client::Idempotency::Idempotent,
        )
        .unwrap_err();
    let heads = server.join().unwrap();
    assert_eq!(heads.len(), 1, "retried: {heads:?}");
    assert_eq!(http.requests(), 1);
    assert!(
        heads[0]
            .lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {TOKEN}"))),
        "no bearer header in {}",
        heads[0]
    );
    assert!(matches!(e, Error::Mlflow { status: 403, .. }), "{e}");
    assert!(shown(&e).contains(AUTH_HINT), "{e}");
    assert_no_secret("403 error", &shown(&e));
    assert_no_secret("HttpClient Debug", &format!("{http:?} {settings:?}"));
}

#[test]
fn connection_errors_never_show_credentials() {
    // Nothing listens on this port: the error names the URL, without the credentials in it.
    let port = common::free_port();
    let uri = format!("http://admin:{ADMIN_PASSWORD}@127.0.0.1:{port}");
    let settings = Settings {
        max_retries: 0,
        ..Settings::default()
    };
    // A server away at the start does not stop the job (runs are kept until it answers); the
    // errors of what needs it now name the URL without the credentials.
    let b = MlflowBackend::builder()
        .settings(settings)
        .tracking_uri(&uri)
        .journal(false)
        .handle_signals(false)
        .build()
        .unwrap();
    assert_no_secret("backend Debug", &format!("{b:?}"));
    let e = b.experiment_id().unwrap_err();
    assert!(matches!(e, Error::Connection { .. }), "{e}");
    assert!(shown(&e).contains(&format!("127.0.0.1:{port}")), "{e}");
    assert_no_secret("connection error", &shown(&e));
    let run = b.start("train", false, None).unwrap();
    let e = b.get_run(&run).unwrap_err();
    assert_no_secret("read of a local run", &shown(&e));
    drop(b);
    // A malformed URI with credentials: the setting error redacts them.
    let e = MlflowBackend::builder()
        .tracking_uri(format!("ftp://admin:{ADMIN_PASSWORD}@host"))
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::Setting { .. }), "{e}");
    assert_no_secret("setting error", &shown(&e));
    let from_env = Settings::from_lookup(|k| match k {
        "MLFLOW_TRACKING_TOKEN" => Some(TOKEN.into()),
        "MLFLOW_TRACKING_URI" => Some(uri.clone()),
        _ => None,
    })
    .unwrap();
    assert_no_secret("Settings Debug", &format!("{from_env:?}"));
}

#[test]
fn artifact_names_escaping_the_run_are_rejected_before_any_request() {
    let b = MlflowBackend::builder()
        .tracking_uri(common::tracking_uri())
        .experiment(common::unique("artifact-escape"))
        .handle_signals(false)
        .build()
        .unwrap();
    let run = b.start("train", false, None).unwrap();
    let before = b.http_requests();
    for name in [
        "../escape.txt",
        "plots/../../escape.txt",
        "/etc/passwd",
        "/tmp/escape.txt",
        "..",
        "a\\..\\..\\x",
    ] {
        match b.upload_artifact(&run, name, b"x") {
            Err(Error::Artifact { name: n, reason }) => {
                assert_eq!(n, name);
                assert!(!reason.is_empty());
            }
            other => panic!("{name:?}: {other:?}"),
        }
        assert!(matches!(
            b.download_artifact(&run, name),
            Err(Error::Artifact { .. })
        ));
    }
    assert_eq!(
        b.http_requests(),
        before,
        "a rejected name must never reach the server"
    );
    assert!(
        b.list_artifacts(&run, None).unwrap().is_empty(),
        "nothing written"
    );
    b.end().unwrap();
}

#[test]
fn the_default_host_of_an_auto_started_server_is_loopback() {
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = (sapsan::tracking::backend::DEFAULT_HOST, 5000)
        .to_socket_addrs()
        .unwrap()
        .collect();
    assert!(!addrs.is_empty());
    for a in addrs {
        assert!(a.ip().is_loopback(), "{a} is not loopback");
    }
    // A client of a server bound to every interface still talks to it over loopback.
    assert_eq!(
        sapsan::tracking::server::base_url("0.0.0.0", 5000),
        "http://127.0.0.1:5000"
    );
}
