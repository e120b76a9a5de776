//! Programs that do nothing, one per kind of hook the socket object uses: `tracer floor`
//! attaches them where the real ones go, so the benchmark's floor row measures what the hooks
//! themselves cost (the kernel running a program there) apart from what tracer's programs do.
//! Loaded only by `tracer floor`; every one allows, as the real ones do.
use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr, raw_tracepoint, sock_ops, tracepoint},
    programs::{
        RawTracePointContext, SockAddrContext, SockContext, SockOpsContext, TracePointContext,
    },
};

#[cgroup_sock(sock_create)]
pub fn floor_sock_create(_ctx: SockContext) -> i32 {
    1
}

#[cgroup_sock(post_bind4)]
pub fn floor_post_bind4(_ctx: SockContext) -> i32 {
    1
}

#[cgroup_sock(post_bind6)]
pub fn floor_post_bind6(_ctx: SockContext) -> i32 {
    1
}

#[cgroup_sock(sock_release)]
pub fn floor_sock_release(_ctx: SockContext) -> i32 {
    1
}

#[cgroup_sock_addr(bind4)]
pub fn floor_bind4(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(bind6)]
pub fn floor_bind6(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(sendmsg4)]
pub fn floor_sendmsg4(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(sendmsg6)]
pub fn floor_sendmsg6(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(recvmsg4)]
pub fn floor_recvmsg4(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(recvmsg6)]
pub fn floor_recvmsg6(_ctx: SockAddrContext) -> i32 {
    1
}

#[sock_ops]
pub fn floor_tcp_ops(_ctx: SockOpsContext) -> u32 {
    1
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn floor_inet_sock_set_state(_ctx: RawTracePointContext) -> i32 {
    0
}

/// One program for every syscall tracepoint (attached once per tracepoint).
#[tracepoint]
pub fn floor_syscall(_ctx: TracePointContext) -> u32 {
    0
}
