//! Broker metadata: reachability, topics, and whether the broker creates topics itself.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::KafkaConfig;

/// What `check` and `/readyz` learn from the brokers.
#[derive(Debug, Clone)]
pub struct BrokerInfo {
    /// `id@host:port` of every broker.
    pub brokers: Vec<String>,
    /// Topic → partition count.
    pub topics: HashMap<String, usize>,
    /// Broker setting `auto.create.topics.enable`, when it could be read.
    pub auto_create: Option<bool>,
}

/// Fetches cluster metadata and the broker's topic auto-creation setting.
pub async fn fetch_metadata(k: &KafkaConfig, timeout: Duration) -> anyhow::Result<BrokerInfo> {
    let kc = k.clone();
    let (brokers, topics, first) =
        tokio::task::spawn_blocking(move || fetch_blocking(&kc, timeout)).await??;
    let auto_create = match first {
        Some(id) => broker_auto_create(k, id, timeout).await,
        None => None,
    };
    Ok(BrokerInfo {
        brokers,
        topics,
        auto_create,
    })
}

type Fetched = (Vec<String>, HashMap<String, usize>, Option<i32>);

fn fetch_blocking(k: &KafkaConfig, timeout: Duration) -> anyhow::Result<Fetched> {
    let consumer: BaseConsumer<super::QuietContext> = super::base_client_config(k)
        .create_with_context(Default::default())
        .map_err(|e| anyhow::anyhow!("cannot create a Kafka client: {e}"))?;
    let md = consumer.fetch_metadata(None, timeout).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach Kafka at {} within {:?}: {e}; is the broker running (scripts/services up) and are kafka.brokers and kafka.security right?",
            k.brokers.join(","),
            timeout
        )
    })?;
    let brokers = md
        .brokers()
        .iter()
        .map(|b| format!("{}@{}:{}", b.id(), b.host(), b.port()))
        .collect();
    let topics = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect();
    Ok((brokers, topics, md.brokers().first().map(|b| b.id())))
}

async fn broker_auto_create(k: &KafkaConfig, broker: i32, timeout: Duration) -> Option<bool> {
    let admin: AdminClient<super::QuietContext> = super::base_client_config(k)
        .create_with_context(Default::default())
        .ok()?;
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let res = admin
        .describe_configs([&ResourceSpecifier::Broker(broker)], &opts)
        .await
        .ok()?;
    let cfg = res.into_iter().next()?.ok()?;
    let entry = cfg.get("auto.create.topics.enable")?;
    entry.value.as_deref().map(|v| v == "true")
}
