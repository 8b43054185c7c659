//! Prometheus metrics (the names the replaced services exported) and `/metrics`, `/healthz`, `/readyz`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::future::BoxFuture;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio_util::sync::CancellationToken;

mod config;

pub use config::MetricsConfig;

/// Latency buckets from 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Connection-lifetime buckets from 1 s to 1 day.
const CONNECTION_BUCKETS: &[f64] = &[
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    86400.0,
];

/// Records-per-request buckets of the HTTP routes.
const RECORDS_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0,
];

/// Distinct values a name label (`topic`, `source_topic`, `url`, `subject`) takes in a family;
/// past it, new names share the value [`OTHER`], so that names chosen by input (a templated
/// topic, a REST topic) cannot grow the series without bound.
pub const MAX_LABEL_VALUES: usize = 1000;

/// The label value names past [`MAX_LABEL_VALUES`] share.
pub const OTHER: &str = "other";

/// The first `max` distinct values of a label; later ones become [`OTHER`].
struct LabelBound {
    seen: Mutex<HashSet<String>>,
    max: usize,
}

impl LabelBound {
    fn new(max: usize) -> LabelBound {
        LabelBound {
            seen: Mutex::new(HashSet::new()),
            max,
        }
    }

    /// `value` if it is known or there is room, else [`OTHER`].
    fn label<'v>(&self, value: &'v str) -> &'v str {
        let mut seen = self.seen.lock().expect("metrics lock");
        if seen.contains(value) {
            return value;
        }
        if seen.len() >= self.max {
            return OTHER;
        }
        seen.insert(value.to_string());
        value
    }
}

/// A counter family with one name label (at `at`) bounded by [`MAX_LABEL_VALUES`].
pub struct BoundedCounterVec {
    vec: IntCounterVec,
    at: usize,
    bound: LabelBound,
}

impl BoundedCounterVec {
    fn new(vec: IntCounterVec, at: usize, max: usize) -> BoundedCounterVec {
        BoundedCounterVec {
            vec,
            at,
            bound: LabelBound::new(max),
        }
    }

    /// The counter of these label values (the name label [`OTHER`] past the bound).
    pub fn with_label_values(&self, values: &[&str]) -> IntCounter {
        let mut v: Vec<&str> = values.to_vec();
        if let Some(name) = v.get_mut(self.at) {
            *name = self.bound.label(name);
        }
        self.vec.with_label_values(&v)
    }
}

/// How recent a successful metadata fetch must be for `/readyz`.
pub const READY_WINDOW: Duration = Duration::from_secs(30);

/// All series kgate exports.
pub struct Metrics {
    registry: Registry,
    producer: ProducerFamilies,
    /// `kafka_dlq_published_total{dlq_topic,source_topic,error_type}` (`source_topic` bounded).
    pub dlq_published: BoundedCounterVec,
    /// `kafka_dlq_failures_total{dlq_topic}`: DLQ records Kafka refused.
    pub dlq_failures: IntCounterVec,
    /// `kgate_events_rejected_total{pipeline,error_type}`: input that went to the DLQ.
    pub events_rejected: IntCounterVec,
    /// `kgate_qos_events_total{pipeline,class}`: events of a pipeline with `qos:` handed to the
    /// sink, by class.
    pub qos_events: IntCounterVec,
    /// `kgate_qos_dropped_total{pipeline,class}`: of those, the ones dropped on a full buffer.
    pub qos_dropped: IntCounterVec,
    /// `kafka_producer_encode_errors_total{topic,error_type}`: events that did not fit their
    /// topic's schema (or had none), sent to the DLQ (`topic` bounded).
    pub encode_errors: BoundedCounterVec,
    /// `kgate_schema_refresh_errors_total{subject}`: failed refreshes of a cached schema
    /// (`subject` bounded).
    pub schema_refresh_errors: BoundedCounterVec,
    ws: WsFamilies,
    ws_urls: LabelBound,
    max_label_values: usize,
    mqtt: MqttFamilies,
    device: DeviceFamilies,
    spool: SpoolFamilies,
    /// `kgate_producer_inflight_records`: accepted, not yet acknowledged.
    pub inflight: IntGauge,
    /// `kgate_runtime_tasks`: tokio tasks alive, read from the runtime at each render.
    runtime_tasks: IntGauge,
    /// `http_requests_total{route,status}`: answered HTTP ingest requests.
    pub http_requests: IntCounterVec,
    /// `http_request_duration_seconds{route}`: request received → answer sent.
    pub http_request_duration: HistogramVec,
    /// `http_records_per_request{route}`: records in each well-formed request.
    pub http_records_per_request: HistogramVec,
    /// The consuming side's families (Kafka source, `kgate consume`, `kgate dlq replay`).
    pub consumer: ConsumerFamilies,
    /// `kgate_config_reloads_total{result}`: reloads of `kgate run`'s config, by result
    /// (`applied`, `unchanged`, `rejected`).
    pub config_reloads: IntCounterVec,
    /// What `POST /-/reload` runs, and who may ask (set by `kgate run`).
    reload: std::sync::RwLock<Option<ReloadGate>>,
    topics: Mutex<HashMap<String, Arc<TopicMetrics>>>,
    last_metadata_ok: AtomicU64,
    families: Mutex<HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>>,
}

/// The consuming side's families: what consumer groups read, commit and lag, the batches
/// consumer sinks take, and DLQ replays.
pub struct ConsumerFamilies {
    /// `kafka_consumer_records_total{topic,group}`: records read and handed over.
    pub records: IntCounterVec,
    /// `kafka_consumer_commits_total{topic}`: offset commits that included the topic.
    pub commits: IntCounterVec,
    /// `kafka_consumer_errors_total{topic}`: fetch, commit and handling errors.
    pub errors: IntCounterVec,
    /// `kafka_consumer_lag{topic,partition,group}`: high watermark minus the consumer's position.
    pub lag: IntGaugeVec,
    /// `kafka_consumer_batch_size{sink}`: records in each batch a consumer sink took.
    pub batch_size: HistogramVec,
    /// `kafka_consumer_batch_duration_seconds{sink}`: a batch handed to its sink → settled.
    pub batch_duration: HistogramVec,
    /// `kafka_dlq_replayed_total{dlq_topic,target_topic}`: DLQ records sent again.
    pub dlq_replayed: IntCounterVec,
}

impl ConsumerFamilies {
    fn register(r: &Registry) -> ConsumerFamilies {
        ConsumerFamilies {
            records: counter(
                r,
                "kafka_consumer_records_total",
                "Records read by a consumer group and handed over",
                &["topic", "group"],
            ),
            commits: counter(
                r,
                "kafka_consumer_commits_total",
                "Offset commits that included the topic",
                &["topic"],
            ),
            errors: counter(
                r,
                "kafka_consumer_errors_total",
                "Consumer fetch, commit and handling errors",
                &["topic"],
            ),
            lag: gauge(
                r,
                "kafka_consumer_lag",
                "Records between the consumer's position and the partition's high watermark",
                &["topic", "partition", "group"],
            ),
            batch_size: histogram(
                r,
                "kafka_consumer_batch_size",
                "Records in each batch a consumer sink took",
                &["sink"],
                RECORDS_BUCKETS,
            ),
            batch_duration: histogram(
                r,
                "kafka_consumer_batch_duration_seconds",
                "A batch handed to its consumer sink until it was settled",
                &["sink"],
                LATENCY_BUCKETS,
            ),
            dlq_replayed: counter(
                r,
                "kafka_dlq_replayed_total",
                "DLQ records sent again by `kgate dlq replay`",
                &["dlq_topic", "target_topic"],
            ),
        }
    }
}

/// The per-topic series, resolved once per topic.
pub struct TopicMetrics {
    /// Records handed to the producer.
    pub requests: IntCounter,
    /// Records Kafka refused.
    pub failures: IntCounter,
    /// Accept → ack latency.
    pub duration: Histogram,
    /// Records Kafka acknowledged.
    pub published: IntCounter,
    /// Delivery errors reported by the producer.
    pub delivery_errors: IntCounter,
    /// Records dropped because the buffer was full.
    pub drops: IntCounter,
}

/// The per-pipeline MQTT series.
pub struct MqttMetrics {
    /// Messages received, one counter per subscription (in config order).
    pub received: Vec<IntCounter>,
    /// Messages that matched no subscription (e.g. from an older session's filters).
    pub received_unmatched: IntCounter,
    /// PUBACKs sent (the message was in Kafka or its DLQ).
    pub acks: IntCounter,
    /// Not acked because Kafka does not hold it (dropped, failed): the broker resends it.
    pub unacked_not_persisted: IntCounter,
    /// Not acked because its connection ended first: the broker resends it.
    pub unacked_reconnected: IntCounter,
    /// Connections made (CONNACK received).
    pub connections: IntCounter,
    /// Connections that ended.
    pub disconnections: IntCounter,
    /// Failed connects, refused subscriptions and dropped connections.
    pub connection_errors: IntCounter,
    /// Messages handed to the pipeline and not acked yet.
    pub inflight: IntGauge,
}

/// The per-URL WebSocket series.
pub struct WsMetrics {
    /// Successful connects.
    pub connections: IntCounter,
    /// Connections that ended.
    pub disconnections: IntCounter,
    /// Failed connects and read errors.
    pub connection_errors: IntCounter,
    /// Messages read.
    pub messages_received: IntCounter,
    /// How long each connection lasted.
    pub connection_duration: Histogram,
    /// Reconnects because nothing arrived within `timeout`.
    pub messages_timeout: IntCounter,
}

/// The series of one pipeline's device WebSocket server.
#[derive(Clone)]
pub struct DeviceMetrics {
    /// Devices connected now.
    pub active: IntGauge,
    /// Devices that completed the upgrade.
    pub connections: IntCounter,
    /// Text and binary frames read.
    pub frames: IntCounter,
    /// How long each device connection lasted.
    pub connection_duration: Histogram,
    disconnections: IntCounterVec,
    rejected: IntCounterVec,
    pipeline: String,
}

impl DeviceMetrics {
    /// Counts a connection that ended, by why (`closed`, `idle_timeout`, `shutdown`, …).
    pub fn disconnected(&self, reason: &str) {
        self.disconnections
            .with_label_values(&[self.pipeline.as_str(), reason])
            .inc();
    }

    /// Counts an upgrade that was refused, by why (`missing_device_id`, `unknown_path`, …).
    pub fn rejected(&self, reason: &str) {
        self.rejected
            .with_label_values(&[self.pipeline.as_str(), reason])
            .inc();
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str], b: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(b.to_vec()), labels)
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

/// A registry whose every series carries `labels`.
fn registry(labels: &std::collections::BTreeMap<String, String>) -> Registry {
    let consts: HashMap<String, String> =
        labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Registry::new_custom(None, (!consts.is_empty()).then_some(consts))
        .expect("valid constant labels")
}

/// `kgate_producer_inflight_records`.
fn producer_inflight(r: &Registry) -> IntGauge {
    let inflight = IntGauge::new(
        "kgate_producer_inflight_records",
        "Records accepted and not yet acknowledged by Kafka",
    )
    .expect("valid metric");
    r.register(Box::new(inflight.clone()))
        .expect("unique metric");
    inflight
}

/// `kgate_runtime_tasks` (tokio's stable `RuntimeMetrics::num_alive_tasks`).
fn runtime_tasks(r: &Registry) -> IntGauge {
    let tasks = IntGauge::new(
        "kgate_runtime_tasks",
        "Tokio tasks alive in kgate's runtime (spawned and not finished)",
    )
    .expect("valid metric");
    r.register(Box::new(tasks.clone())).expect("unique metric");
    tasks
}

/// The `{topic}` families behind [`TopicMetrics`].
struct ProducerFamilies {
    requests: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    published: IntCounterVec,
    delivery_errors: IntCounterVec,
    drops: IntCounterVec,
}

impl ProducerFamilies {
    fn register(r: &Registry) -> ProducerFamilies {
        ProducerFamilies {
            requests: counter(
                r,
                "kafka_producer_requests_total",
                "Records handed to the Kafka producer",
                &["topic"],
            ),
            failures: counter(
                r,
                "kafka_producer_request_failures_total",
                "Records the Kafka producer could not deliver",
                &["topic"],
            ),
            duration: histogram(
                r,
                "kafka_producer_request_duration_seconds",
                "Time from accepting a record to Kafka's acknowledgement",
                &["topic"],
                LATENCY_BUCKETS,
            ),
            published: counter(
                r,
                "kafka_messages_published_total",
                "Records acknowledged by Kafka",
                &["topic"],
            ),
            delivery_errors: counter(
                r,
                "kafka_delivery_errors_total",
                "Delivery errors reported by Kafka",
                &["topic"],
            ),
            drops: counter(
                r,
                "kafka_producer_queue_drops_total",
                "Records dropped because the producer buffer was full (on_full: drop_newest)",
                &["topic"],
            ),
        }
    }
}

/// The dead-letter families (public fields of [`Metrics`]).
struct RejectFamilies {
    dlq_published: IntCounterVec,
    dlq_failures: IntCounterVec,
    events_rejected: IntCounterVec,
    encode_errors: IntCounterVec,
}

impl RejectFamilies {
    fn register(r: &Registry) -> RejectFamilies {
        RejectFamilies {
            dlq_published: counter(
                r,
                "kafka_dlq_published_total",
                "Records written to the dead-letter queue",
                &["dlq_topic", "source_topic", "error_type"],
            ),
            dlq_failures: counter(
                r,
                "kafka_dlq_failures_total",
                "Dead-letter records Kafka did not accept",
                &["dlq_topic"],
            ),
            events_rejected: counter(
                r,
                "kgate_events_rejected_total",
                "Input rejected by a pipeline (sent to the DLQ)",
                &["pipeline", "error_type"],
            ),
            encode_errors: counter(
                r,
                "kafka_producer_encode_errors_total",
                "Events that could not be encoded for their topic (sent to the DLQ)",
                &["topic", "error_type"],
            ),
        }
    }
}

/// `kgate_schema_refresh_errors_total`.
fn schema_refresh_errors(r: &Registry) -> IntCounterVec {
    counter(
        r,
        "kgate_schema_refresh_errors_total",
        "Failed refreshes of a cached schema (the cached version stays in use)",
        &["subject"],
    )
}

/// The `{url}` families behind [`WsMetrics`].
struct WsFamilies {
    connections: IntCounterVec,
    disconnections: IntCounterVec,
    connection_errors: IntCounterVec,
    messages_received: IntCounterVec,
    connection_duration: HistogramVec,
    messages_timeout: IntCounterVec,
}

impl WsFamilies {
    fn register(r: &Registry) -> WsFamilies {
        WsFamilies {
            connections: counter(
                r,
                "kafka_producer_websocket_connections_total",
                "WebSocket connections established",
                &["url"],
            ),
            disconnections: counter(
                r,
                "kafka_producer_websocket_disconnections_total",
                "WebSocket connections ended",
                &["url"],
            ),
            connection_errors: counter(
                r,
                "kafka_producer_websocket_connection_errors_total",
                "WebSocket connect or read errors",
                &["url"],
            ),
            messages_received: counter(
                r,
                "kafka_producer_websocket_messages_received_total",
                "WebSocket messages received",
                &["url"],
            ),
            connection_duration: histogram(
                r,
                "kafka_producer_websocket_connection_duration_seconds",
                "How long WebSocket connections lasted",
                &["url"],
                CONNECTION_BUCKETS,
            ),
            messages_timeout: counter(
                r,
                "kafka_producer_websocket_messages_timeout_total",
                "Reconnects because no message arrived within the read timeout",
                &["url"],
            ),
        }
    }
}

/// The `{pipeline}` families behind [`MqttMetrics`].
struct MqttFamilies {
    received: IntCounterVec,
    acks: IntCounterVec,
    unacked: IntCounterVec,
    connections: IntCounterVec,
    disconnections: IntCounterVec,
    connection_errors: IntCounterVec,
    inflight: IntGaugeVec,
}

impl MqttFamilies {
    fn register(r: &Registry) -> MqttFamilies {
        MqttFamilies {
            received: counter(
                r,
                "kgate_mqtt_messages_received_total",
                "MQTT messages received, by subscription",
                &["pipeline", "subscription"],
            ),
            acks: counter(
                r,
                "kgate_mqtt_acks_total",
                "MQTT messages acknowledged to the broker after Kafka held them (or their DLQ record)",
                &["pipeline"],
            ),
            unacked: counter(
                r,
                "kgate_mqtt_unacked_total",
                "MQTT messages left unacknowledged so that the broker resends them",
                &["pipeline", "reason"],
            ),
            connections: counter(
                r,
                "kgate_mqtt_connections_total",
                "MQTT connections established",
                &["pipeline"],
            ),
            disconnections: counter(
                r,
                "kgate_mqtt_disconnections_total",
                "MQTT connections ended",
                &["pipeline"],
            ),
            connection_errors: counter(
                r,
                "kgate_mqtt_connection_errors_total",
                "MQTT connect failures, connection errors and refused subscriptions",
                &["pipeline"],
            ),
            inflight: gauge(
                r,
                "kgate_mqtt_inflight",
                "MQTT messages handed to the pipeline and not yet acknowledged",
                &["pipeline"],
            ),
        }
    }
}

/// The `{pipeline}` families behind [`DeviceMetrics`].
struct DeviceFamilies {
    active: IntGaugeVec,
    connections: IntCounterVec,
    disconnections: IntCounterVec,
    frames: IntCounterVec,
    rejected_upgrades: IntCounterVec,
    connection_duration: HistogramVec,
}

impl DeviceFamilies {
    fn register(r: &Registry) -> DeviceFamilies {
        DeviceFamilies {
            active: gauge(
                r,
                "kgate_device_connections_active",
                "Devices connected to a device WebSocket server now",
                &["pipeline"],
            ),
            connections: counter(
                r,
                "kgate_device_connections_total",
                "Device WebSocket connections accepted (upgrade completed)",
                &["pipeline"],
            ),
            disconnections: counter(
                r,
                "kgate_device_disconnections_total",
                "Device WebSocket connections ended, by reason",
                &["pipeline", "reason"],
            ),
            frames: counter(
                r,
                "kgate_device_frames_total",
                "Text and binary frames read from devices",
                &["pipeline"],
            ),
            rejected_upgrades: counter(
                r,
                "kgate_device_rejected_upgrades_total",
                "Device connections refused before or during the WebSocket upgrade, by reason",
                &["pipeline", "reason"],
            ),
            connection_duration: histogram(
                r,
                "kgate_device_connection_duration_seconds",
                "How long device WebSocket connections lasted",
                &["pipeline"],
                CONNECTION_BUCKETS,
            ),
        }
    }
}

/// The series of one pipeline's disk spool.
#[derive(Clone)]
pub struct SpoolMetrics {
    /// Bytes in its segment files.
    pub bytes: IntGauge,
    /// Records not yet acknowledged by Kafka.
    pub records: IntGauge,
    /// Age of the oldest of them.
    pub oldest_age_seconds: IntGauge,
    /// Records appended.
    pub writes: IntCounter,
    /// fsyncs.
    pub fsyncs: IntCounter,
    /// Torn or corrupt tails cut when it was opened.
    pub corruptions: IntCounter,
    /// Records replayed from it at start (not acknowledged before a crash or stop).
    pub replayed: IntCounter,
    /// Records dropped because it was full (`on_full: drop_oldest | drop_newest`).
    pub dropped: IntCounter,
    /// Writes and fsyncs that failed (a full disk; each retry counts).
    pub write_errors: IntCounter,
}

/// The `{pipeline}` families behind [`SpoolMetrics`].
struct SpoolFamilies {
    bytes: IntGaugeVec,
    records: IntGaugeVec,
    oldest_age: IntGaugeVec,
    writes: IntCounterVec,
    fsyncs: IntCounterVec,
    corruptions: IntCounterVec,
    replayed: IntCounterVec,
    dropped: IntCounterVec,
    write_errors: IntCounterVec,
}

impl SpoolFamilies {
    fn register(r: &Registry) -> SpoolFamilies {
        let p = &["pipeline"];
        SpoolFamilies {
            bytes: gauge(r, "kgate_spool_bytes", "Bytes in the pipeline's disk spool", p),
            records: gauge(
                r,
                "kgate_spool_records",
                "Records in the disk spool not yet acknowledged by Kafka",
                p,
            ),
            oldest_age: gauge(
                r,
                "kgate_spool_oldest_age_seconds",
                "Age of the oldest record in the disk spool not yet acknowledged by Kafka",
                p,
            ),
            writes: counter(
                r,
                "kgate_spool_writes_total",
                "Records appended to the disk spool",
                p,
            ),
            fsyncs: counter(r, "kgate_spool_fsyncs_total", "fsyncs of the disk spool", p),
            corruptions: counter(
                r,
                "kgate_spool_corruptions_total",
                "Torn or corrupt segment tails cut when the disk spool was opened",
                p,
            ),
            replayed: counter(
                r,
                "kgate_spool_replayed_total",
                "Records produced again from the disk spool at start (unacknowledged at the last stop or crash)",
                p,
            ),
            dropped: counter(
                r,
                "kgate_spool_dropped_total",
                "Records dropped because the disk spool was full (on_full: drop_oldest or drop_newest)",
                p,
            ),
            write_errors: counter(
                r,
                "kgate_spool_write_errors_total",
                "Writes and fsyncs of the disk spool that failed (a full disk: each retry counts)",
                p,
            ),
        }
    }
}

/// The HTTP ingest families (public fields of [`Metrics`]).
struct HttpFamilies {
    requests: IntCounterVec,
    duration: HistogramVec,
    records_per_request: HistogramVec,
}

impl HttpFamilies {
    fn register(r: &Registry) -> HttpFamilies {
        HttpFamilies {
            requests: counter(
                r,
                "http_requests_total",
                "HTTP ingest requests answered, by route and status code",
                &["route", "status"],
            ),
            duration: histogram(
                r,
                "http_request_duration_seconds",
                "HTTP ingest request time, from receipt to the answer (which waits for Kafka)",
                &["route"],
                LATENCY_BUCKETS,
            ),
            records_per_request: histogram(
                r,
                "http_records_per_request",
                "Records in each well-formed HTTP ingest request",
                &["route"],
                RECORDS_BUCKETS,
            ),
        }
    }
}

impl Metrics {
    /// A registry whose every series carries `labels`.
    pub fn new(labels: &std::collections::BTreeMap<String, String>) -> Arc<Metrics> {
        Metrics::with_label_bound(labels, MAX_LABEL_VALUES)
    }

    /// [`Metrics::new`] with name labels bounded at `max` distinct values instead of
    /// [`MAX_LABEL_VALUES`].
    pub fn with_label_bound(
        labels: &std::collections::BTreeMap<String, String>,
        max: usize,
    ) -> Arc<Metrics> {
        let r = registry(labels);
        let inflight = producer_inflight(&r);
        let runtime_tasks = runtime_tasks(&r);
        let producer = ProducerFamilies::register(&r);
        let rejects = RejectFamilies::register(&r);
        let schema_refresh_errors = schema_refresh_errors(&r);
        let ws = WsFamilies::register(&r);
        let mqtt = MqttFamilies::register(&r);
        let device = DeviceFamilies::register(&r);
        let spool = SpoolFamilies::register(&r);
        let http = HttpFamilies::register(&r);
        let consumer = ConsumerFamilies::register(&r);
        Arc::new(Metrics {
            consumer,
            config_reloads: counter(
                &r,
                "kgate_config_reloads_total",
                "Reloads of the config by kgate run (SIGHUP, --watch, POST /-/reload), by result: applied, unchanged, rejected",
                &["result"],
            ),
            reload: std::sync::RwLock::new(None),
            producer,
            dlq_published: BoundedCounterVec::new(rejects.dlq_published, 1, max),
            dlq_failures: rejects.dlq_failures,
            events_rejected: rejects.events_rejected,
            qos_events: counter(
                &r,
                "kgate_qos_events_total",
                "Events of pipelines with qos: handed to the sink, by QoS class",
                &["pipeline", "class"],
            ),
            qos_dropped: counter(
                &r,
                "kgate_qos_dropped_total",
                "Events dropped because the producer buffer was full, by QoS class",
                &["pipeline", "class"],
            ),
            encode_errors: BoundedCounterVec::new(rejects.encode_errors, 0, max),
            schema_refresh_errors: BoundedCounterVec::new(schema_refresh_errors, 0, max),
            ws,
            ws_urls: LabelBound::new(max),
            max_label_values: max,
            mqtt,
            device,
            spool,
            inflight,
            runtime_tasks,
            http_requests: http.requests,
            http_request_duration: http.duration,
            http_records_per_request: http.records_per_request,
            topics: Mutex::new(HashMap::new()),
            last_metadata_ok: AtomicU64::new(0),
            families: Mutex::new(HashMap::new()),
            registry: r,
        })
    }

    /// The per-topic series of `topic`, created on first use; past [`MAX_LABEL_VALUES`]
    /// topics, new ones share the series of `topic="other"`.
    pub fn topic(&self, topic: &str) -> Arc<TopicMetrics> {
        let mut map = self.topics.lock().expect("metrics lock");
        if let Some(t) = map.get(topic) {
            return t.clone();
        }
        let topic = if map.len() >= self.max_label_values {
            if let Some(t) = map.get(OTHER) {
                return t.clone();
            }
            OTHER
        } else {
            topic
        };
        let l = [topic];
        let p = &self.producer;
        let t = Arc::new(TopicMetrics {
            requests: p.requests.with_label_values(&l),
            failures: p.failures.with_label_values(&l),
            duration: p.duration.with_label_values(&l),
            published: p.published.with_label_values(&l),
            delivery_errors: p.delivery_errors.with_label_values(&l),
            drops: p.drops.with_label_values(&l),
        });
        map.insert(topic.to_string(), t.clone());
        t
    }

    /// The per-URL WebSocket series of `url` (past [`MAX_LABEL_VALUES`] URLs, new ones share
    /// `url="other"`).
    pub fn websocket(&self, url: &str) -> WsMetrics {
        let l = [self.ws_urls.label(url)];
        let w = &self.ws;
        WsMetrics {
            connections: w.connections.with_label_values(&l),
            disconnections: w.disconnections.with_label_values(&l),
            connection_errors: w.connection_errors.with_label_values(&l),
            messages_received: w.messages_received.with_label_values(&l),
            connection_duration: w.connection_duration.with_label_values(&l),
            messages_timeout: w.messages_timeout.with_label_values(&l),
        }
    }

    /// The disk spool series of `pipeline`.
    pub fn spool(&self, pipeline: &str) -> SpoolMetrics {
        let l = [pipeline];
        let f = &self.spool;
        SpoolMetrics {
            bytes: f.bytes.with_label_values(&l),
            records: f.records.with_label_values(&l),
            oldest_age_seconds: f.oldest_age.with_label_values(&l),
            writes: f.writes.with_label_values(&l),
            fsyncs: f.fsyncs.with_label_values(&l),
            corruptions: f.corruptions.with_label_values(&l),
            replayed: f.replayed.with_label_values(&l),
            dropped: f.dropped.with_label_values(&l),
            write_errors: f.write_errors.with_label_values(&l),
        }
    }

    /// The device WebSocket server series of `pipeline`.
    pub fn device(&self, pipeline: &str) -> DeviceMetrics {
        let l = [pipeline];
        let d = &self.device;
        DeviceMetrics {
            active: d.active.with_label_values(&l),
            connections: d.connections.with_label_values(&l),
            frames: d.frames.with_label_values(&l),
            connection_duration: d.connection_duration.with_label_values(&l),
            disconnections: d.disconnections.clone(),
            rejected: d.rejected_upgrades.clone(),
            pipeline: pipeline.to_string(),
        }
    }

    /// The MQTT series of a pipeline with these subscriptions.
    /// `filters` are the subscriptions' topic filters, in config order.
    pub fn mqtt(&self, pipeline: &str, filters: &[&str]) -> MqttMetrics {
        let p = [pipeline];
        let m = &self.mqtt;
        MqttMetrics {
            received: filters
                .iter()
                .map(|f| m.received.with_label_values(&[pipeline, f]))
                .collect(),
            received_unmatched: m.received.with_label_values(&[pipeline, ""]),
            acks: m.acks.with_label_values(&p),
            unacked_not_persisted: m.unacked.with_label_values(&[pipeline, "not_persisted"]),
            unacked_reconnected: m.unacked.with_label_values(&[pipeline, "reconnected"]),
            connections: m.connections.with_label_values(&p),
            disconnections: m.disconnections.with_label_values(&p),
            connection_errors: m.connection_errors.with_label_values(&p),
            inflight: m.inflight.with_label_values(&p),
        }
    }

    /// A source kind's own families (type `T`), registered by `register` on first use and
    /// shared afterwards: kinds keep their series beside their code, this module knows no types.
    pub fn families<T: Send + Sync + 'static>(
        &self,
        register: impl FnOnce(&Registry) -> T,
    ) -> Arc<T> {
        let mut map = self.families.lock().expect("metrics lock");
        let any = map
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Arc::new(register(&self.registry)))
            .clone();
        any.downcast::<T>()
            .expect("families are keyed by their type")
    }

    /// Records a successful broker metadata fetch (for `/readyz`).
    pub fn mark_metadata_ok(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.last_metadata_ok.store(now, Ordering::Relaxed);
    }

    /// Whether broker metadata was fetched within [`READY_WINDOW`].
    pub fn is_ready(&self) -> bool {
        let last = self.last_metadata_ok.load(Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        last != 0 && now.saturating_sub(last) <= READY_WINDOW.as_secs()
    }

    /// Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        // Outside a runtime (a unit test rendering directly) the gauge keeps its last value.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let alive = handle.metrics().num_alive_tasks();
            self.runtime_tasks
                .set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).unwrap_or_default()
    }
}

async fn metrics_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
}

/// What `POST /-/reload` answers: an HTTP status and a JSON body.
#[derive(Debug, Clone)]
pub struct ReloadAnswer {
    /// 200 applied or unchanged, 422 refused (the config's errors), 409/500 otherwise.
    pub status: u16,
    /// What changed, or the errors.
    pub body: serde_json::Value,
}

/// Runs one reload for `POST /-/reload`.
pub type ReloadHook = Arc<dyn Fn() -> BoxFuture<'static, ReloadAnswer> + Send + Sync>;

/// `POST /-/reload`'s handler and its guard.
struct ReloadGate {
    hook: ReloadHook,
    token: Option<crate::config::Secret>,
}

impl Metrics {
    /// Serves `POST /-/reload` with `hook`: from loopback peers only, or, with `token`, from
    /// any peer that sends `Authorization: Bearer <token>` (and only from those). Called again,
    /// it replaces both (a reload may change the token).
    pub fn set_reload(&self, hook: ReloadHook, token: Option<crate::config::Secret>) {
        *self.reload.write().unwrap_or_else(|e| e.into_inner()) = Some(ReloadGate { hook, token });
    }
}

async fn reload_handler(
    State(m): State<Arc<Metrics>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let answer = |status: StatusCode, message: &str| {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "error": message }).to_string(),
        )
            .into_response()
    };
    let (hook, token) = {
        let gate = m.reload.read().unwrap_or_else(|e| e.into_inner());
        match gate.as_ref() {
            Some(g) => (g.hook.clone(), g.token.clone()),
            None => return answer(StatusCode::NOT_FOUND, "no config to reload here"),
        }
    };
    match token {
        Some(t) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let Some(given) = given else {
                return answer(
                    StatusCode::UNAUTHORIZED,
                    "send `Authorization: Bearer <metrics.reload_token>`",
                );
            };
            use subtle::ConstantTimeEq;
            if !bool::from(given.trim().as_bytes().ct_eq(t.expose().as_bytes())) {
                return answer(StatusCode::FORBIDDEN, "wrong reload token");
            }
        }
        None if !peer.ip().is_loopback() => {
            return answer(
                StatusCode::FORBIDDEN,
                "reloads are accepted from loopback only; set metrics.reload_token to allow others with a bearer token",
            );
        }
        None => {}
    }
    let a = hook().await;
    (
        StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        a.body.to_string(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no broker metadata in the last 30s\n",
        )
    }
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `metrics.tls` files are unusable.
    #[error(transparent)]
    Tls(#[from] crate::serve::tls::TlsError),
    /// The address is taken or not ours.
    // The cause sits inside the message, before the fix, so it is not also `source()`: a
    // `{:#}` chain would print it twice.
    #[error("cannot listen for metrics on {addr}: {error}; set metrics.listen to a free address (or metrics.enabled: false)")]
    Listen {
        /// `metrics.listen`.
        addr: SocketAddr,
        /// Why the bind failed.
        error: std::io::Error,
    },
}

/// Time a scraper has to send its request headers (Prometheus sends them at once).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the metrics address (so that a taken port fails at start) and serves until `shutdown`,
/// at most `max_connections` at a time.
pub async fn serve(
    addr: SocketAddr,
    max_connections: usize,
    tls: Option<&crate::config::ServerTlsFiles>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let acceptor = match tls {
        Some(t) => Some(crate::serve::tls::acceptor(t, "metrics")?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| ServeError::Listen { addr, error })?;
    let app = Router::new()
        .route("/", get(metrics_handler))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/-/reload", post(reload_handler))
        .with_state(metrics);
    let limits = crate::serve::Limits {
        max_connections,
        header_timeout: HEADER_TIMEOUT,
    };
    let info = |peer| peer;
    Ok(match acceptor {
        None => tokio::spawn(crate::serve::serve(
            crate::serve::tcp(listener),
            app,
            limits,
            info,
            shutdown,
        )),
        Some(acceptor) => {
            let listener = crate::serve::tls::TlsListener::new(
                listener,
                acceptor,
                max_connections,
                shutdown.clone(),
            );
            tokio::spawn(crate::serve::serve(
                listener.into_accept(),
                app,
                limits,
                info,
                shutdown,
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_labels_on_every_series_and_buckets_render() {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("did_provider".to_string(), "did:key".to_string());
        let m = Metrics::new(&labels);
        let t = m.topic("TradeEvent");
        t.requests.inc();
        t.duration.observe(0.003);
        m.websocket("ws://x/ws").messages_received.inc();
        let text = m.render();
        assert!(
            text.contains(
                r#"kafka_producer_requests_total{topic="TradeEvent",did_provider="did:key"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("kafka_producer_request_duration_seconds_bucket{topic=\"TradeEvent\",did_provider=\"did:key\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains(r#"kafka_producer_websocket_messages_received_total{url="ws://x/ws",did_provider="did:key"} 1"#));
        assert!(!m.is_ready());
        m.mark_metadata_ok();
        assert!(m.is_ready());
    }

    #[test]
    fn name_labels_are_bounded() {
        let m = Metrics::with_label_bound(&Default::default(), 3);
        for i in 0..10 {
            let t = format!("t{i}");
            m.topic(&t).requests.inc();
            m.dlq_published
                .with_label_values(&["dlq", &t, "topic_not_allowed"])
                .inc();
            m.encode_errors
                .with_label_values(&[&t, "schema_mismatch"])
                .inc();
            m.websocket(&format!("ws://h/{i}")).messages_received.inc();
        }
        // A name already seen keeps its own series.
        m.topic("t1").requests.inc();
        let text = m.render();
        let count = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(count("kafka_producer_requests_total{"), 4, "{text}");
        assert!(
            text.contains(r#"kafka_producer_requests_total{topic="other"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kafka_producer_requests_total{topic="t1"} 2"#),
            "{text}"
        );
        assert_eq!(count("kafka_dlq_published_total{"), 4, "{text}");
        assert!(text.contains(r#"kafka_dlq_published_total{dlq_topic="dlq",error_type="topic_not_allowed",source_topic="other"} 7"#), "{text}");
        assert_eq!(count("kafka_producer_encode_errors_total{"), 4, "{text}");
        assert_eq!(
            count("kafka_producer_websocket_messages_received_total{"),
            4,
            "{text}"
        );
        assert_eq!(m.topics.lock().unwrap().len(), 4);
    }

    #[tokio::test]
    async fn a_taken_metrics_address_names_the_cause_once_and_the_fix() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let m = Metrics::new(&Default::default());
        let e = serve(addr, 8, None, m, CancellationToken::new())
            .await
            .unwrap_err();
        // No `source()`: a chain printer (`{:#}`, as `kgate run` prints) shows the cause once.
        assert!(std::error::Error::source(&e).is_none());
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("cannot listen for metrics on {addr}: ")),
            "{text}"
        );
        assert!(
            text.ends_with("; set metrics.listen to a free address (or metrics.enabled: false)"),
            "{text}"
        );
        assert!(text.contains("os error"), "{text}");
    }

    fn runtime_tasks_value(text: &str) -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix("kgate_runtime_tasks "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no kgate_runtime_tasks in {text}"))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn runtime_tasks_counts_alive_tasks() {
        let m = Metrics::new(&Default::default());
        let before = runtime_tasks_value(&m.render());
        let stop = CancellationToken::new();
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move { stop.cancelled().await })
            })
            .collect();
        assert_eq!(runtime_tasks_value(&m.render()), before + 5);
        stop.cancel();
        for t in tasks {
            t.await.expect("task ends");
        }
        assert_eq!(runtime_tasks_value(&m.render()), before);
    }
}
