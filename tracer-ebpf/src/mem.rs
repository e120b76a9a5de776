//! Volatile stores and loads. LLVM merges plain stores of neighbouring fields into calls to
//! `memset`/`memcpy`, which on this target are byte-at-a-time loops in a subprogram, far slower
//! than the few stores they replace; and it would fold a load-time global (a `.rodata` static
//! the loader overwrites) to the zero it was compiled with.

/// A volatile store to a place: `set!(ev.kind, kind::STATE)`.
#[macro_export]
macro_rules! set {
    ($place:expr, $value:expr) => {{
        #[allow(unused_unsafe)]
        // SAFETY: `&raw mut` of a place the caller can name is a valid, aligned pointer to it.
        unsafe {
            core::ptr::write_volatile(&raw mut $place, $value)
        }
    }};
}

/// A volatile load of a load-time global's field: `global!(OFFSETS.skc_num)`. The loader
/// writes the real value into `.rodata` and freezes it, so the verifier sees a constant, but
/// the compiler must not assume the zero in the source.
#[macro_export]
macro_rules! global {
    ($place:expr) => {{
        #[allow(unused_unsafe)]
        // SAFETY: a reference to a field of a static is a valid, aligned pointer to it.
        let value = unsafe { core::ptr::read_volatile(&$place) };
        value
    }};
}

/// Writes a 16-byte field (address, comm) as two volatile words: the compiler can neither merge
/// them into a call to the byte-loop `memset`/`memcpy` nor drop them. `dst` must be 8-byte
/// aligned: every caller's field is, by a compile-time assert next to its record.
#[inline(always)]
pub fn put16(dst: &mut [u8; 16], words: [u64; 2]) {
    let d = dst.as_mut_ptr() as *mut u64;
    // SAFETY: `dst` is 16 writable bytes, so both words lie inside it; their alignment is the
    // caller's field's (asserted at compile time where the record is used).
    unsafe {
        core::ptr::write_volatile(d, words[0]);
        core::ptr::write_volatile(d.add(1), words[1]);
    }
}

/// Reads a 16-byte field as two volatile words (the counterpart of [`put16`], same alignment).
#[inline(always)]
pub fn get16(src: &[u8; 16]) -> [u64; 2] {
    let s = src.as_ptr() as *const u64;
    // SAFETY: `src` is 16 readable bytes, 8-byte aligned as in `put16`.
    unsafe {
        [
            core::ptr::read_volatile(s),
            core::ptr::read_volatile(s.add(1)),
        ]
    }
}

/// Types for which any bytes are a valid value: what a probe read may return. The reads in
/// [`crate::window`] and [`crate::user`] take only these, so a faulted or raced read can give a
/// wrong number, never an invalid value.
///
/// # Safety
/// Implement only for types with no invalid bit patterns and no padding.
pub unsafe trait Plain: Copy {}

// SAFETY: integers accept every bit pattern and have no padding; so do arrays of them.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for u16 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for u64 {}
// SAFETY: as above.
unsafe impl Plain for i32 {}
// SAFETY: as above.
unsafe impl Plain for i64 {}
// SAFETY: an array of plain values has no padding and no invalid values.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}

/// A socket pointer a program was handed typed (`bpf_sock_addr.sk`, `bpf_sock_ops.sk`), as a
/// plain address for the probe reads: the verifier refuses arithmetic on such a pointer
/// (`base + offset`), so the address is copied out of a stack slot by a probe read, which the
/// verifier sees as a number. Privileged programs only (pointer values may leave the pointer
/// type); the address is only ever handed to probe reads, never dereferenced.
#[inline(always)]
pub fn address_of<T>(ptr: *const T) -> u64 {
    use core::ffi::c_void;
    let slot: u64 = core::hint::black_box(ptr as u64);
    let mut out: u64 = 0;
    // SAFETY: both pointers are this frame's own 8-byte stack slots; the helper copies 8 bytes
    // from one to the other and fails cleanly (out stays 0) if it cannot.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            &mut out as *mut u64 as *mut c_void,
            8,
            &slot as *const u64 as *const c_void,
        )
    };
    out
}
