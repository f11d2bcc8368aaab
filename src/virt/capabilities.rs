//! Which Linux capabilities a flavor may hand a tenant's container.
//!
//! A flavor's `docker:capabilities` extra spec (flavors are admin objects)
//! adds capabilities to the host's minimal set (`[docker] capabilities`).
//! Whatever the flavor adds runs as root inside a container that shares the
//! host kernel with every other tenant: the container has its own mount, PID,
//! IPC, UTS and network namespaces, but (unless the daemon remaps users) not
//! its own user namespace, so a capability is only safe when everything it
//! unlocks stays inside those namespaces and inside the cgroup limits. The
//! list below is that judgement, one capability at a time; anything else is
//! refused with a fault naming the capability and this list, however the
//! admin spells it (`cap_net_raw`, ` NET_RAW `).
//!
//! Allowed, Docker's default set (moby `oci/caps/defaults.go`), which Docker
//! hands every untrusted container together with a seccomp profile and a
//! device cgroup:
//!
//! - `CHOWN`, `DAC_OVERRIDE`, `FOWNER`, `FSETID`: file ownership and
//!   permission checks on files the container can reach, i.e. its own root
//!   filesystem and the read-only guest files this service mounts.
//! - `SETUID`, `SETGID`, `SETPCAP`: change its own processes' identities and
//!   bounding sets (`no-new-privileges` still blocks gaining privileges
//!   through exec).
//! - `SETFCAP`: write file capabilities on its own files; with
//!   `no-new-privileges` they grant nothing on exec.
//! - `KILL`: signal processes, which the PID namespace limits to its own.
//! - `NET_BIND_SERVICE`: ports below 1024 in its own network namespace.
//! - `NET_RAW`: raw and packet sockets in its own network namespace (ping,
//!   DHCP clients). Forged frames leave only through its Neutron port, whose
//!   port security (anti-spoofing rules on the host side) drops them.
//! - `MKNOD`: create device nodes; the device cgroup still lets it open only
//!   Docker's default devices (null, zero, random, tty...).
//! - `SYS_CHROOT`: chroot inside its own mount namespace.
//! - `AUDIT_WRITE`: write to the audit log as any login program does.
//!
//! Allowed beyond Docker's defaults:
//!
//! - `IPC_OWNER`: bypass permission checks on System V IPC objects, which
//!   live in its own IPC namespace.
//! - `IPC_LOCK`: lock memory; locked pages are charged to the container's
//!   memory cgroup, so the flavor's RAM still bounds it.
//! - `NET_BROADCAST`: broadcast and multicast listening in its own network
//!   namespace.
//!
//! Refused (never handed to a tenant), with why:
//!
//! - `SYS_ADMIN`: mount, namespace and many device and filesystem
//!   operations; the classic container escape.
//! - `SYS_MODULE`, `SYS_RAWIO`, `SYS_BOOT`, `SYS_TIME`, `SYS_PACCT`,
//!   `SYS_TTY_CONFIG`, `WAKE_ALARM`, `BLOCK_SUSPEND`: load kernel code, raw
//!   I/O ports and memory, reboot, the host clock, accounting, host ttys and
//!   suspend are host-wide.
//! - `DAC_READ_SEARCH`: `open_by_handle_at` opens host files by handle,
//!   outside the container's root (the "shocker" escape).
//! - `NET_ADMIN`: its own namespace's interfaces, routes and netfilter, but
//!   also the kernel's largest local attack surface (nf_tables and friends,
//!   the source of many privilege escalations) and module autoloading of
//!   network drivers.
//! - `SYS_PTRACE`: overrides the dumpable check that keeps container
//!   processes from tracing a `runc init` entering the container (the
//!   CVE-2019-5736 family).
//! - `SYS_NICE`, `SYS_RESOURCE`: real-time CPU and I/O classes, and going
//!   past rlimits, disk quotas and the filesystem's reserved blocks, would let
//!   one tenant starve the others.
//! - `LINUX_IMMUTABLE`: immutable or append-only files in its writable layer
//!   would keep the host from deleting the container.
//! - `LEASE`: a lease on a bind-mounted guest file stalls the host's writes
//!   to it.
//! - `SYSLOG`, `AUDIT_READ`, `AUDIT_CONTROL`, `MAC_ADMIN`, `MAC_OVERRIDE`,
//!   `BPF`, `PERFMON`, `CHECKPOINT_RESTORE`: the kernel log, the audit and LSM
//!   subsystems, eBPF and perf are host-wide and read or change what other
//!   tenants do; checkpoint/restore is not needed by anything this host runs.
//! - `ALL`: everything above.
//!
//! Image properties (tenant-owned) cannot add capabilities at all.

/// The capabilities a flavor may add, without the `CAP_` prefix.
pub const TENANT_SAFE: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// A capability a flavor asked for that is not handed to tenants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("capability {name:?} is not tenant-safe; allowed: {}", TENANT_SAFE.join(","))]
pub struct NotTenantSafe {
    /// The capability as the flavor spelled it.
    pub name: String,
}

/// The capability names of a `docker:capabilities` value, normalised
/// (uppercase, no `CAP_` prefix, in order, without duplicates), each one in
/// [`TENANT_SAFE`]. Separators are commas; blanks around names are ignored.
pub fn parse_flavor_capabilities(value: &str) -> Result<Vec<String>, NotTenantSafe> {
    let mut out: Vec<String> = Vec::new();
    for raw in value.split(',') {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            continue;
        }
        let upper = trimmed.to_ascii_uppercase();
        let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if !TENANT_SAFE.contains(&name) {
            return Err(NotTenantSafe { name: trimmed.to_string() });
        }
        if !out.iter().any(|c| c == name) {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised() {
        assert_eq!(parse_flavor_capabilities(" net_raw, CAP_IPC_LOCK,,NET_RAW ").unwrap(), ["NET_RAW", "IPC_LOCK"]);
        assert!(parse_flavor_capabilities("").unwrap().is_empty());
    }

    #[test]
    fn flavor_cannot_grant_escape_capabilities() {
        for bad in [
            "SYS_ADMIN",
            "cap_sys_admin",
            "ALL",
            "all",
            "NET_ADMIN",
            "SYS_PTRACE",
            "DAC_READ_SEARCH",
            "SYS_MODULE",
            "NET_RAW;SYS_ADMIN",
            "NET_RAW SYS_ADMIN",
            "SYS_ADMIN\u{0}",
            "CAP_CAP_CHOWN",
            "ſys_admin",
        ] {
            let e = parse_flavor_capabilities(&format!("CHOWN,{bad}")).unwrap_err();
            assert_eq!(e.name, bad.trim());
            let text = e.to_string();
            assert!(text.contains(&format!("{:?}", bad.trim())) && text.contains("NET_BIND_SERVICE"), "{text}");
        }
    }
}
