//! Network plumbing (`nova_docker::net`) with real containers and netlink.

mod bench;
mod fixture;
mod ovs;
mod plumbing;
