//! Views of the socket table for `tracer ports` and the live view: one row per socket (with its
//! port's IANA class, or `ephemeral` when the kernel chose it), a line per process, and
//! connections grouped by remote endpoint (multiplexing: one server, many local ports).
use std::{cmp::Ordering, collections::BTreeMap, net::IpAddr};

use serde::Serialize;
use tracer_common::{tcp_state, PortClass, IPPROTO_TCP, IPPROTO_UDP};

use super::{
    event::ip,
    table::{SocketTable, TrackedSocket},
    types::{EventKind, Family, Proto, SockState, TcpState},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
}

/// One socket, as `tracer ports` prints it (its JSON spelling is `output::ports`').
#[derive(Clone, Debug, PartialEq)]
pub struct PortRow {
    pub netns: u32,
    pub proto: Proto,
    pub family: Family,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub state: SockState,
    /// The process that used it last (the first of `owners`).
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Every process holding it (fork and fd passing share sockets).
    pub owners: Vec<Holder>,
    /// `ephemeral (IANA class)` when the kernel chose the port, else the IANA class.
    pub class: String,
    pub lport_class: &'static str,
    pub ephemeral: bool,
    pub lport_in_ephemeral_range: Option<bool>,
    pub lport_in_iana_dynamic_range: bool,
    pub listening: bool,
    /// A connection accepted from a listener (it shares the listener's port).
    pub accepted: bool,
    /// Known from the start-up snapshot (it predates tracer) and not seen live since.
    pub from_snapshot: bool,
    /// Recv-Q and Send-Q as `ss` shows them (a listener: connections waiting to be accepted
    /// and its backlog), when sock_diag reported them.
    pub recv_q: Option<u32>,
    pub send_q: Option<u32>,
    /// The first owner's cgroup (0: not known) and, once looked up, its container.
    pub cgroup: u64,
    pub container: Option<std::sync::Arc<super::container::Container>>,
}

impl PortRow {
    pub fn new(s: &TrackedSocket, range: Option<(u16, u16)>) -> Self {
        let state = match s.protocol {
            IPPROTO_UDP if s.rport == 0 => SockState::Unconnected,
            IPPROTO_UDP => SockState::Connected,
            _ if s.state == 0 => SockState::Unknown,
            _ => SockState::Tcp(TcpState::from_number(s.state)),
        };
        let iana = PortClass::of(s.lport).as_str();
        let owners: Vec<Holder> = s
            .owners
            .iter()
            .map(|o| Holder {
                pid: o.pid,
                comm: o.comm(),
            })
            .collect();
        PortRow {
            netns: s.netns,
            proto: Proto::from_number(s.protocol),
            family: Family::from_af(s.family),
            laddr: ip(s.family, &s.laddr),
            lport: s.lport,
            raddr: ip(s.family, &s.raddr),
            rport: s.rport,
            state,
            pid: owners.first().map(|o| o.pid),
            comm: owners.first().map(|o| o.comm.clone()),
            owners,
            class: if s.kernel_chose_port {
                format!("ephemeral ({iana})")
            } else {
                iana.to_string()
            },
            lport_class: iana,
            ephemeral: s.kernel_chose_port,
            lport_in_ephemeral_range: range.map(|(lo, hi)| (lo..=hi).contains(&s.lport)),
            lport_in_iana_dynamic_range: PortClass::of(s.lport) == PortClass::Dynamic,
            listening: s.is_listening() || (s.protocol == IPPROTO_UDP && s.rport == 0),
            accepted: s.accepted,
            from_snapshot: s.from_snapshot,
            recv_q: s.queues.map(|q| q.0),
            send_q: s.queues.map(|q| q.1),
            cgroup: s.owners.first().map_or(0, |o| o.cgroup),
            container: None,
        }
    }

    /// Every owner as `pid/comm`, comma-separated.
    pub fn owners_text(&self) -> String {
        if self.owners.is_empty() {
            return "-".into();
        }
        let all: Vec<String> = self
            .owners
            .iter()
            .map(|o| format!("{}/{}", o.pid, o.comm))
            .collect();
        all.join(",")
    }
}

impl PortRow {
    /// A TIME_WAIT socket that closed while tracer ran, with the process that closed it (or
    /// from the snapshot, nobody known).
    pub fn time_wait(
        hold: &crate::model::table::time_wait::TimeWaitHold,
        range: Option<(u16, u16)>,
    ) -> Self {
        PortRow::new(&hold.socket(), range)
    }
}

/// The rows of every socket with a local port, and of the ports TIME_WAIT sockets hold,
/// sorted by [`SortKey::Proto`] (the live view: a TIME_WAIT socket names who closed it).
pub fn rows_with_time_wait(table: &SocketTable) -> Vec<PortRow> {
    let mut out = rows(table);
    // Those from the snapshot are rows of their own already.
    out.extend(
        table
            .time_wait()
            .filter(|h| h.owner.is_some())
            .map(|h| PortRow::time_wait(h, table.usage().range(h.key.0))),
    );
    sort(&mut out, SortKey::Proto, false);
    out
}

/// The rows of every socket with a local port, sorted by [`SortKey::Proto`].
pub fn rows(table: &SocketTable) -> Vec<PortRow> {
    let mut out: Vec<PortRow> = table
        .sockets()
        .filter(|s| s.lport != 0 && matches!(s.protocol, IPPROTO_TCP | IPPROTO_UDP))
        // A TCP socket that was bound but closed again holds nothing.
        .filter(|s| !(s.protocol == IPPROTO_TCP && s.state == tcp_state::CLOSE && s.rport != 0))
        .map(|s| PortRow::new(s, table.usage().range(s.netns)))
        .collect();
    sort(&mut out, SortKey::Proto, false);
    out
}

/// Columns the views sort by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    Proto,
    Laddr,
    Lport,
    Raddr,
    Rport,
    State,
    Pid,
    Comm,
    Class,
}

impl SortKey {
    pub const ALL: [SortKey; 9] = [
        SortKey::Proto,
        SortKey::Laddr,
        SortKey::Lport,
        SortKey::Raddr,
        SortKey::Rport,
        SortKey::State,
        SortKey::Pid,
        SortKey::Comm,
        SortKey::Class,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SortKey::Proto => "proto",
            SortKey::Laddr => "laddr",
            SortKey::Lport => "lport",
            SortKey::Raddr => "raddr",
            SortKey::Rport => "rport",
            SortKey::State => "state",
            SortKey::Pid => "pid",
            SortKey::Comm => "comm",
            SortKey::Class => "class",
        }
    }

    pub fn next(self) -> SortKey {
        let i = SortKey::ALL.iter().position(|k| *k == self).unwrap_or(0);
        SortKey::ALL[(i + 1) % SortKey::ALL.len()]
    }
}

/// Sorts by `key`, ties broken by protocol, local port, remote endpoint, pid: the same input
/// always prints the same way.
pub fn sort(rows: &mut [PortRow], key: SortKey, reverse: bool) {
    let tiebreak = |a: &PortRow, b: &PortRow| {
        (a.netns, a.proto, a.lport, a.laddr, a.raddr, a.rport, a.pid)
            .cmp(&(b.netns, b.proto, b.lport, b.laddr, b.raddr, b.rport, b.pid))
    };
    rows.sort_by(|a, b| {
        let primary = match key {
            SortKey::Proto => Ordering::Equal,
            SortKey::Laddr => a.laddr.cmp(&b.laddr),
            SortKey::Lport => a.lport.cmp(&b.lport),
            SortKey::Raddr => (a.raddr, a.rport).cmp(&(b.raddr, b.rport)),
            SortKey::Rport => a.rport.cmp(&b.rport),
            SortKey::State => a.state.name().cmp(b.state.name()),
            SortKey::Pid => a.pid.cmp(&b.pid),
            SortKey::Comm => a.comm.cmp(&b.comm),
            SortKey::Class => a.class.cmp(&b.class),
        };
        let ordering = primary.then_with(|| tiebreak(a, b));
        if reverse {
            ordering.reverse()
        } else {
            ordering
        }
    });
}

/// What `ports` keeps (all of it must match).
#[derive(Clone, Debug, Default)]
pub struct RowFilter {
    pub pids: Vec<u32>,
    pub ports: Vec<u16>,
    pub proto: Option<Proto>,
    pub listening: bool,
    pub netns: Option<u32>,
    /// Also TIME_WAIT sockets (no process holds them, but they keep their port for a minute).
    pub time_wait: bool,
    /// Free text (the live view's `/`): every word must appear in the row's text.
    pub text: String,
    /// `--who`: this endpoint at either end.
    pub who: Option<super::nat::who::Who>,
    /// `--container` / `--pod` (the row's container must be known by then).
    pub container: Option<super::filter::ContainerWant>,
}

impl RowFilter {
    pub fn allows(&self, row: &PortRow) -> bool {
        (self.pids.is_empty() || row.owners.iter().any(|o| self.pids.contains(&o.pid)))
            && (self.ports.is_empty()
                || self.ports.contains(&row.lport)
                || self.ports.contains(&row.rport))
            && self.proto.is_none_or(|p| p == row.proto)
            && (!self.listening || row.listening)
            && (self.time_wait || row.state != SockState::Tcp(TcpState::TimeWait))
            && self.netns.is_none_or(|n| n == row.netns)
            && self
                .who
                .is_none_or(|w| w.names(row.laddr, row.lport) || w.names(row.raddr, row.rport))
            && self.container.as_ref().is_none_or(|want| {
                let c = row.container.as_deref();
                match want {
                    super::filter::ContainerWant::Container(w) => c.is_some_and(|c| c.matches(w)),
                    super::filter::ContainerWant::Pod(w) => c.is_some_and(|c| c.in_pod(w)),
                }
            })
            && (self.text.is_empty() || {
                let haystack = format!(
                    "{} {}:{} {}:{} {} {} {} {}",
                    row.proto,
                    row.laddr,
                    row.lport,
                    row.raddr,
                    row.rport,
                    row.state,
                    row.owners_text(),
                    row.class,
                    row.container
                        .as_deref()
                        .map_or_else(Default::default, |c| c.label()),
                );
                // Match what the screen shows: names as the terminal sinks escape them.
                let haystack = crate::text::escape(&haystack).to_lowercase();
                self.text
                    .to_lowercase()
                    .split_whitespace()
                    .all(|word| haystack.contains(word))
            })
    }
}

/// One process: what it listens on and what it is connected to.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessLine {
    pub pid: u32,
    pub comm: String,
    /// Its container's label (`host`, a name, a short id; `-` not known).
    pub container: String,
    /// `tcp/8080`, `udp/53`, …
    pub listening: Vec<String>,
    /// Connected sockets (TCP not listening, connected UDP).
    pub connections: usize,
    /// Connected sockets whose local port the kernel chose.
    pub ephemeral: usize,
    /// Distinct remote endpoints.
    pub remotes: usize,
}

fn container_text(c: Option<&super::container::Container>) -> String {
    c.map_or_else(|| "-".to_string(), |c| c.label().to_string())
}

/// One container's sockets, as the live view's Containers tab shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerLine {
    /// Its label (`host`, a name, a short id; `-` for sockets whose container is not known).
    pub container: String,
    pub short_id: Option<String>,
    pub runtime: Option<&'static str>,
    /// Processes holding its sockets.
    pub processes: usize,
    /// `tcp/80`, `udp/53`, …
    pub listening: Vec<String>,
    pub connections: usize,
    pub ephemeral: usize,
}

/// One row into a line's counts: a listener's `proto/port` (once), or a connection (and
/// whether the kernel chose its port). True for a connection.
fn tally(
    row: &PortRow,
    listening: &mut Vec<String>,
    connections: &mut usize,
    ephemeral: &mut usize,
) -> bool {
    if row.listening {
        let port = format!("{}/{}", row.proto, row.lport);
        if !listening.contains(&port) {
            listening.push(port);
        }
        false
    } else if row.rport != 0 {
        *connections += 1;
        *ephemeral += usize::from(row.ephemeral);
        true
    } else {
        false
    }
}

/// A line per container (by each row's first owner), busiest first.
pub fn by_container(rows: &[PortRow]) -> Vec<ContainerLine> {
    let mut lines: BTreeMap<String, (ContainerLine, Vec<u32>)> = BTreeMap::new();
    for row in rows {
        let label = container_text(row.container.as_deref());
        let id = row.container.as_deref().and_then(|c| c.id.as_ref());
        let (line, pids) = lines.entry(label.clone()).or_insert_with(|| {
            (
                ContainerLine {
                    container: label,
                    short_id: id.map(|i| i.short_id().to_string()),
                    runtime: id.map(|i| i.runtime.name()),
                    processes: 0,
                    listening: Vec::new(),
                    connections: 0,
                    ephemeral: 0,
                },
                Vec::new(),
            )
        });
        for o in &row.owners {
            if !pids.contains(&o.pid) {
                pids.push(o.pid);
            }
        }
        tally(
            row,
            &mut line.listening,
            &mut line.connections,
            &mut line.ephemeral,
        );
    }
    let mut out: Vec<ContainerLine> = lines
        .into_values()
        .map(|(mut line, pids)| {
            line.processes = pids.len();
            line
        })
        .collect();
    out.sort_by(|a, b| {
        (b.connections + b.listening.len())
            .cmp(&(a.connections + a.listening.len()))
            .then_with(|| a.container.cmp(&b.container))
    });
    out
}

/// A line per process (by every owner), busiest first.
pub fn by_process(rows: &[PortRow]) -> Vec<ProcessLine> {
    let mut lines: BTreeMap<u32, (ProcessLine, Vec<(IpAddr, u16)>)> = BTreeMap::new();
    for row in rows {
        for owner in &row.owners {
            let (line, remotes) = lines.entry(owner.pid).or_insert_with(|| {
                (
                    ProcessLine {
                        pid: owner.pid,
                        comm: owner.comm.clone(),
                        // The row's container is its first owner's: another holder's (a
                        // socket passed between containers) is not known here.
                        container: if row.pid == Some(owner.pid) {
                            container_text(row.container.as_deref())
                        } else {
                            "-".into()
                        },
                        listening: Vec::new(),
                        connections: 0,
                        ephemeral: 0,
                        remotes: 0,
                    },
                    Vec::new(),
                )
            });
            let connected = tally(
                row,
                &mut line.listening,
                &mut line.connections,
                &mut line.ephemeral,
            );
            if connected && !remotes.contains(&(row.raddr, row.rport)) {
                remotes.push((row.raddr, row.rport));
            }
        }
    }
    let mut out: Vec<ProcessLine> = lines
        .into_values()
        .map(|(mut line, remotes)| {
            line.remotes = remotes.len();
            line
        })
        .collect();
    out.sort_by(|a, b| {
        (b.connections + b.listening.len())
            .cmp(&(a.connections + a.listening.len()))
            .then(a.pid.cmp(&b.pid))
    });
    out
}

/// One local end of a connection to a remote endpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LocalEnd {
    pub laddr: IpAddr,
    pub lport: u16,
    pub ephemeral: bool,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub state: SockState,
    /// A userland proxy's second connection: the client whose connection it carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxied_for: Option<super::types::Endpoint>,
}

/// Connections to one remote endpoint: each has its own local port (demultiplexing at the
/// client is by local port). Its JSON spelling is `output::ports`'.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteGroup {
    pub netns: u32,
    pub proto: Proto,
    pub raddr: IpAddr,
    pub rport: u16,
    pub rport_class: &'static str,
    pub connections: usize,
    /// Distinct local ports among them.
    pub local_ports: usize,
    pub locals: Vec<LocalEnd>,
}

/// Groups outgoing connections (not accepted ones, not listeners) by remote endpoint, most
/// connections first.
pub fn by_remote(rows: &[PortRow]) -> Vec<RemoteGroup> {
    let mut groups: BTreeMap<GroupKey, Vec<LocalEnd>> = BTreeMap::new();
    for row in rows {
        if row.rport == 0 || row.accepted || row.listening {
            continue;
        }
        groups
            .entry((row.netns, row.proto, row.raddr, row.rport))
            .or_default()
            .push(LocalEnd {
                laddr: row.laddr,
                lport: row.lport,
                ephemeral: row.ephemeral,
                pid: row.pid,
                comm: row.comm.clone(),
                state: row.state,
                proxied_for: None,
            });
    }
    remote_groups(groups)
}

fn remote_groups(groups: BTreeMap<GroupKey, Vec<LocalEnd>>) -> Vec<RemoteGroup> {
    let mut out: Vec<RemoteGroup> = groups
        .into_iter()
        .map(|((netns, proto, raddr, rport), mut locals)| {
            locals.sort_by_key(|l| (l.lport, l.laddr));
            let mut ports: Vec<(IpAddr, u16)> = locals.iter().map(|l| (l.laddr, l.lport)).collect();
            ports.dedup();
            RemoteGroup {
                netns,
                proto,
                raddr,
                rport,
                rport_class: PortClass::of(rport).as_str(),
                connections: locals.len(),
                local_ports: ports.len(),
                locals,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.connections
            .cmp(&a.connections)
            .then((a.raddr, a.rport).cmp(&(b.raddr, b.rport)))
    });
    out
}

/// The connections a `watch --group-by remote` session saw, open or since closed, for the
/// remote-endpoint summary. Bounded: at [`RemoteLog::CAPACITY`] connections the closed ones
/// make room (in one pass, and only when at least an eighth of the log is closed, so the pass
/// is paid for by the connects since the last one), and otherwise new ones are only counted
/// (`untracked`, shown as evictions of `remote_log`).
#[derive(Debug, Default)]
pub struct RemoteLog {
    /// Every connection seen, in order.
    conns: Vec<(GroupKey, LocalEnd)>,
    /// Socket → its connection in `conns`, while open (the kernel reuses socket addresses).
    open: std::collections::HashMap<u64, usize>,
    /// Connections not kept because the log was full of open ones.
    pub untracked: u64,
}

type GroupKey = (u32, Proto, IpAddr, u16);

impl RemoteLog {
    pub const CAPACITY: usize = 65536;

    /// Takes a connect that reached the network (success or EINPROGRESS) and later state
    /// changes of the same socket.
    pub fn observe(&mut self, sk: u64, e: &super::Event) {
        if e.event == EventKind::Connect && e.reached() && e.rport != 0 {
            if self.conns.len() >= Self::CAPACITY {
                // `open` holds exactly the entries of `conns` still open.
                let closed = self.conns.len() - self.open.len();
                if closed < Self::CAPACITY / 8 || !self.make_room() {
                    self.untracked += 1;
                    return;
                }
            }
            let end = LocalEnd {
                laddr: e.laddr,
                lport: e.lport,
                ephemeral: e.lport_kernel_chosen,
                pid: e.pid,
                proxied_for: None,
                comm: e.comm.as_deref().map(str::to_string),
                state: match (e.state, e.proto) {
                    (Some(state), _) => SockState::Tcp(state),
                    (None, Proto::Udp) => SockState::Connected,
                    (None, _) => SockState::Unknown,
                },
            };
            self.open.insert(sk, self.conns.len());
            self.conns.push(((e.netns, e.proto, e.raddr, e.rport), end));
            return;
        }
        let Some(&index) = self.open.get(&sk) else {
            return;
        };
        let end = &mut self.conns[index].1;
        match (e.event, e.state) {
            (EventKind::State, Some(state)) => {
                end.state = SockState::Tcp(state);
                if end.lport == 0 {
                    end.lport = e.lport;
                }
            }
            // UDP has no states: its release ends it. A TCP socket closes through its states.
            (EventKind::Release, _) if e.proto == Proto::Udp => end.state = SockState::Closed,
            _ => {}
        }
        if end.state.is_closed() {
            // A new connect on this socket address is a new connection.
            self.open.remove(&sk);
        }
    }

    /// A proxy's second connection (socket `sk`, open) carries `client`'s connection.
    pub fn proxied(&mut self, sk: u64, client: super::types::Endpoint) {
        if let Some(&index) = self.open.get(&sk) {
            self.conns[index].1.proxied_for = Some(client);
        }
    }

    /// Forgets every closed connection at once (amortised: a full log of closed connections
    /// is emptied in one pass, not scanned per new one).
    fn make_room(&mut self) -> bool {
        let open: std::collections::HashMap<usize, u64> =
            self.open.iter().map(|(sk, i)| (*i, *sk)).collect();
        let mut kept = Vec::with_capacity(self.conns.len());
        self.open.clear();
        for (i, conn) in self.conns.drain(..).enumerate() {
            if let Some(sk) = open.get(&i) {
                self.open.insert(*sk, kept.len());
                kept.push(conn);
            }
        }
        self.conns = kept;
        self.conns.len() < Self::CAPACITY
    }

    pub fn groups(&self) -> Vec<RemoteGroup> {
        let mut groups: BTreeMap<GroupKey, Vec<LocalEnd>> = BTreeMap::new();
        for (key, end) in &self.conns {
            groups.entry(*key).or_default().push(end.clone());
        }
        remote_groups(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{table::Attribution, Clock, Event};
    use tracer_common::{flag, kind, SockEvent};

    fn event(kind: u16, sk: u64, lport: u16, old: u8, new: u8) -> Event {
        let raw = SockEvent {
            kind,
            sk,
            family: tracer_common::AF_INET,
            protocol: IPPROTO_TCP,
            lport,
            rport: 443,
            raddr: [192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            old_state: old,
            new_state: new,
            ret: if kind == kind::CONNECT { -115 } else { 0 },
            flags: flag::KERNEL_CHOSE_PORT,
            pid: 7,
            ..Default::default()
        };
        Event::new(&raw, &Attribution::default(), None, &Clock::identity())
    }

    #[test]
    fn remote_log_keeps_connections_on_a_reused_socket_address() {
        let mut log = RemoteLog::default();
        for (i, lport) in [40001u16, 40002, 40003].into_iter().enumerate() {
            // The kernel hands the same struct sock address to each new socket.
            log.observe(
                0xa,
                &event(kind::CONNECT, 0xa, lport, 0, tcp_state::SYN_SENT),
            );
            log.observe(
                0xa,
                &event(kind::STATE, 0xa, lport, 2, tcp_state::ESTABLISHED),
            );
            if i < 2 {
                log.observe(0xa, &event(kind::STATE, 0xa, lport, 1, tcp_state::CLOSE));
            }
        }
        let groups = log.groups();
        assert_eq!(groups.len(), 1);
        let g = &groups[0];
        assert_eq!((g.connections, g.local_ports, g.rport), (3, 3, 443));
        let states: Vec<&str> = g.locals.iter().map(|l| l.state.name()).collect();
        assert_eq!(states, ["CLOSE", "CLOSE", "ESTABLISHED"]);
        assert!(g.locals.iter().all(|l| l.ephemeral));
    }

    #[test]
    fn remote_log_makes_room_from_closed_connections() {
        let mut log = RemoteLog::default();
        for sk in 0..RemoteLog::CAPACITY as u64 {
            log.observe(sk, &event(kind::CONNECT, sk, 1, 0, tcp_state::SYN_SENT));
            log.observe(sk, &event(kind::STATE, sk, 1, 2, tcp_state::CLOSE));
        }
        log.observe(
            1 << 40,
            &event(kind::CONNECT, 1 << 40, 2, 0, tcp_state::SYN_SENT),
        );
        assert_eq!(log.untracked, 0);
        assert_eq!(log.groups()[0].connections, 1);
    }

    #[test]
    fn remote_log_full_of_open_connections_counts_the_rest() {
        let mut log = RemoteLog::default();
        let cap = RemoteLog::CAPACITY as u64;
        for sk in 0..cap + 1000 {
            log.observe(sk, &event(kind::CONNECT, sk, 1, 0, tcp_state::SYN_SENT));
        }
        assert_eq!(log.untracked, 1000);
        // A few closes are not worth a pass over the log; an eighth of it is.
        for sk in 0..cap / 8 {
            log.observe(sk, &event(kind::STATE, sk, 1, 2, tcp_state::CLOSE));
        }
        log.observe(
            cap * 2,
            &event(kind::CONNECT, cap * 2, 2, 0, tcp_state::SYN_SENT),
        );
        assert_eq!(log.untracked, 1000);
        assert_eq!(log.conns.len() as u64, cap - cap / 8 + 1);
    }
}

/// A sample table for the views' snapshot tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::model::snapshot::{addr_bytes, SnapNetns, SnapSocket, Snapshot};
    use crate::model::{table::Owner, SocketTable};

    fn owner(pid: u32, comm: &str) -> Owner {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        Owner {
            pid,
            tid: pid,
            uid: 0,
            comm: c,
            thread: c,
            cgroup: 0,
        }
    }

    /// A server on 8080 with three browser-tab connections, one DNS-like UDP socket, and a
    /// listener held by two processes.
    pub(crate) fn sample_table() -> SocketTable {
        let lo = addr_bytes("127.0.0.1".parse().unwrap());
        let any = [0u8; 16];
        let sock = |protocol, laddr, lport, raddr, rport, state, inode| SnapSocket {
            netns: 1,
            protocol,
            family: tracer_common::AF_INET,
            laddr,
            lport,
            raddr,
            rport,
            state,
            uid: 0,
            inode,
            recv_q: 0,
            send_q: 0,
            drops: None,
        };
        let mut snapshot = Snapshot {
            namespaces: vec![SnapNetns {
                inode: 1,
                path: "/proc/self/ns/net".into(),
                port_range: Some((32768, 60999)),
            }],
            ..Default::default()
        };
        snapshot.sockets = vec![
            sock(6, any, 8080, any, 0, 10, 100),
            sock(6, lo, 8080, lo, 41000, 1, 101),
            sock(6, lo, 8080, lo, 41002, 1, 102),
            sock(6, lo, 8080, lo, 41004, 1, 103),
            sock(6, lo, 41000, lo, 8080, 1, 201),
            sock(6, lo, 41002, lo, 8080, 1, 202),
            sock(6, lo, 41004, lo, 8080, 1, 203),
            sock(17, any, 5353, any, 0, 7, 300),
            sock(6, any, 22, any, 0, 10, 400),
        ];
        snapshot.owners.insert(100, vec![owner(10, "server")]);
        for inode in 101..=103 {
            snapshot.owners.insert(inode, vec![owner(10, "server")]);
        }
        for inode in 201..=203 {
            snapshot.owners.insert(inode, vec![owner(20, "chromium")]);
        }
        snapshot.owners.insert(300, vec![owner(30, "avahi")]);
        snapshot
            .owners
            .insert(400, vec![owner(40, "sshd"), owner(41, "sshd")]);
        let mut table = SocketTable::default();
        table.merge_snapshot(&snapshot, 0);
        table
    }
}
