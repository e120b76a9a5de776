//! The clock every record's `ts_ns` comes from.
use aya_ebpf::helpers::bpf_ktime_get_ns;

/// `CLOCK_MONOTONIC` nanoseconds, as user space reads them with `clock_gettime`.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments; it cannot fail.
    unsafe { bpf_ktime_get_ns() }
}
