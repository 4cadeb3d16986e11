//! `sapsan new NAME`: a project skeleton, as Sapsan's `sapsan create` makes one: a Cargo.toml
//! depending on sapsan, a config with `#[derive(ModelConfig)]`, a `#[tracked]` train/evaluate
//! pair on candle, a README and a .gitignore. The templates are in `skeleton/`.
use std::path::{Path, PathBuf};

use crate::cli::NewArgs;
use crate::error::{CliError, Result};

const CARGO_TOML: &str = include_str!("skeleton/Cargo.toml.tmpl");
const MAIN_RS: &str = include_str!("skeleton/main.rs.tmpl");
const README: &str = include_str!("skeleton/README.md.tmpl");
const GITIGNORE: &str = include_str!("skeleton/gitignore.tmpl");

/// The candle version the skeleton asks for: the one sapsan is built with (a test checks it
/// against the workspace's Cargo.toml), so both share one candle.
const CANDLE_VERSION: &str = "0.11";

/// The checkout this command was built from.
const BUILT_FROM: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `sapsan new`.
pub fn run(args: &NewArgs) -> Result<()> {
    let dir = &args.path;
    let fail = |reason: String| CliError::New {
        path: dir.clone(),
        reason,
    };
    let name = crate_name(dir).map_err(fail)?;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map_err(|e| CliError::io("reading", dir, e))?
            .next()
            .is_none();
        if !empty {
            return Err(fail(
                "it exists and is not empty; choose a new directory name".into(),
            ));
        }
    }
    let checkout = match &args.sapsan_path {
        Some(p) => Some(checkout(p).map_err(fail)?),
        None => default_checkout(Path::new(BUILT_FROM)),
    };
    let dependency = match &checkout {
        Some(p) => format!(
            "sapsan = {{ path = {} }}",
            toml_string(&p.display().to_string())
        ),
        None => format!("sapsan = \"{}\"", env!("CARGO_PKG_VERSION")),
    };
    let fill = |t: &str| {
        t.replace("{{name}}", &name)
            .replace("{{sapsan}}", &dependency)
            .replace("{{candle}}", CANDLE_VERSION)
    };
    let files = [
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/main.rs", fill(MAIN_RS)),
        ("README.md", fill(README)),
        (".gitignore", fill(GITIGNORE)),
    ];
    let src = dir.join("src");
    std::fs::create_dir_all(&src).map_err(|e| CliError::io("creating", &src, e))?;
    for (file, text) in &files {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| CliError::io("writing", &path, e))?;
    }
    // The versions the checkout was tested with: the project starts from its lock file.
    if let Some(lock) = checkout.as_ref().map(|p| p.join("Cargo.lock"))
        && lock.is_file()
    {
        let to = dir.join("Cargo.lock");
        std::fs::copy(&lock, &to).map_err(|e| CliError::io("copying the lock file to", &to, e))?;
    }
    println!("sapsan new: created {} (crate {name})", dir.display());
    match &checkout {
        Some(p) => println!("  depends on the sapsan checkout at {}", p.display()),
        None => println!(
            "  depends on sapsan {} from crates.io; until it is published there, make the \
             project again with --sapsan-path <a sapsan checkout>",
            env!("CARGO_PKG_VERSION")
        ),
    }
    println!(
        "Run it (uses MLFLOW_TRACKING_URI, else starts an MLflow server on localhost:5000):\n    \
         cd {} && cargo run",
        dir.display()
    );
    Ok(())
}

/// The crate name of project directory `dir`: its last component, which Cargo must accept.
fn crate_name(dir: &Path) -> std::result::Result<String, String> {
    let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
        return Err("the path has no last component to name the crate after".into());
    };
    let ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 64;
    if !ok {
        return Err(format!(
            "{name:?} is not a crate name: use ASCII letters, digits, `-` and `_`, starting \
             with a letter"
        ));
    }
    if matches!(
        name,
        "sapsan" | "sapsan-core" | "sapsan-derive" | "test" | "core" | "std"
    ) {
        return Err(format!(
            "{name:?} would clash with a crate it uses; choose another name"
        ));
    }
    Ok(name.to_owned())
}

/// `path` as an absolute sapsan checkout: a directory whose Cargo.toml is the `sapsan` package.
fn checkout(path: &Path) -> std::result::Result<PathBuf, String> {
    let abs =
        std::path::absolute(path).map_err(|e| format!("--sapsan-path {}: {e}", path.display()))?;
    let manifest = abs.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| {
        format!(
            "--sapsan-path {}: cannot read {} ({e}); give the directory of a sapsan checkout",
            path.display(),
            manifest.display()
        )
    })?;
    if !text.lines().any(|l| l.trim() == "name = \"sapsan\"") {
        return Err(format!(
            "--sapsan-path {}: {} is not the `sapsan` package's manifest; give the directory \
             of a sapsan checkout",
            path.display(),
            manifest.display()
        ));
    }
    Ok(abs)
}

/// The checkout a project depends on when none is given: the one this command was built from,
/// unless it was installed from a registry (`cargo install sapsan`) and so built from the
/// package's copy in cargo's cache, which `cargo package` marks with `Cargo.toml.orig`: the
/// project then depends on the released crate, not on that cache.
fn default_checkout(built_from: &Path) -> Option<PathBuf> {
    if built_from.join("Cargo.toml.orig").is_file() {
        return None;
    }
    checkout(built_from).ok()
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_copy_is_not_a_checkout_to_depend_on() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("Cargo.toml"),
            "[package]\nname = \"sapsan\"\n",
        )
        .unwrap();
        assert!(default_checkout(dir.path()).is_some(), "a checkout");
        std::fs::write(dir.path().join("Cargo.toml.orig"), "").unwrap();
        assert_eq!(default_checkout(dir.path()), None, "a packaged copy");
    }

    #[test]
    fn crate_names_follow_cargo() {
        assert_eq!(
            crate_name(Path::new("a/b/my-model_2")).unwrap(),
            "my-model_2"
        );
        assert!(crate_name(Path::new("2fast")).is_err());
        assert!(crate_name(Path::new("has space")).is_err());
        assert!(crate_name(Path::new("sapsan")).is_err());
        assert!(crate_name(Path::new("/")).is_err());
    }

    #[test]
    fn the_skeleton_asks_for_the_candle_sapsan_is_built_with() {
        let workspace = include_str!("../../../Cargo.toml");
        let line = format!("candle-core = \"{CANDLE_VERSION}\"");
        assert!(workspace.lines().any(|l| l.trim() == line), "{line}");
        assert!(CARGO_TOML.contains("candle-core = \"{{candle}}\""));
    }

    /// The entries of a manifest's `[profile.dev.package]` table (comments left out).
    fn dev_package_profiles(manifest: &str) -> Vec<&str> {
        manifest
            .lines()
            .skip_while(|l| l.trim() != "[profile.dev.package]")
            .skip(1)
            .take_while(|l| !l.trim().is_empty() && !l.starts_with('['))
            .filter(|l| !l.starts_with('#'))
            .collect()
    }

    #[test]
    fn the_skeleton_optimises_dependencies_as_the_workspace_does() {
        // The same profile per dependency: a new project built in this workspace's target
        // directory (as the CLI tests do) shares candle and the rest instead of compiling them
        // again, and users' first builds skip the same work.
        let workspace = dev_package_profiles(include_str!("../../../Cargo.toml"));
        assert!(
            workspace
                .iter()
                .any(|l| l.starts_with("\"*\" = { opt-level = 3")),
            "{workspace:?}"
        );
        assert!(workspace.len() > 20, "{workspace:?}");
        assert_eq!(dev_package_profiles(CARGO_TOML), workspace);
    }

    #[test]
    fn paths_are_toml_strings() {
        assert_eq!(toml_string(r#"C:\a "b""#), r#""C:\\a \"b\"""#);
    }

    #[test]
    fn a_checkout_is_the_sapsan_package() {
        assert!(checkout(Path::new(BUILT_FROM)).is_ok());
        let e = checkout(&Path::new(BUILT_FROM).join("sapsan-core")).unwrap_err();
        assert!(e.contains("not the `sapsan` package"), "{e}");
        assert!(
            checkout(Path::new("/nonexistent/x"))
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
