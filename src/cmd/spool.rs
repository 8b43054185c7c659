//! `kgate spool inspect DIR`: what a disk spool holds, read without changing it (a running
//! kgate may hold it).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::spool::{inspect, scan_segment, Inspection};

/// `kgate spool`.
#[derive(clap::Args, Debug)]
pub struct SpoolArgs {
    #[command(subcommand)]
    command: SpoolCommand,
}

#[derive(clap::Subcommand, Debug)]
enum SpoolCommand {
    /// Print a spool's segments, records, unacknowledged count and the oldest record's age.
    ///
    /// DIR is a pipeline's spool (`<spool.dir>/<pipeline>`) or the `spool.dir` holding several.
    /// Nothing is changed; a torn tail is reported (the next `kgate run` cuts it).
    Inspect {
        /// The spool directory.
        dir: PathBuf,
        /// Also print the first N unacknowledged records (topic, key, value) as JSON lines.
        #[arg(long, value_name = "N")]
        records: Option<usize>,
    },
}

/// Runs `kgate spool …`.
pub fn main(args: SpoolArgs) -> ExitCode {
    match args.command {
        SpoolCommand::Inspect { dir, records } => match inspect_all(&dir, records) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kgate spool inspect: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A pipeline's spool has segments or an ack file; a root holds pipelines' directories.
fn is_spool(dir: &Path) -> bool {
    dir.join("acks").exists() || dir.join("LOCK").exists()
}

fn inspect_all(dir: &Path, records: Option<usize>) -> anyhow::Result<()> {
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let mut dirs = Vec::new();
    if is_spool(dir) {
        dirs.push(dir.to_path_buf());
    } else {
        for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let p = e?.path();
            if p.is_dir() && is_spool(&p) {
                dirs.push(p);
            }
        }
        dirs.sort();
        if dirs.is_empty() {
            anyhow::bail!(
                "{} holds no spool (no `acks` file, no pipeline directories with one)",
                dir.display()
            );
        }
    }
    for d in dirs {
        let i = inspect(&d)?;
        print!("{}", render(&i, now_ms()));
        if let Some(n) = records {
            print_records(&i, n)?;
        }
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The report of one spool.
pub fn render(i: &Inspection, now_ms: u64) -> String {
    let mut out = format!("spool {}\n", i.dir.display());
    let bytes: u64 = i.segments.iter().map(|s| s.bytes).sum();
    let records: u64 = i.segments.iter().map(|s| s.records).sum();
    out += &format!(
        "  segments: {}, records: {records}, bytes: {bytes}\n",
        i.segments.len()
    );
    match i.watermark {
        Some(w) => out += &format!("  acked below: {w}\n"),
        None => {
            out += "  acked below: unreadable (torn ack file: every record counts as unacked)\n"
        }
    }
    out += &format!("  unacked: {}\n", i.unacked);
    match i.oldest_ms {
        Some(t) => {
            out += &format!(
                "  oldest unacked: {}s old\n",
                now_ms.saturating_sub(t) / 1000
            )
        }
        None => out += "  oldest unacked: -\n",
    }
    out += &format!(
        "  in use: {}\n",
        i.locked_by.as_deref().unwrap_or("no (no kgate holds it)")
    );
    for s in &i.segments {
        out += &format!(
            "  {}  first {}  records {}  bytes {}{}{}\n",
            s.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            s.first,
            s.records,
            s.bytes,
            if s.file_len > s.bytes && s.bad.is_none() {
                format!("  (file {}: allocated ahead)", s.file_len)
            } else {
                String::new()
            },
            s.bad
                .as_deref()
                .map(|b| format!("  TORN: {b}"))
                .unwrap_or_default()
        );
    }
    out
}

fn print_records(i: &Inspection, mut n: usize) -> anyhow::Result<()> {
    let w = i.watermark.unwrap_or(0);
    for s in &i.segments {
        if n == 0 {
            break;
        }
        scan_segment(&s.path, |seq, time, payload| {
            if seq < w || n == 0 {
                return;
            }
            n -= 1;
            let line = match crate::sink::spooled(payload) {
                Some(r) => serde_json::json!({
                    "seq": seq,
                    "appended_ms": time,
                    "topic": r.topic,
                    "key": r.key.as_deref().map(String::from_utf8_lossy),
                    "value": String::from_utf8_lossy(&r.value),
                    "rejected": r.rejected.map(|e| e.as_str()),
                }),
                None => {
                    serde_json::json!({"seq": seq, "appended_ms": time, "unreadable": payload.len()})
                }
            };
            println!("{line}");
        })?;
    }
    Ok(())
}
