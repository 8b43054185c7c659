//! The spool's unit tests and its model check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use proptest::prelude::*;

use super::*;

fn opts(segment_bytes: u64, max_bytes: u64, on_full: OnFull) -> SpoolOptions {
    SpoolOptions {
        max_bytes,
        segment_bytes,
        batch_bytes: 1 << 20,
        on_full,
        write_through: false,
    }
}

fn big() -> SpoolOptions {
    opts(1 << 20, 1 << 30, OnFull::Block)
}

/// Every record from the first unacked on.
fn read_all(s: &Spool) -> Vec<Record> {
    let mut c = s.unacked_cursor();
    let mut out = Vec::new();
    loop {
        let got = s.read(&mut c, 7).unwrap();
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

fn seqs(r: &[Record]) -> Vec<u64> {
    r.iter().map(|r| r.seq).collect()
}

fn payload(i: u64) -> Vec<u8> {
    format!("record-{i}").into_bytes()
}

/// Bytes in the segment files of `dir`.
fn disk_used(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

#[test]
fn records_come_back_in_order_until_acked() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, o) = Spool::open(d.path(), big()).unwrap();
    assert_eq!(o.unacked, 0);
    let handles: Vec<_> = (0..10).map(|i| s.append(&payload(i)).unwrap()).collect();
    assert!(handles.iter().all(|h| !h.durable.is_durable()));
    s.flush().unwrap();
    assert!(handles.iter().all(|h| h.durable.is_durable()));
    for i in [0, 1, 2, 5] {
        s.ack(i);
    }
    assert_eq!(s.stats().unacked, 6);
    assert_eq!(s.stats().watermark, 3);
    s.flush().unwrap();
    drop(s);
    let (s, o) = Spool::open(d.path(), big()).unwrap();
    // 5 was acked above a gap: not persisted, so it comes back (a counted duplicate).
    assert_eq!(o.unacked, 7);
    let got = read_all(&s);
    assert_eq!(seqs(&got), vec![3, 4, 5, 6, 7, 8, 9]);
    assert!(got.iter().all(|r| r.payload == payload(r.seq)));
    assert_eq!(s.next_seq(), 10);
}

#[test]
fn records_larger_and_smaller_than_a_read_chunk_come_back_whole() {
    // Reads go by chunks of READ_CHUNK bytes: records straddle chunks, and some are larger
    // than a chunk (read whole), with small ones between them.
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), opts(8 << 20, 1 << 30, OnFull::Block)).unwrap();
    let chunk = READ_CHUNK as usize;
    let sizes = [
        10,
        chunk - FRAME_LEN as usize,
        chunk,
        3,
        3 * chunk + 7,
        chunk / 2,
        chunk / 2,
        chunk / 2,
        0,
        1,
    ];
    let body = |i: usize, n: usize| (0..n).map(|k| (i * 31 + k) as u8).collect::<Vec<u8>>();
    for (i, &n) in sizes.iter().enumerate() {
        s.append(&body(i, n)).unwrap();
    }
    s.flush().unwrap();
    for max in [1, 2, 3, 64] {
        let mut c = s.unacked_cursor();
        let mut got = Vec::new();
        loop {
            let batch = s.read(&mut c, max).unwrap();
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= max);
            got.extend(batch);
        }
        assert_eq!(
            seqs(&got),
            (0..sizes.len() as u64).collect::<Vec<_>>(),
            "max {max}"
        );
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.payload, body(i, sizes[i]), "record {i}, max {max}");
        }
    }
}

#[test]
fn a_second_open_of_the_same_dir_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (_s, _) = Spool::open(d.path(), big()).unwrap();
    let e = Spool::open(d.path(), big()).unwrap_err();
    assert!(matches!(e, SpoolError::Locked { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{e}"
    );
}

#[test]
fn a_torn_tail_is_cut_and_what_precedes_it_kept() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), big()).unwrap();
    for i in 0..5 {
        s.append(&payload(i)).unwrap();
    }
    s.flush().unwrap();
    drop(s);
    let seg = &segment_files(d.path())[0];
    let len = std::fs::metadata(seg).unwrap().len();
    // The last record's last 3 bytes never made it.
    let f = OpenOptions::new().write(true).open(seg).unwrap();
    f.set_len(len - 3).unwrap();
    let (s, o) = Spool::open(d.path(), big()).unwrap();
    assert_eq!(o.truncations.len(), 1, "{:?}", o.truncations);
    let t = &o.truncations[0];
    assert_eq!(t.bytes, FRAME_LEN + payload(4).len() as u64 - 3);
    assert!(t.reason.contains("torn"), "{t}");
    assert_eq!(seqs(&read_all(&s)), vec![0, 1, 2, 3]);
    assert_eq!(std::fs::metadata(seg).unwrap().len(), t.offset);
    // Appends go on after the cut, and the next open finds nothing wrong.
    let mut s = s;
    assert_eq!(s.append(b"next").unwrap().seq, 4);
    s.flush().unwrap();
    drop(s);
    let (s, o) = Spool::open(d.path(), big()).unwrap();
    assert!(o.truncations.is_empty());
    assert_eq!(seqs(&read_all(&s)), vec![0, 1, 2, 3, 4]);
}

#[test]
fn a_corrupt_middle_record_keeps_everything_before_it() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), big()).unwrap();
    for i in 0..10 {
        s.append(&payload(i)).unwrap();
    }
    s.flush().unwrap();
    drop(s);
    let seg = &segment_files(d.path())[0];
    let mut bytes = std::fs::read(seg).unwrap();
    // Flip one payload byte of record 5.
    let at = HEADER_LEN as usize
        + (0..5)
            .map(|i| FRAME_LEN as usize + payload(i).len())
            .sum::<usize>()
        + FRAME_LEN as usize
        + 2;
    bytes[at] ^= 0x40;
    std::fs::write(seg, &bytes).unwrap();
    let insp = inspect(d.path()).unwrap();
    assert_eq!(insp.segments[0].records, 5);
    assert!(insp.segments[0]
        .bad
        .as_deref()
        .unwrap()
        .contains("checksum"));
    let (s, o) = Spool::open(d.path(), big()).unwrap();
    assert_eq!(o.truncations.len(), 1);
    assert!(o.truncations[0].reason.contains("record 5: checksum"));
    assert_eq!(seqs(&read_all(&s)), vec![0, 1, 2, 3, 4]);
    assert_eq!(o.unacked, 5);
}

#[test]
fn a_cut_segment_leaves_a_gap_the_acks_step_over() {
    let d = tempfile::tempdir().unwrap();
    // Segments of ~3 records each.
    let o3 = opts(HEADER_LEN + 3 * (FRAME_LEN + 8), 1 << 30, OnFull::Block);
    let (mut s, _) = Spool::open(d.path(), o3).unwrap();
    for i in 0..9 {
        s.append(&payload(i)).unwrap();
    }
    s.flush().unwrap();
    drop(s);
    let files = segment_files(d.path());
    assert_eq!(files.len(), 3);
    // The middle segment loses its last record.
    let len = std::fs::metadata(&files[1]).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&files[1])
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let (mut s, o) = Spool::open(d.path(), o3).unwrap();
    assert_eq!(o.truncations.len(), 1);
    let got = seqs(&read_all(&s));
    assert_eq!(got, vec![0, 1, 2, 3, 4, 6, 7, 8]);
    for q in got {
        s.ack(q);
    }
    assert_eq!(s.stats().unacked, 0);
    s.flush().unwrap();
    assert!(segment_files(d.path()).is_empty());
}

#[test]
fn segments_are_deleted_once_all_their_records_are_acked() {
    let d = tempfile::tempdir().unwrap();
    let o3 = opts(HEADER_LEN + 3 * (FRAME_LEN + 8), 1 << 30, OnFull::Block);
    let (mut s, _) = Spool::open(d.path(), o3).unwrap();
    for i in 0..9 {
        s.append(&payload(i)).unwrap();
    }
    s.flush().unwrap();
    assert_eq!(segment_files(d.path()).len(), 3);
    for i in 0..4 {
        s.ack(i);
    }
    s.flush().unwrap();
    // The first segment (0..3) is gone; the second holds 3, acked, and 4, 5, not.
    assert_eq!(segment_files(d.path()).len(), 2);
    assert_eq!(s.stats().segments, 2);
    for i in 4..9 {
        s.ack(i);
    }
    s.flush().unwrap();
    assert!(segment_files(d.path()).is_empty());
    assert_eq!(s.stats().bytes, 0);
    assert_eq!(s.stats().oldest_ms, None);
    // Sequence numbers go on after everything was deleted, also across a restart.
    drop(s);
    let (mut s, o) = Spool::open(d.path(), o3).unwrap();
    assert_eq!(o.unacked, 0);
    assert_eq!(s.append(b"x").unwrap().seq, 9);
}

#[test]
fn max_bytes_block_refuses_until_acks_free_room() {
    let d = tempfile::tempdir().unwrap();
    let frame = FRAME_LEN + 8;
    let o = opts(
        HEADER_LEN + 2 * frame,
        2 * (HEADER_LEN + 2 * frame),
        OnFull::Block,
    );
    let (mut s, _) = Spool::open(d.path(), o).unwrap();
    for i in 0..4 {
        s.append(&payload(i)).unwrap();
    }
    let e = s.append(&payload(4)).unwrap_err();
    assert!(matches!(e, SpoolError::Full { .. }), "{e}");
    s.flush().unwrap();
    s.ack(0);
    s.ack(1);
    s.flush().unwrap();
    assert_eq!(s.append(&payload(4)).unwrap().seq, 4);
    assert_eq!(s.stats().unacked, 3);
}

#[test]
fn max_bytes_drop_newest_refuses_the_new_record() {
    let d = tempfile::tempdir().unwrap();
    let frame = FRAME_LEN + 8;
    let o = opts(
        HEADER_LEN + 2 * frame,
        2 * (HEADER_LEN + 2 * frame),
        OnFull::DropNewest,
    );
    let (mut s, _) = Spool::open(d.path(), o).unwrap();
    for i in 0..4 {
        s.append(&payload(i)).unwrap();
    }
    assert!(matches!(
        s.append(&payload(4)),
        Err(SpoolError::Full { .. })
    ));
    s.flush().unwrap();
    drop(s);
    let (s, _) = Spool::open(d.path(), o).unwrap();
    assert_eq!(seqs(&read_all(&s)), vec![0, 1, 2, 3]);
}

#[test]
fn max_bytes_drop_oldest_deletes_the_oldest_segment() {
    let d = tempfile::tempdir().unwrap();
    let frame = FRAME_LEN + 8;
    let o = opts(
        HEADER_LEN + 2 * frame,
        2 * (HEADER_LEN + 2 * frame),
        OnFull::DropOldest,
    );
    let (mut s, _) = Spool::open(d.path(), o).unwrap();
    for i in 0..4 {
        assert_eq!(s.append(&payload(i)).unwrap().dropped_oldest, 0);
    }
    s.ack(1);
    let a = s.append(&payload(4)).unwrap();
    // Segment 0..2 went; 1 was acked, so one unacked record was dropped.
    assert_eq!(a.dropped_oldest, 1);
    assert_eq!(s.stats().watermark, 2);
    s.flush().unwrap();
    drop(s);
    let (s, o) = Spool::open(d.path(), o).unwrap();
    assert_eq!(o.unacked, 3);
    assert_eq!(seqs(&read_all(&s)), vec![2, 3, 4]);
}

#[test]
fn a_record_larger_than_max_bytes_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), opts(1000, 1000, OnFull::Block)).unwrap();
    let e = s.append(&[0u8; 2000]).unwrap_err();
    assert!(matches!(e, SpoolError::TooLarge { .. }), "{e}");
}

#[test]
fn a_foreign_segment_is_not_touched() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join(segment_name(0)),
        b"not a spool segment at all",
    )
    .unwrap();
    let e = Spool::open(d.path(), big()).unwrap_err();
    assert!(matches!(e, SpoolError::Foreign { .. }), "{e}");
    assert!(d.path().join(segment_name(0)).exists());
}

#[tokio::test]
async fn a_durable_handle_completes_at_the_flush() {
    let d = tempfile::tempdir().unwrap();
    let (mut s, _) = Spool::open(d.path(), big()).unwrap();
    let a = s.append(b"x").unwrap();
    let b = s.append(b"y").unwrap();
    let waiter = tokio::spawn(a.durable.wait());
    s.flush().unwrap();
    waiter.await.unwrap().unwrap();
    let c = s.append(b"z").unwrap();
    drop(s);
    assert!(b.durable.wait().await.is_ok());
    assert!(c.durable.wait().await.is_err());
}

#[test]
fn reads_follow_appends_across_segments() {
    let d = tempfile::tempdir().unwrap();
    let o3 = opts(HEADER_LEN + 3 * (FRAME_LEN + 8), 1 << 30, OnFull::Block);
    let (mut s, _) = Spool::open(d.path(), o3).unwrap();
    let mut c = s.unacked_cursor();
    let mut got = Vec::new();
    for i in 0..20 {
        s.append(&payload(i)).unwrap();
        if i % 4 == 3 {
            s.flush().unwrap();
            got.extend(s.read(&mut c, 2).unwrap());
        }
    }
    s.flush().unwrap();
    loop {
        let r = s.read(&mut c, 3).unwrap();
        if r.is_empty() {
            break;
        }
        got.extend(r);
    }
    assert_eq!(seqs(&got), (0..20).collect::<Vec<_>>());
}

fn write_through(segment_bytes: u64) -> SpoolOptions {
    SpoolOptions {
        write_through: true,
        ..opts(segment_bytes, 1 << 30, OnFull::Block)
    }
}

#[test]
fn a_written_through_segment_is_allocated_whole_and_closed_at_its_records() {
    let d = tempfile::tempdir().unwrap();
    let seg = 64 * 1024;
    let (mut s, _) = Spool::open(d.path(), write_through(seg)).unwrap();
    for i in 0..10 {
        s.append(&payload(i)).unwrap();
    }
    // Allocated whole (and mapped): the file is a segment long before it is full.
    let files = segment_files(d.path());
    assert_eq!(files.len(), 1);
    assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), seg);
    // What was copied into the map is read back before any flush.
    assert_eq!(seqs(&read_all(&s)), (0..10).collect::<Vec<_>>());
    // Past a segment's worth, the first is closed: cut to its records exactly.
    let mut i = 10;
    while segment_files(d.path()).len() < 2 {
        s.append(&payload(i)).unwrap();
        i += 1;
    }
    let files = segment_files(d.path());
    let first = scan_segment(&files[0], |_, _, _| {}).unwrap().unwrap();
    assert_eq!(first.good_len, first.file_len);
    assert!(first.bad.is_none());
    // Closed on drop too.
    s.flush().unwrap();
    drop(s);
    let last = scan_segment(&files[1], |_, _, _| {}).unwrap().unwrap();
    assert_eq!(last.good_len, last.file_len);
    let (s, opened) = Spool::open(d.path(), write_through(seg)).unwrap();
    assert!(opened.truncations.is_empty(), "{:?}", opened.truncations);
    assert_eq!(seqs(&read_all(&s)), (0..i).collect::<Vec<_>>());
}

/// The resident kB of the mapping of `path` in this process (`/proc/self/smaps`).
fn resident_kb(path: &Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = path.to_str().unwrap();
    let mut lines = smaps.lines();
    while let Some(l) = lines.next() {
        if l.ends_with(name) {
            for l in lines.by_ref() {
                if let Some(kb) = l.strip_prefix("Rss:") {
                    return kb.trim().trim_end_matches("kB").trim().parse().unwrap();
                }
            }
        }
    }
    panic!("{name} is not mapped");
}

#[test]
fn the_mapped_pages_below_a_flush_leave_the_resident_memory() {
    let d = tempfile::tempdir().unwrap();
    let seg = 64 * 1024 * 1024;
    let (mut s, _) = Spool::open(d.path(), write_through(seg)).unwrap();
    let record = vec![7u8; 1000];
    for _ in 0..4096 {
        s.append(&record).unwrap();
    }
    let path = segment_files(d.path()).pop().unwrap();
    // ~4 MiB written into the map: resident until a flush.
    let before = resident_kb(&path);
    assert!(before >= 4000, "{before} kB resident before the flush");
    s.flush().unwrap();
    let after = resident_kb(&path);
    assert!(after <= 8, "{after} kB resident after the flush");
    // Still there for reads, and appends go on past them.
    s.append(&record).unwrap();
    s.flush().unwrap();
    let got = read_all(&s);
    assert_eq!(got.len(), 4097);
    assert!(got.iter().all(|r| r.payload == record));
}

#[test]
fn a_killed_process_leaves_zeros_that_are_cut_without_counting_damage() {
    let d = tempfile::tempdir().unwrap();
    let seg = 64 * 1024;
    let (mut s, _) = Spool::open(d.path(), write_through(seg)).unwrap();
    for i in 0..100 {
        s.append(&payload(i)).unwrap();
    }
    // Killed: no flush, no close. What was appended is in the file (the page cache).
    s.crash();
    let files = segment_files(d.path());
    assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), seg);
    let inspected = inspect(d.path()).unwrap();
    assert_eq!(inspected.unacked, 100);
    assert!(inspected.segments[0].bad.is_none());
    let (s, opened) = Spool::open(d.path(), write_through(seg)).unwrap();
    assert!(opened.truncations.is_empty(), "{:?}", opened.truncations);
    assert_eq!(opened.unacked, 100);
    let got = read_all(&s);
    assert_eq!(seqs(&got), (0..100).collect::<Vec<_>>());
    assert!(got.iter().all(|r| r.payload == payload(r.seq)));
    // The zeros were cut: the file is its records.
    let scanned = scan_segment(&files[0], |_, _, _| {}).unwrap().unwrap();
    assert_eq!(scanned.good_len, scanned.file_len);
}

#[test]
fn zeros_followed_by_data_are_damage() {
    let d = tempfile::tempdir().unwrap();
    let seg = 64 * 1024;
    let (mut s, _) = Spool::open(d.path(), write_through(seg)).unwrap();
    for i in 0..5 {
        s.append(&payload(i)).unwrap();
    }
    s.crash();
    let path = segment_files(d.path()).pop().unwrap();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"junk", seg - 100).unwrap();
    let (s, opened) = Spool::open(d.path(), write_through(seg)).unwrap();
    assert_eq!(opened.truncations.len(), 1, "{:?}", opened.truncations);
    assert!(
        opened.truncations[0].reason.contains("then data again"),
        "{:?}",
        opened.truncations
    );
    assert_eq!(seqs(&read_all(&s)), (0..5).collect::<Vec<_>>());
}

#[test]
fn a_disk_without_room_for_a_whole_segment_is_written_as_it_grows() {
    let d = tempfile::tempdir().unwrap();
    let seg = 64 * 1024;
    let (mut s, _) = Spool::open(d.path(), write_through(seg)).unwrap();
    // Less room than a segment: no allocation, records are written one by one until the
    // disk is full.
    s.set_disk_cap(Some(seg / 2));
    let taken = fill(&mut s, 0);
    assert!(taken > 0);
    let files = segment_files(d.path());
    assert!(std::fs::metadata(&files[0]).unwrap().len() <= seg / 2);
    s.flush().unwrap();
    assert_eq!(seqs(&read_all(&s)), (0..taken).collect::<Vec<_>>());
}

// ---- The model check ----

/// How a crash leaves the last segment.
/// Appends `payload(i)` from `from` on until the disk refuses one; returns how many it took.
fn fill(s: &mut Spool, from: u64) -> u64 {
    let mut i = from;
    loop {
        let before = s.stats();
        match s.append(&payload(i)) {
            Ok(_) => i += 1,
            Err(e) => {
                assert!(e.is_no_space(), "{e}");
                assert!(e.to_string().contains("free space in"), "{e}");
                let after = s.stats();
                assert_eq!(
                    (after.next_seq, after.unacked, after.writes, after.bytes),
                    (before.next_seq, before.unacked, before.writes, before.bytes),
                    "a refused append changed the spool"
                );
                return i - from;
            }
        }
    }
}

#[test]
fn a_full_disk_refuses_appends_and_what_is_on_disk_still_drains() {
    let d = tempfile::tempdir().unwrap();
    // Write-through (as kgate runs it), segments of ~10 records.
    let o = SpoolOptions {
        write_through: true,
        ..opts(HEADER_LEN + 10 * (FRAME_LEN + 10), 1 << 30, OnFull::Block)
    };
    let (mut s, _) = Spool::open(d.path(), o).unwrap();
    // A disk that holds 3.5 segments.
    let cap = 35 * (FRAME_LEN + 10) + 4 * HEADER_LEN;
    s.set_disk_cap(Some(cap));
    let taken = fill(&mut s, 0);
    assert!((30..=45).contains(&taken), "{taken} taken");
    // Refused again, each time, with nothing changed.
    assert_eq!(fill(&mut s, taken), 0);
    assert!(disk_used(d.path()) <= cap);
    // What was written is made durable although the disk is still full, and read back.
    s.flush().unwrap();
    let got = read_all(&s);
    assert_eq!(seqs(&got), (0..taken).collect::<Vec<_>>());
    // Kafka takes them: all acked, the segments go (the one being written too), space is back.
    for r in &got {
        s.ack(r.seq);
    }
    s.flush().unwrap();
    assert_eq!(s.stats().segments, 0);
    assert_eq!(disk_used(d.path()), 0);
    // The disk is still as small, and takes records again: the one refused first is next.
    let again = fill(&mut s, taken);
    assert!((30..=45).contains(&again), "{again} taken");
    s.flush().unwrap();
    let got = read_all(&s);
    assert_eq!(seqs(&got), (taken..taken + again).collect::<Vec<_>>());
    assert!(got.iter().all(|r| r.payload == payload(r.seq)));
    // Nothing on disk is torn: the next open cuts nothing and finds them all.
    drop(s);
    let (s, opened) = Spool::open(d.path(), o).unwrap();
    assert!(opened.truncations.is_empty(), "{:?}", opened.truncations);
    assert_eq!(opened.unacked, again);
    assert_eq!(
        seqs(&read_all(&s)),
        (taken..taken + again).collect::<Vec<_>>()
    );
}

#[test]
fn a_full_disk_at_a_flush_makes_what_was_written_durable() {
    let d = tempfile::tempdir().unwrap();
    // Buffered appends (no write-through): the flush writes them.
    let (mut s, _) = Spool::open(d.path(), big()).unwrap();
    let first: Vec<_> = (0..5).map(|i| s.append(&payload(i)).unwrap()).collect();
    s.flush().unwrap();
    s.set_disk_cap(Some(disk_used(d.path()) + 10));
    let second: Vec<_> = (5..10).map(|i| s.append(&payload(i)).unwrap()).collect();
    s.ack(0);
    let e = s.flush().unwrap_err();
    assert!(e.is_no_space(), "{e}");
    assert!(first.iter().all(|a| a.durable.is_durable()));
    assert!(second.iter().all(|a| !a.durable.is_durable()));
    // The acks were persisted all the same; the torn part of the write was cut.
    assert_eq!(seqs(&read_all(&s)), vec![1, 2, 3, 4]);
    // Space freed: the next flush writes them.
    s.set_disk_cap(None);
    s.flush().unwrap();
    assert!(second.iter().all(|a| a.durable.is_durable()));
    drop(s);
    let (s, opened) = Spool::open(d.path(), big()).unwrap();
    assert!(opened.truncations.is_empty(), "{:?}", opened.truncations);
    assert_eq!(seqs(&read_all(&s)), (1..10).collect::<Vec<_>>());
}

#[derive(Debug, Clone)]
enum Tear {
    /// As written.
    None,
    /// Cut this many bytes (at most) off its end, never into fsynced records.
    Cut(u16),
    /// Half a record's worth of garbage after its end.
    Garbage(u8),
    /// One byte flipped at this position (modulo) among the bytes not fsynced.
    Flip(u16),
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    /// Ack the nth live record (modulo).
    Ack(u16),
    Flush,
    /// Drop the spool without a flush, tear the last segment, open again.
    Crash(Tear),
    /// Flush, close, open again.
    Reopen,
    /// Die in the middle of a flush: written, fsynced and the acks persisted, but the
    /// durable handles not yet completed nor segments deleted.
    CrashMidFlush,
    /// The disk fills: it takes only this many more bytes of segments.
    DiskFull(u8),
    /// Space is freed.
    DiskFree,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..60).prop_map(Op::Append),
        4 => any::<u16>().prop_map(Op::Ack),
        2 => Just(Op::Flush),
        1 => prop_oneof![
            Just(Tear::None),
            any::<u16>().prop_map(Tear::Cut),
            (1u8..40).prop_map(Tear::Garbage),
            any::<u16>().prop_map(Tear::Flip),
        ]
        .prop_map(Op::Crash),
        1 => Just(Op::Reopen),
        1 => Just(Op::CrashMidFlush),
        1 => any::<u8>().prop_map(Op::DiskFull),
        1 => Just(Op::DiskFree),
    ]
}

/// What the model knows of a live record.
struct Live {
    payload: Vec<u8>,
    durable: Option<Durable>,
    acked: bool,
}

struct Model {
    live: BTreeMap<u64, Live>,
    /// The ack watermark as of the last flush: every live record below it was acked then.
    persisted: u64,
    /// Acked records that came back after a crash (their ack was not persisted yet).
    reyielded_acked: u64,
    reopens: u64,
}

impl Model {
    /// The lowest live record not acked (what a flush persists).
    fn watermark(&self, next_seq: u64) -> u64 {
        self.live
            .iter()
            .find(|(_, l)| !l.acked)
            .map_or(next_seq, |(s, _)| *s)
    }
}

/// The byte offset in `seg` where the records from `durable_upto` on begin.
fn durable_len(seg: &Path, durable_upto: u64) -> u64 {
    let mut end = HEADER_LEN;
    let mut at = HEADER_LEN;
    scan_segment(seg, |seq, _, p| {
        at += FRAME_LEN + p.len() as u64;
        if seq < durable_upto {
            end = at;
        }
    })
    .unwrap();
    end
}

fn tear(dir: &Path, t: &Tear, durable_upto: u64) {
    let Some(seg) = segment_files(dir).pop() else {
        return;
    };
    let len = std::fs::metadata(&seg).unwrap().len();
    let keep = durable_len(&seg, durable_upto).min(len);
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    match t {
        Tear::None => {}
        Tear::Cut(n) => f.set_len(len - (*n as u64).min(len - keep)).unwrap(),
        Tear::Garbage(n) => f.write_all_at(&vec![0xA5; *n as usize], len).unwrap(),
        Tear::Flip(at) if len > keep => {
            let at = keep + (*at as u64) % (len - keep);
            let mut b = [0u8];
            let r = File::open(&seg).unwrap();
            r.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
        }
        Tear::Flip(_) => {}
    }
}

fn reopen(dir: &Path, o: SpoolOptions, m: &mut Model) -> Spool {
    let (s, opened) = Spool::open(dir, o).unwrap();
    m.reopens += 1;
    let got = read_all(&s);
    assert_eq!(opened.unacked, got.len() as u64);
    assert_eq!(s.stats().unacked, got.len() as u64);
    // In order, each once, each as appended.
    for w in got.windows(2) {
        assert!(w[0].seq < w[1].seq, "out of order: {:?}", seqs(&got));
    }
    let yielded: BTreeSet<u64> = got.iter().map(|r| r.seq).collect();
    for r in &got {
        let l = m
            .live
            .get(&r.seq)
            .unwrap_or_else(|| panic!("record {} was never appended", r.seq));
        assert_eq!(r.payload, l.payload, "record {} changed", r.seq);
        assert!(
            r.seq >= m.persisted,
            "record {} came back below the persisted watermark {}",
            r.seq,
            m.persisted
        );
        if l.acked {
            m.reyielded_acked += 1;
        }
    }
    // Nothing durable and not persisted as acked is lost.
    for (seq, l) in &m.live {
        let durable = l.durable.as_ref().is_none_or(Durable::is_durable);
        if durable && *seq >= m.persisted {
            assert!(
                yielded.contains(seq),
                "durable record {seq} lost (acked: {}, persisted watermark {})",
                l.acked,
                m.persisted
            );
        }
    }
    // What came back is what is live now, unacked (the rest was acked or never durable).
    m.live.retain(|seq, _| yielded.contains(seq));
    for l in m.live.values_mut() {
        l.acked = false;
        l.durable = None;
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_spool_keeps_every_durable_unacked_record(
        ops in proptest::collection::vec(op(), 1..120),
        write_through in any::<bool>(),
    ) {
        let d = tempfile::tempdir().unwrap();
        // Small segments: records roll over often.
        let o = SpoolOptions { write_through, ..opts(HEADER_LEN + 200, 1 << 30, OnFull::Block) };
        let (mut s, _) = Spool::open(d.path(), o).unwrap();
        let mut m = Model { live: BTreeMap::new(), persisted: 0, reyielded_acked: 0, reopens: 0 };
        let mut n = 0u64;
        // The disk's size while it is full (the spool is opened again on the same disk).
        let mut cap: Option<u64> = None;
        for op in ops {
            match op {
                Op::Append(len) => {
                    let p: Vec<u8> = (0..len).map(|i| (n as u8).wrapping_add(i)).collect();
                    n += 1;
                    let before = s.stats();
                    match s.append(&p) {
                        Ok(a) => {
                            prop_assert!(m.live.keys().next_back().is_none_or(|&last| a.seq > last));
                            m.live.insert(a.seq, Live { payload: p, durable: Some(a.durable), acked: false });
                        }
                        Err(e) => {
                            // Refused on a full disk: not taken, nothing changed (the caller
                            // keeps the record).
                            prop_assert!(e.is_no_space(), "{}", e);
                            prop_assert!(cap.is_some());
                            let after = s.stats();
                            prop_assert_eq!((after.next_seq, after.unacked, after.writes), (before.next_seq, before.unacked, before.writes));
                        }
                    }
                }
                Op::Ack(i) => {
                    if !m.live.is_empty() {
                        let seq = *m.live.keys().nth(i as usize % m.live.len()).unwrap();
                        s.ack(seq);
                        m.live.get_mut(&seq).unwrap().acked = true;
                    }
                }
                Op::Flush => {
                    // On a full disk the buffer may not be written: what was written is synced
                    // and the acks persisted all the same.
                    if let Err(e) = s.flush() {
                        prop_assert!(e.is_no_space() && cap.is_some(), "{}", e);
                    }
                    m.persisted = m.watermark(s.next_seq());
                }
                Op::DiskFull(room) => {
                    let c = disk_used(d.path()) + room as u64;
                    cap = Some(c);
                    s.set_disk_cap(cap);
                }
                Op::DiskFree => {
                    cap = None;
                    s.set_disk_cap(None);
                }
                Op::Crash(t) => {
                    let durable_upto = m
                        .live
                        .iter()
                        .filter(|(_, l)| l.durable.as_ref().is_none_or(Durable::is_durable))
                        .map(|(s, _)| s + 1)
                        .max()
                        .unwrap_or(0);
                    s.crash();
                    tear(d.path(), &t, durable_upto);
                    s = reopen(d.path(), o, &mut m);
                    s.set_disk_cap(cap);
                }
                Op::CrashMidFlush => {
                    let job = s.begin_flush().unwrap();
                    job.sync().unwrap();
                    m.persisted = m.watermark(s.next_seq());
                    drop(job);
                    s.crash();
                    s = reopen(d.path(), o, &mut m);
                    s.set_disk_cap(cap);
                }
                Op::Reopen => {
                    if let Err(e) = s.flush() {
                        prop_assert!(e.is_no_space() && cap.is_some(), "{}", e);
                    }
                    m.persisted = m.watermark(s.next_seq());
                    drop(s);
                    s = reopen(d.path(), o, &mut m);
                    s.set_disk_cap(cap);
                }
            }
        }
        // Once space is free, everything taken becomes durable.
        s.set_disk_cap(None);
        s.flush().unwrap();
        for (seq, l) in &m.live {
            prop_assert!(l.durable.as_ref().is_none_or(Durable::is_durable), "record {} not durable", seq);
        }
        // And nothing on disk is torn or corrupt.
        drop(s);
        let (_, opened) = Spool::open(d.path(), o).unwrap();
        prop_assert!(opened.truncations.is_empty(), "{:?}", opened.truncations);
    }
}
