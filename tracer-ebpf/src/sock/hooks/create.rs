//! `cgroup/sock_create`: a TCP or UDP socket was just made, in its creator's `socket()` call.
//! The fd is not known yet (the kernel installs it after the hook).
use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use tracer_common::kind;

use super::{caller_selected, report, Caller, Hook, Remote};
use crate::{maps::REPORTED, sk::SkCommon};

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // The context is the new `struct sock` itself (a `bpf_sock` view of it).
    let _ = on_create(ctx.sock as u64);
    1 // always allow: 0 would refuse the socket to its creator
}

#[inline(always)]
fn on_create(sk: u64) -> Option<()> {
    if !caller_selected(Caller::Owner) {
        return None;
    }
    if filt!(metrics_only) != 0 {
        // A new socket at an address a freed one had: not "already reported".
        let _ = REPORTED.remove(sk);
    }
    let mut common = SkCommon::empty();
    common.load(sk)?;
    let hook = Hook {
        kind: kind::SOCKET,
        sk,
        caller: Caller::Owner,
        flags: 0,
        arg: 0,
        remote: Remote::NONE,
    };
    // `serve` only counts it: its socket table learns a socket's owner from the calls that
    // give it ports (bind, connect, a datagram) and from its release.
    report(&hook, &common, filt!(metrics_only) != 0);
    Some(())
}
