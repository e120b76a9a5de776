//! Renderings of `tracer trace`: each socket's numbered story with the time between steps, its
//! summary line, and a line per program; or the same as JSON records.
use crate::text;
use std::io::{self, Write};

use super::story_steps::{bytes, error_text, listening_text, step_text};
use super::wire::Tagged;
use crate::model::story::{ProgramSummary, Role, Side, SocketStory, StepKind};
use crate::model::types::Endpoint;

/// What a socket turned out to be, in words.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Listener => "TCP listener",
        Role::Accepted => "accepted connection",
        Role::Client => "TCP client",
        Role::Udp => "UDP socket",
        Role::Unused => "socket",
    }
}

/// Who closed first or keeps TIME_WAIT, as text and JSON spell it.
pub fn side_name(side: Side) -> &'static str {
    match side {
        Side::ThisSide => "this side",
        Side::Peer => "peer",
    }
}

/// ①…⑳, then (21), (22), …
fn number(n: usize) -> String {
    const CIRCLED: [&str; 20] = [
        "①", "②", "③", "④", "⑤", "⑥", "⑦", "⑧", "⑨", "⑩", "⑪", "⑫", "⑬", "⑭", "⑮", "⑯", "⑰", "⑱",
        "⑲", "⑳",
    ];
    CIRCLED
        .get(n - 1)
        .map_or_else(|| format!("({n})"), |c| c.to_string())
}

fn duration(ns: u64) -> String {
    match ns {
        0..1_000_000 => format!("{:.3} ms", ns as f64 / 1e6),
        1_000_000..1_000_000_000 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

fn endpoint(addr: Option<std::net::IpAddr>, port: u16) -> String {
    addr.map_or("-".into(), |a| Endpoint::new(a, port).to_string())
}

/// The sentence `--explain` adds to a step: what it means in the documents' terms.
pub fn explain(what: StepKind, role: Role) -> &'static str {
    explain_in(what, role, crate::i18n::Lang::En)
}

/// [`explain`] in `lang` (the catalogue's `explain.<what>`).
pub fn explain_in(what: StepKind, role: Role, lang: crate::i18n::Lang) -> &'static str {
    if what == StepKind::Data && role == Role::Udp {
        return lang.t("explain.data.udp");
    }
    lang.t(&format!("explain.{}", what.name()))
}

/// The English sentences, as the catalogue has them (kept here for the catalogue test).
/// Every step kind, for the catalogue test.
#[cfg(test)]
const KINDS: [StepKind; 28] = {
    use StepKind::*;
    [
        Socket, Bind, Listen, Accept, Accepted, Connect, SynSent, SynRecv, Handshake, CloseFirst,
        ClosePeer, FinWait2, LastAck, TimeWait, Closed, State, Data, Autobind, Shutdown, Close,
        Release, Error, Snapshot, Retransmit, Reset, Drop, Proxy, Data,
    ]
};

#[cfg(test)]
fn explain_en(what: StepKind, role: Role) -> &'static str {
    use StepKind::*;
    match what {
        Socket => "socket() asks the kernel for a communication endpoint: protocol and family are fixed now, the address and port come later.",
        Bind => "bind() attaches a local address and port, so others know where to reach this socket; a server binds a fixed port, a client usually never calls bind().",
        Listen => "listen() makes the socket passive: the kernel now answers handshakes on this port and queues finished connections, up to the backlog.",
        Accept => "accept() takes one finished connection off the queue as a new socket with its own descriptor; the listener keeps listening.",
        Accepted => "This socket was made by the kernel for one client; it shares the server's port and is told apart from others by the client's address and port.",
        Connect => "connect() starts the 3-way handshake; since the client did not bind, the kernel picked an ephemeral source port from ip_local_port_range.",
        Handshake => "SYN, SYN-ACK, ACK: the 3-way handshake is done and both sides are ESTABLISHED.",
        CloseFirst => "This side sent the first FIN (active close): it goes FIN_WAIT1 → FIN_WAIT2 and then waits in TIME_WAIT.",
        ClosePeer => "The peer sent the first FIN (passive close): this side answers and goes CLOSE_WAIT → LAST_ACK → CLOSE.",
        TimeWait => "TIME_WAIT holds the connection's addresses and ports for a while (2×MSL) so stray packets cannot be mistaken for a new connection.",
        SynSent => "The client's SYN is on its way: the first of the handshake's three packets.",
        SynRecv => "A client's SYN reached the listening port: the kernel answered SYN-ACK and made a socket for this connection, before any accept().",
        FinWait2 => "The peer acknowledged our FIN; its own FIN is still to come.",
        LastAck => "This side closed as well and sent its FIN; one ACK from the peer ends the connection.",
        Closed => "The 4-way close is complete: FIN, ACK, FIN, ACK.",
        State => "A TCP state change the kernel made.",
        Data if role == Role::Udp => "UDP sends independent datagrams: no connection, each sendto() names its destination and each recvfrom() says who sent it.",
        Data => "read()/write() move bytes over the connection; TCP is a byte stream, so where one message ends is up to the application.",
        Autobind => "UDP has no connect step: the first sendto() on an unbound socket makes the kernel bind it to an ephemeral port (autobind).",
        Shutdown => "shutdown() closes one direction of the connection (SHUT_WR sends a FIN) while the socket stays open.",
        Close => "close() drops this descriptor; the socket itself goes when the last descriptor pointing at it is closed.",
        Release => "The kernel freed the socket: no descriptor refers to it any more.",
        Error => "The kernel refused the call; the errno says why.",
        Snapshot => "This socket was already open when tracing began (found in the kernel's socket table).",
        Retransmit => "No acknowledgement came in time, so the kernel sent the segment again; a SYN's waits double each time (1 s, 2 s, 4 s …), which is what a slow connect is made of.",
        Reset => "An RST ends a connection at once, without the 4-way close: a port with no listener, data left unread at close(), or an abort.",
        Drop => "The kernel dropped a packet of this socket; its reason names the place (a firewall rule, a full queue, no socket).",
        Proxy => "A userland proxy (Docker's docker-proxy for a published port reached from the host itself) accepts the client and opens a second connection to the container: two sockets, each with its own ports, carrying one connection.",
    }
}

/// The one-line summary of a socket.
pub fn summary_line(s: &SocketStory) -> String {
    let mut parts = vec![match (s.rport, role_name(s.role)) {
        (0, role) => format!("{role} {}", endpoint(s.laddr, s.lport)),
        (_, role) => format!(
            "{role} {} ⇄ {}",
            endpoint(s.laddr, s.lport),
            endpoint(s.raddr, s.rport)
        ),
    }];
    if s.ephemeral {
        parts.push(format!("local port {} chosen by the kernel", s.lport));
    }
    match s.closed_ns {
        Some(end) => parts.push(format!(
            "lived {}",
            duration(end.saturating_sub(s.opened_ns))
        )),
        None => parts.push(format!(
            "still {} when tracing ended",
            s.last_state.map_or("open", |state| state.name())
        )),
    }
    if let Some(kind) = s.lifetime {
        parts.push(kind.to_string());
    }
    if !s.accepted.is_empty() {
        let ids: Vec<String> = s.accepted.iter().map(|i| (i + 1).to_string()).collect();
        parts.push(format!(
            "accepted {} connection{} (socket {})",
            s.accepted.len(),
            if s.accepted.len() == 1 { "" } else { "s" },
            ids.join(", ")
        ));
    }
    if s.data.sends + s.data.receives > 0 {
        parts.push(format!(
            "{} out, {} in",
            bytes(s.data.sent_bytes),
            bytes(s.data.received_bytes)
        ));
    }
    match (s.closed_first_by.map(side_name), s.time_wait.map(side_name)) {
        (Some(first), Some(tw)) => parts.push(format!("{first} closed first, TIME_WAIT on {tw}")),
        (Some(first), None) => parts.push(format!("{first} closed first")),
        _ => {}
    }
    if let Some(ns) = s.connect_ns {
        let failed = s
            .errors
            .iter()
            .any(|e| e.call == crate::model::types::EventKind::Connect);
        let what = if failed {
            "handshake failed after"
        } else {
            "connected in"
        };
        parts.push(format!("{what} {}", super::human::seconds(ns)));
    }
    if let Some(ns) = s.handshake_ns {
        parts.push(format!(
            "SYN-ACK answered after {}",
            super::human::seconds(ns)
        ));
    }
    if let Some(ns) = s.accept_wait_ns {
        parts.push(format!(
            "waited {} to be accepted",
            super::human::seconds(ns)
        ));
    }
    if let Some(health) = health_text(&s.health) {
        parts.push(health);
    }
    if !s.errors.is_empty() {
        let errors: Vec<String> = s.errors.iter().map(error_text).collect();
        parts.push(format!("errors: {}", errors.join(", ")));
    }
    parts.join("; ")
}

/// `2 retransmits (1 SYN), 1 reset received, 1 drop`, or None when all are 0.
fn health_text(h: &crate::model::story::Health) -> Option<String> {
    if h.is_empty() {
        return None;
    }
    let plural = |n: u32, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    let mut parts = Vec::new();
    if h.retransmits > 0 {
        let mut text = plural(h.retransmits, "retransmit", "retransmits");
        if h.syn_retransmits > 0 {
            text.push_str(&format!(" ({} SYN)", h.syn_retransmits));
        }
        parts.push(text);
    }
    if h.resets_sent > 0 {
        parts.push(plural(h.resets_sent, "reset sent", "resets sent"));
    }
    if h.resets_received > 0 {
        parts.push(plural(
            h.resets_received,
            "reset received",
            "resets received",
        ));
    }
    if h.drops > 0 {
        parts.push(plural(h.drops, "packet dropped", "packets dropped"));
    }
    Some(parts.join(", "))
}

/// A story as text; `explain`: with each step's sentence, in that language.
pub fn write_story(
    out: &mut impl Write,
    s: &SocketStory,
    explain: Option<crate::i18n::Lang>,
) -> io::Result<()> {
    writeln!(
        out,
        "── socket {} · {} (pid {}) · {} ──",
        s.id + 1,
        text::escape(s.comm.as_deref().unwrap_or("?")),
        s.pid.map_or("?".into(), |p| p.to_string()),
        role_name(s.role)
    )?;
    for (i, step) in s.steps.iter().enumerate() {
        let since = if i == 0 {
            String::new()
        } else {
            format!("+{}", duration(step.since_previous_ns))
        };
        writeln!(
            out,
            "  {} {:>11}  {}",
            number(i + 1),
            since,
            text::escape(&step_text(step))
        )?;
        if let Some(lang) = explain {
            let sentence = self::explain_in(step.what, step.role, lang);
            writeln!(out, "  {:>13}    ↳ {}", "", text::escape(sentence))?;
        }
    }
    writeln!(out, "  = {}", text::escape(&summary_line(s)))?;
    writeln!(out)
}

pub fn write_program(out: &mut impl Write, p: &ProgramSummary) -> io::Result<()> {
    let mut parts = Vec::new();
    if !p.listening.is_empty() {
        let ports: Vec<String> = p.listening.iter().map(listening_text).collect();
        parts.push(format!("listened on {}", ports.join(", ")));
    }
    parts.push(format!(
        "{} connection{} made, {} accepted",
        p.connections_made,
        if p.connections_made == 1 { "" } else { "s" },
        p.connections_accepted
    ));
    if p.udp_sockets > 0 {
        parts.push(format!(
            "{} UDP socket{}",
            p.udp_sockets,
            if p.udp_sockets == 1 { "" } else { "s" }
        ));
    }
    if !p.ephemeral_ports.is_empty() {
        let ports: Vec<String> = p.ephemeral_ports.iter().map(u16::to_string).collect();
        parts.push(format!("ephemeral ports used: {}", ports.join(", ")));
    }
    parts.push(format!(
        "{} sent, {} received",
        bytes(p.sent_bytes),
        bytes(p.received_bytes)
    ));
    if let Some(health) = health_text(&p.health) {
        parts.push(health);
    }
    // A program in a container says which (the host is the rule, said by nothing).
    let container = match p.container.as_deref() {
        Some(c) if c != "host" => format!(", container {}", text::escape(c)),
        _ => String::new(),
    };
    writeln!(
        out,
        "{} (pid {}{container}): {}",
        text::escape(&p.comm),
        p.pid,
        text::escape(&parts.join("; "))
    )
}

/// A `socket_story` record.
pub fn write_story_json(out: &mut impl Write, story: &SocketStory) -> io::Result<()> {
    write_json(out, &Tagged::new("socket_story", story))
}

/// A `program` record.
pub fn write_program_json(out: &mut impl Write, program: &ProgramSummary) -> io::Result<()> {
    write_json(out, &Tagged::new("program", program))
}

pub fn write_json(out: &mut impl Write, value: &impl serde::Serialize) -> io::Result<()> {
    crate::text::json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use crate::model::story::fixtures::{book_of, client_events};

    #[test]
    fn the_catalogue_says_what_explain_always_said() {
        use super::{explain_en, explain_in, Role, KINDS};
        use crate::i18n::Lang;
        for (i, what) in KINDS.into_iter().enumerate() {
            // The last Data is UDP's.
            let role = if i == KINDS.len() - 1 {
                Role::Udp
            } else {
                Role::Client
            };
            assert_eq!(
                explain_in(what, role, Lang::En),
                explain_en(what, role),
                "{what:?}"
            );
            assert_ne!(
                explain_in(what, role, Lang::Ko),
                explain_en(what, role),
                "{what:?}"
            );
        }
    }

    #[test]
    fn a_client_story_explained() {
        let book = book_of(&client_events());
        let mut out = Vec::new();
        super::write_story(&mut out, &book.stories[0], Some(crate::i18n::Lang::En)).unwrap();
        insta::assert_snapshot!("client_story_explained", String::from_utf8(out).unwrap());
    }
}
