//! A story's steps as data: what kind of step (the documents' names), what it tells (which
//! call, endpoints, ports, states, errno) and when. The sinks word them (`output::story_steps`).
use std::net::IpAddr;

use super::{Data, Role};
use crate::model::types::{Endpoint, EventKind, Family, Proto, SockState, TcpState};

/// What a step is: a call, a TCP transition the documents name, or something the kernel did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    Socket,
    Bind,
    Listen,
    Accept,
    /// The connection's own story begins: made by the kernel for one client.
    Accepted,
    Connect,
    SynSent,
    SynRecv,
    Handshake,
    /// This side sent the first FIN.
    CloseFirst,
    /// The peer sent the first FIN.
    ClosePeer,
    FinWait2,
    LastAck,
    TimeWait,
    Closed,
    /// Any other TCP transition.
    State,
    Data,
    /// UDP's first sendto() bound the socket.
    Autobind,
    Shutdown,
    Close,
    Release,
    Error,
    /// Open before tracing began.
    Snapshot,
    /// The kernel sent a segment again (no answer in time).
    Retransmit,
    /// An RST, sent or received.
    Reset,
    /// A packet of this socket the kernel dropped.
    Drop,
    /// A userland proxy's two sockets joined: this one carries the other's client on.
    Proxy,
}

impl StepKind {
    /// The short tag JSON carries (`what`).
    pub fn name(self) -> &'static str {
        use StepKind::*;
        match self {
            Snapshot => "snapshot",
            Socket => "socket",
            Accepted => "accepted",
            Bind => "bind",
            Listen => "listen",
            Accept => "accept",
            Connect => "connect",
            SynSent => "syn_sent",
            SynRecv => "syn_recv",
            Handshake => "handshake",
            CloseFirst => "close_first",
            ClosePeer => "close_peer",
            FinWait2 => "fin_wait2",
            LastAck => "last_ack",
            TimeWait => "time_wait",
            Closed => "closed",
            State => "state",
            Data => "data",
            Autobind => "autobind",
            Shutdown => "shutdown",
            Close => "close",
            Release => "release",
            Error => "error",
            Retransmit => "retransmit",
            Reset => "reset",
            Drop => "drop",
            Proxy => "proxy",
        }
    }
}

/// One numbered step. Its wording and its `--explain` sentence are the sinks' (by `what`,
/// `detail` and `role`).
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub ts_ns: u64,
    /// Nanoseconds since the socket's previous step (0 for the first).
    pub since_previous_ns: u64,
    pub what: StepKind,
    pub detail: StepDetail,
    /// The socket's role when the step was told.
    pub role: Role,
}

impl Step {
    /// A TCP transition: (before, after).
    pub fn transition(&self) -> Option<(TcpState, TcpState)> {
        match self.detail {
            StepDetail::Transition { old, new } => Some((old, new)),
            _ => None,
        }
    }
}

/// What a step tells, as data: which call, which endpoints and ports, which states, which
/// errno. Service names are the ones the book's lookup gave (None: unnamed).
#[derive(Clone, Debug, PartialEq)]
pub enum StepDetail {
    /// socket() returned `fd`.
    Socket {
        fd: i64,
        proto: Proto,
        family: Family,
    },
    /// bind() to the address and port the caller chose.
    Bind {
        local: Endpoint,
        service: Option<&'static str>,
    },
    /// bind() to port 0 on `addr`: the kernel chose `port`.
    BindChosen {
        addr: IpAddr,
        port: u16,
        service: Option<&'static str>,
    },
    Listen {
        backlog: i64,
    },
    /// The listener's side: accept() returned `fd`, the connection told as story `socket`;
    /// `peer_ephemeral`: the client's port lies in the ephemeral range.
    Accept {
        fd: i64,
        peer: Endpoint,
        peer_ephemeral: bool,
        socket: usize,
    },
    /// The connection's own side; `listener_traced`: its listener has a story.
    Accepted {
        fd: i64,
        peer: Endpoint,
        listener_traced: bool,
        /// How long it waited in the accept queue after its handshake.
        waited_ns: Option<u64>,
    },
    /// connect() to `remote` from `local` (`kernel_chose`: the kernel picked the local port).
    Connect {
        remote: Endpoint,
        service: Option<&'static str>,
        local: Endpoint,
        kernel_chose: bool,
    },
    /// A TCP transition (the step's `what` says which one the documents name).
    Transition {
        old: TcpState,
        new: TcpState,
    },
    /// A send on an unbound UDP socket: the kernel bound it to `port`.
    Autobind {
        call: EventKind,
        remote: Endpoint,
        port: u16,
    },
    Shutdown {
        how: Option<&'static str>,
    },
    Close {
        fd: i32,
    },
    Release,
    /// The kernel refused `call` (to `end`: bind's local end, connect's remote; none for
    /// accept).
    Failed {
        call: EventKind,
        end: Option<Endpoint>,
        errno: String,
    },
    /// Open before tracing began.
    Snapshot {
        proto: Proto,
        local: Endpoint,
        state: SockState,
        remote: Option<Endpoint>,
    },
    /// A segment sent again: `what` is syn, synack or data; the `count`th of its kind on
    /// this socket; `waited_ns`: since the connect's first SYN (a SYN's only).
    Retransmit {
        what: &'static str,
        count: u32,
        waited_ns: Option<u64>,
    },
    /// An RST `direction` (sent, received) in `state`, with the kernel's reason when sent.
    Reset {
        direction: &'static str,
        state: Option<TcpState>,
        reason: Option<String>,
    },
    /// A packet dropped, with the kernel's reason.
    Drop {
        reason: String,
    },
    /// A proxy's accepted socket (`front`: true) or its second connection, joined: the client,
    /// the published port, the target and its container, and the other socket's story.
    Proxy {
        front: bool,
        client: Endpoint,
        published: Endpoint,
        target: Endpoint,
        container: String,
        other: Option<usize>,
    },
    /// Bytes each way over the socket's life; UDP's with its peers.
    Data {
        udp: bool,
        data: Data,
        peers: Vec<Endpoint>,
    },
}

/// A call the kernel refused, and its errno.
#[derive(Clone, Debug, PartialEq)]
pub struct CallError {
    pub call: EventKind,
    pub errno: String,
}

/// A port a program listened on.
#[derive(Clone, Debug, PartialEq)]
pub struct Listening {
    pub proto: Proto,
    /// None: the listener's address is not known.
    pub addr: Option<IpAddr>,
    pub port: u16,
    pub service: Option<&'static str>,
}
