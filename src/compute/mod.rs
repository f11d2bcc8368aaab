//! The compute service proper: host registration, the Nova state machine
//! around the driver, and the RPC endpoint that exposes it.
//!
//! - [`host`]: Service, ComputeNode and Placement records, heartbeats;
//! - [`operation`]: how every instance operation runs (lock, action event,
//!   fault and state revert on failure);
//! - [`manager`]: operations with Nova's state transitions;
//! - [`build`]: building and deleting instances;
//! - [`group_policy`]: the late server-group check of builds and moves;
//! - [`guest_data`]: block device mappings and injected files of a build;
//! - [`networking`]: Neutron ports: allocate, plug, events, hot-plug;
//! - [`snapshot`]: snapshots and backups into Glance;
//! - [`resize`]: resize and cold migration, on one host or between two;
//! - [`sync`]: start-up recovery and power-state sync;
//! - [`root_disk`]: instances over their root disk limit (measure mode);
//! - [`endpoint`]: the compute RPC methods;
//! - [`locks`], [`states`] (typed vm, task and power states), [`errors`]:
//!   supporting pieces.

pub mod build;
pub mod census;
pub mod confirm;
pub mod console;
pub mod endpoint;
pub mod errors;
pub mod events;
pub mod group_policy;
#[cfg(test)]
mod group_policy_tests;
pub mod guest_data;
pub mod host;
pub mod locks;
pub mod manager;
pub mod networking;
pub mod operation;
pub mod precache;
pub mod rebuild;
pub mod reclaim;
pub mod resize;
pub mod root_disk;
pub mod shelve;
pub mod snapshot;
#[cfg(test)]
mod state_machine_tests;
pub mod states;
pub mod sync;

pub use endpoint::ComputeEndpoint;
pub use manager::ComputeManager;
