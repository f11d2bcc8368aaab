//! Remote exceptions in oslo.messaging's wire form.
//!
//! A failed call is answered with `failure`: a JSON *string* holding `class`,
//! `module`, `message`, `tb`, `args` and `kwargs`. Python callers rebuild the
//! exception when the module is `builtins` or in their allowed list (Nova's is
//! `nova.exception`), so handler errors name real Nova exception classes and
//! carry the HTTP `code` in `kwargs`, exactly as Nova's own exceptions do.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::fmt;

/// An exception as it crosses the wire, in either direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteError {
    /// Python class name, e.g. `InstanceNotFound`.
    pub class: String,
    /// Python module, e.g. `nova.exception`.
    pub module: String,
    /// `str(exception)`.
    pub message: String,
    /// Formatted traceback lines.
    #[serde(default)]
    pub tb: Vec<String>,
    /// Positional constructor arguments (Nova: `[message]`).
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments (Nova: the format values plus `code`).
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

/// The module of Nova's exceptions, the one module Nova callers re-raise.
pub const NOVA_EXCEPTION: &str = "nova.exception";
/// The module oslo.messaging's dispatcher errors come from.
pub const OSLO_DISPATCHER: &str = "oslo_messaging.rpc.dispatcher";

impl RemoteError {
    fn new(module: &str, class: &str, message: String, kwargs: Map<String, Value>) -> Self {
        let tb = vec![
            "Traceback (most recent call last):\n".to_string(),
            "  (raised by nova-docker, a Rust nova-compute; no Python frames)\n".to_string(),
            format!("{module}.{class}: {message}\n"),
        ];
        RemoteError {
            class: class.to_string(),
            module: module.to_string(),
            args: vec![Value::String(message.clone())],
            message,
            tb,
            kwargs,
        }
    }

    /// A `nova.exception.<class>` with its HTTP code, e.g.
    /// `RemoteError::nova("InstanceNotFound", msg, 404, json!({"instance_id": id}))`.
    pub fn nova(class: &str, message: impl Into<String>, code: u16, kwargs: Value) -> Self {
        let mut kw = match kwargs {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        kw.insert("code".into(), json!(code));
        Self::new(NOVA_EXCEPTION, class, message.into(), kw)
    }

    /// `builtins.NotImplementedError`: Nova's API answers 501 for it.
    pub fn not_implemented(message: impl Into<String>) -> Self {
        Self::new("builtins", "NotImplementedError", message.into(), Map::new())
    }

    /// oslo's `NoSuchMethod`, raised when a compatible endpoint lacks the method.
    pub fn no_such_method(method: &str) -> Self {
        Self::new(OSLO_DISPATCHER, "NoSuchMethod", format!("Endpoint does not support RPC method {method}"), Map::new())
    }

    /// oslo's `UnsupportedVersion`, raised when no endpoint serves the version.
    pub fn unsupported_version(version: &str, method: &str) -> Self {
        Self::new(
            OSLO_DISPATCHER,
            "UnsupportedVersion",
            format!("Endpoint does not support RPC version {version}. Attempted method: {method}"),
            Map::new(),
        )
    }

    /// A generic `nova.exception.NovaException` (HTTP 500) for unexpected errors.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::nova("NovaException", message, 500, json!({}))
    }

    /// `builtins.ValueError`, for requests whose arguments cannot be used.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new("builtins", "ValueError", message.into(), Map::new())
    }

    /// The `kwargs.code` a Nova exception carries, if any.
    pub fn code(&self) -> Option<u64> {
        self.kwargs.get("code").and_then(Value::as_u64)
    }

    /// Whether this is `nova.exception.<class>`.
    pub fn is_nova(&self, class: &str) -> bool {
        self.module == NOVA_EXCEPTION && self.class == class
    }

    /// Encodes as the JSON string that goes into a reply's `failure`.
    pub fn to_failure_string(&self) -> String {
        // Serialising a struct of strings and JSON values cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// Decodes a reply's `failure` string; oslo strips a `_Remote` suffix.
    pub fn from_failure_string(s: &str) -> Result<Self, serde_json::Error> {
        let mut e: RemoteError = serde_json::from_str(s)?;
        if let Some(stripped) = e.class.strip_suffix("_Remote") {
            e.class = stripped.to_string();
        }
        if let Some(stripped) = e.module.strip_suffix("_Remote") {
            e.module = stripped.to_string();
        }
        Ok(e)
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}: {}", self.module, self.class, self.message)
    }
}

impl std::error::Error for RemoteError {}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURED: &str = include_str!("../../tests/fixtures/oslo-server-reply.failure.body.json");

    #[test]
    fn decodes_a_failure_captured_from_real_oslo() {
        let outer: Value = serde_json::from_str(CAPTURED).unwrap();
        let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        let e = RemoteError::from_failure_string(inner["failure"].as_str().unwrap()).unwrap();
        assert!(e.is_nova("InstanceNotFound"));
        assert_eq!(e.code(), Some(404));
        assert_eq!(e.args, vec![json!(e.message.clone())]);
        assert_eq!(e.kwargs["instance_id"], "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d");
    }

    #[test]
    fn nova_errors_have_the_shape_python_rebuilds() {
        let e =
            RemoteError::nova("InstanceNotFound", "Instance x could not be found.", 404, json!({"instance_id": "x"}));
        let v: Value = serde_json::from_str(&e.to_failure_string()).unwrap();
        assert_eq!(v["module"], "nova.exception");
        assert_eq!(v["class"], "InstanceNotFound");
        assert_eq!(v["args"], json!(["Instance x could not be found."]));
        assert_eq!(v["kwargs"], json!({"instance_id": "x", "code": 404}));
        assert!(v["tb"].as_array().unwrap().iter().all(Value::is_string));
    }

    #[test]
    fn dispatcher_errors_match_oslo_text() {
        assert_eq!(RemoteError::no_such_method("frob").message, "Endpoint does not support RPC method frob");
        assert_eq!(
            RemoteError::unsupported_version("7.0", "frob").message,
            "Endpoint does not support RPC version 7.0. Attempted method: frob"
        );
        let e = RemoteError::from_failure_string(
            r#"{"class":"Foo_Remote","module":"nova.exception_Remote","message":"m","tb":[],"args":[],"kwargs":{}}"#,
        )
        .unwrap();
        assert!(e.is_nova("Foo"));
    }
}
