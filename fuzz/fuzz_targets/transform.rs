//! A pipeline's processing over arbitrary JSON: transforms (`rename`/`set`/`remove` at JSON
//! pointers), topic/key/header templates (`${field}`, `${a.b}`, `${/ptr}`, `${@meta}`,
//! defaults) and the JSON or raw encoder, built from a structured config as `kgate run`
//! builds a pipeline (`PipelineConfig` → `Processor`), then `Processor::process` on the event
//! bytes. Also the pointer and template functions called directly on the same event.
#![no_main]
use arbitrary::Arbitrary;
use bytes::Bytes;
use kgate::pipeline::{PipelineConfig, Processor};
use kgate::transform::{Doc, Meta, Pointer, Template, TopLevel};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

#[path = "common/mod.rs"]
mod common;

#[derive(Arbitrary, Debug)]
enum Op {
    Rename {
        from: String,
        to: String,
        required: bool,
    },
    SetText {
        path: String,
        value: String,
    },
    SetJson {
        path: String,
        value: String,
    },
    Remove {
        path: String,
    },
}

#[derive(Arbitrary, Debug)]
enum Fmt {
    Json,
    Raw,
}

#[derive(Arbitrary, Debug)]
enum KeyFmt {
    String,
    Json,
}

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
    topic: String,
    allow_any: bool,
    key: Option<String>,
    key_format: KeyFmt,
    headers: Vec<(String, String)>,
    format: Fmt,
    meta: Vec<(String, String)>,
    template: String,
    pointer: String,
    event: Vec<u8>,
}

fuzz_target!(|inp: Input| {
    let transforms: Vec<Value> = inp
        .ops
        .iter()
        .take(16)
        .map(|op| match op {
            Op::Rename { from, to, required } => {
                json!({"rename": {"from": from, "to": to, "required": required}})
            }
            Op::SetText { path, value } => json!({"set": {"path": path, "value": value}}),
            // A `value` written as YAML/JSON in the config: any JSON value.
            Op::SetJson { path, value } => json!({"set": {"path": path,
                "value": serde_json::from_str::<Value>(value).unwrap_or(Value::Null)}}),
            Op::Remove { path } => json!({"remove": {"path": path}}),
        })
        .collect();
    let mut c = json!({
        "name": "fuzz",
        "source": {"websocket": {"urls": ["ws://127.0.0.1:1/ws"]}},
        "transforms": transforms,
        "topic": inp.topic,
        "key": inp.key,
        "key_format": match inp.key_format { KeyFmt::String => "string", KeyFmt::Json => "json" },
        "headers": inp.headers.iter().take(8).cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "format": match inp.format { Fmt::Json => "json", Fmt::Raw => "raw" },
    });
    if inp.allow_any {
        c["topics_allowed"] = json!(["*"]);
    }
    let mut meta = Meta::empty();
    for (k, v) in inp.meta.iter().take(8) {
        meta.insert(k.clone(), v.clone());
    }
    let raw = Bytes::from(inp.event);

    // The pipeline as configured (a config that does not resolve is refused at start).
    if let Ok(pc) = serde_json::from_value::<PipelineConfig<Value>>(c) {
        if let Ok(p) = Processor::new(&pc) {
            common::check(&p.process(&raw, &meta));
        }
    }

    // Templates and pointers on their own, over both views of the event.
    let tree: Option<Value> = serde_json::from_slice(&raw).ok();
    let top = TopLevel::parse(&raw);
    if let Ok(t) = Template::parse(&inp.template) {
        let _ = t.render(Doc::None, &meta);
        if let Some(v) = &tree {
            let by_tree = t.render(Doc::Value(v), &meta);
            // The top-level view renders what the tree renders.
            if let (Some(top), Some(Value::Object(_))) = (&top, &tree) {
                assert_eq!(
                    by_tree,
                    t.render(Doc::Top(top), &meta),
                    "Top and Value disagree"
                );
            }
        }
    }
    if let (Ok(ptr), Some(mut v)) = (Pointer::parse(&inp.pointer), tree) {
        let got = ptr.get(&v).cloned();
        let taken = ptr.take(&mut v);
        assert_eq!(got, taken, "get and take disagree at {}", inp.pointer);
        if let Some(x) = taken {
            // (Putting it back may fail: taking shifted an array.) Where it succeeds, it is there.
            if ptr.insert(&mut v, x.clone()).is_ok() {
                assert_eq!(
                    ptr.get(&v),
                    Some(&x),
                    "inserted at {} but not found",
                    inp.pointer
                );
            }
        }
    }
});
