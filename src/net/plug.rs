//! Plugging and unplugging one Neutron VIF into a Docker container started
//! with network mode `none`, in-process over netlink.
//!
//! Per VIF, [`plug`]:
//! 1. validates everything it will need (the host names against Neutron's
//!    binding, see [`super::binding`]; type, MAC, CIDRs, MTU) before
//!    touching the host, so a bad `network_info` leaves nothing behind;
//! 2. prepares the host backend: the Linux bridge (`bridge`), or for hybrid
//!    OVS the per-port `qbr` bridge and `qvb`/`qvo` pair plus the OVS port;
//! 3. creates the veth pair in one request: the host end named as Nova names
//!    it (`devname`), MAC `fe:` + port MAC[1..] (so the Linux bridge never
//!    adopts the guest MAC), MTU, up, already enslaved to its bridge; the
//!    peer created *directly inside the container netns* as `ifname`, with
//!    the port MAC and MTU (no move-then-rename, no name clash on the host);
//! 4. inside the container: IPv6 enabled on that interface with DAD and RA
//!    off, `lo` and the interface up, every fixed IP (v4 and v6, v6 with
//!    `IFA_F_NODAD`), on-link routes for gateways outside their subnet, at
//!    most one default route per family (never replacing an existing one),
//!    the subnets' host routes;
//! 5. for plain `ovs`, adds the host end to the integration bridge with the
//!    external-ids Neutron's agent looks for.
//!
//! Every step that created something registers its undo; on any error the
//! undo list runs in reverse, so a failed plug leaves no veth, no OVS port
//! and no bridge it created.
//!
//! Concurrency: names are per port (host) or per container netns (inside),
//! bridge creation tolerates EEXIST from a concurrent plug, default routes
//! are added with `NLM_F_EXCL` (first wins atomically), and at most
//! [`MAX_CONCURRENT_PLUGS`] plugs/unplugs talk to RTNL at once (the kernel
//! serialises on the RTNL lock anyway; the bound keeps thread spawns and
//! socket counts flat when many instances boot together).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use nix::errno::Errno;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::{debug, info, warn};

use super::binding;
use super::error::NetError;
use super::model::{IFNAME_MAX, IpCidr, NetworkInfo, Vif, format_mac, prefixed_name};
use super::netns::{NetnsHandle, in_netns, netns_handle, write_sysctl};
use super::ovs;

/// How many plug/unplug operations may run their netlink part at once.
pub const MAX_CONCURRENT_PLUGS: usize = 4;

static PLUG_SLOTS: Semaphore = Semaphore::const_new(MAX_CONCURRENT_PLUGS);

const EEXIST: i32 = Errno::EEXIST as i32;
const ENODEV: i32 = Errno::ENODEV as i32;

/// Knobs of plug/unplug that do not come from network_info.
///
/// Exists so the compute can pass nova.conf values (`[os_vif_ovs]
/// ovs_vsctl_timeout`, the integration bridge, `[DEFAULT] network_device_mtu`)
/// and the instance uuid OVS wants, without globals.
#[derive(Debug, Clone)]
pub struct PlugOptions {
    /// Instance UUID, written to OVS `external-ids:vm-uuid` (required for `ovs` VIFs).
    pub instance_uuid: Option<String>,
    /// OVS bridge used when the VIF names none.
    pub ovs_integration_bridge: String,
    /// `ovs-vsctl` to run: a bare name is searched in PATH and the sbin dirs.
    pub ovs_vsctl: PathBuf,
    /// OVSDB transaction timeout (`--timeout`), also bounds the subprocess.
    pub ovs_timeout: Duration,
    /// Bound on each netlink request and netns thread hop.
    pub netlink_timeout: Duration,
    /// Bound on waiting for one of the [`MAX_CONCURRENT_PLUGS`] slots.
    pub queue_timeout: Duration,
    /// MTU used when the network has none in its meta (None: kernel default).
    pub default_mtu: Option<u32>,
    /// The route to [`METADATA_ADDRESS`] the container gets.
    pub metadata_route: MetadataRoute,
}

/// How a container reaches the metadata service at [`METADATA_ADDRESS`].
///
/// Exists because a VM learns its route by DHCP (a classless static route
/// its network's DHCP server hands out) and a container runs no DHCP client:
/// the host adds the route that network's DHCP would have given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetadataRoute {
    /// None of its own: routers serve the metadata, and the default route
    /// reaches them.
    #[default]
    Router,
    /// Through each IPv4 subnet's DHCP server (`meta.dhcp_server`), as
    /// Neutron's DHCP agent advertises when it serves isolated metadata.
    DhcpPort,
    /// Through ML2/OVN's metadata port (`meta.metadata_server` of each IPv4
    /// subnet), as OVN's DHCP tells VMs: first, before the subnet's own host
    /// routes, as OVN orders them. Not on the link: OVN answers ARP for the
    /// metadata port's address itself, while anyone on the network without
    /// port security could answer for 169.254.169.254.
    MetadataPort,
}

/// The link-local address of the metadata service (EC2's and Nova's).
pub const METADATA_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

impl Default for PlugOptions {
    fn default() -> Self {
        PlugOptions {
            instance_uuid: None,
            ovs_integration_bridge: "br-int".into(),
            ovs_vsctl: PathBuf::from("ovs-vsctl"),
            ovs_timeout: Duration::from_secs(30),
            netlink_timeout: Duration::from_secs(10),
            queue_timeout: Duration::from_secs(60),
            default_mtu: None,
            metadata_route: MetadataRoute::Router,
        }
    }
}

/// What [`plug`] did, for logs, metrics and the instance's network state.
///
/// Exists so the caller can record exactly which default routes were
/// installed or deliberately skipped, and how long plumbing took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlugReport {
    /// Neutron port id.
    pub port_id: String,
    /// The VIF type that was plugged.
    pub vif_type: String,
    /// Host end of the veth (`tap...`).
    pub host_ifname: String,
    /// Interface inside the container (`eth0`...).
    pub container_ifname: String,
    /// Its ifindex inside the container netns.
    pub container_ifindex: u32,
    /// MAC set on the container end.
    pub mac: String,
    /// MTU set on both ends (None: kernel default kept).
    pub mtu: Option<u32>,
    /// Addresses configured inside.
    pub addresses: Vec<IpCidr>,
    /// Default-route decisions, at most one per family.
    pub default_routes: Vec<DefaultRoute>,
    /// Host routes from the subnets.
    pub host_routes: Vec<HostRoute>,
    /// Linux bridge or OVS bridge the port was attached to.
    pub bridge: Option<String>,
    /// The per-port `qbr` bridge of a hybrid OVS plug.
    pub hybrid_bridge: Option<String>,
    /// Whether a leftover device of the same name had to be removed first.
    pub replaced_stale: bool,
    /// Wall time of the plug.
    pub elapsed: Duration,
}

/// One default-route decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultRoute {
    /// The gateway this VIF offered.
    pub gateway: IpAddr,
    /// True if installed; false if the container already had a default route
    /// of that family (an earlier VIF's), which was kept.
    pub installed: bool,
}

/// One subnet host route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRoute {
    /// Destination prefix.
    pub destination: IpCidr,
    /// Next hop (None: on-link).
    pub gateway: Option<IpAddr>,
    /// False if an identical route already existed (kept).
    pub installed: bool,
}

/// The host-side wiring of a VIF type.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Backend {
    LinuxBridge { bridge: String },
    Tap,
    Ovs { bridge: String },
    OvsHybrid { bridge: String, qbr: String, qvb: String, qvo: String },
}

/// Everything a plug needs, computed and validated before any side effect.
#[derive(Debug, Clone)]
struct Plan {
    port: String,
    vif_type: String,
    backend: Backend,
    devname: String,
    ifname: String,
    mac: [u8; 6],
    host_mac: [u8; 6],
    mtu: Option<u32>,
    addrs: Vec<IpCidr>,
    onlink: Vec<IpAddr>,
    default_v4: Option<Ipv4Addr>,
    default_v6: Option<Ipv6Addr>,
    host_routes: Vec<(IpCidr, Option<IpAddr>)>,
    iface_id: String,
    vm_uuid: Option<String>,
}

/// 169.254.169.254/32.
fn metadata_destination() -> IpCidr {
    IpCidr { addr: IpAddr::V4(METADATA_ADDRESS), prefix_len: 32 }
}

/// The route to [`METADATA_ADDRESS`] through a subnet's DHCP server, unless
/// the subnets' own host routes already route it, as Neutron's DHCP agent
/// leaves an operator's route alone.
fn metadata_route(dhcp: IpAddr, host_routes: &[(IpCidr, Option<IpAddr>)]) -> Option<(IpCidr, Option<IpAddr>)> {
    let dst = metadata_destination();
    let routed = host_routes.iter().any(|(d, _)| d.contains(dst.addr) && d.prefix_len == 32);
    (!routed).then_some((dst, Some(dhcp)))
}

/// Rejects names the kernel would refuse (`dev_valid_name`): empty, `.`/`..`,
/// longer than 15 bytes, or containing `/`, `:` or whitespace.
///
/// Exists so a bad devname fails with a message naming it, instead of an
/// EINVAL from the kernel halfway through a plug.
pub fn validate_ifname(name: &str) -> Result<(), NetError> {
    let bad = |reason| Err(NetError::InvalidName { name: name.to_string(), reason });
    if name.is_empty() || name == "." || name == ".." {
        return bad("empty, \".\" or \"..\"");
    }
    if name.len() > IFNAME_MAX {
        return bad("longer than 15 bytes (IFNAMSIZ)");
    }
    if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control()) {
        return bad("contains '/', ':' or whitespace");
    }
    Ok(())
}

fn backend_of(vif: &Vif, opts: &PlugOptions) -> Result<Backend, NetError> {
    let vt = vif.vif_type.as_deref().unwrap_or("");
    let bridge_from_vif = || vif.bridge_name();
    match vt {
        "bridge" => {
            let bridge = bridge_from_vif().ok_or_else(|| NetError::InvalidVif {
                port: vif.id.clone(),
                reason: "bridge VIF without network.bridge".into(),
            })?;
            validate_ifname(&bridge)?;
            Ok(Backend::LinuxBridge { bridge })
        }
        "tap" => Ok(Backend::Tap),
        "ovs" => {
            let bridge = bridge_from_vif().unwrap_or_else(|| opts.ovs_integration_bridge.clone());
            validate_ifname(&bridge)?;
            if vif.is_hybrid_plug() {
                Ok(Backend::OvsHybrid {
                    bridge,
                    qbr: prefixed_name("qbr", &vif.id),
                    qvb: prefixed_name("qvb", &vif.id),
                    qvo: prefixed_name("qvo", &vif.id),
                })
            } else {
                Ok(Backend::Ovs { bridge })
            }
        }
        other => Err(NetError::UnsupportedVifType { port: vif.id.clone(), vif_type: other.to_string() }),
    }
}

impl Plan {
    fn new(vif: &Vif, ifname: &str, opts: &PlugOptions) -> Result<Plan, NetError> {
        let invalid = |reason: String| NetError::InvalidVif { port: vif.id.clone(), reason };
        if vif.id.is_empty() {
            return Err(invalid("VIF without a port id".into()));
        }
        binding::check(vif, opts)?;
        let backend = backend_of(vif, opts)?;
        let devname = vif.devname_or_default();
        validate_ifname(&devname)?;
        validate_ifname(ifname)?;
        if ifname == "lo" {
            return Err(NetError::InvalidName { name: ifname.into(), reason: "the container interface cannot be lo" });
        }
        if let Backend::OvsHybrid { qbr, qvb, qvo, .. } = &backend {
            for n in [qbr, qvb, qvo] {
                validate_ifname(n)?;
            }
        }
        let mac = vif.mac()?;
        if mac[0] & 1 == 1 || mac == [0; 6] {
            return Err(invalid(format!("{} is not a unicast MAC", format_mac(&mac))));
        }
        let mut host_mac = mac;
        host_mac[0] = 0xfe;

        let addrs = vif.fixed_ips()?;
        let has_v6 = addrs.iter().any(|a| a.addr.is_ipv6());
        let mtu = vif.mtu().or(opts.default_mtu);
        if let Some(m) = mtu {
            if !(68..=65535).contains(&m) {
                return Err(invalid(format!("MTU {m} out of range 68..65535")));
            }
            if has_v6 && m < 1280 {
                return Err(invalid(format!("MTU {m} is below 1280, IPv6 cannot work")));
            }
        }

        let mut default_v4 = None;
        let mut default_v6 = None;
        let mut host_routes = Vec::new();
        let mut gateways = Vec::new();
        let mut through_metadata_port = false;
        for s in &vif.network.subnets {
            let gw = s.gateway_ip().map_err(invalid)?;
            if let Some(gw) = gw {
                if s.cidr.is_some() {
                    let net = s.prefix().map_err(invalid)?;
                    if net.addr.is_ipv4() != gw.is_ipv4() {
                        return Err(invalid(format!("gateway {gw} is not in the family of subnet {net}")));
                    }
                }
                match gw {
                    IpAddr::V4(g) if default_v4.is_none() => {
                        default_v4 = Some(g);
                        gateways.push(gw);
                    }
                    IpAddr::V6(g) if default_v6.is_none() => {
                        default_v6 = Some(g);
                        gateways.push(gw);
                    }
                    _ => {}
                }
            }
            if opts.metadata_route == MetadataRoute::MetadataPort
                && !through_metadata_port
                && let Some(server) = s.metadata_server()
            {
                gateways.push(server);
                host_routes.push((metadata_destination(), Some(server)));
                through_metadata_port = true;
            }
            for r in &s.routes {
                let Some(c) = r.cidr.as_deref() else { continue };
                let dst = IpCidr::parse(c).map_err(invalid)?;
                let dst = IpCidr { addr: dst.network(), prefix_len: dst.prefix_len };
                let via = match &r.gateway {
                    Some(g) => g.ip().map_err(invalid)?,
                    None => None,
                };
                if let Some(v) = via {
                    if v.is_ipv4() != dst.addr.is_ipv4() {
                        return Err(invalid(format!("host route {dst} via {v}: mixed families")));
                    }
                    gateways.push(v);
                }
                host_routes.push((dst, via));
            }
            if opts.metadata_route == MetadataRoute::DhcpPort
                && let Some(dhcp) = s.dhcp_server()
                && let Some(route) = metadata_route(dhcp, &host_routes)
            {
                gateways.push(dhcp);
                host_routes.push(route);
            }
        }
        // Without an address of a family the interface cannot route it (and
        // IPv6 stays disabled by Docker: routes would fail with EACCES).
        if !has_v6 {
            default_v6 = None;
            host_routes.retain(|(d, _)| d.addr.is_ipv4());
            gateways.retain(|g| g.is_ipv4());
        }
        if !addrs.iter().any(|a| a.addr.is_ipv4()) {
            default_v4 = None;
            host_routes.retain(|(d, _)| d.addr.is_ipv6());
            gateways.retain(|g| g.is_ipv6());
        }
        // Gateways no configured prefix covers need an on-link route first
        // (Neutron allows a gateway outside the subnet).
        let mut onlink = Vec::new();
        for g in gateways {
            let covered = addrs.iter().any(|a| a.contains(g));
            let link_local = matches!(g, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            if !covered && !link_local && !onlink.contains(&g) {
                onlink.push(g);
            }
        }

        let vm_uuid = opts.instance_uuid.clone().filter(|u| !u.is_empty());
        if matches!(backend, Backend::Ovs { .. } | Backend::OvsHybrid { .. }) && vm_uuid.is_none() {
            return Err(invalid(
                "ovs VIF needs the instance uuid (PlugOptions::instance_uuid) for external-ids:vm-uuid".into(),
            ));
        }
        Ok(Plan {
            port: vif.id.clone(),
            vif_type: vif.vif_type.clone().unwrap_or_default(),
            backend,
            devname,
            ifname: ifname.to_string(),
            mac,
            host_mac,
            mtu,
            addrs,
            onlink,
            default_v4,
            default_v6,
            host_routes,
            iface_id: vif.ovs_iface_id().to_string(),
            vm_uuid,
        })
    }

    fn needs_ovs(&self) -> bool {
        matches!(self.backend, Backend::Ovs { .. } | Backend::OvsHybrid { .. })
    }

    fn has_v6(&self) -> bool {
        self.addrs.iter().any(|a| a.addr.is_ipv6())
    }
}

/// Awaits a netlink future with a deadline and maps its error.
async fn nl<T, F>(op: &'static str, device: &str, t: Duration, fut: F) -> Result<T, NetError>
where
    F: Future<Output = Result<T, rtnetlink::Error>>,
{
    match tokio::time::timeout(t, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(NetError::from_rtnl(op, device, e)),
        Err(_) => Err(NetError::Timeout { op, device: device.to_string(), timeout: t }),
    }
}

fn host_handle() -> Result<Handle, NetError> {
    let (conn, handle, _unsolicited) = rtnetlink::new_connection().map_err(NetError::HostSocket)?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn plug_slot(t: Duration, what: &str) -> Result<SemaphorePermit<'static>, NetError> {
    match tokio::time::timeout(t, PLUG_SLOTS.acquire()).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(_)) => Err(NetError::Internal("plug semaphore closed".into())),
        Err(_) => Err(NetError::Timeout { op: "wait for a free plug slot", device: what.to_string(), timeout: t }),
    }
}

async fn get_link(h: &Handle, name: &str, ctx: &str, t: Duration) -> Result<Option<LinkMessage>, NetError> {
    let dev = format!("{name}{ctx}");
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match nl("look up", &dev, t, s.try_next()).await {
        Ok(m) => Ok(m),
        Err(e) if e.errno() == Some(ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

fn link_kind(m: &LinkMessage) -> Option<&InfoKind> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

fn kind_name(m: &LinkMessage) -> String {
    match link_kind(m) {
        Some(k) => format!("a {k:?} device").to_lowercase(),
        None => "a device without link kind".into(),
    }
}

/// Deletes `name` if it exists and is of `kind`; a device of another kind is
/// not ours and yields [`NetError::DeviceConflict`]. Returns whether it
/// deleted something. ENODEV races (a concurrent delete, a netns going away)
/// count as success.
async fn delete_if_kind(
    h: &Handle,
    name: &str,
    kind: InfoKind,
    expected: &'static str,
    ctx: &str,
    t: Duration,
) -> Result<bool, NetError> {
    let Some(m) = get_link(h, name, ctx, t).await? else {
        return Ok(false);
    };
    if link_kind(&m) != Some(&kind) {
        return Err(NetError::DeviceConflict { device: format!("{name}{ctx}"), found: kind_name(&m), expected });
    }
    let dev = format!("{name}{ctx}");
    match nl("delete", &dev, t, h.link().del(m.header.index).execute()).await {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes a sysctl of the host netns (the service's own) off the runtime.
async fn host_sysctl(path: String, value: &'static str, t: Duration) -> Result<(), NetError> {
    let p = path.clone();
    match tokio::time::timeout(t, tokio::task::spawn_blocking(move || write_sysctl(&p, value))).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(NetError::Internal(format!("sysctl {path}: {e}"))),
        Err(_) => Err(NetError::Timeout { op: "write sysctl", device: path, timeout: t }),
    }
}

/// Looks up a Linux bridge, creating it (forward delay 0, STP off, up) when
/// missing. A concurrent creator's EEXIST is fine. Returns (index, created).
async fn ensure_bridge(h: &Handle, name: &str, mcast_snooping: bool, t: Duration) -> Result<(u32, bool), NetError> {
    let mut created = false;
    let existing = match get_link(h, name, "", t).await? {
        Some(m) => m,
        None => {
            let msg = LinkBridge::new(name).forward_delay(0).mcast_snooping(mcast_snooping).build();
            match nl("create bridge", name, t, h.link().add(msg).execute()).await {
                Ok(()) => {
                    created = true;
                    info!(bridge = name, "created missing Linux bridge");
                }
                Err(e) if e.errno() == Some(EEXIST) => debug!(bridge = name, "bridge created concurrently"),
                Err(e) => return Err(e),
            }
            get_link(h, name, "", t).await?.ok_or_else(|| NetError::Netlink {
                op: "look up created bridge",
                device: name.to_string(),
                errno: ENODEV,
            })?
        }
    };
    if link_kind(&existing) != Some(&InfoKind::Bridge) {
        return Err(NetError::DeviceConflict {
            device: name.to_string(),
            found: kind_name(&existing),
            expected: "a Linux bridge",
        });
    }
    let idx = existing.header.index;
    if !existing.header.flags.contains(LinkFlags::Up) {
        nl("set up", name, t, h.link().set(LinkUnspec::new_with_index(idx).up().build()).execute()).await?;
    }
    if created {
        // Like Nova's/os-vif's ensure_bridge: an L2-only bridge gets no IPv6
        // link-local address, RS or DAD traffic of its own.
        if let Err(e) = host_sysctl(format!("net/ipv6/conf/{name}/disable_ipv6"), "1", t).await {
            warn!(bridge = name, error = %e, "could not disable IPv6 on bridge");
        }
    }
    Ok((idx, created))
}

/// Side effects to revert when a plug fails, in creation order.
#[derive(Debug)]
enum Undo {
    DeleteLink(String),
    OvsDelPort(String),
}

async fn run_undo(undo: Vec<Undo>, host: &Handle, vsctl: Option<&Path>, opts: &PlugOptions) {
    for u in undo.into_iter().rev() {
        let r = match &u {
            Undo::DeleteLink(name) => {
                let t = opts.netlink_timeout;
                let s = host.link().del_with_message(LinkUnspec::new_with_name(name).build());
                match nl("roll back: delete", name, t, s.execute()).await {
                    Err(e) if e.errno() == Some(ENODEV) => Ok(()),
                    r => r,
                }
            }
            Undo::OvsDelPort(port) => match vsctl {
                Some(v) => ovs::del_port(v, opts.ovs_timeout, port).await,
                None => Ok(()),
            },
        };
        match r {
            Ok(()) => debug!(?u, "rolled back"),
            Err(e) => warn!(?u, error = %e, "rollback step failed"),
        }
    }
}

/// Plugs one VIF into the container whose init process is `pid`, naming the
/// interface inside `ifname` (`eth0`, `eth1`, ... in network_info order).
///
/// This is the replacement for the old driver's `plug` + `attach` pair; see
/// the module docs for the exact steps. Re-plugging (e.g. after
/// `docker restart`, with the new pid) is supported: a leftover host veth of
/// the same name, or a leftover `ifname` veth inside the netns, is deleted
/// first. On error nothing created by this call is left behind.
///
/// Callers must not plug and unplug the *same port* concurrently (the
/// compute holds a per-instance lock); different ports/instances are safe.
pub async fn plug(vif: &Vif, pid: i32, ifname: &str, opts: &PlugOptions) -> Result<PlugReport, NetError> {
    let started = Instant::now();
    let plan = Plan::new(vif, ifname, opts)?;
    if opts.metadata_route == MetadataRoute::MetadataPort
        && plan.addrs.iter().any(|a| a.addr.is_ipv4())
        && !plan.host_routes.iter().any(|(d, _)| *d == metadata_destination())
    {
        // Said, not silent: the network has no OVN metadata port on a
        // DHCP subnet of this port (metadata off in Neutron, or none known
        // when its network_info was made).
        warn!(port = %plan.port, network = vif.network.id.as_deref().unwrap_or(""),
              "no OVN metadata port known on this port's IPv4 subnets: no route to 169.254.169.254 through it");
    }
    let vsctl = if plan.needs_ovs() { Some(ovs::find_vsctl(&opts.ovs_vsctl).await?) } else { None };
    let _slot = plug_slot(opts.queue_timeout, &plan.devname).await?;
    let host = host_handle()?;
    let ns = netns_handle(pid, opts.netlink_timeout).await?;
    let mut undo = Vec::new();
    match plug_steps(&plan, &host, &ns, vsctl.as_deref(), opts, &mut undo).await {
        Ok(mut report) => {
            report.elapsed = started.elapsed();
            info!(
                port = %plan.port, dev = %plan.devname, ifname = %plan.ifname, pid,
                elapsed_us = report.elapsed.as_micros() as u64, "plugged VIF"
            );
            Ok(report)
        }
        Err(e) => {
            warn!(port = %plan.port, dev = %plan.devname, pid, error = %e, "plug failed, rolling back");
            run_undo(undo, &host, vsctl.as_deref(), opts).await;
            Err(e)
        }
    }
}

async fn plug_steps(
    plan: &Plan,
    host: &Handle,
    ns: &NetnsHandle,
    vsctl: Option<&Path>,
    opts: &PlugOptions,
    undo: &mut Vec<Undo>,
) -> Result<PlugReport, NetError> {
    let t = opts.netlink_timeout;
    let mut report = PlugReport {
        port_id: plan.port.clone(),
        vif_type: plan.vif_type.clone(),
        host_ifname: plan.devname.clone(),
        container_ifname: plan.ifname.clone(),
        container_ifindex: 0,
        mac: format_mac(&plan.mac),
        mtu: plan.mtu,
        addresses: plan.addrs.clone(),
        default_routes: Vec::new(),
        host_routes: Vec::new(),
        bridge: None,
        hybrid_bridge: None,
        replaced_stale: false,
        elapsed: Duration::ZERO,
    };

    // 1. Host backend prerequisites.
    let mut controller = None;
    match &plan.backend {
        Backend::LinuxBridge { bridge } => {
            let (idx, _) = ensure_bridge(host, bridge, true, t).await?;
            controller = Some(idx);
            report.bridge = Some(bridge.clone());
        }
        Backend::OvsHybrid { bridge, qbr, qvb, qvo } => {
            let vsctl = vsctl.ok_or_else(|| NetError::Internal("ovs-vsctl not resolved".into()))?;
            let (qbr_idx, created) = ensure_bridge(host, qbr, false, t).await?;
            if created {
                undo.push(Undo::DeleteLink(qbr.clone()));
            }
            if get_link(host, qvo, "", t).await?.is_none() {
                // The peer cannot be set up in the creating request (veth_open
                // returns ENOTCONN until both ends are linked): separate step.
                let mut peer = LinkUnspec::new_with_name(qvo).promiscuous(true);
                let mut b = LinkVeth::new(qvb, qvo).up().promiscuous(true).controller(qbr_idx);
                if let Some(m) = plan.mtu {
                    peer = peer.mtu(m);
                    b = b.mtu(m);
                }
                let msg = b.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build()))).build();
                nl("create veth", &format!("{qvb} (peer {qvo})"), t, host.link().add(msg).execute()).await?;
                undo.push(Undo::DeleteLink(qvo.clone()));
                let up = LinkUnspec::new_with_name(qvo).up().build();
                nl("set up", qvo, t, host.link().set(up).execute()).await?;
            } else {
                let mut b = LinkUnspec::new_with_name(qvb).controller(qbr_idx).up();
                if let Some(m) = plan.mtu {
                    b = b.mtu(m);
                }
                nl("enslave", qvb, t, host.link().set(b.build()).execute()).await?;
            }
            let ids = ovs::PortIds {
                iface_id: &plan.iface_id,
                mac: &report.mac,
                vm_uuid: plan.vm_uuid.as_deref().unwrap_or_default(),
            };
            ovs::del_port(vsctl, opts.ovs_timeout, qvo).await?;
            ovs::add_port(vsctl, opts.ovs_timeout, bridge, qvo, &ids).await?;
            undo.push(Undo::OvsDelPort(qvo.clone()));
            controller = Some(qbr_idx);
            report.bridge = Some(bridge.clone());
            report.hybrid_bridge = Some(qbr.clone());
        }
        Backend::Ovs { bridge } => {
            // A stale record of a previous plug goes before the new device
            // of its name exists (see ovs::del_port).
            let vsctl = vsctl.ok_or_else(|| NetError::Internal("ovs-vsctl not resolved".into()))?;
            ovs::del_port(vsctl, opts.ovs_timeout, &plan.devname).await?;
            report.bridge = Some(bridge.clone());
        }
        Backend::Tap => {}
    }

    // 2. The veth pair, peer born inside the container netns.
    report.replaced_stale = create_veth(plan, host, ns, controller, t).await?;
    undo.push(Undo::DeleteLink(plan.devname.clone()));

    // 3. Plain OVS: the host end itself is the OVS port.
    if let Backend::Ovs { bridge } = &plan.backend {
        let vsctl = vsctl.ok_or_else(|| NetError::Internal("ovs-vsctl not resolved".into()))?;
        let ids = ovs::PortIds {
            iface_id: &plan.iface_id,
            mac: &report.mac,
            vm_uuid: plan.vm_uuid.as_deref().unwrap_or_default(),
        };
        ovs::add_port(vsctl, opts.ovs_timeout, bridge, &plan.devname, &ids).await?;
        undo.push(Undo::OvsDelPort(plan.devname.clone()));
        // Up again after OVS took the device: nothing may have left it down.
        let up = LinkUnspec::new_with_name(&plan.devname).up().build();
        nl("set up", &plan.devname, t, host.link().set(up).execute()).await?;
    }

    // 4. Inside the container.
    configure_inside(plan, ns, t, &mut report).await?;
    Ok(report)
}

/// Creates the veth; on EEXIST removes leftovers of a previous plug (host
/// end, or `ifname` inside) and retries once. Returns whether it replaced one.
async fn create_veth(
    plan: &Plan,
    host: &Handle,
    ns: &NetnsHandle,
    controller: Option<u32>,
    t: Duration,
) -> Result<bool, NetError> {
    let build = || {
        // No IFF_UP on the peer here: the kernel configures the peer before
        // the two ends are linked, and veth_open() then fails with ENOTCONN.
        // The container end is set up from inside the netns afterwards.
        let mut peer =
            LinkUnspec::new_with_name(&plan.ifname).address(plan.mac.to_vec()).setns_by_fd(ns.ns.as_raw_fd());
        let mut b = LinkVeth::new(&plan.devname, &plan.ifname).address(plan.host_mac.to_vec()).up();
        if let Some(m) = plan.mtu {
            peer = peer.mtu(m);
            b = b.mtu(m);
        }
        if let Some(c) = controller {
            b = b.controller(c);
        }
        b.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build()))).build()
    };
    let dev = format!("{} (peer {} in netns of pid {})", plan.devname, plan.ifname, ns.pid);
    match nl("create veth", &dev, t, host.link().add(build()).execute()).await {
        Ok(()) => Ok(false),
        Err(e) if e.errno() == Some(EEXIST) => {
            let ctx = format!(" in netns of pid {}", ns.pid);
            let a = delete_if_kind(host, &plan.devname, InfoKind::Veth, "a veth", "", t).await?;
            let b = delete_if_kind(&ns.handle, &plan.ifname, InfoKind::Veth, "a veth", &ctx, t).await?;
            info!(dev = %plan.devname, ifname = %plan.ifname, host_end = a, container_end = b,
                  "removed leftover veth before re-plug");
            nl("create veth", &dev, t, host.link().add(build()).execute()).await?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

async fn configure_inside(plan: &Plan, ns: &NetnsHandle, t: Duration, report: &mut PlugReport) -> Result<(), NetError> {
    let h = &ns.handle;
    let ctx = format!(" in netns of pid {}", ns.pid);
    let dev = format!("{}{ctx}", plan.ifname);

    // IPv6: Docker starts `none` containers with disable_ipv6=1. Turn DAD and
    // RA off *before* enabling IPv6, so neither the link-local nor the static
    // addresses are ever tentative and no RA-learned default route appears
    // next to ours.
    if plan.has_v6() {
        let ifname = plan.ifname.clone();
        in_netns(&ns.ns, ns.pid, "write IPv6 sysctls", t, move || {
            let base = format!("net/ipv6/conf/{ifname}");
            write_sysctl(&format!("{base}/accept_dad"), "0")?;
            write_sysctl(&format!("{base}/accept_ra"), "0")?;
            write_sysctl(&format!("{base}/disable_ipv6"), "0")
        })
        .await?;
    }

    let lo = LinkUnspec::new_with_name("lo").up().build();
    nl("set up", &format!("lo{ctx}"), t, h.link().set(lo).execute()).await?;

    let link = get_link(h, &plan.ifname, &ctx, t).await?.ok_or_else(|| NetError::Netlink {
        op: "look up created",
        device: dev.clone(),
        errno: ENODEV,
    })?;
    let idx = link.header.index;
    report.container_ifindex = idx;
    // Up before addresses/routes: a gateway route over a down link is ENETDOWN.
    nl("set up", &dev, t, h.link().set(LinkUnspec::new_with_index(idx).up().build()).execute()).await?;

    for a in &plan.addrs {
        let mut req = h.address().add(idx, a.addr, a.prefix_len).replace();
        if a.addr.is_ipv6() {
            req.message_mut().header.flags = AddressHeaderFlags::Nodad;
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        nl("add address", &format!("{a} on {dev}"), t, req.execute()).await?;
    }

    for g in &plan.onlink {
        let msg = match *g {
            IpAddr::V4(g4) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(g4, 32)
                .output_interface(idx)
                .scope(RouteScope::Link)
                .build(),
            IpAddr::V6(g6) => {
                RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(g6, 128).output_interface(idx).build()
            }
        };
        match nl("add on-link route", &format!("{g} dev {dev}"), t, h.route().add(msg).execute()).await {
            Err(e) if e.errno() == Some(EEXIST) => {}
            r => r?,
        }
    }

    let defaults = [plan.default_v4.map(IpAddr::V4), plan.default_v6.map(IpAddr::V6)];
    for gw in defaults.into_iter().flatten() {
        let installed = if has_default_route(h, gw.is_ipv6(), &dev, t).await? {
            false
        } else {
            let msg = match gw {
                IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new().gateway(g).output_interface(idx).build(),
                IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new().gateway(g).output_interface(idx).build(),
            };
            // Without NLM_F_REPLACE the kernel adds with NLM_F_EXCL: a default
            // route installed concurrently by another VIF wins, we get EEXIST.
            match nl("add default route", &format!("via {gw} dev {dev}"), t, h.route().add(msg).execute()).await {
                Ok(()) => true,
                Err(e) if e.errno() == Some(EEXIST) => false,
                Err(e) => return Err(e),
            }
        };
        if !installed {
            info!(gateway = %gw, dev = %dev, "container already has a default route of this family; kept it");
        }
        report.default_routes.push(DefaultRoute { gateway: gw, installed });
    }

    for (dst, via) in &plan.host_routes {
        let msg = match (dst.addr, via) {
            (IpAddr::V4(d), Some(IpAddr::V4(g))) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d, dst.prefix_len)
                .gateway(*g)
                .output_interface(idx)
                .build(),
            (IpAddr::V4(d), _) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d, dst.prefix_len)
                .output_interface(idx)
                .scope(RouteScope::Link)
                .build(),
            (IpAddr::V6(d), Some(IpAddr::V6(g))) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d, dst.prefix_len)
                .gateway(*g)
                .output_interface(idx)
                .build(),
            (IpAddr::V6(d), _) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d, dst.prefix_len)
                .output_interface(idx)
                .build(),
        };
        let what = match via {
            Some(g) => format!("{dst} via {g} dev {dev}"),
            None => format!("{dst} dev {dev}"),
        };
        let installed = match nl("add host route", &what, t, h.route().add(msg).execute()).await {
            Ok(()) => true,
            Err(e) if e.errno() == Some(EEXIST) => false,
            Err(e) => return Err(e),
        };
        report.host_routes.push(HostRoute { destination: *dst, gateway: *via, installed });
    }
    Ok(())
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// Whether the main table of the netns has a unicast default route of the family.
async fn has_default_route(h: &Handle, v6: bool, dev: &str, t: Duration) -> Result<bool, NetError> {
    let msg = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    let routes: Vec<RouteMessage> = nl("list routes", dev, t, h.route().get(msg).execute().try_collect()).await?;
    Ok(routes.iter().any(|r| {
        r.header.destination_prefix_length == 0
            && r.header.kind == RouteType::Unicast
            && route_table(r) == u32::from(RouteHeader::RT_TABLE_MAIN)
    }))
}

/// Removes what [`plug`] created on the host for this VIF: the host veth end
/// (which deletes the container end with it), the OVS port, and for hybrid
/// plugs the `qvo`/`qvb` pair and the `qbr` bridge. Idempotent: missing
/// devices and ports are success.
///
/// A shared Linux bridge (`bridge` VIFs) is never removed: other instances
/// use it. For a VIF type plug does not support, the host device is still
/// removed if it exists, so teardown of odd network_info never fails. A
/// device of the right name but the wrong kind is not ours and is left alone
/// (logged). The `/var/run/netns` entry is the caller's, see
/// [`super::NetnsLink::remove`].
pub async fn unplug(vif: &Vif, opts: &PlugOptions) -> Result<(), NetError> {
    // A cached VIF naming a host device (`eth0`) must not get it deleted.
    binding::check(vif, opts)?;
    let devname = vif.devname_or_default();
    validate_ifname(&devname)?;
    let t = opts.netlink_timeout;
    let vif_type = vif.vif_type.as_deref().unwrap_or("");
    let hybrid = vif_type == "ovs" && vif.is_hybrid_plug();
    let _slot = plug_slot(opts.queue_timeout, &devname).await?;
    let host = host_handle()?;

    let mut first_err: Option<NetError> = None;
    let mut keep = |r: Result<bool, NetError>| match r {
        Ok(_) => {}
        Err(NetError::DeviceConflict { device, found, .. }) => {
            warn!(%device, %found, "unplug: device is not ours, left alone");
        }
        Err(e) => {
            warn!(error = %e, "unplug step failed");
            first_err.get_or_insert(e);
        }
    };

    keep(delete_if_kind(&host, &devname, InfoKind::Veth, "a veth", "", t).await);

    if vif_type == "ovs" {
        let qvo = prefixed_name("qvo", &vif.id);
        match ovs::find_vsctl(&opts.ovs_vsctl).await {
            Ok(vsctl) => {
                let port = if hybrid { qvo.as_str() } else { devname.as_str() };
                keep(ovs::del_port(&vsctl, opts.ovs_timeout, port).await.map(|_| true));
            }
            Err(e) => warn!(error = %e, port = %vif.id, "unplug: cannot remove the OVS port"),
        }
        if hybrid {
            keep(delete_if_kind(&host, &qvo, InfoKind::Veth, "a veth", "", t).await);
            let qbr = prefixed_name("qbr", &vif.id);
            keep(delete_if_kind(&host, &qbr, InfoKind::Bridge, "a Linux bridge", "", t).await);
        }
    }
    match first_err {
        None => {
            debug!(port = %vif.id, dev = %devname, "unplugged VIF");
            Ok(())
        }
        Some(e) => Err(e),
    }
}

/// Plugs every VIF of an instance, naming them `eth0`, `eth1`, ... in
/// network_info order. If one fails, the ones already plugged are unplugged
/// again and the error is returned.
///
/// Exists because the "first VIF with a gateway owns the default route"
/// rule depends on plugging in network_info order.
pub async fn plug_all(ni: &NetworkInfo, pid: i32, opts: &PlugOptions) -> Result<Vec<PlugReport>, NetError> {
    let mut reports = Vec::with_capacity(ni.len());
    for (i, vif) in ni.iter().enumerate() {
        match plug(vif, pid, &format!("eth{i}"), opts).await {
            Ok(r) => reports.push(r),
            Err(e) => {
                for done in ni.iter().take(i).rev() {
                    if let Err(u) = unplug(done, opts).await {
                        warn!(port = %done.id, error = %u, "unplug after failed plug_all");
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(reports)
}

/// Unplugs every VIF of an instance; tries all of them and returns the first
/// error, if any.
pub async fn unplug_all(ni: &NetworkInfo, opts: &PlugOptions) -> Result<(), NetError> {
    let mut first = None;
    for vif in ni {
        if let Err(e) = unplug(vif, opts).await {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::model::parse_network_info;

    fn vif(json: &str) -> Vif {
        parse_network_info(json).unwrap().remove(0)
    }

    const BR: &str = r#"[{"id": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "address": "fa:16:3e:01:02:03",
      "type": "bridge", "devname": "tap0f1e2d3c-4b",
      "network": {"id": "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d", "bridge": "brq5a4b3c2d-1e", "meta": {"mtu": 1450}, "subnets": [
        {"cidr": "10.0.0.0/24", "version": 4,
         "gateway": {"address": "10.0.0.1", "type": "gateway", "version": 4},
         "dns": [{"address": "10.0.0.2"}, {"address": "10.0.0.3"}],
         "ips": [{"address": "10.0.0.5", "type": "fixed", "version": 4}],
         "routes": [{"cidr": "192.168.7.9/24", "gateway": {"address": "10.0.0.254"}},
                    {"cidr": "172.16.0.0/12", "gateway": {"address": "10.9.9.9"}}]},
        {"cidr": "10.1.0.0/24", "version": 4,
         "gateway": {"address": "10.1.0.1"},
         "ips": [{"address": "10.1.0.5", "type": "fixed", "version": 4}]},
        {"cidr": "fd00::/64", "version": 6,
         "gateway": {"address": "fd00::1"},
         "dns": [{"address": "10.0.0.2"}, {"address": "fd00::53"}],
         "ips": [{"address": "fd00::5", "type": "fixed", "version": 6}]}]}}]"#;

    #[test]
    fn plan_for_bridge_vif() {
        let v = vif(BR);
        let p = Plan::new(&v, "eth0", &PlugOptions::default()).unwrap();
        assert_eq!(p.backend, Backend::LinuxBridge { bridge: "brq5a4b3c2d-1e".into() });
        assert_eq!(p.devname, "tap0f1e2d3c-4b");
        assert_eq!(p.host_mac, [0xfe, 0x16, 0x3e, 1, 2, 3]);
        assert_eq!(p.mtu, Some(1450));
        assert_eq!(p.addrs.len(), 3);
        // first subnet with a gateway of each family
        assert_eq!(p.default_v4, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(p.default_v6, Some("fd00::1".parse().unwrap()));
        // host route destination normalised to the network address
        assert_eq!(p.host_routes[0].0.to_string(), "192.168.7.0/24");
        // 10.9.9.9 is covered by no configured prefix: needs an on-link route
        assert_eq!(p.onlink, vec!["10.9.9.9".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn unsupported_types_are_rejected_before_anything_happens() {
        for t in ["vhostuser", "macvtap", "hw_veb", "midonet", "", "802.1qbh"] {
            let j = BR.replace("\"type\": \"bridge\"", &format!("\"type\": \"{t}\""));
            let e = Plan::new(&vif(&j), "eth0", &PlugOptions::default()).unwrap_err();
            assert!(matches!(e, NetError::UnsupportedVifType { .. }), "{t}: {e}");
        }
        let j = BR.replace("\"type\": \"bridge\",", "");
        let e = Plan::new(&vif(&j), "eth0", &PlugOptions::default()).unwrap_err();
        assert!(matches!(e, NetError::UnsupportedVifType { .. }));
    }

    #[test]
    fn ovs_plans() {
        let j = BR
            .replace("\"type\": \"bridge\"", "\"type\": \"ovs\", \"details\": {\"ovs_hybrid_plug\": true}")
            .replace("brq5a4b3c2d-1e", "br-int");
        let v = vif(&j);
        let e = Plan::new(&v, "eth0", &PlugOptions::default()).unwrap_err();
        assert!(e.to_string().contains("vm-uuid"), "{e}");
        let opts = PlugOptions {
            instance_uuid: Some("6f1b5a7e-0000-4000-8000-000000000001".into()),
            ..PlugOptions::default()
        };
        let p = Plan::new(&v, "eth0", &opts).unwrap();
        assert_eq!(
            p.backend,
            Backend::OvsHybrid {
                bridge: "br-int".into(),
                qbr: "qbr0f1e2d3c-4b".into(),
                qvb: "qvb0f1e2d3c-4b".into(),
                qvo: "qvo0f1e2d3c-4b".into(),
            }
        );
        assert_eq!(p.iface_id, v.id);
    }

    #[test]
    fn names_and_mtu_are_validated() {
        let long = BR.replace("\"devname\": \"tap0f1e2d3c-4b\"", "\"devname\": \"tap0f1e2d3c-4b5a6978\"");
        assert!(matches!(
            Plan::new(&vif(&long), "eth0", &PlugOptions::default()),
            Err(NetError::NotFromBinding { .. })
        ));
        assert!(Plan::new(&vif(BR), "eth 0", &PlugOptions::default()).is_err());
        assert!(Plan::new(&vif(BR), "lo", &PlugOptions::default()).is_err());
        let small = BR.replace("\"mtu\": 1450", "\"mtu\": 1200");
        let e = Plan::new(&vif(&small), "eth0", &PlugOptions::default()).unwrap_err();
        assert!(e.to_string().contains("1280"), "{e}");
        let mc = BR.replace("fa:16:3e:01:02:03", "01:00:5e:01:02:03");
        assert!(Plan::new(&vif(&mc), "eth0", &PlugOptions::default()).is_err());
    }

    /// The next hops of a plan's routes to the metadata address, in order.
    fn metadata_routes(p: &Plan) -> Vec<Option<IpAddr>> {
        p.host_routes.iter().filter(|(d, _)| d.to_string() == "169.254.169.254/32").map(|(_, via)| *via).collect()
    }

    #[test]
    fn metadata_goes_through_the_dhcp_port_only_when_asked_and_not_routed_already() {
        let dhcp = BR.replacen(r#""version": 4,"#, r#""version": 4, "meta": {"dhcp_server": "10.0.0.2"},"#, 1);
        let on = PlugOptions { metadata_route: MetadataRoute::DhcpPort, ..PlugOptions::default() };
        let p = Plan::new(&vif(&dhcp), "eth0", &on).unwrap();
        assert_eq!(metadata_routes(&p), vec![Some("10.0.0.2".parse::<IpAddr>().unwrap())]);
        // off (the default): routers serve the metadata
        assert!(metadata_routes(&Plan::new(&vif(&dhcp), "eth0", &PlugOptions::default()).unwrap()).is_empty());
        // no DHCP server, not an IPv4 one, outside the subnet, not unicast,
        // or DHCP off: nothing (an info cache from an RPC peer is not Neutron)
        assert!(metadata_routes(&Plan::new(&vif(BR), "eth0", &on).unwrap()).is_empty());
        for meta in [
            r#"{"dhcp_server": "fd00::2"}"#,
            r#"{"dhcp_server": "10.9.9.9"}"#,
            r#"{"dhcp_server": "10.0.0.0"}"#,
            r#"{"dhcp_server": "255.255.255.255"}"#,
            r#"{"dhcp_server": "10.0.0.2", "enable_dhcp": false}"#,
        ] {
            let j = BR.replacen(r#""version": 4,"#, &format!(r#""version": 4, "meta": {meta},"#), 1);
            assert!(metadata_routes(&Plan::new(&vif(&j), "eth0", &on).unwrap()).is_empty(), "{meta}");
        }
        let enabled = BR.replacen(
            r#""version": 4,"#,
            r#""version": 4, "meta": {"dhcp_server": "10.0.0.2", "enable_dhcp": true},"#,
            1,
        );
        assert_eq!(metadata_routes(&Plan::new(&vif(&enabled), "eth0", &on).unwrap()).len(), 1);
        // the subnet routes it already (an operator's host route): left alone
        let own = dhcp.replace("192.168.7.9/24", "169.254.169.254/32");
        assert_eq!(
            metadata_routes(&Plan::new(&vif(&own), "eth0", &on).unwrap()),
            vec![Some("10.0.0.254".parse().unwrap())]
        );
    }

    #[test]
    fn on_ovn_the_metadata_address_goes_through_the_metadata_port_first() {
        let port = PlugOptions { metadata_route: MetadataRoute::MetadataPort, ..PlugOptions::default() };
        let md = BR.replacen(r#""version": 4,"#, r#""version": 4, "meta": {"metadata_server": "10.0.0.3"},"#, 1);
        let via = |ip: &str| Some(ip.parse::<IpAddr>().unwrap());
        assert_eq!(metadata_routes(&Plan::new(&vif(&md), "eth0", &port).unwrap()), vec![via("10.0.0.3")]);
        // first, before a subnet host route for the same address (which the
        // kernel then refuses as existing), as OVN's DHCP orders them
        let own = md.replace("192.168.7.9/24", "169.254.169.254/32");
        assert_eq!(
            metadata_routes(&Plan::new(&vif(&own), "eth0", &port).unwrap()),
            vec![via("10.0.0.3"), via("10.0.0.254")]
        );
        // no metadata port on the subnet (none on the network, DHCP off, or
        // an address that is not the subnet's): no route of its own
        assert!(metadata_routes(&Plan::new(&vif(BR), "eth0", &port).unwrap()).is_empty());
        for meta in [
            r#"{"metadata_server": "10.0.0.3", "enable_dhcp": false}"#,
            r#"{"metadata_server": "10.9.9.9"}"#,
            r#"{"metadata_server": "169.254.169.254"}"#,
            r#"{"dhcp_server": "10.0.0.2"}"#,
        ] {
            let j = BR.replacen(r#""version": 4,"#, &format!(r#""version": 4, "meta": {meta},"#), 1);
            assert!(metadata_routes(&Plan::new(&vif(&j), "eth0", &port).unwrap()).is_empty(), "{meta}");
        }
        // the DHCP-port mode ignores the metadata port, and the other way round
        let both = BR.replacen(
            r#""version": 4,"#,
            r#""version": 4, "meta": {"metadata_server": "10.0.0.3", "dhcp_server": "10.0.0.2"},"#,
            1,
        );
        let dhcp = PlugOptions { metadata_route: MetadataRoute::DhcpPort, ..PlugOptions::default() };
        assert_eq!(metadata_routes(&Plan::new(&vif(&both), "eth0", &dhcp).unwrap()), vec![via("10.0.0.2")]);
        assert_eq!(metadata_routes(&Plan::new(&vif(&both), "eth0", &port).unwrap()), vec![via("10.0.0.3")]);
        assert!(metadata_routes(&Plan::new(&vif(&both), "eth0", &PlugOptions::default()).unwrap()).is_empty());
        // a port with no IPv4 address gets none
        let v6_only = md
            .replace(r#""address": "10.0.0.5""#, r#""address": null"#)
            .replace(r#""address": "10.1.0.5""#, r#""address": null"#);
        assert!(metadata_routes(&Plan::new(&vif(&v6_only), "eth0", &port).unwrap()).is_empty());
    }

    #[test]
    fn v6_routes_dropped_without_v6_address() {
        let j = BR.replace("\"address\": \"fd00::5\"", "\"address\": null");
        let p = Plan::new(&vif(&j), "eth0", &PlugOptions::default()).unwrap();
        assert_eq!(p.default_v6, None);
        assert!(!p.has_v6());
    }
}
