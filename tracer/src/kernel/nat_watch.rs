//! The kernel half of NAT watching: the netfilter programs (or, on kernels before 6.4, only
//! conntrack events) linked into each watched namespace, a conntrack reader per namespace,
//! the kernel's per-binding counters, and the namespaces found, gone or left unwatched.
//! What the records mean (bindings, ends, flows) is the model's business.
use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;
use tracer_common::{NatCounters, NatKey};

use crate::{
    error::{Error, Result},
    kernel::{
        conntrack::{self, CtStats},
        nat::{NatCounterMap, NatProbes},
        netns, prereq,
    },
    model::nat::{health::CtHealth, pool::RulesRead, CtEvent, GoneNetns},
};

/// Where NAT is watched (names resolved to paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatPlaces {
    /// tracer's own namespace.
    Host,
    /// (name as the user gave it, path).
    Named(Vec<(String, PathBuf)>),
    /// Every namespace, including later ones, up to a cap.
    All,
}

/// How bindings are learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatSource {
    /// The netfilter programs; on a kernel without them, conntrack events (said once).
    Auto,
    /// The netfilter programs, or an error.
    Ebpf,
    /// Conntrack "new" events only.
    Conntrack,
}

/// A watched namespace.
struct Watched {
    inode: u32,
    /// What the user called it (`router`, `/proc/123/ns/net`, `host`).
    name: String,
    /// The path it was opened by (`None`: tracer's own), checked to notice it going away.
    path: Option<PathBuf>,
    /// Tells its conntrack reader to stop.
    stop: Arc<AtomicBool>,
    /// Its conntrack table's files (None: it has none).
    ct_files: Option<conntrack::CtFiles>,
}

impl Watched {
    /// Whether the path still names the namespace (not deleted, its process not gone).
    fn still_there(&self) -> bool {
        self.path
            .as_ref()
            .is_none_or(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() as u32 == self.inode))
    }
}

/// Probes (or the conntrack fallback), the conntrack readers, and the namespaces watched.
pub struct NatWatch {
    probes: Option<NatProbes>,
    counters: Option<NatCounterMap>,
    ct_tx: mpsc::UnboundedSender<CtEvent>,
    watched: Vec<Watched>,
    ct_stats: Arc<CtStats>,
    places: NatPlaces,
    /// Bindings come from conntrack "new" events (no eBPF).
    pub fallback: bool,
    /// Hook names, for `ready`.
    pub attached: Vec<String>,
    /// Namespaces linked into since the last [`NatWatch::take_named`]: (inode, name).
    named: Vec<(u32, String)>,
    /// `--all-netns`: namespaces followed at once, at most; the cap was reached (said once),
    /// and namespaces left unwatched at the last look.
    max_netns: usize,
    cap_reported: bool,
    unwatched: HashSet<u32>,
    /// When the conntrack tables were last read, and where the next read starts (a few
    /// namespaces at a time: any user can make thousands).
    health_read: Option<std::time::Instant>,
    health_cursor: usize,
    /// NAT rules read in namespaces linked into, not yet taken; and the thread that reads
    /// them (the tools it runs may take seconds: never on the loop that drains the ring).
    pool_rules: Vec<(u32, RulesRead)>,
    rules: RulesReader,
}

/// What the rules reader is asked to do.
enum RulesJob {
    /// Read a namespace's NAT rules (None: tracer's own).
    Read(u32, Option<PathBuf>),
    /// The namespaces given at start are read: give up the privileges the rest of tracer
    /// gave up (this thread was started before they were).
    Restrict,
}

/// A thread of its own that runs `nft`/`iptables-save` inside namespaces, one at a time; at
/// most [`RULES_QUEUE`] namespaces wait for it (past that a namespace's rules are "unread").
struct RulesReader {
    jobs: Option<std::sync::mpsc::SyncSender<RulesJob>>,
    done: std::sync::mpsc::Receiver<(u32, RulesRead)>,
    /// Set when start-up stops waiting: the thread drops its privileges before its next job
    /// (it was started before the rest of tracer dropped them), even with reads still queued.
    restrict: Arc<AtomicBool>,
}

const RULES_QUEUE: usize = 64;
/// How long start-up waits for the rules of the namespaces it was given.
const RULES_AT_START: std::time::Duration = std::time::Duration::from_secs(2);

impl RulesReader {
    fn start() -> RulesReader {
        let (jobs, todo) = std::sync::mpsc::sync_channel::<RulesJob>(RULES_QUEUE);
        let (found, done) = std::sync::mpsc::channel();
        let restrict = Arc::new(AtomicBool::new(false));
        let told = restrict.clone();
        let spawned = std::thread::Builder::new()
            .name("tracer-nat-rules".into())
            .spawn(move || {
                let mut restricted = false;
                for job in todo {
                    if !restricted && told.load(Ordering::Acquire) {
                        prereq::drop_privileges();
                        restricted = true;
                    }
                    match job {
                        RulesJob::Read(inode, path) => {
                            let rules = conntrack::pool_rules(path.as_deref());
                            if found.send((inode, rules)).is_err() {
                                return;
                            }
                        }
                        RulesJob::Restrict if !restricted => {
                            prereq::drop_privileges();
                            restricted = true;
                        }
                        RulesJob::Restrict => {}
                    }
                }
            });
        RulesReader {
            jobs: spawned.ok().map(|_| jobs),
            done,
            restrict,
        }
    }

    /// Queues a namespace; false when it cannot be read (queue full, no thread).
    fn read(&self, inode: u32, path: Option<PathBuf>) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|j| j.try_send(RulesJob::Read(inode, path)).is_ok())
    }
}

/// How often the watched namespaces' conntrack tables are read, and how many at a time.
const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
const HEALTH_BATCH: usize = 32;

/// What starting NAT watching gives: the watcher, its conntrack event stream, and (when the
/// NAT object has its own ring, no shared one given) that ring.
pub struct NatStarted {
    pub watch: NatWatch,
    pub conntrack: mpsc::UnboundedReceiver<CtEvent>,
    pub ring: Option<RingBuf<MapData>>,
}

impl NatWatch {
    /// Loads and links (or falls back).
    pub fn start(
        places: NatPlaces,
        max_netns: usize,
        source: NatSource,
        shared_ring: Option<std::os::fd::OwnedFd>,
        ringbuf_bytes: u32,
    ) -> Result<NatStarted> {
        let (ct_tx, ct_rx) = mpsc::unbounded_channel();
        let mut w = NatWatch {
            probes: None,
            counters: None,
            ct_tx,
            watched: Vec::new(),
            ct_stats: Arc::new(CtStats::default()),
            places,
            fallback: false,
            attached: Vec::new(),
            named: Vec::new(),
            max_netns,
            cap_reported: false,
            unwatched: HashSet::new(),
            health_read: None,
            health_cursor: 0,
            pool_rules: Vec::new(),
            rules: RulesReader::start(),
        };
        let mut ring = None;
        match source {
            NatSource::Conntrack => w.fallback = true,
            NatSource::Ebpf | NatSource::Auto => {
                match NatProbes::load(shared_ring, ringbuf_bytes) {
                    Ok(mut probes) => {
                        ring = probes.take_events()?;
                        w.counters = Some(probes.take_counters()?);
                        w.probes = Some(probes);
                    }
                    Err(Error::NatUnsupported(why)) if source == NatSource::Auto => {
                        eprintln!(
                            "tracer: {why}; NAT bindings come from conntrack events instead, without packet and byte counters"
                        );
                        w.fallback = true;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let initial: Vec<(String, Option<PathBuf>)> = match &w.places {
            NatPlaces::Host => vec![("host".into(), None)],
            NatPlaces::Named(list) => list
                .iter()
                .map(|(name, path)| (name.clone(), Some(path.clone())))
                .collect(),
            NatPlaces::All => Vec::new(),
        };
        for (name, path) in initial {
            w.attach(&name, path)?;
        }
        if w.places == NatPlaces::All {
            w.discover();
        }
        // The rules of the namespaces given are wanted before the first binding (a pool's
        // size): waited for, a little.
        let asked = w.watched.len();
        let deadline = std::time::Instant::now() + RULES_AT_START;
        while w.pool_rules.len() < asked {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match w.rules.done.recv_timeout(left) {
                Ok(found) => w.pool_rules.push(found),
                Err(_) => break,
            }
        }
        // Past here the thread keeps no more than the rest of tracer: at once when idle, else
        // before its next job (what it reads then, it reads with those privileges).
        w.rules.restrict.store(true, Ordering::Release);
        if let Some(jobs) = &w.rules.jobs {
            let _ = jobs.try_send(RulesJob::Restrict);
        }
        Ok(NatStarted {
            watch: w,
            conntrack: ct_rx,
            ring,
        })
    }

    /// Links into one namespace and starts its conntrack reader.
    fn attach(&mut self, name: &str, path: Option<PathBuf>) -> Result<()> {
        let inode = match &path {
            Some(p) => {
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
        if !self.rules.read(inode, path.clone()) {
            self.pool_rules.push((inode, RulesRead::default()));
        }
        let ct_files = conntrack::CtFiles::open(path.as_deref())
            .inspect_err(|e| tracing::debug!("conntrack table of netns {inode}: {e}"))
            .ok();
        self.watched.push(Watched {
            inode,
            name: name.to_string(),
            path,
            stop,
            ct_files,
        });
        self.named.push((inode, name.to_string()));
        Ok(())
    }

    /// `--all-netns`: links into every namespace not yet watched, up to `--max-netns` at once
    /// (each costs a thread, a netlink socket and links; any user can create namespaces).
    /// Reaching the cap is said once, on stderr.
    fn discover(&mut self) {
        let max = self.max_netns;
        let own = netns::own_inode().unwrap_or(0);
        let mut seen = HashSet::new();
        let mut unwatched = HashSet::new();
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

    /// Namespaces linked into since the last call: (inode, name).
    pub fn take_named(&mut self) -> Vec<(u32, String)> {
        std::mem::take(&mut self.named)
    }

    /// Once a second: closes namespaces that went away (returned), and finds new ones in
    /// `--all-netns` mode.
    pub fn tick(&mut self) -> Vec<GoneNetns> {
        let (gone, kept): (Vec<Watched>, Vec<Watched>) = std::mem::take(&mut self.watched)
            .into_iter()
            .partition(|w| !w.still_there());
        self.watched = kept;
        let gone = gone
            .into_iter()
            .map(|w| {
                // The reader and the links are what keep a deleted namespace alive.
                w.stop.store(true, Ordering::Relaxed);
                if let Some(p) = self.probes.as_mut() {
                    p.detach(w.inode);
                }
                GoneNetns {
                    inode: w.inode,
                    name: w.name,
                }
            })
            .collect();
        if self.places == NatPlaces::All {
            self.discover();
        }
        gone
    }

    /// The first packet the program kept of an entry it saw once only, taken.
    pub fn take_pending(&mut self, key: &NatKey) -> Option<tracer_common::NatPending> {
        self.counters.as_mut()?.take_pending(key)
    }

    /// Every few seconds, the conntrack tables of (up to [`HEALTH_BATCH`] of) the watched
    /// namespaces; empty in between. A namespace without a conntrack table is skipped.
    pub fn health(&mut self) -> Vec<CtHealth> {
        if self
            .health_read
            .is_some_and(|at| at.elapsed() < HEALTH_EVERY)
        {
            return Vec::new();
        }
        self.health_read = Some(std::time::Instant::now());
        let n = self.watched.len();
        let mut out = Vec::new();
        for i in 0..n.min(HEALTH_BATCH) {
            let w = &self.watched[(self.health_cursor + i) % n];
            let Some(files) = &w.ct_files else {
                continue;
            };
            match files.read() {
                Ok((entries, max, stat)) => out.push(CtHealth::new(
                    w.inode,
                    w.name.clone(),
                    entries,
                    max,
                    stat.unwrap_or_default(),
                )),
                Err(e) => tracing::debug!("conntrack table of netns {}: {e}", w.inode),
            }
        }
        self.health_cursor = (self.health_cursor + HEALTH_BATCH) % n.max(1);
        out
    }

    /// The kernel's packet and byte counts for a binding.
    pub fn counters(&self, key: &NatKey) -> Option<NatCounters> {
        self.counters.as_ref().and_then(|c| c.get(key))
    }

    /// Forgets a binding's counters (it ended).
    pub fn forget(&mut self, key: &NatKey) {
        if let Some(c) = self.counters.as_mut() {
            c.remove(key);
        }
    }

    /// Binding records lost (ring full) plus conntrack messages the kernel dropped.
    pub fn lost(&self) -> u64 {
        self.counters.as_ref().map_or(0, NatCounterMap::lost)
            + self.ct_stats.overruns.load(Ordering::Relaxed)
    }

    /// Bindings the kernel's bounded map pushed out. Walks the map: every few seconds.
    pub fn evicted_seen(&self) -> u64 {
        self.counters.as_ref().map_or(0, NatCounterMap::evicted)
    }

    /// Packets and bytes through SNAT, DNAT and both (None: conntrack fallback).
    pub fn kernel_totals(&self) -> Option<[(u64, u64); 3]> {
        self.counters.as_ref().map(NatCounterMap::totals)
    }

    /// Namespaces watched now.
    pub fn watched(&self) -> usize {
        self.watched.len()
    }

    /// Namespaces found but not watched because of `--max-netns` (at the last look).
    pub fn unwatched(&self) -> usize {
        self.unwatched.len()
    }
}

impl NatWatch {
    /// NAT rules read since the last call.
    pub fn take_pool_rules(&mut self) -> Vec<(u32, RulesRead)> {
        while let Ok(found) = self.rules.done.try_recv() {
            self.pool_rules.push(found);
        }
        // Rules read for a namespace that went away since: not kept for whoever reuses its
        // inode.
        let mut rules = std::mem::take(&mut self.pool_rules);
        rules.retain(|(inode, _)| self.watched.iter().any(|w| w.inode == *inode));
        rules
    }
}

impl Drop for NatWatch {
    fn drop(&mut self) {
        for w in &self.watched {
            w.stop.store(true, Ordering::Relaxed);
        }
    }
}
