//! CRI container log files in kubelet's format: `<RFC3339Nano> <stream> <F|P> <text>\n`.
//!
//! A line longer than [`MAX_LINE`] bytes is split into `P` (partial) records followed by the
//! final `F` record; text left without a newline at EOF is written as `F` (containerd does the
//! same). The file is shared by both streams of a container and can be reopened after kubelet
//! rotated it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{SecondsFormat, Utc};

/// Longest text of one record (kubelet's and containerd's 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// Which stream a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The container's stdout.
    Stdout,
    /// The container's stderr.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A container's log file; cheap to clone (both streams share it) and shareable across threads
/// (the `wasm` keeper writes from instance threads). Write errors are logged and counted, never
/// fatal: a full disk must not stop the container.
#[derive(Clone, Debug)]
pub struct LogFile {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: Option<File>,
    errors: u64,
}

impl LogFile {
    /// Opens (creating, appending) `path`; its parent directory is created if missing.
    pub fn open(path: &Path) -> std::io::Result<LogFile> {
        let file = open_append(path)?;
        Ok(LogFile {
            inner: Arc::new(Mutex::new(Inner {
                path: path.to_path_buf(),
                file: Some(file),
                errors: 0,
            })),
        })
    }

    /// Closes the file and opens `path` again (a new file if kubelet renamed the old one).
    pub fn reopen(&self) -> std::io::Result<()> {
        let mut inner = self.lock();
        inner.file = None;
        let file = open_append(&inner.path)?;
        inner.file = Some(file);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Write errors so far.
    pub fn errors(&self) -> u64 {
        self.lock().errors
    }

    fn write_record(&self, stream: Stream, partial: bool, text: &[u8]) {
        let ts = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        let mut rec = Vec::with_capacity(ts.len() + text.len() + 12);
        rec.extend_from_slice(ts.as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(stream.name().as_bytes());
        rec.extend_from_slice(if partial { b" P " } else { b" F " });
        rec.extend_from_slice(text);
        rec.push(b'\n');
        let mut inner = self.lock();
        let result = match inner.file.as_mut() {
            Some(f) => f.write_all(&rec),
            None => Err(std::io::Error::other("log file is closed")),
        };
        if let Err(error) = result {
            inner.errors += 1;
            if inner.errors == 1 || inner.errors.is_power_of_two() {
                tracing::warn!(path = %inner.path.display(), %error, errors = inner.errors, "cannot write container log");
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Turns one stream's bytes into log records.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    buf: Vec<u8>,
}

impl LineSplitter {
    /// A splitter for `stream`.
    pub fn new(stream: Stream) -> LineSplitter {
        LineSplitter {
            stream,
            buf: Vec::new(),
        }
    }

    /// Feeds bytes; complete lines (and full [`MAX_LINE`] chunks) go to `out`.
    pub fn feed(&mut self, data: &[u8], out: &LogFile) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        loop {
            let rest = &self.buf[start..];
            match rest.iter().position(|b| *b == b'\n') {
                Some(nl) if nl <= MAX_LINE => {
                    let mut line = &rest[..nl];
                    if line.last() == Some(&b'\r') {
                        line = &line[..line.len() - 1];
                    }
                    out.write_record(self.stream, false, line);
                    start += nl + 1;
                }
                _ if rest.len() > MAX_LINE => {
                    out.write_record(self.stream, true, &rest[..MAX_LINE]);
                    start += MAX_LINE;
                }
                _ => break,
            }
        }
        self.buf.drain(..start);
    }

    /// End of stream: what is left (no newline) is written as a full record.
    pub fn finish(&mut self, out: &LogFile) {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            out.write_record(self.stream, false, &rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(path: &Path) -> Vec<(String, String, String, String)> {
        std::fs::read_to_string(path)
            .expect("read log")
            .lines()
            .map(|l| {
                let mut it = l.splitn(4, ' ');
                (
                    it.next().unwrap_or_default().to_string(),
                    it.next().unwrap_or_default().to_string(),
                    it.next().unwrap_or_default().to_string(),
                    it.next().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn full_lines_partial_chunks_and_eof_remainder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/0.log");
        let log = LogFile::open(&path).expect("open");
        let mut out = LineSplitter::new(Stream::Stdout);
        let mut err = LineSplitter::new(Stream::Stderr);
        out.feed(b"hello\nwor", &log);
        err.feed(b"oops\r\n", &log);
        out.feed(b"ld\n", &log);
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        out.feed(&long, &log);
        out.feed(b"\ntail", &log);
        out.finish(&log);
        let recs = records(&path);
        let got: Vec<(&str, &str, usize)> = recs
            .iter()
            .map(|(_, s, t, x)| (s.as_str(), t.as_str(), x.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("stdout", "F", 5),
                ("stderr", "F", 4),
                ("stdout", "F", 5),
                ("stdout", "P", MAX_LINE),
                ("stdout", "P", MAX_LINE),
                ("stdout", "F", 5),
                ("stdout", "F", 4),
            ]
        );
        assert_eq!(recs[0].3, "hello");
        assert_eq!(recs[2].3, "world");
        for (ts, ..) in &recs {
            let parsed = chrono::DateTime::parse_from_rfc3339(ts).expect("rfc3339 timestamp");
            assert!(ts.ends_with('Z') && ts.contains('.'), "{ts}");
            assert!(parsed.timestamp() > 0);
        }
    }

    #[test]
    fn a_line_of_exactly_max_is_one_full_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let log = LogFile::open(&path).expect("open");
        let mut out = LineSplitter::new(Stream::Stdout);
        let mut line = vec![b'y'; MAX_LINE];
        line.push(b'\n');
        out.feed(&line, &log);
        let recs = records(&path);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].2, "F");
        assert_eq!(recs[0].3.len(), MAX_LINE);
    }

    #[test]
    fn reopen_writes_to_a_new_file_after_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let log = LogFile::open(&path).expect("open");
        let mut out = LineSplitter::new(Stream::Stdout);
        out.feed(b"before\n", &log);
        std::fs::rename(&path, dir.path().join("0.log.1")).expect("rotate");
        out.feed(b"still old\n", &log);
        log.reopen().expect("reopen");
        out.feed(b"after\n", &log);
        let old = records(&dir.path().join("0.log.1"));
        let new = records(&path);
        assert_eq!(old.len(), 2);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].3, "after");
        assert_eq!(log.errors(), 0);
    }
}
