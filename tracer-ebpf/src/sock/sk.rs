//! What a kernel socket says: from an fd to its `struct sock`, and the socket's own fields
//! (family, protocol, state, endpoints, network namespace) read through the offsets in
//! `OFFSETS`.
use aya_ebpf::helpers::bpf_get_current_task;
use tracer_common::{SockEvent, AF_INET, AF_INET6};
use tracer_ebpf::{
    mem::put16,
    window::{read, Window},
};

/// The first bytes of a `struct sock` (its `sock_common`): addresses, ports, family, state and
/// netns pointer all lie in the first 88 bytes on 64-bit kernels.
pub type SkCommon = Window<12>;

/// The calling task's `struct task_struct *`, to read through `bpf_probe_read_kernel` only.
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: a helper without arguments that cannot fail; the address it returns is never
    // dereferenced here, only handed to the probe-read helpers.
    unsafe { bpf_get_current_task() }
}

/// `task->files->fdt->fd[fd]`, if it is an AF_INET/AF_INET6 socket: its `struct sock *`, with
/// its `sock_common` read into `common`.
#[inline(always)]
pub fn sock_of_fd(fd: i64, common: &mut SkCommon) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    let task = current_task();
    let files: u64 = read(task, off!(task_files))?;
    let fdt: u64 = read(files, off!(files_fdt))?;
    let fdtable = Window::<2>::read(fdt)?;
    let max_fds: u32 = fdtable.get(off!(fdtable_max_fds))?;
    if fd as u64 >= max_fds as u64 {
        return None;
    }
    let fd_array: u64 = fdtable.get(off!(fdtable_fd))?;
    // `fd` is below `max_fds`: an element of the `struct file *` array.
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
pub fn sk_protocol(sk: u64) -> u8 {
    read::<u16>(sk, off!(sk_protocol)).unwrap_or(0) as u8
}

/// `sk_protocol` and `sk_type`, two neighbouring u16s of `struct sock`: one probe.
#[inline(always)]
pub fn protocol_and_type(sk: u64) -> (u8, u8) {
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
pub fn netns_of(common: &SkCommon) -> u32 {
    let net: u64 = common.get(off!(skc_net)).unwrap_or(0);
    read::<u32>(net, off!(net_inum)).unwrap_or(0)
}

/// Everything the socket itself says: family, protocol, state, both endpoints, netns.
#[inline(always)]
pub fn fill_from_sock(ev: &mut SockEvent, sk: u64, common: &SkCommon) {
    ev.sk = sk;
    let family: u16 = common.get(off!(skc_family)).unwrap_or(0);
    ev.family = family;
    (ev.protocol, ev.sock_type) = protocol_and_type(sk);
    ev.new_state = common.get::<u8>(off!(skc_state)).unwrap_or(0);
    ev.lport = common.get::<u16>(off!(skc_num)).unwrap_or(0);
    ev.rport = u16::from_be(common.get::<u16>(off!(skc_dport)).unwrap_or(0));
    ev.netns = netns_of(common);
    let (laddr, raddr) = addresses(common, family);
    put16(&mut ev.laddr, laddr);
    put16(&mut ev.raddr, raddr);
}

/// The socket's local and remote addresses, as two words each (IPv4 in the first 4 bytes).
#[inline(always)]
pub fn addresses(common: &SkCommon, family: u16) -> ([u64; 2], [u64; 2]) {
    if family == AF_INET6 {
        (
            common.addr16(off!(skc_v6_rcv_saddr)),
            common.addr16(off!(skc_v6_daddr)),
        )
    } else {
        (
            common.addr4(off!(skc_rcv_saddr)),
            common.addr4(off!(skc_daddr)),
        )
    }
}
