//! The netfilter program: a packet's conntrack entry, reported once per new binding and
//! counted on every packet.
use core::mem::{align_of, offset_of, MaybeUninit};

use tracer_common::{
    nat::{self, stats},
    NatCounters, NatEvent, NatKey, NatPending, AF_INET,
};
use tracer_ebpf::{
    atomic,
    maps::{wakeup_flags, BPF_NOEXIST, EVENTS},
    time::now_ns,
    window::{read, Window},
};

use crate::{
    conntrack::{ct_window_base, tuple, CtWindow, Tuple},
    maps::{add, NAT_PENDING, NAT_SEEN, ZERO_COUNTERS},
};

const NF_ACCEPT: i32 = 1;

/// The netfilter program. `ctx` is a `struct bpf_nf_ctx { state, skb }`.
#[no_mangle]
#[link_section = "classifier"]
pub extern "C" fn tracer_nat(ctx: *mut u64) -> i32 {
    let _ = observe(ctx);
    NF_ACCEPT
}

#[inline(always)]
fn observe(ctx: *mut u64) -> Option<()> {
    // SAFETY: `ctx` is the program's context, a `struct bpf_nf_ctx`: two pointers, both of
    // which the verifier lets a netfilter program read.
    let (state, skb) = unsafe { (*ctx, *ctx.add(1)) };
    // `_nfct` and `len` lie 8 bytes apart in `sk_buff`: one probe.
    let (nfct_off, len_off) = (off!(skb_nfct), off!(skb_len));
    let skb_base = if nfct_off < len_off {
        nfct_off
    } else {
        len_off
    };
    let skb_fields = Window::<2>::read(skb + skb_base)?;
    let nfct: u64 = skb_fields.get(nfct_off - skb_base)?;
    let ct = nfct & !nat::NFCT_INFOMASK;
    if ct == 0 {
        return None;
    }
    let base = ct_window_base();
    let mut w = CtWindow::empty();
    w.load(ct + base)?;
    let status: u64 = w.get(off!(ct_status) - base)?;
    let manips = manips_of(status);
    if manips == 0 {
        return None;
    }
    let hook: u8 = read(state, off!(state_hook))?;
    // The agent links the program only at POSTROUTING and INPUT, after both NAT hooks of
    // a packet's path: every run counts its packet, and each packet passes one of them once.
    let orig = off!(ct_tuple_orig) - base;
    let family: u16 = w.get(orig + off!(tuple_src_l3num))?;
    let protocol: u8 = w.get(orig + off!(tuple_dst_protonum))?;
    let v4 = family == AF_INET;
    let o = tuple(&w, orig, v4)?;
    let now = now_ns();
    let len: u32 = skb_fields.get(len_off - skb_base)?;
    let entry = Entry {
        state,
        ct,
        w: &w,
        base,
        o: &o,
        family,
        protocol,
        hook,
        manips,
        status,
    };
    let counters = binding_counters(&entry, now, len)?;
    count_packet(counters, manips, nfct, len, now);
    Some(())
}

/// The binding's counters for this packet, reporting the binding the first time the kernel
/// has confirmed its entry. None when the packet counts toward no binding (yet).
///
/// A new entry's first packet (the program runs before conntrack's confirm hook) is kept in
/// `NAT_PENDING`: a first packet the kernel then drops — no NAT port left, a lost race —
/// makes no binding. Counters under this key are a predecessor's (an entry freed and
/// allocated again at the same address for the same original tuple: a client reusing its
/// port, a SYN ending a TIME_WAIT entry): they go. The first packet after confirmation
/// creates the counters (one CPU wins the insert) and reports the binding, as new.
// Keys and values go to the map helpers by reference: by value, each call would first
// copy them onto a stack the conntrack window already fills.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn binding_counters(e: &Entry, now: u64, len: u32) -> Option<*mut NatCounters> {
    let Entry {
        ct,
        o,
        protocol,
        manips,
        status,
        ..
    } = *e;
    // One key on the stack (the conntrack window fills most of it): the binding's, then
    // turned into the first packet's (`pending_key`).
    let mut key = binding_key(ct, o, protocol);
    let done = nat::IPS_SRC_NAT_DONE | nat::IPS_DST_NAT_DONE;
    if status & done != done {
        // A binding is whole once both NAT hooks of its first packet's path have run.
        return NAT_SEEN.get_ptr_mut(&key);
    }
    if status & nat::IPS_CONFIRMED == 0 {
        if NAT_SEEN.remove(&key).is_ok() {
            add(stats::SEEN_REMOVED, 1);
        }
        let first = NatPending {
            first_ns: now,
            bytes: len as u64,
        };
        key.ct = netns_of(e)?;
        let _ = NAT_PENDING.insert(&key, &first, 0);
        // Counted in the totals now; in the binding's own counters once it is confirmed.
        let slot = stats::kind_slot(manips);
        add(stats::PACKETS + slot, 1);
        add(stats::BYTES + slot, len as u64);
        return None;
    }
    if let Some(c) = NAT_SEEN.get_ptr_mut(&key) {
        return Some(c);
    }
    if NAT_SEEN.insert(&key, &ZERO_COUNTERS, BPF_NOEXIST).is_err() {
        // Another CPU made them (and reported), or the map is full of live ones.
        return NAT_SEEN.get_ptr_mut(&key).or_else(|| {
            add(stats::UNTRACKED, 1);
            None
        });
    }
    // Counted so user space can tell what the LRU pushed out.
    add(stats::SEEN_INSERTED, 1);
    let c = NAT_SEEN.get_ptr_mut(&key)?;
    key.ct = netns_of(e)?;
    // SAFETY: the value is copied out at once.
    let pending = unsafe { NAT_PENDING.get(&key) }.copied();
    // Without a first packet kept, an entry that predates the program or whose counters
    // were dropped (by user space, the LRU): reported now, not as a new entry.
    let (since, flags) = match pending {
        Some(p) => {
            let _ = NAT_PENDING.remove(&key);
            // SAFETY: `c` is this binding's value in `NAT_SEEN`, just taken from the map:
            // valid for the program's run. Added, not stored: another CPU may have found the
            // counters already and counted its packet.
            unsafe {
                atomic::add(&raw mut (*c).orig_packets, 1);
                atomic::add(&raw mut (*c).orig_bytes, p.bytes);
            }
            (p.first_ns, nat::EV_FRESH)
        }
        None => (now, 0),
    };
    // SAFETY: as above.
    unsafe { (*c).first_ns = since };
    report(e, since, flags);
    Some(c)
}

/// What a first packet's key in `NAT_PENDING` has in place of the entry's address: the
/// namespace's inode, so user space can find it from a destroy event (which names no
/// address) — the entry of a flow of one packet, confirmed but never seen again here.
#[inline(always)]
fn netns_of(e: &Entry) -> Option<u64> {
    let net: u64 = read(e.state, off!(state_net))?;
    let netns: u32 = read(net, off!(net_inum))?;
    Some(netns as u64)
}

/// Which translations (`nat::MANIP_*`) a conntrack entry's `status` carries.
#[inline(always)]
fn manips_of(status: u64) -> u8 {
    (if status & nat::IPS_SRC_NAT != 0 {
        nat::MANIP_SRC
    } else {
        0
    }) | (if status & nat::IPS_DST_NAT != 0 {
        nat::MANIP_DST
    } else {
        0
    })
}

/// The binding's key: the conntrack entry and its original tuple.
#[inline(always)]
fn binding_key(ct: u64, o: &Tuple, protocol: u8) -> NatKey {
    // Field by field, the padding with volatile stores: as a literal, the three zero bytes
    // became a call to the byte-loop memset on every packet.
    let mut key = MaybeUninit::<NatKey>::uninit();
    let k = key.as_mut_ptr();
    // SAFETY: `k` points to the local `key`: each field is written through it, and every
    // field of `NatKey` (no padding: asserted below) is written before `assume_init`.
    unsafe {
        (*k).ct = ct;
        (*k).src = o.src;
        (*k).dst = o.dst;
        (*k).sport = o.sport;
        (*k).dport = o.dport;
        (*k).protocol = protocol;
        for i in 0..3 {
            core::ptr::write_volatile(&raw mut (*k)._pad[i], 0);
        }
        key.assume_init()
    }
}

/// Counts one packet of a binding: per-CPU totals by kind, and the binding's own counters by
/// direction (atomically: every CPU may carry the binding's packets).
#[inline(always)]
fn count_packet(counters: *mut NatCounters, manips: u8, nfct: u64, len: u32, now: u64) {
    let slot = stats::kind_slot(manips);
    add(stats::PACKETS + slot, 1);
    add(stats::BYTES + slot, len as u64);
    let reply = (nfct & nat::NFCT_INFOMASK) >= nat::IP_CT_IS_REPLY;
    // SAFETY: `counters` is this binding's value in `NAT_SEEN` (from `get_ptr_mut`): valid for
    // the program's run, its fields 8-byte aligned for the atomic adds (asserted below).
    unsafe {
        if reply {
            atomic::add(&raw mut (*counters).reply_packets, 1);
            atomic::add(&raw mut (*counters).reply_bytes, len as u64);
        } else {
            atomic::add(&raw mut (*counters).orig_packets, 1);
            atomic::add(&raw mut (*counters).orig_bytes, len as u64);
        }
        (*counters).last_ns = now;
    }
}

/// What one run read of a packet's conntrack entry.
#[derive(Clone, Copy)]
struct Entry<'a> {
    /// The hook's `nf_hook_state`.
    state: u64,
    /// The entry (`struct nf_conn *`), and the window read from it at `base`.
    ct: u64,
    w: &'a CtWindow,
    base: u64,
    /// Its original tuple.
    o: &'a Tuple,
    family: u16,
    protocol: u8,
    hook: u8,
    manips: u8,
    status: u64,
}

/// Writes the binding's `NatEvent` into the ring.
#[inline(always)]
fn report(e: &Entry, now: u64, flags: u8) -> Option<()> {
    let Entry {
        state,
        ct,
        w,
        base,
        o,
        family,
        protocol,
        hook,
        manips,
        status,
    } = *e;
    let r = tuple(w, off!(ct_tuple_reply) - base, family == AF_INET)?;
    let net: u64 = read(state, off!(state_net))?;
    let netns: u32 = read(net, off!(net_inum))?;
    let Some(mut entry) = EVENTS.reserve::<NatEvent>(0) else {
        add(stats::LOST, 1);
        return None;
    };
    // Field by field into the ring: a 104-byte event built on the stack would not fit
    // next to the conntrack window.
    // SAFETY: `reserve` returned room for one `NatEvent` in the ring, ours alone until
    // `submit`; every field is written below before it is submitted, and `NatEvent` is plain
    // integers, so no write drops a value.
    let e = unsafe { &mut *entry.as_mut_ptr() };
    e.kind = nat::KIND_BINDING;
    e.family = family;
    e.protocol = protocol;
    e.hook = hook;
    e.manips = manips;
    e.flags = flags;
    e.netns = netns;
    e.orig_sport = o.sport;
    e.orig_dport = o.dport;
    e.reply_sport = r.sport;
    e.reply_dport = r.dport;
    e.status = status as u32;
    e.ts_ns = now;
    e.ct = ct;
    e.orig_src = o.src;
    e.orig_dst = o.dst;
    e.reply_src = r.src;
    e.reply_dst = r.dst;
    entry.submit(wakeup_flags(
        tracer_ebpf::global!(crate::maps::NAT_WAKEUP_BYTES) as u64,
    ));
    Some(())
}

// `binding_key` writes every field: there must be no padding it would leave uninitialised.
const _: () = assert!(core::mem::size_of::<NatKey>() == offset_of!(NatKey, _pad) + 3);
const _: () = assert!(offset_of!(NatKey, _pad) == offset_of!(NatKey, protocol) + 1);
const _: () = assert!(offset_of!(NatKey, protocol) == offset_of!(NatKey, dport) + 2);
const _: () = assert!(offset_of!(NatKey, dport) == offset_of!(NatKey, sport) + 2);
const _: () = assert!(offset_of!(NatKey, sport) == offset_of!(NatKey, dst) + 16);
const _: () = assert!(offset_of!(NatKey, dst) == offset_of!(NatKey, src) + 16);
const _: () = assert!(offset_of!(NatKey, src) == offset_of!(NatKey, ct) + 8);
const _: () = assert!(offset_of!(NatKey, ct) == 0);
// The atomic adds in `count_packet` need naturally aligned counters.
const _: () = assert!(align_of::<NatCounters>() == 8);
const _: () = assert!(offset_of!(NatCounters, orig_packets) % 8 == 0);
const _: () = assert!(offset_of!(NatCounters, orig_bytes) % 8 == 0);
const _: () = assert!(offset_of!(NatCounters, reply_packets) % 8 == 0);
const _: () = assert!(offset_of!(NatCounters, reply_bytes) % 8 == 0);
// The ring record is the shared size user space decodes.
const _: () = assert!(core::mem::size_of::<NatEvent>() == tracer_common::NAT_EVENT_SIZE);
