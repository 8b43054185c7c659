//! What kgate does with a received MQTT PUBLISH (rumqttc parses the packet): the topic bytes
//! are read as UTF-8 (lossy), matched against the subscriptions' filters (`filter_matches`, a
//! filter first checked as the config checks it), turned into source values
//! (`mqtt::publish_meta`: `topic`, `topic.N`, `qos`, `retain`) and the payload goes through the
//! MQTT pipelines (examples/iot.yaml, and one routed by topic levels) with them.
#![no_main]
use arbitrary::Arbitrary;
use bytes::Bytes;
use kgate::source::mqtt::{check_filter, filter_matches, publish_meta};
use kgate::transform::Meta;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[path = "common/mod.rs"]
mod common;

#[derive(Arbitrary, Debug)]
struct Publish<'a> {
    filter: &'a str,
    topic: &'a [u8],
    qos: u8,
    retain: bool,
    payload: &'a [u8],
}

static PROCESSORS: OnceLock<Vec<kgate::pipeline::Processor>> = OnceLock::new();

fuzz_target!(|p: Publish<'_>| {
    let ps = PROCESSORS
        .get_or_init(|| common::example_processors(&["examples/iot.yaml", "fuzz/pipelines.yaml"]));
    let topic = String::from_utf8_lossy(p.topic).into_owned();
    if check_filter(p.filter).is_ok() {
        let m = filter_matches(p.filter, &topic);
        // `#` matches every topic that does not start with `$`.
        if p.filter == "#" && !topic.starts_with('$') {
            assert!(m);
        }
    }
    let mut meta = Meta::empty();
    publish_meta(
        &mut meta,
        topic.clone(),
        ["0", "1", "2"][p.qos as usize % 3],
        p.retain,
    );
    assert_eq!(meta.get("topic"), Some(topic.as_str()));
    let payload = Bytes::copy_from_slice(p.payload);
    for proc in ps {
        common::check(&proc.process(&payload, &meta));
    }
});
