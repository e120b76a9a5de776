//! What both eBPF objects share: kernel-memory windows ([`window`]), user-memory reads
//! ([`user`]), volatile stores and loads ([`mem`]), the ring buffer and per-CPU counters
//! ([`maps`]), atomic adds on map values ([`atomic`]) and the clock ([`time`]).
//!
//! Only items without a symbol of their own belong here, and the one map both objects hold
//! (`EVENTS`): every `#[no_mangle]` static of this library (a map, a load-time global) is
//! exported into *both* objects, whether a binary uses it or not. So the socket object's own
//! maps and globals live in its binary (`sock/maps.rs`), not here.
//!
//! Everything is `#[inline(always)]`: a call between BPF functions costs a frame on the
//! 512-byte stack, and the verifier checks each program whole anyway.
// Only the bpf target has anything to build: on the host (a workspace-wide `cargo check`) the
// library is empty, and the binaries are an empty `main`.
#![cfg(target_arch = "bpf")]
#![no_std]
// Atomic adds on map values: the bpf target has no atomic types.
#![feature(core_intrinsics)]
#![allow(internal_features)]

pub mod atomic;
pub mod maps;
pub mod mem;
pub mod time;
pub mod user;
pub mod window;

/// The one panic handler of both objects (a `no_std` binary needs one, and one crate may give
/// it). Nothing here panics at run time: the verifier refuses a program that could reach it.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
