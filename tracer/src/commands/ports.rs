//! `tracer ports`: the sockets open now, their owners and port classes, and the ephemeral-range
//! usage — from a sock_diag + /proc snapshot (no eBPF needed). `--live` loads the socket
//! probes too and keeps a full-screen view current as sockets open and close.
use std::{
    io::{self, IsTerminal, Write},
    time::Duration,
};

use crossterm::{
    event::{self as term_event, Event as TermEvent, KeyEventKind},
    execute,
    terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
};
use ratatui::{backend::CrosstermBackend, Terminal};

use crate::{
    cli::{GroupBy, NetnsChoice, PortsConfig},
    commands::resolve,
    error::{Error, Result},
    kernel::{
        loader::{KernelPath, LoadOptions, SockProbes},
        netns, prereq,
        snapshot::{self, Scope},
    },
    model::{
        event::monotonic_ns,
        ports::{self, PortRow},
        snapshot::Snapshot,
        Clock, SocketTable,
    },
    output::{ports as text, services, tui::ViewState},
    pipeline::{
        self,
        inputs::LiveKernel,
        ports_live::{usage_of, PortsLiveStage},
        Cadence, Inputs, Stop,
    },
    source::RingBufSource,
};

/// A `ports` run with its namespace and processes resolved.
pub struct PortsPlan {
    /// The configuration, with `filter.netns` set.
    pub config: PortsConfig,
    /// Where the snapshot looks.
    pub scope: Scope,
}

/// Resolves `--netns` and checks `--pid`.
pub fn prepare(mut config: PortsConfig) -> Result<PortsPlan> {
    let (scope, netns) = match &config.netns {
        NetnsChoice::Named(spec) => {
            let (path, inode) = resolve::netns(spec)?;
            (Scope::One(path), Some(inode))
        }
        NetnsChoice::All => (Scope::All, None),
        NetnsChoice::Own => (
            Scope::One("/proc/self/ns/net".into()),
            Some(netns::own_inode()?),
        ),
    };
    resolve::existing(&config.filter.pids)?;
    config.filter.netns = netns;
    Ok(PortsPlan { config, scope })
}

pub fn run(plan: PortsPlan) -> Result<()> {
    let config = &plan.config;
    if config.live {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the runtime", e))?;
        return runtime.block_on(live(plan));
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "tracer: not running as root: sockets of other users' processes show no owner, \
             and other network namespaces cannot be entered"
        );
    }
    let snapshot = snapshot::take(&plan.scope)?;
    let table = table_from(&snapshot);
    if config.mappings {
        return mappings(&table, config);
    }
    let rows = selected_rows(&table, config);
    let mut ranges = ranges_of(&snapshot, config);
    let mut usage = usage_of(&table, &config.filter);
    if config.filter.container.is_some() {
        // A container's ports: the ranges and usage of its namespaces only.
        let theirs: Vec<u32> = rows.iter().map(|r| r.netns).collect();
        ranges.retain(|(ns, _)| theirs.contains(ns));
        usage.retain(|u| theirs.contains(&u.netns));
    }
    let mut out = io::BufWriter::new(io::stdout().lock());
    let written = if config.json {
        text::write_json(&mut out, &rows, &ranges, &usage, services::system)
    } else if config.group_by == Some(GroupBy::Remote) {
        text::write_groups(&mut out, &ports::by_remote(&rows), services::system)
    } else {
        text::write_table(&mut out, &rows, services::system)
            .and_then(|_| text::write_usage(&mut out, &ranges, &usage))
    };
    match written.and_then(|_| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        other => other.map_err(|e| Error::io("writing output", e))?,
    }
    if !config.json && io::stderr().is_terminal() {
        eprintln!(
            "{} sockets in {} network namespace{}; snapshot took {:.1} ms",
            rows.len(),
            snapshot.namespaces.len(),
            if snapshot.namespaces.len() == 1 {
                ""
            } else {
                "s"
            },
            snapshot.took.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

/// `--mappings`: every published port, the rule or proxy forwarding it, who listens behind.
fn mappings(table: &SocketTable, config: &PortsConfig) -> Result<()> {
    let runtimes = crate::kernel::containers::Runtimes::start();
    runtimes.wait_listed(Duration::from_secs(3));
    let docker = runtimes.docker.clone();
    let mut resolver = crate::kernel::containers::ContainerResolver::with_runtimes(runtimes);
    let rules = crate::kernel::conntrack::dnat_rules();
    if rules.is_none() {
        eprintln!(
            "tracer: no NAT rules could be read (nft, iptables-save): mappings from Docker only"
        );
    }
    let mut rows = ports::rows(table);
    name_containers(&mut rows, &mut resolver);
    let own = netns::own_inode().ok();
    let published = docker.as_ref().map(|d| d.all()).unwrap_or_default();
    let found = crate::model::mapping::join(
        &crate::kernel::containers::published_ports(&published),
        rules.as_deref().unwrap_or_default(),
        &rows,
        own,
    );
    let found: Vec<_> = found
        .into_iter()
        .filter(|m| config.filter.ports.is_empty() || config.filter.ports.contains(&m.host_port))
        .collect();
    let mut out = io::BufWriter::new(io::stdout().lock());
    let written = if config.json {
        text::write_mappings_json(&mut out, &found)
    } else {
        text::write_mappings(&mut out, &found)
    };
    match written.and_then(|_| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| Error::io("writing output", e)),
    }
}

/// Each row's container, one question per cgroup.
fn name_containers(
    rows: &mut [PortRow],
    resolver: &mut crate::kernel::containers::ContainerResolver,
) {
    let mut cache = crate::model::container::Containers::default();
    let now = monotonic_ns();
    for row in rows.iter_mut() {
        let (cgroup, pid) = (row.cgroup, row.pid);
        row.container = cache.of(cgroup, now, || resolver.resolve(cgroup, pid));
    }
}

fn table_from(snapshot: &Snapshot) -> SocketTable {
    let mut table = SocketTable::default();
    table.merge_snapshot(snapshot, monotonic_ns());
    table
}

fn selected_rows(table: &SocketTable, config: &PortsConfig) -> Vec<PortRow> {
    let mut rows = ports::rows(table);
    let runtimes = crate::kernel::containers::Runtimes::start();
    runtimes.wait_listed(Duration::from_secs(3));
    name_containers(
        &mut rows,
        &mut crate::kernel::containers::ContainerResolver::with_runtimes(runtimes),
    );
    rows.retain(|r| config.filter.allows(r));
    ports::sort(&mut rows, config.sort, config.reverse);
    rows
}

fn ranges_of(snapshot: &Snapshot, config: &PortsConfig) -> Vec<(u32, (u16, u16))> {
    snapshot
        .namespaces
        .iter()
        .filter(|ns| config.filter.netns.is_none_or(|n| n == ns.inode))
        .filter_map(|ns| ns.port_range.map(|r| (ns.inode, r)))
        .collect()
}

/// Restores the terminal however the live view ends (return, error, panic unwinding).
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> Result<Self> {
        let fail = |e| Error::io("setting up the terminal", e);
        terminal::enable_raw_mode().map_err(fail)?;
        let guard = TerminalGuard;
        execute!(io::stdout(), EnterAlternateScreen).map_err(fail)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = execute!(io::stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
        let _ = terminal::disable_raw_mode();
    }
}

async fn live(plan: PortsPlan) -> Result<()> {
    let config = &plan.config;
    prereq::require_root("ports --live")?;
    if !io::stdout().is_terminal() {
        return Err(Error::Invalid(
            "ports --live draws a full-screen view and needs a terminal; use `tracer ports` or `tracer watch --json` when piping".into(),
        ));
    }
    let mut filter = tracer_common::KernelFilter {
        udp_data: 1,
        ..Default::default()
    };
    filter.netns = config.filter.netns.unwrap_or(0);
    let mut probes = SockProbes::load(&LoadOptions {
        filter,
        pids: Vec::new(),
        ringbuf_bytes: 4 << 20,
        data: false,
        // The live view names the worker that accept()ed a connection (as `ss` does): only
        // the syscall path sees accept() in the accepting process.
        path: KernelPath::Syscalls,
        floor: false,
        health: crate::model::types::Health::Off,
    })?;
    let source = RingBufSource::new(probes.take_events()?)?;
    let counters = std::sync::Arc::new(probes.take_counters()?);
    // Attached first, snapshot second: a socket opened in between is in both, and the table
    // keeps the live one.
    let snapshot = snapshot::take(&plan.scope)?;
    let table = table_from(&snapshot);
    prereq::drop_privileges();

    let (keys_tx, keys) = tokio::sync::mpsc::unbounded_channel();
    let _guard = TerminalGuard::enter()?;
    let terminal = Terminal::new(CrosstermBackend::new(io::stdout()))
        .map_err(|e| Error::io("setting up the terminal", e))?;
    // Keys are read on their own thread: crossterm's reader blocks. It reads a terminal and
    // nothing else, so it keeps no capability at all.
    std::thread::spawn(move || {
        if let Err(e) = prereq::restrict_thread(prereq::Keep::NOTHING) {
            tracing::debug!("key reader keeps its capabilities: {e}");
        }
        key_reader(keys_tx)
    });
    let state = ViewState::new(config.filter.clone(), config.sort, config.reverse);
    let mut stage = PortsLiveStage::new(table, state, terminal, config.filter.clone());
    let mut inputs = Inputs {
        events: source,
        kernel: Box::new(LiveKernel::new(Some(counters), plan.scope.clone(), None)),
        conntrack: None,
        extra: Some(keys),
        clock: Clock::now(),
        stop: Stop {
            signals: true,
            after: None,
        },
    };
    // Redraws (only when something changed) at most ten times a second.
    let cadence = Cadence {
        poll: None,
        tick: Duration::from_millis(100),
    };
    let result = pipeline::run(&mut inputs, cadence, &mut stage).await;
    drop(stage);
    drop(probes);
    result
}

fn key_reader(keys_tx: tokio::sync::mpsc::UnboundedSender<Option<crossterm::event::KeyEvent>>) {
    loop {
        match term_event::poll(Duration::from_millis(200)) {
            Ok(true) => match term_event::read() {
                Ok(TermEvent::Key(k)) if k.kind != KeyEventKind::Release => {
                    if keys_tx.send(Some(k)).is_err() {
                        return;
                    }
                }
                Ok(TermEvent::Resize(..)) => {
                    if keys_tx.send(None).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            },
            Ok(false) if keys_tx.is_closed() => return,
            Ok(false) => {}
            Err(_) => return,
        }
    }
}
