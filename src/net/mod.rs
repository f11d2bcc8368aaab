//! Neutron networking for containers started with network mode `none`.
//!
//! Replaces nova-docker's `vifs.py`/`network.py`, which shelled out to `ip`,
//! `brctl` and `ethtool` through rootwrap, configured one IP per VIF, let the
//! last VIF's gateway win and swallowed every error. Here everything is done
//! in-process over netlink (rtnetlink), errors are typed, and a failed plug
//! is rolled back.
//!
//! - [`model`]: serde types of Nova's `network_info` (round-trips unknown keys);
//! - [`plug()`] / [`unplug()`]: one VIF, by vif type (`bridge`, `tap`, `ovs`,
//!   hybrid `ovs`); [`plug_all`] / [`unplug_all`] for a whole instance;
//! - [`NetnsLink`]: the `/var/run/netns/<container id>` entry for operators;
//!   [`netns_handle`]: netlink inside a container's netns, safely;
//! - [`NetError`]: what can go wrong, naming the device and the errno.
//!
//! Typical use by the Docker driver ([`crate::virt::host_network`]) after
//! `docker start`:
//!
//! ```no_run
//! # async fn f(ni: nova_docker::net::NetworkInfo, cid: &str, pid: i32) -> Result<(), nova_docker::net::NetError> {
//! use nova_docker::net::{NetnsLink, PlugOptions, plug_all};
//! let opts = PlugOptions { instance_uuid: Some("…".into()), ..PlugOptions::default() };
//! NetnsLink::create(cid, pid).await?;          // `ip netns exec <cid>` for operators
//! let reports = plug_all(&ni, pid, &opts).await?;
//! # Ok(()) }
//! ```

pub mod binding;
pub mod error;
pub mod model;
pub mod netns;
mod ovs;
pub mod plug;

pub use error::NetError;
pub use model::{FixedIp, Ip, IpCidr, Network, NetworkInfo, Route, Subnet, Vif, parse_network_info};
pub use netns::{NETNS_RUN_DIR, NetnsHandle, NetnsLink, netns_handle};
pub use plug::{
    DefaultRoute, HostRoute, MAX_CONCURRENT_PLUGS, MetadataRoute, PlugOptions, PlugReport, plug, plug_all, unplug,
    unplug_all,
};
