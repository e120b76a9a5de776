//! What the user asked to see: per-process filters (checked at syscall enter, before anything
//! is stored), per-socket filters (checked once the endpoints are known), and the caller's
//! names that `--comm` compares and every event carries.
use core::ffi::c_void;

use aya_ebpf::helpers::generated as gen;
use tracer_common::{flag, kind, SockEvent};
use tracer_ebpf::{set, window::read};

use crate::{
    maps::{CGROUP_VERDICTS, FILTER, FILTER_PIDS},
    sk::current_task,
};

/// Cheap per-process filters, checked at syscall enter before anything is stored.
#[inline(always)]
pub fn process_selected(tgid: u32) -> bool {
    // SAFETY: only whether the key is present is used, never the value behind the reference.
    if filt!(by_pid) != 0 && unsafe { FILTER_PIDS.get(tgid) }.is_none() {
        return false;
    }
    if filt!(by_cgroup) != 0 {
        // SAFETY: only whether the value is 0 is read from the reference.
        let cgroup = current_cgroup();
        if unsafe { CGROUP_VERDICTS.get(cgroup) }.is_some_and(|v| *v == 0) {
            return false;
        }
    }
    if filt!(by_comm) != 0 {
        // --comm names a process, as `ps -C` does: its leader's name, not the thread's.
        let mut comm = [0u8; 16];
        process_comm(&mut comm);
        let want = tracer_ebpf::global!(FILTER.comm);
        if comm != want {
            return false;
        }
    }
    true
}

/// The calling process's name: its thread-group leader's `comm` (what `ps` and `ss` show),
/// read through `current->group_leader`; the thread's own name if that read fails.
#[inline(always)]
pub fn process_comm(out: &mut [u8; 16]) {
    let task = current_task();
    let leader: u64 = read(task, off!(task_group_leader)).unwrap_or(0);
    // SAFETY: `out` is 16 writable bytes and the helper writes at most 16 into it; it fails
    // cleanly (non-zero) on a bad kernel address. The source is only read by the helper.
    let failed = leader == 0
        || unsafe {
            gen::bpf_probe_read_kernel(
                out.as_mut_ptr() as *mut c_void,
                16,
                (leader + off!(task_comm)) as *const c_void,
            )
        } != 0;
    if failed {
        // SAFETY: `out` is 16 writable bytes, the length given; the helper cannot fail.
        unsafe { gen::bpf_get_current_comm(out.as_mut_ptr() as *mut c_void, 16) };
    }
}

/// Both names of the caller into an event, the process's and the thread's, and its cgroup.
#[inline(always)]
pub fn fill_names(ev: &mut SockEvent) {
    process_comm(&mut ev.comm);
    // SAFETY: `ev.thread` is 16 writable bytes, the length given; the helper cannot fail.
    unsafe { gen::bpf_get_current_comm(ev.thread.as_mut_ptr() as *mut c_void, 16) };
    set!(ev.cgroup, current_cgroup());
}

/// The calling task's cgroup: its cgroup v2 id, or (without cgroup v2) the id of its cgroup in
/// the v1 controller hierarchy user space chose (`task->cgroups->subsys[N]->cgroup->kn->id`,
/// the inode of its directory there). 0 when a read fails.
#[inline(always)]
pub fn current_cgroup() -> u64 {
    let subsys = tracer_ebpf::global!(crate::maps::OFFSETS.cgroup_v1_subsys) as u64;
    if subsys == 0 {
        // SAFETY: a helper without arguments; it reads the current task's cgroup.
        return unsafe { gen::bpf_get_current_cgroup_id() };
    }
    let id = read::<u64>(current_task(), off!(task_cgroups))
        .and_then(|css_set| read::<u64>(css_set, off!(css_set_subsys) + 8 * (subsys - 1)))
        .and_then(|css| read::<u64>(css, off!(css_cgroup)))
        .and_then(|cgroup| read::<u64>(cgroup, off!(cgroup_kn)))
        .and_then(|kn| read::<u64>(kn, off!(kernfs_node_id)));
    id.unwrap_or(0)
}

/// The protocol and family filters (--proto, -4/-6) alone.
#[inline(always)]
pub fn selected_kind(protocol: u8, family: u16) -> bool {
    let want_protocol = filt!(protocol);
    let want_family = filt!(family);
    (want_protocol == 0 || protocol == want_protocol) && (want_family == 0 || family == want_family)
}

/// Socket-level filters, checked once the endpoints are known.
#[inline(always)]
pub fn selected(protocol: u8, family: u16, netns: u32, lport: u16, rport: u16) -> bool {
    if !selected_kind(protocol, family) {
        return false;
    }
    let want_netns = filt!(netns);
    if want_netns != 0 && netns != want_netns {
        return false;
    }
    let count = filt!(port_count) as usize;
    if count != 0 {
        let ports = tracer_ebpf::global!(FILTER.ports);
        let mut hit = false;
        let mut i = 0;
        while i < tracer_common::MAX_PORT_FILTERS {
            if i < count && (ports[i] == lport || ports[i] == rport) {
                hit = true;
            }
            i += 1;
        }
        if !hit {
            return false;
        }
    }
    true
}

#[inline(always)]
pub fn socket_selected(ev: &SockEvent) -> bool {
    selected(ev.protocol, ev.family, ev.netns, ev.lport, ev.rport)
}

/// `serve`: a UDP send or receive is only counted, unless the kernel bound the socket's port
/// in it (autobind), which the socket table needs for the ephemeral-port gauge.
#[inline(always)]
pub fn only_counted(ev: &SockEvent) -> bool {
    filt!(metrics_only) != 0
        && ev.kind >= kind::SENDTO
        && ev.kind <= kind::RECVMSG
        && ev.flags & flag::KERNEL_CHOSE_PORT == 0
}
