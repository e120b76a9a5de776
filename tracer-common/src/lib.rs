//! Records that cross the ring buffer between the eBPF programs and the agent, their stable
//! kind numbers, and the small pure helpers both sides need.
//!
//! Nothing here knows a kernel struct layout: those offsets come from BTF at load time.
#![no_std]

/// What happened. Numbers are stable and never reused: recorded streams and JSON consumers
/// depend on them.
pub mod kind {
    pub const SOCKET: u16 = 1;
    pub const BIND: u16 = 2;
    pub const LISTEN: u16 = 3;
    pub const ACCEPT: u16 = 4;
    pub const CONNECT: u16 = 5;
    pub const CLOSE: u16 = 6;
    pub const SHUTDOWN: u16 = 7;
    pub const SENDTO: u16 = 8;
    pub const RECVFROM: u16 = 9;
    pub const SENDMSG: u16 = 10;
    pub const RECVMSG: u16 = 11;
    /// `sock:inet_sock_set_state`: a TCP state transition. `arg`: SYN_RECV → ESTABLISHED,
    /// the handshake's SYN-ACK round trip in µs (0 when not measured).
    pub const STATE: u16 = 12;
    /// The socket itself was released (last reference to its file gone).
    pub const RELEASE: u16 = 13;
    /// Just before RELEASE, when data totals were kept for the socket (`tracer trace`): how
    /// much it sent and received. See [`super::DataTotals`].
    pub const DATA: u16 = 14;
    /// `tcp:tcp_retransmit_skb` / `tcp:tcp_retransmit_synack`: a segment sent again.
    /// `new_state` is the socket's state (SYN_SENT: the SYN), `arg` 1 for a SYN-ACK resent for
    /// a connection still in its listener's queue (`sk` is then the listener). Only resends
    /// that left are reported (`ret` 0).
    pub const RETRANSMIT: u16 = 15;
    /// `tcp:tcp_send_reset` / `tcp:tcp_receive_reset`: an RST. `ret` 0 sent, 1 received; `arg`
    /// the kernel's `enum sk_rst_reason` of a sent one; `new_state` the socket's state (0 when
    /// no socket: a segment for a port nobody listens on, endpoints from the segment).
    pub const RESET: u16 = 16;
    /// `skb:kfree_skb` for a TCP or UDP packet: dropped, `arg` the kernel's
    /// `enum skb_drop_reason`; `sk` the socket it was for or from (0: none, e.g. NO_SOCKET),
    /// endpoints from the packet (local = its destination when received).
    pub const DROP: u16 = 17;
    /// One past the highest kind; used to size per-kind tables.
    pub const COUNT: u16 = 18;
}

/// TCP health counters in the kernel's `HEALTH` per-CPU hash (keys from [`health::key`]),
/// summed whether or not the ring had room.
pub mod health {
    pub const RETRANSMIT: u8 = 1;
    pub const RESET: u8 = 2;
    pub const DROP: u8 = 3;
    /// Keys the map can hold: every (class, a, b, c) below fits (3 × 256 × 3 × 3 at most).
    pub const MAX_KEYS: u32 = 8192;

    /// RETRANSMIT: (state, 1 for a queued connection's SYN-ACK, family slot);
    /// RESET: (0 sent / 1 received, state, family slot);
    /// DROP: (reason, capped at 255; protocol slot; family slot).
    pub const fn key(class: u8, a: u8, b: u8, c: u8) -> u32 {
        (class as u32) << 24 | (a as u32) << 16 | (b as u32) << 8 | c as u32
    }

    pub const fn parts(key: u32) -> (u8, u8, u8, u8) {
        (
            (key >> 24) as u8,
            (key >> 16) as u8,
            (key >> 8) as u8,
            key as u8,
        )
    }
}

/// Bits of [`SockEvent::flags`].
pub mod flag {
    /// The local port was 0 before the call and non-zero after: the kernel chose it.
    pub const KERNEL_CHOSE_PORT: u8 = 1 << 0;
    /// The remote address came from the caller's `sockaddr`, not from the socket.
    pub const REMOTE_FROM_USER: u8 = 1 << 1;
    /// The local address is what the caller asked for (the call failed before the kernel set it).
    pub const LOCAL_FROM_USER: u8 = 1 << 2;
    /// The caller passed a `sockaddr` tracer could not use (too short, unknown family).
    pub const BAD_SOCKADDR: u8 = 1 << 3;
    /// A STATE event that ran inside a syscall of the socket's owner on that very socket
    /// (connect, listen, close …): its pid/comm/uid are the owner's and can be trusted.
    pub const OWNER_IN_CONTEXT: u8 = 1 << 4;
    /// An accept whose enter was missed (the caller was already blocked in accept when tracing
    /// started): the listening fd is unknown.
    pub const ENTER_MISSED: u8 = 1 << 5;
    /// From a socket hook (the socket path), not a syscall: no fd and no return value are
    /// known (`fd` is -1, `ret` 0). Owner fields are meaningful only with OWNER_IN_CONTEXT.
    pub const FROM_HOOK: u8 = 1 << 6;
}

/// Index of the counters in the `COUNTERS` per-CPU array.
pub mod counter {
    /// `bpf_ringbuf_reserve` failed: an event was lost.
    pub const LOST: u32 = 0;
    /// A syscall-exit found no matching enter (the pending map was full).
    pub const PENDING_FULL: u32 = 1;
    /// Pending records created (`PENDING` is an LRU map: a thread blocked for long cannot
    /// hold a slot others need, and what the map pushed out is counted from these: user space
    /// reads `BEGUN - ENDED - entries now` as the evictions, never more than happened).
    pub const PENDING_BEGUN: u32 = 2;
    /// Pending records removed by their exit, or replaced by the thread's next call.
    pub const PENDING_ENDED: u32 = 3;
    /// Per-socket data totals created / removed at release (`DATA`, LRU, counted the same way).
    pub const DATA_INSERTED: u32 = 4;
    pub const DATA_REMOVED: u32 = 5;
    /// Processes added to `FILTER_PIDS` at fork / removed at exit (LRU, counted the same way;
    /// user space adds the pids it inserted itself).
    pub const FILTER_INSERTED: u32 = 6;
    pub const FILTER_REMOVED: u32 = 7;
    /// Sockets whose handshake start was kept for a latency (`STARTS`, LRU, counted the same
    /// way).
    pub const STARTS_INSERTED: u32 = 8;
    pub const STARTS_REMOVED: u32 = 9;
    /// Resets and drops for packets no socket had (a port scan makes two per SYN) beyond
    /// [`super::UNOWNED_PER_SECOND`] per CPU: counted in the metrics, not sent (a lost event).
    pub const UNOWNED_LIMITED: u32 = 10;
    pub const COUNT: u32 = 11;
}

/// Layout of the kernel's per-CPU statistics array (`STATS`): counters summed in the kernel at
/// every event the filters let through (whether or not the ring buffer had room), so metrics
/// stay exact under load and `tracer serve` does not need every event to count them.
pub mod stats {
    /// Protocol slots: 0 other, 1 TCP, 2 UDP.
    pub const PROTOS: u32 = 3;
    /// Family slots: 0 other, 1 IPv4, 2 IPv6.
    pub const FAMILIES: u32 = 3;
    /// Event kinds counted (below `kind::DATA`).
    pub const KINDS: u32 = 16;
    /// `kind * PROTOS * FAMILIES + proto * FAMILIES + family`.
    pub const EVENTS: u32 = 0;
    /// TCP transitions: `TRANSITIONS + old * 16 + new`.
    pub const TRANSITIONS: u32 = EVENTS + KINDS * PROTOS * FAMILIES;
    /// Failed connect/bind by errno (errnos ≥ `ERRNOS - 1` share the last slot).
    pub const CONNECT_ERRNOS: u32 = TRANSITIONS + 16 * 16;
    pub const BIND_ERRNOS: u32 = CONNECT_ERRNOS + ERRNOS;
    pub const ERRNOS: u32 = 256;
    /// Latency histograms: bucket `b` counts durations under 2^b µs (the last: the rest).
    pub const LATENCY_BUCKETS: u32 = 32;
    /// A connect's first SYN to its end: `CONNECT_SECONDS + (result * FAMILIES + family) *
    /// LATENCY_BUCKETS + bucket`, result 0 established, 1 failed.
    pub const CONNECT_SECONDS: u32 = BIND_ERRNOS + ERRNOS;
    /// A completed handshake to accept() (syscall path): `ACCEPT_WAIT_SECONDS + family *
    /// LATENCY_BUCKETS + bucket`.
    pub const ACCEPT_WAIT_SECONDS: u32 = CONNECT_SECONDS + 2 * FAMILIES * LATENCY_BUCKETS;
    pub const COUNT: u32 = ACCEPT_WAIT_SECONDS + FAMILIES * LATENCY_BUCKETS;

    /// The histogram bucket of a duration in nanoseconds.
    pub const fn latency_bucket(ns: u64) -> u32 {
        let us = ns / 1000;
        let bucket = 64 - us.leading_zeros();
        if bucket >= LATENCY_BUCKETS {
            LATENCY_BUCKETS - 1
        } else {
            bucket
        }
    }

    pub const fn proto_slot(protocol: u8) -> u32 {
        match protocol {
            super::IPPROTO_TCP => 1,
            super::IPPROTO_UDP => 2,
            _ => 0,
        }
    }

    pub const fn family_slot(family: u16) -> u32 {
        match family {
            super::AF_INET => 1,
            super::AF_INET6 => 2,
            _ => 0,
        }
    }

    pub const fn event_index(kind: u16, protocol: u8, family: u16) -> u32 {
        EVENTS
            + (kind as u32 % KINDS) * PROTOS * FAMILIES
            + proto_slot(protocol) * FAMILIES
            + family_slot(family)
    }

    pub const fn errno_slot(ret: i64) -> u32 {
        let errno = if ret < 0 { -ret } else { 0 };
        if errno >= ERRNOS as i64 {
            ERRNOS - 1
        } else {
            errno as u32
        }
    }
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Tracepoint arguments newer kernels added, which a raw tracepoint program may read only
/// where they exist (the kernel refuses to attach a program that reads past them).
pub mod tp_args {
    /// `tcp_retransmit_skb`'s `err` (Linux 6.17).
    pub const RETRANSMIT_ERR: u8 = 1 << 0;
    /// `tcp_send_reset`'s `reason` (Linux 6.10).
    pub const RESET_REASON: u8 = 1 << 1;
    /// `kfree_skb`'s `rx_sk` (Linux 6.11).
    pub const DROP_RX_SK: u8 = 1 << 2;
}

/// Reset and drop records for packets no socket had, at most, per CPU and second: a flood of
/// them (a port scan, a SYN flood to a closed port) cannot fill the ring the socket events
/// share. Beyond, they are counted (metrics exact) and reported as lost.
pub const UNOWNED_PER_SECOND: u64 = 1000;

/// Maximum number of ports `--port` can select in the kernel.
pub const MAX_PORT_FILTERS: usize = 8;

/// One socket event. Fixed size, no padding (checked below), addresses in network byte order,
/// ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockEvent {
    /// One of [`kind`].
    pub kind: u16,
    /// `AF_INET` or `AF_INET6` (0 when the call failed before a socket existed).
    pub family: u16,
    pub lport: u16,
    pub rport: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    /// `SOCK_STREAM` (1) or `SOCK_DGRAM` (2).
    pub sock_type: u8,
    /// TCP state before the transition (STATE events only).
    pub old_state: u8,
    /// TCP state after the call or transition (the socket's `skc_state`).
    pub new_state: u8,
    /// Bits of [`flag`].
    pub flags: u8,
    pub _pad: [u8; 3],
    /// Process id (tgid) of the task in whose context the hook ran. Not meaningful for STATE
    /// events, which may run in softirq: attribute those through the socket table.
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// Inode number of the network namespace the socket lives in.
    pub netns: u32,
    /// The file descriptor the call was made on (for accept: the listening fd).
    pub fd: i32,
    /// STATE events into CLOSE: the socket's pending error (`sk_err`: refused, reset, timed
    /// out). Other events: 0.
    pub sk_err: i32,
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// Kernel socket identity (`struct sock *`). 0 when no socket was found.
    pub sk: u64,
    /// For accept: the listening socket.
    pub parent_sk: u64,
    /// Syscall return value (negative errno on failure).
    pub ret: i64,
    /// listen: backlog; shutdown: how; socket: requested type; send/recv: requested length.
    pub arg: i64,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    /// The process's name (its thread-group leader's `comm`), NUL-padded: what `ps` and `ss`
    /// show. Any user can set it to any 15 bytes (`prctl(PR_SET_NAME)`): not text.
    pub comm: [u8; 16],
    /// The calling thread's own name (`dig` runs its sockets from a thread named
    /// `isc-net-0000`). Equal to `comm` in a single-threaded process.
    pub thread: [u8; 16],
    /// The caller's cgroup (the inode of its directory in the unified hierarchy; without cgroup
    /// v2, in one v1 controller's: `KernelOffsets::cgroup_v1_subsys`),
    /// which names its container. 0 for a record made outside its owner's call. Last, so a
    /// record of the 144-byte layout before it reads as one with 0 here.
    pub cgroup: u64,
}

pub const SOCK_EVENT_SIZE: usize = 152;
/// The record size before `cgroup` was added (captures of that layout still replay).
pub const SOCK_EVENT_SIZE_V1: usize = 144;
const _: () = assert!(core::mem::size_of::<SockEvent>() == SOCK_EVENT_SIZE);

/// Data totals of one socket, summed in the kernel from `sock:sock_send_length` and
/// `sock:sock_recv_length` (calls that moved at least one byte; `MSG_PEEK` reads excluded).
/// The map value, and the payload of a [`kind::DATA`] event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct DataTotals {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub sends: u32,
    pub receives: u32,
}

impl DataTotals {
    /// A DATA event carries the totals in fields that kind does not otherwise use: `arg` =
    /// bytes sent, `ret` = bytes received, `parent_sk` = sends << 32 | receives.
    pub fn store(&self, ev: &mut SockEvent) {
        ev.arg = self.sent_bytes as i64;
        ev.ret = self.received_bytes as i64;
        ev.parent_sk = ((self.sends as u64) << 32) | self.receives as u64;
    }

    pub fn of(ev: &SockEvent) -> Self {
        DataTotals {
            sent_bytes: ev.arg as u64,
            received_bytes: ev.ret as u64,
            sends: (ev.parent_sk >> 32) as u32,
            receives: ev.parent_sk as u32,
        }
    }
}

/// Byte offsets the eBPF programs need, resolved by the agent at load time from BTF
/// (`/sys/kernel/btf/vmlinux`) and from each tracepoint's `format` file, and handed over as a
/// `.rodata` global so the verifier sees them as constants. Never filled in by hand.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct KernelOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_private_data: u32,
    pub file_f_inode: u32,
    pub inode_i_mode: u32,
    pub socket_sk: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_net: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// Offset of `ns.inum` inside `struct net`.
    pub net_inum: u32,
    pub sk_protocol: u32,
    pub sk_type: u32,
    pub sk_err: u32,
    /// Offset of the first argument in a `syscalls:sys_enter_*` record (`fd`, `family` ...).
    pub tp_syscall_args: u32,
    /// Offset of `ret` in a `syscalls:sys_exit_*` record.
    pub tp_syscall_ret: u32,
    /// `inet_sock.inet_sport`: the local port a socket had, still there on its way into CLOSE.
    pub inet_sport: u32,
    /// Offset of `child_pid` in `sched:sched_process_fork`.
    pub tp_fork_child_pid: u32,
    /// Offset of `pid` in a `sched:sched_process_free` record.
    pub tp_free_pid: u32,
    /// `sock:sock_send_length` / `sock:sock_recv_length` (same layout); 0 when the kernel
    /// lacks them.
    pub tp_data_sk: u32,
    pub tp_data_family: u32,
    pub tp_data_ret: u32,
    pub tp_data_flags: u32,
    /// `task_struct.group_leader` and `task_struct.comm`: the process's name (its thread-group
    /// leader's), which `ps` and `ss` show, beside the calling thread's own.
    pub task_group_leader: u32,
    pub task_comm: u32,
    /// `sock.sk_userlocks` (a byte; `SOCK_BINDPORT_LOCK` = the caller named the port) and
    /// `sock.sk_max_ack_backlog` (a listener's backlog in effect), for the socket path.
    pub sk_userlocks: u32,
    pub sk_max_ack_backlog: u32,
    /// `struct sk_buff` (`head`, `network_header`, `transport_header`, `protocol`, `sk`, `dev`)
    /// and `net_device.nd_net`: a dropped or reset packet's endpoints and namespace when no
    /// socket names them. 0 where not plain fields: the health hooks are not loaded then.
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub skb_protocol: u32,
    pub skb_sk: u32,
    pub skb_dev: u32,
    pub netdev_nd_net: u32,
    /// `tcp_sock.srtt_us`: a passive handshake's SYN-ACK round trip, read as it completes
    /// (0: not a plain field; the handshake time is then not reported).
    pub tcp_srtt_us: u32,
    /// Without cgroup v2 (or `TRACER_CGROUP_V1`): the caller's cgroup is read in one v1
    /// controller's hierarchy, `task->cgroups->subsys[N]->cgroup->kn->id`. `cgroup_v1_subsys`
    /// is N + 1 (0: the cgroup v2 id from the helper, and the rest unused).
    pub cgroup_v1_subsys: u32,
    pub task_cgroups: u32,
    pub css_set_subsys: u32,
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
}

/// What the kernel side filters before an event reaches the ring buffer. Zero means "any".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct KernelFilter {
    /// 1: only processes whose tgid is in the `FILTER_PIDS` map (children are added on fork).
    pub by_pid: u8,
    /// 1: only processes whose comm equals `comm`.
    pub by_comm: u8,
    /// `IPPROTO_TCP`, `IPPROTO_UDP` or 0.
    pub protocol: u8,
    /// 1: report UDP send/recv calls (the hot path); 0 leaves those hooks idle.
    pub udp_data: u8,
    /// `AF_INET`, `AF_INET6` or 0.
    pub family: u16,
    /// How many of `ports` are in use.
    pub port_count: u16,
    /// Network namespace inode, or 0.
    pub netns: u32,
    /// 0: every record may wake the agent (it only waits for readiness). Otherwise records are
    /// submitted without a wake-up until this many bytes wait in the ring, and the agent also
    /// drains on a timer: one wake-up per many records instead of one per few (each costs an
    /// interrupt on the traced CPU and a context switch on the agent's).
    pub wakeup_bytes: u32,
    pub ports: [u16; MAX_PORT_FILTERS],
    pub comm: [u8; 16],
    /// 1 (`serve` without a process filter): TCP transitions other than into CLOSE, close(2),
    /// and UDP sends and receives that did not autobind the socket are only counted in
    /// `STATS`, never sent: the socket table, all `serve` keeps, learns a socket's end from its
    /// release and its CLOSE transition. `sys_exit_close` is then not attached at all.
    pub metrics_only: u8,
    /// 1: the syscall path (accept() is seen, so the accept-queue wait can be measured).
    pub syscall_path: u8,
    /// Bits of [`tp_args`]: the optional tracepoint arguments this kernel passes.
    pub tp_args: u8,
    /// 1 (`--container`/`--pod`): a call made by a task whose cgroup (as `SockEvent::cgroup`) the agent has
    /// judged not selected (`CGROUP_VERDICTS` holds 0 for it) is dropped; a cgroup the agent
    /// has not judged yet passes, so the agent can.
    pub by_cgroup: u8,
    /// Drop reasons `kfree_skb` passes over at once (this kernel's values of QUEUE_PURGE and
    /// SOCKET_CLOSE: data a socket's own close discards, once per connection, not packets
    /// lost); 0 = unused slot.
    pub quiet_drops: [u32; 2],
}

/// The IANA class of a port number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortClass {
    /// 0-1023, reserved for standard services.
    WellKnown,
    /// 1024-49151, registered with IANA for specific applications.
    Registered,
    /// 49152-65535, IANA's dynamic/private range.
    Dynamic,
}

impl PortClass {
    pub const fn of(port: u16) -> Self {
        match port {
            0..=1023 => PortClass::WellKnown,
            1024..=49151 => PortClass::Registered,
            _ => PortClass::Dynamic,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            PortClass::WellKnown => "well-known",
            PortClass::Registered => "registered",
            PortClass::Dynamic => "dynamic",
        }
    }
}

/// TCP state names as the kernel spells them (`include/net/tcp_states.h`), without `TCP_`.
pub const fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        13 => "BOUND_INACTIVE",
        _ => "UNKNOWN",
    }
}

pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_class_boundaries() {
        assert_eq!(PortClass::of(0), PortClass::WellKnown);
        assert_eq!(PortClass::of(1023), PortClass::WellKnown);
        assert_eq!(PortClass::of(1024), PortClass::Registered);
        assert_eq!(PortClass::of(49151), PortClass::Registered);
        assert_eq!(PortClass::of(49152), PortClass::Dynamic);
        assert_eq!(PortClass::of(65535), PortClass::Dynamic);
    }

    #[test]
    fn data_totals_round_trip_through_an_event() {
        let totals = DataTotals {
            sent_bytes: 78,
            received_bytes: 1234,
            sends: 1,
            receives: 2,
        };
        let mut ev = SockEvent::default();
        totals.store(&mut ev);
        assert_eq!(DataTotals::of(&ev), totals);
    }

    #[test]
    fn state_names() {
        assert_eq!(tcp_state_name(tcp_state::TIME_WAIT), "TIME_WAIT");
        assert_eq!(tcp_state_name(tcp_state::SYN_SENT), "SYN_SENT");
        assert_eq!(tcp_state_name(99), "UNKNOWN");
    }
}

/// Network address translation as the netfilter programs see it (`tracer-nat`).
pub mod nat {
    /// Kind number of a [`super::NatEvent`] record in the ring buffer: outside the socket
    /// kinds, stable.
    pub const KIND_BINDING: u16 = 32;

    /// [`super::NatEvent::flags`]: a new conntrack entry (its first packet started the
    /// binding's counters), not an entry seen again after its counters were dropped.
    pub const EV_FRESH: u8 = 1;

    /// `enum ip_conntrack_status` bits (UAPI, `linux/netfilter/nf_conntrack_common.h`).
    /// The entry is in the table: clear on a new entry's first packet, until the last
    /// netfilter hook of its path confirms it.
    pub const IPS_CONFIRMED: u64 = 1 << 3;
    pub const IPS_SRC_NAT: u64 = 1 << 4;
    pub const IPS_DST_NAT: u64 = 1 << 5;
    pub const IPS_SRC_NAT_DONE: u64 = 1 << 7;
    pub const IPS_DST_NAT_DONE: u64 = 1 << 8;

    /// `enum nf_inet_hooks` (UAPI).
    pub const NF_INET_PRE_ROUTING: u8 = 0;
    pub const NF_INET_LOCAL_IN: u8 = 1;
    pub const NF_INET_FORWARD: u8 = 2;
    pub const NF_INET_LOCAL_OUT: u8 = 3;
    pub const NF_INET_POST_ROUTING: u8 = 4;

    /// Bits of [`super::NatEvent::manips`].
    pub const MANIP_SRC: u8 = 1 << 0;
    pub const MANIP_DST: u8 = 1 << 1;

    /// `enum ip_conntrack_info`: values at or above this are packets of the reply direction.
    pub const IP_CT_IS_REPLY: u64 = 3;
    /// The low bits of `sk_buff._nfct` hold the `ip_conntrack_info`; the rest is the pointer.
    pub const NFCT_INFOMASK: u64 = 7;

    /// Slots of the per-CPU `NAT_STATS` array.
    pub mod stats {
        /// A binding record found the ring buffer full.
        pub const LOST: u32 = 0;
        /// A binding's LRU entry could not be created (the map is full of live ones).
        pub const UNTRACKED: u32 = 1;
        /// Packets / bytes through NATed connections, by [`kind_slot`].
        pub const PACKETS: u32 = 2;
        pub const BYTES: u32 = 5;
        /// `NAT_SEEN` entries created (an LRU map: user space counts what it pushed out as
        /// inserted − removed by user space − entries now).
        pub const SEEN_INSERTED: u32 = 8;
        /// `NAT_SEEN` entries the program itself removed (a predecessor's, when a new entry
        /// took its address and tuple).
        pub const SEEN_REMOVED: u32 = 9;
        pub const COUNT: u32 = 10;

        /// 0 source NAT only, 1 destination NAT only, 2 both.
        pub const fn kind_slot(manips: u8) -> u32 {
            match manips & (super::MANIP_SRC | super::MANIP_DST) {
                super::MANIP_DST => 1,
                m if m == super::MANIP_SRC | super::MANIP_DST => 2,
                _ => 0,
            }
        }
    }
}

/// One NAT binding: the first time a conntrack entry shows a finished source or destination
/// translation. Addresses in network byte order (IPv4 in the first 4 bytes), ports in host
/// byte order (for ICMP, the source "port" is the echo id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NatEvent {
    /// [`nat::KIND_BINDING`].
    pub kind: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    pub protocol: u8,
    /// The netfilter hook (`NF_INET_*`) whose program saw it first.
    pub hook: u8,
    /// Bits of `nat::MANIP_*`: which translations the conntrack entry carries.
    pub manips: u8,
    /// Bits of `nat::EV_*`.
    pub flags: u8,
    /// Inode of the network namespace whose conntrack table holds the entry (the router).
    pub netns: u32,
    pub orig_sport: u16,
    pub orig_dport: u16,
    pub reply_sport: u16,
    pub reply_dport: u16,
    /// The conntrack entry's `status` bits.
    pub status: u32,
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub ts_ns: u64,
    /// The conntrack entry (`struct nf_conn *`): with the original tuple, the key of the
    /// binding's counters in `NAT_SEEN`.
    pub ct: u64,
    pub orig_src: [u8; 16],
    pub orig_dst: [u8; 16],
    pub reply_src: [u8; 16],
    pub reply_dst: [u8; 16],
}

pub const NAT_EVENT_SIZE: usize = 104;
const _: () = assert!(core::mem::size_of::<NatEvent>() == NAT_EVENT_SIZE);

/// Key of a binding in `NAT_SEEN`: the conntrack entry and its original tuple (an address
/// the allocator reuses for another connection is a new key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NatKey {
    pub ct: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<NatKey>() == 48);

/// Packets and bytes of one binding, by direction, as counted after translation on the
/// way out of the router's last NAT hook (POSTROUTING or INPUT), so each packet counts once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NatCounters {
    pub orig_packets: u64,
    pub orig_bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// A new conntrack entry's first packet, kept until the kernel confirms the entry (then the
/// binding is reported, with it) — a first packet the kernel drops (no NAT port left, a
/// lost race) makes no binding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NatPending {
    pub first_ns: u64,
    pub bytes: u64,
}

/// Kernel offsets the netfilter programs need, from BTF at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NatOffsets {
    pub skb_nfct: u32,
    pub skb_len: u32,
    pub ct_status: u32,
    /// `nf_conn.tuplehash[0].tuple`.
    pub ct_tuple_orig: u32,
    /// `nf_conn.tuplehash[1].tuple`.
    pub ct_tuple_reply: u32,
    /// Inside `struct nf_conntrack_tuple`.
    pub tuple_src_u3: u32,
    pub tuple_src_port: u32,
    pub tuple_src_l3num: u32,
    pub tuple_dst_u3: u32,
    pub tuple_dst_port: u32,
    pub tuple_dst_protonum: u32,
    pub state_hook: u32,
    pub state_net: u32,
    /// `struct net`'s `ns.inum`.
    pub net_inum: u32,
}
