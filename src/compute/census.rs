//! How many instances this host has in each Nova vm_state, for the
//! `nova_docker_instances` gauge.
//!
//! Every state this service saves is counted at once, so the gauge moves
//! with each boot, stop and delete; the periodic sync replaces the whole
//! picture with the conductor's, which also covers changes made elsewhere
//! (an instance deleted through the API while this host was down).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::metrics;

/// The last known vm_state of each instance of this host.
#[derive(Default)]
pub struct Census {
    states: Mutex<HashMap<String, String>>,
}

impl Census {
    /// Records an instance's vm_state (`None`: it is gone from this host).
    pub fn record(&self, uuid: &str, vm_state: Option<&str>) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        match vm_state {
            Some(s) => {
                states.insert(uuid.to_string(), s.to_string());
            }
            None => {
                states.remove(uuid);
            }
        }
        publish(&states);
    }

    /// Replaces everything with the conductor's list of (uuid, vm_state).
    pub fn replace<'a>(&self, all: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        *states = all.into_iter().map(|(u, s)| (u.to_string(), s.to_string())).collect();
        publish(&states);
    }

    /// How many instances are in `vm_state`.
    pub fn count(&self, vm_state: &str) -> usize {
        self.states.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|s| *s == vm_state).count()
    }
}

fn publish(states: &HashMap<String, String>) {
    let mut by_state: BTreeMap<String, f64> = BTreeMap::new();
    for s in states.values() {
        *by_state.entry(s.clone()).or_default() += 1.0;
    }
    metrics::global()
        .set_all("nova_docker_instances", by_state.into_iter().map(|(k, v)| (vec![("vm_state", k)], v)).collect());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_records_and_replacement() {
        let c = Census::default();
        c.record("a", Some("building"));
        c.record("a", Some("active"));
        c.record("b", Some("active"));
        assert_eq!((c.count("active"), c.count("building")), (2, 0));
        c.record("a", None);
        assert_eq!(c.count("active"), 1);
        c.replace([("x", "stopped")]);
        assert_eq!((c.count("active"), c.count("stopped")), (0, 1));
    }
}
