//! `tracer watch`: attach, then stream every socket event through the socket table to a sink
//! until Ctrl-C, SIGTERM or `--duration`. Dropping the probes detaches every program and link.
use std::{
    io::{self, Write},
    time::{Duration, Instant},
};

use tokio::signal::unix::{signal, SignalKind};
use tracer_common::SockEvent;

use crate::{
    cli::WatchConfig,
    error::{Error, Result},
    kernel::{
        loader::{KernelCounters, LoadOptions, SockProbes},
        netns, prereq,
    },
    model::{Clock, Event, Filter, SocketTable},
    output::{human::HumanSink, json::JsonSink, Sink, Summary},
    source::{EventSource, RingBufSource},
};

pub async fn run(config: WatchConfig) -> Result<()> {
    prereq::require_root("watch")?;
    let mut probes = SockProbes::load(&LoadOptions {
        filter: config.kernel_filter,
        pids: config.pids.clone(),
        ringbuf_bytes: config.ringbuf_bytes,
    })?;
    let source = RingBufSource::new(probes.take_events()?)?;
    let counters = probes.take_counters()?;
    let stdout = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut sink: Box<dyn Sink> = if config.json {
        Box::new(JsonSink::new(stdout))
    } else {
        Box::new(HumanSink::new(stdout, io::stderr(), config.color))
    };
    let result = stream(&config, source, &counters, &probes.attached, sink.as_mut()).await;
    drop(probes); // detach now, before any error is reported, so nothing outlives the command
    match result {
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Decoded events → socket table → enrichment → filter → sink.
struct Pipeline {
    table: SocketTable,
    ranges: netns::PortRangeCache,
    filter: Filter,
    clock: Clock,
    summary: Summary,
}

impl Pipeline {
    fn process(&mut self, batch: &mut Vec<SockEvent>, sink: &mut dyn Sink) -> io::Result<()> {
        self.summary.events += batch.len() as u64;
        for raw in batch.drain(..) {
            // Every event goes through the table (correlation needs them all); only the ones
            // shown are enriched.
            let attribution = self.table.observe(&raw);
            if !self.filter.allows(&raw, &attribution) {
                continue;
            }
            let pid = attribution.owner.map(|o| o.pid);
            let range = self.ranges.get(raw.netns, pid);
            sink.event(&Event::new(&raw, &attribution, range, &self.clock))?;
        }
        sink.flush()
    }
}

async fn stream(
    config: &WatchConfig,
    mut source: impl EventSource,
    counters: &KernelCounters,
    hooks: &[String],
    sink: &mut dyn Sink,
) -> Result<()> {
    let io_err = |e: io::Error| Error::io("writing output", e);
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut pipeline = Pipeline {
        table: SocketTable::default(),
        ranges: netns::PortRangeCache::default(),
        filter: Filter::new(
            &config.events,
            config.kernel_filter.by_pid != 0,
            config.comm.as_deref(),
        ),
        clock: Clock::now(),
        summary: Summary::default(),
    };
    let mut batch: Vec<SockEvent> = Vec::with_capacity(1024);
    let mut lost_seen = 0u64;
    let started = Instant::now();
    let deadline = config.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut sweeps = 0u32;

    sink.ready(hooks).map_err(io_err)?;
    loop {
        tokio::select! {
            more = source.next_batch(&mut batch) => {
                if !more? {
                    break;
                }
                pipeline.process(&mut batch, sink).map_err(io_err)?;
            }
            _ = tick.tick() => {
                let lost = counters.lost();
                if lost != lost_seen {
                    sink.lost(lost - lost_seen, lost).map_err(io_err)?;
                    lost_seen = lost;
                }
                sweeps += 1;
                if sweeps.is_multiple_of(100) {
                    pipeline.table.sweep(monotonic_ns());
                }
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    // What is already in the ring was seen by the kernel before we stopped: report it.
    source.drain_now(&mut batch);
    pipeline.process(&mut batch, sink).map_err(io_err)?;
    let mut summary = pipeline.summary;
    summary.lost = counters.lost();
    if summary.lost != lost_seen {
        sink.lost(summary.lost - lost_seen, summary.lost)
            .map_err(io_err)?;
    }
    summary.undecodable = source.undecodable();
    summary.seconds = started.elapsed().as_secs_f64();
    summary.sockets_tracked = pipeline.table.len();
    sink.summary(&summary).map_err(io_err)?;
    io::stderr().flush().ok();
    Ok(())
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
