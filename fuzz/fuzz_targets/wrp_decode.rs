//! A device's WebSocket frame in WRP mode (`device_websocket.wrp: true`): `wrp::decode` reads
//! the msgpack message (the frame is bounded by `max_frame`, 1 MiB by default, above the fuzz
//! length), and a decoded message becomes an event as the device source builds it (the payload
//! as value, the `wrp.*` source values, the `wrp-*` headers) through the device pipelines
//! (examples/devices.yaml, and one routed by WRP event type).
#![no_main]
use bytes::Bytes;
use kgate::source::device::wrp;
use kgate::transform::Meta;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[path = "common/mod.rs"]
mod common;

static PROCESSORS: OnceLock<Vec<kgate::pipeline::Processor>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    let Ok(d) = wrp::decode(&frame) else {
        return;
    };
    assert!(
        wrp::msg_type_name(d.msg_type).is_some(),
        "an unknown msg_type was taken"
    );
    let ps = PROCESSORS.get_or_init(|| {
        common::example_processors(&["examples/devices.yaml", "fuzz/pipelines.yaml"])
    });
    let mut meta = Meta::empty()
        .with("device_id", "mac:112233445566")
        .with("event", "message");
    for (k, v) in d.meta.iter() {
        meta.insert(k.to_string(), v);
    }
    for p in ps {
        common::check(&p.process(&d.payload, &meta));
    }
});
