//! Reading the calling process's memory (syscall arguments that are pointers).
use aya_ebpf::helpers::bpf_probe_read_user;

use crate::mem::Plain;

/// The `T` at user address `addr`, or None when `addr` is NULL or the read faults.
#[inline(always)]
pub fn read_user<T: Plain>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: `bpf_probe_read_user` copies `size_of::<T>()` bytes into its own result (any bytes are a `T`: `Plain`) and fails
    // cleanly on a bad or unmapped address; the address is only ever a user pointer.
    unsafe { bpf_probe_read_user(addr as *const T).ok() }
}
