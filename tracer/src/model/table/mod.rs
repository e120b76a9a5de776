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

use tracer_common::{flag, kind, tcp_state, SockEvent};

use super::bounded::BoundedMap;
use super::ephemeral::{Dest, EphemeralUsage, UsageKey};
use super::event::found_no_port;
use super::types::{sock_key, SockKey};

mod attribute;
mod merge;
mod sweep;
pub mod time_wait;

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
    /// Its cgroup (v2 id), which names its container; 0 when not known.
    #[serde(default)]
    pub cgroup: u64,
}

impl Owner {
    fn of(ev: &SockEvent) -> Self {
        Owner {
            pid: ev.pid,
            tid: ev.tid,
            uid: ev.uid,
            comm: ev.comm,
            thread: ev.thread,
            cgroup: ev.cgroup,
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
    /// `bind()` gave it its port (named or chosen): the port is held for every destination,
    /// where one `connect()` chose is unique only per destination.
    pub bound: bool,
    /// A TCP transition into CLOSE gave its port back (the kernel keeps only a port bound
    /// by name): the socket may linger until released, holding nothing.
    port_returned: bool,
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
    /// When its handshake and life began, for the latencies events carry.
    timing: Timing,
    /// (Recv-Q, Send-Q) as sock_diag last reported them (a listener: its accept queue and
    /// backlog); None when not read.
    pub queues: Option<(u32, u32)>,
}

/// Monotonic moments of a socket's life (0: not seen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    /// CLOSE → SYN_SENT: its connect's first SYN.
    syn_sent_ns: u64,
    /// The kernel completed its handshake for a listener: it waits in the accept queue.
    queued_ns: u64,
    /// Its life began (the first SYN, the completed handshake, or its first event); 0 for a
    /// socket from the start-up snapshot, whose start is unknown.
    opened_ns: u64,
    /// SYNs its connect sent again.
    syn_retransmits: u16,
}

/// Latencies an event completes (None: not this event's, or not known).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    /// The first SYN to the handshake's end (ESTABLISHED, or the connect's failure).
    pub connect_ns: Option<u64>,
    /// SYNs sent again during that connect.
    pub syn_retransmits: Option<u16>,
    /// The handshake completed to `accept()` returning the connection (syscall path).
    pub accept_wait_ns: Option<u64>,
    /// Opened to CLOSE.
    pub lifetime_ns: Option<u64>,
}

impl TrackedSocket {
    /// What `ev` completes, and the moments it starts (folded in before its attribution).
    fn time(&mut self, ev: &SockEvent) -> Latency {
        let t = &mut self.timing;
        let since = |start: u64| (start != 0).then(|| ev.ts_ns.saturating_sub(start));
        let mut latency = Latency::default();
        match ev.kind {
            kind::STATE if ev.new_state == tcp_state::SYN_SENT => {
                *t = Timing {
                    syn_sent_ns: ev.ts_ns,
                    opened_ns: ev.ts_ns,
                    ..Timing::default()
                };
            }
            // A connect the kernel found no port for sent no SYN: no handshake to time.
            kind::STATE if ev.old_state == tcp_state::SYN_SENT && found_no_port(ev) => {
                t.syn_sent_ns = 0;
            }
            kind::STATE if ev.old_state == tcp_state::SYN_SENT => {
                latency.connect_ns = since(t.syn_sent_ns);
                latency.syn_retransmits = latency.connect_ns.map(|_| t.syn_retransmits);
                t.syn_sent_ns = 0;
            }
            // The kernel completed the handshake for a listener (the transition, or a socket
            // hook's view of the same moment): the first of the two starts the wait.
            kind::STATE
                if ev.old_state == tcp_state::SYN_RECV
                    && ev.new_state == tcp_state::ESTABLISHED
                    && t.queued_ns == 0 =>
            {
                t.queued_ns = ev.ts_ns;
            }
            kind::ACCEPT if ev.flags & flag::FROM_HOOK != 0 => {
                t.queued_ns = if t.queued_ns == 0 {
                    ev.ts_ns
                } else {
                    t.queued_ns
                };
            }
            kind::ACCEPT if ev.ret >= 0 => {
                latency.accept_wait_ns = since(t.queued_ns);
                t.queued_ns = 0;
            }
            kind::RETRANSMIT if ev.new_state == tcp_state::SYN_SENT => {
                t.syn_retransmits = t.syn_retransmits.saturating_add(1);
            }
            _ => {}
        }
        if t.opened_ns == 0 && !self.from_snapshot && ev.kind != kind::RELEASE {
            t.opened_ns = if t.queued_ns != 0 {
                t.queued_ns
            } else {
                ev.ts_ns
            };
        }
        if ev.kind == kind::STATE && ev.new_state == tcp_state::CLOSE && !found_no_port(ev) {
            latency.lifetime_ns = since(t.opened_ns);
        }
        latency
    }
    pub fn owner(&self) -> Option<&Owner> {
        self.owners.first()
    }

    pub fn is_listening(&self) -> bool {
        self.listening_on.is_some()
    }

    /// It holds a port the kernel chose from the ephemeral range now (counted in the usage).
    pub fn holds_ephemeral(&self) -> bool {
        self.counted.is_some() && self.kernel_chose_port
    }

    fn hold(&mut self, owner: Owner) {
        self.owners.retain(|o| o.pid != owner.pid);
        self.owners.insert(0, owner);
        self.owners.truncate(MAX_OWNERS);
    }

    fn tuple(&self) -> SockKey {
        sock_key!(self)
    }

    /// Where its local port counts in the ephemeral usage: per destination for a TCP
    /// connection whose port `connect()` chose, exclusively for the rest.
    fn usage_key(&self) -> UsageKey {
        let per_destination = self.protocol == tracer_common::IPPROTO_TCP
            && self.rport != 0
            && !self.bound
            && !self.accepted
            && !self.is_listening();
        let dest =
            per_destination.then(|| Dest::new(self.family, self.laddr, self.raddr, self.rport));
        (self.netns, self.protocol, dest)
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
    /// Ports TIME_WAIT sockets hold (closed while tracer ran, or counted without a row from
    /// the snapshot), oldest first; bounded by [`time_wait::MAX_TIME_WAIT`].
    time_wait_ports: std::collections::VecDeque<time_wait::TimeWaitHold>,
    /// The same for holds `tcp_tw_reuse` shortens (seconds).
    time_wait_short: std::collections::VecDeque<time_wait::TimeWaitHold>,
    /// Holds pushed out by that cap.
    time_wait_evicted: u64,
    capacity: usize,
    evicted: u64,
    /// Sockets removed in the last [`DEPARTED_NS`], with their owner and ports: a reset or a
    /// drop the kernel reports just after the CLOSE that removed its socket (a close() with
    /// data unread sends its RST after moving to CLOSE) is still charged to its owner. Capped
    /// at [`DEPARTED_MAX`]; what the cap pushes out counts with the table's evictions.
    departed: BoundedMap<u64, Departed>,
    keep_departed: bool,
}

/// How long, and how many, removed sockets are remembered for late health events.
const DEPARTED_NS: u64 = 2_000_000_000;
const DEPARTED_MAX: usize = 16_384;

#[derive(Clone, Copy, Debug)]
struct Departed {
    owner: Owner,
    lport: u16,
    rport: u16,
    ts_ns: u64,
}

/// What the table knows about the socket an event concerns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    pub owner: Option<Owner>,
    /// The kernel chose this socket's local port (now or in an earlier event).
    pub kernel_chose_port: bool,
    /// The socket's local port as last known (a refused connect's port is gone by its exit).
    pub lport: u16,
    /// What this event completes: connect latency, accept-queue wait, lifetime.
    pub latency: Latency,
}

impl Attribution {
    fn of(entry: &TrackedSocket) -> Self {
        Attribution {
            owner: entry.owner().copied(),
            kernel_chose_port: entry.kernel_chose_port,
            lport: entry.lport,
            latency: Latency::default(),
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
            time_wait_ports: std::collections::VecDeque::new(),
            time_wait_short: std::collections::VecDeque::new(),
            time_wait_evicted: 0,
            capacity,
            evicted: 0,
            departed: BoundedMap::new(DEPARTED_MAX),
            keep_departed: true,
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

    /// Removed sockets the memo for late resets and drops pushed out early.
    pub fn departed_evicted(&self) -> u64 {
        self.departed.evicted()
    }

    /// No memo of removed sockets: nothing will ask it (`serve` without a process filter
    /// receives no reset or drop records).
    pub fn without_departed(&mut self) {
        self.keep_departed = false;
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
                && ev.new_state == tcp_state::SYN_RECV)
            || self.outlived(ev);
        if born {
            self.remove(ev.sk);
            // A new socket at this address: nothing late can be the old one's any more.
            self.departed.remove(&ev.sk);
        }
        if !self.unnamed.is_empty() && Self::names_its_socket(ev) {
            self.name_snapshot_socket(ev);
        }
        if super::event::found_no_port(ev) {
            let dest = Dest::new(ev.family, ev.laddr, ev.raddr, ev.rport);
            // The transition runs inside the caller's connect().
            let comm = crate::text::comm_inline(Owner::of(ev).comm_bytes());
            self.usage
                .failed_connect(ev.netns, tracer_common::IPPROTO_TCP, dest, &comm);
        }
        // The moments this event starts or ends: before it may remove the entry, or once it
        // made one.
        let (existed, mut latency) = match self.sockets.get_mut(&ev.sk) {
            Some(entry) if ev.sk != 0 => (true, entry.time(ev)),
            _ => (false, Latency::default()),
        };
        let mut attribution = match ev.kind {
            kind::STATE => self.observe_state(ev),
            kind::RELEASE => self.observe_release(ev),
            kind::RETRANSMIT | kind::RESET | kind::DROP => self.observe_health(ev),
            _ => self.observe_syscall(ev),
        };
        if self.sockets.contains_key(&ev.sk) {
            self.recount(ev.sk);
        }
        if !existed && ev.sk != 0 {
            if let Some(entry) = self.sockets.get_mut(&ev.sk) {
                latency = entry.time(ev);
            }
        }
        attribution.latency = latency;
        attribution
    }

    /// Whether the entry at the event's address belongs to a socket that is gone: the
    /// address was reused by one whose birth was not reported (`serve` only counts
    /// `socket()` and the transitions before CLOSE, so a TIME_WAIT hold, a released socket
    /// waiting for its CLOSE or one whose release was lost can still sit there).
    /// - a connection the kernel just completed for a listener (a socket hook in softirq)
    ///   is new unless the entry is that very connection, made at LISTEN → SYN_RECV;
    /// - nothing but close()/shutdown() (reported at exit, after the release) happens in a
    ///   process on a socket already released;
    /// - a socket hook's connect() runs before the SYN leaves: a socket past SYN_SENT
    ///   cannot be the one connecting.
    fn outlived(&self, ev: &SockEvent) -> bool {
        let Some(entry) = self.sockets.get(&ev.sk) else {
            return false;
        };
        let hook = ev.flags & flag::FROM_HOOK != 0;
        // Syscall records are made in their caller's call; hooks say whether they were.
        let in_context = !hook || ev.flags & flag::OWNER_IN_CONTEXT != 0;
        match ev.kind {
            kind::ACCEPT if hook && !in_context => entry.state != tcp_state::SYN_RECV,
            kind::STATE | kind::RELEASE | kind::CLOSE | kind::SHUTDOWN => false,
            kind::RETRANSMIT | kind::RESET | kind::DROP => false,
            kind::CONNECT if hook && entry.released => true,
            kind::CONNECT if hook && ev.protocol == tracer_common::IPPROTO_TCP => {
                !matches!(entry.state, 0 | tcp_state::CLOSE | tcp_state::SYN_SENT)
            }
            _ => entry.released && in_context,
        }
    }

    /// A sock_diag reading of a listening endpoint (its queue and backlog, summed over the
    /// sockets listening there with SO_REUSEPORT) goes on the listener the table follows at
    /// exactly that endpoint (for `ports`); returns its owner, and whether tracer saw it
    /// start listening (so every drop it has is one tracer saw happen). None: not a listener
    /// the table follows — one the filters left out, or another user's the table never saw.
    pub fn set_listener_queues(
        &mut self,
        endpoint: (u32, u16, [u8; 16], u16),
        queues: (u32, u32),
    ) -> Option<(Option<Owner>, bool)> {
        let sk = *self.listeners.get(&endpoint)?;
        let entry = self.sockets.get_mut(&sk)?;
        entry.queues = Some(queues);
        Some((entry.owner().copied(), !entry.from_snapshot))
    }

    /// Namespaces where the table follows listeners, each with a process holding one there
    /// (a way in), in inode order.
    pub fn listener_namespaces(&self) -> std::collections::BTreeMap<u32, Option<u32>> {
        let mut places: std::collections::BTreeMap<u32, Option<u32>> = Default::default();
        for sk in self.listeners.values() {
            if let Some(entry) = self.sockets.get(sk) {
                let pid = entry.owner().map(|o| o.pid);
                let place = places.entry(entry.netns).or_insert(pid);
                if place.is_none() {
                    *place = pid;
                }
            }
        }
        places
    }

    /// The owner of a socket removed a moment ago, if `ev` is about that very socket (same
    /// ports, within [`DEPARTED_NS`]).
    fn departed_owner(&self, ev: &SockEvent) -> Option<Owner> {
        let d = self.departed.get(&ev.sk)?;
        let recent = ev.ts_ns <= d.ts_ns.saturating_add(DEPARTED_NS);
        // The socket itself says it is closed: a live socket at a reused address is not.
        let closed = ev.new_state == tcp_state::CLOSE;
        (recent && closed && d.lport == ev.lport && d.rport == ev.rport).then_some(d.owner)
    }

    /// Whether the event's endpoints are its socket's own, so it can name a socket known only
    /// from the start-up snapshot: not a SYN-ACK resent for a listener's queued connection, a
    /// reset sent for a segment, or a dropped packet (their endpoints are the packet's, and the
    /// socket may be its listener).
    fn names_its_socket(ev: &SockEvent) -> bool {
        match ev.kind {
            kind::RETRANSMIT => ev.arg == 0,
            kind::RESET => ev.ret == 1,
            kind::DROP => false,
            _ => true,
        }
    }

    /// Keeps the ephemeral usage in step with the socket's local port.
    fn recount(&mut self, sk: u64) {
        let Some(entry) = self.sockets.get_mut(&sk) else {
            return;
        };
        let wanted = (entry.lport != 0 && entry.protocol != 0 && !entry.port_returned)
            .then(|| (entry.usage_key(), entry.lport));
        if entry.counted == wanted {
            return;
        }
        let previous = std::mem::replace(&mut entry.counted, wanted);
        let comm = entry
            .owner()
            .map(|o| crate::text::comm_inline(o.comm_bytes()))
            .unwrap_or_default();
        if let Some((key, port)) = previous {
            self.usage.remove(key, port);
        }
        if let Some((key, port)) = wanted {
            self.usage.add(key, port, &comm);
        }
    }

    fn remove(&mut self, sk: u64) {
        self.stop_listening(sk);
        if let Some(entry) = self.sockets.remove(&sk) {
            if let Some(owner) = entry.owner().filter(|_| self.keep_departed) {
                let departed = Departed {
                    owner: *owner,
                    lport: entry.lport,
                    rport: entry.rport,
                    ts_ns: entry.last_seen,
                };
                self.departed
                    .pop_while(|d| d.ts_ns + DEPARTED_NS < departed.ts_ns);
                self.departed.insert(sk, departed);
            }
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
mod tests;
