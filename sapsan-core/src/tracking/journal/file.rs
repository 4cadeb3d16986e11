//! The append-only journal file: appending whole lines, compacting, reading records back.
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::{COUNTER, JOURNAL_FILE, ORIGIN_FILE, Origin, ROTATE_TMP_FILE, Record};
use crate::error::{Error, Result};

/// The append-only journal file of one backend instance.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// The open file (tests swap it for a read-only one to play a full disk).
    pub(super) file: File,
    /// Bytes written so far (the file's length).
    len: u64,
}

impl Journal {
    /// Creates a new instance directory under `root`, records this program as its [`Origin`],
    /// and opens its journal.
    pub fn create_in(root: &Path) -> Result<Self> {
        let name = format!(
            "{}-{}-{}",
            crate::tracking::now_ms(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = root.join(name);
        let j = Self::open(&dir)?;
        let origin = dir.join(ORIGIN_FILE);
        let bytes = serde_json::to_vec(&Origin::here()).unwrap_or_default();
        if let Err(e) = std::fs::write(&origin, bytes) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::io("writing the journal's origin", origin, e));
        }
        Ok(j)
    }

    /// Opens (creating if needed) the journal in `dir`, appending after what is there.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::io(
                "creating the journal directory (set SAPSAN_JOURNAL_DIR to a writable place, \
                 or SAPSAN_JOURNAL=0 to log without a journal)",
                dir,
                e,
            )
        })?;
        let path = dir.join(JOURNAL_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("opening the journal", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("reading the journal's size", &path, e))?
            .len();
        Ok(Journal {
            dir: dir.to_owned(),
            file,
            len,
        })
    }

    /// The instance directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn encode(&self, records: &[Record]) -> Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(256 * records.len());
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(|e| Error::Io {
                action: "encoding a journal record",
                path: self.dir.join(JOURNAL_FILE),
                source: std::io::Error::other(e),
            })?;
            buf.push(b'\n');
        }
        Ok(buf)
    }

    /// Appends `records` (one line each) and syncs them to disk; returns the new length. On a
    /// failed write the file is cut back to its previous length, so no half line stays.
    pub fn append(&mut self, records: &[Record]) -> Result<u64> {
        let buf = self.encode(records)?;
        let path = self.dir.join(JOURNAL_FILE);
        let res = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = res {
            let _ = self.file.set_len(self.len);
            return Err(Error::io("writing the journal", path, e));
        }
        self.len += buf.len() as u64;
        Ok(self.len)
    }

    /// Replaces the whole file by one holding just `records`, atomically: they are written to a
    /// temporary file in the same directory and synced, the temporary file is renamed over the
    /// journal and the directory synced; appends then go to the new file. Returns the new length.
    /// On an error before the rename the journal is left as it was. (A failed sync of the
    /// directory after the rename is not reported: the rename is done and cannot be undone.)
    pub fn replace(&mut self, records: &[Record]) -> Result<u64> {
        let buf = self.encode(records)?;
        let tmp = self.dir.join(ROTATE_TMP_FILE);
        let path = self.dir.join(JOURNAL_FILE);
        let write = || -> std::io::Result<File> {
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(f)
        };
        let file = write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io("compacting the journal", &path, e)
        })?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.file = file;
        self.len = buf.len() as u64;
        Ok(self.len)
    }
}

/// Reads the records of the journal in `dir` from byte `from` up to byte `upto` (`None`: the end).
/// Returns each record with the offset just after it. A torn last line (the program died while
/// writing it) ends the reading; it was never acknowledged to anyone.
pub fn read_records(dir: &Path, from: u64, upto: Option<u64>) -> Result<Vec<(Record, u64)>> {
    let path = dir.join(JOURNAL_FILE);
    let mut f = File::open(&path).map_err(|e| Error::io("opening the journal", &path, e))?;
    f.seek(SeekFrom::Start(from))
        .map_err(|e| Error::io("reading the journal", &path, e))?;
    let mut r = BufReader::new(f);
    let mut out = Vec::new();
    let mut off = from;
    let mut line = Vec::new();
    loop {
        if upto.is_some_and(|u| off >= u) {
            break;
        }
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io("reading the journal", &path, e))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let rec: Record = match serde_json::from_slice(&line) {
            Ok(rec) => rec,
            Err(e) => {
                return Err(Error::Io {
                    action: "parsing the journal (corrupt line)",
                    path: path.clone(),
                    source: std::io::Error::other(format!("at byte {off}: {e}")),
                });
            }
        };
        off += n as u64;
        out.push((rec, off));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::Metric;
    use crate::tracking::journal::RunRef;

    fn metric(key: &str, value: f64, timestamp_ms: i64, step: i64) -> Metric {
        Metric {
            key: key.into(),
            value,
            timestamp_ms,
            step,
        }
    }

    #[test]
    fn records_round_trip_and_torn_tail_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let mut j = Journal::create_in(tmp.path()).unwrap();
        let recs = vec![
            Record::Create {
                key: "k1".into(),
                experiment: "e".into(),
                name: "train".into(),
                parent: None,
                start_ms: 5,
                tags: vec![("a".into(), "b".into())],
                id: None,
            },
            Record::Batch {
                run: RunRef::Key("k1".into()),
                metrics: vec![
                    metric("m", f64::NAN, 1, 0),
                    metric("m", f64::NEG_INFINITY, 1, 1),
                    metric("m", 0.25, 1, 2),
                ],
                params: vec![("p".into(), "1".into())],
                tags: vec![],
            },
            Record::Status {
                run: RunRef::Id("abc".into()),
                status: crate::tracking::RunStatus::Finished,
                end_ms: Some(9),
            },
        ];
        let end = j.append(&recs).unwrap();
        assert_eq!(end, j.len());
        // A torn line at the end, as after a crash mid-write.
        let path = j.dir().join(JOURNAL_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"t":"status","run":{"id":"x"},"sta"#)
            .unwrap();
        let back = read_records(j.dir(), 0, None).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2].1, end);
        assert_eq!(back[0].0, recs[0]);
        assert_eq!(back[2].0, recs[2]);
        match &back[1].0 {
            Record::Batch { metrics, .. } => {
                assert!(metrics[0].value.is_nan());
                assert_eq!(metrics[1].value, f64::NEG_INFINITY);
                assert_eq!(metrics[2], metric("m", 0.25, 1, 2));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(back[1].0.items(), 4);
        // Reading from the middle gives the rest.
        let rest = read_records(j.dir(), back[0].1, Some(back[1].1)).unwrap();
        assert_eq!(rest.len(), 1);
    }

    #[test]
    fn unwritable_directory_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let e = Journal::create_in(&file).unwrap_err();
        assert!(e.to_string().contains("SAPSAN_JOURNAL_DIR"), "{e}");
    }
}
