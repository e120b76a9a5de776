//! `tracer watch` and `tracer serve`: resolve what to watch, attach, take the start-up
//! snapshot, then run the [`WatchStage`] until Ctrl-C, SIGTERM or `--duration`. Dropping the
//! probes detaches every program and link.
use std::{io, sync::Arc, time::Duration};

use tracer_common::KernelFilter;

use crate::{
    cli::{GroupBy, NatSourceChoice, WatchConfig, WatchMode},
    commands::resolve,
    error::{Error, Result},
    kernel::{
        loader::KernelCounters,
        loader::{LoadOptions, SockProbes},
        nat_watch::{NatPlaces, NatSource, NatStarted, NatWatch},
        prereq,
        snapshot::{self, Scope},
    },
    metrics::{self, server::Scrape, Metrics},
    model::{
        snapshot::{SnapSocket, Snapshot},
        Clock, Filter, Owner,
    },
    output::{human::HumanSink, json::JsonSink, log::LogSink, Sink},
    pipeline::{
        self,
        inputs::{LiveKernel, LiveReadings},
        record::Recording,
        watch::{WatchSetup, WatchStage},
        Cadence, Inputs, Stop,
    },
    source::{
        capture::{self, CaptureWriter, Header},
        RingBufSource,
    },
};

/// A watch with everything the user named resolved against the system.
pub struct WatchPlan {
    pub config: WatchConfig,
    /// The kernel filter, with the namespace inode and the process filter set.
    pub kernel_filter: KernelFilter,
    /// The `--pid` processes and their descendants at start.
    pub pids: Vec<u32>,
    /// Where snapshots look.
    pub scope: Scope,
}

/// Resolves `--netns` and `--pid` (before anything is loaded: a typo fails at once).
pub fn prepare(config: WatchConfig) -> Result<WatchPlan> {
    let (scope, netns) = resolve::watch_scope(config.netns.as_deref())?;
    let pids = resolve::with_descendants(&config.pids)?;
    let kernel_filter = KernelFilter {
        netns,
        ..config.kernel_filter
    };
    Ok(WatchPlan {
        config,
        kernel_filter,
        pids,
        scope,
    })
}

/// The NAT source the CLI chose, as the kernel side names it.
pub fn nat_source(choice: NatSourceChoice) -> NatSource {
    match choice {
        NatSourceChoice::Auto => NatSource::Auto,
        NatSourceChoice::Ebpf => NatSource::Ebpf,
        NatSourceChoice::Conntrack => NatSource::Conntrack,
    }
}

pub async fn run(plan: WatchPlan) -> Result<()> {
    let config = &plan.config;
    let serve = config.mode == WatchMode::Serve;
    prereq::require_root(if serve { "serve" } else { "watch" })?;
    let nat_places = match &config.nat {
        Some((targets, _)) => Some(resolve::nat_places(targets)?),
        None => None,
    };
    // Bound before anything is attached: a busy port fails at once, with nothing to undo.
    let listener = match config.metrics {
        Some(addr) => Some(metrics::server::bind(addr)?),
        None => None,
    };
    let (mut probes, nat) = attach(&plan, nat_places)?;
    let source = RingBufSource::new(probes.take_events()?)?;
    let counters = Arc::new(probes.take_counters()?);
    let verdicts = if plan.kernel_filter.by_cgroup != 0 {
        Some(probes.take_cgroup_verdicts()?)
    } else {
        None
    };
    // Questions for the agent (`/nat/who`) reach the stage on this channel.
    let (who_tx, who_rx) = tokio::sync::mpsc::unbounded_channel();
    let (scrape, questions) = match listener {
        Some(listener) => {
            let scrape = serve_metrics(listener, config, &mut probes, &counters, who_tx)?;
            (Some(scrape), Some(who_rx))
        }
        None => (None, None),
    };
    let snapshot = start_up_snapshot(&plan);
    let mut hooks = probes.attached.clone();
    let (nat_watch, conntrack) = match nat {
        Some(started) => {
            hooks.extend(started.watch.attached.iter().cloned());
            (Some(started.watch), Some(started.conntrack))
        }
        None => (None, None),
    };
    let clock = Clock::now();
    let writer = match &config.record {
        Some(path) => {
            let header = capture_header(config, &clock, &hooks, nat_watch.as_ref(), &snapshot);
            Some(CaptureWriter::create(
                path,
                &header,
                crate::source::capture::sudo_user(),
            )?)
        }
        None => None,
    };
    let stage = WatchStage::new(WatchSetup {
        nat: nat_watch.is_some(),
        scrape,
        hooks,
        snapshot,
        clock,
        ..setup(config)
    });
    let mut inputs = Inputs {
        events: source,
        kernel: Box::new(
            LiveKernel::new(Some(counters), plan.scope.clone(), nat_watch).with_verdicts(verdicts),
        ),
        conntrack,
        extra: questions,
        clock,
        stop: Stop {
            signals: true,
            after: config.duration,
        },
    };
    prereq::drop_privileges();
    let cadence = Cadence {
        // 10 ms for a person watching, 25 ms for `serve`.
        poll: Some(Duration::from_millis(if serve { 25 } else { 10 })),
        tick: Duration::from_millis(100),
    };
    let result = match writer {
        Some(writer) => {
            let mut recording = Recording {
                stage,
                writer,
                last_published: None,
            };
            pipeline::run(&mut inputs, cadence, &mut recording).await
        }
        None => pipeline::run(&mut inputs, cadence, &mut { stage }).await,
    };
    drop(probes); // detach now, before any error is reported, so nothing outlives the command
    match result {
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Loads the socket probes and, with `--nat…`, links the NAT programs sharing their ring.
fn attach(
    plan: &WatchPlan,
    nat_places: Option<NatPlaces>,
) -> Result<(SockProbes, Option<NatStarted>)> {
    let config = &plan.config;
    let process_filter = !config.pids.is_empty() || config.comm.is_some();
    let probes = SockProbes::load(&LoadOptions {
        filter: KernelFilter {
            // The runner drains on a timer too: wake it only when a quarter of the ring is
            // waiting.
            wakeup_bytes: config.ringbuf_bytes / 4,
            // `serve` keeps only the socket table: what it merely counts stays in the kernel.
            // With a process filter the agent attributes (and counts) transitions itself.
            metrics_only: u8::from(config.mode == WatchMode::Serve && !process_filter),
            ..plan.kernel_filter
        },
        pids: plan.pids.clone(),
        ringbuf_bytes: config.ringbuf_bytes,
        data: false,
        path: config.path,
        floor: false,
        health: config.health,
    })?;
    let nat = match (nat_places, &config.nat) {
        (Some(places), Some((_, choice))) => Some(NatWatch::start(
            places,
            config.nat_max_netns,
            nat_source(*choice),
            Some(probes.events_fd()?),
            config.ringbuf_bytes,
        )?),
        _ => None,
    };
    Ok((probes, nat))
}

/// The registry, fed from the kernel's counters at each scrape, on its own thread.
fn serve_metrics(
    listener: std::net::TcpListener,
    config: &WatchConfig,
    probes: &mut SockProbes,
    counters: &Arc<KernelCounters>,
    questions: tokio::sync::mpsc::UnboundedSender<crate::pipeline::nat::WhoAsk>,
) -> Result<Arc<Scrape>> {
    let addr = listener.local_addr().ok();
    let scrape = Arc::new(Scrape::new(
        Metrics::new(config.max_listen_ports, &kernel_release()),
        Box::new(LiveReadings {
            stats: probes.take_stats()?,
            counters: counters.clone(),
        }),
    ));
    let ask = super::who::asker(questions);
    metrics::server::spawn(listener, scrape.clone(), Some(ask), prereq::drop_privileges)?;
    if let Some(addr) = addr {
        tracing::info!("serving metrics on http://{addr}/metrics");
    }
    Ok(scrape)
}

/// The sockets that predate tracer, narrowed to what this watch looks at. Attached first,
/// snapshot second: a socket opened in between is in both, and the table keeps the live one.
/// Without a snapshot tracer still works, it just cannot name the owners of older sockets.
fn start_up_snapshot(plan: &WatchPlan) -> Option<Snapshot> {
    snapshot::take(&plan.scope)
        .inspect_err(|e| {
            let e = crate::text::escape_log(&e.to_string()).into_owned();
            eprintln!("tracer: no snapshot of existing sockets ({e}); their owners stay unknown")
        })
        .ok()
        .map(|mut s| {
            s.retain(|socket, owners| watched(plan, socket, owners));
            s
        })
}

/// What a capture of this run says about it.
fn capture_header(
    config: &WatchConfig,
    clock: &Clock,
    hooks: &[String],
    nat: Option<&NatWatch>,
    snapshot: &Option<Snapshot>,
) -> Header {
    Header {
        version: capture::VERSION,
        tracer: env!("CARGO_PKG_VERSION").into(),
        kernel: kernel_release(),
        sock_record_size: tracer_common::SOCK_EVENT_SIZE,
        nat_record_size: tracer_common::NAT_EVENT_SIZE,
        clock_offset_ns: clock.offset_ns(),
        hooks: hooks.to_vec(),
        by_pid: !config.pids.is_empty(),
        comm: config.comm.clone(),
        nat: nat.is_some(),
        nat_fallback: nat.is_some_and(|n| n.fallback),
        snapshot: snapshot.clone(),
        reasons: crate::model::health::names(),
    }
}

/// What the stage shows and how, from the configuration (no hooks, snapshot or NAT yet).
fn setup(config: &WatchConfig) -> WatchSetup {
    WatchSetup {
        mode: config.mode,
        filter: Filter::new(
            &config.output.events,
            !config.pids.is_empty(),
            config.comm.as_deref(),
        )
        .with_who(config.who)
        .with_container(config.container.clone()),
        group_by_remote: config.output.group_by == Some(GroupBy::Remote),
        // The kernel cannot count for a process, container or pod filter (its transitions run in
        // softirq): the agent counts what it attributed to the selection.
        process_filter: !config.pids.is_empty()
            || config.comm.is_some()
            || config.container.is_some(),
        nat: false,
        who: config.who,
        nat_history: config.nat_history,
        sink: sink(config),
        scrape: None,
        hooks: Vec::new(),
        snapshot: None,
        clock: Clock::identity(),
    }
}

/// Where a watch's output goes: the log for `serve`, else stdout as the flags say.
fn sink(config: &WatchConfig) -> Box<dyn Sink> {
    if config.mode == WatchMode::Serve {
        return Box::new(LogSink);
    }
    stdout_sink(
        config.output.json,
        config.output.color,
        config.output.group_by.is_some(),
    )
}

/// The table (colour on a terminal, no header when grouping) or JSON lines, on stdout.
pub fn stdout_sink(json: bool, color: bool, grouped: bool) -> Box<dyn Sink> {
    let stdout = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    if json {
        Box::new(JsonSink::new(stdout))
    } else {
        let sink = HumanSink::new(stdout, io::stderr(), color);
        Box::new(if grouped { sink.without_header() } else { sink })
    }
}

/// Whether a socket from the snapshot is in what this watch looks at (the kernel filters'
/// counterpart for sockets that predate tracer).
fn watched(plan: &WatchPlan, s: &SnapSocket, owners: &[Owner]) -> bool {
    let f = &plan.kernel_filter;
    let ports = &f.ports[..usize::from(f.port_count)];
    (ports.is_empty() || ports.contains(&s.lport) || ports.contains(&s.rport))
        && (f.protocol == 0 || f.protocol == s.protocol)
        && (f.family == 0 || f.family == s.family)
        && (plan.config.pids.is_empty() || owners.iter().any(|o| plan.pids.contains(&o.pid)))
        && plan
            .config
            .comm
            .as_ref()
            .is_none_or(|c| owners.iter().any(|o| o.comm_bytes() == c.as_bytes()))
}

/// `uname -r`, for tracer_build_info.
fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}
