//! The overview's view of kgate's own pipelines inside `kgate run`: the series `/metrics`
//! renders, joined per pipeline and per source with what the config says each pipeline reads
//! and writes (its feeds, its topics, its DLQ).
//!
//! Per pipeline: records in (its sources' receive counters), out (Kafka's acks on its topics),
//! dead-lettered (DLQ records whose `source_topic` is one of its topics), the accept → ack
//! latency of its topics (`kafka_producer_request_duration_seconds`: from the source receiving
//! the event to Kafka acknowledging the record), and each source's connection state. A topic
//! written by two pipelines counts toward both.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

/// One series of the text exposition (histogram buckets too).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The metric name (`…_bucket`, `…_sum`, `…_count` for histograms).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Reads the Prometheus text exposition (as [`crate::metrics::Metrics::render`] writes it).
pub fn parse(text: &str) -> Vec<Series> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        // Label values are quoted and may hold commas; split on `",`.
        for part in labels.split("\",").filter(|p| !p.is_empty()) {
            if let Some((k, v)) = part.split_once("=\"") {
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
        }
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.push(Series {
            name: name.to_string(),
            labels: map,
            value,
        });
    }
    out
}

/// What the config says about a pipeline: its source's kind and feeds, the topics it writes.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PipelineInfo {
    /// `pipelines[].name`.
    pub name: String,
    /// `websocket`, `device_websocket`, `http`, `mqtt` or `kafka`.
    pub source: &'static str,
    /// WebSocket feed URLs or the MQTT broker (redacted as in `/metrics`).
    pub urls: Vec<String>,
    /// A `kafka` source's topics.
    pub kafka_topics: Vec<String>,
    /// A `kafka` source's group.
    pub group: Option<String>,
    /// An `mqtt` source's Receive Maximum.
    pub mqtt_max_inflight: Option<u16>,
    /// `topic` as written (a name or a template).
    pub topic: String,
    /// The topics it may write: `[topic]` when fixed, else `topics_allowed` or the template's
    /// fixed start with `*`.
    pub topics: Vec<String>,
    /// Its DLQ topic.
    pub dlq_topic: String,
}

impl PipelineInfo {
    /// Whether it may write `topic`.
    pub fn writes(&self, topic: &str) -> bool {
        self.topic == topic
            || self.topics.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => p == topic,
            })
    }
}

/// The `q` quantile (0..1) of a histogram from its cumulative buckets `(le, count)`, linear
/// within the bucket as Prometheus' `histogram_quantile` does; `None` without observations.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for (le, count) in b {
        if count >= rank {
            if le.is_infinite() {
                return Some(lo);
            }
            let within = count - below;
            return Some(if within > 0.0 {
                lo + (le - lo) * (rank - below) / within
            } else {
                le
            });
        }
        lo = le;
        below = count;
    }
    Some(lo)
}

/// Σ of `name`'s series whose labels satisfy `f`.
pub fn sum(series: &[Series], name: &str, f: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
    series
        .iter()
        .filter(|s| s.name == name && f(&s.labels))
        // From +0 (`Sum` for f64 starts at -0, which JSON and the page would show as -0).
        .fold(0.0, |a, s| a + s.value)
}

/// Whether any series of `name` satisfies `f` (a counter not yet touched has none).
fn any(series: &[Series], name: &str, f: impl Fn(&BTreeMap<String, String>) -> bool) -> bool {
    series.iter().any(|s| s.name == name && f(&s.labels))
}

fn label<'a>(l: &'a BTreeMap<String, String>, k: &str) -> &'a str {
    l.get(k).map_or("", String::as_str)
}

/// The accept → ack latency of the topics `p` writes: count, mean, p50 and p99 (ms), since
/// the start, and the raw `sum_s`/`count` so that a poller can take a window's mean.
fn latency(series: &[Series], p: &PipelineInfo) -> Value {
    const H: &str = "kafka_producer_request_duration_seconds";
    let mine = |l: &BTreeMap<String, String>| p.writes(label(l, "topic"));
    let count = sum(series, &format!("{H}_count"), mine);
    let sum_s = sum(series, &format!("{H}_sum"), mine);
    let mut buckets: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for s in series
        .iter()
        .filter(|s| s.name == format!("{H}_bucket") && mine(&s.labels))
    {
        let le = label(&s.labels, "le");
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::INFINITY)
        };
        buckets.entry(le.to_string()).or_insert((bound, 0.0)).1 += s.value;
    }
    let b: Vec<(f64, f64)> = buckets.into_values().collect();
    let ms = |q| quantile(&b, q).map(|s| s * 1000.0);
    json!({
        "count": count,
        "sum_s": sum_s,
        "mean_ms": (count > 0.0).then(|| 1000.0 * sum_s / count),
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
    })
}

/// A connection's state from its counters: `connected` when more connections began than
/// ended, `disconnected` after one ended, `connecting` before the first.
fn state(connections: f64, disconnections: f64) -> &'static str {
    if connections > disconnections {
        "connected"
    } else if connections > 0.0 {
        "disconnected"
    } else {
        "connecting"
    }
}

/// Each pipeline's totals and sources, from `series`. `in` is `null` for an `http` source
/// (its counters are per route, shared by every pipeline).
pub fn pipelines(series: &[Series], infos: &[PipelineInfo]) -> Vec<Value> {
    infos.iter().map(|p| pipeline(series, p)).collect()
}

fn pipeline(series: &[Series], p: &PipelineInfo) -> Value {
    let by_pipeline = |l: &BTreeMap<String, String>| label(l, "pipeline") == p.name;
    let mut sources = Vec::new();
    let received: Option<f64> = match p.source {
        "websocket" => {
            let mut total = 0.0;
            for url in &p.urls {
                let mine = |l: &BTreeMap<String, String>| label(l, "url") == url;
                let received = sum(
                    series,
                    "kafka_producer_websocket_messages_received_total",
                    mine,
                );
                let (c, d) = (
                    sum(series, "kafka_producer_websocket_connections_total", mine),
                    sum(
                        series,
                        "kafka_producer_websocket_disconnections_total",
                        mine,
                    ),
                );
                total += received;
                sources.push(json!({
                    "source": url, "received": received, "state": state(c, d),
                    "connections": c, "disconnections": d,
                    "errors": sum(series, "kafka_producer_websocket_connection_errors_total", mine),
                }));
            }
            Some(total)
        }
        "mqtt" => {
            let received = sum(series, "kgate_mqtt_messages_received_total", by_pipeline);
            let (c, d) = (
                sum(series, "kgate_mqtt_connections_total", by_pipeline),
                sum(series, "kgate_mqtt_disconnections_total", by_pipeline),
            );
            sources.push(json!({
                "source": p.urls.first(), "received": received, "state": state(c, d),
                "connections": c, "disconnections": d,
                "errors": sum(series, "kgate_mqtt_connection_errors_total", by_pipeline),
                "inflight": sum(series, "kgate_mqtt_inflight", by_pipeline),
                "max_inflight": p.mqtt_max_inflight,
            }));
            Some(received)
        }
        "device_websocket" => {
            let received = sum(series, "kgate_device_frames_total", by_pipeline);
            let active = sum(series, "kgate_device_connections_active", by_pipeline);
            sources.push(json!({
                "source": "devices", "received": received,
                "state": format!("{active} connected"), "active": active,
                "connections": sum(series, "kgate_device_connections_total", by_pipeline),
                "disconnections": sum(series, "kgate_device_disconnections_total", by_pipeline),
            }));
            Some(received)
        }
        "kafka" => {
            let group = p.group.clone().unwrap_or_default();
            let mut total = 0.0;
            for t in &p.kafka_topics {
                let mine = |l: &BTreeMap<String, String>| {
                    label(l, "topic") == t && label(l, "group") == group
                };
                let received = sum(series, "kafka_consumer_records_total", mine);
                total += received;
                sources.push(json!({
                    "source": format!("{t} (group {group})"), "received": received,
                    "state": if any(series, "kafka_consumer_lag", mine) { "assigned" } else { "waiting" },
                    "lag": sum(series, "kafka_consumer_lag", mine),
                }));
            }
            Some(total)
        }
        _ => None,
    };
    let writes = |l: &BTreeMap<String, String>| p.writes(label(l, "topic"));
    let dead_lettered = sum(series, "kafka_dlq_published_total", |l| {
        label(l, "dlq_topic") == p.dlq_topic && p.writes(label(l, "source_topic"))
    });
    json!({
        "name": p.name,
        "source": p.source,
        "topic": p.topic,
        "topics": p.topics,
        "dlq_topic": p.dlq_topic,
        "in": received,
        "out": sum(series, "kafka_messages_published_total", writes),
        "dead_lettered": dead_lettered,
        "rejected": sum(series, "kgate_events_rejected_total", by_pipeline),
        "delivery_errors": sum(series, "kafka_delivery_errors_total", writes),
        "dropped": sum(series, "kafka_producer_queue_drops_total", writes),
        "latency": latency(series, p),
        "sources": sources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let b = [
            (0.001, 0.0),
            (0.01, 50.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert!((quantile(&b, 0.5).unwrap() - 0.01).abs() < 1e-9);
        assert!((quantile(&b, 0.25).unwrap() - 0.0055).abs() < 1e-9);
        assert!((quantile(&b, 0.99).unwrap() - 0.0982).abs() < 1e-9);
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(
            quantile(&[(0.1, 0.0), (f64::INFINITY, 4.0)], 0.5),
            Some(0.1)
        );
    }

    #[test]
    fn a_pipeline_is_joined_with_its_series() {
        let text = "\
kafka_producer_websocket_messages_received_total{url=\"ws://a\"} 7
kafka_producer_websocket_connections_total{url=\"ws://a\"} 2
kafka_producer_websocket_disconnections_total{url=\"ws://a\"} 1
kafka_producer_websocket_messages_received_total{url=\"ws://other\"} 100
kafka_messages_published_total{topic=\"ticks.x\"} 5
kafka_messages_published_total{topic=\"other\"} 50
kafka_dlq_published_total{dlq_topic=\"dlq\",source_topic=\"ticks.${ex}\",error_type=\"invalid_json\"} 2
kgate_events_rejected_total{pipeline=\"p\",error_type=\"invalid_json\"} 2
kafka_producer_request_duration_seconds_bucket{topic=\"ticks.x\",le=\"0.01\"} 4
kafka_producer_request_duration_seconds_bucket{topic=\"ticks.x\",le=\"+Inf\"} 5
kafka_producer_request_duration_seconds_sum{topic=\"ticks.x\"} 0.05
kafka_producer_request_duration_seconds_count{topic=\"ticks.x\"} 5
";
        let info = PipelineInfo {
            name: "p".into(),
            source: "websocket",
            urls: vec!["ws://a".into()],
            kafka_topics: vec![],
            group: None,
            mqtt_max_inflight: None,
            topic: "ticks.${ex}".into(),
            topics: vec!["ticks.*".into()],
            dlq_topic: "dlq".into(),
        };
        let v = &pipelines(&parse(text), &[info])[0];
        assert_eq!(v["in"], 7.0, "{v}");
        assert_eq!(v["out"], 5.0, "{v}");
        assert_eq!(v["dead_lettered"], 2.0, "{v}");
        assert_eq!(v["rejected"], 2.0, "{v}");
        assert_eq!(v["sources"][0]["state"], "connected", "{v}");
        assert_eq!(v["latency"]["count"], 5.0, "{v}");
        assert!((v["latency"]["mean_ms"].as_f64().unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(v["latency"]["p99_ms"], 10.0, "{v}");
        assert_eq!(v["dropped"].to_string(), "0.0", "no series: 0, not -0: {v}");
    }

    #[test]
    fn mqtt_device_and_kafka_sources_are_read_by_pipeline() {
        let text = "\
kgate_mqtt_messages_received_total{pipeline=\"m\",subscription=\"a/#\"} 3
kgate_mqtt_messages_received_total{pipeline=\"m\",subscription=\"b/#\"} 4
kgate_mqtt_messages_received_total{pipeline=\"other\",subscription=\"a/#\"} 100
kgate_mqtt_connections_total{pipeline=\"m\"} 1
kgate_mqtt_inflight{pipeline=\"m\"} 2
kgate_device_frames_total{pipeline=\"d\"} 9
kgate_device_connections_active{pipeline=\"d\"} 3
kafka_consumer_records_total{topic=\"in\",group=\"g\"} 11
kafka_consumer_records_total{topic=\"in\",group=\"other\"} 100
kafka_consumer_lag{topic=\"in\",partition=\"0\",group=\"g\"} 5
";
        let info = |name: &str, source: &'static str| PipelineInfo {
            name: name.into(),
            source,
            urls: vec!["mqtt://broker:1883".into()],
            kafka_topics: vec!["in".into()],
            group: Some("g".into()),
            mqtt_max_inflight: Some(10),
            topic: "t".into(),
            topics: vec!["t".into()],
            dlq_topic: "dlq".into(),
        };
        let v = pipelines(
            &parse(text),
            &[
                info("m", "mqtt"),
                info("d", "device_websocket"),
                info("k", "kafka"),
                info("h", "http"),
            ],
        );
        assert_eq!(v[0]["in"], 7.0, "{}", v[0]);
        let m = &v[0]["sources"][0];
        assert_eq!(
            (m["state"].as_str(), m["inflight"].as_f64()),
            (Some("connected"), Some(2.0)),
            "{m}"
        );
        assert_eq!(m["max_inflight"], 10, "{m}");
        assert_eq!(v[1]["in"], 9.0, "{}", v[1]);
        assert_eq!(v[1]["sources"][0]["state"], "3 connected", "{}", v[1]);
        assert_eq!(v[2]["in"], 11.0, "{}", v[2]);
        assert_eq!(v[2]["sources"][0]["lag"], 5.0, "{}", v[2]);
        assert_eq!(v[2]["sources"][0]["state"], "assigned", "{}", v[2]);
        assert!(
            v[3]["in"].is_null(),
            "http: per route, not per pipeline: {}",
            v[3]
        );
    }
}
