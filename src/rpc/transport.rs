//! The AMQP connection, kept alive across broker loss.
//!
//! One supervisor task owns the connection: it connects to the brokers of the
//! transport URL in turn (failover), declares every registered exchange, queue
//! and binding, starts every registered consumer, and when the connection
//! breaks (broker restart, missed heartbeats, a closed channel) starts over with
//! a bounded backoff. Callers only register what they need once; it is
//! re-declared on every new connection, as oslo.messaging does.
//!
//! Consumed messages are acknowledged on receipt, before they are handled:
//! that is oslo's at-most-once contract for RPC servers (a crash loses the
//! request; Nova's start-up recovery copes). Duplicates from redelivery are
//! filtered by the RPC layer on `_unique_id`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event, ExchangeKind};
use tokio::sync::{Mutex, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::topology::{ArgValue, Declaration};
use crate::config::{BrokerAddress, LoginMethod, RabbitTls};

/// Connection settings.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// The RabbitMQ servers from `transport_url`, tried in turn on failover.
    pub brokers: Vec<BrokerAddress>,
    /// Negotiated AMQP heartbeat in seconds (0 disables).
    pub heartbeat: u16,
    /// First delay before reconnecting (`rabbit_retry_interval`).
    pub retry_interval: Duration,
    /// Added to the delay at each further attempt (`rabbit_retry_backoff`).
    pub retry_backoff: Duration,
    /// Upper bound on the reconnect delay (`rabbit_interval_max`).
    pub interval_max: Duration,
    /// Bound on one connection attempt.
    pub connect_timeout: Duration,
    /// basic.qos prefetch per consumer; 0 (oslo's "unlimited") is taken as
    /// [`DEFAULT_PREFETCH`], see [`effective_prefetch`].
    pub prefetch: u16,
    /// Shown by `rabbitmqctl list_connections`.
    pub connection_name: String,
    /// SASL mechanism (`rabbit_login_method`).
    pub login_method: LoginMethod,
    /// CA and client certificate for brokers reached over TLS.
    pub tls: RabbitTls,
}

/// The prefetch count used when the configuration says 0 (unlimited).
///
/// kombu leaves deliveries it has not read yet in the socket, so oslo's
/// unlimited prefetch is bounded by TCP flow control; lapin reads every
/// delivery off the socket into memory as soon as it arrives. Without a
/// prefetch count a flood in the queue would all be held in this process.
/// With one, a consumer holds at most this many deliveries (each at most
/// RabbitMQ's `max_message_size`) besides the one it is handing on.
pub const DEFAULT_PREFETCH: u16 = 16;

/// The basic.qos prefetch count a consumer asks for.
pub fn effective_prefetch(configured: u16) -> u16 {
    if configured == 0 { DEFAULT_PREFETCH } else { configured }
}

/// A message taken from a queue (already acknowledged).
#[derive(Debug)]
pub struct Incoming {
    /// The queue it was consumed from.
    pub queue: String,
    /// The key it was published with (the topic, or topic.server).
    pub routing_key: String,
    /// The broker delivered it before, to a consumer that did not acknowledge;
    /// logged so a duplicate can be recognised.
    pub redelivered: bool,
    /// The raw message body (an oslo envelope).
    pub body: Vec<u8>,
    /// When the broker's delivery was read off the connection: the start of
    /// the server's own part of a call (`nova_docker_rpc_server_seconds`).
    pub received: std::time::Instant,
}

/// What the broker said about a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Routed and confirmed.
    Confirmed,
    /// Mandatory message with no queue to route to (basic.return).
    Returned,
    /// The broker refused it (basic.nack).
    Nacked,
}

/// AMQP properties that vary per message.
#[derive(Debug, Clone, Default)]
pub struct PublishProps {
    /// Per-message TTL in milliseconds (calls use the RPC timeout).
    pub expiration_ms: Option<u64>,
    /// Ask the broker to return the message if no queue takes it.
    pub mandatory: bool,
}

/// Transport failures.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No broker connection came up in time; the message was not sent.
    #[error("no connection to RabbitMQ within {0:?}")]
    NotConnected(Duration),
    /// The broker did not confirm the publish: it may or may not have been
    /// routed, so the caller must not assume either.
    #[error("message may not have reached RabbitMQ: {0}")]
    Unconfirmed(String),
    /// The AMQP client failed.
    #[error("AMQP error: {0}")]
    Amqp(#[from] lapin::Error),
    /// The transport was shut down; nothing more can be sent.
    #[error("the transport is shut down")]
    Closed,
}

struct ConsumerSpec {
    queue: String,
    tx: mpsc::Sender<Incoming>,
    max_bytes: usize,
    stop: CancellationToken,
}

#[derive(Default)]
struct Registry {
    declarations: Vec<Declaration>,
    consumers: Vec<ConsumerSpec>,
}

struct Session {
    broker: BrokerAddress,
    connection: Connection,
    publish: Channel,
    declare: Mutex<Channel>,
    broken: CancellationToken,
}

struct Inner {
    opts: TransportOptions,
    session: watch::Sender<Option<Arc<Session>>>,
    /// Held while a session is being set up and while registering, so nothing
    /// registered can miss a session.
    registry: Mutex<Registry>,
    shutdown: CancellationToken,
    connects: AtomicU64,
    supervisor: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Why the last connection attempt failed (for `check` and logs).
    last_connect_error: std::sync::Mutex<Option<String>>,
}

/// A self-healing AMQP connection shared by the RPC server and client.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    /// Starts the supervisor; it connects in the background.
    pub fn start(opts: TransportOptions) -> Self {
        let (session, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            opts,
            session,
            registry: Mutex::new(Registry::default()),
            shutdown: CancellationToken::new(),
            connects: AtomicU64::new(0),
            supervisor: std::sync::Mutex::new(None),
            last_connect_error: std::sync::Mutex::new(None),
        });
        let handle = tokio::spawn(supervise(inner.clone()));
        *inner.supervisor.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Transport { inner }
    }

    /// Why the last attempt to connect failed, if it did.
    pub fn last_connect_error(&self) -> Option<String> {
        self.inner.last_connect_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner.session.borrow().as_ref().is_some_and(|s| !s.broken.is_cancelled())
    }

    /// The broker the connection is up to right now, if any.
    pub fn connected_broker(&self) -> Option<BrokerAddress> {
        self.inner.session.borrow().as_ref().filter(|s| !s.broken.is_cancelled()).map(|s| s.broker.clone())
    }

    /// How many connections were established so far (1 + reconnections).
    pub fn connection_count(&self) -> u64 {
        self.inner.connects.load(Ordering::Relaxed)
    }

    /// Waits until connected, up to `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), TransportError> {
        self.current_session(timeout).await.map(|_| ())
    }

    async fn current_session(&self, timeout: Duration) -> Result<Arc<Session>, TransportError> {
        let mut rx = self.inner.session.subscribe();
        let wait = async {
            loop {
                if let Some(s) = rx.borrow_and_update().as_ref()
                    && !s.broken.is_cancelled()
                {
                    return Ok(s.clone());
                }
                if self.inner.shutdown.is_cancelled() {
                    return Err(TransportError::Closed);
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return Err(TransportError::Closed) },
                    _ = self.inner.shutdown.cancelled() => return Err(TransportError::Closed),
                    // A session marked broken is replaced; poll for that.
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| TransportError::NotConnected(timeout))?
    }

    /// Registers declarations (kept for every future connection) and applies
    /// them now when connected.
    pub async fn declare(&self, decls: Vec<Declaration>) -> Result<(), TransportError> {
        let mut registry = self.inner.registry.lock().await;
        for d in &decls {
            if !registry.declarations.contains(d) {
                registry.declarations.push(d.clone());
            }
        }
        let session = self.inner.session.borrow().clone();
        if let Some(session) = session.filter(|s| !s.broken.is_cancelled())
            && let Err(e) = apply_declarations(&session, &decls).await
        {
            session.broken.cancel();
            return Err(e.into());
        }
        Ok(())
    }

    /// Registers a consumer of `queue` (restarted on every new connection) and
    /// starts it now when connected. Messages arrive acknowledged on `tx`;
    /// bodies larger than `max_bytes` are acknowledged, logged and dropped as
    /// they arrive, before they wait anywhere.
    /// Nothing to fail: a consumer that cannot start on this connection
    /// marks it broken, and the next one starts it with the others.
    pub async fn consume(&self, queue: &str, tx: mpsc::Sender<Incoming>, max_bytes: usize) {
        let mut registry = self.inner.registry.lock().await;
        let stop = self.inner.shutdown.child_token();
        registry.consumers.push(ConsumerSpec {
            queue: queue.to_string(),
            tx: tx.clone(),
            max_bytes,
            stop: stop.clone(),
        });
        let session = self.inner.session.borrow().clone();
        if let Some(session) = session.filter(|s| !s.broken.is_cancelled())
            && let Err(e) = start_consumer(&session, queue, tx, stop, self.inner.opts.prefetch, max_bytes).await
        {
            tracing::warn!(queue, error = %e, "could not start consuming; reconnecting to start it");
            session.broken.cancel();
        }
    }

    /// Stops re-declaring and deletes a queue (oslo deletes its fanout queues
    /// on shutdown). Best effort.
    pub async fn delete_queue(&self, queue: &str) {
        let mut registry = self.inner.registry.lock().await;
        registry.consumers.retain(|c| c.queue != queue);
        registry.declarations.retain(|d| !matches!(d, Declaration::Queue(q) if q.name == queue));
        registry.declarations.retain(|d| !matches!(d, Declaration::Binding(b) if b.queue == queue));
        let session = self.inner.session.borrow().clone();
        if let Some(session) = session {
            let mut channel = session.declare.lock().await;
            let deleted = tokio::time::timeout(
                Duration::from_secs(5),
                channel.queue_delete(queue.into(), QueueDeleteOptions::default()),
            )
            .await;
            // A refusal closes the channel: later declarations need a new one.
            if matches!(deleted, Ok(Err(_)))
                && let Ok(fresh) = session.connection.create_channel().await
            {
                *channel = fresh;
            }
        }
    }

    /// Stops consuming `queue`, now and on future connections; the queue and
    /// what it holds stay for the next consumer (graceful shutdown).
    pub async fn stop_consuming(&self, queue: &str) {
        let mut registry = self.inner.registry.lock().await;
        registry.consumers.retain(|c| {
            if c.queue == queue {
                c.stop.cancel();
                false
            } else {
                true
            }
        });
    }

    /// Publishes one message with publisher confirms. Retries only when the
    /// message provably did not leave (no connection, publish refused locally),
    /// never after it may have reached the broker, so nothing is sent twice.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: PublishProps,
        timeout: Duration,
    ) -> Result<PublishOutcome, TransportError> {
        self.publish_timed(exchange, routing_key, body, props, timeout).await.map(|(outcome, _)| outcome)
    }

    /// [`Transport::publish`], also saying when the message was handed to
    /// the connection (its frames queued for the socket), before the
    /// broker's confirm: the server's own part of a call ends there.
    pub async fn publish_timed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: PublishProps,
        timeout: Duration,
    ) -> Result<(PublishOutcome, std::time::Instant), TransportError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let session = self.current_session(remaining).await?;
            let mut properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_content_encoding("utf-8".into())
                .with_delivery_mode(2)
                .with_priority(0)
                .with_headers(FieldTable::default());
            if let Some(ms) = props.expiration_ms {
                properties = properties.with_expiration(ms.to_string().into());
            }
            let sent = session
                .publish
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions { mandatory: props.mandatory, immediate: false },
                    body,
                    properties,
                )
                .await;
            let published = std::time::Instant::now();
            let confirm = match sent {
                Ok(confirm) => confirm,
                Err(e) => {
                    tracing::warn!(error = %e, "publish failed before sending; will retry on a new connection");
                    session.broken.cancel();
                    if tokio::time::Instant::now() >= deadline {
                        return Err(TransportError::Amqp(e));
                    }
                    continue;
                }
            };
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            return match tokio::time::timeout(remaining.max(Duration::from_secs(1)), confirm).await {
                Ok(Ok(Confirmation::Ack(None))) | Ok(Ok(Confirmation::NotRequested)) => {
                    Ok((PublishOutcome::Confirmed, published))
                }
                Ok(Ok(Confirmation::Ack(Some(_)))) => Ok((PublishOutcome::Returned, published)),
                Ok(Ok(Confirmation::Nack(_))) => Ok((PublishOutcome::Nacked, published)),
                Ok(Err(e)) => {
                    session.broken.cancel();
                    Err(TransportError::Unconfirmed(e.to_string()))
                }
                Err(_) => Err(TransportError::Unconfirmed("no publisher confirm in time".into())),
            };
        }
    }

    /// Closes the connection and stops reconnecting; the supervisor closes
    /// the connection once, gracefully.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        let handle = self.inner.supervisor.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
    }
}

/// lapin's TLS settings from the `ssl_*_file` options: the CA is trusted
/// besides the system's roots; the broker's name is always verified.
fn tls_config(tls: &RabbitTls) -> OwnedTLSConfig {
    OwnedTLSConfig {
        identity: tls
            .client_identity
            .as_ref()
            .map(|(pem, key)| OwnedIdentity::PKCS8 { pem: pem.clone(), key: key.clone() }),
        cert_chain: tls.ca_pem.clone(),
    }
}

/// One line saying why a connection attempt failed, naming the likely cause
/// for the failures an operator meets with TLS and logins.
pub fn explain_connect_error(broker: &BrokerAddress, with_client_certificate: bool, error: &str) -> String {
    let e = error.to_ascii_lowercase();
    let cause = if e.contains("invalid peer certificate") || e.contains("unknownissuer") {
        // rustls judged the broker's certificate
        Some(if e.contains("unknownissuer") {
            "the broker's certificate is not signed by a trusted CA (check [oslo_messaging_rabbit] ssl_ca_file)"
        } else if e.contains("expired") {
            "the broker's certificate has expired"
        } else if e.contains("notvalidforname") {
            "the broker's certificate does not name the host written in transport_url"
        } else {
            "the broker's certificate is not valid"
        })
    } else if e.contains("received fatal alert") {
        // the broker aborted the handshake, mostly over our certificate
        Some(if e.contains("certificateexpired") {
            "the broker refused our client certificate: it has expired (ssl_cert_file)"
        } else if e.contains("unknownca") || e.contains("badcertificate") || e.contains("certificateunknown") {
            "the broker refused our client certificate: not signed by a CA it trusts (ssl_cert_file)"
        } else if e.contains("certificaterequired") {
            "the broker requires a client certificate (set ssl_cert_file and ssl_key_file)"
        } else {
            "the broker aborted the TLS handshake"
        })
    } else if e.contains("access_refused") || e.contains("access-refused") || e.contains("authentication") {
        Some("the broker refused the login (user/password in transport_url, or rabbit_login_method)")
    } else if broker.tls
        && with_client_certificate
        && (e.contains("reset by peer") || e.contains("eof") || e.contains("broken pipe"))
    {
        Some(
            "the broker closed the connection after the TLS handshake: it refused our client certificate \
             (expired, or not signed by a CA it trusts?)",
        )
    } else if !broker.tls && (e.contains("parsing error") || e.contains("failed to parse")) {
        Some("the answer is not AMQP (a TLS listener? then use amqps:// or ssl = true)")
    } else if !broker.tls && e.contains("reset by peer") {
        Some("the broker reset the connection before AMQP began (a TLS listener? then use amqps:// or ssl = true)")
    } else if broker.tls
        && (e.contains("handshake") || e.contains("corrupt message") || e.contains("invalidcontenttype"))
    {
        Some("TLS handshake failed (is this port a TLS listener?)")
    } else {
        None
    };
    match cause {
        Some(c) => format!("{broker}: {c}: {error}"),
        None => format!("{broker}: {error}"),
    }
}

fn amqp_uri(broker: &BrokerAddress, heartbeat: u16, connect_timeout: Duration, login: LoginMethod) -> AMQPUri {
    // Built field by field: lapin's URI parser loses IPv6 hosts and turns an
    // empty vhost into "" (see crates.md §4).
    AMQPUri {
        scheme: if broker.tls { AMQPScheme::AMQPS } else { AMQPScheme::AMQP },
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo { username: broker.username.clone(), password: broker.password.clone() },
            host: broker.host.clone(),
            port: broker.port,
        },
        vhost: broker.vhost.clone(),
        query: AMQPQueryString {
            heartbeat: Some(heartbeat),
            connection_timeout: Some(connect_timeout.as_millis() as u64),
            auth_mechanism: Some(match login {
                LoginMethod::AmqPlain => SASLMechanism::AMQPlain,
                LoginMethod::Plain => SASLMechanism::Plain,
                LoginMethod::External => SASLMechanism::External,
            }),
            ..Default::default()
        },
    }
}

/// The delay before reconnection attempt `n` (0-based), oslo-style
/// (`interval + n * backoff`, capped).
pub fn reconnect_delay(opts: &TransportOptions, attempt: u32) -> Duration {
    let delay = opts.retry_interval + opts.retry_backoff * attempt;
    delay.min(opts.interval_max)
}

async fn supervise(inner: Arc<Inner>) {
    let brokers = inner.opts.brokers.clone();
    let mut index = (std::process::id() as usize) % brokers.len().max(1);
    let mut attempt: u32 = 0;
    while !inner.shutdown.is_cancelled() {
        let broker = &brokers[index % brokers.len()];
        index += 1;
        let uri = amqp_uri(broker, inner.opts.heartbeat, inner.opts.connect_timeout, inner.opts.login_method);
        let props = ConnectionProperties::default()
            .with_connection_name(inner.opts.connection_name.clone().into())
            .with_client_property("product".into(), "nova-docker".into());
        let connected = tokio::select! {
            r = tokio::time::timeout(inner.opts.connect_timeout, connect(uri, props, &inner.opts.tls)) => r,
            _ = inner.shutdown.cancelled() => break,
        };
        match connected {
            Ok(Ok(connection)) => match open_session(&inner, broker, connection).await {
                Ok(session) => {
                    attempt = 0;
                    let n = inner.connects.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::info!(broker = %broker, connection = n, "connected to RabbitMQ");
                    let broken = session.broken.clone();
                    broken.cancelled().await;
                    if !inner.shutdown.is_cancelled() {
                        tracing::warn!(broker = %broker, "lost the connection to RabbitMQ; reconnecting");
                    }
                    inner.session.send_if_modified(|s| {
                        if s.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, &session)) {
                            *s = None;
                            true
                        } else {
                            false
                        }
                    });
                    if session.connection.status().connected() {
                        let reason = if inner.shutdown.is_cancelled() { "shutdown" } else { "reconnect" };
                        let close = session.connection.close(200, reason.into());
                        let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
                    }
                    if inner.shutdown.is_cancelled() {
                        break;
                    }
                    // Reconnect at once after losing a working connection.
                    continue;
                }
                Err(e) => tracing::error!(broker = %broker, error = %e, "RabbitMQ setup failed"),
            },
            Ok(Err(e)) => {
                let why = explain_connect_error(broker, inner.opts.tls.client_identity.is_some(), &e.to_string());
                tracing::warn!("cannot connect to RabbitMQ: {why}");
                *inner.last_connect_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            }
            Err(_) => {
                tracing::warn!(broker = %broker, "connection attempt to RabbitMQ timed out");
                *inner.last_connect_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("{broker}: connection attempt timed out"));
            }
        }
        let delay = reconnect_delay(&inner.opts, attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = inner.shutdown.cancelled() => break,
        }
    }
}

async fn connect(uri: AMQPUri, props: ConnectionProperties, tls: &RabbitTls) -> Result<Connection, lapin::Error> {
    // The TLS settings are used only for amqps URIs: there is no fallback
    // from TLS to plain AMQP.
    Connection::connect_uri_with_config(uri, props, tls_config(tls), lapin::runtime::default_runtime()?).await
}

async fn open_session(
    inner: &Arc<Inner>,
    broker: &BrokerAddress,
    connection: Connection,
) -> Result<Arc<Session>, lapin::Error> {
    let broken = inner.shutdown.child_token();
    // Listen for connection errors from the start (lapin drops events nobody listens to).
    let mut events = connection.events_listener();
    {
        let broken = broken.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = events.next() => match ev {
                        // lapin reports a channel closed by the broker (a
                        // soft error: no such exchange, a refused flag) here
                        // too; the channel's owner sees it and recovers. Only
                        // the connection's own failures break the session.
                        Some(Event::Error(e)) if is_channel_error(&e) => {
                            tracing::debug!(error = %e, "RabbitMQ closed a channel");
                        }
                        Some(Event::Error(e)) => {
                            tracing::warn!(error = %e, "AMQP connection error");
                            broken.cancel();
                            return;
                        }
                        Some(Event::ConnectionBlocked(reason)) => tracing::warn!(%reason, "RabbitMQ blocked the connection"),
                        Some(Event::ConnectionUnblocked) => tracing::info!("RabbitMQ unblocked the connection"),
                        Some(_) => {}
                        None => { broken.cancel(); return; }
                    },
                    _ = broken.cancelled() => return,
                }
            }
        });
    }
    let publish = connection.create_channel().await?;
    publish.confirm_select(ConfirmSelectOptions::default()).await?;
    let declare = connection.create_channel().await?;
    let session =
        Arc::new(Session { broker: broker.clone(), connection, publish, declare: Mutex::new(declare), broken });
    let registry = inner.registry.lock().await;
    let setup = async {
        apply_declarations(&session, &registry.declarations).await?;
        for c in &registry.consumers {
            start_consumer(&session, &c.queue, c.tx.clone(), c.stop.clone(), inner.opts.prefetch, c.max_bytes).await?;
        }
        Ok::<_, lapin::Error>(())
    };
    if let Err(e) = setup.await {
        session.broken.cancel();
        return Err(e);
    }
    // Published while the registry is still locked: a declaration or
    // consumer registered from now on sees this session and is applied on
    // it, one registered before was applied above. (Published after the
    // lock, one registered in between reached neither, and a consumer of a
    // queue it declared met "no queue" from the broker.)
    inner.session.send_replace(Some(session.clone()));
    drop(registry);
    Ok(session)
}

fn field_table(args: &[(String, ArgValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        let value = match v {
            ArgValue::Int(i) => AMQPValue::LongLongInt(*i),
            ArgValue::Str(s) => AMQPValue::LongString(s.as_str().into()),
        };
        t.insert(ShortString::from(k.as_str()), value);
    }
    t
}

/// Whether an error closed only a channel (an AMQP soft error).
fn is_channel_error(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(p) if matches!(p.kind(), lapin::protocol::AMQPErrorKind::Soft(_)))
}

async fn apply_declarations(session: &Session, decls: &[Declaration]) -> Result<(), lapin::Error> {
    let mut channel = session.declare.lock().await;
    for d in decls {
        let result = declare_one(&channel, d).await;
        let Err(e) = result else { continue };
        let text = e.to_string();
        // oslo's fallback: an existing non-durable exchange wins over our flag.
        if let Declaration::Exchange(x) = d
            && text.contains("inequivalent arg 'durable'")
        {
            tracing::warn!(exchange = %x.name, "exchange exists with other durability; re-declaring as it is");
            *channel = session.connection.create_channel().await?;
            let mut x = x.clone();
            x.durable = !x.durable;
            declare_one(&channel, &Declaration::Exchange(x)).await?;
            continue;
        }
        // A fanout exchange is auto-deleted with its last binding: another
        // server's fanout queue going away between our exchange declaration
        // and our bind removes it (the bind then finds no exchange). Declare
        // it again and bind again, as kombu's retried declaration would.
        if let Declaration::Binding(b) = d
            && text.contains("NOT_FOUND - no exchange")
            && let Some(x) = decls.iter().find_map(|d| match d {
                Declaration::Exchange(x) if x.name == b.exchange => Some(x),
                _ => None,
            })
        {
            tracing::info!(exchange = %x.name, queue = %b.queue, "the exchange vanished before the bind; declaring it again");
            rebind(session, &mut channel, x, d).await?;
            continue;
        }
        if text.contains("PRECONDITION_FAILED") {
            tracing::error!(
                entity = ?d,
                error = %text,
                "RabbitMQ refused a declaration because the entity exists with other flags: \
                 make [oslo_messaging_rabbit] amqp_durable_queues, amqp_auto_delete, rabbit_ha_queues \
                 and rabbit_quorum_queue match the rest of the deployment"
            );
        }
        return Err(e);
    }
    Ok(())
}

/// How often a bind whose exchange vanished is tried again.
const REBIND_ATTEMPTS: u32 = 3;

/// Declares `exchange` again and retries the `binding` on a new channel (the
/// failed bind closed the old one), while the exchange keeps vanishing.
async fn rebind(
    session: &Session,
    channel: &mut Channel,
    exchange: &super::topology::ExchangeDecl,
    binding: &Declaration,
) -> Result<(), lapin::Error> {
    let mut attempt = 1;
    loop {
        *channel = session.connection.create_channel().await?;
        declare_one(channel, &Declaration::Exchange(exchange.clone())).await?;
        match declare_one(channel, binding).await {
            Err(e) if attempt < REBIND_ATTEMPTS && e.to_string().contains("NOT_FOUND - no exchange") => attempt += 1,
            other => return other,
        }
    }
}

async fn declare_one(channel: &Channel, d: &Declaration) -> Result<(), lapin::Error> {
    match d {
        Declaration::Exchange(x) => {
            let kind = match x.kind {
                super::topology::ExchangeKind::Topic => ExchangeKind::Topic,
                super::topology::ExchangeKind::Fanout => ExchangeKind::Fanout,
            };
            channel
                .exchange_declare(
                    x.name.as_str().into(),
                    kind,
                    ExchangeDeclareOptions { durable: x.durable, auto_delete: x.auto_delete, ..Default::default() },
                    FieldTable::default(),
                )
                .await
        }
        Declaration::Queue(q) => channel
            .queue_declare(
                q.name.as_str().into(),
                QueueDeclareOptions { durable: q.durable, auto_delete: q.auto_delete, ..Default::default() },
                field_table(&q.arguments),
            )
            .await
            .map(|_| ()),
        Declaration::Binding(b) => {
            channel
                .queue_bind(
                    b.queue.as_str().into(),
                    b.exchange.as_str().into(),
                    b.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        }
    }
}

async fn start_consumer(
    session: &Arc<Session>,
    queue: &str,
    tx: mpsc::Sender<Incoming>,
    stop: CancellationToken,
    prefetch: u16,
    max_bytes: usize,
) -> Result<(), lapin::Error> {
    let channel = session.connection.create_channel().await?;
    channel.basic_qos(effective_prefetch(prefetch), BasicQosOptions::default()).await?;
    let mut consumer =
        channel.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    let broken = session.broken.clone();
    let queue = queue.to_string();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                d = consumer.next() => d,
                _ = broken.cancelled() => return,
                _ = stop.cancelled() => {
                    // Unacked deliveries go back to the queue with the channel.
                    let _ = tokio::time::timeout(Duration::from_secs(5), channel.close(200, "stop consuming".into())).await;
                    return;
                }
            };
            match next {
                Some(Ok(delivery)) => {
                    let received = std::time::Instant::now();
                    // Ack first (oslo's at-most-once RPC semantics).
                    match delivery.acker.ack(BasicAckOptions::default()).await {
                        Ok(true) => {}
                        Ok(false) => {
                            // Stale delivery tag after a reconnect: the broker will
                            // redeliver; dedup by _unique_id handles it.
                            tracing::debug!(queue = %queue, "ack was a no-op (stale channel)");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(queue = %queue, error = %e, "ack failed; message discarded as oslo does");
                            broken.cancel();
                            return;
                        }
                    }
                    if delivery.data.len() > max_bytes {
                        tracing::warn!(queue = %queue, bytes = delivery.data.len(), limit = max_bytes,
                            "dropped a message larger than the limit");
                        crate::metrics::global().inc(
                            "nova_docker_rpc_requests_total",
                            &[("method", crate::metrics::UNKNOWN), ("outcome", "malformed")],
                        );
                        continue;
                    }
                    let incoming = Incoming {
                        queue: queue.clone(),
                        routing_key: delivery.routing_key.to_string(),
                        redelivered: delivery.redelivered,
                        body: delivery.data,
                        received,
                    };
                    if tx.send(incoming).await.is_err() {
                        // Nobody listens any more (shutdown); drop quietly.
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(queue = %queue, error = %e, "consumer failed");
                    broken.cancel();
                    return;
                }
                None => {
                    tracing::warn!(queue = %queue, "consumer cancelled by the broker");
                    broken.cancel();
                    return;
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> TransportOptions {
        TransportOptions {
            brokers: vec![],
            heartbeat: 60,
            retry_interval: Duration::from_secs(1),
            retry_backoff: Duration::from_secs(1),
            interval_max: Duration::from_secs(4),
            connect_timeout: Duration::from_secs(5),
            prefetch: 0,
            connection_name: "t".into(),
            login_method: LoginMethod::AmqPlain,
            tls: RabbitTls::default(),
        }
    }

    #[test]
    fn connect_errors_name_their_cause() {
        let b = BrokerAddress {
            host: "127.0.0.1".into(),
            port: 5671,
            username: "u".into(),
            password: "secret".into(),
            vhost: "/".into(),
            tls: true,
        };
        let cases = [
            ("IO error: invalid peer certificate: UnknownIssuer", "not signed by a trusted CA"),
            ("IO error: invalid peer certificate: Expired", "broker's certificate has expired"),
            ("IO error: invalid peer certificate: NotValidForName", "does not name the host"),
            ("IO error: received fatal alert: UnknownCA", "refused our client certificate: not signed"),
            ("IO error: received fatal alert: CertificateExpired", "refused our client certificate: it has expired"),
            ("ACCESS_REFUSED - Login was refused", "refused the login"),
            ("IO error: Connection reset by peer (os error 104)", "closed the connection after the TLS handshake"),
        ];
        for (error, cause) in cases {
            let line = explain_connect_error(&b, true, error);
            assert!(line.contains(cause) && line.ends_with(error) && !line.contains("secret"), "{line}");
        }
        assert!(!explain_connect_error(&b, false, "IO error: Connection reset by peer").contains("certificate"));
        let plain = BrokerAddress { tls: false, ..b };
        assert!(explain_connect_error(&plain, false, "IO error: Connection reset by peer").contains("a TLS listener?"));
    }

    #[test]
    fn unlimited_prefetch_is_bounded_here() {
        assert_eq!(effective_prefetch(0), DEFAULT_PREFETCH);
        assert_eq!(effective_prefetch(3), 3);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let o = opts();
        let d: Vec<u64> = (0..6).map(|a| reconnect_delay(&o, a).as_secs()).collect();
        assert_eq!(d, [1, 2, 3, 4, 4, 4]);
    }

    #[test]
    fn uri_keeps_ipv6_hosts_and_slash_vhost() {
        let b = BrokerAddress {
            host: "fd00::5".into(),
            port: 5672,
            username: "u".into(),
            password: "p".into(),
            vhost: "/".into(),
            tls: false,
        };
        let uri = amqp_uri(&b, 30, Duration::from_secs(5), LoginMethod::External);
        assert_eq!(uri.authority.host, "fd00::5");
        assert_eq!(uri.vhost, "/");
        assert_eq!(uri.query.heartbeat, Some(30));
        assert_eq!(uri.query.auth_mechanism, Some(SASLMechanism::External));
    }
}
