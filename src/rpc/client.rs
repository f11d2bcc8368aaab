//! The RPC client: `call` and `cast` to other services' topics, as
//! oslo.messaging's `RPCClient` does, with one reply queue per process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::metrics;

use super::context::RequestContext;
use super::envelope::{self, Reply, ReplyTo};
use super::failure::RemoteError;
use super::topology::{Declaration, Topology};
use super::transport::{Incoming, PublishOutcome, PublishProps, Transport, TransportError};

/// Where a message goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The topic the request is routed by (e.g. `conductor`).
    pub topic: String,
    /// A server within the topic, for a request meant for one host only.
    pub server: Option<String>,
    /// The endpoint namespace on the server (e.g. `baseapi`), None for the default.
    pub namespace: Option<String>,
    /// The API version the request needs; the server refuses one it cannot serve.
    pub version: String,
}

impl Target {
    /// A target on `topic` at `version` (no server, default namespace).
    pub fn new(topic: &str, version: &str) -> Self {
        Target { topic: topic.into(), server: None, namespace: None, version: version.into() }
    }

    /// The same target with a namespace.
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// The same target addressed to one server.
    pub fn server(mut self, server: &str) -> Self {
        self.server = Some(server.into());
        self
    }

    fn routing_key(&self) -> String {
        match &self.server {
            Some(s) => format!("{}.{s}", self.topic),
            None => self.topic.clone(),
        }
    }
}

/// Why a call did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The callee did not reply in time; oslo's `MessagingTimeout`, which Nova
    /// expects, so callers can treat it as such.
    #[error("no reply to {method} within {timeout:?} (MessagingTimeout)")]
    Timeout {
        /// The method that went unanswered.
        method: String,
        /// How long the call waited.
        timeout: Duration,
    },
    /// The callee answered with an exception, kept as it came so the caller can
    /// match its class.
    #[error("{0}")]
    Remote(RemoteError),
    /// The request could not be sent or its reply not received.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl CallError {
    /// The remote exception, when the peer raised one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            CallError::Remote(e) => Some(e),
            _ => None,
        }
    }
}

type Pending = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Reply>>>>;

/// A client bound to one transport and exchange.
#[derive(Clone)]
pub struct RpcClient {
    transport: Transport,
    exchange: String,
    reply_q: String,
    pending: Pending,
    default_timeout: Duration,
}

/// Removes a pending call however the wait ends.
struct PendingGuard<'a> {
    pending: &'a Pending,
    msg_id: String,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.msg_id);
    }
}

impl RpcClient {
    /// Declares this process's reply queue and starts routing replies.
    pub async fn start(
        transport: Transport,
        topology: &Topology,
        default_timeout: Duration,
    ) -> Result<Self, TransportError> {
        let reply_q = format!("reply_{}", envelope::new_id());
        // The control exchange too, as oslo's publisher does before its first
        // message: a broker restarted with nobody serving yet has no `nova`
        // exchange, and publishing to a missing exchange closes the channel.
        let exchange = Declaration::Exchange(topology.control_exchange_decl());
        transport.declare(vec![exchange, topology.reply_queue(&reply_q)]).await?;
        let (tx, mut rx) = mpsc::channel::<Incoming>(256);
        // Replies are as large as the peer's answer (an InstanceList of a
        // busy host): the queue's random name is known only to the peers
        // this process calls, so no bound beyond RabbitMQ's own.
        transport.consume(&reply_q, tx, usize::MAX).await;
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let routes = pending.clone();
        tokio::spawn(async move {
            while let Some(incoming) = rx.recv().await {
                let reply = envelope::open(&incoming.body, usize::MAX).ok().and_then(envelope::parse_reply);
                let Some(reply) = reply else {
                    tracing::warn!(bytes = incoming.body.len(), "dropped unreadable reply");
                    continue;
                };
                let sender = routes.lock().unwrap_or_else(|p| p.into_inner()).get(&reply.msg_id).cloned();
                match sender {
                    Some(s) => {
                        let _ = s.send(reply);
                    }
                    None => tracing::info!(msg_id = %reply.msg_id, "no caller waits for this reply; dropped"),
                }
            }
        });
        Ok(RpcClient {
            transport,
            exchange: topology.control_exchange().to_string(),
            reply_q,
            pending,
            default_timeout,
        })
    }

    /// The name of this process's reply queue.
    pub fn reply_queue(&self) -> &str {
        &self.reply_q
    }

    /// Sends a call and waits for its result (`timeout` defaults to
    /// `rpc_response_timeout`).
    pub async fn call(
        &self,
        context: &RequestContext,
        target: &Target,
        method: &str,
        args: Map<String, Value>,
        timeout: Option<Duration>,
    ) -> Result<Value, CallError> {
        let timeout = timeout.unwrap_or(self.default_timeout);
        let reply_to = ReplyTo { msg_id: envelope::new_id(), reply_q: self.reply_q.clone() };
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(reply_to.msg_id.clone(), tx);
        let _guard = PendingGuard { pending: &self.pending, msg_id: reply_to.msg_id.clone() };
        let message = envelope::request_message(
            context,
            method,
            args,
            target.namespace.as_deref(),
            &target.version,
            Some((&reply_to, None)),
        );
        let deadline = tokio::time::Instant::now() + timeout;
        self.publish_until_routed(target, method, &envelope::seal(&message), deadline, timeout).await?;
        let mut result = Value::Null;
        loop {
            let reply = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => return Err(CallError::Timeout { method: method.to_string(), timeout }),
            };
            if let Some(failure) = reply.failure {
                return Err(CallError::Remote(failure));
            }
            // Pre-Newton servers sent the result with ending=false, then an
            // empty ending=true; keep the last non-null result.
            if !reply.result.is_null() {
                result = reply.result;
            }
            if reply.ending {
                return Ok(result);
            }
        }
    }

    /// Publishes a call with the mandatory flag and publishes it again while
    /// the broker returns it because no queue is bound to the topic: after a
    /// broker restart the server's queue only exists once it re-declared it.
    /// A returned message reached no consumer, so sending it again cannot
    /// run the method twice. Python's oslo.messaging fails such a call with
    /// a timeout (or MessageUndeliverable); waiting for the peer instead
    /// keeps an in-flight build alive across a broker restart.
    async fn publish_until_routed(
        &self,
        target: &Target,
        method: &str,
        body: &[u8],
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let mut pause = Duration::from_millis(100);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(CallError::Timeout { method: method.to_string(), timeout });
            }
            let props = PublishProps { expiration_ms: Some(left.as_millis().max(1) as u64), mandatory: true };
            match self.transport.publish(&self.exchange, &target.routing_key(), body, props, left).await? {
                PublishOutcome::Returned => {
                    tracing::info!(method, topic = %target.routing_key(), "no consumer yet, sending the call again");
                    metrics::global().inc("nova_docker_rpc_call_resends_total", &[]);
                    tokio::time::sleep(pause.min(left)).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                _ => return Ok(()),
            }
        }
    }

    /// Sends a cast (no reply).
    pub async fn cast(
        &self,
        context: &RequestContext,
        target: &Target,
        method: &str,
        args: Map<String, Value>,
    ) -> Result<(), CallError> {
        let message =
            envelope::request_message(context, method, args, target.namespace.as_deref(), &target.version, None);
        self.transport
            .publish(
                &self.exchange,
                &target.routing_key(),
                &envelope::seal(&message),
                PublishProps::default(),
                self.default_timeout,
            )
            .await?;
        Ok(())
    }
}
