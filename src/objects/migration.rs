//! `Migration` (1.7 in Zed, 1.8 since 2023.1): the record of one resize or
//! cold migration, which the source and destination hosts move through its
//! statuses (`pre-migrating`, `migrating`, `post-migrating`, `finished`,
//! `confirmed`, `reverted`, `error`) as Nova's compute manager does.

use serde_json::Value;

use super::instance::is_canonical_uuid;
use super::{NovaObject, ObjectError};

/// A migration as received from Nova, with the fields a compute host uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    /// The object as received; written back with its changes tracked.
    pub obj: NovaObject,
}

impl Migration {
    /// Reads a `Migration` primitive; its uuid (the Placement consumer of
    /// the source allocation) must be canonical.
    pub fn from_primitive(v: &Value) -> Result<Self, ObjectError> {
        let obj = NovaObject::expect(v, "Migration")?;
        if !obj.get_str("uuid").is_some_and(is_canonical_uuid) {
            return Err(ObjectError::Field { object: "Migration", field: "uuid" });
        }
        if !obj.get_str("instance_uuid").is_some_and(is_canonical_uuid) {
            return Err(ObjectError::Field { object: "Migration", field: "instance_uuid" });
        }
        Ok(Migration { obj })
    }

    /// The primitive to send back (with our changes).
    pub fn to_primitive(&self) -> Value {
        self.obj.to_primitive()
    }

    /// The migration uuid: the Placement consumer holding the source allocation.
    pub fn uuid(&self) -> &str {
        self.obj.get_str("uuid").unwrap_or_default()
    }

    /// The instance moved.
    pub fn instance_uuid(&self) -> &str {
        self.obj.get_str("instance_uuid").unwrap_or_default()
    }

    /// The database id (shown by the API, put in a MigrationContext).
    pub fn id(&self) -> Option<i64> {
        self.obj.get_i64("id")
    }

    /// `status`.
    pub fn status(&self) -> Option<&str> {
        self.obj.get_str("status")
    }

    /// Sets `status`.
    pub fn set_status(&mut self, status: &str) {
        self.obj.set("status", status);
    }

    /// The host the instance leaves.
    pub fn source_compute(&self) -> Option<&str> {
        self.obj.get_str("source_compute")
    }

    /// The node the instance leaves.
    pub fn source_node(&self) -> Option<&str> {
        self.obj.get_str("source_node")
    }

    /// The host the instance goes to (set by the destination's prep_resize).
    pub fn dest_compute(&self) -> Option<&str> {
        self.obj.get_str("dest_compute")
    }

    /// The node the instance goes to.
    pub fn dest_node(&self) -> Option<&str> {
        self.obj.get_str("dest_node")
    }

    /// Whether source and destination are one host (same-host resize).
    pub fn same_host(&self) -> bool {
        self.source_compute().is_some() && self.source_compute() == self.dest_compute()
    }

    /// `migration_type` (`resize`, `migration`, ...).
    pub fn migration_type(&self) -> Option<&str> {
        self.obj.get_str("migration_type")
    }

    /// Whether this is a cross-cell move (refused: snapshot-based resize).
    pub fn cross_cell_move(&self) -> bool {
        self.obj.get_bool("cross_cell_move").unwrap_or(false)
    }
}
