use core::ffi::c_void;

use crate::window::{read, Window};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_user, generated as gen,
    },
    macros::{cgroup_sock, map, raw_tracepoint, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, SockContext, TracePointContext},
    EbpfContext,
};
use tracer_common::{
    counter, flag, kind, tcp_state, DataTotals, KernelFilter, KernelOffsets, SockEvent, AF_INET,
    AF_INET6, IPPROTO_TCP, IPPROTO_UDP,
};

#[no_mangle]
static OFFSETS: KernelOffsets = KernelOffsets {
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
};

#[no_mangle]
static FILTER: KernelFilter = KernelFilter {
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
    _reserved: [0; 3],
};

/// The one ring buffer every program writes to; user space sizes it at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Counters of things that went wrong in the kernel side (see `tracer_common::counter`).
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Processes selected by `--pid`, and their descendants as they fork.
/// Counters summed in the kernel for metrics (layout in `tracer_common::stats`).
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(tracer_common::stats::COUNT, 0);

/// LRU: a fork storm inside a traced process tree cannot make the map refuse new children;
/// what it pushes out is counted (`counter::FILTER_INSERTED`/`FILTER_REMOVED`), and a process
/// leaves the map when it exits (a reused pid must not inherit the selection).
#[map]
static FILTER_PIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(8192, 0);

/// A syscall between its enter and exit, keyed by pid_tgid (one in flight per thread).
/// Per-socket data totals, kept only while the data tracepoints are attached (`tracer trace`).
/// Removed at release, when they travel to user space as a DATA event. LRU; what it pushes
/// out is counted (`counter::DATA_INSERTED`/`DATA_REMOVED`).
#[map]
static DATA: LruHashMap<u64, DataTotals> = LruHashMap::with_max_entries(65536, 0);

#[repr(C)]
struct Pending {
    ev: SockEvent,
    /// User pointer to the caller's sockaddr (connect, bind, sendto, recvfrom, msg_name).
    uaddr: u64,
    /// Its length (enter side), or for recvfrom a user pointer to the length.
    uaddr_len: u64,
    /// The socket's local port before the call.
    port_before: u16,
}

/// LRU, not a plain hash: a thread blocked in accept()/recvfrom() holds its slot only until
/// 16384 newer calls need room, so no user can starve other processes by parking threads in
/// blocking calls. An exit whose enter was pushed out is lost (accept still reports the new
/// connection, flagged ENTER_MISSED); every push-out is counted (`counter::PENDING_BEGUN`/
/// `PENDING_ENDED`).
#[map]
static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(16384, 0);

macro_rules! off {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&OFFSETS.$field) };
        value as u64
    }};
}

macro_rules! filt {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&FILTER.$field) };
        value
    }};
}

/// A volatile store. Plain stores of neighbouring fields get merged by LLVM into a call to
/// `memset`/`memcpy`, which on this target are byte-at-a-time loops in a subprogram, far
/// slower than the few stores they replace.
macro_rules! set {
    ($place:expr, $value:expr) => {{
        #[allow(unused_unsafe)]
        unsafe {
            core::ptr::write_volatile(&raw mut $place, $value)
        }
    }};
}

#[inline(always)]
fn read_user<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    unsafe { bpf_probe_read_user(addr as *const T).ok() }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        unsafe { *c += 1 };
    }
}

/// Writes a 16-byte field (address, comm) as two volatile words: the compiler can neither merge
/// them into a call to the byte-loop `memset`/`memcpy` nor drop them.
#[inline(always)]
fn put16(dst: &mut [u8; 16], words: [u64; 2]) {
    let d = dst.as_mut_ptr() as *mut u64;
    unsafe {
        core::ptr::write_volatile(d, words[0]);
        core::ptr::write_volatile(d.add(1), words[1]);
    }
}

#[inline(always)]
fn get16(src: &[u8; 16]) -> [u64; 2] {
    let s = src.as_ptr() as *const u64;
    unsafe {
        [
            core::ptr::read_volatile(s),
            core::ptr::read_volatile(s.add(1)),
        ]
    }
}

/// The first bytes of a `struct sock` (its `sock_common`): addresses, ports, family, state and
/// netns pointer all lie in the first 88 bytes on 64-bit kernels.
type SkCommon = Window<12>;

/// A `syscalls:sys_enter_*` record up to and including argument `N - 3` (args start at 16).
#[inline(always)]
fn args<const N: usize>(ctx: &TracePointContext) -> Window<N> {
    let mut window = Window::empty();
    // A tracepoint's own record cannot fail to read; if it did, the probe zeroed the buffer.
    let _ = window.load(ctx.as_ptr() as u64);
    window
}

#[inline(always)]
fn arg<const N: usize>(args: &Window<N>, n: u64) -> u64 {
    args.get::<u64>(off!(tp_syscall_args) + 8 * n).unwrap_or(0)
}

/// `task->files->fdt->fd[fd]`, if it is an AF_INET/AF_INET6 socket: its `struct sock *`, with
/// its `sock_common` read into `common`.
#[inline(always)]
fn sock_of_fd(fd: i64, common: &mut SkCommon) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, off!(task_files))?;
    let fdt: u64 = read(files, off!(files_fdt))?;
    let fdtable = Window::<2>::read(fdt)?;
    let max_fds: u32 = fdtable.get(off!(fdtable_max_fds))?;
    if fd as u64 >= max_fds as u64 {
        return None;
    }
    let fd_array: u64 = fdtable.get(off!(fdtable_fd))?;
    let file: u64 = read(fd_array, fd as u64 * 8)?;
    let file_fields = Window::<5>::read(file)?;
    let inode: u64 = file_fields.get(off!(file_f_inode))?;
    let mode: u16 = read(inode, off!(inode_i_mode))?;
    if mode & 0o170000 != 0o140000 {
        return None; // not S_IFSOCK
    }
    let socket: u64 = file_fields.get(off!(file_private_data))?;
    let sk: u64 = read(socket, off!(socket_sk))?;
    common.load(sk)?;
    let family: u16 = common.get(off!(skc_family))?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    Some(sk)
}

#[inline(always)]
fn sk_protocol(sk: u64) -> u8 {
    read::<u16>(sk, off!(sk_protocol)).unwrap_or(0) as u8
}

/// `sk_protocol` and `sk_type`, two neighbouring u16s of `struct sock`: one probe.
#[inline(always)]
fn protocol_and_type(sk: u64) -> (u8, u8) {
    let (p, t) = (off!(sk_protocol), off!(sk_type));
    let base = if p < t { p } else { t };
    match Window::<1>::read(sk + base) {
        Some(w) => (
            w.get::<u16>(p - base).unwrap_or(0) as u8,
            w.get::<u16>(t - base).unwrap_or(0) as u8,
        ),
        None => (0, 0),
    }
}

#[inline(always)]
fn netns_of(common: &SkCommon) -> u32 {
    let net: u64 = common.get(off!(skc_net)).unwrap_or(0);
    read::<u32>(net, off!(net_inum)).unwrap_or(0)
}

/// Everything the socket itself says: family, protocol, state, both endpoints, netns.
#[inline(always)]
fn fill_from_sock(ev: &mut SockEvent, sk: u64, common: &SkCommon) {
    ev.sk = sk;
    let family: u16 = common.get(off!(skc_family)).unwrap_or(0);
    ev.family = family;
    (ev.protocol, ev.sock_type) = protocol_and_type(sk);
    ev.new_state = common.get::<u8>(off!(skc_state)).unwrap_or(0);
    ev.lport = common.get::<u16>(off!(skc_num)).unwrap_or(0);
    ev.rport = u16::from_be(common.get::<u16>(off!(skc_dport)).unwrap_or(0));
    ev.netns = netns_of(common);
    if family == AF_INET6 {
        put16(&mut ev.laddr, common.addr16(off!(skc_v6_rcv_saddr)));
        put16(&mut ev.raddr, common.addr16(off!(skc_v6_daddr)));
    } else {
        put16(&mut ev.laddr, common.addr4(off!(skc_rcv_saddr)));
        put16(&mut ev.raddr, common.addr4(off!(skc_daddr)));
    }
}

/// Parses a user `sockaddr_in`/`sockaddr_in6` of `len` bytes without reading past it: the
/// port and the address (as two words). None when the buffer is unusable.
#[inline(always)]
fn read_user_sockaddr(uaddr: u64, len: i64) -> Option<(u16, [u64; 2])> {
    // Longer than a sockaddr_storage (128 bytes): the kernel refuses it before reading it.
    const SOCKADDR_STORAGE: i64 = 128;
    if uaddr == 0 || !(2..=SOCKADDR_STORAGE).contains(&len) {
        return None;
    }
    let family: u16 = read_user(uaddr)?;
    match family {
        AF_INET if len >= 8 => {
            let port = u16::from_be(read_user(uaddr + 2)?);
            let a: u32 = read_user(uaddr + 4)?;
            Some((port, [a as u64, 0]))
        }
        AF_INET6 if len >= 24 => {
            let port = u16::from_be(read_user(uaddr + 2)?);
            let a: [u64; 2] = read_user(uaddr + 8)?;
            Some((port, a))
        }
        0 => Some((0, [0, 0])), // AF_UNSPEC: connect() used to dissolve a UDP association
        _ => None,
    }
}

/// Cheap per-process filters, checked at syscall enter before anything is stored.
#[inline(always)]
fn process_selected(tgid: u32) -> bool {
    if filt!(by_pid) != 0 && unsafe { FILTER_PIDS.get(tgid) }.is_none() {
        return false;
    }
    if filt!(by_comm) != 0 {
        // --comm names a process, as `ps -C` does: its leader's name, not the thread's.
        let mut comm = [0u8; 16];
        process_comm(&mut comm);
        let want = unsafe { core::ptr::read_volatile(&FILTER.comm) };
        if comm != want {
            return false;
        }
    }
    true
}

/// The calling process's name: its thread-group leader's `comm` (what `ps` and `ss` show),
/// read through `current->group_leader`; the thread's own name if that read fails.
#[inline(always)]
fn process_comm(out: &mut [u8; 16]) {
    let task = unsafe { bpf_get_current_task() };
    let leader: u64 = read(task, off!(task_group_leader)).unwrap_or(0);
    // SAFETY: `out` is 16 writable bytes; the helpers write at most 16 bytes into it and
    // fail cleanly on a bad kernel address.
    let failed = leader == 0
        || unsafe {
            gen::bpf_probe_read_kernel(
                out.as_mut_ptr() as *mut c_void,
                16,
                (leader + off!(task_comm)) as *const c_void,
            )
        } != 0;
    if failed {
        unsafe { gen::bpf_get_current_comm(out.as_mut_ptr() as *mut c_void, 16) };
    }
}

/// Both names of the caller into an event: the process's and the thread's.
#[inline(always)]
fn fill_names(ev: &mut SockEvent) {
    process_comm(&mut ev.comm);
    // SAFETY: `ev.thread` is 16 writable bytes.
    unsafe { gen::bpf_get_current_comm(ev.thread.as_mut_ptr() as *mut c_void, 16) };
}

/// Socket-level filters, checked once the endpoints are known.
#[inline(always)]
fn selected(protocol: u8, family: u16, netns: u32, lport: u16, rport: u16) -> bool {
    let want_protocol = filt!(protocol);
    if want_protocol != 0 && protocol != want_protocol {
        return false;
    }
    let want_family = filt!(family);
    if want_family != 0 && family != want_family {
        return false;
    }
    let want_netns = filt!(netns);
    if want_netns != 0 && netns != want_netns {
        return false;
    }
    let count = filt!(port_count) as usize;
    if count != 0 {
        let ports = unsafe { core::ptr::read_volatile(&FILTER.ports) };
        let mut hit = false;
        let mut i = 0;
        while i < tracer_common::MAX_PORT_FILTERS {
            if i < count && (ports[i] == lport || ports[i] == rport) {
                hit = true;
            }
            i += 1;
        }
        if !hit {
            return false;
        }
    }
    true
}

#[inline(always)]
fn socket_selected(ev: &SockEvent) -> bool {
    selected(ev.protocol, ev.family, ev.netns, ev.lport, ev.rport)
}

#[inline(always)]
fn stat(index: u32) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        unsafe { *c += 1 };
    }
}

/// Connect errnos a TCP handshake produces: the SYN_SENT → CLOSE transition counts them
/// (with EINPROGRESS, which is no failure at all).
#[inline(always)]
fn handshake_errno(ev: &SockEvent) -> bool {
    const EINPROGRESS: i64 = 115;
    const ECONNREFUSED: i64 = 111;
    const ETIMEDOUT: i64 = 110;
    const ECONNRESET: i64 = 104;
    let errno = -ev.ret;
    errno == EINPROGRESS
        || (ev.protocol == IPPROTO_TCP
            && (errno == ECONNREFUSED || errno == ETIMEDOUT || errno == ECONNRESET))
}

/// Counts an event for metrics: per-CPU, before the ring buffer, so a full ring loses no count.
/// Transitions are counted by [`count_state`].
#[inline(always)]
fn count(ev: &SockEvent) {
    use tracer_common::stats;
    if ev.kind >= kind::DATA || ev.kind == kind::STATE {
        return;
    }
    stat(stats::event_index(ev.kind, ev.protocol, ev.family));
    if ev.ret < 0 && ev.kind == kind::CONNECT && !handshake_errno(ev) {
        stat(stats::CONNECT_ERRNOS + stats::errno_slot(ev.ret));
    } else if ev.ret < 0 && ev.kind == kind::BIND {
        stat(stats::BIND_ERRNOS + stats::errno_slot(ev.ret));
    }
}

/// Counts a TCP transition for metrics.
#[inline(always)]
fn count_state(family: u16, old: u8, new: u8, sk_err: i32) {
    use tracer_common::stats;
    stat(stats::event_index(kind::STATE, IPPROTO_TCP, family));
    stat(stats::TRANSITIONS + (old as u32 & 15) * 16 + (new as u32 & 15));
    // A handshake that failed (refused, timed out, unreachable): counted here, where both
    // blocking and non-blocking connects end up, not at the syscall.
    if old == tcp_state::SYN_SENT && new == tcp_state::CLOSE && sk_err > 0 {
        stat(stats::CONNECT_ERRNOS + stats::errno_slot(-(sk_err as i64)));
    }
}

/// Submit flags: wake the agent only once `FILTER.wakeup_bytes` wait in the ring (when set).
#[inline(always)]
fn wakeup() -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    const BPF_RB_AVAIL_DATA: u64 = 0;
    let threshold = filt!(wakeup_bytes) as u64;
    if threshold == 0 {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Counts `ev` and copies it to the ring (the helper copies in the kernel: no per-byte copy
/// loop in the program).
#[inline(always)]
fn emit(ev: &SockEvent) {
    count(ev);
    if EVENTS.output::<SockEvent>(ev, wakeup()).is_err() {
        bump(counter::LOST);
    }
}

/// What a pending record starts from: copied by the map update, so no program zeroes 160
/// bytes of stack first.
static ZERO_PENDING: Pending = unsafe { core::mem::zeroed() };

/// Starts a pending record for the current thread; None when the process is filtered out.
/// `port_before` is the socket's local port before the call.
#[inline(always)]
fn begin(
    ev_kind: u16,
    fd: i64,
    uaddr: u64,
    uaddr_len: u64,
    arg: i64,
    sk: u64,
    port_before: u16,
) -> Option<&'static mut Pending> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !process_selected(tgid) {
        return None;
    }
    const BPF_NOEXIST: u64 = 1;
    if PENDING.insert(pid_tgid, &ZERO_PENDING, BPF_NOEXIST).is_ok() {
        bump(counter::PENDING_BEGUN);
    } else if PENDING.insert(pid_tgid, &ZERO_PENDING, 0).is_ok() {
        // The thread's previous record never met its exit: replaced, and so ended.
        bump(counter::PENDING_BEGUN);
        bump(counter::PENDING_ENDED);
    } else {
        bump(counter::PENDING_FULL);
        return None;
    }
    let p = unsafe { &mut *PENDING.get_ptr_mut(pid_tgid)? };
    // Every other field is zero, from ZERO_PENDING.
    set!(p.ev.kind, ev_kind);
    set!(p.ev.pid, tgid);
    set!(p.ev.tid, pid_tgid as u32);
    set!(p.ev.uid, bpf_get_current_uid_gid() as u32);
    set!(p.ev.fd, fd as i32);
    set!(p.ev.arg, arg);
    set!(p.ev.sk, sk);
    fill_names(&mut p.ev);
    set!(p.uaddr, uaddr);
    set!(p.uaddr_len, uaddr_len);
    set!(p.port_before, port_before);
    Some(p)
}

/// Removes a thread's pending record (its exit came), counting it for the eviction total.
#[inline(always)]
fn end_pending(pid_tgid: u64) {
    if PENDING.remove(pid_tgid).is_ok() {
        bump(counter::PENDING_ENDED);
    }
}

/// Takes the current thread's pending record, if its kind matches.
#[inline(always)]
fn finish(ev_kind: u16) -> Option<(u64, &'static mut Pending)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pending = PENDING.get_ptr_mut(pid_tgid)?;
    let pending = unsafe { &mut *pending };
    if pending.ev.kind != ev_kind {
        return None;
    }
    Some((pid_tgid, pending))
}

#[inline(always)]
fn ret_of(ctx: &TracePointContext) -> i64 {
    unsafe { ctx.read_at::<i64>(off!(tp_syscall_ret) as usize) }.unwrap_or(0)
}

/// Completes an event from the socket (`common` is its `sock_common`, read once by the
/// caller) and emits it if the filters allow.
#[inline(always)]
fn complete(pid_tgid: u64, pending: &mut Pending, ret: i64, sk: u64, common: &SkCommon) {
    let ev = &mut pending.ev;
    ev.ret = ret;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    if sk != 0 {
        let requested_port = ev.lport;
        let requested_addr = get16(&ev.laddr);
        let user_rport = ev.rport;
        let user_raddr = get16(&ev.raddr);
        fill_from_sock(ev, sk, common);
        // The kernel chose the port when the socket had none before the call and has one now,
        // unless the caller asked for that port (bind to a non-zero port). This also holds for
        // a non-blocking connect returning EINPROGRESS: the port is assigned before it returns.
        let asked_for_port = ev.flags & flag::LOCAL_FROM_USER != 0 && requested_port != 0;
        if pending.port_before == 0 && ev.lport != 0 && !asked_for_port {
            ev.flags |= flag::KERNEL_CHOSE_PORT;
        }
        if ev.flags & flag::LOCAL_FROM_USER != 0 && (ret < 0 || ev.lport == 0) {
            ev.lport = requested_port;
            put16(&mut ev.laddr, requested_addr);
        } else {
            ev.flags &= !flag::LOCAL_FROM_USER;
        }
        if ev.flags & flag::REMOTE_FROM_USER != 0 {
            if ev.rport == 0 || ret < 0 {
                ev.rport = user_rport;
                put16(&mut ev.raddr, user_raddr);
            } else {
                ev.flags &= !flag::REMOTE_FROM_USER;
            }
        }
    }
    if socket_selected(ev) {
        if only_counted(ev) {
            count(ev);
        } else {
            emit(ev);
        }
    }
    end_pending(pid_tgid);
}

/// `serve`: a UDP send or receive is only counted, unless the kernel bound the socket's port
/// in it (autobind), which the socket table needs for the ephemeral-port gauge.
#[inline(always)]
fn only_counted(ev: &SockEvent) -> bool {
    filt!(metrics_only) != 0
        && ev.kind >= kind::SENDTO
        && ev.kind <= kind::RECVMSG
        && ev.flags & flag::KERNEL_CHOSE_PORT == 0
}

/// The socket a pending record was opened on, read again at exit: the call held a reference
/// to its file throughout, so the `struct sock` is still that socket (no new fd table walk).
#[inline(always)]
fn pending_sock(pending: &Pending, common: &mut SkCommon) -> u64 {
    let sk = pending.ev.sk;
    match common.load(sk) {
        Some(()) => sk,
        None => 0,
    }
}

// ---- socket(2) ----------------------------------------------------------------------------

#[tracepoint]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    let a = args::<4>(&ctx);
    let family = arg(&a, 0) as u16;
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let sock_type = arg(&a, 1) as i64 & 0xf;
    if let Some(p) = begin(kind::SOCKET, -1, 0, 0, sock_type, 0, 0) {
        p.ev.family = family;
        p.ev.sock_type = sock_type as u8;
    }
    0
}

#[tracepoint]
pub fn sys_exit_socket(ctx: TracePointContext) -> u32 {
    if let Some((id, p)) = finish(kind::SOCKET) {
        let ret = ret_of(&ctx);
        let mut common = SkCommon::empty();
        let sk = sock_of_fd(ret, &mut common).unwrap_or(0);
        p.ev.fd = ret as i32;
        complete(id, p, ret, sk, &common);
    }
    0
}

// ---- bind(2), connect(2): the caller names an address ------------------------------------

#[inline(always)]
fn enter_with_sockaddr(ctx: &TracePointContext, ev_kind: u16, user_is_local: bool) {
    let a = args::<5>(ctx);
    let fd = arg(&a, 0) as i32 as i64;
    let mut common = SkCommon::empty();
    let Some(sk) = sock_of_fd(fd, &mut common) else {
        return;
    };
    let uaddr = arg(&a, 1);
    let len = arg(&a, 2) as i32 as i64;
    let port_before = common.get(off!(skc_num)).unwrap_or(0);
    let Some(p) = begin(ev_kind, fd, uaddr, len as u64, 0, sk, port_before) else {
        return;
    };
    match read_user_sockaddr(uaddr, len) {
        Some((port, addr)) => {
            if user_is_local {
                p.ev.lport = port;
                put16(&mut p.ev.laddr, addr);
                p.ev.flags |= flag::LOCAL_FROM_USER;
            } else {
                p.ev.rport = port;
                put16(&mut p.ev.raddr, addr);
                p.ev.flags |= flag::REMOTE_FROM_USER;
            }
        }
        None => p.ev.flags |= flag::BAD_SOCKADDR,
    }
}

#[inline(always)]
fn exit_on_same_fd(ctx: &TracePointContext, ev_kind: u16) {
    if let Some((id, p)) = finish(ev_kind) {
        let mut common = SkCommon::empty();
        let sk = pending_sock(p, &mut common);
        complete(id, p, ret_of(ctx), sk, &common);
    }
}

#[tracepoint]
pub fn sys_enter_bind(ctx: TracePointContext) -> u32 {
    enter_with_sockaddr(&ctx, kind::BIND, true);
    0
}

#[tracepoint]
pub fn sys_exit_bind(ctx: TracePointContext) -> u32 {
    exit_on_same_fd(&ctx, kind::BIND);
    0
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    enter_with_sockaddr(&ctx, kind::CONNECT, false);
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    exit_on_same_fd(&ctx, kind::CONNECT);
    0
}

// ---- listen(2), shutdown(2), close(2) ----------------------------------------------------

#[inline(always)]
fn enter_on_fd(ctx: &TracePointContext, ev_kind: u16) {
    let a = args::<4>(ctx);
    let fd = arg(&a, 0) as i32 as i64;
    let mut common = SkCommon::empty();
    let Some(sk) = sock_of_fd(fd, &mut common) else {
        return;
    };
    let with_arg = ev_kind != kind::CLOSE;
    let value = if with_arg {
        arg(&a, 1) as i32 as i64
    } else {
        0
    };
    let port_before = common.get(off!(skc_num)).unwrap_or(0);
    let Some(p) = begin(ev_kind, fd, 0, 0, value, sk, port_before) else {
        return;
    };
    if ev_kind == kind::CLOSE {
        // The fd is gone at exit: read the socket now.
        fill_from_sock(&mut p.ev, sk, &common);
    }
}

#[tracepoint]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    enter_on_fd(&ctx, kind::LISTEN);
    0
}

#[tracepoint]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    exit_on_same_fd(&ctx, kind::LISTEN);
    0
}

#[tracepoint]
pub fn sys_enter_shutdown(ctx: TracePointContext) -> u32 {
    enter_on_fd(&ctx, kind::SHUTDOWN);
    0
}

#[tracepoint]
pub fn sys_exit_shutdown(ctx: TracePointContext) -> u32 {
    exit_on_same_fd(&ctx, kind::SHUTDOWN);
    0
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    if filt!(metrics_only) != 0 {
        count_close(&ctx);
    } else {
        enter_on_fd(&ctx, kind::CLOSE);
    }
    0
}

/// `serve`: a close(2) of a socket is counted here, at enter (where the fd still names the
/// socket), with nothing kept for the exit; the exit is not even attached. Every close is
/// counted, whatever it returns, as the event path counts them.
#[inline(always)]
fn count_close(ctx: &TracePointContext) {
    let a = args::<1>(ctx);
    let mut common = SkCommon::empty();
    let Some(sk) = sock_of_fd(arg(&a, 0) as i32 as i64, &mut common) else {
        return;
    };
    let family: u16 = common.get(off!(skc_family)).unwrap_or(0);
    let (protocol, _) = protocol_and_type(sk);
    let lport: u16 = common.get(off!(skc_num)).unwrap_or(0);
    let rport = u16::from_be(common.get::<u16>(off!(skc_dport)).unwrap_or(0));
    // The namespace costs a read of its own: only when a filter asks.
    let netns = if filt!(netns) != 0 {
        netns_of(&common)
    } else {
        0
    };
    if selected(protocol, family, netns, lport, rport) {
        stat(tracer_common::stats::event_index(
            kind::CLOSE,
            protocol,
            family,
        ));
    }
}

#[tracepoint]
pub fn sys_exit_close(ctx: TracePointContext) -> u32 {
    if let Some((id, p)) = finish(kind::CLOSE) {
        let ev = &mut p.ev;
        ev.ret = ret_of(&ctx);
        ev.ts_ns = unsafe { bpf_ktime_get_ns() };
        if socket_selected(ev) {
            emit(ev);
        }
        end_pending(id);
    }
    0
}

// ---- accept(2), accept4(2) ---------------------------------------------------------------

#[inline(always)]
fn enter_accept(ctx: &TracePointContext) {
    let a = args::<3>(ctx);
    let fd = arg(&a, 0) as i32 as i64;
    let mut common = SkCommon::empty();
    let Some(sk) = sock_of_fd(fd, &mut common) else {
        return;
    };
    let port = common.get(off!(skc_num)).unwrap_or(0);
    begin(kind::ACCEPT, fd, 0, 0, 0, sk, port);
}

#[inline(always)]
fn exit_accept(ctx: &TracePointContext) {
    let ret = ret_of(ctx);
    let Some((id, p)) = finish(kind::ACCEPT) else {
        // The enter was missed: the caller was already blocked in accept() when tracing
        // started. The new fd alone still says which connection was accepted.
        accept_without_enter(ret);
        return;
    };
    if ret == -11 {
        // EAGAIN: a non-blocking server polling an empty queue, not an event.
        end_pending(id);
        return;
    }
    p.ev.parent_sk = p.ev.sk;
    let mut common = SkCommon::empty();
    match sock_of_fd(ret, &mut common) {
        Some(sk) => complete(id, p, ret, sk, &common),
        None => {
            // Failed accept: describe the listener.
            let listener = pending_sock(p, &mut common);
            complete(id, p, ret, listener, &common);
        }
    }
}

#[inline(always)]
fn accept_without_enter(ret: i64) {
    let mut common = SkCommon::empty();
    let Some(sk) = sock_of_fd(ret, &mut common) else {
        return;
    };
    // port_before 1: the accepted socket's port is the listener's, never chosen here.
    let Some(p) = begin(kind::ACCEPT, -1, 0, 0, 0, 0, 1) else {
        return;
    };
    p.ev.flags |= flag::ENTER_MISSED;
    complete(bpf_get_current_pid_tgid(), p, ret, sk, &common);
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    enter_accept(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    exit_accept(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    enter_accept(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    exit_accept(&ctx);
    0
}

// ---- UDP: sendto/recvfrom/sendmsg/recvmsg ------------------------------------------------
//
// TCP sends are not events here. A UDP call is an event when it names a peer, or when the
// socket has no local port yet (the kernel autobinds it on the first send).

#[inline(always)]
fn udp_sock_of_fd(fd: i64, common: &mut SkCommon) -> Option<u64> {
    if filt!(udp_data) == 0 {
        return None;
    }
    let sk = sock_of_fd(fd, common)?;
    if sk_protocol(sk) != IPPROTO_UDP {
        return None;
    }
    Some(sk)
}

/// `struct user_msghdr` (syscall ABI, not a kernel-internal layout): `msg_name` at 0,
/// `msg_namelen` at 8.
#[inline(always)]
fn msg_name(msg: u64) -> (u64, u64) {
    let name: u64 = read_user(msg).unwrap_or(0);
    let len: i32 = read_user(msg + 8).unwrap_or(0);
    (name, len as i64 as u64)
}

#[inline(always)]
fn enter_send(ev_kind: u16, fd: i64, uaddr: u64, len: u64, bytes: i64) {
    let mut common = SkCommon::empty();
    let Some(sk) = udp_sock_of_fd(fd, &mut common) else {
        return;
    };
    let port_before = common.get(off!(skc_num)).unwrap_or(0);
    if uaddr == 0 && port_before != 0 {
        return; // neither names a peer nor autobinds
    }
    let Some(p) = begin(ev_kind, fd, uaddr, len, bytes, sk, port_before) else {
        return;
    };
    if uaddr != 0 {
        match read_user_sockaddr(uaddr, len as i64) {
            Some((port, addr)) => {
                p.ev.rport = port;
                put16(&mut p.ev.raddr, addr);
                p.ev.flags |= flag::REMOTE_FROM_USER;
            }
            None => p.ev.flags |= flag::BAD_SOCKADDR,
        }
    }
}

#[inline(always)]
fn enter_recv(ev_kind: u16, fd: i64, uaddr: u64, len_or_ptr: u64, bytes: i64) {
    if uaddr == 0 {
        return;
    }
    let mut common = SkCommon::empty();
    let Some(sk) = udp_sock_of_fd(fd, &mut common) else {
        return;
    };
    let port_before = common.get(off!(skc_num)).unwrap_or(0);
    begin(ev_kind, fd, uaddr, len_or_ptr, bytes, sk, port_before);
}

/// Recv exit: the kernel has written the sender's address into the caller's buffer.
#[inline(always)]
fn exit_recv(ctx: &TracePointContext, ev_kind: u16, len_is_ptr: bool) {
    if let Some((id, p)) = finish(ev_kind) {
        let ret = ret_of(ctx);
        if ret == -11 {
            end_pending(id);
            return;
        }
        if ret >= 0 {
            let len = if len_is_ptr {
                read_user::<i32>(p.uaddr_len).unwrap_or(0) as i64
            } else {
                // recvmsg: the kernel updated msg_namelen in the user msghdr.
                msg_name(p.uaddr_len).1 as i64
            };
            if let Some((port, addr)) = read_user_sockaddr(p.uaddr, len) {
                p.ev.rport = port;
                put16(&mut p.ev.raddr, addr);
                p.ev.flags |= flag::REMOTE_FROM_USER;
            }
        }
        let mut common = SkCommon::empty();
        let sk = pending_sock(p, &mut common);
        complete(id, p, ret, sk, &common);
    }
}

#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    let a = args::<8>(&ctx);
    let fd = arg(&a, 0) as i32 as i64;
    enter_send(kind::SENDTO, fd, arg(&a, 4), arg(&a, 5), arg(&a, 2) as i64);
    0
}

#[tracepoint]
pub fn sys_exit_sendto(ctx: TracePointContext) -> u32 {
    exit_on_same_fd(&ctx, kind::SENDTO);
    0
}

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    let a = args::<4>(&ctx);
    let fd = arg(&a, 0) as i32 as i64;
    let (name, len) = msg_name(arg(&a, 1));
    enter_send(kind::SENDMSG, fd, name, len, 0);
    0
}

#[tracepoint]
pub fn sys_exit_sendmsg(ctx: TracePointContext) -> u32 {
    exit_on_same_fd(&ctx, kind::SENDMSG);
    0
}

#[tracepoint]
pub fn sys_enter_recvfrom(ctx: TracePointContext) -> u32 {
    let a = args::<8>(&ctx);
    let fd = arg(&a, 0) as i32 as i64;
    enter_recv(
        kind::RECVFROM,
        fd,
        arg(&a, 4),
        arg(&a, 5),
        arg(&a, 2) as i64,
    );
    0
}

#[tracepoint]
pub fn sys_exit_recvfrom(ctx: TracePointContext) -> u32 {
    exit_recv(&ctx, kind::RECVFROM, true);
    0
}

#[tracepoint]
pub fn sys_enter_recvmsg(ctx: TracePointContext) -> u32 {
    let a = args::<4>(&ctx);
    let fd = arg(&a, 0) as i32 as i64;
    let msg = arg(&a, 1);
    let (name, _) = msg_name(msg);
    // Keep the msghdr pointer: the kernel writes the peer's length back into it.
    enter_recv(kind::RECVMSG, fd, name, msg, 0);
    0
}

#[tracepoint]
pub fn sys_exit_recvmsg(ctx: TracePointContext) -> u32 {
    exit_recv(&ctx, kind::RECVMSG, false);
    0
}

// ---- the TCP state machine ---------------------------------------------------------------

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
    if filt!(by_pid) == 0 && filt!(by_comm) == 0 {
        // A transition in softirq cannot be told to belong to a --pid/--comm process here;
        // with such a filter the agent counts transitions after attributing them.
        count_state(family, old, new, sk_err);
    }
    let (laddr, raddr) = if family == AF_INET6 {
        (
            common.addr16(off!(skc_v6_rcv_saddr)),
            common.addr16(off!(skc_v6_daddr)),
        )
    } else {
        (
            common.addr4(off!(skc_rcv_saddr)),
            common.addr4(off!(skc_daddr)),
        )
    };
    // Whoever is on the CPU (often softirq) is only the owner when this thread is inside a
    // syscall on this very socket (connect, listen, close …).
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut flags = 0;
    let mut uid = 0;
    let mut comm = [0u64; 2];
    let mut thread = [0u64; 2];
    if let Some(pending) = unsafe { PENDING.get(pid_tgid) } {
        if pending.ev.sk == sk {
            flags = flag::OWNER_IN_CONTEXT;
            uid = pending.ev.uid;
            comm = get16(&pending.ev.comm);
            thread = get16(&pending.ev.thread);
        }
    }
    // Written straight into the ring, every field: no event on the stack, no copy, no memset.
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        bump(counter::LOST);
        return None;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    set!(ev.kind, kind::STATE);
    set!(ev.family, family);
    set!(ev.lport, lport);
    set!(ev.rport, rport);
    set!(ev.protocol, IPPROTO_TCP);
    set!(ev.sock_type, 1);
    set!(ev.old_state, old);
    set!(ev.new_state, new);
    set!(ev.flags, flags);
    set!(ev._pad[0], 0);
    set!(ev._pad[1], 0);
    set!(ev._pad[2], 0);
    set!(ev.pid, (pid_tgid >> 32) as u32);
    set!(ev.tid, pid_tgid as u32);
    set!(ev.uid, uid);
    set!(ev.netns, netns);
    set!(ev.fd, 0);
    set!(ev.sk_err, sk_err);
    set!(ev.ts_ns, unsafe { bpf_ktime_get_ns() });
    set!(ev.sk, sk);
    set!(ev.parent_sk, 0);
    set!(ev.ret, 0);
    set!(ev.arg, 0);
    put16(&mut ev.laddr, laddr);
    put16(&mut ev.raddr, raddr);
    put16(&mut ev.comm, comm);
    put16(&mut ev.thread, thread);
    entry.submit(wakeup());
    Some(())
}

// ---- socket release (passive: the kernel ignores this program's verdict) -----------------

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    let sock = ctx.sock;
    let (family, protocol) = unsafe { ((*sock).family as u16, (*sock).protocol as u8) };
    if (family == AF_INET || family == AF_INET6)
        && (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP)
    {
        // The context is the `struct sock` itself: read its endpoints like any other socket.
        let _ = try_release(sock as u64);
    }
    1 // always allow (the kernel ignores this verdict for sock_release anyway)
}

#[inline(always)]
fn try_release(sk: u64) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !process_selected((pid_tgid >> 32) as u32) {
        return None;
    }
    let mut common = SkCommon::empty();
    common.load(sk)?;
    if let Some(totals) = unsafe { DATA.get(sk) } {
        // `tracer trace`: the socket's data totals travel just before its release.
        let totals = *totals;
        if DATA.remove(sk).is_ok() {
            bump(counter::DATA_REMOVED);
        }
        data_record(sk, &common, pid_tgid, &totals);
    }
    // Written into the ring the way the state program does, with fill_from_sock's fields.
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        // Ring full: still counted, if the filters would have taken it.
        let mut ev = SockEvent {
            kind: kind::RELEASE,
            ..SockEvent::default()
        };
        fill_from_sock(&mut ev, sk, &common);
        if socket_selected(&ev) {
            count(&ev);
            bump(counter::LOST);
        }
        return None;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    release_header(ev, pid_tgid);
    fill_from_sock(ev, sk, &common);
    if !socket_selected(ev) {
        entry.discard(0);
        return None;
    }
    count(ev);
    entry.submit(wakeup());
    Some(())
}

/// A DATA record (a socket's totals), built in the ring itself: with the names two events
/// on the stack no longer fit the 512-byte stack.
#[inline(always)]
fn data_record(sk: u64, common: &SkCommon, pid_tgid: u64, totals: &DataTotals) {
    let Some(mut entry) = EVENTS.reserve::<SockEvent>(0) else {
        bump(counter::LOST);
        return;
    };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    release_header(ev, pid_tgid);
    fill_from_sock(ev, sk, common);
    set!(ev.kind, kind::DATA);
    if !socket_selected(ev) {
        entry.discard(0);
        return;
    }
    totals.store(ev);
    count(ev);
    entry.submit(wakeup());
}

/// The fields of a RELEASE event that `fill_from_sock` does not write.
#[inline(always)]
fn release_header(ev: &mut SockEvent, pid_tgid: u64) {
    set!(ev.kind, kind::RELEASE);
    set!(ev.old_state, 0);
    set!(ev.flags, 0);
    set!(ev._pad[0], 0);
    set!(ev._pad[1], 0);
    set!(ev._pad[2], 0);
    set!(ev.pid, (pid_tgid >> 32) as u32);
    set!(ev.tid, pid_tgid as u32);
    set!(ev.uid, bpf_get_current_uid_gid() as u32);
    set!(ev.fd, 0);
    set!(ev.sk_err, 0);
    set!(ev.ts_ns, unsafe { bpf_ktime_get_ns() });
    set!(ev.parent_sk, 0);
    set!(ev.ret, 0);
    set!(ev.arg, 0);
    fill_names(ev);
}

// ---- data totals (attached by `tracer trace` only) -----------------------------------------

/// `sock:sock_send_length` / `sock:sock_recv_length` fire in `sock_sendmsg`/`sock_recvmsg`,
/// so every write/send/read/recv on a socket, in the calling process.
#[inline(always)]
fn count_data(ctx: &TracePointContext, sending: bool) -> Option<()> {
    // sk, family, protocol, ret, flags: 28 bytes, one probe.
    let rec = Window::<4>::read(ctx.as_ptr() as u64)?;
    let family: u16 = rec.get(off!(tp_data_family))?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let ret: i32 = rec.get(off!(tp_data_ret))?;
    if ret <= 0 {
        return None;
    }
    const MSG_PEEK: i32 = 2;
    let flags: i32 = rec.get(off!(tp_data_flags))?;
    if !sending && flags & MSG_PEEK != 0 {
        return None;
    }
    if !process_selected((bpf_get_current_pid_tgid() >> 32) as u32) {
        return None;
    }
    let sk: u64 = rec.get(off!(tp_data_sk))?;
    if unsafe { DATA.get(sk) }.is_none() {
        DATA.insert(sk, DataTotals::default(), 0).ok()?;
        bump(counter::DATA_INSERTED);
    }
    let totals = DATA.get_ptr_mut(sk)?;
    // Threads of one process may use one socket at once: add atomically (BPF_ATOMIC add;
    // the bpf target has no AtomicU64 type, so through the intrinsic).
    use core::intrinsics::{atomic_xadd, AtomicOrdering::Relaxed};
    unsafe {
        if sending {
            atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*totals).sent_bytes, ret as u64);
            atomic_xadd::<u32, u32, { Relaxed }>(&raw mut (*totals).sends, 1);
        } else {
            atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*totals).received_bytes, ret as u64);
            atomic_xadd::<u32, u32, { Relaxed }>(&raw mut (*totals).receives, 1);
        }
    }
    Some(())
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let _ = count_data(&ctx, true);
    0
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    let _ = count_data(&ctx, false);
    0
}

// ---- following --pid into children -------------------------------------------------------

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    if filt!(by_pid) == 0 {
        return 0;
    }
    // The forking task is current; its tgid is the parent process even when a worker thread
    // forks (the record's parent_pid would be that thread's id).
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    let child: u32 = unsafe { ctx.read_at(off!(tp_fork_child_pid) as usize) }.unwrap_or(0);
    if unsafe { FILTER_PIDS.get(parent) }.is_some() && FILTER_PIDS.insert(child, 1, 0).is_ok() {
        bump(counter::FILTER_INSERTED);
    }
    0
}

/// A selected process is gone: its pid leaves the selection, so the map holds live processes
/// only and a reused pid is not selected by accident. Not at `sched_process_exit`: that fires
/// before the exiting task's files are closed (its sockets' releases would be filtered out)
/// and when a main thread exits while other threads go on. `sched_process_free` fires when
/// the task is freed; a task whose pid is a selected tgid is that process's leader, freed
/// only once the whole thread group is gone.
#[tracepoint]
pub fn sched_process_free(ctx: TracePointContext) -> u32 {
    if filt!(by_pid) == 0 {
        return 0;
    }
    // SAFETY: the offset of `pid` comes from this tracepoint's format file.
    let pid: u32 = unsafe { ctx.read_at(off!(tp_free_pid) as usize) }.unwrap_or(0);
    if pid != 0 && FILTER_PIDS.remove(pid).is_ok() {
        bump(counter::FILTER_REMOVED);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
