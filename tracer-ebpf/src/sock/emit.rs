//! What leaves the kernel: an event counted for metrics (`STATS`, per CPU, before the ring,
//! so a full ring loses no count) and copied to the ring, waking the agent only as often as it
//! asked.
use tracer_common::{counter, kind, tcp_state, SockEvent, IPPROTO_TCP};
use tracer_ebpf::maps::EVENTS;

use crate::maps::{bump, stat};

/// Connect errnos a TCP handshake produces: the SYN_SENT → CLOSE transition counts them
/// (with EINPROGRESS, which is no failure at all).
#[inline(always)]
fn handshake_errno(ev: &SockEvent) -> bool {
    const EINPROGRESS: i64 = 115;
    const ECONNREFUSED: i64 = 111;
    const ETIMEDOUT: i64 = 110;
    const ECONNRESET: i64 = 104;
    let errno = -ev.ret;
    errno == EINPROGRESS
        || (ev.protocol == IPPROTO_TCP
            && (errno == ECONNREFUSED || errno == ETIMEDOUT || errno == ECONNRESET))
}

/// Counts an event for metrics: per-CPU, before the ring buffer, so a full ring loses no count.
/// Transitions are counted by [`count_state`].
#[inline(always)]
pub fn count(ev: &SockEvent) {
    use tracer_common::stats;
    if ev.kind >= kind::DATA || ev.kind == kind::STATE {
        return;
    }
    stat(stats::event_index(ev.kind, ev.protocol, ev.family));
    if ev.ret < 0 && ev.kind == kind::CONNECT && !handshake_errno(ev) {
        stat(stats::CONNECT_ERRNOS + stats::errno_slot(ev.ret));
    } else if ev.ret < 0 && ev.kind == kind::BIND {
        stat(stats::BIND_ERRNOS + stats::errno_slot(ev.ret));
    }
}

/// Counts a TCP transition for metrics.
#[inline(always)]
pub fn count_state(family: u16, old: u8, new: u8, sk_err: i32) {
    use tracer_common::stats;
    stat(stats::event_index(kind::STATE, IPPROTO_TCP, family));
    stat(stats::TRANSITIONS + (old as u32 & 15) * 16 + (new as u32 & 15));
    // A handshake that failed (refused, timed out, unreachable): counted here, where both
    // blocking and non-blocking connects end up, not at the syscall.
    if old == tcp_state::SYN_SENT && new == tcp_state::CLOSE && sk_err > 0 {
        stat(stats::CONNECT_ERRNOS + stats::errno_slot(-(sk_err as i64)));
    }
}

/// Submit flags: wake the agent only once `FILTER.wakeup_bytes` wait in the ring (when set).
#[inline(always)]
pub fn wakeup() -> u64 {
    tracer_ebpf::maps::wakeup_flags(filt!(wakeup_bytes) as u64)
}

/// Counts `ev` and copies it to the ring (the helper copies in the kernel: no per-byte copy
/// loop in the program).
#[inline(always)]
pub fn emit(ev: &SockEvent) {
    count(ev);
    if EVENTS.output::<SockEvent>(ev, wakeup()).is_err() {
        bump(counter::LOST);
    }
}
