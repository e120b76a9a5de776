//! NAT bindings: one `BPF_PROG_TYPE_NETFILTER` program, attached by the agent right after
//! source NAT on the last NAT hook of every path (POSTROUTING and INPUT; IPv4 and IPv6), in
//! each network namespace it watches.
//!
//! It reads the packet's conntrack entry (`skb->_nfct`) and, the first time an entry shows a
//! finished translation, writes one `NatEvent` to `EVENTS`; later packets only add to the
//! binding's counters in `NAT_SEEN` (an LRU map, so it never grows without bound). It never
//! changes a packet and always returns `NF_ACCEPT`.
//!
//! aya 0.14 cannot load this program type, so the section name below only has to be one
//! aya-obj parses: the agent's own loader (tracer/src/kernel/nat.rs) loads it as type 32.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

// Shared with the socket programs, which use more of it.
#[cfg(target_arch = "bpf")]
#[allow(dead_code)]
mod window;

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        helpers::bpf_ktime_get_ns,
        macros::map,
        maps::{LruHashMap, PerCpuArray, RingBuf},
    };

    use crate::window::{read, Window};
    use tracer_common::{
        nat::{self, stats},
        NatCounters, NatEvent, NatKey, NatOffsets, AF_INET,
    };

    const NF_ACCEPT: i32 = 1;
    const BPF_NOEXIST: u64 = 1;

    #[no_mangle]
    static NAT_OFFSETS: NatOffsets = NatOffsets {
        skb_nfct: 0,
        skb_len: 0,
        ct_status: 0,
        ct_tuple_orig: 0,
        ct_tuple_reply: 0,
        tuple_src_u3: 0,
        tuple_src_port: 0,
        tuple_src_l3num: 0,
        tuple_dst_u3: 0,
        tuple_dst_port: 0,
        tuple_dst_protonum: 0,
        state_hook: 0,
        state_net: 0,
        net_inum: 0,
    };

    /// Shared with the socket object when both are loaded (the agent hands over its fd).
    #[map]
    static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

    /// Bindings already reported, with their packet and byte counters.
    #[map]
    static NAT_SEEN: LruHashMap<NatKey, NatCounters> = LruHashMap::with_max_entries(65536, 0);

    #[map]
    static NAT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

    macro_rules! off {
        ($field:ident) => {{
            #[allow(unused_unsafe)]
            let value = unsafe { core::ptr::read_volatile(&NAT_OFFSETS.$field) };
            value as u64
        }};
    }

    #[inline(always)]
    fn add(index: u32, value: u64) {
        if let Some(c) = NAT_STATS.get_ptr_mut(index) {
            unsafe { *c += value };
        }
    }

    struct Tuple {
        src: [u8; 16],
        dst: [u8; 16],
        sport: u16,
        dport: u16,
    }

    /// A 16-byte address at `at` in the window, its IPv4 form zero-padded: built from four
    /// 32-bit reads (the tuple's addresses are 4-byte aligned) and held in registers, so no
    /// byte-loop `memset`/`memcpy` runs.
    #[inline(always)]
    fn addr(w: &CtWindow, at: u64, v4: bool) -> [u8; 16] {
        let word = |i: u64| w.get::<u32>(at + 4 * i).unwrap_or(0);
        let words = if v4 {
            [word(0), 0, 0, 0]
        } else {
            [word(0), word(1), word(2), word(3)]
        };
        unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
    }

    /// The tuple at `at` (a `nf_conntrack_tuple`) in the window.
    #[inline(always)]
    fn tuple(w: &CtWindow, at: u64, v4: bool) -> Option<Tuple> {
        Some(Tuple {
            src: addr(w, at + off!(tuple_src_u3), v4),
            dst: addr(w, at + off!(tuple_dst_u3), v4),
            sport: u16::from_be(w.get(at + off!(tuple_src_port))?),
            dport: u16::from_be(w.get(at + off!(tuple_dst_port))?),
        })
    }

    /// The part of `nf_conn` the program reads — both tuples and `status`, 104 bytes from the
    /// original tuple on 6.x — in one probe (fields outside it are read on their own).
    type CtWindow = Window<13>;

    /// Where the window starts in `nf_conn`, and each field's place in it.
    #[inline(always)]
    fn ct_window_base() -> u64 {
        let (orig, status) = (off!(ct_tuple_orig), off!(ct_status));
        if orig < status {
            orig
        } else {
            status
        }
    }

    /// Counters of a binding the map has just taken: zero, copied by the map update.
    static ZERO_COUNTERS: NatCounters = NatCounters {
        orig_packets: 0,
        orig_bytes: 0,
        reply_packets: 0,
        reply_bytes: 0,
        first_ns: 0,
        last_ns: 0,
    };

    /// The netfilter program. `ctx` is a `struct bpf_nf_ctx { state, skb }`.
    #[no_mangle]
    #[link_section = "classifier"]
    pub extern "C" fn tracer_nat(ctx: *mut u64) -> i32 {
        let _ = observe(ctx);
        NF_ACCEPT
    }

    // Keys and values go to the map helpers by reference: by value, each call would first
    // copy them onto a stack the conntrack window already fills.
    #[allow(clippy::needless_borrows_for_generic_args)]
    #[inline(always)]
    fn observe(ctx: *mut u64) -> Option<()> {
        // SAFETY: the verifier allows reading both pointers of bpf_nf_ctx.
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
        let manips = (if status & nat::IPS_SRC_NAT != 0 {
            nat::MANIP_SRC
        } else {
            0
        }) | (if status & nat::IPS_DST_NAT != 0 {
            nat::MANIP_DST
        } else {
            0
        });
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
        // Field by field, the padding with volatile stores: as a literal, the three zero
        // bytes became a call to the byte-loop memset on every packet.
        let mut key = core::mem::MaybeUninit::<NatKey>::uninit();
        let k = key.as_mut_ptr();
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
        }
        let key = unsafe { key.assume_init() };
        let now = unsafe { bpf_ktime_get_ns() };
        let done = nat::IPS_SRC_NAT_DONE | nat::IPS_DST_NAT_DONE;
        let counters = match NAT_SEEN.get_ptr_mut(&key) {
            Some(c) => c,
            None => {
                // A binding is whole once both NAT hooks of its first packet's path have run.
                if status & done != done {
                    return None;
                }
                let inserted = NAT_SEEN.insert(&key, &ZERO_COUNTERS, BPF_NOEXIST).is_ok();
                if inserted {
                    // Counted so user space can tell what the LRU pushed out.
                    add(stats::SEEN_INSERTED, 1);
                    report(
                        state, ct, &w, base, &o, family, protocol, hook, manips, status, now,
                    );
                }
                let Some(c) = NAT_SEEN.get_ptr_mut(&key) else {
                    add(stats::UNTRACKED, 1);
                    return None;
                };
                if inserted {
                    unsafe { (*c).first_ns = now };
                }
                c
            }
        };
        let len: u32 = skb_fields.get(len_off - skb_base)?;
        let slot = stats::kind_slot(manips);
        add(stats::PACKETS + slot, 1);
        add(stats::BYTES + slot, len as u64);
        let reply = (nfct & nat::NFCT_INFOMASK) >= nat::IP_CT_IS_REPLY;
        use core::intrinsics::{atomic_xadd, AtomicOrdering::Relaxed};
        unsafe {
            if reply {
                atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*counters).reply_packets, 1);
                atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*counters).reply_bytes, len as u64);
            } else {
                atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*counters).orig_packets, 1);
                atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*counters).orig_bytes, len as u64);
            }
            (*counters).last_ns = now;
        }
        Some(())
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn report(
        state: u64,
        ct: u64,
        w: &CtWindow,
        base: u64,
        o: &Tuple,
        family: u16,
        protocol: u8,
        hook: u8,
        manips: u8,
        status: u64,
        now: u64,
    ) -> Option<()> {
        let r = tuple(w, off!(ct_tuple_reply) - base, family == AF_INET)?;
        let net: u64 = read(state, off!(state_net))?;
        let netns: u32 = read(net, off!(net_inum))?;
        let Some(mut entry) = EVENTS.reserve::<NatEvent>(0) else {
            add(stats::LOST, 1);
            return None;
        };
        // Field by field into the ring: a 104-byte event built on the stack would not fit
        // next to the conntrack window.
        let e = unsafe { &mut *entry.as_mut_ptr() };
        e.kind = nat::KIND_BINDING;
        e.family = family;
        e.protocol = protocol;
        e.hook = hook;
        e.manips = manips;
        e._pad = 0;
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
        entry.submit(0);
        Some(())
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}
