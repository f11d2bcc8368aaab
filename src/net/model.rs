//! Serde model of Nova's `network_info` (nova/network/model.py: VIF, Network,
//! Subnet, IP, FixedIP, Route).
//!
//! `InstanceInfoCache.network_info` is a JSON *string* holding a list of VIFs.
//! The compute reads it to plug ports and writes it back to Nova, so every
//! type keeps the keys it does not know in a flattened `extra` map: a field
//! added by a newer Nova survives the round trip. Known fields whose value
//! was `null` where Nova means "empty" (`details`, `profile`, `meta`,
//! `subnets`...) are read as empty; `Option` fields keep `null` as `null`.
//!
//! Addresses and CIDRs stay strings, exactly as Nova wrote them; they are
//! parsed (and rejected with a typed error naming the port) only when they
//! are used. One malformed subnet must not make the whole cache unreadable,
//! or unwritable.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::error::NetError;

/// Nova's `network_model.NIC_NAME_LEN`: device names Nova derives are cut to 14.
pub const NIC_NAME_LEN: usize = 14;

/// Linux `IFNAMSIZ - 1`: the longest interface name the kernel accepts.
pub const IFNAME_MAX: usize = 15;

/// The decoded `network_info` of one instance, in Nova's order (eth0 first).
pub type NetworkInfo = Vec<Vif>;

/// Parses the JSON text of `InstanceInfoCache.network_info`.
///
/// Exists because the cache carries the list as a string inside the object,
/// and `""`/`"null"` (seen for instances that never had networking) must read
/// as "no VIFs" rather than fail.
pub fn parse_network_info(json: &str) -> Result<NetworkInfo, serde_json::Error> {
    let trimmed = json.trim();
    if trimmed.is_empty() || trimmed == "null" {
        return Ok(Vec::new());
    }
    serde_json::from_str(trimmed)
}

/// Serializes network_info back to the JSON text Nova stores.
///
/// Exists as the counterpart of [`parse_network_info`] so the write-back path
/// never hand-builds JSON. (It cannot fail for these types in practice, but
/// the error is surfaced rather than masked: writing a wrong cache back to
/// Nova would be worse than not writing it.)
pub fn network_info_to_string(ni: &NetworkInfo) -> Result<String, serde_json::Error> {
    serde_json::to_string(ni)
}

/// Reads `null` (or a missing key, with `#[serde(default)]`) as `T::default()`.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn default_vnic_type() -> String {
    "normal".to_string()
}

/// One virtual interface (a bound Neutron port) as Nova describes it.
///
/// It exists because it is the unit the compute plugs: the port id, the MAC
/// Neutron allocated, the `type` that says which host backend (Linux bridge,
/// OVS, plain tap) wires it, and the network with its subnets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vif {
    /// Neutron port id.
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
    /// MAC address allocated by Neutron, e.g. `fa:16:3e:11:22:33`.
    #[serde(default)]
    pub address: Option<String>,
    /// `binding:vif_type`: `bridge`, `ovs`, `tap`, `vhostuser`, ...
    #[serde(rename = "type", default)]
    pub vif_type: Option<String>,
    /// Host device name chosen by Nova/Neutron (`tap` + id[:11]).
    #[serde(default)]
    pub devname: Option<String>,
    /// OVS `external-ids:iface-id` (normally the port id).
    #[serde(default)]
    pub ovs_interfaceid: Option<String>,
    /// Whether Neutron reports the port ACTIVE.
    #[serde(default, deserialize_with = "null_as_default")]
    pub active: bool,
    /// `binding:vnic_type` (`normal`, `direct`, ...).
    #[serde(default = "default_vnic_type", deserialize_with = "null_as_default")]
    pub vnic_type: String,
    /// `binding:vif_details` (`port_filter`, `ovs_hybrid_plug`, `bridge_name`...).
    #[serde(default, deserialize_with = "null_as_default")]
    pub details: Map<String, Value>,
    /// `binding:profile`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub profile: Map<String, Value>,
    /// The network the port is on.
    #[serde(default, deserialize_with = "null_as_default")]
    pub network: Network,
    /// Free-form VIF metadata.
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Map<String, Value>,
    /// Keys this model does not know (`qbh_params`, `preserve_on_delete`,
    /// `delegate_create`, anything newer), kept for the write-back.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The Neutron network of a VIF.
///
/// Exists to carry the bridge name (for `bridge` and `ovs` VIFs) and the MTU
/// in `meta`, plus the subnets with the addresses to configure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// Neutron network id.
    #[serde(default)]
    pub id: Option<String>,
    /// Linux bridge (`brq...`) or OVS integration bridge (`br-int`).
    #[serde(default)]
    pub bridge: Option<String>,
    /// Network name.
    #[serde(default)]
    pub label: Option<String>,
    /// `mtu`, `tenant_id`, `tunneled`, `physical_network`, `should_create_bridge`...
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Map<String, Value>,
    /// Subnets in which the port has addresses.
    #[serde(default, deserialize_with = "null_as_default")]
    pub subnets: Vec<Subnet>,
    /// Unknown keys, kept for the write-back.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One subnet of a VIF's network.
///
/// Exists because it gives the prefix length of each fixed IP (from `cidr`),
/// the gateway, the DNS servers and the host routes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Subnet {
    /// e.g. `10.0.0.0/24`, `fd00::/64`.
    #[serde(default)]
    pub cidr: Option<String>,
    /// 4 or 6.
    #[serde(default)]
    pub version: Option<u8>,
    /// Gateway; Nova writes an IP object with `address: null` when the subnet
    /// has none, so use [`Subnet::gateway_ip`].
    #[serde(default)]
    pub gateway: Option<Ip>,
    /// DNS servers.
    #[serde(default, deserialize_with = "null_as_default")]
    pub dns: Vec<Ip>,
    /// The port's fixed IPs in this subnet.
    #[serde(default, deserialize_with = "null_as_default")]
    pub ips: Vec<FixedIp>,
    /// Neutron `host_routes`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub routes: Vec<Route>,
    /// `dhcp_server`, `ipv6_address_mode`...
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Map<String, Value>,
    /// Unknown keys, kept for the write-back.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Nova's `IP` (used for gateways, DNS servers and floating IPs).
///
/// Exists to mirror Nova's shape exactly; [`Ip::ip`] gives the parsed address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ip {
    /// The address text (may be `null` for "no gateway").
    #[serde(default)]
    pub address: Option<String>,
    /// `gateway`, `dns`, `fixed`, `floating`...
    #[serde(rename = "type", default)]
    pub ip_type: Option<String>,
    /// 4 or 6.
    #[serde(default)]
    pub version: Option<u8>,
    /// Free-form metadata.
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Map<String, Value>,
    /// Unknown keys, kept for the write-back.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Nova's `FixedIP`: an [`Ip`] of type `fixed` plus its floating IPs.
///
/// Exists because these are the addresses configured on the container end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FixedIp {
    /// The address text.
    #[serde(default)]
    pub address: Option<String>,
    /// Normally `fixed`.
    #[serde(rename = "type", default)]
    pub ip_type: Option<String>,
    /// 4 or 6.
    #[serde(default)]
    pub version: Option<u8>,
    /// Free-form metadata.
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Map<String, Value>,
    /// Floating IPs NATed to this address by Neutron (informational here).
    #[serde(default, deserialize_with = "null_as_default")]
    pub floating_ips: Vec<Ip>,
    /// Unknown keys, kept for the write-back.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A Neutron subnet host route.
///
/// Exists because the container must get these routes (the old driver ignored them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Destination, e.g. `192.168.0.0/16`.
    #[serde(default)]
    pub cidr: Option<String>,
    /// Next hop.
    #[serde(default)]
    pub gateway: Option<Ip>,
    /// Interface hint (unused by Neutron VIFs).
    #[serde(default)]
    pub interface: Option<String>,
    /// Free-form metadata.
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Map<String, Value>,
    /// Unknown keys, kept for the write-back.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An address with its prefix length, e.g. `10.0.0.5/24`.
///
/// Exists because netlink wants both, and Nova keeps them apart (IP in
/// `ips`, prefix in the subnet's `cidr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    /// The address (host bits kept).
    pub addr: IpAddr,
    /// Prefix length, 0..=32 or 0..=128.
    pub prefix_len: u8,
}

impl IpCidr {
    /// Parses `addr/len`; a bare address is an error (Nova always writes the length).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, l) = s.trim().split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (no prefix length)"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?}: {a:?} is not an IP address"))?;
        let prefix_len: u8 = l.parse().map_err(|_| format!("{s:?}: bad prefix length {l:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(format!("{s:?}: prefix length {prefix_len} > {max}"));
        }
        Ok(IpCidr { addr, prefix_len })
    }

    /// Whether `ip` lies inside this prefix (same family only).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }

    /// The network address (host bits cleared), as routes want it.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

fn parse_opt_ip(a: Option<&str>) -> Result<Option<IpAddr>, String> {
    match a.map(str::trim) {
        None | Some("") => Ok(None),
        Some(a) => a.parse().map(Some).map_err(|_| format!("{a:?} is not an IP address")),
    }
}

impl Ip {
    /// The parsed address; `Ok(None)` when Nova wrote `address: null`.
    pub fn ip(&self) -> Result<Option<IpAddr>, String> {
        parse_opt_ip(self.address.as_deref())
    }
}

impl FixedIp {
    /// The parsed address; `Ok(None)` when it is `null`.
    pub fn ip(&self) -> Result<Option<IpAddr>, String> {
        parse_opt_ip(self.address.as_deref())
    }
}

impl Subnet {
    /// The parsed `cidr`.
    pub fn prefix(&self) -> Result<IpCidr, String> {
        let c = self.cidr.as_deref().ok_or("subnet has no cidr")?;
        IpCidr::parse(c)
    }

    /// The gateway address, if the subnet has one.
    pub fn gateway_ip(&self) -> Result<Option<IpAddr>, String> {
        match &self.gateway {
            None => Ok(None),
            Some(g) => g.ip(),
        }
    }

    /// The IPv4 address of the subnet's DHCP server (`meta.dhcp_server`, a
    /// Neutron DHCP port's), if the subnet has DHCP (`meta.enable_dhcp` not
    /// false) and the address is a unicast one inside the subnet: a value
    /// from an RPC peer's info cache is not trusted to be Neutron's.
    pub fn dhcp_server(&self) -> Option<IpAddr> {
        self.server_in_meta("dhcp_server")
    }

    /// The IPv4 address of ML2/OVN's metadata port in the subnet
    /// (`meta.metadata_server`, which nova-docker records with the subnet),
    /// checked as [`Subnet::dhcp_server`] is: DHCP on, unicast, inside.
    pub fn metadata_server(&self) -> Option<IpAddr> {
        self.server_in_meta("metadata_server")
    }

    /// A server address the subnet's `meta` names under `key`, if the subnet
    /// has DHCP (`meta.enable_dhcp` not false) and the address is an IPv4
    /// unicast one inside the subnet.
    fn server_in_meta(&self, key: &str) -> Option<IpAddr> {
        if self.meta.get("enable_dhcp").and_then(Value::as_bool) == Some(false) {
            return None;
        }
        let ip: Ipv4Addr = self.meta.get(key)?.as_str()?.parse().ok()?;
        let unicast = !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback());
        let prefix = self.prefix().ok()?;
        let inside = prefix.contains(IpAddr::V4(ip)) && IpAddr::V4(ip) != prefix.network();
        (unicast && inside).then_some(IpAddr::V4(ip))
    }
}

impl Vif {
    fn invalid(&self, reason: impl Into<String>) -> NetError {
        NetError::InvalidVif { port: self.id.clone(), reason: reason.into() }
    }

    /// MTU of the network (`network.meta.mtu`), if Nova recorded one.
    ///
    /// Accepts a JSON number or a numeric string; 0 or garbage reads as
    /// "not set" (the caller then keeps the kernel default).
    pub fn mtu(&self) -> Option<u32> {
        match self.network.meta.get("mtu")? {
            Value::Number(n) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|m| *m > 0)
    }

    /// Every fixed IP of the port (v4 and v6, all subnets, in order) with the
    /// prefix length of its subnet.
    ///
    /// Exists because the old driver configured only the first fixed IP; this
    /// is the complete list to put on the container interface.
    pub fn fixed_ips(&self) -> Result<Vec<IpCidr>, NetError> {
        let mut out = Vec::new();
        for s in &self.network.subnets {
            if s.ips.is_empty() {
                continue;
            }
            let net = s.prefix().map_err(|e| self.invalid(e))?;
            for ip in &s.ips {
                if let Some(t) = ip.ip_type.as_deref()
                    && t != "fixed"
                {
                    continue;
                }
                let Some(addr) = ip.ip().map_err(|e| self.invalid(e))? else {
                    continue;
                };
                if addr.is_ipv4() != net.addr.is_ipv4() {
                    return Err(self.invalid(format!("fixed IP {addr} is not in the family of subnet {net}")));
                }
                let c = IpCidr { addr, prefix_len: net.prefix_len };
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    /// The host device name: `devname` if Nova gave one, else Nova's own rule
    /// `("tap" + id)[:14]`.
    ///
    /// Exists so that the host end is named exactly as Neutron agents and
    /// operators expect (the linuxbridge agent finds ports by this name).
    pub fn devname_or_default(&self) -> String {
        match self.devname.as_deref().map(str::trim) {
            Some(d) if !d.is_empty() => d.to_string(),
            _ => prefixed_name("tap", &self.id),
        }
    }

    /// The bridge the VIF names: `network.bridge`, else
    /// `details.bridge_name` (what Nova's `_nw_info_build_network` reads).
    pub fn bridge_name(&self) -> Option<String> {
        self.network
            .bridge
            .clone()
            .filter(|b| !b.is_empty())
            .or_else(|| self.details.get("bridge_name").and_then(|v| v.as_str()).map(str::to_string))
    }

    /// The port MAC as bytes.
    pub fn mac(&self) -> Result<[u8; 6], NetError> {
        let a = self.address.as_deref().ok_or_else(|| self.invalid("no MAC address"))?;
        parse_mac(a).ok_or_else(|| self.invalid(format!("{a:?} is not a MAC address")))
    }

    /// Whether `details.ovs_hybrid_plug` asks for the qbr/qvb/qvo layout.
    pub fn is_hybrid_plug(&self) -> bool {
        match self.details.get("ovs_hybrid_plug") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        }
    }

    /// The OVS `iface-id`: `ovs_interfaceid`, falling back to the port id.
    pub fn ovs_iface_id(&self) -> &str {
        match self.ovs_interfaceid.as_deref() {
            Some(i) if !i.is_empty() => i,
            _ => &self.id,
        }
    }
}

/// Nova's derived device names: `(prefix + id)[:14]` (qbr, qvb, qvo, tap).
pub fn prefixed_name(prefix: &str, id: &str) -> String {
    format!("{prefix}{id}").chars().take(NIC_NAME_LEN).collect()
}

/// Parses `aa:bb:cc:dd:ee:ff` (also `-` separated).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut n = 0;
    for part in s.trim().split([':', '-']) {
        if n == 6 || part.len() != 2 {
            return None;
        }
        out[n] = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 6).then_some(out)
}

/// Formats a MAC as lower-case `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of nova-rpc.md §3.4, verbatim.
    const EXAMPLE: &str = r#"[{"id": "a1b2...", "address": "fa:16:3e:11:22:33", "type": "ovs",
  "devname": "tapa1b2c3d4-00", "ovs_interfaceid": "a1b2...", "active": true,
  "vnic_type": "normal", "details": {"port_filter": true}, "profile": {},
  "qbh_params": null, "qbg_params": null, "preserve_on_delete": false,
  "delegate_create": false, "meta": {},
  "network": {"id": "5d1e...", "bridge": "br-int", "label": "private",
    "meta": {"mtu": 1450, "tenant_id": "4e2f...", "tunneled": true, "physical_network": null},
    "subnets": [{"cidr": "10.0.0.0/24", "version": 4, "meta": {},
      "gateway": {"address": "10.0.0.1", "type": "gateway", "version": 4, "meta": {}},
      "dns": [{"address": "10.0.0.2", "type": "dns", "version": 4, "meta": {}}],
      "ips": [{"address": "10.0.0.5", "type": "fixed", "version": 4, "meta": {}, "floating_ips": []}],
      "routes": []}]}}]"#;

    #[test]
    fn parses_nova_rpc_example() {
        let ni = parse_network_info(EXAMPLE).unwrap();
        assert_eq!(ni.len(), 1);
        let v = &ni[0];
        assert_eq!(v.id, "a1b2...");
        assert_eq!(v.vif_type.as_deref(), Some("ovs"));
        assert_eq!(v.devname_or_default(), "tapa1b2c3d4-00");
        assert_eq!(v.mac().unwrap(), [0xfa, 0x16, 0x3e, 0x11, 0x22, 0x33]);
        assert_eq!(v.mtu(), Some(1450));
        assert!(v.active);
        assert!(!v.is_hybrid_plug());
        assert_eq!(v.network.bridge.as_deref(), Some("br-int"));
        let s = &v.network.subnets[0];
        assert_eq!(s.gateway_ip().unwrap(), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(s.dns[0].ip().unwrap(), Some("10.0.0.2".parse().unwrap()));
        let ips = v.fixed_ips().unwrap();
        assert_eq!(ips.len(), 1);
        assert_eq!(ips[0].to_string(), "10.0.0.5/24");
        // qbh_params etc. are kept as unknown keys.
        assert!(v.extra.contains_key("qbh_params"));
        assert_eq!(v.extra.get("preserve_on_delete"), Some(&Value::Bool(false)));
    }

    #[test]
    fn example_round_trips_exactly() {
        let original: Value = serde_json::from_str(EXAMPLE).unwrap();
        let ni = parse_network_info(EXAMPLE).unwrap();
        let back: Value = serde_json::from_str(&network_info_to_string(&ni).unwrap()).unwrap();
        assert_eq!(original, back);
    }

    #[test]
    fn unknown_fields_round_trip_at_every_level() {
        let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
        v[0]["future_vif_key"] = serde_json::json!({"nested": [1, 2, {"x": null}]});
        v[0]["network"]["injected"] = Value::Bool(false);
        v[0]["network"]["subnets"][0]["future_subnet_key"] = Value::from(7);
        v[0]["network"]["subnets"][0]["gateway"]["future_ip_key"] = Value::from("g");
        v[0]["network"]["subnets"][0]["ips"][0]["future_fixed_key"] = Value::from(1.5);
        v[0]["network"]["subnets"][0]["ips"][0]["floating_ips"] = serde_json::json!([
            {"address": "172.24.4.10", "type": "floating", "version": 4, "meta": {}, "x": 1}
        ]);
        v[0]["network"]["subnets"][0]["routes"] = serde_json::json!([
            {"cidr": "192.168.0.0/16", "gateway": {"address": "10.0.0.254", "type": "gateway",
             "version": 4, "meta": {}}, "interface": null, "meta": {}, "route_extra": true}
        ]);
        let text = v.to_string();
        let ni = parse_network_info(&text).unwrap();
        let back: Value = serde_json::from_str(&network_info_to_string(&ni).unwrap()).unwrap();
        assert_eq!(v, back);
        assert_eq!(ni[0].network.subnets[0].routes[0].cidr.as_deref(), Some("192.168.0.0/16"));
    }

    #[test]
    fn nova_null_gateway_and_nulls_are_tolerated() {
        let text = r#"[{"id": "0123456789abcdef", "address": "fa:16:3e:00:00:01", "type": "bridge",
          "devname": null, "details": null, "profile": null, "meta": null,
          "network": {"id": "n", "bridge": "brq1", "label": "l", "meta": {"mtu": "1400"},
            "subnets": [{"cidr": "fd00:1::/64", "version": 6,
              "gateway": {"address": null, "type": "gateway", "version": null, "meta": {}},
              "dns": null, "routes": null,
              "ips": [{"address": "fd00:1::5", "type": "fixed", "version": 6, "meta": {}}]}]}}]"#;
        let ni = parse_network_info(text).unwrap();
        let v = &ni[0];
        assert_eq!(v.devname_or_default(), "tap0123456789a");
        assert_eq!(v.devname_or_default().len(), NIC_NAME_LEN);
        assert_eq!(v.mtu(), Some(1400));
        assert_eq!(v.network.subnets[0].gateway_ip().unwrap(), None);
        assert_eq!(v.fixed_ips().unwrap()[0].to_string(), "fd00:1::5/64");
        assert_eq!(v.vnic_type, "normal");
    }

    #[test]
    fn fixed_ips_cover_v4_and_v6_and_skip_non_fixed() {
        let text = r#"[{"id": "p", "address": "fa:16:3e:00:00:01", "type": "bridge",
          "network": {"meta": {}, "subnets": [
            {"cidr": "10.1.0.0/16", "ips": [{"address": "10.1.2.3", "type": "fixed"},
                                            {"address": "10.1.2.4"}]},
            {"cidr": "2001:db8::/56", "ips": [{"address": "2001:db8::10", "type": "fixed"}]},
            {"cidr": "10.9.0.0/24", "ips": [{"address": "10.9.0.9", "type": "floating"}]}]}}]"#;
        let ni = parse_network_info(text).unwrap();
        let ips: Vec<String> = ni[0].fixed_ips().unwrap().iter().map(|c| c.to_string()).collect();
        assert_eq!(ips, ["10.1.2.3/16", "10.1.2.4/16", "2001:db8::10/56"]);
    }

    #[test]
    fn bad_values_give_typed_errors() {
        let text = r#"[{"id": "p1", "address": "zz:16:3e:00:00:01", "type": "bridge",
          "network": {"subnets": [{"cidr": "10.0.0.0", "ips": [{"address": "10.0.0.2"}]}]}}]"#;
        let ni = parse_network_info(text).unwrap();
        assert!(matches!(ni[0].mac(), Err(NetError::InvalidVif { .. })));
        let e = ni[0].fixed_ips().unwrap_err().to_string();
        assert!(e.contains("p1") && e.contains("10.0.0.0"), "{e}");
    }

    #[test]
    fn empty_cache_values() {
        assert!(parse_network_info("").unwrap().is_empty());
        assert!(parse_network_info("null").unwrap().is_empty());
        assert!(parse_network_info("[]").unwrap().is_empty());
    }

    #[test]
    fn cidr_math() {
        let c = IpCidr::parse("10.77.0.9/24").unwrap();
        assert!(c.contains("10.77.0.1".parse().unwrap()));
        assert!(!c.contains("10.77.1.1".parse().unwrap()));
        assert_eq!(c.network().to_string(), "10.77.0.0");
        let c6 = IpCidr::parse("fd77::9/64").unwrap();
        assert!(c6.contains("fd77::1".parse().unwrap()));
        assert!(!c6.contains("fd78::1".parse().unwrap()));
        let d = IpCidr::parse("0.0.0.0/0").unwrap();
        assert!(d.contains("8.8.8.8".parse().unwrap()));
        assert!(IpCidr::parse("10.0.0.0/33").is_err());
        assert_eq!(prefixed_name("qvo", "a1b2c3d4-0000-1111"), "qvoa1b2c3d4-00");
        assert_eq!(format_mac(&parse_mac("FA:16:3E:AA:BB:CC").unwrap()), "fa:16:3e:aa:bb:cc");
        assert!(parse_mac("fa:16:3e:aa:bb").is_none());
    }
}
