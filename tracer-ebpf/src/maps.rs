//! The one map both objects hold, and the per-CPU counter arrays' update.
use aya_ebpf::{macros::map, maps::PerCpuArray, maps::RingBuf};

/// The one ring buffer every program writes to (socket events and NAT bindings alike): user
/// space sizes it at load time and hands the socket object's fd to the NAT object.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Submit flags for a record into [`EVENTS`]: wake the agent only once `threshold` bytes wait
/// in the ring (0: every record wakes it). The agent also drains on a timer, so a quiet ring
/// is read within its poll interval; a busy one wakes it once per quarter ring, not per record.
#[inline(always)]
pub fn wakeup_flags(threshold: u64) -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    const BPF_RB_AVAIL_DATA: u64 = 0;
    if threshold == 0 {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// `bpf_map_update_elem` flag: insert only when the key is absent.
pub const BPF_NOEXIST: u64 = 1;

/// Adds `value` to slot `index` of a per-CPU counter array (this CPU's copy: no atomics
/// needed). An index past the array is ignored.
#[inline(always)]
pub fn add(map: &PerCpuArray<u64>, index: u32, value: u64) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: `get_ptr_mut` returned this CPU's slot, valid for the program's run; no
        // other program runs on this CPU's copy meanwhile (BPF programs are not preempted by
        // one another on a CPU, except tracing nested in softirq, which only adds too).
        unsafe { *c += value };
    }
}
