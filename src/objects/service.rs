//! `Service` 1.22: the row that makes this host a nova-compute for Nova.

use serde_json::Value;

use super::{NovaObject, ObjectError};

/// The object version of Service in every supported release.
pub const SERVICE_VERSION: &str = "1.22";

/// A Service record.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// The object as exchanged with the conductor; the accessors read it.
    pub obj: NovaObject,
}

impl Service {
    /// A new nova-compute service record to create.
    pub fn new_compute(host: &str, service_version: i64) -> Self {
        let mut obj = NovaObject::new("Service", SERVICE_VERSION);
        obj.set("host", host);
        obj.set("binary", "nova-compute");
        obj.set("topic", "compute");
        obj.set("report_count", 0);
        obj.set("version", service_version);
        Service { obj }
    }

    /// Reads a Service primitive.
    pub fn from_primitive(v: &Value) -> Result<Self, ObjectError> {
        Ok(Service { obj: NovaObject::expect(v, "Service")? })
    }

    /// Database id (ComputeNode.service_id).
    pub fn id(&self) -> Option<i64> {
        self.obj.get_i64("id")
    }

    /// The monotonic heartbeat counter.
    pub fn report_count(&self) -> i64 {
        self.obj.get_i64("report_count").unwrap_or(0)
    }

    /// Whether an operator disabled the service.
    pub fn disabled(&self) -> bool {
        self.obj.get_bool("disabled").unwrap_or(false)
    }

    /// Whether an operator forced the service down.
    pub fn forced_down(&self) -> bool {
        self.obj.get_bool("forced_down").unwrap_or(false)
    }

    /// The service version recorded.
    pub fn version(&self) -> Option<i64> {
        self.obj.get_i64("version")
    }
}
