//! The bounded app log: JSON lines of `LogRecord`, one rotation, written by init.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use aloft_init::protocol::{LogRecord, LOG_FILE, LOG_FILE_ROTATED};

/// Longest line written as one record; longer output is split.
const MAX_LINE: usize = 16 * 1024;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct LogSink {
    inner: Mutex<LogFile>,
}

struct LogFile {
    dir: PathBuf,
    file: Option<File>,
    size: u64,
    max: u64,
}

impl LogSink {
    pub fn open(dir: impl Into<PathBuf>, max: u64) -> Self {
        let dir = dir.into();
        let path = dir.join(LOG_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len())
            .unwrap_or(0);
        Self {
            inner: Mutex::new(LogFile {
                dir,
                file,
                size,
                max: max.max(1024),
            }),
        }
    }

    /// Append one record; rotates first when the file would pass its cap.
    pub fn write(&self, stream: &str, line: &[u8]) {
        let record = LogRecord {
            ts: now_ms(),
            stream: stream.to_owned(),
            line: String::from_utf8_lossy(line).into_owned(),
        };
        let Ok(mut text) = serde_json::to_vec(&record) else {
            return;
        };
        text.push(b'\n');
        let mut log = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if log.size + text.len() as u64 > log.max && log.size > 0 {
            let current = log.dir.join(LOG_FILE);
            let _ = fs::rename(&current, log.dir.join(LOG_FILE_ROTATED));
            log.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&current)
                .ok();
            log.size = 0;
        }
        if let Some(file) = log.file.as_mut() {
            if file.write_all(&text).is_ok() {
                log.size += text.len() as u64;
            }
        }
    }

    /// A message from init itself.
    pub fn init(&self, message: &str) {
        self.write("init", message.as_bytes());
    }

    /// Copy `reader` into the log line by line until EOF.
    pub fn pump(&self, stream: &str, mut reader: impl Read) {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            pending.extend_from_slice(&buf[..n]);
            let mut start = 0;
            while let Some(pos) = pending[start..].iter().position(|b| *b == b'\n') {
                self.write(stream, &pending[start..start + pos]);
                start += pos + 1;
            }
            pending.drain(..start);
            while pending.len() >= MAX_LINE {
                self.write(stream, &pending[..MAX_LINE]);
                pending.drain(..MAX_LINE);
            }
        }
        if !pending.is_empty() {
            self.write(stream, &pending);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(path: &std::path::Path) -> Vec<LogRecord> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn pump_splits_lines_and_keeps_the_unterminated_tail() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::open(dir.path(), 1 << 20);
        sink.pump("stdout", &b"one\ntwo\nthree"[..]);
        let lines: Vec<_> = records(&dir.path().join(LOG_FILE))
            .into_iter()
            .map(|r| (r.stream, r.line))
            .collect();
        assert_eq!(
            lines,
            vec![
                ("stdout".into(), "one".into()),
                ("stdout".into(), "two".into()),
                ("stdout".into(), "three".into())
            ]
        );
    }

    #[test]
    fn log_rotates_once_at_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::open(dir.path(), 2048);
        for i in 0..100 {
            sink.write("stderr", format!("line {i:03} padding padding").as_bytes());
        }
        let current = fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        let rotated = fs::metadata(dir.path().join(LOG_FILE_ROTATED))
            .unwrap()
            .len();
        assert!(current <= 2048 && rotated <= 2048, "{current} {rotated}");
        let last = records(&dir.path().join(LOG_FILE)).pop().unwrap();
        assert_eq!(last.line, "line 099 padding padding");
    }

    #[test]
    fn overlong_lines_are_split() {
        let dir = tempfile::tempdir().unwrap();
        let sink = LogSink::open(dir.path(), 1 << 20);
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        sink.pump("stdout", &long[..]);
        let lens: Vec<_> = records(&dir.path().join(LOG_FILE))
            .iter()
            .map(|r| r.line.len())
            .collect();
        assert_eq!(lens, vec![MAX_LINE, MAX_LINE, 10]);
    }
}
