//! Reading kernel memory in as few helper calls as possible: one field ([`read`]) or a run of
//! neighbouring fields with one probe ([`Window`]).
use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated as gen};

use crate::mem::Plain;

/// `base + offset` as a `T`, or None when `base` is NULL or the read faults.
#[inline(always)]
pub fn read<T: Plain>(base: u64, offset: u64) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: `bpf_probe_read_kernel` copies `size_of::<T>()` bytes into its own result and
    // fails cleanly (Err) on a bad kernel address; nothing here dereferences `base`.
    unsafe { bpf_probe_read_kernel((base + offset) as *const T).ok() }
}

/// Bytes `[base, base + 8 * N)` of a kernel object or tracepoint record, fetched with one
/// probe. A probe read is a helper call that costs about as much as the rest of a small program,
/// so fields that lie together are read together. The buffer starts uninitialised: the probe
/// fills all of it (with zeros when it fails), and the verifier refuses any read before that.
pub struct Window<const N: usize> {
    base: u64,
    words: MaybeUninit<[u64; N]>,
}

impl<const N: usize> Window<N> {
    /// Not a `const`: materialising a constant with uninitialised bytes compiles to a memset.
    #[inline(always)]
    pub fn empty() -> Self {
        Window {
            base: 0,
            words: MaybeUninit::uninit(),
        }
    }

    /// Fills the window from `base` (in place: large windows are not moved around the
    /// 512-byte stack).
    #[inline(always)]
    pub fn load(&mut self, base: u64) -> Option<()> {
        if base == 0 {
            return None;
        }
        self.base = base;
        // SAFETY: the destination is this window's own `8 * N` bytes, exactly the length
        // asked for; the helper zeroes them and returns an error on a bad kernel address.
        let ret = unsafe {
            gen::bpf_probe_read_kernel(
                self.words.as_mut_ptr() as *mut c_void,
                (N * 8) as u32,
                base as *const c_void,
            )
        };
        (ret == 0).then_some(())
    }

    #[inline(always)]
    pub fn read(base: u64) -> Option<Self> {
        let mut window = Self::empty();
        window.load(base)?;
        Some(window)
    }

    /// The field at `offset` (from a load-time offsets global, so a constant to the verifier,
    /// which keeps only the branch taken): from the window when it lies inside, else with a
    /// probe of its own.
    #[inline(always)]
    pub fn get<T: Plain>(&self, offset: u64) -> Option<T> {
        let size = core::mem::size_of::<T>() as u64;
        let align = core::mem::align_of::<T>() as u64;
        if offset + size <= (N * 8) as u64 && offset.is_multiple_of(align) {
            // SAFETY: `offset + size` lies inside the window's `8 * N` bytes: `at` too.
            let at = unsafe { (self.words.as_ptr() as *const u8).add(offset as usize) };
            // SAFETY: `at` is inside the window and aligned for `T` (the words are 8-byte
            // aligned and `offset` a multiple of `T`'s alignment). The bytes are initialised:
            // a window is read only after `load`, which fills or zeroes it (and the verifier
            // rejects a read of stack nothing wrote). Any bytes are a valid `T` (`Plain`).
            Some(unsafe { core::ptr::read(at as *const T) })
        } else {
            read(self.base, offset)
        }
    }

    /// A 16-byte address at `offset` (8-byte aligned in every layout read here), as two words.
    #[inline(always)]
    pub fn addr16(&self, offset: u64) -> [u64; 2] {
        [
            self.get::<u64>(offset).unwrap_or(0),
            self.get::<u64>(offset + 8).unwrap_or(0),
        ]
    }

    /// A 4-byte IPv4 address at `offset`, as the first word of a 16-byte address.
    #[inline(always)]
    pub fn addr4(&self, offset: u64) -> [u64; 2] {
        [self.get::<u32>(offset).unwrap_or(0) as u64, 0]
    }
}
