//! Operating Kafka: the cluster, topics and consumer groups, as `kgate cluster`, `kgate topics`
//! and `kgate groups` (src/cmd/admin.rs) and the web UI's JSON API call them. Every function
//! takes the gateway's [`KafkaConfig`] (brokers and security), opens its own short-lived
//! clients made from [`crate::kafka::base_client_config`], and answers a serializable value or
//! an [`AdminError`] that names the broker, the resource and what to do. Nothing here prints.
//!
//! rdkafka's admin calls are async; its metadata, offset and group-list calls block and run in
//! `spawn_blocking`. Every request waits at most [`TIMEOUT`].

mod groups;
mod topics;

pub use groups::{
    delete_group, describe_group, list_groups, parse_member_assignment, reset_offsets, GroupDetail,
    GroupMember, GroupSummary, OffsetChange, PartitionLag, ResetTo, TopicPartitions,
};
pub use topics::{
    add_partitions, alter_topic_configs, create_topic, delete_topic, describe_topic, list_topics,
    ConfigChange, ConfigSource, ConfigValue, PartitionDetail, TopicDetail, TopicSummary,
};

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::metadata::Metadata;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::kafka::{
    base_client_config, metadata_blocking, KafkaConfig, MetadataError, QuietContext,
};

/// How long each request to the brokers may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Why an admin operation failed. The text names the broker, the resource and the fix.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The brokers could not be reached or refused the client's settings.
    #[error(transparent)]
    Metadata(Box<MetadataError>),
    /// A client could not be created (bad settings).
    #[error("cannot create a Kafka client for {brokers}: {source}")]
    Client {
        /// The bootstrap servers.
        brokers: String,
        /// What librdkafka said.
        source: KafkaError,
    },
    /// `create_topic` of a topic that exists.
    #[error("Kafka {brokers}: topic {topic} exists; pick another name, or change it with `kgate topics alter {topic}`")]
    TopicExists {
        /// The bootstrap servers.
        brokers: String,
        /// The topic.
        topic: String,
    },
    /// The topic does not exist.
    #[error("Kafka {brokers}: topic {topic} does not exist; `kgate topics list` shows the topics there are")]
    NoTopic {
        /// The bootstrap servers.
        brokers: String,
        /// The topic.
        topic: String,
    },
    /// The consumer group does not exist (no members, no committed offsets).
    #[error("Kafka {brokers}: consumer group {group} does not exist; `kgate groups list` shows the groups there are")]
    NoGroup {
        /// The bootstrap servers.
        brokers: String,
        /// The group.
        group: String,
    },
    /// The group has members, so its offsets cannot be changed nor the group deleted.
    #[error("Kafka {brokers}: consumer group {group} is active ({members} member(s): {clients}); stop its consumers first, then run this again")]
    GroupActive {
        /// The bootstrap servers.
        brokers: String,
        /// The group.
        group: String,
        /// How many members it has.
        members: usize,
        /// Their client ids and hosts.
        clients: String,
    },
    /// The request makes no sense (fewer partitions than the topic has, an empty config key).
    #[error("{0}")]
    Invalid(String),
    /// The broker refused the operation on the resource with an error code.
    #[error("Kafka {brokers}: cannot {op} {resource}: {}{hint}", code_name(*code))]
    Refused {
        /// The bootstrap servers.
        brokers: String,
        /// What was being done: `create topic`, `delete consumer group`, ...
        op: String,
        /// The resource, e.g. `topic ticks.v1.raw`.
        resource: String,
        /// Kafka's error code (shown as Kafka names it, e.g. `TOPIC_AUTHORIZATION_FAILED`).
        code: RDKafkaErrorCode,
        /// `: ` and what to do, or empty.
        hint: String,
    },
    /// The request itself failed (timed out, the connection broke).
    #[error("Kafka {brokers}: cannot {op} {resource}: {source}")]
    Kafka {
        /// The bootstrap servers.
        brokers: String,
        /// What was being done.
        op: String,
        /// The resource.
        resource: String,
        /// What librdkafka said.
        source: Box<KafkaError>,
    },
    /// The blocking task did not complete (the runtime is shutting down).
    #[error("the Kafka request was cancelled: {0}")]
    Cancelled(#[from] tokio::task::JoinError),
}

/// What kind of failure an [`AdminError`] is, for callers that answer with a status (the web
/// UI's API: 404, 409, 400, 403, 503, 500).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The topic or group does not exist.
    NotFound,
    /// It exists already, or the group is active.
    Conflict,
    /// The request itself is wrong (arguments, config values).
    Invalid,
    /// The brokers refused the client's login or its rights (ACLs).
    Forbidden,
    /// The brokers could not be reached or did not answer in time.
    Unavailable,
    /// Anything else.
    Other,
}

impl AdminError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        use RDKafkaErrorCode as C;
        match self {
            AdminError::NoTopic { .. } | AdminError::NoGroup { .. } => ErrorKind::NotFound,
            AdminError::TopicExists { .. } | AdminError::GroupActive { .. } => ErrorKind::Conflict,
            AdminError::Invalid(_) => ErrorKind::Invalid,
            AdminError::Metadata(m) => match **m {
                MetadataError::Refused { .. } => ErrorKind::Forbidden,
                MetadataError::Unreachable { .. } => ErrorKind::Unavailable,
                _ => ErrorKind::Other,
            },
            AdminError::Refused { code, .. } => match code {
                C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::ClusterAuthorizationFailed => ErrorKind::Forbidden,
                C::InvalidReplicationFactor
                | C::InvalidPartitions
                | C::InvalidConfig
                | C::InvalidTopic
                | C::PolicyViolation => ErrorKind::Invalid,
                C::NonEmptyGroup
                | C::UnknownMemberId
                | C::IllegalGeneration
                | C::RebalanceInProgress => ErrorKind::Conflict,
                C::UnknownTopicOrPartition => ErrorKind::NotFound,
                _ => ErrorKind::Other,
            },
            AdminError::Kafka { .. } => ErrorKind::Unavailable,
            AdminError::Client { .. } | AdminError::Cancelled(_) => ErrorKind::Other,
        }
    }
}

impl From<MetadataError> for AdminError {
    fn from(e: MetadataError) -> AdminError {
        AdminError::Metadata(Box::new(e))
    }
}

/// `TopicAuthorizationFailed` → `TOPIC_AUTHORIZATION_FAILED`, the name Kafka's docs use.
pub fn code_name(code: RDKafkaErrorCode) -> String {
    let camel = format!("{code:?}");
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Who the brokers see: the SASL user, else "the client certificate's subject" or ANONYMOUS.
fn principal(k: &KafkaConfig) -> String {
    let sec = k.security.as_ref();
    if let Some(sasl) = sec.and_then(|s| s.sasl.as_ref()) {
        return format!("the user {}", sasl.username);
    }
    if sec
        .and_then(|s| s.tls.as_ref())
        .and_then(|t| t.cert.as_ref())
        .is_some()
    {
        return "the client certificate's subject".into();
    }
    "the user ANONYMOUS".into()
}

/// What failed where, for building [`AdminError`]s.
pub(crate) struct Ctx<'a> {
    k: &'a KafkaConfig,
    /// `create`, `delete`, `describe`, ...
    op: &'a str,
    /// `topic`, `consumer group`.
    kind: &'a str,
    /// The topic or group name.
    name: &'a str,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(k: &'a KafkaConfig, op: &'a str, kind: &'a str, name: &'a str) -> Self {
        Ctx { k, op, kind, name }
    }

    fn brokers(&self) -> String {
        self.k.brokers.join(",")
    }

    /// `topic ticks.v1.raw`, or `topics` for a request about all of them.
    fn resource(&self) -> String {
        format!("{} {}", self.kind, self.name)
            .trim_end()
            .to_string()
    }

    /// The request failed as a whole.
    pub(crate) fn kafka(&self, source: KafkaError) -> AdminError {
        if let Some(code) = source.rdkafka_error_code() {
            if code != RDKafkaErrorCode::OperationTimedOut
                && code != RDKafkaErrorCode::RequestTimedOut
            {
                return self.code(code);
            }
        }
        AdminError::Kafka {
            brokers: self.brokers(),
            op: self.op.to_string(),
            resource: self.resource(),
            source: Box::new(source),
        }
    }

    /// The broker answered `code` for the resource.
    pub(crate) fn code(&self, code: RDKafkaErrorCode) -> AdminError {
        use RDKafkaErrorCode as C;
        let brokers = self.brokers();
        let (op, kind, name) = (self.op, self.kind, self.name);
        match code {
            C::TopicAlreadyExists => {
                return AdminError::TopicExists {
                    brokers,
                    topic: name.into(),
                }
            }
            C::UnknownTopicOrPartition | C::UnknownTopic if kind == "topic" => {
                return AdminError::NoTopic {
                    brokers,
                    topic: name.into(),
                }
            }
            C::GroupIdNotFound => {
                return AdminError::NoGroup {
                    brokers,
                    group: name.into(),
                }
            }
            _ => {}
        }
        let who = principal(self.k);
        let acl_op = match op {
            "create" => "Create",
            "delete" => "Delete",
            "alter" | "alter configs of" => "AlterConfigs",
            "add partitions to" => "Alter",
            "describe" | "describe configs of" => "DescribeConfigs",
            "reset offsets of" => "Read",
            _ => "Describe",
        };
        let user = match &self.k.security.as_ref().and_then(|s| s.sasl.as_ref()) {
            Some(s) => s.username.clone(),
            None => "...".into(),
        };
        let hint = match code {
            C::TopicAuthorizationFailed => format!(
                "{who} may not {op} topic {name}; grant it with `kafka-acls.sh --add --allow-principal User:{user} --operation {acl_op} --topic {name}`, or use another kafka.security user"
            ),
            C::GroupAuthorizationFailed => format!(
                "{who} may not {op} consumer group {name}; grant it with `kafka-acls.sh --add --allow-principal User:{user} --operation {acl_op} --group {name}`, or use another kafka.security user"
            ),
            C::ClusterAuthorizationFailed => format!(
                "{who} may not {op} {} (a cluster permission); grant it the cluster's {acl_op} ACL (`kafka-acls.sh --add --allow-principal User:{user} --operation {acl_op} --cluster`), or use another kafka.security user",
                self.resource()
            ),
            C::InvalidReplicationFactor => {
                "the replication factor must be at least 1 and at most the number of brokers (`kgate cluster` lists them)".into()
            }
            C::InvalidPartitions => {
                "the partition count must be at least 1, and more than the topic has when adding".into()
            }
            C::InvalidConfig => {
                "the broker refuses a --config key or value; `kgate topics describe TOPIC --all-configs` lists the keys a topic has".into()
            }
            C::PolicyViolation => "the broker's topic policy (create.topic.policy.class.name / alter.config.policy.class.name) refuses it".into(),
            C::TopicDeletionDisabled => "the broker has delete.topic.enable=false".into(),
            C::NonEmptyGroup => "the group has active members; stop its consumers first".into(),
            C::InvalidTopic => "a topic name is at most 249 characters of ASCII letters, digits, `.`, `_` and `-`".into(),
            C::UnknownTopicOrPartition => format!("no such {kind}"),
            C::UnknownMemberId | C::IllegalGeneration | C::RebalanceInProgress => {
                "the group became active meanwhile; stop its consumers first".into()
            }
            _ => String::new(),
        };
        AdminError::Refused {
            brokers,
            op: op.to_string(),
            resource: self.resource(),
            code,
            hint: if hint.is_empty() {
                hint
            } else {
                format!(": {hint}")
            },
        }
    }
}

/// A short-lived client for metadata, offsets and groups (no group unless `group` is given; it
/// never subscribes, so it never joins one).
pub(crate) fn consumer(
    k: &KafkaConfig,
    group: Option<&str>,
) -> Result<BaseConsumer<QuietContext>, AdminError> {
    let mut c = base_client_config(k);
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    if let Some(g) = group {
        c.set("group.id", g);
    }
    c.create_with_context(Default::default())
        .map_err(|source| AdminError::Client {
            brokers: k.brokers.join(","),
            source,
        })
}

/// A short-lived admin client.
pub(crate) fn admin_client(k: &KafkaConfig) -> Result<AdminClient<QuietContext>, AdminError> {
    base_client_config(k)
        .create_with_context(Default::default())
        .map_err(|source| AdminError::Client {
            brokers: k.brokers.join(","),
            source,
        })
}

/// Options for admin requests: [`TIMEOUT`] for the request and for the broker's operation.
pub(crate) fn options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(TIMEOUT))
        .operation_timeout(Some(TIMEOUT))
}

/// Metadata of all topics (or one), diagnosing refused logins and handshakes.
pub(crate) fn metadata(
    c: &BaseConsumer<QuietContext>,
    k: &KafkaConfig,
    topic: Option<&str>,
) -> Result<Metadata, AdminError> {
    Ok(metadata_blocking(c, k, topic, TIMEOUT)?)
}

/// Whether a topic is one of Kafka's own (`__consumer_offsets`, `__transaction_state`, ...).
pub fn is_internal(topic: &str) -> bool {
    topic.starts_with("__")
}

/// (low, high) watermarks by (topic, partition).
pub(crate) type Watermarks = HashMap<(String, i32), (i64, i64)>;

/// (low, high) watermarks of `parts`, two batched ListOffsets requests (earliest, latest)
/// rather than two per partition; a partition either leaves out is asked alone.
pub(crate) fn watermarks(
    c: &BaseConsumer<QuietContext>,
    parts: &[(String, i32)],
) -> Result<Watermarks, KafkaError> {
    let mut out = HashMap::with_capacity(parts.len());
    if parts.is_empty() {
        return Ok(out);
    }
    let ask = |at: Offset| -> Result<HashMap<(String, i32), i64>, KafkaError> {
        let mut tpl = TopicPartitionList::with_capacity(parts.len());
        for (t, p) in parts {
            tpl.add_partition_offset(t, *p, at)?;
        }
        let res = c.offsets_for_times(tpl, TIMEOUT)?;
        Ok(res
            .elements()
            .iter()
            .filter(|e| e.error().is_ok())
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
                _ => None,
            })
            .collect())
    };
    let lows = ask(Offset::Beginning)?;
    let highs = ask(Offset::End)?;
    for (t, p) in parts {
        let key = (t.clone(), *p);
        let pair = match (lows.get(&key), highs.get(&key)) {
            (Some(l), Some(h)) => (*l, *h),
            _ => c.fetch_watermarks(t, *p, TIMEOUT)?,
        };
        out.insert(key, pair);
    }
    Ok(out)
}

/// A Kafka broker.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BrokerSummary {
    /// Its node id.
    pub id: i32,
    /// The host it advertises.
    pub host: String,
    /// The port it advertises.
    pub port: i32,
    /// Whether it is the active controller.
    pub controller: bool,
}

/// What `kgate cluster` shows.
///
/// The Kafka version is not included: no request of rdkafka's API answers it cheaply (the
/// broker's ApiVersions ranges tell a range of releases, not one).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterInfo {
    /// The cluster id, when the brokers answered it.
    pub cluster_id: Option<String>,
    /// The node id of the active controller, when known.
    pub controller_id: Option<i32>,
    /// The bootstrap servers asked.
    pub bootstrap: String,
    /// Every broker, by id.
    pub brokers: Vec<BrokerSummary>,
    /// How many topics, Kafka's internal ones (`__consumer_offsets`, ...) included.
    pub topics: usize,
    /// How many of them are internal.
    pub internal_topics: usize,
    /// Partitions over all topics.
    pub partitions: usize,
}

/// The cluster: its id, controller, brokers and topic/partition counts.
pub async fn cluster(k: &KafkaConfig) -> Result<ClusterInfo, AdminError> {
    let k = k.clone();
    tokio::task::spawn_blocking(move || {
        let c = consumer(&k, None)?;
        let md = metadata(&c, &k, None)?;
        let cluster_id = c.client().fetch_cluster_id(TIMEOUT);
        let controller_id = controller_id(&c);
        let mut brokers: Vec<BrokerSummary> = md
            .brokers()
            .iter()
            .map(|b| BrokerSummary {
                id: b.id(),
                host: b.host().to_string(),
                port: b.port(),
                controller: Some(b.id()) == controller_id,
            })
            .collect();
        brokers.sort_by_key(|b| b.id);
        let topics: Vec<_> = md.topics().iter().filter(|t| t.error().is_none()).collect();
        Ok(ClusterInfo {
            cluster_id,
            controller_id,
            bootstrap: k.brokers.join(","),
            brokers,
            topics: topics.len(),
            internal_topics: topics.iter().filter(|t| is_internal(t.name())).count(),
            partitions: topics.iter().map(|t| t.partitions().len()).sum(),
        })
    })
    .await?
}

/// The active controller's id, as the metadata answer names it.
fn controller_id(c: &BaseConsumer<QuietContext>) -> Option<i32> {
    let ms = i32::try_from(TIMEOUT.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the pointer is the live client `c` owns; rd_kafka_controllerid only reads its
    // metadata cache (refreshing it when needed) and returns an id or -1.
    let id = unsafe { rdkafka::bindings::rd_kafka_controllerid(c.client().native_ptr(), ms) };
    (id >= 0).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_named_as_kafka_names_them() {
        assert_eq!(
            code_name(RDKafkaErrorCode::TopicAuthorizationFailed),
            "TOPIC_AUTHORIZATION_FAILED"
        );
        assert_eq!(
            code_name(RDKafkaErrorCode::TopicAlreadyExists),
            "TOPIC_ALREADY_EXISTS"
        );
    }

    #[test]
    fn authorization_errors_name_the_user_resource_and_fix() {
        let mut k = KafkaConfig {
            brokers: vec!["b1:9094".into()],
            ..Default::default()
        };
        k.security = Some(crate::kafka::SecurityConfig {
            protocol: crate::kafka::SecurityProtocol::SaslSsl,
            sasl: Some(crate::kafka::SaslConfig {
                mechanism: crate::kafka::SaslMechanism::ScramSha512,
                username: "app".into(),
                password: "secret".into(),
            }),
            tls: None,
        });
        let e = Ctx::new(&k, "create", "topic", "ticks.v1.raw")
            .code(RDKafkaErrorCode::TopicAuthorizationFailed)
            .to_string();
        assert!(e.starts_with("Kafka b1:9094: cannot create topic ticks.v1.raw: TOPIC_AUTHORIZATION_FAILED: the user app may not create topic ticks.v1.raw"), "{e}");
        assert!(e.contains("--operation Create --topic ticks.v1.raw"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        let e = Ctx::new(&k, "create", "topic", "t")
            .code(RDKafkaErrorCode::TopicAlreadyExists)
            .to_string();
        assert_eq!(
            e,
            "Kafka b1:9094: topic t exists; pick another name, or change it with `kgate topics alter t`"
        );
    }

    #[test]
    fn errors_have_a_kind_for_status_codes() {
        let k = KafkaConfig::default();
        let ctx = Ctx::new(&k, "create", "topic", "t");
        let kind = |c| ctx.code(c).kind();
        assert_eq!(
            kind(RDKafkaErrorCode::TopicAlreadyExists),
            ErrorKind::Conflict
        );
        assert_eq!(
            kind(RDKafkaErrorCode::UnknownTopicOrPartition),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind(RDKafkaErrorCode::TopicAuthorizationFailed),
            ErrorKind::Forbidden
        );
        assert_eq!(kind(RDKafkaErrorCode::InvalidConfig), ErrorKind::Invalid);
        let all = Ctx::new(&k, "list", "topics", "");
        assert!(all
            .code(RDKafkaErrorCode::ClusterAuthorizationFailed)
            .to_string()
            .contains("cannot list topics: CLUSTER_AUTHORIZATION_FAILED"));
    }
}
