//! `tracer watch`: attach, then stream every socket event through the socket table to a sink
//! until Ctrl-C, SIGTERM or `--duration`. Dropping the probes detaches every program and link.
use std::{
    io::{self, Write},
    time::{Duration, Instant},
};

use tokio::signal::unix::{signal, SignalKind};
use tracer_common::{KernelFilter, SockEvent};

use std::sync::Arc;

use crate::{
    cli::{GroupBy, WatchConfig},
    commands::nat::NatRuntime,
    error::{Error, Result},
    kernel::{
        loader::{KernelCounters, LoadOptions, SockProbes},
        netns, prereq,
        snapshot::{self, SnapSocket, Snapshot},
    },
    metrics::{self, server::Scrape, Metrics},
    model::{event::monotonic_ns, ports::RemoteLog, Clock, Event, Filter, Owner, SocketTable},
    output::{human::HumanSink, json::JsonSink, log::LogSink, Sink, SnapshotInfo, Summary},
    source::{EventSource, RingBufSource},
};

/// How often, at most, the socket table is checked against the kernel after lost events.
const RECONCILE_EVERY: Duration = Duration::from_secs(10);

pub async fn run(config: WatchConfig) -> Result<()> {
    prereq::require_root(if config.quiet { "serve" } else { "watch" })?;
    // Bound before anything is attached: a busy port fails at once, with nothing to undo.
    let listener = match config.metrics {
        Some(addr) => Some(metrics::server::bind(addr)?),
        None => None,
    };
    let mut probes = SockProbes::load(&LoadOptions {
        filter: KernelFilter {
            // The loop below drains on a timer too: wake it only when a quarter of the ring
            // is waiting.
            wakeup_bytes: config.ringbuf_bytes / 4,
            // `serve` keeps only the socket table: what it merely counts stays in the kernel.
            // With a process filter the agent attributes (and counts) transitions itself.
            metrics_only: u8::from(
                config.quiet
                    && config.kernel_filter.by_pid == 0
                    && config.kernel_filter.by_comm == 0,
            ),
            ..config.kernel_filter
        },
        pids: config.pids.clone(),
        ringbuf_bytes: config.ringbuf_bytes,
        data: false,
    })?;
    let nat = match &config.nat {
        Some((targets, choice)) => Some(
            NatRuntime::start(
                targets.clone(),
                config.nat_max_netns,
                *choice,
                Some(probes.events_fd()?),
                config.ringbuf_bytes,
            )?
            .0,
        ),
        None => None,
    };
    let source = RingBufSource::new(probes.take_events()?)?;
    let counters = Arc::new(probes.take_counters()?);
    let scrape = match listener {
        Some(listener) => {
            let addr = listener.local_addr().ok();
            let scrape = Arc::new(Scrape::new(
                Metrics::new(config.max_listen_ports, &kernel_release()),
                probes.take_stats()?,
                counters.clone(),
            ));
            metrics::server::spawn(listener, scrape.clone())?;
            if let Some(addr) = addr {
                tracing::info!("serving metrics on http://{addr}/metrics");
            }
            Some(scrape)
        }
        None => None,
    };
    // Attached first, snapshot second: a socket opened in between is in both, and the table
    // keeps the live one. Without a snapshot tracer still works, it just cannot name the
    // owners of older sockets.
    let snapshot = snapshot::take(&config.snapshot_scope)
        .inspect_err(|e| {
            let e = crate::text::escape_log(&e.to_string()).into_owned();
            eprintln!("tracer: no snapshot of existing sockets ({e}); their owners stay unknown")
        })
        .ok()
        .map(|mut s| {
            s.retain(|socket, owners| watched(&config, socket, owners));
            s
        });
    let stdout = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut sink: Box<dyn Sink> = if config.quiet {
        Box::new(LogSink)
    } else if config.json {
        Box::new(JsonSink::new(stdout))
    } else {
        let sink = HumanSink::new(stdout, io::stderr(), config.color);
        Box::new(if config.group_by.is_some() {
            sink.without_header()
        } else {
            sink
        })
    };
    let mut hooks = probes.attached.clone();
    if let Some(nat) = &nat {
        hooks.extend(nat.attached.iter().cloned());
    }
    let result = stream(
        &config,
        source,
        snapshot,
        scrape.as_deref(),
        &counters,
        &hooks,
        nat,
        sink.as_mut(),
    )
    .await;
    drop(probes); // detach now, before any error is reported, so nothing outlives the command
    match result {
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Whether a socket from the snapshot is in what this watch looks at (the kernel filters'
/// counterpart for sockets that predate tracer).
fn watched(config: &WatchConfig, s: &SnapSocket, owners: &[Owner]) -> bool {
    let f = &config.kernel_filter;
    let ports = &f.ports[..usize::from(f.port_count)];
    (ports.is_empty() || ports.contains(&s.lport) || ports.contains(&s.rport))
        && (f.protocol == 0 || f.protocol == s.protocol)
        && (f.family == 0 || f.family == s.family)
        && (f.by_pid == 0 || owners.iter().any(|o| config.pids.contains(&o.pid)))
        && (f.by_comm == 0 || owners.iter().any(|o| o.comm == f.comm))
}

/// Decoded events → socket table → enrichment → filter → sink.
struct Pipeline {
    table: SocketTable,
    ranges: netns::PortRangeCache,
    filter: Filter,
    clock: Clock,
    summary: Summary,
    /// `--group-by remote`: connections are collected here instead of printed one by one.
    groups: Option<RemoteLog>,
    /// `serve`: nothing is printed, so nothing is enriched; the table is all that is kept.
    quiet: bool,
    /// --pid/--comm: TCP transitions are counted for metrics here, once attributed.
    process_filter: bool,
    /// `--nat…`: bindings, and socket events for flow stitching.
    nat: Option<NatRuntime>,
}

impl Pipeline {
    /// Handles one batch: its socket events, then the NAT records that came with it, then
    /// one flush for all of it.
    fn process(
        &mut self,
        batch: &mut Vec<SockEvent>,
        source: &mut impl EventSource,
        sink: &mut dyn Sink,
        scrape: Option<&Scrape>,
    ) -> io::Result<()> {
        self.summary.events += batch.len() as u64;
        for raw in batch.drain(..) {
            // Every event goes through the table (correlation needs them all); only the ones
            // shown are enriched.
            let attribution = self.table.observe(&raw);
            if let Some(nat) = self.nat.as_mut() {
                let owner = attribution.owner;
                let pid = owner.map_or(raw.pid, |o| o.pid);
                nat.socket(&raw, pid, || owner.map(|o| o.comm()).unwrap_or_default());
            }
            let allowed = self.filter.allows(&raw, &attribution);
            if allowed && self.process_filter && raw.kind == tracer_common::kind::STATE {
                if let Some(scrape) = scrape {
                    scrape.count_state(&raw);
                }
            }
            if self.quiet || !allowed {
                continue;
            }
            let pid = attribution.owner.map(|o| o.pid);
            let range = self.ranges.get(raw.netns, pid);
            if let Some(range) = range {
                self.table.usage_mut().set_range(raw.netns, range);
            }
            let event = Event::new(&raw, &attribution, range, &self.clock);
            match self.groups.as_mut() {
                Some(groups) => groups.observe(raw.sk, &event),
                None => sink.event(&event)?,
            }
        }
        for usage in self.table.usage_mut().take_warnings() {
            sink.ephemeral_warning(&usage)?;
        }
        if let Some(nat) = self.nat.as_mut() {
            nat.records(source, sink)?;
            nat.flush_out(sink)?;
        }
        sink.flush()
    }

    /// What the bounded tables (here and in the kernel) pushed out so far. Walks the kernel's
    /// LRU maps: every few seconds, not per event.
    fn evicted(&self, counters: &KernelCounters) -> crate::model::evicted::Evicted {
        let mut evicted = counters.evicted();
        evicted.sockets = self.table.evicted();
        evicted.ephemeral = self.table.usage().evicted();
        evicted.remote_log = self.groups.as_ref().map_or(0, |g| g.untracked);
        if let Some(nat) = &self.nat {
            evicted.raise_to(&nat.evicted());
        }
        evicted
    }

    /// Learns the range of namespaces that have sockets but no shown events yet.
    fn refresh_ranges(&mut self) {
        for ns in self.table.usage().namespaces() {
            if let Some(range) = self.ranges.get(ns, None) {
                self.table.usage_mut().set_range(ns, range);
            }
        }
    }
}

// Each argument is one thing `run` set up; bundling them would only rename the list.
#[allow(clippy::too_many_arguments)]
async fn stream(
    config: &WatchConfig,
    mut source: impl EventSource,
    snapshot: Option<Snapshot>,
    scrape: Option<&Scrape>,
    counters: &KernelCounters,
    hooks: &[String],
    nat: Option<NatRuntime>,
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
        groups: (config.group_by == Some(GroupBy::Remote)).then(RemoteLog::default),
        quiet: config.quiet,
        process_filter: config.kernel_filter.by_pid != 0 || config.kernel_filter.by_comm != 0,
        nat,
    };
    // The ring is drained on a short timer (10 ms for a person watching, 25 ms for `serve`),
    // and the kernel wakes the agent between ticks only when a quarter of the ring is full:
    // one wake-up per thousands of events instead of one per few.
    let mut poll = tokio::time::interval(Duration::from_millis(if config.quiet { 25 } else { 10 }));
    let mut batch: Vec<SockEvent> = Vec::with_capacity(1024);
    let mut lost_seen = 0u64;
    let started = Instant::now();
    let deadline = config.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut sweeps = 0u32;

    sink.ready(hooks).map_err(io_err)?;
    if let Some(snapshot) = snapshot {
        pipeline.table.count_time_wait_only();
        pipeline.table.merge_snapshot(&snapshot, monotonic_ns());
        let processes: std::collections::HashSet<u32> =
            snapshot.owners.values().flatten().map(|o| o.pid).collect();
        sink.snapshot(&SnapshotInfo {
            sockets: snapshot.sockets.len(),
            namespaces: snapshot.namespaces.len(),
            processes: processes.len(),
            took_ms: snapshot.took.as_secs_f64() * 1000.0,
        })
        .map_err(io_err)?;
    }
    if let Some(scrape) = scrape {
        // Every table's series from the start, so a dashboard sees them before an eviction.
        scrape.metrics.update_evicted(&pipeline.evicted(counters));
    }
    prereq::drop_privileges();
    // Loading parsed the kernel's BTF twice (aya and our offsets) and the snapshot may have
    // been large: hand that memory back instead of carrying it for the whole run.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
    let mut groups_printed = 0usize;
    let mut lost_reconciled = 0u64;
    let mut last_reconcile = Instant::now();
    loop {
        tokio::select! {
            _ = poll.tick() => {
                while source.drain_now(&mut batch) > 0 {
                    if let Some(scrape) = scrape {
                        scrape.metrics.processed("ringbuf", batch.len() as u64);
                    }
                    pipeline.process(&mut batch, &mut source, sink, scrape).map_err(io_err)?;
                }
            }
            more = source.next_batch(&mut batch) => {
                if !more? {
                    break;
                }
                if let Some(scrape) = scrape {
                    scrape.metrics.processed("ringbuf", batch.len() as u64);
                }
                pipeline.process(&mut batch, &mut source, sink, scrape).map_err(io_err)?;
            }
            Some(ev) = async {
                match pipeline.nat.as_mut() {
                    Some(nat) => nat.next_ct().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(nat) = pipeline.nat.as_mut() {
                    nat.conntrack(ev, sink).map_err(io_err)?;
                    sink.flush().map_err(io_err)?;
                }
            }
            _ = tick.tick() => {
                let lost = counters.lost() + pipeline.nat.as_ref().map_or(0, |n| n.lost());
                if lost != lost_seen {
                    sink.lost(lost - lost_seen, lost).map_err(io_err)?;
                    lost_seen = lost;
                }
                // Lost events may have been releases and closes: at most every 10 s, drop the
                // entries whose sockets the kernel no longer has.
                if lost > lost_reconciled && last_reconcile.elapsed() >= RECONCILE_EVERY {
                    let taken = monotonic_ns();
                    if let Ok(snapshot) = snapshot::take_sockets(&config.snapshot_scope) {
                        let dropped = pipeline.table.reconcile(&snapshot, taken);
                        tracing::debug!("reconciled after lost events: {dropped} entries dropped");
                    }
                    lost_reconciled = lost;
                    last_reconcile = Instant::now();
                }
                sweeps += 1;
                if sweeps.is_multiple_of(10) {
                    if let Some(nat) = pipeline.nat.as_mut() {
                        nat.tick(sink).map_err(io_err)?;
                        if let Some(scrape) = scrape {
                            scrape.metrics.update_nat(nat);
                        }
                    }
                    pipeline.refresh_ranges();
                    if let Some(scrape) = scrape {
                        scrape.update_table(&pipeline.table);
                    }
                    for usage in pipeline.table.usage_mut().take_warnings() {
                        sink.ephemeral_warning(&usage).map_err(io_err)?;
                    }
                }
                if sweeps.is_multiple_of(100) {
                    pipeline.table.sweep(monotonic_ns());
                    // Namespaces that are gone: their ranges, usage and series go too.
                    let forgotten = pipeline.ranges.prune(pipeline.table.usage_mut());
                    tracing::debug!("{forgotten} network namespaces gone");
                    if let Some(scrape) = scrape {
                        scrape.metrics.update_evicted(&pipeline.evicted(counters));
                    }
                    // Hand freed heap back (a burst may have grown the table for a while).
                    #[cfg(target_env = "gnu")]
                    // SAFETY: malloc_trim only releases free heap memory.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
                if sweeps.is_multiple_of(50) {
                    if let Some(groups) = &pipeline.groups {
                        let groups = groups.groups();
                        let count = groups.iter().map(|g| g.connections).sum::<usize>();
                        if count != groups_printed {
                            sink.remote_groups(&groups, false).map_err(io_err)?;
                            groups_printed = count;
                        }
                    }
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
    while source.drain_now(&mut batch) > 0 {
        pipeline
            .process(&mut batch, &mut source, sink, scrape)
            .map_err(io_err)?;
    }
    if let Some(nat) = pipeline.nat.as_mut() {
        nat.drain_ct(sink).map_err(io_err)?;
    }
    let mut summary = pipeline.summary;
    summary.lost = counters.lost() + pipeline.nat.as_ref().map_or(0, |n| n.lost());
    if summary.lost != lost_seen {
        sink.lost(summary.lost - lost_seen, summary.lost)
            .map_err(io_err)?;
    }
    summary.undecodable = source.undecodable();
    summary.seconds = started.elapsed().as_secs_f64();
    summary.sockets_tracked = pipeline.table.len();
    summary.evicted = pipeline.evicted(counters);
    if let Some(groups) = &pipeline.groups {
        sink.remote_groups(&groups.groups(), true).map_err(io_err)?;
    }
    pipeline.refresh_ranges();
    sink.ephemeral_report(&pipeline.table.usage().report())
        .map_err(io_err)?;
    sink.summary(&summary).map_err(io_err)?;
    io::stderr().flush().ok();
    Ok(())
}

/// `uname -r`, for tracer_build_info.
fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}
