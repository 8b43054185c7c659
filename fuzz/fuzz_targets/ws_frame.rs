//! What kgate does with a WebSocket feed's frame: tungstenite hands over a Text or Binary
//! message (bounded by the library, not by kgate), and the source passes its bytes to the
//! pipeline with no source values (`Event::new(raw, origin)`): `Processor::process` of the
//! examples' WebSocket pipelines (trades, market, orderbook), each frame as it arrives.
#![no_main]
use bytes::Bytes;
use kgate::transform::Meta;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[path = "common/mod.rs"]
mod common;

static PROCESSORS: OnceLock<Vec<kgate::pipeline::Processor>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let ps = PROCESSORS.get_or_init(|| {
        common::example_processors(&["examples/trades.yaml", "examples/market.yaml"])
    });
    let raw = Bytes::copy_from_slice(data);
    for p in ps {
        common::check(&p.process(&raw, &Meta::empty()));
    }
});
