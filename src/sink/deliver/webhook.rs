//! `sink.webhook`: each batch POSTed as a JSON array. 2xx: taken. 408, 429, 5xx, a timeout or
//! a connection error: worth another attempt. Any other status: not (the DLQ at once).

use futures_util::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};

use super::{DeliverError, Failure, Retry, Shape, Target, WebhookConfig};
use crate::config::redact_url;

/// The most of an error answer's body a message quotes.
const BODY_QUOTE: usize = 200;

/// An HTTP endpoint.
pub(super) struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    shown: String,
    retry: Retry,
}

impl Webhook {
    pub(super) fn new(c: &WebhookConfig) -> Result<Webhook, DeliverError> {
        let shown = redact_url(&c.url);
        let url = reqwest::Url::parse(&c.url).expect("checked by check()");
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in &c.headers {
            let (Ok(name), Ok(mut value)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v.expose()),
            ) else {
                continue; // Refused by check().
            };
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if let Some(t) = &c.bearer_token {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", t.expose())) {
                v.set_sensitive(true);
                headers.insert(AUTHORIZATION, v);
            }
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(c.timeout)
            .build()
            .map_err(|source| DeliverError::Webhook {
                url: shown.clone(),
                source,
            })?;
        Ok(Webhook {
            client,
            url,
            shown,
            retry: Retry {
                max_attempts: c.max_attempts,
                backoff: c.backoff,
                max_backoff: c.max_backoff,
            },
        })
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), Failure> {
        let resp = match self.client.post(self.url.clone()).body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                return Err(Failure::Retry(format!("{what}: {}", e.without_url())));
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let mut end = text.len().min(BODY_QUOTE);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let msg = format!("HTTP {status}: {}", text[..end].trim());
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(Failure::Retry(msg))
        } else {
            Err(Failure::Final(msg))
        }
    }
}

impl Target for Webhook {
    fn kind(&self) -> &'static str {
        "webhook"
    }
    fn describe(&self) -> String {
        self.shown.clone()
    }
    fn shape(&self) -> Shape {
        Shape::Array
    }
    fn coalesces(&self) -> bool {
        false
    }
    fn retry(&self) -> Retry {
        self.retry
    }
    fn deliver<'a>(&'a mut self, body: &'a [u8], _: usize) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(self.post(body.to_vec()))
    }
}
