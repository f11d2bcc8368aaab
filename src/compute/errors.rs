//! Operation failures of the compute manager, and how each becomes what Nova
//! sees: an RPC failure for calls, an instance fault, an action event error.

use serde_json::json;

use crate::conductor::ConductorError;
use crate::image::ImageError;
use crate::net::NetError;
use crate::network::NetworkError;
use crate::rpc::RemoteError;
use crate::virt::VirtError;

/// Why an operation on an instance failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// A Nova exception to hand back as is (InstanceNotFound, InstanceInvalidState, ...).
    #[error("{0}")]
    Nova(RemoteError),
    /// The instance was deleted or changed by another request meanwhile:
    /// the operation stops without touching it further.
    #[error("instance changed or vanished meanwhile: {0}")]
    Superseded(ConductorError),
    #[error(transparent)]
    Conductor(ConductorError),
    #[error(transparent)]
    Virt(#[from] VirtError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("network plumbing: {0}")]
    Net(#[from] NetError),
    #[error("{0}")]
    Invalid(String),
}

impl From<ConductorError> for OpError {
    fn from(e: ConductorError) -> Self {
        if e.instance_vanished_or_changed() { OpError::Superseded(e) } else { OpError::Conductor(e) }
    }
}

impl OpError {
    /// The exception an RPC caller receives.
    pub fn to_remote(&self) -> RemoteError {
        match self {
            OpError::Nova(e) => e.clone(),
            OpError::Superseded(e) | OpError::Conductor(e) => match e.remote() {
                Some(r) => r.clone(),
                None => RemoteError::internal(e.to_string()),
            },
            OpError::Virt(VirtError::NotFound(uuid)) => instance_not_found(uuid),
            OpError::Image(e @ ImageError::NotDocker { .. }) => {
                RemoteError::nova("ImageUnacceptable", e.to_string(), 400, json!({}))
            }
            OpError::Network(e @ NetworkError::SecurityGroupNotFound(_)) => {
                RemoteError::nova("SecurityGroupNotFound", e.to_string(), 404, json!({}))
            }
            OpError::Network(e @ NetworkError::SecurityGroupNotUnique(_)) => {
                RemoteError::nova("NoUniqueMatch", e.to_string(), 409, json!({}))
            }
            OpError::Network(e @ NetworkError::SecurityGroupCannotBeApplied) => {
                RemoteError::nova("SecurityGroupCannotBeApplied", e.to_string(), 400, json!({}))
            }
            other => RemoteError::nova("NovaException", other.to_string(), 500, json!({})),
        }
    }

    /// The HTTP code recorded in the instance fault.
    pub fn fault_code(&self) -> u16 {
        self.to_remote().code().map(|c| c as u16).unwrap_or(500)
    }

    /// Whether the failure is "the instance is gone / not ours any more".
    pub fn is_superseded(&self) -> bool {
        matches!(self, OpError::Superseded(_))
    }
}

/// `nova.exception.InstanceNotFound`.
pub fn instance_not_found(uuid: &str) -> RemoteError {
    RemoteError::nova(
        "InstanceNotFound",
        format!("Instance {uuid} could not be found."),
        404,
        json!({"instance_id": uuid}),
    )
}

/// `nova.exception.InstanceInvalidState` (the API answers 409).
pub fn instance_invalid_state(uuid: &str, attr: &str, state: &str, method: &str) -> RemoteError {
    RemoteError::nova(
        "InstanceInvalidState",
        format!("Instance {uuid} in {attr} {state}. Cannot {method} while the instance is in this state."),
        400,
        json!({"instance_uuid": uuid, "attr": attr, "state": state, "method": method}),
    )
}
