//! Operation failures of the compute manager, and how each becomes what Nova
//! sees: an RPC failure for calls, an instance fault, an action event error.

use serde_json::json;

use crate::conductor::ConductorError;
use crate::image::ImageError;
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
    /// A conductor call failed for another reason than the instance changing
    /// meanwhile (that is [`OpError::Superseded`]).
    #[error(transparent)]
    Conductor(ConductorError),
    /// The Docker driver failed.
    #[error(transparent)]
    Virt(#[from] VirtError),
    /// The image could not be fetched from Glance or loaded into Docker.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Neutron port handling failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The request cannot be honoured on this host (e.g. boot from volume); the
    /// message says why, for the tenant.
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
            OpError::Network(e @ NetworkError::PortNotUsable { .. }) => {
                RemoteError::nova("PortNotUsable", e.to_string(), 409, json!({}))
            }
            OpError::Network(e @ NetworkError::NetworkNotFound(_)) => {
                RemoteError::nova("NetworkNotFound", e.to_string(), 404, json!({}))
            }
            OpError::Network(e @ NetworkError::ExternalNetworkAttachForbidden(_)) => {
                RemoteError::nova("ExternalNetworkAttachForbidden", e.to_string(), 403, json!({}))
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

/// What an instance fault records of a failure (nova/compute/utils.py
/// `add_instance_fault_from_exc`). Nova's API shows `message` to the
/// tenant, and `details` to admins only, or to anyone when the code is not
/// 500.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRecord {
    /// The HTTP-like code Nova stores with the fault: 500 for a host failure,
    /// another code when the request itself was at fault.
    pub code: u16,
    /// Without host paths, URLs or addresses ([`redact_host_details`]).
    pub message: String,
    /// The whole error (`module.Class: message`) for a 500; for other codes,
    /// which tenants see too, the redacted one.
    pub details: String,
}

impl OpError {
    /// The failure as the tenant may read it: the message without host
    /// paths, internal URLs or addresses.
    pub fn tenant_message(&self) -> String {
        redact_host_details(&self.to_remote().message)
    }

    /// The instance fault of this failure.
    pub fn fault_record(&self) -> FaultRecord {
        let remote = self.to_remote();
        let code = self.fault_code();
        let message = redact_host_details(&remote.message);
        let details = if code == 500 {
            format!("{}.{}: {}", remote.module, remote.class, remote.message)
        } else {
            format!("{}.{}: {}", remote.module, remote.class, message)
        };
        FaultRecord { code, message, details }
    }
}

/// `text` with what names the host's insides replaced: URLs (`scheme://...`,
/// the Glance, Neutron or engine endpoint) by `<url>`, absolute paths by
/// `<path>`, IP addresses (with a port or a prefix length) by `<address>`.
///
/// Exists because errors are written for operators (they name the file, the
/// endpoint, the socket) while an instance fault's message is shown to the
/// tenant. Words are separated by blanks; quotes, brackets and trailing
/// punctuation around a word are kept, and `key=value` words are judged by
/// their value.
pub fn redact_host_details(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if c.is_whitespace() {
            out.push_str(&redact_word(&word));
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    out.push_str(&redact_word(&word));
    out
}

fn redact_word(word: &str) -> String {
    const OPEN: &[char] = &['"', '\'', '(', '[', '{', '<', '`'];
    const CLOSE: &[char] = &['"', '\'', ')', ']', '}', '>', '`', ',', ';', '.', ':', '!', '?'];
    let core_start = word.len() - word.trim_start_matches(OPEN).len();
    let mut core = &word[core_start..];
    // "[::1]:5672" opens with a bracket that belongs to the address.
    if core_start > 0 && word[..core_start].ends_with('[') && is_address(&word[core_start - 1..]) {
        return format!("{}<address>", &word[..core_start - 1]);
    }
    let trimmed = core.trim_end_matches(CLOSE);
    let tail = &core[trimmed.len()..];
    core = trimmed;
    let (key, value) = match core.split_once('=') {
        Some((k, v)) => (&core[..k.len() + 1], v),
        None => ("", core),
    };
    let replacement = if value.contains("://") {
        Some("<url>")
    } else if value.len() > 1 && (value.starts_with('/') || value.starts_with("~/")) {
        Some("<path>")
    } else if is_address(value) {
        Some("<address>")
    } else {
        None
    };
    match replacement {
        Some(r) => format!("{}{key}{r}{tail}", &word[..core_start]),
        None => word.to_string(),
    }
}

/// An IP address, optionally with a port or a prefix length.
fn is_address(s: &str) -> bool {
    use std::net::{IpAddr, SocketAddr};
    if s.parse::<IpAddr>().is_ok() || s.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match s.rsplit_once('/') {
        Some((ip, len)) => ip.parse::<IpAddr>().is_ok() && len.parse::<u8>().is_ok(),
        None => false,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_messages_name_no_host_path_url_or_address() {
        let cases = [
            (
                "glance: GET http://127.0.0.1:9292/v2/images/x/file failed: error sending request",
                "glance: GET <url> failed: error sending request",
            ),
            (
                "engine error during create: error while creating mount source path '/var/lib/nova/instances/u/hosts': mkdir /var/lib/nova: read-only file system",
                "engine error during create: error while creating mount source path '<path>': mkdir <path>: read-only file system",
            ),
            ("cannot reach unix:///var/run/docker.sock.", "cannot reach <url>."),
            ("broker 10.0.0.5:5672 refused, [fd00::1]:5672 too", "broker <address> refused, <address> too"),
            ("subnet 10.1.0.0/24 via fe80::1 (addr=192.168.1.9)", "subnet <address> via <address> (addr=<address>)"),
            ("path=/etc/nova/nova.conf, see ~/notes", "path=<path>, see <path>"),
            // Not paths, URLs or addresses: left as they are.
            ("Instance 6f1b2c1e-0000-4000-8000-000000000001 in power state shutdown. Cannot stop", "same"),
            ("flavor vcpus 0 is out of range: must be at least 1 (1/2 done)", "same"),
            ("capability \"SYS_ADMIN\" is not handed to tenants; a/b", "same"),
        ];
        for (text, want) in cases {
            let want = if want == "same" { text } else { want };
            assert_eq!(redact_host_details(text), want, "{text}");
        }
    }

    #[test]
    fn faults_keep_the_whole_error_for_admins_only() {
        let e = OpError::Invalid(
            "mkdir /var/lib/nova-docker/instances/x: permission denied at http://10.0.0.2:2375/v1.41".into(),
        );
        let f = e.fault_record();
        assert_eq!(f.code, 500);
        assert_eq!(f.message, "mkdir <path>: permission denied at <url>");
        assert!(f.details.contains("/var/lib/nova-docker/instances/x") && f.details.contains("http://10.0.0.2:2375"));
        // A code other than 500 shows its details to the tenant too.
        let e = OpError::Nova(RemoteError::nova("Invalid", "bad /etc/passwd", 400, json!({})));
        let f = e.fault_record();
        assert_eq!((f.code, f.message.as_str()), (400, "bad <path>"));
        assert!(!f.details.contains("/etc/passwd"), "{}", f.details);
    }
}
