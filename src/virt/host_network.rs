//! The host side of an instance's Neutron ports, as the Docker driver keeps
//! it: the ports plugged into the container's network namespace (through
//! [`crate::net`]), the `/var/run/netns/<container id>` entry operators use,
//! and what the guest's resolv.conf and hosts say about them.
//!
//! Exists so the compute manager hands the driver a `network_info` and never
//! sees a pid or a namespace (Nova keeps the same behind `ComputeDriver`'s
//! `plug_vifs`, `unplug_vifs`, `attach_interface` and `detach_interface`).

use std::collections::HashSet;

use crate::net::{self, NetnsLink, NetworkInfo, PlugOptions, Vif};

use super::VirtError;

/// How many `ethN` names an attach tries past the instance's last port.
const ATTACH_NAME_TRIES: usize = 16;

/// The DNS servers of a network_info, in order, without duplicates.
pub fn dns_servers(ni: &NetworkInfo) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for vif in ni {
        for s in &vif.network.subnets {
            for d in &s.dns {
                if let Ok(Some(ip)) = d.ip() {
                    let ip = ip.to_string();
                    if !out.contains(&ip) {
                        out.push(ip);
                    }
                }
            }
        }
    }
    out
}

/// The fixed IP addresses of a network_info, in order, without duplicates
/// (a VIF whose addresses do not parse is skipped: plugging reports it).
pub fn fixed_addresses(ni: &NetworkInfo) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ip in ni.iter().flat_map(|vif| vif.fixed_ips().unwrap_or_default()) {
        let ip = ip.addr.to_string();
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// A container as the host side of its ports sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostContainer {
    /// The instance.
    pub uuid: String,
    /// The engine's container id (names the netns entry).
    pub id: String,
    /// Its init process while it runs (its namespace gets the ports).
    pub pid: Option<i64>,
}

/// The host's way of plugging ports (the integration bridge, timeouts).
#[derive(Debug, Clone, Default)]
pub struct HostNetwork {
    /// The options every plug and unplug starts from.
    pub options: PlugOptions,
}

impl HostNetwork {
    /// Plugging on a host whose OVS integration bridge is `ovs_bridge`.
    pub fn new(ovs_bridge: &str) -> Self {
        HostNetwork {
            options: PlugOptions { ovs_integration_bridge: ovs_bridge.to_string(), ..PlugOptions::default() },
        }
    }

    fn options(&self, uuid: &str) -> PlugOptions {
        PlugOptions { instance_uuid: Some(uuid.to_string()), ..self.options.clone() }
    }

    /// Plugs every port into the running container `c` (after each start,
    /// since a started container has a new namespace) and points the netns
    /// entry at its namespace. Port names not from Neutron's binding are
    /// refused before anything is created.
    pub async fn plug_all(&self, c: &HostContainer, ni: &NetworkInfo) -> Result<(), VirtError> {
        if ni.is_empty() {
            return Ok(());
        }
        let pid =
            c.pid.ok_or_else(|| VirtError::Invalid("the container is not running; cannot plug its ports".into()))?;
        let opts = self.options(&c.uuid);
        net::binding::check_all(ni, &opts)?;
        NetnsLink::create(&c.id, pid as i32).await?;
        net::plug_all(ni, pid as i32, &opts).await?;
        Ok(())
    }

    /// Plugs one port into the container under the first free `ethN` from
    /// `from`; a stopped container gets it at its next start.
    pub async fn plug_one(&self, c: &HostContainer, vif: &Vif, from: usize) -> Result<(), VirtError> {
        let opts = self.options(&c.uuid);
        net::binding::check(vif, &opts)?;
        let Some(pid) = c.pid else { return Ok(()) };
        NetnsLink::create(&c.id, pid as i32).await?;
        let mut last = None;
        for n in from..from + ATTACH_NAME_TRIES {
            match net::plug(vif, pid as i32, &format!("eth{n}"), &opts).await {
                Ok(_) => return Ok(()),
                Err(e @ net::NetError::DeviceConflict { .. }) => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map(Into::into).unwrap_or_else(|| VirtError::Invalid("no free interface name".into())))
    }

    /// Removes the host side of every port and the netns entry of
    /// `container_id` (when there is a container); failures are logged.
    pub async fn unplug_all(&self, uuid: &str, container_id: Option<&str>, ni: &NetworkInfo) {
        if let Some(cid) = container_id {
            self.forget(uuid, cid).await;
        }
        if !ni.is_empty()
            && let Err(e) = net::unplug_all(ni, &self.options(uuid)).await
        {
            tracing::warn!(instance = uuid, error = %e, "could not unplug every port");
        }
    }

    /// Removes the host side of one port.
    pub async fn unplug_one(&self, uuid: &str, vif: &Vif) -> Result<(), VirtError> {
        Ok(net::unplug(vif, &self.options(uuid)).await?)
    }

    /// Removes the netns entry of a container whose namespace is gone (it
    /// stopped); failures are logged.
    pub async fn forget(&self, uuid: &str, container_id: &str) {
        if let Err(e) = NetnsLink::remove(container_id).await {
            tracing::warn!(instance = uuid, error = %e, "could not remove the netns entry");
        }
    }

    /// Whether the netns entry of the running container `c` is its
    /// current namespace (a container restarted outside Nova has a new one).
    pub async fn is_current(&self, c: &HostContainer) -> bool {
        match c.pid {
            Some(pid) => NetnsLink::is_current(&c.id, pid as i32).await.unwrap_or(false),
            None => true,
        }
    }

    /// Removes the netns entries whose container is not in `existing`
    /// (removed while this service was down, or behind its back): a
    /// leftover entry keeps the namespace, and the ports in it, alive.
    pub async fn sweep(&self, existing: &HashSet<String>) {
        let Ok(mut dir) = tokio::fs::read_dir(net::NETNS_RUN_DIR).await else { return };
        while let Ok(Some(entry)) = dir.next_entry().await {
            let name = entry.file_name().to_string_lossy().to_string();
            let looks_like_container = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if looks_like_container && !existing.contains(&name) {
                tracing::info!(netns = %name, "removing the netns entry of a container that no longer exists");
                if let Err(e) = NetnsLink::remove(&name).await {
                    tracing::warn!(netns = %name, error = %e, "could not remove a stale netns entry");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::model::parse_network_info;

    const TWO_PORTS: &str = r#"[
      {"id": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "address": "fa:16:3e:01:02:03", "type": "bridge",
       "network": {"bridge": "brq-a", "subnets": [
         {"cidr": "10.0.0.0/24", "version": 4, "dns": [{"address": "10.0.0.2"}, {"address": "10.0.0.3"}],
          "ips": [{"address": "10.0.0.5", "type": "fixed", "version": 4},
                  {"address": "172.24.4.9", "type": "floating", "version": 4}]},
         {"cidr": "fd00::/64", "version": 6, "dns": [{"address": "10.0.0.2"}, {"address": "fd00::53"}],
          "ips": [{"address": "fd00::5", "type": "fixed", "version": 6}]}]}},
      {"id": "1f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "address": "fa:16:3e:01:02:04", "type": "bridge",
       "network": {"bridge": "brq-b", "subnets": [
         {"cidr": "10.1.0.0/24", "version": 4, "dns": [{"address": "10.0.0.3"}],
          "ips": [{"address": "10.1.0.5", "type": "fixed", "version": 4}]}]}}]"#;

    #[test]
    fn dns_servers_and_fixed_addresses_keep_order_without_duplicates() {
        let ni = parse_network_info(TWO_PORTS).unwrap();
        assert_eq!(dns_servers(&ni), ["10.0.0.2", "10.0.0.3", "fd00::53"]);
        assert_eq!(fixed_addresses(&ni), ["10.0.0.5", "fd00::5", "10.1.0.5"], "floating IPs are not the guest's");
        assert!(dns_servers(&Vec::new()).is_empty() && fixed_addresses(&Vec::new()).is_empty());
    }
}
