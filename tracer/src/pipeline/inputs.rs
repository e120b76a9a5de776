//! What a stage may ask the system while it runs, as two traits with live implementations
//! here: [`KernelInputs`] (time, loss counters, the kernel's bounded maps, port ranges,
//! namespaces, fresh socket lists) and [`NatInputs`] (the NAT side's kernel counters and
//! namespaces). Captures record every answer and replays give them back in order; tests pass
//! fakes.
use std::sync::Arc;

use tracer_common::{NatCounters, NatKey};

use crate::{kernel::containers::ContainerResolver, model::container::Container};
use crate::{
    kernel::{
        loader::{KernelCounters, KernelStats},
        nat_watch::NatWatch,
        netns::PortRangeCache,
        snapshot::{self, Scope},
    },
    metrics::server::KernelReadings,
    model::{
        event::monotonic_ns,
        evicted::Evicted,
        nat::GoneNetns,
        snapshot::{SnapSocket, Snapshot},
    },
};

/// The kernel side of a run, as a stage sees it.
pub trait KernelInputs {
    /// The kernel's monotonic time now, in ns (what event timestamps count).
    fn now_ns(&mut self) -> u64;
    /// Events the kernel could not deliver so far, over every ring this run reads.
    fn lost(&mut self) -> u64;
    /// Runs of the health hooks the kernel skipped (nested in themselves).
    fn health_skipped(&mut self) -> u64 {
        0
    }
    /// What the kernel's bounded maps pushed out. Walks them: every few seconds.
    fn evicted(&mut self) -> Evicted;
    /// Namespace `netns`'s ephemeral port range; `pid` (the socket's owner) is the first place
    /// to look for a way into it.
    fn port_range(&mut self, netns: u32, pid: Option<u32>) -> Option<(u16, u16)>;
    /// Namespace `netns`'s `net.ipv4.tcp_tw_reuse`, when [`KernelInputs::port_range`] read it
    /// (recordings and fakes: unknown, the kernel's default then applies).
    fn tw_reuse(&mut self, _netns: u32) -> Option<u8> {
        None
    }
    /// Which of `candidates` no longer exist. One scan of /proc: every few seconds.
    fn gone_namespaces(&mut self, candidates: &[u32]) -> Vec<u32>;
    /// The sockets the kernel has now, without owners (to drop entries whose close was lost).
    fn sockets_now(&mut self) -> Option<Snapshot>;
    /// The TCP listeners of these namespaces now (each with a process holding a socket
    /// there, a way in), with their queues and drops; and which namespaces could be read.
    fn listeners(&mut self, _places: &[(u32, Option<u32>)]) -> (Vec<u32>, Vec<SnapSocket>) {
        (Vec::new(), Vec::new())
    }
    /// Whether any of these processes still exists.
    fn any_alive(&mut self, pids: &[u32]) -> bool;
    /// `--container`/`--pod`: cgroup `cgroup`'s container is known for good and is (or is not)
    /// selected: the kernel may drop its calls from now on (recordings and fakes: nothing).
    /// `own_call`: the record judged was made in that cgroup's own call.
    fn judge_cgroup(&mut self, _cgroup: u64, _selected: bool, _own_call: bool) {}
    /// The container of cgroup `cgroup` (a record's), made by `pid`; None when nothing is
    /// known (recordings and fakes without the answer).
    fn container(&mut self, _cgroup: u64, _pid: Option<u32>) -> Option<Container> {
        None
    }
    /// The ports the container runtime publishes now (Docker's), for joining a userland
    /// proxy's two sockets into one connection.
    fn published(&mut self) -> crate::model::mapping::PublishedPorts {
        Default::default()
    }
    /// The NAT side, when the run watches NAT.
    fn nat(&mut self) -> Option<&mut dyn NatInputs>;
}

/// The NAT side of a run.
pub trait NatInputs {
    /// The kernel's packet and byte counts for a binding.
    fn counters(&mut self, key: &NatKey) -> Option<NatCounters>;
    /// The binding ended: its counters can go.
    fn forget(&mut self, key: &NatKey);
    /// Namespaces linked into since the last call: (inode, name).
    fn take_named(&mut self) -> Vec<(u32, String)>;
    /// Once a second: namespaces that went away (closed), and new ones found.
    fn tick(&mut self) -> Vec<GoneNetns>;
    /// Binding records and conntrack messages lost.
    fn lost(&mut self) -> u64;
    /// Bindings the kernel's bounded map pushed out. Walks it: every few seconds.
    fn evicted_seen(&mut self) -> u64;
    /// Packets and bytes through SNAT, DNAT and both (None: conntrack fallback).
    fn kernel_totals(&mut self) -> Option<[(u64, u64); 3]>;
    /// Bindings come from conntrack "new" events (no eBPF).
    fn fallback(&mut self) -> bool;
    /// NAT rules read in namespaces linked into since the last call.
    fn take_pool_rules(&mut self) -> Vec<(u32, crate::model::nat::pool::RulesRead)> {
        Vec::new()
    }
    /// The first packet the netfilter program kept of an entry it saw once only, taken.
    fn take_pending(&mut self, _key: &NatKey) -> Option<tracer_common::NatPending> {
        None
    }
    /// Every few seconds, the watched namespaces' conntrack tables (empty in between).
    fn conntrack_health(&mut self) -> Vec<crate::model::nat::health::CtHealth> {
        Vec::new()
    }
}

/// The live kernel: the socket probes' counters, the namespaces' ranges, sock_diag.
pub struct LiveKernel {
    pub counters: Option<Arc<KernelCounters>>,
    pub ranges: PortRangeCache,
    /// Where fresh socket lists look.
    pub scope: Scope,
    pub nat: Option<NatWatch>,
    /// Made with the run (it starts following Docker, so a container created after the start
    /// is named by its first socket call).
    containers: Option<ContainerResolver>,
    /// `--container`/`--pod` applied in the kernel too.
    verdicts: Option<crate::kernel::loader::CgroupVerdicts>,
}

impl LiveKernel {
    pub fn new(counters: Option<Arc<KernelCounters>>, scope: Scope, nat: Option<NatWatch>) -> Self {
        LiveKernel {
            counters,
            ranges: PortRangeCache::default(),
            scope,
            nat,
            containers: Some(ContainerResolver::new()),
            verdicts: None,
        }
    }

    /// The kernel drops the calls of the cgroups judged not selected.
    pub fn with_verdicts(
        mut self,
        verdicts: Option<crate::kernel::loader::CgroupVerdicts>,
    ) -> Self {
        self.verdicts = verdicts;
        self
    }
}

impl KernelInputs for LiveKernel {
    fn now_ns(&mut self) -> u64 {
        monotonic_ns()
    }

    fn lost(&mut self) -> u64 {
        self.counters.as_ref().map_or(0, |c| c.lost()) + self.nat.as_ref().map_or(0, NatWatch::lost)
    }

    fn health_skipped(&mut self) -> u64 {
        self.counters.as_ref().map_or(0, |c| c.health_skipped())
    }

    fn evicted(&mut self) -> Evicted {
        let mut evicted = self
            .counters
            .as_ref()
            .map(|c| c.evicted())
            .unwrap_or_default();
        evicted.nat_seen = self.nat.as_ref().map_or(0, NatWatch::evicted_seen);
        evicted.containers = self
            .containers
            .as_ref()
            .map_or(0, ContainerResolver::runtimes_evicted)
            + self
                .verdicts
                .as_ref()
                .map_or(0, crate::kernel::loader::CgroupVerdicts::forgotten);
        evicted
    }

    fn port_range(&mut self, netns: u32, pid: Option<u32>) -> Option<(u16, u16)> {
        self.ranges.get(netns, pid)
    }

    fn tw_reuse(&mut self, netns: u32) -> Option<u8> {
        self.ranges.tw_reuse(netns)
    }

    fn gone_namespaces(&mut self, candidates: &[u32]) -> Vec<u32> {
        self.ranges.prune(candidates)
    }

    fn sockets_now(&mut self) -> Option<Snapshot> {
        snapshot::take_sockets(&self.scope).ok()
    }

    fn listeners(&mut self, places: &[(u32, Option<u32>)]) -> (Vec<u32>, Vec<SnapSocket>) {
        let mut read = Vec::new();
        let mut out = Vec::new();
        for &(netns, pid) in places {
            match self.ranges.listeners(netns, pid) {
                Ok(found) => {
                    read.push(netns);
                    out.extend(found);
                }
                Err(e) => tracing::debug!("listeners of netns {netns}: {e}"),
            }
        }
        (read, out)
    }

    fn any_alive(&mut self, pids: &[u32]) -> bool {
        pids.iter()
            .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    }

    fn judge_cgroup(&mut self, cgroup: u64, selected: bool, own_call: bool) {
        if let Some(v) = self.verdicts.as_mut() {
            v.judge(cgroup, selected, own_call);
        }
    }

    fn container(&mut self, cgroup: u64, pid: Option<u32>) -> Option<Container> {
        self.containers
            .get_or_insert_with(ContainerResolver::new)
            .resolve(cgroup, pid)
    }

    fn published(&mut self) -> crate::model::mapping::PublishedPorts {
        crate::model::mapping::PublishedPorts {
            host_netns: crate::kernel::netns::own_inode().ok(),
            ports: self
                .containers
                .as_ref()
                .map(ContainerResolver::published)
                .unwrap_or_default(),
        }
    }

    fn nat(&mut self) -> Option<&mut dyn NatInputs> {
        self.nat.as_mut().map(|n| n as &mut dyn NatInputs)
    }
}

impl NatInputs for NatWatch {
    fn counters(&mut self, key: &NatKey) -> Option<NatCounters> {
        NatWatch::counters(self, key)
    }

    fn forget(&mut self, key: &NatKey) {
        NatWatch::forget(self, key)
    }

    fn take_named(&mut self) -> Vec<(u32, String)> {
        NatWatch::take_named(self)
    }

    fn tick(&mut self) -> Vec<GoneNetns> {
        NatWatch::tick(self)
    }

    fn lost(&mut self) -> u64 {
        NatWatch::lost(self)
    }

    fn evicted_seen(&mut self) -> u64 {
        NatWatch::evicted_seen(self)
    }

    fn kernel_totals(&mut self) -> Option<[(u64, u64); 3]> {
        NatWatch::kernel_totals(self)
    }

    fn fallback(&mut self) -> bool {
        self.fallback
    }

    fn conntrack_health(&mut self) -> Vec<crate::model::nat::health::CtHealth> {
        NatWatch::health(self)
    }

    fn take_pending(&mut self, key: &NatKey) -> Option<tracer_common::NatPending> {
        NatWatch::take_pending(self, key)
    }

    fn take_pool_rules(&mut self) -> Vec<(u32, crate::model::nat::pool::RulesRead)> {
        NatWatch::take_pool_rules(self)
    }
}

/// What `/metrics` reads from the kernel at each scrape.
pub struct LiveReadings {
    pub stats: KernelStats,
    pub counters: Arc<KernelCounters>,
}

impl KernelReadings for LiveReadings {
    fn stats(&self) -> Vec<u64> {
        self.stats.read()
    }

    fn lost(&self) -> crate::model::evicted::LostReasons {
        self.counters.lost_by_reason()
    }

    fn health(&self) -> Vec<(u32, u64)> {
        self.stats.health()
    }

    fn health_skipped(&self) -> u64 {
        self.counters.health_skipped()
    }
}
