//! A successful bind: `cgroup/bind4|6` runs before it with the caller's address (to learn
//! whether the caller named a port), `cgroup/post_bind4|6` after the kernel took the port.
//! A bind the kernel refused (EADDRINUSE …) reaches no post-bind hook: the socket path does
//! not see failed binds (the syscall path does).
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use tracer_common::{flag, kind};

use super::{caller_selected, report, Caller, Hook, Remote};
use crate::{maps::BIND_PORTS, sk::SkCommon};

/// The port the caller asked for, kept for the post-bind hook of the same thread.
#[inline(always)]
fn before_bind(ctx: &SockAddrContext) {
    if !caller_selected(Caller::Owner) {
        return;
    }
    // SAFETY: the context is the kernel's `bpf_sock_addr`; the verifier checks the access.
    let port = u16::from_be(unsafe { (*ctx.sock_addr).user_port } as u16);
    let _ = BIND_PORTS.insert(bpf_get_current_pid_tgid(), port, 0);
}

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    before_bind(&ctx);
    1 // always allow
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    before_bind(&ctx);
    1 // always allow
}

#[inline(always)]
fn after_bind(sk: u64) -> Option<()> {
    if !caller_selected(Caller::Owner) {
        return None;
    }
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let asked = unsafe { BIND_PORTS.get(id) }.copied();
    let _ = BIND_PORTS.remove(id);
    let mut common = SkCommon::empty();
    common.load(sk)?;
    let chose = asked == Some(0);
    let hook = Hook {
        kind: kind::BIND,
        sk,
        caller: Caller::Owner,
        flags: if chose { flag::KERNEL_CHOSE_PORT } else { 0 },
        arg: 0,
        remote: Remote::NONE,
    };
    report(&hook, &common, false);
    Some(())
}

#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    let _ = after_bind(ctx.sock as u64);
    1 // always allow: 0 would undo the bind
}

#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    let _ = after_bind(ctx.sock as u64);
    1 // always allow: 0 would undo the bind
}
