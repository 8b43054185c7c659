//! `dedupe:` — the last N keys published, per pipeline, optionally kept in a file.
//!
//! A key is remembered only once Kafka holds its event (delivered, or its DLQ record written):
//! an event whose publish failed is sent again by a later poll. While an event is in flight its
//! key counts as seen too, so that two polls answering the same quote do not both publish it.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the keys file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DedupeFileError {
    /// Reading or writing failed.
    #[error("dedupe.file `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// It holds something else than kgate writes.
    #[error("dedupe.file `{path}` is not a kgate dedupe file ({source}); remove it, or name another file")]
    Format {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
}

/// The remembered keys, oldest first, and the keys in flight.
#[derive(Debug)]
pub struct Window {
    order: VecDeque<String>,
    known: HashSet<String>,
    in_flight: HashSet<String>,
    max: usize,
    /// Keys were added since the last [`Window::snapshot`].
    dirty: bool,
}

/// What the file holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct FileBody {
    /// Oldest first.
    keys: Vec<String>,
}

impl Window {
    /// An empty window of `max` keys.
    pub fn new(max: usize) -> Window {
        Window {
            order: VecDeque::new(),
            known: HashSet::new(),
            in_flight: HashSet::new(),
            max: max.max(1),
            dirty: false,
        }
    }

    /// Whether `key` was published or is in flight; if not, it is in flight from now on.
    pub fn claim(&mut self, key: &str) -> bool {
        if self.known.contains(key) || self.in_flight.contains(key) {
            return false;
        }
        self.in_flight.insert(key.to_string());
        true
    }

    /// The fate of a claimed key: remembered when `persisted`, else free to be sent again.
    pub fn settle(&mut self, key: &str, persisted: bool) {
        self.in_flight.remove(key);
        if persisted {
            self.remember(key.to_string());
        }
    }

    fn remember(&mut self, key: String) {
        if !self.known.insert(key.clone()) {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.max {
            if let Some(old) = self.order.pop_front() {
                self.known.remove(&old);
            }
        }
        self.dirty = true;
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The keys to write, when some were added since the last call.
    pub fn snapshot(&mut self) -> Option<Vec<String>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(self.order.iter().cloned().collect())
    }

    /// A window of `max` keys with the keys of `path` (the newest `max` of them); an empty one
    /// when the file does not exist yet.
    pub fn load(path: &Path, max: usize) -> Result<Window, DedupeFileError> {
        let mut w = Window::new(max);
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(w),
            Err(source) => {
                return Err(DedupeFileError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let body: FileBody =
            serde_json::from_slice(&bytes).map_err(|source| DedupeFileError::Format {
                path: path.to_path_buf(),
                source,
            })?;
        for k in body.keys {
            w.remember(k);
        }
        w.dirty = false;
        Ok(w)
    }
}

/// Writes `keys` to `path` atomically: a temporary file beside it, synced, then renamed over it,
/// so that a crash leaves the old file or the new one, never half of one.
pub fn write_file(path: &Path, keys: Vec<String>) -> Result<(), DedupeFileError> {
    let io = |source| DedupeFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let body = serde_json::to_vec(&FileBody { keys }).expect("strings serialize");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_remembered_once_persisted_and_the_oldest_leave() {
        let mut w = Window::new(2);
        assert!(w.claim("a"));
        assert!(!w.claim("a"), "in flight counts as seen");
        w.settle("a", false);
        assert!(w.claim("a"), "a failed publish is sent again");
        w.settle("a", true);
        assert!(!w.claim("a"));
        for k in ["b", "c"] {
            assert!(w.claim(k));
            w.settle(k, true);
        }
        assert_eq!(w.len(), 2);
        assert!(w.claim("a"), "`a` left the window of 2");
        assert!(!w.claim("b") && !w.claim("c"));
    }

    #[test]
    fn the_file_keeps_the_window_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let mut w = Window::load(&path, 3).unwrap();
        assert!(w.is_empty());
        assert_eq!(w.snapshot(), None);
        for k in ["a", "b|1", "c\nd", "e"] {
            assert!(w.claim(k));
            w.settle(k, true);
        }
        let keys = w.snapshot().unwrap();
        assert_eq!(keys, ["b|1", "c\nd", "e"]);
        assert_eq!(w.snapshot(), None, "nothing new");
        write_file(&path, keys).unwrap();
        assert!(!dir.path().join("keys.json.tmp").exists());

        let mut again = Window::load(&path, 3).unwrap();
        assert_eq!(again.len(), 3);
        assert!(!again.claim("b|1") && !again.claim("c\nd") && !again.claim("e"));
        assert!(again.claim("a"));
        // A smaller window keeps the newest.
        let mut small = Window::load(&path, 1).unwrap();
        assert!(small.claim("b|1") && !small.claim("e"));

        std::fs::write(&path, "junk").unwrap();
        let e = Window::load(&path, 3).unwrap_err().to_string();
        assert!(e.contains("is not a kgate dedupe file"), "{e}");
    }
}
