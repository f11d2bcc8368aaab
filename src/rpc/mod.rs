//! oslo.messaging over AMQP (RabbitMQ), the way Nova's Python services speak it.
//!
//! - [`envelope`]: the oslo envelope 2.0, requests and replies;
//! - [`context`]: the request context carried in `_context_*` keys;
//! - [`failure`]: remote exceptions as Python callers rebuild them;
//! - [`version`]: RPC API versions and compatibility;
//! - [`topology`]: the exchanges, queues and bindings to declare;
//! - [`transport`]: the self-healing AMQP connection;
//! - [`dispatcher`]: routing requests to endpoints;
//! - [`server`] and [`client`]: the two roles.

pub mod client;
pub mod context;
pub mod dedup;
pub mod dispatcher;
pub mod envelope;
pub mod failure;
pub mod server;
pub mod topology;
pub mod transport;
pub mod version;

pub use client::{CallError, RpcClient, Target};
pub use context::RequestContext;
pub use dispatcher::{BaseApi, BoxFuture, CallResult, Dispatcher, Endpoint, Invocation};
pub use failure::RemoteError;
pub use server::{RpcServer, ServerOptions};
pub use topology::Topology;
pub use transport::{PublishOutcome, PublishProps, Transport, TransportError, TransportOptions};
pub use version::Version;
