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
    sync::Arc,
    time::Duration,
};

use tokio::signal::unix::{signal, SignalKind};
use tracer_common::{DataTotals, KernelFilter};

use crate::{
    cli::{TraceConfig, TraceTarget},
    commands::closed_stdout,
    commands::resolve::{self, RunAs},
    error::{Error, Result},
    kernel::{
        loader::{KernelCounters, KernelPath, LoadOptions, SockProbes},
        prereq,
        snapshot::{self, Scope},
    },
    model::{event::monotonic_ns, ports, story::StoryBook, Clock, SocketTable},
    output::story as render,
    pipeline::{
        self,
        inputs::LiveKernel,
        trace::{print_story, StoryFormat, TraceInput, TraceStage},
        Cadence, Inputs, Stop,
    },
    source::RingBufSource,
};

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

/// What `trace` follows, resolved against the system.
#[derive(Debug, Clone)]
pub enum Target {
    /// Start this command as `user`.
    Command {
        argv: Vec<String>,
        user: RunAs,
    },
    /// These processes and their descendants (now; later forks are followed in the kernel).
    Pids(Vec<u32>),
    Comm(String),
}

/// A `trace` run with its user and processes resolved.
#[derive(Debug, Clone)]
pub struct TracePlan {
    pub json: bool,
    pub explain: bool,
    pub lang: crate::i18n::Lang,
    pub target: Target,
}

/// Resolves `--user` (or the user behind sudo) and `--pid` (with descendants).
pub fn prepare(config: TraceConfig) -> Result<TracePlan> {
    let target = match config.target {
        TraceTarget::Command { argv, user } => {
            let user = match &user {
                Some(name) => RunAs::named(name)?,
                None => {
                    RunAs::invoking(&argv.join(" "), std::env::var("SUDO_UID").ok().as_deref())?
                }
            };
            Target::Command { argv, user }
        }
        TraceTarget::Pids(pids) => Target::Pids(resolve::with_descendants(&pids)?),
        TraceTarget::Comm(comm) => Target::Comm(comm),
    };
    Ok(TracePlan {
        json: config.json,
        explain: config.explain,
        lang: config.lang,
        target,
    })
}

/// Runs the trace; returns the exit code tracer should exit with.
pub async fn run(config: TracePlan) -> Result<i32> {
    prereq::require_root("trace")?;
    let (filter, pids, launched) = start(&config.target)?;
    let (mut probes, launched) = load(filter, &pids, launched)?;
    let source = RingBufSource::new(probes.take_events()?)?;
    let counters = Arc::new(probes.take_counters()?);

    let clock = Clock::now();
    let (table, book) = predating(&config.target, &clock)?;

    prereq::drop_privileges();
    let (extra_tx, extra_rx) = tokio::sync::mpsc::unbounded_channel();
    // `trace … | head`: once stdout's reader is gone, stop tracing and let the command finish.
    let closed_tx = extra_tx.clone();
    closed_stdout::on_close(move || {
        let _ = closed_tx.send(TraceInput::StdoutClosed);
    });
    forward_signals(extra_tx.clone())?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    let announced = announce(
        &mut out,
        &config,
        &describe(&config.target, &pids),
        &pids,
        launched.is_some(),
    );
    let child = open_gate(launched, extra_tx)?;
    let format = StoryFormat {
        json: config.json,
        explain: config.explain,
        lang: config.lang,
    };
    let followed = if child.is_some() { Vec::new() } else { pids };
    let interactive = io::stdin().is_terminal();
    let mut stage = TraceStage::new(
        table,
        book,
        clock,
        format,
        out,
        followed,
        child,
        interactive,
    );
    let mut inputs = Inputs {
        events: source,
        kernel: Box::new(LiveKernel::new(Some(counters.clone()), Scope::All, None)),
        conntrack: None,
        extra: Some(extra_rx),
        clock,
        stop: Stop::default(),
    };
    let cadence = Cadence {
        poll: None,
        tick: Duration::from_millis(250),
    };
    let followed = match announced {
        Ok(()) => pipeline::run(&mut inputs, cadence, &mut stage).await,
        Err(e) => Err(Error::io("writing output", e)),
    };
    let Inputs {
        events,
        kernel,
        extra,
        ..
    } = inputs;
    drop((events, kernel));
    match followed {
        Err(e) if closed_stdout::is_broken_pipe(&e) => {
            // The counters hold duplicates of the programs' and maps' fds: dropped with the
            // probes, so nothing of tracer stays loaded while the command finishes.
            drop(counters);
            drop(probes);
            let exited = stage.status.is_some();
            return Ok(finish_untraced(extra, child, exited).await);
        }
        other => other?,
    }
    report(stage, probes, &counters, &config)
}

/// Loads the probes (following `pids`, collecting data totals). On failure the launched
/// command never runs: closing its gate unopened makes the launcher exit.
fn load(
    filter: KernelFilter,
    pids: &[u32],
    launched: Option<Launched>,
) -> Result<(SockProbes, Option<Launched>)> {
    let loaded = SockProbes::load(&LoadOptions {
        filter,
        pids: pids.to_vec(),
        ringbuf_bytes: 8 << 20,
        data: true,
        // A story names every call, its fd and return value: only syscalls say those.
        path: KernelPath::Syscalls,
        floor: false,
        health: crate::model::types::Health::IfPresent,
    });
    match loaded {
        Ok(probes) => Ok((probes, launched)),
        Err(e) => {
            if let Some(Launched { mut child, gate }) = launched {
                drop(gate);
                let _ = child.wait();
            }
            Err(e)
        }
    }
}

/// What is traced, in the first line.
fn describe(target: &Target, pids: &[u32]) -> String {
    match target {
        Target::Command { argv, .. } => format!(
            "`{}` (pid {})",
            crate::text::escape(&argv.join(" ")),
            pids[0]
        ),
        Target::Pids(p) => format!("pid {}", p[0]),
        Target::Comm(c) => format!("processes named {}", crate::text::escape(c)),
    }
}

/// SIGINT and SIGTERM become inputs of the trace (passed on to the command while it runs).
fn forward_signals(tx: tokio::sync::mpsc::UnboundedSender<TraceInput>) -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    tokio::spawn(async move {
        loop {
            let sig = tokio::select! {
                _ = sigint.recv() => libc::SIGINT,
                _ = sigterm.recv() => libc::SIGTERM,
            };
            if tx.send(TraceInput::Signal(sig)).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// The kernel filter and the pids to follow; for a command, the launcher held at its gate.
fn start(target: &Target) -> Result<(KernelFilter, Vec<u32>, Option<Launched>)> {
    let mut filter = KernelFilter {
        udp_data: 1,
        ..Default::default()
    };
    let mut pids = Vec::new();
    let mut launched = None;
    match target {
        Target::Command { argv, user } => {
            let l = launch(argv, user)?;
            filter.by_pid = 1;
            pids.push(l.child.id());
            launched = Some(l);
        }
        Target::Pids(list) => {
            filter.by_pid = 1;
            pids = list.clone();
        }
        Target::Comm(name) => {
            filter.by_comm = 1;
            filter.comm[..name.len()].copy_from_slice(name.as_bytes());
        }
    }
    Ok((filter, pids, launched))
}

/// The sockets the followed processes hold already (`--pid`, `--comm`), each a story that
/// starts before the trace; nothing for a command tracer starts.
fn predating(target: &Target, clock: &Clock) -> Result<(SocketTable, StoryBook)> {
    let mut table = SocketTable::default();
    let mut book = StoryBook::with_names(crate::output::services::system);
    if matches!(target, Target::Command { .. }) {
        return Ok((table, book));
    }
    let now = monotonic_ns();
    let mut snap = snapshot::take(&Scope::All)?;
    snap.retain(|_, owners| {
        owners.iter().any(|o| match target {
            Target::Pids(p) => p.contains(&o.pid),
            Target::Comm(c) => o.comm_bytes() == c.as_bytes(),
            Target::Command { .. } => false,
        })
    });
    table.merge_snapshot(&snap, now);
    for row in ports::rows(&table) {
        book.predating(&row, clock.wall_ns(now));
    }
    Ok((table, book))
}

/// The command's exit status, sent once it ends.
/// Lets the launched command run, and waits for it on a thread of its own (holding no
/// capability), which sends its exit as a [`TraceInput::Exited`]. Returns its pid.
fn open_gate(
    launched: Option<Launched>,
    tx: tokio::sync::mpsc::UnboundedSender<TraceInput>,
) -> Result<Option<u32>> {
    let Some(Launched { mut child, gate }) = launched else {
        return Ok(None);
    };
    nix::unistd::write(&gate, b"g").map_err(|e| Error::io("opening the start gate", e.into()))?;
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = prereq::restrict_thread(prereq::Keep::NOTHING);
        let _ = tx.send(TraceInput::Exited(child.wait().ok()));
    });
    Ok(Some(pid))
}

/// The first words: on stderr for people, a `trace_start` record for JSON.
fn announce(
    out: &mut impl Write,
    config: &TracePlan,
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
async fn finish_untraced(
    inputs: Option<tokio::sync::mpsc::UnboundedReceiver<TraceInput>>,
    child: Option<u32>,
    exited: bool,
) -> i32 {
    let (Some(pid), Some(mut inputs), false) = (child, inputs, exited) else {
        return 0;
    };
    let interactive = io::stdin().is_terminal();
    while let Some(input) = inputs.recv().await {
        match input {
            TraceInput::Exited(_) => return 0,
            TraceInput::Signal(libc::SIGINT) if interactive => {}
            TraceInput::Signal(sig) => forward(pid, sig),
            TraceInput::StdoutClosed => {}
        }
    }
    0
}

/// The stories still open, the programs, the end record and the command's status.
fn report(
    mut stage: TraceStage<impl Write>,
    mut probes: SockProbes,
    counters: &KernelCounters,
    config: &TracePlan,
) -> Result<i32> {
    let status = stage.status;
    let format = StoryFormat {
        json: config.json,
        explain: config.explain,
        lang: config.lang,
    };
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
    let events = stage.events;
    let (book, out) = stage.parts();
    for id in book.finish_all(&still_open) {
        print_story(out, &book.stories[id], format).map_err(io_err)?;
    }
    let programs = book.programs();
    if !config.json && !programs.is_empty() {
        writeln!(out, "── programs ──").map_err(io_err)?;
    }
    for p in &programs {
        if config.json {
            render::write_program_json(out, p).map_err(io_err)?;
        } else {
            render::write_program(out, p).map_err(io_err)?;
        }
    }
    let code = status.map(exit_code).unwrap_or(0);
    if config.json {
        render::write_json(
            out,
            &serde_json::json!({"type": "trace_end", "exit_code": status.map(exit_code),
                "sockets": book.sockets_seen(), "events": events, "lost": lost}),
        )
        .map_err(io_err)?;
    }
    out.flush().map_err(io_err)?;
    if lost > 0 {
        eprintln!("tracer: {lost} events lost (ring buffer full): the story may miss steps");
    }
    if let (Some(status), Target::Command { argv, .. }) = (status, &config.target) {
        if book.sockets_seen() == 0 {
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
