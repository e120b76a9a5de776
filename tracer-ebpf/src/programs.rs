use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::{cgroup_sock, map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{SockContext, TracePointContext},
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
    tp_state_skaddr: 0,
    tp_state_oldstate: 0,
    tp_state_newstate: 0,
    tp_state_sport: 0,
    tp_state_dport: 0,
    tp_state_family: 0,
    tp_state_protocol: 0,
    tp_state_saddr: 0,
    tp_state_daddr: 0,
    tp_state_saddr_v6: 0,
    tp_state_daddr_v6: 0,
    tp_fork_child_pid: 0,
    tp_data_sk: 0,
    tp_data_family: 0,
    tp_data_ret: 0,
    tp_data_flags: 0,
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
    ports: [0; tracer_common::MAX_PORT_FILTERS],
    comm: [0; 16],
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

#[map]
static FILTER_PIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(8192, 0);

/// A syscall between its enter and exit, keyed by pid_tgid (one in flight per thread).
/// Per-socket data totals, kept only while the data tracepoints are attached (`tracer trace`).
/// Removed at release, when they travel to user space as a DATA event.
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

#[map]
static PENDING: HashMap<u64, Pending> = HashMap::with_max_entries(16384, 0);

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

#[inline(always)]
fn read<T>(base: u64, offset: u64) -> Option<T> {
    if base == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + offset) as *const T).ok() }
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

#[inline(always)]
fn arg(ctx: &TracePointContext, n: u64) -> u64 {
    unsafe { ctx.read_at::<u64>((off!(tp_syscall_args) + 8 * n) as usize) }.unwrap_or(0)
}

/// `task->files->fdt->fd[fd]`, if it is an AF_INET/AF_INET6 socket: its `struct sock *`.
#[inline(always)]
fn sock_of_fd(fd: i64) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(task, off!(task_files))?;
    let fdt: u64 = read(files, off!(files_fdt))?;
    let max_fds: u32 = read(fdt, off!(fdtable_max_fds))?;
    if fd as u64 >= max_fds as u64 {
        return None;
    }
    let fd_array: u64 = read(fdt, off!(fdtable_fd))?;
    let file: u64 = read(fd_array, fd as u64 * 8)?;
    let inode: u64 = read(file, off!(file_f_inode))?;
    let mode: u16 = read(inode, off!(inode_i_mode))?;
    if mode & 0o170000 != 0o140000 {
        return None; // not S_IFSOCK
    }
    let socket: u64 = read(file, off!(file_private_data))?;
    let sk: u64 = read(socket, off!(socket_sk))?;
    let family: u16 = read(sk, off!(skc_family))?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    Some(sk)
}

#[inline(always)]
fn local_port(sk: u64) -> u16 {
    read::<u16>(sk, off!(skc_num)).unwrap_or(0)
}

#[inline(always)]
fn sk_protocol(sk: u64) -> u8 {
    read::<u16>(sk, off!(sk_protocol)).unwrap_or(0) as u8
}

#[inline(always)]
fn netns_of(sk: u64) -> u32 {
    let net: u64 = read(sk, off!(skc_net)).unwrap_or(0);
    read::<u32>(net, off!(net_inum)).unwrap_or(0)
}

/// Everything the socket itself says: family, protocol, state, both endpoints, netns.
#[inline(always)]
fn fill_from_sock(ev: &mut SockEvent, sk: u64) {
    ev.sk = sk;
    let family: u16 = read(sk, off!(skc_family)).unwrap_or(0);
    ev.family = family;
    ev.protocol = sk_protocol(sk);
    ev.sock_type = read::<u16>(sk, off!(sk_type)).unwrap_or(0) as u8;
    ev.new_state = read::<u8>(sk, off!(skc_state)).unwrap_or(0);
    ev.lport = local_port(sk);
    ev.rport = u16::from_be(read::<u16>(sk, off!(skc_dport)).unwrap_or(0));
    ev.netns = netns_of(sk);
    if family == AF_INET6 {
        ev.laddr = read(sk, off!(skc_v6_rcv_saddr)).unwrap_or([0; 16]);
        ev.raddr = read(sk, off!(skc_v6_daddr)).unwrap_or([0; 16]);
    } else {
        ev.laddr = [0; 16];
        ev.raddr = [0; 16];
        let l: [u8; 4] = read(sk, off!(skc_rcv_saddr)).unwrap_or([0; 4]);
        let r: [u8; 4] = read(sk, off!(skc_daddr)).unwrap_or([0; 4]);
        ev.laddr[..4].copy_from_slice(&l);
        ev.raddr[..4].copy_from_slice(&r);
    }
}

/// Parses a user `sockaddr_in`/`sockaddr_in6` of `len` bytes without reading past it.
/// Returns the family, or None when the buffer is unusable.
#[inline(always)]
fn read_user_sockaddr(uaddr: u64, len: i64, port: &mut u16, addr: &mut [u8; 16]) -> Option<u16> {
    // Longer than a sockaddr_storage (128 bytes): the kernel refuses it before reading it.
    const SOCKADDR_STORAGE: i64 = 128;
    if uaddr == 0 || !(2..=SOCKADDR_STORAGE).contains(&len) {
        return None;
    }
    let family: u16 = read_user(uaddr)?;
    match family {
        AF_INET if len >= 8 => {
            *port = u16::from_be(read_user(uaddr + 2)?);
            let a: [u8; 4] = read_user(uaddr + 4)?;
            *addr = [0; 16];
            addr[..4].copy_from_slice(&a);
            Some(family)
        }
        AF_INET6 if len >= 24 => {
            *port = u16::from_be(read_user(uaddr + 2)?);
            *addr = read_user(uaddr + 8)?;
            Some(family)
        }
        0 => Some(0), // AF_UNSPEC: connect() used to dissolve a UDP association
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
        let comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let want = unsafe { core::ptr::read_volatile(&FILTER.comm) };
        if comm != want {
            return false;
        }
    }
    true
}

/// Socket-level filters, checked once the endpoints are known.
#[inline(always)]
fn socket_selected(ev: &SockEvent) -> bool {
    let protocol = filt!(protocol);
    if protocol != 0 && ev.protocol != protocol {
        return false;
    }
    let family = filt!(family);
    if family != 0 && ev.family != family {
        return false;
    }
    let netns = filt!(netns);
    if netns != 0 && ev.netns != netns {
        return false;
    }
    let count = filt!(port_count) as usize;
    if count != 0 {
        let ports = unsafe { core::ptr::read_volatile(&FILTER.ports) };
        let mut hit = false;
        let mut i = 0;
        while i < tracer_common::MAX_PORT_FILTERS {
            if i < count && (ports[i] == ev.lport || ports[i] == ev.rport) {
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
#[inline(always)]
fn count(ev: &SockEvent) {
    use tracer_common::stats;
    if ev.kind >= kind::DATA {
        return;
    }
    // A transition in softirq cannot be told to belong to a --pid/--comm process here; with
    // such a filter the agent counts transitions after attributing them through its table.
    if ev.kind == kind::STATE && (filt!(by_pid) != 0 || filt!(by_comm) != 0) {
        return;
    }
    stat(stats::event_index(ev.kind, ev.protocol, ev.family));
    if ev.kind == kind::STATE {
        stat(stats::TRANSITIONS + (ev.old_state as u32 & 15) * 16 + (ev.new_state as u32 & 15));
        // A handshake that failed (refused, timed out, unreachable): counted here, where both
        // blocking and non-blocking connects end up, not at the syscall.
        if ev.old_state == tcp_state::SYN_SENT && ev.new_state == tcp_state::CLOSE && ev.sk_err > 0
        {
            stat(stats::CONNECT_ERRNOS + stats::errno_slot(-(ev.sk_err as i64)));
        }
    } else if ev.ret < 0 && ev.kind == kind::CONNECT && !handshake_errno(ev) {
        stat(stats::CONNECT_ERRNOS + stats::errno_slot(ev.ret));
    } else if ev.ret < 0 && ev.kind == kind::BIND {
        stat(stats::BIND_ERRNOS + stats::errno_slot(ev.ret));
    }
}

#[inline(always)]
fn emit(ev: &SockEvent) {
    count(ev);
    match EVENTS.reserve::<SockEvent>(0) {
        Some(mut entry) => {
            entry.write(*ev);
            entry.submit(0);
        }
        None => bump(counter::LOST),
    }
}

/// Starts a pending record for the current thread. Returns false when the process is filtered.
#[inline(always)]
fn begin(ev_kind: u16, fd: i64, uaddr: u64, uaddr_len: u64, arg: i64, sk: u64) -> bool {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !process_selected(tgid) {
        return false;
    }
    let uid_gid = bpf_get_current_uid_gid();
    let mut pending = Pending {
        ev: SockEvent {
            kind: ev_kind,
            pid: tgid,
            tid: pid_tgid as u32,
            uid: uid_gid as u32,
            fd: fd as i32,
            arg,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
            ..SockEvent::default()
        },
        uaddr,
        uaddr_len,
        port_before: local_port(sk),
    };
    pending.ev.sk = sk;
    if PENDING.insert(pid_tgid, &pending, 0).is_err() {
        bump(counter::PENDING_FULL);
    }
    true
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

/// Completes an event from the socket behind `fd` and emits it if the filters allow.
#[inline(always)]
fn complete(pid_tgid: u64, pending: &mut Pending, ret: i64, sk: u64) {
    let ev = &mut pending.ev;
    ev.ret = ret;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    if sk != 0 {
        let requested_port = ev.lport;
        let requested_addr = ev.laddr;
        let user_rport = ev.rport;
        let user_raddr = ev.raddr;
        fill_from_sock(ev, sk);
        // The kernel chose the port when the socket had none before the call and has one now,
        // unless the caller asked for that port (bind to a non-zero port). This also holds for
        // a non-blocking connect returning EINPROGRESS: the port is assigned before it returns.
        let asked_for_port = ev.flags & flag::LOCAL_FROM_USER != 0 && requested_port != 0;
        if pending.port_before == 0 && ev.lport != 0 && !asked_for_port {
            ev.flags |= flag::KERNEL_CHOSE_PORT;
        }
        if ev.flags & flag::LOCAL_FROM_USER != 0 && (ret < 0 || ev.lport == 0) {
            ev.lport = requested_port;
            ev.laddr = requested_addr;
        } else {
            ev.flags &= !flag::LOCAL_FROM_USER;
        }
        if ev.flags & flag::REMOTE_FROM_USER != 0 {
            if ev.rport == 0 || ret < 0 {
                ev.rport = user_rport;
                ev.raddr = user_raddr;
            } else {
                ev.flags &= !flag::REMOTE_FROM_USER;
            }
        }
    }
    if socket_selected(ev) {
        emit(ev);
    }
    let _ = PENDING.remove(pid_tgid);
}

// ---- socket(2) ----------------------------------------------------------------------------

#[tracepoint]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    let family = arg(&ctx, 0) as u16;
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let sock_type = arg(&ctx, 1) as i64 & 0xf;
    if begin(kind::SOCKET, -1, 0, 0, sock_type, 0) {
        if let Some((_, p)) = finish(kind::SOCKET) {
            p.ev.family = family;
            p.ev.sock_type = sock_type as u8;
        }
    }
    0
}

#[tracepoint]
pub fn sys_exit_socket(ctx: TracePointContext) -> u32 {
    if let Some((id, p)) = finish(kind::SOCKET) {
        let ret = ret_of(&ctx);
        let sk = sock_of_fd(ret).unwrap_or(0);
        p.ev.fd = ret as i32;
        complete(id, p, ret, sk);
    }
    0
}

// ---- bind(2), connect(2): the caller names an address ------------------------------------

#[inline(always)]
fn enter_with_sockaddr(ctx: &TracePointContext, ev_kind: u16, user_is_local: bool) {
    let fd = arg(ctx, 0) as i32 as i64;
    let Some(sk) = sock_of_fd(fd) else { return };
    let uaddr = arg(ctx, 1);
    let len = arg(ctx, 2) as i32 as i64;
    if !begin(ev_kind, fd, uaddr, len as u64, 0, sk) {
        return;
    }
    if let Some((_, p)) = finish(ev_kind) {
        let mut port = 0u16;
        let mut addr = [0u8; 16];
        match read_user_sockaddr(uaddr, len, &mut port, &mut addr) {
            Some(_) => {
                if user_is_local {
                    p.ev.lport = port;
                    p.ev.laddr = addr;
                    p.ev.flags |= flag::LOCAL_FROM_USER;
                } else {
                    p.ev.rport = port;
                    p.ev.raddr = addr;
                    p.ev.flags |= flag::REMOTE_FROM_USER;
                }
            }
            None => p.ev.flags |= flag::BAD_SOCKADDR,
        }
    }
}

#[inline(always)]
fn exit_on_same_fd(ctx: &TracePointContext, ev_kind: u16) {
    if let Some((id, p)) = finish(ev_kind) {
        let sk = sock_of_fd(p.ev.fd as i64).unwrap_or(p.ev.sk);
        complete(id, p, ret_of(ctx), sk);
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
fn enter_on_fd(ctx: &TracePointContext, ev_kind: u16, with_arg: bool) {
    let fd = arg(ctx, 0) as i32 as i64;
    let Some(sk) = sock_of_fd(fd) else { return };
    let a = if with_arg {
        arg(ctx, 1) as i32 as i64
    } else {
        0
    };
    if begin(ev_kind, fd, 0, 0, a, sk) && ev_kind == kind::CLOSE {
        // The fd is gone at exit: read the socket now.
        if let Some((_, p)) = finish(ev_kind) {
            fill_from_sock(&mut p.ev, sk);
        }
    }
}

#[tracepoint]
pub fn sys_enter_listen(ctx: TracePointContext) -> u32 {
    enter_on_fd(&ctx, kind::LISTEN, true);
    0
}

#[tracepoint]
pub fn sys_exit_listen(ctx: TracePointContext) -> u32 {
    exit_on_same_fd(&ctx, kind::LISTEN);
    0
}

#[tracepoint]
pub fn sys_enter_shutdown(ctx: TracePointContext) -> u32 {
    enter_on_fd(&ctx, kind::SHUTDOWN, true);
    0
}

#[tracepoint]
pub fn sys_exit_shutdown(ctx: TracePointContext) -> u32 {
    exit_on_same_fd(&ctx, kind::SHUTDOWN);
    0
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    enter_on_fd(&ctx, kind::CLOSE, false);
    0
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
        let _ = PENDING.remove(id);
    }
    0
}

// ---- accept(2), accept4(2) ---------------------------------------------------------------

#[inline(always)]
fn enter_accept(ctx: &TracePointContext) {
    let fd = arg(ctx, 0) as i32 as i64;
    let Some(sk) = sock_of_fd(fd) else { return };
    begin(kind::ACCEPT, fd, 0, 0, 0, sk);
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
        let _ = PENDING.remove(id);
        return;
    }
    p.ev.parent_sk = p.ev.sk;
    let sk = sock_of_fd(ret).unwrap_or(0);
    if sk == 0 {
        // Failed accept: describe the listener.
        let listener = p.ev.parent_sk;
        complete(id, p, ret, listener);
    } else {
        complete(id, p, ret, sk);
    }
}

#[inline(always)]
fn accept_without_enter(ret: i64) {
    let Some(sk) = sock_of_fd(ret) else { return };
    if !begin(kind::ACCEPT, -1, 0, 0, 0, 0) {
        return;
    }
    if let Some((id, p)) = finish(kind::ACCEPT) {
        p.ev.flags |= flag::ENTER_MISSED;
        p.port_before = 1; // the accepted socket's port is the listener's, never chosen here
        complete(id, p, ret, sk);
    }
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
fn udp_sock_of_fd(fd: i64) -> Option<u64> {
    if filt!(udp_data) == 0 {
        return None;
    }
    let sk = sock_of_fd(fd)?;
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
    let Some(sk) = udp_sock_of_fd(fd) else { return };
    if uaddr == 0 && local_port(sk) != 0 {
        return; // neither names a peer nor autobinds
    }
    if !begin(ev_kind, fd, uaddr, len, bytes, sk) {
        return;
    }
    if let Some((_, p)) = finish(ev_kind) {
        let mut port = 0u16;
        let mut addr = [0u8; 16];
        if uaddr != 0 {
            match read_user_sockaddr(uaddr, len as i64, &mut port, &mut addr) {
                Some(_) => {
                    p.ev.rport = port;
                    p.ev.raddr = addr;
                    p.ev.flags |= flag::REMOTE_FROM_USER;
                }
                None => p.ev.flags |= flag::BAD_SOCKADDR,
            }
        }
    }
}

#[inline(always)]
fn enter_recv(ev_kind: u16, fd: i64, uaddr: u64, len_or_ptr: u64, bytes: i64) {
    if uaddr == 0 {
        return;
    }
    let Some(sk) = udp_sock_of_fd(fd) else { return };
    begin(ev_kind, fd, uaddr, len_or_ptr, bytes, sk);
}

/// Recv exit: the kernel has written the sender's address into the caller's buffer.
#[inline(always)]
fn exit_recv(ctx: &TracePointContext, ev_kind: u16, len_is_ptr: bool) {
    if let Some((id, p)) = finish(ev_kind) {
        let ret = ret_of(ctx);
        if ret == -11 {
            let _ = PENDING.remove(id);
            return;
        }
        if ret >= 0 {
            let len = if len_is_ptr {
                read_user::<i32>(p.uaddr_len).unwrap_or(0) as i64
            } else {
                // recvmsg: the kernel updated msg_namelen in the user msghdr.
                msg_name(p.uaddr_len).1 as i64
            };
            let mut port = 0u16;
            let mut addr = [0u8; 16];
            if read_user_sockaddr(p.uaddr, len, &mut port, &mut addr).is_some() {
                p.ev.rport = port;
                p.ev.raddr = addr;
                p.ev.flags |= flag::REMOTE_FROM_USER;
            }
        }
        let sk = sock_of_fd(p.ev.fd as i64).unwrap_or(p.ev.sk);
        complete(id, p, ret, sk);
    }
}

#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    let fd = arg(&ctx, 0) as i32 as i64;
    enter_send(
        kind::SENDTO,
        fd,
        arg(&ctx, 4),
        arg(&ctx, 5),
        arg(&ctx, 2) as i64,
    );
    0
}

#[tracepoint]
pub fn sys_exit_sendto(ctx: TracePointContext) -> u32 {
    exit_on_same_fd(&ctx, kind::SENDTO);
    0
}

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    let fd = arg(&ctx, 0) as i32 as i64;
    let (name, len) = msg_name(arg(&ctx, 1));
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
    let fd = arg(&ctx, 0) as i32 as i64;
    enter_recv(
        kind::RECVFROM,
        fd,
        arg(&ctx, 4),
        arg(&ctx, 5),
        arg(&ctx, 2) as i64,
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
    let fd = arg(&ctx, 0) as i32 as i64;
    let msg = arg(&ctx, 1);
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

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_state(&ctx);
    0
}

/// The local port of a socket changing state. The socket's own `skc_num` while it holds one:
/// the record's `sport` (inet_sport) can be stale on a new socket, left by the previous user of
/// its memory until connect sets it. On the way into CLOSE the kernel has already released the
/// port (`skc_num` = 0) when the tracepoint fires, and `sport` still names the port it had.
#[inline(always)]
fn state_local_port(ctx: &TracePointContext, sk: u64, new_state: u8) -> u16 {
    let port = local_port(sk);
    if port != 0 || new_state != tracer_common::tcp_state::CLOSE {
        return port;
    }
    unsafe { ctx.read_at::<u16>(off!(tp_state_sport) as usize) }.unwrap_or(0)
}

#[inline(always)]
fn try_state(ctx: &TracePointContext) -> Option<()> {
    let protocol: u16 = unsafe { ctx.read_at(off!(tp_state_protocol) as usize) }.ok()?;
    if protocol as u8 != IPPROTO_TCP {
        return None;
    }
    let sk: u64 = unsafe { ctx.read_at(off!(tp_state_skaddr) as usize) }.ok()?;
    let family: u16 = unsafe { ctx.read_at(off!(tp_state_family) as usize) }.ok()?;
    let old: i32 = unsafe { ctx.read_at(off!(tp_state_oldstate) as usize) }.ok()?;
    let new: i32 = unsafe { ctx.read_at(off!(tp_state_newstate) as usize) }.ok()?;
    let mut ev = SockEvent {
        kind: kind::STATE,
        family,
        protocol: IPPROTO_TCP,
        sock_type: 1,
        old_state: old as u8,
        new_state: new as u8,
        sk,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        lport: state_local_port(ctx, sk, new as u8),
        rport: unsafe { ctx.read_at(off!(tp_state_dport) as usize) }.ok()?,
        netns: netns_of(sk),
        sk_err: read::<i32>(sk, off!(sk_err)).unwrap_or(0),
        ..SockEvent::default()
    };
    if family == AF_INET6 {
        ev.laddr = unsafe { ctx.read_at(off!(tp_state_saddr_v6) as usize) }.ok()?;
        ev.raddr = unsafe { ctx.read_at(off!(tp_state_daddr_v6) as usize) }.ok()?;
    } else {
        let l: [u8; 4] = unsafe { ctx.read_at(off!(tp_state_saddr) as usize) }.ok()?;
        let r: [u8; 4] = unsafe { ctx.read_at(off!(tp_state_daddr) as usize) }.ok()?;
        ev.laddr[..4].copy_from_slice(&l);
        ev.raddr[..4].copy_from_slice(&r);
    }
    // Whoever is on the CPU (often softirq) is only the owner when this thread is inside a
    // syscall on this very socket (connect, listen, close …).
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    if let Some(pending) = unsafe { PENDING.get(pid_tgid) } {
        if pending.ev.sk == sk {
            ev.flags |= flag::OWNER_IN_CONTEXT;
            ev.uid = pending.ev.uid;
            ev.comm = pending.ev.comm;
        }
    }
    if socket_selected(&ev) {
        emit(&ev);
    }
    Some(())
}

// ---- socket release (passive: the kernel ignores this program's verdict) -----------------

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    let sock = ctx.sock;
    let (family, protocol) = unsafe { ((*sock).family as u16, (*sock).protocol as u8) };
    let pid_tgid = bpf_get_current_pid_tgid();
    if (family == AF_INET || family == AF_INET6)
        && (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP)
        && process_selected((pid_tgid >> 32) as u32)
    {
        let mut ev = SockEvent {
            kind: kind::RELEASE,
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            uid: bpf_get_current_uid_gid() as u32,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
            ts_ns: unsafe { bpf_ktime_get_ns() },
            ..SockEvent::default()
        };
        // The context is the `struct sock` itself: read its endpoints like any other socket.
        fill_from_sock(&mut ev, sock as u64);
        if socket_selected(&ev) {
            let sk = sock as u64;
            if let Some(totals) = unsafe { DATA.get(sk) } {
                let mut data = SockEvent {
                    kind: kind::DATA,
                    ..ev
                };
                totals.store(&mut data);
                emit(&data);
                let _ = DATA.remove(sk);
            }
            emit(&ev);
        }
    }
    1 // always allow (the kernel ignores this verdict for sock_release anyway)
}

// ---- data totals (attached by `tracer trace` only) -----------------------------------------

/// `sock:sock_send_length` / `sock:sock_recv_length` fire in `sock_sendmsg`/`sock_recvmsg`,
/// so every write/send/read/recv on a socket, in the calling process.
#[inline(always)]
fn count_data(ctx: &TracePointContext, sending: bool) -> Option<()> {
    let family: u16 = unsafe { ctx.read_at(off!(tp_data_family) as usize) }.ok()?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let ret: i32 = unsafe { ctx.read_at(off!(tp_data_ret) as usize) }.ok()?;
    if ret <= 0 {
        return None;
    }
    const MSG_PEEK: i32 = 2;
    let flags: i32 = unsafe { ctx.read_at(off!(tp_data_flags) as usize) }.ok()?;
    if !sending && flags & MSG_PEEK != 0 {
        return None;
    }
    if !process_selected((bpf_get_current_pid_tgid() >> 32) as u32) {
        return None;
    }
    let sk: u64 = unsafe { ctx.read_at(off!(tp_data_sk) as usize) }.ok()?;
    if unsafe { DATA.get(sk) }.is_none() {
        DATA.insert(sk, DataTotals::default(), 0).ok()?;
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
    if unsafe { FILTER_PIDS.get(parent) }.is_some() {
        let _ = FILTER_PIDS.insert(child, 1, 0);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
