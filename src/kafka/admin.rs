//! Broker metadata: reachability, topics, and whether the broker creates topics itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::metadata::Metadata;

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

/// Why broker metadata could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The client could not even be created (bad settings).
    #[error("cannot create a Kafka client: {0}")]
    Client(#[source] KafkaError),
    /// No broker answered in time.
    #[error("cannot reach Kafka at {brokers} within {timeout:?}: {source}; is the broker running (scripts/services up) and are kafka.brokers and kafka.security right?")]
    Unreachable {
        /// The bootstrap servers tried.
        brokers: String,
        /// How long it waited.
        timeout: Duration,
        /// What librdkafka said.
        source: KafkaError,
    },
    /// A broker answered but refused the connection's settings: the SASL login, the TLS
    /// handshake. The text names what to change in `kafka.security`.
    #[error("{diagnosis}")]
    Refused {
        /// The bootstrap servers tried.
        brokers: String,
        /// What to fix.
        diagnosis: super::Diagnosis,
    },
    /// The blocking task did not complete (the runtime is shutting down).
    #[error("the metadata request was cancelled: {0}")]
    Cancelled(#[from] tokio::task::JoinError),
}

/// Fetches cluster metadata and the broker's topic auto-creation setting.
pub async fn fetch_metadata(
    k: &KafkaConfig,
    timeout: Duration,
) -> Result<BrokerInfo, MetadataError> {
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

/// The first wait for metadata; each next one doubles, up to [`LONGEST_ATTEMPT`]. The broker
/// connection outlives an attempt, so short ones cost nothing but a request.
const FIRST_ATTEMPT: Duration = Duration::from_millis(250);
const LONGEST_ATTEMPT: Duration = Duration::from_secs(1);

fn fetch_blocking(k: &KafkaConfig, timeout: Duration) -> Result<Fetched, MetadataError> {
    let consumer: BaseConsumer<super::QuietContext> = super::base_client_config(k)
        .create_with_context(Default::default())
        .map_err(MetadataError::Client)?;
    let md = metadata_blocking(&consumer, k, None, timeout)?;
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

/// Cluster metadata (all topics, or `topic`) through `consumer`, a client made from
/// [`super::base_client_config`]`(k)` with a [`super::QuietContext`]: retried until `timeout`,
/// and answered at once with what to fix when the broker refuses the client's settings.
/// Blocking: call it from `spawn_blocking`.
pub fn metadata_blocking(
    consumer: &BaseConsumer<super::QuietContext>,
    k: &KafkaConfig,
    topic: Option<&str>,
    timeout: Duration,
) -> Result<Metadata, MetadataError> {
    // In steps, serving the client's error events between them: a refused login or TLS
    // handshake is reported there (the request itself only times out), and it will not heal
    // by waiting, so it is answered at once with what to fix.
    let deadline = Instant::now() + timeout;
    let mut attempt = FIRST_ATTEMPT;
    let md = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match consumer.fetch_metadata(topic, attempt.min(left)) {
            Ok(md) => break md,
            Err(source) => {
                // One poll serves one event (a log line too) and answers None for most:
                // serve a batch.
                for _ in 0..64 {
                    let _ = consumer.poll(Duration::ZERO);
                }
                if let Some(diagnosis) = consumer.context().diagnosis(k) {
                    return Err(MetadataError::Refused {
                        brokers: k.brokers.join(","),
                        diagnosis,
                    });
                }
                if Instant::now() >= deadline {
                    return Err(MetadataError::Unreachable {
                        brokers: k.brokers.join(","),
                        timeout,
                        source,
                    });
                }
                attempt = (attempt * 2).min(LONGEST_ATTEMPT);
            }
        }
    };
    Ok(md)
}
