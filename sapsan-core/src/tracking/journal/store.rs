//! Where records are kept until the uploader has delivered them: the journal file on disk
//! ([`Journal`]), or memory when the journal is off ([`MemoryStore`]). Both are written through
//! [`Store`] and read back through a [`Source`], by byte offsets into the same JSON-lines
//! encoding, so the uploader and the rest of the pipeline do not know which one they have.
//!
//! The memory store frees what was delivered ([`Source::release`]) and holds at most
//! `limit` bytes of undelivered records; past that its appends fail like a full disk, and the
//! writer's policy for refused records applies (see `SharedJournal`).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::file::{encode, read_lines};
use super::{BLOB_DIR, Journal, JournalRead, Record};
use crate::error::{Error, Result};
use crate::shared::Shared;

/// The bytes of an artifact to keep: in memory, or a file copied without reading it whole.
#[derive(Debug, Clone, Copy)]
pub enum Blob<'a> {
    /// Bytes in memory.
    Bytes(&'a [u8]),
    /// A file on this machine.
    File(&'a Path),
}

impl Blob<'_> {
    /// The bytes (a file is read whole).
    pub fn read(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        match self {
            Blob::Bytes(b) => Ok(std::borrow::Cow::Borrowed(b)),
            Blob::File(p) => std::fs::read(p)
                .map(std::borrow::Cow::Owned)
                .map_err(|e| Error::io("reading artifact", p, e)),
        }
    }
}

/// The records of a journal, in memory.
#[derive(Debug, Default)]
struct Memory {
    /// Offset of the first byte still kept (everything before it was delivered and freed).
    base: u64,
    /// The encoded records from `base` on.
    bytes: Vec<u8>,
    /// Artifact bytes by the name their record gives.
    blobs: HashMap<String, Vec<u8>>,
    /// Bytes of artifacts held.
    blob_bytes: usize,
}

/// The store of a backend whose journal is off: records and artifacts in memory, freed once
/// delivered, at most `limit` bytes undelivered.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    mem: Arc<Shared<Memory>>,
    limit: usize,
}

impl MemoryStore {
    /// An empty store holding at most `limit` bytes of undelivered records and artifacts.
    pub fn new(limit: usize) -> Self {
        MemoryStore {
            mem: Arc::new(Shared::new(Memory::default())),
            limit,
        }
    }

    fn full(&self, more: usize) -> Error {
        Error::io(
            "keeping logged data in memory (the journal is off)",
            "memory",
            std::io::Error::other(format!(
                "{} MiB of undelivered data is the limit (Settings::memory_limit); {more} bytes more \
                 do not fit",
                self.limit >> 20
            )),
        )
    }
}

/// Where records are written: the journal file, or memory.
#[derive(Debug)]
pub enum Store {
    /// The journal file of one backend instance.
    File(Journal),
    /// Memory (the journal is off).
    Memory(MemoryStore),
}

impl From<Journal> for Store {
    fn from(j: Journal) -> Self {
        Store::File(j)
    }
}

impl From<MemoryStore> for Store {
    fn from(m: MemoryStore) -> Self {
        Store::Memory(m)
    }
}

impl Store {
    /// Appends encoded `records` (synced to disk for the file); the offset after them.
    pub fn append(&mut self, records: &[Record]) -> Result<u64> {
        match self {
            Store::File(j) => j.append(records),
            Store::Memory(m) => {
                let buf = encode(records, Path::new("memory"))?;
                let mut g = m.mem.lock();
                if g.bytes.len() + g.blob_bytes + buf.len() > m.limit {
                    return Err(m.full(buf.len()));
                }
                g.bytes.extend_from_slice(&buf);
                Ok(g.base + g.bytes.len() as u64)
            }
        }
    }

    /// The offset after the last record.
    pub fn len(&self) -> u64 {
        match self {
            Store::File(j) => j.len(),
            Store::Memory(m) => {
                let g = m.mem.lock();
                g.base + g.bytes.len() as u64
            }
        }
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The journal directory (`None` in memory).
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Store::File(j) => Some(j.dir()),
            Store::Memory(_) => None,
        }
    }

    /// Keeps the bytes of an artifact under `name` (a file in the journal directory, synced; a
    /// [`Blob::File`] is copied there without being read into memory).
    pub fn put_blob(&self, name: &str, blob: Blob<'_>) -> Result<()> {
        match self {
            Store::File(j) => {
                use std::io::Write;
                let path = j.dir().join(name);
                let mut source = match blob {
                    Blob::File(p) => Some(
                        std::fs::File::open(p).map_err(|e| Error::io("reading artifact", p, e))?,
                    ),
                    Blob::Bytes(_) => None,
                };
                let mut write = || -> std::io::Result<()> {
                    std::fs::create_dir_all(j.dir().join(BLOB_DIR))?;
                    let mut f = std::fs::File::create(&path)?;
                    match (source.as_mut(), blob) {
                        (Some(src), _) => {
                            std::io::copy(src, &mut f)?;
                        }
                        (None, Blob::Bytes(bytes)) => f.write_all(bytes)?,
                        (None, Blob::File(_)) => {}
                    }
                    f.sync_data()
                };
                write().map_err(|e| {
                    let _ = std::fs::remove_file(&path);
                    Error::io("writing an artifact into the journal", path, e)
                })
            }
            Store::Memory(m) => {
                let bytes = blob.read()?;
                let mut g = m.mem.lock();
                if g.bytes.len() + g.blob_bytes + bytes.len() > m.limit {
                    return Err(m.full(bytes.len()));
                }
                g.blob_bytes += bytes.len();
                g.blobs.insert(name.to_owned(), bytes.to_vec());
                Ok(())
            }
        }
    }

    /// The read side of this store.
    pub fn source(&self) -> Source {
        match self {
            Store::File(j) => Source::Dir(j.dir().to_owned()),
            Store::Memory(m) => Source::Memory(m.clone()),
        }
    }
}

/// The read side of a [`Store`]: cheap to clone, shared by the uploader and `sapsan sync`.
#[derive(Debug, Clone)]
pub enum Source {
    /// A journal directory on disk.
    Dir(PathBuf),
    /// A memory store.
    Memory(MemoryStore),
}

impl Source {
    /// The records from offset `from` up to `upto` (`None`: the end), each with the offset just
    /// after it, and the damaged lines (skipped). A torn last line of a file (the program died
    /// while writing it) ends the reading.
    pub fn read_journal(&self, from: u64, upto: Option<u64>) -> Result<JournalRead> {
        match self {
            Source::Dir(dir) => super::read_journal(dir, from, upto),
            Source::Memory(m) => {
                let g = m.mem.lock();
                let start = from.saturating_sub(g.base) as usize;
                let end = upto.map_or(g.bytes.len(), |u| {
                    (u.saturating_sub(g.base) as usize).min(g.bytes.len())
                });
                let slice = g.bytes.get(start..end.max(start)).unwrap_or_default();
                read_lines(slice, g.base + start as u64, None, Path::new("memory"))
            }
        }
    }

    /// The intact records of [`Source::read_journal`].
    pub fn read_records(&self, from: u64, upto: Option<u64>) -> Result<Vec<(Record, u64)>> {
        self.read_journal(from, upto).map(|r| r.records)
    }

    /// The bytes of artifact `name`.
    pub fn read_blob(&self, name: &str) -> Result<Vec<u8>> {
        match self {
            Source::Dir(dir) => {
                let path = dir.join(name);
                std::fs::read(&path)
                    .map_err(|e| Error::io("reading a journaled artifact", &path, e))
            }
            Source::Memory(m) => m.mem.lock().blobs.get(name).cloned().ok_or_else(|| {
                Error::io(
                    "reading an artifact kept in memory",
                    name,
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            }),
        }
    }

    /// Everything before offset `upto` was delivered: a memory store frees it (a file keeps it;
    /// compaction is the file's way, see `SharedJournal::with_rotation`).
    pub fn release(&self, upto: u64) {
        if let Source::Memory(m) = self {
            let mut g = m.mem.lock();
            let n = (upto.saturating_sub(g.base) as usize).min(g.bytes.len());
            // Only whole records: `upto` is always the end of one.
            g.bytes.drain(..n);
            g.base += n as u64;
        }
    }

    /// Artifact `name` was delivered: a memory store frees its bytes.
    pub fn release_blob(&self, name: &str) {
        if let Source::Memory(m) = self {
            let mut g = m.mem.lock();
            if let Some(b) = g.blobs.remove(name) {
                g.blob_bytes -= b.len();
            }
        }
    }

    /// The journal directory (`None` in memory).
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Source::Dir(d) => Some(d),
            Source::Memory(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::journal::RunRef;
    use crate::tracking::{RunStatus, now_ms};

    fn status(run: &str) -> Record {
        Record::Status {
            run: RunRef::Id(run.into()),
            status: RunStatus::Finished,
            end_ms: Some(now_ms()),
        }
    }

    #[test]
    fn memory_store_reads_back_by_offset_and_frees_what_was_delivered() {
        let mut s = Store::from(MemoryStore::new(1 << 20));
        let src = s.source();
        let a = s.append(&[status("a"), status("b")]).unwrap();
        let b = s.append(&[status("c")]).unwrap();
        let all = src.read_records(0, None).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].1, b);
        src.release(all[0].1);
        let rest = src.read_records(all[0].1, Some(b)).unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].1, all[1].1);
        src.release(a);
        assert_eq!(src.read_records(a, None).unwrap().len(), 1);
        assert_eq!(s.len(), b);
        assert!(s.dir().is_none());
    }

    #[test]
    fn memory_store_refuses_past_its_limit_until_delivery_frees_room() {
        let mut s = Store::from(MemoryStore::new(300));
        let src = s.source();
        let mut end = 0;
        let mut refused = false;
        for i in 0..10 {
            match s.append(&[status(&format!("run{i}"))]) {
                Ok(e) => end = e,
                Err(e) => {
                    assert!(e.to_string().contains("memory_limit"), "{e}");
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused);
        src.release(end);
        assert!(s.append(&[status("again")]).is_ok());
        s.put_blob("artifacts/1", Blob::Bytes(b"bytes")).unwrap();
        assert_eq!(src.read_blob("artifacts/1").unwrap(), b"bytes");
        src.release_blob("artifacts/1");
        assert!(src.read_blob("artifacts/1").is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.bin");
        std::fs::write(&file, b"from a file").unwrap();
        s.put_blob("artifacts/2", Blob::File(&file)).unwrap();
        assert_eq!(src.read_blob("artifacts/2").unwrap(), b"from a file");
    }

    #[test]
    fn a_file_blob_is_copied_into_the_journal_directory() {
        let root = tempfile::tempdir().unwrap();
        let s = Store::File(Journal::create_in(root.path()).unwrap());
        let file = root.path().join("weights.bin");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&file, &bytes).unwrap();
        s.put_blob("artifacts/1", Blob::File(&file)).unwrap();
        assert_eq!(s.source().read_blob("artifacts/1").unwrap(), bytes);
        let missing = root.path().join("missing.bin");
        let e = s.put_blob("artifacts/2", Blob::File(&missing)).unwrap_err();
        assert!(e.to_string().contains("missing.bin"), "{e}");
    }
}
