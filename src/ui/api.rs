//! The JSON API under `/api/…`: what every page shows, for the pages and for scripts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Identity;
use super::browse::{self, BrowseError};
use super::Ui;
use crate::admin::{self, AdminError};
use crate::dlq::{self, AvroDecoding};

/// An API error: its status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        use admin::ErrorKind as K;
        let status = match e.kind() {
            K::NotFound => StatusCode::NOT_FOUND,
            K::Conflict => StatusCode::CONFLICT,
            K::Invalid => StatusCode::BAD_REQUEST,
            // Kafka's ACLs refused kgate's credentials (the message names them).
            K::Forbidden => StatusCode::FORBIDDEN,
            K::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            K::Other => StatusCode::BAD_GATEWAY,
        };
        ApiError(status, e.to_string())
    }
}

impl From<BrowseError> for ApiError {
    fn from(e: BrowseError) -> ApiError {
        let status = match &e {
            BrowseError::NotFound(_) => StatusCode::NOT_FOUND,
            BrowseError::Invalid(_) => StatusCode::BAD_REQUEST,
            BrowseError::Kafka { .. } => StatusCode::BAD_GATEWAY,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn no_registry() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "no schema registry configured; add `schema_registry: {url: …}` to the config".into(),
    )
}

fn avro_decoding(ui: &Ui) -> Option<AvroDecoding> {
    ui.registry.as_ref().map(|cache| AvroDecoding {
        cache: cache.clone(),
        runtime: tokio::runtime::Handle::current(),
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// `GET /api/me`: who is logged in and whether they may write.
pub async fn me(State(ui): State<Arc<Ui>>, Extension(who): Extension<Identity>) -> Json<Value> {
    Json(json!({
        "user": who.name,
        "role": format!("{:?}", who.role).to_lowercase(),
        "write": who.can_write(&ui.config),
        "auth": ui.config.auth_enabled(),
    }))
}

/// kgate's own series from the `Metrics` that `/metrics` renders: `{name, labels, value}`,
/// histograms as their `_sum` and `_count`.
pub fn pipeline_series(text: &str) -> Vec<Value> {
    super::overview::parse(text)
        .into_iter()
        .filter(|s| !s.name.ends_with("_bucket"))
        .map(|s| json!({ "name": s.name, "labels": s.labels, "value": s.value }))
        .collect()
}

/// The number of consumer groups (one ListGroups request: `admin::list_groups` also computes
/// every group's lag, which takes seconds with many groups).
fn group_count(kafka: &crate::kafka::KafkaConfig) -> Result<usize, ApiError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let e = |e: rdkafka::error::KafkaError| {
        ApiError(
            StatusCode::BAD_GATEWAY,
            format!("Kafka {}: listing groups: {e}", kafka.brokers.join(",")),
        )
    };
    let c: BaseConsumer<crate::kafka::QuietContext> = crate::kafka::base_client_config(kafka)
        .create_with_context(Default::default())
        .map_err(e)?;
    Ok(c.fetch_group_list(None, Duration::from_secs(10))
        .map_err(e)?
        .groups()
        .len())
}

/// `GET /api/overview`: the cluster, its brokers and counts, the registry, and (inside `kgate
/// run`) the pipelines' counters.
pub async fn overview(State(ui): State<Arc<Ui>>) -> ApiResult {
    let cluster = admin::cluster(&ui.kafka).await?;
    let kafka = ui.kafka.clone();
    let groups = match blocking(move || group_count(&kafka)).await {
        Ok(n) => json!(n),
        Err(e) => json!({ "error": e.1 }),
    };
    let registry = match &ui.registry {
        None => Value::Null,
        Some(c) => match c.client().list_subjects().await {
            Ok(s) => json!({ "url": c.client().url(), "subjects": s.len() }),
            Err(e) => json!({ "url": c.client().url(), "error": e.to_string() }),
        },
    };
    let text = ui.metrics.as_ref().map(|m| m.render());
    let pipelines = text.as_deref().map(pipeline_series);
    // Per pipeline and source (rates are the page's: the difference between two polls), and
    // the producer buffer's fill.
    let by_pipeline = text.as_deref().map(|t| {
        let series = super::overview::parse(t);
        let inflight = super::overview::sum(&series, "kgate_producer_inflight_records", |_| true);
        json!({
            "pipelines": super::overview::pipelines(&series, ui.pipelines()),
            "buffer": { "inflight": inflight, "max_records": ui.kafka.producer.max_buffered_records },
        })
    });
    Ok(Json(json!({
        "cluster": cluster,
        "groups": groups,
        "registry": registry,
        "dlq_topic": ui.dlq_topic,
        "pipelines": pipelines,
        "run": by_pipeline,
        "write": ui.config.write,
    })))
}

/// `?internal=true` also lists Kafka's own topics.
#[derive(Debug, Deserialize)]
pub struct TopicsQuery {
    /// Include `__consumer_offsets` and the like.
    #[serde(default)]
    pub internal: bool,
}

/// `GET /api/topics`.
pub async fn topics(State(ui): State<Arc<Ui>>, Query(q): Query<TopicsQuery>) -> ApiResult {
    let t = admin::list_topics(&ui.kafka, None, q.internal).await?;
    Ok(Json(json!({ "topics": t })))
}

/// `GET /api/topics/{topic}`: partitions (leader, replicas, ISR, watermarks) and configs
/// (sensitive values never shown).
pub async fn topic(State(ui): State<Arc<Ui>>, Path(topic): Path<String>) -> ApiResult {
    let mut d = admin::describe_topic(&ui.kafka, &topic).await?;
    for c in &mut d.configs {
        if c.sensitive {
            c.value = None;
        }
    }
    Ok(Json(json!(d)))
}

/// `GET /api/topics/{topic}/messages?partition=&from=start|end&offset=&timestamp=&cursor=&limit=&key=&value=&header=`.
pub async fn messages(
    State(ui): State<Arc<Ui>>,
    Path(topic): Path<String>,
    Query(q): Query<browse::Query>,
) -> ApiResult {
    let avro = avro_decoding(&ui);
    let kafka = ui.kafka.clone();
    let page = blocking(move || Ok(browse::read_page(&kafka, &topic, &q, avro.as_ref())?)).await?;
    Ok(Json(json!(page)))
}

/// `GET /api/groups`.
pub async fn groups(State(ui): State<Arc<Ui>>) -> ApiResult {
    Ok(Json(
        json!({ "groups": admin::list_groups(&ui.kafka).await? }),
    ))
}

/// `GET /api/groups/{group}`: members and lag per partition.
/// Marks the group watched: its lag is sampled while the UI runs, this reading first.
pub async fn group(State(ui): State<Arc<Ui>>, Path(group): Path<String>) -> ApiResult {
    let d = admin::describe_group(&ui.kafka, &group).await?;
    ui.lag.watch(&group);
    ui.lag.record(&group, &d);
    Ok(Json(json!(d)))
}

/// `GET /api/groups/{group}/history`: the group's lag sampled while the UI runs
/// (`{interval_ms, samples: [{time_ms, total_lag, topics: {topic: lag}}]}`, oldest first).
/// Marks the group watched, and takes its first sample if it has none.
pub async fn group_history(State(ui): State<Arc<Ui>>, Path(group): Path<String>) -> ApiResult {
    if ui.lag.samples(&group).is_empty() {
        let d = admin::describe_group(&ui.kafka, &group).await?;
        ui.lag.watch(&group);
        ui.lag.record(&group, &d);
    } else {
        ui.lag.watch(&group);
    }
    Ok(Json(json!({
        "group": group,
        "interval_ms": ui.lag.interval().as_millis() as u64,
        "max_samples": super::lag::MAX_SAMPLES,
        "samples": ui.lag.samples(&group),
    })))
}

/// `GET /api/schemas`: every subject with its versions.
pub async fn schemas(State(ui): State<Arc<Ui>>) -> ApiResult {
    let cache = ui.registry.as_ref().ok_or_else(no_registry)?;
    let client = cache.client();
    let bad_gateway =
        |e: crate::registry::RegistryError| ApiError(StatusCode::BAD_GATEWAY, e.to_string());
    let mut subjects = client.list_subjects().await.map_err(bad_gateway)?;
    subjects.sort();
    let versions =
        futures_util::future::join_all(subjects.iter().map(|s| client.versions(s))).await;
    let mut out = Vec::new();
    for (s, v) in subjects.into_iter().zip(versions) {
        match v {
            Ok(v) => out.push(json!({ "subject": s, "versions": v })),
            Err(e) => out.push(json!({ "subject": s, "error": e.to_string() })),
        }
    }
    Ok(Json(json!({ "registry": client.url(), "subjects": out })))
}

/// `GET /api/schemas/{subject}/versions/{version}`: the schema (parsed JSON when it is).
pub async fn schema_version(
    State(ui): State<Arc<Ui>>,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let cache = ui.registry.as_ref().ok_or_else(no_registry)?;
    let v: crate::registry::Version = version.parse().map_err(bad)?;
    let r = cache
        .client()
        .get_version(&subject, v)
        .await
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, e.to_string()))?;
    let schema: Value = serde_json::from_str(&r.schema).unwrap_or(Value::String(r.schema));
    Ok(Json(json!({
        "subject": r.subject,
        "version": r.version,
        "id": r.id,
        "schema_type": r.schema_type,
        "schema": schema,
    })))
}

/// `GET /api/dlq?topic=&error_type=&source_topic=&limit=`.
#[derive(Debug, Deserialize)]
pub struct DlqQuery {
    /// The DLQ topic (the config's `dlq.topic` by default).
    pub topic: Option<String>,
    /// Only this `error_type`.
    pub error_type: Option<String>,
    /// Only this `source_topic`.
    pub source_topic: Option<String>,
    /// The newest records shown; 50 by default, at most 500.
    pub limit: Option<usize>,
    /// How many of the newest records are read and counted (100,000 by default, at most
    /// 1,000,000): a page view costs at most that, however long the DLQ has grown.
    pub scan: Option<u64>,
}

/// The newest DLQ records a page view reads by default, and at most.
const DLQ_SCAN: u64 = 100_000;
const DLQ_SCAN_MAX: u64 = 1_000_000;

/// `GET /api/dlq`: as `kgate dlq inspect --output json`: the summary by error type and source
/// topic, and the newest records.
pub async fn dlq(State(ui): State<Arc<Ui>>, Query(q): Query<DlqQuery>) -> ApiResult {
    let topic = q
        .topic
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| ui.dlq_topic.clone());
    let filter = dlq::Filter {
        error_type: q.error_type.filter(|s| !s.is_empty()),
        source_topic: q.source_topic.filter(|s| !s.is_empty()),
    };
    let max = q.limit.unwrap_or(50).clamp(1, browse::MAX_LIMIT);
    let scan = q.scan.unwrap_or(DLQ_SCAN).clamp(1, DLQ_SCAN_MAX);
    let avro = avro_decoding(&ui);
    let kafka = ui.kafka.clone();
    let t = topic.clone();
    let found = blocking(move || {
        let found = dlq::read(&kafka, &t, None, Some(scan), &filter, max).map_err(|e| {
            let msg = format!("{e:#}");
            let status = if msg.contains("does not exist") {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_GATEWAY
            };
            ApiError(status, msg)
        })?;
        let records: Vec<Value> = found
            .records
            .iter()
            .rev()
            .map(|r| dlq::record_json(r, avro.as_ref()))
            .collect();
        Ok((dlq::summary_json(&found), records))
    })
    .await?;
    let (mut summary, records) = found;
    summary["topic"] = topic.into();
    summary["records"] = records.into();
    Ok(Json(summary))
}

// ------------------------------------------------------------------------------ write mode

/// `POST /api/topics` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTopic {
    /// The name.
    pub name: String,
    /// Partitions (1 by default).
    #[serde(default)]
    pub partitions: Option<i32>,
    /// Replicas (the broker's default when absent).
    #[serde(default)]
    pub replication_factor: Option<i32>,
    /// `retention.ms` as a duration (`7d`, `12h`), or `-1`/`forever`.
    #[serde(default)]
    pub retention: Option<String>,
    /// Other topic configs.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// `POST /api/topics` (write mode).
pub async fn create_topic(
    State(ui): State<Arc<Ui>>,
    Json(t): Json<NewTopic>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut configs: Vec<(String, String)> = t.configs.into_iter().collect();
    if let Some(r) = t
        .retention
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
    {
        let ms = if r == "-1" || r == "forever" {
            "-1".to_string()
        } else {
            humantime::parse_duration(r)
                .map_err(|e| bad(format!("retention `{r}`: {e}; write e.g. 7d or 12h")))?
                .as_millis()
                .to_string()
        };
        configs.push(("retention.ms".into(), ms));
    }
    admin::create_topic(
        &ui.kafka,
        &t.name,
        t.partitions.unwrap_or(1),
        t.replication_factor,
        &configs,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json!({ "created": t.name }))))
}

/// `DELETE /api/topics/{topic}` (write mode).
pub async fn delete_topic(State(ui): State<Arc<Ui>>, Path(topic): Path<String>) -> ApiResult {
    admin::delete_topic(&ui.kafka, &topic).await?;
    Ok(Json(json!({ "deleted": topic })))
}

/// `POST /api/topics/{topic}/configs` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigEdit {
    /// `retention.ms` as a duration (`7d`), or `-1`/`forever`.
    #[serde(default)]
    pub retention: Option<String>,
    /// Other topic configs to set.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

/// `retention` as `retention.ms`.
fn retention_ms(r: &str) -> Result<String, ApiError> {
    let r = r.trim();
    if r == "-1" || r == "forever" {
        return Ok("-1".into());
    }
    Ok(humantime::parse_duration(r)
        .map_err(|e| bad(format!("retention `{r}`: {e}; write e.g. 7d or 12h")))?
        .as_millis()
        .to_string())
}

/// `POST /api/topics/{topic}/configs` (write mode): sets configs (the others set on the topic
/// are kept) and answers what changed.
pub async fn alter_topic(
    State(ui): State<Arc<Ui>>,
    Path(topic): Path<String>,
    Json(c): Json<ConfigEdit>,
) -> ApiResult {
    let mut configs: Vec<(String, String)> = c.configs.into_iter().collect();
    if let Some(r) = c.retention.as_deref().filter(|r| !r.trim().is_empty()) {
        configs.push(("retention.ms".into(), retention_ms(r)?));
    }
    if configs.is_empty() {
        return Err(bad("nothing to change: give `retention` or `configs`"));
    }
    let changes = admin::alter_topic_configs(&ui.kafka, &topic, &configs).await?;
    Ok(Json(json!({ "topic": topic, "changes": changes })))
}

/// `POST /api/topics/{topic}/partitions` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    /// The new total (more than today's).
    pub total: usize,
}

/// `POST /api/topics/{topic}/partitions` (write mode): grows the topic to `total` partitions.
pub async fn add_partitions(
    State(ui): State<Arc<Ui>>,
    Path(topic): Path<String>,
    Json(p): Json<Partitions>,
) -> ApiResult {
    admin::add_partitions(&ui.kafka, &topic, p.total).await?;
    Ok(Json(json!({ "topic": topic, "partitions": p.total })))
}

/// `DELETE /api/groups/{group}` (write mode): deletes an inactive group and its offsets.
pub async fn delete_group(State(ui): State<Arc<Ui>>, Path(group): Path<String>) -> ApiResult {
    admin::delete_group(&ui.kafka, &group).await?;
    ui.lag.forget(&group);
    Ok(Json(json!({ "deleted": group })))
}

/// `POST /api/groups/{group}/reset` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The topic whose partitions move.
    pub topic: String,
    /// `earliest`, `latest`, `offset` (to `value`), `shift` (by `value`, negative = back) or
    /// `datetime` (`value` in RFC 3339).
    pub to: String,
    /// The offset, shift or time.
    #[serde(default)]
    pub value: Option<String>,
    /// Commit the new offsets; false (the default) answers what would change.
    #[serde(default)]
    pub execute: bool,
}

/// `POST /api/groups/{group}/reset` (write mode): `kgate groups reset-offsets`; refused while
/// the group has members.
pub async fn reset_group(
    State(ui): State<Arc<Ui>>,
    Path(group): Path<String>,
    Json(r): Json<ResetRequest>,
) -> ApiResult {
    let value = r.value.as_deref().map(str::trim).unwrap_or("");
    let int = |what: &str| {
        value
            .parse::<i64>()
            .map_err(|_| bad(format!("to {what}: `{value}` is not a whole number")))
    };
    let to = match r.to.as_str() {
        "earliest" => admin::ResetTo::Earliest,
        "latest" => admin::ResetTo::Latest,
        "offset" => admin::ResetTo::Offset(int("offset")?),
        "shift" => admin::ResetTo::ShiftBy(int("shift")?),
        "datetime" => {
            admin::ResetTo::Datetime(humantime::parse_rfc3339_weak(value).map_err(|e| {
                bad(format!(
                    "to datetime: `{value}`: {e}; write e.g. 2026-12-07T06:00:00Z"
                ))
            })?)
        }
        t => {
            return Err(bad(format!(
                "to `{t}`: use earliest, latest, offset, shift or datetime"
            )))
        }
    };
    let changes = admin::reset_offsets(&ui.kafka, &group, &r.topic, to, r.execute).await?;
    Ok(Json(
        json!({ "group": group, "executed": r.execute, "changes": changes }),
    ))
}

/// `POST /api/schemas/{subject}/compatibility` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompatibilityRequest {
    /// The schema text to check.
    pub schema: String,
}

/// `POST /api/schemas/{subject}/compatibility`: whether `schema` may be the subject's next
/// version, and why not. Changes nothing (allowed in read-only mode; CSRF-checked).
pub async fn compatibility(
    State(ui): State<Arc<Ui>>,
    Path(subject): Path<String>,
    Json(c): Json<CompatibilityRequest>,
) -> ApiResult {
    let cache = ui.registry.as_ref().ok_or_else(no_registry)?;
    let (ok, reasons) = cache
        .client()
        .check_compatibility(&subject, &c.schema)
        .await
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(Json(
        json!({ "subject": subject, "compatible": ok, "reasons": reasons }),
    ))
}

/// `POST /api/topics/{topic}/messages` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// The key (text); none = no key.
    #[serde(default)]
    pub key: Option<String>,
    /// The value: JSON (any value) for `json` and `avro`, a string for `text`.
    pub value: Value,
    /// Headers (text values).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `json` (default), `text`, or `avro` (encoded with `subject`'s latest schema).
    #[serde(default)]
    pub format: Option<String>,
    /// The registry subject for `avro`.
    #[serde(default)]
    pub subject: Option<String>,
    /// Only this partition.
    #[serde(default)]
    pub partition: Option<i32>,
}

/// `POST /api/topics/{topic}/messages` (write mode): produces one record and answers with its
/// partition and offset once Kafka holds it.
pub async fn produce(
    State(ui): State<Arc<Ui>>,
    Path(topic): Path<String>,
    Json(m): Json<NewMessage>,
) -> ApiResult {
    let payload: Vec<u8> = match m.format.as_deref().unwrap_or("json") {
        "json" => serde_json::to_vec(&m.value).map_err(|e| bad(e.to_string()))?,
        "text" => match &m.value {
            Value::String(s) => s.clone().into_bytes(),
            v => v.to_string().into_bytes(),
        },
        "avro" => {
            let cache = ui.registry.as_ref().ok_or_else(no_registry)?;
            let subject = m
                .subject
                .as_deref()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| bad("format avro needs a `subject` (e.g. `TOPIC-value`)"))?;
            let latest = cache
                .load(subject)
                .await
                .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
            let mut out = vec![0u8];
            out.extend_from_slice(&latest.id.to_be_bytes());
            latest.schema.encode(&m.value, &mut out).map_err(|e| {
                bad(format!(
                    "the value does not match subject {subject} version {}: {e}",
                    latest.version
                ))
            })?;
            out
        }
        f => return Err(bad(format!("format `{f}`: use json, text or avro"))),
    };
    let producer = match ui.producer.get() {
        Some(p) => p,
        None => {
            let p: FutureProducer = crate::kafka::producer_client_config(&ui.kafka)
                .set("allow.auto.create.topics", "false")
                .create()
                .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))?;
            let _ = ui.producer.set(p);
            ui.producer.get().expect("set above")
        }
    };
    let mut headers = OwnedHeaders::new();
    for (k, v) in &m.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let mut rec = FutureRecord::<[u8], [u8]>::to(&topic)
        .payload(&payload)
        .headers(headers);
    if let Some(k) = &m.key {
        rec = rec.key(k.as_bytes());
    }
    if let Some(p) = m.partition {
        rec = rec.partition(p);
    }
    let d = producer
        .send(rec, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| {
            ApiError(
                StatusCode::BAD_GATEWAY,
                format!(
                    "Kafka {}: producing to {topic}: {e}",
                    ui.kafka.brokers.join(",")
                ),
            )
        })?;
    Ok(Json(
        json!({ "topic": topic, "partition": d.partition, "offset": d.offset }),
    ))
}

/// `POST /api/dlq/replay` body: as `kgate dlq replay`'s flags.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The DLQ topic (the config's `dlq.topic` by default).
    #[serde(default)]
    pub topic: Option<String>,
    /// Send every selected record here instead of back to its `source_topic`.
    #[serde(default)]
    pub to: Option<String>,
    /// Only this `error_type`.
    #[serde(default)]
    pub error_type: Option<String>,
    /// Only this `source_topic`.
    #[serde(default)]
    pub source_topic: Option<String>,
    /// Records a second.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Count and list, send nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// `--max-attempts` (3 by default).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// The replay's consumer group (`kgate-dlq-replay.<topic>` by default).
    #[serde(default)]
    pub group: Option<String>,
}

/// A replay started from the UI.
#[derive(Debug, Clone)]
pub struct ReplayJob {
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    /// The request, as JSON.
    pub request: Value,
    /// While it runs: `{total, read, sent}` after each batch (`total` counts transaction
    /// markers too, so it is an upper bound).
    pub progress: Option<Value>,
    /// The counts once done (`{"replay": {…}}`), with the dry run's records.
    pub result: Option<Value>,
    /// Why it failed.
    pub error: Option<String>,
}

fn job_json(id: u64, j: &ReplayJob) -> Value {
    json!({
        "id": id,
        "state": j.state,
        "request": j.request,
        "progress": j.progress,
        "result": j.result,
        "error": j.error,
    })
}

/// `POST /api/dlq/replay` (write mode): starts a replay (`kgate dlq replay`'s machinery) in
/// the background; 202 with its id, whose progress is at `GET /api/dlq/replay/{id}`.
pub async fn replay(
    State(ui): State<Arc<Ui>>,
    Extension(who): Extension<Identity>,
    Json(r): Json<ReplayRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let topic = r
        .topic
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| ui.dlq_topic.clone());
    let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
    if let Some(t) = nonempty(&r.error_type) {
        if !crate::event::ErrorType::ALL.iter().any(|e| e.as_str() == t) {
            return Err(bad(format!("unknown error_type {t}")));
        }
    }
    if let Some(to) = nonempty(&r.to) {
        if let Some((_, why)) = dlq::refused_target(&to, &topic) {
            return Err(bad(format!("to: {why}")));
        }
    }
    if r.rate.is_some_and(|x| x.is_nan() || x <= 0.0) {
        return Err(bad("rate must be more than 0 records a second"));
    }
    let args = dlq::ReplayRequest {
        topic: topic.clone(),
        to: nonempty(&r.to),
        error_type: nonempty(&r.error_type),
        source_topic: nonempty(&r.source_topic),
        since: None,
        rate: r.rate,
        dry_run: r.dry_run,
        max_attempts: r.max_attempts.unwrap_or(3).max(1),
        group: nonempty(&r.group),
    };
    let request = json!({
        "topic": topic, "to": args.to, "error_type": args.error_type,
        "source_topic": args.source_topic, "rate": args.rate, "dry_run": args.dry_run,
        "max_attempts": args.max_attempts, "group": args.group(), "by": who.name,
    });
    let id = ui.next_job.fetch_add(1, Ordering::Relaxed);
    let job = ReplayJob {
        state: "running",
        request,
        progress: None,
        result: None,
        error: None,
    };
    ui.jobs.lock().expect("jobs lock").insert(id, job.clone());
    let kafka = ui.kafka.clone();
    let ui2 = ui.clone();
    let ui3 = ui.clone();
    tokio::spawn(async move {
        let done = tokio::task::spawn_blocking(move || {
            let stop = AtomicBool::new(false);
            let mut shown = Vec::new();
            // The job's progress, at most every 200 ms (and at the end of each batch's last
            // record): the status endpoint shares the lock.
            let mut shown_at: Option<std::time::Instant> = None;
            let mut progress = |total: u64, c: &dlq::ReplayCounts| {
                if shown_at.is_some_and(|t| t.elapsed() < std::time::Duration::from_millis(200))
                    && c.read < total
                {
                    return;
                }
                shown_at = Some(std::time::Instant::now());
                if let Some(j) = ui3.jobs.lock().expect("jobs lock").get_mut(&id) {
                    j.progress = Some(json!({ "total": total, "read": c.read, "sent": c.sent }));
                }
            };
            dlq::replay(&kafka, &args, &stop, None, &mut shown, &mut progress).map(|c| (c, shown))
        })
        .await;
        let mut jobs = ui2.jobs.lock().expect("jobs lock");
        let Some(j) = jobs.get_mut(&id) else { return };
        match done {
            Ok(Ok((counts, shown))) => {
                let mut result = counts.json();
                result["records"] = shown
                    .iter()
                    .take(50)
                    .map(|(r, target)| {
                        let mut v = dlq::record_json(r, None);
                        v["target"] = target.as_str().into();
                        v
                    })
                    .collect::<Vec<_>>()
                    .into();
                j.state = "done";
                j.result = Some(result);
            }
            Ok(Err(e)) => {
                j.state = "failed";
                j.error = Some(format!("{e:#}"));
            }
            Err(e) => {
                j.state = "failed";
                j.error = Some(e.to_string());
            }
        }
    });
    Ok((StatusCode::ACCEPTED, Json(job_json(id, &job))))
}

/// `GET /api/dlq/replay/{id}`.
pub async fn replay_status(State(ui): State<Arc<Ui>>, Path(id): Path<u64>) -> ApiResult {
    let jobs = ui.jobs.lock().expect("jobs lock");
    let j = jobs
        .get(&id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no replay {id}")))?;
    Ok(Json(job_json(id, j)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_read_from_the_text_exposition() {
        let text = "# HELP x y\n# TYPE x counter\nkgate_events_total{pipeline=\"a,b\",topic=\"t\"} 5\nkgate_up 1\nkgate_lat_bucket{le=\"1\"} 3\n";
        let s = pipeline_series(text);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0]["labels"]["pipeline"], "a,b");
        assert_eq!(s[0]["value"], 5.0);
        assert_eq!(s[1]["name"], "kgate_up");
    }
}
