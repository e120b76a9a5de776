//! listen(2), accept(2) and accept4(2): a socket starts listening; a connection comes out of
//! its queue as a new socket, described with its listener as `parent_sk`.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use tracer_common::{flag, kind};

use super::{arg, args, enter_on_fd, exit_on_same_fd, ret_of};
use crate::{
    latency,
    pending::{begin, complete, end_pending, finish, pending_sock},
    sk::{sock_of_fd, SkCommon},
};

#[tracepoint]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    enter_on_fd(&ctx, kind::LISTEN);
    0
}

#[tracepoint]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    exit_on_same_fd(&ctx, kind::LISTEN);
    0
}

#[inline(always)]
fn enter_accept(ctx: &TracePointContext) {
    let a = args::<3>(ctx);
    let fd = arg(&a, 0) as i32 as i64;
    let mut common = SkCommon::empty();
    let Some(sk) = sock_of_fd(fd, &mut common) else {
        return;
    };
    let port = common.get(off!(skc_num)).unwrap_or(0);
    begin(kind::ACCEPT, fd, 0, 0, 0, sk, port);
}

#[inline(always)]
fn exit_accept(ctx: &TracePointContext) {
    let ret = ret_of(ctx);
    let Some((id, p)) = finish(kind::ACCEPT) else {
        // The enter was missed: the caller was already blocked in accept() when tracing
        // started. The new fd alone still says which connection was accepted.
        accept_without_enter(ret);
        return;
    };
    if ret == -11 {
        // EAGAIN: a non-blocking server polling an empty queue, not an event.
        end_pending(id);
        return;
    }
    p.ev.parent_sk = p.ev.sk;
    let mut common = SkCommon::empty();
    match sock_of_fd(ret, &mut common) {
        Some(sk) => {
            if filt!(by_pid) == 0 && filt!(by_comm) == 0 && filt!(by_cgroup) == 0 {
                // Counted here only without a process filter, as transitions are.
                latency::accepted(sk, common.get(off!(skc_family)).unwrap_or(0));
            }
            complete(id, p, ret, sk, &common)
        }
        None => {
            // Failed accept: describe the listener.
            let listener = pending_sock(p, &mut common);
            complete(id, p, ret, listener, &common);
        }
    }
}

#[inline(always)]
fn accept_without_enter(ret: i64) {
    let mut common = SkCommon::empty();
    let Some(sk) = sock_of_fd(ret, &mut common) else {
        return;
    };
    // port_before 1: the accepted socket's port is the listener's, never chosen here.
    let Some(p) = begin(kind::ACCEPT, -1, 0, 0, 0, 0, 1) else {
        return;
    };
    p.ev.flags |= flag::ENTER_MISSED;
    complete(bpf_get_current_pid_tgid(), p, ret, sk, &common);
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    enter_accept(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    exit_accept(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    enter_accept(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    exit_accept(&ctx);
    0
}
