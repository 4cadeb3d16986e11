//! The append-only journal file: appending whole lines, compacting, reading records back.
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::record::{decode_line, encode_line, run_of_damaged};
use super::{COUNTER, JOURNAL_FILE, ORIGIN_FILE, Origin, ROTATE_TMP_FILE, Record, RunRef};
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

    /// Appends `records` (one line each) and syncs them to disk; returns the new length. On a
    /// failed write the file is cut back to its previous length, so no half line stays.
    pub fn append(&mut self, records: &[Record]) -> Result<u64> {
        let buf = encode(records, &self.dir)?;
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
        let buf = encode(records, &self.dir)?;
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

/// A journal line that could not be read back (its checksum or its JSON is bad): it is skipped,
/// the lines around it are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRecord {
    /// The journal file.
    pub path: PathBuf,
    /// Byte offset of the line in the file.
    pub offset: u64,
    /// Length of the line in bytes, its newline included.
    pub len: u64,
    /// The run the record belonged to, when that can still be read from the line's bytes.
    pub run: Option<RunRef>,
    /// What is wrong with the line.
    pub reason: String,
}

impl DamagedRecord {
    /// Where in the file, which run, and what is wrong: `at byte 120 (57 bytes), run key K
    /// (tag sapsan.runKey=K): checksum mismatch ...` (the [`Display`](std::fmt::Display) form
    /// without the path).
    pub fn place_and_reason(&self) -> String {
        let run = match &self.run {
            Some(RunRef::Key(k)) => format!("run key {k} (tag {}={k})", super::RUN_KEY_TAG),
            Some(RunRef::Id(id)) => format!("run {id}"),
            None => "unknown run".to_owned(),
        };
        format!(
            "at byte {} ({} bytes), {run}: {}",
            self.offset, self.len, self.reason
        )
    }
}

impl std::fmt::Display for DamagedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.path.display(), self.place_and_reason())
    }
}

/// What [`read_journal`] read.
#[derive(Debug, Default)]
pub struct JournalRead {
    /// The intact records, each with the offset just after it.
    pub records: Vec<(Record, u64)>,
    /// The damaged lines, skipped.
    pub damaged: Vec<DamagedRecord>,
    /// Offset just after the last whole line read (a torn last line is not counted).
    pub end: u64,
}

/// Reads the journal in `dir` from byte `from` up to byte `upto` (`None`: the end): each intact
/// record with the offset just after it, and each damaged line (bad checksum or JSON; skipped,
/// reading goes on after it). A torn last line, with no newline (the program died while writing
/// it, it was never acknowledged to anyone), is not yet written: reading ends before it and it is
/// not reported. Fails only when the file cannot be opened or read.
pub fn read_journal(dir: &Path, from: u64, upto: Option<u64>) -> Result<JournalRead> {
    let path = dir.join(JOURNAL_FILE);
    let mut f = File::open(&path).map_err(|e| Error::io("opening the journal", &path, e))?;
    f.seek(SeekFrom::Start(from))
        .map_err(|e| Error::io("reading the journal", &path, e))?;
    read_lines(BufReader::new(f), from, upto, &path)
}

/// [`read_journal`] over any reader positioned at journal offset `from` (`path` names the
/// journal in reports: a file, or the memory store).
pub(super) fn read_lines(
    mut r: impl BufRead,
    from: u64,
    upto: Option<u64>,
    path: &Path,
) -> Result<JournalRead> {
    let mut out = JournalRead::default();
    let mut off = from;
    let mut line = Vec::new();
    loop {
        if upto.is_some_and(|u| off >= u) {
            break;
        }
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io("reading the journal", path, e))? as u64;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let body = &line[..line.len() - 1];
        match decode_line(body) {
            Ok(rec) => out.records.push((rec, off + n)),
            Err(reason) => out.damaged.push(DamagedRecord {
                path: path.to_owned(),
                offset: off,
                len: n,
                run: run_of_damaged(body),
                reason,
            }),
        }
        off += n;
    }
    out.end = off;
    Ok(out)
}

/// Encodes `records` as journal lines (`dir` names the journal in an error).
pub(super) fn encode(records: &[Record], dir: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(256 * records.len());
    for r in records {
        encode_line(r, &mut buf).map_err(|e| Error::Internal {
            what: format!("encoding a journal record for {}", dir.display()),
            reason: e.to_string(),
        })?;
    }
    Ok(buf)
}

/// The intact records of [`read_journal`] (damaged lines are skipped without a word: use
/// [`read_journal`] where they must be reported).
pub fn read_records(dir: &Path, from: u64, upto: Option<u64>) -> Result<Vec<(Record, u64)>> {
    read_journal(dir, from, upto).map(|r| r.records)
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
            model_id: None,
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

    #[test]
    fn a_damaged_line_costs_that_record_only() {
        let tmp = tempfile::tempdir().unwrap();
        let mut j = Journal::create_in(tmp.path()).unwrap();
        let batch = |run: &str, step: i64| Record::Batch {
            run: RunRef::Key(run.into()),
            metrics: vec![metric("loss", 0.5, 7, step)],
            params: vec![],
            tags: vec![],
        };
        let recs: Vec<Record> = (0..4).map(|i| batch("k1", i)).collect();
        j.append(&recs).unwrap();
        let path = j.dir().join(JOURNAL_FILE);
        let intact = read_journal(j.dir(), 0, None).unwrap();
        assert!(intact.damaged.is_empty());
        let ends: Vec<u64> = intact.records.iter().map(|r| r.1).collect();
        // Garble the second line (its newline stays), then add a line of the previous format
        // and a torn last line.
        let mut bytes = std::fs::read(&path).unwrap();
        let second = ends[0] as usize;
        let step = second
            + bytes[second..]
                .windows(7)
                .position(|w| w == b"\"step\":")
                .unwrap();
        bytes[step + 7] = b'9';
        bytes.extend_from_slice(
            br#"{"t":"status","run":{"key":"k1"},"status":"FINISHED","end_ms":9}"#,
        );
        bytes.push(b'\n');
        let legacy_end = bytes.len() as u64;
        bytes.extend_from_slice(&line_of(&batch("k1", 5))[..20]);
        std::fs::write(&path, &bytes).unwrap();

        let read = read_journal(j.dir(), 0, None).unwrap();
        let steps: Vec<Option<i64>> = read
            .records
            .iter()
            .map(|(r, _)| match r {
                Record::Batch { metrics, .. } => Some(metrics[0].step),
                _ => None,
            })
            .collect();
        assert_eq!(steps, [Some(0), Some(2), Some(3), None]);
        let offsets: Vec<u64> = read.records.iter().map(|r| r.1).collect();
        assert_eq!(offsets, [ends[0], ends[2], ends[3], legacy_end]);
        assert_eq!(read.end, legacy_end, "the torn line is not yet written");
        assert_eq!(read.damaged.len(), 1, "{:?}", read.damaged);
        let d = &read.damaged[0];
        assert_eq!((d.offset, d.len), (ends[0], ends[1] - ends[0]));
        assert_eq!(d.path, path);
        assert_eq!(d.run, Some(RunRef::Key("k1".into())));
        assert!(d.reason.contains("checksum mismatch"), "{}", d.reason);
        let shown = d.to_string();
        assert!(
            shown.contains(&format!("{} at byte {}", path.display(), ends[0]))
                && shown.contains("run key k1"),
            "{shown}"
        );
        // Reading the damaged range alone, as the uploader does.
        let part = read_journal(j.dir(), ends[0], Some(ends[2])).unwrap();
        assert_eq!((part.records.len(), part.damaged.len()), (1, 1));
        assert_eq!(part.end, ends[2]);
        // `read_records` skips the damaged line.
        assert_eq!(read_records(j.dir(), 0, None).unwrap().len(), 4);
        // A line of plain garbage: no run to name.
        std::fs::write(&path, b"\x00\x00\x00\n").unwrap();
        let read = read_journal(j.dir(), 0, None).unwrap();
        assert!(read.records.is_empty());
        assert_eq!(read.damaged[0].run, None);
        assert!(read.damaged[0].to_string().contains("unknown run"));
    }

    fn line_of(rec: &Record) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_line(rec, &mut buf).unwrap();
        buf
    }
}
