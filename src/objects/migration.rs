//! `Migration`: Nova's record of one move of an instance (resize, cold or
//! live migration, evacuation), which the compute hosts update as the move
//! goes (its `status`), and whose uuid holds the instance's source
//! allocation in Placement while the move is in flight.

use serde_json::Value;

use super::{NovaObject, ObjectError};

/// A Migration record, as it came in an RPC or from the conductor.
#[derive(Debug, Clone, PartialEq)]
pub struct Migration {
    /// The object as exchanged with the conductor; the accessors read it.
    pub obj: NovaObject,
}

impl Migration {
    /// Reads a Migration primitive.
    pub fn from_primitive(v: &Value) -> Result<Self, ObjectError> {
        Ok(Migration { obj: NovaObject::expect(v, "Migration")? })
    }

    /// The migration's uuid: the Placement consumer of the source allocation.
    pub fn uuid(&self) -> Option<&str> {
        self.obj.get_str("uuid")
    }

    /// Its status (`pre-migrating`, `accepted`, `done`, `error`, ...).
    pub fn status(&self) -> Option<&str> {
        self.obj.get_str("status")
    }

    /// Sets the status (saved with `Conductor::migration_save`).
    pub fn set_status(&mut self, status: &str) {
        self.obj.set("status", status);
    }

    /// `resize`, `migration`, `live-migration` or `evacuation`.
    pub fn migration_type(&self) -> Option<&str> {
        self.obj.get_str("migration_type")
    }

    /// The instance the migration moves.
    pub fn instance_uuid(&self) -> Option<&str> {
        self.obj.get_str("instance_uuid")
    }

    /// The host the instance leaves.
    pub fn source_compute(&self) -> Option<&str> {
        self.obj.get_str("source_compute")
    }

    /// The host the instance goes to.
    pub fn dest_compute(&self) -> Option<&str> {
        self.obj.get_str("dest_compute")
    }
}
