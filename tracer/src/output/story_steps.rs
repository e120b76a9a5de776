//! The wording of a story's steps (`connect 127.0.0.1:8080 (http-alt, registered port) →
//! ephemeral 127.0.0.1:40000 chosen by the kernel`), its errors and a program's listening
//! ports, from the data the model keeps. The same text goes to the terminal (escaped) and to
//! JSON (`text`).
use tracer_common::PortClass;

use crate::model::story::{CallError, Data, Listening, Step, StepDetail, StepKind};
use crate::model::types::{Endpoint, Family, TcpState};

/// Human-sized bytes: 78 B, 1.2 KiB, 3.4 MiB.
pub fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// A port's IANA class, after its service's name when known: `https, well-known`.
fn label(service: Option<&str>, port: u16) -> String {
    super::services::label(service, PortClass::of(port).as_str())
}

/// One step as a line of text.
pub fn step_text(step: &Step) -> String {
    use StepDetail as D;
    match &step.detail {
        D::Socket { fd, proto, family } => {
            let family = match family {
                Family::V6 => "IPv6",
                Family::V4 => "IPv4",
            };
            let proto = proto.name().to_uppercase();
            format!("socket() → fd {fd} ({proto}, {family})")
        }
        D::Bind { local, service } => {
            format!("bind {local} ({} port)", label(*service, local.port))
        }
        &D::BindChosen {
            addr,
            port,
            service,
        } => bind_chosen_text(Endpoint::new(addr, 0), port, service),
        D::Listen { backlog } => format!("listen backlog {backlog} → LISTEN"),
        &D::Accept {
            fd,
            peer,
            peer_ephemeral,
            socket,
        } => {
            let port = if peer_ephemeral {
                "ephemeral"
            } else {
                "source"
            };
            let socket = socket + 1;
            format!(
                "accept → fd {fd} from {peer} (client's {port} port {}) → socket {socket}",
                peer.port
            )
        }
        &D::Accepted {
            fd,
            peer,
            listener_traced,
            waited_ns,
        } => {
            let untraced = if listener_traced {
                ""
            } else {
                " — listener not traced"
            };
            let waited = waited_ns.map_or(String::new(), |ns| {
                format!(", {} after the handshake", super::human::seconds(ns))
            });
            format!("accepted as fd {fd} from {peer} (the client's port{untraced}){waited}")
        }
        &D::Connect {
            remote,
            service,
            local,
            kernel_chose,
        } => connect_text(remote, service, local, kernel_chose),
        D::Transition { old, new } => format!("{old} → {new}{}", note(step.what, *old, *new)),
        D::Autobind { call, remote, port } => {
            format!("{call} to {remote}: the kernel bound the socket to ephemeral port {port}")
        }
        D::Shutdown { how } => format!("shutdown {}", how.unwrap_or("?")),
        D::Close { fd } => format!("close fd {fd}"),
        D::Release => "socket freed".into(),
        D::Failed { call, end, errno } => match end {
            Some(end) => format!("{call} {end} failed: {errno}"),
            None => format!("{call} failed: {errno}"),
        },
        D::Snapshot {
            proto,
            local,
            state,
            remote,
        } => {
            let remote = remote.map_or(String::new(), |r| format!(" to {r}"));
            format!("already open when tracing began: {proto} {local} {state}{remote}")
        }
        D::Data { udp, data, peers } => data_text(*udp, data, peers),
        &D::Retransmit {
            what,
            count,
            waited_ns,
        } => {
            let what = match what {
                "syn" => "SYN",
                "synack" => "SYN-ACK",
                _ => "data",
            };
            match waited_ns {
                Some(ns) => format!(
                    "{what} retransmitted ({count}) — no answer for {}",
                    super::human::seconds(ns)
                ),
                None => format!("{what} retransmitted ({count})"),
            }
        }
        D::Reset {
            direction,
            state,
            reason,
        } => {
            let state = state.map_or(String::new(), |s| format!(" in {s}"));
            let reason = reason.as_ref().map_or(String::new(), |r| format!(" ({r})"));
            format!("RST {direction}{state}{reason}")
        }
        D::Drop { reason } => format!("a packet dropped by the kernel: {reason}"),
        D::Proxy {
            front,
            client,
            published,
            target,
            container,
            other,
        } => {
            // Stories are numbered from 1 where they are printed.
            let other = other.map_or(String::new(), |n| format!(" (socket {})", n + 1));
            if *front {
                format!("proxied on to {target} in container {container}{other}")
            } else {
                format!(
                    "carries {client}'s connection to {published} on to container {container}{other}"
                )
            }
        }
    }
}

fn bind_chosen_text(local: Endpoint, port: u16, service: Option<&str>) -> String {
    let class = PortClass::of(port).as_str();
    let service = service.map_or(String::new(), |s| format!(", service {s}"));
    format!("bind {local} → the kernel chose port {port} (ephemeral, IANA {class}{service})")
}

fn connect_text(
    remote: Endpoint,
    service: Option<&str>,
    local: Endpoint,
    kernel_chose: bool,
) -> String {
    let chosen = if kernel_chose {
        format!(" → ephemeral {local} chosen by the kernel")
    } else {
        format!(" from {local}")
    };
    let label = label(service, remote.port);
    format!("connect {remote} ({label} port){chosen}")
}

/// What a TCP transition's text ends with, by the step it made.
fn note(what: StepKind, old: TcpState, new: TcpState) -> &'static str {
    use StepKind as K;
    match what {
        K::Handshake => " — handshake done",
        K::SynRecv => " — SYN received, SYN-ACK sent",
        K::SynSent => " — SYN sent",
        K::FinWait2 => " — our FIN acknowledged",
        K::LastAck => " — this side's FIN sent too",
        K::Closed => " — last ACK received, connection gone",
        K::CloseFirst => " — this side closes first (FIN sent)",
        K::ClosePeer => " — the peer closed first (FIN received)",
        K::TimeWait => " — TIME_WAIT on this side",
        _ if (old, new) == (TcpState::SynSent, TcpState::Close) => " — refused or timed out",
        _ => "",
    }
}

/// `wrote 78 B in 1 call, read 1.2 KiB in 2 calls`; UDP's `sent`/`received`, with its peers.
fn data_text(udp: bool, d: &Data, peers: &[Endpoint]) -> String {
    let plural = |n: u32| if n == 1 { "" } else { "s" };
    let mut text = format!(
        "{} {} in {} call{}, {} {} in {} call{}",
        if udp { "sent" } else { "wrote" },
        bytes(d.sent_bytes),
        d.sends,
        plural(d.sends),
        if udp { "received" } else { "read" },
        bytes(d.received_bytes),
        d.receives,
        plural(d.receives),
    );
    if !peers.is_empty() {
        let peers: Vec<String> = peers.iter().map(Endpoint::to_string).collect();
        text.push_str(&format!(" (peers: {})", peers.join(", ")));
    }
    text
}

/// `connect: ECONNREFUSED`.
pub fn error_text(e: &CallError) -> String {
    format!("{}: {}", e.call, e.errno)
}

/// `tcp 0.0.0.0:8080 (http-alt, registered)`.
pub fn listening_text(l: &Listening) -> String {
    format!(
        "{} {} ({})",
        l.proto,
        l.addr
            .map_or("*".into(), |a| Endpoint::new(a, l.port).to_string()),
        label(l.service, l.port)
    )
}
