//! `validate:` on a pipeline fed by the `kafka` source, against the real local Kafka (and the
//! registry for Avro subjects): 20,000 records with 1 % invalid split exactly into the clean
//! topic and the pipeline's own DLQ, each rejected one with its reason and where it was read;
//! an Avro subject as the schema; a draft-07 schema; config errors. Run through `scripts/test`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use common::*;

fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .unwrap();
    for x in r {
        x.unwrap();
    }
}

/// Produces `(key, value)` records to `topic` and waits until Kafka has them all.
fn produce(topic: &str, records: &[(String, String)]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for (k, v) in records {
        loop {
            match p.send(BaseRecord::to(topic).key(k).payload(v)) {
                Ok(()) => break,
                Err((e, _)) => {
                    assert!(
                        matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "{e}"
                    );
                    p.poll(Duration::from_millis(50));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// The pipeline config: a `kafka` source on `raw`, `validate` as given, output to `clean` keyed
/// by the input's key, its own DLQ `dlq`; the root DLQ is `root_dlq`.
#[allow(clippy::too_many_arguments)]
fn config(
    metrics_port: u16,
    raw: &str,
    group: &str,
    validate: &str,
    clean: &str,
    dlq: &str,
    root_dlq: &str,
    extra: &str,
) -> String {
    format!(
        "kafka:\n  brokers: ['{b}']\nmetrics:\n  listen: '127.0.0.1:{metrics_port}'\ndlq: {{topic: '{root_dlq}'}}\nshutdown_timeout: 20s\n{extra}pipelines:\n  - name: validator\n    source: {{kafka: {{topics: [{raw}], group: {group}, start: earliest, commit_interval: 1s}}}}\n    validate: {validate}\n    topic: {clean}\n    key: '${{@kafka.key}}'\n    dlq: {{topic: {dlq}}}\n",
        b = brokers()
    )
}

fn valid(seq: u64) -> String {
    format!(
        r#"{{"feed":"iot","source":"gen","seq":{seq},"timestamp":"2026-12-07T05:00:00.000Z","device_id":"sensor-{:04}","patient_id":"patient-1003","heart_rate":{},"spo2":97.5,"temperature":36.{},"battery":0.9}}"#,
        seq % 100 + 1,
        60 + seq % 40,
        seq % 10
    )
}

/// The four ways a record is invalid, by `seq`: its value, the DLQ's `error_type` and words its
/// `error_message` must hold.
fn invalid(seq: u64) -> (String, &'static str, &'static str) {
    match (seq / 100) % 4 {
        0 => (
            format!(r#"{{"seq":{seq}, oops"#),
            "invalid_json",
            "not valid JSON",
        ),
        1 => (
            valid(seq).replace(r#""device_id":"#, r#""device":"#),
            "validation_failed",
            r#"/: required: "device_id" is a required property"#,
        ),
        2 => (
            valid(seq).replace(r#""temperature":36."#, r#""temperature":52."#),
            "validation_failed",
            "/temperature: maximum: 52.",
        ),
        _ => {
            let hr = 60 + seq % 40;
            (
                valid(seq).replace(
                    &format!(r#""heart_rate":{hr}"#),
                    &format!(r#""heart_rate":"{hr}""#),
                ),
                "validation_failed",
                r#"/heart_rate: type: ""#,
            )
        }
    }
}

fn is_invalid(seq: u64) -> bool {
    seq % 100 == 37
}

/// 20,000 records (1 % invalid: not JSON, a required field missing, a value out of range, a
/// wrong type) in a 3-partition raw topic through a validating pipeline: clean + DLQ hold
/// exactly the raw records by key (none missing, none twice); each invalid one is in the
/// pipeline's DLQ with its reason, the raw topic, partition and offset it was read from, the
/// group and its key; the root DLQ gets nothing.
#[test]
fn twenty_thousand_records_split_exactly_into_clean_and_dlq() {
    const TOTAL: u64 = 20_000;
    let raw = unique("validate.raw");
    let clean = unique("validate.clean");
    let dlq = unique("validate.dlq");
    let root_dlq = unique("validate.rootdlq");
    let group = unique("validate.group");
    create_topic(&raw, 3);
    let mut records = Vec::with_capacity(TOTAL as usize);
    let mut expect: BTreeMap<String, (String, &str, &str)> = BTreeMap::new();
    for seq in 0..TOTAL {
        let key = format!("k{seq}");
        if is_invalid(seq) {
            let (v, ty, words) = invalid(seq);
            records.push((key.clone(), v.clone()));
            expect.insert(key, (v, ty, words));
        } else {
            records.push((key, valid(seq)));
        }
    }
    let n_invalid = expect.len();
    assert_eq!(n_invalid, 200);
    produce(&raw, &records);
    // Where each record landed in the raw topic.
    let read = consume(&brokers(), &raw, TOTAL as usize, Duration::from_secs(120));
    assert_eq!(read.len(), TOTAL as usize);
    let at: BTreeMap<String, (i32, i64)> = read
        .iter()
        .map(|r| (r.key_str(), (r.partition, r.offset)))
        .collect();
    assert_eq!(at.len(), TOTAL as usize);
    let by_key: BTreeMap<&str, &str> = records
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    let dir = tempfile::tempdir().unwrap();
    // The schema path is relative to the config file's directory.
    std::fs::create_dir(dir.path().join("schemas")).unwrap();
    std::fs::copy(
        repo().join("examples/schemas/telemetry.schema.json"),
        dir.path().join("schemas/telemetry.schema.json"),
    )
    .unwrap();
    let metrics_port = free_port();
    let cfg = config(
        metrics_port,
        &raw,
        &group,
        "{json_schema: schemas/telemetry.schema.json}",
        &clean,
        &dlq,
        &root_dlq,
        "",
    );
    let mut gw = spawn_run(dir.path(), &cfg);
    let n_clean = TOTAL as usize - n_invalid;
    let got = consume(&brokers(), &clean, n_clean, Duration::from_secs(180));
    assert!(
        got.len() >= n_clean,
        "{} of {n_clean} clean records; log:\n{}",
        got.len(),
        gw.log_text()
    );
    let got = consume(&brokers(), &dlq, n_invalid, Duration::from_secs(60));
    assert!(got.len() >= n_invalid, "{} DLQ records", got.len());
    let addr = format!("127.0.0.1:{metrics_port}");
    let (_, metrics) = http_get(&addr, "/metrics").expect("/metrics");
    let summary = stop(&mut gw, 40);

    let clean_recs = consume(&brokers(), &clean, n_clean, Duration::from_secs(30));
    let dlq_recs = consume(&brokers(), &dlq, n_invalid, Duration::from_secs(30));
    // clean + dlq == raw, by key: none missing, none twice.
    let mut seen = BTreeSet::new();
    for r in clean_recs.iter().chain(&dlq_recs) {
        assert!(seen.insert(r.key_str()), "{} twice", r.key_str());
    }
    assert_eq!(seen.len(), TOTAL as usize);
    assert_eq!(clean_recs.len() + dlq_recs.len(), TOTAL as usize);
    assert_eq!(seen, at.keys().cloned().collect::<BTreeSet<_>>());
    // The clean topic has the valid ones, written as received.
    for r in &clean_recs {
        let k = r.key_str();
        assert!(
            !expect.contains_key(&k),
            "{k} is invalid but reached the clean topic"
        );
        assert_eq!(r.value, by_key[k.as_str()].as_bytes(), "{k}");
    }
    // The DLQ has exactly the invalid ones, each with its reason and where it was read.
    assert_eq!(
        dlq_recs.iter().map(Rec::key_str).collect::<BTreeSet<_>>(),
        expect.keys().cloned().collect::<BTreeSet<_>>()
    );
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for r in &dlq_recs {
        let k = r.key_str();
        let (value, ty, words) = &expect[&k];
        let h = |name: &str| {
            r.headers
                .get(name)
                .unwrap_or_else(|| panic!("{k}: no `{name}` header in {:?}", r.headers))
                .as_str()
        };
        assert_eq!(r.value, value.as_bytes(), "{k}: the original bytes");
        assert_eq!(h("error_type"), *ty, "{k}");
        assert!(
            h("error_message").contains(words),
            "{k}: `{}` lacks `{words}`",
            h("error_message")
        );
        assert_eq!(h("source_topic"), raw, "{k}");
        let (p, o) = at[&k];
        assert_eq!(h("source_partition"), p.to_string(), "{k}");
        assert_eq!(h("source_offset"), o.to_string(), "{k}");
        assert_eq!(h("consumer_group"), group, "{k}");
        assert_eq!(h("attempts"), "1", "{k}");
        assert_eq!(h("pipeline"), "validator", "{k}");
        assert!(h("failed_at").ends_with('Z'), "{k}");
        *by_type.entry(h("error_type").to_string()).or_default() += 1;
    }
    assert_eq!(by_type["invalid_json"], 50, "{by_type:?}");
    assert_eq!(by_type["validation_failed"], 150, "{by_type:?}");
    // The root DLQ stays empty: the pipeline has its own.
    assert!(consume(&brokers(), &root_dlq, 0, Duration::from_secs(3)).is_empty());
    assert_eq!(
        metric(
            &metrics,
            "kgate_events_rejected_total",
            &["pipeline=\"validator\"", "error_type=\"validation_failed\""]
        ),
        150.0
    );
    assert_eq!(
        metric(
            &metrics,
            "kafka_dlq_published_total",
            &[&format!("dlq_topic=\"{dlq}\"")]
        ),
        200.0,
        "{metrics}"
    );
    assert_eq!(summary["delivered"], n_clean as u64, "{summary:?}");
    assert_eq!(summary["dead-lettered"], n_invalid as u64, "{summary:?}");
}

/// Runs a validating pipeline over `records` (one partition) until `n_clean` and `n_dlq` are
/// out; returns both topics' records.
fn run_small(
    validate: &str,
    extra: &str,
    files: &[(&str, &str)],
    records: &[(String, String)],
    n_clean: usize,
    n_dlq: usize,
) -> (Vec<Rec>, Vec<Rec>) {
    let raw = unique("validate.small.raw");
    let clean = unique("validate.small.clean");
    let dlq = unique("validate.small.dlq");
    create_topic(&raw, 1);
    produce(&raw, records);
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let cfg = config(
        free_port(),
        &raw,
        &unique("validate.small.group"),
        validate,
        &clean,
        &dlq,
        &unique("validate.small.rootdlq"),
        extra,
    );
    let mut gw = spawn_run(dir.path(), &cfg);
    let c = consume(&brokers(), &clean, n_clean, Duration::from_secs(60));
    let d = consume(&brokers(), &dlq, n_dlq, Duration::from_secs(30));
    let summary = stop(&mut gw, 30);
    assert_eq!(c.len(), n_clean, "log:\n{}", gw.log_text());
    assert_eq!(d.len(), n_dlq, "log:\n{}", gw.log_text());
    assert_eq!(summary["delivered"], n_clean as u64, "{summary:?}");
    assert_eq!(summary["dead-lettered"], n_dlq as u64, "{summary:?}");
    (c, d)
}

/// `kgate schemas register SUBJECT --file F` against the test registry.
fn register(subject: &str, schema: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.avsc");
    std::fs::write(&f, schema).unwrap();
    let out = Command::new(kgate_bin())
        .args(["schemas", "register", subject, "--file"])
        .arg(&f)
        .args(["--registry", &registry()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "register {subject}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `validate: {avro: SUBJECT}`: records must fit the subject's latest Avro schema; the DLQ
/// message names the subject, the JSON path and what was expected there.
#[test]
fn an_avro_subject_validates_plain_json() {
    let subject = unique("validate-avro").replace('.', "-");
    register(
        &subject,
        r#"{"type":"record","name":"Telemetry","namespace":"io.kgate.test","fields":[
            {"name":"device_id","type":"string"},
            {"name":"temperature","type":"double"},
            {"name":"humidity","type":["null","double"],"default":null}]}"#,
    );
    let mut records = Vec::new();
    for i in 0..30 {
        records.push((
            format!("ok{i}"),
            format!(r#"{{"device_id":"d{i}","temperature":{i}.5}}"#),
        ));
    }
    let bad = [
        ("bad-missing", r#"{"temperature":1.5}"#, "/device_id"),
        (
            "bad-type",
            r#"{"device_id":"d","temperature":"hot"}"#,
            "/temperature",
        ),
        (
            "bad-union",
            r#"{"device_id":"d","temperature":1,"humidity":"wet"}"#,
            "/humidity",
        ),
    ];
    for (k, v, _) in bad {
        records.push((k.to_string(), v.to_string()));
    }
    let extra = format!("schema_registry: {{url: '{}'}}\n", registry());
    let (clean, dlq) = run_small(
        &format!("{{avro: {subject}}}"),
        &extra,
        &[],
        &records,
        30,
        bad.len(),
    );
    assert!(clean.iter().all(|r| r.key_str().starts_with("ok")));
    // Output stays JSON: validation does not re-encode.
    assert_eq!(clean[0].value, records[0].1.as_bytes());
    for (k, v, path) in bad {
        let r = dlq
            .iter()
            .find(|r| r.key_str() == k)
            .unwrap_or_else(|| panic!("{k} not in the DLQ"));
        assert_eq!(r.value, v.as_bytes());
        assert_eq!(r.headers["error_type"], "validation_failed");
        let m = &r.headers["error_message"];
        assert!(
            m.contains(&format!("(Avro subject {subject} version"))
                && m.contains(&format!("{path}: expected")),
            "{k}: {m}"
        );
    }
}

/// A draft-07 schema (picked by its `$schema`): its tuple form `items: [...]` is a rule there
/// (and a schema error under 2020-12).
#[test]
fn a_draft_07_schema_is_applied_as_draft_07() {
    let schema = r#"{"$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object", "required": ["id"],
        "properties": {"id": {"type": "string"},
            "pair": {"type": "array", "items": [{"type": "string"}, {"type": "number"}]}}}"#;
    let mut records = Vec::new();
    for i in 0..10 {
        records.push((
            format!("ok{i}"),
            format!(r#"{{"id":"a{i}","pair":["x",{i}]}}"#),
        ));
    }
    records.push(("bad-pair".into(), r#"{"id":"b","pair":[1,2]}"#.into()));
    records.push(("bad-id".into(), r#"{"pair":["x",1]}"#.into()));
    let (_, dlq) = run_small(
        "{json_schema: d7.json}",
        "",
        &[("d7.json", schema)],
        &records,
        10,
        2,
    );
    let msg = |k: &str| {
        dlq.iter()
            .find(|r| r.key_str() == k)
            .map(|r| r.headers["error_message"].clone())
            .unwrap_or_else(|| panic!("{k} not in the DLQ"))
    };
    assert!(
        msg("bad-pair").contains("/pair/0: type: 1 is not of type"),
        "{}",
        msg("bad-pair")
    );
    assert!(
        msg("bad-id").contains(r#"/: required: "id""#),
        "{}",
        msg("bad-id")
    );
}

/// `kgate check` reports each config error with its path and exits non-zero.
#[test]
fn config_errors_name_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.json"), r#"{"type": "objekt"}"#).unwrap();
    let src = "{kafka: {topics: [t.raw], group: g}}";
    let text = format!(
        "kafka: {{brokers: ['{b}']}}\npipelines:\n  - {{name: a, source: {src}, topic: a, validate: {{json_schema: missing.json}}}}\n  - {{name: b, source: {src}, topic: b, validate: {{json_schema: bad.json}}}}\n  - {{name: c, source: {src}, topic: c, validate: {{avro: telemetry-value}}}}\n  - {{name: d, source: {{websocket: {{urls: ['ws://127.0.0.1:1/ws']}}}}, topic: d, exactly_once: true}}\n",
        b = brokers()
    );
    let path = write_config(dir.path(), &text);
    let out = Command::new(kgate_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    for (path, words) in [
        ("pipelines[0].validate.json_schema", "missing.json"),
        (
            "pipelines[1].validate.json_schema",
            "not a valid JSON Schema",
        ),
        ("pipelines[2].validate.avro", "schema_registry"),
        ("pipelines[3].exactly_once", "`websocket`"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(path) && l.contains(words) && l.starts_with("FAIL")),
            "no FAIL line for {path} with `{words}`:\n{text}"
        );
    }
}

/// A pipeline's own DLQ (`KafkaSink::with_dlq`, as `kgate run` wires `dlq: {topic: …}`) takes
/// its rejections and the records the broker refuses (the delivery-callback path); the root
/// DLQ gets none of them; a rendered topic cannot reach it through `*`. Input read from Kafka
/// keeps its key and where it was read.
#[tokio::test(flavor = "multi_thread")]
async fn a_pipelines_own_dlq_takes_its_rejections_and_what_kafka_refuses() {
    use bytes::Bytes;
    use kgate::event::{Event, Fate, Origin};
    use kgate::sink::Sink;
    use std::sync::Arc;

    let topic = unique("own.out");
    let own = unique("own.dlq");
    let root = unique("own.rootdlq");
    let k = kgate::kafka::KafkaConfig {
        brokers: vec![brokers()],
        ..Default::default()
    };
    let metrics = kgate::metrics::Metrics::new(&Default::default());
    let sink = kgate::sink::KafkaSink::new(&k, &root, metrics).unwrap();
    let route: Arc<dyn Sink> = sink.with_dlq(&own);
    assert_eq!(route.dlq_topic(), own);
    let pipeline = |yaml: String| {
        let c = kgate::gateway::Config::from_yaml_str(&yaml, "t.yaml", &|_| None).unwrap();
        kgate::pipeline::Pipeline::new(&c.pipelines[0], route.clone()).unwrap()
    };
    let src = "{websocket: {urls: ['ws://127.0.0.1:1/ws']}}";
    let p = pipeline(format!(
        "pipelines:\n  - {{name: own, source: {src}, topic: {topic}, key: '${{id}}'}}\n"
    ));
    let any = pipeline(format!(
        "pipelines:\n  - {{name: any, source: {src}, topic: '${{t}}', topics_allowed: ['*']}}\n"
    ));
    let event = |raw: String| {
        Event::with_ack(
            Bytes::from(raw),
            Origin::now(Arc::from("own"), Arc::from("test")),
        )
    };
    // Read from Kafka (the source's values), and not JSON.
    let (mut consumed, consumed_rx) = event("{oops".into());
    for (k, v) in [
        ("kafka.topic", "telemetry.raw"),
        ("kafka.partition", "2"),
        ("kafka.offset", "41"),
        ("kafka.group", "g1"),
        ("kafka.key", "in-key"),
    ] {
        consumed.meta.insert(k, v);
    }
    p.handle(consumed).await;
    // Over the broker's 1 MiB (random text compresses to about 3/4): refused at delivery.
    let big = format!(r#"{{"id":"big","pad":"{}"}}"#, random_text(1_500_000));
    let (ev, big_rx) = event(big.clone());
    p.handle(ev).await;
    // A rendered topic naming the pipeline's DLQ: not through `*`.
    let (ev, reserved_rx) = event(format!(r#"{{"t":"{own}"}}"#));
    any.handle(ev).await;
    let (ev, good_rx) = event(r#"{"id":"good"}"#.into());
    p.handle(ev).await;

    let within = Duration::from_secs(30);
    let fate = |rx: tokio::sync::oneshot::Receiver<Fate>| async move {
        tokio::time::timeout(within, rx).await.unwrap().unwrap()
    };
    for (rx, want) in [
        (consumed_rx, "invalid_json"),
        (big_rx, "too_large"),
        (reserved_rx, "topic_not_allowed"),
    ] {
        match fate(rx).await {
            Fate::DeadLettered { error_type, .. } => assert_eq!(error_type, want),
            other => panic!("expected DeadLettered ({want}), got {other:?}"),
        }
    }
    assert!(matches!(fate(good_rx).await, Fate::Delivered { .. }));
    assert_eq!(route.drain(within).await, 0);

    let dead = consume(&brokers(), &own, 3, within);
    assert_eq!(dead.len(), 3, "{dead:?}");
    let by_type = |t: &str| {
        dead.iter()
            .find(|d| d.headers["error_type"] == t)
            .unwrap_or_else(|| panic!("no {t} in the pipeline's DLQ"))
    };
    let c = by_type("invalid_json");
    assert_eq!(c.value, b"{oops");
    assert_eq!(c.key_str(), "in-key");
    assert_eq!(c.headers["source_topic"], "telemetry.raw");
    assert_eq!(c.headers["source_partition"], "2");
    assert_eq!(c.headers["source_offset"], "41");
    assert_eq!(c.headers["consumer_group"], "g1");
    assert_eq!(c.headers["attempts"], "1");
    let b = by_type("too_large");
    assert_eq!(b.key_str(), "big", "other sources keep the record's key");
    assert_eq!(b.headers["source_topic"], topic);
    assert!(!b.headers.contains_key("source_offset"));
    assert!(b.headers.contains_key("failed_at"));
    by_type("topic_not_allowed");
    assert!(consume(&brokers(), &root, 0, Duration::from_secs(3)).is_empty());
    let recs = consume(&brokers(), &topic, 1, Duration::from_secs(10));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].key_str(), "good");
}
