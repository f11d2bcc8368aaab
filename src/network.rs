//! Neutron for a compute host: binding the instance's ports to this host, as
//! nova-compute's `allocate_for_instance` does, and describing them as Nova's
//! `network_info` (the VIF model the info cache stores and the plumbing uses).
//!
//! Ports are bound with admin credentials (`[neutron]`), on behalf of the
//! instance's project. Ports this service created are deleted with the
//! instance; ports the user brought are only unbound.
//!
//! Security groups: the groups a server asked for are put on the ports this
//! service creates, after resolving their names or ids among the groups of
//! the instance's project (and those shared with it), as Nova does. The admin
//! credentials would let any group id through, so the project scoping is
//! ours to enforce; a group that cannot be applied fails the build instead of
//! leaving the port in the project's default group.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use reqwest::Method;
use serde_json::{Value, json};

use crate::auth::{HttpError, ServiceClient, url_part};
use crate::net::{NetworkInfo, Vif};
use crate::objects::Instance;

/// Networking failures, worded for the instance fault.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A Neutron request failed (no endpoint, auth, transport, or an error
    /// status).
    #[error("Neutron: {0}")]
    Http(#[from] HttpError),
    /// Neutron left the port unbound after we set `binding:host_id`:
    /// usually no L2 agent serves this host. The port is released.
    #[error(
        "port {port} could not be bound to host {host} (binding:vif_type {vif_type}): is a Neutron L2 agent running for this host?"
    )]
    BindingFailed {
        /// The port's id.
        port: String,
        /// The host it was to be bound to (this service's `host`).
        host: String,
        /// What Neutron reported instead of a usable VIF type
        /// (`binding_failed` or `unbound`).
        vif_type: String,
    },
    /// A port the user brought is already some other instance's device;
    /// carries the port id.
    #[error("port {0} is in use by another instance")]
    PortInUse(String),
    /// The build's request is malformed (a network request with neither
    /// port nor network, `security_groups` not a list of names, groups
    /// without a project); carries what was wrong.
    #[error("network request not understood: {0}")]
    BadRequest(String),
    /// `--nic auto` but the project owns no network and none is shared.
    #[error("no network to auto-allocate: none is shared or owned by the project")]
    NoAutoNetwork,
    /// Neutron answered a success without the fields expected, or a port
    /// that does not make a VIF.
    #[error("Neutron returned an unusable document: {0}")]
    Decode(String),
    /// Nova's `SecurityGroupNotFound`: not a group of the instance's project
    /// (nor one shared with it).
    #[error("Security group {0} not found.")]
    SecurityGroupNotFound(String),
    /// Nova's `NoUniqueMatch` for a group name.
    #[error("Multiple security groups found matching '{0}'. Use an ID to be more specific.")]
    SecurityGroupNotUnique(String),
    /// Nova's `SecurityGroupCannotBeApplied`.
    #[error("Network requires port_security_enabled and subnet associated in order to apply security groups.")]
    SecurityGroupCannotBeApplied,
    /// Nova's `PortNotUsable`: the port is another project's.
    #[error("Port {port} not usable for instance {instance}.")]
    PortNotUsable {
        /// The port's id.
        port: String,
        /// The instance's uuid.
        instance: String,
    },
    /// Nova's `NetworkNotFound`: the network is neither the instance's
    /// project's nor shared with it (the tenant cannot see it, so it is not
    /// told it exists).
    #[error("Network {0} could not be found.")]
    NetworkNotFound(String),
    /// Nova's `ExternalNetworkAttachForbidden`: an external network that is
    /// not shared takes ports of admins only.
    #[error("It is not allowed to create an interface on external network {0}")]
    ExternalNetworkAttachForbidden(String),
}

/// One entry of a `NetworkRequestList`.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRequest {
    /// The network to create a port on (also `auto`/`none` in the raw
    /// list, which [`requested_networks`] turns into [`Requested`]).
    pub network_id: Option<String>,
    /// A port the user created, bound as it is; wins over `network_id`.
    pub port_id: Option<String>,
    /// The fixed IP asked for on a port this service creates.
    pub address: Option<String>,
    /// The device tag the user gave (`--nic tag=`); read, not yet used by
    /// this host.
    pub tag: Option<String>,
}

/// What a build asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Requested {
    /// No networking: no list, an empty one, or only `none`.
    None,
    /// `auto`: a network the project owns, else a shared one, is picked.
    Auto,
    /// The ports and networks asked for, in order (the order of the VIFs).
    Some(Vec<NetworkRequest>),
}

/// Reads a `NetworkRequestList` primitive.
pub fn requested_networks(v: Option<&Value>) -> Requested {
    let Some(objects) = v.and_then(|v| v["nova_object.data"]["objects"].as_array()) else {
        return Requested::None;
    };
    let reqs: Vec<NetworkRequest> = objects
        .iter()
        .map(|o| {
            let d = &o["nova_object.data"];
            let s = |k: &str| d[k].as_str().filter(|s| !s.is_empty()).map(str::to_string);
            NetworkRequest { network_id: s("network_id"), port_id: s("port_id"), address: s("address"), tag: s("tag") }
        })
        .collect();
    if reqs.is_empty() || reqs.iter().all(|r| r.network_id.as_deref() == Some("none")) {
        return Requested::None;
    }
    if reqs.len() == 1 && reqs[0].network_id.as_deref() == Some("auto") {
        return Requested::Auto;
    }
    Requested::Some(reqs)
}

/// The security groups a build asks for (`build_and_run_instance`'s
/// `security_groups`: names, or ids as Nova's API resolved them), cleaned as
/// Nova's `_clean_security_groups` does: none, or only `default`, means
/// "Neutron's choice" (the project's default group), i.e. an empty list.
/// Duplicates are dropped. Anything but a list of strings is refused.
pub fn requested_security_groups(v: Option<&Value>) -> Result<Vec<String>, NetworkError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(NetworkError::BadRequest(format!("security_groups is not a list: {}", kind(other))));
        }
    };
    let mut out: Vec<String> = Vec::new();
    for item in items {
        let name = item
            .as_str()
            .ok_or_else(|| NetworkError::BadRequest(format!("security_groups holds a {}, not a name", kind(item))))?;
        if !out.iter().any(|o| o == name) {
            out.push(name.to_string());
        }
    }
    if out.len() == 1 && out[0] == "default" {
        out.clear();
    }
    Ok(out)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// Nova's `_get_security_group_ids`: each requested group is an id of one of
/// `available` (`(id, name)` pairs), else a name that exactly one of them
/// has. Returns the ids in request order.
pub fn match_security_groups(
    requested: &[String],
    available: &[(String, String)],
) -> Result<Vec<String>, NetworkError> {
    let mut ids = Vec::with_capacity(requested.len());
    for r in requested {
        if available.iter().any(|(id, _)| id == r) {
            ids.push(r.clone());
            continue;
        }
        let mut named = available.iter().filter(|(_, name)| name == r);
        match (named.next(), named.next()) {
            (Some((id, _)), None) => ids.push(id.clone()),
            (Some(_), Some(_)) => return Err(NetworkError::SecurityGroupNotUnique(r.clone())),
            (None, _) => return Err(NetworkError::SecurityGroupNotFound(r.clone())),
        }
    }
    Ok(ids)
}

/// Nova's check in `_create_ports_for_instance`, for the network of each
/// requested port or network: with port security a port needs a subnet to
/// be filtered, and without it no group can be applied. Either way the
/// request fails rather than leaving a port unfiltered.
pub fn check_port_security(network: &Value, security_groups: &[String]) -> Result<(), NetworkError> {
    let port_security = network["port_security_enabled"].as_bool().unwrap_or(true);
    let has_subnets = network["subnets"].as_array().is_some_and(|s| !s.is_empty());
    if (port_security && !has_subnets) || (!port_security && !security_groups.is_empty()) {
        return Err(NetworkError::SecurityGroupCannotBeApplied);
    }
    Ok(())
}

/// The project owning a Neutron resource (`project_id`, or `tenant_id` on
/// older releases).
fn owner(resource: &Value) -> Option<&str> {
    resource["project_id"].as_str().or(resource["tenant_id"].as_str()).filter(|p| !p.is_empty())
}

/// Nova's `_validate_requested_port_ids`: a port the instance is given must
/// be of the instance's project (this service binds with its own
/// credentials, which see every project's ports).
pub fn check_port_usable(port: &Value, port_id: &str, i: &Instance) -> Result<(), NetworkError> {
    if owner(port).is_none() || owner(port) != i.project_id() {
        return Err(NetworkError::PortNotUsable { port: port_id.to_string(), instance: i.uuid().to_string() });
    }
    Ok(())
}

/// How often a port deletion answered with a server error is retried.
const PORT_DELETE_RETRIES: u32 = 3;

/// Whether a port from Neutron's list is the instance's: its `device_id` is
/// the instance and its project (`project_id`, or `tenant_id` on older
/// releases) the instance's.
pub fn port_in_project(port: &Value, uuid: &str, project: &str) -> bool {
    let owner = port["project_id"].as_str().or(port["tenant_id"].as_str());
    !project.is_empty() && port["device_id"].as_str() == Some(uuid) && owner == Some(project)
}

/// Neutron, with this host's name for bindings.
#[derive(Clone)]
pub struct Neutron {
    client: ServiceClient,
    host: String,
    ovs_bridge: String,
}

/// What the compute manager asks of Neutron for its instances: ports bound
/// to this host, described as Nova's `network_info`, and released. Exists so
/// the manager runs on [`Neutron`] in production and on an in-memory
/// Neutron in unit tests.
pub trait PortService: Send + Sync + 'static {
    /// Looks up what the requested ports are made from, changing nothing
    /// (see [`Neutron::prepare`]).
    fn prepare<'a>(
        &'a self,
        i: &'a Instance,
        requested: &'a Requested,
        security_groups: &'a [String],
    ) -> BoxFuture<'a, Result<PreparedPorts, NetworkError>>;
    /// Binds the prepared ports for the instance, with their network_info
    /// (see [`Neutron::allocate`]).
    fn allocate<'a>(
        &'a self,
        i: &'a Instance,
        prepared: PreparedPorts,
        admin: bool,
    ) -> BoxFuture<'a, Result<(Vec<BoundPort>, NetworkInfo), NetworkError>>;
    /// Binds one request (see [`Neutron::bind_one`]).
    fn bind_one<'a>(
        &'a self,
        i: &'a Instance,
        r: &'a NetworkRequest,
        security_groups: &'a [String],
        admin: bool,
    ) -> BoxFuture<'a, Result<BoundPort, NetworkError>>;
    /// Releases ports, best effort (see [`Neutron::deallocate`]).
    fn deallocate<'a>(&'a self, ports: &'a [BoundPort]) -> BoxFuture<'a, ()>;
    /// Releases every port of a deleted instance (see
    /// [`Neutron::release_instance_ports`]).
    fn release_instance_ports<'a>(
        &'a self,
        uuid: &'a str,
        project: &'a str,
        preserved: &'a [String],
    ) -> BoxFuture<'a, Result<(), NetworkError>>;
    /// Unbinds ports from their host, keeping them the instance's (see
    /// [`Neutron::unbind_host`]).
    fn unbind_host<'a>(&'a self, port_ids: &'a [String]) -> BoxFuture<'a, Result<(), NetworkError>>;
    /// The ports of an instance in its project (see [`Neutron::instance_ports`]).
    fn instance_ports<'a>(&'a self, uuid: &'a str, project: &'a str)
    -> BoxFuture<'a, Result<Vec<Value>, NetworkError>>;
    /// Nova's network_info of bound ports (see [`Neutron::network_info`]).
    fn network_info<'a>(&'a self, ports: &'a [BoundPort]) -> BoxFuture<'a, Result<NetworkInfo, NetworkError>>;
    /// Moves a port's binding to `host` (see [`Neutron::bind_to_host`]).
    fn bind_to_host<'a>(&'a self, port_id: &'a str, host: &'a str) -> BoxFuture<'a, Result<Value, NetworkError>>;
}

impl PortService for Neutron {
    fn prepare<'a>(
        &'a self,
        i: &'a Instance,
        requested: &'a Requested,
        security_groups: &'a [String],
    ) -> BoxFuture<'a, Result<PreparedPorts, NetworkError>> {
        Box::pin(Neutron::prepare(self, i, requested, security_groups))
    }

    fn allocate<'a>(
        &'a self,
        i: &'a Instance,
        prepared: PreparedPorts,
        admin: bool,
    ) -> BoxFuture<'a, Result<(Vec<BoundPort>, NetworkInfo), NetworkError>> {
        Box::pin(Neutron::allocate(self, i, prepared, admin))
    }

    fn bind_one<'a>(
        &'a self,
        i: &'a Instance,
        r: &'a NetworkRequest,
        security_groups: &'a [String],
        admin: bool,
    ) -> BoxFuture<'a, Result<BoundPort, NetworkError>> {
        Box::pin(Neutron::bind_one(self, i, r, security_groups, admin))
    }

    fn deallocate<'a>(&'a self, ports: &'a [BoundPort]) -> BoxFuture<'a, ()> {
        Box::pin(Neutron::deallocate(self, ports))
    }

    fn release_instance_ports<'a>(
        &'a self,
        uuid: &'a str,
        project: &'a str,
        preserved: &'a [String],
    ) -> BoxFuture<'a, Result<(), NetworkError>> {
        Box::pin(Neutron::release_instance_ports(self, uuid, project, preserved))
    }

    fn unbind_host<'a>(&'a self, port_ids: &'a [String]) -> BoxFuture<'a, Result<(), NetworkError>> {
        Box::pin(Neutron::unbind_host(self, port_ids))
    }

    fn instance_ports<'a>(
        &'a self,
        uuid: &'a str,
        project: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Value>, NetworkError>> {
        Box::pin(Neutron::instance_ports(self, uuid, project))
    }

    fn network_info<'a>(&'a self, ports: &'a [BoundPort]) -> BoxFuture<'a, Result<NetworkInfo, NetworkError>> {
        Box::pin(Neutron::network_info(self, ports))
    }

    fn bind_to_host<'a>(&'a self, port_id: &'a str, host: &'a str) -> BoxFuture<'a, Result<Value, NetworkError>> {
        Box::pin(Neutron::bind_to_host(self, port_id, host))
    }
}

/// What Nova's network_info needs of one network (see
/// [`Neutron::network_info`]).
struct NetworkFacts {
    network: Value,
    subnets: Vec<Value>,
    dhcp_ports: Vec<Value>,
    /// ML2/OVN's metadata port of the network, if it has one.
    metadata_port: Option<Value>,
}

/// What a build's ports are made from, looked up before Neutron is
/// changed (see [`Neutron::prepare`]): the requests (the auto network
/// resolved), the security groups' ids and each requested network's facts.
pub struct PreparedPorts {
    reqs: Vec<NetworkRequest>,
    groups: Vec<String>,
    facts: BTreeMap<String, NetworkFacts>,
}

impl PreparedPorts {
    /// Requests with nothing looked up (an in-memory Neutron's).
    pub fn plain(reqs: Vec<NetworkRequest>) -> Self {
        PreparedPorts { reqs, groups: Vec::new(), facts: BTreeMap::new() }
    }

    /// The requests, in order.
    pub fn requests(&self) -> &[NetworkRequest] {
        &self.reqs
    }
}

/// A port bound for an instance, and whether this service created it.
#[derive(Debug, Clone)]
pub struct BoundPort {
    /// Neutron's port document after binding.
    pub port: Value,
    /// Whether this service created the port: created ports are deleted
    /// with the instance, the user's own are only unbound.
    pub created: bool,
}

impl Neutron {
    /// A client binding ports to `host`.
    pub fn new(client: ServiceClient, host: &str, ovs_bridge: &str) -> Self {
        Neutron { client, host: host.into(), ovs_bridge: ovs_bridge.into() }
    }

    async fn req(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, HttpError> {
        self.client
            .json(None, method, path, move |r| match &body {
                Some(b) => r.json(b),
                None => r,
            })
            .await
    }

    /// Whether Neutron answers (for `check`).
    pub async fn ping(&self) -> Result<(), NetworkError> {
        self.req(Method::GET, "/v2.0/networks?limit=1", None).await?;
        Ok(())
    }

    async fn get(&self, path: &str, key: &str) -> Result<Value, NetworkError> {
        let v = self.req(Method::GET, path, None).await?;
        Ok(v[key].clone())
    }

    /// Looks up, changing nothing in Neutron, what the requested ports are
    /// made from: the auto network, the security groups' ids (see
    /// [`requested_security_groups`]) and each requested network with its
    /// subnets and DHCP ports, all at once. A build runs it beside its claim
    /// and binds with [`Self::allocate`] only once Nova has given it the
    /// instance: a port is never touched for a build that is not this
    /// host's.
    pub async fn prepare(
        &self,
        i: &Instance,
        requested: &Requested,
        security_groups: &[String],
    ) -> Result<PreparedPorts, NetworkError> {
        let project = i.project_id().unwrap_or_default();
        let reqs = async {
            let reqs = match requested {
                Requested::None => Vec::new(),
                Requested::Auto => {
                    let id = self.auto_network(project).await?;
                    vec![NetworkRequest { network_id: Some(id), port_id: None, address: None, tag: None }]
                }
                Requested::Some(r) => r.clone(),
            };
            let mut ids: Vec<&str> =
                reqs.iter().filter(|r| r.port_id.is_none()).filter_map(|r| r.network_id.as_deref()).collect();
            ids.sort_unstable();
            ids.dedup();
            let facts = futures::future::try_join_all(ids.iter().map(|id| self.network_facts(id))).await?;
            let facts: BTreeMap<String, NetworkFacts> = ids.iter().map(|id| id.to_string()).zip(facts).collect();
            Ok::<_, NetworkError>((reqs, facts))
        };
        let (groups, (reqs, facts)) = tokio::try_join!(self.security_group_ids(project, security_groups), reqs)?;
        Ok(PreparedPorts { reqs, groups, facts })
    }

    /// Binds the prepared ports to this host for the instance (the ports it
    /// creates get the prepared security groups), and describes them as
    /// Nova's network_info. `admin`: the request is an admin's (external
    /// networks). Each network is checked before a port is made on it. On
    /// failure nothing bound is left.
    pub async fn allocate(
        &self,
        i: &Instance,
        prepared: PreparedPorts,
        admin: bool,
    ) -> Result<(Vec<BoundPort>, NetworkInfo), NetworkError> {
        let PreparedPorts { reqs, groups, facts } = prepared;
        let mut bound = Vec::new();
        for r in &reqs {
            let network = r.network_id.as_ref().and_then(|id| facts.get(id)).map(|f| f.network.clone());
            let attempt = self.bind_request(i, r, &groups, admin, network).await;
            match attempt {
                Ok(p) => bound.push(p),
                Err(e) => {
                    // Leave nothing half-bound.
                    self.deallocate(&bound).await;
                    return Err(e);
                }
            }
        }
        match self.describe(&bound, facts).await {
            Ok(ni) => Ok((bound, ni)),
            Err(e) => {
                self.deallocate(&bound).await;
                Err(e)
            }
        }
    }

    /// The ids of the requested security groups (cleaned, see
    /// [`requested_security_groups`]) among the groups of `project`, and,
    /// when Neutron can list them, of the groups shared with it: Nova's
    /// `_process_security_groups`.
    pub async fn security_group_ids(&self, project: &str, requested: &[String]) -> Result<Vec<String>, NetworkError> {
        if requested.is_empty() {
            return Ok(Vec::new());
        }
        if project.is_empty() {
            return Err(NetworkError::BadRequest("security groups requested for an instance without a project".into()));
        }
        let mut available = self.security_groups(&format!("project_id={}", url_part(project))).await?;
        match match_security_groups(requested, &available) {
            Err(NetworkError::SecurityGroupNotFound(_))
                if self.has_extension("security-groups-shared-filtering").await? =>
            {
                available.extend(self.security_groups("shared=true").await?);
                match_security_groups(requested, &available)
            }
            r => r,
        }
    }

    /// `(id, name)` of the security groups a filter selects.
    async fn security_groups(&self, filter: &str) -> Result<Vec<(String, String)>, NetworkError> {
        let list =
            self.get(&format!("/v2.0/security-groups?{filter}&fields=id&fields=name"), "security_groups").await?;
        let list = list.as_array().ok_or_else(|| NetworkError::Decode("security_groups is not a list".into()))?;
        Ok(list
            .iter()
            .filter_map(|g| Some((g["id"].as_str()?.to_string(), g["name"].as_str().unwrap_or_default().to_string())))
            .collect())
    }

    /// Whether Neutron has the API extension `alias`.
    async fn has_extension(&self, alias: &str) -> Result<bool, NetworkError> {
        match self.req(Method::GET, &format!("/v2.0/extensions/{}", url_part(alias)), None).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// [`check_port_security`] for a network, by id; the network.
    async fn check_network(&self, network_id: &str, security_groups: &[String]) -> Result<Value, NetworkError> {
        let network = self.get(&format!("/v2.0/networks/{}", url_part(network_id)), "network").await?;
        check_port_security(&network, security_groups)?;
        Ok(network)
    }

    /// Nova's `_validate_requested_network_ids`, which runs with the user's
    /// token: a port is made only on a network of the instance's project or
    /// one shared with it (`shared`, or an RBAC `access_as_shared` policy
    /// for the project or `*`), and on an external network only when it is
    /// shared or the request is an admin's. This service's own credentials
    /// see every network, so the check is explicit.
    async fn check_network_usable(
        &self,
        network: &Value,
        network_id: &str,
        i: &Instance,
        admin: bool,
    ) -> Result<(), NetworkError> {
        let project = i.project_id().filter(|p| !p.is_empty());
        let shared = network["shared"].as_bool() == Some(true);
        let external = network["router:external"].as_bool() == Some(true);
        if external && !shared && !admin {
            return Err(NetworkError::ExternalNetworkAttachForbidden(network_id.to_string()));
        }
        if shared || (project.is_some() && owner(network) == project) {
            return Ok(());
        }
        let Some(project) = project else { return Err(NetworkError::NetworkNotFound(network_id.to_string())) };
        let path = format!(
            "/v2.0/rbac-policies?object_type=network&action=access_as_shared&object_id={}",
            url_part(network_id)
        );
        let policies = match self.get(&path, "rbac_policies").await {
            Ok(p) => p,
            // A Neutron without the RBAC extension shares by `shared` only.
            Err(NetworkError::Http(e)) if e.status() == Some(404) => Value::Null,
            Err(e) => return Err(e),
        };
        let granted = policies.as_array().into_iter().flatten().any(|p| {
            p["object_id"].as_str() == Some(network_id)
                && matches!(p["target_tenant"].as_str(), Some(t) if t == project || t == "*")
        });
        if granted { Ok(()) } else { Err(NetworkError::NetworkNotFound(network_id.to_string())) }
    }

    /// Binds one request: an existing port, or a new one on a network, which
    /// gets `security_groups` (ids, from [`Self::security_group_ids`]).
    pub async fn bind_one(
        &self,
        i: &Instance,
        r: &NetworkRequest,
        security_groups: &[String],
        admin: bool,
    ) -> Result<BoundPort, NetworkError> {
        self.bind_request(i, r, security_groups, admin, None).await
    }

    /// [`Self::bind_one`], with the requested network's document when the
    /// caller already fetched it.
    async fn bind_request(
        &self,
        i: &Instance,
        r: &NetworkRequest,
        security_groups: &[String],
        admin: bool,
        network: Option<Value>,
    ) -> Result<BoundPort, NetworkError> {
        let owner = format!("compute:{}", i.availability_zone().unwrap_or("nova"));
        let binding = json!({"binding:host_id": self.host, "device_id": i.uuid(), "device_owner": owner});
        let (port, created) = match (&r.port_id, &r.network_id) {
            (Some(port_id), _) => {
                let current = self.get(&format!("/v2.0/ports/{}", url_part(port_id)), "port").await?;
                check_port_usable(&current, port_id, i)?;
                let device = current["device_id"].as_str().unwrap_or("");
                if !device.is_empty() && device != i.uuid() {
                    return Err(NetworkError::PortInUse(port_id.clone()));
                }
                let net = current["network_id"].as_str().unwrap_or_default();
                self.check_network(net, security_groups).await?;
                let port =
                    self.get_put(&format!("/v2.0/ports/{}", url_part(port_id)), json!({"port": binding})).await?;
                (port, false)
            }
            (None, Some(net)) => {
                let network = match network {
                    Some(n) => n,
                    None => self.get(&format!("/v2.0/networks/{}", url_part(net)), "network").await?,
                };
                check_port_security(&network, security_groups)?;
                self.check_network_usable(&network, net, i, admin).await?;
                let mut body = binding.clone();
                body["network_id"] = json!(net);
                if let Some(p) = i.project_id() {
                    body["project_id"] = json!(p);
                }
                if !security_groups.is_empty() {
                    body["security_groups"] = json!(security_groups);
                }
                if let Some(ip) = &r.address {
                    body["fixed_ips"] = json!([{"ip_address": ip}]);
                }
                let v = self.req(Method::POST, "/v2.0/ports", Some(json!({"port": body}))).await?;
                (v["port"].clone(), true)
            }
            (None, None) => return Err(NetworkError::BadRequest("neither a port nor a network".into())),
        };
        let vif_type = port["binding:vif_type"].as_str().unwrap_or("unbound").to_string();
        if matches!(vif_type.as_str(), "binding_failed" | "unbound") {
            let bp = BoundPort { port: port.clone(), created };
            self.deallocate(std::slice::from_ref(&bp)).await;
            return Err(NetworkError::BindingFailed {
                port: port["id"].as_str().unwrap_or("?").into(),
                host: self.host.clone(),
                vif_type,
            });
        }
        Ok(BoundPort { port, created })
    }

    /// Moves an instance's port to `host` (`binding:host_id`), as Nova's
    /// `migrate_instance_finish` does when a resize or migration lands on a
    /// host (or a revert comes back): that host's L2 agent then wires it.
    /// A binding Neutron cannot make on that host is an error.
    pub async fn bind_to_host(&self, port_id: &str, host: &str) -> Result<Value, NetworkError> {
        let body = json!({"port": {"binding:host_id": host}});
        let port = self.get_put(&format!("/v2.0/ports/{}", url_part(port_id)), body).await?;
        let vif_type = port["binding:vif_type"].as_str().unwrap_or("unbound").to_string();
        if matches!(vif_type.as_str(), "binding_failed" | "unbound") {
            return Err(NetworkError::BindingFailed { port: port_id.into(), host: host.into(), vif_type });
        }
        Ok(port)
    }

    async fn get_put(&self, path: &str, body: Value) -> Result<Value, NetworkError> {
        let v = self.req(Method::PUT, path, Some(body)).await?;
        Ok(v["port"].clone())
    }

    async fn auto_network(&self, project: &str) -> Result<String, NetworkError> {
        let shared = self.get("/v2.0/networks?shared=true", "networks").await?;
        let owned = self.get(&format!("/v2.0/networks?project_id={}", url_part(project)), "networks").await?;
        for list in [owned, shared] {
            if let Some(id) = list.as_array().and_then(|a| a.first()).and_then(|n| n["id"].as_str()) {
                return Ok(id.to_string());
            }
        }
        Err(NetworkError::NoAutoNetwork)
    }

    /// Deletes the ports this service created and unbinds the others. Best
    /// effort (a build's clean-up, a detach): failures are logged.
    pub async fn deallocate(&self, ports: &[BoundPort]) {
        for p in ports {
            let Some(id) = p.port["id"].as_str() else { continue };
            let r = if p.created { self.delete_port(id).await } else { self.unbind_port(id).await };
            if let Err(e) = r {
                tracing::warn!(port = id, error = %e, "could not release a port");
            }
        }
    }

    /// Releases every port Neutron has for a deleted instance, as Nova's
    /// `deallocate_for_instance` does: the list comes from Neutron (by
    /// `device_id`), not from the info cache, so a port the cache missed is
    /// not leaked. Only the ports of the instance's `project` are listed
    /// (see [`Neutron::instance_ports`]): Nova lists them with the user's
    /// token, and another tenant can point a port's `device_id` at any
    /// instance. The ports in `preserved` (the user's own) are unbound, the
    /// rest deleted. Every port is tried; the first failure is returned, so
    /// the delete fails visibly rather than leaking a port and its address.
    pub async fn release_instance_ports(
        &self,
        uuid: &str,
        project: &str,
        preserved: &[String],
    ) -> Result<(), NetworkError> {
        let mut first_error = None;
        for port in self.instance_ports(uuid, project).await? {
            let Some(id) = port["id"].as_str() else { continue };
            let r =
                if preserved.iter().any(|p| p == id) { self.unbind_port(id).await } else { self.delete_port(id).await };
            if let Err(e) = r {
                tracing::warn!(port = id, error = %e, "could not release a port");
                first_error.get_or_insert(NetworkError::Http(e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes a port; one already gone is fine. A server error is retried a
    /// few times (DELETE is idempotent, and a busy Neutron answers 5xx
    /// transiently, e.g. while its database is locked).
    async fn delete_port(&self, id: &str) -> Result<(), HttpError> {
        let path = format!("/v2.0/ports/{}", url_part(id));
        let mut attempt = 0;
        loop {
            match self.client.send(None, Method::DELETE, &path, |r| r).await {
                Ok(_) => return Ok(()),
                Err(e) if e.status() == Some(404) => return Ok(()),
                Err(e) if e.status().is_some_and(|s| s >= 500) && attempt < PORT_DELETE_RETRIES => {
                    tracing::info!(port = id, error = %e, "retrying the port's deletion");
                    tokio::time::sleep(std::time::Duration::from_millis(250 << attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives a user's port back: no host, no device.
    async fn unbind_port(&self, id: &str) -> Result<(), HttpError> {
        let body = json!({"port": {"binding:host_id": null, "device_id": "", "device_owner": ""}});
        self.req(Method::PUT, &format!("/v2.0/ports/{}", url_part(id)), Some(body)).await.map(|_| ())
    }

    /// Unbinds ports from their host and keeps them the instance's, as
    /// Nova's `unbind_ports(detach=False)` does when a shelved instance
    /// leaves its host: an unshelve binds them wherever it lands.
    pub async fn unbind_host(&self, port_ids: &[String]) -> Result<(), NetworkError> {
        for id in port_ids {
            let body = json!({"port": {"binding:host_id": null, "binding:profile": {}}});
            self.req(Method::PUT, &format!("/v2.0/ports/{}", url_part(id)), Some(body)).await?;
        }
        Ok(())
    }

    /// The ports of an instance, currently bound anywhere: those whose
    /// `device_id` is the instance and that belong to its `project`. This
    /// service lists with its own (admin) credentials, which see every
    /// tenant's ports, and a port's `device_id` is whatever its owner wrote:
    /// without the project filter another tenant's port would be taken for
    /// the instance's (deleted with it, moved with it, put in its info
    /// cache). Nova lists with the user's token, which sees only the
    /// project's ports. Neutron filters by `project_id` (as for security
    /// groups); the answer is checked again here. An empty project lists
    /// nothing.
    pub async fn instance_ports(&self, uuid: &str, project: &str) -> Result<Vec<Value>, NetworkError> {
        if project.is_empty() {
            return Ok(Vec::new());
        }
        let path = format!("/v2.0/ports?device_id={}&project_id={}", url_part(uuid), url_part(project));
        let v = self.get(&path, "ports").await?;
        Ok(v.as_array().into_iter().flatten().filter(|p| port_in_project(p, uuid, project)).cloned().collect())
    }

    /// Builds Nova's network_info for bound ports (order kept).
    pub async fn network_info(&self, ports: &[BoundPort]) -> Result<NetworkInfo, NetworkError> {
        self.describe(ports, BTreeMap::new()).await
    }

    /// What network_info needs of one network: its document, subnets,
    /// DHCP ports and OVN metadata port, looked up at once (three
    /// independent requests).
    async fn network_facts(&self, net_id: &str) -> Result<NetworkFacts, NetworkError> {
        let network_path = format!("/v2.0/networks/{}", url_part(net_id));
        let subnets_path = format!("/v2.0/subnets?network_id={}", url_part(net_id));
        // The subnets' DHCP servers, as Nova looks them up
        // (`_get_subnets_from_port`): the network's DHCP ports; and in the
        // same request ML2/OVN's metadata port (a `network:distributed`
        // port with device id `ovnmeta-<network>`, as Neutron finds it).
        let service_ports_path = format!(
            "/v2.0/ports?network_id={}&device_owner=network%3Adhcp&device_owner=network%3Adistributed",
            url_part(net_id)
        );
        let (network, subnets, service_ports) = tokio::try_join!(
            self.get(&network_path, "network"),
            self.get(&subnets_path, "subnets"),
            self.get(&service_ports_path, "ports"),
        )?;
        let service_ports = service_ports.as_array().cloned().unwrap_or_default();
        let owned = |p: &Value, owner: &str| p["device_owner"].as_str() == Some(owner);
        let metadata_device = format!("ovnmeta-{net_id}");
        Ok(NetworkFacts {
            network,
            subnets: subnets.as_array().cloned().unwrap_or_default(),
            dhcp_ports: service_ports.iter().filter(|p| owned(p, "network:dhcp")).cloned().collect(),
            metadata_port: service_ports
                .into_iter()
                .find(|p| owned(p, "network:distributed") && p["device_id"].as_str() == Some(&metadata_device)),
        })
    }

    /// [`Self::network_info`], with the facts of networks already looked up.
    async fn describe(
        &self,
        ports: &[BoundPort],
        mut facts: BTreeMap<String, NetworkFacts>,
    ) -> Result<NetworkInfo, NetworkError> {
        let mut out = Vec::new();
        for p in ports {
            let port = &p.port;
            let net_id = port["network_id"].as_str().unwrap_or_default().to_string();
            // Looked up again when the port has an address on a subnet the
            // facts lack (one added since they were looked up): no address
            // is left out of network_info.
            let stale = facts.get(&net_id).is_none_or(|f| {
                port["fixed_ips"].as_array().into_iter().flatten().any(|ip| {
                    let subnet = ip["subnet_id"].as_str();
                    !f.subnets.iter().any(|s| s["id"].as_str() == subnet)
                })
            });
            if stale {
                let f = self.network_facts(&net_id).await?;
                facts.insert(net_id.clone(), f);
            }
            let f = &facts[&net_id];
            let vif = self.vif(port, f, !p.created);
            out.push(serde_json::from_value::<Vif>(vif).map_err(|e| NetworkError::Decode(e.to_string()))?);
        }
        Ok(out)
    }

    /// One VIF in Nova's model (`nova/network/neutron.py _build_vif_model`).
    fn vif(&self, port: &Value, facts: &NetworkFacts, preserve: bool) -> Value {
        let (network, subnets) = (&facts.network, &facts.subnets);
        let id = port["id"].as_str().unwrap_or_default();
        let vif_type = port["binding:vif_type"].as_str().unwrap_or("unbound");
        let details = port["binding:vif_details"].clone();
        let net_id = network["id"].as_str().unwrap_or_default();
        let bridge = match vif_type {
            "bridge" => Some(crate::net::binding::linuxbridge_name(net_id)),
            "ovs" | "vhostuser" => {
                Some(details["bridge_name"].as_str().map(str::to_string).unwrap_or_else(|| self.ovs_bridge.clone()))
            }
            _ => None,
        };
        let fixed: Vec<(String, String)> = port["fixed_ips"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| Some((f["subnet_id"].as_str()?.to_string(), f["ip_address"].as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let ip = |addr: &str, version: u64, kind: &str| json!({"address": addr, "type": kind, "version": version, "meta": {}});
        let subnet_models: Vec<Value> = subnets
            .iter()
            .filter(|s| fixed.iter().any(|(sid, _)| Some(sid.as_str()) == s["id"].as_str()))
            .map(|s| {
                let version = s["ip_version"].as_u64().unwrap_or(4);
                let sid = s["id"].as_str().unwrap_or_default();
                json!({
                    "cidr": s["cidr"],
                    "version": version,
                    "meta": subnet_meta(s, &facts.dhcp_ports, facts.metadata_port.as_ref()),
                    "gateway": match s["gateway_ip"].as_str() {
                        Some(g) => ip(g, version, "gateway"),
                        None => json!({"address": null, "type": "gateway", "version": null, "meta": {}}),
                    },
                    "dns": s["dns_nameservers"].as_array().map(|d| d.iter().filter_map(|a| a.as_str()).map(|a| ip(a, version, "dns")).collect::<Vec<_>>()).unwrap_or_default(),
                    "ips": fixed.iter().filter(|(f, _)| f == sid).map(|(_, a)| {
                        let mut v = ip(a, version, "fixed");
                        v["floating_ips"] = json!([]);
                        v
                    }).collect::<Vec<_>>(),
                    "routes": s["host_routes"].as_array().map(|r| r.iter().map(|h| json!({
                        "cidr": h["destination"], "gateway": ip(h["nexthop"].as_str().unwrap_or_default(), version, "gateway"),
                        "interface": null, "meta": {}})).collect::<Vec<_>>()).unwrap_or_default(),
                })
            })
            .collect();
        json!({
            "id": id,
            "address": port["mac_address"],
            "type": vif_type,
            "devname": crate::net::model::prefixed_name("tap", id),
            "ovs_interfaceid": if vif_type == "ovs" { json!(id) } else { Value::Null },
            "active": port["status"] == "ACTIVE",
            "vnic_type": port["binding:vnic_type"].as_str().unwrap_or("normal"),
            "details": if details.is_object() { details } else { json!({}) },
            "profile": if port["binding:profile"].is_object() { port["binding:profile"].clone() } else { json!({}) },
            "qbh_params": null,
            "qbg_params": null,
            "preserve_on_delete": preserve,
            "delegate_create": false,
            "meta": {},
            "network": {
                "id": net_id,
                "bridge": bridge,
                "label": network["name"],
                "meta": {"mtu": network["mtu"], "tenant_id": network["project_id"].as_str().or(network["tenant_id"].as_str()),
                         "physical_network": network["provider:physical_network"], "tunneled": false,
                         "should_create_bridge": vif_type == "bridge"},
                "subnets": subnet_models,
            },
        })
    }
}

/// A subnet's `meta` in Nova's model, as nova 34's `_get_subnets_from_port`
/// writes it: `enable_dhcp`, `dhcp_server` (the address of the network's
/// DHCP port in this subnet, when there is one) and `ipv6_address_mode`.
/// (Zed writes no `enable_dhcp` and falls back to the gateway as
/// `dhcp_server`; both give the same `network_data.json` when a DHCP port
/// exists.) The config drive and the isolated metadata route read it.
///
/// One key Nova does not write: `metadata_server`, the address of ML2/OVN's
/// metadata port in this subnet, which OVN's DHCP hands VMs as the way to
/// 169.254.169.254 (`[docker] metadata_route = metadata_port` routes through
/// it). It is kept in the info cache so that a container plugged again
/// after a restart, without Neutron, gets the same route; Nova's readers of
/// the cache (the config drive, the metadata API) ignore keys they do not
/// know.
fn subnet_meta(subnet: &Value, dhcp_ports: &[Value], metadata_port: Option<&Value>) -> Value {
    let sid = subnet["id"].as_str().unwrap_or_default();
    let mut meta = serde_json::Map::new();
    meta.insert("enable_dhcp".into(), json!(subnet["enable_dhcp"].as_bool().unwrap_or(false)));
    let address_in = |ports: &mut dyn Iterator<Item = &Value>| {
        ports
            .flat_map(|p| p["fixed_ips"].as_array().into_iter().flatten())
            .find(|f| f["subnet_id"].as_str() == Some(sid))
            .and_then(|f| f["ip_address"].as_str())
            .map(str::to_string)
    };
    if let Some(ip) = address_in(&mut dhcp_ports.iter()) {
        meta.insert("dhcp_server".into(), json!(ip));
    }
    if let Some(ip) = address_in(&mut metadata_port.into_iter()) {
        meta.insert("metadata_server".into(), json!(ip));
    }
    if let Some(mode) = subnet["ipv6_address_mode"].as_str() {
        meta.insert("ipv6_address_mode".into(), json!(mode));
    }
    Value::Object(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_meta_is_novas() {
        let subnet = json!({"id": "s1", "enable_dhcp": true});
        let ports = [
            json!({"fixed_ips": [{"subnet_id": "other", "ip_address": "10.1.0.2"}]}),
            json!({"fixed_ips": [{"subnet_id": "s1", "ip_address": "10.0.0.2"}]}),
        ];
        assert_eq!(subnet_meta(&subnet, &ports, None), json!({"enable_dhcp": true, "dhcp_server": "10.0.0.2"}));
        assert_eq!(subnet_meta(&json!({"id": "s1", "enable_dhcp": false}), &[], None), json!({"enable_dhcp": false}));
        let v6 = json!({"id": "s6", "enable_dhcp": true, "ipv6_address_mode": "slaac"});
        assert_eq!(subnet_meta(&v6, &[], None), json!({"enable_dhcp": true, "ipv6_address_mode": "slaac"}));
        // ML2/OVN: the metadata port's address in this subnet, none in another
        let md = json!({"fixed_ips": [{"subnet_id": "other", "ip_address": "10.1.0.3"},
                                      {"subnet_id": "s1", "ip_address": "10.0.0.3"}]});
        assert_eq!(subnet_meta(&subnet, &[], Some(&md)), json!({"enable_dhcp": true, "metadata_server": "10.0.0.3"}));
        assert_eq!(subnet_meta(&v6, &[], Some(&md)), json!({"enable_dhcp": true, "ipv6_address_mode": "slaac"}));
    }

    #[test]
    fn requested_security_groups_are_cleaned_as_nova_does() {
        let r = |v: Value| requested_security_groups(Some(&v));
        assert!(requested_security_groups(None).unwrap().is_empty());
        assert!(r(Value::Null).unwrap().is_empty());
        assert!(r(json!([])).unwrap().is_empty());
        // only "default": Neutron's choice (the project's default group)
        assert!(r(json!(["default"])).unwrap().is_empty());
        assert_eq!(r(json!(["default", "web"])).unwrap(), ["default", "web"]);
        assert_eq!(r(json!(["web", "db", "web"])).unwrap(), ["web", "db"]);
        for bad in [json!("web"), json!([1]), json!([{"name": "web"}]), json!({"a": 1})] {
            assert!(matches!(r(bad.clone()), Err(NetworkError::BadRequest(_))), "{bad}");
        }
    }

    #[test]
    fn security_groups_match_ids_then_unique_names() {
        let avail: Vec<(String, String)> = [("id-1", "web"), ("id-2", "db"), ("id-3", "db"), ("id-4", "id-1")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let m = |r: &[&str]| match_security_groups(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &avail);
        assert_eq!(m(&["web"]).unwrap(), ["id-1"]);
        assert_eq!(m(&["id-2", "web"]).unwrap(), ["id-2", "id-1"]);
        // an id wins over a group named like it
        assert_eq!(m(&["id-1"]).unwrap(), ["id-1"]);
        assert!(matches!(m(&["db"]), Err(NetworkError::SecurityGroupNotUnique(n)) if n == "db"));
        assert!(matches!(m(&["web", "other"]), Err(NetworkError::SecurityGroupNotFound(n)) if n == "other"));
        assert!(matches!(m(&["WEB"]), Err(NetworkError::SecurityGroupNotFound(_))), "names match exactly");
        assert!(m(&[]).unwrap().is_empty());
    }

    #[test]
    fn groups_need_port_security_and_a_subnet() {
        let net = |ps: Option<bool>, subnets: Value| {
            let mut n = json!({"id": "n", "subnets": subnets});
            if let Some(p) = ps {
                n["port_security_enabled"] = json!(p);
            }
            n
        };
        let sg = ["id-1".to_string()];
        assert!(check_port_security(&net(Some(true), json!(["s"])), &sg).is_ok());
        assert!(check_port_security(&net(Some(true), json!(["s"])), &[]).is_ok());
        assert!(check_port_security(&net(None, json!(["s"])), &sg).is_ok(), "no extension: port security on");
        assert!(check_port_security(&net(Some(false), json!(["s"])), &[]).is_ok());
        for (n, groups) in [
            (net(Some(false), json!(["s"])), &sg[..]),
            (net(Some(true), json!([])), &sg[..]),
            (net(Some(true), json!([])), &[][..]),
            (net(None, Value::Null), &[][..]),
        ] {
            assert!(matches!(check_port_security(&n, groups), Err(NetworkError::SecurityGroupCannotBeApplied)), "{n}");
        }
    }

    #[test]
    fn reads_network_requests() {
        let list = |objs: Value| json!({"nova_object.data": {"objects": objs}});
        assert_eq!(requested_networks(None), Requested::None);
        assert_eq!(
            requested_networks(Some(&list(json!([{"nova_object.data": {"network_id": "none"}}])))),
            Requested::None
        );
        assert_eq!(
            requested_networks(Some(&list(json!([{"nova_object.data": {"network_id": "auto"}}])))),
            Requested::Auto
        );
        let r = requested_networks(Some(&list(json!([
            {"nova_object.data": {"network_id": "n1", "address": "10.0.0.5"}},
            {"nova_object.data": {"port_id": "p1", "network_id": null}}]))));
        let Requested::Some(r) = r else { panic!() };
        assert_eq!(r[0].network_id.as_deref(), Some("n1"));
        assert_eq!(r[0].address.as_deref(), Some("10.0.0.5"));
        assert_eq!(r[1].port_id.as_deref(), Some("p1"));
    }
}

/// What one tenant can make the host bind: never another project's port,
/// nor a port on a network the project can neither own nor be shared
/// (this service's credentials see them all), against a small HTTP Neutron.
#[cfg(test)]
mod tenant_bounds_tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A Neutron with port `p-b` of project-b, network `net` as given and
    /// the RBAC policies given; records each request line.
    async fn neutron(network: Value, rbac: Value) -> (Neutron, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&buf).lines().next().unwrap_or_default().to_string();
                log.lock().unwrap().push(line.clone());
                let port = |project: &str| {
                    json!({"port": {"id": "p-x", "project_id": project, "device_id": "", "network_id": "net",
                                    "binding:vif_type": "ovs",
                                    "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.5"}]}})
                };
                let body = if line.starts_with("GET /v2.0/ports/p-b") {
                    port("project-b")
                } else if line.starts_with("GET /v2.0/ports/p-a") || line.starts_with("PUT /v2.0/ports/") {
                    port("project-a")
                } else if line.starts_with("GET /v2.0/networks/net") {
                    json!({"network": network.clone()})
                } else if line.starts_with("GET /v2.0/subnets") {
                    let ids = network["subnets"].as_array().cloned().unwrap_or_default();
                    let subnets: Vec<Value> = ids
                        .iter()
                        .map(|id| json!({"id": id, "cidr": "10.0.0.0/24", "ip_version": 4, "gateway_ip": "10.0.0.1"}))
                        .collect();
                    json!({ "subnets": subnets })
                } else if line.starts_with("GET /v2.0/rbac-policies") {
                    json!({"rbac_policies": rbac.clone()})
                } else if line.starts_with("POST /v2.0/ports") {
                    port("project-a")
                } else {
                    json!({})
                };
                let body = body.to_string();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            }
        });
        let settings = crate::config::ServiceSettings {
            service_type: "network",
            auth: crate::config::AuthSettings::None,
            endpoint_override: Some(url),
            region_name: None,
            valid_interfaces: vec![],
            timeout: std::time::Duration::from_secs(5),
            retries: crate::config::Retries::CONNECTION,
            tls: Default::default(),
            service_user: None,
        };
        (Neutron::new(crate::auth::ServiceClient::new(settings, "neutron", "neutron"), "host-a", "br-int"), seen)
    }

    fn instance_of_a() -> Instance {
        let p = json!({"nova_object.name": "Instance", "nova_object.namespace": "nova", "nova_object.version": "2.8",
            "nova_object.data": {"uuid": "6f1b2c1e-0000-4000-8000-00000000000a", "project_id": "project-a",
                                 "availability_zone": "nova"}});
        Instance::from_primitive(&p).unwrap()
    }

    fn on_port(id: &str) -> NetworkRequest {
        NetworkRequest { port_id: Some(id.into()), network_id: None, address: None, tag: None }
    }

    fn on_net() -> NetworkRequest {
        NetworkRequest { port_id: None, network_id: Some("net".into()), address: None, tag: None }
    }

    fn net(project: &str, shared: bool, external: bool) -> Value {
        json!({"id": "net", "project_id": project, "shared": shared, "router:external": external,
               "port_security_enabled": true, "subnets": ["s"]})
    }

    fn sent(seen: &Arc<Mutex<Vec<String>>>, prefix: &str) -> bool {
        count(seen, prefix) > 0
    }

    /// How many requests began with `prefix`.
    fn count(seen: &Arc<Mutex<Vec<String>>>, prefix: &str) -> usize {
        seen.lock().unwrap().iter().filter(|l| l.starts_with(prefix)).count()
    }

    #[tokio::test]
    async fn another_projects_port_is_never_bound() {
        let (n, seen) = neutron(net("project-a", false, false), json!([])).await;
        let got = n.bind_one(&instance_of_a(), &on_port("p-b"), &[], true).await;
        assert!(matches!(got, Err(NetworkError::PortNotUsable { .. })), "{got:?}");
        assert!(!sent(&seen, "PUT"), "{:?}", seen.lock().unwrap());
        // The project's own port is bound.
        let (n, seen) = neutron(net("project-a", false, false), json!([])).await;
        n.bind_one(&instance_of_a(), &on_port("p-a"), &[], false).await.unwrap();
        assert!(sent(&seen, "PUT /v2.0/ports/p-a"));
    }

    #[tokio::test]
    async fn ports_are_made_only_on_networks_the_project_owns_or_is_shared() {
        let i = instance_of_a();
        // Another project's private network: not found, nothing made.
        let (n, seen) = neutron(net("project-b", false, false), json!([])).await;
        let got = n.bind_one(&i, &on_net(), &[], false).await;
        assert!(matches!(got, Err(NetworkError::NetworkNotFound(_))), "{got:?}");
        assert!(!sent(&seen, "POST"), "{:?}", seen.lock().unwrap());
        // An RBAC policy for another project or another network shares nothing.
        let other = json!([{"object_id": "net", "target_tenant": "project-c"},
                           {"object_id": "other", "target_tenant": "*"}]);
        let (n, seen) = neutron(net("project-b", false, false), other).await;
        assert!(n.bind_one(&i, &on_net(), &[], false).await.is_err());
        assert!(!sent(&seen, "POST"));
        // Shared with the project by RBAC, shared with all, or its own: made.
        for (network, rbac) in [
            (net("project-b", false, false), json!([{"object_id": "net", "target_tenant": "project-a"}])),
            (net("project-b", true, false), json!([])),
            (net("project-a", false, false), json!([])),
        ] {
            let (n, seen) = neutron(network.clone(), rbac).await;
            n.bind_one(&i, &on_net(), &[], false).await.unwrap_or_else(|e| panic!("{network}: {e}"));
            assert!(sent(&seen, "POST /v2.0/ports"));
        }
    }

    #[tokio::test]
    async fn a_build_checks_the_network_it_looked_up_beforehand_and_looks_it_up_once() {
        let i = instance_of_a();
        let requested = Requested::Some(vec![on_net()]);
        // Another project's private network, looked up beside the security
        // groups: still refused before any port is made.
        let (n, seen) = neutron(net("project-b", false, false), json!([])).await;
        let prepared = n.prepare(&i, &requested, &[]).await.unwrap();
        assert!(!sent(&seen, "POST") && !sent(&seen, "PUT"), "looking up changes nothing");
        let got = n.allocate(&i, prepared, false).await;
        assert!(matches!(got, Err(NetworkError::NetworkNotFound(_))), "{got:?}");
        assert!(!sent(&seen, "POST"), "{:?}", seen.lock().unwrap());
        // Its own: one port, described, the network fetched once.
        let (n, seen) = neutron(net("project-a", false, false), json!([])).await;
        let prepared = n.prepare(&i, &requested, &[]).await.unwrap();
        let (ports, ni) = n.allocate(&i, prepared, false).await.unwrap();
        assert_eq!((ports.len(), ni.len()), (1, 1));
        assert_eq!(count(&seen, "GET /v2.0/networks/net"), 1, "{:?}", seen.lock().unwrap());
        assert!(sent(&seen, "GET /v2.0/subnets?network_id=net"), "{:?}", seen.lock().unwrap());
    }

    #[tokio::test]
    async fn an_address_on_a_subnet_added_since_the_look_up_is_looked_up_again() {
        let i = instance_of_a();
        let requested = Requested::Some(vec![on_net()]);
        // The port's address is on subnet `s`, which the network did not
        // have when it was looked up.
        let mut network = net("project-a", false, false);
        network["subnets"] = json!(["s-old"]);
        let (n, seen) = neutron(network, json!([])).await;
        let prepared = n.prepare(&i, &requested, &[]).await.unwrap();
        n.allocate(&i, prepared, false).await.unwrap();
        assert_eq!(count(&seen, "GET /v2.0/subnets"), 2, "{:?}", seen.lock().unwrap());
    }

    #[tokio::test]
    async fn an_unshared_external_network_takes_ports_of_admins_only() {
        let i = instance_of_a();
        let (n, seen) = neutron(net("project-a", false, true), json!([])).await;
        let got = n.bind_one(&i, &on_net(), &[], false).await;
        assert!(matches!(got, Err(NetworkError::ExternalNetworkAttachForbidden(_))), "{got:?}");
        assert!(!sent(&seen, "POST"));
        let (n, _) = neutron(net("project-a", false, true), json!([])).await;
        n.bind_one(&i, &on_net(), &[], true).await.unwrap();
        let (n, _) = neutron(net("admin", true, true), json!([])).await;
        n.bind_one(&i, &on_net(), &[], false).await.unwrap();
    }
}
