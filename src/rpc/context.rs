//! Nova's request context as it travels in `_context_*` keys.
//!
//! A context received with a request is kept verbatim and sent back unchanged
//! on follow-up conductor calls: instance-action events are found by its
//! `request_id`, and its `auth_token` is what Glance and Neutron accept for that
//! request. The typed accessors only read it; the fields the service relies on
//! are type-checked on arrival so a malformed context is refused up front.

use serde_json::{Map, Value, json};
use std::fmt;

/// The strict timestamp format of `_context_timestamp` (`nova.utils.strtime`).
pub const CONTEXT_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6f";

/// A request context.
#[derive(Clone, PartialEq)]
pub struct RequestContext {
    values: Map<String, Value>,
}

/// A context key of the wrong type.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("context key {key:?} must be {expected}")]
pub struct ContextError {
    /// The `_context_` key that was wrong.
    pub key: String,
    /// The JSON type that key must have.
    pub expected: &'static str,
}

const STRING_KEYS: &[&str] = &[
    "user",
    "user_id",
    "project",
    "project_id",
    "request_id",
    "global_request_id",
    "auth_token",
    "user_name",
    "project_name",
    "remote_address",
    "read_deleted",
    "quota_class",
    "domain",
    "user_domain",
    "project_domain",
    "system_scope",
    "resource_uuid",
    "user_identity",
];
const BOOL_KEYS: &[&str] = &["is_admin", "read_only", "show_deleted", "is_admin_project"];

impl RequestContext {
    /// Builds a context from the `_context_`-stripped keys of a message,
    /// checking the types of the keys the service reads.
    pub fn from_map(values: Map<String, Value>) -> Result<Self, ContextError> {
        let err = |key: &str, expected| ContextError { key: key.to_string(), expected };
        for key in STRING_KEYS {
            match values.get(*key) {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(_) => return Err(err(key, "a string or null")),
            }
        }
        for key in BOOL_KEYS {
            match values.get(*key) {
                None | Some(Value::Null) | Some(Value::Bool(_)) => {}
                Some(_) => return Err(err(key, "a boolean or null")),
            }
        }
        match values.get("roles") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
            Some(_) => return Err(err("roles", "a list of strings")),
        }
        match values.get("service_catalog") {
            None | Some(Value::Null) | Some(Value::Array(_)) => {}
            Some(_) => return Err(err("service_catalog", "a list")),
        }
        match values.get("timestamp") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if chrono::NaiveDateTime::parse_from_str(s, CONTEXT_TIME_FORMAT).is_ok() => {}
            Some(_) => return Err(err("timestamp", "a %Y-%m-%dT%H:%M:%S.%f time")),
        }
        Ok(RequestContext { values })
    }

    /// An admin context for the service's own work, shaped like
    /// `nova.context.get_admin_context()` on the wire.
    pub fn admin() -> Self {
        let request_id = format!("req-{}", uuid::Uuid::new_v4());
        let timestamp = chrono::Utc::now().naive_utc().format(CONTEXT_TIME_FORMAT).to_string();
        let values = json!({
            "user": null, "project_id": null, "system_scope": null, "project": null,
            "domain": null, "user_domain": null, "project_domain": null, "is_admin": true,
            "read_only": false, "show_deleted": false, "auth_token": null,
            "request_id": request_id, "global_request_id": null, "resource_uuid": null,
            "roles": [], "user_identity": "- - - - -", "is_admin_project": true,
            "user_id": null, "read_deleted": "no", "remote_address": null,
            "timestamp": timestamp, "quota_class": null, "user_name": null,
            "service_catalog": [], "project_name": null,
        });
        match values {
            Value::Object(values) => RequestContext { values },
            _ => unreachable!("literal object"),
        }
    }

    /// The keys as they go on the wire (`_context_<key>`).
    pub fn to_wire(&self) -> impl Iterator<Item = (String, Value)> + '_ {
        self.values.iter().map(|(k, v)| (format!("_context_{k}"), v.clone()))
    }

    fn str(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(Value::as_str)
    }

    /// `req-<uuid>` of the API request; instance actions are keyed by it.
    pub fn request_id(&self) -> Option<&str> {
        self.str("request_id")
    }

    /// Request id that spans services, when the caller set one.
    pub fn global_request_id(&self) -> Option<&str> {
        self.str("global_request_id")
    }

    /// The user's Keystone token; a secret, never logged.
    pub fn auth_token(&self) -> Option<&str> {
        self.str("auth_token")
    }

    /// Project (tenant) of the request.
    pub fn project_id(&self) -> Option<&str> {
        self.str("project_id").or_else(|| self.str("project"))
    }

    /// User of the request.
    pub fn user_id(&self) -> Option<&str> {
        self.str("user_id").or_else(|| self.str("user"))
    }

    /// oslo.context's `user_identity` for log lines (oslo.log's
    /// `logging_user_identity_format`): `user project domain system_scope
    /// user_domain project_domain`, `-` for each the context lacks.
    pub fn user_identity(&self) -> String {
        let part = |v: Option<&str>| v.filter(|s| !s.is_empty()).unwrap_or("-").to_string();
        [
            part(self.user_id()),
            part(self.project_id()),
            part(self.str("domain")),
            part(self.str("system_scope")),
            part(self.str("user_domain")),
            part(self.str("project_domain")),
        ]
        .join(" ")
    }

    /// Whether the request carries admin rights.
    pub fn is_admin(&self) -> bool {
        self.values.get("is_admin").and_then(Value::as_bool).unwrap_or(false)
    }

    /// Roles of the user.
    pub fn roles(&self) -> Vec<String> {
        self.values
            .get("roles")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    /// The catalog Nova trimmed to the services a compute uses.
    pub fn service_catalog(&self) -> &[Value] {
        self.values.get("service_catalog").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
    }
}

impl fmt::Debug for RequestContext {
    // Only what helps reading logs; never the token or the catalog.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestContext")
            .field("request_id", &self.request_id())
            .field("project_id", &self.project_id())
            .field("user_id", &self.user_id())
            .field("is_admin", &self.is_admin())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(v: Value) -> Result<RequestContext, ContextError> {
        RequestContext::from_map(v.as_object().cloned().unwrap())
    }

    #[test]
    fn admin_context_looks_like_novas() {
        let c = RequestContext::admin();
        let wire: Map<String, Value> = c.to_wire().collect();
        assert_eq!(wire.len(), 25);
        assert_eq!(wire["_context_is_admin"], json!(true));
        assert_eq!(wire["_context_roles"], json!([]));
        assert_eq!(wire["_context_read_deleted"], json!("no"));
        assert!(c.request_id().unwrap().starts_with("req-"));
        // The strict format round-trips through the parser.
        assert!(RequestContext::from_map(c.values.clone()).is_ok());
        let ts = wire["_context_timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-11-25T11:42:58.746817".len());
    }

    #[test]
    fn user_identity_is_oslo_contexts() {
        let c =
            ctx(json!({"user_id": "u1", "project_id": "p1", "user_domain": "default", "project_domain": "default"}));
        assert_eq!(c.unwrap().user_identity(), "u1 p1 - - default default");
        assert_eq!(ctx(json!({})).unwrap().user_identity(), "- - - - - -");
    }

    #[test]
    fn wrong_types_are_refused() {
        assert_eq!(ctx(json!({"request_id": 5})).unwrap_err().key, "request_id");
        assert_eq!(ctx(json!({"is_admin": "yes"})).unwrap_err().key, "is_admin");
        assert_eq!(ctx(json!({"roles": "admin"})).unwrap_err().key, "roles");
        assert_eq!(ctx(json!({"timestamp": "2024-04-10 12:38:11"})).unwrap_err().key, "timestamp");
        assert!(ctx(json!({"timestamp": "2024-04-10T12:38:11.123456", "roles": ["member"]})).is_ok());
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = ctx(json!({"auth_token": "gAAAAsecret", "request_id": "req-1"})).unwrap();
        assert!(!format!("{c:?}").contains("secret"));
        assert_eq!(c.auth_token(), Some("gAAAAsecret"));
    }
}
