//! The socket table: every socket tracer knows of, keyed by its kernel identity (`struct sock
//! *`), with the processes that hold it. TCP state transitions often run in softirq, where the
//! current pid belongs to whoever was on the CPU; they are attributed through this table.
//!
//! Sockets that predate tracer come from a start-up snapshot (sock_diag + /proc): they have no
//! kernel address yet, so they sit under a placeholder key and are indexed by their tuple
//! (netns, protocol, addresses, ports) until the first live event on that tuple names their
//! `struct sock *`. A listener from the snapshot attributes the connections the kernel builds
//! from it, like a listener seen live.
//!
//! Entries are removed when the socket is released (UDP, or TCP already in CLOSE) or, for TCP
//! sockets released while still connected, when their final transition to CLOSE arrives, so the
//! table stays bounded however long tracer runs. A sweep drops entries that outlived their
//! expiry (a released socket whose CLOSE was lost, a snapshot TIME_WAIT socket), and a hard cap
//! evicts the oldest entries if all else fails. As entries gain and lose local ports the table
//! keeps the ephemeral-port usage up to date.
//!
//! Here: the table, its entries and what every part shares. How events attribute sockets (and
//! listeners their connections) is in `attribute`, start-up snapshots and reconciling in
//! `merge`, expiry and the hard cap in `sweep`.
use foldhash::HashMap;

use tracer_common::{kind, tcp_state, SockEvent};

use super::ephemeral::{EphemeralUsage, UsageKey};
use super::types::{sock_key, SockKey};

mod attribute;
mod merge;
mod sweep;

/// A process holding a socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// The process's name (thread-group leader), NUL-padded bytes as the kernel keeps them.
    pub comm: [u8; 16],
    /// The name of the thread that made the call (the same as `comm` for a snapshot owner).
    pub thread: [u8; 16],
}

impl Owner {
    fn of(ev: &SockEvent) -> Self {
        Owner {
            pid: ev.pid,
            tid: ev.tid,
            uid: ev.uid,
            comm: ev.comm,
            thread: ev.thread,
        }
    }

    /// The command name as text ([`crate::text::comm`]: lossless, never panics).
    pub fn comm(&self) -> String {
        crate::text::comm(&self.comm)
    }

    /// The command name's bytes, without the kernel's NUL padding.
    pub fn comm_bytes(&self) -> &[u8] {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        &self.comm[..end]
    }
}

/// At most this many holders are remembered per socket.
const MAX_OWNERS: usize = 8;

/// What the table knows about one socket.
#[derive(Clone, Debug)]
pub struct TrackedSocket {
    /// The processes holding it, the one that used it last first (empty: nobody we know of,
    /// e.g. a TIME_WAIT socket from the snapshot).
    pub owners: Vec<Owner>,
    pub netns: u32,
    pub protocol: u8,
    pub family: u16,
    pub laddr: [u8; 16],
    pub lport: u16,
    pub raddr: [u8; 16],
    pub rport: u16,
    /// TCP state (kernel numbering); UDP: ESTABLISHED when connected.
    pub state: u8,
    pub kernel_chose_port: bool,
    /// A connection the kernel built from a listener (it shares the listener's port).
    pub accepted: bool,
    /// Known from the start-up snapshot, not yet seen by a live event.
    pub from_snapshot: bool,
    /// Where this socket listens, while it does.
    listening_on: Option<ListenKey>,
    /// Released by its last holder; a TCP socket stays until its CLOSE transition.
    released: bool,
    /// Monotonic time after which the sweep drops it.
    expires_at: Option<u64>,
    last_seen: u64,
    /// The (key, port) this socket is counted under in the ephemeral usage.
    counted: Option<(UsageKey, u16)>,
}

impl TrackedSocket {
    pub fn owner(&self) -> Option<&Owner> {
        self.owners.first()
    }

    pub fn is_listening(&self) -> bool {
        self.listening_on.is_some()
    }

    fn hold(&mut self, owner: Owner) {
        self.owners.retain(|o| o.pid != owner.pid);
        self.owners.insert(0, owner);
        self.owners.truncate(MAX_OWNERS);
    }

    fn tuple(&self) -> SockKey {
        sock_key!(self)
    }
}

/// A listening endpoint: (netns, family, local address, port). The address matters: the kernel
/// may give an IPv4 and an IPv6 server the same port, and one port can have listeners on
/// several addresses.
type ListenKey = (u32, u16, [u8; 16], u16);

fn listen_key(ev: &SockEvent) -> ListenKey {
    (ev.netns, ev.family, ev.laddr, ev.lport)
}

pub struct SocketTable {
    sockets: HashMap<u64, TrackedSocket>,
    /// Listening endpoint → listening socket, to attribute connections the kernel creates from
    /// a listener (SYN_RECV → ESTABLISHED) before `accept()` names them.
    listeners: HashMap<ListenKey, u64>,
    /// Snapshot sockets not yet seen live, by tuple.
    unnamed: HashMap<SockKey, u64>,
    next_placeholder: u64,
    usage: EphemeralUsage,
    /// Keep snapshot TIME_WAIT sockets as rows (`ports`), or only count their ports until they
    /// expire (`watch`, `serve`: a busy host has tens of thousands of them).
    time_wait_rows: bool,
    /// (expiry, usage key, port) of TIME_WAIT sockets counted without a row.
    time_wait_ports: Vec<(u64, UsageKey, u16)>,
    capacity: usize,
    evicted: u64,
}

/// What the table knows about the socket an event concerns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    pub owner: Option<Owner>,
    /// The kernel chose this socket's local port (now or in an earlier event).
    pub kernel_chose_port: bool,
    /// The socket's local port as last known (a refused connect's port is gone by its exit).
    pub lport: u16,
}

impl Attribution {
    fn of(entry: &TrackedSocket) -> Self {
        Attribution {
            owner: entry.owner().copied(),
            kernel_chose_port: entry.kernel_chose_port,
            lport: entry.lport,
        }
    }
}

impl Default for SocketTable {
    fn default() -> Self {
        Self::with_capacity(1 << 20)
    }
}

impl SocketTable {
    pub fn with_capacity(capacity: usize) -> Self {
        SocketTable {
            sockets: HashMap::default(),
            listeners: HashMap::default(),
            unnamed: HashMap::default(),
            next_placeholder: 1,
            usage: EphemeralUsage::default(),
            time_wait_rows: true,
            time_wait_ports: Vec::new(),
            capacity,
            evicted: 0,
        }
    }

    /// Snapshot TIME_WAIT sockets only count toward the ephemeral usage (no rows).
    pub fn count_time_wait_only(&mut self) {
        self.time_wait_rows = false;
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Entries dropped by the hard cap (never by normal operation).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Every socket the table holds.
    pub fn sockets(&self) -> impl Iterator<Item = &TrackedSocket> {
        self.sockets.values()
    }

    pub fn usage(&self) -> &EphemeralUsage {
        &self.usage
    }

    pub fn usage_mut(&mut self) -> &mut EphemeralUsage {
        &mut self.usage
    }

    /// Folds one event into the table and says who owns its socket.
    pub fn observe(&mut self, ev: &SockEvent) -> Attribution {
        // A socket being born — socket() returned it, or the kernel cloned a connection from
        // its listener (LISTEN → SYN_RECV) — at an address the table still holds: the socket
        // that had it is gone and its memory was reused (the entry was waiting for a release
        // or an expiry that had not come yet, e.g. a connection its listener's owner never
        // accepted). Start afresh, or the new socket would be attributed to the old one's
        // owners.
        let born = (ev.kind == kind::SOCKET && ev.sk != 0)
            || (ev.kind == kind::STATE
                && ev.old_state == tcp_state::LISTEN
                && ev.new_state == tcp_state::SYN_RECV);
        if born {
            self.remove(ev.sk);
        }
        if !self.unnamed.is_empty() {
            self.name_snapshot_socket(ev);
        }
        let attribution = match ev.kind {
            kind::STATE => self.observe_state(ev),
            kind::RELEASE => self.observe_release(ev),
            _ => self.observe_syscall(ev),
        };
        if self.sockets.contains_key(&ev.sk) {
            self.recount(ev.sk);
        }
        attribution
    }

    /// Keeps the ephemeral usage in step with the socket's local port.
    fn recount(&mut self, sk: u64) {
        let Some(entry) = self.sockets.get_mut(&sk) else {
            return;
        };
        let wanted = (entry.lport != 0 && entry.protocol != 0).then_some((
            (entry.netns, entry.protocol, entry.family, entry.laddr),
            entry.lport,
        ));
        if entry.counted == wanted {
            return;
        }
        let previous = std::mem::replace(&mut entry.counted, wanted);
        if let Some((key, port)) = previous {
            self.usage.remove(key, port);
        }
        if let Some((key, port)) = wanted {
            self.usage.add(key, port);
        }
    }

    fn remove(&mut self, sk: u64) {
        self.stop_listening(sk);
        if let Some(entry) = self.sockets.remove(&sk) {
            if let Some((key, port)) = entry.counted {
                self.usage.remove(key, port);
            }
            if entry.from_snapshot {
                self.unnamed.remove(&entry.tuple());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sweep::RELEASED_GRACE_NS;
    use super::*;
    use tracer_common::{flag, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};

    fn ev(kind: u16, sk: u64, pid: u32) -> SockEvent {
        SockEvent {
            kind,
            sk,
            pid,
            tid: pid,
            protocol: IPPROTO_TCP,
            netns: 1,
            ..Default::default()
        }
    }

    fn state(sk: u64, old: u8, new: u8, lport: u16) -> SockEvent {
        SockEvent {
            old_state: old,
            new_state: new,
            lport,
            pid: 0, // softirq: whoever was on the CPU
            ..ev(kind::STATE, sk, 0)
        }
    }

    /// `pid`'s listen() on `port`, socket `sk`.
    fn listen(sk: u64, pid: u32, port: u16) -> SockEvent {
        SockEvent {
            lport: port,
            new_state: tcp_state::LISTEN,
            ..ev(kind::LISTEN, sk, pid)
        }
    }

    #[test]
    fn state_events_are_attributed_through_the_table() {
        let mut t = SocketTable::default();
        t.observe(&ev(kind::SOCKET, 0xa, 100));
        let a = t.observe(&state(0xa, tcp_state::CLOSE, tcp_state::SYN_SENT, 0));
        assert_eq!(a.owner.unwrap().pid, 100);
        let unknown = t.observe(&state(0xb, tcp_state::SYN_SENT, tcp_state::ESTABLISHED, 9));
        assert_eq!(unknown.owner, None);
        let mut in_connect = state(0xc, tcp_state::CLOSE, tcp_state::SYN_SENT, 0);
        in_connect.pid = 300;
        in_connect.flags = flag::OWNER_IN_CONTEXT;
        assert_eq!(t.observe(&in_connect).owner.unwrap().pid, 300);
        let later = t.observe(&state(0xc, tcp_state::SYN_SENT, tcp_state::ESTABLISHED, 5));
        assert_eq!(
            later.owner.unwrap().pid,
            300,
            "remembered for softirq transitions"
        );
    }

    #[test]
    fn an_accepted_connection_belongs_to_the_accepting_worker_alone() {
        let mut t = SocketTable::default();
        // A master (10) and two workers (11, 12) share one listener, as nginx's do.
        for pid in [10, 11, 12] {
            t.observe(&listen(0x1, pid, 8080));
        }
        let before = t.observe(&state(0x2, tcp_state::LISTEN, tcp_state::SYN_RECV, 8080));
        assert_eq!(t.sockets[&0x2].owners.len(), 3, "{before:?}");
        let mut accept = ev(kind::ACCEPT, 0x2, 12);
        accept.ret = 7;
        accept.parent_sk = 0x1;
        accept.lport = 8080;
        t.observe(&accept);
        let owners: Vec<u32> = t.sockets[&0x2].owners.iter().map(|o| o.pid).collect();
        assert_eq!(owners, vec![12]);
        // A later fork that uses it joins, as before.
        t.observe(&ev(kind::SENDTO, 0x2, 13));
        let owners: Vec<u32> = t.sockets[&0x2].owners.iter().map(|o| o.pid).collect();
        assert_eq!(owners, vec![13, 12]);
    }

    #[test]
    fn a_reused_socket_address_is_a_new_socket() {
        let mut t = SocketTable::default();
        t.observe(&listen(0x1, 7, 8080));
        // A connection pid 7 never accepts: closed with its listener, never released.
        t.observe(&state(0x2, tcp_state::LISTEN, tcp_state::SYN_RECV, 8080));
        t.observe(&state(
            0x2,
            tcp_state::SYN_RECV,
            tcp_state::ESTABLISHED,
            8080,
        ));
        t.observe(&state(0x1, tcp_state::LISTEN, tcp_state::CLOSE, 8080));
        t.observe(&state(0x2, tcp_state::ESTABLISHED, tcp_state::CLOSE, 8080));
        // Its memory goes to a connection on another process's listener.
        t.observe(&listen(0x3, 9, 9090));
        let child = t.observe(&state(0x2, tcp_state::LISTEN, tcp_state::SYN_RECV, 9090));
        assert_eq!(child.owner.unwrap().pid, 9);
        let est = t.observe(&state(
            0x2,
            tcp_state::SYN_RECV,
            tcp_state::ESTABLISHED,
            9090,
        ));
        assert_eq!(est.owner.unwrap().pid, 9);
        // And to a socket() of a third process: its owner alone.
        t.observe(&state(0x2, tcp_state::ESTABLISHED, tcp_state::CLOSE, 9090));
        let mut made = ev(kind::SOCKET, 0x2, 11);
        made.new_state = tcp_state::CLOSE;
        let a = t.observe(&made);
        assert_eq!(a.owner.unwrap().pid, 11);
        assert_eq!(t.sockets[&0x2].owners.len(), 1);
    }

    #[test]
    fn connections_from_a_listener_belong_to_its_owner() {
        let mut t = SocketTable::default();
        t.observe(&listen(0x1, 7, 8080));
        let child = t.observe(&state(0x2, tcp_state::LISTEN, tcp_state::SYN_RECV, 8080));
        assert_eq!(child.owner.unwrap().pid, 7);
    }

    #[test]
    fn listeners_on_one_port_are_told_apart_by_address() {
        // The kernel may give an IPv4 and an IPv6 server the same port number.
        let mut t = SocketTable::default();
        let listener = |sk, pid, family, addr: [u8; 16]| SockEvent {
            lport: 40000,
            new_state: tcp_state::LISTEN,
            family,
            laddr: addr,
            ..ev(kind::LISTEN, sk, pid)
        };
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        t.observe(&listener(0x10, 4, AF_INET, v4));
        t.observe(&listener(0x20, 6, AF_INET6, v6));
        t.observe(&listener(0x30, 9, AF_INET6, [0; 16])); // a wildcard [::]:40000
        let child = |sk, family, addr| SockEvent {
            family,
            laddr: addr,
            ..state(sk, tcp_state::LISTEN, tcp_state::SYN_RECV, 40000)
        };
        assert_eq!(t.observe(&child(0x11, AF_INET, v4)).owner.unwrap().pid, 4);
        assert_eq!(t.observe(&child(0x21, AF_INET6, v6)).owner.unwrap().pid, 6);
        // Another local address on that port: the wildcard listener takes it.
        let mut other = [0u8; 16];
        other[15] = 2;
        assert_eq!(
            t.observe(&child(0x31, AF_INET6, other)).owner.unwrap().pid,
            9
        );
    }

    #[test]
    fn kernel_chosen_port_is_remembered() {
        let mut t = SocketTable::default();
        let mut c = ev(kind::CONNECT, 0x3, 5);
        c.flags = flag::KERNEL_CHOSE_PORT;
        c.lport = 40000;
        t.observe(&c);
        let a = t.observe(&state(
            0x3,
            tcp_state::SYN_SENT,
            tcp_state::ESTABLISHED,
            40000,
        ));
        assert!(a.kernel_chose_port);
        assert_eq!(a.lport, 40000);
    }

    #[test]
    fn released_tcp_socket_waits_for_close_then_goes() {
        let mut t = SocketTable::default();
        let mut s = ev(kind::CONNECT, 0x4, 5);
        s.new_state = tcp_state::ESTABLISHED;
        t.observe(&s);
        t.observe(&ev(kind::RELEASE, 0x4, 5));
        assert_eq!(t.len(), 1, "still closing");
        let a = t.observe(&state(0x4, tcp_state::FIN_WAIT2, tcp_state::CLOSE, 1));
        assert_eq!(a.owner.unwrap().pid, 5);
        assert!(t.is_empty());
    }

    #[test]
    fn udp_and_closed_sockets_go_at_release() {
        let mut t = SocketTable::default();
        let mut u = ev(kind::SOCKET, 0x5, 5);
        u.protocol = IPPROTO_UDP;
        t.observe(&u);
        t.observe(&ev(kind::SOCKET, 0x6, 5));
        t.observe(&ev(kind::RELEASE, 0x5, 5));
        t.observe(&ev(kind::RELEASE, 0x6, 5));
        assert!(t.is_empty());
    }

    #[test]
    fn a_close_reported_after_release_does_not_resurrect_the_socket() {
        // close() is reported at syscall exit, after the socket was released and closed.
        let mut t = SocketTable::default();
        t.observe(&listen(0x8, 5, 39309));
        t.observe(&ev(kind::RELEASE, 0x8, 5));
        t.observe(&state(0x8, tcp_state::LISTEN, tcp_state::CLOSE, 39309));
        let mut close = ev(kind::CLOSE, 0x8, 5);
        close.lport = 39309;
        assert_eq!(t.observe(&close).owner.unwrap().pid, 5);
        assert!(t.is_empty(), "no entry outlives its socket");
        // The same struct sock * reused for a new socket starts clean.
        let fresh = t.observe(&ev(kind::SOCKET, 0x8, 6));
        assert_eq!(fresh.lport, 0);
        assert!(!fresh.kernel_chose_port);
    }

    #[test]
    fn snapshot_sockets_are_named_by_their_first_live_event() {
        use crate::model::snapshot::{SnapNetns, SnapSocket, Snapshot};
        let lo = [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let server = Owner {
            pid: 42,
            tid: 42,
            uid: 0,
            comm: *b"server\0\0\0\0\0\0\0\0\0\0",
            thread: *b"server\0\0\0\0\0\0\0\0\0\0",
        };
        let sock = |protocol, lport, state, inode| SnapSocket {
            netns: 1,
            protocol,
            family: AF_INET,
            laddr: lo,
            lport,
            raddr: [0; 16],
            rport: 0,
            state,
            uid: 0,
            inode,
        };
        let mut snapshot = Snapshot {
            sockets: vec![
                sock(IPPROTO_TCP, 8080, tcp_state::LISTEN, 10),
                sock(IPPROTO_UDP, 40000, tcp_state::CLOSE, 11),
            ],
            namespaces: vec![SnapNetns {
                inode: 1,
                path: "/proc/self/ns/net".into(),
                port_range: Some((32768, 60999)),
            }],
            ..Default::default()
        };
        snapshot.owners.insert(10, vec![server]);
        snapshot.owners.insert(11, vec![server]);
        let mut t = SocketTable::default();
        t.merge_snapshot(&snapshot, 0);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.usage().report()[0].in_use,
            1,
            "the UDP port is in the range"
        );
        // The handshake of a connection to the old listener belongs to its owner.
        let child = SockEvent {
            family: AF_INET,
            laddr: lo,
            netns: 1,
            ..state(0xc1, tcp_state::LISTEN, tcp_state::SYN_RECV, 8080)
        };
        assert_eq!(t.observe(&child).owner.unwrap().pid, 42);
        // accept() names the listener's struct sock.
        let accept = SockEvent {
            parent_sk: 0xa1,
            lport: 8080,
            family: AF_INET,
            laddr: lo,
            ..ev(kind::ACCEPT, 0xc1, 42)
        };
        t.observe(&accept);
        let listener = SockEvent {
            lport: 8080,
            family: AF_INET,
            laddr: lo,
            ..state(0xa1, tcp_state::LISTEN, tcp_state::CLOSE, 8080)
        };
        assert_eq!(t.observe(&listener).owner.unwrap().pid, 42);
        // A datagram to a peer names the unconnected UDP socket it left from.
        let send = SockEvent {
            protocol: IPPROTO_UDP,
            family: AF_INET,
            laddr: lo,
            lport: 40000,
            raddr: lo,
            rport: 53,
            ..ev(kind::SENDTO, 0xb1, 42)
        };
        t.observe(&send);
        let release = SockEvent {
            protocol: IPPROTO_UDP,
            family: AF_INET,
            laddr: lo,
            lport: 40000,
            ..ev(kind::RELEASE, 0xb1, 42)
        };
        t.observe(&release);
        assert!(
            t.sockets().all(|s| !s.from_snapshot),
            "no placeholder outlives its socket"
        );
        assert_eq!(t.usage().report()[0].in_use, 0);
    }

    #[test]
    fn sweep_and_cap_bound_memory() {
        let mut t = SocketTable::with_capacity(100);
        for sk in 1..=1000u64 {
            t.observe(&ev(kind::SOCKET, sk, 1));
        }
        assert!(t.len() <= 100);
        assert!(t.evicted() > 0);

        let mut t = SocketTable::default();
        let mut s = ev(kind::CONNECT, 0x7, 5);
        s.new_state = tcp_state::ESTABLISHED;
        t.observe(&s);
        let mut r = ev(kind::RELEASE, 0x7, 5);
        r.ts_ns = 1;
        t.observe(&r);
        t.sweep(RELEASED_GRACE_NS + 2);
        assert!(t.is_empty());
    }
}
