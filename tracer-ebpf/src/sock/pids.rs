//! Following `--pid` into children: a forked child of a selected process is selected too, and
//! a selected process leaves `FILTER_PIDS` when its task is freed.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use tracer_common::counter;

use crate::maps::{bump, FILTER_PIDS};

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    if filt!(by_pid) == 0 {
        return 0;
    }
    // The forking task is current; its tgid is the parent process even when a worker thread
    // forks (the record's parent_pid would be that thread's id).
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: `read_at` reads through `bpf_probe_read`, which fails cleanly (Err) outside the
    // record; the offset of `child_pid` comes from this tracepoint's format file.
    let child: u32 = unsafe { ctx.read_at(off!(tp_fork_child_pid) as usize) }.unwrap_or(0);
    // SAFETY: only whether the key is present is used, never the value behind the reference.
    if unsafe { FILTER_PIDS.get(parent) }.is_some() && FILTER_PIDS.insert(child, 1, 0).is_ok() {
        bump(counter::FILTER_INSERTED);
    }
    0
}

/// A selected process is gone: its pid leaves the selection, so the map holds live processes
/// only and a reused pid is not selected by accident. Not at `sched_process_exit`: that fires
/// before the exiting task's files are closed (its sockets' releases would be filtered out)
/// and when a main thread exits while other threads go on. `sched_process_free` fires when
/// the task is freed; a task whose pid is a selected tgid is that process's leader, freed
/// only once the whole thread group is gone.
#[tracepoint]
pub fn sched_process_free(ctx: TracePointContext) -> u32 {
    if filt!(by_pid) == 0 {
        return 0;
    }
    // SAFETY: `read_at` reads through `bpf_probe_read`, which fails cleanly (Err) outside the
    // record; the offset of `pid` comes from this tracepoint's format file.
    let pid: u32 = unsafe { ctx.read_at(off!(tp_free_pid) as usize) }.unwrap_or(0);
    if pid != 0 && FILTER_PIDS.remove(pid).is_ok() {
        bump(counter::FILTER_REMOVED);
    }
    0
}
