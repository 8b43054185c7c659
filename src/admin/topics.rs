//! Topics: list, describe, create, alter configs, add partitions, delete.

use std::collections::{BTreeMap, HashMap};

use rdkafka::admin::{
    AlterConfig, ConfigSource as RdSource, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::metadata::Metadata;
use regex::Regex;
use serde::Serialize;

use super::{admin_client, consumer, is_internal, metadata, options, watermarks, AdminError, Ctx};
use crate::kafka::KafkaConfig;

/// One topic in `kgate topics list`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TopicSummary {
    /// Its name.
    pub name: String,
    /// Whether it is one of Kafka's own (`__consumer_offsets`, ...).
    pub internal: bool,
    /// How many partitions.
    pub partitions: usize,
    /// Replicas of its first partition (all partitions have as many unless reassigned).
    pub replication_factor: usize,
    /// Records it holds: Σ(high − low watermark) over its partitions (compacted or aborted
    /// transactional records still count until cleaned).
    pub messages: i64,
    /// `retention.ms` (-1: forever), when its configs could be read.
    pub retention_ms: Option<i64>,
    /// `cleanup.policy` (`delete`, `compact`, `compact,delete`), when its configs could be read.
    pub cleanup_policy: Option<String>,
}

/// Where a config value comes from (Kafka's DescribeConfigs `source`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConfigSource {
    /// Set on the topic itself (`kgate topics create/alter --config`).
    DynamicTopic,
    /// A dynamic setting of one broker.
    DynamicBroker,
    /// A dynamic setting of every broker.
    DynamicDefaultBroker,
    /// The broker's server.properties.
    StaticBroker,
    /// Kafka's built-in default.
    Default,
    /// The broker did not say.
    Unknown,
}

impl ConfigSource {
    fn from_rd(s: &RdSource) -> ConfigSource {
        match s {
            RdSource::DynamicTopic => ConfigSource::DynamicTopic,
            RdSource::DynamicBroker => ConfigSource::DynamicBroker,
            RdSource::DynamicDefaultBroker => ConfigSource::DynamicDefaultBroker,
            RdSource::StaticBroker => ConfigSource::StaticBroker,
            RdSource::Default => ConfigSource::Default,
            RdSource::Unknown => ConfigSource::Unknown,
        }
    }

    /// `dynamic_topic`, `static_broker`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigSource::DynamicTopic => "dynamic_topic",
            ConfigSource::DynamicBroker => "dynamic_broker",
            ConfigSource::DynamicDefaultBroker => "dynamic_default_broker",
            ConfigSource::StaticBroker => "static_broker",
            ConfigSource::Default => "default",
            ConfigSource::Unknown => "unknown",
        }
    }
}

/// One config entry of a topic.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConfigValue {
    /// The key, e.g. `retention.ms`.
    pub name: String,
    /// Its value; `None` when sensitive (never shown) or unset.
    pub value: Option<String>,
    /// Where the value comes from.
    pub source: ConfigSource,
    /// Whether it is Kafka's default (not set on the topic nor the broker).
    pub default: bool,
    /// Whether it is sensitive (its value is never shown).
    pub sensitive: bool,
    /// Whether it cannot be changed.
    pub read_only: bool,
}

/// One partition of a topic.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionDetail {
    /// The partition id.
    pub id: i32,
    /// The leader's broker id (-1: none).
    pub leader: i32,
    /// Broker ids holding a replica.
    pub replicas: Vec<i32>,
    /// Broker ids of the in-sync replicas.
    pub isr: Vec<i32>,
    /// The first offset still held.
    pub low: i64,
    /// The offset the next record gets (the high watermark).
    pub high: i64,
    /// `high − low`.
    pub messages: i64,
}

/// What `kgate topics describe T` shows.
#[derive(Debug, Clone, Serialize)]
pub struct TopicDetail {
    /// Its name.
    pub name: String,
    /// Whether it is one of Kafka's own.
    pub internal: bool,
    /// Replicas of its first partition.
    pub replication_factor: usize,
    /// Records over all partitions.
    pub messages: i64,
    /// Every partition, by id.
    pub partitions: Vec<PartitionDetail>,
    /// Every config entry, by name (sensitive values left out).
    pub configs: Vec<ConfigValue>,
}

/// A config change `alter_topic_configs` made.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConfigChange {
    /// The key.
    pub name: String,
    /// Its value before (`None`: the default, or sensitive).
    pub old: Option<String>,
    /// Its value now.
    pub new: String,
}

fn replication(md: &Metadata, topic: &str) -> usize {
    md.topics()
        .iter()
        .find(|t| t.name() == topic)
        .and_then(|t| t.partitions().first())
        .map_or(0, |p| p.replicas().len())
}

/// Topics matching `pattern` (a regex searched in the name; all when `None`), Kafka's internal
/// ones only with `internal`, by name. Message counts come from two batched ListOffsets
/// requests; retention and cleanup policy from one DescribeConfigs request for all topics.
pub async fn list_topics(
    k: &KafkaConfig,
    pattern: Option<&Regex>,
    internal: bool,
) -> Result<Vec<TopicSummary>, AdminError> {
    let kc = k.clone();
    let pattern = pattern.cloned();
    let mut topics = tokio::task::spawn_blocking(move || {
        let c = consumer(&kc, None)?;
        let md = metadata(&c, &kc, None)?;
        let mut names: Vec<(String, usize, usize)> = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .filter(|t| internal || !is_internal(t.name()))
            .filter(|t| pattern.as_ref().is_none_or(|re| re.is_match(t.name())))
            .map(|t| {
                (
                    t.name().to_string(),
                    t.partitions().len(),
                    replication(&md, t.name()),
                )
            })
            .collect();
        names.sort();
        let parts: Vec<(String, i32)> = md
            .topics()
            .iter()
            .filter(|t| {
                names
                    .binary_search_by(|n| n.0.as_str().cmp(t.name()))
                    .is_ok()
            })
            .flat_map(|t| {
                t.partitions()
                    .iter()
                    .map(move |p| (t.name().to_string(), p.id()))
            })
            .collect();
        let marks = watermarks(&c, &parts)
            .map_err(|e| Ctx::new(&kc, "read offsets of", "topics", "").kafka(e))?;
        let mut count: HashMap<&str, i64> = HashMap::new();
        for ((t, _), (low, high)) in &marks {
            *count.entry(t.as_str()).or_default() += (high - low).max(0);
        }
        Ok::<_, AdminError>(
            names
                .iter()
                .map(|(name, partitions, rf)| TopicSummary {
                    name: name.clone(),
                    internal: is_internal(name),
                    partitions: *partitions,
                    replication_factor: *rf,
                    messages: count.get(name.as_str()).copied().unwrap_or(0),
                    retention_ms: None,
                    cleanup_policy: None,
                })
                .collect::<Vec<_>>(),
        )
    })
    .await??;
    if topics.is_empty() {
        return Ok(topics);
    }
    // One DescribeConfigs for all; without the right to describe configs the list still
    // shows, with these left empty.
    let admin = admin_client(k)?;
    let specs: Vec<ResourceSpecifier<'_>> = topics
        .iter()
        .map(|t| ResourceSpecifier::Topic(&t.name))
        .collect();
    let described = admin.describe_configs(specs.iter(), &options()).await;
    drop(specs);
    if let Ok(results) = described {
        for (topic, res) in topics.iter_mut().zip(results) {
            if let Ok(res) = res {
                topic.retention_ms = res
                    .get("retention.ms")
                    .and_then(|e| e.value.as_deref())
                    .and_then(|v| v.parse().ok());
                topic.cleanup_policy = res.get("cleanup.policy").and_then(|e| e.value.clone());
            }
        }
    }
    Ok(topics)
}

/// A topic's partitions (leader, replicas, ISR, watermarks) and every config entry.
pub async fn describe_topic(k: &KafkaConfig, name: &str) -> Result<TopicDetail, AdminError> {
    let kc = k.clone();
    let topic = name.to_string();
    let mut detail = tokio::task::spawn_blocking(move || {
        let c = consumer(&kc, None)?;
        let md = metadata(&c, &kc, None)?;
        let Some(t) = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
        else {
            return Err(AdminError::NoTopic {
                brokers: kc.brokers.join(","),
                topic,
            });
        };
        let parts: Vec<(String, i32)> = t
            .partitions()
            .iter()
            .map(|p| (topic.clone(), p.id()))
            .collect();
        let marks = watermarks(&c, &parts)
            .map_err(|e| Ctx::new(&kc, "read offsets of", "topic", &topic).kafka(e))?;
        let mut partitions: Vec<PartitionDetail> = t
            .partitions()
            .iter()
            .map(|p| {
                let (low, high) = marks
                    .get(&(topic.clone(), p.id()))
                    .copied()
                    .unwrap_or((0, 0));
                PartitionDetail {
                    id: p.id(),
                    leader: p.leader(),
                    replicas: p.replicas().to_vec(),
                    isr: p.isr().to_vec(),
                    low,
                    high,
                    messages: (high - low).max(0),
                }
            })
            .collect();
        partitions.sort_by_key(|p| p.id);
        Ok(TopicDetail {
            internal: is_internal(&topic),
            replication_factor: replication(&md, &topic),
            messages: partitions.iter().map(|p| p.messages).sum(),
            name: topic,
            partitions,
            configs: Vec::new(),
        })
    })
    .await??;
    detail.configs = topic_configs(k, name, "describe configs of").await?;
    Ok(detail)
}

/// Every config entry of a topic, by name; sensitive values left out.
async fn topic_configs(
    k: &KafkaConfig,
    name: &str,
    op: &str,
) -> Result<Vec<ConfigValue>, AdminError> {
    let ctx = Ctx::new(k, op, "topic", name);
    let admin = admin_client(k)?;
    let res = admin
        .describe_configs([&ResourceSpecifier::Topic(name)], &options())
        .await
        .map_err(|e| ctx.kafka(e))?;
    let res = match res.into_iter().next() {
        Some(Ok(r)) => r,
        Some(Err(code)) => return Err(ctx.code(code)),
        None => return Ok(Vec::new()),
    };
    let mut configs: Vec<ConfigValue> = res
        .entries
        .iter()
        .map(|e| ConfigValue {
            name: e.name.clone(),
            value: if e.is_sensitive {
                None
            } else {
                e.value.clone()
            },
            source: ConfigSource::from_rd(&e.source),
            default: e.is_default,
            sensitive: e.is_sensitive,
            read_only: e.is_read_only,
        })
        .collect();
    configs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(configs)
}

fn check_configs(configs: &[(String, String)]) -> Result<(), AdminError> {
    for (key, _) in configs {
        if key.trim().is_empty() {
            return Err(AdminError::Invalid(
                "a config key is empty: give each as key=value, e.g. retention.ms=86400000".into(),
            ));
        }
    }
    Ok(())
}

/// Creates a topic with `partitions` partitions, `replication_factor` replicas (the broker's
/// `default.replication.factor` when `None`) and the topic configs `configs`; waits until the
/// controller has created it.
pub async fn create_topic(
    k: &KafkaConfig,
    name: &str,
    partitions: i32,
    replication_factor: Option<i32>,
    configs: &[(String, String)],
) -> Result<(), AdminError> {
    check_configs(configs)?;
    if partitions < 1 {
        return Err(AdminError::Invalid(format!(
            "topic {name}: --partitions must be at least 1, not {partitions}"
        )));
    }
    if !crate::kafka::valid_topic_name(name) {
        return Err(AdminError::Invalid(format!(
            "`{name}` is not a Kafka topic name: at most 249 characters of ASCII letters, digits, `.`, `_` and `-`"
        )));
    }
    reachable(k).await?;
    let ctx = Ctx::new(k, "create", "topic", name);
    let mut topic = NewTopic::new(
        name,
        partitions,
        TopicReplication::Fixed(replication_factor.unwrap_or(-1)),
    );
    for (key, value) in configs {
        topic = topic.set(key, value);
    }
    let admin = admin_client(k)?;
    let res = admin
        .create_topics([&topic], &options())
        .await
        .map_err(|e| ctx.kafka(e))?;
    for r in res {
        if let Err((_, code)) = r {
            return Err(ctx.code(code));
        }
    }
    Ok(())
}

/// Checks that the brokers answer (naming a refused login or handshake), before an admin
/// request that would otherwise only time out.
async fn reachable(k: &KafkaConfig) -> Result<Metadata, AdminError> {
    let kc = k.clone();
    tokio::task::spawn_blocking(move || {
        let c = consumer(&kc, None)?;
        metadata(&c, &kc, None)
    })
    .await?
}

fn require_topic(k: &KafkaConfig, md: &Metadata, name: &str) -> Result<usize, AdminError> {
    md.topics()
        .iter()
        .find(|t| t.name() == name && t.error().is_none())
        .map(|t| t.partitions().len())
        .ok_or_else(|| AdminError::NoTopic {
            brokers: k.brokers.join(","),
            topic: name.to_string(),
        })
}

/// Sets the topic configs `configs` on topic `name`, keeping every other value set on the
/// topic, and answers what changed.
///
/// rdkafka 0.39 has only the non-incremental AlterConfigs, which resets every key it is not
/// sent. So this reads the topic's configs first and sends every value set on the topic
/// itself (source `dynamic_topic`) with the changes on top: nothing else is reset. A change
/// made by someone else between the read and the write is lost (Kafka's AlterConfigs has no
/// compare-and-set); a sensitive value set on the topic cannot be read back, so such a topic
/// is refused rather than have that value reset.
pub async fn alter_topic_configs(
    k: &KafkaConfig,
    name: &str,
    configs: &[(String, String)],
) -> Result<Vec<ConfigChange>, AdminError> {
    check_configs(configs)?;
    if configs.is_empty() {
        return Ok(Vec::new());
    }
    let md = reachable(k).await?;
    require_topic(k, &md, name)?;
    let ctx = Ctx::new(k, "alter configs of", "topic", name);
    let current = topic_configs(k, name, "alter configs of").await?;
    let mut set: BTreeMap<String, String> = BTreeMap::new();
    for c in current
        .iter()
        .filter(|c| c.source == ConfigSource::DynamicTopic)
    {
        match &c.value {
            Some(v) => {
                set.insert(c.name.clone(), v.clone());
            }
            None if configs.iter().any(|(key, _)| *key == c.name) => {}
            None => {
                return Err(AdminError::Invalid(format!(
                    "Kafka {}: topic {name} has the sensitive config {} set, which cannot be read back: altering other configs would reset it (rdkafka has only the non-incremental AlterConfigs); set it again in the same command with --config {}=…",
                    k.brokers.join(","),
                    c.name,
                    c.name
                )));
            }
        }
    }
    let old: HashMap<&str, Option<&String>> = current
        .iter()
        .map(|c| (c.name.as_str(), c.value.as_ref()))
        .collect();
    let changes: Vec<ConfigChange> = configs
        .iter()
        .map(|(key, value)| ConfigChange {
            name: key.clone(),
            old: old.get(key.as_str()).copied().flatten().cloned(),
            new: value.clone(),
        })
        .collect();
    for (key, value) in configs {
        set.insert(key.clone(), value.clone());
    }
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(name));
    for (key, value) in &set {
        alter = alter.set(key, value);
    }
    let admin = admin_client(k)?;
    let res = admin
        .alter_configs([&alter], &options())
        .await
        .map_err(|e| ctx.kafka(e))?;
    for r in res {
        if let Err((_, code)) = r {
            return Err(ctx.code(code));
        }
    }
    Ok(changes)
}

/// Grows topic `name` to `total` partitions. Kafka cannot remove partitions, so `total` must
/// be more than it has. Records with a key may go to another partition than before.
pub async fn add_partitions(k: &KafkaConfig, name: &str, total: usize) -> Result<(), AdminError> {
    let md = reachable(k).await?;
    let now = require_topic(k, &md, name)?;
    if total <= now {
        return Err(AdminError::Invalid(format!(
            "Kafka {}: topic {name} has {now} partition(s); --partitions must be more than that (Kafka cannot remove partitions)",
            k.brokers.join(",")
        )));
    }
    let ctx = Ctx::new(k, "add partitions to", "topic", name);
    let admin = admin_client(k)?;
    let res = admin
        .create_partitions([&NewPartitions::new(name, total)], &options())
        .await
        .map_err(|e| ctx.kafka(e))?;
    for r in res {
        if let Err((_, code)) = r {
            return Err(ctx.code(code));
        }
    }
    Ok(())
}

/// Deletes topic `name` and every record in it.
pub async fn delete_topic(k: &KafkaConfig, name: &str) -> Result<(), AdminError> {
    let md = reachable(k).await?;
    require_topic(k, &md, name)?;
    let ctx = Ctx::new(k, "delete", "topic", name);
    let admin = admin_client(k)?;
    let res = admin
        .delete_topics(&[name], &options())
        .await
        .map_err(|e| ctx.kafka(e))?;
    for r in res {
        if let Err((_, code)) = r {
            return Err(ctx.code(code));
        }
    }
    Ok(())
}
