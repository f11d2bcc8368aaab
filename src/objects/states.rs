//! Nova's instance states as types (`nova/objects/fields.py`
//! `InstanceState`, `InstanceTaskState`, `InstancePowerState`): the compute
//! state machine moves an instance between these, never between strings, so
//! a misspelt state is a compile error rather than a record Nova rejects.

/// Defines a state enum whose wire form is a fixed string.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $wire:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $(#[doc = concat!("`", $wire, "`")] $variant,)*
        }

        impl $name {
            /// Every value, in Nova's order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The string Nova stores and sends.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)*
                }
            }

            /// The value of a string Nova sent (None for one this service
            /// does not know).
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($wire => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// `Instance.vm_state` (`nova/compute/vm_states.py`).
    VmState {
        Active = "active",
        Building = "building",
        Paused = "paused",
        Suspended = "suspended",
        Stopped = "stopped",
        Rescued = "rescued",
        Resized = "resized",
        SoftDeleted = "soft-delete",
        Deleted = "deleted",
        Error = "error",
        Shelved = "shelved",
        ShelvedOffloaded = "shelved_offloaded",
    }
}

wire_enum! {
    /// `Instance.task_state` (`nova/compute/task_states.py`); an idle
    /// instance has none (`Option<TaskState>`).
    TaskState {
        Scheduling = "scheduling",
        BlockDeviceMapping = "block_device_mapping",
        Networking = "networking",
        Spawning = "spawning",
        ImageSnapshot = "image_snapshot",
        ImageSnapshotPending = "image_snapshot_pending",
        ImagePendingUpload = "image_pending_upload",
        ImageUploading = "image_uploading",
        ImageBackup = "image_backup",
        UpdatingPassword = "updating_password",
        ResizePrep = "resize_prep",
        ResizeMigrating = "resize_migrating",
        ResizeMigrated = "resize_migrated",
        ResizeFinish = "resize_finish",
        ResizeReverting = "resize_reverting",
        ResizeConfirming = "resize_confirming",
        Rebooting = "rebooting",
        RebootPending = "reboot_pending",
        RebootStarted = "reboot_started",
        RebootingHard = "rebooting_hard",
        RebootPendingHard = "reboot_pending_hard",
        RebootStartedHard = "reboot_started_hard",
        Pausing = "pausing",
        Unpausing = "unpausing",
        Suspending = "suspending",
        Resuming = "resuming",
        PoweringOff = "powering-off",
        PoweringOn = "powering-on",
        Rescuing = "rescuing",
        Unrescuing = "unrescuing",
        Rebuilding = "rebuilding",
        RebuildBlockDeviceMapping = "rebuild_block_device_mapping",
        RebuildSpawning = "rebuild_spawning",
        Migrating = "migrating",
        Deleting = "deleting",
        SoftDeleting = "soft-deleting",
        Restoring = "restoring",
        Shelving = "shelving",
        ShelvingImagePendingUpload = "shelving_image_pending_upload",
        ShelvingImageUploading = "shelving_image_uploading",
        ShelvingOffloading = "shelving_offloading",
        Unshelving = "unshelving",
    }
}

impl TaskState {
    /// The task states of a build before it is ACTIVE.
    pub fn is_build(self) -> bool {
        matches!(
            self,
            TaskState::Scheduling | TaskState::BlockDeviceMapping | TaskState::Networking | TaskState::Spawning
        )
    }

    /// The task states of a snapshot or backup.
    pub fn is_snapshot(self) -> bool {
        matches!(
            self,
            TaskState::ImageSnapshotPending
                | TaskState::ImageSnapshot
                | TaskState::ImagePendingUpload
                | TaskState::ImageUploading
                | TaskState::ImageBackup
        )
    }

    /// The task states of a soft or hard reboot.
    pub fn is_reboot(self) -> bool {
        matches!(
            self,
            TaskState::Rebooting
                | TaskState::RebootPending
                | TaskState::RebootStarted
                | TaskState::RebootingHard
                | TaskState::RebootPendingHard
                | TaskState::RebootStartedHard
        )
    }
}

/// Nova's `power_state` values (`nova/compute/power_state.py`): an integer on
/// the instance, a name in diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// `0`, "pending": no container.
    NoState = 0,
    /// `1`.
    Running = 1,
    /// `3`: frozen.
    Paused = 3,
    /// `4`: stopped.
    Shutdown = 4,
    /// `6`: exited on its own with an error, or killed for memory.
    Crashed = 6,
    /// `7`: frozen by a suspend.
    Suspended = 7,
}

impl PowerState {
    /// Every value.
    pub const ALL: &'static [PowerState] = &[
        PowerState::NoState,
        PowerState::Running,
        PowerState::Paused,
        PowerState::Shutdown,
        PowerState::Crashed,
        PowerState::Suspended,
    ];

    /// The integer stored in `Instance.power_state`.
    pub fn code(self) -> i64 {
        self as i64
    }

    /// The state of a stored integer (NOSTATE for one Nova no longer uses).
    pub fn from_code(code: i64) -> Self {
        PowerState::ALL.iter().copied().find(|s| s.code() == code).unwrap_or(PowerState::NoState)
    }

    /// The name used in Diagnostics (`InstancePowerState` enum values).
    pub fn name(self) -> &'static str {
        match self {
            PowerState::NoState => "pending",
            PowerState::Running => "running",
            PowerState::Paused => "paused",
            PowerState::Shutdown => "shutdown",
            PowerState::Crashed => "crashed",
            PowerState::Suspended => "suspended",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_its_wire_form() {
        for s in VmState::ALL {
            assert_eq!(VmState::parse(s.as_str()), Some(*s));
        }
        for s in TaskState::ALL {
            assert_eq!(TaskState::parse(s.as_str()), Some(*s));
        }
        for s in PowerState::ALL {
            assert_eq!(PowerState::from_code(s.code()), *s);
        }
        assert_eq!(VmState::SoftDeleted.as_str(), "soft-delete");
        assert_eq!(TaskState::PoweringOff.as_str(), "powering-off");
        assert_eq!(TaskState::parse("no-such-state"), None);
        assert_eq!(PowerState::from_code(2), PowerState::NoState);
    }
}
