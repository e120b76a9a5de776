//! `tracer nat`: link the netfilter programs into the chosen namespaces (or, on kernels before
//! 6.4, listen to conntrack events), load the socket probes that stitch flows, and run the
//! [`NatOnlyStage`] until Ctrl-C, SIGTERM or `--duration`.
use std::{
    io::{self, Write},
    time::Duration,
};

use crate::{
    cli::NatConfig,
    commands::{resolve, watch::nat_source},
    error::Result,
    kernel::{
        loader::{KernelPath, LoadOptions, SockProbes},
        nat_watch::{NatPlaces, NatWatch},
        prereq,
        snapshot::Scope,
    },
    model::Clock,
    output::{human::HumanSink, json::JsonSink, Sink},
    pipeline::{self, inputs::LiveKernel, nat::NatOnlyStage, Cadence, Inputs, Stop},
    source::RingBufSource,
};

/// A `nat` run with its namespaces resolved.
pub struct NatPlan {
    pub config: NatConfig,
    pub places: NatPlaces,
}

/// Resolves the namespaces named (before anything is loaded: a typo fails at once).
pub fn prepare(config: NatConfig) -> Result<NatPlan> {
    let places = resolve::nat_places(&config.targets)?;
    Ok(NatPlan { config, places })
}

pub async fn run(plan: NatPlan) -> Result<()> {
    let config = &plan.config;
    prereq::require_root("nat")?;
    // Socket probes too, to stitch flows (client process → binding → server process).
    let mut sock = match config.flows {
        true => Some(flow_probes(config.ringbuf_bytes)?),
        false => None,
    };
    let shared = match sock.as_mut() {
        Some(s) => Some(s.events_fd()?),
        None => None,
    };
    let started = NatWatch::start(
        plan.places.clone(),
        config.max_netns,
        nat_source(config.source),
        shared,
        config.ringbuf_bytes,
    )?;
    let ring = match (sock.as_mut(), started.ring) {
        (Some(s), _) => Some(s.take_events()?),
        (None, ring) => ring,
    };
    let counters = match sock.as_mut() {
        Some(s) => Some(std::sync::Arc::new(s.take_counters()?)),
        None => None,
    };
    let nat = started.watch;
    let mut hooks = nat.attached.clone();
    if let Some(s) = &sock {
        hooks.extend(s.attached.iter().cloned());
    }
    if nat.fallback {
        hooks.push("conntrack netlink events (new, destroy)".into());
    }
    let stdout = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let sink: Box<dyn Sink> = if config.json {
        Box::new(JsonSink::new(stdout))
    } else {
        Box::new(HumanSink::new(stdout, io::stderr(), config.color))
    };
    if !config.json {
        announce(nat.watched(), config.flows);
    }
    let clock = Clock::now();
    let mut stage = NatOnlyStage::new(clock, sink, config.json.then_some(hooks), config.who);
    let kernel = Box::new(LiveKernel::new(counters, Scope::All, Some(nat)));
    let stop = Stop {
        signals: true,
        after: config.duration,
    };
    let cadence = Cadence {
        // Records wake the agent per quarter ring (NAT_WAKEUP_BYTES, FILTER.wakeup_bytes):
        // what a quiet ring holds is read on this timer.
        poll: Some(Duration::from_millis(10)),
        tick: Duration::from_millis(250),
    };
    prereq::drop_privileges();
    let mut inputs = Inputs {
        // `--no-flows` on a kernel whose NAT records have no ring: no events at all.
        events: ring.map(RingBufSource::new).transpose()?,
        kernel,
        conntrack: Some(started.conntrack),
        extra: None,
        clock,
        stop,
    };
    let result = pipeline::run(&mut inputs, cadence, &mut stage).await;
    drop(inputs);
    drop(stage);
    drop(sock);
    result
}

/// The socket probes that stitch flows: every socket, UDP sends and receives included.
fn flow_probes(ringbuf_bytes: u32) -> Result<SockProbes> {
    SockProbes::load(&LoadOptions {
        filter: tracer_common::KernelFilter {
            udp_data: 1,
            wakeup_bytes: ringbuf_bytes / 4,
            ..Default::default()
        },
        pids: Vec::new(),
        ringbuf_bytes,
        data: false,
        // Flows stitch a process's calls to its translated tuple; the socket path would do
        // (issue 16 left nat on the path it was tested with).
        path: KernelPath::Syscalls,
        floor: false,
        health: crate::model::types::Health::Off,
    })
}

/// The human table's first lines: what is watched (stderr) and the header (stdout).
fn announce(namespaces: usize, flows: bool) {
    let _ = writeln!(
        io::stderr(),
        "tracer: watching NAT in {namespaces} namespace(s){}; Ctrl-C to stop",
        if flows {
            ", with socket events for flows"
        } else {
            ""
        }
    );
    let _ = writeln!(io::stdout(), "{}", crate::output::nat::HEADER);
}
