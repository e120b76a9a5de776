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

/// `serve` reports neither `socket()` nor the transitions before CLOSE: a socket born at the
/// address of one the table still holds (a TIME_WAIT hold, a socket released and waiting for
/// its CLOSE) is told apart by what cannot happen to the old one.
#[test]
fn without_births_a_reused_address_is_still_a_new_socket() {
    let hook = |kind, sk, pid, in_context: bool| SockEvent {
        flags: flag::FROM_HOOK
            | if in_context {
                flag::OWNER_IN_CONTEXT
            } else {
                0
            },
        ..ev(kind, sk, pid)
    };
    let established = |mut e: SockEvent| {
        e.new_state = tcp_state::ESTABLISHED;
        e
    };
    let mut t = SocketTable::default();
    // The agent (1) accepted a scrape and closed it: released, its CLOSE still to come.
    t.observe(&listen(0x1, 1, 9090));
    t.observe(&established(SockEvent {
        lport: 9090,
        ..hook(kind::ACCEPT, 0x2, 0, false)
    }));
    t.observe(&ev(kind::RELEASE, 0x2, 1));
    assert_eq!(t.len(), 2, "waits for its CLOSE");
    // Its memory goes to a connection on another process's listener.
    t.observe(&listen(0x3, 7, 80));
    let child = t.observe(&established(SockEvent {
        lport: 80,
        ..hook(kind::ACCEPT, 0x2, 0, false)
    }));
    assert_eq!(
        child.owner.unwrap().pid,
        7,
        "the new listener's, not the agent's"
    );
    assert_eq!(t.sockets[&0x2].owners.len(), 1);
    // Left in TIME_WAIT's hold by a client (8), then reused by another client's connect.
    let mut c = hook(kind::CONNECT, 0x4, 8, true);
    c.lport = 40000;
    c.rport = 80;
    t.observe(&c);
    t.observe(&state(
        0x4,
        tcp_state::SYN_SENT,
        tcp_state::ESTABLISHED,
        40000,
    ));
    t.observe(&state(
        0x4,
        tcp_state::ESTABLISHED,
        tcp_state::FIN_WAIT1,
        40000,
    ));
    let mut again = hook(kind::CONNECT, 0x4, 9, true);
    again.lport = 40001;
    let a = t.observe(&again);
    assert_eq!(a.owner.unwrap().pid, 9);
    assert_eq!(
        t.sockets[&0x4].owners.len(),
        1,
        "the old owner is not a holder"
    );
    // A released socket's address reused by a datagram socket's first send.
    t.observe(&ev(kind::RELEASE, 0x4, 9));
    let mut send = hook(kind::SENDMSG, 0x4, 10, true);
    send.protocol = IPPROTO_UDP;
    assert_eq!(t.observe(&send).owner.unwrap().pid, 10);
    assert_eq!(t.sockets[&0x4].owners.len(), 1);
    // A listener's own connection is the one made at SYN_RECV: kept.
    let syn = t.observe(&state(0x5, tcp_state::LISTEN, tcp_state::SYN_RECV, 80));
    assert_eq!(syn.owner.unwrap().pid, 7);
    t.observe(&ev(kind::SENDTO, 0x5, 7));
    let queued = t.observe(&established(SockEvent {
        lport: 80,
        ..hook(kind::ACCEPT, 0x5, 0, false)
    }));
    assert_eq!(queued.owner.unwrap().pid, 7);
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
        cgroup: 0,
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
        recv_q: 0,
        send_q: 0,
        drops: None,
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

fn at(kind: u16, sk: u64, lport: u16, rport: u16) -> SockEvent {
    let mut e = ev(kind, sk, 7);
    e.family = AF_INET;
    e.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    e.lport = lport;
    if rport != 0 {
        e.raddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.rport = rport;
    }
    e
}

/// Where a socket's port counts: per destination when connect() chose it; exclusively when
/// bind() gave it (then connect() keeps it so); nowhere once a transition into CLOSE gave it
/// back (a refused connect), unless it was bound by name.
#[test]
fn ports_count_where_the_kernel_holds_them() {
    let mut t = SocketTable::default();
    t.usage_mut().set_range(1, (40000, 40100));
    let scopes = |t: &SocketTable| -> Vec<(&'static str, Option<u16>, usize)> {
        let mut v: Vec<_> = t
            .usage()
            .report()
            .into_iter()
            .map(|u| (u.scope, u.rport, u.in_use))
            .collect();
        v.sort();
        v
    };
    // connect() chose 40001 for :80.
    t.observe(&ev(kind::SOCKET, 0xa, 7));
    t.observe(&at(kind::CONNECT, 0xa, 40001, 80));
    // bind(0) gave 40002, then connect() to :80 keeps it exclusively.
    t.observe(&ev(kind::SOCKET, 0xb, 7));
    t.observe(&at(kind::BIND, 0xb, 40002, 0));
    t.observe(&at(kind::CONNECT, 0xb, 40002, 80));
    assert_eq!(
        scopes(&t),
        vec![("destination", Some(80), 1), ("exclusive", None, 1)]
    );
    // A refused connect: SYN_SENT → CLOSE gives 40001 back though the socket lingers.
    let mut refused = state(0xa, tcp_state::SYN_SENT, tcp_state::CLOSE, 40001);
    refused.sk_err = 111;
    t.observe(&refused);
    assert_eq!(
        scopes(&t),
        vec![("destination", Some(80), 0), ("exclusive", None, 1)]
    );
    // A port bound by name stays held through CLOSE.
    t.observe(&ev(kind::SOCKET, 0xc, 7));
    t.observe(&at(kind::BIND, 0xc, 40050, 0));
    t.observe(&state(0xc, tcp_state::SYN_SENT, tcp_state::CLOSE, 40050));
    assert_eq!(scopes(&t)[1], ("exclusive", None, 2));
}

/// A connect() the kernel found no port for counts against its destination, which the
/// failure names without a local address; an IPv6 socket talking IPv4 counts as IPv4.
#[test]
fn failed_connects_and_mapped_addresses_find_their_destination() {
    let mut t = SocketTable::default();
    t.usage_mut().set_range(1, (40000, 40000));
    t.observe(&ev(kind::SOCKET, 0xa, 7));
    t.observe(&at(kind::CONNECT, 0xa, 40000, 80));
    let mut failed = state(0xd, tcp_state::SYN_SENT, tcp_state::CLOSE, 0);
    failed.family = AF_INET6;
    failed.raddr[10..12].copy_from_slice(&[0xff, 0xff]);
    failed.raddr[12..].copy_from_slice(&[127, 0, 0, 1]);
    failed.rport = 80;
    failed.pid = 7;
    failed.comm[..4].copy_from_slice(b"curl");
    t.observe(&failed);
    let report = t.usage().report();
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!((report[0].in_use, report[0].failed), (1, 1));
    assert_eq!(report[0].laddr.unwrap().to_string(), "127.0.0.1");
    assert_eq!(report[0].processes[0], "curl");
}

/// A connection that closed first leaves a TIME_WAIT socket holding its port for its
/// destination: 60 s, or a second on loopback (`tcp_tw_reuse` 2, the default) where
/// `connect()` may take it over. Who left it is remembered.
#[test]
fn time_wait_holds_the_port_for_its_destination() {
    let mut t = SocketTable::default();
    t.usage_mut().set_range(1, (40000, 40100));
    let remote = [198, 51, 100, 10];
    for (sk, lport, raddr) in [(0xa, 40001, remote), (0xb, 40002, [127, 0, 0, 1])] {
        t.observe(&ev(kind::SOCKET, sk, 7));
        let mut c = at(kind::CONNECT, sk, lport, 80);
        c.raddr[..4].copy_from_slice(&raddr);
        c.comm[..4].copy_from_slice(b"curl");
        c.new_state = tcp_state::ESTABLISHED;
        t.observe(&c);
        t.observe(&ev(kind::RELEASE, sk, 7));
        let mut closed = state(sk, tcp_state::FIN_WAIT2, tcp_state::CLOSE, lport);
        closed.ts_ns = 1_000;
        t.observe(&closed);
    }
    assert!(t.is_empty(), "the full sockets are gone");
    let held = |t: &SocketTable| -> Vec<(String, usize, usize)> {
        let mut v: Vec<_> = t
            .usage()
            .report()
            .into_iter()
            .map(|u| (u.remote().unwrap(), u.in_use, u.time_wait))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        held(&t),
        vec![
            ("127.0.0.1:80".to_string(), 1, 1),
            ("198.51.100.10:80".to_string(), 1, 1)
        ]
    );
    let owners: Vec<u32> = t
        .time_wait()
        .filter_map(|h| h.owner.map(|o| o.pid))
        .collect();
    assert_eq!(owners, vec![7, 7]);
    // The live view lists them, each with the process that closed it.
    let rows = crate::model::ports::rows_with_time_wait(&t);
    let mut shown: Vec<(u16, String, Option<u32>)> = rows
        .iter()
        .map(|r| (r.lport, r.state.to_string(), r.pid))
        .collect();
    shown.sort();
    assert_eq!(
        shown,
        vec![
            (40001, "TIME_WAIT".to_string(), Some(7)),
            (40002, "TIME_WAIT".to_string(), Some(7))
        ]
    );
    t.sweep(1_000 + 3_000_000_000);
    assert_eq!(
        held(&t),
        vec![
            ("127.0.0.1:80".to_string(), 0, 0),
            ("198.51.100.10:80".to_string(), 1, 1)
        ],
        "loopback's port is free for connect() after two seconds"
    );
    t.sweep(1_000 + 61_000_000_000);
    assert_eq!(held(&t)[1], ("198.51.100.10:80".to_string(), 0, 0));
}

/// Retransmits, resets and drops run in softirq and timers: charged to the socket's owner,
/// a queued connection's to its listener's, none to the task that was on the CPU.
#[test]
fn health_events_are_charged_to_the_socket_owner_never_the_cpu() {
    let mut t = SocketTable::default();
    let mut c = ev(kind::CONNECT, 0x1, 8);
    c.flags = flag::FROM_HOOK | flag::OWNER_IN_CONTEXT;
    c.lport = 40000;
    c.rport = 80;
    t.observe(&c);
    t.observe(&listen(0x2, 7, 80));
    let health = |kind, sk, lport| SockEvent {
        lport,
        pid: 99, // whoever was on the CPU: never used
        ..ev(kind, sk, 99)
    };
    let retransmit = t.observe(&health(kind::RETRANSMIT, 0x1, 40000));
    assert_eq!(retransmit.owner.unwrap().pid, 8);
    // A SYN-ACK resent for a connection in the listener's queue: `sk` is the listener.
    let mut synack = health(kind::RETRANSMIT, 0x2, 80);
    synack.arg = 1;
    assert_eq!(t.observe(&synack).owner.unwrap().pid, 7);
    // A drop at a request socket only the kernel knows: the listener's holders.
    assert_eq!(
        t.observe(&health(kind::DROP, 0x3, 80)).owner.unwrap().pid,
        7
    );
    // No socket at all: nobody.
    assert_eq!(t.observe(&health(kind::RESET, 0, 81)).owner, None);
    assert_eq!(t.observe(&health(kind::DROP, 0x4, 81)).owner, None);
    assert_eq!(t.len(), 2, "nothing added");
}
