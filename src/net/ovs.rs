//! Open vSwitch port management through `ovs-vsctl`: the one subprocess this
//! module runs.
//!
//! OVSDB speaks JSON-RPC, but re-implementing its transaction protocol is not
//! worth it for two commands per port; `ovs-vsctl` is what Nova/os-vif run
//! too, so the resulting database rows are identical to theirs. Every call
//! first resolves the executable (a clear [`NetError::OvsUnavailable`] when it
//! is missing), passes its arguments as argv (no shell), validates every
//! value it interpolates, and is bounded by a timeout (ovs-vsctl's own
//! `--timeout` plus a hard kill on our side).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::error::NetError;

/// Directories searched for `ovs-vsctl` besides `$PATH` (services often run
/// with a minimal PATH that lacks the sbin directories).
const EXTRA_DIRS: &[&str] = &["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/bin", "/sbin"];

/// Finds an executable `ovs-vsctl` (or the configured path). Exists so every
/// OVS operation fails early with a clear message when OVS is not installed,
/// before anything was created on the host.
pub(crate) async fn find_vsctl(configured: &Path) -> Result<PathBuf, NetError> {
    let configured = configured.to_path_buf();
    let res =
        tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || resolve(&configured))).await;
    match res {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(NetError::Internal(format!("looking for ovs-vsctl: {e}"))),
        Err(_) => Err(NetError::OvsUnavailable("looking for ovs-vsctl timed out".into())),
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn resolve(configured: &Path) -> Result<PathBuf, NetError> {
    if configured.components().count() > 1 {
        return if is_executable(configured) {
            Ok(configured.to_path_buf())
        } else {
            Err(NetError::OvsUnavailable(format!(
                "{} does not exist or is not executable (install openvswitch-switch \
                 or fix PlugOptions::ovs_vsctl)",
                configured.display()
            )))
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path_var).chain(EXTRA_DIRS.iter().map(PathBuf::from));
    for d in dirs {
        let cand = d.join(configured);
        if is_executable(&cand) {
            return Ok(cand);
        }
    }
    Err(NetError::OvsUnavailable(format!(
        "{} not found in PATH or the sbin directories; \"ovs\" VIFs need Open vSwitch \
         (openvswitch-switch) on the compute host",
        configured.display()
    )))
}

/// Values put into ovs-vsctl arguments: port ids, MACs, uuids, device names.
/// Restricting them keeps ovs-vsctl's own parser (which treats `,`, `=`,
/// quotes, spaces and leading `-` specially) out of play.
pub(crate) fn check_value(what: &'static str, v: &str) -> Result<(), NetError> {
    let ok = !v.is_empty()
        && v.len() <= 255
        && !v.starts_with('-')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok { Ok(()) } else { Err(NetError::InvalidName { name: v.to_string(), reason: what }) }
}

/// Runs `ovs-vsctl --timeout=N <args>` and returns stdout.
async fn run(vsctl: &Path, timeout: Duration, args: &[String]) -> Result<String, NetError> {
    let secs = timeout.as_secs().max(1);
    let mut cmd = tokio::process::Command::new(vsctl);
    cmd.arg(format!("--timeout={secs}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let shown = args.join(" ");
    let child = cmd.spawn().map_err(|e| NetError::Ovs {
        command: shown.clone(),
        detail: format!("cannot run {}: {e}", vsctl.display()),
    })?;
    // ovs-vsctl gives up after --timeout; allow a little more, then kill.
    let limit = Duration::from_secs(secs + 5);
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            return Err(NetError::Ovs { command: shown, detail: format!("waiting for ovs-vsctl: {e}") });
        }
        Err(_) => {
            return Err(NetError::Timeout { op: "ovs-vsctl", device: shown, timeout: limit });
        }
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Ovs {
            command: shown,
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        })
    }
}

/// The external-ids Neutron's OVS agent keys on.
pub(crate) struct PortIds<'a> {
    pub iface_id: &'a str,
    pub mac: &'a str,
    pub vm_uuid: &'a str,
}

/// `ovs-vsctl -- add-port BR DEV -- set Interface DEV external-ids:iface-id=..
/// iface-status=active attached-mac=.. vm-uuid=..`; the caller has removed a
/// stale record of DEV with [`del_port`] first, in its own transaction.
///
/// Two transactions on purpose. A re-plug (the container restarted, so the
/// veth is new under the old name) must look like a port that went away and
/// came back: with the port record kept (`--may-exist`) the userspace
/// datapath keeps its socket on the deleted device, and a delete and add in
/// one transaction leaves Neutron's OVS agent with a port that "lost its VLAN
/// tag" and no ARP-spoofing flows for it; both were seen on the test OVS.
/// The ids go in the same transaction as the add: the agent ignores an
/// interface without `attached-mac` and does not look at it again.
pub(crate) async fn add_port(
    vsctl: &Path,
    timeout: Duration,
    bridge: &str,
    dev: &str,
    ids: &PortIds<'_>,
) -> Result<(), NetError> {
    check_value("OVS bridge name", bridge)?;
    check_value("OVS port name", dev)?;
    check_value("OVS iface-id", ids.iface_id)?;
    check_value("MAC address", ids.mac)?;
    check_value("instance uuid", ids.vm_uuid)?;
    let args: Vec<String> = vec![
        "--".into(),
        "add-port".into(),
        bridge.into(),
        dev.into(),
        "--".into(),
        "set".into(),
        "Interface".into(),
        dev.into(),
        format!("external-ids:iface-id={}", ids.iface_id),
        "external-ids:iface-status=active".into(),
        format!("external-ids:attached-mac={}", ids.mac),
        format!("external-ids:vm-uuid={}", ids.vm_uuid),
    ];
    run(vsctl, timeout, &args).await.map(drop)
}

/// `ovs-vsctl -- --if-exists del-port DEV` (from whatever bridge has it).
///
/// On a re-plug this must run before the new device of the same name
/// exists: deleting a port makes ovs-vswitchd restore the flags it cached
/// for the device, by name, and on the new device that write clears IFF_UP
/// (seen on the test's userspace datapath: the new host end stayed down and
/// the instance unreachable).
pub(crate) async fn del_port(vsctl: &Path, timeout: Duration, dev: &str) -> Result<(), NetError> {
    check_value("OVS port name", dev)?;
    let args: Vec<String> = vec!["--".into(), "--if-exists".into(), "del-port".into(), dev.into()];
    run(vsctl, timeout, &args).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_restricted() {
        assert!(check_value("x", "fa:16:3e:00:00:01").is_ok());
        assert!(check_value("x", "b2f1c3a4-0000-4000-8000-000000000001").is_ok());
        assert!(check_value("x", "br-int").is_ok());
        assert!(check_value("x", "--help").is_err());
        assert!(check_value("x", "a b").is_err());
        assert!(check_value("x", "a,b=c").is_err());
        assert!(check_value("x", "").is_err());
    }

    #[tokio::test]
    async fn missing_vsctl_is_a_clear_error() {
        let e = find_vsctl(Path::new("/nonexistent/ovs-vsctl")).await.unwrap_err();
        assert!(matches!(e, NetError::OvsUnavailable(_)), "{e}");
        let e = find_vsctl(Path::new("surely-not-an-ovs-vsctl")).await.unwrap_err();
        assert!(e.to_string().contains("Open vSwitch"), "{e}");
    }
}
