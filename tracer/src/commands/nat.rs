//! `tracer nat`, and the NAT side of `watch`: link the netfilter programs into the chosen
//! namespaces (or, on kernels before 6.4, listen to conntrack events), turn records into
//! bindings, end them on conntrack destroy events, and stitch flows with socket events.
use std::{
    io::{self, Write},
    path::PathBuf,
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant},
};

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracer_common::{NatEvent, SockEvent};

use crate::{
    cli::{NatConfig, NatSourceChoice, NatTargets},
    error::{Error, Result},
    kernel::{
        conntrack::{self, CtEvent, CtStats},
        loader::{LoadOptions, SockProbes},
        nat::{NatCounterMap, NatProbes},
        netns, prereq,
    },
    model::{
        event::{comm_str, monotonic_ns},
        nat::{Binding, NatOutput, NatTable},
        Clock,
    },
    output::{human::HumanSink, json::JsonSink, Sink, Summary},
    source::{EventSource, RingBufSource},
};

/// A watched namespace.
struct Watched {
    inode: u32,
    /// What the user called it (`router`, `/proc/123/ns/net`, `host`).
    name: String,
    /// The path it was opened by (`None`: tracer's own), checked to notice it going away.
    path: Option<PathBuf>,
    /// Tells its conntrack reader to stop.
    stop: Arc<AtomicBool>,
}

impl Watched {
    /// Whether the path still names the namespace (not deleted, its process not gone).
    fn still_there(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.path
            .as_ref()
            .is_none_or(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() as u32 == self.inode))
    }
}

/// The NAT half of the agent: probes (or the conntrack fallback), the binding table, and the
/// conntrack event readers, one per namespace.
pub struct NatRuntime {
    probes: Option<NatProbes>,
    counters: Option<NatCounterMap>,
    pub table: NatTable,
    ct_rx: mpsc::UnboundedReceiver<CtEvent>,
    ct_tx: mpsc::UnboundedSender<CtEvent>,
    /// The namespaces watched, each with its conntrack reader.
    watched: Vec<Watched>,
    ct_stats: Arc<CtStats>,
    targets: NatTargets,
    /// Bindings come from conntrack "new" events (no eBPF).
    pub fallback: bool,
    clock: Clock,
    pending: Vec<NatEvent>,
    out: Vec<NatOutput>,
    /// Hook names, for `ready`.
    pub attached: Vec<String>,
    /// `--all-netns`: namespaces followed at once, at most; the cap was reached (said once),
    /// and namespaces left unwatched at the last look.
    max_netns: usize,
    cap_reported: bool,
    unwatched: std::collections::HashSet<u32>,
}

impl NatRuntime {
    /// Loads and links (or falls back). Returns the runtime and, when the NAT object has its
    /// own ring buffer (no shared one given), that ring.
    pub fn start(
        targets: NatTargets,
        max_netns: usize,
        choice: NatSourceChoice,
        shared_ring: Option<std::os::fd::OwnedFd>,
        ringbuf_bytes: u32,
    ) -> Result<(Self, Option<aya::maps::RingBuf<aya::maps::MapData>>)> {
        let (ct_tx, ct_rx) = mpsc::unbounded_channel();
        let mut rt = NatRuntime {
            probes: None,
            counters: None,
            table: NatTable::default(),
            ct_rx,
            ct_tx,
            watched: Vec::new(),
            ct_stats: Arc::new(CtStats::default()),
            targets,
            fallback: false,
            clock: Clock::now(),
            pending: Vec::new(),
            out: Vec::new(),
            attached: Vec::new(),
            max_netns,
            cap_reported: false,
            unwatched: std::collections::HashSet::new(),
        };
        let mut ring = None;
        match choice {
            NatSourceChoice::Conntrack => rt.fallback = true,
            NatSourceChoice::Ebpf | NatSourceChoice::Auto => {
                match NatProbes::load(shared_ring, ringbuf_bytes) {
                    Ok(mut probes) => {
                        ring = probes.take_events()?;
                        rt.counters = Some(probes.take_counters()?);
                        rt.probes = Some(probes);
                    }
                    Err(Error::NatUnsupported(why)) if choice == NatSourceChoice::Auto => {
                        eprintln!(
                            "tracer: {why}; NAT bindings come from conntrack events instead, without packet and byte counters"
                        );
                        rt.fallback = true;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let initial: Vec<(String, Option<PathBuf>)> = match &rt.targets {
            NatTargets::Host => vec![("host".into(), None)],
            NatTargets::Named(list) => list
                .iter()
                .map(|(name, path)| (name.clone(), Some(path.clone())))
                .collect(),
            NatTargets::All => Vec::new(),
        };
        for (name, path) in initial {
            rt.attach(&name, path)?;
        }
        if rt.targets == NatTargets::All {
            rt.discover();
        }
        Ok((rt, ring))
    }

    /// Links into one namespace and starts its conntrack reader.
    fn attach(&mut self, name: &str, path: Option<PathBuf>) -> Result<()> {
        let inode = match &path {
            Some(p) => {
                use std::os::unix::fs::MetadataExt;
                // By path, not by a lossy name: a name need not be UTF-8.
                netns::open(p, name)
                    .and_then(|f| {
                        f.metadata()
                            .map_err(|e| Error::io(format!("reading {}", p.display()), e))
                    })
                    .map_err(|_| Error::NoSuchNetns(name.to_string()))?
                    .ino() as u32
            }
            None => netns::own_inode()?,
        };
        if self.watched.iter().any(|w| w.inode == inode) {
            return Ok(());
        }
        if let Some(probes) = self.probes.as_mut() {
            probes.attach(name, path.as_deref(), inode)?;
            for hook in ["prerouting", "output", "postrouting", "input"] {
                self.attached
                    .push(format!("netfilter/{hook} (ipv4+ipv6) in netns {name}"));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let listened = conntrack::listen(
            path.clone(),
            inode,
            self.fallback,
            self.ct_tx.clone(),
            stop.clone(),
            self.ct_stats.clone(),
        );
        if let Err(e) = listened {
            if self.fallback {
                return Err(e);
            }
            let why = crate::text::escape(&format!("netns {name} ({e})")).into_owned();
            eprintln!(
                "tracer: no conntrack events in {why}; binding ends will not be reported there"
            );
        }
        self.watched.push(Watched {
            inode,
            name: name.to_string(),
            path,
            stop,
        });
        self.table.name_netns(inode, name);
        Ok(())
    }

    /// `--all-netns`: links into every namespace not yet watched, up to `--max-netns` at once
    /// (each costs a thread, a netlink socket and links; any user can create namespaces).
    /// Reaching the cap is said once, on stderr.
    fn discover(&mut self) {
        let max = self.max_netns;
        use std::os::unix::fs::MetadataExt;
        let own = netns::own_inode().unwrap_or(0);
        let mut seen = std::collections::HashSet::new();
        let mut unwatched = std::collections::HashSet::new();
        for path in netns::candidate_paths() {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let inode = meta.ino() as u32;
            if !seen.insert(inode) || self.watched.iter().any(|w| w.inode == inode) {
                continue;
            }
            if self.watched.len() >= max {
                unwatched.insert(inode);
                continue;
            }
            let (name, path) = if inode == own {
                ("host".to_string(), None)
            } else if path.starts_with("/run/netns") {
                (
                    path.file_name()
                        .map(|n| crate::text::decode(n.as_encoded_bytes()))
                        .unwrap_or_default(),
                    Some(path.clone()),
                )
            } else {
                (
                    crate::text::decode(path.as_os_str().as_encoded_bytes()),
                    Some(path.clone()),
                )
            };
            if let Err(e) = self.attach(&name, path) {
                tracing::debug!("netns {name}: {e}");
            }
        }
        if !unwatched.is_empty() && !self.cap_reported {
            self.cap_reported = true;
            eprintln!(
                "tracer: following NAT in at most {max} network namespaces (--max-netns); {} more are not watched",
                unwatched.len()
            );
        }
        self.unwatched = unwatched;
    }

    /// Namespaces found but not watched because of `--max-netns` (at the last look).
    pub fn unwatched(&self) -> usize {
        self.unwatched.len()
    }

    /// What the NAT tables pushed out to stay bounded. Walks the kernel's binding map: call
    /// it every few seconds.
    pub fn evicted(&self) -> crate::model::evicted::Evicted {
        crate::model::evicted::Evicted {
            nat_bindings: self.table.evicted_bindings(),
            nat_ends: self.table.evicted_ends(),
            nat_seen: self.counters.as_ref().map_or(0, NatCounterMap::evicted),
            ..Default::default()
        }
    }

    /// Binding records taken from the ring.
    pub fn records(
        &mut self,
        source: &mut impl EventSource,
        sink: &mut dyn Sink,
    ) -> io::Result<()> {
        source.take_nat(&mut self.pending);
        for ev in std::mem::take(&mut self.pending) {
            self.table.binding(Binding::from_event(&ev), &mut self.out);
        }
        self.flush_out(sink)
    }

    /// A socket event, for flow stitching.
    pub fn socket(&mut self, ev: &SockEvent, pid: u32, comm: impl FnOnce() -> String) {
        self.table.socket_event(ev, pid, comm, &mut self.out);
    }

    pub fn flush_out(&mut self, sink: &mut dyn Sink) -> io::Result<()> {
        for mut item in self.out.drain(..) {
            match &mut item {
                NatOutput::Binding(b) => b.ts_ns = self.clock.wall_ns(b.ts_ns),
                NatOutput::End(e) => e.ts_ns = self.clock.wall_ns(e.ts_ns),
                NatOutput::Flow(f) => {
                    f.ts_ns = self.clock.wall_ns(f.ts_ns);
                    f.nat.ts_ns = self.clock.wall_ns(f.nat.ts_ns);
                }
            }
            sink.nat(&item)?;
        }
        Ok(())
    }

    /// Waits for the next conntrack event.
    pub async fn next_ct(&mut self) -> Option<CtEvent> {
        self.ct_rx.recv().await
    }

    pub fn conntrack(&mut self, ev: CtEvent, sink: &mut dyn Sink) -> io::Result<()> {
        let now = monotonic_ns();
        if ev.destroyed {
            let counters = self.counters.as_ref();
            let key =
                self.table
                    .destroyed(&ev, now, |k| counters.and_then(|c| c.get(k)), &mut self.out);
            if let (Some(key), Some(c)) = (key, self.counters.as_mut()) {
                c.remove(&key);
            }
        } else if self.fallback {
            if let Some(b) = Binding::from_conntrack(&ev, now) {
                self.table.binding(b, &mut self.out);
            }
        }
        self.flush_out(sink)
    }

    /// Conntrack events already queued (at exit).
    pub fn drain_ct(&mut self, sink: &mut dyn Sink) -> io::Result<()> {
        while let Ok(ev) = self.ct_rx.try_recv() {
            self.conntrack(ev, sink)?;
        }
        Ok(())
    }

    /// Once a second: drops namespaces that went away (reported), finds new ones in
    /// `--all-netns` mode, and forgets socket ends nobody claimed.
    pub fn tick(&mut self, sink: &mut dyn Sink) -> io::Result<()> {
        let (gone, kept): (Vec<Watched>, Vec<Watched>) = std::mem::take(&mut self.watched)
            .into_iter()
            .partition(|w| !w.still_there());
        self.watched = kept;
        for w in gone {
            // The reader and the links are what keep a deleted namespace alive: close them.
            w.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(p) = self.probes.as_mut() {
                p.detach(w.inode);
            }
            // Its bindings, counts and metric series go with it.
            self.table.forget_netns(w.inode);
            sink.netns_gone(&w.name, w.inode)?;
        }
        if self.targets == NatTargets::All {
            self.discover();
        }
        self.table.sweep(monotonic_ns());
        Ok(())
    }

    /// Binding records lost (ring full) plus conntrack messages the kernel dropped.
    pub fn lost(&self) -> u64 {
        self.counters.as_ref().map_or(0, |c| c.lost())
            + self
                .ct_stats
                .overruns
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn kernel_totals(&self) -> Option<[(u64, u64); 3]> {
        self.counters.as_ref().map(|c| c.totals())
    }

    pub fn watched(&self) -> usize {
        self.watched.len()
    }
}

impl Drop for NatRuntime {
    fn drop(&mut self) {
        for w in &self.watched {
            w.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// `tracer nat`.
pub async fn run(config: NatConfig) -> Result<()> {
    prereq::require_root("nat")?;
    let ringbuf_bytes = config.ringbuf_bytes;
    // Socket probes too, to stitch flows (client process → binding → server process).
    let mut sock = if config.flows {
        let filter = tracer_common::KernelFilter {
            udp_data: 1,
            ..Default::default()
        };
        Some(SockProbes::load(&LoadOptions {
            filter,
            pids: Vec::new(),
            ringbuf_bytes,
            data: false,
        })?)
    } else {
        None
    };
    let shared = match sock.as_mut() {
        Some(s) => Some(s.events_fd()?),
        None => None,
    };
    let (mut nat, own_ring) = NatRuntime::start(
        config.targets.clone(),
        config.max_netns,
        config.source,
        shared,
        ringbuf_bytes,
    )?;
    let ring = match (sock.as_mut(), own_ring) {
        (Some(s), _) => Some(s.take_events()?),
        (None, ring) => ring,
    };
    let counters = match sock.as_mut() {
        Some(s) => Some(s.take_counters()?),
        None => None,
    };
    let stdout = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut sink: Box<dyn Sink> = if config.json {
        Box::new(JsonSink::new(stdout))
    } else {
        Box::new(HumanSink::new(stdout, io::stderr(), config.color))
    };
    let mut hooks = nat.attached.clone();
    if let Some(s) = &sock {
        hooks.extend(s.attached.iter().cloned());
    }
    if nat.fallback {
        hooks.push("conntrack netlink events (new, destroy)".into());
    }
    if config.json {
        sink.ready(&hooks).map_err(out_err)?;
    } else {
        let mut err = io::stderr();
        let _ = writeln!(
            err,
            "tracer: watching NAT in {} namespace(s){}; Ctrl-C to stop",
            nat.watched(),
            if config.flows {
                ", with socket events for flows"
            } else {
                ""
            }
        );
        let mut out = io::stdout();
        let _ = writeln!(out, "{}", crate::output::nat::HEADER);
    }
    prereq::drop_privileges();
    let started = Instant::now();
    let result = stream(&config, &mut nat, ring, counters.as_ref(), sink.as_mut()).await;
    let lost = nat.lost() + counters.as_ref().map_or(0, |c| c.lost());
    let mut evicted = nat.evicted();
    if let Some(c) = &counters {
        evicted.raise_to(&c.evicted());
    }
    drop(nat);
    drop(sock);
    let (events, undecodable) = result?;
    sink.summary(&Summary {
        events,
        lost,
        undecodable,
        seconds: started.elapsed().as_secs_f64(),
        sockets_tracked: 0,
        evicted,
    })
    .map_err(out_err)?;
    Ok(())
}

fn out_err(e: io::Error) -> Error {
    Error::io("writing output", e)
}

async fn stream(
    config: &NatConfig,
    nat: &mut NatRuntime,
    ring: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    counters: Option<&crate::kernel::loader::KernelCounters>,
    sink: &mut dyn Sink,
) -> Result<(u64, u64)> {
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut source = match ring {
        Some(r) => Some(RingBufSource::new(r)?),
        None => None,
    };
    let mut batch: Vec<SockEvent> = Vec::with_capacity(1024);
    let deadline = config.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut ticks = 0u32;
    let mut events = 0u64;
    let mut lost_seen = 0u64;
    loop {
        tokio::select! {
            more = async {
                match source.as_mut() {
                    Some(s) => s.next_batch(&mut batch).await,
                    None => std::future::pending().await,
                }
            } => {
                if !more? {
                    break;
                }
                events += batch.len() as u64;
                for ev in batch.drain(..) {
                    nat.socket(&ev, ev.pid, || comm_str(&ev.comm));
                }
                if let Some(s) = source.as_mut() {
                    nat.records(s, sink).map_err(out_err)?;
                }
                nat.flush_out(sink).map_err(out_err)?;
                sink.flush().map_err(out_err)?;
            }
            Some(ev) = nat.next_ct() => {
                nat.conntrack(ev, sink).map_err(out_err)?;
                sink.flush().map_err(out_err)?;
            }
            _ = tick.tick() => {
                ticks += 1;
                if ticks.is_multiple_of(4) {
                    nat.tick(sink).map_err(out_err)?;
                }
                let lost = nat.lost() + counters.map_or(0, |c| c.lost());
                if lost != lost_seen {
                    sink.lost(lost - lost_seen, lost).map_err(out_err)?;
                    lost_seen = lost;
                }
                sink.flush().map_err(out_err)?;
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    // What the kernel already wrote, and destroy events already queued.
    if let Some(s) = source.as_mut() {
        while s.drain_now(&mut batch) > 0 || !batch.is_empty() {
            events += batch.len() as u64;
            for ev in batch.drain(..) {
                nat.socket(&ev, ev.pid, || comm_str(&ev.comm));
            }
            nat.records(s, sink).map_err(out_err)?;
        }
        nat.records(s, sink).map_err(out_err)?;
    }
    nat.drain_ct(sink).map_err(out_err)?;
    sink.flush().map_err(out_err)?;
    let undecodable = source.as_ref().map_or(0, |s| s.undecodable());
    Ok((events, undecodable))
}
