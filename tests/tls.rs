//! TLS through rustls against a real MLflow server serving HTTPS on loopback with a certificate
//! signed by a throw-away CA (made with the `openssl` command): trusted through
//! `MLFLOW_TRACKING_SERVER_CERT_PATH` it works; without it, one clear certificate error; with
//! `MLFLOW_TRACKING_INSECURE_TLS` it works.
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sapsan::Error;
use sapsan::tracking::rest::client::{HttpClient, TLS_HINT};
use sapsan::tracking::{Backend, MlflowBackend, RunStatus, Settings};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect(
            "the `openssl` command is needed to make test certificates (apt-get install openssl)",
        );
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ca.pem` (a CA) and `cert.pem`/`key.pem` (a leaf for 127.0.0.1 and localhost signed by it).
fn make_certificates(dir: &Path) {
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    #[rustfmt::skip]
    let steps: [&[&str]; 3] = [
        &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
          "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=sapsan test CA"],
        &["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
          "-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"],
        &["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
          "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "leaf.ext"],
    ];
    for s in steps {
        openssl(dir, s);
    }
}

/// `mlflow server` on loopback serving HTTPS (uvicorn's `--ssl-*` options), in its own process
/// group, stopped on drop.
struct TlsServer {
    child: Child,
    url: String,
}

impl TlsServer {
    fn start(dir: &Path) -> TlsServer {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mlflow = std::env::var("SAPSAN_MLFLOW_BIN").unwrap_or_else(|_| "mlflow".into());
        let mut child = Command::new(mlflow)
            .arg("server")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("mlartifacts"))
            .args(["--workers", "1"])
            .arg("--uvicorn-opts")
            .arg(format!(
                "--ssl-keyfile {} --ssl-certfile {}",
                dir.join("key.pem").display(),
                dir.join("cert.pem").display()
            ))
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("cannot start `mlflow` (run the tests with `bash scripts/test.sh`)");
        // Ready when uvicorn says so (no polling); its log goes on to stderr.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let started = Instant::now();
        let mut log = String::new();
        loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("mlflow exited during start-up:\n{log}"))
                .unwrap();
            log.push_str(&line);
            log.push('\n');
            if line.contains("Uvicorn running on") || line.contains("Application startup complete")
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(180), "{log}");
        }
        std::thread::spawn(move || lines.for_each(drop));
        TlsServer {
            child,
            url: format!("https://127.0.0.1:{port}"),
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        // SAFETY: signalling the process group we created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn settings() -> Settings {
    Settings {
        max_retries: 2,
        ..Settings::default()
    }
}

fn log_one_run(url: &str, settings: Settings) {
    let b = MlflowBackend::builder()
        .settings(settings)
        .tracking_uri(url)
        .experiment("tls")
        .handle_signals(false)
        .build()
        .unwrap();
    let run = b.start("train", false, None).unwrap();
    b.log_metric_step("loss", 0.25, 0).unwrap();
    b.end().unwrap();
    let info = b.get_run(&run).unwrap();
    assert_eq!(info.status, Some(RunStatus::Finished));
    assert_eq!(info.data.metrics.get("loss"), Some(&0.25));
}

#[test]
fn tls_with_custom_ca_untrusted_and_insecure() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let server = TlsServer::start(dir.path());

    // Trusted through the CA file.
    log_one_run(
        &server.url,
        Settings {
            server_cert_path: Some(dir.path().join("ca.pem")),
            ..settings()
        },
    );

    // Not trusted: one request, one error that names the certificate problem and the fix.
    let http = HttpClient::new(&server.url, &settings()).unwrap();
    let e = http
        .get("experiments/get-by-name", &[("experiment_name", "tls")])
        .unwrap_err();
    assert_eq!(
        http.requests(),
        1,
        "a certificate error must not be retried"
    );
    match &e {
        Error::Connection { reason, .. } => {
            assert!(reason.contains("certificate"), "{e}");
            assert!(reason.contains(TLS_HINT), "{e}");
        }
        other => panic!("expected a certificate error, got {other}"),
    }
    let e = MlflowBackend::builder()
        .settings(settings())
        .tracking_uri(&server.url)
        .handle_signals(false)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains(TLS_HINT), "{e}");

    // The insecure switch, read from the environment the way users set it.
    let insecure =
        Settings::from_lookup(|k| (k == "MLFLOW_TRACKING_INSECURE_TLS").then(|| "true".to_owned()))
            .unwrap();
    assert!(insecure.insecure_tls);
    log_one_run(&server.url, insecure);

    // A CA file that is not PEM: a setting error naming the variable.
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    let e = HttpClient::new(
        &server.url,
        &Settings {
            server_cert_path: Some(dir.path().join("junk.pem")),
            ..settings()
        },
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("MLFLOW_TRACKING_SERVER_CERT_PATH"),
        "{e}"
    );
}
