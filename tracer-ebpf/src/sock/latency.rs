//! Latency histograms counted in the kernel (`STATS`), so `serve` needs no record per
//! connection: a connect's first SYN to its end (ESTABLISHED or failed), and on the syscall
//! path the wait in a listener's accept queue (the handshake completed to accept() returning
//! it). Starts wait in `STARTS`, keyed by socket: a socket is either connecting or queued.
use tracer_common::{counter, stats, tcp_state};
use tracer_ebpf::time::now_ns;

use crate::maps::{bump, stat, STARTS};

#[inline(always)]
fn start(sk: u64) {
    // SAFETY: only whether the key is present is used.
    let fresh = unsafe { STARTS.get(sk) }.is_none();
    // A connect again on the same socket restarts its clock (counted once: its removal is).
    if STARTS.insert(sk, now_ns(), 0).is_ok() && fresh {
        bump(counter::STARTS_INSERTED);
    }
}

/// The time since `sk`'s start, which it forgets.
#[inline(always)]
fn since_start(sk: u64) -> Option<u64> {
    // SAFETY: the value is copied at once; an LRU value stays valid memory for the run.
    let started = unsafe { STARTS.get(sk) }.copied()?;
    if STARTS.remove(sk).is_ok() {
        bump(counter::STARTS_REMOVED);
    }
    Some(now_ns().saturating_sub(started))
}

/// A TCP transition: a connect's start (CLOSE → SYN_SENT) or end (SYN_SENT → anything), and
/// on the syscall path a connection the kernel completed for a listener.
#[inline(always)]
pub fn transition(sk: u64, family: u16, old: u8, new: u8) {
    if new == tcp_state::SYN_SENT {
        start(sk);
    } else if old == tcp_state::SYN_SENT {
        let started = since_start(sk);
        // No port was ever found (EADDRNOTAVAIL): no SYN left, no handshake to time.
        let no_port = new == tcp_state::CLOSE
            && tracer_ebpf::window::read::<u16>(sk, off!(inet_sport)).unwrap_or(0) == 0;
        if let Some(ns) = started.filter(|_| !no_port) {
            let result = u32::from(new != tcp_state::ESTABLISHED);
            stat(
                stats::CONNECT_SECONDS
                    + (result * stats::FAMILIES + stats::family_slot(family))
                        * stats::LATENCY_BUCKETS
                    + stats::latency_bucket(ns),
            );
        }
    } else if old == tcp_state::SYN_RECV && new == tcp_state::ESTABLISHED {
        if filt!(syscall_path) != 0 {
            start(sk);
        }
    } else if new == tcp_state::CLOSE && filt!(syscall_path) != 0 {
        // Closed before anyone accepted it.
        let _ = since_start(sk);
    }
}

/// accept() returned `sk` (syscall path).
#[inline(always)]
pub fn accepted(sk: u64, family: u16) {
    if let Some(ns) = since_start(sk) {
        stat(
            stats::ACCEPT_WAIT_SECONDS
                + stats::family_slot(family) * stats::LATENCY_BUCKETS
                + stats::latency_bucket(ns),
        );
    }
}
