//! The append-only journal: every run creation, status change and batch of metrics, params and
//! tags is written to local disk (JSON lines, fsync at each append) before it goes to the server.
//!
//! One directory per backend instance (`<root>/<ms>-<pid>-<n>/journal.jsonl`), where the root is
//! `SAPSAN_JOURNAL_DIR` or `./.sapsan-journal` (see [`crate::tracking::Settings::journal_root`]). A backend removes its directory once everything in
//! it has landed on the server; when the server stayed away, the directory stays and the program
//! says so on exit. `sapsan sync <dir>` (see [`crate::tracking::upload`]) uploads it later.
//!
//! Runs are named in the journal by a client-generated *key* (also stored on the run as the tag
//! [`RUN_KEY_TAG`]), so a run is created on a server exactly once: before creating, the uploader
//! looks for a run with that tag.
//!
//! # Line format
//!
//! Each [`Record`] is one line: its CRC-32 (IEEE, as `crc32fast` computes it) over the JSON
//! bytes, as 8 lowercase hex digits, one space, the record as compact JSON, a newline:
//!
//! ```text
//! 5f3b9332 {"t":"status","run":{"key":"k1"},"status":"FINISHED","end_ms":1732600000000}
//! ```
//!
//! Reading ([`read_journal`]) checks every line on its own:
//! - a line whose checksum does not match its bytes, or whose JSON is not a record, is *damaged*:
//!   it is skipped and reported as a [`DamagedRecord`] (file, byte offset, length, and the run
//!   when the bytes still name it), and the lines after it are read as usual. One damaged record
//!   costs that record, not the journal.
//! - a last line with no newline is *not yet written* (the program died while writing it; it was
//!   never acknowledged): reading ends before it, and it is not damage.
//! - a line that starts with `{` was written before lines had checksums (the previous format):
//!   it is read as JSON alone, as it was then. The writer never produces such lines now.
//!
//! A metric point is a [`super::Metric`] in MLflow's form (`{"key","value","timestamp","step"}`,
//! NaN and infinities as strings); the older `[key, value, timestamp, step]` form reads too.
//!
//! The module is split by concern: [`Record`] and the line format (`record.rs`), the [`Journal`]
//! file and [`read_records`] (`file.rs`), the [`SharedJournal`] with its held records and
//! rotation (`shared.rs`), and the writer's [`Origin`] with [`leftovers`] (`origin.rs`).
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::tracking::rest::settings::DEFAULT_JOURNAL_ROOT;

mod file;
mod origin;
mod record;
mod shared;
mod store;

pub use file::{DamagedRecord, Journal, JournalRead, read_journal, read_records};
pub use origin::{Origin, host_name, leftovers};
pub use record::{Record, RunRef};
pub use shared::{DEFAULT_HELD_LIMIT, SharedJournal};
pub use store::{Blob, MemoryStore, Source, Store};

/// Journal run key -> server run id, filled by the uploader as it creates runs (the backend
/// resolves `local-...` ids with it; a compacted journal records the ids).
pub type RunIds = std::sync::Arc<crate::shared::Shared<std::collections::HashMap<String, String>>>;

/// The journal's reader as its writer sees it (the uploader): told of every append, and asked
/// before the file is compacted.
pub trait Reader: std::fmt::Debug + Send + Sync {
    /// The store now ends at offset `len`.
    fn written(&self, len: u64);
    /// When everything up to `len` (the file's current length) was delivered and no request is
    /// in flight, runs `swap` (which puts a compact file in its place and returns its length
    /// `p`) and then treats the compact file as delivered. `Ok(false)` without calling `swap`
    /// when delivery is behind; `swap`'s error (offsets unchanged) when it fails.
    fn restart_if_delivered(
        &self,
        len: u64,
        swap: &mut dyn FnMut() -> crate::error::Result<u64>,
    ) -> crate::error::Result<bool>;
}

/// File name of the journal inside its directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// File beside the journal saying which program on which machine writes it ([`Origin`]).
pub const ORIGIN_FILE: &str = "writer.json";
/// File `sapsan sync` leaves beside a journal it delivered completely: the server and the
/// journal's length then (see `upload::sync_dir`). Such a journal is no leftover.
pub const SYNC_MARK_FILE: &str = "synced.json";
/// Subdirectory of a journal directory holding the bytes of journaled artifacts.
pub const BLOB_DIR: &str = "artifacts";
/// Temporary file a compacted journal is written to before it replaces [`JOURNAL_FILE`].
pub const ROTATE_TMP_FILE: &str = "journal.jsonl.tmp";
/// Size above which a fully delivered journal is compacted by default (64 MiB; see
/// [`SharedJournal::with_rotation`]).
pub const DEFAULT_ROTATE_BYTES: u64 = 64 << 20;
/// Tag holding a run's client-generated key (exactly-once run creation).
pub const RUN_KEY_TAG: &str = "sapsan.runKey";

/// Ids handed out for runs (and logged models) created while the server was away: this prefix and
/// their journal key (created on the server later, by the key).
pub const LOCAL_RUN_PREFIX: &str = "local-";

/// Tag holding a logged model's journal key, so the model is created on a server exactly once.
pub const MODEL_KEY_TAG: &str = "sapsan.modelKey";
/// Removes a journal instance directory (delivered, or never used), and the default root
/// `.sapsan-journal` when that leaves it empty. Problems are reported on stderr, never fatal.
pub fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!(
            target: "sapsan::journal",
            "could not remove the journal {}: {e}",
            dir.display()
        );
        return;
    }
    if let Some(root) = dir.parent()
        && root.file_name() == Some(std::ffi::OsStr::new(DEFAULT_JOURNAL_ROOT))
    {
        // Fails (and is meant to) while other journals are in it.
        let _ = std::fs::remove_dir(root);
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh, hard-to-guess key (run keys, directory names): time, pid, a counter and hashed entropy.
pub fn fresh_key() -> String {
    use std::hash::{BuildHasher, Hasher};
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(t);
    h.write_u64(n);
    h.write_u32(std::process::id());
    format!(
        "{:012x}{:08x}{:016x}",
        t as u64 & 0xffff_ffff_ffff,
        n,
        h.finish()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_root_goes_with_its_last_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join(DEFAULT_JOURNAL_ROOT);
        let a = Journal::create_in(&root).unwrap();
        let b = Journal::create_in(&root).unwrap();
        remove_dir(a.dir());
        assert!(!a.dir().exists());
        assert!(root.is_dir(), "another journal is still in it");
        remove_dir(b.dir());
        assert!(!root.exists(), "an empty default root is removed");
        // A root the user named stays.
        let named = tmp.path().join("mine");
        let c = Journal::create_in(&named).unwrap();
        remove_dir(c.dir());
        assert!(named.is_dir());
    }

    #[test]
    fn keys_are_unique() {
        let a = fresh_key();
        let b = fresh_key();
        assert_ne!(a, b);
        assert!(crate::tracking::validate::tag_value(RUN_KEY_TAG, &a).is_ok());
    }
}
