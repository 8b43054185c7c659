//! `kgate dlq ...`: look at the dead-letter queue. `inspect` reads a DLQ topic (without joining
//! a consumer group or committing anything) and prints its records and a summary; `replay`
//! sends records again, exactly once, in its own consumer group and Kafka transactions.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::dlq::{
    read, record_json, refused_target, replay, summary_json, value_json, AvroDecoding, DlqRecord,
    Filter, Inspection, ReplayRequest,
};
use crate::event::ErrorType;
use crate::metrics::Metrics;

const EXAMPLES: &str = "\
Where Kafka is (the first that is given):
  --config FILE        the `kafka:` section of a kgate config (brokers, security); also its
                       `schema_registry:` to decode Avro values
  --brokers LIST       host:port[,host:port] (default 127.0.0.1:9092), no security

Each DLQ record kgate writes carries the headers source, pipeline, source_topic, error_type,
error_message and received_at (too_large records also original_size and original_sha256),
the input's headers, and the rejected bytes as its value.

Examples:
  kgate dlq inspect --topic events.v1.dlq
  kgate dlq inspect --topic events.v1.dlq --error-type invalid_json --since 1h
  kgate dlq inspect --topic events.v1.dlq --source-topic trades.v1 --max 0   # all of them
  kgate dlq inspect --topic events.v1.dlq --output json | jq -c 'select(.headers) | .value'
  kgate dlq inspect --config kgate.yaml --topic events.v1.dlq --registry http://127.0.0.1:8081

Exit status: 0 read (even when nothing matched), 1 Kafka error, 2 bad arguments or config.";

/// `kgate dlq`: arguments.
#[derive(Debug, Args)]
#[command(after_long_help = EXAMPLES)]
pub struct DlqArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// `kgate dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Print a DLQ topic's records (newest last) and a count by error type and source topic.
    ///
    /// Reads from the beginning (or from --since) up to the end offsets seen at the start, then
    /// stops. Joins no consumer group and commits nothing, so it never disturbs a consumer.
    #[command(after_long_help = EXAMPLES)]
    Inspect(InspectArgs),
    /// Send DLQ records again: back to their source topic (or --to), exactly once, resuming
    /// where an interrupted replay stopped.
    ///
    /// Reads the DLQ in its own consumer group up to the end offsets seen at the start and
    /// commits as it goes, in Kafka transactions: interrupted and run again, it sends nothing
    /// twice and misses nothing. A record the target refuses goes back to the DLQ with
    /// replay_count + 1, at most --max-attempts times.
    #[command(after_long_help = REPLAY_EXAMPLES)]
    Replay(ReplayArgs),
}

/// How `inspect` prints the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// An aligned table, long fields cut short, then the summary.
    Table,
    /// One JSON object per record (every header, key, value), then one `{"summary": ...}` line.
    Json,
}

/// `kgate dlq inspect`: arguments.
#[derive(Debug, Args, Clone)]
pub struct InspectArgs {
    /// The DLQ topic (the config's `dlq.topic`).
    #[arg(short, long)]
    pub topic: String,
    /// Only records with this `error_type` header (invalid_json, missing_field, too_large, ...).
    #[arg(short, long, value_name = "TYPE")]
    pub error_type: Option<String>,
    /// Only records with this `source_topic` header (the topic the record was meant for).
    #[arg(short, long, value_name = "TOPIC")]
    pub source_topic: Option<String>,
    /// Only records written in the last DURATION (e.g. 30m, 1h, 2d); else from the beginning.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Print at most this many of the matching records, the newest (0 = all). The summary
    /// counts them all.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub max: usize,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Config file whose `kafka:` section (brokers, security) and `schema_registry:` to use.
    #[arg(short, long, env = "KGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Brokers, when no config is given.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Schema registry (Confluent API URL) to decode Avro values with (else the config's
    /// `schema_registry:`).
    #[arg(long, value_name = "URL", env = "KGATE_REGISTRY_URL")]
    pub registry: Option<String>,
}

/// Widest message, key and value cells in the table, in characters.
const MESSAGE_WIDTH: usize = 48;
const KEY_WIDTH: usize = 24;
const VALUE_WIDTH: usize = 48;

/// `s` on one line, control characters shown as `·`, cut to `width` characters with `…`.
pub fn cell(s: &str, width: usize) -> String {
    let printable = s.chars().map(|c| {
        if c == '\n' || c == '\r' || c == '\t' {
            ' '
        } else if c.is_control() {
            '·'
        } else {
            c
        }
    });
    let all: Vec<char> = printable.collect();
    if all.len() <= width {
        all.into_iter().collect()
    } else {
        let mut cut: String = all[..width.saturating_sub(1)].iter().collect();
        cut.push('…');
        cut
    }
}

/// Bytes as table text: UTF-8 (lossy), `-` when absent.
fn text(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(|| "-".into(), |b| String::from_utf8_lossy(b).into_owned())
}

/// The records as an aligned table with a header line; `value` gives each value's preview.
pub fn table(records: &[DlqRecord], value: impl Fn(&DlqRecord) -> String) -> String {
    let head = [
        "TIME",
        "SOURCE TOPIC",
        "ERROR TYPE",
        "MESSAGE",
        "KEY",
        "VALUE",
    ];
    let rows: Vec<[String; 6]> = records
        .iter()
        .map(|r| {
            [
                cell(&r.time(), 40),
                cell(&r.header("source_topic").unwrap_or_else(|| "-".into()), 40),
                cell(&r.header("error_type").unwrap_or_else(|| "-".into()), 24),
                cell(
                    &r.header("error_message").unwrap_or_else(|| "-".into()),
                    MESSAGE_WIDTH,
                ),
                cell(&text(r.key.as_deref()), KEY_WIDTH),
                cell(&value(r), VALUE_WIDTH),
            ]
        })
        .collect();
    let mut widths = head.map(|h| h.chars().count());
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&head.map(String::from));
    for row in &rows {
        line(row);
    }
    out
}

/// The summary as text: counts by error type and by source topic, largest first.
pub fn summary_text(topic: &str, found: &Inspection) -> String {
    let mut out = format!(
        "{} of {} records read from {topic} matched; showing the newest {}\n",
        found.matched,
        found.read,
        found.records.len()
    );
    for (title, counts) in [
        ("by error type", &found.by_error_type),
        ("by source topic", &found.by_source_topic),
    ] {
        out.push_str(&format!("{title}:\n"));
        let mut sorted: Vec<(&String, &u64)> = counts.iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let width = sorted
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (k, n) in sorted {
            out.push_str(&format!("  {k:<width$}  {n}\n"));
        }
    }
    out
}

/// A value's preview for the table: Avro or JSON as compact JSON, else the text.
fn preview(r: &DlqRecord, avro: Option<&AvroDecoding>) -> String {
    match value_json(&r.value, avro) {
        (Value::String(s), "text") => s,
        (v, "base64") => format!("base64:{}", v.as_str().unwrap_or_default()),
        (v, _) => v.to_string(),
    }
}

const REPLAY_EXAMPLES: &str = "\
Where Kafka is (the first that is given):
  --config FILE        the `kafka:` section of a kgate config (brokers, security)
  --brokers LIST       host:port[,host:port] (default 127.0.0.1:9092), no security

What is sent: each selected DLQ record's value, key and headers as they were before kgate
dead-lettered it (kgate's DLQ headers source, pipeline, source_topic, error_type,
error_message, received_at, failed_at, ... taken off), plus
  replayed_from   <dlq_topic>[<partition>]@<offset>
  replay_count    the record's previous replay_count + 1
to --to TOPIC, or else back to the record's `source_topic` header.

Exactly once, across interruptions: the DLQ is read in the consumer group --group (default
kgate-dlq-replay.<dlq_topic>), and each batch is sent in a Kafka transaction that also
commits the group's offsets (transactional.id kgate-dlq-replay.<group>.<dlq_topic>). Stopped
by SIGINT/SIGTERM it finishes the batch; killed, its open transaction is aborted when it is
started again, and it goes on from the last committed batch: nothing is sent twice, nothing
is missed. Consumers of the target topic see the replayed records once with
isolation.level=read_committed (records of an aborted batch are visible to
read_uncommitted readers, such as `kgate tail`).

Every record read is committed, the ones a filter leaves out too: a later run in the same
group does not see them again. To replay the rest by another filter, run again with another
--group (it starts from the beginning of the DLQ, or from --since).

Not sent: records whose replay_count reached --max-attempts (`exhausted`) and too_large
records (their DLQ copy holds only the first bytes; the header original_size says so).
A record the target refuses (the topic does not exist, is reserved, the record is too large,
not authorized) goes back to the DLQ with replay_count + 1 and the new error_type, so a later
run tries it again, at most --max-attempts times in all.

Examples:
  kgate dlq replay --topic events.v1.dlq --dry-run            # what would be sent, and where
  kgate dlq replay --topic events.v1.dlq                      # each record back to its source topic
  kgate dlq replay --topic events.v1.dlq --error-type produce_failed --since 2h
  kgate dlq replay --topic events.v1.dlq --source-topic trades.v1 --to trades.v1.retry --rate 500/s
  kgate dlq replay --config kgate.yaml --topic events.v1.dlq --group replay-2026-12-07

Exit status: 0 replayed up to the end offsets the DLQ had at the start; 1 Kafka error (run it
again: it goes on where the last committed batch ended); 2 bad arguments or config;
130 stopped by SIGINT/SIGTERM after committing its last batch.";

/// `kgate dlq replay`: arguments.
#[derive(Debug, Args, Clone)]
pub struct ReplayArgs {
    /// The DLQ topic to replay (the config's `dlq.topic`).
    #[arg(short, long)]
    pub topic: String,
    /// Send every selected record to this topic, instead of back to its `source_topic` header.
    #[arg(long, value_name = "TOPIC")]
    pub to: Option<String>,
    /// Only records with this `error_type` header. The others are read and committed too: this
    /// group will not replay them later (use another --group for that).
    #[arg(short, long, value_name = "TYPE")]
    pub error_type: Option<String>,
    /// Only records with this `source_topic` header (the others are committed, see
    /// --error-type).
    #[arg(short, long, value_name = "TOPIC")]
    pub source_topic: Option<String>,
    /// Start at the first record written DURATION ago (e.g. 30m, 1h, 2d), or where the group
    /// stopped, whichever is later; else from the beginning.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Send at most N records a second (e.g. 500 or 500/s); unlimited by default.
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Print what would be sent (a table, and counts by target), send and commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not replay a record that was replayed this many times already (its `replay_count`
    /// header): it is counted as exhausted and left in the DLQ.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_attempts: u32,
    /// The consumer group that reads the DLQ and whose committed offsets say where to go on
    /// (default kgate-dlq-replay.<topic>).
    #[arg(short, long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Config file whose `kafka:` section (brokers, security) to use.
    #[arg(short, long, env = "KGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Brokers, when no config is given.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Output format: a table (with --dry-run) and the counts as text, or one JSON object per
    /// record (with --dry-run, with its `target`) and one `{"replay": {counts}}` line.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Serve Prometheus metrics (kafka_dlq_replayed_total{dlq_topic,target_topic}) on this
    /// address while the replay runs, e.g. 127.0.0.1:9465.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl ReplayArgs {
    /// What the library replays.
    pub fn request(&self) -> ReplayRequest {
        ReplayRequest {
            topic: self.topic.clone(),
            to: self.to.clone(),
            error_type: self.error_type.clone(),
            source_topic: self.source_topic.clone(),
            since: self.since,
            rate: self.rate,
            dry_run: self.dry_run,
            max_attempts: self.max_attempts,
            group: self.group.clone(),
        }
    }
}

/// `--rate`: `N` or `N/s`, more than 0.
fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().strip_suffix("/s").unwrap_or(s.trim());
    match n.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "`{s}` is not a rate; write records per second, e.g. 500 or 500/s"
        )),
    }
}

/// Progress on stderr: a line rewritten in place on a terminal, a log line every
/// [`PROGRESS_EVERY`] otherwise.
pub struct Progress {
    tty: bool,
    label: String,
    total: u64,
    started: Instant,
    printed: Option<Instant>,
}

/// How often a non-terminal gets a progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// Progress of `total` records (an upper bound: transaction markers count).
    pub fn new(label: String, total: u64) -> Progress {
        Progress {
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            label,
            total,
            started: Instant::now(),
            printed: None,
        }
    }

    /// The line for `done` records after `elapsed`.
    pub fn line(&self, done: u64, sent: u64, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let pct = if self.total > 0 {
            100.0 * done as f64 / self.total as f64
        } else {
            100.0
        };
        let eta = if rate > 0.0 && self.total > done {
            let left = Duration::from_secs(((self.total - done) as f64 / rate).ceil() as u64);
            humantime::format_duration(left).to_string()
        } else {
            "-".into()
        };
        format!(
            "{}: {done}/{} read ({pct:.0}%), {sent} sent, {rate:.0} records/s, ETA {eta}",
            self.label, self.total
        )
    }

    /// Shows progress, when it is time to.
    pub fn update(&mut self, done: u64, sent: u64) {
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            PROGRESS_EVERY
        };
        if self.printed.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.printed = Some(Instant::now());
        let line = self.line(done, sent, self.started.elapsed());
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    /// Ends the line on a terminal.
    pub fn finish(&mut self) {
        if self.tty && self.printed.is_some() {
            eprintln!();
        }
    }
}

async fn replay_main(args: ReplayArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("kgate dlq replay: {msg}");
        ExitCode::from(2)
    };
    if let Some(t) = &args.error_type {
        if !ErrorType::ALL.iter().any(|e| e.as_str() == t) {
            let known: Vec<&str> = ErrorType::ALL.iter().map(|e| e.as_str()).collect();
            return fail(format!(
                "unknown --error-type {t}; kgate writes {}",
                known.join(", ")
            ));
        }
    }
    if let Some(to) = &args.to {
        if let Some((_, why)) = refused_target(to, &args.topic) {
            return fail(format!("--to {why}"));
        }
    }
    if args.max_attempts == 0 {
        return fail("--max-attempts 0 would replay nothing; give 1 or more".into());
    }
    let (kafka, _) = match super::kafka_and_registry(args.config.as_deref(), &args.brokers, None) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    let metrics = match args.metrics_listen {
        Some(addr) => {
            let m = Metrics::new(&BTreeMap::new());
            match crate::metrics::serve(addr, 16, None, m.clone(), shutdown.clone()).await {
                Ok(_) => Some(m),
                Err(e) => return fail(format!("--metrics-listen {addr}: {e}")),
            }
        }
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
    let a = args.clone();
    let done = tokio::task::spawn_blocking(move || {
        let mut shown = Vec::new();
        let request = a.request();
        let label = if a.dry_run {
            format!("dlq replay {} (dry run)", a.topic)
        } else {
            format!("dlq replay {}", a.topic)
        };
        let mut progress: Option<Progress> = None;
        let done = replay(
            &kafka,
            &request,
            &stop,
            metrics,
            &mut shown,
            &mut |total, c| {
                progress
                    .get_or_insert_with(|| Progress::new(label.clone(), total))
                    .update(c.read, c.sent)
            },
        );
        if let Some(p) = &mut progress {
            p.finish();
        }
        done.map(|c| (c, shown))
    })
    .await;
    shutdown.cancel();
    match done {
        Ok(Ok((counts, shown))) => {
            match args.output {
                Output::Json => {
                    for (r, target) in &shown {
                        let mut j = record_json(r, None);
                        j["target"] = target.as_str().into();
                        println!("{j}");
                    }
                    println!("{}", counts.json());
                }
                Output::Table => {
                    if !shown.is_empty() {
                        let rows: Vec<DlqRecord> = shown
                            .iter()
                            .take(DRY_RUN_ROWS)
                            .map(|(r, _)| r.clone())
                            .collect();
                        let targets: HashMap<(i32, i64), &str> = shown
                            .iter()
                            .map(|(r, t)| ((r.partition, r.offset), t.as_str()))
                            .collect();
                        print!(
                            "{}",
                            table(&rows, |r| format!(
                                "→ {}  {}",
                                targets
                                    .get(&(r.partition, r.offset))
                                    .copied()
                                    .unwrap_or("-"),
                                preview(r, None)
                            ))
                        );
                        if shown.len() > DRY_RUN_ROWS {
                            println!("… and {} more", shown.len() - DRY_RUN_ROWS);
                        }
                        println!();
                    }
                    print!("{}", counts.text(&args.topic, args.dry_run));
                }
            }
            if counts.interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            }
        }
        Ok(Err(e)) => {
            eprintln!("kgate dlq replay: {e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kgate dlq replay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The most records a dry run lists (it counts them all).
const DRY_RUN_ROWS: usize = 50;

/// `kgate dlq ...`.
pub async fn main(args: DlqArgs) -> ExitCode {
    match args.command {
        DlqCommand::Inspect(a) => inspect_main(a).await,
        DlqCommand::Replay(a) => replay_main(a).await,
    }
}

async fn inspect_main(args: InspectArgs) -> ExitCode {
    if let Some(t) = &args.error_type {
        if !ErrorType::ALL.iter().any(|e| e.as_str() == t) {
            let known: Vec<&str> = ErrorType::ALL.iter().map(|e| e.as_str()).collect();
            eprintln!(
                "kgate dlq inspect: unknown --error-type {t}; kgate writes {}",
                known.join(", ")
            );
            return ExitCode::from(2);
        }
    }
    let (kafka, registry) = match super::kafka_and_registry(
        args.config.as_deref(),
        &args.brokers,
        args.registry.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let avro = match registry.map(|r| crate::registry::RegistryClient::new(&r)) {
        Some(Ok(client)) => Some(AvroDecoding {
            cache: crate::registry::SchemaCache::new(client, None),
            runtime: tokio::runtime::Handle::current(),
        }),
        Some(Err(e)) => {
            eprintln!("kgate dlq inspect: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    let filter = Filter {
        error_type: args.error_type.clone(),
        source_topic: args.source_topic.clone(),
    };
    let done = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let found = read(&kafka, &args.topic, args.since, None, &filter, args.max)?;
        let avro = avro.as_ref();
        match args.output {
            Output::Json => {
                for r in &found.records {
                    println!("{}", record_json(r, avro));
                }
                println!("{}", summary_json(&found));
            }
            Output::Table => {
                if !found.records.is_empty() {
                    print!("{}", table(&found.records, |r| preview(r, avro)));
                    println!();
                }
                print!("{}", summary_text(&args.topic, &found));
            }
        }
        Ok(())
    })
    .await;
    match done {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("kgate dlq inspect: {e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kgate dlq inspect: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::read::tests::rec;

    #[test]
    fn cells_are_cut_with_an_ellipsis_and_made_printable() {
        assert_eq!(cell("short", 10), "short");
        assert_eq!(cell("0123456789", 10), "0123456789");
        assert_eq!(cell("0123456789abc", 10), "012345678…");
        assert_eq!(cell("a\nb\tc\u{1b}d", 10), "a b c·d");
        // Characters, not bytes: no multi-byte character is split.
        assert_eq!(cell("ééééé", 3), "éé…");
    }
    #[test]
    fn the_table_aligns_columns_and_cuts_long_fields() {
        let long = "x".repeat(200);
        let rs = vec![
            rec(
                0,
                1,
                "invalid_json",
                "expected value at line 1 column 1",
                b"{oops",
            ),
            rec(1, 2, "missing_field", &long, long.as_bytes()),
        ];
        let t = table(&rs, |r| String::from_utf8_lossy(&r.value).into_owned());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("TIME"), "{t}");
        let col = |h: &str| lines[0].find(h).unwrap();
        assert_eq!(
            &lines[1][col("ERROR TYPE")..col("ERROR TYPE") + 12],
            "invalid_json"
        );
        assert_eq!(
            &lines[2][col("ERROR TYPE")..col("ERROR TYPE") + 13],
            "missing_field"
        );
        assert!(
            lines[2].contains(&format!("{}…", "x".repeat(MESSAGE_WIDTH - 1))),
            "{t}"
        );
        assert!(!lines[2].contains(&"x".repeat(MESSAGE_WIDTH + 1)), "{t}");
        assert!(lines[1].contains("kraken|BTC-USD"));
        assert!(lines[1].ends_with("{oops"), "{t}");
    }
    #[test]
    fn the_summary_counts_every_match_and_keeps_the_newest() {
        let mut found = Inspection::default();
        for i in 0..5 {
            let ty = if i < 3 {
                "invalid_json"
            } else {
                "missing_field"
            };
            found.add(rec(i, 100 - i, ty, "m", b"v"), 2);
        }
        found.keep_newest(2);
        assert_eq!(found.matched, 5);
        assert_eq!(found.by_error_type["invalid_json"], 3);
        assert_eq!(found.by_error_type["missing_field"], 2);
        assert_eq!(found.by_source_topic["trades.v1"], 5);
        // Newest (by timestamp) last.
        let offsets: Vec<i64> = found.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![1, 0]);
        let s = summary_text("events.v1.dlq", &found);
        assert!(s.contains("invalid_json   3"), "{s}");
        assert!(s.contains("missing_field  2"), "{s}");
    }
    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("500"), Ok(500.0));
        assert_eq!(parse_rate("2.5/s"), Ok(2.5));
        for bad in ["0", "-1", "fast", "1/m", ""] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
    #[test]
    fn progress_shows_count_rate_and_eta() {
        let p = Progress {
            tty: false,
            label: "dlq replay e.dlq".into(),
            total: 1000,
            started: Instant::now(),
            printed: None,
        };
        assert_eq!(
            p.line(250, 240, Duration::from_secs(5)),
            "dlq replay e.dlq: 250/1000 read (25%), 240 sent, 50 records/s, ETA 15s"
        );
        assert!(p.line(0, 0, Duration::ZERO).ends_with("ETA -"));
    }
}
