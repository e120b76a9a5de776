//! The model's vocabulary as types: protocol, address family, TCP state, event kind, an
//! endpoint and a socket's key. The model matches on these, never on the text a person reads;
//! each has one name (the kernel's or the JSON's spelling) for the sinks to print.
use std::fmt;
use std::net::IpAddr;

use tracer_common::{kind, tcp_state, SockEvent, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};

/// Prints a type by its name (padding and alignment honoured, for the tables).
macro_rules! display_by_name {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.name())
            }
        }
    )*};
}

display_by_name!(Proto, TcpState, SockState, EventKind);

/// A transport protocol. Ordered by name, as the views have always sorted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    /// Any other IP protocol number (0: unknown).
    Other(u8),
}

impl Proto {
    /// From an IP protocol number.
    pub fn from_number(protocol: u8) -> Self {
        match protocol {
            IPPROTO_TCP => Proto::Tcp,
            IPPROTO_UDP => Proto::Udp,
            other => Proto::Other(other),
        }
    }

    /// From its name (`tcp`, `udp`), as runtimes and rules write it.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }

    /// From a socket call: the protocol number, or the socket type when the caller passed 0
    /// (SOCK_STREAM is TCP, SOCK_DGRAM is UDP).
    pub fn of_socket(protocol: u8, sock_type: u8) -> Self {
        match (Proto::from_number(protocol), sock_type) {
            (p @ (Proto::Tcp | Proto::Udp), _) => p,
            (_, 1) => Proto::Tcp,
            (_, 2) => Proto::Udp,
            _ => Proto::Other(0),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Other(1) => "icmp",
            Proto::Other(58) => "icmpv6",
            Proto::Other(132) => "sctp",
            Proto::Other(_) => "-",
        }
    }
}

impl Ord for Proto {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let number = |p: &Proto| match *p {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
            Proto::Other(n) => n,
        };
        (self.name(), number(self)).cmp(&(other.name(), number(other)))
    }
}

impl PartialOrd for Proto {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A port's service name for a protocol (`443`/tcp → `https`), or None. The sinks look names up
/// (`output::services`); the model, which does no I/O, takes the lookup as a value.
pub type PortNames = fn(u16, Proto) -> Option<&'static str>;

/// Names no port: where nothing asked for service names.
pub fn no_names(_port: u16, _proto: Proto) -> Option<&'static str> {
    None
}

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// From `AF_*` (anything but AF_INET6 counts as IPv4, as the kernel records do).
    pub fn from_af(family: u16) -> Self {
        if family == AF_INET6 {
            Family::V6
        } else {
            Family::V4
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

/// A TCP state, numbered as the kernel numbers them (`include/net/tcp_states.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    BoundInactive,
    Unknown(u8),
}

impl TcpState {
    pub fn from_number(state: u8) -> Self {
        use TcpState::*;
        match state {
            tcp_state::ESTABLISHED => Established,
            tcp_state::SYN_SENT => SynSent,
            tcp_state::SYN_RECV => SynRecv,
            tcp_state::FIN_WAIT1 => FinWait1,
            tcp_state::FIN_WAIT2 => FinWait2,
            tcp_state::TIME_WAIT => TimeWait,
            tcp_state::CLOSE => Close,
            tcp_state::CLOSE_WAIT => CloseWait,
            tcp_state::LAST_ACK => LastAck,
            tcp_state::LISTEN => Listen,
            tcp_state::CLOSING => Closing,
            12 => NewSynRecv,
            13 => BoundInactive,
            other => Unknown(other),
        }
    }

    /// The name as the kernel spells it, without `TCP_`: SYN_SENT, TIME_WAIT, …
    pub fn name(self) -> &'static str {
        use TcpState::*;
        match self {
            Established => "ESTABLISHED",
            SynSent => "SYN_SENT",
            SynRecv => "SYN_RECV",
            FinWait1 => "FIN_WAIT1",
            FinWait2 => "FIN_WAIT2",
            TimeWait => "TIME_WAIT",
            Close => "CLOSE",
            CloseWait => "CLOSE_WAIT",
            LastAck => "LAST_ACK",
            Listen => "LISTEN",
            Closing => "CLOSING",
            NewSynRecv => "NEW_SYN_RECV",
            BoundInactive => "BOUND_INACTIVE",
            Unknown(_) => "UNKNOWN",
        }
    }

    /// The connection is over: CLOSE or TIME_WAIT.
    pub fn is_over(self) -> bool {
        matches!(self, TcpState::Close | TcpState::TimeWait)
    }
}

/// What the ports views show as a socket's state: a TCP state, or what a UDP socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SockState {
    Tcp(TcpState),
    /// UDP without a peer (`ss` spells it UNCONN).
    Unconnected,
    /// UDP with a peer (`ss` spells it ESTAB; tracer ESTABLISHED).
    Connected,
    /// A UDP socket released.
    Closed,
    /// A TCP socket whose state is not known yet.
    Unknown,
}

impl SockState {
    pub fn name(self) -> &'static str {
        match self {
            SockState::Tcp(s) => s.name(),
            SockState::Unconnected => "UNCONN",
            SockState::Connected => "ESTABLISHED",
            SockState::Closed => "CLOSED",
            SockState::Unknown => "-",
        }
    }

    /// Over: CLOSE, TIME_WAIT, or a released UDP socket.
    pub fn is_closed(self) -> bool {
        match self {
            SockState::Tcp(s) => s.is_over(),
            SockState::Closed => true,
            _ => false,
        }
    }
}

/// What a socket event reports: `tracer-common`'s kind numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Socket,
    Bind,
    Listen,
    Accept,
    Connect,
    Close,
    Shutdown,
    Sendto,
    Recvfrom,
    Sendmsg,
    Recvmsg,
    State,
    Release,
    Data,
    Retransmit,
    Reset,
    Drop,
    Unknown(u16),
}

impl EventKind {
    /// Every kind a user can select (`--events`), in kind order.
    pub const SELECTABLE: [EventKind; 16] = [
        EventKind::Socket,
        EventKind::Bind,
        EventKind::Listen,
        EventKind::Accept,
        EventKind::Connect,
        EventKind::Close,
        EventKind::Shutdown,
        EventKind::Sendto,
        EventKind::Recvfrom,
        EventKind::Sendmsg,
        EventKind::Recvmsg,
        EventKind::State,
        EventKind::Release,
        EventKind::Retransmit,
        EventKind::Reset,
        EventKind::Drop,
    ];

    pub fn from_number(k: u16) -> Self {
        use EventKind::*;
        match k {
            kind::SOCKET => Socket,
            kind::BIND => Bind,
            kind::LISTEN => Listen,
            kind::ACCEPT => Accept,
            kind::CONNECT => Connect,
            kind::CLOSE => Close,
            kind::SHUTDOWN => Shutdown,
            kind::SENDTO => Sendto,
            kind::RECVFROM => Recvfrom,
            kind::SENDMSG => Sendmsg,
            kind::RECVMSG => Recvmsg,
            kind::STATE => State,
            kind::RELEASE => Release,
            kind::DATA => Data,
            kind::RETRANSMIT => Retransmit,
            kind::RESET => Reset,
            kind::DROP => Drop,
            other => Unknown(other),
        }
    }

    /// The name of the call (or `state`, `release`, `data`), as `--events` and JSON spell it.
    pub fn name(self) -> &'static str {
        use EventKind::*;
        match self {
            Socket => "socket",
            Bind => "bind",
            Listen => "listen",
            Accept => "accept",
            Connect => "connect",
            Close => "close",
            Shutdown => "shutdown",
            Sendto => "sendto",
            Recvfrom => "recvfrom",
            Sendmsg => "sendmsg",
            Recvmsg => "recvmsg",
            State => "state",
            Release => "release",
            Data => "data",
            Retransmit => "retransmit",
            Reset => "reset",
            Drop => "drop",
            Unknown(_) => "unknown",
        }
    }

    /// A datagram call: sendto, recvfrom, sendmsg, recvmsg.
    pub fn is_transfer(self) -> bool {
        use EventKind::*;
        matches!(self, Sendto | Recvfrom | Sendmsg | Recvmsg)
    }
}

/// An address and a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

impl Endpoint {
    pub fn new(addr: IpAddr, port: u16) -> Self {
        Endpoint { addr, port }
    }
}

/// `127.0.0.1:8080`, `[::1]:443`: the one way tracer writes an endpoint.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self.addr {
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
            IpAddr::V4(a) => format!("{a}:{}", self.port),
        };
        f.pad(&text)
    }
}

/// A socket's full identity as user space sees it: namespace, protocol, family and both ends
/// (address bytes and port) as the kernel records them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub netns: u32,
    pub protocol: u8,
    pub family: u16,
    pub local: ([u8; 16], u16),
    pub remote: ([u8; 16], u16),
}

/// The key of anything with the kernel's socket fields (`netns`, `protocol`, `family`,
/// `laddr`, `lport`, `raddr`, `rport`): an event, a tracked socket, a snapshot entry.
macro_rules! sock_key {
    ($s:expr) => {
        $crate::model::types::SockKey {
            netns: $s.netns,
            protocol: $s.protocol,
            family: $s.family,
            local: ($s.laddr, $s.lport),
            remote: ($s.raddr, $s.rport),
        }
    };
}
pub(crate) use sock_key;

impl SockKey {
    pub fn of_event(ev: &SockEvent) -> Self {
        sock_key!(ev)
    }

    /// The same socket without a peer (a UDP socket's events name single datagrams' peers).
    pub fn unconnected(self) -> Self {
        SockKey {
            remote: ([0; 16], 0),
            ..self
        }
    }
}

/// Whether the TCP health hooks (retransmits, resets, drops) are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Health {
    #[default]
    Off,
    /// Asked for by name (`--events retransmit,…`): a kernel without them is an error.
    Required,
    /// Part of what is shown by default: a kernel without them is said once, then gone
    /// without.
    IfPresent,
}

/// Where the socket events come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KernelPath {
    /// cgroup socket programs and `sock_ops` at the cgroup v2 root: run only when a socket
    /// does something, cost nothing to other syscalls; no fd, no return values, no close.
    #[default]
    Sockets,
    /// Syscall tracepoints (enter/exit of socket, bind, listen, accept, connect, close …):
    /// every fd and return value, at the price of every syscall on the machine taking the
    /// kernel's slow tracing path.
    Syscalls,
}

impl KernelPath {
    /// Its one name (JSON `ready` records, `doctor`).
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Sockets => "sockets",
            KernelPath::Syscalls => "syscalls",
        }
    }

    /// The path a list of attached hooks took (as the ready record and captures list them):
    /// None when it has no socket events (NAT alone).
    pub fn of_hooks(hooks: &[String]) -> Option<Self> {
        if hooks.iter().any(|h| h.starts_with("tracepoint/syscalls/")) {
            Some(KernelPath::Syscalls)
        } else if hooks.iter().any(|h| h.starts_with("cgroup/sock_create")) {
            Some(KernelPath::Sockets)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names_agree_with_tracer_common() {
        for n in 0..=20u8 {
            assert_eq!(
                TcpState::from_number(n).name(),
                tracer_common::tcp_state_name(n)
            );
        }
        for k in EventKind::SELECTABLE {
            let n = (1..kind::COUNT)
                .find(|&n| EventKind::from_number(n) == k)
                .unwrap();
            assert_eq!(EventKind::from_number(n).name(), k.name());
        }
    }

    #[test]
    fn one_endpoint_format() {
        let v6 = Endpoint::new("::1".parse().unwrap(), 443);
        let v4 = Endpoint::new("127.0.0.1".parse().unwrap(), 8080);
        assert_eq!(v6.to_string(), "[::1]:443");
        assert_eq!(v4.to_string(), "127.0.0.1:8080");
        assert_eq!(format!("{v4:<16}|"), "127.0.0.1:8080  |");
    }
}
