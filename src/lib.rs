//! nova-docker: a nova-compute that runs OpenStack Nova instances as Docker
//! containers, in one small Rust service.
//!
//! Module map (one concept each):
//! - [`config`]: nova.conf-compatible settings;
//! - [`rpc`]: oslo.messaging over RabbitMQ (server, client, wire format);
//! - [`objects`]: Nova versioned objects; [`conductor`]: the object API;
//! - [`release`]: what differs between the Nova releases supported;
//! - [`auth`], [`placement`]: OpenStack HTTP services;
//! - [`compute`]: registration, the Nova state machine, the RPC endpoint;
//! - [`virt`]: the driver contract and the Docker driver;
//! - [`image`]: Glance <-> Docker image streams;
//! - [`network`]: Neutron port binding and the VIF model;
//! - [`net`]: ports plugged into container namespaces (rtnetlink);
//! - [`service`], [`check`], [`health`], [`logging`], [`metrics`]: running it.

// Remote errors are a few strings and maps; they travel on failure paths
// only, so boxing them would cost clarity for no measurable gain.
#![allow(clippy::result_large_err)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
pub mod check;
pub mod cli;
pub mod compute;
pub mod conductor;
pub mod config;
pub mod health;
pub mod image;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod network;
pub mod notify;
pub mod objects;
pub mod placement;
pub mod release;
pub mod rpc;
pub mod service;
#[cfg(test)]
pub mod testing;
pub mod virt;
