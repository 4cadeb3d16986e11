//! The `sapsan` command against a real MLflow server, judged by the official Python client:
//! `--help` on every subcommand, `runs` nesting evaluate runs under their train run,
//! `sync --dry-run` sending nothing, `ui` reusing or starting a server, and a project made by
//! `new` building and running.
mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use sapsan::tracking::{Backend, MlflowBackend, OfflineBackend};
use serde_json::json;

/// Runs the `sapsan` binary with `args` and `env` (no `MLFLOW_*` or colour variables of the
/// caller leak in).
fn sapsan(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sapsan"));
    cmd.args(args);
    for k in [
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "NO_COLOR",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    // `ui` may start a server: its own deadline is 180 s (--ready-timeout).
    output_within(cmd, Duration::from_secs(240))
}

/// Runs `cmd` to the end, its output; killed, and the test failed, after `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    use std::process::Stdio;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}")),
        Err(_) => {
            // SAFETY: signalling the child this test started and has not reaped yet.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {limit:?}; killed")
        }
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `out` succeeded; its stdout.
fn ok(out: Output) -> String {
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "sapsan failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn help_works_for_the_command_and_every_subcommand() {
    let top = ok(sapsan(&["--help"], &[]));
    for sub in ["sync", "runs", "ui", "new"] {
        assert!(top.contains(sub), "{top}");
        let help = ok(sapsan(&[sub, "--help"], &[]));
        assert!(help.contains(&format!("Usage: sapsan {sub}")), "{help}");
        assert_eq!(ok(sapsan(&["help", sub], &[])), help);
    }
    let runs = ok(sapsan(&["runs", "--help"], &[]));
    assert!(
        runs.contains("--experiment") && runs.contains("--limit"),
        "{runs}"
    );
    assert!(ok(sapsan(&["sync", "--help"], &[])).contains("--dry-run"));
    assert!(ok(sapsan(&["ui", "--help"], &[])).contains("--port"));
    assert!(ok(sapsan(&["new", "--help"], &[])).contains("--sapsan-path"));
    // A usage error is clap's: exit 2, the usage on stderr.
    let bad = sapsan(&["runs", "--limit", "many"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).1.contains("--limit"), "{}", text(&bad).1);
}

#[test]
fn runs_in_offline_mode_says_there_is_no_server_to_read() {
    let out = sapsan(
        &["runs"],
        &[("MLFLOW_TRACKING_URI", "offline:/tmp/journals")],
    );
    assert!(!out.status.success());
    let (_, err) = text(&out);
    assert!(
        err.contains("MLFLOW_TRACKING_URI=offline:/tmp/journals is offline mode")
            && err.contains("sapsan sync"),
        "{err}"
    );
}

/// A train run with `evals` evaluate runs nested under it, delivered; the ids.
fn train_with_evals(backend: &MlflowBackend, evals: usize, mse: f64) -> (String, Vec<String>) {
    let train = backend.start("train", false, None).unwrap();
    backend.log_metric("train - final epoch", 7.0).unwrap();
    let ids = (0..evals)
        .map(|i| {
            let id = backend.start("evaluate", true, None).unwrap();
            backend
                .log_metric("eval - MSE Loss", mse + i as f64)
                .unwrap();
            backend.log_metric("eval - KS Stat", 0.25).unwrap();
            backend.end().unwrap();
            id
        })
        .collect();
    backend.end().unwrap();
    assert!(backend.wait_delivered(Duration::from_secs(60)).unwrap());
    (backend.server_run_id(&train).unwrap(), ids)
}

#[test]
fn runs_nests_each_evaluate_run_under_its_train_run() {
    let uri = common::tracking_uri();
    let experiment = common::unique("cli-runs");
    let journals = tempfile::tempdir().unwrap();
    let backend = MlflowBackend::builder()
        .tracking_uri(&uri)
        .experiment(&experiment)
        .journal_root(journals.path())
        .handle_signals(false)
        .build()
        .unwrap();
    let (t1, e1) = train_with_evals(&backend, 2, 0.5);
    let (t2, e2) = train_with_evals(&backend, 1, 3.0);
    let e1: Vec<String> = e1
        .iter()
        .map(|e| backend.server_run_id(e).unwrap())
        .collect();
    let e2 = backend.server_run_id(&e2[0]).unwrap();
    drop(backend);

    // The Python client agrees on the nesting the tree must show.
    let parents = common::judge(
        "exp = client.get_experiment_by_name(args[0])\n\
         runs = client.search_runs([exp.experiment_id])\n\
         print(json.dumps({r.info.run_id: r.data.tags.get('mlflow.parentRunId') for r in runs}))",
        &[&experiment],
    );
    assert_eq!(parents.as_object().unwrap().len(), 5, "{parents}");
    for e in &e1 {
        assert_eq!(parents[e], json!(t1));
    }
    assert_eq!(parents[&e2], json!(t2));

    // Piped: plain text, no colour codes. The server and experiment come from the environment.
    let out = ok(sapsan(
        &["runs"],
        &[
            ("MLFLOW_TRACKING_URI", &uri),
            ("MLFLOW_EXPERIMENT_NAME", &experiment),
        ],
    ));
    assert!(!out.contains('\x1b'), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains(&format!("{experiment:?}"))
            && lines[0].contains("2 top-level run(s), 5 in all"),
        "{out}"
    );
    let at = |id: &str| {
        lines
            .iter()
            .position(|l| l.ends_with(id))
            .unwrap_or_else(|| panic!("run {id} not listed:\n{out}"))
    };
    // Newest train run first, each followed by its own evaluate runs, indented.
    let (i2, i1) = (at(&t2), at(&t1));
    assert!(i2 < i1, "{out}");
    assert!(lines[i2].starts_with("train  FINISHED  "), "{out}");
    assert!(lines[i2].contains("train - final epoch = 7"), "{out}");
    assert_eq!(at(&e2), i2 + 1);
    assert!(
        lines[i2 + 1].starts_with("└── evaluate  FINISHED  "),
        "{out}"
    );
    assert!(lines[i2 + 1].contains("eval - MSE Loss = 3"), "{out}");
    let mut under_t1 = vec![at(&e1[0]), at(&e1[1])];
    under_t1.sort();
    assert_eq!(under_t1, [i1 + 1, i1 + 2], "{out}");
    assert!(
        lines[i1 + 1].starts_with("├── evaluate  FINISHED  "),
        "{out}"
    );
    assert!(
        lines[i1 + 2].starts_with("└── evaluate  FINISHED  "),
        "{out}"
    );
    assert!(lines[i1 + 1].contains("eval - KS Stat = 0.25"), "{out}");
    // Nested runs do not repeat the train run's metrics.
    assert!(!lines[i1 + 1].contains("train - final epoch"), "{out}");

    // --limit 1: the newest train run with its evaluate run, then what was left out.
    let out = ok(sapsan(
        &[
            "runs",
            "--experiment",
            &experiment,
            "--limit",
            "1",
            "--tracking-uri",
            &uri,
        ],
        &[],
    ));
    assert!(
        out.contains(&t2) && out.contains(&e2) && !out.contains(&t1),
        "{out}"
    );
    assert!(out.contains("1 older top-level run(s) not shown"), "{out}");
    // Colour when asked, even piped; none with NO_COLOR on auto.
    let coloured = ok(sapsan(
        &["runs", "-e", &experiment, "--color", "always"],
        &[("MLFLOW_TRACKING_URI", &uri)],
    ));
    assert!(coloured.contains("\x1b[32mFINISHED\x1b[0m"), "{coloured}");
    let plain = ok(sapsan(
        &["runs", "-e", &experiment],
        &[("MLFLOW_TRACKING_URI", &uri), ("NO_COLOR", "1")],
    ));
    assert!(!plain.contains('\x1b'), "{plain}");

    // An experiment the server does not have: named, and nothing is created.
    let missing = common::unique("cli-missing");
    let out = sapsan(&["runs", "-e", &missing, "--tracking-uri", &uri], &[]);
    assert!(!out.status.success());
    let (_, err) = text(&out);
    assert!(err.contains(&format!("no experiment {missing:?}")), "{err}");
    let created = common::judge(
        "print(json.dumps(client.get_experiment_by_name(args[0]) is not None))",
        &[&missing],
    );
    assert_eq!(created, json!(false));
}

#[test]
fn sync_dry_run_says_what_would_be_sent_and_sends_nothing() {
    let uri = common::tracking_uri();
    let experiment = common::unique("cli-dry-run");
    let root = tempfile::tempdir().unwrap();
    {
        let backend = OfflineBackend::new(&experiment, root.path()).unwrap();
        backend.start("train", false, None).unwrap();
        backend.log_parameter("model - lr", "0.1").unwrap();
        backend.log_parameter("model - n_epochs", "3").unwrap();
        for step in 0..3 {
            backend.log_metric_step("train - loss", 1.0, step).unwrap();
        }
        backend.start("evaluate", true, None).unwrap();
        backend.log_metric("eval - MSE Loss", 0.5).unwrap();
        backend.end().unwrap();
        backend.end().unwrap();
    }

    let out = ok(sapsan(
        &[
            "sync",
            &root.path().display().to_string(),
            "--dry-run",
            "--tracking-uri",
            &uri,
        ],
        &[],
    ));
    assert!(out.contains("nothing is sent"), "{out}");
    assert!(
        out.contains(&format!(
            "run \"train\" in experiment {experiment:?}: 2 params, 3 metric points, "
        )) && out.contains("status RUNNING -> FINISHED"),
        "{out}"
    );
    assert!(
        out.contains("run \"evaluate\" in experiment")
            && out.contains("nested under \"train\": 0 params, 1 metric points"),
        "{out}"
    );
    assert!(
        out.contains("1 journal(s), 2 runs,") && out.contains(&format!("to {uri}")),
        "{out}"
    );
    // Nothing reached the server: not even the experiment.
    let judge = "exp = client.get_experiment_by_name(args[0])\n\
                 runs = [] if exp is None else client.search_runs([exp.experiment_id])\n\
                 print(json.dumps({'exp': exp is not None, 'runs': {r.info.run_name: \
                 [len(r.data.params), r.info.status] for r in runs}}))";
    assert_eq!(
        common::judge(judge, &[&experiment]),
        json!({"exp": false, "runs": {}})
    );
    // The journal is still there; a real sync then delivers what the dry run listed.
    common::sapsan_sync(root.path(), &uri);
    assert_eq!(
        common::judge(judge, &[&experiment]),
        json!({"exp": true, "runs": {"train": [2, "FINISHED"], "evaluate": [0, "FINISHED"]}})
    );
}

#[test]
fn ui_reuses_a_running_server_and_starts_one_on_a_free_port() {
    let uri = common::tracking_uri();
    let port = uri.rsplit(':').next().unwrap().trim_end_matches('/');
    // The test server is on the port: used as it is.
    let out = ok(sapsan(&["ui", "--host", "127.0.0.1", "--port", port], &[]));
    assert!(
        out.contains(&format!("MLflow UI: http://127.0.0.1:{port}")),
        "{out}"
    );
    assert!(out.contains("already running"), "{out}");
    // MLFLOW_TRACKING_URI and no --port: that server, nothing started.
    let out = ok(sapsan(&["ui"], &[("MLFLOW_TRACKING_URI", &uri)]));
    assert!(out.contains(&format!("MLflow UI: {uri}")), "{out}");
    let out = sapsan(&["ui", "--tracking-uri", "http://127.0.0.1:1"], &[]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("does not answer"), "{}", text(&out).1);

    // A free port: a server is started there and outlives the command.
    let free = common::free_port();
    let data = tempfile::tempdir().unwrap();
    let out = ok(sapsan(
        &[
            "ui",
            "--host",
            "127.0.0.1",
            "--port",
            &free.to_string(),
            "--data-dir",
            &data.path().display().to_string(),
            "--ready-timeout",
            "180",
        ],
        &[],
    ));
    let pgid: u32 = out
        .split("kill -TERM -- -")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stop command: {out}"));
    /// Stops the started server however the test ends.
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            let stopped =
                sapsan::tracking::server::stop_process_group(self.0, Duration::from_secs(10));
            if !std::thread::panicking() {
                stopped.unwrap();
            }
        }
    }
    let stop = Stop(pgid);
    let url = format!("http://127.0.0.1:{free}");
    let answered = common::judge_at(
        &url,
        "print(json.dumps([e.name for e in client.search_experiments()]))",
        &[],
    );
    drop(stop);
    assert!(out.contains(&format!("MLflow UI: {url}")), "{out}");
    assert_eq!(answered, json!(["Default"]));
    assert!(data.path().join("mlflow.db").is_file());
}

/// The directory Cargo builds into (this test binary is in `<target>/debug/deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .unwrap_or_else(|| panic!("no target directory above {}", exe.display()))
        .to_owned()
}

#[test]
fn a_new_project_builds_and_its_runs_land_on_the_server() {
    let uri = common::tracking_uri();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("sapsan_new_demo");
    let checkout = env!("CARGO_MANIFEST_DIR");
    let out = ok(sapsan(
        &["new", &dir.display().to_string(), "--sapsan-path", checkout],
        &[],
    ));
    assert!(out.contains("created") && out.contains(checkout), "{out}");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&format!("sapsan = {{ path = \"{checkout}\" }}")),
        "{manifest}"
    );
    let main = std::fs::read_to_string(dir.join("src/main.rs")).unwrap();
    assert!(main.contains("#[derive(ModelConfig)]") && main.contains("#[tracked(evaluate)]"));
    assert!(dir.join("README.md").is_file() && dir.join(".gitignore").is_file());
    // Made twice: refused, nothing overwritten.
    let again = sapsan(&["new", &dir.display().to_string()], &[]);
    assert!(!again.status.success());
    assert!(text(&again).1.contains("not empty"), "{}", text(&again).1);

    // Built in this workspace's target directory: candle and the rest are not built again.
    let target = target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target);
    // The first time in a target directory sapsan itself is built optimised (minutes).
    let build = output_within(build, Duration::from_secs(1200));
    assert!(
        build.status.success(),
        "the new project does not build:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    let experiment = common::unique("cli-new");
    let mut run = Command::new(target.join("debug").join("sapsan_new_demo"));
    run.current_dir(&dir)
        .env("MLFLOW_TRACKING_URI", &uri)
        .env("MLFLOW_EXPERIMENT_NAME", &experiment)
        .env("SAPSAN_JOURNAL_DIR", root.path().join("journal"));
    let stdout = ok(output_within(run, Duration::from_secs(300)));
    let id = |label: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} line: {stdout}"))
            .trim()
            .to_owned()
    };
    let (train, eval) = (id("train run "), id("evaluate run "));
    let landed = common::judge(
        "t = client.get_run(args[0]); e = client.get_run(args[1])\n\
         print(json.dumps({'exp': client.get_experiment(t.info.experiment_id).name,\n\
           'status': [t.info.status, e.info.status], 'parent': e.data.tags.get('mlflow.parentRunId'),\n\
           'params': {k: t.data.params[k] for k in ['model - lr', 'model - n_epochs', 'model - optimizer']},\n\
           'epochs': t.data.metrics['train - final epoch'],\n\
           'losses': len(client.get_metric_history(args[0], 'train - loss')),\n\
           'mse': e.data.metrics['eval - MSE Loss']}))",
        &[&train, &eval],
    );
    assert_eq!(landed["exp"], json!(experiment));
    assert_eq!(landed["status"], json!(["FINISHED", "FINISHED"]));
    assert_eq!(landed["parent"], json!(train));
    assert_eq!(
        landed["params"],
        json!({"model - lr": "0.1", "model - n_epochs": "100", "model - optimizer": "sgd"})
    );
    assert_eq!(
        (landed["epochs"].as_f64(), landed["losses"].as_u64()),
        (Some(100.0), Some(100))
    );
    // The fit converged to the noise level of the data.
    let mse = landed["mse"].as_f64().unwrap();
    assert!(mse < 0.01, "eval - MSE Loss {mse}");
    assert!(!dir.join("mlflow.db").exists());

    // Offline mode: the project journals its runs; a dry run lists them, a sync lands them.
    let offline = root.path().join("offline");
    let experiment = common::unique("cli-new-offline");
    let mut run = Command::new(target.join("debug").join("sapsan_new_demo"));
    run.current_dir(&dir)
        .env(
            "MLFLOW_TRACKING_URI",
            format!("offline:{}", offline.display()),
        )
        .env("MLFLOW_EXPERIMENT_NAME", &experiment);
    ok(output_within(run, Duration::from_secs(300)));
    let offline = offline.display().to_string();
    let plan = ok(sapsan(
        &["sync", &offline, "--dry-run", "--tracking-uri", &uri],
        &[],
    ));
    assert!(
        plan.contains(&format!(
            "run \"train\" in experiment {experiment:?}: 4 params, 102 metric points"
        )) && plan.contains("nested under \"train\""),
        "{plan}"
    );
    common::sapsan_sync(std::path::Path::new(&offline), &uri);
    let landed = common::judge(
        "exp = client.get_experiment_by_name(args[0])\n\
         runs = client.search_runs([exp.experiment_id])\n\
         print(json.dumps(sorted([r.info.run_name, r.info.status] for r in runs)))",
        &[&experiment],
    );
    assert_eq!(
        landed,
        json!([["evaluate", "FINISHED"], ["train", "FINISHED"]])
    );
}

/// A loopback HTTP server that answers `GET /health` with `OK` and every other request with
/// `403 Permission denied`; the request heads it received, as they come.
fn recording_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    // Serves until the test process ends; nothing waits for it.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                })
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let (status, body) = if head.starts_with("GET /health ") {
                ("200 OK", "OK")
            } else {
                ("403 Forbidden", "Permission denied")
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            seen.lock().unwrap().push(head);
        }
    });
    (url, heads)
}

#[test]
fn credentials_from_the_environment_reach_the_server_for_every_subcommand() {
    const TOKEN: &str = "tok-cli-5e3c7a";
    const PASSWORD: &str = "pw-cli-9b2d4f";
    // `admin:pw-cli-9b2d4f`, as the Basic header carries it.
    const BASIC: &str = "YWRtaW46cHctY2xpLTliMmQ0Zg==";
    let (url, heads) = recording_server();
    let journal = tempfile::tempdir().unwrap();
    {
        let backend = OfflineBackend::new("cli-auth", journal.path()).unwrap();
        backend.start("train", false, None).unwrap();
        backend.end().unwrap();
    }
    let journal = journal.path().display().to_string();
    let token = [("MLFLOW_TRACKING_TOKEN", TOKEN)];
    let basic = [
        ("MLFLOW_TRACKING_USERNAME", "admin"),
        ("MLFLOW_TRACKING_PASSWORD", PASSWORD),
        ("MLFLOW_TRACKING_URI", url.as_str()),
    ];
    // Subcommand, its arguments, its environment, the secret its requests must carry.
    type Case<'a> = (&'a str, Vec<&'a str>, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 3] = [
        ("runs", vec!["runs", "--tracking-uri", &url], &token, TOKEN),
        (
            "sync",
            vec!["sync", &journal, "--tracking-uri", &url],
            &token,
            TOKEN,
        ),
        ("ui", vec!["ui"], &basic, BASIC),
    ];
    for (name, args, env, secret) in cases {
        heads.lock().unwrap().clear();
        let out = sapsan(&args, env);
        let (stdout, stderr) = text(&out);
        let got = heads.lock().unwrap().clone();
        assert!(!got.is_empty(), "{name}: no request reached the server");
        for head in &got {
            assert!(
                head.lines()
                    .any(|l| l.to_ascii_lowercase().starts_with("authorization:")
                        && l.ends_with(secret)),
                "{name}: a request without the credentials: {head}"
            );
        }
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{name} shows a credential:\n{stdout}\n{stderr}"
        );
        if name == "ui" {
            assert!(out.status.success(), "{stderr}");
            assert!(stdout.contains(&format!("MLflow UI: {url}")), "{stdout}");
        } else {
            // Refused (403): said so, not retried as if the server were away.
            assert!(!out.status.success(), "{name}: {stdout}");
            assert!(stderr.contains("403"), "{name}: {stderr}");
        }
    }
}
