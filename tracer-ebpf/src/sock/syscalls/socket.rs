//! socket(2): an AF_INET/AF_INET6 socket is made; the exit finds it by the fd returned.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{kind, AF_INET, AF_INET6};

use super::{arg, args, ret_of};
use crate::{
    pending::{begin, complete, finish},
    sk::{sock_of_fd, SkCommon},
};

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
