//! The socket object's maps and load-time globals (names user space looks up: never rename),
//! the macros that read the globals, and the counters' updates.
use core::mem::{align_of, offset_of, size_of};

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
};
use tracer_common::{counter, DataTotals, KernelFilter, KernelOffsets, SockEvent};

/// Kernel struct and tracepoint-record offsets, from BTF and the tracepoints' `format` files
/// (user space overrides this `.rodata` global at load time; read it with [`off!`]).
#[no_mangle]
pub static OFFSETS: KernelOffsets = KernelOffsets {
    task_files: 0,
    files_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_private_data: 0,
    file_f_inode: 0,
    inode_i_mode: 0,
    socket_sk: 0,
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_family: 0,
    skc_state: 0,
    skc_net: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    net_inum: 0,
    sk_protocol: 0,
    sk_type: 0,
    sk_err: 0,
    tp_syscall_args: 0,
    tp_syscall_ret: 0,
    inet_sport: 0,
    tp_fork_child_pid: 0,
    tp_free_pid: 0,
    tp_data_sk: 0,
    tp_data_family: 0,
    tp_data_ret: 0,
    tp_data_flags: 0,
    task_group_leader: 0,
    task_comm: 0,
    sk_userlocks: 0,
    sk_max_ack_backlog: 0,
    skb_head: 0,
    skb_network_header: 0,
    skb_transport_header: 0,
    skb_protocol: 0,
    skb_sk: 0,
    skb_dev: 0,
    netdev_nd_net: 0,
    tcp_srtt_us: 0,
    cgroup_v1_subsys: 0,
    task_cgroups: 0,
    css_set_subsys: 0,
    css_cgroup: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
};

/// What the kernel side filters before an event reaches the ring (user space overrides this
/// `.rodata` global at load time; read it with [`filt!`]).
#[no_mangle]
pub static FILTER: KernelFilter = KernelFilter {
    by_pid: 0,
    by_comm: 0,
    protocol: 0,
    udp_data: 0,
    family: 0,
    port_count: 0,
    netns: 0,
    wakeup_bytes: 0,
    ports: [0; tracer_common::MAX_PORT_FILTERS],
    comm: [0; 16],
    metrics_only: 0,
    syscall_path: 0,
    tp_args: 0,
    by_cgroup: 0,
    quiet_drops: [0; 2],
};

/// Counters of things that went wrong in the kernel side (see `tracer_common::counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Counters summed in the kernel for metrics (layout in `tracer_common::stats`).
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(tracer_common::stats::COUNT, 0);

/// TCP health counters (keys: `tracer_common::health::key`): retransmits, resets and drops
/// by state, direction, reason, protocol and family. At most a few thousand keys exist.
#[map]
pub static HEALTH: PerCpuHashMap<u32, u64> =
    PerCpuHashMap::with_max_entries(tracer_common::health::MAX_KEYS, 0);

/// When a socket's handshake began, for latency histograms: its connect's first SYN, or (syscall
/// path) the kernel completing it for a listener, until accept() takes it. LRU; what it
/// pushes out is counted (`counter::STARTS_INSERTED`/`STARTS_REMOVED`).
#[map]
pub static STARTS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(65536, 0);

/// Per CPU: (start of the current second, ownerless health records sent in it), for
/// `tracer_common::UNOWNED_PER_SECOND`.
#[map]
pub static UNOWNED: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Processes selected by `--pid`, and their descendants as they fork.
/// LRU: a fork storm inside a traced process tree cannot make the map refuse new children;
/// what it pushes out is counted (`counter::FILTER_INSERTED`/`FILTER_REMOVED`), and a process
/// leaves the map when it is freed (a reused pid must not inherit the selection).
#[map]
pub static FILTER_PIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(8192, 0);

/// `--container`/`--pod`: the agent's verdict per cgroup (`SockEvent::cgroup`): 1 selected, 0 not. Written
/// by user space only; a cgroup not in it is not judged yet (its calls pass). LRU: a verdict
/// pushed out is only asked for again.
#[map]
pub static CGROUP_VERDICTS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);

/// Per-socket data totals, kept only while the data tracepoints are attached (`tracer trace`).
/// Removed at release, when they travel to user space as a DATA event. LRU; what it pushes
/// out is counted (`counter::DATA_INSERTED`/`DATA_REMOVED`).
#[map]
pub static DATA: LruHashMap<u64, DataTotals> = LruHashMap::with_max_entries(65536, 0);

/// Socket path: the port a thread's bind asked for (`cgroup/bind4|6`), read by the post-bind
/// hook of the same call to tell a kernel-chosen port (asked 0) from a named one. LRU: a bind
/// the kernel refused leaves its entry behind until pushed out.
#[map]
pub static BIND_PORTS: LruHashMap<u64, u16> = LruHashMap::with_max_entries(4096, 0);

/// Socket path, `serve`: UDP sockets with nothing more to report (a kernel-chosen port
/// reported once, or a port their owner bound), with that port: while the socket keeps it,
/// its datagrams are only counted, from the hook's context without reading the socket
/// (unless --port needs its fields). Removed at creation and release; LRU.
#[map]
pub static REPORTED: LruHashMap<u64, u16> = LruHashMap::with_max_entries(16384, 0);

/// A syscall between its enter and exit: the event as far as the enter knew it, and what the
/// exit needs to finish it.
#[repr(C)]
pub struct Pending {
    pub ev: SockEvent,
    /// User pointer to the caller's sockaddr (connect, bind, sendto, recvfrom, msg_name).
    pub uaddr: u64,
    /// Its length (enter side), or for recvfrom a user pointer to the length.
    pub uaddr_len: u64,
    /// The socket's local port before the call.
    pub port_before: u16,
}

/// A syscall between its enter and exit, keyed by pid_tgid (one in flight per thread).
/// LRU, not a plain hash: a thread blocked in accept()/recvfrom() holds its slot only until
/// 16384 newer calls need room, so no user can starve other processes by parking threads in
/// blocking calls. An exit whose enter was pushed out is lost (accept still reports the new
/// connection, flagged ENTER_MISSED); every push-out is counted (`counter::PENDING_BEGUN`/
/// `PENDING_ENDED`).
#[map]
pub static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(16384, 0);

/// What a pending record starts from: copied by the map update, so no program zeroes 160
/// bytes of stack first.
// SAFETY: `Pending` is integers and arrays of them only: all zeroes is a valid value.
pub static ZERO_PENDING: Pending = unsafe { core::mem::zeroed() };

/// A field of [`OFFSETS`], as a `u64` to add to a pointer: `off!(skc_num)`.
macro_rules! off {
    ($field:ident) => {
        tracer_ebpf::global!($crate::maps::OFFSETS.$field) as u64
    };
}

/// A field of [`FILTER`]: `filt!(by_pid)`.
macro_rules! filt {
    ($field:ident) => {
        tracer_ebpf::global!($crate::maps::FILTER.$field)
    };
}

/// Counts a kernel-side problem (`COUNTERS`).
#[inline(always)]
pub fn bump(index: u32) {
    tracer_ebpf::maps::add(&COUNTERS, index, 1);
}

/// Counts an event for metrics (`STATS`).
#[inline(always)]
pub fn stat(index: u32) {
    tracer_ebpf::maps::add(&STATS, index, 1);
}

// Layouts the programs rely on. `put16`/`get16` move the 16-byte fields of a `SockEvent` as two
// 8-byte words, in a `PENDING` value (the event first in `Pending`) or a ring record (8-byte
// aligned): each such field must sit at a multiple of 8 in an 8-aligned record.
const _: () = assert!(align_of::<SockEvent>() == 8 && align_of::<Pending>() == 8);
const _: () = assert!(offset_of!(Pending, ev) == 0);
const _: () = assert!(offset_of!(SockEvent, laddr) % 8 == 0);
const _: () = assert!(offset_of!(SockEvent, raddr) % 8 == 0);
const _: () = assert!(offset_of!(SockEvent, comm) % 8 == 0);
const _: () = assert!(offset_of!(SockEvent, thread) % 8 == 0);
// The ring record is the size user space decodes; the state and release programs write every
// field of it, `_pad` included (three bytes), so no stale ring bytes reach user space.
const _: () = assert!(size_of::<SockEvent>() == tracer_common::SOCK_EVENT_SIZE);
const _: () = assert!(offset_of!(SockEvent, pid) == offset_of!(SockEvent, _pad) + 3);
// `ZERO_PENDING` is what the map copies in: its size is the value size (176 bytes).
const _: () = assert!(size_of::<Pending>() == 176);
