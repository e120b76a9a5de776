//! The story of one program's sockets (`tracer trace`): per socket, the numbered steps the
//! study notes teach — socket, bind, listen, accept, connect, the handshake states, data,
//! close and the 4-way close — in time order, then what each socket was (role, endpoints,
//! lifetime, bytes each way, who closed first) and what each process did. Pure: fed enriched
//! events, no I/O.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serde::Serialize;
use tracer_common::DataTotals;

use super::event::Event;
use super::types::{no_names, Endpoint, PortNames, Proto, SockState, TcpState};

mod calls;
mod step;

pub use step::{CallError, Listening, Step, StepDetail, StepKind};

/// What a socket turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Listener,
    Accepted,
    Client,
    Udp,
    /// Created but never bound, connected or listening.
    Unused,
}

/// Who closed first, or keeps TIME_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    ThisSide,
    Peer,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Data {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub sends: u32,
    pub receives: u32,
}

/// One socket's story.
#[derive(Clone, Debug, Serialize)]
pub struct SocketStory {
    /// Story number, in order of appearance.
    pub id: usize,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// The owner's container (`host`, a name, a short id), when known.
    pub container: Option<String>,
    pub proto: Proto,
    pub role: Role,
    pub laddr: Option<IpAddr>,
    pub lport: u16,
    pub raddr: Option<IpAddr>,
    pub rport: u16,
    /// The kernel picked the local port.
    pub ephemeral: bool,
    /// It existed before tracing began.
    pub predates_trace: bool,
    pub steps: Vec<Step>,
    pub data: Data,
    /// UDP: the peers it exchanged datagrams with.
    pub peers: Vec<Endpoint>,
    pub opened_ns: u64,
    pub closed_ns: Option<u64>,
    /// "this side" or "peer": who sent the first FIN.
    pub closed_first_by: Option<Side>,
    /// Which side keeps TIME_WAIT: "this side" or "peer".
    pub time_wait: Option<Side>,
    pub last_state: Option<SockState>,
    pub errors: Vec<CallError>,
    /// accept: the listener's story; listener: the stories of the connections it accepted.
    pub listener: Option<usize>,
    pub accepted: Vec<usize>,
    /// "short-lived" (opened and closed within the trace, at most one exchange each way),
    /// "persistent" (still open at the end, or several exchanges), for connections.
    pub lifetime: Option<&'static str>,
    /// Retransmits, resets and drops on this socket.
    pub health: Health,
    /// A connect: its first SYN to the handshake's end, and the SYNs sent again meanwhile.
    pub connect_ns: Option<u64>,
    /// An accepted connection: how long it waited in the accept queue.
    pub accept_wait_ns: Option<u64>,
    /// An accepted connection: its SYN-ACK's round trip (the handshake on the server's side).
    pub handshake_ns: Option<u64>,
    #[serde(skip)]
    released: bool,
}

/// Retransmits, resets and drops, counted per socket and per program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    pub retransmits: u32,
    pub syn_retransmits: u32,
    pub resets_sent: u32,
    pub resets_received: u32,
    pub drops: u32,
}

impl Health {
    fn add(&mut self, other: &Health) {
        self.retransmits += other.retransmits;
        self.syn_retransmits += other.syn_retransmits;
        self.resets_sent += other.resets_sent;
        self.resets_received += other.resets_received;
        self.drops += other.drops;
    }

    pub fn is_empty(&self) -> bool {
        *self == Health::default()
    }
}

impl SocketStory {
    fn new(
        id: usize,
        pid: Option<u32>,
        comm: Option<String>,
        proto: Proto,
        role: Role,
        opened_ns: u64,
    ) -> Self {
        SocketStory {
            id,
            pid,
            comm,
            container: None,
            proto,
            role,
            laddr: None,
            lport: 0,
            raddr: None,
            rport: 0,
            ephemeral: false,
            predates_trace: false,
            steps: Vec::new(),
            data: Data::default(),
            peers: Vec::new(),
            opened_ns,
            closed_ns: None,
            closed_first_by: None,
            time_wait: None,
            last_state: None,
            errors: Vec::new(),
            listener: None,
            accepted: Vec::new(),
            lifetime: None,
            health: Health::default(),
            connect_ns: None,
            accept_wait_ns: None,
            handshake_ns: None,
            released: false,
        }
    }

    fn step(&mut self, ts_ns: u64, what: StepKind, detail: StepDetail) {
        let since = self
            .steps
            .last()
            .map_or(0, |s| ts_ns.saturating_sub(s.ts_ns));
        self.steps.push(Step {
            ts_ns,
            since_previous_ns: since,
            what,
            detail,
            role: self.role,
        });
    }

    fn done(&self) -> bool {
        self.released
            && (self.proto == Proto::Udp
                || match self.last_state {
                    None => true,
                    Some(SockState::Tcp(state)) => state.is_over(),
                    Some(_) => false,
                })
    }
}

/// Syscalls are reported at their exit, after what the kernel did inside them. Put them back
/// where a reader expects them: `connect` before the SYN it sent, `close` before the release
/// and FIN it caused. Then recompute the time since each previous step.
fn tell_in_call_order(steps: &mut Vec<Step>) {
    use StepKind as K;
    use TcpState as T;
    let mut i = 1;
    while i < steps.len() {
        let inside = |s: &Step, call: StepKind| match call {
            K::Connect => {
                matches!(s.what, K::SynSent | K::Handshake)
                    || (s.what == K::Retransmit
                        && matches!(s.detail, StepDetail::Retransmit { what: "syn", .. }))
            }
            K::Listen => s.transition() == Some((T::Close, T::Listen)),
            K::Close | K::Shutdown => {
                // Not CLOSE_WAIT: the peer's FIN arrives on its own, before our close.
                matches!(
                    s.what,
                    K::Release | K::CloseFirst | K::TimeWait | K::LastAck
                ) || s.transition().is_some_and(|(old, _)| {
                    matches!(old, T::FinWait1 | T::FinWait2 | T::Closing | T::LastAck)
                })
            }
            _ => false,
        };
        let call = steps[i].what;
        if matches!(call, K::Connect | K::Listen | K::Close | K::Shutdown) {
            let mut at = i;
            while at > 0 && inside(&steps[at - 1], call) && steps[at - 1].what != K::Data {
                at -= 1;
            }
            if at < i {
                let step = steps.remove(i);
                steps.insert(at, step);
            }
        }
        i += 1;
    }
    let mut previous: Option<u64> = None;
    for step in steps.iter_mut() {
        step.since_previous_ns = previous.map_or(0, |p| step.ts_ns.saturating_sub(p));
        previous = Some(previous.map_or(step.ts_ns, |p| p.max(step.ts_ns)));
    }
}

/// The per-process summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProgramSummary {
    pub pid: u32,
    pub comm: String,
    /// Its container (`host`, a name, a short id), when known.
    pub container: Option<String>,
    pub listening: Vec<Listening>,
    pub connections_made: usize,
    pub connections_accepted: usize,
    pub udp_sockets: usize,
    pub ephemeral_ports: Vec<u16>,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// Retransmits, resets and drops on its sockets.
    pub health: Health,
}

/// How a story names ports (no names unless the book was given a lookup).
#[derive(Clone, Copy, Debug)]
struct Names(PortNames);

impl Default for Names {
    fn default() -> Self {
        Names(no_names)
    }
}

fn endpoint(addr: IpAddr, port: u16) -> Endpoint {
    Endpoint::new(addr, port)
}

/// All stories of one trace.
#[derive(Debug, Default)]
pub struct StoryBook {
    pub stories: Vec<SocketStory>,
    /// Live socket → its story (the kernel reuses socket addresses: a new socket() on one
    /// starts a new story).
    open: HashMap<u64, usize>,
    /// Processes that made traced calls (state changes in softirq are kept only for them).
    pids: BTreeSet<u32>,
    /// Stories ended by the reuse of their socket address, to hand out at once.
    evicted: Vec<usize>,
    /// Finished stories (closed and released) waiting out [`SETTLE_NS`] for a late `close`
    /// report; their socket address may already belong to a new socket.
    settling: Vec<(u64, usize)>,
    /// Stories of sockets that predate the trace and no live event has named yet.
    unnamed: Vec<usize>,
    /// Names ports by their service in the steps and listening ports (`output::services` on a real run).
    names: Names,
}

/// A finished story waits this long before it is handed out: `close()` is reported at its
/// exit, after the release and the FIN it caused.
const SETTLE_NS: u64 = 100_000_000;

impl StoryBook {
    /// A book whose steps name ports by their service through `names`.
    pub fn with_names(names: PortNames) -> Self {
        StoryBook {
            names: Names(names),
            ..Default::default()
        }
    }

    /// Starts a story for a socket that existed before tracing (`--pid`).
    pub fn predating(&mut self, row: &super::ports::PortRow, now_ns: u64) {
        let id = self.stories.len();
        let role = if row.proto == Proto::Udp {
            Role::Udp
        } else if row.listening {
            Role::Listener
        } else if row.accepted {
            Role::Accepted
        } else {
            Role::Client
        };
        let mut story = SocketStory {
            laddr: Some(row.laddr),
            lport: row.lport,
            raddr: (row.rport != 0).then_some(row.raddr),
            rport: row.rport,
            ephemeral: row.ephemeral,
            predates_trace: true,
            last_state: (row.proto == Proto::Tcp).then_some(row.state),
            ..SocketStory::new(id, row.pid, row.comm.clone(), row.proto, role, now_ns)
        };
        let detail = StepDetail::Snapshot {
            proto: row.proto,
            local: endpoint(row.laddr, row.lport),
            state: row.state,
            remote: (row.rport != 0).then(|| endpoint(row.raddr, row.rport)),
        };
        story.step(now_ns, StepKind::Snapshot, detail);
        self.stories.push(story);
        self.unnamed.push(id);
        if let Some(pid) = row.pid {
            self.pids.insert(pid);
        }
    }

    /// Links a predating story to its kernel socket once a live event names it.
    /// `remote`: the remote port to match, or None for a listener (any).
    fn name_predating(&mut self, sk: u64, laddr: IpAddr, lport: u16, remote: Option<u16>) {
        if self.unnamed.is_empty() || self.open.contains_key(&sk) {
            return;
        }
        let stories = &self.stories;
        let found = self.unnamed.iter().position(|&id| {
            let s = &stories[id];
            s.lport == lport && s.laddr == Some(laddr) && remote.is_none_or(|r| r == s.rport)
        });
        if let Some(i) = found {
            let id = self.unnamed.swap_remove(i);
            self.open.insert(sk, id);
        }
    }

    fn new_story(&mut self, sk: u64, e: &Event, role: Role) -> usize {
        if let Some(old) = self.open.remove(&sk) {
            self.stories[old].released = true;
            self.finish(old);
            self.evicted.push(old);
        }
        let id = self.stories.len();
        let mut story = SocketStory::new(
            id,
            e.pid,
            e.comm.as_deref().map(str::to_string),
            e.proto,
            role,
            e.ts_ns,
        );
        story.container = e.container.as_deref().map(|c| c.label().to_string());
        self.stories.push(story);
        self.open.insert(sk, id);
        id
    }

    /// Stories finished (closed and released, settled for a moment) by `now_ns` (wall clock),
    /// in order, to print now.
    pub fn take_finished(&mut self, now_ns: u64) -> Vec<usize> {
        let mut done = std::mem::take(&mut self.evicted);
        let stories = &self.stories;
        let settled = |id: usize| {
            stories[id]
                .steps
                .last()
                .is_some_and(|l| l.ts_ns + SETTLE_NS <= now_ns)
        };
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.settling.drain(..).partition(|(_, id)| settled(*id));
        self.settling = waiting;
        for (_, id) in ready {
            self.finish(id);
            done.push(id);
        }
        done.sort_unstable();
        done
    }

    fn finish(&mut self, id: usize) {
        let story = &mut self.stories[id];
        tell_in_call_order(&mut story.steps);
        // The data summary goes where the documents put read/write: before the close.
        let d = &story.data;
        if d.sends + d.receives > 0 {
            let detail = StepDetail::Data {
                udp: story.proto == Proto::Udp,
                data: d.clone(),
                peers: story.peers.clone(),
            };
            let at = story
                .steps
                .iter()
                .position(|s| {
                    use StepKind::*;
                    matches!(s.what, Close | Shutdown | CloseFirst | ClosePeer | Release)
                })
                .unwrap_or(story.steps.len());
            let ts = story.steps.get(at).map_or(story.opened_ns, |s| s.ts_ns);
            let step = Step {
                ts_ns: ts,
                since_previous_ns: 0,
                what: StepKind::Data,
                detail,
                role: story.role,
            };
            story.steps.insert(at, step);
            tell_in_call_order(&mut story.steps);
        }
        if matches!(story.role, Role::Accepted | Role::Client) {
            let exchanges = d.sends.max(d.receives);
            story.lifetime = Some(if story.closed_ns.is_some() && exchanges <= 2 {
                "short-lived"
            } else {
                "persistent"
            });
        }
        if story.role == Role::Unused && story.proto == Proto::Udp {
            story.role = Role::Udp;
        }
    }

    /// At the end of the trace: every story not printed yet (still open, or still closing),
    /// with the data totals of sockets the kernel still holds.
    pub fn finish_all(&mut self, still_open: &HashMap<u64, DataTotals>) -> Vec<usize> {
        let mut open: Vec<(u64, usize)> = self.open.drain().collect();
        open.append(&mut self.settling);
        let mut ids = Vec::new();
        for (sk, id) in open {
            if let Some(t) = still_open.get(&sk) {
                self.stories[id].data = Data {
                    sent_bytes: t.sent_bytes,
                    received_bytes: t.received_bytes,
                    sends: t.sends,
                    receives: t.receives,
                };
            }
            self.finish(id);
            ids.push(id);
        }
        for story in &self.stories {
            if story.predates_trace && !ids.contains(&story.id) && story.closed_ns.is_none() {
                ids.push(story.id);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn sockets_seen(&self) -> usize {
        self.stories.len()
    }

    /// A proxy's two sockets, joined: a step in each story.
    pub fn proxied(&mut self, p: &super::proxy::Proxied) {
        let front = self.open.get(&p.front_sock).copied();
        let back = self.open.get(&p.back_sock).copied();
        for (id, is_front, other) in [(front, true, back), (back, false, front)] {
            let Some(id) = id else { continue };
            let detail = StepDetail::Proxy {
                front: is_front,
                client: p.client,
                published: p.front,
                target: p.target,
                container: p.container.clone(),
                other,
            };
            self.stories[id].step(p.ts_ns, StepKind::Proxy, detail);
        }
    }

    /// One line per process.
    pub fn programs(&self) -> Vec<ProgramSummary> {
        let mut by_pid: BTreeMap<u32, ProgramSummary> = BTreeMap::new();
        for s in &self.stories {
            let Some(pid) = s.pid else { continue };
            let p = by_pid.entry(pid).or_insert_with(|| ProgramSummary {
                pid,
                comm: s.comm.clone().unwrap_or_default(),
                ..Default::default()
            });
            if p.container.is_none() {
                p.container = s.container.clone();
            }
            match s.role {
                Role::Listener => p.listening.push(Listening {
                    proto: s.proto,
                    addr: s.laddr,
                    port: s.lport,
                    service: (self.names.0)(s.lport, s.proto),
                }),
                Role::Accepted => p.connections_accepted += 1,
                Role::Client => p.connections_made += 1,
                Role::Udp => p.udp_sockets += 1,
                Role::Unused => {}
            }
            if s.ephemeral && s.lport != 0 && !p.ephemeral_ports.contains(&s.lport) {
                p.ephemeral_ports.push(s.lport);
            }
            p.sent_bytes += s.data.sent_bytes;
            p.received_bytes += s.data.received_bytes;
            p.health.add(&s.health);
        }
        by_pid.into_values().collect()
    }
}

/// Recorded-by-hand event sequences, for the tests here and of the sinks.
#[cfg(test)]
pub mod fixtures {
    use super::*;
    use crate::model::{Clock, SocketTable};
    use tracer_common::{flag, kind, tcp_state as st, SockEvent, AF_INET, IPPROTO_TCP};

    const LO: [u8; 16] = [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    /// A client's life as the kernel reports it: syscalls at their exit, after what ran
    /// inside them.
    pub fn client_events() -> Vec<SockEvent> {
        let base = SockEvent {
            family: AF_INET,
            protocol: IPPROTO_TCP,
            sock_type: 1,
            pid: 7,
            tid: 7,
            netns: 1,
            sk: 0xc0,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            ..Default::default()
        };
        let at = |ms: u64, ev: SockEvent| SockEvent {
            ts_ns: ms * 1_000_000,
            ..ev
        };
        let conn = SockEvent {
            laddr: LO,
            raddr: LO,
            lport: 40000,
            rport: 8080,
            ..base
        };
        let state = |old, new| SockEvent {
            kind: kind::STATE,
            old_state: old,
            new_state: new,
            ..conn
        };
        let mut data = SockEvent {
            kind: kind::DATA,
            ..conn
        };
        DataTotals {
            sent_bytes: 78,
            received_bytes: 1234,
            sends: 1,
            receives: 2,
        }
        .store(&mut data);
        vec![
            at(
                1,
                SockEvent {
                    kind: kind::SOCKET,
                    ret: 5,
                    fd: -1,
                    ..base
                },
            ),
            at(2, state(st::CLOSE, st::SYN_SENT)),
            at(3, state(st::SYN_SENT, st::ESTABLISHED)),
            at(
                4,
                SockEvent {
                    kind: kind::CONNECT,
                    fd: 5,
                    flags: flag::KERNEL_CHOSE_PORT,
                    new_state: st::ESTABLISHED,
                    ..conn
                },
            ),
            at(10, state(st::ESTABLISHED, st::FIN_WAIT1)),
            at(10, data),
            at(
                10,
                SockEvent {
                    kind: kind::RELEASE,
                    ..conn
                },
            ),
            at(
                11,
                SockEvent {
                    kind: kind::CLOSE,
                    fd: 5,
                    ..conn
                },
            ),
            at(12, state(st::FIN_WAIT1, st::FIN_WAIT2)),
            at(13, state(st::FIN_WAIT2, st::CLOSE)),
        ]
    }

    /// The story book those events make (ranges as this machine's default).
    pub fn book_of(events: &[SockEvent]) -> StoryBook {
        let mut table = SocketTable::default();
        let mut book = StoryBook::default();
        for raw in events {
            let attribution = table.observe(raw);
            let e = Event::new(raw, &attribution, Some((32768, 60999)), &Clock::identity());
            book.observe(raw, &e);
        }
        book
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{book_of, client_events};
    use super::*;

    #[test]
    fn a_client_story_in_the_order_the_documents_teach() {
        let mut book = book_of(&client_events());
        assert!(book.take_finished(13_000_000).is_empty(), "settling");
        assert_eq!(book.take_finished(200_000_000), vec![0]);
        let s = &book.stories[0];
        let order: Vec<&str> = s.steps.iter().map(|s| s.what.name()).collect();
        assert_eq!(
            order,
            [
                "socket",
                "connect",
                "syn_sent",
                "handshake",
                "data",
                "close",
                "close_first",
                "release",
                "fin_wait2",
                "time_wait"
            ]
        );
        assert_eq!(s.role, Role::Client);
        assert!(s.ephemeral);
        assert_eq!((s.lport, s.rport), (40000, 8080));
        assert_eq!(s.closed_first_by, Some(Side::ThisSide));
        assert_eq!(s.time_wait, Some(Side::ThisSide));
        assert_eq!(s.lifetime, Some("short-lived"));
        assert_eq!(s.data.received_bytes, 1234);
        let programs = book.programs();
        assert_eq!(programs[0].ephemeral_ports, vec![40000]);
        assert_eq!(programs[0].connections_made, 1);
    }
}
