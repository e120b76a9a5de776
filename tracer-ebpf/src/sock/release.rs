//! A socket's release (`cgroup/sock_release`, passive: the kernel ignores its verdict): the
//! last reference to the socket is gone. One RELEASE event, preceded by the socket's DATA
//! totals when `tracer trace` kept them.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid},
    macros::cgroup_sock,
    programs::SockContext,
};
use tracer_common::{counter, kind, SockEvent, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use tracer_ebpf::{maps::EVENTS, set, time::now_ns};

use crate::{
    data::data_record,
    emit::{count, wakeup},
    filter::{fill_names, process_selected, socket_selected},
    maps::{bump, DATA, REPORTED},
    sk::{fill_from_sock, SkCommon},
};

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    let sock = ctx.sock;
    // SAFETY: `sock` is the program's context, a `struct bpf_sock`; the verifier checks each
    // field access against the fields `sock_release` may read (family and protocol are).
    let (family, protocol) = unsafe { ((*sock).family as u16, (*sock).protocol as u8) };
    if (family == AF_INET || family == AF_INET6)
        && (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP)
    {
        // The context is the `struct sock` itself: read its endpoints like any other socket.
        let _ = try_release(sock as u64, protocol);
    }
    1 // always allow (the kernel ignores this verdict for sock_release anyway)
}

#[inline(always)]
fn try_release(sk: u64, protocol: u8) -> Option<()> {
    if filt!(metrics_only) != 0 && protocol == IPPROTO_UDP {
        // The socket path's "already reported" mark must not outlive the socket (its
        // address is soon another socket's), whoever releases it.
        let _ = REPORTED.remove(sk);
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if !process_selected((pid_tgid >> 32) as u32) {
        return None;
    }
    let mut common = SkCommon::empty();
    common.load(sk)?;
    // SAFETY: the totals are copied out at once; a concurrent add can at worst be missed
    // (it would have come after the release anyway).
    if let Some(totals) = unsafe { DATA.get(sk) } {
        // `tracer trace`: the socket's data totals travel just before its release.
        let totals = *totals;
        if DATA.remove(sk).is_ok() {
            bump(counter::DATA_REMOVED);
        }
        data_record(sk, &common, pid_tgid, &totals);
    }
    // Written into the ring the way the state program does, with fill_from_sock's fields.
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        // Ring full: still counted, if the filters would have taken it.
        let mut ev = SockEvent {
            kind: kind::RELEASE,
            ..SockEvent::default()
        };
        fill_from_sock(&mut ev, sk, &common);
        if socket_selected(&ev) {
            count(&ev);
            bump(counter::LOST);
        }
        return None;
    };
    // SAFETY: `reserve` returned room for one `SockEvent` in the ring (8-byte aligned), ours
    // alone until `submit`/`discard`. `release_header` and
    // `fill_from_sock` write every field before anything reads it
    // or the record is submitted; `SockEvent` is plain integers, so no write drops a value.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    release_header(ev, pid_tgid);
    fill_from_sock(ev, sk, &common);
    if !socket_selected(ev) {
        entry.discard(0);
        return None;
    }
    count(ev);
    entry.submit(wakeup());
    Some(())
}

/// The fields of a RELEASE event that `fill_from_sock` does not write.
#[inline(always)]
pub fn release_header(ev: &mut SockEvent, pid_tgid: u64) {
    set!(ev.kind, kind::RELEASE);
    set!(ev.old_state, 0);
    set!(ev.flags, 0);
    set!(ev._pad[0], 0);
    set!(ev._pad[1], 0);
    set!(ev._pad[2], 0);
    set!(ev.pid, (pid_tgid >> 32) as u32);
    set!(ev.tid, pid_tgid as u32);
    set!(ev.uid, bpf_get_current_uid_gid() as u32);
    set!(ev.fd, 0);
    set!(ev.sk_err, 0);
    set!(ev.ts_ns, now_ns());
    set!(ev.parent_sk, 0);
    set!(ev.ret, 0);
    set!(ev.arg, 0);
    fill_names(ev);
}
