//! bind(2) and connect(2): the caller names an address (the local one for bind, the peer for
//! connect), kept as the user gave it; the exit reads what the kernel made of it.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{flag, kind};
use tracer_ebpf::mem::put16;

use super::{arg, args, exit_on_same_fd};
use crate::{
    pending::begin,
    sk::{sock_of_fd, SkCommon},
    sockaddr::read_user_sockaddr,
};

#[inline(always)]
fn enter_with_sockaddr(ctx: &TracePointContext, ev_kind: u16, user_is_local: bool) {
    let a = args::<5>(ctx);
    let fd = arg(&a, 0) as i32 as i64;
    let mut common = SkCommon::empty();
    let Some(sk) = sock_of_fd(fd, &mut common) else {
        return;
    };
    let uaddr = arg(&a, 1);
    let len = arg(&a, 2) as i32 as i64;
    let port_before = common.get(off!(skc_num)).unwrap_or(0);
    let Some(p) = begin(ev_kind, fd, uaddr, len as u64, 0, sk, port_before) else {
        return;
    };
    match read_user_sockaddr(uaddr, len) {
        Some((port, addr)) => {
            if user_is_local {
                p.ev.lport = port;
                put16(&mut p.ev.laddr, addr);
                p.ev.flags |= flag::LOCAL_FROM_USER;
            } else {
                p.ev.rport = port;
                put16(&mut p.ev.raddr, addr);
                p.ev.flags |= flag::REMOTE_FROM_USER;
            }
        }
        None => p.ev.flags |= flag::BAD_SOCKADDR,
    }
}

#[tracepoint]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    enter_with_sockaddr(&ctx, kind::BIND, true);
    0
}

#[tracepoint]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    exit_on_same_fd(&ctx, kind::BIND);
    0
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    enter_with_sockaddr(&ctx, kind::CONNECT, false);
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    exit_on_same_fd(&ctx, kind::CONNECT);
    0
}
