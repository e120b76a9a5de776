//! The TCP state machine: `sock:inet_sock_set_state` as a raw tracepoint. It may run in softirq,
//! so the task on the CPU is the socket's owner only when it is inside a syscall on that very
//! socket (its `PENDING` record says so); user space attributes the rest through its table.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tracer_common::{counter, flag, kind, tcp_state, SockEvent, IPPROTO_TCP};
use tracer_ebpf::{
    maps::EVENTS,
    mem::{get16, put16},
    set,
    time::now_ns,
    window::read,
};

use crate::{
    emit::{count_state, wakeup},
    filter::{process_comm, process_selected, selected},
    latency,
    maps::{bump, PENDING},
    sk::{addresses, netns_of, protocol_and_type, SkCommon},
};

/// `serve`'s transitions other than into CLOSE: counted, not sent (the socket table only
/// needs to hear of the end). Two small reads instead of the whole `sock_common` unless a
/// namespace or port filter needs the endpoints.
#[inline(always)]
fn count_transition_only(sk: u64, old: u8, new: u8) {
    let (protocol, _) = protocol_and_type(sk);
    if protocol != IPPROTO_TCP {
        return;
    }
    let (family, netns, lport, rport) = if filt!(netns) == 0 && filt!(port_count) == 0 {
        (read::<u16>(sk, off!(skc_family)).unwrap_or(0), 0, 0, 0)
    } else {
        let mut common = SkCommon::empty();
        if common.load(sk).is_none() {
            return;
        }
        (
            common.get(off!(skc_family)).unwrap_or(0),
            netns_of(&common),
            common.get(off!(skc_num)).unwrap_or(0),
            u16::from_be(common.get::<u16>(off!(skc_dport)).unwrap_or(0)),
        )
    };
    if selected(IPPROTO_TCP, family, netns, lport, rport) {
        count_state(family, old, new, 0);
        latency::transition(sk, family, old, new);
    }
}

/// A raw tracepoint: the kernel hands over `(sk, oldstate, newstate)` without building the
/// tracepoint's record, and only a run of this same program on this CPU (a transition in
/// softirq interrupting this program) is skipped, not every run that finds another tracing
/// program active (which is how a perf-event tracepoint program nests).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let _ = try_state(&ctx);
    0
}

/// One transition, as the ring record reports it.
struct Transition {
    sk: u64,
    old: u8,
    new: u8,
    family: u16,
    lport: u16,
    rport: u16,
    netns: u32,
    sk_err: i32,
    /// SYN_RECV → ESTABLISHED: the handshake's SYN-ACK round trip in µs (0: not measured).
    handshake_us: u32,
    laddr: [u64; 2],
    raddr: [u64; 2],
}

/// The task on the CPU, when it owns the socket: it is inside a syscall on it.
struct Owner {
    flags: u8,
    uid: u32,
    comm: [u64; 2],
    thread: [u64; 2],
    cgroup: u64,
}

#[inline(always)]
fn try_state(ctx: &RawTracePointContext) -> Option<()> {
    let sk: u64 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) as u8;
    let new = ctx.arg::<u64>(2) as u8;
    if filt!(metrics_only) != 0 && new != tcp_state::CLOSE {
        count_transition_only(sk, old, new);
        return None;
    }
    let mut common = SkCommon::empty();
    common.load(sk)?;
    // What the tracepoint itself reads: TCP only (it also fires for SCTP, DCCP, MPTCP).
    let (protocol, _) = protocol_and_type(sk);
    if protocol != IPPROTO_TCP {
        return None;
    }
    let family: u16 = common.get(off!(skc_family))?;
    let rport = u16::from_be(common.get::<u16>(off!(skc_dport)).unwrap_or(0));
    // The local port is the socket's own `skc_num` while it holds one. On the way into CLOSE
    // the kernel has already released the port (`skc_num` = 0), and `inet_sport` still names
    // the port it had.
    let mut lport: u16 = common.get(off!(skc_num)).unwrap_or(0);
    if lport == 0 && new == tcp_state::CLOSE {
        lport = u16::from_be(read::<u16>(sk, off!(inet_sport)).unwrap_or(0));
    }
    let netns = netns_of(&common);
    if !selected(IPPROTO_TCP, family, netns, lport, rport) {
        return None;
    }
    // Only a transition into CLOSE says anything with its error (refused, reset, timed out).
    let sk_err = if new == tcp_state::CLOSE {
        read::<i32>(sk, off!(sk_err)).unwrap_or(0)
    } else {
        0
    };
    if filt!(by_pid) == 0 && filt!(by_comm) == 0 && filt!(by_cgroup) == 0 {
        // A transition in softirq cannot be told to belong to a --pid/--comm process here;
        // with such a filter the agent counts transitions after attributing them.
        count_state(family, old, new, sk_err);
        latency::transition(sk, family, old, new);
    }
    let (laddr, raddr) = addresses(&common, family);
    // The kernel has just timed the SYN-ACK's round trip (`srtt_us`, 8 times the first
    // sample; none when the SYN-ACK was sent again: Karn's rule).
    let handshake_us = if old == tcp_state::SYN_RECV && new == tcp_state::ESTABLISHED {
        read::<u32>(sk, off!(tcp_srtt_us)).unwrap_or(0) >> 3
    } else {
        0
    };
    let transition = Transition {
        sk,
        old,
        new,
        family,
        lport,
        rport,
        netns,
        sk_err,
        handshake_us,
        laddr,
        raddr,
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let owner = owner_in_context(pid_tgid, sk, old, new);
    send(&transition, &owner, pid_tgid)
}

/// Whoever is on the CPU (often softirq) is only the owner when this thread is inside a
/// syscall on this very socket (connect, listen, close …), or when the transition itself
/// happens only inside its owner's call: CLOSE → SYN_SENT (connect, a fast-open send) and
/// CLOSE → LISTEN (listen). The socket path has no syscall records: those two tell it.
#[inline(always)]
fn owner_in_context(pid_tgid: u64, sk: u64, old: u8, new: u8) -> Owner {
    let mut owner = Owner {
        flags: 0,
        uid: 0,
        comm: [0; 2],
        thread: [0; 2],
        cgroup: 0,
    };
    // SAFETY: the reference is used at once, to copy a few fields; a concurrent update of the
    // record by its own thread can at worst give a mix of old and new values (map values
    // stay valid memory for the program's run).
    if let Some(pending) = unsafe { PENDING.get(pid_tgid) } {
        if pending.ev.sk == sk {
            owner.flags = flag::OWNER_IN_CONTEXT;
            owner.uid = pending.ev.uid;
            owner.comm = get16(&pending.ev.comm);
            owner.thread = get16(&pending.ev.thread);
            owner.cgroup = pending.ev.cgroup;
            return owner;
        }
    }
    // Only a selected process's own call (--pid/--comm): the flag tells user space to adopt
    // the socket for the caller, which a filtered-out process must never get.
    let own_call =
        old == tcp_state::CLOSE && (new == tcp_state::SYN_SENT || new == tcp_state::LISTEN);
    if own_call && process_selected((pid_tgid >> 32) as u32) {
        let mut comm = [0u8; 16];
        process_comm(&mut comm);
        owner.flags = flag::OWNER_IN_CONTEXT;
        owner.uid = bpf_get_current_uid_gid() as u32;
        owner.comm = get16(&comm);
        owner.thread = match bpf_get_current_comm() {
            Ok(thread) => get16(&thread),
            Err(_) => [0; 2],
        };
        owner.cgroup = crate::filter::current_cgroup();
    }
    owner
}

/// Writes the STATE record straight into the ring, every field: no event on the stack, no
/// copy, no memset.
#[inline(always)]
fn send(t: &Transition, owner: &Owner, pid_tgid: u64) -> Option<()> {
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        bump(counter::LOST);
        return None;
    };
    // SAFETY: `reserve` returned room for one `SockEvent` in the ring (8-byte aligned), ours
    // alone until `submit`/`discard`. Every field is written below before anything reads it
    // or the record is submitted; `SockEvent` is plain integers, so no write drops a value.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    set!(ev.kind, kind::STATE);
    set!(ev.family, t.family);
    set!(ev.lport, t.lport);
    set!(ev.rport, t.rport);
    set!(ev.protocol, IPPROTO_TCP);
    set!(ev.sock_type, 1);
    set!(ev.old_state, t.old);
    set!(ev.new_state, t.new);
    set!(ev.flags, owner.flags);
    set!(ev._pad[0], 0);
    set!(ev._pad[1], 0);
    set!(ev._pad[2], 0);
    set!(ev.pid, (pid_tgid >> 32) as u32);
    set!(ev.tid, pid_tgid as u32);
    set!(ev.uid, owner.uid);
    set!(ev.netns, t.netns);
    set!(ev.fd, 0);
    set!(ev.sk_err, t.sk_err);
    set!(ev.ts_ns, now_ns());
    set!(ev.sk, t.sk);
    set!(ev.parent_sk, 0);
    set!(ev.ret, 0);
    set!(ev.arg, t.handshake_us as i64);
    put16(&mut ev.laddr, t.laddr);
    put16(&mut ev.raddr, t.raddr);
    put16(&mut ev.comm, owner.comm);
    put16(&mut ev.thread, owner.thread);
    set!(ev.cgroup, owner.cgroup);
    entry.submit(wakeup());
    Some(())
}
