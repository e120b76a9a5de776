//! UDP datagrams with an address: `cgroup/sendmsg4|6` (sendto/sendmsg with a destination; the
//! socket already has its port — the kernel autobinds before this hook) and
//! `cgroup/recvmsg4|6` (recvfrom/recvmsg that asked for the sender). Sends on a connected
//! socket carry no address and reach neither hook. `serve` only counts them, except the first
//! time a socket with a kernel-chosen port shows it (the socket table needs that port).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use tracer_common::{flag, kind, stats, AF_INET, AF_INET6, IPPROTO_UDP};
use tracer_ebpf::mem::address_of;

use super::{caller_selected, kernel_chose_port, report, Caller, Hook, Remote};
use crate::{
    filter::selected_kind,
    maps::{stat, REPORTED},
    sk::SkCommon,
};

#[inline(always)]
fn on_datagram(ctx: &SockAddrContext, ev_kind: u16, v6: bool) -> Option<()> {
    if !caller_selected(Caller::Owner) {
        return None;
    }
    // SAFETY: the context is the kernel's `bpf_sock_addr`; the verifier checks the access.
    // The address is only handed to probe reads.
    let sk = address_of(unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk });
    let metrics_only = filt!(metrics_only) != 0;
    // The socket's port as the context hands it (`bpf_sock.src_port`, a direct load): a
    // socket whose port changed since it was marked (disconnected, then autobound anew) is
    // looked at again. A --netns filter may stay: only selected sockets are marked, and a
    // socket never changes namespace; --port may not (each datagram has its own peer).
    // SAFETY: the context's `sk` is a socket pointer the verifier lets us read fields of.
    let port =
        unsafe { core::ptr::read_volatile(&(*(*ctx.sock_addr).__bindgen_anon_1.sk).src_port) }
            as u16;
    if metrics_only
        && filt!(port_count) == 0
        && port != 0
        // SAFETY: the value is copied out at once.
        && unsafe { REPORTED.get(sk) }.copied() == Some(port)
    {
        // Nothing left to report for this socket, and no filter that needs its fields: the
        // count, from the context alone (the socket's own family and protocol).
        // SAFETY: the context is the kernel's `bpf_sock_addr`; the verifier checks the access.
        let (family, protocol) = unsafe {
            let a = &*ctx.sock_addr;
            (a.family as u16, a.protocol as u8)
        };
        if protocol == IPPROTO_UDP
            && (family == AF_INET || family == AF_INET6)
            && selected_kind(protocol, family)
        {
            stat(stats::event_index(ev_kind, protocol, family));
        }
        return Some(());
    }
    let mut common = SkCommon::empty();
    common.load(sk)?;
    let chose = kernel_chose_port(sk, &common);
    // SAFETY: the value is copied out at once.
    let count_only = metrics_only && (!chose || unsafe { REPORTED.get(sk) }.copied() == Some(port));
    let hook = Hook {
        kind: ev_kind,
        sk,
        caller: Caller::Owner,
        flags: if chose { flag::KERNEL_CHOSE_PORT } else { 0 },
        arg: 0,
        remote: peer(ctx, v6),
    };
    if report(&hook, &common, count_only) && metrics_only && port != 0 {
        // Reported (a kernel-chosen port) or never to report (a bound one): counted only from
        // now on, while the socket keeps this port. A socket without one yet (a receive
        // before any bind) is not marked: its autobind is still to be reported.
        let _ = REPORTED.insert(sk, port, 0);
    }
    Some(())
}

/// The datagram's other end as the hook was handed it: the send's destination, or the
/// sender a receive reports. The v4 hooks may read only `user_ip4`, the v6 ones only
/// `user_ip6` (the verifier checks each access against the attach type).
#[inline(always)]
fn peer(ctx: &SockAddrContext, v6: bool) -> Remote {
    // SAFETY: the context is the kernel's `bpf_sock_addr`; the verifier checks each access.
    unsafe {
        let a = &*ctx.sock_addr;
        let port = u16::from_be(core::ptr::read_volatile(&a.user_port) as u16);
        let addr = if v6 {
            let w = [0, 1, 2, 3].map(|i| core::ptr::read_volatile(&a.user_ip6[i]) as u64);
            [w[0] | (w[1] << 32), w[2] | (w[3] << 32)]
        } else {
            [core::ptr::read_volatile(&a.user_ip4) as u64, 0]
        };
        Remote {
            addr,
            port,
            v4: !v6,
        }
    }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    let _ = on_datagram(&ctx, kind::SENDMSG, false);
    1 // always allow: 0 would fail the send with EPERM
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    let _ = on_datagram(&ctx, kind::SENDMSG, true);
    1 // always allow
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    let _ = on_datagram(&ctx, kind::RECVMSG, false);
    1 // always allow (the kernel requires 1 here)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    let _ = on_datagram(&ctx, kind::RECVMSG, true);
    1 // always allow
}
