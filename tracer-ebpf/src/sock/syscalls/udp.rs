//! UDP: sendto(2), sendmsg(2), recvfrom(2), recvmsg(2).
//!
//! TCP sends are not events here. A UDP call is an event when it names a peer, or when the
//! socket has no local port yet (the kernel autobinds it on the first send).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{flag, kind, IPPROTO_UDP};
use tracer_ebpf::{mem::put16, user::read_user};

use super::{arg, args, exit_on_same_fd, ret_of};
use crate::{
    pending::{begin, complete, end_pending, finish, pending_sock},
    sk::{sk_protocol, sock_of_fd, SkCommon},
    sockaddr::{msg_name, read_user_sockaddr},
};

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
