//! The agent's bounded on-disk spool of result batches, and the size parser
//! used to configure its bound.
//!
//! Results are written here before they are sent and deleted only when the
//! coordinator acknowledges their batch, so a dropped connection or a crashed
//! agent never loses a result: after a reconnect (or a restart) every batch
//! still in the spool is replayed. The coordinator stores each result id once,
//! so a replayed batch that had in fact been received is harmless.
//!
//! Each batch is one file, `<seq:020>.batch`, holding a protobuf-encoded
//! [`ResultBatch`]. The zero padding makes the directory listing sort in seq
//! order, which helps whoever inspects a spool by hand.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use prost::Message;
use vantage_proto::pb::{ProbeResult, ResultBatch};
use vantage_support::fs::{create_private_dir, PrivateFileError};

const BATCH_EXT: &str = "batch";
const TMP_EXT: &str = "tmp";
const CORRUPT_DIR: &str = "corrupt";
/// Width of the zero-padded seq in file names: enough for any `u64`.
const SEQ_WIDTH: usize = 20;

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file-system operation on `path` failed.
    #[error("spool I/O error on {path}: {source}")]
    Io {
        /// The file or directory being operated on.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A batch file could not be decoded; it has been moved out of the way
    /// (to `path`, unless that move failed too) and dropped from the spool.
    #[error("spooled batch {seq} is corrupt ({reason}); quarantined at {path}")]
    Corrupt {
        /// The seq the file was stored under.
        seq: u64,
        /// Where the file now is.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// No batch with this seq is in the spool.
    #[error("no batch with seq {seq} in the spool")]
    NotFound {
        /// The seq asked for.
        seq: u64,
    },
    /// Every `u64` seq has been used; the spool cannot number another batch.
    #[error("spool sequence numbers exhausted")]
    SeqExhausted,
}

/// Index of what is on disk. Only this is behind the lock: file I/O happens
/// outside it, so a slow disk write in one task never blocks another task
/// that merely wants to know how full the spool is.
#[derive(Debug)]
struct Inner {
    /// seq -> size in bytes of its file.
    index: BTreeMap<u64, u64>,
    total_bytes: u64,
    /// `None` once `u64::MAX` has been handed out.
    next_seq: Option<u64>,
}

/// A bounded, crash-safe, on-disk queue of result batches keyed by seq.
///
/// `Spool` is `Send + Sync`; share it in an `Arc` between the task that
/// produces results and the task that sends them.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`.
    ///
    /// Every existing `<seq>.batch` file becomes a pending batch; leftover
    /// `*.tmp` files, which are writes a crash interrupted before they were
    /// complete, are deleted. New batches are numbered after the highest
    /// existing seq, starting at 1 for an empty spool.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        // Results can reveal what the agent was asked to probe, so the spool
        // is readable by the agent's user only.
        create_private_dir(dir)?;
        let mut index = BTreeMap::new();
        let mut total_bytes: u64 = 0;
        let entries = fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(dir, e))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(&format!(".{TMP_EXT}")) {
                match fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::debug!(path = %path.display(), "removed interrupted spool write")
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&path, e)),
                }
                continue;
            }
            let Some(seq) = parse_batch_name(name) else {
                continue;
            };
            let meta = entry.metadata().map_err(|e| io_err(&path, e))?;
            if !meta.is_file() {
                continue;
            }
            total_bytes = total_bytes.saturating_add(meta.len());
            index.insert(seq, meta.len());
        }
        let next_seq = match index.last_key_value() {
            Some((&max, _)) => max.checked_add(1),
            None => Some(1),
        };
        tracing::debug!(
            dir = %dir.display(),
            batches = index.len(),
            bytes = total_bytes,
            "opened spool"
        );
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            inner: Mutex::new(Inner {
                index,
                total_bytes,
                next_seq,
            }),
        })
    }

    /// Durably stores a batch of results and returns its seq.
    ///
    /// This always writes, even when the spool is over its bound: results
    /// that have already been produced are never dropped. Callers keep the
    /// spool bounded by not starting new work while [`Spool::is_full`].
    pub fn append(
        &self,
        results: Vec<ProbeResult>,
        finished_plan_id: Option<String>,
    ) -> Result<u64, SpoolError> {
        let seq = {
            let mut inner = self.lock();
            let seq = inner.next_seq.ok_or(SpoolError::SeqExhausted)?;
            inner.next_seq = seq.checked_add(1);
            seq
        };
        let batch = ResultBatch {
            seq,
            results,
            finished_plan_id: finished_plan_id.unwrap_or_default(),
        };
        let bytes = batch.encode_to_vec();
        let tmp = self.file_path(seq, TMP_EXT);
        let dest = self.file_path(seq, BATCH_EXT);
        // Write-then-rename makes the batch appear all at once: a crash
        // leaves either nothing or a `.tmp` that the next open deletes, never
        // a truncated `.batch`.
        if let Err(e) = write_synced(&tmp, &bytes) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&dest, e));
        }
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        {
            let mut inner = self.lock();
            inner.index.insert(seq, len);
            inner.total_bytes = inner.total_bytes.saturating_add(len);
        }
        // The data is already on disk; syncing the directory makes the
        // rename itself survive a power loss. Some file systems refuse to
        // sync a directory, and failing the append would only make the caller
        // believe results were lost that are in fact stored, so a failure
        // here is logged rather than returned.
        if let Err(e) = sync_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not sync spool directory");
        }
        Ok(seq)
    }

    /// Reads the batch stored under `seq`.
    ///
    /// A file that cannot be decoded is moved to `<dir>/corrupt/`, dropped
    /// from the spool, and reported as [`SpoolError::Corrupt`], so one bad
    /// file never blocks the replay of everything behind it.
    pub fn read(&self, seq: u64) -> Result<ResultBatch, SpoolError> {
        if !self.lock().index.contains_key(&seq) {
            return Err(SpoolError::NotFound { seq });
        }
        let path = self.file_path(seq, BATCH_EXT);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            // Removed by a concurrent `remove` after the index check.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound { seq })
            }
            Err(e) => return Err(io_err(&path, e)),
        };
        let reason = match ResultBatch::decode(bytes.as_slice()) {
            Ok(batch) if batch.seq == seq => return Ok(batch),
            Ok(batch) => format!("file holds seq {}", batch.seq),
            Err(e) => e.to_string(),
        };
        Err(self.quarantine(seq, &path, reason))
    }

    /// Deletes the batch stored under `seq`, typically once the coordinator
    /// has acknowledged it. Returns `false` if there was no such batch, so a
    /// repeated Ack is harmless.
    pub fn remove(&self, seq: u64) -> Result<bool, SpoolError> {
        if !self.lock().index.contains_key(&seq) {
            return Ok(false);
        }
        let path = self.file_path(seq, BATCH_EXT);
        // The file goes first: if deleting it fails, the index still lists
        // it, which matches what the next open would find.
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, e)),
        }
        Ok(self.forget(seq))
    }

    /// The seqs of all stored batches, ascending: the order to replay them.
    pub fn pending(&self) -> Vec<u64> {
        self.lock().index.keys().copied().collect()
    }

    /// Total size in bytes of all stored batch files.
    pub fn bytes(&self) -> u64 {
        self.lock().total_bytes
    }

    /// Number of stored batches.
    pub fn len(&self) -> usize {
        self.lock().index.len()
    }

    /// Whether no batches are stored.
    pub fn is_empty(&self) -> bool {
        self.lock().index.is_empty()
    }

    /// The configured bound in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Whether the spool has reached its bound; while it has, no new probe
    /// work should be admitted.
    pub fn is_full(&self) -> bool {
        self.bytes() >= self.max_bytes
    }

    /// Whether the spool can take a new batch now, and how much room its
    /// file system has left. The test is a real write: a small file is
    /// written, synced and removed in the spool directory (a read-only
    /// directory or mount, a full disk or a quota all fail it), so a plan is
    /// never accepted whose results could not be kept. Blocking: call it off
    /// the async runtime.
    pub fn health(&self) -> SpoolHealth {
        let probe = self.dir.join(format!("write-probe.{TMP_EXT}"));
        let written = write_synced(&probe, b"vantage spool write probe");
        let _ = fs::remove_file(&probe);
        SpoolHealth {
            error: written.err().map(|e| e.to_string()),
            bytes_free: bytes_free(&self.dir),
        }
    }

    /// The index is updated by single inserts and removes that cannot leave
    /// it half-changed, so it is still consistent after a panic elsewhere
    /// while the lock was held and poisoning can be ignored.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn file_path(&self, seq: u64, ext: &str) -> PathBuf {
        self.dir.join(format!("{seq:0SEQ_WIDTH$}.{ext}"))
    }

    /// Drops `seq` from the index; returns whether it was there.
    fn forget(&self, seq: u64) -> bool {
        let mut inner = self.lock();
        match inner.index.remove(&seq) {
            Some(len) => {
                inner.total_bytes = inner.total_bytes.saturating_sub(len);
                true
            }
            None => false,
        }
    }

    /// Moves a bad batch file aside (kept rather than deleted so it can be
    /// examined) and drops it from the index.
    fn quarantine(&self, seq: u64, path: &Path, reason: String) -> SpoolError {
        let corrupt_dir = self.dir.join(CORRUPT_DIR);
        let dest = corrupt_dir.join(format!("{seq:0SEQ_WIDTH$}.{BATCH_EXT}"));
        let moved = create_private_dir(&corrupt_dir)
            .map_err(SpoolError::from)
            .and_then(|()| fs::rename(path, &dest).map_err(|e| io_err(&dest, e)));
        let final_path = match moved {
            Ok(()) => dest,
            Err(e) => {
                tracing::warn!(seq, error = %e, "could not quarantine corrupt spool batch");
                path.to_path_buf()
            }
        };
        self.forget(seq);
        tracing::warn!(seq, path = %final_path.display(), %reason, "quarantined corrupt spool batch");
        SpoolError::Corrupt {
            seq,
            path: final_path,
            reason,
        }
    }
}

/// What [`Spool::health`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolHealth {
    /// Why a test write failed (`None`: the spool is writable).
    pub error: Option<String>,
    /// Bytes the agent's user may still write on the spool's file system
    /// (`None` where the platform cannot say).
    pub bytes_free: Option<u64>,
}

impl SpoolHealth {
    /// Whether the test write worked.
    pub fn writable(&self) -> bool {
        self.error.is_none()
    }
}

/// statvfs's free blocks for unprivileged users × fragment size.
#[cfg(unix)]
fn bytes_free(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(not(unix))]
fn bytes_free(_dir: &Path) -> Option<u64> {
    None
}

fn io_err(path: &Path, source: io::Error) -> SpoolError {
    SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl From<PrivateFileError> for SpoolError {
    fn from(e: PrivateFileError) -> Self {
        io_err(&e.path, e.source)
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| io_err(path, e))?;
    file.write_all(bytes).map_err(|e| io_err(path, e))?;
    file.sync_data().map_err(|e| io_err(path, e))
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// `<20 digits>.batch` -> seq. Anything else in the directory is not ours.
fn parse_batch_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(BATCH_EXT)?.strip_suffix('.')?;
    if stem.len() != SEQ_WIDTH || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// The string was empty or only whitespace.
    #[error("empty size")]
    Empty,
    /// The string does not start with a whole number.
    #[error("invalid size {input:?}: expected a whole number, optionally followed by a unit such as KiB, MB or GiB")]
    InvalidNumber {
        /// The rejected string.
        input: String,
    },
    /// The unit after the number is not one we know.
    #[error("invalid size {input:?}: unknown unit {unit:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)")]
    UnknownUnit {
        /// The rejected string.
        input: String,
        /// The unit as written.
        unit: String,
    },
    /// The size does not fit in 64 bits.
    #[error("invalid size {input:?}: too large")]
    Overflow {
        /// The rejected string.
        input: String,
    },
}

/// Parses a byte size such as `4096`, `512KiB`, `10MB` or `1GiB`.
///
/// Units are case-insensitive and the trailing `B` is optional; `K`, `M`,
/// `G`, `T` are powers of 1000 and `Ki`, `Mi`, `Gi`, `Ti` powers of 1024.
/// Only whole numbers are accepted.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let input = s.trim();
    if input.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = input
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(input.len());
    let (digits, unit) = input.split_at(split);
    if digits.is_empty() {
        return Err(SizeError::InvalidNumber {
            input: input.to_owned(),
        });
    }
    // Only digits remain, so the one way this parse can fail is overflow.
    let number: u64 = digits.parse().map_err(|_| SizeError::Overflow {
        input: input.to_owned(),
    })?;
    let unit = unit.trim_start();
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ if unit.starts_with('.') => {
            return Err(SizeError::InvalidNumber {
                input: input.to_owned(),
            })
        }
        _ => {
            return Err(SizeError::UnknownUnit {
                input: input.to_owned(),
                unit: unit.to_owned(),
            })
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| SizeError::Overflow {
            input: input.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn result(id: &str) -> ProbeResult {
        ProbeResult {
            result_id: id.into(),
            plan_id: "plan-1".into(),
            url: "https://example.com/".into(),
            ..Default::default()
        }
    }

    fn batch_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".batch"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn spool_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Spool>();
    }

    #[test]
    fn health_reports_a_writable_spool_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let health = spool.health();
        assert!(health.writable(), "{health:?}");
        assert!(health.bytes_free.is_some_and(|free| free > 0), "{health:?}");
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "the write probe stayed: {left:?}");
    }

    #[test]
    fn health_reports_a_spool_that_cannot_be_written() {
        // Works for root too (a read-only mode does not stop root): the spool
        // directory is replaced by a plain file, so nothing can be created in it.
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let spool = Spool::open(&spool_dir, 1 << 20).unwrap();
        fs::remove_dir(&spool_dir).unwrap();
        fs::write(&spool_dir, b"not a directory").unwrap();
        let health = spool.health();
        assert!(!health.writable());
        let error = health.error.unwrap();
        assert!(error.contains("write-probe"), "{error}");
        assert!(spool.append(vec![result("a")], None).is_err());
    }

    #[test]
    fn append_read_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(spool.is_empty());

        let seq = spool
            .append(vec![result("a"), result("b")], Some("plan-1".into()))
            .unwrap();
        assert_eq!(seq, 1);
        assert_eq!(spool.len(), 1);
        assert!(spool.bytes() > 0);
        assert_eq!(batch_files(dir.path()), vec!["00000000000000000001.batch"]);

        let batch = spool.read(seq).unwrap();
        assert_eq!(batch.seq, seq);
        assert_eq!(batch.results, vec![result("a"), result("b")]);
        assert_eq!(batch.finished_plan_id, "plan-1");

        let plain = spool.append(vec![result("c")], None).unwrap();
        assert_eq!(spool.read(plain).unwrap().finished_plan_id, "");

        assert!(spool.remove(seq).unwrap());
        assert!(matches!(
            spool.read(seq),
            Err(SpoolError::NotFound { seq: 1 })
        ));
        assert_eq!(spool.pending(), vec![plain]);
        assert!(spool.remove(plain).unwrap());
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
        assert!(batch_files(dir.path()).is_empty());
    }

    #[test]
    fn empty_batch_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let seq = spool.append(Vec::new(), Some("p".into())).unwrap();
        let batch = spool.read(seq).unwrap();
        assert!(batch.results.is_empty());
        assert_eq!(batch.finished_plan_id, "p");
    }

    #[test]
    fn seqs_strictly_increase_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = 0;
        {
            let spool = Spool::open(dir.path(), 1 << 20).unwrap();
            for i in 0..5 {
                let seq = spool.append(vec![result(&i.to_string())], None).unwrap();
                assert!(seq > last);
                last = seq;
            }
            // Acked batches leave gaps; numbering continues above the newest.
            spool.remove(1).unwrap();
        }
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let seq = spool.append(vec![result("after")], None).unwrap();
        assert!(seq > last, "{seq} should be above {last}");
    }

    #[test]
    fn reopen_recovers_every_pending_batch_and_byte_count() {
        let dir = tempfile::tempdir().unwrap();
        let (pending, bytes) = {
            let spool = Spool::open(dir.path(), 1 << 20).unwrap();
            for i in 0..4 {
                spool
                    .append(vec![result(&format!("r{i}")); i + 1], None)
                    .unwrap();
            }
            spool.remove(2).unwrap();
            (spool.pending(), spool.bytes())
        };
        assert_eq!(pending, vec![1, 3, 4]);

        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.pending(), pending);
        assert_eq!(spool.bytes(), bytes);
        assert_eq!(spool.len(), 3);
        for seq in pending {
            let batch = spool.read(seq).unwrap();
            assert_eq!(batch.seq, seq);
            assert_eq!(batch.results.len(), usize::try_from(seq).unwrap());
        }
    }

    #[test]
    fn stray_tmp_file_is_cleaned_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("00000000000000000007.tmp");
        fs::write(&tmp, b"half a batch").unwrap();
        let unrelated = dir.path().join("README");
        fs::write(&unrelated, b"not ours").unwrap();

        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(!tmp.exists());
        assert!(unrelated.exists(), "files that are not ours are left alone");
        assert!(spool.is_empty());
        // The interrupted write never became a batch, so its seq is free.
        assert_eq!(spool.append(vec![result("a")], None).unwrap(), 1);
    }

    #[test]
    fn corrupt_batch_is_quarantined_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1 << 20).unwrap();
            spool.append(vec![result("good-1")], None).unwrap();
            spool.append(vec![result("bad")], None).unwrap();
            spool.append(vec![result("good-3")], None).unwrap();
        }
        let bad = dir.path().join("00000000000000000002.batch");
        fs::write(&bad, [0xff, 0xff, 0xff, 0xff]).unwrap();

        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.pending(), vec![1, 2, 3]);
        let before = spool.bytes();
        match spool.read(2) {
            Err(SpoolError::Corrupt { seq, path, .. }) => {
                assert_eq!(seq, 2);
                assert_eq!(path, dir.path().join("corrupt/00000000000000000002.batch"));
                assert!(path.exists());
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(!bad.exists());
        assert_eq!(spool.pending(), vec![1, 3]);
        assert_eq!(spool.bytes(), before - 4);
        assert_eq!(spool.read(1).unwrap().results[0].result_id, "good-1");
        assert_eq!(spool.read(3).unwrap().results[0].result_id, "good-3");

        // The quarantine directory is not mistaken for batches on reopen.
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.pending(), vec![1, 3]);
    }

    #[test]
    fn batch_holding_another_seq_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1 << 20).unwrap();
            spool.append(vec![result("a")], None).unwrap();
        }
        fs::rename(
            dir.path().join("00000000000000000001.batch"),
            dir.path().join("00000000000000000005.batch"),
        )
        .unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(matches!(
            spool.read(5),
            Err(SpoolError::Corrupt { seq: 5, .. })
        ));
        assert!(spool.is_empty());
    }

    #[test]
    fn full_spool_still_accepts_appends() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 64).unwrap();
        assert_eq!(spool.max_bytes(), 64);
        assert!(!spool.is_full());
        let mut seqs = Vec::new();
        while !spool.is_full() {
            seqs.push(spool.append(vec![result("x")], None).unwrap());
        }
        assert!(spool.bytes() >= 64);
        let extra = spool.append(vec![result("over the bound")], None).unwrap();
        assert!(spool.is_full());
        assert_eq!(
            spool.read(extra).unwrap().results[0].result_id,
            "over the bound"
        );
        seqs.push(extra);
        assert_eq!(spool.pending(), seqs);

        for seq in seqs {
            spool.remove(seq).unwrap();
        }
        assert!(!spool.is_full());
    }

    #[test]
    fn full_exactly_at_bound() {
        let dir = tempfile::tempdir().unwrap();
        let probe = Spool::open(&dir.path().join("probe"), 0).unwrap();
        assert!(probe.is_full(), "a zero bound is always full");
        probe.append(vec![result("x")], None).unwrap();
        let size = probe.bytes();

        let spool = Spool::open(&dir.path().join("exact"), size).unwrap();
        spool.append(vec![result("x")], None).unwrap();
        assert_eq!(spool.bytes(), size);
        assert!(spool.is_full());
    }

    #[test]
    fn remove_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let seq = spool.append(vec![result("a")], None).unwrap();
        assert!(spool.remove(seq).unwrap());
        assert!(!spool.remove(seq).unwrap());
        assert!(!spool.remove(999).unwrap());
        assert_eq!(spool.bytes(), 0);
    }

    #[test]
    fn open_creates_nested_private_dir() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/spool");
        let spool = Spool::open(&nested, 1024).unwrap();
        assert!(nested.is_dir());
        assert!(spool.is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&nested).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "mode {mode:o} is open to others");
        }
    }

    #[test]
    fn open_on_a_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(
            Spool::open(&file, 1024),
            Err(SpoolError::Io { .. })
        ));
    }

    #[test]
    fn exhausted_seqs_are_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(format!("{:020}.batch", u64::MAX)),
            ResultBatch {
                seq: u64::MAX,
                ..Default::default()
            }
            .encode_to_vec(),
        )
        .unwrap();
        let spool = Spool::open(dir.path(), 1024).unwrap();
        assert_eq!(spool.pending(), vec![u64::MAX]);
        assert!(matches!(
            spool.append(vec![result("a")], None),
            Err(SpoolError::SeqExhausted)
        ));
    }

    #[test]
    fn concurrent_appends_get_distinct_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), 1 << 20).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let spool = Arc::clone(&spool);
                std::thread::spawn(move || {
                    (0..10)
                        .map(|i| {
                            spool
                                .append(vec![result(&format!("{t}-{i}"))], None)
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seqs: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
        assert_eq!(spool.pending(), seqs);
    }

    #[test]
    fn parse_batch_name_is_strict() {
        assert_eq!(parse_batch_name("00000000000000000042.batch"), Some(42));
        assert_eq!(parse_batch_name("42.batch"), None);
        assert_eq!(parse_batch_name("0000000000000000004x.batch"), None);
        assert_eq!(parse_batch_name("00000000000000000042.tmp"), None);
        assert_eq!(parse_batch_name("00000000000000000042batch"), None);
        assert_eq!(parse_batch_name("99999999999999999999.batch"), None);
    }

    #[test]
    fn parse_size_accepts_units() {
        let cases = [
            ("4096", 4096),
            ("0", 0),
            ("4096B", 4096),
            ("512KiB", 512 * 1024),
            ("64MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("10MB", 10_000_000),
            ("3KB", 3_000),
            ("1GB", 1_000_000_000),
            ("1TB", 1_000_000_000_000),
            ("64mib", 64 << 20),
            ("64MIB", 64 << 20),
            ("10mb", 10_000_000),
            ("5k", 5_000),
            ("5Ki", 5 * 1024),
            ("5M", 5_000_000),
            ("5G", 5_000_000_000),
            ("  64 MiB  ", 64 << 20),
            ("18446744073709551615", u64::MAX),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input), Ok(want), "{input:?}");
        }
    }

    #[test]
    fn parse_size_rejects_bad_input() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("   "), Err(SizeError::Empty));
        for input in ["MiB", "-1", "+5", "1.5GiB", ".5"] {
            assert_eq!(
                parse_size(input),
                Err(SizeError::InvalidNumber {
                    input: input.into()
                }),
                "{input:?}"
            );
        }
        assert_eq!(
            parse_size("10 parsecs"),
            Err(SizeError::UnknownUnit {
                input: "10 parsecs".into(),
                unit: "parsecs".into()
            })
        );
        assert!(matches!(
            parse_size("0x10"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("10MiBs"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("10 M i B"),
            Err(SizeError::UnknownUnit { .. })
        ));
        let err = parse_size("12XB").unwrap_err().to_string();
        assert!(err.contains("12XB"), "{err}");
    }

    #[test]
    fn parse_size_overflow_is_an_error() {
        for input in [
            "18446744073709551616",
            "99999999999999999999999999",
            "17179869184GiB",
            "18446744073709551615KB",
            "20000000TB",
        ] {
            assert_eq!(
                parse_size(input),
                Err(SizeError::Overflow {
                    input: input.into()
                }),
                "{input:?}"
            );
        }
        assert_eq!(parse_size("17179869183GiB"), Ok(17_179_869_183 << 30));
    }
}
