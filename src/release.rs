//! What differs between the Nova releases this host can join, in one table.
//!
//! Supporting the next release means adding a row here (and reading what the
//! release notes change on the wire), not touching the code that uses it.

use crate::rpc::Version;

/// The identity and wire details of one Nova release.
#[derive(Debug, PartialEq)]
pub struct Release {
    /// Name used in configuration (`[docker] nova_release`).
    pub name: &'static str,
    /// `Service.version` this host reports (controllers gate on it).
    pub service_version: i64,
    /// The compute RPC API version served (`ComputeManager.target`).
    pub compute_rpc: Version,
    /// Instance object version used in manifests.
    pub instance_version: &'static str,
    /// Whether controllers also send to the `compute-alt` topic (6.5).
    pub alt_topic: bool,
    /// Whether the root provider must carry `OWNER_NOVA` (service version 73+).
    pub owner_nova_trait: bool,
    /// Whether the node is looked up by its persistent uuid (else by host and name).
    pub node_lookup_by_uuid: bool,
    /// Whether `Instance.compute_id` exists (Instance 2.8).
    pub instance_compute_id: bool,
    /// Nova's `initial_cpu_allocation_ratio` / `initial_ram_allocation_ratio` defaults.
    pub initial_cpu_ratio: f64,
    /// Nova's `initial_ram_allocation_ratio` default for this release.
    pub initial_ram_ratio: f64,
    /// The lowest conductor service version that identifies this release.
    pub min_conductor_version: i64,
}

/// Zed (26.x), what Debian bookworm ships.
pub const ZED: Release = Release {
    name: "zed",
    service_version: 64,
    compute_rpc: Version::new(6, 1),
    instance_version: "2.7",
    alt_topic: false,
    owner_nova_trait: false,
    node_lookup_by_uuid: false,
    instance_compute_id: false,
    initial_cpu_ratio: 16.0,
    initial_ram_ratio: 1.5,
    min_conductor_version: 0,
};

/// 2026.2 "Hibiscus" (nova 34), the newest release.
pub const HIBISCUS: Release = Release {
    name: "2026.2",
    service_version: 74,
    compute_rpc: Version::new(6, 5),
    instance_version: "2.8",
    alt_topic: true,
    owner_nova_trait: true,
    node_lookup_by_uuid: true,
    instance_compute_id: true,
    initial_cpu_ratio: 4.0,
    initial_ram_ratio: 1.0,
    min_conductor_version: 72,
};

/// Every supported release, oldest first.
pub const RELEASES: &[&Release] = &[&ZED, &HIBISCUS];

/// The release configured by name.
pub fn by_name(name: &str) -> Option<&'static Release> {
    RELEASES.iter().copied().find(|r| r.name == name)
}

/// The release of a control plane whose conductor reports `version`
/// (`Service.get_minimum_version('nova-conductor')`): the newest row whose
/// threshold it reaches.
pub fn detect(conductor_version: i64) -> &'static Release {
    RELEASES.iter().rev().copied().find(|r| conductor_version >= r.min_conductor_version).unwrap_or(&ZED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_from_conductor_versions() {
        assert_eq!(detect(64).name, "zed");
        assert_eq!(detect(66).name, "zed");
        assert_eq!(detect(72).name, "2026.2");
        assert_eq!(detect(74).name, "2026.2");
        assert_eq!(by_name("zed"), Some(&ZED));
        assert_eq!(by_name("2026.2"), Some(&HIBISCUS));
        assert!(by_name("yoga").is_none());
    }
}
