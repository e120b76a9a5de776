//! Every record the NAT, story and remote-group writers make, as text and JSON, held by insta
//! snapshots: moving spelling out of the model (JSON `type` tags, step wording) must not
//! change a byte.
use std::collections::HashMap;

use tracer_common::{
    flag, kind, nat as knat, tcp_state as st, DataTotals, NatCounters, NatEvent, SockEvent,
    AF_INET, IPPROTO_TCP, IPPROTO_UDP,
};

use crate::model::{
    nat::{
        fixtures::{ct, nat_event, sock},
        Binding, CtEvent, NatOutput, NatTable,
    },
    ports::{by_remote, fixtures::sample_table, rows},
    story::StoryBook,
    Clock, Event, SocketTable,
};
use crate::output::{json::JsonSink, services::standard, Sink};

fn bytes16(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a);
    out
}

/// A masqueraded client to a web server, stitched into a flow and ended with counters; a
/// port forward from conntrack (no hook, no counters) and its end.
fn nat_items() -> Vec<NatOutput> {
    let mut t = NatTable::default();
    t.name_netns(7, "router");
    let mut out = Vec::new();
    let (orig, reply) = (
        ct([192, 0, 2, 10], 40000, [198, 51, 100, 10], 80),
        ct([198, 51, 100, 10], 80, [203, 0, 113, 1], 61000),
    );
    let ev = NatEvent {
        ts_ns: 5_000_000,
        ..nat_event(orig, reply)
    };
    t.binding(Binding::from_event(&ev), &mut out);
    let chosen = |ev: SockEvent, netns| SockEvent {
        netns,
        ts_ns: 6_000_000,
        flags: flag::KERNEL_CHOSE_PORT,
        ..ev
    };
    let c = sock(
        kind::CONNECT,
        [192, 0, 2, 10],
        40000,
        [198, 51, 100, 10],
        80,
    );
    t.socket_event(&chosen(c, 1), 11, || ("curl".into(), None), &mut out);
    let s = sock(
        kind::ACCEPT,
        [198, 51, 100, 10],
        80,
        [203, 0, 113, 1],
        61000,
    );
    t.socket_event(&chosen(s, 2), 22, || ("nginx".into(), None), &mut out);
    let counters = NatCounters {
        orig_packets: 6,
        orig_bytes: 400,
        reply_packets: 5,
        reply_bytes: 1500,
        first_ns: 5_000_000,
        ..NatCounters::default()
    };
    let end = |orig, reply| CtEvent {
        netns: 7,
        destroyed: true,
        protocol: IPPROTO_TCP,
        orig,
        reply,
        status: None,
        existing: false,
    };
    t.destroyed(&end(orig, reply), 9_500_000, |_| Some(counters), &mut out);
    // A port forward seen by conntrack: 198.51.100.20:50000 → 203.0.113.1:8080 reaches
    // 192.0.2.20:443.
    let (orig, reply) = (
        ct([198, 51, 100, 20], 50000, [203, 0, 113, 1], 8080),
        ct([192, 0, 2, 20], 443, [198, 51, 100, 20], 50000),
    );
    let new = CtEvent {
        destroyed: false,
        status: Some(knat::IPS_DST_NAT as u32),
        ..end(orig, reply)
    };
    let b = Binding::from_conntrack(&new, 10_000_000).expect("translated");
    t.binding(b, &mut out);
    t.destroyed(&end(orig, reply), 12_000_000, |_| None, &mut out);
    out
}

#[test]
fn nat_records_as_text_and_json() {
    let items = nat_items();
    assert_eq!(items.len(), 5, "binding, flow, end; binding, end");
    let mut json_out = Vec::new();
    let mut json = JsonSink::new(&mut json_out).with_names(standard);
    let mut text = String::new();
    for item in &items {
        text.push_str(&super::nat::line(item, |ns| ns.to_string(), standard));
        text.push('\n');
        json.nat(item).unwrap();
    }
    drop(json);
    text.push_str(&String::from_utf8(json_out).unwrap());
    insta::assert_snapshot!("nat_records", text);
}

const LO: [u8; 4] = [127, 0, 0, 1];

/// Sockets of every kind of step: a server (bind, listen, accept, a failed accept), its
/// accepted connection (the passive close), a client (shutdown, the active close, data), a
/// refused connect, a refused bind then a kernel-chosen one and a connect from it, a UDP socket's autobind and
/// peers, an accept from a listener not traced.
fn story_events() -> Vec<SockEvent> {
    let base = SockEvent {
        family: AF_INET,
        protocol: IPPROTO_TCP,
        sock_type: 1,
        netns: 1,
        laddr: bytes16(LO),
        ..Default::default()
    };
    let server = SockEvent {
        pid: 10,
        tid: 10,
        comm: *b"server\0\0\0\0\0\0\0\0\0\0",
        sk: 0xa0,
        ..base
    };
    let conn = SockEvent {
        sk: 0xb0,
        lport: 8080,
        rport: 40000,
        raddr: bytes16(LO),
        ..server
    };
    let client = SockEvent {
        pid: 20,
        tid: 20,
        comm: *b"client\0\0\0\0\0\0\0\0\0\0",
        sk: 0xc0,
        lport: 40000,
        rport: 8080,
        raddr: bytes16(LO),
        ..base
    };
    let state = |ev: SockEvent, old, new| SockEvent {
        kind: kind::STATE,
        old_state: old,
        new_state: new,
        ..ev
    };
    let call = |ev: SockEvent, kind, fd, ret| SockEvent {
        kind,
        fd,
        ret,
        ..ev
    };
    let mut data = SockEvent {
        kind: kind::DATA,
        ..client
    };
    DataTotals {
        sent_bytes: 78,
        received_bytes: 5000,
        sends: 1,
        receives: 2,
    }
    .store(&mut data);
    let udp = SockEvent {
        protocol: IPPROTO_UDP,
        sock_type: 2,
        sk: 0xf0,
        lport: 50000,
        rport: 53,
        raddr: bytes16([192, 0, 2, 53]),
        flags: flag::KERNEL_CHOSE_PORT,
        ..client
    };
    let mut udp_data = SockEvent {
        kind: kind::DATA,
        ..udp
    };
    DataTotals {
        sent_bytes: 40,
        received_bytes: 2_000_000,
        sends: 1,
        receives: 1,
    }
    .store(&mut udp_data);
    let refused = SockEvent {
        sk: 0xd0,
        lport: 40100,
        rport: 9,
        ..client
    };
    let bound = SockEvent {
        sk: 0xe0,
        rport: 0,
        raddr: [0; 16],
        ..client
    };
    let stray = SockEvent {
        sk: 0x1b0,
        parent_sk: 0x999,
        lport: 9090,
        rport: 40200,
        ..server
    };
    vec![
        call(server, kind::SOCKET, -1, 3),
        call(
            SockEvent {
                lport: 8080,
                laddr: [0; 16],
                ..server
            },
            kind::BIND,
            3,
            0,
        ),
        state(
            SockEvent {
                lport: 8080,
                ..server
            },
            st::CLOSE,
            st::LISTEN,
        ),
        SockEvent {
            arg: 128,
            ..call(
                SockEvent {
                    lport: 8080,
                    ..server
                },
                kind::LISTEN,
                3,
                0,
            )
        },
        call(client, kind::SOCKET, -1, 4),
        state(client, st::CLOSE, st::SYN_SENT),
        SockEvent {
            flags: flag::KERNEL_CHOSE_PORT,
            ..call(client, kind::CONNECT, 4, -115)
        },
        state(conn, st::LISTEN, st::SYN_RECV),
        state(client, st::SYN_SENT, st::ESTABLISHED),
        state(conn, st::SYN_RECV, st::ESTABLISHED),
        SockEvent {
            parent_sk: 0xa0,
            ..call(conn, kind::ACCEPT, 3, 5)
        },
        SockEvent {
            parent_sk: 0xa0,
            sk: 0,
            ..call(server, kind::ACCEPT, 3, -11)
        },
        state(client, st::ESTABLISHED, st::FIN_WAIT1),
        SockEvent {
            arg: 1,
            ..call(client, kind::SHUTDOWN, 4, 0)
        },
        state(conn, st::ESTABLISHED, st::CLOSE_WAIT),
        state(client, st::FIN_WAIT1, st::FIN_WAIT2),
        state(conn, st::CLOSE_WAIT, st::LAST_ACK),
        call(conn, kind::CLOSE, 5, 0),
        state(conn, st::LAST_ACK, st::CLOSE),
        call(conn, kind::RELEASE, -1, 0),
        state(client, st::FIN_WAIT2, st::TIME_WAIT),
        data,
        call(client, kind::RELEASE, -1, 0),
        call(client, kind::CLOSE, 4, 0),
        call(refused, kind::SOCKET, -1, 6),
        state(refused, st::CLOSE, st::SYN_SENT),
        state(refused, st::SYN_SENT, st::CLOSE),
        call(refused, kind::CONNECT, 6, -111),
        call(refused, kind::RELEASE, -1, 0),
        call(bound, kind::SOCKET, -1, 7),
        call(SockEvent { lport: 80, ..bound }, kind::BIND, 7, -13),
        SockEvent {
            flags: flag::KERNEL_CHOSE_PORT,
            ..call(
                SockEvent {
                    lport: 45000,
                    ..bound
                },
                kind::BIND,
                7,
                0,
            )
        },
        call(
            SockEvent {
                lport: 45000,
                rport: 443,
                raddr: bytes16(LO),
                ..bound
            },
            kind::CONNECT,
            7,
            0,
        ),
        call(SockEvent { lport: 0, ..udp }, kind::SOCKET, -1, 8),
        call(udp, kind::SENDTO, 8, 40),
        call(SockEvent { flags: 0, ..udp }, kind::RECVFROM, 8, 100),
        udp_data,
        call(udp, kind::CLOSE, 8, 0),
        call(udp, kind::RELEASE, -1, 0),
        call(stray, kind::ACCEPT, 4, 9),
    ]
}

#[test]
fn story_records_as_text_and_json() {
    let mut table = SocketTable::default();
    let mut book = StoryBook::with_names(standard);
    for row in rows(&sample_table())
        .iter()
        .filter(|r| r.lport == 22 || r.lport == 41000)
    {
        book.predating(row, 0);
    }
    for (i, raw) in story_events().into_iter().enumerate() {
        let raw = SockEvent {
            ts_ns: (i as u64 + 1) * 1_000_000,
            ..raw
        };
        let attribution = table.observe(&raw);
        let e = Event::new(&raw, &attribution, Some((32768, 60999)), &Clock::identity());
        book.observe(&raw, &e);
    }
    let mut ids = book.take_finished(u64::MAX / 2);
    ids.extend(book.finish_all(&HashMap::new()));
    ids.sort_unstable();
    ids.dedup();
    let mut out = Vec::new();
    for &id in &ids {
        super::story::write_story(&mut out, &book.stories[id], None).unwrap();
    }
    for &id in &ids {
        super::story::write_story_json(&mut out, &book.stories[id]).unwrap();
    }
    for p in book.programs() {
        super::story::write_program(&mut out, &p).unwrap();
        super::story::write_program_json(&mut out, &p).unwrap();
    }
    insta::assert_snapshot!("story_records", String::from_utf8(out).unwrap());
}

#[test]
fn remote_groups_as_json() {
    let groups = by_remote(&rows(&sample_table()));
    let mut json_out = Vec::new();
    let mut json = JsonSink::new(&mut json_out).with_names(standard);
    json.remote_groups(&groups, true).unwrap();
    drop(json);
    insta::assert_snapshot!("remote_groups_json", String::from_utf8(json_out).unwrap());
}

#[test]
fn ports_rows_as_json() {
    let mut out = Vec::new();
    super::ports::write_json(&mut out, &rows(&sample_table()), &[], &[], standard).unwrap();
    insta::assert_snapshot!("ports_rows_json", String::from_utf8(out).unwrap());
}

#[test]
fn json_event_lines_reach_the_writer_when_the_sink_goes_without_a_flush() {
    let mut table = SocketTable::default();
    let mut out = Vec::new();
    let mut json = JsonSink::new(&mut out).with_names(standard);
    let events = story_events();
    for raw in &events {
        let attribution = table.observe(raw);
        let e = Event::new(raw, &attribution, Some((32768, 60999)), &Clock::identity());
        json.event(&e).unwrap();
    }
    drop(json);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), events.len(), "{text}");
}
