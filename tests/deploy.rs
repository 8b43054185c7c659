//! Logs and packaging: JSON logs carry no secret, completions and man pages come from the CLI,
//! and the files for containers, Grafana and systemd name only what exists (the config compose
//! mounts, the apt packages the build needs, the metrics kgate exports).

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

// ------------------------------------------------------------------------------ Grafana

/// Every metric family kgate registers, with each family given a series so that the registry
/// renders it (a family without a series is not rendered): the name of each `# TYPE` line, and
/// `_bucket`/`_sum`/`_count` of each histogram.
fn exported_metric_names() -> BTreeSet<String> {
    let m = kgate::metrics::Metrics::new(&Default::default());
    m.topic("t");
    m.websocket("ws://h/ws");
    m.spool("p");
    let d = m.device("p");
    d.disconnected("closed");
    d.rejected("unknown_path");
    m.mqtt("p", &["a/#"]);
    m.dlq_published
        .with_label_values(&["dlq", "t", "invalid_json"]);
    m.dlq_failures.with_label_values(&["dlq"]);
    m.events_rejected.with_label_values(&["p", "invalid_json"]);
    m.encode_errors.with_label_values(&["t", "schema_mismatch"]);
    m.schema_refresh_errors.with_label_values(&["s"]);
    m.http_requests.with_label_values(&["ingest", "200"]);
    m.http_request_duration.with_label_values(&["ingest"]);
    m.http_records_per_request.with_label_values(&["ingest"]);
    let c = &m.consumer;
    c.records.with_label_values(&["t", "g"]);
    c.commits.with_label_values(&["t"]);
    c.errors.with_label_values(&["t"]);
    c.lag.with_label_values(&["t", "0", "g"]);
    c.batch_size.with_label_values(&["stdout"]);
    c.batch_duration.with_label_values(&["stdout"]);
    c.dlq_replayed.with_label_values(&["dlq", "t"]);
    let mut names = BTreeSet::new();
    for line in m.render().lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// The metric names in a PromQL expression: identifiers with kgate's prefixes (label names and
/// values, functions and `$variables` have none of them).
fn metric_names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for ch in expr.chars().chain([' ']) {
        if ch == '"' {
            quoted = !quoted;
        }
        if !quoted && (ch.is_ascii_alphanumeric() || ch == '_' || ch == ':') {
            word.push(ch);
            continue;
        }
        if ["kgate_", "kafka_", "http_", "ws_", "mqtt_"]
            .iter()
            .any(|p| word.starts_with(p))
        {
            out.push(word.clone());
        }
        word.clear();
    }
    out
}

/// Every PromQL string in the dashboard: panels' (and rows' panels') targets and templating
/// queries.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_only_metrics_kgate_exports() {
    let exported = exported_metric_names();
    assert!(exported.len() > 40, "{exported:?}");
    let text = std::fs::read_to_string(repo().join("deploy/grafana/kgate.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&dash, &mut queries);
    let mut used = BTreeSet::new();
    for q in &queries {
        used.extend(metric_names_in(q));
    }
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "deploy/grafana/kgate.json queries metrics kgate does not export: {unknown:?}"
    );
    // The dashboard's promised panels: these must stay queried.
    for name in [
        "kafka_producer_requests_total",
        "kafka_messages_published_total",
        "kafka_dlq_published_total",
        "kafka_producer_queue_drops_total",
        "kafka_producer_request_duration_seconds_bucket",
        "kgate_producer_inflight_records",
        "kgate_spool_bytes",
        "kafka_consumer_lag",
        "http_requests_total",
        "kgate_mqtt_messages_received_total",
        "kgate_device_connections_active",
        "kafka_producer_websocket_connections_total",
    ] {
        assert!(used.contains(name), "the dashboard no longer shows {name}");
    }
    assert!(queries.len() >= 30, "{} queries", queries.len());
}

#[test]
fn a_misspelt_metric_is_caught() {
    // The check itself: a name kgate does not export is found in an expression.
    let exported = exported_metric_names();
    let names = metric_names_in(
        r#"histogram_quantile(0.99, sum by (le) (rate(kafka_producer_request_duration_seconds_bucket{topic="kgate_x"}[5m]))) / kgate_producer_inflight_record"#,
    );
    assert_eq!(
        names,
        [
            "kafka_producer_request_duration_seconds_bucket",
            "kgate_producer_inflight_record"
        ]
    );
    assert!(exported.contains(&names[0]));
    assert!(!exported.contains(&names[1]));
}

// ------------------------------------------------------------------------------ containers

#[test]
fn compose_mounts_a_config_of_the_repo_that_loads() {
    let text = std::fs::read_to_string(repo().join("compose.yaml")).unwrap();
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let services = &compose["services"];
    for (name, image) in [
        ("kafka", "apache/kafka:4."),
        ("registry", "apicurio/apicurio-registry:3."),
        ("mosquitto", "eclipse-mosquitto:"),
    ] {
        let got = services[name]["image"].as_str().unwrap_or_default();
        assert!(got.starts_with(image), "service {name}: image {got:?}");
        assert!(
            services[name]["healthcheck"]["test"].is_sequence(),
            "service {name} has no healthcheck"
        );
    }
    let kgate = &services["kgate"];
    assert_eq!(kgate["build"].as_str(), Some("."));
    let command: Vec<&str> = kgate["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let at = command.iter().position(|a| *a == "--config").unwrap();
    let config_in_container = command[at + 1];
    let mount = kgate["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .find_map(|v| {
            let mut parts = v.split(':');
            let (host, container) = (parts.next()?, parts.next()?);
            (container == config_in_container).then(|| host.to_string())
        })
        .unwrap_or_else(|| panic!("no volume mounts {config_in_container}"));
    let host = repo().join(&mount);
    assert!(host.is_file(), "{mount} is not a file of the repo");
    let config = kgate::gateway::Config::load(&host).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.kafka.brokers, ["kafka:9092"]);
    for dep in ["kafka", "registry", "mosquitto"] {
        assert_eq!(
            kgate["depends_on"][dep]["condition"].as_str(),
            Some("service_healthy"),
            "kgate does not wait for {dep}"
        );
    }
    // The MQTT source and the registry point at the compose services.
    let shown = format!("{config:?}");
    assert!(shown.contains("mqtt://mosquitto:1883"), "{shown}");
    assert!(shown.contains("http://registry:8080"), "{shown}");
}

/// The words of a bash array literal `local pkgs=(a b \n c)`.
fn bash_array(text: &str, start: &str) -> BTreeSet<String> {
    let from = text.find(start).unwrap_or_else(|| panic!("no `{start}`")) + start.len();
    let end = from + text[from..].find(')').unwrap();
    text[from..end]
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_dockerfile_builds_with_packages_sh_build_packages_and_ci_command() {
    let packages = std::fs::read_to_string(repo().join("scripts/lib/packages.sh")).unwrap();
    let want = bash_array(&packages, "local pkgs=(");
    assert!(want.contains("libssl-dev"), "{want:?}");
    let docker = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let build = docker
        .split("\nFROM ")
        .find(|stage| stage.starts_with("rust:bookworm AS build"))
        .expect("a `FROM rust:bookworm AS build` stage");
    // The apt-get install of the build stage, continuation lines joined.
    let joined = build.replace("\\\n", " ");
    let install = joined
        .lines()
        .find(|l| l.contains("apt-get install"))
        .expect("apt-get install in the build stage");
    let after = install.split("apt-get install").nth(1).unwrap();
    let got: BTreeSet<String> = after
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .filter(|w| !w.starts_with('-'))
        .map(str::to_string)
        .collect();
    assert_eq!(
        got, want,
        "the Dockerfile's build packages differ from scripts/lib/packages.sh's"
    );
    assert!(
        joined.contains("RUN cargo build --release --locked"),
        "the build command is not CI's"
    );
    let runtime = docker
        .split("\nFROM ")
        .find(|stage| stage.starts_with("debian:bookworm-slim"))
        .expect("a debian:bookworm-slim runtime stage");
    assert!(runtime.contains("ca-certificates"));
    assert!(runtime.contains("\nUSER kgate"), "the runtime runs as root");
    assert!(runtime.contains(r#"ENTRYPOINT ["kgate"]"#));
}

#[test]
fn the_systemd_unit_runs_kgate_hardened_and_reloads_with_sighup() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/kgate.service")).unwrap();
    let keys: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let has = |k: &str, v: &str| keys.iter().any(|(a, b)| *a == k && b.starts_with(v));
    assert!(has("ExecStart", "/usr/local/bin/kgate run --config "));
    assert!(has("DynamicUser", "yes"));
    assert!(has("StateDirectory", "kgate"));
    assert!(has("Restart", "on-failure"));
    assert!(has("NoNewPrivileges", "yes"));
    assert!(has("ProtectSystem", "strict"));
    assert!(has("ReadWritePaths", "/var/lib/kgate"));
    assert!(has("LimitNOFILE", ""));
    // SIGHUP reloads the config (README, "Live reconfiguration").
    assert!(has("ExecReload", "/bin/kill -HUP $MAINPID"), "{unit}");
}

// ------------------------------------------------------------------------------ CLI

fn kgate_out(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(kgate_bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The subcommands `kgate --help` lists.
fn subcommands() -> Vec<String> {
    let (ok, help, _) = kgate_out(&["--help"]);
    assert!(ok);
    let list: Vec<String> = help
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect();
    assert!(list.len() >= 15, "{list:?}");
    list
}

#[test]
fn completions_for_each_shell_name_every_subcommand() {
    let subs = subcommands();
    for (shell, marker) in [
        ("bash", "complete -F _kgate"),
        ("zsh", "#compdef kgate"),
        ("fish", "complete -c kgate"),
    ] {
        let (ok, script, err) = kgate_out(&["completions", shell]);
        assert!(ok, "{shell}: {err}");
        assert!(script.contains(marker), "{shell}: no `{marker}`");
        for s in &subs {
            assert!(
                script.contains(s.as_str()),
                "{shell} completions lack `{s}`"
            );
        }
    }
    let (ok, _, err) = kgate_out(&["completions", "powershell"]);
    assert!(!ok);
    assert!(err.contains("bash") && err.contains("fish"), "{err}");
}

#[test]
fn the_man_pages_render() {
    let (ok, page, err) = kgate_out(&["man"]);
    assert!(ok, "{err}");
    for section in [".TH kgate 1", ".SH NAME", ".SH SYNOPSIS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "no `{section}` in:\n{page}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = kgate_out(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(ok, "{err}");
    let files: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(out.contains(&format!("{} man pages written", files.len())));
    assert!(files.contains("kgate.1"));
    for s in subcommands() {
        assert!(files.contains(&format!("kgate-{s}.1")), "{files:?}");
    }
    assert!(files.contains("kgate-topics-list.1"), "{files:?}");
    let run = dir.path().join("kgate-run.1");
    let roff = std::fs::read_to_string(&run).unwrap();
    assert!(roff.contains(".TH kgate-run 1"), "{roff}");
    // Rendered by man itself where it is installed.
    if Command::new("man").arg("--version").output().is_ok() {
        let out = Command::new("man")
            .args(["-l", run.to_str().unwrap()])
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("NAME"), "{text}");
        assert!(text.contains("kgate-run"), "{text}");
        assert!(text.contains("--config"), "{text}");
    }
}

// ------------------------------------------------------------------------------ logs

/// Each secret distinct from everything else in the output, so that a find is a leak.
const SASL_PASSWORD: &str = "saslpw-Lq58dV2";
const REGISTRY_PASSWORD: &str = "regpw-Ny36hK7";
const HTTP_TOKEN: &str = "httptoken-Pc19zR4wE0";
const API_KEY: &str = "apikey-Tm74uJ5";

fn assert_no_secret(what: &str, text: &str) {
    for s in [SASL_PASSWORD, REGISTRY_PASSWORD, HTTP_TOKEN, API_KEY] {
        assert!(!text.contains(s), "{what} holds the secret {s}:\n{text}");
    }
}

/// Every non-empty line a JSON object with timestamp, level and target; returns them.
fn json_lines(what: &str, text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{what}: not a JSON line ({e}): {l}"));
            for k in ["timestamp", "level", "target"] {
                assert!(v.get(k).is_some(), "{what}: no `{k}` in {l}");
            }
            v
        })
        .collect()
}

/// `kgate run` with `log: {format: json, level: debug}` (no KGATE_LOG: the config decides) and
/// a registry password, an HTTP bearer token and a feed URL with an API key: its log is JSON
/// lines, a source's lines carry their pipeline and source kind, and no secret is in it.
/// `kgate check` at debug level (KGATE_LOG) with `--log-format json` and a SASL password, the
/// same.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_at_debug_carry_pipeline_and_source_and_no_secret() {
    let topic = unique("deploy.logs");
    let msgs: Vec<String> = (0..5).map(|i| format!(r#"{{"id":{i}}}"#)).collect();
    let feed = serve_messages(msgs, Duration::from_millis(20)).await;
    let registry = std::env::var("KGATE_REGISTRY_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".into());
    let (mport, hport) = (free_port(), free_port());
    let text = format!(
        "kafka: {{brokers: ['{}']}}\n\
         metrics: {{listen: '127.0.0.1:{mport}'}}\n\
         log: {{format: json, level: debug}}\n\
         schema_registry: {{url: '{registry}', username: kgate, password: '{REGISTRY_PASSWORD}'}}\n\
         http:\n  listen: '127.0.0.1:{hport}'\n  auth: [{{name: ingest, token: '{HTTP_TOKEN}', topics: ['{topic}']}}]\n\
         pipelines:\n  - name: logfeed\n    source: {{websocket: {{urls: ['{feed}?apikey={API_KEY}']}}}}\n    topic: {topic}\n",
        brokers()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &text);
    let err_path = dir.path().join("stderr.log");
    let out_path = dir.path().join("stdout.log");
    let mut child = Command::new(kgate_bin())
        .args(["run", "--config", path.to_str().unwrap()])
        .env_remove("KGATE_LOG")
        .env_remove("RUST_LOG")
        .env_remove("KGATE_LOG_FORMAT")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let b = brokers();
    let t = topic.clone();
    let got = tokio::task::spawn_blocking(move || consume(&b, &t, 5, Duration::from_secs(60)))
        .await
        .unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let log = std::fs::read_to_string(&err_path).unwrap();
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(got.len(), 5, "{log}");
    assert!(status.success(), "kgate run exited {status}:\n{log}");
    assert_no_secret("kgate run's stderr", &log);
    assert_no_secret("kgate run's stdout", &stdout);
    let lines = json_lines("kgate run", &log);
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "log.level: debug was not applied:\n{log}"
    );
    // What the feed's task logged carries its pipeline and kind.
    let sourced = lines
        .iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .unwrap_or("")
                .starts_with("kgate::source::websocket")
        })
        .filter(|l| {
            l["spans"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["pipeline"] == "logfeed" && s["source"] == "websocket")
            })
        })
        .count();
    assert!(sourced >= 1, "no websocket line with its span:\n{log}");
    // The shutdown summary counts the five records.
    let summary = lines
        .iter()
        .filter_map(|l| l["message"].as_str())
        .find(|m| m.starts_with("shutdown complete:"))
        .unwrap_or_else(|| panic!("no summary:\n{log}"));
    assert!(summary.contains("accepted 5, delivered 5,"), "{summary}");

    // check, with KGATE_LOG (it wins over the config's level) and the flag's format.
    let brokers =
        std::env::var("KGATE_SASL_SSL_BROKERS").unwrap_or_else(|_| "127.0.0.1:9094".into());
    let ca = std::env::var("KGATE_TLS_DIR")
        .map(|d| format!(", tls: {{ca: '{d}/ca.pem'}}"))
        .unwrap_or_default();
    let text = format!(
        "kafka:\n  brokers: ['{brokers}']\n  security: {{protocol: SASL_SSL, sasl: {{mechanism: SCRAM-SHA-512, username: kgate-nobody, password: '{SASL_PASSWORD}'}}{ca}}}\n\
         log: {{format: text, level: error}}\n\
         schema_registry: {{url: '{registry}', username: kgate, password: '{REGISTRY_PASSWORD}'}}\n\
         pipelines:\n  - name: feed\n    source: {{websocket: {{urls: ['ws://127.0.0.1:1/ws?apikey={API_KEY}']}}}}\n    topic: t\n"
    );
    let path = write_config(dir.path(), &text);
    let out = Command::new(kgate_bin())
        .args([
            "check",
            "--log-format",
            "json",
            "--config",
            path.to_str().unwrap(),
            "--timeout",
            "3s",
        ])
        .env("KGATE_LOG", "debug")
        .env_remove("KGATE_LOG_FORMAT")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !out.status.success(),
        "a wrong login passes check:\n{stdout}"
    );
    assert_no_secret("kgate check's stdout", &stdout);
    assert_no_secret("kgate check's stderr", &stderr);
    let lines = json_lines("kgate check", &stderr);
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "KGATE_LOG=debug lost to log.level:\n{stderr}"
    );
}
