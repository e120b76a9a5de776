//! The socket object (`tracer-sock`): syscall tracepoints (socket, bind, listen, accept,
//! connect, close, shutdown, UDP send/recv), `sock:inet_sock_set_state` (raw), a passive
//! `cgroup/sock_release`, the data totals of `tracer trace`, and `sched:sched_process_fork` /
//! `sched_process_free` to follow `--pid` into children.
//!
//! Every syscall is traced as an enter/exit pair: enter records the arguments (and the socket's
//! local port *before* the call) in `PENDING`, exit reads what the kernel actually did from the
//! socket itself and writes one `SockEvent` to `EVENTS`. Kernel struct offsets arrive in
//! `OFFSETS` from user space (BTF); nothing here hard-codes a kernel layout.
//!
//! The programs' function names are their names in the object: user space
//! (`tracer/src/kernel/loader.rs`) attaches them, and finds the maps, by name.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// The maps and load-time globals of this object, and the counters' updates.
#[cfg(target_arch = "bpf")]
#[macro_use]
mod maps;

#[cfg(target_arch = "bpf")]
mod data;
#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod filter;
#[cfg(target_arch = "bpf")]
mod floor;
#[cfg(target_arch = "bpf")]
mod health;
#[cfg(target_arch = "bpf")]
mod hooks;
#[cfg(target_arch = "bpf")]
mod latency;
#[cfg(target_arch = "bpf")]
mod pending;
#[cfg(target_arch = "bpf")]
mod pids;
#[cfg(target_arch = "bpf")]
mod release;
#[cfg(target_arch = "bpf")]
mod sk;
#[cfg(target_arch = "bpf")]
mod sockaddr;
#[cfg(target_arch = "bpf")]
mod state;
#[cfg(target_arch = "bpf")]
mod syscalls;
