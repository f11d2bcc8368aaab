//! Typed errors of the networking module.
//!
//! Every variant names the device (or netns entry, or port) it is about, and
//! netlink failures carry the kernel errno both as a number (for callers that
//! branch on it) and as text (for the instance fault shown to the user).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while plugging or unplugging a VIF.
///
/// It exists so that the compute manager can tell a bad `network_info`
/// (`InvalidVif`, `UnsupportedVifType`: do not retry, fail the build) from a
/// host problem (`Netlink`, `Timeout`, `Ovs*`: possibly transient), and so
/// that every message names the device and the kernel's errno text instead of
/// a bare "operation failed".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The VIF's `type` is not one this service can plug.
    #[error(
        "port {port}: unsupported vif type {vif_type:?}; nova-docker can plug only \
         \"bridge\", \"tap\" and \"ovs\" VIFs (check the Neutron mechanism driver and \
         the port's binding:vif_type)"
    )]
    UnsupportedVifType {
        /// Neutron port id.
        port: String,
        /// The `type` found in network_info (empty when it was null).
        vif_type: String,
    },

    /// The network_info entry is incomplete or malformed (bad MAC, CIDR, IP...).
    #[error("port {port}: invalid network_info: {reason}")]
    InvalidVif {
        /// Neutron port id.
        port: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A host name in the VIF (device, bridge, OVS iface-id) that is not the
    /// one Nova derives from Neutron's binding: refused before any change on
    /// the host.
    #[error(
        "port {port}: {what} {found:?} is not the one Neutron's binding gives ({expected}); \
         refused before any change on the host"
    )]
    NotFromBinding {
        /// Neutron port id (as the VIF gives it).
        port: String,
        /// Which name: "device name", "bridge", "OVS iface-id", "port id"...
        what: &'static str,
        /// The name the VIF asks for.
        found: String,
        /// What it must be.
        expected: String,
    },

    /// An interface or netns name that the kernel (or iproute2) would refuse.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The kernel answered a netlink request with an error.
    #[error("{op} {device}: {}", errno_text(*errno))]
    Netlink {
        /// What was being done, e.g. "create veth".
        op: &'static str,
        /// The device (with context such as the netns) it was done to.
        device: String,
        /// Positive errno, e.g. 17 for EEXIST.
        errno: i32,
    },

    /// A netlink failure that carries no errno (decode error, closed socket).
    #[error("{op} {device}: netlink: {message}")]
    NetlinkProtocol {
        /// What was being done.
        op: &'static str,
        /// The device it was done to.
        device: String,
        /// rtnetlink's description.
        message: String,
    },

    /// An external wait (netlink answer, netns thread, ovs-vsctl) took too long.
    #[error("{op} {device}: no answer within {timeout:?}")]
    Timeout {
        /// What was being waited for.
        op: &'static str,
        /// The device it concerned.
        device: String,
        /// The limit that was hit.
        timeout: Duration,
    },

    /// The container's network namespace could not be opened or entered.
    #[error("network namespace of pid {pid}: {op}: {source}")]
    Netns {
        /// Container init pid.
        pid: i32,
        /// The step that failed ("open", "setns", "netlink socket"...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// No netlink socket could be opened in the service's own netns.
    #[error("cannot open a netlink socket in the host network namespace: {0}")]
    HostSocket(#[source] io::Error),

    /// Creating or removing a `/var/run/netns/<name>` entry failed.
    #[error("netns entry {}: {op}: {source}", path.display())]
    NetnsLink {
        /// The entry.
        path: PathBuf,
        /// The step that failed ("bind mount", "unmount", "create"...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Writing a per-interface sysctl (IPv6 settings) failed.
    #[error("sysctl {path}: {source}")]
    Sysctl {
        /// The /proc/sys path, relative to the netns it was written in.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// An `ovs` VIF was requested but Open vSwitch cannot be driven here.
    #[error("Open vSwitch is not available: {0}")]
    OvsUnavailable(String),

    /// `ovs-vsctl` ran and failed.
    #[error("ovs-vsctl {command}: {detail}")]
    Ovs {
        /// The arguments, for the log.
        command: String,
        /// Exit status and stderr.
        detail: String,
    },

    /// A device with the wanted name exists but is of another kind; it is not
    /// ours, so it is left alone.
    #[error("device {device} already exists as {found}, expected {expected}; not touching it")]
    DeviceConflict {
        /// The name.
        device: String,
        /// The kind found ("bridge", "veth", "device without kind"...).
        found: String,
        /// The kind wanted.
        expected: &'static str,
    },

    /// A helper OS thread could not be started or vanished.
    #[error("internal: {0}")]
    Internal(String),
}

impl NetError {
    /// The kernel errno of a netlink failure, if this is one.
    ///
    /// Exists so callers can branch on EEXIST / ENODEV without matching on
    /// the variant layout.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::Netlink { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// Builds the right variant from an rtnetlink error.
    pub(crate) fn from_rtnl(op: &'static str, device: impl Into<String>, e: rtnetlink::Error) -> Self {
        let device = device.into();
        match e {
            rtnetlink::Error::NetlinkError(msg) if msg.raw_code() != 0 => {
                NetError::Netlink { op, device, errno: msg.raw_code().abs() }
            }
            other => NetError::NetlinkProtocol { op, device, message: other.to_string() },
        }
    }
}

/// "EEXIST: File exists" for 17: the symbolic name (greppable, matches the
/// kernel source) followed by strerror's text.
pub(crate) fn errno_text(errno: i32) -> String {
    let name = format!("{:?}", nix::errno::Errno::from_raw(errno));
    let text = io::Error::from_raw_os_error(errno).to_string();
    // io::Error's Display appends " (os error N)"; keep only the description.
    let text = match text.rfind(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    format!("{name}: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netlink_message_names_device_and_errno() {
        let e = NetError::Netlink { op: "create veth", device: "tapa1b2c3d4-00".into(), errno: 17 };
        assert_eq!(e.to_string(), "create veth tapa1b2c3d4-00: EEXIST: File exists");
        assert_eq!(e.errno(), Some(17));
    }

    #[test]
    fn unsupported_type_is_explicit() {
        let e = NetError::UnsupportedVifType { port: "p1".into(), vif_type: "vhostuser".into() };
        let s = e.to_string();
        assert!(s.contains("vhostuser") && s.contains("p1"), "{s}");
    }
}
