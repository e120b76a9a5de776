//! Start-up checks: root, tracefs (mounted here if missing), cgroup v2, BTF, memlock; and the
//! capability drop once everything is attached. Each failure is one sentence saying what is
//! missing and what to do.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use caps::{CapSet, Capability};

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
    // Bytes, not text: a user's FUSE mount with a non-UTF-8 path must not hide cgroup v2.
    super::mountinfo::mounts()
        .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?
        .into_iter()
        .find(|m| m.fs_type == b"cgroup2")
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

/// What a mode still does once its programs are attached, each need keeping one capability.
/// Everything else (BPF, PERFMON, NET_ADMIN for loading and linking, SETUID, SYS_MODULE, DAC_*,
/// …) is gone for the rest of the run; docs/security.md has the table per mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    /// CAP_SYS_ADMIN: setns(2) into network namespaces met after attaching (reading their
    /// `ip_local_port_range`, dumping their sockets after lost events, linking the NAT
    /// programs into namespaces created later).
    pub enter_netns: bool,
    /// CAP_SYS_PTRACE: opening `/proc/PID/ns/net` of other users' processes (the way into a
    /// socket owner's namespace, and how a namespace is told apart from a vanished one).
    pub other_users_ns: bool,
    /// CAP_NET_ADMIN: subscribing to conntrack events in namespaces found after attaching
    /// (`--all-netns`, `--nat-all-netns`); netlink conntrack groups need it.
    pub conntrack_later: bool,
    /// CAP_KILL: passing SIGINT/SIGTERM on to a traced command that runs as another user.
    pub signal_command: bool,
}

impl Keep {
    /// Nothing at all: helper threads that only read what is already open.
    pub const NOTHING: Keep = Keep {
        enter_netns: false,
        other_users_ns: false,
        conntrack_later: false,
        signal_command: false,
    };

    /// `watch` and `serve`: socket events come from every namespace, and each namespace's
    /// ephemeral range is read from inside it.
    pub fn watch(nat_all_netns: bool) -> Keep {
        Keep {
            enter_netns: true,
            other_users_ns: true,
            conntrack_later: nat_all_netns,
            signal_command: false,
        }
    }

    /// `nat`: the namespaces are fixed at start unless `--all-netns`; a target given as
    /// `/proc/PID/ns/net` is checked by that path while the run lasts.
    pub fn nat(all_netns: bool, proc_targets: bool) -> Keep {
        Keep {
            enter_netns: all_netns,
            other_users_ns: all_netns || proc_targets,
            conntrack_later: all_netns,
            signal_command: false,
        }
    }

    /// `trace`: port ranges of the namespaces the traced sockets live in, and signals for a
    /// command started as another user.
    pub fn trace(command_as_other_user: bool) -> Keep {
        Keep {
            signal_command: command_as_other_user,
            ..Keep::watch(false)
        }
    }

    /// `ports --live`: like `watch` (port ranges of every namespace).
    pub fn ports_live() -> Keep {
        Keep::watch(false)
    }

    pub fn capabilities(&self) -> Vec<Capability> {
        [
            (self.enter_netns, Capability::CAP_SYS_ADMIN),
            (self.other_users_ns, Capability::CAP_SYS_PTRACE),
            (self.conntrack_later, Capability::CAP_NET_ADMIN),
            (self.signal_command, Capability::CAP_KILL),
        ]
        .into_iter()
        .filter_map(|(kept, cap)| kept.then_some(cap))
        .collect()
    }
}

/// The mode's keep-set, chosen by `main` before any thread exists.
static PLANNED: OnceLock<Keep> = OnceLock::new();

/// Records what this run keeps after attaching (once, before the command starts). Without a
/// plan, [`drop_privileges`] keeps nothing.
pub fn plan(keep: Keep) {
    let _ = PLANNED.set(keep);
}

/// The planned keep-set (nothing if none was planned).
pub fn planned() -> Keep {
    PLANNED.get().copied().unwrap_or(Keep::NOTHING)
}

/// Once every program is loaded and attached, the calling thread keeps only the planned
/// capabilities, and no-new-privs stops anything it might exec from gaining any back.
/// Capabilities are per thread: threads started after this inherit the result, and every
/// long-lived thread started before it applies [`restrict_thread`] itself. Where the kernel
/// refuses (nothing to drop, an old kernel) it warns and carries on.
pub fn drop_privileges() {
    let keep = planned();
    match restrict_thread(keep) {
        Ok(()) => tracing::debug!("capabilities kept: {:?}", keep.capabilities()),
        Err(e) => tracing::warn!("dropping capabilities: {e}"),
    }
}

/// Drops the calling thread's capabilities to `keep`: the bounding set emptied (nothing this
/// thread execs can gain any), ambient and inheritable cleared, permitted and effective cut to
/// `keep`, and no-new-privs set. Idempotent; safe on any thread.
pub fn restrict_thread(keep: Keep) -> std::result::Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        // Not root (the command is about to say so): nothing to drop, and no right to change
        // the bounding set — a warning here would come before the error that matters.
        let _ = nix::sys::prctl::set_no_new_privs();
        return Ok(());
    }
    empty_bounding_set()?;
    let wanted: caps::CapsHashSet = keep.capabilities().into_iter().collect();
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| e.to_string())?;
    let kept: caps::CapsHashSet = permitted.intersection(&wanted).copied().collect();
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("ambient set: {e}"))?;
    let none = caps::CapsHashSet::new();
    // Effective before permitted: effective must stay a subset of permitted at every step.
    for (set, value) in [
        (CapSet::Inheritable, &none),
        (CapSet::Effective, &kept),
        (CapSet::Permitted, &kept),
    ] {
        caps::set(None, set, value).map_err(|e| format!("{set:?} set: {e}"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no-new-privs: {e}"))
}

/// Drops every capability still in the calling thread's bounding set (numbers, not names, so
/// capabilities newer than the `caps` crate go too). Dropping needs CAP_SETPCAP, so a thread
/// whose bounding set is already empty must not try.
fn empty_bounding_set() -> std::result::Result<(), String> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        if present < 0 {
            break; // past the kernel's last capability
        }
        // SAFETY: as above.
        if present == 1 && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            return Err(format!(
                "bounding set, capability {cap}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Capability::*;

    /// docs/security.md's table, mode by mode.
    #[test]
    fn each_mode_keeps_what_the_table_says() {
        assert_eq!(
            Keep::watch(false).capabilities(),
            [CAP_SYS_ADMIN, CAP_SYS_PTRACE]
        );
        assert_eq!(
            Keep::watch(true).capabilities(),
            [CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_NET_ADMIN]
        );
        assert_eq!(Keep::nat(false, false).capabilities(), []);
        assert_eq!(Keep::nat(false, true).capabilities(), [CAP_SYS_PTRACE]);
        assert_eq!(
            Keep::nat(true, false).capabilities(),
            [CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_NET_ADMIN]
        );
        assert_eq!(
            Keep::trace(true).capabilities(),
            [CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_KILL]
        );
        assert_eq!(
            Keep::trace(false).capabilities(),
            Keep::watch(false).capabilities()
        );
        assert_eq!(Keep::ports_live(), Keep::watch(false));
        assert_eq!(Keep::NOTHING.capabilities(), []);
    }
}
