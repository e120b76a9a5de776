//! NAT bindings, their ends and stitched flows as text lines (JSON goes through serde).
use std::fmt::Write as _;

use crate::text;

use crate::model::nat::{Binding, BindingEnd, Flow, FlowEnd, NatOutput};
use crate::model::types::Endpoint;

pub const HEADER: &str =
    "TIME            NETNS        PROTO KIND TRANSLATION  ORIGINAL                                      TRANSLATED";

/// One line per record, without a trailing newline. `time` formats a monotonic timestamp.
pub fn line(item: &NatOutput, time: impl Fn(u64) -> String) -> String {
    match item {
        NatOutput::Binding(b) => binding_line(b, &time),
        NatOutput::End(e) => end_line(e, &time),
        NatOutput::Flow(f) => flow_line(f, &time),
    }
}

/// A namespace's name in its 12-cell column: escaped, cut by display cells (with `…`).
fn netns(name: &str) -> String {
    if text::width(&text::escape(name)) > 12 {
        let mut cut = text::fit(name, 11).into_owned();
        cut.push('…');
        cut
    } else {
        text::pad(name, 12)
    }
}

fn binding_line(b: &Binding, time: &impl Fn(u64) -> String) -> String {
    format!(
        "{:<15} {} {:<5} {:<4} {:<12} {:<45} {}",
        time(b.ts_ns),
        netns(&b.netns_name),
        b.proto,
        b.kind.as_str().to_uppercase(),
        b.translation(),
        b.original.to_string(),
        b.translated
    )
}

fn end_line(e: &BindingEnd, time: &impl Fn(u64) -> String) -> String {
    let mut s = format!(
        "{:<15} {} {:<5} {:<4} {:<12} {:<45} ended after {:.1} s",
        time(e.ts_ns),
        netns(&e.netns_name),
        e.proto,
        "END",
        e.kind.as_str(),
        e.original.to_string(),
        e.duration_s
    );
    if let Some(c) = e.counters {
        let _ = write!(
            s,
            ": {} pkts {} B out, {} pkts {} B back",
            c.orig_packets, c.orig_bytes, c.reply_packets, c.reply_bytes
        );
    }
    s
}

fn who(end: &FlowEnd) -> String {
    format!("{}[{}]", text::escape(&end.comm), end.pid)
}

fn flow_line(f: &Flow, time: &impl Fn(u64) -> String) -> String {
    let chosen = if f.client.kernel_chose_port == Some(true) {
        " (port chosen by kernel)"
    } else {
        ""
    };
    format!(
        "{:<15} FLOW {} {} sent {}{} ⇒ {} rewrote it to {} ⇒ {} at {} got it from {}",
        time(f.ts_ns),
        f.proto,
        who(&f.client),
        f.nat.original,
        chosen,
        text::escape(&f.nat.netns_name),
        f.nat.translated,
        who(&f.server),
        Endpoint::new(f.server.addr, f.server.port),
        Endpoint::new(f.server.peer_addr, f.server.peer_port),
    )
}
