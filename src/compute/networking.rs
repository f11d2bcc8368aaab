//! The manager's networking: ports bound during a build, plugged into the
//! container's namespace after each start, Neutron's events, and interface
//! hot-plug (`attach_interface` / `detach_interface`).

use serde_json::{Value, json};

use super::errors::OpError;
use super::events::{EventStatus, WaitOutcome};
use super::manager::ComputeManager;
use super::operation::{OnFailure, Operation};
use crate::net::{self, NetworkInfo, Vif};
use crate::network::{BoundPort, NetworkRequest, PreparedPorts, Requested};
use crate::objects::Instance;
use crate::rpc::RequestContext;
use crate::virt::{Driver, InstanceInfo};

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

    fn neutron(&self) -> Result<&dyn crate::network::PortService, OpError> {
        self.neutron.as_deref().ok_or_else(|| {
            OpError::Invalid("Neutron is not configured ([neutron] section): boot with --nic none".into())
        })
    }

    /// Build step, Neutron's part, first half: what the requested ports are
    /// made from, looked up without changing anything (a build runs it
    /// beside its claim). None when the build asks for no port.
    pub async fn prepare_ports(
        &self,
        i: &Instance,
        requested: &Requested,
        security_groups: &[String],
    ) -> Result<Option<PreparedPorts>, OpError> {
        if *requested == Requested::None {
            return Ok(None);
        }
        Ok(Some(self.neutron()?.prepare(i, requested, security_groups).await?))
    }

    /// Build step, Neutron's part, second half: the prepared ports bound to
    /// this host for the instance, which Nova has given this build (its
    /// claim and `networking` task saved), and described as Nova's
    /// network_info. On failure nothing bound is left.
    pub async fn bind_ports(
        &self,
        i: &Instance,
        prepared: Option<PreparedPorts>,
        admin: bool,
    ) -> Result<NetworkInfo, OpError> {
        let Some(prepared) = prepared else { return Ok(Vec::new()) };
        let (_, ni) = self.neutron()?.allocate(i, prepared, admin).await?;
        Ok(ni)
    }

    /// Build step, Nova's part: the bound ports' network_info written to
    /// the instance's info cache (`network_allocated`). The caller releases
    /// the ports should it fail.
    pub async fn cache_network(&self, ctx: &RequestContext, i: &mut Instance, ni: &NetworkInfo) -> Result<(), OpError> {
        if ni.is_empty() {
            return Ok(());
        }
        self.conductor.info_cache_save(ctx, i, &to_json(ni)?).await?;
        i.set_system_metadata("network_allocated", Some("True"));
        Ok(())
    }

    /// An evacuation's ports: each bound to this host (Nova's
    /// `setup_instance_network_on_host`), the info cache written from
    /// Neutron's new binding. Returns the new network_info.
    pub async fn bind_ports_for_evacuation(
        &self,
        ctx: &RequestContext,
        i: &mut Instance,
        _migration: Option<&crate::objects::Migration>,
    ) -> Result<NetworkInfo, OpError> {
        let old = self.network_info(ctx, i).await?;
        if old.is_empty() {
            return Ok(old);
        }
        let neutron = self.neutron()?;
        let mut ports = Vec::new();
        for v in &old {
            let r = NetworkRequest { port_id: Some(v.id.clone()), network_id: None, address: None, tag: None };
            let mut bound = neutron.bind_one(i, &r, &[], ctx.is_admin()).await?;
            bound.created = !preserved(v);
            ports.push(bound);
        }
        let ni = neutron.network_info(&ports).await?;
        self.conductor.info_cache_save(ctx, i, &to_json(&ni)?).await?;
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
    /// it in its project (another tenant's port pointed at it is not its),
    /// the user's ports (`preserve_on_delete` in the cache) unbound, the
    /// others deleted. A failure fails the delete, as in Nova. An instance
    /// without a project (Nova never makes one) releases its cache's ports.
    pub async fn release_network(&self, i: &Instance, ni: &NetworkInfo) -> Result<(), OpError> {
        let Some(neutron) = &self.neutron else { return Ok(()) };
        let Some(project) = i.project_id().filter(|p| !p.is_empty()) else {
            tracing::warn!(instance = i.uuid(), "the instance has no project: only its cached ports are released");
            neutron.deallocate(&bound_ports(ni)).await;
            return Ok(());
        };
        let users: Vec<String> = ni.iter().filter(|v| preserved(v)).map(|v| v.id.clone()).collect();
        neutron.release_instance_ports(i.uuid(), project, &users).await?;
        Ok(())
    }

    /// Plugs every port into the running instance (the driver does it after
    /// each start, since a started container has a new namespace) and with
    /// `wait_events` waits for `network-vif-plugged` of the ports not active
    /// yet, honouring `vif_plugging_timeout` and `vif_plugging_is_fatal`.
    /// The waits are registered before the plug, so an early event counts.
    pub async fn plug_vifs(&self, uuid: &str, ni: &NetworkInfo, wait_events: bool) -> Result<(), OpError> {
        let awaited: Vec<&str> =
            if wait_events { ni.iter().filter(|v| !v.active).map(|v| v.id.as_str()).collect() } else { Vec::new() };
        self.plug_vifs_awaiting(uuid, ni, &awaited).await
    }

    /// Plugs every port and waits for `network-vif-plugged` of the ports
    /// `awaited` (active or not), as `plug_vifs` describes.
    pub async fn plug_vifs_awaiting(&self, uuid: &str, ni: &NetworkInfo, awaited: &[&str]) -> Result<(), OpError> {
        if ni.is_empty() {
            return Ok(());
        }
        let timeout = self.settings.vif_plugging_timeout;
        let awaited: Vec<String> = if timeout.is_zero() {
            Vec::new()
        } else {
            awaited.iter().map(|port| format!("network-vif-plugged-{port}")).collect()
        };
        let expected = self.vif_events.expect(uuid, &awaited);
        if let Err(e) = self.driver.plug_vifs(uuid, ni).await {
            self.vif_events.forget(uuid);
            return Err(e.into());
        }
        // The bench's mark between our plumbing and Neutron's event.
        tracing::debug!(instance = uuid, ports = ni.len(), awaited = awaited.len(), "ports plugged");
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

    /// Rebuilds the info cache from Neutron's view of the instance's ports
    /// (those of its project only: see [`crate::network::Neutron::instance_ports`]).
    pub async fn refresh_network_info(&self, ctx: &RequestContext, mut i: Instance) -> Result<(), OpError> {
        let uuid = i.uuid().to_string();
        let _lock = self.locks.lock(&uuid).await;
        let neutron = self.neutron()?;
        let cached = self.network_info(ctx, &mut i).await?;
        let project = i.project_id().unwrap_or_default().to_string();
        let ports = neutron.instance_ports(&uuid, &project).await?;
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
        // The config drive says what the cache says (a port's addresses
        // changed in Neutron: `network-changed`).
        self.driver.refresh_config_drive(&uuid, &ni).await?;
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
            let port = neutron.bind_one(i, &request, &[], ctx.is_admin()).await?;
            let new = match neutron.network_info(std::slice::from_ref(&port)).await {
                Ok(v) => v,
                Err(e) => {
                    neutron.deallocate(std::slice::from_ref(&port)).await;
                    return Err(e.into());
                }
            };
            let vif = new.into_iter().next().ok_or_else(|| OpError::Invalid("Neutron returned no port".into()))?;
            let mut ni = self.network_info(ctx, i).await?;
            let plugged = self.driver.attach_interface(&uuid, &vif, ni.len()).await;
            if let Err(e) = plugged {
                neutron.deallocate(std::slice::from_ref(&port)).await;
                return Err(e.into());
            }
            ni.push(vif.clone());
            self.conductor.info_cache_save(ctx, i, &to_json(&ni)?).await?;
            self.driver.refresh_config_drive(&uuid, &ni).await?;
            serde_json::to_value(&vif).map_err(|e| OpError::Invalid(e.to_string()))
        })
        .await
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
            if let Err(e) = self.driver.detach_interface(&uuid, &vif).await {
                tracing::warn!(instance = %uuid, port = port_id, error = %e, "unplug failed");
            }
            if release {
                self.deallocate_network(&vec![vif]).await;
            }
            self.conductor.info_cache_save(ctx, i, &to_json(&ni)?).await?;
            self.driver.refresh_config_drive(&uuid, &ni).await?;
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

    /// A hard reboot under `[workarounds]
    /// wait_for_vif_plugged_event_during_hard_reboot`: kill, wait until
    /// Neutron reports the ports of the listed VNIC types unplugged (the L2
    /// agent saw their devices go: a device that went and came back within
    /// one of its polling passes can leave the port without its filter),
    /// start, plug, and wait for them plugged again. `None` when no port of
    /// the instance is of a listed type (the plain hard reboot applies).
    pub async fn hard_reboot_awaiting_vifs(
        &self,
        i: &Instance,
        ni: &NetworkInfo,
    ) -> Option<Result<crate::virt::InstanceInfo, OpError>> {
        let waited = &self.settings.hard_reboot_vif_wait;
        let ports: Vec<&str> = ni.iter().filter(|v| waited.contains(&v.vnic_type)).map(|v| v.id.as_str()).collect();
        if ports.is_empty() {
            return None;
        }
        Some(self.unplug_then_replug(i, ni, &ports).await)
    }

    async fn unplug_then_replug(
        &self,
        i: &Instance,
        ni: &NetworkInfo,
        ports: &[&str],
    ) -> Result<crate::virt::InstanceInfo, OpError> {
        let uuid = i.uuid();
        let timeout = self.settings.vif_plugging_timeout;
        // Neutron reports a port going down only if it was up (its status
        // now, not the info cache's, which keeps the status at binding);
        // with vif_plugging_timeout 0 nothing is awaited.
        let up: Vec<String> = if timeout.is_zero() {
            Vec::new()
        } else {
            let listed = self.neutron()?.instance_ports(uuid, i.project_id().unwrap_or_default()).await?;
            listed
                .iter()
                .filter(|p| p["status"] == "ACTIVE")
                .filter_map(|p| p["id"].as_str())
                .filter(|id| ports.contains(id))
                .map(str::to_string)
                .collect()
        };
        let unplugged: Vec<String> = up.iter().map(|id| format!("network-vif-unplugged-{id}")).collect();
        let expected_none = unplugged.is_empty();
        let expected = self.vif_events.expect(uuid, &unplugged);
        if let Err(e) = self.driver.power_off(uuid, std::time::Duration::ZERO).await {
            self.vif_events.forget(uuid);
            return Err(e.into());
        }
        // The host side goes too (OVS keeps a port whose veth died, and its
        // agent would not see it go): both agents see a device removed.
        self.driver.unplug_vifs(uuid, ni).await;
        match expected.wait(timeout).await {
            WaitOutcome::AllCompleted if !expected_none => {
                tracing::info!(instance = uuid, "hard reboot: Neutron saw the ports go; starting the container")
            }
            WaitOutcome::AllCompleted => {}
            other => {
                // Neutron may not report it (a port already down): the plug
                // below still waits for the ports to come up.
                self.vif_events.forget(uuid);
                tracing::warn!(instance = uuid, outcome = ?other, "hard reboot: no network-vif-unplugged for every port; plugging anyway");
            }
        }
        let info = self.driver.power_on(uuid).await?;
        self.plug_vifs_awaiting(uuid, ni, ports).await?;
        Ok(info)
    }

    /// Plugs the ports of a running instance whose namespace is not the one
    /// plugged last (the container was started outside Nova, or while this
    /// service was down).
    pub async fn ensure_plugged(&self, i: &Instance) -> Result<(), OpError> {
        let ni = self.network_info_of(i);
        self.driver.ensure_vifs_plugged(i.uuid(), &ni).await?;
        Ok(())
    }
}
