//! Config text as `kgate run`/`kgate check` read it: YAML, `${VAR}` interpolation, serde with
//! unknown keys collected, then every section's resolution (`Gateway::from_yaml_str`), and the
//! error report rendered as the CLI prints it.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common/mod.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    // The CLI reads the file with read_to_string: not UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Resolution reads the files a config names (CA and key files, JSON schemas, password
    // files): the operator's choice of file, not input to harden against. Device files would
    // only block or stream forever.
    if ["/dev/", "/proc/", "/sys/"]
        .iter()
        .any(|p| text.contains(p))
    {
        return;
    }
    match kgate::gateway::Gateway::from_yaml_str(text, "/nonexistent/fuzz/kgate.yaml", &common::env)
    {
        Ok(g) => {
            let _ = format!("{:?}", g.config);
        }
        Err(e) => {
            assert!(!e.errors.is_empty(), "refused without an error");
            let _ = e.to_string();
        }
    }
    // The `${VAR}` splitter alone, on the same text.
    let _ = kgate::config::split_refs(text);
});
