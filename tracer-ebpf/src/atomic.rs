//! Atomic adds on map values. Threads of one process share a socket and every CPU sees a NAT
//! binding: plain `+=` on a shared map value would lose counts. The bpf target has no
//! `AtomicU64`, so through the intrinsic, which compiles to a `BPF_ATOMIC` add.
use core::intrinsics::{atomic_xadd, AtomicOrdering::Relaxed};

/// `*dst += value`, atomically (relaxed: a counter orders nothing).
///
/// # Safety
/// `dst` must point to a live, aligned `T` inside a map value (from `get_ptr_mut`).
#[inline(always)]
pub unsafe fn add<T: Copy>(dst: *mut T, value: T) {
    // SAFETY: the caller hands over a valid, aligned pointer into a map value.
    unsafe { atomic_xadd::<T, T, { Relaxed }>(dst, value) };
}
