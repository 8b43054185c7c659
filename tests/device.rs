//! The device WebSocket server against the real local Kafka, with real device connections:
//! many devices at once, WRP decoding and routing, refused upgrades, shutdown with devices
//! connected. Run through `scripts/test`, which starts the broker.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A `kgate run` with one device server pipeline.
struct Gw {
    proc: Proc,
    /// The device server's port.
    port: u16,
    /// The metrics port.
    mport: u16,
    dlq: String,
    _dir: tempfile::TempDir,
}

/// Starts `kgate run` with one pipeline `name` whose source is a device server on a free port
/// (`source`: the rest of its `device_websocket` mapping; `rest`: the pipeline's other keys,
/// YAML at pipeline indentation), and waits until it listens.
fn gateway(name: &str, source: &str, rest: &str) -> Gw {
    let (port, mport) = (free_port(), free_port());
    let dlq = unique(&format!("{name}.dlq"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "kafka:\n  brokers: ['{}']\nmetrics:\n  listen: '127.0.0.1:{mport}'\ndlq: {{topic: '{dlq}'}}\nshutdown_timeout: 20s\npipelines:\n  - name: {name}\n    source: {{device_websocket: {{listen: '127.0.0.1:{port}', {source}}}}}\n{rest}",
        brokers()
    );
    let mut gw = spawn_run(dir.path(), &cfg);
    let addr = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        if let Some(s) = gw.child.try_wait().unwrap() {
            panic!("kgate exited {s}; log:\n{}", gw.log_text());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "device server did not listen; log:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Gw {
        proc: gw,
        port,
        mport,
        dlq,
        _dir: dir,
    }
}

/// The close frame the server sends (within 10 s).
async fn close_frame(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<CloseCode> {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(f)) = m {
                return f.map(|f| f.code);
            }
        }
        None
    })
    .await
    .expect("a close frame within 10 s")
}

async fn consume_async(topic: &str, want: usize, secs: u64) -> Vec<Rec> {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        consume(&brokers(), &topic, want, Duration::from_secs(secs))
    })
    .await
    .unwrap()
}

fn metrics_text(port: u16) -> String {
    http_get(&format!("127.0.0.1:{port}"), "/metrics")
        .unwrap()
        .1
}

/// 20 devices connect at once, each sends 50 frames and disconnects → exactly 1,000 message
/// records and 20 connect and 20 disconnect events, keyed by device id, each device's records
/// in order (connect, 1..=50, disconnect).
#[tokio::test(flavor = "multi_thread")]
async fn many_devices_each_frame_once_in_order_with_lifecycle_events() {
    const DEVICES: usize = 20;
    const FRAMES: u64 = 50;
    let topic = unique("devices");
    let Gw {
        proc: mut gw,
        port,
        mport,
        ..
    } = gateway(
        "devices",
        "path: '/devices/{id}', device_id: {path_param: id}",
        &format!("    topic: {topic}\n    key: '${{@device_id}}'\n    headers: {{event: '${{@event}}', remote: '${{@remote_addr}}'}}\n"),
    );

    let mut devices = Vec::new();
    for d in 0..DEVICES {
        devices.push(tokio::spawn(async move {
            let id = format!("mac:0000000000{d:02}");
            let url = format!("ws://127.0.0.1:{port}/devices/{id}");
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            for seq in 1..=FRAMES {
                let body = serde_json::json!({"device": id, "seq": seq, "temp": 20 + d});
                let msg = if seq % 2 == 0 {
                    Message::text(body.to_string())
                } else {
                    Message::binary(body.to_string().into_bytes())
                };
                ws.send(msg).await.unwrap();
            }
            ws.close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await
            .unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        }));
    }
    for d in devices {
        d.await.unwrap();
    }

    let want = DEVICES * (FRAMES as usize + 2);
    let recs = consume_async(&topic, want, 90).await;
    assert_eq!(
        recs.len(),
        want,
        "records in Kafka; log:\n{}",
        gw.log_text()
    );
    let mut by_key: BTreeMap<String, Vec<&Rec>> = BTreeMap::new();
    for r in &recs {
        by_key.entry(r.key_str()).or_default().push(r);
    }
    assert_eq!(by_key.len(), DEVICES, "keys: {:?}", by_key.keys());
    for (key, rs) in &by_key {
        assert!(rs.iter().all(|r| r.partition == rs[0].partition));
        let events: Vec<&str> = rs.iter().map(|r| r.headers["event"].as_str()).collect();
        assert_eq!(events[0], "connect", "{key}: {events:?}");
        assert_eq!(events[events.len() - 1], "disconnect", "{key}: {events:?}");
        let seqs: Vec<u64> = rs[1..rs.len() - 1]
            .iter()
            .map(|r| {
                assert_eq!(r.headers["event"], "message");
                let v = r.json();
                assert_eq!(v["device"], key.as_str());
                v["seq"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(seqs, (1..=FRAMES).collect::<Vec<_>>(), "order of {key}");
        let connect = rs[0].json();
        assert_eq!(connect["event"], "connect");
        assert_eq!(connect["device_id"], key.as_str());
        assert_eq!(connect["remote_addr"], rs[0].headers["remote"].as_str());
        assert!(
            connect["time"].as_str().unwrap().ends_with('Z'),
            "{connect}"
        );
        let disconnect = rs[rs.len() - 1].json();
        assert_eq!(disconnect["reason"], "closed", "{disconnect}");
        assert_eq!(disconnect["frames"], FRAMES, "{disconnect}");
        assert_eq!(disconnect["close_code"], 1000, "{disconnect}");
        assert_eq!(disconnect["detail"], "bye", "{disconnect}");
        assert!(disconnect["duration_ms"].is_u64(), "{disconnect}");
    }

    let text = metrics_text(mport);
    let total = |name: &str, labels: &[&str]| metric(&text, name, labels);
    assert_eq!(total("kgate_device_connections_total", &[]), DEVICES as f64);
    assert_eq!(
        total("kgate_device_frames_total", &["pipeline=\"devices\""]),
        (DEVICES as u64 * FRAMES) as f64
    );
    assert_eq!(total("kgate_device_connections_active", &[]), 0.0);
    assert_eq!(
        total("kgate_device_disconnections_total", &["reason=\"closed\""]),
        DEVICES as f64
    );
    let s = stop(&mut gw, 30);
    assert_eq!(
        (s["accepted"], s["delivered"], s["undelivered"]),
        (want as u64, want as u64, 0)
    );
}

/// A WRP message as a device sends it (field names of the WRP spec), built independently of
/// kgate's decoder.
#[derive(Serialize)]
struct TestWrp {
    msg_type: i64,
    source: String,
    dest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    transaction_uuid: Option<String>,
    content_type: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    partner_ids: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    headers: Vec<String>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    metadata: HashMap<String, String>,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

fn wrp(msg: &TestWrp) -> Message {
    Message::binary(rmp_serde::to_vec_named(msg).unwrap())
}

/// WRP frames are decoded into `wrp-*` headers with the payload as the value and routed by
/// event type (`event:device-status/…` → `<prefix>.device-status`; a non-event destination →
/// the default); a frame that is not WRP goes to the DLQ with its bytes.
#[tokio::test(flavor = "multi_thread")]
async fn wrp_frames_become_headers_and_route_by_event_type() {
    let prefix = unique("wrp");
    let topic_template = format!("{prefix}.${{@wrp.event_type:-default}}");
    let Gw {
        proc: mut gw,
        port,
        mport,
        dlq,
        ..
    } = gateway(
        "xmidt",
        "path: /api/v2/device, device_id: {header: X-Webpa-Device-Name}, wrp: true",
        &format!("    topic: '{topic_template}'\n    key: '${{@device_id}}'\n    format: raw\n"),
    );

    let device = "mac:112233445566";
    let mut req = format!("ws://127.0.0.1:{port}/api/v2/device")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("X-Webpa-Device-Name", device.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let status = TestWrp {
        msg_type: 4,
        source: device.into(),
        dest: format!("event:device-status/{device}/reboot-pending"),
        transaction_uuid: None,
        content_type: "application/json".into(),
        partner_ids: vec!["comcast".into(), "sky".into()],
        headers: vec!["X-Reason: maintenance".into()],
        metadata: HashMap::from([("/boot-time".to_string(), "1542834188".to_string())]),
        payload: br#"{"reboot":"pending"}"#.to_vec(),
    };
    let node = TestWrp {
        msg_type: 4,
        source: format!("{device}/config"),
        dest: "event:node-change/Device.WiFi".into(),
        transaction_uuid: None,
        content_type: "text/plain".into(),
        partner_ids: vec![],
        headers: vec![],
        metadata: HashMap::new(),
        payload: b"\x00\x01binary\xff".to_vec(),
    };
    let response = TestWrp {
        msg_type: 3,
        source: format!("{device}/config"),
        dest: "dns:webpa.example.com/api".into(),
        transaction_uuid: Some("546514d4-9cb6-41c9-88ca-ccd4c130c525".into()),
        content_type: "application/json".into(),
        partner_ids: vec![],
        headers: vec![],
        metadata: HashMap::new(),
        payload: br#"{"statusCode":200}"#.to_vec(),
    };
    let garbage = b"\xde\xad\xbe\xef not msgpack".to_vec();
    ws.send(wrp(&status)).await.unwrap();
    ws.send(wrp(&node)).await.unwrap();
    ws.send(Message::binary(garbage.clone())).await.unwrap();
    ws.send(wrp(&response)).await.unwrap();
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}

    // device-status: connect, the event, disconnect (lifecycle events are device-status events).
    let ds = consume_async(&format!("{prefix}.device-status"), 3, 60).await;
    assert_eq!(ds.len(), 3, "{:?}\nlog:\n{}", ds, gw.log_text());
    assert!(ds.iter().all(|r| r.key_str() == device));
    assert_eq!(ds[0].json()["event"], "connect");
    assert_eq!(ds[2].json()["event"], "disconnect");
    let ev = &ds[1];
    assert_eq!(ev.value, status.payload);
    let h = &ev.headers;
    assert_eq!(h["wrp-msg-type"], "4");
    assert_eq!(h["wrp-source"], device);
    assert_eq!(h["wrp-dest"], status.dest);
    assert_eq!(h["wrp-content-type"], "application/json");
    assert_eq!(h["wrp-partner-ids"], "comcast,sky");
    assert_eq!(h["wrp-header"], "X-Reason: maintenance");
    assert_eq!(h["wrp-meta-/boot-time"], "1542834188");
    assert!(!h.contains_key("wrp-transaction-uuid"));

    let nc = consume_async(&format!("{prefix}.node-change"), 1, 60).await;
    assert_eq!(nc.len(), 1);
    assert_eq!(nc[0].value, node.payload);
    assert_eq!(nc[0].headers["wrp-dest"], "event:node-change/Device.WiFi");

    let def = consume_async(&format!("{prefix}.default"), 1, 60).await;
    assert_eq!(def.len(), 1);
    assert_eq!(def[0].value, response.payload);
    assert_eq!(def[0].headers["wrp-msg-type"], "3");
    assert_eq!(
        def[0].headers["wrp-transaction-uuid"],
        "546514d4-9cb6-41c9-88ca-ccd4c130c525"
    );

    let bad = consume_async(&dlq, 1, 60).await;
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].value, garbage);
    assert_eq!(bad[0].headers["error_type"], "invalid_wrp");
    assert_eq!(bad[0].headers["source_topic"], topic_template);
    assert_eq!(bad[0].headers["device_id"], device);
    assert!(
        bad[0].headers["source"].starts_with(&format!("xmidt:{device}@127.0.0.1:")),
        "{:?}",
        bad[0].headers
    );

    let text = metrics_text(mport);
    assert_eq!(
        metric(
            &text,
            "kgate_events_rejected_total",
            &["error_type=\"invalid_wrp\""]
        ),
        1.0
    );
    assert_eq!(metric(&text, "kgate_device_frames_total", &[]), 4.0);
    let s = stop(&mut gw, 30);
    assert_eq!(
        (s["accepted"], s["delivered"], s["dead-lettered"]),
        (6, 5, 1)
    );
}

/// An upgrade without a device id is refused with 400 and the reason (and one to an unknown
/// path with 404), both counted; on SIGTERM a connected device is closed with 1001 and its
/// frames and disconnect (`reason: shutdown`) are in Kafka.
#[tokio::test(flavor = "multi_thread")]
async fn missing_device_id_is_refused_and_shutdown_closes_devices() {
    let topic = unique("devq");
    let Gw {
        proc: mut gw,
        port,
        mport,
        ..
    } = gateway(
        "q",
        "path: /ws, device_id: {query: id}",
        &format!("    topic: {topic}\n    key: '${{@device_id}}'\n    format: raw\n"),
    );

    for (url, status, words) in [
        (
            format!("ws://127.0.0.1:{port}/ws"),
            400,
            "missing device id: send it in the query parameter `id`",
        ),
        (
            format!("ws://127.0.0.1:{port}/ws?id="),
            400,
            "missing device id",
        ),
        (
            format!("ws://127.0.0.1:{port}/other?id=x"),
            404,
            "no device endpoint at /other",
        ),
    ] {
        match tokio_tungstenite::connect_async(&url).await {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), status, "{url}");
                let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
                    .into_owned();
                assert!(body.contains(words), "{url}: {body}");
            }
            other => panic!("{url}: expected an HTTP refusal, got {other:?}"),
        }
    }
    let text = metrics_text(mport);
    assert_eq!(
        metric(
            &text,
            "kgate_device_rejected_upgrades_total",
            &["reason=\"missing_device_id\""]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "kgate_device_rejected_upgrades_total",
            &["reason=\"unknown_path\""]
        ),
        1.0
    );
    assert_eq!(metric(&text, "kgate_device_connections_total", &[]), 0.0);

    // A second connection with the same id replaces the first (closed with 1008).
    let dup = format!("ws://127.0.0.1:{port}/ws?id=dup");
    let (mut first, _) = tokio_tungstenite::connect_async(&dup).await.unwrap();
    first.send(Message::text("from the first")).await.unwrap();
    wait_until(
        Duration::from_secs(10),
        || metric(&metrics_text(mport), "kgate_device_frames_total", &[]) == 1.0,
        "the first connection's frame read",
    );
    let (_second, _) = tokio_tungstenite::connect_async(&dup).await.unwrap();
    assert_eq!(close_frame(&mut first).await, Some(CloseCode::Policy));

    // A device stays connected through SIGTERM.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws?id=dev%2F7"))
            .await
            .unwrap();
    for i in 0..3 {
        ws.send(Message::text(format!("reading {i}")))
            .await
            .unwrap();
    }
    // The frames are read before the signal: wait until the server counted them.
    wait_until(
        Duration::from_secs(10),
        || metric(&metrics_text(mport), "kgate_device_frames_total", &[]) == 4.0,
        "3 frames read",
    );
    gw.signal("-TERM");
    assert_eq!(close_frame(&mut ws).await, Some(CloseCode::Away));
    let status = gw.wait(Duration::from_secs(30));
    assert!(status.success(), "{}", gw.log_text());
    let s = summary(&gw.log_text());
    // dev/7: connect, 3 frames, disconnect; dup: connect, frame, disconnect (replaced),
    // connect, disconnect (shutdown).
    assert_eq!((s["accepted"], s["delivered"]), (10, 10), "{s:?}");

    let all = consume_async(&topic, 10, 60).await;
    assert_eq!(all.len(), 10);
    let dup: Vec<serde_json::Value> = all
        .iter()
        .filter(|r| r.key_str() == "dup")
        .map(|r| r.json())
        .collect();
    let events: Vec<(&str, &str)> = dup
        .iter()
        .map(|v| {
            (
                v["event"].as_str().unwrap_or("message"),
                v["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("connect", ""),
            ("message", ""),
            ("disconnect", "replaced"),
            ("connect", ""),
            ("disconnect", "shutdown")
        ]
    );
    let recs: Vec<Rec> = all.into_iter().filter(|r| r.key_str() == "dev/7").collect();
    let values: Vec<String> = recs
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    assert_eq!(recs.len(), 5, "{values:?}");
    assert!(recs.iter().all(|r| r.key_str() == "dev/7"));
    assert_eq!(recs[0].json()["event"], "connect");
    assert_eq!(&values[1..4], ["reading 0", "reading 1", "reading 2"]);
    let d = recs[4].json();
    assert_eq!(
        (
            d["event"].as_str(),
            d["reason"].as_str(),
            d["frames"].as_u64()
        ),
        (Some("disconnect"), Some("shutdown"), Some(3)),
        "{d}"
    );
}

/// A frame over `max_frame` closes that device with 1009 and an idle device is closed after
/// `idle_timeout`; both disconnects say why.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_frames_and_idle_devices_are_closed_with_a_reason() {
    let topic = unique("devlim");
    let Gw {
        proc: mut gw, port, ..
    } = gateway(
        "lim",
        "path: /ws, device_id: {query: id}, max_frame: 64, ping_interval: 0s, idle_timeout: 1s",
        &format!("    topic: {topic}\n    key: '${{@device_id}}'\n    format: raw\n"),
    );
    let url = |id: &str| format!("ws://127.0.0.1:{port}/ws?id={id}");
    let (mut big, _) = tokio_tungstenite::connect_async(url("big")).await.unwrap();
    let (mut idle, _) = tokio_tungstenite::connect_async(url("idle")).await.unwrap();
    big.send(Message::text("small")).await.unwrap();
    big.send(Message::text("x".repeat(100))).await.unwrap();
    assert_eq!(close_frame(&mut big).await, Some(CloseCode::Size));
    let started = std::time::Instant::now();
    assert_eq!(close_frame(&mut idle).await, Some(CloseCode::Normal));
    assert!(started.elapsed() < Duration::from_secs(5));

    let recs = consume_async(&topic, 5, 60).await;
    let disconnects: BTreeMap<String, serde_json::Value> = recs
        .iter()
        .map(|r| (r.key_str(), r.json()))
        .filter(|(_, v)| v["event"] == "disconnect")
        .collect();
    assert_eq!(recs.len(), 5, "{recs:?}");
    assert_eq!(disconnects["big"]["reason"], "frame_too_large");
    assert_eq!(disconnects["big"]["frames"], 1);
    assert_eq!(disconnects["idle"]["reason"], "idle_timeout");
    stop(&mut gw, 30);
}

/// The HTTP refusal of an upgrade: status, body and `WWW-Authenticate`.
async fn refusal(req: impl IntoClientRequest + Unpin) -> (u16, String, Option<String>) {
    match tokio_tungstenite::connect_async(req).await {
        Err(WsError::Http(resp)) => (
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
            resp.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string()),
        ),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

fn rejected(mport: u16, reason: &str) -> f64 {
    metric(
        &metrics_text(mport),
        "kgate_device_rejected_upgrades_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

const TOKEN: &str = "tok-mac-devices-0123456789";

/// A bearer token bound to `mac:*`: without it 401, a wrong one 401, for a `serial:` id 403 (each
/// counted by reason); in the header or the `access_token` query parameter it connects, and the
/// device's frame reaches Kafka.
#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_prove_the_devices_they_are_for() {
    let topic = unique("devbearer");
    let Gw {
        proc: mut gw,
        port,
        mport,
        ..
    } = gateway(
        "bearer",
        &format!("path: /ws, device_id: {{query: id}}, auth: {{bearer: {{tokens: [{{token: '{TOKEN}', devices: 'mac:*'}}]}}}}, lifecycle_events: false"),
        &format!("    topic: {topic}\n    key: '${{@device_id}}'\n    format: raw\n"),
    );
    let url = |q: &str| format!("ws://127.0.0.1:{port}/ws?{q}");
    let with = |q: &str, auth: &str| {
        let mut r = url(q).into_client_request().unwrap();
        r.headers_mut()
            .insert("authorization", auth.parse().unwrap());
        r
    };
    let (s, body, challenge) = refusal(url("id=mac:1")).await;
    assert_eq!((s, challenge.as_deref()), (401, Some("Bearer")), "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let (s, body, _) = refusal(with("id=mac:1", "Bearer tok-mac-devices-0123456780")).await;
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("not valid"), "{body}");
    let (s, body, _) = refusal(with("id=serial:1", &format!("Bearer {TOKEN}"))).await;
    assert_eq!(s, 403, "{body}");
    assert!(
        body.contains("may not connect as device `serial:1`"),
        "{body}"
    );
    assert_eq!(rejected(mport, "missing_credentials"), 1.0);
    assert_eq!(rejected(mport, "bad_credentials"), 1.0);
    assert_eq!(rejected(mport, "wrong_device"), 1.0);

    let (mut a, _) = tokio_tungstenite::connect_async(with("id=mac:1", &format!("Bearer {TOKEN}")))
        .await
        .unwrap();
    let (mut b, _) =
        tokio_tungstenite::connect_async(url(&format!("id=mac:2&access_token={TOKEN}")))
            .await
            .unwrap();
    a.send(Message::text("from mac:1")).await.unwrap();
    b.send(Message::text("from mac:2")).await.unwrap();
    let recs = consume_async(&topic, 2, 60).await;
    let mut got: Vec<(String, String)> = recs
        .iter()
        .map(|r| (r.key_str(), String::from_utf8_lossy(&r.value).into_owned()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("mac:1".to_string(), "from mac:1".to_string()),
            ("mac:2".to_string(), "from mac:2".to_string())
        ]
    );
    assert_eq!(
        metric(&metrics_text(mport), "kgate_device_connections_total", &[]),
        2.0
    );
    stop(&mut gw, 30);
}

const JWT_SECRET: &str = "device-jwt-secret-0123456789abcdef";

fn hs256(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// HS256 JWTs: one whose `sub` is the device connects; an expired one is 401; one for another
/// device is 403.
#[tokio::test(flavor = "multi_thread")]
async fn jwt_devices_connect_as_their_subject() {
    let topic = unique("devjwt");
    let Gw {
        proc: mut gw,
        port,
        mport,
        ..
    } = gateway(
        "jwt",
        &format!("path: '/devices/{{id}}', device_id: {{path_param: id}}, auth: {{jwt: {{hs256_secret: '{JWT_SECRET}', issuer: fleet, leeway: 0s}}}}"),
        &format!("    topic: {topic}\n    key: '${{@device_id}}'\n    format: raw\n"),
    );
    let now = jsonwebtoken::get_current_timestamp();
    let req = |id: &str, token: &str| {
        let mut r = format!("ws://127.0.0.1:{port}/devices/{id}")
            .into_client_request()
            .unwrap();
        r.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };
    let expired = hs256(serde_json::json!({"sub": "mac:1", "iss": "fleet", "exp": now - 30}));
    let (s, body, _) = refusal(req("mac:1", &expired)).await;
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("expired"), "{body}");
    let other = hs256(serde_json::json!({"sub": "mac:2", "iss": "fleet", "exp": now + 300}));
    let (s, body, _) = refusal(req("mac:1", &other)).await;
    assert_eq!(s, 403, "{body}");
    assert!(body.contains("`sub` claim is not device `mac:1`"), "{body}");
    assert_eq!(rejected(mport, "bad_credentials"), 1.0);
    assert_eq!(rejected(mport, "wrong_device"), 1.0);
    let good = hs256(serde_json::json!({"sub": "mac:1", "iss": "fleet", "exp": now + 300}));
    let (mut ws, _) = tokio_tungstenite::connect_async(req("mac:1", &good))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let recs = consume_async(&topic, 3, 60).await;
    assert_eq!(recs.len(), 3, "{recs:?}");
    assert!(recs.iter().all(|r| r.key_str() == "mac:1"));
    assert_eq!(recs[1].value, b"hello");
    stop(&mut gw, 30);
}

type TlsWs = tokio_tungstenite::WebSocketStream<tokio_openssl::SslStream<tokio::net::TcpStream>>;

/// A `wss://` upgrade to `path` trusting the test CA, with the client certificate or without.
async fn wss(port: u16, path: &str, pki: &pki::Pki, with_cert: bool) -> Result<TlsWs, String> {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod};
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(&pki.ca).unwrap();
    if with_cert {
        b.set_certificate_file(&pki.client_cert, SslFiletype::PEM)
            .unwrap();
        b.set_private_key_file(&pki.client_key, SslFiletype::PEM)
            .unwrap();
    }
    let ssl = b
        .build()
        .configure()
        .unwrap()
        .into_ssl("127.0.0.1")
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
    std::pin::Pin::new(&mut s)
        .connect()
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    tokio_tungstenite::client_async(format!("wss://127.0.0.1:{port}{path}"), s)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            WsError::Http(r) => format!("HTTP {}", r.status().as_u16()),
            e => format!("{e}"),
        })
}

/// `wss://` with a client CA and `auth: mtls`: a device with a certificate from the CA connects
/// as its common name (no id sent); claiming another id is 403; without a certificate the TLS
/// handshake fails (counted as `tls_handshake`).
#[tokio::test(flavor = "multi_thread")]
async fn mtls_devices_are_known_by_their_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki::generate(dir.path(), "dev");
    let topic = unique("devmtls");
    let Gw {
        proc: mut gw,
        port,
        mport,
        ..
    } = gateway(
        "mtls",
        &format!(
            "path: /ws, device_id: {{query: id}}, lifecycle_events: false, auth: {{mtls: {{id_from: cn}}}}, tls: {{cert: '{}', key: '{}', client_ca: '{}'}}",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        ),
        &format!("    topic: {topic}\n    key: '${{@device_id}}'\n    format: raw\n"),
    );
    let mut ws = wss(port, "/ws", &pki, true).await.unwrap();
    ws.send(Message::text("over mtls")).await.unwrap();
    let recs = consume_async(&topic, 1, 60).await;
    assert_eq!(recs.len(), 1, "log:\n{}", gw.log_text());
    assert_eq!(recs[0].key_str(), "kgate test client");
    assert_eq!(recs[0].value, b"over mtls");
    assert_eq!(
        wss(port, "/ws?id=mac:1", &pki, true).await.err().as_deref(),
        Some("HTTP 403")
    );
    assert_eq!(rejected(mport, "wrong_device"), 1.0);
    // (The helper's readiness probe, a connection closed at once, is a failed handshake too.)
    let before = rejected(mport, "tls_handshake");
    assert!(wss(port, "/ws?id=mac:1", &pki, false).await.is_err());
    wait_until(
        Duration::from_secs(10),
        || rejected(mport, "tls_handshake") == before + 1.0,
        "the handshake without a certificate counted",
    );
    stop(&mut gw, 30);
}

/// A device listener on every address without `auth:` does not start (the error says how to fix
/// it); with `auth: none` written out it does.
#[tokio::test(flavor = "multi_thread")]
async fn a_listener_beyond_loopback_needs_auth() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = |auth: &str| {
        format!(
            "kafka:\n  brokers: ['{}']\npipelines:\n  - name: open\n    source: {{device_websocket: {{listen: '0.0.0.0:{port}', device_id: {{query: id}}{auth}}}}}\n    topic: t\n    format: raw\n",
            brokers()
        )
    };
    let mut p = spawn_run(dir.path(), &cfg(""));
    let status = p.wait(Duration::from_secs(20));
    assert!(!status.success());
    let log = p.log_text();
    assert!(
        log.contains(
            "pipelines[0].source.device_websocket.auth: `listen` is not a loopback address"
        ) && log.contains("auth: none"),
        "{log}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_run(dir.path(), &cfg(", auth: none"));
    wait_until(
        Duration::from_secs(20),
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "the device server with auth: none to listen",
    );
    stop(&mut p, 30);
}

/// 30 devices upgrading at once against `max_connections: 5`: 5 connect, 25 get 503, whatever
/// the timing (the place is taken when the connection is accepted).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_upgrades_never_exceed_max_connections() {
    let topic = unique("devcap");
    let Gw {
        proc: mut gw,
        port,
        mport,
        ..
    } = gateway(
        "cap",
        "path: /ws, device_id: {query: id}, max_connections: 5, lifecycle_events: false",
        &format!("    topic: {topic}\n    key: '${{@device_id}}'\n    format: raw\n"),
    );
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(30));
    let mut tries = Vec::new();
    for i in 0..30 {
        let barrier = barrier.clone();
        tries.push(tokio::spawn(async move {
            barrier.wait().await;
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws?id=d{i}")).await
        }));
    }
    let (mut open, mut busy) = (Vec::new(), 0);
    for t in tries {
        match t.await.unwrap() {
            Ok((ws, _)) => open.push(ws),
            Err(WsError::Http(r)) if r.status().as_u16() == 503 => busy += 1,
            Err(e) => panic!("neither connected nor 503: {e}"),
        }
    }
    assert_eq!((open.len(), busy), (5, 25));
    let text = metrics_text(mport);
    assert_eq!(metric(&text, "kgate_device_connections_active", &[]), 5.0);
    assert_eq!(
        metric(
            &text,
            "kgate_device_rejected_upgrades_total",
            &["reason=\"too_many_connections\""]
        ),
        25.0
    );
    // A place given back is taken again.
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    while let Some(Ok(_)) = first.next().await {}
    wait_until(
        Duration::from_secs(10),
        || metric(&metrics_text(mport), "kgate_device_connections_active", &[]) == 4.0,
        "the closed device to leave",
    );
    let again =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws?id=again")).await;
    assert!(again.is_ok(), "{again:?}");
    stop(&mut gw, 30);
}

/// A WRP message with `spans` (as Xmidt devices and talaria send them) is decoded, its spans in
/// the `wrp-spans` header.
#[tokio::test(flavor = "multi_thread")]
async fn wrp_messages_with_spans_are_accepted() {
    #[derive(Serialize)]
    struct WithSpans {
        msg_type: i64,
        source: String,
        dest: String,
        content_type: String,
        spans: Vec<Vec<String>>,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    }
    let topic = unique("devspans");
    let Gw {
        proc: mut gw,
        port,
        dlq,
        ..
    } = gateway(
        "spans",
        "path: /ws, device_id: {query: id}, wrp: true, lifecycle_events: false",
        &format!("    topic: {topic}\n    key: '${{@device_id}}'\n    format: raw\n"),
    );
    let msg = WithSpans {
        msg_type: 4,
        source: "mac:112233445566".into(),
        dest: "event:device-status/mac:112233445566/online".into(),
        content_type: "application/json".into(),
        spans: vec![
            vec!["parodus".into(), "1542834188".into(), "12".into()],
            vec!["talaria".into(), "1542834190".into(), "3".into()],
        ],
        payload: br#"{"online":true}"#.to_vec(),
    };
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws?id=mac:112233445566"))
            .await
            .unwrap();
    ws.send(Message::binary(rmp_serde::to_vec_named(&msg).unwrap()))
        .await
        .unwrap();
    let recs = consume_async(&topic, 1, 60).await;
    assert_eq!(recs.len(), 1, "log:\n{}", gw.log_text());
    assert_eq!(recs[0].value, msg.payload);
    assert_eq!(
        recs[0].headers["wrp-spans"],
        r#"[["parodus","1542834188","12"],["talaria","1542834190","3"]]"#
    );
    let s = stop(&mut gw, 30);
    assert_eq!(s["dead-lettered"], 0, "DLQ {dlq}: {s:?}");
}
