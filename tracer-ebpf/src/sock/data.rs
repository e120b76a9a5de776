//! Data totals (attached by `tracer trace` only): bytes and calls per socket, summed in `DATA`
//! from `sock:sock_send_length` / `sock:sock_recv_length`, and sent as one DATA record just
//! before the socket's RELEASE.
use core::mem::{align_of, offset_of};

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext, EbpfContext,
};
use tracer_common::{counter, kind, DataTotals, SockEvent, AF_INET, AF_INET6};
use tracer_ebpf::{atomic, maps::EVENTS, set, window::Window};

use crate::{
    emit::{count, wakeup},
    filter::{process_selected, socket_selected},
    maps::{bump, DATA},
    release::release_header,
    sk::{fill_from_sock, SkCommon},
};

/// A DATA record (a socket's totals), built in the ring itself: with the names two events
/// on the stack no longer fit the 512-byte stack.
#[inline(always)]
pub fn data_record(sk: u64, common: &SkCommon, pid_tgid: u64, totals: &DataTotals) {
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        bump(counter::LOST);
        return;
    };
    // SAFETY: `reserve` returned room for one `SockEvent` in the ring (8-byte aligned), ours
    // alone until `submit`/`discard`. `release_header` and
    // `fill_from_sock` write every field before anything reads it
    // or the record is submitted; `SockEvent` is plain integers, so no write drops a value.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    release_header(ev, pid_tgid);
    fill_from_sock(ev, sk, common);
    set!(ev.kind, kind::DATA);
    if !socket_selected(ev) {
        entry.discard(0);
        return;
    }
    totals.store(ev);
    count(ev);
    entry.submit(wakeup());
}

/// `sock:sock_send_length` / `sock:sock_recv_length` fire in `sock_sendmsg`/`sock_recvmsg`,
/// so every write/send/read/recv on a socket, in the calling process.
#[inline(always)]
fn count_data(ctx: &TracePointContext, sending: bool) -> Option<()> {
    // sk, family, protocol, ret, flags: 28 bytes, one probe.
    let rec = Window::<4>::read(ctx.as_ptr() as u64)?;
    let family: u16 = rec.get(off!(tp_data_family))?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let ret: i32 = rec.get(off!(tp_data_ret))?;
    if ret <= 0 {
        return None;
    }
    const MSG_PEEK: i32 = 2;
    let flags: i32 = rec.get(off!(tp_data_flags))?;
    if !sending && flags & MSG_PEEK != 0 {
        return None;
    }
    if !process_selected((bpf_get_current_pid_tgid() >> 32) as u32) {
        return None;
    }
    let sk: u64 = rec.get(off!(tp_data_sk))?;
    // SAFETY: only whether the key is present is used, never the value behind the reference.
    if unsafe { DATA.get(sk) }.is_none() {
        DATA.insert(sk, DataTotals::default(), 0).ok()?;
        bump(counter::DATA_INSERTED);
    }
    let totals = DATA.get_ptr_mut(sk)?;
    // Threads of one process may use one socket at once: add atomically.
    // SAFETY: `totals` is this socket's value in `DATA`, from `get_ptr_mut`: valid for the
    // program's run, and its fields aligned for their atomic adds (asserted below).
    unsafe {
        if sending {
            atomic::add(&raw mut (*totals).sent_bytes, ret as u64);
            atomic::add(&raw mut (*totals).sends, 1);
        } else {
            atomic::add(&raw mut (*totals).received_bytes, ret as u64);
            atomic::add(&raw mut (*totals).receives, 1);
        }
    }
    Some(())
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let _ = count_data(&ctx, true);
    0
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    let _ = count_data(&ctx, false);
    0
}

// The atomic adds above need each counter naturally aligned in the map value.
const _: () = assert!(align_of::<DataTotals>() == 8);
const _: () = assert!(offset_of!(DataTotals, sent_bytes) % 8 == 0);
const _: () = assert!(offset_of!(DataTotals, received_bytes) % 8 == 0);
const _: () = assert!(offset_of!(DataTotals, sends) % 4 == 0);
const _: () = assert!(offset_of!(DataTotals, receives) % 4 == 0);
