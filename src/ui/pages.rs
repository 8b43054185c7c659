//! The pages: each a server-rendered shell (navigation, headings, the write controls only for
//! a user who may write) that `assets/app.js` fills from the JSON API; the login page; the
//! embedded assets.

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Extension;
use serde::Deserialize;

use super::auth::{self, Identity, Via};
use super::Ui;

const STYLE: &str = include_str!("assets/style.css");
const APP_JS: &str = include_str!("assets/app.js");
const FAVICON: &[u8] = include_bytes!("assets/favicon.svg");

/// The pages' Content-Security-Policy: only this origin's script and stylesheet, no inline
/// script, no framing.
pub const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `GET /assets/{file}`: the embedded stylesheet, script and icon.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (ty, body): (&str, &'static [u8]) = match file.as_str() {
        "style.css" => ("text/css; charset=utf-8", STYLE.as_bytes()),
        "app.js" => ("text/javascript; charset=utf-8", APP_JS.as_bytes()),
        "favicon.svg" => ("image/svg+xml", FAVICON),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

const NAV: &[(&str, &str, &str)] = &[
    ("overview", "/", "Overview"),
    ("topics", "/topics", "Topics"),
    ("groups", "/groups", "Consumer groups"),
    ("schemas", "/schemas", "Schemas"),
    ("dlq", "/dlq", "DLQ"),
];

/// A whole page: `body` inside the layout; `page` names the script's renderer and `arg` its
/// argument (a topic, a group).
fn layout(ui: &Ui, who: &Identity, page: &str, arg: &str, title: &str, body: &str) -> Response {
    let mut nav = String::new();
    let section = match page {
        "topic" => "topics",
        "group" => "groups",
        p => p,
    };
    for (id, href, label) in NAV {
        let cur = if *id == section {
            " aria-current=\"page\""
        } else {
            ""
        };
        nav.push_str(&format!("<a href=\"{href}\"{cur}>{label}</a>"));
    }
    let write = who.can_write(&ui.config);
    let mode = if write {
        "<span class=\"badge write\">write mode</span>"
    } else {
        "<span class=\"badge\">read-only</span>"
    };
    let user = match who.via {
        Via::Anonymous => String::new(),
        _ => format!(
            "<span class=\"user\">{} ({})</span>{}",
            esc(&who.name),
            if who.role == super::config::Role::Write {
                "write"
            } else {
                "read"
            },
            if who.via == Via::Session {
                "<button id=\"logout\" class=\"link\">log out</button>"
            } else {
                ""
            }
        ),
    };
    let csrf = who.csrf.as_deref().unwrap_or("");
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · kgate</title><link rel="icon" href="/assets/favicon.svg"><link rel="stylesheet" href="/assets/style.css">
<meta name="csrf" content="{csrf}"></head>
<body data-page="{page}" data-arg="{arg}" data-write="{w}">
<header><a class="brand" href="/">kgate</a><nav>{nav}</nav><div class="who">{mode}{user}</div></header>
<main><h1>{title}</h1>
{body}
</main><script src="/assets/app.js" defer></script></body></html>"#,
        title = esc(title),
        page = page,
        arg = esc(arg),
        w = u8::from(write),
    );
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        Html(html),
    )
        .into_response()
}

/// `/`.
pub async fn overview(State(ui): State<Arc<Ui>>, Extension(who): Extension<Identity>) -> Response {
    let body = r#"<section class="cards" id="cluster"><p class="muted">Loading the cluster…</p></section>
<h2>Brokers</h2><div id="brokers"></div>
<h2>kgate pipelines</h2><section class="cards" id="totals"></section><div id="run"></div><div id="pipelines"><p class="muted">…</p></div>"#;
    layout(&ui, &who, "overview", "", "Overview", body)
}

/// `/topics`.
pub async fn topics(State(ui): State<Arc<Ui>>, Extension(who): Extension<Identity>) -> Response {
    let mut body = String::from(
        r#"<div class="bar"><input id="search" type="search" placeholder="Search topics" autofocus>
<label><input id="internal" type="checkbox"> internal</label></div>"#,
    );
    if who.can_write(&ui.config) {
        body.push_str(
            r#"<details class="write-form"><summary>Create a topic</summary>
<form id="create-topic"><label>Name <input name="name" required pattern="[A-Za-z0-9._-]+"></label>
<label>Partitions <input name="partitions" type="number" min="1" value="1"></label>
<label>Retention <input name="retention" placeholder="7d"></label>
<button type="submit">Create</button> <span class="status"></span></form></details>"#,
        );
    }
    body.push_str(r#"<div id="topics"><p class="muted">Loading…</p></div>"#);
    layout(&ui, &who, "topics", "", "Topics", &body)
}

/// `/topics/{topic}`: partitions, configs, the message browser (and produce/delete in write
/// mode).
pub async fn topic(
    State(ui): State<Arc<Ui>>,
    Extension(who): Extension<Identity>,
    Path(topic): Path<String>,
) -> Response {
    let mut body = String::from(
        r#"<section class="cards" id="summary"></section>
<h2>Messages</h2>
<form id="browse" class="bar">
<label>Partition <select name="partition"><option value="">all</option></select></label>
<label>From <select name="from"><option value="end">the end (newest)</option><option value="start">the start</option><option value="offset">an offset</option><option value="timestamp">a time</option></select></label>
<input name="offset" type="number" min="0" placeholder="offset" hidden>
<input name="timestamp" type="datetime-local" step="1" hidden>
<label>Show <select name="limit"><option>20</option><option selected>50</option><option>100</option><option>500</option></select></label>
<input name="key" placeholder="key contains">
<input name="value" placeholder="value contains">
<input name="header" placeholder="header or name=value">
<button type="submit">Read</button>
<label><input name="tail" type="checkbox"> live tail</label></form>
<div id="messages"></div>
<div class="bar"><button id="next" hidden>Next page →</button><span id="page-info" class="muted"></span></div>
<h2>Partitions</h2><div id="partitions"></div>
<h2>Configs</h2><p class="muted">Values set on the topic or the broker are marked; the rest are Kafka's defaults.</p><div id="configs"></div>"#,
    );
    if who.can_write(&ui.config) {
        body.push_str(r#"<h2>Write</h2>
<details class="write-form"><summary>Produce a message</summary>
<form id="produce"><label>Key <input name="key"></label>
<label>Format <select name="format"><option>json</option><option>text</option><option>avro</option></select></label>
<label>Subject <input name="subject" placeholder="for avro: TOPIC-value"></label>
<label class="wide">Value <textarea name="value" rows="4" required>{}</textarea></label>
<label class="wide">Headers <input name="headers" placeholder="name=value, name2=value2"></label>
<button type="submit">Send</button> <span class="status"></span></form></details>
<details class="write-form"><summary>Edit retention</summary>
<form id="edit-retention"><label>Retention <input name="retention" placeholder="7d, 12h or forever" required></label>
<button type="submit">Set</button> <span class="status"></span></form></details>
<details class="write-form"><summary>Add partitions</summary>
<form id="add-partitions"><label>New total <input name="total" type="number" min="2" required></label>
<button type="submit">Add</button> <span class="status"></span></form></details>
<details class="write-form danger"><summary>Delete this topic</summary>
<form id="delete-topic"><label>Type the topic's name to confirm <input name="confirm" required></label>
<button type="submit" class="danger">Delete</button> <span class="status"></span></form></details>"#);
    }
    layout(&ui, &who, "topic", &topic, &topic, &body)
}

/// `/groups`.
pub async fn groups(State(ui): State<Arc<Ui>>, Extension(who): Extension<Identity>) -> Response {
    let body = r#"<div class="bar"><input id="search" type="search" placeholder="Search groups" autofocus></div>
<div id="groups"><p class="muted">Loading…</p></div>"#;
    layout(&ui, &who, "groups", "", "Consumer groups", body)
}

/// `/groups/{group}`: lag per partition, members, lag over time.
pub async fn group(
    State(ui): State<Arc<Ui>>,
    Extension(who): Extension<Identity>,
    Path(group): Path<String>,
) -> Response {
    let mut body = String::from(
        r#"<section class="cards" id="summary"><p class="muted">Loading…</p></section>
<h2>Lag over time <span class="muted">(sampled while the UI runs, for the groups looked at in the last hour)</span></h2><div id="chart"></div>
<h2>Lag per partition</h2><div id="partitions"></div>
<h2>Members</h2><div id="members"></div>"#,
    );
    if who.can_write(&ui.config) {
        body.push_str(r#"<h2>Write</h2>
<details class="write-form"><summary>Reset offsets</summary>
<form id="reset"><label>Topic <select name="topic" required></select></label>
<label>To <select name="to"><option>earliest</option><option>latest</option><option>offset</option><option>shift</option><option>datetime</option></select></label>
<label>Value <input name="value" placeholder="offset, ±shift or 2026-12-07T06:00:00Z"></label>
<label><span><input name="execute" type="checkbox"> execute (else a dry run)</span></label>
<button type="submit">Reset</button> <span class="status"></span></form><div id="reset-result"></div></details>
<details class="write-form danger"><summary>Delete this group</summary>
<form id="delete-group"><label>Type the group's name to confirm <input name="confirm" required></label>
<button type="submit" class="danger">Delete</button> <span class="status"></span></form></details>"#);
    }
    layout(&ui, &who, "group", &group, &group, &body)
}

/// `/schemas`.
pub async fn schemas(State(ui): State<Arc<Ui>>, Extension(who): Extension<Identity>) -> Response {
    let body = r#"<div class="split"><div id="subjects"><p class="muted">Loading…</p></div>
<div><h2 id="schema-title">Pick a version</h2><pre id="schema" class="code"></pre>
<h2>Compatibility check</h2><form id="compat"><p class="muted">Paste a schema to check it against the picked subject's compatibility level (nothing is registered).</p>
<textarea name="schema" rows="8"></textarea><div class="bar"><button type="submit">Check</button><span id="compat-result"></span></div></form></div></div>"#;
    layout(&ui, &who, "schemas", "", "Schemas", body)
}

/// `/dlq`: counts by error type and source topic, the records, replay in write mode.
pub async fn dlq(State(ui): State<Arc<Ui>>, Extension(who): Extension<Identity>) -> Response {
    let mut body = format!(
        r#"<form id="dlq-form" class="bar"><label>DLQ topic <input name="topic" value="{}"></label>
<input name="error_type" placeholder="error type"><input name="source_topic" placeholder="source topic">
<button type="submit">Read</button></form>
<section class="cards" id="summary"></section>
<div class="split"><div><h2>By error type</h2><div id="by-type"></div></div><div><h2>By source topic</h2><div id="by-source"></div></div></div>
<h2>Over time <span class="muted">(the records below, by hour)</span></h2><div id="over-time"></div>"#,
        esc(&ui.dlq_topic)
    );
    if who.can_write(&ui.config) {
        body.push_str(r#"<h2>Replay</h2>
<form id="replay" class="write-form bar"><input name="to" placeholder="to topic (default: each record's source topic)">
<input name="error_type" placeholder="only error type"><input name="source_topic" placeholder="only source topic">
<input name="rate" type="number" min="1" placeholder="records/s">
<label><input name="dry_run" type="checkbox" checked> dry run</label>
<button type="submit">Replay</button></form><div id="replay-status"></div>"#);
    }
    body.push_str(
        r#"<h2>Records <span class="muted">(newest first)</span></h2><div id="records"></div>"#,
    );
    layout(&ui, &who, "dlq", "", "Dead-letter queue", &body)
}

/// `?next=` of the login page.
#[derive(Debug, Deserialize)]
pub struct Next {
    /// Where to go after logging in.
    pub next: Option<String>,
    /// Shown when the last attempt failed.
    pub failed: Option<String>,
}

/// Only a local path (never another site) is followed after the login.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/".into(),
    }
}

/// `GET /login`.
pub async fn login_page(State(ui): State<Arc<Ui>>, Query(q): Query<Next>) -> Response {
    if !ui.config.auth_enabled() {
        return Redirect::to("/").into_response();
    }
    let failed = if q.failed.is_some() {
        r#"<p class="error" role="alert">Wrong user name or password.</p>"#
    } else {
        ""
    };
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in · kgate</title><link rel="icon" href="/assets/favicon.svg"><link rel="stylesheet" href="/assets/style.css"></head>
<body class="login"><main><form method="post" action="/login" class="card">
<h1>kgate</h1>{failed}
<input type="hidden" name="next" value="{next}">
<label>User <input name="user" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Log in</button></form></main></body></html>"#,
        next = esc(&safe_next(q.next.as_deref())),
    );
    (
        [
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        Html(html),
    )
        .into_response()
}

/// The login form.
#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    next: Option<String>,
}

/// `POST /login`: a session cookie and a redirect to `next`, or back to the form.
pub async fn login(State(ui): State<Arc<Ui>>, Form(f): Form<LoginForm>) -> Response {
    let next = safe_next(f.next.as_deref());
    let ui2 = ui.clone();
    let user = f.user.clone();
    let id = tokio::task::spawn_blocking(move || ui2.auth.login(&ui2.config, &f.user, &f.password))
        .await
        .ok()
        .flatten();
    match id {
        Some(id) => {
            tracing::info!(user, "UI login");
            (
                StatusCode::SEE_OTHER,
                [
                    (header::SET_COOKIE, ui.auth.cookie(&id, ui.tls)),
                    (header::LOCATION, next),
                ],
            )
                .into_response()
        }
        None => {
            tracing::warn!(user, "UI login refused");
            let next =
                percent_encoding::utf8_percent_encode(&next, percent_encoding::NON_ALPHANUMERIC);
            Redirect::to(&format!("/login?failed=1&next={next}")).into_response()
        }
    }
}

/// `POST /logout` (with the CSRF header, from the page's button).
pub async fn logout(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Response {
    if let Some(id) = auth::session_id(&headers) {
        ui.auth.logout(&id);
    }
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            format!(
                "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
                auth::COOKIE
            ),
        )],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_only_local_paths_are_followed() {
        assert_eq!(
            esc(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(safe_next(Some("/topics/t?x=1")), "/topics/t?x=1");
        for evil in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "topics",
        ] {
            assert_eq!(safe_next(Some(evil)), "/", "{evil}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
