//! close(2) and shutdown(2): the end of a socket's use by the caller (its release, when the
//! last reference goes, is `release.rs`'s).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::kind;
use tracer_ebpf::time::now_ns;

use super::{arg, args, enter_on_fd, exit_on_same_fd, ret_of};
use crate::{
    emit::emit,
    filter::{selected, socket_selected},
    maps::stat,
    pending::{end_pending, finish},
    sk::{netns_of, protocol_and_type, sock_of_fd, SkCommon},
};

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
        ev.ts_ns = now_ns();
        if socket_selected(ev) {
            emit(ev);
        }
        end_pending(id);
    }
    0
}
