//! Counting what the kernel's LRU maps push out. An LRU map evicts silently, so the programs
//! count the entries they create and the ones that end normally (removed by their exit, their
//! release, their process's exit), and here the entries still in the map are counted: what is
//! neither ended nor present was evicted.
//!
//! The three readings are not one atomic snapshot: the counters read before the walk of the
//! map give "created", the ones read after it give "ended", so entries created or ended during
//! the walk can only make the result smaller — it never reports an eviction that did not
//! happen, and the next reading catches up.
use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::Map;

/// A kernel map whose entries can be counted.
pub struct MapCount {
    fd: OwnedFd,
    key_size: usize,
    max_entries: usize,
    /// The highest eviction count reported so far (counts only go up).
    reported: AtomicU64,
}

impl MapCount {
    /// The map `name` of `ebpf` (None when the object has no such map).
    pub fn of(ebpf: &aya::Ebpf, name: &str, key_size: usize, max_entries: usize) -> Option<Self> {
        let fd = match ebpf.map(name)? {
            Map::LruHashMap(data) | Map::HashMap(data) => data.fd().as_fd().try_clone_to_owned(),
            _ => return None,
        };
        Some(MapCount {
            fd: fd.ok()?,
            key_size,
            max_entries,
            reported: AtomicU64::new(0),
        })
    }

    /// Entries in the map now (walked with BPF_MAP_GET_NEXT_KEY; a restart caused by a
    /// concurrent delete can only count some twice, which errs low in [`Self::evicted`]).
    pub fn entries(&self) -> usize {
        let mut key = vec![0u8; self.key_size];
        let mut next = vec![0u8; self.key_size];
        let mut n = 0;
        let mut first = true;
        // A map never holds more than max_entries: a walk that restarts forever stops here.
        while n < 2 * self.max_entries + 2 {
            let previous = (!first).then_some(key.as_slice());
            if !next_key(self.fd.as_fd(), previous, &mut next) {
                break;
            }
            first = false;
            n += 1;
            std::mem::swap(&mut key, &mut next);
        }
        n
    }

    /// Evictions so far, from the created/ended counters read by `created` and `ended`
    /// (called before and after the walk).
    pub fn evicted(&self, created: impl FnOnce() -> u64, ended: impl FnOnce() -> u64) -> u64 {
        let created = created();
        let entries = self.entries() as u64;
        let ended = ended();
        let now = created.saturating_sub(ended).saturating_sub(entries);
        self.reported.fetch_max(now, Ordering::Relaxed).max(now)
    }
}

/// BPF_MAP_GET_NEXT_KEY: the key after `key` (the first key when None) into `next`.
fn next_key(fd: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> bool {
    use aya_obj::generated::{bpf_attr, bpf_cmd::BPF_MAP_GET_NEXT_KEY};
    // SAFETY: a zeroed plain-data kernel struct; the kernel reads key_size bytes at `key` and
    // writes key_size bytes at `next`, both live across the call and that long.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_2.map_fd = fd.as_raw_fd() as u32;
    attr.__bindgen_anon_2.key = key.map_or(0, |k| k.as_ptr() as u64);
    attr.__bindgen_anon_2.__bindgen_anon_1.next_key = next.as_mut_ptr() as u64;
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_GET_NEXT_KEY as libc::c_long,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    ret == 0
}
