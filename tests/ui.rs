//! `kgate ui` against the real broker and registry: every API endpoint (counted, not sampled),
//! the auth rules (401 without a session, 403 for writes in read-only mode, for a read-only
//! user and without the CSRF token), and the browser scenarios in headless Chromium
//! (tests/ui/ui.spec.mjs, Playwright with Debian's chromium).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const PASS: &str = "correct horse battery";
const TOKEN: &str = "ui-test-token-0123456789";
const READ_TOKEN: &str = "ui-read-token-0123456789";

const SCHEMA: &str = r#"{"type": "record", "name": "Reading", "namespace": "kgate.test", "fields": [
  {"name": "device", "type": "string"}, {"name": "temp", "type": "double"}, {"name": "seq", "type": "long"}]}"#;

/// A minimal HTTP client: method, URL, headers, JSON body → status and JSON answer.
fn call(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&Value>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(90)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let result = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        ("DELETE", _) => {
            let mut r = agent.delete(url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        (_, b) => {
            let mut r = agent.post(url).header("content-type", "application/json");
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.send(b.map(|b| b.to_string()).unwrap_or_default().as_bytes())
        }
    };
    let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn create_topic(name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for r in rt
        .block_on(admin.create_topics([&t], &AdminOptions::new()))
        .unwrap()
    {
        r.unwrap();
    }
}

/// `kgate ui hash-password` with the password on stdin.
fn hash(password: &str) -> String {
    let mut child = Command::new(kgate_bin())
        .args(["ui", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let h = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(h.starts_with("$argon2id$"), "{h}");
    h
}

/// Commits `offsets` (partition, offset) of `topic` for `group`.
fn commit(group: &str, topic: &str, offsets: &[(i32, i64)]) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for &(p, o) in offsets {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(o))
            .unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

/// One record with kgate's DLQ headers, meant for `source_topic`.
fn produce_dlq(dlq: &str, source_topic: &str, value: &[u8]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let h = OwnedHeaders::new()
        .insert(Header {
            key: "source_topic",
            value: Some(source_topic),
        })
        .insert(Header {
            key: "error_type",
            value: Some("produce_failed"),
        })
        .insert(Header {
            key: "error_message",
            value: Some("the topic was not there yet"),
        });
    p.send(
        BaseRecord::<str, [u8]>::to(dlq)
            .payload(value)
            .key("k-dlq")
            .headers(h),
    )
    .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
}

/// The data the tests look at, and two UIs on it: read-only and write mode.
struct Fixture {
    topic: String,
    subject: String,
    group: String,
    dlq: String,
    target: String,
    ro: String,
    rw: String,
    _procs: Vec<Proc>,
    _dir: tempfile::TempDir,
}

const RECORDS: i64 = 6;

fn spawn_ui(dir: &std::path::Path, name: &str, write: bool, hash: &str) -> (Proc, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "kafka: {{brokers: ['{}']}}\nschema_registry: {{url: '{}'}}\nui:\n  listen: '{listen}'\n  write: {write}\n  lag_sample_interval: 1s\n  users:\n    - {{name: writer, password_hash: '{hash}', role: write}}\n    - {{name: reader, password_hash: '{hash}'}}\n  tokens:\n    - {{name: ci, token: '{TOKEN}', role: write}}\n    - {{name: ro, token: '{READ_TOKEN}'}}\n",
            brokers(),
            registry()
        ),
    )
    .unwrap();
    let p = spawn_kgate(&["ui", "--config", config.to_str().unwrap()]);
    wait_until(
        Duration::from_secs(20),
        || TcpStream::connect(&listen).is_ok(),
        "kgate ui to listen",
    );
    (p, format!("http://{listen}"))
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("ui.readings");
    let subject = format!("{topic}-value");
    let dlq = unique("ui.dlq");
    let target = unique("ui.target");
    let group = unique("ui-group");
    create_topic(&topic, 2);
    create_topic(&dlq, 1);
    create_topic(&target, 1);
    let (status, _) = call(
        "POST",
        &format!("{}/subjects/{subject}/versions", registry()),
        &[],
        Some(&json!({ "schema": SCHEMA })),
    );
    assert_eq!(status, 200, "registering {subject}");
    let h = hash(PASS);
    let (ro_p, ro) = spawn_ui(dir.path(), "ro", false, &h);
    let (rw_p, rw) = spawn_ui(dir.path(), "rw", true, &h);
    // Avro records produced through kgate (the UI's produce endpoint), 3 per partition.
    let auth = bearer(TOKEN);
    for i in 0..RECORDS {
        let (status, body) = call(
            "POST",
            &format!("{rw}/api/topics/{topic}/messages"),
            &[("authorization", &auth)],
            Some(&json!({
                "key": format!("dev-{i}"),
                "value": {"device": format!("dev-{i}"), "temp": 20.5 + i as f64, "seq": i},
                "headers": {"site": if i % 2 == 0 { "north" } else { "south" }},
                "format": "avro",
                "subject": subject,
                "partition": i % 2,
            })),
        );
        assert_eq!(status, 200, "produce {i}: {body}");
    }
    // Lag: partition 0 committed at 1 (2 behind), partition 1 at its end.
    commit(&group, &topic, &[(0, 1), (1, RECORDS / 2)]);
    produce_dlq(&dlq, &target, br#"{"device": "dev-dlq", "temp": 1.5}"#);
    Fixture {
        topic,
        subject,
        group,
        dlq,
        target,
        ro,
        rw,
        _procs: vec![ro_p, rw_p],
        _dir: dir,
    }
}

/// Every read endpoint answers what the broker and the registry hold, counted.
#[test]
fn api_reads_topics_messages_groups_schemas_and_the_dlq() {
    let f = fixture();
    let auth = bearer(READ_TOKEN);
    let h = [("authorization", auth.as_str())];
    let get = |path: &str| call("GET", &format!("{}{path}", f.ro), &h, None);

    let (s, o) = get("/api/overview");
    assert_eq!(s, 200, "{o}");
    assert!(
        !o["cluster"]["brokers"].as_array().unwrap().is_empty(),
        "{o}"
    );
    assert!(o["cluster"]["topics"].as_u64().unwrap() >= 3, "{o}");
    assert!(o["groups"].as_u64().unwrap() >= 1, "{o}");
    assert!(o["registry"]["subjects"].as_u64().unwrap() >= 1, "{o}");
    assert!(
        o["pipelines"].is_null(),
        "no pipelines outside kgate run: {o}"
    );

    let (s, t) = get("/api/topics");
    assert_eq!(s, 200);
    let mine: Vec<&Value> = t["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["name"] == f.topic.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{t}");
    assert_eq!(mine[0]["partitions"], 2);
    assert_eq!(mine[0]["messages"], RECORDS);

    let (s, d) = get(&format!("/api/topics/{}", f.topic));
    assert_eq!(s, 200, "{d}");
    let parts = d["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(
        parts
            .iter()
            .map(|p| p["high"].as_i64().unwrap())
            .sum::<i64>(),
        RECORDS
    );
    assert!(d["configs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "retention.ms"));
    assert_eq!(get("/api/topics/no.such.topic.ui").0, 404);

    // Every record from the start, Avro decoded, with its headers.
    let msgs = |q: &str| {
        let (s, m) = get(&format!("/api/topics/{}/messages?{q}", f.topic));
        assert_eq!(s, 200, "{q}: {m}");
        m
    };
    let all = msgs("from=start&limit=500");
    let recs = all["records"].as_array().unwrap();
    assert_eq!(recs.len() as i64, RECORDS, "{all}");
    assert!(all["next"].is_null(), "{all}");
    let mut seqs: Vec<i64> = recs
        .iter()
        .map(|r| {
            assert_eq!(r["value_as"], "avro", "{r}");
            assert_eq!(r["value"]["device"], r["key"], "{r}");
            r["value"]["seq"].as_i64().unwrap()
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..RECORDS).collect::<Vec<_>>());
    // Filters: by key, value substring, header.
    let one = msgs("from=start&key=dev-3");
    assert_eq!(one["records"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["records"][0]["value"]["temp"], 23.5);
    assert_eq!(one["records"][0]["headers"]["site"], "south");
    let south = msgs("from=start&header=site%3Dsouth");
    assert_eq!(
        south["records"].as_array().unwrap().len() as i64,
        RECORDS / 2
    );
    assert_eq!(
        msgs("from=start&value=dev-5")["records"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Paging one partition two at a time: 2 + 1 records, then no next page.
    let p1 = msgs("partition=0&from=start&limit=2");
    assert_eq!(p1["records"].as_array().unwrap().len(), 2, "{p1}");
    let next = p1["next"].as_str().expect("a next page").to_string();
    let p2 = msgs(&format!("partition=0&cursor={next}&limit=2"));
    assert_eq!(p2["records"].as_array().unwrap().len(), 1, "{p2}");
    assert!(p2["next"].is_null(), "{p2}");
    // From an offset, from a time, from the end.
    assert_eq!(
        msgs("partition=1&offset=2")["records"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        msgs("timestamp=0")["records"].as_array().unwrap().len() as i64,
        RECORDS
    );
    let future = msgs("timestamp=99999999999999");
    assert_eq!(future["records"].as_array().unwrap().len(), 0, "{future}");
    let newest = msgs("limit=2");
    assert_eq!(newest["records"].as_array().unwrap().len(), 2, "{newest}");
    assert_eq!(
        get(&format!("/api/topics/{}/messages?partition=7", f.topic)).0,
        404
    );

    let (s, g) = get("/api/groups");
    assert_eq!(s, 200);
    assert!(g["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["group"] == f.group.as_str()));
    let (s, g) = get(&format!("/api/groups/{}", f.group));
    assert_eq!(s, 200, "{g}");
    assert_eq!(g["total_lag"], 2, "{g}");
    let lags: Vec<(i64, i64)> = g["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["partition"].as_i64().unwrap(), p["lag"].as_i64().unwrap()))
        .collect();
    assert!(lags.contains(&(0, 2)) && lags.contains(&(1, 0)), "{g}");

    // Lag over time: the look above took the first sample; the sampler (every 1 s here) adds
    // more while the group is watched, each the group's real lag: 2, all of it in the topic.
    let history = format!("/api/groups/{}/history", f.group);
    let (s, h) = get(&history);
    assert_eq!(s, 200, "{h}");
    assert!(!h["samples"].as_array().unwrap().is_empty(), "{h}");
    let mut h = Value::Null;
    wait_until(
        Duration::from_secs(30),
        || {
            h = get(&history).1;
            h["samples"].as_array().is_some_and(|s| s.len() >= 3)
        },
        "3 lag samples",
    );
    assert_eq!(h["interval_ms"], 1000, "{h}");
    let samples = h["samples"].as_array().unwrap();
    assert!(samples.len() <= h["max_samples"].as_u64().unwrap() as usize);
    for x in samples {
        assert_eq!(x["total_lag"], 2, "{h}");
        assert_eq!(x["topics"][&f.topic], 2, "{h}");
        assert_eq!(x["topics"].as_object().unwrap().len(), 1, "{h}");
    }
    let times: Vec<u64> = samples
        .iter()
        .map(|x| x["time_ms"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {times:?}"
    );
    let (s, _) = get("/api/groups/no-such-group-ever/history");
    assert_eq!(s, 404, "a group that does not exist has no history");

    let (s, sc) = get("/api/schemas");
    assert_eq!(s, 200);
    let mine: Vec<&Value> = sc["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["subject"] == f.subject.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{sc}");
    assert_eq!(mine[0]["versions"], json!([1]));
    let (s, v) = get(&format!("/api/schemas/{}/versions/latest", f.subject));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["schema"]["name"], "Reading");

    let (s, q) = get(&format!("/api/dlq?topic={}", f.dlq));
    assert_eq!(s, 200, "{q}");
    assert_eq!(q["summary"]["read"], 1, "{q}");
    assert_eq!(q["summary"]["by_error_type"]["produce_failed"], 1, "{q}");
    assert_eq!(q["summary"]["by_source_topic"][&f.target], 1, "{q}");
    assert_eq!(q["records"][0]["value"]["device"], "dev-dlq", "{q}");
    assert_eq!(get("/api/dlq?topic=no.such.dlq.ui").0, 404);
    // A page view reads only the newest `scan` records, and says how many older it left.
    produce_dlq(&f.dlq, &f.target, br#"{"device": "dev-2"}"#);
    produce_dlq(&f.dlq, &f.target, br#"{"device": "dev-3"}"#);
    let (s, q) = get(&format!("/api/dlq?topic={}&scan=1", f.dlq));
    assert_eq!(s, 200, "{q}");
    assert_eq!(q["summary"]["read"], 1, "{q}");
    assert_eq!(q["summary"]["older_unread"], 2, "{q}");
    assert_eq!(q["records"][0]["value"]["device"], "dev-3", "{q}");
    let (_, q) = get(&format!("/api/dlq?topic={}", f.dlq));
    assert_eq!(q["summary"]["read"], 3, "{q}");
    assert_eq!(q["summary"]["older_unread"], 0, "{q}");

    // A value over 64 KiB is shown by its first 64 KiB, with its size.
    let big = unique("ui.big");
    create_topic(&big, 1);
    let text = "x".repeat(100_000);
    let w = bearer(TOKEN);
    let (s, b) = call(
        "POST",
        &format!("{}/api/topics/{big}/messages", f.rw),
        &[("authorization", &w)],
        Some(&json!({ "value": text, "format": "text" })),
    );
    assert_eq!(s, 200, "{b}");
    let (s, m) = get(&format!("/api/topics/{big}/messages"));
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["records"][0]["value_truncated"], 100_000, "{m}");
    assert_eq!(m["records"][0]["value"].as_str().unwrap().len(), 64 * 1024);
}

/// 401 without a session or token; 403 for every write in read-only mode, for a read-only
/// user in write mode, and for a session without its CSRF token; the login sets an
/// `HttpOnly; SameSite=Strict` cookie.
#[test]
fn api_auth_read_only_mode_roles_and_csrf() {
    let f = fixture();
    for base in [&f.ro, &f.rw] {
        let (s, b) = call("GET", &format!("{base}/api/topics"), &[], None);
        assert_eq!(s, 401, "{b}");
        let (s, _) = call(
            "GET",
            &format!("{base}/api/topics"),
            &[("authorization", "Bearer wrong-token-0123456789")],
            None,
        );
        assert_eq!(s, 401);
        let (s, _) = call("GET", &format!("{base}/topics"), &[], None);
        assert_eq!(s, 303, "pages redirect to /login");
    }
    // Read-only mode: even the write token gets 403, and nothing is created.
    let new = unique("ui.ro-create");
    let w = bearer(TOKEN);
    let wh = [("authorization", w.as_str())];
    let writes = [
        ("POST", "/api/topics".to_string(), json!({ "name": new })),
        ("DELETE", format!("/api/topics/{}", f.topic), Value::Null),
        (
            "POST",
            format!("/api/topics/{}/messages", f.topic),
            json!({ "value": {"x": 1} }),
        ),
        ("POST", "/api/dlq/replay".into(), json!({ "topic": f.dlq })),
    ];
    for (m, path, body) in &writes {
        let (s, b) = call(m, &format!("{}{path}", f.ro), &wh, Some(body));
        assert_eq!(s, 403, "{m} {path}: {b}");
        assert!(b["error"].as_str().unwrap().contains("ui.write"), "{b}");
    }
    // Write mode, a read-only token: 403.
    let r = bearer(READ_TOKEN);
    let (s, b) = call(
        "POST",
        &format!("{}/api/topics", f.rw),
        &[("authorization", &r)],
        Some(&json!({ "name": new })),
    );
    assert_eq!(s, 403, "{b}");
    let (s, t) = call("GET", &format!("{}/api/topics", f.rw), &wh, None);
    assert_eq!(s, 200);
    assert!(
        !t.to_string().contains(&new),
        "a refused write created {new}"
    );

    // A session: the cookie's attributes, the CSRF token from the page, 403 without it.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut bad = agent
        .post(&format!("{}/login", f.rw))
        .send_form([("user", "writer"), ("password", "wrong"), ("next", "/")])
        .unwrap();
    assert_eq!(bad.status().as_u16(), 303);
    assert!(bad.headers().get("set-cookie").is_none());
    let _ = bad.body_mut().read_to_string();
    let resp = agent
        .post(&format!("{}/login", f.rw))
        .send_form([("user", "writer"), ("password", PASS), ("next", "/topics")])
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(resp.headers().get("location").unwrap(), "/topics");
    let cookie = resp
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let session = cookie.split(';').next().unwrap().to_string();
    let (s, page) = call(
        "GET",
        &format!("{}/topics", f.rw),
        &[("cookie", &session)],
        None,
    );
    assert_eq!(s, 200);
    let page = page.as_str().unwrap().to_string();
    assert!(
        page.contains("id=\"create-topic\""),
        "write controls in write mode"
    );
    assert!(!page.contains(PASS) && !page.contains(TOKEN) && !page.contains("argon2"));
    let csrf = page
        .split("name=\"csrf\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    assert_eq!(csrf.len(), 48, "{csrf}");
    let (s, b) = call(
        "POST",
        &format!("{}/api/topics", f.rw),
        &[("cookie", &session)],
        Some(&json!({ "name": new })),
    );
    assert_eq!(s, 403, "without X-CSRF-Token: {b}");
    let (s, b) = call(
        "POST",
        &format!("{}/api/topics", f.rw),
        &[("cookie", &session), ("x-csrf-token", &csrf)],
        Some(&json!({ "name": new, "partitions": 2, "retention": "1d" })),
    );
    assert_eq!(s, 201, "{b}");
    let (s, d) = call("GET", &format!("{}/api/topics/{new}", f.rw), &wh, None);
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["partitions"].as_array().unwrap().len(), 2);
    let retention = d["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "retention.ms")
        .unwrap()
        .clone();
    assert_eq!(retention["value"], "86400000", "{retention}");
    let (s, b) = call(
        "POST",
        &format!("{}/api/topics", f.rw),
        &[("cookie", &session), ("x-csrf-token", &csrf)],
        Some(&json!({ "name": new })),
    );
    assert_eq!(s, 409, "exists: {b}");
    let (s, b) = call(
        "POST",
        &format!("{}/api/topics/{new}/partitions", f.rw),
        &wh,
        Some(&json!({ "total": 3 })),
    );
    assert_eq!(s, 200, "{b}");
    let (_, d) = call("GET", &format!("{}/api/topics/{new}", f.rw), &wh, None);
    assert_eq!(d["partitions"].as_array().unwrap().len(), 3, "{d}");
    let (s, b) = call("DELETE", &format!("{}/api/topics/{new}", f.rw), &wh, None);
    assert_eq!(s, 200, "{b}");
    let (s, _) = call("GET", &format!("{}/api/topics/{new}", f.rw), &wh, None);
    assert_eq!(s, 404, "deleted");
    // Deleting the fixture's (inactive) group: gone from the list.
    let (s, b) = call(
        "DELETE",
        &format!("{}/api/groups/{}", f.rw, f.group),
        &wh,
        None,
    );
    assert_eq!(s, 200, "{b}");
    let (s, _) = call(
        "GET",
        &format!("{}/api/groups/{}", f.rw, f.group),
        &wh,
        None,
    );
    assert_eq!(s, 404, "deleted group");
    // A read-only user's page has no write controls even in write mode.
    let resp = agent
        .post(&format!("{}/login", f.rw))
        .send_form([("user", "reader"), ("password", PASS)])
        .unwrap();
    let reader = resp.headers().get("set-cookie").unwrap().to_str().unwrap();
    let reader = reader.split(';').next().unwrap().to_string();
    let (_, page) = call(
        "GET",
        &format!("{}/topics", f.rw),
        &[("cookie", &reader)],
        None,
    );
    assert!(!page.as_str().unwrap().contains("create-topic"));
}

/// A DLQ replay started over the API: a dry run sends nothing, the replay sends the one
/// record back to its source topic, where it arrives.
#[test]
fn api_replays_the_dlq_in_the_background() {
    let f = fixture();
    let w = bearer(TOKEN);
    let h = [("authorization", w.as_str())];
    let run = |body: Value| {
        let (s, j) = call("POST", &format!("{}/api/dlq/replay", f.rw), &h, Some(&body));
        assert_eq!(s, 202, "{j}");
        let id = j["id"].as_u64().unwrap();
        let mut j = j;
        wait_until(
            Duration::from_secs(90),
            || {
                j = call("GET", &format!("{}/api/dlq/replay/{id}", f.rw), &h, None).1;
                j["state"] != "running"
            },
            "the replay to finish",
        );
        assert_eq!(j["state"], "done", "{j}");
        // The progress of the last batch: the one record read.
        assert_eq!(j["progress"]["read"], 1, "{j}");
        j["result"]["replay"].clone()
    };
    let dry = run(json!({ "topic": f.dlq, "dry_run": true }));
    assert_eq!(dry["read"], 1, "{dry}");
    assert_eq!(dry["sent"], 1, "{dry}");
    assert_eq!(
        consume(&brokers(), &f.target, 1, Duration::from_secs(3)).len(),
        0
    );
    let done = run(json!({ "topic": f.dlq }));
    assert_eq!(done["sent"], 1, "{done}");
    assert_eq!(done["by_target"][&f.target], 1, "{done}");
    let got = consume(&brokers(), &f.target, 1, Duration::from_secs(30));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["device"], "dev-dlq");
    assert_eq!(
        call("GET", &format!("{}/api/dlq/replay/999", f.rw), &h, None).0,
        404
    );
}

/// The browser scenarios (tests/ui/ui.spec.mjs) in headless Chromium; screenshots of every
/// screen in target/ui-screenshots/.
#[test]
fn browser_scenarios_in_headless_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let dir = repo().join("tests/ui");
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: install it with `apt-get install -y chromium` (or set CHROMIUM=/path/to/chromium)"
    );
    assert!(
        dir.join("node_modules/playwright").is_dir(),
        "no Playwright in tests/ui/node_modules: run `cd tests/ui && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci`"
    );
    let f = fixture();
    // `kgate run` with a pipeline and the UI beside it.
    let run_topic = unique("ui.run-browser");
    let (_synth, url) = spawn_synth("trades", &["--rate", "0", "--count", "300"]);
    let ui_port = free_port();
    let run_dir = tempfile::tempdir().unwrap();
    let _gw = spawn_run(
        run_dir.path(),
        &format!(
            "kafka: {{brokers: ['{}']}}\nmetrics: {{listen: '127.0.0.1:{}'}}\nui: {{listen: '127.0.0.1:{ui_port}'}}\npipelines:\n  - name: trades\n    source: {{websocket: {{urls: ['{url}'], timeout: 1h}}}}\n    topic: {run_topic}\n    key: '${{exchange}}|${{symbol}}'\n",
            brokers(),
            free_port()
        ),
    );
    assert_eq!(
        consume(&brokers(), &run_topic, 300, Duration::from_secs(60)).len(),
        300
    );
    let shots: PathBuf = repo().join("target/ui-screenshots");
    let out = Command::new("node")
        .arg("ui.spec.mjs")
        .current_dir(&dir)
        .env("CHROMIUM", &chromium)
        .env("UI_RO", &f.ro)
        .env("UI_RW", &f.rw)
        .env("UI_USER", "writer")
        .env("UI_PASS", PASS)
        .env("UI_TOPIC", &f.topic)
        .env("UI_KEY", "dev-4")
        .env("UI_EXPECT", "\"temp\": 24.5")
        .env("UI_GROUP", &f.group)
        .env("UI_LAG", "2")
        .env("UI_DLQ", &f.dlq)
        .env("UI_NEW_TOPIC", unique("ui.created"))
        .env("UI_SUBJECT", &f.subject)
        .env("UI_SCREENSHOTS", &shots)
        .env("UI_RUN", format!("http://127.0.0.1:{ui_port}"))
        .env("UI_RUN_PUBLISHED", "300")
        .env("UI_RUN_TOPIC", &run_topic)
        .output()
        .expect("node (install Node.js 18 or later)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser scenarios failed:\n{stdout}\n{stderr}"
    );
    let passed = stdout.lines().filter(|l| l.starts_with("ok - ")).count();
    assert_eq!(passed, 10, "{stdout}");
    // The replayed record arrived in its source topic.
    let got = consume(&brokers(), &f.target, 1, Duration::from_secs(30));
    assert_eq!(got.len(), 1);
    for name in [
        "login", "overview", "topics", "messages", "groups", "group", "schemas", "dlq",
    ] {
        assert!(
            shots.join(format!("{name}.png")).is_file(),
            "no screenshot {name}.png"
        );
    }
}

/// `kgate run` with `ui:` serves the UI beside its pipelines; the overview carries the
/// pipelines' counters from the same registry `/metrics` renders, and joins them per pipeline
/// and source: 500 iot readings in, of which every 10th is invalid and a third of those
/// (17: malformed JSON) go to the DLQ, the other 483 to the topic — counted in both topics and
/// on the overview, with the feed connected (once: its `timeout` is an hour, so the quiet feed
/// is not reconnected), 483 latencies observed and the buffer empty.
#[test]
fn kgate_run_serves_the_ui_with_the_pipelines_counters() {
    let topic = unique("ui.run");
    let dlq = unique("ui.run-dlq");
    create_topic(&topic, 1);
    create_topic(&dlq, 1);
    let (_synth, url) = spawn_synth(
        "iot",
        &["--rate", "0", "--count", "500", "--invalid-every", "10"],
    );
    let ui_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let _gw = spawn_run(
        dir.path(),
        &format!(
            "kafka: {{brokers: ['{}']}}\nmetrics: {{listen: '127.0.0.1:{}'}}\nui: {{listen: '127.0.0.1:{ui_port}'}}\ndlq: {{topic: {dlq}}}\npipelines:\n  - name: readings\n    source: {{websocket: {{urls: ['{url}'], timeout: 1h}}}}\n    topic: {topic}\n",
            brokers(),
            free_port()
        ),
    );
    assert_eq!(
        consume(&brokers(), &topic, 483, Duration::from_secs(60)).len(),
        483
    );
    assert_eq!(
        consume(&brokers(), &dlq, 17, Duration::from_secs(60)).len(),
        17
    );
    let base = format!("http://127.0.0.1:{ui_port}");
    let mut o = Value::Null;
    wait_until(
        Duration::from_secs(30),
        || {
            o = call("GET", &format!("{base}/api/overview"), &[], None).1;
            o["pipelines"].as_array().is_some_and(|s| {
                s.iter().any(|x| {
                    x["name"] == "kafka_messages_published_total"
                        && x["labels"]["topic"] == topic.as_str()
                        && x["value"] == 483.0
                })
            }) && o["run"]["pipelines"][0]["dead_lettered"] == 17.0
        },
        "the overview to count 483 published and 17 dead-lettered records",
    );
    let p = &o["run"]["pipelines"][0];
    assert_eq!(o["run"]["pipelines"].as_array().unwrap().len(), 1, "{o}");
    assert_eq!(p["name"], "readings", "{p}");
    assert_eq!(p["source"], "websocket", "{p}");
    assert_eq!(p["dlq_topic"], dlq.as_str(), "{p}");
    assert_eq!(p["in"], 500.0, "{p}");
    assert_eq!(p["out"], 483.0, "{p}");
    assert_eq!(p["rejected"], 17.0, "{p}");
    assert_eq!(p["latency"]["count"], 483.0, "{p}");
    let (p50, p99) = (
        p["latency"]["p50_ms"].as_f64().unwrap(),
        p["latency"]["p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{p}");
    let sources = p["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "{p}");
    assert_eq!(sources[0]["source"], url.as_str(), "{p}");
    assert_eq!(sources[0]["received"], 500.0, "{p}");
    assert_eq!(sources[0]["state"], "connected", "{p}");
    assert_eq!(sources[0]["connections"], 1.0, "{p}");
    assert_eq!(o["run"]["buffer"]["inflight"], 0.0, "{o}");
    assert_eq!(o["run"]["buffer"]["max_records"], 10_000, "{o}");
    let (s, page) = call("GET", &format!("{base}/"), &[], None);
    assert_eq!(s, 200);
    assert!(page.as_str().unwrap().contains("kgate pipelines"));
    // Without users, another site's name for 127.0.0.1 (DNS rebinding) is refused.
    let mut c = TcpStream::connect(("127.0.0.1", ui_port)).unwrap();
    c.write_all(b"GET /api/topics HTTP/1.1\r\nHost: evil.example:80\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut c, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
}

/// Write mode: a topic's retention edited (the change answered and read back), a group's
/// offsets reset (a dry run commits nothing, then to the latest: lag 0); the compatibility
/// check of a pasted schema, which changes nothing and so is allowed in read-only mode.
#[test]
fn api_edits_retention_resets_offsets_and_checks_compatibility() {
    let f = fixture();
    let w = bearer(TOKEN);
    let h = [("authorization", w.as_str())];
    let (s, b) = call(
        "POST",
        &format!("{}/api/topics/{}/configs", f.rw, f.topic),
        &h,
        Some(&json!({ "retention": "3d" })),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["changes"][0]["name"], "retention.ms", "{b}");
    assert_eq!(b["changes"][0]["new"], "259200000", "{b}");
    let (_, d) = call("GET", &format!("{}/api/topics/{}", f.rw, f.topic), &h, None);
    let r = d["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "retention.ms")
        .unwrap()
        .clone();
    assert_eq!(r["value"], "259200000", "{r}");
    assert_eq!(r["default"], false, "{r}");
    let (s, _) = call(
        "POST",
        &format!("{}/api/topics/{}/configs", f.ro, f.topic),
        &h,
        Some(&json!({ "retention": "1d" })),
    );
    assert_eq!(s, 403, "read-only mode");

    let reset = |body: Value| {
        let (s, b) = call(
            "POST",
            &format!("{}/api/groups/{}/reset", f.rw, f.group),
            &h,
            Some(&body),
        );
        assert_eq!(s, 200, "{b}");
        b
    };
    let lag = || {
        call("GET", &format!("{}/api/groups/{}", f.rw, f.group), &h, None).1["total_lag"].clone()
    };
    let dry = reset(json!({ "topic": f.topic, "to": "earliest" }));
    assert_eq!(dry["executed"], false);
    let changes = dry["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{dry}");
    assert!(changes.iter().all(|c| c["new"] == 0), "{dry}");
    assert_eq!(lag(), 2, "a dry run commits nothing");
    let done = reset(json!({ "topic": f.topic, "to": "latest", "execute": true }));
    assert_eq!(done["executed"], true);
    assert_eq!(lag(), 0);
    let (s, b) = call(
        "POST",
        &format!("{}/api/groups/{}/reset", f.rw, f.group),
        &h,
        Some(&json!({ "topic": f.topic, "to": "sideways" })),
    );
    assert_eq!(s, 400, "{b}");

    let compatible = SCHEMA.replace(
        r#"{"name": "seq", "type": "long"}"#,
        r#"{"name": "seq", "type": "long"}, {"name": "site", "type": "string", "default": "-"}"#,
    );
    assert_ne!(compatible, SCHEMA);
    let incompatible = SCHEMA.replace(
        r#"{"name": "temp", "type": "double"}"#,
        r#"{"name": "temp", "type": "string"}"#,
    );
    let r = bearer(READ_TOKEN);
    let check = |schema: &str| {
        let (s, b) = call(
            "POST",
            &format!("{}/api/schemas/{}/compatibility", f.ro, f.subject),
            &[("authorization", &r)],
            Some(&json!({ "schema": schema })),
        );
        assert_eq!(s, 200, "{b}");
        b
    };
    assert_eq!(check(&compatible)["compatible"], true);
    let no = check(&incompatible);
    assert_eq!(no["compatible"], false, "{no}");
    assert!(!no["reasons"].as_array().unwrap().is_empty(), "{no}");
}

/// Over TLS (`ui.tls`) the session cookie is `Secure`; a listener that is not loopback without
/// users is refused at start, naming the fix.
#[tokio::test]
async fn tls_cookie_is_secure_and_non_loopback_needs_users() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open.yaml");
    std::fs::write(
        &open,
        format!(
            "kafka: {{brokers: ['{}']}}\nui: {{listen: '0.0.0.0:{}'}}\n",
            brokers(),
            free_port()
        ),
    )
    .unwrap();
    let out = Command::new(kgate_bin())
        .args(["ui", "--config", open.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ui.listen")
            && err.contains("not a loopback")
            && err.contains("kgate ui hash-password"),
        "{err}"
    );

    let pki = common::pki::generate(dir.path(), "ui");
    let port = free_port();
    let config = dir.path().join("tls.yaml");
    std::fs::write(
        &config,
        format!(
            "kafka: {{brokers: ['{}']}}\nui:\n  listen: '127.0.0.1:{port}'\n  tls: {{cert_file: '{}', key_file: '{}'}}\n  users: [{{name: u, password_hash: '{}'}}]\n",
            brokers(),
            pki.server_cert.display(),
            pki.server_key.display(),
            hash(PASS)
        ),
    )
    .unwrap();
    let _ui = spawn_kgate(&["ui", "--config", config.to_str().unwrap()]);
    wait_until(
        Duration::from_secs(20),
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "kgate ui to listen",
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{port}");
    let r = client
        .get(format!("{base}/api/topics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("user=u&password={}", PASS.replace(' ', "+")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("; Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap();
    let r = client
        .get(format!("{base}/api/overview"))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
