//! `tracer trace`: the story of one program's sockets. Starts the command through a launcher
//! that waits until the probes are attached (so its first socket is seen), follows it and
//! every child it forks (in the kernel), and prints each socket's story as the socket closes,
//! then what is still open and a line per program. `--pid` follows running processes and
//! starts from a snapshot of the sockets they hold.
//!
//! The command runs as the user behind sudo or `--user`, never as root by accident, with that
//! user's groups and environment. A closed stdout (`trace … | head`) stops the tracing and
//! leaves the command to finish untraced; tracer then exits 0.
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
    cli::{RunAs, TraceConfig, TraceTarget},
    commands::closed_stdout,
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

/// The launcher: wait for the gate, become the user (group, supplementary groups, user — in
/// that order, as `sudo -u` does), then become the command. Started as root by `run`, with
/// the user's environment already in place.
pub fn exec_when_ready(gate_fd: i32, (name, uid, gid): (&str, u32, u32), argv: &[String]) -> i32 {
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
    if let Err(e) = become_user(name, uid, gid) {
        let program = crate::text::escape(program);
        eprintln!("tracer: cannot run {program} as {name}: {e}");
        return 125;
    }
    let err = std::process::Command::new(program).args(args).exec();
    eprintln!("tracer: cannot run {}: {err}", crate::text::escape(program));
    // As shells do: 127 not found, 126 found but not runnable.
    if err.kind() == io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// setgid, initgroups, setuid; then checks that root cannot be taken back. A uid other than 0
/// leaves the process no capabilities (the kernel clears them when root's uids go).
fn become_user(name: &str, uid: u32, gid: u32) -> nix::Result<()> {
    use nix::unistd::{Gid, Uid};
    let name = std::ffi::CString::new(name).map_err(|_| nix::errno::Errno::EINVAL)?;
    nix::unistd::setgid(Gid::from_raw(gid))?;
    nix::unistd::initgroups(&name, Gid::from_raw(gid))?;
    nix::unistd::setuid(Uid::from_raw(uid))?;
    if uid != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(nix::errno::Errno::EPERM);
    }
    Ok(())
}

/// Variables the command inherits from tracer's environment, as sudo's `env_reset` keeps the
/// terminal and locale ones; everything else (root's HOME, MAIL, XDG_*, …) is left behind.
const KEPT_ENV: &[&str] = &[
    "PATH",
    "TERM",
    "COLORTERM",
    "NO_COLOR",
    "LANG",
    "LANGUAGE",
    "TZ",
    "DISPLAY",
    "COLUMNS",
    "LINES",
];

/// The command's environment: the kept variables, then HOME, USER, LOGNAME and SHELL of the
/// user it runs as.
fn command_env(user: &RunAs) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            KEPT_ENV.contains(&k.as_ref()) || k.starts_with("LC_")
        })
        .collect();
    for (key, value) in [
        ("HOME", user.home.as_os_str()),
        ("USER", user.name.as_ref()),
        ("LOGNAME", user.name.as_ref()),
        ("SHELL", user.shell.as_os_str()),
    ] {
        env.push((key.into(), value.to_owned()));
    }
    env
}

/// The command, started through the launcher, held at the gate until the probes are attached.
struct Launched {
    child: std::process::Child,
    gate: OwnedFd,
}

fn launch(argv: &[String], user: &RunAs) -> Result<Launched> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::io("creating the start gate", e.into()))?;
    let read_fd = read.as_raw_fd();
    let exe =
        std::env::current_exe().map_err(|e| Error::io("finding tracer's own executable", e))?;
    let mut launcher = std::process::Command::new(exe);
    launcher
        .arg("__exec-when-ready")
        .arg(read_fd.to_string())
        .args(["--user", &user.name])
        .args(["--uid", &user.uid.to_string()])
        .args(["--gid", &user.gid.to_string()])
        .arg("--")
        .args(argv)
        .env_clear()
        .envs(command_env(user));
    // SAFETY: only fcntl, async-signal-safe, between fork and exec.
    unsafe {
        launcher.pre_exec(move || {
            if libc::fcntl(read_fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = launcher
        .spawn()
        .map_err(|e| Error::io(format!("starting {}", argv[0]), e))?;
    drop(read);
    Ok(Launched { child, gate: write })
}

/// Runs the trace; returns the exit code tracer should exit with.
pub async fn run(config: TraceConfig) -> Result<i32> {
    prereq::require_root("trace")?;
    let (filter, pids, launched) = start(&config.target)?;
    let loaded = SockProbes::load(&LoadOptions {
        filter,
        pids: pids.clone(),
        ringbuf_bytes: 8 << 20,
        data: true,
    });
    let mut probes = match loaded {
        Ok(p) => p,
        Err(e) => {
            // Closing the gate unopened makes the launcher exit without running anything.
            if let Some(Launched { mut child, gate }) = launched {
                drop(gate);
                let _ = child.wait();
            }
            return Err(e);
        }
    };
    let source = RingBufSource::new(probes.take_events()?)?;
    let counters = probes.take_counters()?;

    let clock = Clock::now();
    let (table, book) = predating(&config.target, &clock)?;

    prereq::drop_privileges();
    // `trace … | head`: once stdout's reader is gone, stop tracing and let the command finish.
    let (closed_tx, closed_rx) = tokio::sync::mpsc::unbounded_channel();
    closed_stdout::on_close(move || {
        let _ = closed_tx.send(());
    });
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let io_err = |e: io::Error| Error::io("writing output", e);
    let describe = match &config.target {
        TraceTarget::Command { argv, .. } => format!(
            "`{}` (pid {})",
            crate::text::escape(&argv.join(" ")),
            pids[0]
        ),
        TraceTarget::Pids(p) => format!("pid {}", p[0]),
        TraceTarget::Comm(c) => format!("processes named {}", crate::text::escape(c)),
    };
    let announced = announce(&mut out, &config, &describe, &pids, launched.is_some());
    let (child_pid, mut exit_rx) = open_gate(launched)?;
    let mut ctx = Ctx {
        table,
        book,
        ranges: netns::PortRangeCache::default(),
        clock,
        config: &config,
        events: 0,
    };
    let followed = match announced {
        Ok(()) => {
            let stop = Stop {
                exit: &mut exit_rx,
                closed: closed_rx,
                child: child_pid,
            };
            follow(&mut ctx, source, stop, &pids, &mut out).await
        }
        Err(e) => Err(io_err(e)),
    };
    let status = match followed {
        Err(e) if closed_stdout::is_broken_pipe(&e) => {
            // The counters hold duplicates of the programs' and maps' fds: dropped with the
            // probes, so nothing of tracer stays loaded while the command finishes.
            drop(counters);
            drop(probes);
            return Ok(finish_untraced(&mut exit_rx, child_pid).await);
        }
        other => other?,
    };
    report(ctx, probes, counters, status, &config, &mut out)
}

/// The kernel filter and the pids to follow; for a command, the launcher held at its gate.
fn start(target: &TraceTarget) -> Result<(KernelFilter, Vec<u32>, Option<Launched>)> {
    let mut filter = KernelFilter {
        udp_data: 1,
        ..Default::default()
    };
    let mut pids = Vec::new();
    let mut launched = None;
    match target {
        TraceTarget::Command { argv, user } => {
            let l = launch(argv, user)?;
            filter.by_pid = 1;
            pids.push(l.child.id());
            launched = Some(l);
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
    Ok((filter, pids, launched))
}

/// The sockets the followed processes hold already (`--pid`, `--comm`), each a story that
/// starts before the trace; nothing for a command tracer starts.
fn predating(target: &TraceTarget, clock: &Clock) -> Result<(SocketTable, StoryBook)> {
    let mut table = SocketTable::default();
    let mut book = StoryBook::default();
    if matches!(target, TraceTarget::Command { .. }) {
        return Ok((table, book));
    }
    let now = monotonic_ns();
    let mut snap = snapshot::take(&Scope::All)?;
    snap.retain(|_, owners| {
        owners.iter().any(|o| match target {
            TraceTarget::Pids(p) => p.contains(&o.pid),
            TraceTarget::Comm(c) => o.comm_bytes() == c.as_bytes(),
            TraceTarget::Command { .. } => false,
        })
    });
    table.merge_snapshot(&snap, now);
    for row in ports::rows(&table) {
        book.predating(&row, clock.wall_ns(now));
    }
    Ok((table, book))
}

/// The command's exit status, sent once it ends.
type ExitRx = tokio::sync::oneshot::Receiver<io::Result<std::process::ExitStatus>>;

/// Lets the launched command run, and waits for it on a thread of its own (holding no
/// capability). Returns its pid and where its exit status arrives.
fn open_gate(launched: Option<Launched>) -> Result<(Option<u32>, ExitRx)> {
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    let Some(Launched { mut child, gate }) = launched else {
        return Ok((None, exit_rx));
    };
    nix::unistd::write(&gate, b"g").map_err(|e| Error::io("opening the start gate", e.into()))?;
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = prereq::restrict_thread(prereq::Keep::NOTHING);
        let _ = exit_tx.send(child.wait());
    });
    Ok((Some(pid), exit_rx))
}

/// The first words: on stderr for people, a `trace_start` record for JSON.
fn announce(
    out: &mut impl Write,
    config: &TraceConfig,
    describe: &str,
    pids: &[u32],
    command: bool,
) -> io::Result<()> {
    if config.json {
        render::write_json(
            out,
            &serde_json::json!({"type": "trace_start", "target": describe, "pids": pids}),
        )?;
    } else {
        eprintln!(
            "tracer: tracing {describe} and every child it forks; {}",
            if command {
                "stops when it exits"
            } else {
                "Ctrl-C stops"
            }
        );
    }
    out.flush()
}

/// Stdout is closed: the probes are gone, and the command (if tracer started it) runs on
/// untraced. tracer waits for it, passing on SIGINT/SIGTERM as before, then exits 0.
async fn finish_untraced(exit_rx: &mut ExitRx, child: Option<u32>) -> i32 {
    let Some(pid) = child else { return 0 };
    let (Ok(mut sigint), Ok(mut sigterm)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return 0;
    };
    loop {
        tokio::select! {
            _ = &mut *exit_rx => return 0,
            _ = sigint.recv() => if !io::stdin().is_terminal() { forward(pid, libc::SIGINT) },
            _ = sigterm.recv() => forward(pid, libc::SIGTERM),
        }
    }
}

/// The stories still open, the programs, the end record and the command's status.
fn report(
    mut ctx: Ctx<'_>,
    mut probes: SockProbes,
    counters: crate::kernel::loader::KernelCounters,
    status: Option<std::process::ExitStatus>,
    config: &TraceConfig,
    out: &mut impl Write,
) -> Result<i32> {
    let io_err = |e: io::Error| Error::io("writing output", e);
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
        print_story(out, &ctx.book.stories[id], config).map_err(io_err)?;
    }
    let programs = ctx.book.programs();
    if !config.json && !programs.is_empty() {
        writeln!(out, "── programs ──").map_err(io_err)?;
    }
    for p in &programs {
        if config.json {
            render::write_json(out, p).map_err(io_err)?;
        } else {
            render::write_program(out, p).map_err(io_err)?;
        }
    }
    let code = status.map(exit_code).unwrap_or(0);
    if config.json {
        render::write_json(
            out,
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
                crate::text::escape(&argv[0]),
                describe_status(status)
            );
        } else if !config.json {
            eprintln!(
                "tracer: {} {}",
                crate::text::escape(&argv[0]),
                describe_status(status)
            );
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

/// What ends `follow` besides the events: the command's exit, a closed stdout, signals.
struct Stop<'a> {
    exit: &'a mut ExitRx,
    /// One message once stdout's reader is gone.
    closed: tokio::sync::mpsc::UnboundedReceiver<()>,
    /// The command tracer started, if any.
    child: Option<u32>,
}

/// Reads events until the command exits (plus a short grace for the last transitions), the
/// followed processes are all gone, or a signal says stop. Returns the command's status. A
/// closed stdout is a `BrokenPipe` error, whether a write or the watcher noticed it.
async fn follow(
    ctx: &mut Ctx<'_>,
    mut source: impl EventSource,
    mut stop: Stop<'_>,
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
    let child = stop.child;
    let waiting_for_child = child.is_some();
    loop {
        tokio::select! {
            more = source.next_batch(&mut batch) => {
                if !more? {
                    break;
                }
                ctx.process(&mut batch, out).map_err(io_err)?;
            }
            exited = &mut *stop.exit, if waiting_for_child && status.is_none() => {
                status = exited.ok().and_then(|r| r.ok());
                if status.is_none() {
                    break;
                }
                stop_at = Some(tokio::time::Instant::now() + CLOSING_GRACE);
            }
            Some(()) = stop.closed.recv() => {
                return Err(io_err(io::ErrorKind::BrokenPipe.into()));
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
    // SAFETY: plain kill(2) to our own child (as another user: CAP_KILL is kept for this).
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
