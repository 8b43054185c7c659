//! The disk spool: an append-only, checksummed log of segment files in one directory, so that
//! what a pipeline accepted survives a crash (and, with `when: overflow`, a Kafka outage).
//!
//! It stores opaque payloads; the sink wrapper (`sink::SpoolSink`) decides what goes in them.
//! Every record gets a sequence number, one more than the last, also across restarts. Appends
//! are written to the file at once (so a killed process loses none; `write_through`) and made
//! durable together (group commit). Written through, the segment being written is allocated
//! whole when it is created (`fallocate`, `segment_bytes`) and mapped into memory: an append is
//! a copy into the page cache, not a `write` call; where the file system or the free space does
//! not allow the allocation, appends fall back to one `pwrite` each. A process killed while a
//! segment is mapped leaves it with a tail of zeros, which the next open cuts without counting
//! it as damage (the file's records are whole; zeros followed by data are damage). Then: [`Spool::flush`] writes what is buffered,
//! fsyncs once and completes every [`Durable`] handle up to there; a caller that must not go on
//! before its record is on disk waits on its handle. An [`Spool::ack`] marks a record done; the
//! acks below the lowest record not yet acked (the watermark) are persisted at each flush in a
//! 16-byte file, and a segment whose records are all below it is deleted. Acks above a gap are
//! kept in memory only: after a crash those records come back again (the duplicates are bounded
//! by the records in flight, never by the spool's size).
//!
//! On open, the segments are read in order and each record's checksum and sequence number
//! checked; a segment is cut at its first bad record (a write torn by a power loss, or damage),
//! everything before it kept, and the cut is returned ([`Truncation`]) for the caller to log and
//! count. What is not yet acked is then read back in order through a [`Cursor`].
//!
//! It does no I/O outside its directory, prints nothing and spawns nothing: the caller runs the
//! flushes (every `fsync` interval, or when [`Appended::flush_now`] says the buffer is full).
//!
//! On disk: `LOCK` (held with `flock` while open; the holder's pid inside), `acks` (the
//! persisted watermark) and `<first seq, 20 digits>.seg` files. A segment starts with
//! [`MAGIC`], the format version (u32 LE) and its first sequence number (u64 LE); then records,
//! each `len u32 | crc32 u32 | seq u64 | unix ms u64 | payload` (little-endian; the crc covers
//! seq, time and payload).

mod config;
#[cfg(test)]
mod tests;

pub use config::{clashes, SpoolConfig, SpoolSpec, SpoolWhen};

use std::collections::{BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// The first bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"KGSPOOL\0";
/// The segment format this code writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of a segment's header: magic, version, first sequence number.
pub const HEADER_LEN: u64 = 20;
/// How many bytes [`Spool::read`] reads at once (a record larger than this is read whole).
const READ_CHUNK: u64 = 64 * 1024;

/// Bytes before each record's payload: length, crc, sequence number, time.
pub const FRAME_LEN: u64 = 24;
/// The largest payload a record may have (a longer length read back is damage).
pub const MAX_RECORD: u64 = 256 * 1024 * 1024;
/// How many records apart the in-memory time index samples (for the oldest record's age).
const INDEX_EVERY: u64 = 256;

/// What [`Spool::append`] does when the spool holds `max_bytes` already.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Refuse the record ([`SpoolError::Full`]): the caller waits for acks and tries again
    /// (backpressure).
    #[default]
    Block,
    /// Delete the oldest whole segments, acked or not, to make room (their records are counted
    /// as dropped); when only the segment being written is left, the new record is dropped.
    DropOldest,
    /// Refuse the new record: it is dropped and counted.
    DropNewest,
}

/// How a spool is bounded.
#[derive(Debug, Clone, Copy)]
pub struct SpoolOptions {
    /// The most bytes its segment files (and its unwritten buffer) may hold.
    pub max_bytes: u64,
    /// A segment is closed and a new one started once it would grow past this.
    pub segment_bytes: u64,
    /// Buffered bytes past which [`Appended::flush_now`] asks for a flush before the interval.
    pub batch_bytes: u64,
    /// What to do when full.
    pub on_full: OnFull,
    /// Each append is written to its file at once (a `write`, no fsync), so that a process
    /// that is killed loses none; else appends wait in memory for the next flush.
    pub write_through: bool,
}

impl SpoolOptions {
    /// `max_bytes` with segments of at most 64 MiB (an eighth of `max_bytes` when that is less)
    /// and flushes at least every 1 MiB.
    pub fn new(max_bytes: u64, on_full: OnFull) -> SpoolOptions {
        SpoolOptions {
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(64 * 1024, 64 * 1024 * 1024),
            batch_bytes: 1024 * 1024,
            on_full,
            write_through: true,
        }
    }
}

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error("spool {path}: cannot {op}: {source}; check the disk and the directory's permissions")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The disk (or the user's quota) is full: what could not be written was not taken.
    #[error("spool {path}: cannot {op}: {source}; the disk is full: free space in {dir} (or move spool.dir to a larger disk, or lower spool.max_bytes below the free space); meanwhile what is on disk still goes to Kafka, new records wait in memory and the source is held back")]
    NoSpace {
        /// The directory.
        dir: PathBuf,
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error (ENOSPC or EDQUOT).
        #[source]
        source: io::Error,
    },
    /// Another process holds the directory.
    #[error("spool {dir} is in use by another kgate ({holder}); stop it, or give this pipeline another `spool.dir`")]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// Who holds it, as far as its `LOCK` file says.
        holder: String,
    },
    /// A `.seg` file that kgate did not write (or a newer format).
    #[error("spool {path}: {problem}; move the file out of the spool directory")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The spool holds `max_bytes` and `on_full` refuses the record.
    #[error("spool {dir} is full ({used} bytes, max_bytes {max}): records wait until Kafka acknowledges older ones")]
    Full {
        /// The directory.
        dir: PathBuf,
        /// Bytes held.
        used: u64,
        /// The bound.
        max: u64,
    },
    /// One record larger than a segment or than [`MAX_RECORD`].
    #[error("a record of {len} bytes does not fit the spool {dir} (at most {max} bytes per record); raise spool.max_bytes")]
    TooLarge {
        /// The directory.
        dir: PathBuf,
        /// The record's size.
        len: u64,
        /// The most that fits.
        max: u64,
    },
}

impl SpoolError {
    fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> SpoolError + 'a {
        move |source| SpoolError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    /// Whether it is a full disk (or quota): it goes away once space is freed.
    pub fn is_no_space(&self) -> bool {
        matches!(self, SpoolError::NoSpace { .. })
    }
}

/// Whether `e` says the disk or the quota is full.
fn no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// A segment cut at a bad record when the spool was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment file.
    pub segment: PathBuf,
    /// Where it was cut (bytes from its start).
    pub offset: u64,
    /// How many bytes were cut off.
    pub bytes: u64,
    /// What was wrong at `offset`.
    pub reason: String,
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: cut at byte {} ({} bytes dropped): {}",
            self.segment.display(),
            self.offset,
            self.bytes,
            self.reason
        )
    }
}

/// What opening found.
#[derive(Debug, Clone, Default)]
pub struct Opened {
    /// Segments cut at a torn or corrupt record.
    pub truncations: Vec<Truncation>,
    /// Records not acked (to be produced again), in the segments kept.
    pub unacked: u64,
    /// The persisted ack watermark was unreadable (all records were kept as unacked).
    pub acks_lost: bool,
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number.
    pub seq: u64,
    /// When it was appended (unix ms).
    pub time_ms: u64,
    /// What was appended.
    pub payload: Vec<u8>,
}

/// The answer to an append.
#[derive(Debug)]
pub struct Appended {
    /// The record's sequence number.
    pub seq: u64,
    /// Completes once the record is on disk.
    pub durable: Durable,
    /// Records deleted unacked to make room (`on_full: drop_oldest`).
    pub dropped_oldest: u64,
    /// The buffer holds `batch_bytes`: flush now rather than at the interval.
    pub flush_now: bool,
}

/// Completes when its record is durable (written and fsynced).
#[derive(Debug, Clone)]
pub struct Durable {
    seq: u64,
    rx: watch::Receiver<u64>,
}

/// The spool went away (closed, or its process crashing) before the record was durable.
#[derive(Debug, thiserror::Error)]
#[error("the spool closed before the record was on disk")]
pub struct NotDurable;

impl Durable {
    /// Whether the record is on disk.
    pub fn is_durable(&self) -> bool {
        *self.rx.borrow() > self.seq
    }

    /// Waits until the record is on disk.
    pub async fn wait(mut self) -> Result<(), NotDurable> {
        let seq = self.seq;
        self.rx
            .wait_for(|d| *d > seq)
            .await
            .map(|_| ())
            .map_err(|_| NotDurable)
    }
}

/// The state of a spool, for metrics and `kgate check`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes in segment files and the unwritten buffer.
    pub bytes: u64,
    /// Records not acked.
    pub unacked: u64,
    /// Segment files.
    pub segments: usize,
    /// When the oldest unacked record was appended (unix ms; to within a few hundred records).
    pub oldest_ms: Option<u64>,
    /// The next sequence number.
    pub next_seq: u64,
    /// Every record below this is acked.
    pub watermark: u64,
    /// Appends since open.
    pub writes: u64,
    /// fsyncs since open.
    pub fsyncs: u64,
}

/// Where a reader is: the next sequence number it wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The next record to read.
    pub next_seq: u64,
    /// Its place: (segment's first seq, byte offset), when known.
    at: Option<(u64, u64)>,
}

impl Cursor {
    /// A cursor at `seq`.
    pub fn at(seq: u64) -> Cursor {
        Cursor {
            next_seq: seq,
            at: None,
        }
    }
}

#[derive(Debug)]
struct Segment {
    /// Its first sequence number (also its file name).
    first: u64,
    /// One past its last record (appended, written or not).
    end: u64,
    /// Its size once its buffered records are written.
    bytes: u64,
    /// Its size on disk (written, maybe not yet fsynced).
    written: u64,
    /// Bytes allocated for it ahead (the mapped segment being written), else 0.
    alloc: u64,
}

/// Work for the unlocked part of a flush: fsync these files, then [`Spool::complete`].
#[derive(Debug)]
pub struct SyncJob {
    files: Vec<File>,
    /// The last of `files` is the segment being written (cloned again by the next flush).
    has_active: bool,
    dir: Option<File>,
    acks: Option<(File, u64)>,
    upto: u64,
    /// Why the buffer could not be written (what was written before it is synced all the same).
    write_error: Option<SpoolError>,
}

impl SyncJob {
    /// fsyncs what was written (segments, the directory, the ack watermark).
    pub fn sync(&self) -> io::Result<u64> {
        let mut n = 0;
        for f in &self.files {
            f.sync_data()?;
            n += 1;
        }
        if let Some((f, w)) = &self.acks {
            f.write_all_at(&ack_bytes(*w), 0)?;
            f.sync_data()?;
            n += 1;
        }
        if let Some(d) = &self.dir {
            d.sync_all()?;
            n += 1;
        }
        Ok(n)
    }
}

/// An open spool; see the module docs.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    opts: SpoolOptions,
    _lock: File,
    acks_file: File,
    segments: VecDeque<Segment>,
    /// The last segment, open for appending (none after open, or once deleted).
    active: Option<File>,
    /// The active segment's file mapped whole (write-through, when it could be allocated).
    map: Option<memmap2::MmapMut>,
    /// How much of `map`, from its start, was handed back to the kernel (see
    /// [`Spool::release_mapped`]).
    released: usize,
    /// Files written since the last flush and not fsynced (closed segments).
    unsynced: Vec<File>,
    /// A segment was created or deleted: the directory needs an fsync.
    dir_dirty: bool,
    pending: Vec<u8>,
    /// The sequence number of the first record in `pending` (when it is not empty).
    pending_first: u64,
    next_seq: u64,
    durable: watch::Sender<u64>,
    watermark: u64,
    acked_above: BTreeSet<u64>,
    persisted: u64,
    index: VecDeque<(u64, u64)>,
    writes: u64,
    fsyncs: u64,
    /// The test seam for a full disk: the most bytes the segment files may hold together.
    #[cfg(test)]
    disk_cap: Option<u64>,
    /// The test seam for a killed process: dropped without cutting the mapped tail.
    #[cfg(test)]
    crashed: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ack_bytes(w: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&w.to_le_bytes());
    let crc = crc32fast::hash(&b[..8]);
    b[8..12].copy_from_slice(&crc.to_le_bytes());
    b
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// The segment files in `dir` by first sequence number, in order.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).map_err(SpoolError::io(dir, "list the directory"))? {
        let e = e.map_err(SpoolError::io(dir, "list the directory"))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".seg") {
            match stem.parse::<u64>() {
                Ok(first) => found.push((first, e.path())),
                Err(_) => {
                    return Err(SpoolError::Foreign {
                        path: e.path(),
                        problem: "a .seg file whose name is not a sequence number".into(),
                    })
                }
            }
        }
    }
    found.sort();
    Ok(found)
}

/// One segment file as read.
#[derive(Debug)]
pub struct Scanned {
    /// Its first sequence number.
    pub first: u64,
    /// One past its last good record.
    pub end: u64,
    /// Bytes up to the end of its last good record.
    pub good_len: u64,
    /// Its length on disk.
    pub file_len: u64,
    /// What is wrong past `good_len`, if anything (a tail of zeros only is not wrong: it was
    /// allocated and never written).
    pub bad: Option<String>,
    /// (seq, time) of every [`INDEX_EVERY`]th record, and of the first.
    samples: Vec<(u64, u64)>,
}

/// Reads a segment's header: `Ok(None)` when the file is too short to hold one (a segment
/// whose creation was torn).
fn read_header(path: &Path, f: &mut File) -> Result<Option<u64>, SpoolError> {
    let mut h = [0u8; HEADER_LEN as usize];
    let mut got = 0;
    while got < h.len() {
        match f.read(&mut h[got..]) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SpoolError::io(path, "read a segment")(e)),
        }
    }
    if &h[..8] != MAGIC {
        return Err(SpoolError::Foreign {
            path: path.to_path_buf(),
            problem: "not a kgate spool segment (its first bytes are not the spool's magic)".into(),
        });
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(SpoolError::Foreign {
            path: path.to_path_buf(),
            problem: format!("segment format {version}, and this kgate reads format {VERSION}"),
        });
    }
    Ok(Some(u64::from_le_bytes(
        h[12..20].try_into().expect("8 bytes"),
    )))
}

/// Reads a segment through, checking each record; stops at the first bad one. `on_record`
/// sees each good record (seq, time, payload).
pub fn scan_segment(
    path: &Path,
    mut on_record: impl FnMut(u64, u64, &[u8]),
) -> Result<Option<Scanned>, SpoolError> {
    let mut f = File::open(path).map_err(SpoolError::io(path, "open a segment"))?;
    let file_len = f
        .metadata()
        .map_err(SpoolError::io(path, "read a segment's size"))?
        .len();
    let Some(first) = read_header(path, &mut f)? else {
        return Ok(None);
    };
    let mut r = io::BufReader::with_capacity(256 * 1024, f);
    let mut s = Scanned {
        first,
        end: first,
        good_len: HEADER_LEN,
        file_len,
        bad: None,
        samples: Vec::new(),
    };
    let mut head = [0u8; FRAME_LEN as usize];
    let mut payload = Vec::new();
    while s.good_len < file_len {
        let left = file_len - s.good_len;
        let got = left.min(FRAME_LEN) as usize;
        r.read_exact(&mut head[..got])
            .map_err(SpoolError::io(path, "read a segment"))?;
        if head[..got].iter().all(|&b| b == 0) {
            // Allocated and never written (a mapped segment whose process was killed): the
            // end, when nothing but zeros follows.
            let rest = left - got as u64;
            if let Some(at) =
                first_nonzero(&mut r, rest).map_err(SpoolError::io(path, "read a segment"))?
            {
                s.bad = Some(format!(
                    "zeros from byte {}, then data again at byte {}",
                    s.good_len,
                    s.good_len + got as u64 + at
                ));
            }
            break;
        }
        if left < FRAME_LEN {
            s.bad = Some(format!("a torn record header ({left} bytes)"));
            break;
        }
        let len = u32::from_le_bytes(head[..4].try_into().expect("4")) as u64;
        let crc = u32::from_le_bytes(head[4..8].try_into().expect("4"));
        let seq = u64::from_le_bytes(head[8..16].try_into().expect("8"));
        let time = u64::from_le_bytes(head[16..24].try_into().expect("8"));
        if len > MAX_RECORD || len > left - FRAME_LEN {
            s.bad = Some(format!(
                "a torn record (it says {len} bytes, {} are left)",
                left - FRAME_LEN
            ));
            break;
        }
        payload.resize(len as usize, 0);
        r.read_exact(&mut payload)
            .map_err(SpoolError::io(path, "read a segment"))?;
        let mut h = crc32fast::Hasher::new();
        h.update(&head[8..24]);
        h.update(&payload);
        if h.finalize() != crc {
            s.bad = Some(format!("record {seq}: checksum mismatch"));
            break;
        }
        if seq != s.end {
            s.bad = Some(format!("record {seq} where {} was expected", s.end));
            break;
        }
        if seq == first || seq.is_multiple_of(INDEX_EVERY) {
            s.samples.push((seq, time));
        }
        on_record(seq, time, &payload);
        s.end = seq + 1;
        s.good_len += FRAME_LEN + len;
    }
    Ok(Some(s))
}

/// The offset of the first byte that is not zero among the next `len` of `r`.
fn first_nonzero(r: &mut impl Read, len: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = 0;
    while seen < len {
        let n = (len - seen).min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
            return Ok(Some(seen + i as u64));
        }
        seen += n as u64;
    }
    Ok(None)
}

/// Cuts the segment file at `path` to `len` bytes, durably; `op` names it in an error.
fn cut_segment(path: &Path, len: u64, op: &'static str) -> Result<(), SpoolError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(SpoolError::io(path, "open a segment"))?;
    f.set_len(len)
        .and_then(|_| f.sync_all())
        .map_err(SpoolError::io(path, op))
}

/// Takes the directory's lock, or says who holds it.
fn lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join("LOCK");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(SpoolError::io(&path, "open the lock file"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "pid unknown".to_string(),
                pid => format!("pid {pid}"),
            };
            return Err(SpoolError::Locked {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        return Err(SpoolError::io(&path, "lock the directory")(e));
    }
    let pid = std::process::id().to_string();
    f.set_len(0)
        .and_then(|_| f.write_all_at(pid.as_bytes(), 0))
        .map_err(SpoolError::io(&path, "write the lock file"))?;
    Ok(f)
}

/// Reads the persisted ack watermark: `None` when the file is torn.
fn read_acks(f: &mut File) -> io::Result<Option<u64>> {
    let mut b = Vec::new();
    f.seek(SeekFrom::Start(0))?;
    f.read_to_end(&mut b)?;
    if b.is_empty() {
        return Ok(Some(0));
    }
    if b.len() < 12 {
        return Ok(None);
    }
    let w = u64::from_le_bytes(b[..8].try_into().expect("8"));
    let crc = u32::from_le_bytes(b[8..12].try_into().expect("4"));
    Ok((crc32fast::hash(&b[..8]) == crc).then_some(w))
}

impl Spool {
    /// Opens (creating) the spool in `dir`: takes its lock, reads every segment, cuts torn or
    /// corrupt tails, deletes what is all acked. Un-acked records are then read with
    /// [`Spool::read`] from [`Spool::unacked_cursor`].
    pub fn open(dir: &Path, opts: SpoolOptions) -> Result<(Spool, Opened), SpoolError> {
        std::fs::create_dir_all(dir).map_err(SpoolError::io(dir, "create the directory"))?;
        let lock = lock(dir)?;
        let acks_path = dir.join("acks");
        let mut acks_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&acks_path)
            .map_err(SpoolError::io(&acks_path, "open the ack file"))?;
        let mut opened = Opened::default();
        let persisted = match read_acks(&mut acks_file)
            .map_err(SpoolError::io(&acks_path, "read the ack file"))?
        {
            Some(w) => w,
            None => {
                opened.acks_lost = true;
                0
            }
        };
        // The ack file holds its 16 bytes from the start: persisting the watermark overwrites
        // them in place, which needs no free space (a full disk must not stop acks).
        let acks_len = acks_file
            .metadata()
            .map_err(SpoolError::io(&acks_path, "read the ack file"))?
            .len();
        if acks_len != 16 {
            acks_file
                .set_len(0)
                .and_then(|_| acks_file.write_all_at(&ack_bytes(persisted), 0))
                .and_then(|_| acks_file.sync_data())
                .map_err(SpoolError::io(&acks_path, "write the ack file"))?;
        }
        let files = list_segments(dir)?;
        let mut segments = VecDeque::new();
        let mut index = VecDeque::new();
        let mut dir_dirty = false;
        for (name_first, path) in files {
            let scanned = scan_segment(&path, |_, _, _| {})?;
            let Some(s) = scanned else {
                // Its header was never completely written: it holds nothing.
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                opened.truncations.push(Truncation {
                    segment: path.clone(),
                    offset: 0,
                    bytes: len,
                    reason: "a torn segment header".into(),
                });
                std::fs::remove_file(&path).map_err(SpoolError::io(&path, "delete a segment"))?;
                dir_dirty = true;
                continue;
            };
            if s.first != name_first {
                return Err(SpoolError::Foreign {
                    path,
                    problem: format!(
                        "its header says it starts at record {}, its name at {name_first}",
                        s.first
                    ),
                });
            }
            if let Some(reason) = &s.bad {
                opened.truncations.push(Truncation {
                    segment: path.clone(),
                    offset: s.good_len,
                    bytes: s.file_len - s.good_len,
                    reason: reason.clone(),
                });
                cut_segment(&path, s.good_len, "cut a segment's bad tail")?;
            } else if s.good_len < s.file_len {
                // The unwritten rest of a segment that was mapped when its process died.
                cut_segment(&path, s.good_len, "cut a segment's unwritten tail")?;
            }
            let overlaps = segments.back().is_some_and(|p: &Segment| s.first < p.end);
            if s.end <= persisted || s.end == s.first || overlaps {
                // All acked, empty, or (impossible unless damaged) overlapping the one before.
                std::fs::remove_file(&path).map_err(SpoolError::io(&path, "delete a segment"))?;
                dir_dirty = true;
                continue;
            }
            index.extend(s.samples.iter().copied());
            segments.push_back(Segment {
                first: s.first,
                end: s.end,
                bytes: s.good_len,
                written: s.good_len,
                alloc: 0,
            });
        }
        let next_seq = segments.back().map_or(persisted, |s| s.end.max(persisted));
        let watermark = segments
            .front()
            .map_or(next_seq, |s| s.first.max(persisted));
        opened.unacked = segments
            .iter()
            .map(|s| s.end - s.first.max(watermark).min(s.end))
            .sum();
        let (durable, _) = watch::channel(next_seq);
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            opts,
            _lock: lock,
            acks_file,
            segments,
            active: None,
            map: None,
            released: 0,
            unsynced: Vec::new(),
            dir_dirty,
            pending: Vec::new(),
            pending_first: next_seq,
            next_seq,
            durable,
            watermark,
            acked_above: BTreeSet::new(),
            persisted,
            index,
            writes: 0,
            fsyncs: 0,
            #[cfg(test)]
            disk_cap: None,
            #[cfg(test)]
            crashed: false,
        };
        spool.advance();
        if spool.dir_dirty {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(SpoolError::io(dir, "fsync the directory"))?;
            spool.dir_dirty = false;
        }
        Ok((spool, opened))
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A cursor at the first record not acked.
    pub fn unacked_cursor(&self) -> Cursor {
        Cursor::at(self.watermark)
    }

    /// The next sequence number an append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes held: segment files plus the unwritten buffer.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Appends a record; it is durable once a flush completes (see [`Durable`]).
    ///
    /// With `write_through`, the record is written to its segment here; when that write fails
    /// (a full disk: [`SpoolError::NoSpace`]), the segment is cut back to its last whole record
    /// and the spool is as before the call: the record was not taken, the caller keeps it and
    /// tries again later (what is on disk meanwhile is flushed, read and acked as usual, and
    /// segments all acked are deleted, which frees space).
    pub fn append(&mut self, payload: &[u8]) -> Result<Appended, SpoolError> {
        let frame = FRAME_LEN + payload.len() as u64;
        let max_one = self
            .opts
            .max_bytes
            .saturating_sub(HEADER_LEN)
            .min(MAX_RECORD + FRAME_LEN);
        if frame > max_one {
            return Err(SpoolError::TooLarge {
                dir: self.dir.clone(),
                len: payload.len() as u64,
                max: max_one.saturating_sub(FRAME_LEN),
            });
        }
        let mut dropped_oldest = 0;
        loop {
            let starts_segment = self.needs_roll(frame);
            let need = frame + if starts_segment { HEADER_LEN } else { 0 };
            let used = self.bytes();
            if used + need <= self.opts.max_bytes {
                break;
            }
            let sealed = self.segments.len() - usize::from(self.active.is_some());
            if self.opts.on_full == OnFull::DropOldest && sealed > 0 {
                dropped_oldest += self.drop_oldest_segment()?;
                continue;
            }
            return Err(SpoolError::Full {
                dir: self.dir.clone(),
                used,
                max: self.opts.max_bytes,
            });
        }
        if self.needs_roll(frame) {
            self.start_segment(frame)?;
        }
        let seq = self.next_seq;
        let time = now_ms();
        let mut h = crc32fast::Hasher::new();
        h.update(&seq.to_le_bytes());
        h.update(&time.to_le_bytes());
        h.update(payload);
        let mut head = [0u8; FRAME_LEN as usize];
        head[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        head[4..8].copy_from_slice(&h.finalize().to_le_bytes());
        head[8..16].copy_from_slice(&seq.to_le_bytes());
        head[16..24].copy_from_slice(&time.to_le_bytes());
        // Into the kernel now: a killed process loses nothing it appended (only a power loss
        // can take what the next fsync has not made durable). Into the mapped segment when
        // there is one: a copy, no system call.
        if !self.write_mapped(&head, payload) {
            if self.pending.is_empty() {
                self.pending_first = seq;
            }
            let at = self.pending.len();
            self.pending.extend_from_slice(&head);
            self.pending.extend_from_slice(payload);
            if self.opts.write_through {
                if let Err(e) = self.write_pending() {
                    // Not taken: the spool stays as it was.
                    self.pending.truncate(at);
                    return Err(e);
                }
            }
        }
        let seg = self.segments.back_mut().expect("an active segment");
        seg.end = seq + 1;
        seg.bytes += frame;
        if seq.is_multiple_of(INDEX_EVERY) || self.index.is_empty() || seg.first == seq {
            self.index.push_back((seq, time));
        }
        self.next_seq += 1;
        self.writes += 1;
        Ok(Appended {
            seq,
            durable: Durable {
                seq,
                rx: self.durable.subscribe(),
            },
            dropped_oldest,
            flush_now: self.pending.len() as u64 >= self.opts.batch_bytes,
        })
    }

    /// Copies a record into the mapped segment being written: false when there is none or the
    /// record does not fit it (or records wait in the buffer, which go first).
    fn write_mapped(&mut self, head: &[u8], payload: &[u8]) -> bool {
        let (Some(map), Some(seg)) = (self.map.as_mut(), self.segments.back_mut()) else {
            return false;
        };
        let at = seg.written as usize;
        let end = at + head.len() + payload.len();
        if end > map.len() || !self.pending.is_empty() {
            return false;
        }
        // The payload before its header: a process killed between the two leaves zeros where
        // the header goes, and the next open cuts there.
        map[at + head.len()..end].copy_from_slice(payload);
        map[at..at + head.len()].copy_from_slice(head);
        seg.written = end as u64;
        true
    }

    /// Allocates `len` bytes for the new segment file `f` (its header written) and maps it;
    /// `None` when the file system cannot allocate (no space, or no `fallocate`) or map it:
    /// the segment is then written with `pwrite`, as it grows.
    fn allocate(&self, f: &File, len: u64) -> Option<memmap2::MmapMut> {
        use std::os::fd::AsRawFd;
        #[cfg(test)]
        if let Some(cap) = self.disk_cap {
            if self.disk_used() + len > cap {
                return None;
            }
        }
        let size = libc::off_t::try_from(len).ok()?;
        // SAFETY: fallocate on a descriptor this spool owns; no memory is passed.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size) };
        if rc != 0 {
            // What a failed call allocated goes again.
            let _ = f.set_len(HEADER_LEN);
            return None;
        }
        // SAFETY: the file is this spool's own (its directory is locked, see [`lock`]); it is
        // allocated whole, so a write to the map cannot fail for want of space, and it is not
        // shortened while mapped ([`Spool::seal_active`] unmaps first).
        match unsafe { memmap2::MmapOptions::new().len(len as usize).map_mut(f) } {
            Ok(m) => Some(m),
            Err(_) => {
                let _ = f.set_len(HEADER_LEN);
                None
            }
        }
    }

    /// Hands the whole pages of the mapped segment below what was written back to the kernel
    /// (`MADV_DONTNEED`): they stay in the page cache and the file, but no longer count in the
    /// process's resident memory, which would otherwise grow by up to a segment while one is
    /// written. Called after each flush; appends only touch the pages past them.
    fn release_mapped(&mut self) {
        let (Some(map), Some(seg)) = (self.map.as_ref(), self.segments.back()) else {
            return;
        };
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let upto = (seg.written as usize / page) * page;
        if upto <= self.released {
            return;
        }
        // SAFETY: a shared file mapping: what MADV_DONTNEED drops from the process is kept in
        // the page cache (written back as usual) and read back from it on the next access;
        // nothing is lost and no reference into the range is held.
        let advised = unsafe {
            map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.released,
                upto - self.released,
            )
        };
        if advised.is_ok() {
            self.released = upto;
        }
    }

    /// Unmaps the segment being written and cuts its file to what was written (a closed
    /// segment is as long as its records). A failed cut leaves a tail of zeros, which the next
    /// open cuts.
    fn seal_active(&mut self) {
        self.map = None;
        if let (Some(f), Some(seg)) = (self.active.as_ref(), self.segments.back_mut()) {
            if seg.alloc > seg.written && f.set_len(seg.written).is_ok() {
                seg.alloc = 0;
            }
        }
    }

    /// The bytes the segment files take on disk (the test seam of a full disk).
    #[cfg(test)]
    fn disk_used(&self) -> u64 {
        self.segments.iter().map(|s| s.written.max(s.alloc)).sum()
    }

    /// Drops the spool as a killed process would: the mapped segment is not cut.
    #[cfg(test)]
    pub(crate) fn crash(mut self) {
        self.crashed = true;
    }

    /// Writes `buf` at `offset` of segment file `f`.
    fn write_segment(&self, f: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        #[cfg(test)]
        if let Some(cap) = self.disk_cap {
            // A disk that holds `cap` bytes of segments: a longer write writes what fits, then
            // fails, as a real one does.
            let used = self.disk_used();
            let room = cap.saturating_sub(used);
            if buf.len() as u64 > room {
                f.write_all_at(&buf[..room as usize], offset)?;
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        f.write_all_at(buf, offset)
    }

    /// The error of a failed segment operation: [`SpoolError::NoSpace`] for a full disk.
    fn io_error(&self, path: &Path, op: &'static str, source: io::Error) -> SpoolError {
        if no_space(&source) {
            SpoolError::NoSpace {
                dir: self.dir.clone(),
                path: path.to_path_buf(),
                op,
                source,
            }
        } else {
            SpoolError::Io {
                path: path.to_path_buf(),
                op,
                source,
            }
        }
    }

    /// Makes the disk (in tests) hold at most `cap` bytes of segment files.
    #[cfg(test)]
    pub(crate) fn set_disk_cap(&mut self, cap: Option<u64>) {
        self.disk_cap = cap;
    }

    /// Closes the segment being written (its buffer written, its fsync left to the next flush)
    /// and creates the next one, for a first record of `frame` bytes: allocated and mapped
    /// whole when written through. When that fails, the spool is as it was.
    fn start_segment(&mut self, frame: u64) -> Result<(), SpoolError> {
        self.write_pending()?;
        let first = self.next_seq;
        let path = self.dir.join(segment_name(first));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| self.io_error(&path, "create a segment", e))?;
        let mut h = Vec::with_capacity(HEADER_LEN as usize);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&first.to_le_bytes());
        if let Err(e) = self.write_segment(&f, &h, 0) {
            // A torn header would be cut (and counted) at the next open: leave none.
            drop(f);
            let _ = std::fs::remove_file(&path);
            return Err(self.io_error(&path, "write a segment header", e));
        }
        let alloc = self.opts.segment_bytes.max(HEADER_LEN + frame);
        let map = if self.opts.write_through {
            self.allocate(&f, alloc)
        } else {
            None
        };
        self.seal_active();
        if let Some(old) = self.active.replace(f) {
            self.unsynced.push(old);
        }
        self.dir_dirty = true;
        self.segments.push_back(Segment {
            first,
            end: first,
            bytes: HEADER_LEN,
            written: HEADER_LEN,
            alloc: if map.is_some() { alloc } else { 0 },
        });
        self.map = map;
        self.released = 0;
        Ok(())
    }

    /// Writes the buffer to the segment being written (no fsync). When that fails, what part
    /// of it reached the file is cut off again (a full disk must not leave a torn record
    /// that later records would follow) and the buffer stays.
    fn write_pending(&mut self) -> Result<(), SpoolError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (Some(f), Some(seg)) = (self.active.as_ref(), self.segments.back()) else {
            unreachable!("buffered records belong to the active segment");
        };
        let at = seg.written;
        if let Err(e) = self.write_segment(f, &self.pending, at) {
            let _ = f.set_len(at);
            let path = self.dir.join(segment_name(seg.first));
            return Err(self.io_error(&path, "write a segment", e));
        }
        let seg = self.segments.back_mut().expect("an active segment");
        seg.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Deletes the oldest (closed) segment, acked or not; returns how many of its records
    /// were not acked.
    fn drop_oldest_segment(&mut self) -> Result<u64, SpoolError> {
        let seg = self.segments.pop_front().expect("a closed segment");
        let path = self.dir.join(segment_name(seg.first));
        std::fs::remove_file(&path).map_err(SpoolError::io(&path, "delete a segment"))?;
        self.dir_dirty = true;
        let from = seg.first.max(self.watermark);
        let acked = self.acked_above.range(from..seg.end).count() as u64;
        let dropped = seg.end.saturating_sub(from) - acked;
        if self.watermark < seg.end {
            self.watermark = seg.end;
            self.advance();
        }
        Ok(dropped)
    }

    /// Marks a record done. Acks of records below the watermark (or never appended) are
    /// ignored.
    pub fn ack(&mut self, seq: u64) {
        if seq < self.watermark || seq >= self.next_seq {
            return;
        }
        if seq == self.watermark {
            self.watermark += 1;
            self.advance();
        } else {
            self.acked_above.insert(seq);
        }
    }

    /// Moves the watermark over the acks above it, and over records that do not exist (the
    /// gap a cut segment leaves before the next one).
    fn advance(&mut self) {
        loop {
            while let Some(&s) = self.acked_above.first() {
                if s < self.watermark {
                    self.acked_above.pop_first();
                } else if s == self.watermark {
                    self.acked_above.pop_first();
                    self.watermark += 1;
                } else {
                    break;
                }
            }
            match self.segments.iter().find(|s| s.end > self.watermark) {
                Some(s) if s.first > self.watermark => self.watermark = s.first,
                _ => break,
            }
        }
        self.trim_index();
    }

    /// Whether a record of `frame` bytes starts a new segment.
    fn needs_roll(&self, frame: u64) -> bool {
        match (self.active.as_ref(), self.segments.back()) {
            (Some(_), Some(s)) => s.end > s.first && s.bytes + frame > self.opts.segment_bytes,
            _ => true,
        }
    }

    fn trim_index(&mut self) {
        while self.index.len() > 1 && self.index[1].0 <= self.watermark {
            self.index.pop_front();
        }
    }

    /// The first half of a flush, under the caller's lock: writes the buffer and says what to
    /// fsync. Then [`SyncJob::sync`] (without the lock) and [`Spool::complete`]. When the
    /// buffer cannot be written (a full disk), what was written before it is synced all the
    /// same (and acks persisted), and [`Spool::complete`] returns the write's error.
    pub fn begin_flush(&mut self) -> Result<SyncJob, SpoolError> {
        let write_error = self.write_pending().err();
        let clone = |f: &File, p: &Path| f.try_clone().map_err(SpoolError::io(p, "fsync"));
        // Everything that can fail first, so that a failure leaves the state as it was.
        let dir = if self.dir_dirty {
            Some(File::open(&self.dir).map_err(SpoolError::io(&self.dir, "open the directory"))?)
        } else {
            None
        };
        let acks = if self.watermark != self.persisted {
            Some((clone(&self.acks_file, &self.dir)?, self.watermark))
        } else {
            None
        };
        let active = match &self.active {
            Some(f) => Some(clone(f, &self.dir)?),
            None => None,
        };
        self.dir_dirty = false;
        let has_active = active.is_some();
        let mut files = std::mem::take(&mut self.unsynced);
        files.extend(active);
        Ok(SyncJob {
            files,
            has_active,
            dir,
            acks,
            upto: if self.pending.is_empty() {
                self.next_seq
            } else {
                self.pending_first
            },
            write_error,
        })
    }

    /// The last half of a flush: what `job` synced is durable; segments all acked by the
    /// persisted watermark are deleted. Then the error of its write, if the buffer could not be
    /// written.
    pub fn complete(&mut self, mut job: SyncJob, fsyncs: u64) -> Result<(), SpoolError> {
        self.fsyncs += fsyncs;
        if let Some((_, w)) = job.acks {
            self.persisted = self.persisted.max(w);
        }
        self.durable.send_if_modified(|d| {
            let moved = job.upto > *d;
            *d = (*d).max(job.upto);
            moved
        });
        while let Some(seg) = self.segments.front() {
            let last = self.segments.len() == 1;
            if seg.end > self.persisted || seg.end == seg.first {
                break;
            }
            if last {
                if seg.end != self.next_seq || !self.pending.is_empty() {
                    // Records come after it, or some of its own wait to be written.
                    break;
                }
                // The segment being written, all acked: it goes, and the next append starts
                // a new one.
                self.map = None;
                self.active = None;
            }
            let path = self.dir.join(segment_name(seg.first));
            std::fs::remove_file(&path).map_err(SpoolError::io(&path, "delete a segment"))?;
            self.dir_dirty = true;
            self.segments.pop_front();
        }
        self.release_mapped();
        match job.write_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Writes, fsyncs and completes in one call (for callers that hold the spool alone).
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        let job = self.begin_flush()?;
        match job.sync() {
            Ok(n) => self.complete(job, n),
            Err(e) => {
                self.abandon(job);
                Err(SpoolError::io(&self.dir, "fsync the spool")(e))
            }
        }
    }

    /// A flush whose fsync failed: what it was to sync is synced again by the next one.
    pub fn abandon(&mut self, job: SyncJob) {
        self.dir_dirty |= job.dir.is_some();
        let mut files = job.files;
        if job.has_active {
            files.pop();
        }
        self.unsynced.extend(files);
    }

    /// Reads up to `max` records from `cursor` on, in order, among those written to disk
    /// (not the unwritten buffer); skips records deleted by `drop_oldest` and acked ones below
    /// the watermark.
    pub fn read(&self, cursor: &mut Cursor, max: usize) -> Result<Vec<Record>, SpoolError> {
        let mut out = Vec::new();
        if cursor.next_seq < self.watermark {
            *cursor = Cursor::at(self.watermark);
        }
        while out.len() < max {
            // The segment holding the cursor's record, and where in it.
            let Some(i) = self.segments.iter().position(|s| s.end > cursor.next_seq) else {
                break;
            };
            let seg = &self.segments[i];
            if seg.first > cursor.next_seq {
                *cursor = Cursor::at(seg.first);
            }
            let mut offset = match cursor.at {
                Some((first, off)) if first == seg.first => off,
                _ => HEADER_LEN,
            };
            if offset >= seg.written {
                break;
            }
            let path = self.dir.join(segment_name(seg.first));
            let f = File::open(&path).map_err(SpoolError::io(&path, "open a segment"))?;
            // Whole frames from one read of up to READ_CHUNK bytes (more when one record is
            // larger), parsed in place: no zeroed buffer per call or per record.
            let mut buf: Vec<u8> = Vec::new();
            while out.len() < max && offset < seg.written {
                let left = seg.written - offset;
                let want = match (buf.len() as u64) < FRAME_LEN {
                    true => left.min(READ_CHUNK),
                    // A record larger than the chunk: read it whole.
                    false => left.min(
                        FRAME_LEN + u64::from(u32::from_le_bytes(buf[..4].try_into().expect("4"))),
                    ),
                };
                let whole_record = !buf.is_empty();
                buf.clear();
                buf.reserve(want as usize);
                let mut file = &f;
                file.seek(SeekFrom::Start(offset))
                    .map_err(SpoolError::io(&path, "read a segment"))?;
                file.take(want)
                    .read_to_end(&mut buf)
                    .map_err(SpoolError::io(&path, "read a segment"))?;
                if (buf.len() as u64) < want {
                    return Err(SpoolError::io(&path, "read a segment")(io::Error::from(
                        io::ErrorKind::UnexpectedEof,
                    )));
                }
                let mut pos = 0usize;
                while out.len() < max && pos + FRAME_LEN as usize <= buf.len() {
                    let head = &buf[pos..pos + FRAME_LEN as usize];
                    let len = u32::from_le_bytes(head[..4].try_into().expect("4")) as usize;
                    let end = pos + FRAME_LEN as usize + len;
                    if end > buf.len() {
                        break;
                    }
                    let seq = u64::from_le_bytes(head[8..16].try_into().expect("8"));
                    let time = u64::from_le_bytes(head[16..24].try_into().expect("8"));
                    if seq >= cursor.next_seq && seq >= self.watermark {
                        out.push(Record {
                            seq,
                            time_ms: time,
                            payload: buf[pos + FRAME_LEN as usize..end].to_vec(),
                        });
                        cursor.next_seq = seq + 1;
                    }
                    pos = end;
                }
                offset += pos as u64;
                if pos == 0 {
                    if whole_record || buf.len() < FRAME_LEN as usize {
                        // Written bytes are whole records; nothing more to read here.
                        break;
                    }
                    // Not even one whole frame in the chunk: keep its head, so that the next
                    // read takes the whole record.
                    buf.truncate(FRAME_LEN as usize);
                } else {
                    buf.clear();
                }
            }
            cursor.at = Some((seg.first, offset));
            if offset >= seg.written && seg.end > cursor.next_seq {
                // Its last records are still in the buffer.
                break;
            }
        }
        Ok(out)
    }

    /// Writes the buffer to its segment without an fsync, so that [`Spool::read`] sees it.
    pub fn write_buffered(&mut self) -> Result<(), SpoolError> {
        self.write_pending()
    }

    /// Whether a flush has anything to do: records to write or fsync, acks to persist.
    pub fn is_dirty(&self) -> bool {
        !self.pending.is_empty()
            || !self.unsynced.is_empty()
            || self.dir_dirty
            || self.watermark != self.persisted
            || *self.durable.borrow() < self.next_seq
    }

    /// A handle on the durability of record `seq` (appended earlier).
    pub fn durable_handle(&self, seq: u64) -> Durable {
        Durable {
            seq,
            rx: self.durable.subscribe(),
        }
    }

    /// Whether records from `cursor` on are waiting in the buffer (not yet readable).
    pub fn buffered_after(&self, cursor: &Cursor) -> bool {
        !self.pending.is_empty() && self.next_seq > cursor.next_seq
    }

    /// Its state.
    pub fn stats(&self) -> Stats {
        let oldest_ms = (self.watermark < self.next_seq)
            .then(|| self.index.front().map(|&(_, t)| t))
            .flatten();
        Stats {
            bytes: self.bytes(),
            unacked: self.next_seq - self.watermark - self.acked_above.len() as u64,
            segments: self.segments.len(),
            oldest_ms,
            next_seq: self.next_seq,
            watermark: self.watermark,
            writes: self.writes,
            fsyncs: self.fsyncs,
        }
    }
}

impl Drop for Spool {
    /// Cuts the segment being written to its records (see [`Spool::seal_active`]).
    fn drop(&mut self) {
        #[cfg(test)]
        if self.crashed {
            return;
        }
        self.seal_active();
    }
}

/// A spool directory as found on disk, read without taking its lock or changing anything
/// (`kgate spool inspect`).
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The directory.
    pub dir: PathBuf,
    /// Its segments, in order.
    pub segments: Vec<SegmentInfo>,
    /// The persisted ack watermark (`None`: unreadable).
    pub watermark: Option<u64>,
    /// Records at or above the watermark.
    pub unacked: u64,
    /// When the oldest of them was appended (unix ms).
    pub oldest_ms: Option<u64>,
    /// Who holds its lock, if a process does.
    pub locked_by: Option<String>,
}

/// One segment as found.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// Its file.
    pub path: PathBuf,
    /// Its first sequence number.
    pub first: u64,
    /// Its good records.
    pub records: u64,
    /// The bytes of its header and good records.
    pub bytes: u64,
    /// Its file's length: more than `bytes` while it is allocated ahead (the segment being
    /// written, or one a killed process left) or has a bad tail.
    pub file_len: u64,
    /// What is wrong with its tail (cut at the next open), if anything.
    pub bad: Option<String>,
}

/// Reads a spool directory without changing it.
pub fn inspect(dir: &Path) -> Result<Inspection, SpoolError> {
    let acks_path = dir.join("acks");
    let watermark = match File::open(&acks_path) {
        Ok(mut f) => read_acks(&mut f).map_err(SpoolError::io(&acks_path, "read the ack file"))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(0),
        Err(e) => return Err(SpoolError::io(&acks_path, "read the ack file")(e)),
    };
    let w = watermark.unwrap_or(0);
    let mut segments = Vec::new();
    let mut unacked = 0;
    let mut oldest_ms = None;
    for (_, path) in list_segments(dir)? {
        let mut oldest = None;
        let s = scan_segment(&path, |seq, time, _| {
            if seq >= w && oldest.is_none() {
                oldest = Some(time);
            }
        })?;
        let file_len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let (first, records, bytes, bad) = match s {
            Some(s) => {
                unacked += s.end - s.first.max(w).min(s.end);
                (s.first, s.end - s.first, s.good_len, s.bad)
            }
            None => (0, 0, 0, Some("a torn segment header".into())),
        };
        oldest_ms = oldest_ms.or(oldest);
        segments.push(SegmentInfo {
            path,
            first,
            records,
            bytes,
            file_len,
            bad,
        });
    }
    let locked_by = match OpenOptions::new().read(true).open(dir.join("LOCK")) {
        Ok(mut f) => {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor this function owns.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
            if rc == 0 {
                None
            } else {
                let mut pid = String::new();
                let _ = f.read_to_string(&mut pid);
                Some(format!("pid {}", pid.trim()))
            }
        }
        Err(_) => None,
    };
    Ok(Inspection {
        dir: dir.to_path_buf(),
        segments,
        watermark,
        unacked,
        oldest_ms,
        locked_by,
    })
}
