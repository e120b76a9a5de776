//! NAT bindings: one `BPF_PROG_TYPE_NETFILTER` program, attached by the agent right after NAT
//! on every path a packet can take (after DNAT in PREROUTING and OUTPUT, after SNAT in
//! POSTROUTING and INPUT; IPv4 and IPv6), in each network namespace it watches.
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

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
        macros::map,
        maps::{LruHashMap, PerCpuArray, RingBuf},
    };
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
    fn read<T>(base: u64, offset: u64) -> Option<T> {
        if base == 0 {
            return None;
        }
        unsafe { bpf_probe_read_kernel((base + offset) as *const T).ok() }
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

    #[inline(always)]
    fn tuple(base: u64, v4: bool) -> Option<Tuple> {
        let mut src: [u8; 16] = read(base, off!(tuple_src_u3))?;
        let mut dst: [u8; 16] = read(base, off!(tuple_dst_u3))?;
        if v4 {
            src[4..].fill(0);
            dst[4..].fill(0);
        }
        let sport: u16 = read(base, off!(tuple_src_port))?;
        let dport: u16 = read(base, off!(tuple_dst_port))?;
        Some(Tuple {
            src,
            dst,
            sport: u16::from_be(sport),
            dport: u16::from_be(dport),
        })
    }

    /// The netfilter program. `ctx` is a `struct bpf_nf_ctx { state, skb }`.
    #[no_mangle]
    #[link_section = "classifier"]
    pub extern "C" fn tracer_nat(ctx: *mut u64) -> i32 {
        let _ = observe(ctx);
        NF_ACCEPT
    }

    #[inline(always)]
    fn observe(ctx: *mut u64) -> Option<()> {
        // SAFETY: the verifier allows reading both pointers of bpf_nf_ctx.
        let (state, skb) = unsafe { (*ctx, *ctx.add(1)) };
        let nfct: u64 = read(skb, off!(skb_nfct))?;
        let ct = nfct & !nat::NFCT_INFOMASK;
        if ct == 0 {
            return None;
        }
        let status: u64 = read(ct, off!(ct_status))?;
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
        // POSTROUTING and INPUT come after both NAT hooks of a path: count there, so each
        // packet counts once.
        let last_hook = hook == nat::NF_INET_POST_ROUTING || hook == nat::NF_INET_LOCAL_IN;
        let orig = ct + off!(ct_tuple_orig);
        let family: u16 = read(orig, off!(tuple_src_l3num))?;
        let protocol: u8 = read(orig, off!(tuple_dst_protonum))?;
        let o = tuple(orig, family == AF_INET)?;
        let key = NatKey {
            ct,
            src: o.src,
            dst: o.dst,
            sport: o.sport,
            dport: o.dport,
            protocol,
            _pad: [0; 3],
        };
        let now = unsafe { bpf_ktime_get_ns() };
        let done = nat::IPS_SRC_NAT_DONE | nat::IPS_DST_NAT_DONE;
        if NAT_SEEN.get_ptr_mut(key).is_none() {
            // A binding is whole once both NAT hooks of its first packet's path have run.
            if status & done != done {
                return None;
            }
            let first = NatCounters {
                first_ns: now,
                ..NatCounters::default()
            };
            if NAT_SEEN.insert(key, first, BPF_NOEXIST).is_ok() {
                report(state, ct, &o, family, protocol, hook, manips, status, now);
            }
        }
        if !last_hook {
            return Some(());
        }
        let len: u32 = read(skb, off!(skb_len))?;
        let slot = stats::kind_slot(manips);
        add(stats::PACKETS + slot, 1);
        add(stats::BYTES + slot, len as u64);
        let Some(counters) = NAT_SEEN.get_ptr_mut(key) else {
            add(stats::UNTRACKED, 1);
            return None;
        };
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
        o: &Tuple,
        family: u16,
        protocol: u8,
        hook: u8,
        manips: u8,
        status: u64,
        now: u64,
    ) -> Option<()> {
        let r = tuple(ct + off!(ct_tuple_reply), family == AF_INET)?;
        let net: u64 = read(state, off!(state_net))?;
        let netns: u32 = read(net, off!(net_inum))?;
        let Some(mut entry) = EVENTS.reserve::<NatEvent>(0) else {
            add(stats::LOST, 1);
            return None;
        };
        entry.write(NatEvent {
            kind: nat::KIND_BINDING,
            family,
            protocol,
            hook,
            manips,
            _pad: 0,
            netns,
            orig_sport: o.sport,
            orig_dport: o.dport,
            reply_sport: r.sport,
            reply_dport: r.dport,
            status: status as u32,
            ts_ns: now,
            ct,
            orig_src: o.src,
            orig_dst: o.dst,
            reply_src: r.src,
            reply_dst: r.dst,
        });
        entry.submit(0);
        Some(())
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}
