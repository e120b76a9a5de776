//! How each event moves a story on: a new socket, a call's step (as data: the sinks word it),
//! an accepted connection, a TCP transition.

use tracer_common::{kind, DataTotals, SockEvent};

use super::{endpoint, CallError, Data, Role, Side, SocketStory, StepDetail, StepKind, StoryBook};
use crate::model::event::Event;
use crate::model::types::{Endpoint, EventKind, PortNames, Proto, SockState, TcpState};

impl StoryBook {
    /// Folds one event in.
    pub fn observe(&mut self, raw: &SockEvent, e: &Event) {
        let sk = raw.sk;
        if raw.kind != kind::STATE {
            if let Some(pid) = e.pid {
                self.pids.insert(pid);
            }
        }
        // A reset sent for a segment, a drop, a SYN-ACK for a queued connection: the
        // endpoints are the packet's, the socket maybe its listener: they name no story.
        let packet = matches!(raw.kind, kind::DROP)
            || (raw.kind == kind::RESET && raw.ret == 0)
            || (raw.kind == kind::RETRANSMIT && raw.arg == 1);
        if packet {
        } else if e.event == EventKind::Accept && raw.parent_sk != 0 {
            // The listener may predate tracing: name it through the connection's local end.
            self.name_predating(raw.parent_sk, e.laddr, e.lport, None);
        } else if sk != 0 && raw.kind != kind::SOCKET {
            self.name_predating(sk, e.laddr, e.lport, Some(e.rport));
        }
        match raw.kind {
            kind::SOCKET if e.ret_or_zero() < 0 || sk == 0 => return,
            kind::SOCKET => self.socket(sk, e),
            kind::STATE => self.state_event(sk, e),
            kind::DATA => {
                if let Some(&id) = self.open.get(&sk) {
                    let t = DataTotals::of(raw);
                    self.stories[id].data = Data {
                        sent_bytes: t.sent_bytes,
                        received_bytes: t.received_bytes,
                        sends: t.sends,
                        receives: t.receives,
                    };
                }
            }
            kind::ACCEPT => self.accept(raw, e),
            kind::RETRANSMIT | kind::RESET | kind::DROP => {
                if let Some(&id) = self.open.get(&sk) {
                    self.health(id, e);
                }
            }
            _ => {
                let late = || {
                    matches!(raw.kind, kind::CLOSE | kind::SHUTDOWN)
                        .then(|| self.settling.iter().rev().find(|(s, _)| *s == sk))
                        .flatten()
                        .map(|(_, id)| *id)
                };
                let Some(id) = self.open.get(&sk).copied().or_else(late) else {
                    return;
                };
                self.call(id, raw, e);
            }
        }
        // A finished story leaves the live map at once: the kernel may hand its socket
        // address to the next socket right away.
        if let Some(&id) = self.open.get(&sk) {
            if self.stories[id].done() {
                self.open.remove(&sk);
                self.settling.push((sk, id));
            }
        }
    }

    /// A retransmit, reset or drop on a story's socket: counted, and told as a step (data
    /// retransmits, resets and drops only the first few of each: a lossy link or a peer
    /// flooding the socket makes any number).
    fn health(&mut self, id: usize, e: &Event) {
        const DATA_RETRANSMIT_STEPS: u32 = 3;
        const RESET_STEPS: u32 = 3;
        const DROP_STEPS: u32 = 3;
        let story = &mut self.stories[id];
        let h = &mut story.health;
        let (what, detail) = match e.event {
            EventKind::Retransmit => {
                let what = e.retransmit.unwrap_or("data");
                h.retransmits += 1;
                let count = if what == "syn" {
                    h.syn_retransmits += 1;
                    h.syn_retransmits
                } else {
                    h.retransmits - h.syn_retransmits
                };
                if what == "data" && count > DATA_RETRANSMIT_STEPS {
                    return;
                }
                let first_syn = story
                    .steps
                    .iter()
                    .find(|s| s.what == StepKind::SynSent)
                    .map(|s| s.ts_ns);
                let waited_ns = first_syn
                    .filter(|_| what == "syn")
                    .map(|t| e.ts_ns.saturating_sub(t));
                (
                    StepKind::Retransmit,
                    StepDetail::Retransmit {
                        what,
                        count,
                        waited_ns,
                    },
                )
            }
            EventKind::Reset => {
                let direction = e.reset.unwrap_or("sent");
                if direction == "received" {
                    h.resets_received += 1;
                } else {
                    h.resets_sent += 1;
                }
                if h.resets_received + h.resets_sent > RESET_STEPS {
                    return;
                }
                let detail = StepDetail::Reset {
                    direction,
                    state: e.state,
                    reason: e.reason.as_deref().map(str::to_string),
                };
                (StepKind::Reset, detail)
            }
            _ => {
                h.drops += 1;
                if h.drops > DROP_STEPS {
                    return;
                }
                let reason = e.reason.as_deref().unwrap_or("?").to_string();
                (StepKind::Drop, StepDetail::Drop { reason })
            }
        };
        story.step(e.ts_ns, what, detail);
    }

    /// socket(): a new story.
    fn socket(&mut self, sk: u64, e: &Event) {
        let role = match e.proto {
            Proto::Udp => Role::Udp,
            _ => Role::Unused,
        };
        let id = self.new_story(sk, e, role);
        let detail = StepDetail::Socket {
            fd: e.ret_or_zero(),
            proto: e.proto,
            family: e.family,
        };
        self.stories[id].step(e.ts_ns, StepKind::Socket, detail);
    }

    /// A TCP transition: on a known socket, or on a connection one of our listeners made.
    fn state_event(&mut self, sk: u64, e: &Event) {
        let id = match self.open.get(&sk) {
            Some(&id) => id,
            // A connection the kernel builds from one of our listeners.
            None if e.pid.is_some_and(|p| self.pids.contains(&p))
                && e.old_state == Some(TcpState::Listen) =>
            {
                let id = self.new_story(sk, e, Role::Accepted);
                let story = &mut self.stories[id];
                story.laddr = Some(e.laddr);
                story.lport = e.lport;
                story.raddr = Some(e.raddr);
                story.rport = e.rport;
                id
            }
            None => return,
        };
        self.state(id, e);
    }

    fn accept(&mut self, raw: &SockEvent, e: &Event) {
        // -512…-516: the kernel's internal restart codes (a signal interrupted the wait).
        if (-516..=-512).contains(&e.ret_or_zero()) {
            return;
        }
        if e.ret_or_zero() < 0 {
            if let Some(&l) = self.open.get(&raw.parent_sk) {
                self.stories[l].failed(e, None);
            }
            return;
        }
        let child = match self.open.get(&raw.sk) {
            Some(&id) => id,
            None => self.new_story(raw.sk, e, Role::Accepted),
        };
        // An accept already waiting when tracing began has no listening fd on record: find
        // the listener by the connection's local end.
        let listener = self.open.get(&raw.parent_sk).copied().or_else(|| {
            self.stories
                .iter()
                .find(|s| {
                    s.role == Role::Listener
                        && !s.released
                        && s.lport == e.lport
                        && s.pid == e.pid
                        && s.laddr.is_some_and(|a| a == e.laddr || a.is_unspecified())
                })
                .map(|s| s.id)
        });
        let peer = endpoint(e.raddr, e.rport);
        {
            let story = &mut self.stories[child];
            story.role = Role::Accepted;
            story.pid = e.pid;
            story.comm = e.comm.as_deref().map(str::to_string);
            story.laddr = Some(e.laddr);
            story.lport = e.lport;
            story.raddr = Some(e.raddr);
            story.rport = e.rport;
            story.listener = listener;
            story.accept_wait_ns = e.accept_wait_ns;
            let detail = StepDetail::Accepted {
                fd: e.ret_or_zero(),
                peer,
                listener_traced: listener.is_some(),
                waited_ns: e.accept_wait_ns,
            };
            story.step(e.ts_ns, StepKind::Accepted, detail);
        }
        if let Some(l) = listener {
            let detail = StepDetail::Accept {
                fd: e.ret_or_zero(),
                peer,
                peer_ephemeral: e.rport_in_ephemeral_range == Some(true),
                socket: child,
            };
            self.stories[l].step(e.ts_ns, StepKind::Accept, detail);
            self.stories[l].accepted.push(child);
        }
    }

    fn state(&mut self, id: usize, e: &Event) {
        let story = &mut self.stories[id];
        let (Some(old), Some(new)) = (e.old_state, e.state) else {
            return;
        };
        if old == new {
            return; // the kernel re-sets a state on some paths (a second FIN_WAIT1)
        }
        story.last_state = Some(SockState::Tcp(new));
        if e.connect_ns.is_some() {
            story.connect_ns = e.connect_ns;
        }
        if e.handshake_ns.is_some() {
            story.handshake_ns = e.handshake_ns;
        }
        if e.lport != 0 && story.lport == 0 {
            story.lport = e.lport;
            story.laddr = Some(e.laddr);
        }
        let what = transition(story, old, new);
        story.step(e.ts_ns, what, StepDetail::Transition { old, new });
        if new.is_over() {
            story.closed_ns = Some(e.ts_ns);
            if story.closed_first_by == Some(Side::Peer) {
                story.time_wait = Some(Side::Peer);
            }
        }
    }

    fn call(&mut self, id: usize, raw: &SockEvent, e: &Event) {
        let names = self.names.0;
        let story = &mut self.stories[id];
        let ts = e.ts_ns;
        // A non-blocking connect's EINPROGRESS is no failure: the handshake goes on.
        if e.errno.is_some() && !(e.event == EventKind::Connect && e.in_progress()) {
            let end = if e.event == EventKind::Bind {
                endpoint(e.laddr, e.lport)
            } else {
                endpoint(e.raddr, e.rport)
            };
            story.failed(e, Some(end));
            return;
        }
        match raw.kind {
            kind::BIND => story.bound(e, names),
            kind::LISTEN => {
                story.role = Role::Listener;
                story.last_state = Some(SockState::Tcp(TcpState::Listen));
                let backlog = e.backlog.unwrap_or(0);
                story.step(ts, StepKind::Listen, StepDetail::Listen { backlog });
            }
            kind::CONNECT => story.connected(e, names),
            kind::SENDTO | kind::SENDMSG | kind::RECVFROM | kind::RECVMSG => story.datagram(e),
            kind::SHUTDOWN => {
                story.step(ts, StepKind::Shutdown, StepDetail::Shutdown { how: e.how });
            }
            kind::CLOSE => {
                let fd = e.fd.unwrap_or(-1);
                story.step(ts, StepKind::Close, StepDetail::Close { fd });
            }
            kind::RELEASE => {
                story.released = true;
                if story.closed_ns.is_none() && story.proto == Proto::Udp {
                    story.closed_ns = Some(ts);
                }
                story.step(ts, StepKind::Release, StepDetail::Release);
            }
            _ => {}
        }
    }
}

impl SocketStory {
    /// A call the kernel refused (to `end`, where the call names one).
    fn failed(&mut self, e: &Event, end: Option<Endpoint>) {
        let errno = e.errno.as_deref().unwrap_or_default().to_string();
        self.errors.push(CallError {
            call: e.event,
            errno: errno.clone(),
        });
        let detail = StepDetail::Failed {
            call: e.event,
            end,
            errno,
        };
        self.step(e.ts_ns, StepKind::Error, detail);
    }

    fn bound(&mut self, e: &Event, names: PortNames) {
        self.laddr = Some(e.laddr);
        self.lport = e.lport;
        self.ephemeral |= e.lport_kernel_chosen;
        let service = names(e.lport, e.proto);
        let detail = if e.lport_kernel_chosen {
            StepDetail::BindChosen {
                addr: e.laddr,
                port: e.lport,
                service,
            }
        } else {
            StepDetail::Bind {
                local: endpoint(e.laddr, e.lport),
                service,
            }
        };
        self.step(e.ts_ns, StepKind::Bind, detail);
    }

    fn connected(&mut self, e: &Event, names: PortNames) {
        if self.role != Role::Udp {
            self.role = Role::Client;
        }
        self.laddr = Some(e.laddr);
        self.lport = e.lport;
        self.raddr = Some(e.raddr);
        self.rport = e.rport;
        self.ephemeral |= e.lport_kernel_chosen;
        let detail = StepDetail::Connect {
            remote: endpoint(e.raddr, e.rport),
            service: names(e.rport, e.proto),
            local: endpoint(e.laddr, e.lport),
            kernel_chose: e.lport_kernel_chosen,
        };
        self.step(e.ts_ns, StepKind::Connect, detail);
    }

    /// sendto/recvfrom/sendmsg/recvmsg: a peer, and UDP's autobind on the first send.
    fn datagram(&mut self, e: &Event) {
        if e.rport != 0 {
            let peer = endpoint(e.raddr, e.rport);
            if !self.peers.contains(&peer) {
                self.peers.push(peer);
            }
        }
        let sending = matches!(e.event, EventKind::Sendto | EventKind::Sendmsg);
        if sending && e.lport_kernel_chosen && self.lport == 0 {
            self.ephemeral = true;
            self.laddr = Some(e.laddr);
            self.lport = e.lport;
            let detail = StepDetail::Autobind {
                call: e.event,
                remote: endpoint(e.raddr, e.rport),
                port: e.lport,
            };
            self.step(e.ts_ns, StepKind::Autobind, detail);
        } else if self.lport == 0 && e.lport != 0 {
            self.laddr = Some(e.laddr);
            self.lport = e.lport;
        }
    }
}

/// The step a TCP transition makes (its wording is the sinks'); records who closed first and
/// where TIME_WAIT stays.
fn transition(story: &mut SocketStory, old: TcpState, new: TcpState) -> StepKind {
    use StepKind as K;
    use TcpState::*;
    match (old, new) {
        (SynSent | SynRecv, Established) => K::Handshake,
        (Listen, SynRecv) => K::SynRecv,
        (Close, SynSent) => K::SynSent,
        (FinWait1, FinWait2) => K::FinWait2,
        (CloseWait, LastAck) => K::LastAck,
        (LastAck, Close) => K::Closed,
        (Established, FinWait1) => {
            story.closed_first_by.get_or_insert(Side::ThisSide);
            K::CloseFirst
        }
        (Established, CloseWait) => {
            story.closed_first_by.get_or_insert(Side::Peer);
            K::ClosePeer
        }
        (_, TimeWait) => {
            story.time_wait = Some(Side::ThisSide);
            K::TimeWait
        }
        _ => K::State,
    }
}
