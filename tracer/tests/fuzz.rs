//! Property tests (fuzzing with proptest, bounded so CI stays quick): whatever bytes arrive
//! from the ring buffer, whatever sequence of events, whatever command line, tracer returns a
//! value or an error — it never panics.
use clap::Parser;
use proptest::prelude::*;
use tracer::{
    cli::{Cli, Command},
    model::{story::StoryBook, Clock, Event, SocketTable},
    source::decode,
};
use tracer_common::{SockEvent, SOCK_EVENT_SIZE};

fn event_strategy() -> impl Strategy<Value = SockEvent> {
    (
        proptest::collection::vec(any::<u8>(), SOCK_EVENT_SIZE),
        1u16..16,
        0u64..8,
    )
        .prop_map(|(bytes, kind, sk)| {
            let mut ev: SockEvent = bytemuck::pod_read_unaligned(&bytes);
            ev.kind = kind;
            // A few socket identities, so events land on the same sockets.
            ev.sk = 0xffff_8880_0000_0000 + sk * 64;
            ev.parent_sk = if ev.parent_sk.is_multiple_of(2) {
                0
            } else {
                ev.sk ^ 64
            };
            ev
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn any_event_sequence_is_correlated_without_panicking(
        events in proptest::collection::vec(event_strategy(), 1..200)
    ) {
        let mut table = SocketTable::with_capacity(64);
        let mut book = StoryBook::default();
        let clock = Clock::identity();
        for raw in &events {
            let attribution = table.observe(raw);
            let e = Event::new(raw, &attribution, Some((32768, 60999)), &clock);
            book.observe(raw, &e);
            serde_json::to_string(&e).unwrap();
        }
        prop_assert!(table.len() <= 64);
        table.sweep(u64::MAX);
        let _ = book.take_finished(u64::MAX);
        let _ = book.finish_all(&Default::default());
        let _ = book.programs();
        let _ = tracer::model::ports::rows(&table);
    }

    #[test]
    fn any_command_line_is_parsed_or_refused(
        args in proptest::collection::vec(
            prop_oneof![
                Just("watch".to_string()), Just("ports".to_string()), Just("serve".to_string()),
                Just("trace".to_string()), Just("--pid".to_string()), Just("--port".to_string()),
                Just("--comm".to_string()), Just("--netns".to_string()), Just("--events".to_string()),
                Just("--proto".to_string()), Just("--ringbuf-kib".to_string()),
                Just("--duration".to_string()), Just("--listen".to_string()), Just("--".to_string()),
                "[a-z0-9,.:/-]{0,12}", "-?[0-9]{1,12}",
            ],
            0..8,
        )
    ) {
        let argv = std::iter::once("tracer".to_string()).chain(args);
        if let Ok(cli) = Cli::try_parse_from(argv) {
            // Validation may refuse (a missing pid, a bad value), never panic.
            match cli.command {
                Command::Watch(a) => { let _ = a.validate(); }
                Command::Serve(a) => { let _ = a.validate(); }
                Command::Ports(a) => { let _ = a.validate(); }
                Command::Trace(a) => { let _ = a.validate(); }
                _ => {}
            }
        }
    }
}
