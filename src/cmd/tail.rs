//! `kgate tail`: print the last records of a topic (and follow it), to see what arrived.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::KafkaConfig;

/// Arguments of `kgate tail`.
#[derive(clap::Args, Debug, Clone)]
pub struct TailArgs {
    /// Topic to read.
    #[arg(short, long)]
    pub topic: String,
    /// Config file whose `kafka:` section (brokers, security) to use.
    #[arg(short, long, env = "KGATE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Brokers, when no config is given.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// How many of the latest records to print per partition (0 = none, only new ones with --follow).
    #[arg(short = 'n', long, default_value_t = 5)]
    pub last: i64,
    /// Keep printing new records until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Without --follow: give up when nothing arrived for this long.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// Schema registry (Confluent API URL) to decode Avro records with (else the config's
    /// `schema_registry:`); records in the Confluent wire format then print as JSON.
    #[arg(long, value_name = "URL", env = "KGATE_REGISTRY_URL")]
    pub registry: Option<String>,
}

/// How `tail` decodes Avro values: the schema cache and a runtime to await it on.
pub struct AvroDecoding {
    /// Schemas by id.
    pub cache: std::sync::Arc<crate::registry::SchemaCache>,
    /// The runtime the registry client runs on.
    pub runtime: tokio::runtime::Handle,
}

/// Prints records as JSON lines: partition, offset, key, headers, value (as JSON when it is).
pub fn tail(
    args: &TailArgs,
    kafka: &KafkaConfig,
    avro: Option<&AvroDecoding>,
) -> anyhow::Result<u64> {
    let consumer: BaseConsumer<crate::kafka::QuietContext> =
        crate::kafka::base_client_config(kafka)
            .set("group.id", "kgate-tail")
            .set("enable.auto.commit", "false")
            .create_with_context(Default::default())?;
    let md = consumer
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("cannot reach Kafka at {}: {e}", kafka.brokers.join(",")))?;
    let t = md
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| anyhow::anyhow!("topic {} does not exist (yet)", args.topic))?;
    let mut tpl = TopicPartitionList::new();
    // Without --follow, read up to the end as it was at the start, then stop.
    let mut ends = std::collections::HashMap::new();
    for p in t.partitions() {
        tpl.add_partition_offset(&args.topic, p.id(), Offset::OffsetTail(args.last.max(0)))?;
        let (low, high) =
            consumer.fetch_watermarks(&args.topic, p.id(), Duration::from_secs(10))?;
        if high > low && args.last > 0 {
            ends.insert(p.id(), high);
        }
    }
    consumer.assign(&tpl)?;
    let mut printed = 0;
    let mut last = Instant::now();
    loop {
        if !args.follow && ends.is_empty() {
            return Ok(printed);
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let mut headers = serde_json::Map::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.insert(
                            hd.key.to_string(),
                            String::from_utf8_lossy(hd.value.unwrap_or_default()).into(),
                        );
                    }
                }
                let payload = m.payload().unwrap_or_default();
                let mut schema_id = None;
                let value = match avro {
                    Some(a) if payload.len() > 4 && payload[0] == 0 => {
                        match a.runtime.block_on(a.cache.decode(payload)) {
                            Ok((id, v)) => {
                                schema_id = Some(id);
                                v
                            }
                            Err(e) => serde_json::json!({ "avro_decode_error": e }),
                        }
                    }
                    _ => serde_json::from_slice::<serde_json::Value>(payload)
                        .unwrap_or_else(|_| String::from_utf8_lossy(payload).into()),
                };
                let line = serde_json::json!({
                    "partition": m.partition(),
                    "offset": m.offset(),
                    "key": m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    "headers": headers,
                    "value": value,
                });
                let line = match (schema_id, line) {
                    (Some(id), serde_json::Value::Object(mut o)) => {
                        o.insert("schema_id".into(), id.into());
                        serde_json::Value::Object(o)
                    }
                    (_, l) => l,
                };
                println!("{line}");
                printed += 1;
                if ends
                    .get(&m.partition())
                    .is_some_and(|&end| m.offset() + 1 >= end)
                {
                    ends.remove(&m.partition());
                }
                last = Instant::now();
            }
            Some(Err(e)) => return Err(anyhow::anyhow!("reading {}: {e}", args.topic)),
            None if !args.follow && last.elapsed() >= args.idle => return Ok(printed),
            None => {}
        }
    }
}
