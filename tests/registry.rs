//! The schema registry client and `kgate schemas` against a real registry (Apicurio, started by
//! `scripts/services up registry`; KGATE_REGISTRY_URL, default http://127.0.0.1:8081/apis/ccompat/v7).

mod common;

use std::process::Command;
use std::time::Duration;

use kgate::registry::{RegistryClient, RegistryConfig, RegistryError, Version};

fn url() -> String {
    std::env::var("KGATE_REGISTRY_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".into())
}

fn client() -> RegistryClient {
    RegistryClient::from_url(&url()).unwrap()
}

/// A subject no other test (or run) uses.
fn subject(name: &str) -> String {
    format!("{}-value", common::unique(name))
}

const V1: &str = r#"{"type":"record","name":"TradeEvent","namespace":"ex","fields":[{"name":"symbol","type":"string"},{"name":"price","type":"double"}]}"#;
/// V1 plus an optional field: BACKWARD compatible.
const V2: &str = r#"{"type":"record","name":"TradeEvent","namespace":"ex","fields":[{"name":"symbol","type":"string"},{"name":"price","type":"double"},{"name":"venue","type":["null","string"],"default":null}]}"#;
/// `symbol` changes type and a required field appears: not BACKWARD compatible.
const BAD: &str = r#"{"type":"record","name":"TradeEvent","namespace":"ex","fields":[{"name":"symbol","type":"long"},{"name":"price","type":"double"},{"name":"qty","type":"long"}]}"#;

fn same_json(a: &str, b: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(a).unwrap()
        == serde_json::from_str::<serde_json::Value>(b).unwrap()
}

#[tokio::test]
async fn register_list_get_versions_and_ids_round_trip() {
    let c = client();
    let s = subject("TradeEvent");

    let id1 = c.register(&s, V1).await.unwrap();
    assert!(c.list_subjects().await.unwrap().contains(&s));
    assert_eq!(c.versions(&s).await.unwrap(), vec![1]);
    let latest = c.get_version(&s, Version::Latest).await.unwrap();
    assert_eq!(
        (latest.subject.as_str(), latest.version, latest.id),
        (s.as_str(), 1, id1)
    );
    assert_eq!(latest.schema_type, "AVRO");
    assert!(same_json(&latest.schema, V1), "{}", latest.schema);
    // A fresh client (no cache) resolves the id the registry handed out.
    assert!(same_json(&client().schema_by_id(id1).await.unwrap(), V1));

    // The same schema again: the same id, no new version.
    assert_eq!(c.register(&s, V1).await.unwrap(), id1);
    assert_eq!(c.versions(&s).await.unwrap(), vec![1]);

    c.set_compatibility(&s, "BACKWARD").await.unwrap();
    assert_eq!(c.compatibility_level(&s).await.unwrap(), "BACKWARD");
    assert_eq!(c.check_compatibility(&s, V2).await.unwrap(), (true, vec![]));
    let id2 = c.register(&s, V2).await.unwrap();
    assert_ne!(id2, id1);
    assert_eq!(c.versions(&s).await.unwrap(), vec![1, 2]);
    let v1 = c.get_version(&s, Version::Number(1)).await.unwrap();
    assert_eq!((v1.version, v1.id), (1, id1));
    let v2 = c.get_version(&s, Version::Latest).await.unwrap();
    assert_eq!((v2.version, v2.id), (2, id2));
    assert!(same_json(&client().schema_by_id(id2).await.unwrap(), V2));
    let found = c.lookup(&s, V2).await.unwrap();
    assert_eq!((found.version, found.id), (2, id2));

    assert_eq!(c.delete_subject(&s, true).await.unwrap(), vec![1, 2]);
    assert!(!c.list_subjects().await.unwrap().contains(&s));
    assert!(matches!(
        c.versions(&s).await,
        Err(RegistryError::SubjectNotFound { .. })
    ));
}

#[tokio::test]
async fn ids_are_content_ids_shared_by_subjects() {
    // The registry runs in content-id mode: one schema text, one id, whichever subject; and
    // /schemas/ids/{id} resolves exactly the ids that register and versions hand out.
    let c = client();
    let (a, b) = (subject("SharedA"), subject("SharedB"));
    let schema = V1.replace("TradeEvent", &common::unique("Shared").replace('.', "_"));
    let ida = c.register(&a, &schema).await.unwrap();
    let idb = c.register(&b, &schema).await.unwrap();
    assert_eq!(ida, idb);
    assert_eq!(c.get_version(&b, Version::Latest).await.unwrap().id, ida);
    assert!(same_json(
        &client().schema_by_id(ida).await.unwrap(),
        &schema
    ));
}

#[tokio::test]
async fn an_incompatible_change_is_refused_with_reasons() {
    let c = client();
    let s = subject("TradeEvent");
    c.register(&s, V1).await.unwrap();
    c.set_compatibility(&s, "BACKWARD").await.unwrap();

    let (ok, reasons) = c.check_compatibility(&s, BAD).await.unwrap();
    assert!(!ok);
    assert!(!reasons.is_empty());
    let all = reasons.join("\n");
    assert!(all.contains("'symbol'") || all.contains("symbol"), "{all}");

    let e = c.register(&s, BAD).await.unwrap_err();
    assert!(matches!(e, RegistryError::Incompatible { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "the schema is not compatible with subject {s} at {}: ",
            url().trim_end_matches('/')
        )),
        "{text}"
    );
    assert!(text.ends_with(&format!("see why with kgate schemas check {s} --file FILE")));
    assert_eq!(c.versions(&s).await.unwrap(), vec![1]);
}

#[tokio::test]
async fn unknown_subjects_versions_and_ids_say_what_to_do() {
    let c = client();
    let base = url().trim_end_matches('/').to_string();
    let e = c
        .get_version("NoSuchTradeEvent-value", Version::Latest)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("subject NoSuchTradeEvent-value not found at {base}: register it first with kgate schemas register NoSuchTradeEvent-value --file schemas/NoSuchTradeEvent.avsc")
    );

    let s = subject("TradeEvent");
    c.register(&s, V1).await.unwrap();
    let e = c.get_version(&s, Version::Number(9)).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("version 9 of subject {s} not found at {base}; list the versions with kgate schemas versions {s}")
    );

    let e = c.schema_by_id(2_000_000_000).await.unwrap_err();
    assert!(
        matches!(
            e,
            RegistryError::SchemaNotFound {
                id: 2_000_000_000,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e
        .to_string()
        .starts_with(&format!("schema id 2000000000 not found at {base}: ")));
}

#[tokio::test]
async fn an_unreachable_registry_is_named_with_the_fix() {
    let port = common::free_port(); // bound and released: nothing listens there
    let c = RegistryClient::from_url(&format!("http://127.0.0.1:{port}/apis/ccompat/v7")).unwrap();
    let e = c.list_subjects().await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot reach the schema registry at http://127.0.0.1:{port}/apis/ccompat/v7: "
        )),
        "{text}"
    );
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(
        text.ends_with("is it running? (scripts/services up registry)"),
        "{text}"
    );
}

#[tokio::test]
async fn the_latest_schema_is_cached_until_refresh() {
    let s = subject("Cached");
    let mut cfg = RegistryConfig::from_url(&url());
    cfg.refresh = Duration::from_secs(1);
    let c = RegistryClient::new(&cfg).unwrap();
    let id1 = c.register(&s, V1).await.unwrap();
    assert_eq!(c.latest_cached(&s).await.unwrap().id, id1);
    let id2 = client().register(&s, V2).await.unwrap();
    assert_eq!(c.latest_cached(&s).await.unwrap().id, id1, "cached");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(c.latest_cached(&s).await.unwrap().id, id2, "refreshed");
}

/// The smallest pipeline a config must have besides the section under test.
const PIPELINE: &str =
    "pipelines:\n  - {name: p, source: {websocket: {urls: ['ws://127.0.0.1:1/ws']}}, topic: t}\n";

#[test]
fn the_config_section_is_typed_and_checked() {
    let env = |_: &str| None;
    let ok = kgate::gateway::Config::from_yaml_str(
        &format!("{PIPELINE}schema_registry:\n  url: http://127.0.0.1:8081/apis/ccompat/v7\n  timeout: 3s\n  refresh: 1m\n"),
        "k.yaml",
        &env,
    )
    .unwrap();
    let r = ok.schema_registry.unwrap();
    assert_eq!(r.timeout, Duration::from_secs(3));
    assert_eq!(r.refresh, Duration::from_secs(60));

    let e = kgate::gateway::Config::from_yaml_str(
        &format!("{PIPELINE}schema_registry:\n  url: http://127.0.0.1:8081\n  password: x\n  tls: {{ca_file: /nonexistent.pem, bogus: 1}}\n"),
        "k.yaml",
        &env,
    )
    .unwrap_err()
    .to_string();
    for want in [
        "schema_registry.tls.bogus: unknown key",
        "schema_registry.username: a password without a username",
        "schema_registry.tls: TLS files are set but `http://127.0.0.1:8081` is not https://",
        "schema_registry.tls.ca_file: file `/nonexistent.pem` does not exist",
    ] {
        assert!(e.contains(want), "missing `{want}` in:\n{e}");
    }
}

// ------------------------------------------------------------------------------------- CLI

/// Runs kgate (with KGATE_REGISTRY_URL = `env_url`, or unset), checks the exit status and
/// returns (stdout, stderr).
fn kgate(args: &[&str], env_url: Option<&str>, want_exit: i32) -> (String, String) {
    let mut cmd = Command::new(common::kgate_bin());
    cmd.args(args).env_remove("KGATE_REGISTRY_URL");
    if let Some(u) = env_url {
        cmd.env("KGATE_REGISTRY_URL", u);
    }
    let o = cmd.output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert_eq!(
        o.status.code(),
        Some(want_exit),
        "kgate {args:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    (out, err)
}

#[test]
fn cli_registers_gets_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (v1, v2, bad) = (
        write("v1.avsc", V1),
        write("v2.avsc", V2),
        write("bad.avsc", BAD),
    );
    let broken = write(
        "broken.avsc",
        r#"{"type":"record","name":"T","fields":[{"name":"a"}]}"#,
    );
    let u = url();
    let s = subject("CliTrade");

    let (out, _) = kgate(
        &["schemas", "register", &s, "--file", &v1, "--registry", &u],
        None,
        0,
    );
    assert!(
        out.starts_with(&format!("registered {s} version 1, id ")),
        "{out}"
    );

    // The registry from the environment; JSON output.
    let (out, _) = kgate(&["schemas", "get", &s, "--json"], Some(&u), 0);
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["subject"], s.as_str());
    assert_eq!(got["version"], 1);
    assert!(same_json(got["schema"].as_str().unwrap(), V1));

    let c = client();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(c.set_compatibility(&s, "BACKWARD"))
        .unwrap();

    // The registry from a config file.
    let cfg = write(
        "kgate.yaml",
        &format!("{PIPELINE}schema_registry:\n  url: {u}\n  timeout: 5s\n"),
    );
    let (out, _) = kgate(
        &["schemas", "check", &s, "--file", &v2, "--config", &cfg],
        None,
        0,
    );
    assert!(
        out.contains(&format!("compatible with {s} (level BACKWARD)")),
        "{out}"
    );

    let (out, _) = kgate(&["schemas", "check", &s, "--file", &bad], Some(&u), 1);
    assert!(
        out.contains(&format!("NOT compatible with {s} (level BACKWARD):")),
        "{out}"
    );
    assert!(out.contains("\n  - "), "{out}");

    let (out, _) = kgate(&["schemas", "register", &s, "--file", &v2], Some(&u), 0);
    assert!(
        out.starts_with(&format!("registered {s} version 2, id ")),
        "{out}"
    );

    let (out, _) = kgate(&["schemas", "versions", &s, "--json"], Some(&u), 0);
    assert_eq!(out.trim(), "[1,2]");
    let (out, _) = kgate(&["schemas", "list"], Some(&u), 0);
    assert!(out.lines().any(|l| l == s), "{out}");
    let (out, _) = kgate(&["schemas", "get", &s, "--version", "1"], Some(&u), 0);
    assert!(
        out.starts_with(&format!("subject: {s}\nversion: 1\nid:")),
        "{out}"
    );

    // Errors: exit 2 with the reason.
    let (_, err) = kgate(&["schemas", "register", &s, "--file", &broken], Some(&u), 2);
    assert!(
        err.contains(&format!("{broken} is not a valid Avro schema: ")),
        "{err}"
    );
    let (_, err) = kgate(&["schemas", "get", "NoSuchCli-value"], Some(&u), 2);
    assert!(
        err.contains("subject NoSuchCli-value not found at "),
        "{err}"
    );
    let (_, err) = kgate(&["schemas", "list"], None, 2);
    assert!(
        err.contains("no schema registry given: pass --registry URL"),
        "{err}"
    );
}
