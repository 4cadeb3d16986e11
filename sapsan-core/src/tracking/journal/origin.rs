//! Which program writes a journal, and journals left by programs that are gone.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{JOURNAL_FILE, ORIGIN_FILE, SYNC_MARK_FILE};

/// Which program writes a journal: read by `sapsan sync` to tell a journal whose program died (its
/// open runs are ended KILLED) from one still being written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Host name of the machine.
    pub host: String,
    /// Process id of the program.
    pub pid: u32,
    /// When the journal was started, ms since the Unix epoch.
    pub started_ms: i64,
}

impl Origin {
    /// This program on this machine, now.
    pub fn here() -> Self {
        Origin {
            host: host_name(),
            pid: std::process::id(),
            started_ms: crate::tracking::now_ms(),
        }
    }

    /// The origin recorded in journal directory `dir`, if any.
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read(dir.join(ORIGIN_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Whether the program is still running: `Some(false)` when it ran on this machine and its
    /// process is gone, `None` when that cannot be told (another machine).
    pub fn alive(&self) -> Option<bool> {
        if self.host != host_name() {
            return None;
        }
        if self.pid == std::process::id() {
            return Some(true);
        }
        let Ok(pid) = libc::pid_t::try_from(self.pid) else {
            return Some(false);
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let rc = unsafe { libc::kill(pid, 0) };
        Some(rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH))
    }
}

/// This machine's host name (empty when it cannot be read).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Journal directories under `root` other than `except` whose program ended on this machine
/// without delivering them, and that `sapsan sync` has not delivered since (oldest first).
pub fn leftovers(root: &Path, except: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p != except && p.join(JOURNAL_FILE).is_file())
        .filter(|p| !p.join(SYNC_MARK_FILE).is_file())
        .filter(|p| Origin::read(p).and_then(|o| o.alive()) == Some(false))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::journal::Journal;

    #[test]
    fn origin_tells_a_dead_writer_from_a_live_one() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::create_in(tmp.path()).unwrap();
        let mine = Origin::read(j.dir()).unwrap();
        assert_eq!(mine.pid, std::process::id());
        assert_eq!(mine.alive(), Some(true));
        // A finished child's pid: gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead = Origin {
            pid: dead_pid,
            ..mine.clone()
        };
        assert_eq!(dead.alive(), Some(false));
        let elsewhere = Origin {
            host: format!("{}-elsewhere", mine.host),
            ..mine.clone()
        };
        assert_eq!(elsewhere.alive(), None);
        // Only the dead writer's journal is a leftover.
        let other = Journal::create_in(tmp.path()).unwrap();
        std::fs::write(
            other.dir().join(ORIGIN_FILE),
            serde_json::to_vec(&dead).unwrap(),
        )
        .unwrap();
        let third = Journal::create_in(tmp.path()).unwrap();
        assert_eq!(
            leftovers(tmp.path(), third.dir()),
            vec![other.dir().to_owned()]
        );
        // Once `sapsan sync` has delivered it, it is none.
        std::fs::write(other.dir().join(SYNC_MARK_FILE), b"{}").unwrap();
        assert!(leftovers(tmp.path(), third.dir()).is_empty());
    }
}
