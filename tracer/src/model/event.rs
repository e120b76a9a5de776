//! The enriched event the sinks print: the raw record plus what the agent knows (owner from the
//! socket table, port classes, the netns's ephemeral range, errno names, wall-clock time).
//!
//! JSON field names are stable; they are documented in the README.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use compact_str::{format_compact, CompactString};
use serde::Serialize;
use tracer_common::{flag, kind, tcp_state, PortClass, SockEvent, AF_INET6, IPPROTO_TCP};

use super::health;
use super::table::{Attribution, Owner};
use super::types::{Endpoint, EventKind, Family, Proto, TcpState};

/// Converts the kernel's monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// realtime − monotonic, in nanoseconds.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
            .unwrap_or(0);
        let real = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
            .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
            .unwrap_or(0);
        Clock {
            offset_ns: real - mono,
        }
    }

    /// realtime − monotonic, in nanoseconds (what a capture records).
    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    /// The clock a capture recorded.
    pub fn with_offset(offset_ns: i128) -> Self {
        Clock { offset_ns }
    }

    /// A clock whose wall time equals the monotonic time (tests, replays).
    pub fn identity() -> Self {
        Clock { offset_ns: 0 }
    }

    pub fn wall_ns(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).max(0) as u64
    }
}

/// The kernel's monotonic clock (what `bpf_ktime_get_ns` and event timestamps count), in ns.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

pub fn event_name(k: u16) -> &'static str {
    EventKind::from_number(k).name()
}

/// The kind an event name stands for (the inverse of [`event_name`]).
pub fn event_kind(name: &str) -> Option<u16> {
    (1..kind::COUNT).find(|&k| event_name(k) == name)
}

/// Every event name `--events` accepts, in kind order.
pub const EVENT_NAMES: &[&str] = &[
    "socket",
    "bind",
    "listen",
    "accept",
    "connect",
    "close",
    "shutdown",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "state",
    "release",
    "retransmit",
    "reset",
    "drop",
];

/// A TCP `connect()` the kernel found no local port for: SYN_SENT → CLOSE without a port and
/// without a socket error. `tcp_v4_connect`/`tcp_v6_connect` enter SYN_SENT before
/// `inet_hash_connect` looks for a port and go back to CLOSE when it finds none
/// (EADDRNOTAVAIL: every port of the range is taken for this destination); a refused, reset
/// or timed-out handshake had a port and sets `sk_err`.
pub fn found_no_port(ev: &SockEvent) -> bool {
    ev.kind == kind::STATE
        && ev.old_state == tcp_state::SYN_SENT
        && ev.new_state == tcp_state::CLOSE
        && ev.lport == 0
        && ev.rport != 0
        && ev.sk_err == 0
}

/// The errno a TCP connect failed with, from its transition SYN_SENT → CLOSE (None for any
/// other record): the socket's pending error, or EADDRNOTAVAIL when it found no port.
pub fn failed_connect(ev: &SockEvent) -> Option<CompactString> {
    if ev.kind != kind::STATE
        || ev.old_state != tcp_state::SYN_SENT
        || ev.new_state != tcp_state::CLOSE
    {
        return None;
    }
    if found_no_port(ev) {
        return Some(CompactString::const_new("EADDRNOTAVAIL"));
    }
    (ev.sk_err > 0)
        .then(|| errno_name(-i64::from(ev.sk_err)))
        .flatten()
}

pub fn errno_name(ret: i64) -> Option<CompactString> {
    use nix::errno::Errno;
    // No negation: a return of i64::MIN (only ever from a corrupt record) must not overflow.
    let code = ret.unsigned_abs();
    (ret < 0).then(|| match i32::try_from(code).map(Errno::from_raw) {
        Ok(Errno::UnknownErrno) | Err(_) => format_compact!("E{code}"),
        Ok(e) => format_compact!("{e:?}"),
    })
}

pub fn ip(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

pub fn proto_name(protocol: u8) -> &'static str {
    Proto::from_number(protocol).name()
}

/// A kernel `comm` (NUL-padded) as text: [`crate::text::comm_inline`], the one decoder of
/// names, without an allocation.
pub fn comm_str(comm: &[u8; 16]) -> CompactString {
    crate::text::comm_inline(comm)
}

/// A kernel socket identity (`struct sock *`), written `0x…` as `{:#x}` writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockId(pub u64);

impl SockId {
    /// Appends `0x` and the hex digits to `out`, in place (no formatter, no allocation).
    pub fn write_hex(self, out: &mut Vec<u8>) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let digits = (64 - self.0.leading_zeros()).div_ceil(4).max(1) as usize;
        let at = out.len();
        out.extend_from_slice(b"0x0000000000000000");
        out.truncate(at + 2 + digits);
        for (i, byte) in out[at + 2..].iter_mut().enumerate() {
            *byte = DIGITS[(self.0 >> ((digits - 1 - i) * 4)) as usize & 15];
        }
    }
}

impl std::fmt::Display for SockId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = Vec::with_capacity(18);
        self.write_hex(&mut text);
        f.write_str(std::str::from_utf8(&text).map_err(|_| std::fmt::Error)?)
    }
}

impl Serialize for SockId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Whether `port` lies in the namespace's ephemeral range (None: range unknown).
fn in_range(port: u16, range: Option<(u16, u16)>) -> Option<bool> {
    range.map(|(lo, hi)| (lo..=hi).contains(&port))
}

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub event: EventKind,
    /// The owning process (None for a TCP transition on a socket tracer has not seen).
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    /// The process's name (thread-group leader), as `ps` and `ss` show it.
    pub comm: Option<CompactString>,
    /// The name of the thread that made the call (`dig`'s sockets come from `isc-net-0000`).
    pub thread: Option<CompactString>,
    pub uid: Option<u32>,
    pub netns: u32,
    pub fd: Option<i32>,
    pub proto: Proto,
    pub family: Family,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    /// The call's return value (None from a socket hook, which sees no call return).
    pub ret: Option<i64>,
    pub errno: Option<CompactString>,
    /// listen(2) backlog.
    pub backlog: Option<i64>,
    /// shutdown(2) how: SHUT_RD, SHUT_WR, SHUT_RDWR.
    pub how: Option<&'static str>,
    /// Bytes sent or received (UDP send/recv events).
    pub bytes: Option<i64>,
    /// TCP state before a transition (state events).
    pub old_state: Option<TcpState>,
    /// TCP state after the call or transition.
    pub state: Option<TcpState>,
    pub lport_class: &'static str,
    pub lport_in_ephemeral_range: Option<bool>,
    /// The kernel picked the local port (bind to port 0, connect or sendto on an unbound socket).
    pub lport_kernel_chosen: bool,
    pub rport_class: Option<&'static str>,
    pub rport_in_ephemeral_range: Option<bool>,
    /// The netns's ephemeral port range `[low, high]`, when known.
    pub ephemeral_range: Option<(u16, u16)>,
    /// Kernel socket identity (`struct sock *`), the key that ties events together.
    pub sock: SockId,
    /// accept: the listening socket the connection came from.
    pub listener: Option<SockId>,
    /// The caller passed a sockaddr tracer could not read (wrong length or family).
    pub bad_sockaddr: bool,
    /// retransmit: what was sent again — `syn`, `synack` or `data`.
    pub retransmit: Option<&'static str>,
    /// reset: `sent` or `received`.
    pub reset: Option<&'static str>,
    /// drop: the kernel's drop reason (`NO_SOCKET`, `TCP_LISTEN_OVERFLOW` …); a sent reset:
    /// the kernel's reset reason. Names as this kernel's BTF spells them.
    pub reason: Option<CompactString>,
    /// The transition that ended a connect's handshake (ESTABLISHED, or CLOSE when it
    /// failed): nanoseconds since its first SYN, and how many SYNs were sent again.
    pub connect_ns: Option<u64>,
    pub syn_retransmits: Option<u16>,
    /// accept (syscall path): nanoseconds the connection waited in the accept queue.
    pub accept_wait_ns: Option<u64>,
    /// A server's `SYN_RECV -> ESTABLISHED`: the handshake's SYN-ACK round trip as the kernel
    /// timed it (none when its SYN-ACK had to be sent again).
    pub handshake_ns: Option<u64>,
    /// The transition into CLOSE: nanoseconds since the socket's first SYN, its completed
    /// handshake or its first event (unknown for a socket older than tracer).
    pub lifetime_ns: Option<u64>,
    /// The owner's container (None: not known; the host is a container of its own,
    /// [`Container::is_host`]). Set by the stage, which asks the system.
    #[serde(flatten, serialize_with = "super::container::serialize_fields")]
    pub container: Option<std::sync::Arc<super::container::Container>>,
}

impl Event {
    pub fn new(
        ev: &SockEvent,
        attribution: &Attribution,
        port_range: Option<(u16, u16)>,
        clock: &Clock,
    ) -> Self {
        let owner: Option<Owner> = attribution.owner;
        let lport = if ev.lport == 0 {
            attribution.lport
        } else {
            ev.lport
        };
        let (old_state, state) = states(ev);
        // A socket hook's event: no fd, no return value, no byte count.
        let hook = ev.flags & flag::FROM_HOOK != 0;
        let has_remote = ev.rport != 0 || ev.raddr != [0; 16];
        let comm = owner.map(|o| comm_str(&o.comm));
        // A single-threaded process's thread has its name: decoded once.
        let thread = owner.map(|o| match &comm {
            Some(comm) if o.thread == o.comm => comm.clone(),
            _ => comm_str(&o.thread),
        });
        Event {
            ts_ns: clock.wall_ns(ev.ts_ns),
            event: EventKind::from_number(ev.kind),
            pid: owner.map(|o| o.pid),
            tid: owner.map(|o| o.tid),
            comm,
            thread,
            uid: owner.map(|o| o.uid),
            netns: ev.netns,
            fd: fd(ev),
            proto: Proto::of_socket(ev.protocol, ev.sock_type),
            family: Family::from_af(ev.family),
            laddr: ip(ev.family, &ev.laddr),
            lport,
            raddr: ip(ev.family, &ev.raddr),
            rport: ev.rport,
            // A health event's only result is a retransmit's (the resend may fail).
            ret: (!hook && !matches!(ev.kind, kind::RESET | kind::DROP)).then_some(ev.ret),
            errno: if hook || matches!(ev.kind, kind::RESET | kind::DROP) {
                None
            } else if ev.kind == kind::STATE {
                // A transition into CLOSE with the socket's pending error: a connect refused,
                // reset or timed out (how the socket path sees a failed connect).
                if found_no_port(ev) {
                    Some(CompactString::const_new("EADDRNOTAVAIL"))
                } else {
                    (ev.sk_err > 0)
                        .then(|| errno_name(-i64::from(ev.sk_err)))
                        .flatten()
                }
            } else {
                errno_name(ev.ret)
            },
            backlog: (ev.kind == kind::LISTEN).then_some(ev.arg),
            how: (ev.kind == kind::SHUTDOWN).then_some(match ev.arg {
                0 => "SHUT_RD",
                1 => "SHUT_WR",
                _ => "SHUT_RDWR",
            }),
            bytes: (EventKind::from_number(ev.kind).is_transfer() && !hook).then(|| ev.ret.max(0)),
            old_state,
            state,
            lport_class: PortClass::of(lport).as_str(),
            lport_in_ephemeral_range: in_range(lport, port_range),
            lport_kernel_chosen: attribution.kernel_chose_port
                || ev.flags & flag::KERNEL_CHOSE_PORT != 0,
            rport_class: has_remote.then(|| PortClass::of(ev.rport).as_str()),
            rport_in_ephemeral_range: in_range(ev.rport, port_range).filter(|_| has_remote),
            ephemeral_range: port_range,
            sock: SockId(ev.sk),
            listener: (ev.kind == kind::ACCEPT && ev.parent_sk != 0)
                .then_some(SockId(ev.parent_sk)),
            bad_sockaddr: ev.flags & flag::BAD_SOCKADDR != 0,
            retransmit: (ev.kind == kind::RETRANSMIT).then(|| health::retransmitted(ev)),
            reset: (ev.kind == kind::RESET).then(|| health::reset_direction(ev)),
            reason: match ev.kind {
                kind::DROP => Some(health::drop_reason(ev.arg as u32)),
                kind::RESET if ev.ret == 0 => Some(health::reset_reason(ev.arg as u32)),
                _ => None,
            },
            connect_ns: attribution.latency.connect_ns,
            syn_retransmits: attribution.latency.syn_retransmits,
            accept_wait_ns: attribution.latency.accept_wait_ns,
            handshake_ns: (ev.kind == kind::STATE
                && ev.old_state == tcp_state::SYN_RECV
                && ev.new_state == tcp_state::ESTABLISHED
                && ev.arg > 0)
                .then(|| ev.arg as u64 * 1000),
            lifetime_ns: attribution.latency.lifetime_ns,
            container: None,
        }
    }

    /// The call returned, or is a non-blocking connect still under way (EINPROGRESS).
    /// The return value, 0 where none is known (a socket hook runs once the call took effect).
    pub fn ret_or_zero(&self) -> i64 {
        self.ret.unwrap_or(0)
    }

    pub fn reached(&self) -> bool {
        // A socket hook runs once the call took effect.
        self.ret.is_none_or(|ret| ret == 0) || self.in_progress()
    }

    /// A non-blocking connect returned EINPROGRESS: the handshake goes on.
    pub fn in_progress(&self) -> bool {
        self.ret == Some(-(libc::EINPROGRESS as i64))
    }

    /// The local end.
    pub fn local(&self) -> Endpoint {
        Endpoint::new(self.laddr, self.lport)
    }

    /// The remote end.
    pub fn remote(&self) -> Endpoint {
        Endpoint::new(self.raddr, self.rport)
    }

    pub fn comm_or_dash(&self) -> &str {
        self.comm.as_deref().unwrap_or("-")
    }
}

/// The descriptor an event names: accept's new one, none for what the kernel did on its own.
fn fd(ev: &SockEvent) -> Option<i32> {
    if ev.flags & flag::FROM_HOOK != 0 {
        return None;
    }
    match ev.kind {
        kind::STATE | kind::RELEASE | kind::RETRANSMIT | kind::RESET | kind::DROP => None,
        kind::ACCEPT if ev.ret >= 0 => Some(ev.ret as i32),
        _ => Some(ev.fd),
    }
}

/// (state before, state after): both for a transition, the state after for a TCP call.
fn states(ev: &SockEvent) -> (Option<TcpState>, Option<TcpState>) {
    if ev.kind == kind::STATE {
        (
            Some(TcpState::from_number(ev.old_state)),
            Some(state_after(ev)),
        )
    } else if ev.protocol == IPPROTO_TCP && ev.new_state != 0 {
        (None, Some(TcpState::from_number(ev.new_state)))
    } else {
        (None, None)
    }
}

/// The state a transition leads to, as a user means it. The kernel hands a closing connection
/// to a timewait socket and moves the full socket from FIN_WAIT2 (or CLOSING) straight to
/// CLOSE; with no error pending (a reset would have set `sk_err`), that is TIME_WAIT.
pub fn state_after(ev: &SockEvent) -> TcpState {
    let into_time_wait = ev.new_state == tcp_state::CLOSE
        && matches!(ev.old_state, tcp_state::FIN_WAIT2 | tcp_state::CLOSING)
        && ev.sk_err == 0;
    if into_time_wait {
        TcpState::TimeWait
    } else {
        TcpState::from_number(ev.new_state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sock_ids_are_what_the_formatter_writes() {
        for sk in [0, 1, 0xf, 0x10, 0xffff_8881_310f_8940, u64::MAX, 1 << 63] {
            assert_eq!(SockId(sk).to_string(), format!("{sk:#x}"));
        }
    }

    #[test]
    fn errno_names_never_overflow() {
        assert_eq!(errno_name(-111).as_deref(), Some("ECONNREFUSED"));
        assert_eq!(errno_name(-4000).as_deref(), Some("E4000"));
        assert_eq!(
            errno_name(i64::MIN).as_deref(),
            Some("E9223372036854775808")
        );
        assert_eq!(errno_name(0), None);
    }

    fn owner() -> Attribution {
        Attribution {
            owner: Some(Owner {
                pid: 10,
                tid: 11,
                uid: 0,
                comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
                thread: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
                cgroup: 0,
            }),
            kernel_chose_port: false,
            lport: 0,
            latency: Default::default(),
        }
    }

    #[test]
    fn connect_with_kernel_chosen_port() {
        let ev = SockEvent {
            kind: kind::CONNECT,
            family: tracer_common::AF_INET,
            protocol: IPPROTO_TCP,
            lport: 40001,
            rport: 443,
            laddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            raddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ret: -115,
            new_state: tcp_state::SYN_SENT,
            flags: flag::KERNEL_CHOSE_PORT,
            fd: 3,
            ..Default::default()
        };
        let e = Event::new(&ev, &owner(), Some((32768, 60999)), &Clock::identity());
        assert_eq!(e.errno.as_deref(), Some("EINPROGRESS"));
        assert!(e.lport_kernel_chosen);
        assert_eq!(e.lport_class, "registered");
        assert_eq!(e.lport_in_ephemeral_range, Some(true));
        assert_eq!(e.rport_class, Some("well-known"));
        assert_eq!(e.rport_in_ephemeral_range, Some(false));
        assert_eq!(e.state, Some(TcpState::SynSent));
        assert_eq!(e.comm.as_deref(), Some("curl"));
        assert_eq!(e.laddr.to_string(), "127.0.0.1");
    }

    #[test]
    fn time_wait_is_named() {
        let mut ev = SockEvent {
            kind: kind::STATE,
            old_state: tcp_state::FIN_WAIT2,
            new_state: tcp_state::CLOSE,
            ..Default::default()
        };
        assert_eq!(state_after(&ev), TcpState::TimeWait);
        ev.sk_err = 104; // ECONNRESET: a reset, not a timewait hand-off
        assert_eq!(state_after(&ev), TcpState::Close);
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(-111).as_deref(), Some("ECONNREFUSED"));
        assert_eq!(errno_name(-98).as_deref(), Some("EADDRINUSE"));
        assert_eq!(errno_name(0), None);
    }

    #[test]
    fn json_field_names_are_stable() {
        let e = Event::new(&SockEvent::default(), &owner(), None, &Clock::identity());
        let v = serde_json::to_value(&e).unwrap();
        // (The record's `"type":"event"` tag is the output's: output::json_event writes it.)
        for key in [
            "ts_ns",
            "event",
            "pid",
            "tid",
            "comm",
            "thread",
            "uid",
            "netns",
            "fd",
            "proto",
            "family",
            "laddr",
            "lport",
            "raddr",
            "rport",
            "ret",
            "errno",
            "backlog",
            "state",
            "old_state",
            "lport_class",
            "lport_in_ephemeral_range",
            "lport_kernel_chosen",
            "rport_class",
            "sock",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
    }
}
