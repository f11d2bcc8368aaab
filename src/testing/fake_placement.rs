//! An in-memory Placement ([`Allocations`]): each consumer's allocation by
//! resource provider, changed as the real service's `POST /allocations`,
//! `PUT` and `DELETE` change it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;

use crate::placement::{Allocations, PlacementError};

/// Resources by class on one provider, e.g. `{"MEMORY_MB": 64}`.
pub type Resources = BTreeMap<String, u64>;

/// The in-memory Placement.
#[derive(Default)]
pub struct FakePlacement {
    consumers: Mutex<BTreeMap<String, BTreeMap<String, Resources>>>,
}

impl FakePlacement {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, BTreeMap<String, Resources>>) -> T) -> T {
        f(&mut self.consumers.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Gives `consumer` `resources` on `provider` (what the scheduler claims).
    pub fn allocate(&self, consumer: &str, provider: &str, resources: &[(&str, u64)]) {
        let r: Resources = resources.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        self.with(|c| c.entry(consumer.to_string()).or_default().insert(provider.to_string(), r));
    }

    /// What `consumer` holds, by provider (empty when nothing).
    pub fn allocations(&self, consumer: &str) -> BTreeMap<String, Resources> {
        self.with(|c| c.get(consumer).cloned().unwrap_or_default())
    }
}

impl Allocations for FakePlacement {
    fn delete_allocation<'a>(&'a self, consumer: &'a str) -> BoxFuture<'a, Result<(), PlacementError>> {
        Box::pin(async move {
            self.with(|c| c.remove(consumer));
            Ok(())
        })
    }

    fn move_allocations<'a>(&'a self, source: &'a str, target: &'a str) -> BoxFuture<'a, Result<bool, PlacementError>> {
        Box::pin(async move {
            Ok(self.with(|c| match c.remove(source).filter(|a| !a.is_empty()) {
                Some(a) => {
                    c.insert(target.to_string(), a);
                    true
                }
                None => false,
            }))
        })
    }

    fn remove_provider<'a>(
        &'a self,
        consumer: &'a str,
        provider: &'a str,
    ) -> BoxFuture<'a, Result<(), PlacementError>> {
        Box::pin(async move {
            self.with(|c| {
                if let Some(a) = c.get_mut(consumer) {
                    a.remove(provider);
                    if a.is_empty() {
                        c.remove(consumer);
                    }
                }
            });
            Ok(())
        })
    }
}
