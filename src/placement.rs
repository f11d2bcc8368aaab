//! Placement: the resource provider of this compute node, its inventory and
//! traits, and the instances' allocations.
//!
//! The provider has the ComputeNode's uuid and its hypervisor_hostname as name.
//! Updates carry the provider generation; a 409 (someone else changed the
//! provider) is resolved by re-reading and retrying, as Nova's report client
//! does.

use std::collections::BTreeSet;

use futures::future::BoxFuture;
use reqwest::Method;
use serde_json::{Value, json};

use crate::auth::{HttpError, ServiceClient, url_part};

/// Placement failures.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// The request itself failed (no endpoint, auth, transport, or an
    /// error status not handled here).
    #[error(transparent)]
    Http(#[from] HttpError),
    /// A 409 that re-reading and retrying did not resolve: the provider's
    /// inventory or traits kept changing under us, or another provider
    /// already has this node's name.
    #[error("placement: {0}")]
    Conflict(String),
    /// Placement answered a success without what the API promises (e.g. no
    /// `resource_provider_generation`).
    #[error("placement returned an unexpected document: {0}")]
    Decode(String),
}

/// One resource class's inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    /// The standard resource class (`VCPU`, `MEMORY_MB`, `DISK_GB`).
    pub resource_class: &'static str,
    /// What the host has, in the class's unit.
    pub total: u64,
    /// What the host keeps for itself (`reserved_host_*`); sent capped at
    /// `total`, which Placement requires.
    pub reserved: u64,
    /// Overcommit factor: the scheduler may allocate up to
    /// `(total - reserved) * allocation_ratio`.
    pub allocation_ratio: f64,
}

impl Inventory {
    fn to_json(&self) -> Value {
        json!({"total": self.total, "reserved": self.reserved.min(self.total), "min_unit": 1,
               "max_unit": self.total.max(1), "step_size": 1, "allocation_ratio": self.allocation_ratio})
    }
}

/// Traits this service manages on its provider; others (set by operators)
/// are preserved.
#[derive(Debug, Clone, Default)]
pub struct TraitPolicy {
    /// Traits that must be present.
    pub required: BTreeSet<String>,
    /// Traits we own and that must be absent.
    pub forbidden: BTreeSet<String>,
}

/// Placement client.
#[derive(Clone)]
pub struct Placement {
    client: ServiceClient,
}

const RETRIES: usize = 4;

impl Placement {
    /// A client over an authenticated service client.
    pub fn new(client: ServiceClient) -> Self {
        Placement { client }
    }

    async fn req(&self, method: Method, path: &str, mv: &str, body: Option<Value>) -> Result<Value, HttpError> {
        let mv = format!("placement {mv}");
        self.client
            .json(None, method, path, move |r| {
                let r = r.header("OpenStack-API-Version", mv.as_str()).header("Accept", "application/json");
                match &body {
                    Some(b) => r.json(b),
                    None => r,
                }
            })
            .await
    }

    /// Whether placement answers and accepts our credentials (for `check`):
    /// a provider listing filtered by a name, valid at every microversion.
    pub async fn ping(&self, name: &str) -> Result<(), PlacementError> {
        self.req(Method::GET, &format!("/resource_providers?name={}", url_part(name)), "1.20", None).await?;
        Ok(())
    }

    /// Returns the provider's generation, creating the provider if missing.
    pub async fn ensure_provider(&self, uuid: &str, name: &str) -> Result<i64, PlacementError> {
        match self.req(Method::GET, &format!("/resource_providers/{}", url_part(uuid)), "1.20", None).await {
            Ok(v) => return generation(&v),
            Err(e) if e.status() == Some(404) => {}
            Err(e) => return Err(e.into()),
        }
        match self.req(Method::POST, "/resource_providers", "1.20", Some(json!({"uuid": uuid, "name": name}))).await {
            Ok(v) => generation(&v),
            Err(e) if e.status() == Some(409) => {
                // Either someone created it meanwhile, or another provider has our name.
                match self.req(Method::GET, &format!("/resource_providers/{}", url_part(uuid)), "1.20", None).await {
                    Ok(v) => generation(&v),
                    Err(_) => Err(PlacementError::Conflict(format!(
                        "another resource provider is already named {name:?}: if this host was reinstalled, \
                         delete the old compute service (openstack compute service delete) or its provider"
                    ))),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The current inventory, by resource class: (total, reserved, ratio).
    pub async fn inventories(&self, uuid: &str) -> Result<(i64, Value), PlacementError> {
        let v =
            self.req(Method::GET, &format!("/resource_providers/{}/inventories", url_part(uuid)), "1.26", None).await?;
        Ok((generation(&v)?, v["inventories"].clone()))
    }

    /// Sets the inventory when it differs; retries on generation conflicts.
    /// Returns whether a PUT was needed.
    pub async fn set_inventory(&self, uuid: &str, inventories: &[Inventory]) -> Result<bool, PlacementError> {
        let wanted: serde_json::Map<String, Value> =
            inventories.iter().map(|i| (i.resource_class.to_string(), i.to_json())).collect();
        for _ in 0..RETRIES {
            let (generation, current) = self.inventories(uuid).await?;
            if same_inventory(&current, &wanted) {
                return Ok(false);
            }
            let body = json!({"resource_provider_generation": generation, "inventories": wanted});
            match self
                .req(Method::PUT, &format!("/resource_providers/{}/inventories", url_part(uuid)), "1.26", Some(body))
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) if e.status() == Some(409) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PlacementError::Conflict(format!("inventory of {uuid} kept changing under us")))
    }

    /// Sets the managed traits, preserving others; retries on conflicts.
    /// Returns the traits now on the provider.
    pub async fn set_traits(&self, uuid: &str, policy: &TraitPolicy) -> Result<BTreeSet<String>, PlacementError> {
        for _ in 0..RETRIES {
            let v =
                self.req(Method::GET, &format!("/resource_providers/{}/traits", url_part(uuid)), "1.6", None).await?;
            let generation = generation(&v)?;
            let current: BTreeSet<String> = v["traits"]
                .as_array()
                .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            let mut wanted: BTreeSet<String> = current.difference(&policy.forbidden).cloned().collect();
            wanted.extend(policy.required.iter().cloned());
            if wanted == current {
                return Ok(current);
            }
            for t in wanted.iter().filter(|t| t.starts_with("CUSTOM_")) {
                self.req(Method::PUT, &format!("/traits/{}", url_part(t)), "1.6", None).await?;
            }
            let body = json!({"resource_provider_generation": generation, "traits": wanted});
            match self
                .req(Method::PUT, &format!("/resource_providers/{}/traits", url_part(uuid)), "1.6", Some(body))
                .await
            {
                Ok(_) => return Ok(wanted),
                Err(e) if e.status() == Some(409) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PlacementError::Conflict(format!("traits of {uuid} kept changing under us")))
    }

    /// Removes an instance's allocations (forced, as Nova does on delete and
    /// failed builds); a missing allocation is fine.
    pub async fn delete_allocation(&self, consumer: &str) -> Result<(), PlacementError> {
        match self.req(Method::DELETE, &format!("/allocations/{}", url_part(consumer)), "1.28", None).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves the allocations of consumer `from` to consumer `to`, replacing
    /// whatever `to` held, in one request (Nova's `move_allocations`): a
    /// resize's revert gives the migration's source allocation back to the
    /// instance. Returns false when `from` holds nothing (nothing moved).
    /// Retried when another writer changed either consumer meanwhile.
    pub async fn move_allocations(&self, from: &str, to: &str) -> Result<bool, PlacementError> {
        for _ in 0..RETRIES {
            let path = |c: &str| format!("/allocations/{}", url_part(c));
            let source = self.req(Method::GET, &path(from), "1.28", None).await?;
            let Some(allocs) = source["allocations"].as_object().filter(|a| !a.is_empty()) else {
                return Ok(false);
            };
            let target = self.req(Method::GET, &path(to), "1.28", None).await?;
            let resources: serde_json::Map<String, Value> =
                allocs.iter().map(|(rp, a)| (rp.clone(), json!({"resources": a["resources"]}))).collect();
            let owner = |v: &Value, k: &str| {
                v[k].as_str().map(str::to_string).or_else(|| source[k].as_str().map(str::to_string))
            };
            let body = json!({
                from: {"allocations": {}, "project_id": source["project_id"], "user_id": source["user_id"],
                       "consumer_generation": source["consumer_generation"]},
                to: {"allocations": resources, "project_id": owner(&target, "project_id"),
                     "user_id": owner(&target, "user_id"), "consumer_generation": target["consumer_generation"]},
            });
            match self.req(Method::POST, "/allocations", "1.28", Some(body)).await {
                Ok(_) => return Ok(true),
                Err(e) if e.status() == Some(409) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PlacementError::Conflict(format!("allocations of {from} and {to} kept changing under us")))
    }

    /// The resources allocated to a consumer on any provider (empty when none).
    pub async fn allocations(&self, consumer: &str) -> Result<Value, PlacementError> {
        let v = self.req(Method::GET, &format!("/allocations/{}", url_part(consumer)), "1.28", None).await?;
        Ok(v["allocations"].clone())
    }

    /// A consumer's whole allocation document at 1.28: allocations,
    /// consumer_generation, project_id, user_id.
    async fn consumer(&self, consumer: &str) -> Result<Value, PlacementError> {
        Ok(self.req(Method::GET, &format!("/allocations/{}", url_part(consumer)), "1.28", None).await?)
    }

    /// Removes one provider's resources from a consumer's allocation (all
    /// of it when nothing else is left), as Nova's
    /// `remove_provider_tree_from_instance_allocation` does for a failed
    /// evacuation's destination.
    pub async fn remove_provider(&self, consumer: &str, provider: &str) -> Result<(), PlacementError> {
        for _ in 0..RETRIES {
            let cur = self.consumer(consumer).await?;
            let Some(allocs) = cur["allocations"].as_object() else { return Ok(()) };
            if !allocs.contains_key(provider) {
                return Ok(());
            }
            let rest: serde_json::Map<String, Value> = allocs
                .iter()
                .filter(|(rp, _)| rp.as_str() != provider)
                .map(|(rp, a)| (rp.clone(), json!({"resources": a["resources"]})))
                .collect();
            let body = json!({"allocations": rest, "project_id": cur["project_id"], "user_id": cur["user_id"],
                              "consumer_generation": cur["consumer_generation"]});
            let path = format!("/allocations/{}", url_part(consumer));
            let r = if rest.is_empty() {
                self.req(Method::DELETE, &path, "1.28", None).await
            } else {
                self.req(Method::PUT, &path, "1.28", Some(body)).await
            };
            match r {
                Ok(_) => return Ok(()),
                Err(e) if e.status() == Some(404) => return Ok(()),
                Err(e) if e.status() == Some(409) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PlacementError::Conflict(format!("the allocation of {consumer} kept changing under us")))
    }
}

/// The allocation changes an instance operation makes in Placement: a
/// trait so the compute manager's give-backs run on a fake in unit tests.
pub trait Allocations: Send + Sync + 'static {
    /// See [`Placement::delete_allocation`].
    fn delete_allocation<'a>(&'a self, consumer: &'a str) -> BoxFuture<'a, Result<(), PlacementError>>;
    /// See [`Placement::move_allocations`].
    fn move_allocations<'a>(&'a self, source: &'a str, target: &'a str) -> BoxFuture<'a, Result<bool, PlacementError>>;
    /// See [`Placement::remove_provider`].
    fn remove_provider<'a>(&'a self, consumer: &'a str, provider: &'a str)
    -> BoxFuture<'a, Result<(), PlacementError>>;
}

impl Allocations for Placement {
    fn delete_allocation<'a>(&'a self, consumer: &'a str) -> BoxFuture<'a, Result<(), PlacementError>> {
        Box::pin(Placement::delete_allocation(self, consumer))
    }

    fn move_allocations<'a>(&'a self, source: &'a str, target: &'a str) -> BoxFuture<'a, Result<bool, PlacementError>> {
        Box::pin(Placement::move_allocations(self, source, target))
    }

    fn remove_provider<'a>(
        &'a self,
        consumer: &'a str,
        provider: &'a str,
    ) -> BoxFuture<'a, Result<(), PlacementError>> {
        Box::pin(Placement::remove_provider(self, consumer, provider))
    }
}

fn generation(v: &Value) -> Result<i64, PlacementError> {
    v.get("resource_provider_generation")
        .or_else(|| v.get("generation"))
        .and_then(Value::as_i64)
        .ok_or_else(|| PlacementError::Decode(format!("no generation in {v}")))
}

fn same_inventory(current: &Value, wanted: &serde_json::Map<String, Value>) -> bool {
    let Some(cur) = current.as_object() else { return wanted.is_empty() };
    if cur.len() != wanted.len() {
        return false;
    }
    wanted.iter().all(|(rc, w)| {
        cur.get(rc).is_some_and(|c| {
            ["total", "reserved", "min_unit", "max_unit", "step_size"].iter().all(|k| c[k].as_i64() == w[k].as_i64())
                && (c["allocation_ratio"].as_f64().unwrap_or(0.0) - w["allocation_ratio"].as_f64().unwrap_or(0.0)).abs()
                    < 1e-6
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_comparison_ignores_float_noise_and_detects_changes() {
        let inv = Inventory { resource_class: "VCPU", total: 8, reserved: 0, allocation_ratio: 4.0 };
        let wanted: serde_json::Map<String, Value> = [("VCPU".to_string(), inv.to_json())].into_iter().collect();
        let current = json!({"VCPU": {"total": 8, "reserved": 0, "min_unit": 1, "max_unit": 8, "step_size": 1, "allocation_ratio": 4.0000000001}});
        assert!(same_inventory(&current, &wanted));
        let current = json!({"VCPU": {"total": 4, "reserved": 0, "min_unit": 1, "max_unit": 4, "step_size": 1, "allocation_ratio": 4.0}});
        assert!(!same_inventory(&current, &wanted));
        assert!(!same_inventory(&json!({}), &wanted));
    }

    #[test]
    fn reserved_never_exceeds_total() {
        let inv = Inventory { resource_class: "MEMORY_MB", total: 256, reserved: 512, allocation_ratio: 1.0 };
        assert_eq!(inv.to_json()["reserved"], 256);
    }
}
