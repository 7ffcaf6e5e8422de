//! Following a growing log file (`tail -F`) for the origin witness: complete
//! lines only, across rotation by rename and across `copytruncate`, with
//! bounded memory, and driven entirely by the caller's [`Follower::poll`]
//! calls (no timers, no threads) so that its behaviour is deterministic.

use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Longest line kept; the rest of a longer line is dropped (and counted), so
/// one client sending a huge URI cannot make the witness grow without bound.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Most bytes read by one [`Follower::poll`]: following an old multi-gigabyte
/// log from its start then proceeds in slices instead of one huge batch.
const POLL_READ_CAP: u64 = 4 * 1024 * 1024;

/// Size of each read from the file.
const CHUNK: usize = 64 * 1024;

/// Counters over a follower's lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FollowStats {
    /// Complete lines returned.
    pub lines: u64,
    /// Bytes read from the file(s).
    pub bytes: u64,
    /// Times the path was found to name a new file (rename rotation).
    pub rotations: u64,
    /// Times the file was found shorter than what had been read
    /// (`copytruncate` rotation).
    pub truncations: u64,
    /// Lines longer than [`MAX_LINE_BYTES`], returned cut to that length.
    pub cut_lines: u64,
}

/// Identity of a file, to notice when the path names a different one.
type FileId = (u64, u64);

#[cfg(unix)]
fn file_id(meta: &Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

/// Without inode numbers only truncation can be detected.
#[cfg(not(unix))]
fn file_id(_meta: &Metadata) -> Option<FileId> {
    None
}

/// Follows the file at a path, returning the complete lines appended to it.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    /// The open file, `None` while the path does not exist yet.
    file: Option<File>,
    /// Identity of `file`, compared against the path's on every poll.
    id: Option<FileId>,
    /// Bytes of `file` consumed so far.
    offset: u64,
    /// The current incomplete line.
    partial: Vec<u8>,
    /// The current line hit [`MAX_LINE_BYTES`]: drop bytes up to its newline.
    cutting: bool,
    /// Opened at the end of a file whose last line is incomplete: that line
    /// started before us, so drop its remainder instead of returning half a
    /// line.
    skip_to_newline: bool,
    /// The last poll stopped at the read cap with more to read.
    backlog: bool,
    read_cap: u64,
    stats: FollowStats,
}

impl Follower {
    /// Starts following `path`: from its start with `from_start`, else from
    /// its current end. A missing file is not an error: it is waited for,
    /// and read from its start once it appears.
    pub fn open(path: &Path, from_start: bool) -> io::Result<Follower> {
        let mut follower = Follower {
            path: path.to_path_buf(),
            file: None,
            id: None,
            offset: 0,
            partial: Vec::new(),
            cutting: false,
            skip_to_newline: false,
            backlog: false,
            read_cap: POLL_READ_CAP,
            stats: FollowStats::default(),
        };
        if follower.open_path()? && !from_start {
            let len = follower.current_len()?;
            follower.offset = len;
            follower.skip_to_newline = len > 0 && !follower.ends_with_newline(len)?;
        }
        Ok(follower)
    }

    /// The followed path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the complete lines that are available now, without their line
    /// terminators (`\n` or `\r\n`), converted lossily to UTF-8.
    ///
    /// An incomplete last line is kept until its newline arrives. When the
    /// path names a new file (rotation), the old file is read to its end
    /// first — its incomplete last line, if any, is returned as a line since
    /// nothing will complete it — and then the new one from its start. When
    /// the file shrinks below what was read (`copytruncate`), reading
    /// restarts at its start (a truncation followed by more writes than
    /// had been read, all between two polls, cannot be told from growth:
    /// poll more often than the log is rotated). At most a few MiB are read
    /// per call; see [`Follower::has_backlog`].
    pub fn poll(&mut self) -> io::Result<Vec<String>> {
        let mut lines = Vec::new();
        self.backlog = false;
        // Each round handles one file; a few rounds cover a rotation seen
        // within this call, and the bound keeps a path that is replaced over
        // and over from holding the caller here.
        for _ in 0..4 {
            if self.file.is_none() && !self.open_path()? {
                break;
            }
            // The path is looked at *before* the old file is drained, so that
            // everything written to the old file before the rename is read.
            let path_id = match std::fs::metadata(&self.path) {
                Ok(meta) => file_id(&meta),
                // Renamed away and not recreated yet: keep reading the old
                // file, the server may still be writing to it.
                Err(err) if err.kind() == io::ErrorKind::NotFound => None,
                Err(err) => return Err(err),
            };
            self.drain(&mut lines)?;
            if self.backlog {
                break;
            }
            match path_id {
                Some(id) if Some(id) != self.id => {
                    self.stats.rotations += 1;
                    if !self.partial.is_empty() {
                        self.emit(&mut lines);
                    }
                    self.reset_position();
                    self.file = None;
                    self.id = None;
                }
                _ => break,
            }
        }
        Ok(lines)
    }

    /// Whether the last [`Follower::poll`] stopped at its read limit with more
    /// data already in the file: poll again without waiting.
    pub fn has_backlog(&self) -> bool {
        self.backlog
    }

    /// Counters so far.
    pub fn stats(&self) -> FollowStats {
        self.stats
    }

    /// Opens the path if it exists; `false` if it does not.
    fn open_path(&mut self) -> io::Result<bool> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err),
        };
        // The identity comes from the open handle, not a separate stat of the
        // path, which could already name yet another file.
        self.id = file_id(&file.metadata()?);
        self.file = Some(file);
        self.reset_position();
        Ok(true)
    }

    fn reset_position(&mut self) {
        self.offset = 0;
        self.partial.clear();
        self.cutting = false;
        self.skip_to_newline = false;
    }

    fn current_len(&self) -> io::Result<u64> {
        match &self.file {
            Some(file) => Ok(file.metadata()?.len()),
            None => Ok(0),
        }
    }

    fn ends_with_newline(&mut self, len: u64) -> io::Result<bool> {
        let Some(file) = self.file.as_mut() else {
            return Ok(true);
        };
        file.seek(SeekFrom::Start(len - 1))?;
        let mut last = [0u8; 1];
        file.read_exact(&mut last)?;
        Ok(last[0] == b'\n')
    }

    /// Reads the open file from `offset` to its end (or the read cap).
    fn drain(&mut self, lines: &mut Vec<String>) -> io::Result<()> {
        let len = self.current_len()?;
        if len < self.offset {
            // copytruncate: the file was emptied under us. What was half a
            // line belongs to the old content and will not be completed.
            self.stats.truncations += 1;
            self.reset_position();
        }
        // The file is taken out for the duration so that the line splitting
        // below may borrow `self` mutably; it is put back on every path.
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        let result = self.drain_file(&mut file, lines);
        self.file = Some(file);
        result
    }

    fn drain_file(&mut self, file: &mut File, lines: &mut Vec<String>) -> io::Result<()> {
        file.seek(SeekFrom::Start(self.offset))?;
        let mut budget = self.read_cap;
        let mut buf = vec![0u8; CHUNK];
        loop {
            if budget == 0 {
                // Only a backlog if there is more; a read of zero settles it.
                let mut probe = [0u8; 1];
                self.backlog = file.read(&mut probe)? > 0;
                break;
            }
            let want = usize::try_from(budget).map_or(CHUNK, |b| b.min(CHUNK));
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            self.offset += n as u64;
            self.stats.bytes += n as u64;
            budget = budget.saturating_sub(n as u64);
            self.consume(&buf[..n], lines);
        }
        Ok(())
    }

    /// Splits freshly read bytes into lines.
    fn consume(&mut self, mut bytes: &[u8], lines: &mut Vec<String>) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let (segment, rest) = match newline {
                Some(i) => (&bytes[..i], &bytes[i + 1..]),
                None => (bytes, &[][..]),
            };
            bytes = rest;
            if self.skip_to_newline {
                if newline.is_some() {
                    self.skip_to_newline = false;
                }
                continue;
            }
            if !self.cutting {
                let room = MAX_LINE_BYTES - self.partial.len();
                if segment.len() > room {
                    self.partial.extend_from_slice(&segment[..room]);
                    self.cutting = true;
                    self.stats.cut_lines += 1;
                } else {
                    self.partial.extend_from_slice(segment);
                }
            }
            if newline.is_some() {
                self.emit(lines);
            }
        }
    }

    /// Returns the current line and starts a new one.
    fn emit(&mut self, lines: &mut Vec<String>) {
        let mut line = std::mem::take(&mut self.partial);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        lines.push(match String::from_utf8(line) {
            Ok(text) => text,
            Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
        });
        self.cutting = false;
        self.stats.lines += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;

    fn append(path: &Path, data: &[u8]) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(data).unwrap();
    }

    fn strings(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn appended_lines_and_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        append(&path, b"old line\n");
        let mut f = Follower::open(&path, false).unwrap();
        assert!(f.poll().unwrap().is_empty());

        append(&path, b"one\ntw");
        assert_eq!(f.poll().unwrap(), strings(&["one"]));
        assert!(f.poll().unwrap().is_empty());
        append(&path, b"o\r\nthr");
        assert_eq!(f.poll().unwrap(), strings(&["two"]));
        append(&path, b"ee\n\nfour\n");
        assert_eq!(f.poll().unwrap(), strings(&["three", "", "four"]));
        let stats = f.stats();
        assert_eq!(stats.lines, 5);
        assert_eq!(stats.bytes, 21);
        assert_eq!(
            (stats.rotations, stats.truncations, stats.cut_lines),
            (0, 0, 0)
        );
    }

    #[test]
    fn from_start_reads_existing_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        append(&path, b"a\nb\n");
        let mut f = Follower::open(&path, true).unwrap();
        assert_eq!(f.poll().unwrap(), strings(&["a", "b"]));
    }

    #[test]
    fn opening_at_the_end_skips_a_half_written_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        append(&path, b"a\nhalf of b");
        let mut f = Follower::open(&path, false).unwrap();
        append(&path, b" rest of b\nc\n");
        assert_eq!(f.poll().unwrap(), strings(&["c"]));
    }

    #[test]
    fn rename_rotation_loses_and_duplicates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let rotated = dir.path().join("access.log.1");
        append(&path, b"1\n");
        let mut f = Follower::open(&path, true).unwrap();
        assert_eq!(f.poll().unwrap(), strings(&["1"]));

        // Written before the rename but not yet polled.
        append(&path, b"2\n");
        std::fs::rename(&path, &rotated).unwrap();
        // The server keeps writing to the renamed file until it reopens.
        append(&rotated, b"3\n");
        assert_eq!(f.poll().unwrap(), strings(&["2", "3"]));
        append(&rotated, b"4\npartial");
        append(&path, b"5\n6");
        assert_eq!(f.poll().unwrap(), strings(&["4", "partial", "5"]));
        append(&path, b"\n7\n");
        assert_eq!(f.poll().unwrap(), strings(&["6", "7"]));
        assert!(f.poll().unwrap().is_empty());
        assert_eq!(f.stats().rotations, 1);
        assert_eq!(f.stats().lines, 8);
    }

    #[test]
    fn rotation_with_the_new_file_already_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        append(&path, b"a\n");
        let mut f = Follower::open(&path, false).unwrap();
        append(&path, b"b\n");
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        append(&path, b"c\n");
        assert_eq!(f.poll().unwrap(), strings(&["b", "c"]));
        assert_eq!(f.stats().rotations, 1);
    }

    #[test]
    fn truncation_restarts_at_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        append(&path, b"first line\nsecond line\nhalf");
        let mut f = Follower::open(&path, true).unwrap();
        assert_eq!(f.poll().unwrap(), strings(&["first line", "second line"]));
        // copytruncate: same file, emptied, then written again.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        append(&path, b"new\n");
        assert_eq!(f.poll().unwrap(), strings(&["new"]));
        assert_eq!(f.stats().truncations, 1);
        assert_eq!(f.stats().rotations, 0);
    }

    #[test]
    fn file_created_after_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.log");
        let mut f = Follower::open(&path, false).unwrap();
        assert!(f.poll().unwrap().is_empty());
        assert!(f.poll().unwrap().is_empty());
        append(&path, b"hello\nwor");
        assert_eq!(f.poll().unwrap(), strings(&["hello"]));
        append(&path, b"ld\n");
        assert_eq!(f.poll().unwrap(), strings(&["world"]));
        assert_eq!(f.stats().rotations, 0);
    }

    #[test]
    fn long_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut f = Follower::open(&path, false).unwrap();
        let mut data = vec![b'x'; MAX_LINE_BYTES + 1000];
        // Arrives in two writes, the cut falling inside the second.
        append(&path, &data[..MAX_LINE_BYTES - 10]);
        assert!(f.poll().unwrap().is_empty());
        data.extend_from_slice(b"\nnext\n");
        append(&path, &data[MAX_LINE_BYTES - 10..]);
        let lines = f.poll().unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[1], "next");
        assert_eq!(f.stats().cut_lines, 1);
        // A line of exactly the limit is not cut.
        let mut exact = vec![b'y'; MAX_LINE_BYTES];
        exact.push(b'\n');
        append(&path, &exact);
        assert_eq!(f.poll().unwrap()[0].len(), MAX_LINE_BYTES);
        assert_eq!(f.stats().cut_lines, 1);
    }

    #[test]
    fn invalid_utf8_is_converted_lossily() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut f = Follower::open(&path, false).unwrap();
        append(&path, b"a\xffb\n");
        assert_eq!(f.poll().unwrap(), strings(&["a\u{fffd}b"]));
    }

    #[test]
    fn read_cap_leaves_a_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        append(&path, b"aaaa\nbbbb\ncccc\n");
        let mut f = Follower::open(&path, true).unwrap();
        f.read_cap = 7;
        assert_eq!(f.poll().unwrap(), strings(&["aaaa"]));
        assert!(f.has_backlog());
        // A rotation waits until the old file is drained.
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        append(&path, b"new\n");
        assert_eq!(f.poll().unwrap(), strings(&["bbbb"]));
        assert!(f.has_backlog());
        assert_eq!(f.stats().rotations, 0);
        f.read_cap = 1000;
        assert_eq!(f.poll().unwrap(), strings(&["cccc", "new"]));
        assert!(!f.has_backlog());
        assert_eq!(f.stats().rotations, 1);
    }
}
