//! `sock_ops`: the TCP moments no cgroup socket hook sees. `TCP_CONNECT_CB` runs in the
//! caller's `connect()` once the kernel has chosen the local port (the `SYN_SENT` transition
//! comes before that choice, with port 0); `TCP_LISTEN_CB` in the caller's `listen()`;
//! `PASSIVE_ESTABLISHED_CB` when the kernel completes a handshake for a listener (softirq:
//! the connection waits in the accept queue, owned by the listener's holders). The state
//! machine itself stays with the `inet_sock_set_state` raw tracepoint, so no per-socket
//! callback flag is set and the program runs only at these moments (and a few per-connection
//! setup queries, which it leaves unanswered).
use aya_ebpf::{macros::sock_ops, programs::SockOpsContext};
use tracer_common::{flag, kind};
use tracer_ebpf::{mem::address_of, window::read};

use super::{caller_selected, kernel_chose_port, report, Caller, Hook, Remote};
use crate::sk::SkCommon;

const TCP_CONNECT_CB: u32 = 3;
const PASSIVE_ESTABLISHED_CB: u32 = 5;
const TCP_LISTEN_CB: u32 = 11;

#[sock_ops]
pub fn tcp_ops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == TCP_CONNECT_CB || op == PASSIVE_ESTABLISHED_CB || op == TCP_LISTEN_CB {
        // SAFETY: the context is the kernel's `bpf_sock_ops`; the verifier checks the access
        // (a full socket at these three ops). The address is only handed to probe reads.
        let sk = address_of(unsafe { (*ctx.ops).__bindgen_anon_2.sk });
        let _ = on_op(op, sk);
    }
    1 // no verdict here: 1 is "ok", and no reply is set for the setup queries
}

#[inline(always)]
fn on_op(op: u32, sk: u64) -> Option<()> {
    let caller = if op == PASSIVE_ESTABLISHED_CB {
        Caller::Unknown
    } else {
        Caller::Owner
    };
    if !caller_selected(caller) {
        return None;
    }
    let mut common = SkCommon::empty();
    common.load(sk)?;
    let hook = match op {
        TCP_CONNECT_CB => Hook {
            kind: kind::CONNECT,
            sk,
            caller,
            flags: if kernel_chose_port(sk, &common) {
                flag::KERNEL_CHOSE_PORT
            } else {
                0
            },
            arg: 0,
            remote: Remote::NONE,
        },
        TCP_LISTEN_CB => Hook {
            kind: kind::LISTEN,
            sk,
            caller,
            flags: 0,
            // What the kernel keeps: the caller's backlog capped at net.core.somaxconn.
            arg: read::<u32>(sk, off!(sk_max_ack_backlog)).unwrap_or(0) as i64,
            remote: Remote::NONE,
        },
        // PASSIVE_ESTABLISHED runs just before the kernel moves the connection from SYN_RECV
        // to ESTABLISHED, in the same softirq: reported as what it is, established.
        _ => Hook {
            kind: kind::ACCEPT,
            sk,
            caller,
            flags: 0,
            arg: 0,
            remote: Remote::NONE,
        },
    };
    report(&hook, &common, false);
    Some(())
}
