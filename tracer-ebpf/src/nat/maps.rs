//! The NAT object's maps and its load-time global (names user space looks up: never rename;
//! `EVENTS` is the library's, shared with the socket object).
use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use tracer_common::{nat::stats, NatCounters, NatKey, NatOffsets, NatPending};

/// Kernel struct offsets (`sk_buff`, `nf_conn`, `nf_conntrack_tuple`, `nf_hook_state`,
/// `net`), from BTF: user space overrides this `.rodata` global at load time.
#[no_mangle]
pub static NAT_OFFSETS: NatOffsets = NatOffsets {
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

/// Bytes that must wait in the ring before a binding's record wakes the agent (0: every
/// record does): user space overrides this `.rodata` global at load time.
#[no_mangle]
pub static NAT_WAKEUP_BYTES: u32 = 0;

/// Bindings already reported, with their packet and byte counters.
#[map]
pub static NAT_SEEN: LruHashMap<NatKey, NatCounters> = LruHashMap::with_max_entries(65536, 0);

/// New entries' first packets, until a later packet of the confirmed entry (or user space,
/// at the entry's destroy: a flow of one packet) takes them; keyed by namespace, not entry
/// (LRU: one the kernel dropped is pushed out in time).
#[map]
pub static NAT_PENDING: LruHashMap<NatKey, NatPending> = LruHashMap::with_max_entries(16384, 0);

/// Per-CPU counters for metrics (layout in `tracer_common::nat::stats`).
#[map]
pub static NAT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// Counters of a binding the map has just taken: zero, copied by the map update.
pub static ZERO_COUNTERS: NatCounters = NatCounters {
    orig_packets: 0,
    orig_bytes: 0,
    reply_packets: 0,
    reply_bytes: 0,
    first_ns: 0,
    last_ns: 0,
};

/// A field of [`NAT_OFFSETS`], as a `u64` to add to a pointer: `off!(skb_nfct)`.
macro_rules! off {
    ($field:ident) => {
        tracer_ebpf::global!($crate::maps::NAT_OFFSETS.$field) as u64
    };
}

/// Adds `value` to a metrics counter (`NAT_STATS`).
#[inline(always)]
pub fn add(index: u32, value: u64) {
    tracer_ebpf::maps::add(&NAT_STATS, index, value);
}
