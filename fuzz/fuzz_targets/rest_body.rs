//! `POST /topics/{topic}` (the Confluent REST Proxy v2 produce call) bodies in the plain
//! embedded formats: the first byte picks the Content-Type, the rest is the body, through
//! `rest::plain_records` (parse the request, encode each key and value) as the route does
//! before it sends. JSON keys and values must come out as the same JSON, minified.
#![no_main]
use bytes::Bytes;
use kgate::source::http::rest::{embedded_format, minify_json, plain_records, EmbeddedFormat};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const MEDIA: [&str; 6] = [
    "application/vnd.kafka.json.v2+json",
    "application/vnd.kafka.binary.v2+json",
    "application/vnd.kafka.v2+json",
    "application/vnd.kafka+json",
    "application/json",
    "application/octet-stream",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let format = embedded_format(Some(MEDIA[sel as usize % MEDIA.len()])).expect("a produce type");
    let raw = Bytes::copy_from_slice(body);
    let Ok(records) = plain_records(&raw, format) else {
        return;
    };
    assert!(!records.is_empty(), "a request with no records was taken");
    if format == EmbeddedFormat::Json {
        for (k, v) in &records {
            // What is written is JSON text.
            if let Some(k) = k {
                serde_json::from_slice::<serde::de::IgnoredAny>(k).expect("a written key is JSON");
            }
            if !v.is_empty() {
                serde_json::from_slice::<serde::de::IgnoredAny>(v)
                    .expect("a written value is JSON");
            }
        }
        // A body whose every string is also valid as a value (an ignored key can hold bytes
        // that are not UTF-8, which serde_json does not check in what it skips): every
        // written key and value is the request's, minified.
        if let Ok(req) = serde_json::from_slice::<Value>(body) {
            assert!(req.is_object(), "a body that is not an object was taken");
            let recs = req["records"].as_array().expect("taken, so it has records");
            // (A record may be written positionally, `[key, value, partition]`, as serde
            // reads structs; compared only in the object form.)
            for (r, (k, v)) in recs.iter().zip(&records).filter(|(r, _)| r.is_object()) {
                if let Some(k) = k {
                    let got: Value = serde_json::from_slice(k).expect("a minified key is JSON");
                    assert_eq!(&got, &r["key"]);
                }
                if !v.is_empty() {
                    let got: Value = serde_json::from_slice(v).expect("a minified value is JSON");
                    assert_eq!(&got, &r["value"]);
                }
            }
        }
    }
    // Minifying any text never panics (it is only called on raw JSON values).
    if let Ok(s) = std::str::from_utf8(body) {
        let _ = minify_json(s);
    }
});
