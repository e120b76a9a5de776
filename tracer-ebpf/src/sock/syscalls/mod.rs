//! The syscall tracepoints (`syscalls:sys_enter_*` / `sys_exit_*`), one module per family of
//! calls, and what they share: reading a record's arguments and return value, and the two
//! shapes most calls take (enter on an fd, exit on the same socket).
use aya_ebpf::{programs::TracePointContext, EbpfContext};
use tracer_common::kind;
use tracer_ebpf::window::Window;

use crate::{
    pending::{begin, complete, finish, pending_sock},
    sk::{fill_from_sock, sock_of_fd, SkCommon},
};

mod bind_connect;
mod close;
mod listen_accept;
mod socket;
mod udp;

/// A `syscalls:sys_enter_*` record up to and including argument `N - 3` (args start at 16).
#[inline(always)]
pub fn args<const N: usize>(ctx: &TracePointContext) -> Window<N> {
    let mut window = Window::empty();
    // A tracepoint's own record cannot fail to read; if it did, the probe zeroed the buffer.
    let _ = window.load(ctx.as_ptr() as u64);
    window
}

/// Argument `n` of a `syscalls:sys_enter_*` record read by [`args`] (0 if outside it).
#[inline(always)]
pub fn arg<const N: usize>(args: &Window<N>, n: u64) -> u64 {
    args.get::<u64>(off!(tp_syscall_args) + 8 * n).unwrap_or(0)
}

/// A `syscalls:sys_exit_*` record's return value (0 if unreadable).
#[inline(always)]
pub fn ret_of(ctx: &TracePointContext) -> i64 {
    // SAFETY: `read_at` reads through `bpf_probe_read`, which fails cleanly (Err) outside the
    // record; the offset comes from the tracepoint's format file.
    unsafe { ctx.read_at::<i64>(off!(tp_syscall_ret) as usize) }.unwrap_or(0)
}

/// The enter of a call on a socket fd (listen, shutdown, close): its second argument (backlog,
/// how) kept in `arg`; for close, the socket read now, since the fd is gone at exit.
#[inline(always)]
pub fn enter_on_fd(ctx: &TracePointContext, ev_kind: u16) {
    let a = args::<4>(ctx);
    let fd = arg(&a, 0) as i32 as i64;
    let mut common = SkCommon::empty();
    let Some(sk) = sock_of_fd(fd, &mut common) else {
        return;
    };
    let with_arg = ev_kind != kind::CLOSE;
    let value = if with_arg {
        arg(&a, 1) as i32 as i64
    } else {
        0
    };
    let port_before = common.get(off!(skc_num)).unwrap_or(0);
    let Some(p) = begin(ev_kind, fd, 0, 0, value, sk, port_before) else {
        return;
    };
    if ev_kind == kind::CLOSE {
        // The fd is gone at exit: read the socket now.
        fill_from_sock(&mut p.ev, sk, &common);
    }
}

/// The exit of a call whose socket the enter found: completed from that same socket.
#[inline(always)]
pub fn exit_on_same_fd(ctx: &TracePointContext, ev_kind: u16) {
    if let Some((id, p)) = finish(ev_kind) {
        let mut common = SkCommon::empty();
        let sk = pending_sock(p, &mut common);
        complete(id, p, ret_of(ctx), sk, &common);
    }
}
