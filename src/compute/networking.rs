//! The manager's networking: ports bound during a build, plugged into the
//! container's namespace after each start, Neutron's events, and interface
//! hot-plug (`attach_interface` / `detach_interface`).

use serde_json::{Value, json};

use super::errors::OpError;
use super::events::{EventStatus, WaitOutcome};
use super::manager::ComputeManager;
use super::operation::{OnFailure, Operation};
use super::states::TaskState;
use crate::conductor::Expected;
use crate::net::{self, NetnsLink, NetworkInfo, Vif};
use crate::network::{BoundPort, NetworkRequest, Requested};
use crate::objects::Instance;
use crate::rpc::RequestContext;
use crate::virt::{Driver, InstanceInfo, VirtError};

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

fn to_json(ni: &NetworkInfo) -> Result<String, OpError> {
    net::model::network_info_to_string(ni).map_err(|e| OpError::Invalid(format!("network_info: {e}")))
}

/// Whether a VIF's port is the user's own (kept when the instance goes).
fn preserved(v: &Vif) -> bool {
    v.extra.get("preserve_on_delete").and_then(Value::as_bool).unwrap_or(false)
}

/// The ports of a network_info as bound ports (for release).
fn bound_ports(ni: &NetworkInfo) -> Vec<BoundPort> {
    ni.iter().map(|v| BoundPort { port: json!({"id": v.id}), created: !preserved(v) }).collect()
}

impl<D: Driver> ComputeManager<D> {
    /// The instance's network_info from its info cache.
    pub fn network_info_of(&self, i: &Instance) -> NetworkInfo {
        net::parse_network_info(&i.network_info_json()).unwrap_or_default()
    }

    /// The network info of an instance as an RPC brought it. The API does
    /// not always send the info cache (Zed's start loads only the metadata):
    /// then, as Nova's lazy load does, it is read through the conductor and
    /// kept on the instance.
    pub async fn network_info(&self, ctx: &RequestContext, i: &mut Instance) -> Result<NetworkInfo, OpError> {
        if !i.obj.is_set("info_cache") {
            self.conductor.info_cache_load(ctx, i).await?;
        }
        Ok(self.network_info_of(i))
    }

    fn neutron(&self) -> Result<&crate::network::Neutron, OpError> {
        self.neutron.as_ref().ok_or_else(|| {
            OpError::Invalid("Neutron is not configured ([neutron] section): boot with --nic none".into())
        })
    }

    /// Build step: `task_state=networking`, ports bound to this host (the
    /// ones created in `security_groups`), the info cache written. Returns
    /// the new network_info (empty for none).
    pub async fn allocate_network(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        requested: &Requested,
        security_groups: &[String],
    ) -> Result<NetworkInfo, OpError> {
        if *requested == Requested::None {
            return Ok(Vec::new());
        }
        self.begin_task(ctx, i, TaskState::Networking, Expected::idle()).await?;
        let neutron = self.neutron()?;
        let ports = neutron.allocate(i, requested, security_groups).await?;
        let ni = match neutron.network_info(&ports).await {
            Ok(ni) => ni,
            Err(e) => {
                neutron.deallocate(&ports).await;
                return Err(e.into());
            }
        };
        if let Err(e) = self.conductor.info_cache_save(ctx, i, &to_json(&ni)?).await {
            neutron.deallocate(&ports).await;
            return Err(e.into());
        }
        i.set_system_metadata("network_allocated", Some("True"));
        Ok(ni)
    }

    /// Releases an instance's ports: ours deleted, the user's unbound.
    pub async fn deallocate_network(&self, ni: &NetworkInfo) {
        if ni.is_empty() {
            return;
        }
        if let Some(n) = &self.neutron {
            n.deallocate(&bound_ports(ni)).await;
        }
    }

    /// Releases the ports of an instance being deleted: Neutron's list for
    /// it, the user's ports (`preserve_on_delete` in the cache) unbound, the
    /// others deleted. A failure fails the delete, as in Nova.
    pub async fn release_network(&self, uuid: &str, ni: &NetworkInfo) -> Result<(), OpError> {
        let Some(neutron) = &self.neutron else { return Ok(()) };
        let users: Vec<String> = ni.iter().filter(|v| preserved(v)).map(|v| v.id.clone()).collect();
        neutron.release_instance_ports(uuid, &users).await?;
        Ok(())
    }

    /// Plugs every port into the running container (after each start, since
    /// a started container has a new namespace), creates the
    /// `/var/run/netns/<container id>` entry, and with `wait_events` waits for
    /// `network-vif-plugged` of the ports not active yet, honouring
    /// `vif_plugging_timeout` and `vif_plugging_is_fatal`.
    pub async fn plug_vifs(&self, uuid: &str, ni: &NetworkInfo, wait_events: bool) -> Result<(), OpError> {
        if ni.is_empty() {
            return Ok(());
        }
        let info = self.driver.get_info(uuid).await?;
        let pid =
            info.pid.ok_or_else(|| OpError::Invalid("the container is not running; cannot plug its ports".into()))?;
        let timeout = self.settings.vif_plugging_timeout;
        let awaited: Vec<String> = if wait_events && !timeout.is_zero() {
            ni.iter().filter(|v| !v.active).map(|v| format!("network-vif-plugged-{}", v.id)).collect()
        } else {
            Vec::new()
        };
        let opts = self.plug_options(uuid);
        // Names not from Neutron's binding: refused before the netns entry.
        net::binding::check_all(ni, &opts)?;
        let expected = self.vif_events.expect(uuid, &awaited);
        NetnsLink::create(&info.container_id, pid as i32).await?;
        if let Err(e) = net::plug_all(ni, pid as i32, &opts).await {
            self.vif_events.forget(uuid);
            return Err(e.into());
        }
        if expected.is_empty() {
            return Ok(());
        }
        match expected.wait(timeout).await {
            WaitOutcome::AllCompleted => Ok(()),
            WaitOutcome::Failed(events) if self.settings.vif_plugging_is_fatal => {
                Err(OpError::Invalid(format!("Neutron reported a failure plugging: {}", events.join(", "))))
            }
            WaitOutcome::TimedOut(events) if self.settings.vif_plugging_is_fatal => {
                self.vif_events.forget(uuid);
                Err(OpError::Invalid(format!(
                    "timed out after {timeout:?} waiting for Neutron's {} (vif_plugging_timeout)",
                    events.join(", ")
                )))
            }
            other => {
                self.vif_events.forget(uuid);
                tracing::warn!(instance = uuid, outcome = ?other, "continuing without network-vif-plugged (vif_plugging_is_fatal = false)");
                Ok(())
            }
        }
    }

    fn plug_options(&self, uuid: &str) -> net::PlugOptions {
        net::PlugOptions {
            instance_uuid: Some(uuid.to_string()),
            ovs_integration_bridge: self.settings.neutron_ovs_bridge.clone(),
            ..self.plug_opts.clone()
        }
    }

    /// Removes the host side of every port and the netns entry.
    pub async fn unplug_vifs(&self, uuid: &str, ni: &NetworkInfo, container_id: Option<&str>) {
        if let Some(cid) = container_id
            && let Err(e) = NetnsLink::remove(cid).await
        {
            tracing::warn!(instance = uuid, error = %e, "could not remove the netns entry");
        }
        if !ni.is_empty()
            && let Err(e) = net::unplug_all(ni, &self.plug_options(uuid)).await
        {
            tracing::warn!(instance = uuid, error = %e, "could not unplug every port");
        }
    }

    /// The container id, when there is a container.
    pub async fn container_id(&self, uuid: &str) -> Option<String> {
        match self.driver.get_info(uuid).await {
            Ok(info) => Some(info.container_id),
            Err(VirtError::NotFound(_)) => None,
            Err(e) => {
                tracing::warn!(instance = uuid, error = %e, "cannot inspect the container");
                None
            }
        }
    }

    /// `external_instance_event`: vif-plugged wakes waiters, network-changed
    /// refreshes the info cache, network-vif-deleted unplugs the port.
    pub async fn handle_external_events(&self, ctx: &RequestContext, args: &serde_json::Map<String, Value>) {
        let events = args.get("events").and_then(Value::as_array).cloned().unwrap_or_default();
        let instances: Vec<Instance> = args
            .get("instances")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| Instance::from_primitive(v).ok()).collect())
            .unwrap_or_default();
        for e in events {
            let d = &e["nova_object.data"];
            let uuid = d["instance_uuid"].as_str().unwrap_or_default();
            let name = d["name"].as_str().unwrap_or_default();
            let tag = d["tag"].as_str();
            let status = if d["status"] == "failed" { EventStatus::Failed } else { EventStatus::Completed };
            tracing::info!(instance = uuid, event = name, tag = tag.unwrap_or("-"), ?status, "external instance event");
            let full = match tag {
                Some(t) => format!("{name}-{t}"),
                None => name.to_string(),
            };
            match name {
                "network-vif-plugged" | "network-vif-unplugged" => {
                    self.vif_events.deliver(uuid, &full, status);
                }
                "network-changed" => {
                    if let Some(i) = instances.iter().find(|i| i.uuid() == uuid)
                        && let Err(err) = self.refresh_network_info(ctx, i.clone()).await
                    {
                        tracing::warn!(instance = uuid, error = %err, "could not refresh the network info");
                    }
                }
                "network-vif-deleted" => {
                    // Neutron deleted the port: unplug it if this instance still has it.
                    let (Some(mut i), Some(port)) = (instances.iter().find(|i| i.uuid() == uuid).cloned(), tag) else {
                        continue;
                    };
                    let has_port = match self.network_info(ctx, &mut i).await {
                        Ok(ni) => ni.iter().any(|v| v.id == port),
                        Err(err) => {
                            tracing::warn!(instance = uuid, error = %err, "cannot read the network info");
                            false
                        }
                    };
                    if has_port && let Err(err) = self.detach_interface(ctx, i, port, false).await {
                        tracing::warn!(instance = uuid, port, error = %err, "could not remove a deleted port");
                    }
                }
                _ => {}
            }
        }
    }

    /// Rebuilds the info cache from Neutron's view of the instance's ports.
    pub async fn refresh_network_info(&self, ctx: &RequestContext, mut i: Instance) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let _lock = self.locks.lock(&uuid).await;
        let neutron = self.neutron()?;
        let cached = self.network_info(ctx, &mut i).await?;
        let ports = neutron.instance_ports(&uuid).await?;
        // Keep the cache's order; new ports go last.
        let order: Vec<&str> = cached.iter().map(|v| v.id.as_str()).collect();
        let mut bound: Vec<BoundPort> = ports
            .into_iter()
            .map(|p| {
                let id = p["id"].as_str().unwrap_or_default().to_string();
                let created = cached.iter().find(|v| v.id == id).map(|v| !preserved(v)).unwrap_or(false);
                BoundPort { port: p, created }
            })
            .collect();
        bound.sort_by_key(|b| order.iter().position(|o| Some(*o) == b.port["id"].as_str()).unwrap_or(usize::MAX));
        let ni = neutron.network_info(&bound).await?;
        self.conductor.info_cache_save(ctx, &mut i, &to_json(&ni)?).await?;
        Ok(())
    }

    /// `attach_interface` (a call): binds a port, plugs it into the running
    /// container, records it in the info cache, returns the VIF.
    pub async fn attach_interface(
        &self,
        ctx: &RequestContext,
        mut i: Instance,
        request: NetworkRequest,
    ) -> Result<Value, OpError> {
        let uuid = i.uuid().to_string();
        // A call: the caller gets the error, the instance no fault.
        let op = Operation::new("compute_attach_interface").on_failure(OnFailure::EventOnly);
        self.run(ctx, &mut i, op, async |i| {
            let neutron = self.neutron()?;
            // As Nova's attach: no groups asked for, the project's default.
            let port = neutron.bind_one(i, &request, &[]).await?;
            let new = match neutron.network_info(std::slice::from_ref(&port)).await {
                Ok(v) => v,
                Err(e) => {
                    neutron.deallocate(std::slice::from_ref(&port)).await;
                    return Err(e.into());
                }
            };
            let vif = new.into_iter().next().ok_or_else(|| OpError::Invalid("Neutron returned no port".into()))?;
            let mut ni = self.network_info(ctx, i).await?;
            let plugged = self.plug_one(&uuid, &vif, ni.len()).await;
            if let Err(e) = plugged {
                neutron.deallocate(std::slice::from_ref(&port)).await;
                return Err(e);
            }
            ni.push(vif.clone());
            self.conductor.info_cache_save(ctx, i, &to_json(&ni)?).await?;
            serde_json::to_value(&vif).map_err(|e| OpError::Invalid(e.to_string()))
        })
        .await
    }

    /// Plugs one VIF into a running container under the first free `ethN`.
    async fn plug_one(&self, uuid: &str, vif: &Vif, from: usize) -> Result<(), OpError> {
        let info = self.driver.get_info(uuid).await?;
        let opts = self.plug_options(uuid);
        net::binding::check(vif, &opts)?;
        let Some(pid) = info.pid else {
            // A stopped container gets its ports on the next start.
            return Ok(());
        };
        NetnsLink::create(&info.container_id, pid as i32).await?;
        let mut last = None;
        for n in from..from + 16 {
            match net::plug(vif, pid as i32, &format!("eth{n}"), &opts).await {
                Ok(_) => return Ok(()),
                Err(e @ net::NetError::DeviceConflict { .. }) => last = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map(Into::into).unwrap_or_else(|| OpError::Invalid("no free interface name".into())))
    }

    /// `detach_interface`: unplugs the port, releases it, updates the cache.
    /// `release` is false when Neutron already deleted the port.
    pub async fn detach_interface(
        &self,
        ctx: &RequestContext,
        i: Instance,
        port_id: &str,
        release: bool,
    ) -> Result<(), OpError> {
        // A user's request gets a fault; Neutron's event does not.
        let on_failure = if release { OnFailure::FaultOnly } else { OnFailure::EventOnly };
        let op = Operation::new("compute_detach_interface").on_failure(on_failure);
        self.operate(ctx, i, op, async |i| {
            let uuid = i.uuid().to_string();
            let mut ni = self.network_info(ctx, i).await?;
            let Some(pos) = ni.iter().position(|v| v.id == port_id) else {
                return Err(OpError::Nova(crate::rpc::RemoteError::nova(
                    "PortNotFound",
                    format!("Port id {port_id} could not be found."),
                    404,
                    json!({"port_id": port_id}),
                )));
            };
            let vif = ni.remove(pos);
            if let Err(e) = net::unplug(&vif, &self.plug_options(&uuid)).await {
                tracing::warn!(instance = %uuid, port = port_id, error = %e, "unplug failed");
            }
            if release {
                self.deallocate_network(&vec![vif]).await;
            }
            self.conductor.info_cache_save(ctx, i, &to_json(&ni)?).await?;
            Ok(())
        })
        .await
    }

    /// Starts a stopped container and plugs its ports into the new network
    /// namespace it gets; the network info loads beside the start.
    pub async fn power_on_and_replug(&self, ctx: &RequestContext, i: &mut Instance) -> Result<InstanceInfo, OpError> {
        let uuid = i.uuid().to_string();
        let (ni, info) = tokio::join!(self.network_info(ctx, i), self.driver.power_on(&uuid));
        let info = info?;
        self.plug_vifs(&uuid, &ni?, false).await?;
        Ok(info)
    }

    /// Plugs the ports of a running instance whose namespace is not the one
    /// plugged last (the container was started outside Nova, or while this
    /// service was down).
    pub async fn ensure_plugged(&self, i: &Instance) -> Result<(), OpError> {
        let ni = self.network_info_of(i);
        if ni.is_empty() {
            return Ok(());
        }
        let info = match self.driver.get_info(i.uuid()).await {
            Ok(info) => info,
            Err(VirtError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let Some(pid) = info.pid else { return Ok(()) };
        if NetnsLink::is_current(&info.container_id, pid as i32).await.unwrap_or(false) {
            return Ok(());
        }
        tracing::info!(instance = i.uuid(), "the container's namespace changed; plugging its ports again");
        self.plug_vifs(i.uuid(), &ni, false).await
    }

    /// Removes `/var/run/netns/<container id>` entries whose container no
    /// longer exists (removed while this service was down, or behind its
    /// back): a leftover entry keeps the namespace, and the ports plugged in
    /// it, alive.
    pub async fn sweep_netns_entries(&self) {
        let Ok(ids) = self.driver.all_container_ids().await else { return };
        let existing: std::collections::HashSet<String> = ids.into_iter().collect();
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

    /// After a stop: the namespace is gone, its entry goes too.
    pub async fn forget_netns(&self, uuid: &str) {
        if let Some(cid) = self.container_id(uuid).await
            && let Err(e) = NetnsLink::remove(&cid).await
        {
            tracing::warn!(instance = uuid, error = %e, "could not remove the netns entry");
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
