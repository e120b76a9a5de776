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
