//! Start-up checks: root, tracefs (mounted here if missing), cgroup v2, BTF, memlock.
//! Each failure is one sentence saying what is missing and what to do.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::kernel::tracefs::TRACEFS;

pub fn require_root(subcommand: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot(subcommand.to_string()))
    }
}

/// Mounts tracefs at /sys/kernel/tracing if it is not there yet. aya looks for tracefs once per
/// process and caches the answer, so this must run before the first attach.
pub fn ensure_tracefs() -> Result<bool> {
    let events = Path::new(TRACEFS).join("events");
    if events.is_dir() {
        return Ok(false);
    }
    nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| Error::TracefsMount(e.to_string()))?;
    if !events.is_dir() {
        return Err(Error::TracefsMount("no events/ after mounting".into()));
    }
    Ok(true)
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (hybrid systems put it at
/// /sys/fs/cgroup/unified, unified ones at /sys/fs/cgroup).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .map_err(|e| Error::io("reading /proc/self/mountinfo", std::io::Error::other(e)))?;
    mounts
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .ok_or(Error::NoCgroup2)
}

/// BPF memory is memcg-accounted on modern kernels; raising RLIMIT_MEMLOCK only matters on old
/// ones and may be refused (EPERM) in containers, which is fine.
pub fn raise_memlock() {
    let _ = nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_MEMLOCK,
        nix::sys::resource::RLIM_INFINITY,
        nix::sys::resource::RLIM_INFINITY,
    );
}

/// Once every program is loaded and attached, the agent keeps only the capabilities it still
/// uses: SYS_ADMIN (entering other network namespaces to read their port range), SYS_PTRACE and
/// DAC_READ_SEARCH (reading other processes' /proc entries), DAC_OVERRIDE, and KILL (passing a
/// signal on to a traced command running as another user). Loading programs (BPF, PERFMON),
/// network administration, module loading, changing uids and the rest are gone for the rest of
/// the run, and no-new-privs stops anything it might exec from gaining them back. Where the
/// kernel refuses (no capabilities to drop, an old kernel), it carries on.
pub fn drop_privileges() {
    use caps::{CapSet, Capability};
    let keep = [
        Capability::CAP_SYS_ADMIN,
        Capability::CAP_SYS_PTRACE,
        Capability::CAP_DAC_READ_SEARCH,
        Capability::CAP_DAC_OVERRIDE,
        Capability::CAP_KILL,
    ];
    let Ok(permitted) = caps::read(None, CapSet::Permitted) else {
        return;
    };
    let kept: caps::CapsHashSet = permitted
        .iter()
        .copied()
        .filter(|c| keep.contains(c))
        .collect();
    for cap in permitted.difference(&kept) {
        let _ = caps::drop(None, CapSet::Bounding, *cap);
    }
    let _ = caps::set(None, CapSet::Inheritable, &caps::CapsHashSet::new());
    let _ = caps::set(None, CapSet::Effective, &kept);
    let _ = caps::set(None, CapSet::Permitted, &kept);
    let _ = nix::sys::prctl::set_no_new_privs();
    tracing::debug!("capabilities kept: {kept:?}");
}
