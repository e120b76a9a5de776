//! A syscall between its enter and its exit: the record the enter starts in `PENDING`, and how
//! the exit completes it from the socket and sends it.
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid};
use tracer_common::{counter, flag};
use tracer_ebpf::{
    maps::BPF_NOEXIST,
    mem::{get16, put16},
    set,
    time::now_ns,
};

use crate::{
    emit::{count, emit},
    filter::{fill_names, only_counted, process_selected, socket_selected},
    maps::{bump, Pending, PENDING, ZERO_PENDING},
    sk::{fill_from_sock, SkCommon},
};

/// Starts a pending record for the current thread; None when the process is filtered out.
/// `port_before` is the socket's local port before the call.
#[inline(always)]
pub fn begin(
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
    // SAFETY: the map's value for this thread, just inserted: valid for the program's run (map
    // values live until an RCU grace period after removal). Only this thread's enter and exit
    // write it, and they never run at once; the state program only reads it.
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
pub fn end_pending(pid_tgid: u64) {
    if PENDING.remove(pid_tgid).is_ok() {
        bump(counter::PENDING_ENDED);
    }
}

/// Takes the current thread's pending record, if its kind matches.
#[inline(always)]
pub fn finish(ev_kind: u16) -> Option<(u64, &'static mut Pending)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pending = PENDING.get_ptr_mut(pid_tgid)?;
    // SAFETY: as in `begin`: this thread's own record, valid for the program's run, written
    // by no one else meanwhile.
    let pending = unsafe { &mut *pending };
    if pending.ev.kind != ev_kind {
        return None;
    }
    Some((pid_tgid, pending))
}

/// Completes an event from the socket (`common` is its `sock_common`, read once by the
/// caller) and emits it if the filters allow.
#[inline(always)]
pub fn complete(pid_tgid: u64, pending: &mut Pending, ret: i64, sk: u64, common: &SkCommon) {
    let ev = &mut pending.ev;
    ev.ret = ret;
    ev.ts_ns = now_ns();
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

/// The socket a pending record was opened on, read again at exit: the call held a reference
/// to its file throughout, so the `struct sock` is still that socket (no new fd table walk).
#[inline(always)]
pub fn pending_sock(pending: &Pending, common: &mut SkCommon) -> u64 {
    let sk = pending.ev.sk;
    match common.load(sk) {
        Some(()) => sk,
        None => 0,
    }
}
