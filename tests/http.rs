//! The HTTP source against the real local Kafka over real sockets: the REST Proxy route (its
//! documented curl example verbatim), `/ingest` into a pipeline, 10,000 batched records each
//! found at its answered offset, the error answers, and a broker outage answered 429/503.
//! Run through `scripts/test`, which starts the broker.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::{json, Value};

const TOKEN: &str = "test-token-0123456789";
const LIMITED: &str = "limited-token-0123456789";

struct Gw {
    proc: Proc,
    http: String,
    metrics: String,
    _dir: tempfile::TempDir,
}

/// Starts `kgate run` with an `http:` section and waits until it is ready.
fn start(brokers: &str, http_extra: &str, kafka_extra: &str, pipelines: &str) -> Gw {
    let hport = free_port();
    let mport = free_port();
    let dir = tempfile::tempdir().unwrap();
    let pipelines = if pipelines.is_empty() {
        " []\n".to_string()
    } else {
        format!("\n{pipelines}")
    };
    let cfg = format!(
        "kafka:\n  brokers: ['{brokers}']\n{kafka_extra}metrics: {{listen: '127.0.0.1:{mport}'}}\ndlq: {{topic: '{}'}}\nshutdown_timeout: 20s\nhttp:\n  listen: '127.0.0.1:{hport}'\n{http_extra}pipelines:{pipelines}",
        unique("http.dlq")
    );
    let proc = spawn_run(dir.path(), &cfg);
    let gw = Gw {
        proc,
        http: format!("http://127.0.0.1:{hport}"),
        metrics: format!("127.0.0.1:{mport}"),
        _dir: dir,
    };
    gw.wait_ready(Duration::from_secs(30));
    gw
}

impl Gw {
    /// Waits for `/readyz`, and for the HTTP port to accept connections: `/readyz` can answer
    /// 200 before the HTTP server is bound (it only says Kafka answers), e.g. while the
    /// registry client is still being built.
    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let http_addr = self.http.trim_start_matches("http://").to_string();
        while http_get(&self.metrics, "/readyz").map(|r| r.0) != Some(200)
            || std::net::TcpStream::connect(&http_addr).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "kgate not ready; log:\n{}",
                self.proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    fn dlq_topic(&self) -> String {
        let log = std::fs::read_to_string(self._dir.path().join("kgate.yaml")).unwrap();
        log.split("dlq: {topic: '")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap()
            .to_string()
    }
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    {
        let r = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .unwrap();
        r[0].as_ref().unwrap();
    }
}

async fn post(
    c: &reqwest::Client,
    url: &str,
    ctype: &str,
    token: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, HashMap<String, String>, Value) {
    let mut req = c.post(url).header("Content-Type", ctype).body(body);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    (status, headers, v)
}

fn by_offset(recs: &[Rec]) -> HashMap<(i32, i64), &Rec> {
    recs.iter().map(|r| ((r.partition, r.offset), r)).collect()
}

/// Confluent's quick-start example, run with curl exactly as documented (host and topic
/// aside), answers in the REST Proxy's shape; binary records and keys land as the REST Proxy
/// writes them.
#[tokio::test(flavor = "multi_thread")]
async fn rest_proxy_documented_example_works_unchanged() {
    let b = brokers();
    let gw = start(&b, "", "", "");
    let topic = unique("jsontest");
    let url = format!("{}/topics/{topic}", gw.http);
    // From docs.confluent.io, REST Proxy quick start ("Produce and Consume JSON Messages").
    let out = Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/vnd.kafka.json.v2+json",
            "-H",
            "Accept: application/vnd.kafka.v2+json",
            "--data",
            r#"{"records":[{"value":{"foo":"bar"}}]}"#,
            &url,
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("{e}: {text}; log:\n{}", gw.proc.log_text());
    });
    assert_eq!(
        v,
        json!({"offsets":[{"partition":0,"offset":0,"error_code":null,"error":null}],"key_schema_id":null,"value_schema_id":null}),
        "{text}"
    );

    // The binary example, and a JSON key (written as JSON text, quotes included).
    let c = reqwest::Client::new();
    let (s, h, v) = post(
        &c,
        &url,
        "application/vnd.kafka.binary.v2+json",
        None,
        r#"{"records":[{"key":"a2V5","value":"S2Fma2E="}]}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(h["content-type"], "application/vnd.kafka.v2+json");
    assert_eq!(v["offsets"][0]["offset"], 1);
    let (s, _, v) = post(
        &c,
        &url,
        "application/vnd.kafka.json.v2+json",
        None,
        r#"{"records":[{"key":"someKey","value":{ "n" : [1, 2] }},{"key":{"id":7},"value":"text"}]}"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["offsets"][1]["offset"], 3);

    let recs = consume(&b, &topic, 4, Duration::from_secs(20));
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[0].value, br#"{"foo":"bar"}"#);
    assert_eq!(recs[0].key, None);
    assert_eq!(
        (recs[1].key.as_deref(), &recs[1].value[..]),
        (Some(&b"key"[..]), &b"Kafka"[..])
    );
    assert_eq!(recs[2].key.as_deref(), Some(&br#""someKey""#[..]));
    assert_eq!(recs[2].value, br#"{"n":[1,2]}"#);
    assert_eq!(recs[3].key.as_deref(), Some(&br#"{"id":7}"#[..]));
    assert_eq!(recs[3].value, br#""text""#);
}

/// Every error answer names the problem, as `{"error_code", "message"}`.
#[tokio::test(flavor = "multi_thread")]
async fn error_answers_name_the_problem() {
    let b = brokers();
    let http = format!(
        "  max_body: 2KB\n  auth:\n    - {{name: full, token: '{TOKEN}', topics: ['*'], pipelines: ['*']}}\n    - {{name: limited, token: '{LIMITED}', topics: ['allowed.*'], pipelines: [orders]}}\n"
    );
    let topic = unique("errors");
    let pipes = format!("  - name: orders\n    source: {{http: {{}}}}\n    topic: {topic}\n  - name: audit\n    source: {{http: {{}}}}\n    topic: {topic}\n");
    let gw = start(&b, &http, "", &pipes);
    let c = reqwest::Client::new();
    let t = format!("{}/topics/{topic}", gw.http);
    let json_v2 = "application/vnd.kafka.json.v2+json";
    let ok_body = r#"{"records":[{"value":1}]}"#;

    let (s, h, v) = post(&c, &t, json_v2, None, ok_body).await;
    assert_eq!((s, v["error_code"].as_u64()), (401, Some(401)), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{v}"
    );
    assert!(h.contains_key("www-authenticate"));
    let (s, _, v) = post(&c, &t, json_v2, Some("wrong-token-0123456789"), ok_body).await;
    assert_eq!(s, 401, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("unknown token"),
        "{v}"
    );
    // X-API-Key works as well as a bearer token.
    let r = c
        .post(&t)
        .header("Content-Type", json_v2)
        .header("X-API-Key", TOKEN)
        .body(ok_body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (s, _, v) = post(&c, &t, json_v2, Some(LIMITED), ok_body).await;
    assert_eq!((s, v["error_code"].as_u64()), (403, Some(403)), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains(&format!("may not write to topic `{topic}`")),
        "{v}"
    );
    let ingest = |p: &str| format!("{}/ingest/{p}", gw.http);
    let (s, _, v) = post(
        &c,
        &ingest("audit"),
        "application/json",
        Some(LIMITED),
        "{}",
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("may not feed pipeline `audit`"),
        "{v}"
    );

    let (s, _, v) = post(&c, &ingest("nope"), "application/json", Some(TOKEN), "{}").await;
    assert_eq!(s, 404, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("no pipeline `nope`"),
        "{v}"
    );
    let (s, _, v) = post(
        &c,
        &format!("{}/topics/bad%20name", gw.http),
        json_v2,
        Some(TOKEN),
        ok_body,
    )
    .await;
    assert_eq!((s, v["error_code"].as_u64()), (404, Some(40401)), "{v}");
    let (s, _, v) = post(
        &c,
        &t,
        json_v2,
        Some(TOKEN),
        r#"{"records":[{"value":1,"partition":5}]}"#,
    )
    .await;
    assert_eq!((s, v["error_code"].as_u64()), (404, Some(40402)), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("records[0].partition 5"),
        "{v}"
    );
    let (s, _, v) = post(
        &c,
        &format!("{}/nowhere", gw.http),
        json_v2,
        Some(TOKEN),
        ok_body,
    )
    .await;
    assert_eq!(s, 404, "{v}");

    let big = format!(r#"{{"records":[{{"value":"{}"}}]}}"#, "x".repeat(3000));
    let (s, _, v) = post(&c, &t, json_v2, Some(TOKEN), big).await;
    assert_eq!(s, 413, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("http.max_body"),
        "{v}"
    );

    let (s, _, v) = post(&c, &t, "text/plain", Some(TOKEN), ok_body).await;
    assert_eq!(s, 415, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("application/vnd.kafka.json.v2+json"),
        "{v}"
    );
    let (s, _, v) = post(
        &c,
        &t,
        "application/vnd.kafka.avro.v2+json",
        Some(TOKEN),
        r#"{"value_schema_id":1,"records":[{"value":1}]}"#,
    )
    .await;
    // No schema_registry in the config: the answer says what to add.
    assert_eq!((s, v["error_code"].as_u64()), (415, Some(415)), "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("avro") && m.contains("add `schema_registry: { url:"),
        "{v}"
    );
    let (s, _, v) = post(&c, &ingest("orders"), "text/csv", Some(TOKEN), "a,b").await;
    assert_eq!(s, 415, "{v}");

    let (s, _, v) = post(&c, &t, json_v2, Some(TOKEN), r#"{"records":[{"value":1}"#).await;
    assert_eq!((s, v["error_code"].as_u64()), (400, Some(400)), "{v}");
    assert!(v["message"].as_str().unwrap().contains("column"), "{v}");
    let (s, _, v) = post(&c, &t, json_v2, Some(TOKEN), r#"{"records":[]}"#).await;
    assert_eq!(s, 422, "{v}");
    let (s, _, v) = post(
        &c,
        &t,
        "application/vnd.kafka.binary.v2+json",
        Some(TOKEN),
        r#"{"records":[{"value":"b2s="},{"value":{"x":1}}]}"#,
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("records[1].value"),
        "{v}"
    );
    let (s, _, v) = post(
        &c,
        &ingest("orders"),
        "application/json",
        Some(TOKEN),
        r#"{"a": tru}"#,
    )
    .await;
    assert_eq!((s, v["error_code"].as_u64()), (400, Some(400)), "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("line 1 column 10"),
        "{v}"
    );

    let (_, text) = http_get(&gw.metrics, "/metrics").unwrap();
    for (route, status, n) in [
        ("/topics/{topic}", "401", 2.0),
        ("/topics/{topic}", "415", 2.0),
        ("/ingest/{pipeline}", "403", 1.0),
    ] {
        assert_eq!(
            metric(
                &text,
                "http_requests_total",
                &[
                    &format!("route=\"{route}\""),
                    &format!("status=\"{status}\"")
                ]
            ),
            n,
            "{route} {status}"
        );
    }
}

/// Registers `schema` under `subject` with a plain HTTP call to the registry; returns its id.
async fn register_schema(subject: &str, schema: &str) -> u64 {
    let r = reqwest::Client::new()
        .post(format!("{}/subjects/{subject}/versions", registry()))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .body(json!({ "schema": schema }).to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert!(status.is_success(), "register {subject}: {status} {v}");
    v["id"].as_u64().unwrap()
}

/// The id of a subject's latest version.
async fn latest_id(subject: &str) -> u64 {
    let v: Value = reqwest::get(format!("{}/subjects/{subject}/versions/latest", registry()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["id"].as_u64().unwrap_or_else(|| panic!("{subject}: {v}"))
}

/// A gateway with `schema_registry:` configured.
fn start_with_registry(b: &str) -> Gw {
    start(
        b,
        "",
        &format!("schema_registry:\n  url: '{}'\n", registry()),
        "",
    )
}

/// Confluent's Avro quick-start example, run with curl as documented (host and topic aside):
/// the schema is registered under `<topic>-value`, the answer names its id, and the record in
/// Kafka is magic byte 0, that id, and Avro that an independent decoder (fastavro) reads back.
/// The same schema again finds the same id; `key_schema` text registers `<topic>-key`.
#[tokio::test(flavor = "multi_thread")]
async fn rest_proxy_avro_documented_example_registers_and_encodes() {
    let b = brokers();
    let gw = start_with_registry(&b);
    let topic = unique("avrotest");
    let url = format!("{}/topics/{topic}", gw.http);
    // From docs.confluent.io, REST Proxy quick start ("Produce and Consume Avro Messages").
    let out = Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/vnd.kafka.avro.v2+json",
            "-H",
            "Accept: application/vnd.kafka.v2+json",
            "--data",
            r#"{"value_schema": "{\"type\": \"record\", \"name\": \"User\", \"fields\": [{\"name\": \"name\", \"type\": \"string\"}]}", "records": [{"value": {"name": "testUser"}}]}"#,
            &url,
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("{e}: {text}; log:\n{}", gw.proc.log_text());
    });
    let id = latest_id(&format!("{topic}-value")).await;
    assert_eq!(
        v,
        json!({"offsets":[{"partition":0,"offset":0,"error_code":null,"error":null}],"key_schema_id":null,"value_schema_id":id}),
        "{text}"
    );

    // The same schema text again (the registry answers the existing id), with string keys.
    let c = reqwest::Client::new();
    let body = json!({
        "key_schema": "\"string\"",
        "value_schema": "{\"type\": \"record\", \"name\": \"User\", \"fields\": [{\"name\": \"name\", \"type\": \"string\"}]}",
        "records": [{"key": "u1", "value": {"name": "second"}}, {"value": {"name": "third"}}],
    });
    let (s, h, v) = post(
        &c,
        &url,
        "application/vnd.kafka.avro.v2+json",
        None,
        body.to_string(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(h["content-type"], "application/vnd.kafka.v2+json");
    let key_id = latest_id(&format!("{topic}-key")).await;
    assert_eq!(v["value_schema_id"], id, "{v}");
    assert_eq!(v["key_schema_id"], key_id, "{v}");
    assert_eq!(v["offsets"][1]["offset"], 2, "{v}");

    let recs = consume(&b, &topic, 3, Duration::from_secs(20));
    assert_eq!(recs.len(), 3);
    let mut header = vec![0u8];
    header.extend_from_slice(&(id as u32).to_be_bytes());
    for r in &recs {
        assert_eq!(r.value[..5], header[..], "{:?}", r.value);
    }
    let decoded = fastavro(&registry(), &recs);
    assert_eq!(
        decoded,
        vec![
            (id, json!({"name": "testUser"})),
            (id, json!({"name": "second"})),
            (id, json!({"name": "third"})),
        ]
    );
    // The key is Avro too (decoded with kgate's decoder and the registered key schema).
    assert_eq!(recs[0].key, None);
    assert_eq!(recs[2].key, None);
    let key = recs[1].key.as_deref().unwrap();
    let (kid, body) = kgate::avro::unframe(key).unwrap();
    assert_eq!(u64::from(kid), key_id);
    let string = kgate::avro::Schema::parse("\"string\"").unwrap();
    assert_eq!(string.decode(body).unwrap(), json!("u1"));
}

/// `value_schema_id` of a schema registered beforehand: plain and Avro-JSON-wrapped unions,
/// field defaults. A record that does not fit fails the whole request (422 `42203`, naming
/// the record and the field) and nothing of it is written; the REST Proxy's other schema
/// errors are answered with its codes.
#[tokio::test(flavor = "multi_thread")]
async fn rest_proxy_avro_by_id_and_records_that_do_not_fit() {
    let b = brokers();
    let gw = start_with_registry(&b);
    let topic = unique("avroid");
    create_topic(&b, &topic, 1).await;
    let url = format!("{}/topics/{topic}", gw.http);
    let schema = r#"{"type":"record","name":"Reading","namespace":"io.kgate.test","fields":[
        {"name":"device","type":"string"},
        {"name":"celsius","type":"double"},
        {"name":"note","type":["null","string"],"default":null}]}"#;
    let id = register_schema(&unique("restavro.pre"), schema).await;
    let c = reqwest::Client::new();
    let avro = "application/vnd.kafka.avro.v2+json";

    // records[1] does not fit: nothing of the request is written.
    let bad = json!({"value_schema_id": id, "records": [
        {"value": {"device": "d1", "celsius": 20.5}},
        {"value": {"device": "d2", "celsius": "warm"}},
        {"value": {"device": "d3", "celsius": 1}},
    ]});
    let (s, _, v) = post(&c, &url, avro, None, bad.to_string()).await;
    assert_eq!((s, v["error_code"].as_u64()), (422, Some(42203)), "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("records[1].value") && m.contains("/celsius") && m.contains("double"),
        "{v}"
    );

    let good = json!({"value_schema_id": id, "records": [
        {"value": {"device": "d1", "celsius": 20.5}},
        {"value": {"device": "d2", "celsius": 21, "note": {"string": "wrapped"}}},
        {"value": {"device": "d3", "celsius": -1.25, "note": "plain"}, "partition": 0},
    ]});
    let (s, _, v) = post(&c, &url, avro, None, good.to_string()).await;
    assert_eq!(s, 200, "{v}");
    // Offset 0: the refused request wrote nothing before it.
    assert_eq!(
        v,
        json!({"offsets": [
            {"partition":0,"offset":0,"error_code":null,"error":null},
            {"partition":0,"offset":1,"error_code":null,"error":null},
            {"partition":0,"offset":2,"error_code":null,"error":null}],
            "key_schema_id": null, "value_schema_id": id})
    );
    let recs = consume(&b, &topic, 3, Duration::from_secs(20));
    assert_eq!(
        fastavro(&registry(), &recs),
        vec![
            (id, json!({"device":"d1","celsius":20.5,"note":null})),
            (id, json!({"device":"d2","celsius":21.0,"note":"wrapped"})),
            (id, json!({"device":"d3","celsius":-1.25,"note":"plain"})),
        ]
    );

    // The REST Proxy's other schema errors.
    for (body, status, code, says) in [
        (
            json!({"records": [{"value": {"device": "d"}}]}),
            422,
            42202,
            "value_schema or value_schema_id",
        ),
        (
            json!({"value_schema_id": id, "records": [{"key": "k", "value": {"device": "d", "celsius": 1}}]}),
            422,
            42201,
            "key_schema or key_schema_id",
        ),
        (
            json!({"value_schema": "{\"type\":\"record\",\"name\":\"X\"}", "records": [{"value": {}}]}),
            422,
            42205,
            "Invalid schema: value_schema",
        ),
        (
            json!({"value_schema_id": 999_999_999, "records": [{"value": {}}]}),
            408,
            40801,
            "999999999",
        ),
    ] {
        let (s, _, v) = post(&c, &url, avro, None, body.to_string()).await;
        assert_eq!((s, v["error_code"].as_u64()), (status, Some(code)), "{v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{v}");
    }
    let (s, _, v) = post(
        &c,
        &url,
        "application/vnd.kafka.protobuf.v2+json",
        None,
        r#"{"value_schema_id":1,"records":[{"value":{}}]}"#,
    )
    .await;
    assert_eq!(s, 415, "{v}");
    // Still nothing but the three records.
    let (s, _, v) = post(&c, &url, avro, None, good.to_string()).await;
    assert_eq!((s, &v["offsets"][0]["offset"]), (200, &json!(3)), "{v}");
}

/// 10,000 records in batches of 100 from 4 concurrent clients: every offset answered 200 holds
/// that record in Kafka, none is missing, none is extra.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_batched_records_each_at_its_answered_offset() {
    let b = brokers();
    let topic = unique("http10k");
    create_topic(&b, &topic, 3).await;
    let gw = start(&b, "", "", "");
    let url = format!("{}/topics/{topic}", gw.http);
    let c = reqwest::Client::new();
    let mut clients = Vec::new();
    for client in 0..4u64 {
        let (c, url) = (c.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for batch in 0..25u64 {
                let records: Vec<Value> = (0..100u64)
                    .map(|i| {
                        let seq = client * 2500 + batch * 100 + i;
                        json!({"key": format!("k{}", seq % 17), "value": {"client": client, "seq": seq}})
                    })
                    .collect();
                let (s, _, v) = post(&c, &url, "application/vnd.kafka.json.v2+json", None, json!({"records": records}).to_string()).await;
                assert_eq!(s, 200, "{v}");
                for (i, o) in v["offsets"].as_array().unwrap().iter().enumerate() {
                    assert_eq!(o["error_code"], Value::Null);
                    let seq = client * 2500 + batch * 100 + i as u64;
                    answered.push((o["partition"].as_i64().unwrap() as i32, o["offset"].as_i64().unwrap(), seq));
                }
            }
            answered
        }));
    }
    let mut answered = Vec::new();
    for h in clients {
        answered.extend(h.await.unwrap());
    }
    assert_eq!(answered.len(), 10_000);
    let recs = consume(&b, &topic, 10_000, Duration::from_secs(40));
    assert_eq!(recs.len(), 10_000, "records in Kafka");
    let at = by_offset(&recs);
    for (p, o, seq) in &answered {
        let r = at
            .get(&(*p, *o))
            .unwrap_or_else(|| panic!("no record at {p}/{o} (seq {seq})"));
        assert_eq!(r.json()["seq"], *seq, "record at {p}/{o}");
        assert_eq!(r.key_str(), format!("\"k{}\"", seq % 17));
    }
    let partitions: std::collections::BTreeSet<i32> = recs.iter().map(|r| r.partition).collect();
    assert_eq!(partitions.len(), 3, "keys spread over the partitions");
    let (_, text) = http_get(&gw.metrics, "/metrics").unwrap();
    assert_eq!(metric(&text, "http_records_per_request_sum", &[]), 10_000.0);
    assert_eq!(
        metric(&text, "http_requests_total", &["status=\"200\""]),
        100.0
    );
}

/// `/ingest` takes an object, an array and NDJSON through the pipeline's templates; a malformed
/// NDJSON line is rejected alone (422, its index and reason) and lands in the DLQ with its bytes.
#[tokio::test(flavor = "multi_thread")]
async fn ingest_object_array_and_ndjson_with_a_bad_line_to_the_dlq() {
    let b = brokers();
    let topic = unique("ingest");
    let pipes = format!(
        "  - name: orders\n    source: {{http: {{headers: [x-request-id]}}}}\n    transforms:\n      - set: {{path: /via, value: '${{@remote_ip}}'}}\n    topic: {topic}\n    key: '${{shop}}|${{id}}'\n    headers: {{ctype: '${{@content_type}}', index: '${{@index}}'}}\n"
    );
    let gw = start(&b, "", "", &pipes);
    let dlq = gw.dlq_topic();
    let url = format!("{}/ingest/orders", gw.http);
    let c = reqwest::Client::new();

    let (s, _, v) = post(&c, &url, "application/json", None, r#"{"shop":"a","id":1}"#).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(v["results"][0]["status"], "ok");
    assert_eq!(v["results"][0]["topic"], topic.as_str());

    let (s, _, v) = post(
        &c,
        &url,
        "application/json",
        None,
        r#"[{"shop":"a","id":2},{"shop":"b","id":3}]"#,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["accepted"], 2);

    let nd = "{\"shop\":\"c\",\"id\":4}\n{\"shop\":\"c\",\"id\":5\n{\"shop\":\"c\"}\n{\"shop\":\"c\",\"id\":7}\n";
    let r = c
        .post(&url)
        .header("Content-Type", "application/x-ndjson")
        .header("X-Request-Id", "req-42")
        .body(nd)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );
    let res = v["results"].as_array().unwrap();
    assert_eq!(res[0]["status"], "ok");
    assert_eq!(res[1]["status"], "rejected");
    assert_eq!(res[1]["error_type"], "invalid_json");
    assert_eq!(res[1]["dlq_topic"], dlq.as_str());
    assert_eq!(res[2]["error_type"], "missing_field");
    assert!(res[2]["error"].as_str().unwrap().contains("`id`"), "{v}");
    assert_eq!(res[3]["status"], "ok");

    // NDJSON sent as application/json is recognised too.
    let (s, _, v) = post(
        &c,
        &url,
        "application/json",
        None,
        "{\"shop\":\"d\",\"id\":8}\n{\"shop\":\"d\",\"id\":9}\n",
    )
    .await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(2)), "{v}");

    let recs = consume(&b, &topic, 7, Duration::from_secs(20));
    let keys: Vec<String> = recs.iter().map(|r| r.key_str()).collect();
    assert_eq!(keys, ["a|1", "a|2", "b|3", "c|4", "c|7", "d|8", "d|9"]);
    assert_eq!(recs[0].json()["via"], "127.0.0.1");
    assert_eq!(recs[3].headers["x-request-id"], "req-42");
    assert_eq!(recs[3].headers["ctype"], "application/x-ndjson");
    assert_eq!(recs[4].headers["index"], "3");
    let dl = consume(&b, &dlq, 2, Duration::from_secs(20));
    assert_eq!(dl.len(), 2);
    assert_eq!(dl[0].value, b"{\"shop\":\"c\",\"id\":5");
    assert_eq!(dl[0].headers["error_type"], "invalid_json");
    assert_eq!(dl[0].headers["x-request-id"], "req-42");
    assert_eq!(dl[0].offset, res[1]["dlq_offset"].as_i64().unwrap());
    assert_eq!(dl[1].value, b"{\"shop\":\"c\"}");
}

/// With a tiny producer buffer and the broker stopped mid-test, requests are answered 429 or
/// 503 with Retry-After; after the broker returns every record answered 200 is in Kafka at its
/// offset, and no record answered 429 is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_outage_answers_429_and_503_and_loses_no_acknowledged_record() {
    let state = tempfile::tempdir().unwrap();
    let envs = [
        ("KAFKA_PORT", "9492".to_string()),
        ("KAFKA_CONTROLLER_PORT", "9493".to_string()),
        (
            "KGATE_STATE_DIR",
            state.path().to_str().unwrap().to_string(),
        ),
    ];
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    struct Down<'a>(&'a [(&'a str, &'a str)]);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            services(&["down", "kafka"], self.0);
        }
    }
    let _down = Down(&envs);
    let up = |envs: &[(&str, &str)]| {
        let out = services(&["up", "kafka"], envs);
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    up(&envs);
    let broker = "127.0.0.1:9492";
    let topic = unique("outage.http");
    let gw = start(
        broker,
        "  ack_timeout: 2s\n  max_wait: 200ms\n  retry_after: 2s\n",
        "  producer: {max_buffered_records: 10, linger_ms: 5}\n",
        "",
    );
    let url = format!("{}/topics/{topic}", gw.http);
    let c = reqwest::Client::new();
    let mut seq = 0u64;
    // (status, [(seq, answered partition/offset, per-record error)])
    type Per = Vec<(u64, Option<(i32, i64)>, String)>;
    let mut answers: Vec<(u16, Per)> = Vec::new();
    let mut send = |n: usize| {
        let recs: Vec<Value> = (0..n)
            .map(|_| {
                seq += 1;
                json!({"value": {"seq": seq}})
            })
            .collect();
        let first = seq + 1 - n as u64;
        let (c, url) = (c.clone(), url.clone());
        async move {
            let (s, h, v) = post(
                &c,
                &url,
                "application/vnd.kafka.json.v2+json",
                None,
                json!({"records": recs}).to_string(),
            )
            .await;
            if s == 429 || s == 503 {
                assert_eq!(
                    h.get("retry-after").map(String::as_str),
                    Some("2"),
                    "{s} {v}"
                );
            }
            let per: Per = match v["offsets"].as_array() {
                Some(o) => o
                    .iter()
                    .enumerate()
                    .map(|(i, o)| {
                        let at = o["offset"]
                            .as_i64()
                            .map(|off| (o["partition"].as_i64().unwrap() as i32, off));
                        (
                            first + i as u64,
                            at,
                            o["error"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect(),
                None => (0..n as u64)
                    .map(|i| (first + i, None, v.to_string()))
                    .collect(),
            };
            (s, per, v)
        }
    };
    for _ in 0..5 {
        let (s, per, v) = send(8).await;
        assert_eq!(s, 200, "{v}");
        answers.push((s, per));
    }
    let down = services(&["down", "kafka"], &envs);
    assert!(down.status.success());
    // Broker down: 5 records fit the buffer of 10 but are not acknowledged within
    // ack_timeout (503); then requests of 20 fill it and find it full (429).
    let (s, per, v) = send(5).await;
    assert_eq!(s, 503, "{v}");
    assert!(
        per.iter()
            .all(|(_, at, e)| at.is_none() && e.contains("ack_timeout")),
        "{v}"
    );
    let mut statuses = vec![s];
    answers.push((s, per));
    for _ in 0..4 {
        let (s, per, v) = send(20).await;
        assert_eq!(s, 429, "{v}");
        assert_eq!(v["error_code"], 42901, "{v}");
        statuses.push(s);
        answers.push((s, per));
    }
    up(&envs);
    gw.wait_ready(Duration::from_secs(30));
    let mut ok_after = 0;
    for _ in 0..40 {
        let (s, per, _) = send(8).await;
        if s == 200 {
            ok_after += 1;
        }
        answers.push((s, per));
        if ok_after >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        ok_after >= 3,
        "no 200 after the broker returned; log:\n{}",
        gw.proc.log_text()
    );

    let acked: Vec<(u64, (i32, i64))> = answers
        .iter()
        .flat_map(|(_, per)| per.iter().filter_map(|(s, at, _)| at.map(|at| (*s, at))))
        .collect();
    let busy: Vec<u64> = answers
        .iter()
        .flat_map(|(_, per)| {
            per.iter()
                .filter(|(_, at, e)| at.is_none() && e.contains("buffer is full"))
                .map(|(s, _, _)| *s)
        })
        .collect();
    let timed_out = answers
        .iter()
        .flat_map(|(_, per)| per.iter().filter(|(_, _, e)| e.contains("ack_timeout")))
        .count();
    assert!(!busy.is_empty());
    let want = acked.len() + timed_out;
    let recs = consume(broker, &topic, want, Duration::from_secs(30));
    let at = by_offset(&recs);
    for (seq, (p, o)) in &acked {
        let r = at
            .get(&(*p, *o))
            .unwrap_or_else(|| panic!("record {seq} answered at {p}/{o} is not in Kafka"));
        assert_eq!(r.json()["seq"], *seq);
    }
    let in_kafka: std::collections::BTreeSet<u64> = recs
        .iter()
        .map(|r| r.json()["seq"].as_u64().unwrap())
        .collect();
    for b in &busy {
        assert!(
            !in_kafka.contains(b),
            "record {b} was answered 'buffer full' but is in Kafka"
        );
    }
    eprintln!(
        "sent {seq}; answered with an offset {}; timed out {timed_out}; refused as busy {}; in Kafka {} (statuses during the outage {statuses:?})",
        acked.len(),
        busy.len(),
        in_kafka.len()
    );
    // At-least-once: the timed-out records landed once the broker was back.
    assert_eq!(in_kafka.len(), want, "answered + timed out = in Kafka");
    assert_eq!(recs.len(), in_kafka.len(), "no duplicates");
}

/// HTTPS with a self-signed certificate (curl -k).
#[tokio::test(flavor = "multi_thread")]
async fn serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("openssl CLI not available; skipping");
        return;
    }
    let b = brokers();
    let gw = start(
        &b,
        &format!(
            "  tls: {{cert_file: '{}', key_file: '{}'}}\n",
            cert.display(),
            key.display()
        ),
        "",
        "",
    );
    let topic = unique("https");
    let url = format!("{}/topics/{topic}", gw.http.replace("http://", "https://"));
    let out = Command::new("curl")
        .args([
            "-sk",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/vnd.kafka.json.v2+json",
            "--data",
            r#"{"records":[{"value":{"tls":true}}]}"#,
            &url,
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}; log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            gw.proc.log_text()
        )
    });
    assert_eq!(v["offsets"][0]["offset"], 0, "{v}");
    let plain = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            &url.replace("https://", "http://"),
        ])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
}

/// SIGTERM while a request is in flight: the server stops accepting connections, the request
/// still gets its records acknowledged and answered 200, and kgate exits cleanly.
#[test]
fn shutdown_lets_in_flight_requests_finish() {
    use std::io::{Read, Write};
    let b = brokers();
    let gw = start(&b, "", "", "");
    let mut gw = gw;
    let topic = unique("drain");
    let addr = gw.http.trim_start_matches("http://").to_string();
    let body = format!(
        r#"{{"records":[{}]}}"#,
        (0..500)
            .map(|i| format!(r#"{{"value":{{"n":{i}}}}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST /topics/{topic} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/vnd.kafka.json.v2+json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    s.write_all(first.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    gw.proc.signal("-TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "still accepting connections after SIGTERM"
    );
    s.write_all(rest.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer}\nlog:\n{}",
        gw.proc.log_text()
    );
    let json = answer.split_once("\r\n\r\n").unwrap().1;
    let v: Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["offsets"][499]["offset"], 499, "{v}");
    let status = gw.proc.wait(Duration::from_secs(30));
    assert!(status.success(), "{}", gw.proc.log_text());
    let s = summary(&gw.proc.log_text());
    assert_eq!((s["delivered"], s["undelivered"]), (500, 0));
    assert_eq!(consume(&b, &topic, 500, Duration::from_secs(20)).len(), 500);
}

/// A REST Proxy record over the topic's 1 MiB `max.message.bytes` (within `http.max_body`)
/// answers 413 with where its first bytes went in the DLQ (partition and offset), not a 500;
/// the record beside it is written; the DLQ record holds the first 64 KiB with the size and
/// sha256 of the whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_rest_record_too_large_for_kafka_answers_413_with_its_dlq_place() {
    use base64::Engine;
    use sha2::Digest;
    let b = brokers();
    let gw = start(&b, "", "", "");
    let topic = unique("bigrest");
    let url = format!("{}/topics/{topic}", gw.http);
    let c = reqwest::Client::new();
    // Random bytes: compression cannot bring them under the limit.
    let big: Vec<u8> = {
        use rand::RngCore;
        let mut v = vec![0u8; 1_500_000];
        rand::rng().fill_bytes(&mut v);
        v
    };
    let b64 = |x: &[u8]| base64::engine::general_purpose::STANDARD.encode(x);
    let body = json!({"records": [
        {"key": b64(b"big"), "value": b64(&big)},
        {"key": b64(b"small"), "value": b64(b"fits")},
    ]});
    let (s, _, v) = post(
        &c,
        &url,
        "application/vnd.kafka.binary.v2+json",
        None,
        body.to_string(),
    )
    .await;
    assert_eq!(s, 413, "{v}; log:\n{}", gw.proc.log_text());
    assert_eq!(v["error_code"], 41301, "{v}");
    let message = v["message"].as_str().unwrap();
    let dlq = gw.dlq_topic();
    assert!(
        message.starts_with("1 of 2 record(s) not written") && message.contains(&dlq),
        "{message}"
    );
    let first = &v["offsets"][0];
    assert_eq!(first["error_code"], 41301, "{v}");
    assert!(first["partition"].is_null(), "{v}");
    let error = first["error"].as_str().unwrap();
    assert!(
        error.starts_with("not written: too large for Kafka")
            && error.contains(&format!("DLQ topic {dlq} (partition 0, offset 0)")),
        "{error}"
    );
    assert!(v["offsets"][1]["error"].is_null(), "{v}");
    assert!(v["offsets"][1]["offset"].is_i64(), "{v}");

    let recs = consume(&b, &topic, 1, Duration::from_secs(20));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].value, b"fits");
    let dead = consume(&b, &dlq, 1, Duration::from_secs(20));
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.headers["error_type"], "too_large");
    assert_eq!(d.value, big[..64 * 1024]);
    assert_eq!(d.key_str(), "big");
    assert_eq!(d.headers["original_size"], "1500000");
    let sha: String = sha2::Sha256::digest(&big)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect();
    assert_eq!(d.headers["original_sha256"], sha);
}

/// Slow clients cannot starve the others: with 60 connections trickling their headers against
/// a cap of 20, a new request is answered at once (503 with Retry-After, not left hanging),
/// `/readyz` on the metrics listener answers, and once the header timeout has closed the slow
/// ones, requests are served again.
#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_capped_and_timed_out() {
    use std::io::Write as _;
    let b = brokers();
    let gw = start(&b, "  max_connections: 20\n  header_timeout: 6s\n", "", "");
    let addr = gw.http.trim_start_matches("http://").to_string();
    // The readiness probe's own connections must be gone before the 60 arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut slow = Vec::new();
    for _ in 0..60 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"POST /topics/t HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        slow.push(s);
    }
    // The server accepts them all: 20 are served (and wait for their headers), the other 40
    // are answered 503 and closed.
    for s in &slow {
        s.set_nonblocking(true).unwrap();
    }
    let mut answered = vec![false; slow.len()];
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered.iter().filter(|a| **a).count() < 40 && Instant::now() < deadline {
        for (s, done) in slow.iter_mut().zip(answered.iter_mut()) {
            use std::io::Read as _;
            let mut b = [0u8; 64];
            if !*done && matches!(s.read(&mut b), Ok(n) if n > 0) {
                assert!(
                    b.starts_with(b"HTTP/1.1 503"),
                    "{}",
                    String::from_utf8_lossy(&b)
                );
                *done = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = answered.iter().filter(|a| **a).count();
    assert_eq!(
        refused, 40,
        "connections past the cap of 20 are answered 503"
    );
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let r = c
        .post(format!("{}/topics/t", gw.http))
        .header("Content-Type", "application/vnd.kafka.json.v2+json")
        .body(r#"{"records":[{"value":1}]}"#)
        .send()
        .await
        .expect("answered while 20 slow clients hold the cap");
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        r.headers().get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let started = Instant::now();
    assert_eq!(
        http_get(&gw.metrics, "/readyz").map(|r| r.0),
        Some(200),
        "the metrics listener has its own room"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The header timeout closes the slow connections, and the room is back.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let topic = unique("http.slow");
    let (status, _, v) = post(
        &c,
        &format!("{}/topics/{topic}", gw.http),
        "application/vnd.kafka.json.v2+json",
        None,
        r#"{"records":[{"value":1}]}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    drop(slow);
    let mut gw = gw;
    stop(&mut gw.proc, 20);
}

/// An authorised client may not trickle a body forever: past `http.body_timeout` the request is
/// answered 408 and nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_does_not_arrive_in_time_is_answered_408() {
    use std::io::{Read as _, Write as _};
    let b = brokers();
    let gw = start(&b, "  body_timeout: 1s\n", "", "");
    let addr = gw.http.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /topics/slow.body HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.kafka.json.v2+json\r\nContent-Length: 1000\r\n\r\n{\"records\":[").unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut gw = gw;
    stop(&mut gw.proc, 20);
}

/// Event data cannot choose any topic: a token that lists `topics` feeds `/ingest` only within
/// them (a record routed elsewhere goes to the DLQ as `topic_not_allowed` and is not written),
/// a templated topic never reaches the DLQ topic or `_schemas` through `*`, and the REST route
/// refuses those reserved topics to a `*` token.
#[tokio::test(flavor = "multi_thread")]
async fn topics_outside_the_allow_lists_are_not_written() {
    let b = brokers();
    let p = unique("allow");
    let http = format!(
        "  auth:\n    - {{name: full, token: '{TOKEN}', topics: ['*'], pipelines: ['*']}}\n    - {{name: shop, token: '{LIMITED}', topics: ['{p}.a.*'], pipelines: [routed]}}\n"
    );
    let pipes = "  - name: routed\n    source: {http: {}}\n    topic: '${dest}'\n    topics_allowed: ['*']\n";
    let gw = start(&b, &http, "", pipes);
    let dlq = gw.dlq_topic();
    let url = format!("{}/ingest/routed", gw.http);
    let c = reqwest::Client::new();
    let (a, bx) = (format!("{p}.a.x"), format!("{p}.b.x"));

    let body = format!(r#"[{{"dest":"{a}"}},{{"dest":"{bx}"}}]"#);
    let (s, _, v) = post(&c, &url, "application/json", Some(LIMITED), body).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["results"][0]["status"], "ok", "{v}");
    assert_eq!(v["results"][0]["topic"], a.as_str());
    let r = &v["results"][1];
    assert_eq!(r["status"], "rejected", "{v}");
    assert_eq!(r["error_type"], "topic_not_allowed", "{v}");
    assert!(r["error"].as_str().unwrap().contains("token `shop`"), "{v}");
    assert_eq!(r["dlq_topic"], dlq.as_str());

    // The full token's `*` does not reach the DLQ topic nor `_schemas`.
    let body = format!(r#"[{{"dest":"{dlq}"}},{{"dest":"_schemas"}},{{"dest":"{bx}"}}]"#);
    let (s, _, v) = post(&c, &url, "application/json", Some(TOKEN), body).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["results"][0]["error_type"], "topic_not_allowed", "{v}");
    assert_eq!(v["results"][1]["error_type"], "topic_not_allowed", "{v}");
    assert_eq!(v["results"][2]["status"], "ok", "{v}");

    let dl = consume(&b, &dlq, 3, Duration::from_secs(20));
    assert_eq!(dl.len(), 3);
    assert!(dl
        .iter()
        .all(|r| r.headers["error_type"] == "topic_not_allowed"));
    assert_eq!(dl[0].json()["dest"], bx.as_str());
    assert_eq!(dl[1].json()["dest"], dlq.as_str());
    assert_eq!(consume(&b, &a, 1, Duration::from_secs(20)).len(), 1);
    // b.x holds only the full token's record.
    let got = consume(&b, &bx, 2, Duration::from_secs(5));
    assert_eq!(got.len(), 1);

    // The REST route: the DLQ topic and `_schemas` are refused to a `*` token.
    let json_v2 = "application/vnd.kafka.json.v2+json";
    let ok_body = r#"{"records":[{"value":1}]}"#;
    for (topic, words) in [(dlq.as_str(), "the DLQ topic"), ("_schemas", "reserved")] {
        let t = format!("{}/topics/{topic}", gw.http);
        let (s, _, v) = post(&c, &t, json_v2, Some(TOKEN), ok_body).await;
        assert_eq!((s, v["error_code"].as_u64()), (403, Some(403)), "{v}");
        assert!(v["message"].as_str().unwrap().contains(words), "{v}");
    }
    assert_eq!(consume(&b, &dlq, 4, Duration::from_secs(3)).len(), 3);
}

/// One request may not carry more than `http.max_records` records: 413 before any is written.
#[tokio::test(flavor = "multi_thread")]
async fn requests_over_max_records_are_answered_413() {
    let b = brokers();
    let topic = unique("http.cap");
    let gw = start(
        &b,
        "  max_records: 3\n",
        "",
        &format!("  - {{name: capped, source: {{http: {{}}}}, topic: {topic}}}\n"),
    );
    let c = reqwest::Client::new();
    let (status, _, v) = post(
        &c,
        &format!("{}/topics/{topic}", gw.http),
        "application/vnd.kafka.json.v2+json",
        None,
        r#"{"records":[{"value":1},{"value":2},{"value":3},{"value":4}]}"#,
    )
    .await;
    assert_eq!(status, 413, "{v}");
    assert!(v.to_string().contains("http.max_records"), "{v}");
    let (status, _, v) = post(
        &c,
        &format!("{}/ingest/capped", gw.http),
        "application/json",
        None,
        "[{},{},{},{}]",
    )
    .await;
    assert_eq!(status, 413, "{v}");
    let (status, _, v) = post(
        &c,
        &format!("{}/ingest/capped", gw.http),
        "application/json",
        None,
        "[{},{},{}]",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let mut gw = gw;
    stop(&mut gw.proc, 20);
}

/// The slowloris of the security review: 1,200 connections trickling their headers against a
/// kgate limited to 1,024 open files. kgate keeps its connections below the limit (with room
/// for Kafka and the metrics listener), so `/readyz` answers and a new request is answered
/// (503 with Retry-After) instead of the process running out of files.
#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_does_not_exhaust_open_files() {
    use std::io::Write as _;
    // This test opens 1,200 sockets itself.
    raise_open_file_limit(4096);
    let b = brokers();
    let dir = tempfile::tempdir().unwrap();
    let (hport, mport) = (free_port(), free_port());
    let cfg = format!(
        "kafka:\n  brokers: ['{b}']\nmetrics: {{listen: '127.0.0.1:{mport}'}}\nhttp:\n  listen: '127.0.0.1:{hport}'\n  header_timeout: 60s\npipelines: []\n"
    );
    let path = write_config(dir.path(), &cfg);
    let log = dir.path().join("stderr.log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 1024 && exec '{}' run --config '{}'",
            kgate_bin(),
            path.display()
        ))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let metrics = format!("127.0.0.1:{mport}");
    wait_until(
        Duration::from_secs(30),
        || http_get(&metrics, "/readyz").map(|r| r.0) == Some(200),
        "kgate ready",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut slow = Vec::new();
    for _ in 0..1200 {
        match std::net::TcpStream::connect(("127.0.0.1", hport)) {
            Ok(mut s) => {
                let _ = s.write_all(b"POST /topics/t HTTP/1.1\r\nHost: x\r\n");
                slow.push(s);
            }
            Err(e) => panic!("connect {}: {e}", slow.len()),
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    assert_eq!(
        http_get(&metrics, "/readyz").map(|r| r.0),
        Some(200),
        "log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let readyz = started.elapsed();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    let r = c
        .post(format!("http://127.0.0.1:{hport}/topics/t"))
        .header("Content-Type", "application/vnd.kafka.json.v2+json")
        .body(r#"{"records":[{"value":1}]}"#)
        .send()
        .await
        .expect("a new request is answered during the flood");
    assert_eq!(r.status().as_u16(), 503);
    eprintln!(
        "during the flood: /readyz in {} ms, a new request answered 503 in {} ms",
        readyz.as_millis(),
        started.elapsed().as_millis()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("Too many open files"), "{text}");
    drop(slow);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Raises this process's soft open-file limit to at least `n` (up to the hard limit).
fn raise_open_file_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < n {
            lim.rlim_cur = n.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// `metrics.tls` serves `/metrics` and the health endpoints over HTTPS, and not over plain HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::generate(dir.path(), "metrics");
    let b = brokers();
    let mport = free_port();
    let cfg = format!(
        "kafka:\n  brokers: ['{b}']\nmetrics:\n  listen: '127.0.0.1:{mport}'\n  tls: {{cert_file: '{}', key_file: '{}'}}\npipelines:\n  - {{name: f, source: {{websocket: {{urls: ['ws://127.0.0.1:1/ws']}}}}, topic: t}}\n",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let mut gw = spawn_run(dir.path(), &cfg);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let c = reqwest::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{mport}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = c.get(&url).send().await {
            if r.status().as_u16() == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no https /readyz; log:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = c
        .get(format!("https://127.0.0.1:{mport}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("kgate_producer_inflight_records"), "{text}");
    assert_ne!(
        http_get(&format!("127.0.0.1:{mport}"), "/readyz").map(|r| r.0),
        Some(200),
        "plain HTTP is not served"
    );
    stop(&mut gw, 20);
}
