//! Names any user chooses (arbitrary bytes as a process name or a namespace name) through every
//! sink: no panic, and nothing a terminal would act on — valid UTF-8, no control byte but the
//! line end, no ESC, no C1 or bidirectional control.
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use ratatui::{backend::TestBackend, Terminal};
use tracer_common::{kind, tcp_state, SockEvent, AF_INET, IPPROTO_TCP};

use crate::model::{
    nat::{Binding, CtEvent, CtTuple, Flow, FlowEnd, NatOutput},
    ports::{self, RowFilter, SortKey},
    story::StoryBook,
    Clock, Event, SocketTable,
};
use crate::output::{human::HumanSink, json::JsonSink, tui, Sink};

/// What a terminal may receive.
fn assert_safe(what: &str, bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).unwrap_or_else(|e| panic!("{what}: not UTF-8: {e}"));
    for c in text.chars() {
        let bad = (c < ' ' && c != '\n')
            || ('\u{7f}'..='\u{9f}').contains(&c)
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{61c}');
        assert!(!bad, "{what}: {c:?} reached the output: {text:?}");
    }
}

fn name16(bytes: &[u8]) -> [u8; 16] {
    let mut comm = [0u8; 16];
    let n = bytes.len().min(15);
    comm[..n].copy_from_slice(&bytes[..n]);
    comm
}

/// A client's life on one socket, every event carrying `comm` as its process's name.
fn events(comm: [u8; 16]) -> Vec<SockEvent> {
    let base = SockEvent {
        family: AF_INET,
        protocol: IPPROTO_TCP,
        sock_type: 1,
        pid: 4242,
        tid: 4243,
        sk: 0xffff_8881_0000_1000,
        laddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        raddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        comm,
        thread: comm,
        fd: 3,
        ..Default::default()
    };
    vec![
        // A listener that stays (its owner's name becomes a metric label).
        SockEvent {
            kind: kind::LISTEN,
            sk: 0xffff_8881_0000_2000,
            lport: 8080,
            new_state: tcp_state::LISTEN,
            ..base
        },
        SockEvent {
            kind: kind::SOCKET,
            ret: 3,
            ..base
        },
        SockEvent {
            kind: kind::CONNECT,
            lport: 40001,
            rport: 8080,
            new_state: tcp_state::ESTABLISHED,
            flags: tracer_common::flag::KERNEL_CHOSE_PORT,
            ..base
        },
        SockEvent {
            kind: kind::CLOSE,
            lport: 40001,
            rport: 8080,
            ..base
        },
        SockEvent {
            kind: kind::RELEASE,
            lport: 40001,
            rport: 8080,
            ..base
        },
    ]
}

fn nat_items(netns_name: &str, comm: &str) -> Vec<NatOutput> {
    let tuple = |src: [u8; 4], sport, dst: [u8; 4], dport| CtTuple {
        src: IpAddr::from(src),
        dst: IpAddr::from(dst),
        sport,
        dport,
    };
    let mut binding = Binding::from_conntrack(
        &CtEvent {
            netns: 7,
            destroyed: false,
            protocol: IPPROTO_TCP,
            orig: tuple([192, 0, 2, 10], 40001, [198, 51, 100, 1], 80),
            reply: tuple([198, 51, 100, 1], 80, [203, 0, 113, 1], 40001),
            status: Some(0),
            existing: false,
        },
        1,
    )
    .expect("a translated binding");
    binding.netns_name = netns_name.to_string();
    let end = |port| FlowEnd {
        pid: 1,
        comm: comm.to_string(),
        container: None,
        netns: 7,
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port,
        peer_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        peer_port: 80,
        kernel_chose_port: Some(true),
        ts_ns: 0,
    };
    vec![
        NatOutput::Binding(binding.clone()),
        NatOutput::Flow(Box::new(Flow {
            ts_ns: 1,
            proto: crate::model::types::Proto::Tcp,
            client: end(40001),
            nat: binding,
            server: end(80),
        })),
    ]
}

/// A services database entry with terminal controls in it (the file is root's, but its bytes
/// are escaped at the sinks like every other name).
fn hostile_service(_port: u16, _proto: crate::model::types::Proto) -> Option<&'static str> {
    Some("ht\u{1b}[2Jtp\u{202e}\n")
}

fn through_every_sink(comm_bytes: &[u8], netns_bytes: &[u8]) {
    let comm = name16(comm_bytes);
    let netns_name = crate::text::decode(netns_bytes);
    let raw = events(comm);
    let mut table = SocketTable::default();
    let mut book = StoryBook::with_names(hostile_service);
    let mut human = HumanSink::new(Vec::new(), Vec::new(), false).with_names(hostile_service);
    let mut json_out = Vec::new();
    let mut json = JsonSink::new(&mut json_out).with_names(hostile_service);
    let mut rows = Vec::new();
    for ev in &raw {
        let attribution = table.observe(ev);
        let event = Event::new(ev, &attribution, Some((32768, 60999)), &Clock::identity());
        human.event(&event).unwrap();
        json.event(&event).unwrap();
        book.observe(ev, &event);
        if ev.kind == kind::CONNECT {
            rows = ports::rows(&table);
        }
    }
    for item in nat_items(&netns_name, &crate::text::comm(&comm)) {
        human.nat(&item).unwrap();
        json.nat(&item).unwrap();
    }
    human.netns_gone(&netns_name, 7).unwrap();
    json.netns_gone(&netns_name, 7).unwrap();
    human.flush().unwrap();
    json.flush().unwrap();
    let (out, status) = human.into_parts();
    assert_safe("human table", &out);
    assert_safe("human status", &status);
    drop(json);
    assert_safe("json", &json_out);

    assert!(!rows.is_empty(), "the connected socket has a ports row");
    let mut ports_out = Vec::new();
    let names = hostile_service;
    crate::output::ports::write_table(&mut ports_out, &rows, names).unwrap();
    crate::output::ports::write_groups(&mut ports_out, &ports::by_remote(&rows), names).unwrap();
    crate::output::ports::write_json(&mut ports_out, &rows, &[], &[], names).unwrap();
    assert_safe("ports", &ports_out);

    let mut story_out = Vec::new();
    for story in &book.stories {
        crate::output::story::write_story(&mut story_out, story, Some(crate::i18n::Lang::En))
            .unwrap();
        crate::output::story::write_story_json(&mut story_out, story).unwrap();
    }
    for program in book.programs() {
        crate::output::story::write_program(&mut story_out, &program).unwrap();
    }
    assert!(!book.stories.is_empty());
    assert_safe("story", &story_out);

    let metrics = crate::metrics::Metrics::new(16, "test");
    metrics.update_table(&table, &|_| "host".into());
    assert_safe("metrics", metrics.render().as_bytes());
    let log_line = format!("netns {netns_name} comm {}\n", crate::text::comm(&comm));
    assert_safe("log line", crate::text::escape_log(&log_line).as_bytes());
    assert_eq!(crate::text::escape_log(&log_line).matches('\n').count(), 1);

    let screen = tui::Screen {
        rows,
        ..Default::default()
    };
    for tab in tui::Tab::ALL {
        let mut state = tui::ViewState::new(RowFilter::default(), SortKey::Lport, false);
        state.tab = tab;
        let mut terminal = Terminal::new(TestBackend::new(120, 30)).unwrap();
        terminal.draw(|f| tui::draw(f, &state, &screen)).unwrap();
        let buffer = terminal.backend().buffer();
        let cells: String = buffer.content().iter().map(|c| c.symbol()).collect();
        assert_safe("tui", cells.as_bytes());
    }
}

#[test]
fn the_issue_s_names_are_escaped_everywhere() {
    through_every_sink(
        b"a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"ns",
    );
    through_every_sink(b"\x1b[2J\x1b[31mEVIL", b"\x1b]0;pwned\x07");
    through_every_sink("\u{202e}evil".as_bytes(), "\u{85}\u{9b}".as_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn any_name_through_every_sink(
        comm in proptest::collection::vec(any::<u8>(), 0..16),
        netns in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        through_every_sink(&comm, &netns);
    }
}
