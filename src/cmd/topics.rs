//! `kgate topics ...`: list, describe, create, alter and delete Kafka topics.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};
use regex::Regex;
use serde_json::json;

use super::admin::{confirmed, exit_for, human_ms, load_kafka, print_json, table, Conn, Output};
use crate::admin;
use crate::kafka::KafkaConfig;

const EXAMPLES: &str = "\
Where Kafka is (the first that is given):
  --config FILE        the `kafka:` section of a kgate config (brokers, TLS, SASL)
  --brokers LIST       host:port[,host:port] (default 127.0.0.1:9092), no security
In `create` and `alter`, --config KEY=VALUE (with a `=`) sets a topic config instead; a value
without `=` is still the kgate config file.

Examples:
  kgate topics list
  kgate topics list --pattern '^ticks\\.' --output json
  kgate topics describe ticks.v1.raw
  kgate topics create ticks.v1.raw --partitions 6 --replication-factor 3 --retention 7d
  kgate topics create ticks.v1.compact --partitions 3 --config cleanup.policy=compact
  kgate topics alter ticks.v1.raw --retention 1d
  kgate topics alter ticks.v1.raw --config max.message.bytes=2097152 --partitions 12
  kgate topics delete ticks.v1.raw --yes
  kgate topics list --config kgate.yaml      # SASL/TLS settings from the gateway's config

Exit status: 0 done, 1 Kafka error (unreachable, refused, topic exists or missing), 2 bad
arguments or config (or delete without --yes off a terminal).";

/// `kgate topics`: arguments.
#[derive(Debug, Args)]
#[command(after_long_help = EXAMPLES)]
pub struct TopicsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TopicsCommand,
}

/// `kgate topics` subcommands.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// List topics: partitions, replication factor, messages held, retention, cleanup policy.
    ///
    /// Messages are Σ(high − low watermark) over the partitions. Kafka's internal topics
    /// (`__consumer_offsets`, ...) only with --internal.
    #[command(after_long_help = EXAMPLES)]
    List(ListArgs),
    /// A topic's partitions (leader, replicas, ISR, low/high watermarks, messages) and its
    /// configs set on the topic or the broker, with where each comes from (--all-configs: every
    /// config, defaults too).
    #[command(after_long_help = EXAMPLES)]
    Describe(DescribeArgs),
    /// Create a topic.
    #[command(after_long_help = EXAMPLES)]
    Create(CreateArgs),
    /// Change a topic's configs (the others it has are kept) and/or grow its partitions.
    #[command(after_long_help = EXAMPLES)]
    Alter(AlterArgs),
    /// Delete a topic and every record in it. Asks on a terminal; elsewhere needs --yes.
    #[command(after_long_help = EXAMPLES)]
    Delete(DeleteArgs),
}

/// `kgate topics list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only topics whose name matches this regular expression (searched, not anchored: use
    /// `^…$` for a whole name).
    #[arg(short, long, value_name = "RE")]
    pub pattern: Option<String>,
    /// Include Kafka's internal topics (`__consumer_offsets`, `__transaction_state`, ...).
    #[arg(long)]
    pub internal: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// `kgate topics describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The topic.
    pub topic: String,
    /// In the table, show every config, Kafka's defaults too (JSON always has them all).
    #[arg(long)]
    pub all_configs: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// Where Kafka is, for the commands whose --config also takes KEY=VALUE topic configs.
#[derive(Debug, Args, Clone)]
pub struct ConnAndConfigs {
    /// A topic config KEY=VALUE (repeat it), e.g. `--config cleanup.policy=compact`; a value
    /// without `=` is a kgate config file whose `kafka:` section (brokers, security) is used.
    #[arg(short, long, value_name = "KEY=VALUE | FILE")]
    pub config: Vec<String>,
    /// Brokers (host:port[,host:port]), without security, when no config file is given.
    #[arg(long, default_value = "127.0.0.1:9092", value_name = "LIST")]
    pub brokers: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl ConnAndConfigs {
    /// The Kafka settings and the topic configs, or the exit status after saying what is wrong.
    fn split(&self, cmd: &str) -> Result<(KafkaConfig, Vec<(String, String)>), ExitCode> {
        let mut file: Option<PathBuf> = std::env::var_os("KGATE_CONFIG").map(PathBuf::from);
        let mut from_flag = false;
        let mut configs = Vec::new();
        for v in &self.config {
            match v.split_once('=') {
                Some((key, value)) => {
                    if key.trim().is_empty() {
                        eprintln!(
                            "kgate topics {cmd}: --config {v}: the key is empty; give KEY=VALUE, e.g. --config retention.ms=86400000"
                        );
                        return Err(ExitCode::from(2));
                    }
                    configs.push((key.trim().to_string(), value.to_string()));
                }
                None if from_flag => {
                    eprintln!(
                        "kgate topics {cmd}: two config files given (--config {v}); give one, and topic configs as KEY=VALUE"
                    );
                    return Err(ExitCode::from(2));
                }
                None => {
                    file = Some(PathBuf::from(v));
                    from_flag = true;
                }
            }
        }
        let k = load_kafka(file.as_deref(), &self.brokers)?;
        Ok((k, configs))
    }
}

/// `kgate topics create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The topic's name.
    pub topic: String,
    /// How many partitions.
    #[arg(short = 'p', long, value_name = "N")]
    pub partitions: i32,
    /// How many replicas of each partition (default: the broker's default.replication.factor).
    #[arg(short = 'r', long, value_name = "R")]
    pub replication_factor: Option<i32>,
    /// How long records are kept (`retention.ms`): e.g. 7d, 12h, 30m, or `forever`.
    #[arg(long, value_name = "DURATION", value_parser = parse_retention)]
    pub retention: Option<i64>,
    #[command(flatten)]
    pub conn: ConnAndConfigs,
}

/// `kgate topics alter`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true).args(["config", "partitions", "retention"])))]
pub struct AlterArgs {
    /// The topic.
    pub topic: String,
    /// Grow the topic to this many partitions (Kafka cannot remove partitions; keyed records
    /// may land on other partitions than before).
    #[arg(short = 'p', long, value_name = "N")]
    pub partitions: Option<usize>,
    /// Set how long records are kept (`retention.ms`): e.g. 7d, 12h, or `forever`.
    #[arg(long, value_name = "DURATION", value_parser = parse_retention)]
    pub retention: Option<i64>,
    #[command(flatten)]
    pub conn: ConnAndConfigs,
}

/// `kgate topics delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The topic.
    pub topic: String,
    /// Delete without asking (needed when stdin is not a terminal).
    #[arg(short, long)]
    pub yes: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// `7d` → 604800000; `forever` (or `-1`) → -1.
fn parse_retention(s: &str) -> Result<i64, String> {
    if matches!(s, "forever" | "infinite" | "-1") {
        return Ok(-1);
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}: give a duration like 7d, 12h, 30m, or `forever`"))
        .and_then(|d: Duration| {
            i64::try_from(d.as_millis()).map_err(|_| "that is too long".to_string())
        })
}

/// `kgate topics ...`.
pub async fn main(args: TopicsArgs) -> ExitCode {
    match args.command {
        TopicsCommand::List(a) => list(a).await,
        TopicsCommand::Describe(a) => describe(a).await,
        TopicsCommand::Create(a) => create(a).await,
        TopicsCommand::Alter(a) => alter(a).await,
        TopicsCommand::Delete(a) => delete(a).await,
    }
}

macro_rules! kafka_or_exit {
    ($e:expr) => {
        match $e {
            Ok(k) => k,
            Err(code) => return code,
        }
    };
}

macro_rules! ok_or_exit {
    ($cmd:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => {
                eprintln!("kgate topics {}: {e}", $cmd);
                return exit_for(&e);
            }
        }
    };
}

async fn list(a: ListArgs) -> ExitCode {
    let pattern = match a.pattern.as_deref().map(Regex::new).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kgate topics list: --pattern is not a regular expression: {e}");
            return ExitCode::from(2);
        }
    };
    let k = kafka_or_exit!(load_kafka(a.conn.config.as_deref(), &a.conn.brokers));
    let topics = ok_or_exit!(
        "list",
        admin::list_topics(&k, pattern.as_ref(), a.internal).await
    );
    if a.conn.output == Output::Json {
        print_json(&topics);
        return ExitCode::SUCCESS;
    }
    let rows: Vec<Vec<String>> = topics
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.partitions.to_string(),
                t.replication_factor.to_string(),
                t.messages.to_string(),
                t.retention_ms.map_or("-".into(), human_ms),
                t.cleanup_policy.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "TOPIC",
                "PARTITIONS",
                "RF",
                "MESSAGES",
                "RETENTION",
                "CLEANUP"
            ],
            &rows
        )
    );
    println!("{} topic(s)", topics.len());
    ExitCode::SUCCESS
}

/// A config value for the table: durations and sizes read as people write them.
fn show_value(name: &str, value: Option<&str>, sensitive: bool) -> String {
    if sensitive {
        return "(sensitive)".into();
    }
    let Some(v) = value else {
        return "-".into();
    };
    match v.parse::<i64>() {
        Ok(n) if name.ends_with(".ms") => format!("{v} ({})", human_ms(n)),
        Ok(n) if name.ends_with(".bytes") && n >= 1024 => {
            format!("{v} ({})", super::admin::human_bytes(n))
        }
        _ => v.to_string(),
    }
}

async fn describe(a: DescribeArgs) -> ExitCode {
    let k = kafka_or_exit!(load_kafka(a.conn.config.as_deref(), &a.conn.brokers));
    let t = ok_or_exit!("describe", admin::describe_topic(&k, &a.topic).await);
    if a.conn.output == Output::Json {
        print_json(&t);
        return ExitCode::SUCCESS;
    }
    let ids = |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    println!(
        "topic {}: {} partition(s), replication factor {}, {} message(s)\n",
        t.name,
        t.partitions.len(),
        t.replication_factor,
        t.messages
    );
    let rows: Vec<Vec<String>> = t
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.id.to_string(),
                p.leader.to_string(),
                ids(&p.replicas),
                ids(&p.isr),
                p.low.to_string(),
                p.high.to_string(),
                p.messages.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "PARTITION",
                "LEADER",
                "REPLICAS",
                "ISR",
                "LOW",
                "HIGH",
                "MESSAGES"
            ],
            &rows
        )
    );
    let shown: Vec<Vec<String>> = t
        .configs
        .iter()
        .filter(|c| a.all_configs || !c.default)
        .map(|c| {
            vec![
                c.name.clone(),
                show_value(&c.name, c.value.as_deref(), c.sensitive),
                c.source.as_str().to_string(),
            ]
        })
        .collect();
    println!();
    if shown.is_empty() {
        println!("configs: all Kafka's defaults (--all-configs lists them)");
    } else {
        if !a.all_configs {
            println!("configs not at Kafka's default (--all-configs lists every one):");
        }
        print!("{}", table(&["CONFIG", "VALUE", "SOURCE"], &shown));
    }
    ExitCode::SUCCESS
}

async fn create(a: CreateArgs) -> ExitCode {
    let (k, mut configs) = kafka_or_exit!(a.conn.split("create"));
    if let Some(ms) = a.retention {
        configs.push(("retention.ms".into(), ms.to_string()));
    }
    ok_or_exit!(
        "create",
        admin::create_topic(&k, &a.topic, a.partitions, a.replication_factor, &configs).await
    );
    if a.conn.output == Output::Json {
        print_json(&json!({
            "created": a.topic,
            "partitions": a.partitions,
            "replication_factor": a.replication_factor,
            "configs": configs.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<std::collections::BTreeMap<_, _>>(),
        }));
    } else {
        let rf = a
            .replication_factor
            .map_or("the broker's default".to_string(), |r| r.to_string());
        println!(
            "created topic {} ({} partition(s), replication factor {rf})",
            a.topic, a.partitions
        );
        for (key, value) in &configs {
            println!("  {key} = {}", show_value(key, Some(value), false));
        }
    }
    ExitCode::SUCCESS
}

async fn alter(a: AlterArgs) -> ExitCode {
    let (k, mut configs) = kafka_or_exit!(a.conn.split("alter"));
    if let Some(ms) = a.retention {
        configs.push(("retention.ms".into(), ms.to_string()));
    }
    if configs.is_empty() && a.partitions.is_none() {
        eprintln!(
            "kgate topics alter: nothing to change: give --config KEY=VALUE, --retention or --partitions"
        );
        return ExitCode::from(2);
    }
    let changes = ok_or_exit!(
        "alter",
        admin::alter_topic_configs(&k, &a.topic, &configs).await
    );
    if let Some(n) = a.partitions {
        ok_or_exit!("alter", admin::add_partitions(&k, &a.topic, n).await);
    }
    if a.conn.output == Output::Json {
        print_json(&json!({
            "topic": a.topic,
            "configs": changes,
            "partitions": a.partitions,
        }));
        return ExitCode::SUCCESS;
    }
    for c in &changes {
        println!(
            "topic {}: {} {} → {}",
            a.topic,
            c.name,
            show_value(&c.name, c.old.as_deref(), false),
            show_value(&c.name, Some(&c.new), false)
        );
    }
    if let Some(n) = a.partitions {
        println!("topic {}: now {n} partition(s)", a.topic);
    }
    ExitCode::SUCCESS
}

async fn delete(a: DeleteArgs) -> ExitCode {
    let k = kafka_or_exit!(load_kafka(a.conn.config.as_deref(), &a.conn.brokers));
    if !a.yes {
        // Say what would go before asking; a missing topic is answered at once.
        let t = ok_or_exit!("delete", admin::describe_topic(&k, &a.topic).await);
        let what = format!(
            "delete topic {} and its {} message(s) in {} partition(s)",
            a.topic,
            t.messages,
            t.partitions.len()
        );
        if let Err(code) = confirmed("kgate topics delete", &what, "topic", &a.topic) {
            return code;
        }
    }
    ok_or_exit!("delete", admin::delete_topic(&k, &a.topic).await);
    if a.conn.output == Output::Json {
        print_json(&json!({ "deleted": a.topic }));
    } else {
        println!("deleted topic {}", a.topic);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_takes_durations_and_forever() {
        assert_eq!(parse_retention("1d"), Ok(86_400_000));
        assert_eq!(parse_retention("30m"), Ok(1_800_000));
        assert_eq!(parse_retention("forever"), Ok(-1));
        assert!(parse_retention("soon").unwrap_err().contains("like 7d"));
    }

    #[test]
    fn config_values_show_units() {
        assert_eq!(
            show_value("retention.ms", Some("86400000"), false),
            "86400000 (1d)"
        );
        assert_eq!(
            show_value("cleanup.policy", Some("compact"), false),
            "compact"
        );
        assert_eq!(show_value("sasl.jaas.config", None, true), "(sensitive)");
    }
}
