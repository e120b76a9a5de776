//! Every command's logic, without root or a kernel: synthetic event sequences (what the
//! kernel reports for a TCP server, its client and a UDP query) and captures recorded on a
//! real kernel (`tests/cases/*.capture`, made by the root test `capture_replays_byte_for_byte`
//! in tests/tests/capture.rs) run through each command's stage, with the human, JSON, story,
//! NAT, live-view and metrics outputs held to snapshots (insta).
use std::sync::Arc;

use ratatui::{backend::TestBackend, Terminal};
use tracer::{
    cli::WatchMode,
    metrics::{
        server::{KernelReadings, Scrape},
        Metrics,
    },
    model::{ports::SortKey, story::StoryBook, Clock, Filter, SocketTable},
    output::{human::HumanSink, json::JsonSink, services::standard, tui::ViewState, Sink},
    pipeline::{
        fake::{FakeKernel, FakeNat, SharedBuf},
        nat::{NatOnlyStage, WhoAsk, WhoReply},
        ports_live::PortsLiveStage,
        record,
        trace::{StoryFormat, TraceStage},
        watch::{WatchSetup, WatchStage},
        Stage,
    },
    source::capture::CaptureReader,
};
use tracer_common::{
    flag, kind, nat, tcp_state as st, NatCounters, NatEvent, SockEvent, AF_INET, IPPROTO_TCP,
    IPPROTO_UDP,
};

const LO: [u8; 16] = [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const ANY: [u8; 16] = [0; 16];
const DNS: [u8; 16] = [10, 0, 0, 53, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// Kernel time of the first event: 1,000 s after boot.
const T0: u64 = 1_000_000_000_000;

fn comm(name: &str) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..name.len()].copy_from_slice(name.as_bytes());
    c
}

/// A process's socket, from which its events are made.
#[derive(Clone, Copy)]
struct Sock {
    pid: u32,
    name: &'static str,
    sk: u64,
    protocol: u8,
    fd: i32,
}

impl Sock {
    fn ev(&self, k: u16, ms: u64) -> SockEvent {
        SockEvent {
            kind: k,
            family: AF_INET,
            protocol: self.protocol,
            sock_type: if self.protocol == IPPROTO_TCP { 1 } else { 2 },
            pid: self.pid,
            tid: self.pid,
            uid: 1000,
            netns: 4026531840,
            fd: self.fd,
            ts_ns: T0 + ms * 1_000_000,
            sk: self.sk,
            comm: comm(self.name),
            thread: comm(self.name),
            ..Default::default()
        }
    }

    fn state(&self, ms: u64, old: u8, new: u8, local: u16, remote: u16) -> SockEvent {
        SockEvent {
            old_state: old,
            new_state: new,
            laddr: LO,
            raddr: LO,
            lport: local,
            rport: remote,
            pid: 0,
            tid: 0,
            comm: [0; 16],
            thread: [0; 16],
            ..self.ev(kind::STATE, ms)
        }
    }
}

/// A TCP server's socket → bind → listen → accept → close, its client's socket → connect
/// (the kernel picks port 40000) → close with the handshake and the 4-way close between,
/// and a UDP query whose source port the kernel picks at the first sendto.
fn conversation() -> Vec<SockEvent> {
    let server = Sock {
        pid: 100,
        name: "server",
        sk: 0xa0,
        protocol: IPPROTO_TCP,
        fd: 3,
    };
    let conn = Sock {
        sk: 0xa1,
        fd: 4,
        ..server
    };
    let client = Sock {
        pid: 200,
        name: "client",
        sk: 0xb0,
        protocol: IPPROTO_TCP,
        fd: 3,
    };
    let udp = Sock {
        pid: 300,
        name: "dig",
        sk: 0xc0,
        protocol: IPPROTO_UDP,
        fd: 5,
    };
    vec![
        SockEvent {
            ret: 3,
            fd: -1,
            ..server.ev(kind::SOCKET, 0)
        },
        SockEvent {
            laddr: ANY,
            lport: 8080,
            ..server.ev(kind::BIND, 1)
        },
        SockEvent {
            laddr: ANY,
            lport: 8080,
            arg: 128,
            new_state: st::LISTEN,
            ..server.ev(kind::LISTEN, 2)
        },
        SockEvent {
            ret: 3,
            fd: -1,
            ..client.ev(kind::SOCKET, 10)
        },
        client.state(11, st::CLOSE, st::SYN_SENT, 40000, 8080),
        client.state(11, st::SYN_SENT, st::ESTABLISHED, 40000, 8080),
        SockEvent {
            laddr: LO,
            raddr: LO,
            lport: 40000,
            rport: 8080,
            flags: flag::KERNEL_CHOSE_PORT,
            new_state: st::ESTABLISHED,
            ..client.ev(kind::CONNECT, 12)
        },
        conn.state(12, st::SYN_RECV, st::ESTABLISHED, 8080, 40000),
        SockEvent {
            laddr: LO,
            raddr: LO,
            lport: 8080,
            rport: 40000,
            ret: 4,
            fd: 3,
            parent_sk: server.sk,
            new_state: st::ESTABLISHED,
            ..conn.ev(kind::ACCEPT, 13)
        },
        client.state(20, st::ESTABLISHED, st::FIN_WAIT1, 40000, 8080),
        SockEvent {
            ..client.ev(kind::RELEASE, 20)
        },
        client.ev(kind::CLOSE, 20),
        conn.state(21, st::ESTABLISHED, st::CLOSE_WAIT, 8080, 40000),
        client.state(21, st::FIN_WAIT1, st::FIN_WAIT2, 40000, 8080),
        conn.state(22, st::CLOSE_WAIT, st::LAST_ACK, 8080, 40000),
        conn.ev(kind::CLOSE, 22),
        conn.state(23, st::LAST_ACK, st::CLOSE, 8080, 40000),
        client.state(23, st::FIN_WAIT2, st::TIME_WAIT, 40000, 8080),
        SockEvent {
            ret: 5,
            fd: -1,
            ..udp.ev(kind::SOCKET, 30)
        },
        SockEvent {
            laddr: ANY,
            raddr: DNS,
            lport: 50000,
            rport: 53,
            ret: 30,
            flags: flag::KERNEL_CHOSE_PORT | flag::REMOTE_FROM_USER,
            ..udp.ev(kind::SENDTO, 31)
        },
        SockEvent {
            laddr: ANY,
            raddr: DNS,
            lport: 50000,
            rport: 53,
            ret: 120,
            flags: flag::REMOTE_FROM_USER,
            ..udp.ev(kind::RECVFROM, 32)
        },
        udp.ev(kind::CLOSE, 33),
    ]
}

/// The human table's time column is local time: masked, so snapshots hold on any TZ.
fn mask_times(text: &str) -> String {
    text.lines()
        .map(|line| {
            let b = line.as_bytes();
            let is_time = b.len() > 15
                && b[2] == b':'
                && b[5] == b':'
                && b[8] == b'.'
                && b[..15]
                    .iter()
                    .enumerate()
                    .all(|(i, c)| [2, 5, 8].contains(&i) || c.is_ascii_digit());
            if is_time {
                format!("HH:MM:SS.ffffff{}", &line[15..])
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs a stage over batches with a tick after each, then finishes it.
fn drive(stage: &mut impl Stage, kernel: &mut FakeKernel, batches: Vec<Vec<SockEvent>>) {
    stage.start(kernel).unwrap();
    for batch in batches {
        let mut batch = batch;
        stage.events(&mut batch, &mut Vec::new(), kernel).unwrap();
        stage.tick(kernel).unwrap();
    }
    stage.finish(kernel, 0).unwrap();
}

fn watch_stage(sink: Box<dyn Sink>, events: &[&str]) -> WatchStage {
    let events: Vec<String> = events.iter().map(|s| s.to_string()).collect();
    WatchStage::new(WatchSetup {
        mode: WatchMode::Watch,
        filter: Filter::new(&events, false, None),
        group_by_remote: false,
        process_filter: false,
        nat: false,
        who: None,
        nat_history: (0, 0),
        sink,
        scrape: None,
        hooks: vec!["tracepoint/syscalls/* (test)".into()],
        snapshot: None,
        clock: Clock::with_offset(1_700_000_000_000_000_000),
    })
}

#[test]
fn watch_json_shows_each_step_and_the_kernel_s_choices() {
    let out = SharedBuf::default();
    let mut stage = watch_stage(
        Box::new(JsonSink::new(out.clone()).with_names(standard)),
        &[],
    );
    drive(&mut stage, &mut FakeKernel::at(T0), vec![conversation()]);
    insta::assert_snapshot!("watch_json", out.text());
}

#[test]
fn watch_table_and_its_status_lines() {
    let (out, status) = (SharedBuf::default(), SharedBuf::default());
    let sink = HumanSink::new(out.clone(), status.clone(), false).with_names(standard);
    let mut stage = watch_stage(Box::new(sink), &["connect", "accept", "sendto", "state"]);
    drive(&mut stage, &mut FakeKernel::at(T0), vec![conversation()]);
    insta::assert_snapshot!("watch_table", mask_times(&out.text()));
    let status = status.text();
    assert!(status.contains("events"), "{status}");
}

/// `serve`: nothing printed, the registry filled.
#[test]
fn serve_fills_the_registry() {
    struct Readings;
    impl KernelReadings for Readings {
        fn stats(&self) -> Vec<u64> {
            vec![0; tracer_common::stats::COUNT as usize]
        }
        fn lost(&self) -> tracer::model::evicted::LostReasons {
            Default::default()
        }
    }
    let scrape = Arc::new(Scrape::new(Metrics::new(16, "test"), Box::new(Readings)));
    let out = SharedBuf::default();
    let mut stage = WatchStage::new(WatchSetup {
        mode: WatchMode::Serve,
        filter: Filter::new(&[], false, None),
        group_by_remote: false,
        process_filter: false,
        nat: false,
        who: None,
        nat_history: (0, 0),
        sink: Box::new(JsonSink::new(out.clone()).with_names(standard)),
        scrape: Some(scrape.clone()),
        hooks: Vec::new(),
        snapshot: None,
        clock: Clock::identity(),
    });
    let mut kernel = FakeKernel::at(T0);
    stage.start(&mut kernel).unwrap();
    let mut events = conversation();
    events.truncate(3); // the server is listening
    stage
        .events(&mut events, &mut Vec::new(), &mut kernel)
        .unwrap();
    for _ in 0..10 {
        stage.tick(&mut kernel).unwrap();
    }
    let text = scrape.render();
    assert!(
        text.contains("tracer_events_processed_total{source=\"ringbuf\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("tracer_listening_sockets{port_class=\"registered\",proto=\"tcp\"} 1"),
        "{text}"
    );
    assert!(
        !out.text().contains("\"type\":\"event\""),
        "serve prints no events"
    );
}

/// `trace`: each socket's story once it closed; the program line at the end.
#[test]
fn trace_tells_each_socket_s_story() {
    let out = SharedBuf::default();
    let format = StoryFormat {
        json: false,
        explain: true,
        lang: tracer::i18n::Lang::En,
    };
    let mut stage = TraceStage::new(
        SocketTable::default(),
        StoryBook::with_names(standard),
        Clock::with_offset(1_700_000_000_000_000_000),
        format,
        out.clone(),
        Vec::new(),
        None,
        false,
    );
    let mut kernel = FakeKernel::at(T0);
    // Stories are printed once their socket has been quiet for a while: move time on.
    kernel.step_ns = 1_000_000_000;
    drive(&mut stage, &mut kernel, vec![conversation()]);
    for _ in 0..4 {
        stage.tick(&mut kernel).unwrap();
    }
    insta::assert_snapshot!("trace_stories", out.text());
}

/// A masquerade through namespace "router": curl's connect from 192.168.1.10:40000 to
/// 198.51.100.10:80, its binding (as 203.0.113.7:61000) and the binding's end.
fn masquerade() -> (FakeKernel, SockEvent, NatEvent, tracer::model::nat::CtEvent) {
    let router_ns = 4026532000;
    let mut kernel = FakeKernel::at(T0);
    kernel.nat = Some(FakeNat {
        named: vec![(router_ns, "router".into())],
        counters: Some(NatCounters {
            orig_packets: 6,
            orig_bytes: 400,
            reply_packets: 5,
            reply_bytes: 1500,
            // The kernel stamps the binding's first packet and its record alike.
            first_ns: T0 + 1_000_000,
            last_ns: T0 + 5_000_000,
        }),
        ..Default::default()
    });
    let lan = [192, 168, 1, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let wan = [203, 0, 113, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let server = [198, 51, 100, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let binding = NatEvent {
        kind: nat::KIND_BINDING,
        family: AF_INET,
        protocol: IPPROTO_TCP,
        hook: 4,
        manips: nat::MANIP_SRC,
        netns: router_ns,
        orig_sport: 40000,
        orig_dport: 80,
        reply_sport: 80,
        reply_dport: 61000,
        status: (nat::IPS_SRC_NAT | nat::IPS_SRC_NAT_DONE | nat::IPS_DST_NAT_DONE) as u32,
        ts_ns: T0 + 1_000_000,
        ct: 0xdead,
        orig_src: lan,
        orig_dst: server,
        reply_src: server,
        reply_dst: wan,
        ..Default::default()
    };
    let client = SockEvent {
        kind: kind::CONNECT,
        family: AF_INET,
        protocol: IPPROTO_TCP,
        sock_type: 1,
        pid: 200,
        tid: 200,
        netns: 4026532001,
        ts_ns: T0,
        sk: 0xb0,
        laddr: lan,
        raddr: server,
        lport: 40000,
        rport: 80,
        flags: flag::KERNEL_CHOSE_PORT,
        comm: comm("curl"),
        thread: comm("curl"),
        ..Default::default()
    };
    let end = tracer::model::nat::CtEvent {
        netns: router_ns,
        destroyed: true,
        protocol: IPPROTO_TCP,
        orig: tracer::model::nat::CtTuple {
            src: "192.168.1.10".parse().unwrap(),
            dst: "198.51.100.10".parse().unwrap(),
            sport: 40000,
            dport: 80,
        },
        reply: tracer::model::nat::CtTuple {
            src: "198.51.100.10".parse().unwrap(),
            dst: "203.0.113.7".parse().unwrap(),
            sport: 80,
            dport: 61000,
        },
        status: None,
        existing: false,
    };
    (kernel, client, binding, end)
}

/// `nat`: a binding and its end with the kernel's counters.
#[test]
fn nat_binding_and_its_end() {
    let out = SharedBuf::default();
    let mut stage = NatOnlyStage::new(
        Clock::with_offset(1_700_000_000_000_000_000),
        Box::new(JsonSink::new(out.clone()).with_names(standard)),
        Some(vec!["netfilter (test)".into()]),
        None,
    );
    let (mut kernel, client, binding, end) = masquerade();
    stage.start(&mut kernel).unwrap();
    stage
        .events(&mut vec![client], &mut vec![binding], &mut kernel)
        .unwrap();
    stage.conntrack(end, &mut kernel).unwrap();
    stage.finish(&mut kernel, 0).unwrap();
    insta::assert_snapshot!("nat_json", out.text());
}

/// `nat --who`: only what is about that endpoint is shown.
#[test]
fn nat_who_shows_only_that_endpoint() {
    for (who, shown) in [("203.0.113.7:61000", true), ("203.0.113.7:61001", false)] {
        let out = SharedBuf::default();
        let mut stage = NatOnlyStage::new(
            Clock::with_offset(1_700_000_000_000_000_000),
            Box::new(JsonSink::new(out.clone()).with_names(standard)),
            None,
            Some(who.parse().unwrap()),
        );
        let (mut kernel, client, binding, end) = masquerade();
        stage.start(&mut kernel).unwrap();
        stage
            .events(&mut vec![client], &mut vec![binding], &mut kernel)
            .unwrap();
        stage.conntrack(end, &mut kernel).unwrap();
        stage.finish(&mut kernel, 0).unwrap();
        let text = out.text();
        assert_eq!(
            text.contains("\"type\":\"nat_binding\""),
            shown,
            "{who}: {text}"
        );
        assert_eq!(
            text.contains("\"type\":\"nat_end\""),
            shown,
            "{who}: {text}"
        );
    }
}

/// The agent (`watch`/`serve` with NAT) answers who was behind an endpoint whose binding
/// ended a minute ago — the client process and its own address and port — and forgets it
/// once its history has passed.
#[test]
fn the_agent_answers_who_was_behind_an_ended_binding() {
    let out = SharedBuf::default();
    let mut stage = WatchStage::new(WatchSetup {
        mode: WatchMode::Serve,
        filter: Filter::new(&[], false, None),
        group_by_remote: false,
        process_filter: false,
        nat: true,
        who: None,
        nat_history: (600_000_000_000, 16),
        sink: Box::new(JsonSink::new(out.clone())),
        scrape: None,
        hooks: Vec::new(),
        snapshot: None,
        clock: Clock::with_offset(1_700_000_000_000_000_000),
    });
    let (mut kernel, client, binding, end) = masquerade();
    stage.start(&mut kernel).unwrap();
    stage
        .events(&mut vec![client], &mut vec![binding], &mut kernel)
        .unwrap();
    stage.conntrack(end, &mut kernel).unwrap();
    let mut ask = |kernel: &mut FakeKernel, who: &str| {
        let (reply, answered) = tokio::sync::oneshot::channel();
        let who = who.parse().unwrap();
        let turn = None;
        stage.extra(WhoAsk { who, reply, turn }, kernel).unwrap();
        match answered.blocking_recv().unwrap() {
            WhoReply::Answers { answers, kept, .. } => {
                assert_eq!(kept.as_secs(), 600);
                assert_eq!((answers.truncated, answers.evicted), (false, 0));
                Some(answers.answers)
            }
            WhoReply::Busy => None,
            WhoReply::NoNat => panic!("the stage watches NAT"),
        }
    };
    let mut ask = |kernel: &mut FakeKernel, who: &str| {
        // The next question after the 50 ms between answers.
        kernel.now_ns += 50_000_000;
        let answer = ask(kernel, who).expect("answered");
        kernel.now_ns += 1_000_000;
        assert!(ask(kernel, who).is_none(), "asked again at once: busy");
        answer
    };
    kernel.now_ns += 60_000_000_000;
    let found = ask(&mut kernel, "203.0.113.7:61000");
    assert_eq!(found.len(), 1, "{found:?}");
    let a = &found[0];
    assert!(a.ended_ns.is_some(), "it ended");
    let c = a.client.as_ref().expect("curl's socket was seen");
    assert_eq!((c.comm.as_str(), c.pid, c.port), ("curl", 200, 40000));
    assert_eq!(c.addr.to_string(), "192.168.1.10");
    assert_eq!(a.binding.netns_name, "router");
    assert!(ask(&mut kernel, "203.0.113.7:61001").is_empty());
    kernel.now_ns += 600_000_000_000;
    assert!(
        ask(&mut kernel, "203.0.113.7:61000").is_empty(),
        "past the history"
    );
}

/// `ports --live`: the view drawn from the live table.
#[test]
fn ports_live_draws_the_table() {
    let terminal = Terminal::new(TestBackend::new(120, 16)).unwrap();
    let filter = tracer::model::ports::RowFilter::default();
    let state = ViewState::new(filter.clone(), SortKey::Lport, false);
    let mut stage = PortsLiveStage::new(SocketTable::default(), state, terminal, filter);
    let mut kernel = FakeKernel::at(T0);
    let mut events = conversation();
    events.truncate(9); // listening, connected, accepted
    drive(&mut stage, &mut kernel, vec![events]);
    let screen = format!("{}", stage.terminal().backend());
    insta::assert_snapshot!("ports_live", screen);
}

/// Captures recorded on a real kernel replay to the output recorded with them.
#[test]
fn recorded_captures_replay_to_their_output() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut found = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "capture") {
            continue;
        }
        found += 1;
        let (mut reader, header) = CaptureReader::open(&path).unwrap();
        let out = SharedBuf::default();
        let mut stage = WatchStage::new(WatchSetup {
            mode: WatchMode::Watch,
            filter: Filter::new(&[], header.by_pid, header.comm.as_deref()),
            group_by_remote: false,
            process_filter: header.by_pid || header.comm.is_some(),
            nat: header.nat,
            who: None,
            nat_history: (0, 0),
            sink: Box::new(JsonSink::new(out.clone()).with_names(standard)),
            scrape: None,
            hooks: header.hooks.clone(),
            snapshot: header.snapshot.clone(),
            clock: Clock::with_offset(header.clock_offset_ns),
        });
        record::replay(&mut reader, &header, &mut stage).unwrap();
        let expected = std::fs::read_to_string(path.with_extension("json")).unwrap();
        assert_eq!(
            out.text(),
            expected,
            "{} replays to its recorded output",
            path.display()
        );
    }
    assert!(found > 0, "no capture under {}", dir.display());
}
