//! `tracer trace`: the story of one program's sockets. Starts the command through a launcher
//! that waits until the probes are attached (so its first socket is seen), follows it and
//! every child it forks (in the kernel), and prints each socket's story as the socket closes,
//! then what is still open and a line per program. `--pid` follows running processes and
//! starts from a snapshot of the sockets they hold.
use std::{
    collections::HashMap,
    io::{self, IsTerminal, Write},
    os::fd::{AsRawFd, OwnedFd},
    os::unix::process::{CommandExt, ExitStatusExt},
    time::Duration,
};

use tokio::signal::unix::{signal, SignalKind};
use tracer_common::{DataTotals, KernelFilter, SockEvent};

use crate::{
    cli::{TraceConfig, TraceTarget},
    error::{Error, Result},
    kernel::{
        loader::{LoadOptions, SockProbes},
        netns, prereq,
        snapshot::{self, Scope},
    },
    model::{
        event::monotonic_ns,
        ports,
        story::{SocketStory, StoryBook},
        Clock, Event, SocketTable,
    },
    output::story as render,
    source::{EventSource, RingBufSource},
};

/// How long after the command exits tracer keeps reading: the last FIN/ACK transitions.
const CLOSING_GRACE: Duration = Duration::from_millis(300);

/// The launcher: wait for the gate, then become the command. Runs as the target user.
pub fn exec_when_ready(gate_fd: i32, argv: &[String]) -> i32 {
    let mut byte = [0u8; 1];
    // SAFETY: gate_fd is the read end tracer handed over; one byte (or EOF) opens the gate.
    let n = unsafe { libc::read(gate_fd, byte.as_mut_ptr().cast(), 1) };
    unsafe { libc::close(gate_fd) };
    if n != 1 {
        // tracer went away before attaching: do not run untraced.
        return 125;
    }
    let Some((program, args)) = argv.split_first() else {
        return 125;
    };
    let err = std::process::Command::new(program).args(args).exec();
    eprintln!("tracer: cannot run {program}: {err}");
    // As shells do: 127 not found, 126 found but not runnable.
    if err.kind() == io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// Runs the trace; returns the exit code tracer should exit with.
pub async fn run(config: TraceConfig) -> Result<i32> {
    prereq::require_root("trace")?;
    let mut filter = KernelFilter {
        udp_data: 1,
        ..Default::default()
    };
    let mut pids = Vec::new();
    let mut child = None;
    let mut gate: Option<OwnedFd> = None;
    match &config.target {
        TraceTarget::Command { argv, uid, gid } => {
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| Error::io("creating the start gate", e.into()))?;
            let read_fd = read.as_raw_fd();
            let exe = std::env::current_exe()
                .map_err(|e| Error::io("finding tracer's own executable", e))?;
            let mut launcher = std::process::Command::new(exe);
            launcher
                .arg("__exec-when-ready")
                .arg(read_fd.to_string())
                .arg("--")
                .args(argv)
                .uid(*uid)
                .gid(*gid);
            // SAFETY: only fcntl, async-signal-safe, between fork and exec.
            unsafe {
                launcher.pre_exec(move || {
                    if libc::fcntl(read_fd, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let spawned = launcher
                .spawn()
                .map_err(|e| Error::io(format!("starting {}", argv[0]), e))?;
            drop(read);
            filter.by_pid = 1;
            pids.push(spawned.id());
            child = Some(spawned);
            gate = Some(write);
        }
        TraceTarget::Pids(list) => {
            filter.by_pid = 1;
            pids = list.clone();
        }
        TraceTarget::Comm(name) => {
            filter.by_comm = 1;
            filter.comm[..name.len()].copy_from_slice(name.as_bytes());
        }
    }
    let loaded = SockProbes::load(&LoadOptions {
        filter,
        pids: pids.clone(),
        ringbuf_bytes: 8 << 20,
        data: true,
    });
    let mut probes = match loaded {
        Ok(p) => p,
        Err(e) => {
            // Dropping the gate unopened makes the launcher exit without running anything.
            drop(gate);
            if let Some(mut c) = child {
                let _ = c.wait();
            }
            return Err(e);
        }
    };
    let source = RingBufSource::new(probes.take_events()?)?;
    let counters = probes.take_counters()?;

    let mut table = SocketTable::default();
    let mut book = StoryBook::default();
    let now = monotonic_ns();
    let clock = Clock::now();
    // Sockets the followed processes hold already (`--pid`, `--comm`).
    if !matches!(config.target, TraceTarget::Command { .. }) {
        let mut snap = snapshot::take(&Scope::All)?;
        snap.retain(|_, owners| {
            owners.iter().any(|o| match &config.target {
                TraceTarget::Pids(p) => p.contains(&o.pid),
                TraceTarget::Comm(c) => o.comm() == *c,
                TraceTarget::Command { .. } => false,
            })
        });
        table.merge_snapshot(&snap, now);
        for row in ports::rows(&table) {
            book.predating(&row, clock.wall_ns(now));
        }
    }

    prereq::drop_privileges();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let io_err = |e: io::Error| Error::io("writing output", e);
    let describe = match &config.target {
        TraceTarget::Command { argv, .. } => format!("`{}` (pid {})", argv.join(" "), pids[0]),
        TraceTarget::Pids(p) => format!("pid {}", p[0]),
        TraceTarget::Comm(c) => format!("processes named {c}"),
    };
    if config.json {
        render::write_json(
            &mut out,
            &serde_json::json!({"type": "trace_start", "target": describe, "pids": pids}),
        )
        .map_err(io_err)?;
    } else {
        eprintln!(
            "tracer: tracing {describe} and every child it forks; {}",
            if child.is_some() {
                "stops when it exits"
            } else {
                "Ctrl-C stops"
            }
        );
    }
    out.flush().map_err(io_err)?;
    if let Some(gate) = gate.as_ref() {
        nix::unistd::write(gate, b"g")
            .map_err(|e| Error::io("opening the start gate", e.into()))?;
    }
    drop(gate);

    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    let child_pid = child.as_ref().map(|c| c.id());
    if let Some(mut c) = child {
        std::thread::spawn(move || {
            let _ = exit_tx.send(c.wait());
        });
    }
    let mut ctx = Ctx {
        table,
        book,
        ranges: netns::PortRangeCache::default(),
        clock,
        config: &config,
        events: 0,
    };
    let status = follow(&mut ctx, source, exit_rx, child_pid, &pids, &mut out).await?;

    // What the kernel still counts for sockets that are open.
    let mut still_open: HashMap<u64, DataTotals> = HashMap::new();
    if let Ok(map) = probes.take_data() {
        for (sk, totals) in map.iter().flatten() {
            still_open.insert(sk, totals.0);
        }
    }
    let lost = counters.lost();
    drop(probes);
    for id in ctx.book.finish_all(&still_open) {
        print_story(&mut out, &ctx.book.stories[id], &config).map_err(io_err)?;
    }
    let programs = ctx.book.programs();
    if !config.json && !programs.is_empty() {
        writeln!(out, "── programs ──").map_err(io_err)?;
    }
    for p in &programs {
        if config.json {
            render::write_json(&mut out, p).map_err(io_err)?;
        } else {
            render::write_program(&mut out, p).map_err(io_err)?;
        }
    }
    let code = status.map(exit_code).unwrap_or(0);
    if config.json {
        render::write_json(
            &mut out,
            &serde_json::json!({"type": "trace_end", "exit_code": status.map(exit_code),
                "sockets": ctx.book.sockets_seen(), "events": ctx.events, "lost": lost}),
        )
        .map_err(io_err)?;
    }
    out.flush().map_err(io_err)?;
    if lost > 0 {
        eprintln!("tracer: {lost} events lost (ring buffer full): the story may miss steps");
    }
    if let (Some(status), TraceTarget::Command { argv, .. }) = (status, &config.target) {
        if ctx.book.sockets_seen() == 0 {
            eprintln!(
                "tracer: {} {} before opening any socket",
                argv[0],
                describe_status(status)
            );
        } else if !config.json {
            eprintln!("tracer: {} {}", argv[0], describe_status(status));
        }
    }
    Ok(code)
}

struct Ctx<'a> {
    table: SocketTable,
    book: StoryBook,
    ranges: netns::PortRangeCache,
    clock: Clock,
    config: &'a TraceConfig,
    events: u64,
}

impl Ctx<'_> {
    fn process(&mut self, batch: &mut Vec<SockEvent>, out: &mut impl Write) -> io::Result<()> {
        self.events += batch.len() as u64;
        for raw in batch.drain(..) {
            let attribution = self.table.observe(&raw);
            let range = self.ranges.get(raw.netns, attribution.owner.map(|o| o.pid));
            let event = Event::new(&raw, &attribution, range, &self.clock);
            self.book.observe(&raw, &event);
        }
        self.print_finished(out)
    }

    fn print_finished(&mut self, out: &mut impl Write) -> io::Result<()> {
        let now = self.clock.wall_ns(monotonic_ns());
        for id in self.book.take_finished(now) {
            print_story(out, &self.book.stories[id], self.config)?;
        }
        out.flush()
    }
}

fn print_story(out: &mut impl Write, story: &SocketStory, config: &TraceConfig) -> io::Result<()> {
    if config.json {
        render::write_json(out, story)
    } else {
        render::write_story(out, story, config.explain)
    }
}

/// Reads events until the command exits (plus a short grace for the last transitions), the
/// followed processes are all gone, or a signal says stop. Returns the command's status.
async fn follow(
    ctx: &mut Ctx<'_>,
    mut source: impl EventSource,
    mut exit_rx: tokio::sync::oneshot::Receiver<io::Result<std::process::ExitStatus>>,
    child: Option<u32>,
    pids: &[u32],
    out: &mut impl Write,
) -> Result<Option<std::process::ExitStatus>> {
    let io_err = |e: io::Error| Error::io("writing output", e);
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut batch: Vec<SockEvent> = Vec::with_capacity(1024);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut status = None;
    let mut stop_at: Option<tokio::time::Instant> = None;
    let waiting_for_child = child.is_some();
    loop {
        tokio::select! {
            more = source.next_batch(&mut batch) => {
                if !more? {
                    break;
                }
                ctx.process(&mut batch, out).map_err(io_err)?;
            }
            exited = &mut exit_rx, if waiting_for_child && status.is_none() => {
                status = exited.ok().and_then(|r| r.ok());
                if status.is_none() {
                    break;
                }
                stop_at = Some(tokio::time::Instant::now() + CLOSING_GRACE);
            }
            _ = tick.tick() => {
                ctx.print_finished(out).map_err(io_err)?;
                if stop_at.is_some_and(|t| tokio::time::Instant::now() >= t) {
                    break;
                }
                // --pid: stop once every followed process has exited.
                if !waiting_for_child
                    && !pids.is_empty()
                    && pids.iter().all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
                {
                    break;
                }
            }
            _ = sigint.recv() => match child {
                // On a terminal the command got Ctrl-C too: let it handle it and exit. Sent
                // by other means, pass it on.
                Some(pid) if status.is_none() => {
                    if !io::stdin().is_terminal() {
                        forward(pid, libc::SIGINT);
                    }
                }
                _ => break,
            },
            _ = sigterm.recv() => match child {
                Some(pid) if status.is_none() => forward(pid, libc::SIGTERM),
                _ => break,
            },
        }
    }
    while source.drain_now(&mut batch) > 0 {
        ctx.process(&mut batch, out).map_err(io_err)?;
    }
    Ok(status)
}

fn forward(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) to our own child.
    unsafe { libc::kill(pid as i32, sig) };
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn describe_status(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended".into(),
    }
}
