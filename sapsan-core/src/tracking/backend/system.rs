//! The system tags the Python client sets on every run (user, source, git commit).
/// The system tags the Python client sets, computed once per backend.
pub(crate) fn system_tags() -> Vec<(String, String)> {
    let mut tags = vec![
        ("mlflow.user".to_owned(), user_name()),
        ("mlflow.source.type".to_owned(), "LOCAL".to_owned()),
    ];
    let source = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .or_else(|| std::env::args().next())
        .unwrap_or_default();
    if !source.is_empty() {
        tags.push(("mlflow.source.name".to_owned(), source));
    }
    if let Some(commit) = git_commit() {
        tags.push(("mlflow.source.git.commit".to_owned(), commit));
    }
    tags
}

fn user_name() -> String {
    for var in ["LOGNAME", "USER", "LNAME", "USERNAME"] {
        if let Ok(u) = std::env::var(var)
            && !u.is_empty()
        {
            return u;
        }
    }
    std::process::Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The commit checked out in the current directory's git repository, if any.
fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && s.len() >= 40 && s.chars().all(|c| c.is_ascii_hexdigit())).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn system_tags_are_complete() {
        let t: BTreeMap<_, _> = system_tags().into_iter().collect();
        assert_eq!(t["mlflow.source.type"], "LOCAL");
        assert!(!t["mlflow.user"].is_empty());
        assert!(!t["mlflow.source.name"].is_empty());
        // The tests run inside the project's git checkout.
        assert_eq!(t["mlflow.source.git.commit"].len(), 40);
    }
}
