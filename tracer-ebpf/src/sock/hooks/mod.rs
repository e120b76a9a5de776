//! The socket path: cgroup socket programs and `sock_ops` at the cgroup v2 root, instead of
//! syscall tracepoints. A syscall tracepoint, once any is enabled, sends every syscall of
//! every task on the machine through the kernel's slow tracing path; these hooks run only
//! where a socket does something (created, bound, listening, connecting, established, a UDP
//! datagram with an address, released). Every program is passive: it returns "allow" (1).
//!
//! What a hook cannot know is marked, never made up: no fd and no return value
//! (`flag::FROM_HOOK`), and a hook that runs in softirq (a connection the kernel completed
//! for a listener) does not name the task on the CPU as the owner (`OWNER_IN_CONTEXT`
//! clear): user space attributes it through the listener.
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid};
use tracer_common::{
    counter, flag, kind, stats, tcp_state, SockEvent, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP,
};
use tracer_ebpf::{maps::EVENTS, mem::put16, set, time::now_ns};

use crate::{
    emit::wakeup,
    filter::{fill_names, process_selected, selected},
    maps::{bump, stat},
    sk::{addresses, netns_of, protocol_and_type, SkCommon},
};

pub mod bind;
pub mod create;
pub mod tcp;
pub mod udp;

/// `SOCK_BINDPORT_LOCK` in `sk_userlocks`: the port was the caller's choice (bind with a
/// non-zero port). Without it, a socket's port is one the kernel chose.
const SOCK_BINDPORT_LOCK: u8 = 8;

/// Who the task on the CPU is to the socket.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The hook runs inside the owner's own call on the socket (create, bind, listen,
    /// connect, a UDP send): its pid, uid and names are the owner's.
    Owner,
    /// The hook may run in softirq, under whatever task was on the CPU: no owner recorded.
    Unknown,
}

/// One hook event: what the hook knows beside the socket's own fields.
pub struct Hook {
    pub kind: u16,
    pub sk: u64,
    pub caller: Caller,
    /// Extra bits of `flag` (KERNEL_CHOSE_PORT ...).
    pub flags: u8,
    /// listen: the backlog in effect.
    pub arg: i64,
    /// A UDP datagram's other end, from the hook's own address (an unconnected socket has
    /// none): port 0 when the socket's own remote end is the one to report.
    pub remote: Remote,
}

/// An address a hook was handed (network byte order, IPv4 in the first 4 bytes) and its port.
#[derive(Clone, Copy)]
pub struct Remote {
    pub addr: [u64; 2],
    pub port: u16,
    /// An IPv4 address (a v4 hook's `user_ip4`), which an IPv6 socket reports IPv4-mapped.
    pub v4: bool,
}

impl Remote {
    pub const NONE: Remote = Remote {
        addr: [0; 2],
        port: 0,
        v4: false,
    };
}

/// `::ffff:a.b.c.d` for the IPv4 address in the first word: an IPv6 socket sending to an IPv4
/// peer runs the v4 hook with the IPv4 address.
#[inline(always)]
fn v4_mapped(addr: [u64; 2]) -> [u64; 2] {
    [0, 0xffff_0000 | (addr[0] << 32)]
}

/// The socket's fields a record carries, read once.
struct Fields {
    family: u16,
    protocol: u8,
    sock_type: u8,
    state: u8,
    lport: u16,
    rport: u16,
    netns: u32,
    laddr: [u64; 2],
    raddr: [u64; 2],
}

#[inline(always)]
fn fields(sk: u64, common: &SkCommon) -> Option<Fields> {
    let family: u16 = common.get(off!(skc_family))?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let (protocol, sock_type) = protocol_and_type(sk);
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return None;
    }
    let (laddr, raddr) = addresses(common, family);
    Some(Fields {
        family,
        protocol,
        sock_type,
        state: common.get(off!(skc_state)).unwrap_or(0),
        lport: common.get(off!(skc_num)).unwrap_or(0),
        rport: u16::from_be(common.get::<u16>(off!(skc_dport)).unwrap_or(0)),
        netns: netns_of(common),
        laddr,
        raddr,
    })
}

/// Whether the kernel chose the socket's port (it has one, and not from a bind that named it).
#[inline(always)]
pub fn kernel_chose_port(sk: u64, common: &SkCommon) -> bool {
    let port: u16 = common.get(off!(skc_num)).unwrap_or(0);
    let locks: u8 = tracer_ebpf::window::read(sk, off!(sk_userlocks)).unwrap_or(0);
    port != 0 && locks & SOCK_BINDPORT_LOCK == 0
}

/// The process filters a hook in the owner's context can apply now (--pid, --comm). A hook in
/// softirq cannot: user space filters those events after attributing them.
#[inline(always)]
pub fn caller_selected(caller: Caller) -> bool {
    caller == Caller::Unknown || process_selected((bpf_get_current_pid_tgid() >> 32) as u32)
}

/// Counts the event, then (unless `count_only`) writes it into the ring. Returns whether the
/// socket passed the socket filters and its record (if one was due) reached the ring.
#[inline(always)]
pub fn report(hook: &Hook, common: &SkCommon, count_only: bool) -> bool {
    let Some(mut f) = fields(hook.sk, common) else {
        return false;
    };
    let rport = if hook.remote.port != 0 {
        hook.remote.port
    } else {
        f.rport
    };
    if !selected(f.protocol, f.family, f.netns, f.lport, rport) {
        return false;
    }
    if hook.caller == Caller::Owner
        || (filt!(by_pid) == 0 && filt!(by_comm) == 0 && filt!(by_cgroup) == 0)
    {
        stat(stats::event_index(hook.kind, f.protocol, f.family));
    }
    if !count_only {
        if hook.remote.port != 0 {
            f.raddr = if hook.remote.v4 && f.family == AF_INET6 {
                v4_mapped(hook.remote.addr)
            } else {
                hook.remote.addr
            };
            f.rport = hook.remote.port;
        }
        return write(hook, &f);
    }
    true
}

/// Writes every field of the record straight into the ring: no event on the stack. False
/// when the ring was full (counted as lost).
#[inline(always)]
fn write(hook: &Hook, f: &Fields) -> bool {
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        bump(counter::LOST);
        return false;
    };
    // SAFETY: `reserve` returned room for one `SockEvent` in the ring (8-byte aligned), ours
    // alone until `submit`. Every field is written below before the record is submitted;
    // `SockEvent` is plain integers, so no write drops a value.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    let owner = hook.caller == Caller::Owner;
    set!(ev.kind, hook.kind);
    set!(ev.family, f.family);
    set!(ev.lport, f.lport);
    set!(ev.rport, f.rport);
    set!(ev.protocol, f.protocol);
    set!(ev.sock_type, f.sock_type);
    set!(ev.old_state, 0);
    let state = if hook.kind == kind::ACCEPT {
        tcp_state::ESTABLISHED
    } else {
        f.state
    };
    set!(ev.new_state, state);
    let in_context = if owner { flag::OWNER_IN_CONTEXT } else { 0 };
    let from_user = if hook.remote.port != 0 {
        flag::REMOTE_FROM_USER
    } else {
        0
    };
    set!(
        ev.flags,
        hook.flags | flag::FROM_HOOK | in_context | from_user
    );
    set!(ev._pad[0], 0);
    set!(ev._pad[1], 0);
    set!(ev._pad[2], 0);
    if owner {
        let pid_tgid = bpf_get_current_pid_tgid();
        set!(ev.pid, (pid_tgid >> 32) as u32);
        set!(ev.tid, pid_tgid as u32);
        set!(ev.uid, bpf_get_current_uid_gid() as u32);
        fill_names(ev);
    } else {
        set!(ev.pid, 0);
        set!(ev.tid, 0);
        set!(ev.uid, 0);
        put16(&mut ev.comm, [0; 2]);
        put16(&mut ev.thread, [0; 2]);
        set!(ev.cgroup, 0);
    }
    set!(ev.netns, f.netns);
    set!(ev.fd, -1);
    set!(ev.sk_err, 0);
    set!(ev.ts_ns, now_ns());
    set!(ev.sk, hook.sk);
    set!(ev.parent_sk, 0);
    set!(ev.ret, 0);
    set!(ev.arg, hook.arg);
    put16(&mut ev.laddr, f.laddr);
    put16(&mut ev.raddr, f.raddr);
    entry.submit(wakeup());
    true
}
