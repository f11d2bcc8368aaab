//! Nova's config drive (the `config-2` layout) as a read-only directory at
//! `/mnt/config` in the container: `openstack/latest/meta_data.json`,
//! `user_data`, `network_data.json`, `vendor_data.json`,
//! `vendor_data2.json`, and `openstack/content/NNNN` for injected files,
//! with the keys and formats of Nova's `InstanceMetadata`
//! (`nova/api/metadata/base.py`, `nova/virt/netutils.py`), so that tools
//! reading a config drive (cloud-init, glean) read this one.
//!
//! Everything in it is the tenant's data (user data, metadata, key pair,
//! names): written into files as it is, never interpreted by the host. The
//! files live under `instances_path/<uuid>/config-drive/` and go with the
//! instance's other files on delete.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

use crate::net::NetworkInfo;
use crate::objects::Instance;

/// The mount point in the container (the one Nova's documentation gives for
/// the config-2 drive).
pub const MOUNT_POINT: &str = "/mnt/config";

/// The largest `user_data` accepted, as base64 text (Nova's API column and
/// check: 65535 bytes).
pub const MAX_USER_DATA_BASE64: usize = 65535;

/// The directory of the newest metadata version.
const LATEST: &str = "openstack/latest";

/// Where `network_data.json` is in the drive.
pub const NETWORK_DATA: &str = "openstack/latest/network_data.json";

/// A config drive the host cannot build.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DriveError {
    /// The instance's user data is larger than Nova allows or not base64.
    #[error("user_data {0}")]
    UserData(&'static str),
}

/// One file of the drive: its path relative to the drive's root, and bytes.
pub type DriveFile = (String, Vec<u8>);

/// The files of a drive in a container spec. `Debug` shows the paths and
/// sizes only: the drive holds the admin password and the user data.
#[derive(Clone, PartialEq)]
pub struct DriveFiles(pub Vec<DriveFile>);

impl std::fmt::Debug for DriveFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(p, b)| format!("{p} ({} bytes)", b.len()))).finish()
    }
}

/// What the drive is made from besides the instance.
#[derive(Debug, Clone, Default)]
pub struct DriveInput<'a> {
    /// The ports, as in the instance's network info cache.
    pub network_info: Option<&'a NetworkInfo>,
    /// The admin password of the build (`admin_pass` in meta_data.json).
    pub admin_pass: Option<&'a str>,
    /// The injected files: the path as the user gave it, and the bytes.
    pub files: &'a [(String, Vec<u8>)],
    /// `[api] dhcp_domain`, appended to the hostname.
    pub dhcp_domain: Option<&'a str>,
}

/// The files of the drive, in a stable order.
pub fn render(instance: &Instance, input: &DriveInput<'_>) -> Result<Vec<DriveFile>, DriveError> {
    let mut out = Vec::new();
    let mut md = Map::new();
    md.insert("uuid".into(), json!(instance.uuid()));
    let meta = instance.metadata();
    if !meta.is_empty() {
        md.insert("meta".into(), json!(meta));
    }
    if !input.files.is_empty() {
        let mut listed = Vec::new();
        for (n, (path, bytes)) in input.files.iter().enumerate() {
            let key = format!("{n:04}");
            listed.push(json!({"path": path, "content_path": format!("/content/{key}")}));
            out.push((format!("openstack/content/{key}"), bytes.clone()));
        }
        md.insert("files".into(), Value::Array(listed));
    }
    if let Some(p) = input.admin_pass.filter(|p| !p.is_empty()) {
        md.insert("admin_pass".into(), json!(p));
    }
    if instance.obj.get_str("key_name").is_some_and(|k| !k.is_empty())
        && let Some(kp) = first_keypair(instance)
    {
        let s = |k: &str| kp.get(k).cloned().unwrap_or(Value::Null);
        let name = kp.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        md.insert("public_keys".into(), json!({ name: s("public_key") }));
        md.insert("keys".into(), json!([{"name": s("name"), "type": s("type"), "data": s("public_key")}]));
    }
    let hostname = instance.hostname().map(str::to_string);
    let hostname = match (hostname, input.dhcp_domain.filter(|d| !d.is_empty())) {
        (Some(h), Some(d)) => json!(format!("{h}.{d}")),
        (h, _) => json!(h),
    };
    md.insert("hostname".into(), hostname);
    md.insert("name".into(), json!(instance.display_name()));
    md.insert("launch_index".into(), instance.obj.get("launch_index").cloned().unwrap_or(Value::Null));
    md.insert("availability_zone".into(), json!(instance.availability_zone()));
    md.insert("random_seed".into(), json!(random_seed()));
    md.insert("project_id".into(), json!(instance.project_id()));
    md.insert("devices".into(), json!([]));
    md.insert("dedicated_cpus".into(), json!([]));
    out.push((format!("{LATEST}/meta_data.json"), json_bytes(&Value::Object(md))));

    if let Some(ud) = instance.obj.get_str("user_data") {
        out.push((format!("{LATEST}/user_data"), user_data(ud)?));
    }
    out.push((format!("{LATEST}/vendor_data.json"), b"{}".to_vec()));
    out.push((NETWORK_DATA.to_string(), json_bytes(&network_data(input.network_info))));
    out.push((format!("{LATEST}/vendor_data2.json"), json_bytes(&json!({"static": {}}))));
    Ok(out)
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec())
}

/// The first key pair of `instance.keypairs` (a KeyPairList primitive).
fn first_keypair(instance: &Instance) -> Option<&Map<String, Value>> {
    instance
        .obj
        .get("keypairs")?
        .get("nova_object.data")?
        .get("objects")?
        .as_array()?
        .first()?
        .get("nova_object.data")?
        .as_object()
}

/// The user data, decoded as Nova does, within Nova's bound.
fn user_data(text: &str) -> Result<Vec<u8>, DriveError> {
    use base64::Engine;
    if text.len() > MAX_USER_DATA_BASE64 {
        return Err(DriveError::UserData("is larger than 65535 bytes of base64"));
    }
    let clean: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean.as_bytes())
        .map_err(|_| DriveError::UserData("is not base64"))
}

/// 512 random bytes, base64 (`random_seed`), from the kernel's generator
/// (through v4 uuids).
fn random_seed() -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..32).flat_map(|_| *uuid::Uuid::new_v4().as_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `network_data.json`: Nova's `netutils.get_network_metadata` of the ports
/// (`{}` without any).
pub fn network_data(network_info: Option<&NetworkInfo>) -> Value {
    let Some(ni) = network_info.filter(|n| !n.is_empty()) else { return json!({}) };
    let vifs = serde_json::to_value(ni).unwrap_or(Value::Null);
    let (mut links, mut nets, mut services) = (Vec::new(), Vec::new(), Vec::<Value>::new());
    let (mut ifc_num, mut net_num) = (-1i64, -1i64);
    for vif in vifs.as_array().into_iter().flatten() {
        let network = &vif["network"];
        let subnets = network["subnets"].as_array().cloned().unwrap_or_default();
        if network.is_null() || subnets.is_empty() {
            continue;
        }
        let first = |v: u64| subnets.iter().find(|s| s["version"].as_u64() == Some(v)).cloned();
        let (v4, v6) = (first(4), first(6));
        ifc_num += 1;
        let mut link_id = Value::Null;
        if v4.is_some() || v6.is_some() {
            let link = eth_link(vif, &subnets, ifc_num);
            link_id = link["id"].clone();
            links.push(link);
        }
        for (version, subnet) in [(4u8, v4), (6u8, v6)] {
            let Some(subnet) = subnet else { continue };
            if subnet["ips"].as_array().is_none_or(|a| a.is_empty()) {
                continue;
            }
            net_num += 1;
            nets.push(nets_of(vif, &subnet, version, net_num, &link_id));
            for dns in dns_services(&subnet) {
                if !services.contains(&dns) {
                    services.push(dns);
                }
            }
        }
    }
    json!({"links": links, "networks": nets, "services": services})
}

/// VIF types Nova exposes as they are (`model.LEGACY_EXPOSED_VIF_TYPES`);
/// any other is `phy`.
const EXPOSED_VIF_TYPES: &[&str] = &["bridge", "dvs", "hw_veb", "hyperv", "ovs", "tap", "vhostuser", "vif"];

fn eth_link(vif: &Value, subnets: &[Value], ifc_num: i64) -> Value {
    let id = match vif["devname"].as_str().filter(|d| !d.is_empty()) {
        Some(d) => d.to_string(),
        None => format!("interface{ifc_num}"),
    };
    let ty = vif["type"].as_str().filter(|t| EXPOSED_VIF_TYPES.contains(t)).unwrap_or("phy");
    let dhcp = subnets.iter().any(|s| truthy(&s["meta"]["dhcp_server"]));
    let mtu = if dhcp { Value::Null } else { vif["network"]["meta"].get("mtu").cloned().unwrap_or(Value::Null) };
    json!({"id": id, "vif_id": vif["id"], "type": ty, "mtu": mtu, "ethernet_mac_address": vif["address"]})
}

/// Python's truth of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
    }
}

fn nets_of(vif: &Value, subnet: &Value, version: u8, net_num: i64, link_id: &Value) -> Value {
    let meta = &subnet["meta"];
    let mut net_type = String::new();
    if let Some(mode) = meta.get("ipv6_address_mode").filter(|m| !m.is_null()) {
        net_type = format!("_{}", mode.as_str().unwrap_or_default());
    } else if meta.get("dhcp_server").is_some_and(|d| !d.is_null()) {
        return json!({"id": format!("network{net_num}"), "type": format!("ipv{version}_dhcp"), "link": link_id,
                      "network_id": vif["network"]["id"]});
    }
    let address = subnet["ips"][0]["address"].clone();
    let (netmask, _) = cidr_parts(subnet["cidr"].as_str().unwrap_or_default());
    let mut routes = Vec::new();
    if let Some(gw) = subnet["gateway"]["address"].as_str().filter(|g| !g.is_empty()) {
        let any = if version == 4 { "0.0.0.0" } else { "::" };
        routes.push(json!({"network": any, "netmask": any, "gateway": gw}));
    }
    for r in subnet["routes"].as_array().into_iter().flatten() {
        let (mask, network) = cidr_parts(r["cidr"].as_str().unwrap_or_default());
        routes.push(json!({"network": network, "netmask": mask, "gateway": r["gateway"]["address"]}));
    }
    json!({"id": format!("network{net_num}"), "type": format!("ipv{version}{net_type}"), "link": link_id,
           "ip_address": address, "netmask": netmask, "routes": routes, "network_id": vif["network"]["id"],
           "services": dns_services(subnet)})
}

fn dns_services(subnet: &Value) -> Vec<Value> {
    subnet["dns"].as_array().into_iter().flatten().map(|d| json!({"type": "dns", "address": d["address"]})).collect()
}

/// The netmask and network address of a CIDR, as netaddr prints them;
/// empty strings for one that does not parse.
fn cidr_parts(cidr: &str) -> (String, String) {
    let Some((addr, len)) = cidr.split_once('/') else { return (String::new(), String::new()) };
    let (Ok(addr), Ok(len)) = (addr.parse::<IpAddr>(), len.parse::<u32>()) else {
        return (String::new(), String::new());
    };
    match addr {
        IpAddr::V4(a) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            (std::net::Ipv4Addr::from(mask).to_string(), std::net::Ipv4Addr::from(u32::from(a) & mask).to_string())
        }
        IpAddr::V6(a) if len <= 128 => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            (std::net::Ipv6Addr::from(mask).to_string(), std::net::Ipv6Addr::from(u128::from(a) & mask).to_string())
        }
        _ => (String::new(), String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_print_like_netaddr() {
        assert_eq!(cidr_parts("10.99.0.0/24"), ("255.255.255.0".into(), "10.99.0.0".into()));
        assert_eq!(cidr_parts("10.1.2.3/0"), ("0.0.0.0".into(), "0.0.0.0".into()));
        assert_eq!(cidr_parts("fd00:99::/64"), ("ffff:ffff:ffff:ffff::".into(), "fd00:99::".into()));
        assert_eq!(cidr_parts("nonsense"), (String::new(), String::new()));
    }

    #[test]
    fn network_data_follows_nova() {
        let ni: NetworkInfo = serde_json::from_value(json!([{
            "id": "p-1", "address": "fa:16:3e:00:00:01", "type": "ovs", "devname": "tapp-1",
            "network": {"id": "n-1", "meta": {"mtu": 1450}, "subnets": [
                {"cidr": "10.0.0.0/24", "version": 4, "gateway": {"address": "10.0.0.1"},
                 "dns": [{"address": "10.0.0.2"}], "ips": [{"address": "10.0.0.5", "version": 4}],
                 "routes": [{"cidr": "192.168.0.0/16", "gateway": {"address": "10.0.0.254"}}], "meta": {}},
                {"cidr": "fd00::/64", "version": 6, "gateway": {"address": "fd00::1"}, "dns": [],
                 "ips": [{"address": "fd00::5", "version": 6}], "routes": [],
                 "meta": {"ipv6_address_mode": "slaac"}}]}}]))
        .unwrap();
        let v = network_data(Some(&ni));
        assert_eq!(
            v["links"],
            json!([{"id": "tapp-1", "vif_id": "p-1", "type": "ovs", "mtu": 1450, "ethernet_mac_address": "fa:16:3e:00:00:01"}])
        );
        assert_eq!(v["networks"][0]["type"], "ipv4");
        assert_eq!(v["networks"][0]["netmask"], "255.255.255.0");
        assert_eq!(
            v["networks"][0]["routes"],
            json!([{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1"},
                   {"network": "192.168.0.0", "netmask": "255.255.0.0", "gateway": "10.0.0.254"}])
        );
        assert_eq!(v["networks"][1]["type"], "ipv6_slaac");
        assert_eq!(v["networks"][1]["id"], "network1");
        assert_eq!(v["services"], json!([{"type": "dns", "address": "10.0.0.2"}]));
        assert_eq!(network_data(None), json!({}));
    }

    #[test]
    fn the_drive_never_shows_its_contents_in_debug() {
        let d = DriveFiles(vec![("openstack/latest/meta_data.json".into(), br#"{"admin_pass":"s3cret"}"#.to_vec())]);
        let text = format!("{d:?}");
        assert!(text.contains("meta_data.json (23 bytes)") && !text.contains("s3cret"), "{text}");
    }

    #[test]
    fn user_data_is_bounded_and_decoded() {
        assert_eq!(user_data("aGk=").unwrap(), b"hi");
        assert_eq!(user_data("a").unwrap_err(), DriveError::UserData("is not base64"));
        assert!(user_data(&"A".repeat(MAX_USER_DATA_BASE64 + 1)).is_err());
    }
}
