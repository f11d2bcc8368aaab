//! Routing a request to an endpoint by namespace, version and method, with
//! oslo.messaging's rules and errors.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::context::RequestContext;
use super::envelope::Request;
use super::failure::RemoteError;
use super::version::Version;

/// A boxed future, the return type of endpoint methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a handler answers: the serialised result, or an exception.
pub type CallResult = Result<Value, RemoteError>;

/// One invocation handed to an endpoint. `Debug` shows its arguments
/// redacted (no `admin_password`, no token).
#[derive(Clone)]
pub struct Invocation {
    /// Who asked (user, project, roles, request id); policy and logs rely on it.
    pub context: RequestContext,
    /// The manager method to run.
    pub method: String,
    /// The method's keyword arguments, as sent.
    pub args: Map<String, Value>,
    /// The API version the caller needs, already checked against ours.
    pub version: Version,
    /// Whether the caller waits for a reply (a call, not a cast).
    pub is_call: bool,
}

impl std::fmt::Debug for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invocation")
            .field("context", &self.context)
            .field("method", &self.method)
            .field("args", &super::envelope::redacted(&Value::Object(self.args.clone())))
            .field("version", &self.version)
            .field("is_call", &self.is_call)
            .finish()
    }
}

/// A set of RPC methods under one namespace and version (oslo's endpoint
/// with its `target`).
pub trait Endpoint: Send + Sync + 'static {
    /// `None` for the default namespace.
    fn namespace(&self) -> Option<&str>;
    /// The newest version implemented; older minors of the same major are served.
    fn version(&self) -> Version;
    /// Whether `method` exists here.
    fn has_method(&self, method: &str) -> bool;
    /// Runs `method`.
    fn invoke(self: Arc<Self>, call: Invocation) -> BoxFuture<'static, CallResult>;
}

/// Chooses the endpoint for each request.
#[derive(Clone, Default)]
pub struct Dispatcher {
    endpoints: Vec<Arc<dyn Endpoint>>,
}

impl Dispatcher {
    /// A dispatcher over `endpoints`, tried in order.
    pub fn new(endpoints: Vec<Arc<dyn Endpoint>>) -> Self {
        Dispatcher { endpoints }
    }

    /// oslo's `RPCDispatcher.dispatch` selection: the first endpoint whose
    /// namespace matches and whose version can serve the request and that has
    /// the method. `NoSuchMethod` when compatible endpoints exist but none has
    /// it (or it is private), `UnsupportedVersion` when none is compatible.
    pub fn route(&self, request: &Request) -> Result<Arc<dyn Endpoint>, RemoteError> {
        let mut compatible = false;
        for endpoint in &self.endpoints {
            if endpoint.namespace() != request.namespace.as_deref() {
                continue;
            }
            if !endpoint.version().can_serve(&request.version) {
                continue;
            }
            compatible = true;
            if !request.method.starts_with('_') && endpoint.has_method(&request.method) {
                return Ok(endpoint.clone());
            }
        }
        if compatible {
            Err(RemoteError::no_such_method(&request.method))
        } else {
            Err(RemoteError::unsupported_version(&request.version_text, &request.method))
        }
    }
}

/// Nova's `baseapi` endpoint (`nova/baserpc.py`): `ping` answers
/// `{"service": <service>, "arg": arg}`; health probes use it.
pub struct BaseApi {
    service: &'static str,
}

impl BaseApi {
    /// The endpoint for a service named `service` (`compute`).
    pub fn new(service: &'static str) -> Self {
        BaseApi { service }
    }
}

impl Endpoint for BaseApi {
    fn namespace(&self) -> Option<&str> {
        Some("baseapi")
    }

    fn version(&self) -> Version {
        Version::new(1, 1)
    }

    fn has_method(&self, method: &str) -> bool {
        matches!(method, "ping" | "get_backdoor_port")
    }

    fn invoke(self: Arc<Self>, call: Invocation) -> BoxFuture<'static, CallResult> {
        Box::pin(async move {
            match call.method.as_str() {
                "ping" => {
                    Ok(json!({"service": self.service, "arg": call.args.get("arg").cloned().unwrap_or(Value::Null)}))
                }
                // The eventlet backdoor does not exist here.
                _ => Ok(Value::Null),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::envelope::{open, request_message, seal};

    fn request(namespace: Option<&str>, version: &str, method: &str) -> Request {
        let body = seal(&request_message(&RequestContext::admin(), method, Map::new(), namespace, version, None));
        Request::from_message(open(&body, 1 << 20).unwrap()).unwrap()
    }

    #[test]
    fn routes_like_oslo() {
        let d = Dispatcher::new(vec![Arc::new(BaseApi::new("compute"))]);
        assert!(d.route(&request(Some("baseapi"), "1.0", "ping")).is_ok());
        assert!(d.route(&request(Some("baseapi"), "1.1", "ping")).is_ok());
        let e = d.route(&request(Some("baseapi"), "1.0", "reboot")).err().unwrap();
        assert_eq!(e.class, "NoSuchMethod");
        let e = d.route(&request(Some("baseapi"), "1.2", "ping")).err().unwrap();
        assert_eq!(e.class, "UnsupportedVersion");
        let e = d.route(&request(None, "1.0", "ping")).err().unwrap();
        assert_eq!(e.class, "UnsupportedVersion");
        let e = d.route(&request(Some("baseapi"), "1.0", "_private")).err().unwrap();
        assert_eq!(e.class, "NoSuchMethod");
    }

    #[tokio::test]
    async fn ping_echoes_its_argument() {
        let ep = Arc::new(BaseApi::new("compute"));
        let r = ep
            .invoke(Invocation {
                context: RequestContext::admin(),
                method: "ping".into(),
                args: serde_json::from_value(json!({"arg": "1.21 GigaWatts"})).unwrap(),
                version: Version::new(1, 0),
                is_call: true,
            })
            .await
            .unwrap();
        assert_eq!(r, json!({"service": "compute", "arg": "1.21 GigaWatts"}));
    }
}
