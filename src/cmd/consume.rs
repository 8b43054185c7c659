//! `kgate consume`: a consumer group member that hands each record to a consumer sink
//! (stdout, a file, a webhook, a command) and commits its offset only once the sink took it or
//! its DLQ record is in Kafka. Built from the same parts as `kgate run`: the Kafka source, a
//! raw pass-through pipeline, and a [`DeliverSink`] with a [`KafkaSink`] for the DLQ.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use futures_util::future::BoxFuture;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{At, ByteSize};
use crate::event::{Event, Fate, Rejection};
use crate::gateway::Config;
use crate::kafka::{DlqConfig, KafkaConfig};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineConfig, Processor};
use crate::registry::{RegistryClient, RegistryConfig, SchemaCache};
use crate::sink::deliver::{
    BatchConfig, CommandConfig, DeliverConfig, FileConfig, StdoutConfig, WebhookConfig,
};
use crate::sink::{DeliverSink, KafkaSink, OutRecord, Sink, Totals};
use crate::source::kafka::{KafkaSourceConfig, StartAt};
use crate::source::{SourceCtx, SourceKind};

const AFTER_HELP: &str = "\
Each record is one JSON object:
  {\"topic\":\"trades\",\"partition\":0,\"offset\":41,\"key\":\"BTC-USD\",\"headers\":{\"feed\":\"kraken\"},\"value\":{...}}
The value is the JSON itself when it is JSON, the decoded record when it is Confluent-framed Avro
and a registry is known (--registry or the config's schema_registry:), else a string, else
{\"base64\": \"...\"}. With --batch N above 1, stdout and command sinks get one JSON array (the
batch) a line and a webhook one array per POST.

Offsets: a record's offset is committed only once its sink took it (stdout written and flushed,
the file fsynced, a 2xx from the webhook, `ok` from the command) or, after the retries, its DLQ
record (error_type=sink_failed, with an `attempts` header) is in Kafka. A crash re-delivers the
records since the last commit (at-least-once); nothing is skipped. SIGINT/SIGTERM: stop fetching,
finish the batch, commit, leave the group, exit 0.

Consumers with the same --group share the topic's partitions; another group gets every record.

Examples:
  # follow a topic as JSON lines, from the start for a new group
  kgate consume --topic trades --group audit --from-beginning
  # what arrived in the last 10 minutes (sets the group's offsets first)
  kgate consume --topic trades --group replay-10m --from-timestamp 10m
  # the first 5 records, then stop (their offsets committed)
  kgate consume --topic trades --group peek --from-beginning --max 5
  # batches of up to 500 records (or 1s) POSTed to a webhook; failures retried, then the DLQ
  kgate consume --topic trades --group hook --batch 500 --sink webhook:https://hooks.example.com/in
  # a long-lived handler reading JSON lines on stdin, answering `ok` per line
  kgate consume --topic telemetry.clean --group h --sink \"command:python3 handler.py\"
  # an hourly-rotated file, brokers and security from the gateway's config
  kgate consume --config kgate.yaml --topic trades --group archive --sink-config archive-sink.yaml
    (archive-sink.yaml:  file: {path: trades.ndjson, rotate_every: 1h}
                         batch: {max_records: 1000, timeout: 2s})";

/// `kgate consume`: arguments.
#[derive(Debug, Args, Clone)]
#[command(after_long_help = AFTER_HELP)]
pub struct ConsumeArgs {
    /// A topic to read (repeat for several).
    #[arg(short, long = "topic", value_name = "TOPIC", required = true)]
    pub topics: Vec<String>,
    /// Consumer group id: members of one group share the partitions, and its committed offsets
    /// are where a restart resumes. Default `kgate-consume-<user>-<first topic>`.
    #[arg(short, long)]
    pub group: Option<String>,
    /// A new group (no committed offsets) starts at the oldest record.
    #[arg(long, conflicts_with = "from_end")]
    pub from_beginning: bool,
    /// A new group starts at the end: only records written from now on (the default).
    #[arg(long)]
    pub from_end: bool,
    /// Start at the first record written at or after this time, for every partition: an RFC
    /// 3339 time (`2026-12-07T06:00:00Z`), a duration ago (`1h`, `30m`) or epoch
    /// milliseconds. It sets the group's committed offsets before joining (as
    /// `kafka-consumer-groups --reset-offsets --to-datetime` does), so the group must have no
    /// running members.
    #[arg(long, value_name = "TIME", conflicts_with_all = ["from_beginning", "from_end"], value_parser = parse_time)]
    pub from_timestamp: Option<i64>,
    /// Where records go: `stdout`, `file:PATH`, `webhook:URL` or `command:PROGRAM ARGS...`
    /// (split on spaces). For headers, a bearer token or rotation use --sink-config.
    #[arg(short, long, default_value = "stdout", conflicts_with = "sink_config")]
    pub sink: String,
    /// A YAML file with the sink section (`stdout`/`file`/`webhook`/`command` and `batch`, see
    /// README "Consuming"); --batch and --batch-timeout override its batch.
    #[arg(long, value_name = "FILE")]
    pub sink_config: Option<PathBuf>,
    /// Records per batch (1 = single records).
    #[arg(short, long, value_name = "N")]
    pub batch: Option<usize>,
    /// How long a batch that is not full waits for more records.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub batch_timeout: Option<Duration>,
    /// Value bytes per batch, e.g. 1MB.
    #[arg(long, value_name = "SIZE", value_parser = ByteSize::parse)]
    pub batch_bytes: Option<ByteSize>,
    /// Webhook and command sinks: attempts per batch before its records go to the DLQ.
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Webhook and command sinks: the pause after the first failed attempt (doubling, jittered).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub backoff: Option<Duration>,
    /// Stop after this many records (their offsets committed); records read beyond them are
    /// left for the next run.
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max: Option<u64>,
    /// The DLQ topic (else the config's `dlq.topic`, else events.v1.dlq).
    #[arg(long, value_name = "TOPIC")]
    pub dlq_topic: Option<String>,
    /// How often the offsets of handled records are committed (also at exit).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub commit_interval: Duration,
    /// How long the shutdown may take to finish the batch and commit.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9102): batch sizes and
    /// durations, sink errors, DLQ records.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Config file whose `kafka:` (brokers, security), `schema_registry:` and `dlq:` to use.
    #[arg(short, long, env = "KGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Brokers, when no config is given.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Schema registry (Confluent API URL) to decode Avro values with (else the config's).
    #[arg(long, value_name = "URL", env = "KGATE_REGISTRY_URL")]
    pub registry: Option<String>,
}

/// `kgate consume`: 0 after a clean stop, 1 when the sink's destination went away or
/// something failed, 2 on bad arguments or config.
pub async fn main(args: ConsumeArgs) -> ExitCode {
    let setup = match Setup::from_args(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kgate consume: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(args, setup).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kgate consume: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the arguments resolve to.
struct Setup {
    kafka: KafkaConfig,
    registry: Option<RegistryConfig>,
    dlq_topic: String,
    group: String,
    sink: DeliverConfig,
}

impl Setup {
    fn from_args(a: &ConsumeArgs) -> anyhow::Result<Setup> {
        let (kafka, registry, dlq) = match &a.config {
            Some(path) => {
                let c = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
                (c.kafka, c.schema_registry, c.dlq.topic)
            }
            None => (
                KafkaConfig {
                    brokers: a.brokers.split(',').map(str::to_string).collect(),
                    ..Default::default()
                },
                None,
                DlqConfig::default().topic,
            ),
        };
        let registry = a
            .registry
            .as_deref()
            .map(RegistryConfig::from_url)
            .or(registry);
        let group = a.group.clone().unwrap_or_else(|| default_group(&a.topics));
        let mut sink = match &a.sink_config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --sink-config {}", path.display()))?;
                let mut errors = Vec::new();
                let parsed = crate::config::parse::<DeliverConfig>(
                    &text,
                    &|k| std::env::var(k).ok(),
                    &mut errors,
                );
                match parsed {
                    Some(c) if errors.is_empty() => c,
                    _ => anyhow::bail!(
                        "{}",
                        crate::config::ConfigErrors {
                            file: path.display().to_string(),
                            errors
                        }
                    ),
                }
            }
            None => parse_sink(&a.sink)?,
        };
        if let Some(n) = a.batch {
            sink.batch.max_records = n;
        }
        if let Some(t) = a.batch_timeout {
            sink.batch.timeout = t;
        }
        if let Some(b) = a.batch_bytes {
            sink.batch.max_bytes = b;
        }
        if let Some(w) = &mut sink.webhook {
            w.max_attempts = a.max_attempts.unwrap_or(w.max_attempts);
            w.backoff = a.backoff.unwrap_or(w.backoff);
        }
        if let Some(c) = &mut sink.command {
            c.max_attempts = a.max_attempts.unwrap_or(c.max_attempts);
            c.backoff = a.backoff.unwrap_or(c.backoff);
        }
        let mut errors = Vec::new();
        crate::sink::deliver::check(&sink, At("sink"), &mut errors);
        if !errors.is_empty() {
            let text: Vec<String> = errors
                .iter()
                .map(|e| format!("  {}: {}", e.path, e.message))
                .collect();
            anyhow::bail!("the sink has problems:\n{}", text.join("\n"));
        }
        Ok(Setup {
            kafka,
            registry,
            dlq_topic: a.dlq_topic.clone().unwrap_or(dlq),
            group,
            sink,
        })
    }
}

/// `kgate-consume-<user>-<first topic>`: stable, so a rerun resumes where the last one
/// committed.
fn default_group(topics: &[String]) -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "anon".into());
    format!(
        "kgate-consume-{user}-{}",
        topics.first().map(String::as_str).unwrap_or("")
    )
}

/// `stdout`, `file:PATH`, `webhook:URL`, `command:PROG ARGS`.
fn parse_sink(s: &str) -> anyhow::Result<DeliverConfig> {
    let mut c = DeliverConfig::default();
    let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
    match kind {
        "stdout" if rest.is_empty() => c.stdout = Some(StdoutConfig {}),
        "file" if !rest.is_empty() => {
            c.file = Some(FileConfig {
                path: PathBuf::from(rest),
                max_bytes: None,
                rotate_every: None,
            })
        }
        "webhook" if !rest.is_empty() => c.webhook = Some(WebhookConfig::new(rest)),
        "command" if !rest.trim().is_empty() => {
            c.command = Some(CommandConfig::new(
                rest.split_whitespace().map(str::to_string).collect(),
            ))
        }
        _ => anyhow::bail!(
            "--sink `{s}`: write `stdout`, `file:PATH`, `webhook:URL` or `command:PROGRAM ARGS`"
        ),
    }
    c.batch = BatchConfig::default();
    Ok(c)
}

/// Runs until a signal, `--max` records, or the sink's destination is gone; true when the
/// stop was clean.
async fn run(args: ConsumeArgs, setup: Setup) -> anyhow::Result<bool> {
    let metrics = Metrics::new(&Default::default());
    let server_stop = CancellationToken::new();
    let server = match args.metrics {
        Some(addr) => {
            let h =
                crate::metrics::serve(addr, 16, None, metrics.clone(), server_stop.clone()).await?;
            tracing::info!("metrics at http://{addr}/metrics");
            Some(h)
        }
        None => None,
    };
    let dlq: Arc<dyn Sink> = KafkaSink::new(&setup.kafka, &setup.dlq_topic, metrics.clone())?;
    let schemas = match &setup.registry {
        Some(rc) => Some(SchemaCache::new(
            RegistryClient::new(rc)?,
            Some(metrics.clone()),
        )),
        None => None,
    };
    let deliver = DeliverSink::new(&setup.sink, dlq.clone(), metrics.clone(), schemas)?;
    let fatal = deliver.fatal();
    let done = CancellationToken::new();
    let sink: Arc<dyn Sink> = match args.max {
        Some(max) => Arc::new(Limited {
            inner: deliver.clone(),
            left: AtomicU64::new(max),
            done: done.clone(),
        }),
        None => deliver.clone(),
    };

    if let Some(ts) = args.from_timestamp {
        let (kafka, group, topics) = (
            setup.kafka.clone(),
            setup.group.clone(),
            args.topics.clone(),
        );
        let n = tokio::task::spawn_blocking(move || reset_to_time(&kafka, &group, &topics, ts))
            .await??;
        tracing::info!(group = %setup.group, partitions = n, at_ms = ts, "group offsets set to the first record at or after the time");
    }
    let source_config = KafkaSourceConfig {
        topics: args.topics.clone(),
        group: setup.group.clone(),
        start: if args.from_beginning {
            StartAt::Earliest
        } else {
            StartAt::Latest
        },
        commit_interval: args.commit_interval,
        options: Default::default(),
    };
    let mut errors = Vec::new();
    let Some(source) = source_config.resolve(At(""), &mut errors) else {
        let text: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        anyhow::bail!("{}", text.join("; "));
    };
    let pipeline = Arc::new(Pipeline::from_processor(
        passthrough(&args.topics)?,
        sink.clone(),
    ));
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    source.spawn(
        SourceCtx {
            pipeline,
            metrics: metrics.clone(),
            stop: stop.clone(),
            http_routes: Default::default(),
            kafka: setup.kafka.clone(),
            // The sink decodes Avro values itself (it prints them); the pipeline passes bytes.
            schemas: None,
        },
        &mut tasks,
    );
    tracing::info!(topics = %args.topics.join(","), group = %setup.group, sink = deliver.kind(),
        dlq_topic = %setup.dlq_topic, "consuming (Ctrl-C stops after the current batch)");

    let signal = CancellationToken::new();
    super::on_signal(signal.clone());
    let why = tokio::select! {
        _ = signal.cancelled() => "signal",
        _ = done.cancelled() => "--max reached",
        _ = fatal.cancelled() => "the sink's destination is gone",
        _ = async { while tasks.join_next().await.is_some() {} } => "the Kafka source stopped",
    };
    tracing::info!(
        reason = why,
        "stopping: finishing the batch, committing, leaving the group"
    );
    stop.cancel();
    let deadline = tokio::time::Instant::now() + args.shutdown_timeout;
    // The sink flushes its open batch at once; the source waits for the fates, commits, leaves.
    let (_, joined) = tokio::join!(
        deliver.drain(args.shutdown_timeout),
        tokio::time::timeout_at(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
    );
    if joined.is_err() {
        tracing::warn!("the consumer did not stop in time; the records since the last commit are read again next time");
        tasks.abort_all();
    }
    let left = dlq
        .drain(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await;
    server_stop.cancel();
    if let Some(h) = server {
        let _ = h.await;
    }
    let t = deliver.totals();
    let summary = summary(t);
    tracing::info!("consume stopped: {summary}");
    Ok(!fatal.is_cancelled()
        && joined.is_ok()
        && left == 0
        && t.failed.load(Ordering::Relaxed) == 0)
}

/// `--from-timestamp`: a time, a duration ago, or epoch milliseconds → epoch milliseconds.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let at = match humantime::parse_rfc3339_weak(s) {
        Ok(t) => t,
        Err(_) => match humantime::parse_duration(s) {
            Ok(ago) => std::time::SystemTime::now()
                .checked_sub(ago)
                .ok_or_else(|| format!("`{s}` ago is before 1970"))?,
            Err(_) => {
                return Err(format!(
                    "`{s}` is not a time; write e.g. `2026-12-07T06:00:00Z`, `1h` (ago) or epoch milliseconds"
                ))
            }
        },
    };
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("`{s}` is before 1970"))?
        .as_millis();
    i64::try_from(ms).map_err(|_| format!("`{s}` is too far in the future"))
}

/// Commits, for `group`, the offset of the first record at or after `ts_ms` in every
/// partition of `topics` (the end where there is none); how many partitions.
fn reset_to_time(
    kafka: &KafkaConfig,
    group: &str,
    topics: &[String],
    ts_ms: i64,
) -> anyhow::Result<usize> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let timeout = Duration::from_secs(10);
    let c: BaseConsumer<crate::kafka::QuietContext> = crate::kafka::base_client_config(kafka)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create_with_context(Default::default())?;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        let md = c
            .fetch_metadata(Some(t), timeout)
            .with_context(|| format!("cannot reach Kafka at {}", kafka.brokers.join(",")))?;
        let parts = md
            .topics()
            .first()
            .filter(|m| m.error().is_none() && !m.partitions().is_empty())
            .map(|m| m.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            .ok_or_else(|| anyhow::anyhow!("topic {t} does not exist"))?;
        for p in parts {
            tpl.add_partition_offset(t, p, Offset::Offset(ts_ms))?;
        }
    }
    let found = c
        .offsets_for_times(tpl, timeout)
        .context("looking up the offsets for --from-timestamp")?;
    let mut commit = TopicPartitionList::new();
    for e in found.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => o,
            // No record at or after the time: start at the end.
            _ => c.fetch_watermarks(e.topic(), e.partition(), timeout)?.1,
        };
        commit.add_partition_offset(e.topic(), e.partition(), Offset::Offset(offset))?;
    }
    c.commit(&commit, CommitMode::Sync).with_context(|| {
        format!(
            "cannot set the offsets of group {group} (is a member of it running? stop it first)"
        )
    })?;
    Ok(commit.count())
}

fn summary(t: &Totals) -> String {
    format!(
        "accepted {}, delivered {}, dead-lettered {}, failed {}",
        t.accepted.load(Ordering::Relaxed),
        t.delivered.load(Ordering::Relaxed),
        t.dead_lettered.load(Ordering::Relaxed),
        t.failed.load(Ordering::Relaxed)
    )
}

/// A raw pass-through: the record's bytes untouched, to the topic it was read from. The
/// topics are named in `topics_allowed` so that reserved ones (a DLQ, `_schemas`) can be read.
fn passthrough(topics: &[String]) -> anyhow::Result<Processor> {
    let c = PipelineConfig::<serde_json::Value> {
        name: "consume".into(),
        source: serde_json::Value::Null,
        transforms: Vec::new(),
        topic: "${@kafka.topic}".into(),
        topics: None,
        topics_match: None,
        qos: None,
        topics_allowed: Some(topics.to_vec()),
        key: None,
        headers: Default::default(),
        format: crate::encode::Format::Raw,
        avro: Default::default(),
        key_format: Default::default(),
        validate: None,
        dlq: None,
        exactly_once: false,
        sink: None,
        spool: None,
        coordination: None,
    };
    Ok(Processor::new(&c)?)
}

/// `--max N`: the first N records go to the sink; the rest are answered [`Fate::Busy`] (not
/// taken, their offsets not committed: the next run reads them).
struct Limited {
    inner: Arc<DeliverSink>,
    left: AtomicU64,
    done: CancellationToken,
}

impl Limited {
    fn take(&self) -> bool {
        let took = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if self.left.load(Ordering::Acquire) == 0 {
            self.done.cancel();
        }
        took
    }
}

impl Sink for Limited {
    fn send(&self, rec: OutRecord, partition: Option<i32>, mut ev: Event) -> BoxFuture<'_, ()> {
        if self.take() {
            self.inner.send(rec, partition, ev)
        } else {
            ev.ack.resolve(Fate::Busy);
            Box::pin(async {})
        }
    }
    fn dead_letter(&self, mut ev: Event, r: Rejection) -> BoxFuture<'_, ()> {
        if self.take() {
            self.inner.dead_letter(ev, r)
        } else {
            ev.ack.resolve(Fate::Busy);
            Box::pin(async {})
        }
    }
    fn drain(&self, timeout: Duration) -> BoxFuture<'_, i64> {
        self.inner.drain(timeout)
    }
    fn totals(&self) -> &Totals {
        self.inner.totals()
    }
    fn inflight(&self) -> i64 {
        self.inner.inflight()
    }
    fn dlq_topic(&self) -> &str {
        self.inner.dlq_topic()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_flags() {
        assert!(parse_sink("stdout").unwrap().stdout.is_some());
        assert_eq!(
            parse_sink("file:/tmp/x.ndjson").unwrap().file.unwrap().path,
            PathBuf::from("/tmp/x.ndjson")
        );
        assert_eq!(
            parse_sink("webhook:http://h:1/in?a=b")
                .unwrap()
                .webhook
                .unwrap()
                .url,
            "http://h:1/in?a=b"
        );
        assert_eq!(
            parse_sink("command:python3 h.py -v")
                .unwrap()
                .command
                .unwrap()
                .command,
            ["python3", "h.py", "-v"]
        );
        for bad in ["file:", "stdout:x", "kafka:t", "command: "] {
            assert!(parse_sink(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        let ago = parse_time("1h").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!((now - 3_600_000 - ago).abs() < 60_000);
        assert!(parse_time("yesterday").is_err());
    }
}
