//! NAT bindings, their ends and stitched flows as text lines and as JSON records. The port a
//! connection is for (a tuple's destination port) is named by its service where known:
//! `198.51.100.10:80 (http, well-known port)` in text, `original_dport_service` and
//! `translated_dport_service` in JSON.
use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;
use tracer_common::PortClass;

use crate::text;

use super::services;
use super::wire::Tagged;
use crate::model::nat::{
    who::{Answers, WhoAnswer},
    Binding, BindingEnd, Endpoints, Flow, FlowEnd, NatOutput,
};
use crate::model::types::{Endpoint, PortNames, Proto};

pub const HEADER: &str =
    "TIME            NETNS        PROTO KIND TRANSLATION  ORIGINAL                                      TRANSLATED";

/// One line per record, without a trailing newline. `time` formats a monotonic timestamp;
/// `names` names the ports' services.
pub fn line(item: &NatOutput, time: impl Fn(u64) -> String, names: PortNames) -> String {
    match item {
        NatOutput::Binding(b) => binding_line(b, &time, names),
        NatOutput::End(e) => end_line(e, &time),
        NatOutput::Flow(f) => flow_line(f, &time, names),
        NatOutput::Health(h) => health_line(h),
        NatOutput::Pool(p, _) => pool_line(p),
    }
}

/// `NAT pool in router, tcp 203.0.113.1 → 198.51.100.10:80: 4 of 4 ports in use (100.0%), peak
/// 4 (61000-61003, from nftables)`, with a warning past 80 %. The namespace's name is escaped.
pub fn pool_line(p: &crate::model::nat::pool::PoolReport) -> String {
    let daddr = match p.daddr {
        std::net::IpAddr::V6(a) => format!("[{a}]"),
        a => a.to_string(),
    };
    format!(
        "NAT pool in {}, {} {} → {daddr}:{}: {} of {} ports in use ({:.1}%), peak {} ({}-{}, from {}){}{}",
        text::escape(&p.netns_name),
        p.proto,
        p.translated_addr,
        p.dport,
        p.in_use,
        p.size,
        p.percent,
        p.peak,
        p.range.0,
        p.range.1,
        p.range_from,
        match p.unanswered_clients {
            0 => String::new(),
            n => format!(" · {n} client connection(s) to it unanswered past a second"),
        },
        if p.percent >= crate::model::nat::pool::WARN_PERCENT {
            "  ⚠ near exhaustion: new connections to it may get no port"
        } else {
            ""
        }
    )
}

/// `conntrack in router: 12 of 262144 entries (0.0%) · insert_failed 0, drop 0, early_drop 0,
/// search_restart 0`, with a warning past 80 % full. The namespace's name is escaped.
pub fn health_line(h: &crate::model::nat::health::CtHealth) -> String {
    let fill = match (h.max, h.percent) {
        (Some(max), Some(p)) => format!("{} of {max} entries ({p:.1}%)", h.entries),
        _ => format!("{} entries", h.entries),
    };
    let s = &h.stat;
    format!(
        "conntrack in {}: {fill} · insert_failed {}, drop {}, early_drop {}, search_restart {}{}",
        text::escape(&h.netns_name),
        s.insert_failed,
        s.drop,
        s.early_drop,
        s.search_restart,
        if h.near_full() {
            "  ⚠ table near full: when it is, new connections are dropped"
        } else {
            ""
        }
    )
}

/// `http, well-known`: a port's service and IANA class, escaped (the name comes from a file).
fn label(port: u16, proto: Proto, names: PortNames) -> String {
    let label = services::label(names(port, proto), PortClass::of(port).as_str());
    text::escape(&label).into_owned()
}

/// ` (http, well-known port)` for a named service; empty otherwise.
fn service(port: u16, proto: Proto, names: PortNames) -> String {
    match names(port, proto) {
        Some(_) => format!(" ({} port)", label(port, proto, names)),
        None => String::new(),
    }
}

/// The service a binding's connection reaches (its translated destination port), after the
/// one the client asked for when a port forward changed a named port:
/// ` (http-alt, registered port → https, well-known port)`.
fn binding_service(b: &Binding, names: PortNames) -> String {
    let (asked, reached) = (b.original.dport, b.translated.dport);
    if asked != reached && names(asked, b.proto).is_some() {
        format!(
            " ({} port → {} port)",
            label(asked, b.proto, names),
            label(reached, b.proto, names)
        )
    } else {
        service(reached, b.proto, names)
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

fn binding_line(b: &Binding, time: &impl Fn(u64) -> String, names: PortNames) -> String {
    format!(
        "{:<15} {} {:<5} {:<4} {:<12} {:<45} {}{}{}",
        time(b.ts_ns),
        netns(&b.netns_name),
        b.proto,
        b.kind.as_str().to_uppercase(),
        b.translation(),
        b.original.to_string(),
        b.translated,
        binding_service(b, names),
        if b.existing {
            " (older than tracer: found in the conntrack table)"
        } else {
            ""
        }
    )
}

fn end_line(e: &BindingEnd, time: &impl Fn(u64) -> String) -> String {
    let mut s = format!(
        "{:<15} {} {:<5} {:<4} {:<12} {:<45} ended after {}{:.1} s",
        time(e.ts_ns),
        netns(&e.netns_name),
        e.proto,
        "END",
        e.kind.as_str(),
        e.original.to_string(),
        if e.existing { "more than " } else { "" },
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
    // A process in a container says which: `httpd[4242] in web1`.
    match end.container.as_deref() {
        Some(c) if c != "host" => format!(
            "{}[{}] in {}",
            text::escape(&end.comm),
            end.pid,
            text::escape(c)
        ),
        _ => format!("{}[{}]", text::escape(&end.comm), end.pid),
    }
}

fn flow_line(f: &Flow, time: &impl Fn(u64) -> String, names: PortNames) -> String {
    let chosen = if f.client.kernel_chose_port == Some(true) {
        " (port chosen by kernel)"
    } else {
        ""
    };
    format!(
        "{:<15} FLOW {} {} sent {}{} ⇒ {} rewrote it to {} ⇒ {} at {}{} got it from {}",
        time(f.ts_ns),
        f.proto,
        who(&f.client),
        f.nat.original,
        chosen,
        text::escape(&f.nat.netns_name),
        f.nat.translated,
        who(&f.server),
        Endpoint::new(f.server.addr, f.server.port),
        service(f.server.port, f.proto, names),
        Endpoint::new(f.server.peer_addr, f.server.peer_port),
    )
}

/// A binding or its end, tagged, with the services of its tuples' destination ports (null
/// when unnamed) after its own fields.
#[derive(Serialize)]
struct NatRecord<'a, T: Serialize> {
    #[serde(flatten)]
    record: Tagged<'a, T>,
    original_dport_service: Option<&'static str>,
    translated_dport_service: Option<&'static str>,
}

impl<'a, T: Serialize> NatRecord<'a, T> {
    fn new(
        tag: &'static str,
        inner: &'a T,
        tuples: (&Endpoints, &Endpoints),
        proto: Proto,
        names: PortNames,
    ) -> Self {
        NatRecord {
            record: Tagged::new(tag, inner),
            original_dport_service: names(tuples.0.dport, proto),
            translated_dport_service: names(tuples.1.dport, proto),
        }
    }

    fn binding(tag: &'static str, b: &'a Binding, names: PortNames) -> NatRecord<'a, Binding> {
        NatRecord::new(tag, b, (&b.original, &b.translated), b.proto, names)
    }
}

/// A stitched flow: client socket, the binding (tagged `nat`) and server socket.
#[derive(Serialize)]
struct FlowRecord<'a> {
    #[serde(rename = "type")]
    record: &'static str,
    ts_ns: u64,
    proto: Proto,
    client: &'a FlowEnd,
    nat: NatRecord<'a, Binding>,
    server: &'a FlowEnd,
}

/// One JSON line per record: `nat_binding`, `nat_end` or `flow`.
pub fn write_json(out: &mut impl Write, item: &NatOutput, names: PortNames) -> io::Result<()> {
    match item {
        NatOutput::Binding(b) => {
            let record = NatRecord::<Binding>::binding("nat_binding", b, names);
            text::json::to_writer(&mut *out, &record)?;
        }
        NatOutput::End(e) => {
            let tuples = (&e.original, &e.translated);
            let record = NatRecord::new("nat_end", e, tuples, e.proto, names);
            text::json::to_writer(&mut *out, &record)?;
        }
        NatOutput::Flow(f) => {
            let record = FlowRecord {
                record: "flow",
                ts_ns: f.ts_ns,
                proto: f.proto,
                client: &f.client,
                nat: NatRecord::<Binding>::binding("nat", &f.nat, names),
                server: &f.server,
            };
            text::json::to_writer(&mut *out, &record)?;
        }
        NatOutput::Pool(p, warning) => {
            let tag = if *warning {
                "nat_pool_warning"
            } else {
                "nat_pool"
            };
            text::json::to_writer(&mut *out, &Tagged::new(tag, p))?;
        }
        NatOutput::Health(h) => {
            text::json::to_writer(&mut *out, &Tagged::new("conntrack", h))?;
        }
    }
    out.write_all(b"\n")
}

/// An answer to "who is behind this endpoint?", one line: whether the binding is live or when
/// it ended, its router namespace and translation, both tuples, and the client and server
/// sockets (process, namespace, own address and port) when tracer saw them. `now_ns`:
/// wall-clock now, for the age. Every name is escaped.
pub fn who_line(a: &WhoAnswer, now_ns: u64) -> String {
    let b = &a.binding;
    let when = match a.ended_ns {
        Some(t) => format!(
            "ended {} ({} s ago)",
            super::human::time_of_day(t),
            now_ns.saturating_sub(t) / 1_000_000_000
        ),
        None if b.existing => format!(
            "live, older than tracer (found {})",
            super::human::time_of_day(b.ts_ns)
        ),
        None => format!("live since {}", super::human::time_of_day(b.ts_ns)),
    };
    let when = match a.evicted {
        true => format!("{when}, when tracer's full table stopped following it"),
        false => when,
    };
    let side = |role: &str, end: &Option<FlowEnd>| match end {
        Some(e) => format!(
            "{role} {} in netns {} at {}",
            who(e),
            e.netns,
            Endpoint::new(e.addr, e.port)
        ),
        None => format!("{role} socket not seen"),
    };
    format!(
        "{when} · {} {} {} {} · {} became {} · {} · {}",
        text::escape(&b.netns_name),
        b.proto,
        b.kind.as_str(),
        b.translation(),
        b.original,
        b.translated,
        side("client", &a.client),
        side("server", &a.server),
    )
}

/// The end of a JSON answer (`nat_who_summary`): how many answers, whether more matched
/// (`truncated`), the bindings tracer's caps pushed out since it started (`evicted`: an
/// answer may be missing when not 0) and how long ended bindings are kept (`history_s`).
pub fn who_summary_json(found: &Answers, asked: &str, kept: std::time::Duration) -> String {
    text::json::to_string(&serde_json::json!({
        "type": "nat_who_summary",
        "asked": asked,
        "answers": found.answers.len(),
        "truncated": found.truncated,
        "evicted": found.evicted,
        "history_s": kept.as_secs(),
    }))
}

/// An answer as a JSON record (`nat_who`): `state` live or ended, `ended_ns` when it ended,
/// the binding as `nat_binding` carries it, and the client and server sockets (null when not
/// seen).
pub fn who_json(a: &WhoAnswer, asked: &str) -> String {
    #[derive(Serialize)]
    struct WhoRecord<'a> {
        #[serde(rename = "type")]
        record: &'static str,
        asked: &'a str,
        /// `live`, `ended`, or `evicted` (tracer's full table stopped following it then).
        state: &'static str,
        ended_ns: Option<u64>,
        binding: &'a Binding,
        client: &'a Option<FlowEnd>,
        server: &'a Option<FlowEnd>,
    }
    text::json::to_string(&WhoRecord {
        record: "nat_who",
        asked,
        state: match (a.ended_ns, a.evicted) {
            (None, _) => "live",
            (Some(_), false) => "ended",
            (Some(_), true) => "evicted",
        },
        ended_ns: a.ended_ns,
        binding: &a.binding,
        client: &a.client,
        server: &a.server,
    })
}
