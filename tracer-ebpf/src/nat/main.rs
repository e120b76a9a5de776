//! The NAT object (`tracer-nat`): one `BPF_PROG_TYPE_NETFILTER` program, attached by the agent
//! right after source NAT on the last NAT hook of every path (POSTROUTING and INPUT; IPv4 and
//! IPv6), in each network namespace it watches.
//!
//! It reads the packet's conntrack entry (`skb->_nfct`) and, the first time an entry shows a
//! finished translation, writes one `NatEvent` to `EVENTS`; later packets only add to the
//! binding's counters in `NAT_SEEN` (an LRU map, so it never grows without bound). It never
//! changes a packet and always returns `NF_ACCEPT`.
//!
//! aya 0.14 cannot load this program type, so the section name below only has to be one
//! aya-obj parses: the agent's own loader (tracer/src/kernel/nat.rs) loads it as type 32, and
//! finds `tracer_nat`, `NAT_OFFSETS` and the maps by name (never rename them).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[macro_use]
mod maps;

#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod program;
