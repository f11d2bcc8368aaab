//! The host names a VIF may use: only those Nova derives from Neutron's
//! binding of the port.
//!
//! A VIF reaches this host either from Neutron (built by `network.rs` while
//! binding) or from the instance's info cache in an RPC (a reboot, a start,
//! an event), i.e. from a peer that may be buggy or worse. The names in it
//! are used as they are on the host: the veth created or *deleted* under
//! `devname`, the bridge it is enslaved to, the OVS port and its
//! `iface-id` (which tells Neutron's OVS agent which port, hence which
//! network and firewall, the device is). So each is checked against what Nova
//! itself derives (`nova/network/neutron.py` `_build_vif_model` and
//! `_nw_info_build_network`, `nova/network/model.py` `NIC_NAME_LEN`):
//!
//! - the port id is a UUID, as Neutron makes them (the `qbr`/`qvb`/`qvo`
//!   names of a hybrid plug derive from it);
//! - `devname` is `("tap" + port id)[:14]`;
//! - an `ovs` VIF's bridge is the configured integration bridge (`[neutron]
//!   ovs_bridge`), and its `ovs_interfaceid`, when set, is the port id;
//! - a `bridge` VIF's bridge is the linuxbridge agent's `brq` + network id
//!   `[:11]`, the network id a UUID.
//!
//! Anything else is refused with [`NetError::NotFromBinding`] before any
//! change on the host: no veth, no bridge, no `ovs-vsctl`, no netns entry.

use super::error::NetError;
use super::model::{Vif, prefixed_name};
use super::plug::PlugOptions;
use crate::objects::instance::is_canonical_uuid;

/// The Linux bridge the linuxbridge agent makes for a network.
pub fn linuxbridge_name(network_id: &str) -> String {
    prefixed_name("brq", network_id)
}

/// Checks the host names of `vif` against what Neutron's binding gives.
pub fn check(vif: &Vif, opts: &PlugOptions) -> Result<(), NetError> {
    let refuse = |what, found: &str, expected: String| NetError::NotFromBinding {
        port: vif.id.clone(),
        what,
        found: found.to_string(),
        expected,
    };
    if !is_canonical_uuid(&vif.id) {
        return Err(refuse("port id", &vif.id, "a Neutron port UUID".into()));
    }
    let devname = vif.devname_or_default();
    let expected_dev = prefixed_name("tap", &vif.id);
    if devname != expected_dev {
        return Err(refuse("device name", &devname, expected_dev));
    }
    match vif.vif_type.as_deref().unwrap_or("") {
        "ovs" => {
            let bridge = vif.bridge_name().unwrap_or_else(|| opts.ovs_integration_bridge.clone());
            if bridge != opts.ovs_integration_bridge {
                let expected = format!("the integration bridge {:?}", opts.ovs_integration_bridge);
                return Err(refuse("bridge", &bridge, expected));
            }
            if let Some(iface) = vif.ovs_interfaceid.as_deref().filter(|i| !i.is_empty())
                && iface != vif.id
            {
                return Err(refuse("OVS iface-id", iface, format!("the port id {}", vif.id)));
            }
        }
        "bridge" => {
            let network = vif.network.id.as_deref().unwrap_or("");
            if !is_canonical_uuid(network) {
                return Err(refuse("network id", network, "a Neutron network UUID".into()));
            }
            let expected = linuxbridge_name(network);
            let bridge = vif.bridge_name().unwrap_or_default();
            if bridge != expected {
                return Err(refuse("bridge", &bridge, expected));
            }
        }
        // `tap` names no bridge; other types are refused when planned.
        _ => {}
    }
    Ok(())
}

/// [`check`] for every VIF of an instance, before anything is plugged.
pub fn check_all<'a>(vifs: impl IntoIterator<Item = &'a Vif>, opts: &PlugOptions) -> Result<(), NetError> {
    vifs.into_iter().try_for_each(|v| check(v, opts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PORT: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    const NET: &str = "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d";

    fn vif(v: serde_json::Value) -> Vif {
        serde_json::from_value(v).unwrap()
    }

    fn bridge_vif() -> serde_json::Value {
        json!({"id": PORT, "address": "fa:16:3e:01:02:03", "type": "bridge", "devname": "tap0f1e2d3c-4b",
               "network": {"id": NET, "bridge": "brq5a4b3c2d-1e", "subnets": []}})
    }

    fn ovs_vif() -> serde_json::Value {
        json!({"id": PORT, "address": "fa:16:3e:01:02:03", "type": "ovs", "devname": "tap0f1e2d3c-4b",
               "ovs_interfaceid": PORT, "details": {"ovs_hybrid_plug": false},
               "network": {"id": NET, "bridge": "br-int", "subnets": []}})
    }

    #[test]
    fn names_nova_derives_are_accepted() {
        let opts = PlugOptions::default();
        check(&vif(bridge_vif()), &opts).unwrap();
        check(&vif(ovs_vif()), &opts).unwrap();
        // devname, bridge and iface-id absent: Nova's defaults.
        let mut v = ovs_vif();
        v.as_object_mut().unwrap().remove("devname");
        v["ovs_interfaceid"] = json!(null);
        v["network"]["bridge"] = json!(null);
        check(&vif(v), &opts).unwrap();
        let mut v = json!({"id": PORT, "address": "fa:16:3e:01:02:03", "type": "tap", "network": {}});
        check(&vif(v.clone()), &opts).unwrap();
        v["devname"] = json!("tap0f1e2d3c-4b");
        check(&vif(v), &opts).unwrap();
        let custom = PlugOptions { ovs_integration_bridge: "br-nd".into(), ..PlugOptions::default() };
        let mut v = ovs_vif();
        v["network"]["bridge"] = json!("br-nd");
        check(&vif(v), &custom).unwrap();
    }

    #[test]
    fn cache_naming_host_devices_or_other_bridges_is_refused() {
        let opts = PlugOptions::default();
        let cases: Vec<(serde_json::Value, &str)> = vec![
            // A host device to create or delete under a name of the peer's choice.
            (json!({"devname": "eth0"}), "device name"),
            (json!({"devname": "docker0"}), "device name"),
            (json!({"devname": "tap0f1e2d3c-4c"}), "device name"),
            (json!({"devname": "br-int"}), "device name"),
            // Another bridge: the host's, another network's, the external one.
            (json!({"network": {"id": NET, "bridge": "docker0"}}), "bridge"),
            (json!({"network": {"id": NET, "bridge": "brq0000000000"}}), "bridge"),
            (json!({"network": {"id": NET, "bridge": null}, "details": {"bridge_name": "br-ex"}}), "bridge"),
            (json!({"network": {"id": "../../etc", "bridge": "brq../../etc"}}), "network id"),
            (json!({"id": "eth0"}), "port id"),
            (json!({"id": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0/x"}), "port id"),
        ];
        for (patch, what) in cases {
            let mut v = bridge_vif();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            match check(&vif(v.clone()), &opts) {
                Err(NetError::NotFromBinding { what: w, .. }) => assert_eq!(w, what, "{v}"),
                other => panic!("{v}: {other:?}"),
            }
        }
        let ovs_cases: Vec<(serde_json::Value, &str)> = vec![
            (json!({"network": {"id": NET, "bridge": "br-ex"}}), "bridge"),
            (json!({"network": {"id": NET, "bridge": null}, "details": {"bridge_name": "br-tun"}}), "bridge"),
            // Another port's identity for Neutron's OVS agent.
            (json!({"ovs_interfaceid": "11111111-2222-4333-8444-555555555555"}), "OVS iface-id"),
            (json!({"devname": "qvo0f1e2d3c-4b"}), "device name"),
        ];
        for (patch, what) in ovs_cases {
            let mut v = ovs_vif();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            match check(&vif(v.clone()), &opts) {
                Err(e @ NetError::NotFromBinding { .. }) => {
                    assert!(e.to_string().contains(what), "{e}");
                    assert!(e.to_string().contains("refused before any change on the host"), "{e}");
                }
                other => panic!("{v}: {other:?}"),
            }
        }
        let two = [vif(bridge_vif()), vif(json!({"id": PORT, "type": "bridge", "devname": "lo"}))];
        assert!(check_all(&two, &opts).is_err());
    }
}
