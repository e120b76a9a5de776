//! Socket lifecycle programs: syscall tracepoints (socket, bind, listen, accept, connect, close,
//! shutdown, UDP send/recv), `sock:inet_sock_set_state` (raw), a passive `cgroup/sock_release`, and
//! `sched:sched_process_fork` to follow `--pid` into children.
//!
//! Every syscall is traced as an enter/exit pair: enter records the arguments (and the socket's
//! local port *before* the call) in `PENDING`, exit reads what the kernel actually did from the
//! socket itself and writes one `SockEvent` to `EVENTS`. Kernel struct offsets arrive in
//! `OFFSETS` from user space (BTF); nothing here hard-codes a kernel layout.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds on map values: the bpf target has no atomic types.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod programs;
#[cfg(target_arch = "bpf")]
mod window;
