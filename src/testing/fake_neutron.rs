//! An in-memory Neutron ([`PortService`]): one network `net-1` with one
//! IPv4 subnet, ports created on request and bound to the instance, deleted
//! or unbound when released. Ports report ACTIVE unless told otherwise (then
//! the manager waits for `network-vif-plugged`); any call can be made to fail.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use crate::net::{NetworkInfo, Vif};
use crate::network::{BoundPort, NetworkError, NetworkRequest, PortService, PreparedPorts, Requested, port_in_project};
use crate::objects::Instance;

/// The only network.
pub const NETWORK: &str = "net-1";
/// Its DNS server.
pub const DNS: &str = "10.0.0.2";

#[derive(Default)]
struct State {
    ports: BTreeMap<String, Value>,
    next: usize,
    deleted: Vec<String>,
    unbound: Vec<String>,
    /// Every port bound (or made) for an instance, in order.
    bound: Vec<String>,
    inactive: bool,
    failing: HashSet<&'static str>,
}

/// The in-memory Neutron.
#[derive(Default)]
pub struct FakeNeutron {
    state: Mutex<State>,
}

fn failed(what: &str) -> NetworkError {
    NetworkError::Decode(format!("injected failure of {what}"))
}

impl FakeNeutron {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Makes every later call of `what` (a [`PortService`] method) fail.
    pub fn fail(&self, what: &'static str) {
        self.with(|s| s.failing.insert(what));
    }

    /// New ports report DOWN: the manager waits for their plug event.
    pub fn inactive_ports(&self) {
        self.with(|s| s.inactive = true);
    }

    /// Ports that exist, by id.
    pub fn ports(&self) -> Vec<String> {
        self.with(|s| s.ports.keys().cloned().collect())
    }

    /// The host a port is bound to (None when unbound or unknown).
    pub fn binding_host(&self, id: &str) -> Option<String> {
        self.with(|s| s.ports.get(id).and_then(|p| p["binding:host_id"].as_str().map(str::to_string)))
    }

    /// The `device_id` of a port (None when there is no such port).
    pub fn device_of(&self, id: &str) -> Option<String> {
        self.with(|s| s.ports.get(id).map(|p| p["device_id"].as_str().unwrap_or_default().to_string()))
    }

    /// Every port bound or made for an instance so far, in order.
    pub fn bound(&self) -> Vec<String> {
        self.with(|s| s.bound.clone())
    }

    /// Ports deleted so far.
    pub fn deleted(&self) -> Vec<String> {
        self.with(|s| s.deleted.clone())
    }

    fn check(&self, what: &'static str) -> Result<(), NetworkError> {
        if self.with(|s| s.failing.contains(what)) { Err(failed(what)) } else { Ok(()) }
    }

    fn create_port(&self, i: &Instance, r: &NetworkRequest) -> Result<BoundPort, NetworkError> {
        if let Some(id) = &r.port_id {
            // The user's own port, bound to the instance.
            let port = self.with(|s| {
                s.bound.push(id.clone());
                s.ports.get_mut(id).map(|p| {
                    p["device_id"] = json!(i.uuid());
                    if p["project_id"].is_null() {
                        // The user's port is in the user's project.
                        p["project_id"] = json!(i.project_id());
                    }
                    p.clone()
                })
            });
            return port
                .map(|port| BoundPort { port, created: false })
                .ok_or_else(|| NetworkError::Decode(format!("port {id} not found")));
        }
        let port = self.with(|s| {
            s.next += 1;
            let id = format!("port-{}", s.next);
            s.bound.push(id.clone());
            let port = json!({"id": id, "network_id": r.network_id.as_deref().unwrap_or(NETWORK),
                "device_id": i.uuid(), "project_id": i.project_id(), "status": if s.inactive { "DOWN" } else { "ACTIVE" },
                "fixed_ips": [{"subnet_id": "subnet-1", "ip_address": format!("10.0.0.{}", 10 + s.next)}]});
            s.ports.insert(id, port.clone());
            port
        });
        Ok(BoundPort { port, created: true })
    }

    /// A port that exists before any instance (the user's).
    pub fn add_user_port(&self, id: &str) {
        let port = json!({"id": id, "network_id": NETWORK, "device_id": "", "status": "ACTIVE",
            "fixed_ips": [{"subnet_id": "subnet-1", "ip_address": "10.0.0.200"}]});
        self.with(|s| s.ports.insert(id.to_string(), port));
    }

    /// A port of `project` whose `device_id` is `device` (an instance's
    /// port, or one another tenant pointed at it).
    pub fn add_port_of(&self, id: &str, device: &str, project: &str) {
        let port = json!({"id": id, "network_id": NETWORK, "device_id": device, "project_id": project,
            "status": "ACTIVE", "fixed_ips": [{"subnet_id": "subnet-1", "ip_address": "10.0.0.201"}]});
        self.with(|s| s.ports.insert(id.to_string(), port));
    }

    fn release(&self, id: &str, created: bool) {
        self.with(|s| {
            if created {
                s.ports.remove(id);
                s.deleted.push(id.to_string());
            } else {
                if let Some(p) = s.ports.get_mut(id) {
                    p["device_id"] = json!("");
                }
                s.unbound.push(id.to_string());
            }
        });
    }
}

impl PortService for FakeNeutron {
    fn prepare<'a>(
        &'a self,
        _i: &'a Instance,
        requested: &'a Requested,
        _security_groups: &'a [String],
    ) -> BoxFuture<'a, Result<PreparedPorts, NetworkError>> {
        Box::pin(async move {
            self.check("prepare")?;
            let reqs = match requested {
                Requested::None => Vec::new(),
                Requested::Auto => {
                    vec![NetworkRequest { network_id: Some(NETWORK.into()), port_id: None, address: None, tag: None }]
                }
                Requested::Some(r) => r.clone(),
            };
            Ok(PreparedPorts::plain(reqs))
        })
    }

    fn allocate<'a>(
        &'a self,
        i: &'a Instance,
        prepared: PreparedPorts,
        _admin: bool,
    ) -> BoxFuture<'a, Result<(Vec<BoundPort>, NetworkInfo), NetworkError>> {
        Box::pin(async move {
            self.check("allocate")?;
            let mut ports = Vec::new();
            for r in prepared.requests() {
                match self.create_port(i, r) {
                    Ok(p) => ports.push(p),
                    Err(e) => {
                        // As Neutron's: nothing half-bound is left.
                        self.deallocate(&ports).await;
                        return Err(e);
                    }
                }
            }
            match self.network_info(&ports).await {
                Ok(ni) => Ok((ports, ni)),
                Err(e) => {
                    self.deallocate(&ports).await;
                    Err(e)
                }
            }
        })
    }

    fn bind_one<'a>(
        &'a self,
        i: &'a Instance,
        r: &'a NetworkRequest,
        _security_groups: &'a [String],
        _admin: bool,
    ) -> BoxFuture<'a, Result<BoundPort, NetworkError>> {
        Box::pin(async move {
            self.check("bind_one")?;
            self.create_port(i, r)
        })
    }

    fn deallocate<'a>(&'a self, ports: &'a [BoundPort]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for p in ports {
                self.release(p.port["id"].as_str().unwrap_or_default(), p.created);
            }
        })
    }

    fn unbind_host<'a>(&'a self, port_ids: &'a [String]) -> BoxFuture<'a, Result<(), NetworkError>> {
        Box::pin(async move {
            self.check("unbind_host")?;
            self.with(|s| {
                for id in port_ids {
                    if let Some(p) = s.ports.get_mut(id) {
                        p["binding:host_id"] = json!("");
                    }
                }
            });
            Ok(())
        })
    }

    fn release_instance_ports<'a>(
        &'a self,
        uuid: &'a str,
        project: &'a str,
        preserved: &'a [String],
    ) -> BoxFuture<'a, Result<(), NetworkError>> {
        Box::pin(async move {
            self.check("release_instance_ports")?;
            let ids: Vec<String> = self.with(|s| {
                s.ports
                    .values()
                    .filter(|p| port_in_project(p, uuid, project))
                    .filter_map(|p| p["id"].as_str())
                    .map(String::from)
                    .collect()
            });
            for id in ids {
                let created = !preserved.contains(&id);
                self.release(&id, created);
            }
            Ok(())
        })
    }

    fn instance_ports<'a>(
        &'a self,
        uuid: &'a str,
        project: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Value>, NetworkError>> {
        Box::pin(async move {
            self.check("instance_ports")?;
            Ok(self.with(|s| s.ports.values().filter(|p| port_in_project(p, uuid, project)).cloned().collect()))
        })
    }

    fn bind_to_host<'a>(&'a self, port_id: &'a str, host: &'a str) -> BoxFuture<'a, Result<Value, NetworkError>> {
        Box::pin(async move {
            self.check("bind_to_host")?;
            self.with(|s| {
                s.ports.get_mut(port_id).map(|p| {
                    p["binding:host_id"] = json!(host);
                    p.clone()
                })
            })
            .ok_or_else(|| NetworkError::Decode(format!("port {port_id} not found")))
        })
    }

    fn network_info<'a>(&'a self, ports: &'a [BoundPort]) -> BoxFuture<'a, Result<NetworkInfo, NetworkError>> {
        Box::pin(async move {
            self.check("network_info")?;
            ports
                .iter()
                .map(|p| {
                    let port = &p.port;
                    let id = port["id"].as_str().unwrap_or_default();
                    let ip = port["fixed_ips"][0]["ip_address"].as_str().unwrap_or_default();
                    let vif = json!({"id": id, "address": "fa:16:3e:00:00:01", "type": "bridge",
                        "active": port["status"] == "ACTIVE", "preserve_on_delete": !p.created,
                        "network": {"id": NETWORK, "bridge": "brq-net-1", "label": NETWORK, "meta": {},
                            "subnets": [{"cidr": "10.0.0.0/24", "version": 4, "dns": [{"address": DNS}],
                                "ips": [{"address": ip, "type": "fixed", "version": 4}]}]}});
                    serde_json::from_value::<Vif>(vif).map_err(|e| NetworkError::Decode(e.to_string()))
                })
                .collect()
        })
    }
}
