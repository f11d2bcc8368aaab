//! Integration tests against the real components: RabbitMQ, Python
//! oslo.messaging and nova (both releases), Docker, and the OpenStack control
//! planes started by `tests/env/`. Run them with `tests/run` (README).

mod archive;
mod broker;
mod broker_cluster;
mod cloud;
mod common;
mod console;
mod environment;
mod faults;
mod guest;
mod host;
mod host_reboot;
mod hostile;
mod images;
mod isolation;
mod keystone;
mod lifecycle;
mod load;
mod moves;
mod moves_bench;
mod moves_rebuild;
mod net;
mod network;
mod observability;
mod operators;
mod proxy;
mod recovery;
mod resources;
mod rpc;
mod secgroups;
mod signals;
mod tenants;
