//! How an instance's root filesystem is held to its flavor's `root_gb`.
//!
//! A container's root filesystem is the image plus a writable layer on the
//! engine's storage driver, and only some drivers can cap a container:
//! overlay2 when its backing filesystem is xfs mounted with project quotas
//! (`prjquota`), btrfs (a qgroup per subvolume, which the driver enables
//! itself) and zfs (a quota per dataset). There the engine enforces
//! `HostConfig.StorageOpt {"size": ...}` and a write past it fails with "no
//! space left". Everywhere else (fuse-overlayfs, vfs, overlay2 on ext4 or on
//! xfs without `prjquota`) the writable layer is measured periodically and
//! the compute manager acts on instances over their limit.
//!
//! The mode is decided from facts, never guessed: the engine's storage driver
//! and backing filesystem (`docker info`) and the mount options of the
//! filesystem that holds the driver's directory (`/proc/self/mountinfo`).

use std::path::{Component, Path, PathBuf};

use crate::config::RootDiskLimit;

/// How root disk limits are enforced on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// The storage driver caps each container (`StorageOpt size`).
    Quota,
    /// The writable layer is measured periodically.
    Measure,
    /// Not enforced.
    Off,
}

/// The mode this host is in, and why (shown by `check` and at start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDiskMode {
    /// How root disk limits are enforced on this host.
    pub enforcement: Enforcement,
    /// Why, in words for the operator (storage driver, backing filesystem, options).
    pub reason: String,
    /// `root_disk_limit = quota` was configured although the storage driver
    /// cannot enforce one: the engine will refuse every create.
    pub quota_unsupported: bool,
}

/// What the engine says about its storage (from `docker info`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineStorage {
    /// The storage driver (`overlay2`, `btrfs`, `fuse-overlayfs`, ...).
    pub driver: String,
    /// overlay2's "Backing Filesystem" (`xfs`, `extfs`, ...).
    pub backing_fs: Option<String>,
    /// The engine's data root (`DockerRootDir`).
    pub root_dir: PathBuf,
}

impl EngineStorage {
    /// Reads the relevant parts of `docker info`.
    pub fn from_info(info: &bollard::models::SystemInfo) -> Self {
        let backing_fs = info.driver_status.iter().flatten().find_map(|kv| match kv.as_slice() {
            [k, v] if k == "Backing Filesystem" => Some(v.clone()),
            _ => None,
        });
        EngineStorage {
            driver: info.driver.clone().unwrap_or_default(),
            backing_fs,
            root_dir: PathBuf::from(info.docker_root_dir.clone().unwrap_or_else(|| "/var/lib/docker".into())),
        }
    }
}

/// One mount, as `/proc/self/mountinfo` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type (e.g. `xfs`); quotas depend on it.
    pub fs_type: String,
    /// Per-mount and superblock options together.
    pub options: Vec<String>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 4]).ok().and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(b);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount holding `path`: the last mounted of those with the longest
/// mount point that is a path prefix of it. `None` when nothing matches or
/// the text is not mountinfo.
pub fn mount_of(mountinfo: &str, path: &Path) -> Option<Mount> {
    let mut best: Option<(usize, Mount)> = None;
    for line in mountinfo.lines() {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 6 || right.len() < 3 {
            continue;
        }
        let mount_point = PathBuf::from(unescape(left[4]));
        if !path.starts_with(&mount_point) {
            continue;
        }
        let depth = mount_point.components().filter(|c| matches!(c, Component::Normal(_))).count();
        let options = left[5].split(',').chain(right[2].split(',')).map(str::to_string).collect();
        let mount = Mount { mount_point, fs_type: right[0].to_string(), options };
        if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            best = Some((depth, mount));
        }
    }
    best.map(|(_, m)| m)
}

/// Whether the engine can cap a container's size: `Ok(why)` or `Err(why not)`.
pub fn quota_capability(storage: &EngineStorage, mountinfo: &str) -> Result<String, String> {
    match storage.driver.as_str() {
        "btrfs" => Ok("storage driver btrfs limits each container's subvolume with a qgroup".into()),
        "zfs" => Ok("storage driver zfs sets a quota on each container's dataset".into()),
        "overlay2" => {
            let backing = storage.backing_fs.as_deref().unwrap_or("unknown");
            if backing != "xfs" {
                return Err(format!(
                    "storage driver overlay2 limits container sizes only on xfs mounted with prjquota; \
                     its backing filesystem is {backing}"
                ));
            }
            let dir = storage.root_dir.join("overlay2");
            let Some(m) = mount_of(mountinfo, &dir) else {
                return Err(format!("cannot find the filesystem of {} in /proc/self/mountinfo", dir.display()));
            };
            if m.fs_type != "xfs" {
                return Err(format!(
                    "{} is on {} (mounted at {}), not on xfs as the engine reports",
                    dir.display(),
                    m.fs_type,
                    m.mount_point.display()
                ));
            }
            let has = |o: &str| m.options.iter().any(|x| x == o);
            if has("prjquota") || has("pquota") {
                Ok(format!(
                    "storage driver overlay2 on xfs at {} mounted with prjquota (a project quota per container)",
                    m.mount_point.display()
                ))
            } else if has("pqnoenforce") {
                Err(format!(
                    "xfs at {} accounts project quotas but does not enforce them (pqnoenforce)",
                    m.mount_point.display()
                ))
            } else {
                Err(format!(
                    "storage driver overlay2 is on xfs at {} mounted without prjquota",
                    m.mount_point.display()
                ))
            }
        }
        "" => Err("the engine does not name its storage driver".into()),
        other => Err(format!("storage driver {other} cannot limit a container's size")),
    }
}

/// Decides the mode from the configuration and the facts.
pub fn decide(
    configured: RootDiskLimit,
    storage: &EngineStorage,
    mountinfo: &str,
    measure_every_s: u64,
) -> RootDiskMode {
    let measured = |why: String| RootDiskMode {
        enforcement: Enforcement::Measure,
        reason: format!("{why}; the writable layer of each instance is measured every {measure_every_s} s"),
        quota_unsupported: false,
    };
    match configured {
        RootDiskLimit::Off => RootDiskMode {
            enforcement: Enforcement::Off,
            reason: "root_disk_limit = off: the flavor's root_gb is not enforced".into(),
            quota_unsupported: false,
        },
        RootDiskLimit::Measure => measured("root_disk_limit = measure".into()),
        RootDiskLimit::Quota => match quota_capability(storage, mountinfo) {
            Ok(why) => RootDiskMode {
                enforcement: Enforcement::Quota,
                reason: format!("root_disk_limit = quota: {why}"),
                quota_unsupported: false,
            },
            Err(why_not) => RootDiskMode {
                enforcement: Enforcement::Quota,
                reason: format!(
                    "root_disk_limit = quota, but {why_not}: the engine will refuse to create containers \
                     (use auto or measure)"
                ),
                quota_unsupported: true,
            },
        },
        RootDiskLimit::Auto => match quota_capability(storage, mountinfo) {
            Ok(why) => RootDiskMode { enforcement: Enforcement::Quota, reason: why, quota_unsupported: false },
            Err(why_not) => measured(why_not),
        },
    }
}

/// The `StorageOpt` size of a limit in GiB (the engine parses it with
/// `units.RAMInBytes`, where `G` is 1024^3).
pub fn storage_size(gb: u64) -> String {
    format!("{gb}G")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
40 22 7:0 / /srv/docker rw,relatime shared:20 - xfs /dev/loop0 rw,attr2,inode64,logbufs=8,prjquota
41 22 7:1 / /mnt/no\\040quota rw,relatime shared:21 - xfs /dev/loop1 rw,attr2,inode64,noquota
42 22 7:2 / /mnt/acct rw,relatime shared:22 - xfs /dev/loop2 rw,attr2,inode64,pqnoenforce
";

    fn overlay2(root: &str, backing: &str) -> EngineStorage {
        EngineStorage { driver: "overlay2".into(), backing_fs: Some(backing.into()), root_dir: PathBuf::from(root) }
    }

    #[test]
    fn the_longest_mount_point_holds_a_path() {
        let m = mount_of(MOUNTINFO, Path::new("/srv/docker/overlay2")).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/srv/docker"));
        assert_eq!(m.fs_type, "xfs");
        assert_eq!(mount_of(MOUNTINFO, Path::new("/srv/dockerx")).unwrap().mount_point, PathBuf::from("/"));
        assert_eq!(mount_of(MOUNTINFO, Path::new("/mnt/no quota/d")).unwrap().fs_type, "xfs");
        assert_eq!(mount_of("garbage", Path::new("/")), None);
    }

    #[test]
    fn quota_only_where_the_driver_and_filesystem_enforce_it() {
        assert!(quota_capability(&overlay2("/srv/docker", "xfs"), MOUNTINFO).is_ok());
        let no = quota_capability(&overlay2("/mnt/no quota", "xfs"), MOUNTINFO).unwrap_err();
        assert!(no.contains("without prjquota"), "{no}");
        let acct = quota_capability(&overlay2("/mnt/acct", "xfs"), MOUNTINFO).unwrap_err();
        assert!(acct.contains("pqnoenforce"), "{acct}");
        let ext = quota_capability(&overlay2("/var/lib/docker", "extfs"), MOUNTINFO).unwrap_err();
        assert!(ext.contains("backing filesystem is extfs"), "{ext}");
        // The engine claims xfs but the path is not on xfs here.
        assert!(quota_capability(&overlay2("/var/lib/docker", "xfs"), MOUNTINFO).is_err());
        let fuse = EngineStorage { driver: "fuse-overlayfs".into(), ..Default::default() };
        assert!(quota_capability(&fuse, MOUNTINFO).unwrap_err().contains("fuse-overlayfs cannot"));
        let btrfs = EngineStorage { driver: "btrfs".into(), ..Default::default() };
        assert!(quota_capability(&btrfs, "").is_ok());
    }

    #[test]
    fn auto_measures_where_quota_is_impossible_and_forced_quota_says_it_will_fail() {
        let fuse = EngineStorage { driver: "fuse-overlayfs".into(), ..Default::default() };
        let m = decide(RootDiskLimit::Auto, &fuse, MOUNTINFO, 60);
        assert_eq!(m.enforcement, Enforcement::Measure);
        assert!(m.reason.contains("fuse-overlayfs") && m.reason.contains("every 60 s"), "{}", m.reason);
        let m = decide(RootDiskLimit::Auto, &overlay2("/srv/docker", "xfs"), MOUNTINFO, 60);
        assert_eq!(m.enforcement, Enforcement::Quota);
        let m = decide(RootDiskLimit::Quota, &fuse, MOUNTINFO, 60);
        assert_eq!(m.enforcement, Enforcement::Quota);
        assert!(m.quota_unsupported, "{}", m.reason);
        assert_eq!(decide(RootDiskLimit::Off, &fuse, "", 60).enforcement, Enforcement::Off);
        let btrfs = EngineStorage { driver: "btrfs".into(), ..Default::default() };
        assert_eq!(decide(RootDiskLimit::Measure, &btrfs, "", 5).enforcement, Enforcement::Measure);
    }
}
