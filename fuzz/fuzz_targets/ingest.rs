//! `POST /ingest/{pipeline}` bodies: the first byte picks the Content-Type and whether the
//! pipeline is `format: raw`, the rest is the body, cut into events by `http::split_body`
//! (JSON object, array of objects, NDJSON, whole) as the route does; each event then goes
//! through the HTTP pipelines of examples/ (transforms, templates with the route's source
//! values, encoder) as `Processor::process` runs it.
#![no_main]
use bytes::Bytes;
use kgate::transform::Meta;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[path = "common/mod.rs"]
mod common;

const MEDIA: [Option<&str>; 10] = [
    None,
    Some("application/json"),
    Some("text/json"),
    Some("application/x-ndjson"),
    Some("application/ndjson"),
    Some("application/jsonl"),
    Some("application/x-jsonlines"),
    Some("application/jsonlines"),
    Some("text/plain"),
    Some("application/octet-stream"),
];

static PROCESSORS: OnceLock<Vec<kgate::pipeline::Processor>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let media = MEDIA[sel as usize % MEDIA.len()];
    let format_raw = sel & 0x80 != 0;
    let raw = Bytes::copy_from_slice(body);
    let Ok(items) = kgate::source::http::split_body(&raw, media, format_raw) else {
        return;
    };
    let range = raw.as_ptr_range();
    for item in &items {
        // An empty event only as the whole body of a raw pipeline (an empty POST).
        assert!(
            !item.is_empty() || (items.len() == 1 && raw.is_empty()),
            "an empty event"
        );
        // Events are slices of the body, never copies or beyond it.
        if !item.is_empty() {
            let r = item.as_ptr_range();
            assert!(
                range.start <= r.start && r.end <= range.end,
                "an event outside the body"
            );
        }
    }
    let ps = PROCESSORS.get_or_init(|| {
        common::example_processors(&["fuzz/pipelines.yaml", "examples/trades.yaml"])
    });
    let meta = Meta::empty()
        .with("remote_addr", "127.0.0.1:40000")
        .with("remote_ip", "127.0.0.1")
        .with("path", "/ingest/fuzz")
        .with("content_type", media.unwrap_or_default());
    for (i, item) in items.iter().enumerate().take(64) {
        let meta = meta.clone().with("index", i.to_string());
        for p in ps {
            common::check(&p.process(item, &meta));
        }
    }
});
