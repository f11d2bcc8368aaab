//! The serial console operations of the compute API: `get_serial_console`
//! (nova-api's `os-remote-consoles` with protocol serial) and
//! `validate_console_port` (nova-serialproxy's check before it connects),
//! as `nova/compute/manager.py` serves them. The ports and the bridge to
//! the container are `virt::console`'s.
//!
//! Like Nova, the host issues the token: a `ConsoleAuthToken` for its
//! `proxyclient_address:port`, authorized through the conductor (which
//! stores its hash with `[consoleauth] token_ttl`), and returns the URL of
//! `[serial_console] base_url` with the token. nova-serialproxy checks the
//! token against the database, asks this host whether the port is still
//! the instance's, and only then connects.

use serde_json::{Value, json};

use super::errors::{OpError, instance_not_found};
use super::manager::ComputeManager;
use super::states::{TaskState, VmState};
use crate::conductor::ConsoleToken;
use crate::objects::Instance;
use crate::rpc::{RemoteError, RequestContext};
use crate::virt::console::ConsoleError;
use crate::virt::{Driver, VirtError};

/// `nova.exception.ConsoleTypeUnavailable` (the API answers 400).
pub fn console_type_unavailable(console_type: &str) -> RemoteError {
    RemoteError::nova(
        "ConsoleTypeUnavailable",
        format!("Unavailable console type {console_type}."),
        400,
        json!({"console_type": console_type}),
    )
}

/// `nova.exception.ConsoleTypeInvalid` (400).
fn console_type_invalid(console_type: &str) -> RemoteError {
    RemoteError::nova(
        "ConsoleTypeInvalid",
        format!("Invalid console type {console_type}"),
        400,
        json!({"console_type": console_type}),
    )
}

/// `nova.exception.InstanceNotReady` (400).
fn not_ready(uuid: &str) -> RemoteError {
    RemoteError::nova("InstanceNotReady", format!("Instance {uuid} is not ready"), 400, json!({"instance_id": uuid}))
}

/// Task states of an instance whose container is going away here.
fn leaving(t: TaskState) -> bool {
    matches!(
        t,
        TaskState::Deleting
            | TaskState::SoftDeleting
            | TaskState::Shelving
            | TaskState::ShelvingImagePendingUpload
            | TaskState::ShelvingImageUploading
            | TaskState::ShelvingOffloading
    )
}

impl<D: Driver> ComputeManager<D> {
    /// `get_serial_console`: the connection info Nova returns (host, port,
    /// internal_access_path, token, access_url).
    pub async fn get_serial_console(
        &self,
        ctx: &RequestContext,
        console_type: &str,
        i: &Instance,
    ) -> Result<Value, OpError> {
        let settings = self.consoles.settings();
        if !settings.enabled {
            return Err(OpError::Nova(console_type_unavailable(console_type)));
        }
        if console_type != "serial" {
            return Err(OpError::Nova(console_type_invalid(console_type)));
        }
        let uuid = i.uuid();
        // An instance on its way out of this host (or mid-operation) gets
        // no console: one opened between the close and the end of a delete,
        // shelve or move would outlive the container.
        if self.is_busy(uuid) || i.task_state().is_some_and(leaving) {
            return Err(OpError::Nova(not_ready(uuid)));
        }
        match self.driver.has_console(uuid).await {
            Ok(true) => {}
            // Created while consoles were off: no terminal to attach to.
            Ok(false) => return Err(OpError::Nova(console_type_unavailable(console_type))),
            Err(VirtError::NotFound(_)) if i.vm_state() == Some(VmState::Building) => {
                return Err(OpError::Nova(not_ready(uuid)));
            }
            Err(VirtError::NotFound(_)) => return Err(OpError::Nova(instance_not_found(uuid))),
            Err(e) => return Err(e.into()),
        }
        let port = self.consoles.open(uuid, self.driver.clone()).map_err(|e| match e {
            ConsoleError::PortsExhausted(host) => OpError::Nova(RemoteError::nova(
                "SocketPortRangeExhaustedException",
                format!("Not able to acquire a free port for {host}"),
                500,
                json!({"host": host}),
            )),
            other => OpError::Invalid(other.to_string()),
        })?;
        let host = settings.proxyclient_address.as_str();
        let token =
            ConsoleToken { console_type, host, port, instance_uuid: uuid, access_url_base: settings.base_url.as_str() };
        let token = self.conductor.authorize_console(ctx, token, settings.token_ttl).await?;
        tracing::info!(instance = uuid, "serial console token issued for {host}:{port}");
        Ok(json!({
            "host": host,
            "port": port,
            "internal_access_path": null,
            "token": token,
            "access_url": format!("{}?token={token}", settings.base_url),
        }))
    }

    /// The instance's console ends here for anything but a delete (it
    /// moved away, was offloaded, its container was removed): its port
    /// closes and, with consoles on, every token issued for it is cleaned,
    /// as a delete does. Cleaned even when no console is open in this
    /// process (a restart forgets them, the tokens stay in Nova's DB): an
    /// old token names this host's port, which may serve another instance
    /// later.
    pub(super) async fn end_console(&self, ctx: &RequestContext, uuid: &str) {
        self.consoles.close(uuid);
        if self.consoles.settings().enabled {
            self.conductor.clean_console_auths(ctx, uuid).await;
        }
    }

    /// `validate_console_port`: whether `port` is the instance's console
    /// port of `console_type` on this host.
    pub fn validate_console_port(&self, i: &Instance, port: &str, console_type: &str) -> Result<bool, OpError> {
        if console_type != "serial" {
            return Ok(false);
        }
        if !self.consoles.settings().enabled {
            return Err(OpError::Nova(console_type_unavailable(console_type)));
        }
        Ok(self.consoles.port_of(i.uuid()).is_some_and(|p| p.to_string() == port))
    }
}
