//! Waiting for Neutron's events (`network-vif-plugged-<port>`), as Nova's
//! `virtapi.wait_for_instance_event` does: waiters are registered before the
//! ports are plugged, so an event that arrives early is not missed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

/// An event outcome reported by Neutron.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventStatus {
    /// Neutron finished the change (e.g. the port is bound and up).
    Completed,
    /// Neutron could not make the change; the waiting operation fails.
    Failed,
}

type Key = (String, String);

/// Pending waits, keyed by (instance uuid, event name with tag).
#[derive(Default)]
pub struct EventWaiters {
    pending: Mutex<HashMap<Key, oneshot::Sender<EventStatus>>>,
}

/// The receivers of one batch of expected events.
pub struct Expected {
    events: Vec<(String, oneshot::Receiver<EventStatus>)>,
}

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Every event arrived as completed.
    AllCompleted,
    /// Neutron reported a failure for these events.
    Failed(Vec<String>),
    /// These events did not arrive in time.
    TimedOut(Vec<String>),
}

impl EventWaiters {
    /// Registers waits for `names` (e.g. `network-vif-plugged-<port>`).
    pub fn expect(&self, uuid: &str, names: &[String]) -> Expected {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let events = names
            .iter()
            .map(|n| {
                let (tx, rx) = oneshot::channel();
                pending.insert((uuid.to_string(), n.clone()), tx);
                (n.clone(), rx)
            })
            .collect();
        Expected { events }
    }

    /// Delivers an event; returns whether someone waited for it.
    pub fn deliver(&self, uuid: &str, name: &str, status: EventStatus) -> bool {
        let waiter =
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&(uuid.to_string(), name.to_string()));
        match waiter {
            Some(tx) => tx.send(status).is_ok(),
            None => false,
        }
    }

    /// Drops the waits of an instance (after a timeout or failure).
    pub fn forget(&self, uuid: &str) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).retain(|(u, _), _| u != uuid);
    }
}

impl Expected {
    /// Whether nothing is awaited.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Waits for every event, up to `timeout` in total.
    pub async fn wait(self, timeout: Duration) -> WaitOutcome {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut failed = Vec::new();
        let mut missing = Vec::new();
        for (name, rx) in self.events {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(EventStatus::Completed)) => {}
                Ok(Ok(EventStatus::Failed)) => failed.push(name),
                Ok(Err(_)) | Err(_) => missing.push(name),
            }
        }
        if !failed.is_empty() {
            WaitOutcome::Failed(failed)
        } else if !missing.is_empty() {
            WaitOutcome::TimedOut(missing)
        } else {
            WaitOutcome::AllCompleted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn early_late_and_failed_events() {
        let w = EventWaiters::default();
        let e = w.expect("i1", &["network-vif-plugged-a".into(), "network-vif-plugged-b".into()]);
        assert!(w.deliver("i1", "network-vif-plugged-a", EventStatus::Completed));
        assert!(!w.deliver("i1", "network-vif-plugged-zzz", EventStatus::Completed));
        assert_eq!(
            e.wait(Duration::from_millis(50)).await,
            WaitOutcome::TimedOut(vec!["network-vif-plugged-b".into()])
        );
        let e = w.expect("i2", &["x".into()]);
        w.deliver("i2", "x", EventStatus::Failed);
        assert_eq!(e.wait(Duration::from_secs(1)).await, WaitOutcome::Failed(vec!["x".into()]));
    }
}
