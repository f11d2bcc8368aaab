//! Container network namespaces: the operator-visible `/var/run/netns/<name>`
//! entry, and netlink handles / sysctl writes inside a container's netns.
//!
//! # Why a bind mount and not a symlink
//!
//! The old driver did `ln -sf /proc/<pid>/ns/net /var/run/netns/<cid>`.
//! iproute2 6.1 (Debian bookworm) accepts both forms for `ip netns exec` and
//! `ip netns list`: it simply `open()`s the path, following a symlink (checked
//! on this host). The entry is nevertheless created here the way
//! `ip netns attach NAME PID` does it: an empty file bind-mounted with the
//! nsfs inode of the container's netns, under a `/var/run/netns` that is made
//! a shared mount point. Reasons:
//!
//! * a symlink names a *pid*. When the container stops, the link dangles
//!   (`ip netns exec` fails with ENOENT, but `ip netns list` still shows it);
//!   once the pid is reused it silently points at an unrelated process's netns,
//!   and an operator's `ip netns exec <cid> ...` runs in the wrong place. A
//!   bind mount names the namespace itself: it can be stale (the container was
//!   restarted) but never wrong, and staleness is detected by comparing inodes;
//! * it is the form `ip netns delete`, `ip netns identify`, `ip -all netns`,
//!   systemd's `NetworkNamespacePath=` and CNI tooling treat natively
//!   (`ip netns delete` unmounts then unlinks);
//! * the shared `/var/run/netns` mount propagates the unmount into other mount
//!   namespaces (exactly why iproute2 sets it up), so removal really frees the
//!   namespace.
//!
//! The cost: while the entry exists it keeps the netns alive even after the
//! container died (with its veth ends). [`NetnsLink::remove`] in teardown and
//! [`NetnsLink::create`] on re-plug (which replaces a stale entry) handle that,
//! and `plug` deletes a stale host veth of the same name before creating a new
//! one.
//!
//! # Never setns on a tokio worker
//!
//! A netlink socket belongs to the netns its creating thread was in, for its
//! whole life. [`netns_handle`] creates the socket on a throwaway OS thread
//! that called `setns` first; the thread then exits and tokio polls the socket
//! from its own workers. Sysctls inside the container netns are written the
//! same way ([`in_netns`]): `/proc/sys/net` resolves against the netns of the
//! thread that opens it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;
use tokio::sync::oneshot;

use super::error::NetError;

/// The directory `ip netns` reads (iproute2's `NETNS_RUN_DIR`).
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Default bound on the filesystem / thread operations of this module.
pub const DEFAULT_NETNS_TIMEOUT: Duration = Duration::from_secs(10);

/// Serialises entry creation/removal inside this process: making the run dir
/// a mount point must happen once, and two tasks must not interleave
/// unmount/unlink/create on the same entry.
static ENTRY_LOCK: Mutex<()> = Mutex::new(());
/// Set once `/var/run/netns` is known to be a shared mount point.
static RUN_DIR_READY: AtomicBool = AtomicBool::new(false);

/// An entry `/var/run/netns/<name>` that pins a container's network namespace.
///
/// It exists so operators can run `ip netns exec <container id> ...` (and
/// tools can `ip netns identify <pid>`) although Docker, with network mode
/// `none`, publishes no name for the namespace. See the module docs for why
/// it is a bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsLink {
    name: String,
    path: PathBuf,
}

impl NetnsLink {
    /// Creates (or refreshes) `/var/run/netns/<name>` for the netns of `pid`.
    ///
    /// Idempotent: if the entry already refers to that namespace nothing
    /// changes; if it refers to anything else (a previous incarnation of the
    /// container after `docker restart`, a dangling symlink left by the old
    /// driver, a bare file) it is unmounted and replaced. On failure no entry
    /// is left behind.
    pub async fn create(name: &str, pid: i32) -> Result<NetnsLink, NetError> {
        validate_netns_name(name)?;
        let dir = PathBuf::from(NETNS_RUN_DIR);
        let n = name.to_string();
        let path =
            blocking("create netns entry", name, DEFAULT_NETNS_TIMEOUT, move || create_entry(&dir, &n, pid)).await?;
        Ok(NetnsLink { name: name.to_string(), path })
    }

    /// Removes `/var/run/netns/<name>`: unmounts it (if it is a mount) and
    /// unlinks it. Idempotent; a missing entry is success.
    pub async fn remove(name: &str) -> Result<(), NetError> {
        validate_netns_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        blocking("remove netns entry", name, DEFAULT_NETNS_TIMEOUT, move || {
            let _g = ENTRY_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            remove_entry(&path)
        })
        .await
    }

    /// Whether `/var/run/netns/<name>` exists as a proper entry (not a
    /// legacy symlink) and refers to the netns of `pid`.
    ///
    /// Exists so the compute can tell a live entry from a stale one (after an
    /// out-of-band container restart) without re-plugging.
    pub async fn is_current(name: &str, pid: i32) -> Result<bool, NetError> {
        validate_netns_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        blocking("inspect netns entry", name, DEFAULT_NETNS_TIMEOUT, move || {
            let want = ns_identity(format!("/proc/{pid}/ns/net")).map_err(|source| NetError::Netns {
                pid,
                op: "stat /proc/<pid>/ns/net",
                source,
            })?;
            let is_symlink = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
            Ok(!is_symlink && ns_identity(&path).ok() == Some(want))
        })
        .await
    }

    /// The entry's name (the container id).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entry's path, `/var/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Rejects names that `ip netns` or the filesystem would not take as one
/// entry of `/var/run/netns`.
pub fn validate_netns_name(name: &str) -> Result<(), NetError> {
    let bad = |reason| Err(NetError::InvalidName { name: name.to_string(), reason });
    if name.is_empty() || name == "." || name == ".." {
        return bad("empty, \".\" or \"..\"");
    }
    if name.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if name.contains('/') || name.contains('\0') {
        return bad("contains '/' or NUL");
    }
    Ok(())
}

/// (st_dev, st_ino) of a namespace file, following symlinks: two paths name
/// the same netns iff these are equal.
fn ns_identity(path: impl AsRef<Path>) -> io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

fn entry_err(path: &Path, op: &'static str, source: io::Error) -> NetError {
    NetError::NetnsLink { path: path.to_path_buf(), op, source }
}

/// Makes `dir` exist and be a shared mount point, like iproute2's
/// `netns_add`: bind-mount it onto itself if it is not a mount point yet.
fn ensure_run_dir(dir: &Path) -> Result<(), NetError> {
    if RUN_DIR_READY.load(Ordering::Acquire) {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| entry_err(dir, "create directory", e))?;
    let mut made_mount = false;
    loop {
        match mount(Some(""), dir, Some("none"), MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>) {
            Ok(()) => break,
            Err(Errno::EINVAL) if !made_mount => {
                mount(Some(dir), dir, Some("none"), MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                    .map_err(|e| entry_err(dir, "bind mount onto itself", e.into()))?;
                made_mount = true;
            }
            Err(e) => return Err(entry_err(dir, "make shared mount", e.into())),
        }
    }
    RUN_DIR_READY.store(true, Ordering::Release);
    Ok(())
}

/// Unmounts (all stacked mounts) and unlinks one entry. Never follows a
/// symlink: an old-driver link to /proc/<pid>/ns/net, or to Docker's own
/// /run/docker/netns/<x> mount, is only unlinked.
fn remove_entry(path: &Path) -> Result<(), NetError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(entry_err(path, "stat", e)),
    };
    if !meta.file_type().is_symlink() {
        for _ in 0..16 {
            match umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) => continue,
                Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
                Err(e) => return Err(entry_err(path, "unmount", e.into())),
            }
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(entry_err(path, "unlink", e)),
    }
}

fn create_entry(dir: &Path, name: &str, pid: i32) -> Result<PathBuf, NetError> {
    let path = dir.join(name);
    // Pin the namespace first: if the pid dies or is reused after this, the
    // mount still names the namespace we looked at.
    let ns = File::open(format!("/proc/{pid}/ns/net")).map_err(|source| NetError::Netns {
        pid,
        op: "open /proc/<pid>/ns/net",
        source,
    })?;
    let nsm = ns.metadata().map_err(|source| NetError::Netns { pid, op: "stat netns", source })?;
    let want = (nsm.dev(), nsm.ino());

    let _g = ENTRY_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    ensure_run_dir(dir)?;

    // Already current (a real entry, not a symlink that merely resolves to
    // the same netns today): nothing to do.
    let is_symlink = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_symlink && ns_identity(&path).ok() == Some(want) {
        return Ok(path);
    }
    remove_entry(&path)?; // stale, dangling or foreign: replace

    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .map_err(|e| entry_err(&path, "create mount point file", e))?;
    let src = format!("/proc/self/fd/{}", ns.as_raw_fd());
    if let Err(e) = mount(Some(src.as_str()), &path, None::<&str>, MsFlags::MS_BIND, None::<&str>) {
        let _ = std::fs::remove_file(&path);
        return Err(entry_err(&path, "bind mount nsfs", e.into()));
    }
    match ns_identity(&path) {
        Ok(id) if id == want => Ok(path),
        Ok(_) => {
            let _ = remove_entry(&path);
            Err(entry_err(
                &path,
                "verify",
                io::Error::other("entry does not refer to the container netns after mounting"),
            ))
        }
        Err(e) => {
            let _ = remove_entry(&path);
            Err(entry_err(&path, "verify", e))
        }
    }
}

/// Runs a blocking closure on tokio's blocking pool with a deadline.
async fn blocking<R, F>(op: &'static str, device: &str, timeout: Duration, f: F) -> Result<R, NetError>
where
    R: Send + 'static,
    F: FnOnce() -> Result<R, NetError> + Send + 'static,
{
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(NetError::Internal(format!("{op} {device}: worker failed: {join}"))),
        Err(_) => Err(NetError::Timeout { op, device: device.to_string(), timeout }),
    }
}

/// An rtnetlink handle whose socket lives in the network namespace of a
/// container, plus an open fd of that namespace.
///
/// It exists because everything inside the container (addresses, routes,
/// `lo`) must be configured through a socket created in its netns, and the
/// fd is what veth creation uses to put the peer straight into it
/// (`IFLA_NET_NS_FD`). Holding the fd also pins the namespace for the
/// duration of a plug, so a container dying mid-plug cannot make the pid
/// point elsewhere.
#[derive(Debug)]
pub struct NetnsHandle {
    /// Netlink handle inside the container netns.
    pub handle: Handle,
    /// `/proc/<pid>/ns/net`, opened once.
    pub ns: File,
    /// The pid the namespace was taken from.
    pub pid: i32,
}

/// Opens the netns of `pid` and creates a netlink connection inside it, on a
/// throwaway OS thread (never `setns` on a tokio worker). The connection task
/// is spawned on the current runtime and ends when the handle is dropped.
pub async fn netns_handle(pid: i32, timeout: Duration) -> Result<NetnsHandle, NetError> {
    if pid <= 0 {
        return Err(NetError::Netns {
            pid,
            op: "validate pid",
            source: io::Error::from_raw_os_error(Errno::ESRCH as i32),
        });
    }
    let rt = tokio::runtime::Handle::current();
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("netns-{pid}"))
        .spawn(move || {
            let _ = tx.send(open_in_netns(pid, &rt));
        })
        .map_err(|e| NetError::Internal(format!("cannot start netns thread: {e}")))?;
    await_worker(rx, "enter netns", pid, timeout).await
}

/// Body of the throwaway thread of [`netns_handle`]: joins the netns of
/// `pid` and creates the netlink socket there.
fn open_in_netns(pid: i32, rt: &tokio::runtime::Handle) -> Result<NetnsHandle, NetError> {
    let netns_err = |op: &'static str| move |source: io::Error| NetError::Netns { pid, op, source };
    let ns = File::open(format!("/proc/{pid}/ns/net")).map_err(netns_err("open /proc/<pid>/ns/net"))?;
    // A pid in our own netns (network mode host, a wrong pid) must never be
    // "configured": stale-device cleanup would then act on the host's own
    // interfaces.
    let own = ns_identity("/proc/thread-self/ns/net").map_err(netns_err("stat own netns"))?;
    let target = ns.metadata().map_err(netns_err("stat netns"))?;
    if (target.dev(), target.ino()) == own {
        return Err(NetError::Netns {
            pid,
            op: "refusing to configure the service's own network namespace (is the network mode really none?)",
            source: io::Error::from_raw_os_error(Errno::EINVAL as i32),
        });
    }
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| netns_err("setns")(e.into()))?;
    // new_connection registers the socket with the reactor (needs the runtime
    // context); the socket is bound to this thread's netns for its lifetime.
    let _guard = rt.enter();
    let (conn, handle, _unsolicited) = rtnetlink::new_connection().map_err(netns_err("create netlink socket"))?;
    rt.spawn(conn);
    Ok(NetnsHandle { handle, ns, pid })
}

/// Runs `f` on a throwaway OS thread that has joined the network namespace
/// `ns` (of container `pid`). Used for `/proc/sys/net/...` writes, which
/// resolve against the netns of the calling thread.
pub(crate) async fn in_netns<R, F>(
    ns: &File,
    pid: i32,
    op: &'static str,
    timeout: Duration,
    f: F,
) -> Result<R, NetError>
where
    R: Send + 'static,
    F: FnOnce() -> Result<R, NetError> + Send + 'static,
{
    let ns = ns.try_clone().map_err(|source| NetError::Netns { pid, op: "dup netns fd", source })?;
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("netns-{pid}"))
        .spawn(move || {
            let r = match setns(&ns, CloneFlags::CLONE_NEWNET) {
                Ok(()) => f(),
                Err(e) => Err(NetError::Netns { pid, op: "setns", source: e.into() }),
            };
            let _ = tx.send(r);
        })
        .map_err(|e| NetError::Internal(format!("cannot start netns thread: {e}")))?;
    await_worker(rx, op, pid, timeout).await
}

async fn await_worker<R>(
    rx: oneshot::Receiver<Result<R, NetError>>,
    op: &'static str,
    pid: i32,
    timeout: Duration,
) -> Result<R, NetError> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(NetError::Internal(format!("{op}: netns thread of pid {pid} died"))),
        Err(_) => Err(NetError::Timeout { op, device: format!("netns of pid {pid}"), timeout }),
    }
}

/// Writes one sysctl value; `path` is relative to `/proc/sys/` and resolves
/// in the netns of the calling thread.
pub(crate) fn write_sysctl(path: &str, value: &str) -> Result<(), NetError> {
    let full = format!("/proc/sys/{path}");
    std::fs::write(&full, value).map_err(|source| NetError::Sysctl { path: path.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_netns_name("3f4e5d").is_ok());
        assert!(validate_netns_name("").is_err());
        assert!(validate_netns_name("..").is_err());
        assert!(validate_netns_name("a/b").is_err());
        assert!(validate_netns_name(&"x".repeat(256)).is_err());
    }
}
