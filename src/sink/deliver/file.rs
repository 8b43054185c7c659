//! `sink.file`: JSON lines appended to a file, fsynced before a batch counts as delivered,
//! rotated by size and/or age (the full file is renamed `<path>.<UTC time>`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::BoxFuture;

use super::{blocking, DeliverError, Failure, FileConfig, Retry, Shape, Target};

/// The file being written.
pub(super) struct RotatingFile {
    path: PathBuf,
    max_bytes: Option<u64>,
    rotate_every: Option<Duration>,
    file: File,
    size: u64,
    opened: Instant,
}

impl RotatingFile {
    pub(super) fn open(c: &FileConfig) -> Result<RotatingFile, DeliverError> {
        let file = append(&c.path).map_err(|source| DeliverError::File {
            path: c.path.display().to_string(),
            source,
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingFile {
            path: c.path.clone(),
            max_bytes: c.max_bytes.map(|b| b.0),
            rotate_every: c.rotate_every,
            file,
            size,
            opened: Instant::now(),
        })
    }

    /// Whether the file should be rotated before `more` bytes are appended.
    fn due(&self, more: u64) -> bool {
        self.size > 0
            && (self.max_bytes.is_some_and(|m| self.size + more > m)
                || self
                    .rotate_every
                    .is_some_and(|d| self.opened.elapsed() >= d))
    }

    /// Renames the full file aside and starts a new one.
    fn rotate(&mut self) -> std::io::Result<()> {
        let stamp = humantime::format_rfc3339_millis(SystemTime::now())
            .to_string()
            .replace(':', "");
        let mut aside = self.path.clone().into_os_string();
        aside.push(format!(".{stamp}"));
        let mut aside = PathBuf::from(aside);
        let mut n = 1;
        while aside.exists() {
            let mut a = self.path.clone().into_os_string();
            a.push(format!(".{stamp}.{n}"));
            aside = PathBuf::from(a);
            n += 1;
        }
        self.file.sync_all()?;
        std::fs::rename(&self.path, &aside)?;
        self.file = append(&self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename and the new file survive a crash only once the directory is synced.
            File::open(dir)?.sync_all()?;
        }
        self.size = 0;
        self.opened = Instant::now();
        tracing::info!(file = %self.path.display(), rotated_to = %aside.display(), "file sink: rotated");
        Ok(())
    }

    fn write(&mut self, body: &[u8]) -> std::io::Result<()> {
        if self.due(body.len() as u64) {
            self.rotate()?;
        }
        self.file.write_all(body)?;
        self.size += body.len() as u64;
        self.file.sync_data()
    }
}

fn append(path: &std::path::Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Target for RotatingFile {
    fn kind(&self) -> &'static str {
        "file"
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn shape(&self) -> Shape {
        Shape::Records
    }
    fn coalesces(&self) -> bool {
        true
    }
    fn retry(&self) -> Retry {
        Retry::NONE
    }
    fn deliver<'a>(&'a mut self, body: &'a [u8], _: usize) -> BoxFuture<'a, Result<(), Failure>> {
        let r = blocking(|| self.write(body));
        let path = self.path.display().to_string();
        Box::pin(async move { r.map_err(|e| Failure::Fatal(format!("cannot write {path}: {e}"))) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_keeping_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let mut f = RotatingFile::open(&FileConfig {
            path: path.clone(),
            max_bytes: Some(crate::config::ByteSize(25)),
            rotate_every: None,
        })
        .unwrap();
        for i in 0..10 {
            f.write(format!("{{\"n\":{i:03}}}\n").as_bytes()).unwrap();
        }
        let mut lines = Vec::new();
        let mut files = 0;
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            assert!(text.len() <= 25, "{text}");
            lines.extend(text.lines().map(str::to_string));
            files += 1;
        }
        lines.sort();
        assert_eq!(files, 5, "two 10-byte lines a file");
        assert_eq!(
            lines,
            (0..10)
                .map(|i| format!("{{\"n\":{i:03}}}"))
                .collect::<Vec<_>>()
        );
    }
}
