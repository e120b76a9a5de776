//! TCP health events — retransmits, resets, drops — as the kernel reports them, and the
//! kernel's own names for why (`enum skb_drop_reason`, `enum sk_rst_reason`), which differ
//! from kernel to kernel: read from its BTF at start and handed here once.
use std::sync::OnceLock;

use compact_str::{format_compact, CompactString};
use tracer_common::{kind, tcp_state, SockEvent};

/// The kernel's reason names by value (prefix stripped: `NO_SOCKET`, `TCP_LISTEN_OVERFLOW`).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReasonNames {
    pub drop: Vec<(u32, String)>,
    pub reset: Vec<(u32, String)>,
}

static NAMES: OnceLock<ReasonNames> = OnceLock::new();

/// Sets the names for this run (the first call wins).
pub fn set_names(names: ReasonNames) {
    let _ = NAMES.set(names);
}

/// The names set for this run (to record them with a capture).
pub fn names() -> Option<ReasonNames> {
    NAMES.get().cloned()
}

fn lookup(table: &[(u32, String)], value: u32) -> CompactString {
    match table.iter().find(|(v, _)| *v == value) {
        Some((_, name)) => CompactString::from(name.as_str()),
        None => format_compact!("REASON_{value}"),
    }
}

/// A drop reason's name (`REASON_<n>` when this kernel's BTF does not say).
pub fn drop_reason(value: u32) -> CompactString {
    lookup(NAMES.get().map_or(&[][..], |n| &n.drop), value)
}

/// A sent reset's reason name.
pub fn reset_reason(value: u32) -> CompactString {
    lookup(NAMES.get().map_or(&[][..], |n| &n.reset), value)
}

/// What was sent again: the SYN of a connect, the SYN-ACK of a connection in a listener's
/// queue, or data (anything later).
pub fn retransmitted(ev: &SockEvent) -> &'static str {
    if ev.arg == 1 || ev.new_state == tcp_state::SYN_RECV {
        "synack"
    } else if ev.new_state == tcp_state::SYN_SENT {
        "syn"
    } else {
        "data"
    }
}

/// A reset's direction.
pub fn reset_direction(ev: &SockEvent) -> &'static str {
    if ev.ret == 1 {
        "received"
    } else {
        "sent"
    }
}

/// Whether the kind is one of the health events.
pub fn is_health(k: u16) -> bool {
    matches!(k, kind::RETRANSMIT | kind::RESET | kind::DROP)
}
