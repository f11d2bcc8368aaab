//! The RPC server: what an oslo.messaging `RPCServer` does for a target
//! `(topic, server)`, for one or more topics (`compute`, and `compute-alt`
//! since Nova 2026.1).
//!
//! Messages are read in arrival order; each is opened, checked for duplicates
//! and routed in order, then handled concurrently (bounded like oslo's worker
//! pool). Calls are answered on `_reply_q` through the default exchange, with
//! call-monitor heartbeats (`ending: false`) every `_timeout / 2` seconds while
//! the handler runs. Nothing a sender can put in a message stops the server:
//! unreadable messages are logged and dropped, and calls that can still be
//! answered get a failure reply.
//!
//! What a flood of messages can hold at once is bounded: the broker delivers
//! at most the prefetch count per consumer (see `transport`), bodies over
//! `max_message_bytes` are dropped as they arrive, [`ADMISSION_QUEUE`] opened
//! messages wait for a worker, and `concurrency` are handled. A reply whose
//! queue does not exist waits for it (oslo's
//! `kombu_missing_consumer_retry_timeout`) after the worker was given back,
//! and only `concurrency` replies wait at once; the others are tried once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::dedup::SeenIds;
use super::dispatcher::{CallResult, Dispatcher, Invocation};
use super::envelope::{self, ReplyTo, Request};
use super::failure::RemoteError;
use super::topology::Topology;
use super::transport::{Incoming, PublishOutcome, PublishProps, Transport, TransportError};
use crate::metrics;

/// How many reply queues found missing are remembered (oslo: 200).
const OBSOLETE_REPLY_QUEUES: usize = 200;

/// How long a reply queue found missing is skipped.
const OBSOLETE_REPLY_QUEUE_TTL: Duration = Duration::from_secs(60);

/// How many opened messages wait between the consumers and the workers: a
/// bound in count, and with `max_message_bytes` a bound in bytes.
const ADMISSION_QUEUE: usize = 8;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Topics served, e.g. `["compute", "compute-alt"]`.
    pub topics: Vec<String>,
    /// The server name (`[DEFAULT] host`).
    pub server: String,
    /// Larger messages are dropped unparsed (`[docker] rpc_max_message_bytes`).
    pub max_message_bytes: usize,
    /// Requests handled at once.
    pub concurrency: usize,
    /// How long a reply keeps being retried while the reply queue is missing.
    pub missing_consumer_retry_timeout: Duration,
    /// How long in-flight requests get at shutdown.
    pub drain_timeout: Duration,
}

/// A running RPC server.
pub struct RpcServer {
    transport: Transport,
    topology: Topology,
    dispatcher: Dispatcher,
    opts: ServerOptions,
    seen: SeenIds,
    fanout_id: String,
    /// Reply queues found missing, skipped for a while (oslo's ObsoleteReplyQueuesCache).
    obsolete_reply_queues: Mutex<HashMap<String, Instant>>,
    /// Replies allowed to wait for a missing reply queue at once.
    reply_waits: Arc<Semaphore>,
    /// Every request's task, reply included: a shutdown waits for them.
    tasks: TaskTracker,
    queues: Mutex<Vec<String>>,
    topics: Mutex<Vec<String>>,
    tx: mpsc::Sender<Incoming>,
    rx: Mutex<Option<mpsc::Receiver<Incoming>>>,
    consuming: std::sync::atomic::AtomicBool,
}

impl RpcServer {
    /// A server for `opts.topics` on `opts.server`.
    pub fn new(transport: Transport, topology: Topology, dispatcher: Dispatcher, opts: ServerOptions) -> Arc<Self> {
        let (tx, rx) = mpsc::channel::<Incoming>(ADMISSION_QUEUE);
        let reply_waits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
        Arc::new(RpcServer {
            topics: Mutex::new(opts.topics.clone()),
            tx,
            rx: Mutex::new(Some(rx)),
            consuming: std::sync::atomic::AtomicBool::new(false),
            transport,
            topology,
            dispatcher,
            opts,
            seen: SeenIds::new(1024),
            fanout_id: envelope::new_id(),
            obsolete_reply_queues: Mutex::new(HashMap::new()),
            reply_waits,
            tasks: TaskTracker::new(),
            queues: Mutex::new(Vec::new()),
        })
    }

    /// Declares the exchanges, queues and bindings of every topic (so casts
    /// already queue up) without consuming yet. Returns the queue names.
    pub async fn declare(&self) -> Result<Vec<String>, TransportError> {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut names = Vec::new();
        for topic in &topics {
            let (decls, queues) = self.topology.rpc_server(topic, &self.opts.server, &self.fanout_id);
            self.transport.declare(decls).await?;
            names.extend(queues);
        }
        *self.queues.lock().unwrap_or_else(|p| p.into_inner()) = names.clone();
        Ok(names)
    }

    /// Serves one more topic (e.g. `compute-alt` once the release is known):
    /// declares its queues and, when running, consumes them too.
    pub async fn add_topic(&self, topic: &str) -> Result<(), TransportError> {
        {
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            if topics.iter().any(|t| t == topic) {
                return Ok(());
            }
            topics.push(topic.to_string());
        }
        let (decls, queues) = self.topology.rpc_server(topic, &self.opts.server, &self.fanout_id);
        self.transport.declare(decls).await?;
        self.queues.lock().unwrap_or_else(|p| p.into_inner()).extend(queues.iter().cloned());
        if self.consuming.load(std::sync::atomic::Ordering::SeqCst) {
            for q in &queues {
                self.transport.consume(q, self.tx.clone(), self.opts.max_message_bytes).await;
            }
        }
        Ok(())
    }

    /// Consumes and handles requests until `shutdown`; then stops consuming,
    /// lets in-flight requests finish (bounded by `drain_timeout`) and deletes
    /// the fanout queues.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), TransportError> {
        let queues = {
            let q = self.queues.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if q.is_empty() { self.declare().await? } else { q }
        };
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(());
        };
        self.consuming.store(true, std::sync::atomic::Ordering::SeqCst);
        for q in &queues {
            self.transport.consume(q, self.tx.clone(), self.opts.max_message_bytes).await;
        }
        tracing::info!(queues = ?queues, "RPC server consuming");
        let permits = Arc::new(Semaphore::new(self.opts.concurrency.max(1)));
        loop {
            let incoming = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => break },
                _ = shutdown.cancelled() => break,
            };
            let Some((request, span)) = self.admit(&incoming) else { continue };
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.cancelled() => break,
            };
            let server = self.clone();
            self.tasks.spawn(server.handle(request, incoming.received, permit).instrument(span));
        }
        self.consuming.store(false, std::sync::atomic::Ordering::SeqCst);
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for q in &queues {
            self.transport.stop_consuming(q).await;
        }
        let all = self.opts.concurrency.max(1) as u32;
        let deadline = tokio::time::Instant::now() + self.opts.drain_timeout;
        if tokio::time::timeout_at(deadline, permits.acquire_many(all)).await.is_err() {
            tracing::warn!("in-flight RPC requests did not finish within {:?}", self.opts.drain_timeout);
        }
        // Their replies are sent after the worker is given back: wait for
        // those too, within the same bound.
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait()).await.is_err() {
            tracing::warn!("replies still unsent after {:?}", self.opts.drain_timeout);
        }
        for q in queues.iter().filter(|q| q.contains("_fanout_")) {
            self.transport.delete_queue(q).await;
        }
        Ok(())
    }

    /// Opens, validates and deduplicates one message, in arrival order.
    fn admit(&self, incoming: &Incoming) -> Option<(Request, tracing::Span)> {
        let message = match envelope::open(&incoming.body, self.opts.max_message_bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(queue = %incoming.queue, bytes = incoming.body.len(), error = %e, "dropped unreadable message");
                metrics::global().inc(
                    "nova_docker_rpc_requests_total",
                    &[("method", crate::metrics::UNKNOWN), ("outcome", "malformed")],
                );
                return None;
            }
        };
        let reply_to = Request::reply_to_of(&message);
        let request = match Request::from_message(message) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(queue = %incoming.queue, error = %e, "dropped invalid request");
                metrics::global().inc(
                    "nova_docker_rpc_requests_total",
                    &[("method", crate::metrics::UNKNOWN), ("outcome", "malformed")],
                );
                if let Some(reply_to) = reply_to
                    && !self.reply_queue_obsolete(&reply_to.reply_q)
                {
                    let err = RemoteError::bad_request(format!("invalid RPC request: {e}"));
                    let mut sender = self.reply_sender();
                    let waiting = self.reply_waits.clone().try_acquire_owned().ok();
                    if waiting.is_none() {
                        sender.retry_timeout = Duration::ZERO;
                    }
                    self.tasks.spawn(async move {
                        sender.send_reply(&reply_to, Err(&err), true).await;
                        drop(waiting);
                    });
                }
                return None;
            }
        };
        if let Some(id) = &request.unique_id
            && !self.seen.first_time(id)
        {
            tracing::info!(method = %request.method, unique_id = %id, redelivered = incoming.redelivered,
                "dropped duplicate message");
            return None;
        }
        // The fields oslo.log's context format shows (see crate::logging).
        let ctx = &request.context;
        let span = tracing::info_span!(
            "rpc",
            method = %request.method,
            request_id = ctx.request_id().unwrap_or("-"),
            global_request_id = ctx.global_request_id().unwrap_or("-"),
            user_identity = %ctx.user_identity(),
            user = ctx.user_id().unwrap_or("-"),
            project = ctx.project_id().unwrap_or("-"),
            instance = tracing::field::Empty,
        );
        Some((request, span))
    }

    fn reply_sender(&self) -> ReplySender {
        ReplySender { transport: self.transport.clone(), retry_timeout: self.opts.missing_consumer_retry_timeout }
    }

    /// Handles one request while holding a worker `permit`, which is given
    /// back before the reply is sent: a reply that waits for its queue to
    /// appear waits without a worker. `received` is when the delivery was
    /// read off the connection.
    async fn handle(self: Arc<Self>, mut request: Request, received: Instant, permit: OwnedSemaphorePermit) {
        let started = Instant::now();
        let routed = self.dispatcher.route(&request);
        // Only methods an endpoint serves get a metric series of their own:
        // a peer's made-up names would each add one, forever.
        let method = if routed.is_ok() { request.method.clone() } else { metrics::UNKNOWN.to_string() };
        let class = rpc_class(routed.as_ref().ok().map(|e| e.namespace()));
        let result: CallResult = match routed {
            Err(e) => Err(e),
            Ok(endpoint) => {
                let call = Invocation {
                    context: request.context.clone(),
                    method: request.method.clone(),
                    // Moved, not copied: a large request is held once.
                    args: std::mem::take(&mut request.args),
                    version: request.version,
                    is_call: request.reply_to.is_some(),
                };
                let work = endpoint.invoke(call);
                match (&request.reply_to, request.call_monitor_timeout) {
                    (Some(reply_to), Some(t)) if t / 2.0 >= 1.0 => {
                        self.with_heartbeats(reply_to, Duration::from_secs_f64(t / 2.0), work).await
                    }
                    _ => work.await,
                }
            }
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) if e.class == "NoSuchMethod" || e.class == "UnsupportedVersion" => "unsupported",
            Err(_) => "error",
        };
        let m = metrics::global();
        m.inc("nova_docker_rpc_requests_total", &[("method", &method), ("outcome", outcome)]);
        m.observe("nova_docker_rpc_duration_seconds", &[("method", &method)], started.elapsed());
        drop(permit);
        match (&request.reply_to, &result) {
            (Some(reply_to), _) => {
                if self.reply_queue_obsolete(&reply_to.reply_q) {
                    tracing::info!(reply_q = %reply_to.reply_q, "reply queue known missing; reply dropped");
                    return;
                }
                // Waiting for a missing reply queue (oslo's
                // kombu_missing_consumer_retry_timeout) is bounded in count
                // too: past that many replies waiting, one attempt only.
                let waiting = self.reply_waits.clone().try_acquire_owned().ok();
                let mut sender = self.reply_sender();
                if waiting.is_none() {
                    sender.retry_timeout = Duration::ZERO;
                }
                let result = match &result {
                    Ok(v) => Ok(v.clone()),
                    Err(e) => Err(e),
                };
                match sender.send_reply(reply_to, result, true).await {
                    // Delivery to reply confirmed: the server's own part of
                    // the caller's round trip (the broker's hops aside).
                    ReplySent::Confirmed { published } => {
                        m.observe("nova_docker_rpc_server_seconds", &[("class", class)], received.elapsed());
                        m.observe(
                            "nova_docker_rpc_reply_published_seconds",
                            &[("class", class)],
                            published.saturating_duration_since(received),
                        );
                    }
                    ReplySent::NoQueue => self.remember_obsolete(&reply_to.reply_q),
                    ReplySent::Failed => {}
                }
                drop(waiting);
            }
            // oslo.log's line has no place for the method: the field says it.
            (None, Err(e)) => tracing::warn!(method = %request.method, error = %e, "cast failed"),
            (None, Ok(_)) => {
                tracing::debug!(method = %request.method, elapsed_ms = started.elapsed().as_millis() as u64, "cast handled")
            }
        }
    }

    fn reply_queue_obsolete(&self, reply_q: &str) -> bool {
        let mut cache = self.obsolete_reply_queues.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, at| at.elapsed() < OBSOLETE_REPLY_QUEUE_TTL);
        cache.contains_key(reply_q)
    }

    /// Records a reply queue found missing; the cache keeps the newest
    /// [`OBSOLETE_REPLY_QUEUES`] (oslo's `ObsoleteReplyQueuesCache` keeps 200).
    fn remember_obsolete(&self, reply_q: &str) {
        let mut cache = self.obsolete_reply_queues.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, at| at.elapsed() < OBSOLETE_REPLY_QUEUE_TTL);
        if cache.len() >= OBSOLETE_REPLY_QUEUES
            && let Some(oldest) = cache.iter().min_by_key(|(_, at)| **at).map(|(q, _)| q.clone())
        {
            cache.remove(&oldest);
        }
        cache.insert(reply_q.to_string(), Instant::now());
    }

    async fn with_heartbeats(
        &self,
        reply_to: &ReplyTo,
        every: Duration,
        work: std::pin::Pin<Box<dyn std::future::Future<Output = CallResult> + Send>>,
    ) -> CallResult {
        let sender = self.reply_sender();
        let mut work = work;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                r = &mut work => return r,
                _ = ticker.tick() => {
                    sender.send_reply(reply_to, Ok(Value::Null), false).await;
                }
            }
        }
    }
}

/// The method class of a call for `nova_docker_rpc_server_seconds` (one of
/// [`metrics::RPC_CLASSES`]), from the namespace of the endpoint that serves
/// it (`None`: no endpoint does).
fn rpc_class(endpoint_namespace: Option<Option<&str>>) -> &'static str {
    match endpoint_namespace {
        Some(Some("baseapi")) => "baseapi",
        Some(_) => "compute",
        None => metrics::UNKNOWN,
    }
}

/// What became of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplySent {
    /// Routed to the reply queue and confirmed by the broker; `published`:
    /// when the reply was handed to the connection.
    Confirmed { published: Instant },
    /// The reply queue never appeared within the retry timeout.
    NoQueue,
    /// Refused by the broker, or the connection failed: not retried.
    Failed,
}

/// Publishes replies the way oslo's `AMQPIncomingMessage.reply` does.
#[derive(Clone)]
struct ReplySender {
    transport: Transport,
    retry_timeout: Duration,
}

impl ReplySender {
    /// Sends a reply (or heartbeat when `ending` is false). Retries while the
    /// reply queue is missing, up to the retry timeout.
    async fn send_reply(&self, reply_to: &ReplyTo, result: Result<Value, &RemoteError>, ending: bool) -> ReplySent {
        let body = envelope::seal(&envelope::reply_message(&reply_to.msg_id, result, ending));
        let deadline = Instant::now() + self.retry_timeout;
        loop {
            let outcome = self
                .transport
                .publish_timed(
                    "",
                    &reply_to.reply_q,
                    &body,
                    PublishProps { expiration_ms: None, mandatory: true },
                    Duration::from_secs(30),
                )
                .await;
            match outcome {
                Ok((PublishOutcome::Confirmed, published)) => return ReplySent::Confirmed { published },
                Ok((PublishOutcome::Returned, _)) if ending && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok((PublishOutcome::Returned, _)) => {
                    tracing::warn!(reply_q = %reply_to.reply_q, msg_id = %reply_to.msg_id,
                        "reply queue does not exist; reply dropped");
                    return ReplySent::NoQueue;
                }
                Ok((PublishOutcome::Nacked, _)) => {
                    tracing::warn!(reply_q = %reply_to.reply_q, "broker refused the reply");
                    return ReplySent::Failed;
                }
                Err(e) => {
                    tracing::warn!(reply_q = %reply_to.reply_q, error = %e, "reply not sent");
                    return ReplySent::Failed;
                }
            }
        }
    }
}
