//! MQTT source: one MQTT 5 client per pipeline that subscribes to topic filters and turns each
//! message into an event, acknowledging it to the broker only once Kafka holds it.
//!
//! **Acknowledgement.** A QoS 1 message is PUBACKed only after its [`Fate`] is persisted: Kafka
//! acknowledged the record, or the DLQ record of it (also of a message too large for Kafka: its
//! first bytes go to the DLQ as `too_large`, so it is acked rather than resent forever). A fate
//! of `Busy`, `Dropped` or `Failed` is never acked, and neither is a message whose connection
//! ended before its fate was known: with a persistent session (`clean_session: false`, the
//! default, and a fixed `client_id`) the broker sends every unacked message again after a
//! reconnect, also after a crash of the gateway. So nothing the broker accepted is lost, and a
//! message may reach Kafka twice (at-least-once).
//! After a fate that is not persisted kgate reconnects on purpose, since MQTT brokers only
//! resend on a new connection.
//!
//! **Order.** Acks go out in the order the messages arrived (MQTT 3.1.1 and 5, §4.6: a client
//! sends PUBACKs in the order of the PUBLISHes): a message whose fate is known waits for those
//! before it. Fates mostly come back in order anyway, since a pipeline hands events to the
//! producer in order.
//!
//! **Flow control.** kgate asks the broker for at most `max_inflight` unacked messages at a time
//! (MQTT 5 Receive Maximum). Since acks wait for Kafka, this bounds what kgate holds and is how
//! backpressure reaches the broker: while Kafka is slow or down, the broker stops sending and
//! queues messages in the session. The event loop itself never waits for Kafka, so pings and
//! acks keep flowing.
//!
//! **QoS 2** is refused in the config: the Kafka write and the MQTT ack cannot be one
//! transaction, so delivery to Kafka is at-least-once whatever the QoS; and rumqttc cannot
//! resume a QoS 2 exchange after a reconnect (a PUBREL of the previous connection ends the new
//! one, bytebeamio/rumqtt#664). Publishers may still publish at QoS 2: the broker delivers at
//! the subscription's QoS 1.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{ConnAck, Filter, Packet, Publish, SubAck, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event as MqttEvent, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use futures_util::future::BoxFuture;

use super::{Probe, ProbeCtx, Source, SourceCtx, SourceKind};
use crate::config::{redact_url, At, ConfigError};
use crate::event::{Event, Fate, Meta, Origin};
use crate::metrics::MqttMetrics;
use crate::pipeline::Pipeline;

mod config;

pub use config::{
    check_filter, filter_matches, parse_url, BrokerAddr, MqttSourceConfig, MqttTlsConfig,
    Subscription,
};

impl SourceKind for MqttSourceConfig {
    fn name(&self) -> &'static str {
        "mqtt"
    }
    fn answers_clients(&self) -> bool {
        true
    }
    fn resolve(&self, at: At<'_>, errors: &mut Vec<ConfigError>) -> Option<Box<dyn Source>> {
        let addr = config::check(self, at, errors)?;
        Some(Box::new(MqttSource {
            config: self.clone(),
            addr,
        }))
    }
}

/// Resolved `source.mqtt`: the broker's address parsed.
#[derive(Debug)]
pub struct MqttSource {
    config: MqttSourceConfig,
    addr: BrokerAddr,
}

impl Source for MqttSource {
    fn probe<'a>(&'a self, ctx: ProbeCtx<'a>) -> BoxFuture<'a, Vec<Probe>> {
        Box::pin(async move {
            let r = probe(&self.config, &self.addr, ctx.pipeline, ctx.timeout).await;
            let text = format!(
                "mqtt {} (pipeline {}): {}",
                redact_url(&self.config.url),
                ctx.pipeline,
                r.as_ref().unwrap_or_else(|e| e)
            );
            vec![if r.is_ok() {
                Probe::ok(text)
            } else {
                Probe::fail(text)
            }]
        })
    }

    /// The pipeline's MQTT client task.
    fn spawn(self: Box<Self>, ctx: SourceCtx, tasks: &mut JoinSet<()>) {
        let c = self.config;
        let client_id = c
            .client_id
            .clone()
            .unwrap_or_else(|| format!("kgate-{}", ctx.pipeline.name()));
        let filters: Vec<&str> = c.subscriptions.iter().map(|s| s.topic.as_str()).collect();
        let m = ctx.metrics.mqtt(ctx.pipeline.name(), &filters);
        let client = Client {
            config: c,
            addr: self.addr,
            client_id,
            pipeline: ctx.pipeline,
            m,
            stop: ctx.stop,
        };
        tasks.spawn(tracing::Instrument::in_current_span(client.run()));
    }
}

/// Why `source.mqtt.tls` cannot be used; each message names the file.
#[derive(Debug, thiserror::Error)]
enum TlsError {
    /// `ca_file` cannot be read.
    #[error("cannot read CA file {path}")]
    ReadCa { path: String, source: PemError },
    /// A certificate in `ca_file` or `cert_file` is not PEM.
    #[error("bad certificate in {path}")]
    BadCertificate { path: String, source: PemError },
    /// rustls refuses a certificate of `ca_file`.
    #[error("unusable CA certificate in {path}")]
    UnusableCa { path: String, source: rustls::Error },
    /// The crypto provider supports no default protocol version.
    #[error("TLS setup")]
    Setup(#[source] rustls::Error),
    /// `cert_file` cannot be read.
    #[error("cannot read certificate file {path}")]
    ReadCertificate { path: String, source: PemError },
    /// `key_file` cannot be read or holds no key.
    #[error("cannot read a private key from {path}")]
    ReadKey { path: String, source: PemError },
    /// rustls refuses the client certificate and key.
    #[error("client certificate and key do not fit")]
    ClientAuth(#[source] rustls::Error),
}

/// `e` and its causes joined by `: `, as `{:#}` prints an anyhow error.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Builds the client options from a resolved config.
fn options(
    c: &MqttSourceConfig,
    addr: &BrokerAddr,
    client_id: &str,
) -> Result<MqttOptions, TlsError> {
    let mut o = MqttOptions::new(client_id, addr.host.clone(), addr.port);
    o.set_keep_alive(c.keep_alive)
        .set_clean_start(c.clean_session)
        .set_manual_acks(true)
        .set_receive_maximum(Some(c.max_inflight))
        .set_max_packet_size(Some(c.max_packet_size.0.min(268_435_455) as u32))
        .set_connection_timeout(c.connect_timeout.as_secs().max(1))
        // Room for an ack of every message the broker may have out (acks that do not fit wait
        // in kgate's outbox).
        .set_request_channel_capacity(c.max_inflight as usize + 64);
    if !c.clean_session {
        o.set_session_expiry_interval(Some(c.session_expiry.as_secs().min(u32::MAX as u64) as u32));
    }
    if let Some(user) = &c.username {
        o.set_credentials(
            user.clone(),
            c.password.as_ref().map(|p| p.expose()).unwrap_or_default(),
        );
    }
    if addr.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(c.tls.as_ref())?),
        )));
    }
    Ok(o)
}

fn tls_config(t: Option<&MqttTlsConfig>) -> Result<rustls::ClientConfig, TlsError> {
    let roots = root_store(t.and_then(|t| t.ca_file.as_deref()))?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Setup)?
    .with_root_certificates(roots);
    let cfg = match t.and_then(|t| t.cert_file.as_deref().zip(t.key_file.as_deref())) {
        Some((cert, key)) => {
            let (certs, key) = client_identity(cert, key)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(TlsError::ClientAuth)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(cfg)
}

/// The CAs of `ca_file`, or the system's when there is none.
fn root_store(ca_file: Option<&str>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(ca) => {
            let path = || ca.to_string();
            let certs = CertificateDer::pem_file_iter(ca).map_err(|source| TlsError::ReadCa {
                path: path(),
                source,
            })?;
            for cert in certs {
                let cert = cert.map_err(|source| TlsError::BadCertificate {
                    path: path(),
                    source,
                })?;
                roots.add(cert).map_err(|source| TlsError::UnusableCa {
                    path: path(),
                    source,
                })?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(roots)
}

/// The client certificate chain and key for mutual TLS.
fn client_identity(
    cert: &str,
    key: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|source| TlsError::ReadCertificate {
            path: cert.to_string(),
            source,
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadCertificate {
            path: cert.to_string(),
            source,
        })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::ReadKey {
        path: key.to_string(),
        source,
    })?;
    Ok((certs, key))
}

/// `kgate check`: connects with the configured credentials under a client id of its own (the
/// gateway's session is left alone) and says how it went.
async fn probe(
    c: &MqttSourceConfig,
    addr: &BrokerAddr,
    pipeline: &str,
    timeout: Duration,
) -> Result<String, String> {
    let id = format!(
        "{}-check",
        c.client_id
            .clone()
            .unwrap_or_else(|| format!("kgate-{pipeline}"))
    );
    let mut check = c.clone();
    check.clean_session = true;
    let opts = options(&check, addr, &id).map_err(|e| with_causes(&e))?;
    let (client, mut el) = AsyncClient::new(opts, 10);
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(timeout, async {
        loop {
            match el.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match r {
        Ok(Ok(())) => {
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), el.poll()).await;
            Ok(format!("connected in {} ms", started.elapsed().as_millis()))
        }
        Ok(Err(ConnectionError::ConnectionRefused(code))) => Err(format!(
            "the broker refused the connection ({code:?}); check username, password and client_id"
        )),
        Ok(Err(e)) => Err(format!(
            "cannot connect: {e}; is the broker running at that address?"
        )),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

struct Client {
    config: MqttSourceConfig,
    addr: BrokerAddr,
    client_id: String,
    pipeline: Arc<Pipeline>,
    m: MqttMetrics,
    stop: CancellationToken,
}

/// A message handed to the pipeline whose fate is awaited before it is acked.
struct Pending {
    pkid: u16,
    qos: QoS,
    /// The connection it came on: an ack only means something on that one.
    conn: u64,
    fate: oneshot::Receiver<Fate>,
}

/// The source values of a message received on `topic` (`topic`, each level as `topic.N`,
/// `qos`, `retain`): what `${@…}` templates read. Pure; public for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub fn publish_meta(meta: &mut Meta, topic: String, qos: &'static str, retain: bool) {
    for (i, seg) in topic.split('/').enumerate() {
        meta.insert(format!("topic.{i}"), seg);
    }
    meta.insert("qos", qos);
    meta.insert("retain", if retain { "true" } else { "false" });
    meta.insert("topic", topic);
}

/// The fate of a message whose event the pipeline dropped without settling it.
fn dropped() -> Fate {
    Fate::Failed {
        message: "the pipeline dropped the event".into(),
    }
}

/// Waits for the fate of the oldest pending message.
async fn head_fate(pending: &mut VecDeque<Pending>) -> Fate {
    match pending.front_mut() {
        Some(p) => (&mut p.fate).await.unwrap_or_else(|_| dropped()),
        None => std::future::pending().await,
    }
}

/// What the event loop carries from one turn to the next.
struct RunState {
    client: AsyncClient,
    eventloop: EventLoop,
    /// To the feeder task; `None` once stopping.
    to_pipeline: Option<mpsc::Sender<Event>>,
    /// Handed messages whose fate is awaited, in arrival order.
    pending: VecDeque<Pending>,
    acks: AckState,
    backoff: Duration,
    /// Until then the event loop is not polled (no connect is tried).
    reconnect_at: Option<tokio::time::Instant>,
    stopping: bool,
    disconnect_sent: bool,
}

impl RunState {
    /// Once stopping and every handed message is settled and acked: leaves, after a clean
    /// DISCONNECT while still connected.
    fn leave_when_settled(&mut self) -> ControlFlow<()> {
        let settled = self.pending.is_empty() && self.acks.outbox.is_empty();
        if !self.stopping || !settled {
            return ControlFlow::Continue(());
        }
        if !self.acks.connected || self.disconnect_sent {
            return ControlFlow::Break(());
        }
        // Every handed message is settled and acked: leave cleanly.
        self.disconnect_sent = self.client.try_disconnect().is_ok();
        if self.disconnect_sent {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }
}

impl Client {
    /// Connects, hands each message to the pipeline and acks it once Kafka holds it, until
    /// `stop`; then settles what was handed before it leaves.
    async fn run(self) {
        let opts = match options(&self.config, &self.addr, &self.client_id) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(pipeline = %self.pipeline.name(), url = %redact_url(&self.config.url), "MQTT source not started: {}", with_causes(&e));
                return;
            }
        };
        let cap = self.config.max_inflight as usize + 64;
        let (client, eventloop) = AsyncClient::new(opts, cap);
        let (to_pipeline, feeder) = self.spawn_feeder(cap);
        let mut l = RunState {
            client,
            eventloop,
            to_pipeline: Some(to_pipeline),
            pending: VecDeque::new(),
            acks: AckState {
                conn: 0,
                connected: false,
                outbox: VecDeque::new(),
                want_redelivery: false,
            },
            backoff: self.config.backoff_initial,
            reconnect_at: None,
            stopping: false,
            disconnect_sent: false,
        };
        while self.turn(&mut l).await.is_continue() {}
        l.to_pipeline = None;
        let _ = feeder.await;
        self.m.inflight.set(0);
        tracing::info!(pipeline = %self.pipeline.name(), "MQTT source stopped");
    }

    /// One task hands events to the pipeline in arrival order, so that the event loop never
    /// waits for the producer buffer (pings and acks go on while Kafka is slow).
    fn spawn_feeder(&self, cap: usize) -> (mpsc::Sender<Event>, tokio::task::JoinHandle<()>) {
        let (to_pipeline, mut from_source) = mpsc::channel::<Event>(cap);
        let pipeline = self.pipeline.clone();
        let feeder = tokio::spawn(tracing::Instrument::in_current_span(async move {
            while let Some(ev) = from_source.recv().await {
                pipeline.handle(ev).await;
            }
        }));
        (to_pipeline, feeder)
    }

    /// One turn of the event loop: hands over the acks that are due and, unless stopped and
    /// settled, takes the first of the stop, a fate, the reconnect time, the broker's next event.
    async fn turn(&self, l: &mut RunState) -> ControlFlow<()> {
        if self.flush_acks(&l.client, &mut l.acks) {
            // Progress: the next failure starts the backoff afresh.
            l.backoff = self.config.backoff_initial;
        }
        l.leave_when_settled()?;
        // While stopping, a lost connection is not made again: the unacked rest is resent to the next run.
        let can_poll = l.reconnect_at.is_none() && (l.acks.connected || !l.stopping);
        let reconnect_at = l.reconnect_at;
        tokio::select! {
            biased;
            _ = self.stop.cancelled(), if !l.stopping => self.begin_stopping(l),
            fate = head_fate(&mut l.pending) => self.settle_fates(l, fate),
            _ = async { tokio::time::sleep_until(reconnect_at.expect("set")).await }, if reconnect_at.is_some() => {
                l.reconnect_at = None;
            }
            ev = l.eventloop.poll(), if can_poll => return self.on_event(l, ev).await,
        }
        ControlFlow::Continue(())
    }

    fn begin_stopping(&self, l: &mut RunState) {
        l.stopping = true;
        // The feeder hands what is queued, then ends.
        l.to_pipeline = None;
        tracing::info!(pipeline = %self.pipeline.name(), pending = l.pending.len(), "MQTT source stopping: settling handed messages");
    }

    /// Settles the oldest pending message with `fate` and, in order, every one behind it whose
    /// fate is known; reconnects when one was not persisted.
    fn settle_fates(&self, l: &mut RunState, fate: Fate) {
        let p = l.pending.pop_front().expect("head exists");
        self.settle(p, fate, &mut l.acks);
        // Acks whose fates are already known go out in the same turn, in order.
        while let Some(front) = l.pending.front_mut() {
            let fate = match front.fate.try_recv() {
                Ok(f) => f,
                Err(oneshot::error::TryRecvError::Empty) => break,
                Err(oneshot::error::TryRecvError::Closed) => dropped(),
            };
            let p = l.pending.pop_front().expect("front exists");
            self.settle(p, fate, &mut l.acks);
        }
        self.m.inflight.set(l.pending.len() as i64);
        if l.acks.want_redelivery && l.acks.connected && !l.stopping && !self.config.clean_session {
            self.reconnect_for_redelivery(l);
        }
        l.acks.want_redelivery = false;
    }

    fn reconnect_for_redelivery(&self, l: &mut RunState) {
        // Brokers resend only on a new connection: drop this one. What is
        // pending on it is resent too (duplicates in Kafka, nothing lost).
        tracing::warn!(pipeline = %self.pipeline.name(), "reconnecting so that the broker resends the messages that were not acked");
        l.eventloop.clean();
        self.m.disconnections.inc();
        l.acks.connected = false;
        l.acks.conn += 1;
        self.schedule_reconnect(l);
    }

    /// Holds off the next connect for the jittered backoff, and doubles the backoff.
    fn schedule_reconnect(&self, l: &mut RunState) {
        l.reconnect_at = Some(self.jittered(l.backoff));
        l.backoff = (l.backoff * 2).min(self.config.backoff_max);
    }

    /// Handles what the event loop reported; breaks when the loop should end.
    async fn on_event(
        &self,
        l: &mut RunState,
        ev: Result<MqttEvent, ConnectionError>,
    ) -> ControlFlow<()> {
        match ev {
            Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => self.on_connack(l, &ack),
            Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => self.on_suback(&ack),
            Ok(MqttEvent::Incoming(Packet::Publish(_))) if l.stopping => {
                // Not handed, not acked: the broker resends it to the next run.
            }
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => self.on_publish(l, &p).await,
            Ok(MqttEvent::Incoming(Packet::Disconnect(d))) => {
                tracing::warn!(pipeline = %self.pipeline.name(), reason = ?d.reason_code, "the broker closed the connection");
            }
            Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) if l.stopping => {
                l.disconnect_sent = true;
                l.acks.connected = false;
            }
            Ok(_) => {}
            Err(e) => return self.on_connection_error(l, e),
        }
        ControlFlow::Continue(())
    }

    fn on_connack(&self, l: &mut RunState, ack: &ConnAck) {
        l.acks.connected = true;
        l.acks.conn += 1;
        self.m.connections.inc();
        tracing::info!(pipeline = %self.pipeline.name(), url = %redact_url(&self.config.url), client_id = %self.client_id, session_present = ack.session_present, "MQTT connected");
        // A new session has no subscriptions (rumqttc does not restore them);
        // a resumed one keeps them, and subscribing again would resend retained
        // messages.
        if !ack.session_present {
            let filters = self.config.subscriptions.iter().map(|s| {
                Filter::new(
                    s.topic.clone(),
                    if s.qos == 0 {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    },
                )
            });
            if let Err(e) = l.client.try_subscribe_many(filters) {
                tracing::warn!(pipeline = %self.pipeline.name(), error = %e, "cannot queue the subscribe request");
            }
        }
    }

    fn on_suback(&self, ack: &SubAck) {
        for (s, code) in self.config.subscriptions.iter().zip(&ack.return_codes) {
            match code {
                SubscribeReasonCode::Success(q) => {
                    tracing::info!(pipeline = %self.pipeline.name(), filter = %s.topic, granted_qos = ?q, "subscribed")
                }
                other => {
                    self.m.connection_errors.inc();
                    tracing::error!(pipeline = %self.pipeline.name(), filter = %s.topic, reason = ?other, "the broker refused the subscription; check the filter and the broker's ACL");
                }
            }
        }
    }

    async fn on_publish(&self, l: &mut RunState, p: &Publish) {
        let Some(tx) = &l.to_pipeline else {
            return;
        };
        let (ev, wait) = self.event(p, l.acks.conn);
        if let Some(w) = wait {
            l.pending.push_back(w);
            self.m.inflight.set(l.pending.len() as i64);
        }
        // Waits only if the pipeline is `cap` events behind, which the
        // Receive Maximum prevents for QoS 1 (QoS 0 has no flow control).
        if tx.send(ev).await.is_err() {
            tracing::error!(pipeline = %self.pipeline.name(), "the pipeline task ended");
        }
    }

    /// Counts a failed connect or a lost connection and schedules the next connect (none
    /// while stopping); breaks when it is the end of a connection that said goodbye.
    fn on_connection_error(&self, l: &mut RunState, e: ConnectionError) -> ControlFlow<()> {
        if l.stopping && l.disconnect_sent {
            return ControlFlow::Break(());
        }
        if l.acks.connected {
            self.m.disconnections.inc();
        }
        self.m.connection_errors.inc();
        l.acks.connected = false;
        l.acks.conn += 1;
        match &e {
            ConnectionError::ConnectionRefused(code) => {
                tracing::error!(pipeline = %self.pipeline.name(), url = %redact_url(&self.config.url), client_id = %self.client_id, ?code, "the MQTT broker refused the connection; check username, password and client_id")
            }
            _ => {
                tracing::warn!(pipeline = %self.pipeline.name(), url = %redact_url(&self.config.url), error = %e, "MQTT connection failed")
            }
        }
        if l.stopping {
            // The unacked rest is resent to the next run.
            return ControlFlow::Continue(());
        }
        self.schedule_reconnect(l);
        ControlFlow::Continue(())
    }

    /// When to try again: full jitter in [backoff/2, backoff] so that gateways do not reconnect
    /// in step.
    fn jittered(&self, backoff: Duration) -> tokio::time::Instant {
        tokio::time::Instant::now() + super::jittered(backoff)
    }

    /// The event of a message, and what to wait for before acking it (none for QoS 0).
    fn event(&self, p: &Publish, conn: u64) -> (Event, Option<Pending>) {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        if let Some(i) = self
            .config
            .subscriptions
            .iter()
            .position(|s| filter_matches(&s.topic, &topic))
        {
            self.m.received[i].inc();
        } else {
            self.m.received_unmatched.inc();
        }
        let origin = Origin::now(self.pipeline.name().clone(), Arc::from(topic.as_str()));
        let payload = Bytes::clone(&p.payload);
        let (mut ev, wait) = if p.qos == QoS::AtMostOnce {
            (Event::new(payload, origin), None)
        } else {
            let (ev, rx) = Event::with_ack(payload, origin);
            (
                ev,
                Some(Pending {
                    pkid: p.pkid,
                    qos: p.qos,
                    conn,
                    fate: rx,
                }),
            )
        };
        let qos = match p.qos {
            QoS::AtMostOnce => "0",
            QoS::AtLeastOnce => "1",
            QoS::ExactlyOnce => "2",
        };
        publish_meta(&mut ev.meta, topic, qos, p.retain);
        if let Some(props) = &p.properties {
            ev.headers = props
                .user_properties
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect();
        }
        (ev, wait)
    }

    /// Queues the ack of a settled message when Kafka holds it and its connection is still
    /// the current one.
    fn settle(&self, p: Pending, fate: Fate, st: &mut AckState) {
        if !fate.is_persisted() {
            // Not acked: the broker keeps it and resends it on the next connection.
            self.m.unacked_not_persisted.inc();
            tracing::warn!(pipeline = %self.pipeline.name(), ?fate, "not acking an MQTT message that Kafka does not hold; the broker will resend it");
            st.want_redelivery = true;
            return;
        }
        if p.conn != st.conn || !st.connected {
            // Its connection is gone; the broker resends it (a duplicate in Kafka).
            self.m.unacked_reconnected.inc();
            return;
        }
        st.outbox.push_back((p.pkid, p.qos, p.conn));
    }

    /// Hands queued acks to the event loop while its request channel has room (it drains as
    /// the loop is polled); says whether any went.
    fn flush_acks(&self, client: &AsyncClient, st: &mut AckState) -> bool {
        let mut sent = false;
        while let Some(&(pkid, qos, c)) = st.outbox.front() {
            if c != st.conn || !st.connected {
                st.outbox.pop_front();
                self.m.unacked_reconnected.inc();
                continue;
            }
            let mut ack = Publish::new("", qos, Bytes::new(), None);
            ack.pkid = pkid;
            if client.try_ack(&ack).is_err() {
                break;
            }
            st.outbox.pop_front();
            self.m.acks.inc();
            sent = true;
        }
        sent
    }
}

/// What decides whether and where an ack goes.
struct AckState {
    /// The current connection's number; bumped on every connect and disconnect.
    conn: u64,
    connected: bool,
    /// Acks in arrival order, waiting for room in the event loop's request channel.
    outbox: VecDeque<(u16, QoS, u64)>,
    /// A fate was not persisted: reconnect so that the broker resends.
    want_redelivery: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884").unwrap(),
            BrokerAddr {
                host: "127.0.0.1".into(),
                port: 1884,
                tls: false
            }
        );
        assert_eq!(parse_url("mqtts://b.example").unwrap().port, 8883);
        assert!(parse_url("mqtts://b.example").unwrap().tls);
        assert_eq!(parse_url("mqtt://[::1]:1883").unwrap().host, "::1");
        assert!(parse_url("http://x:1883")
            .unwrap_err()
            .contains("scheme `http`"));
        assert!(parse_url("mqtt://x:port").is_err());
        assert!(parse_url("mqtt://u:p@x:1883").is_err());
        assert!(parse_url("mqtt://x:1883/devices").is_err());
        assert!(parse_url("mqtt://").is_err());
        assert!(parse_url("127.0.0.1:1883").is_err());
    }

    #[test]
    fn filters() {
        assert!(check_filter("devices/+/telemetry").is_ok());
        assert!(check_filter("devices/#").is_ok());
        assert!(check_filter("#").is_ok());
        assert!(check_filter("$share/kgate/devices/+/telemetry").is_ok());
        assert!(check_filter("devices/#/x").is_err());
        assert!(check_filter("devices/a+").is_err());
        assert!(check_filter("").is_err());
        assert!(check_filter("$share/g").is_err());

        assert!(filter_matches(
            "devices/+/telemetry",
            "devices/d1/telemetry"
        ));
        assert!(!filter_matches("devices/+/telemetry", "devices/d1/status"));
        assert!(!filter_matches(
            "devices/+/telemetry",
            "devices/d1/telemetry/x"
        ));
        assert!(filter_matches("devices/#", "devices"));
        assert!(filter_matches("devices/#", "devices/a/b"));
        assert!(filter_matches("$share/g/devices/+", "devices/a"));
        assert!(!filter_matches("#", "$SYS/broker/uptime"));
        assert!(filter_matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(filter_matches("a//b", "a//b"));
    }

    #[test]
    fn tls_errors_name_the_file_and_keep_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let bad = bad.to_str().unwrap();
        let text = |ca: Option<&str>, cert: Option<&str>, key: Option<&str>| {
            let files = MqttTlsConfig {
                ca_file: ca.map(String::from),
                cert_file: cert.map(String::from),
                key_file: key.map(String::from),
            };
            with_causes(&tls_config(Some(&files)).unwrap_err())
        };
        let missing = text(Some("/nonexistent/ca.pem"), None, None);
        assert!(
            missing.starts_with("cannot read CA file /nonexistent/ca.pem: ")
                && missing.contains("(os error 2)"),
            "{missing}"
        );
        let garbled = text(Some(bad), None, None);
        assert!(
            garbled.starts_with(&format!("bad certificate in {bad}: ")),
            "{garbled}"
        );
        let no_cert = text(None, Some("/nonexistent/c.pem"), Some(bad));
        assert!(
            no_cert.starts_with("cannot read certificate file /nonexistent/c.pem: "),
            "{no_cert}"
        );
    }

    fn load(text: &str) -> Result<crate::gateway::Config, crate::config::ConfigErrors> {
        crate::gateway::Config::from_yaml_str(text, "kgate.yaml", &|_| None)
    }

    #[test]
    fn config_defaults_and_errors_with_paths() {
        let c = load("pipelines:\n  - name: iot\n    source: {mqtt: {url: 'mqtt://127.0.0.1:1883', subscriptions: [{topic: 'devices/+/telemetry'}]}}\n    topic: telemetry.raw\n    key: '${@topic.1}'\n").unwrap();
        let crate::source::SourceConfig::Mqtt(m) = &c.pipelines[0].source else {
            panic!("mqtt source expected")
        };
        assert_eq!(m.subscriptions[0].qos, 1);
        assert!(!m.clean_session);
        assert_eq!(m.max_inflight, 1000);
        assert_eq!(m.keep_alive, Duration::from_secs(30));

        let e = load("pipelines:\n  - name: a\n    source: {mqtt: {url: 'http://h:1883', subscriptions: [{topic: 'a/#/b', qos: 3}, {topic: x, qos: 2}], tls: {ca_file: /nope.pem}, keep_alive: 1s, max_inflight: 0, clientid: x}}\n    topic: t\n  - name: b\n    source: {mqtt: {url: 'mqtt://h', subscriptions: []}}\n    topic: t\n").unwrap_err();
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "pipelines[0].source.mqtt.clientid",
            "pipelines[0].source.mqtt.url",
            "pipelines[0].source.mqtt.subscriptions[0].topic",
            "pipelines[0].source.mqtt.subscriptions[0].qos",
            "pipelines[0].source.mqtt.subscriptions[1].qos",
            "pipelines[0].source.mqtt.tls.ca_file",
            "pipelines[0].source.mqtt.keep_alive",
            "pipelines[0].source.mqtt.max_inflight",
            "pipelines[1].source.mqtt.subscriptions",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}\n{e}");
        }
        let text = e.to_string();
        assert!(text.contains("QoS 3 does not exist"), "{text}");
        assert!(text.contains("QoS 2 is not supported"), "{text}");
        assert!(text.contains("scheme `http` is not MQTT"), "{text}");
    }

    #[test]
    fn raw_payloads_are_keyed_and_routed_by_topic_segments() {
        let c = load("pipelines:\n  - name: iot\n    source: {mqtt: {url: 'mqtt://h', subscriptions: [{topic: 'devices/+/+'}]}}\n    topic: 'iot.${@topic.2}'\n    key: '${@topic.1}'\n    headers: {qos: '${@qos}'}\n    format: raw\n").unwrap();
        let p = crate::pipeline::Processor::new(&c.pipelines[0]).unwrap();
        let meta = crate::transform::Meta::empty()
            .with("topic.1", "d7")
            .with("topic.2", "telemetry")
            .with("qos", "1");
        let r = p
            .process(&Bytes::from_static(b"\x01\x02binary"), &meta)
            .unwrap();
        assert_eq!(&*r.topic, "iot.telemetry");
        assert_eq!(r.key.as_deref(), Some(&b"d7"[..]));
        assert_eq!(&r.value[..], b"\x01\x02binary");
        assert_eq!(r.headers, vec![("qos".to_string(), b"1".to_vec())]);
    }
}
