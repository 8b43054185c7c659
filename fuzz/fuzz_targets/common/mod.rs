//! Shared by the fuzz targets: the example configs' pipelines, compiled as `kgate run` compiles
//! them, so that payloads go through the processors users actually run.

#![allow(dead_code)]

use kgate::gateway::Gateway;
use kgate::pipeline::Processor;

/// Environment lookups for config text: a few set variables (one empty), everything else
/// unset, so that `${VAR}`, `${VAR:-default}` and the unset-variable error are all reachable.
pub fn env(name: &str) -> Option<String> {
    match name {
        "HOME" => Some("/home/kgate".into()),
        "PORT" => Some("8080".into()),
        "EMPTY" => Some(String::new()),
        "KAFKA_BROKERS" => Some("127.0.0.1:9092".into()),
        "TOKEN" => Some("0123456789".into()),
        "DEVICE_TOKEN" => Some("fuzz-device-token".into()),
        _ => None,
    }
}

/// The processors of the non-Avro pipelines of config files (paths from the repository's
/// root, e.g. `examples/trades.yaml`; Avro pipelines need a registry and are fuzzed through
/// `avro_encode`), as `kgate run` builds them.
pub fn example_processors(files: &[&str]) -> Vec<Processor> {
    let mut out = Vec::new();
    for f in files {
        let path = format!("{}/../{f}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let g = Gateway::from_yaml_str(&text, &path, &env).unwrap_or_else(|e| panic!("{e}"));
        for plan in g.pipelines {
            if plan.spec.format == kgate::encode::Format::Avro {
                continue;
            }
            out.push(Processor::from_spec(plan.spec, None).expect("example pipeline builds"));
        }
    }
    assert!(!out.is_empty(), "no processors in {files:?}");
    out
}

/// Checks what a processed record must be, whatever the input: a routed record has a
/// non-empty topic; a rejection says why.
pub fn check(r: &Result<kgate::sink::OutRecord, kgate::event::Rejection>) {
    match r {
        Ok(rec) => assert!(!rec.topic.is_empty(), "a record with an empty topic"),
        Err(rej) => assert!(!rej.message.is_empty(), "a rejection without a reason"),
    }
}
