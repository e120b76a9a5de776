//! `watch` and `serve` as a stage: every socket event through the socket table (and the NAT
//! stage, with `--nat…`), enriched and filtered for the sink, counted for the metrics; every
//! tick, loss, ranges, gauges, warnings and the table's upkeep.
use std::sync::Arc;

use tracer_common::{flag, kind, NatEvent, SockEvent};

use super::{
    nat::{NatStage, WhoAsk, WhoReply},
    out_err, Flow, KernelInputs, Stage,
};
use crate::model::container::Containers;
use crate::{
    cli::WatchMode,
    error::Result,
    metrics::{self, server::Scrape},
    model::{
        evicted::Evicted, listen::ListenQueues, nat::who::Who, ports::RemoteLog,
        snapshot::Snapshot, Clock, Event, Filter, SocketTable,
    },
    output::{Sink, SnapshotInfo, Summary},
};

/// How often, at most, the socket table is checked against the kernel after lost events.
const RECONCILE_EVERY_NS: u64 = 10_000_000_000;

/// What a watch shows and where.
pub struct WatchStage {
    table: SocketTable,
    filter: Filter,
    clock: Clock,
    summary: Summary,
    /// `--group-by remote`: connections are collected here instead of printed one by one.
    groups: Option<RemoteLog>,
    mode: WatchMode,
    /// --pid/--comm: TCP transitions are counted for metrics here, once attributed.
    process_filter: bool,
    /// `--nat…`: bindings, and socket events for flow stitching.
    nat: Option<NatStage>,
    sink: Box<dyn Sink>,
    scrape: Option<Arc<Scrape>>,
    hooks: Vec<String>,
    snapshot: Option<Snapshot>,
    started_ns: u64,
    lost_seen: u64,
    lost_reconciled: u64,
    last_reconcile_ns: u64,
    ticks: u32,
    groups_printed: usize,
    /// Listen queues: the last drop count of each listener read.
    listen: ListenQueues,
    /// The namespace the last listen-queue reading ended with.
    listen_cursor: u32,
    /// Cgroup → container, for the events shown.
    containers: Containers,
    /// A userland proxy's accepts waiting for their second connection.
    proxies: crate::model::proxy::ProxyLinks,
}

/// What a [`WatchStage`] is built from.
pub struct WatchSetup {
    pub mode: WatchMode,
    pub filter: Filter,
    pub group_by_remote: bool,
    pub process_filter: bool,
    pub nat: bool,
    /// `--who` for NAT records, and how long and how many ended bindings are kept to answer
    /// questions ([`super::nat::WhoAsk`]).
    pub who: Option<Who>,
    pub nat_history: (u64, usize),
    pub sink: Box<dyn Sink>,
    pub scrape: Option<Arc<Scrape>>,
    /// The hooks attached, for the sink's `ready`.
    pub hooks: Vec<String>,
    /// The start-up snapshot (already narrowed to what is watched).
    pub snapshot: Option<Snapshot>,
    pub clock: Clock,
}

impl WatchStage {
    pub fn new(setup: WatchSetup) -> Self {
        let mut table = SocketTable::default();
        if setup.mode == WatchMode::Serve && !setup.process_filter {
            table.without_departed();
        }
        WatchStage {
            table,
            filter: setup.filter,
            clock: setup.clock,
            summary: Summary::default(),
            groups: setup.group_by_remote.then(RemoteLog::default),
            mode: setup.mode,
            process_filter: setup.process_filter,
            nat: setup
                .nat
                .then(|| NatStage::new(setup.clock).with_who(setup.who, setup.nat_history)),
            sink: setup.sink,
            scrape: setup.scrape,
            hooks: setup.hooks,
            snapshot: setup.snapshot,
            started_ns: 0,
            lost_seen: 0,
            lost_reconciled: 0,
            last_reconcile_ns: 0,
            ticks: 0,
            groups_printed: 0,
            listen: ListenQueues::default(),
            listen_cursor: 0,
            containers: Containers::default(),
            proxies: Default::default(),
        }
    }

    /// The socket events of a batch: through the table, the NAT stage, the filter, the sink.
    fn sockets(&mut self, batch: &mut Vec<SockEvent>, kernel: &mut dyn KernelInputs) -> Result<()> {
        self.summary.events += batch.len() as u64;
        for raw in batch.drain(..) {
            // Every event goes through the table (correlation needs them all); only the ones
            // shown are enriched.
            let attribution = self.table.observe(&raw);
            if let Some(nat) = self.nat.as_mut() {
                // The owner as the table attributes it; never the task that happened to be on
                // the CPU for a record made outside its owner's call (0 and no name then).
                let owner = attribution.owner;
                let containers = &mut self.containers;
                let names = || match owner {
                    Some(o) => {
                        let container = containers.of(o.cgroup, raw.ts_ns, || {
                            kernel.container(o.cgroup, Some(o.pid))
                        });
                        (o.comm(), container.map(|c| c.label().to_string()))
                    }
                    None => (String::new(), None),
                };
                nat.socket(&raw, owner.map_or(0, |o| o.pid), names);
            }
            if let (Some(scrape), Some(owner)) = (&self.scrape, attribution.owner) {
                if let Some(errno) = crate::model::event::failed_connect(&raw) {
                    let container = self.containers.of(owner.cgroup, raw.ts_ns, || {
                        kernel.container(owner.cgroup, Some(owner.pid))
                    });
                    let label = crate::output::human::container_label(container.as_deref());
                    scrape.metrics.count_container_connect_error(&label, &errno);
                }
            }
            let allowed = self.filter.allows(&raw, &attribution);
            // What ran outside its owner's context the kernel could not tell was selected:
            // counted here, once attributed.
            let unowned = raw.kind == kind::STATE
                || (raw.flags & flag::FROM_HOOK != 0 && raw.flags & flag::OWNER_IN_CONTEXT == 0);
            // Counted for the selection: with a container filter, once the owner's container
            // says it is selected.
            let selected = allowed
                && self.process_filter
                && (!self.filter.wants_container() || self.scrape.is_none() || {
                    let container = attribution.owner.and_then(|o| {
                        self.containers.of(o.cgroup, raw.ts_ns, || {
                            kernel.container(o.cgroup, Some(o.pid))
                        })
                    });
                    self.filter.allows_container(container.as_deref())
                });
            if selected {
                if let Some(scrape) = &self.scrape {
                    if crate::model::health::is_health(raw.kind) {
                        scrape.count_health(&raw);
                    } else if unowned {
                        scrape.count_state(&raw);
                    }
                    scrape.count_latency(&attribution.latency, &raw);
                }
            }
            // Before any filter: a proxy's two halves are linked even when only one is shown.
            let proxied = if self.mode != WatchMode::Serve && self.proxies.active() {
                crate::model::proxy::Call::of(&raw, &attribution, allowed)
                    .and_then(|c| self.proxies.observe(c))
            } else {
                None
            };
            'show: {
                if self.mode == WatchMode::Serve || !allowed {
                    break 'show;
                }
                let pid = attribution.owner.map(|o| o.pid);
                let range = kernel.port_range(raw.netns, pid);
                // `tcp_tw_reuse` is read with the range: looked up here only when the range is new
                // (the per-second refresh follows a change of its own).
                if range.is_some_and(|r| self.table.usage_mut().set_range(raw.netns, r)) {
                    if let Some(v) = kernel.tw_reuse(raw.netns) {
                        self.table.usage_mut().set_tw_reuse(raw.netns, v);
                    }
                }
                let mut event = Event::new(&raw, &attribution, range, &self.clock);
                if let Some(owner) = attribution.owner {
                    event.container = self.containers.of(owner.cgroup, raw.ts_ns, || {
                        kernel.container(owner.cgroup, Some(owner.pid))
                    });
                }
                if let Some(owner) = attribution.owner.filter(|_| self.filter.wants_container()) {
                    if let Some(selected) =
                        self.filter.container_verdict(event.container.as_deref())
                    {
                        let in_context = raw.flags & flag::FROM_HOOK == 0
                            || raw.flags & flag::OWNER_IN_CONTEXT != 0;
                        let own_call = in_context && raw.cgroup == owner.cgroup;
                        kernel.judge_cgroup(owner.cgroup, selected, own_call);
                    }
                }
                if !self.filter.allows_container(event.container.as_deref()) {
                    break 'show;
                }
                match self.groups.as_mut() {
                    Some(groups) => groups.observe(raw.sk, &event),
                    None => self.sink.event(&event).map_err(out_err)?,
                }
            }
            if let Some(p) = proxied.filter(|p| p.shown) {
                match self.groups.as_mut() {
                    Some(groups) => groups.proxied(p.back_sock, p.client),
                    None => self.sink.proxied(&p).map_err(out_err)?,
                }
            }
        }
        for usage in self.table.usage_mut().take_warnings() {
            self.sink.ephemeral_warning(&usage).map_err(out_err)?;
        }
        Ok(())
    }

    /// Every two seconds: the listeners' queues (for `ports`' columns and the metrics) and
    /// the connection attempts each dropped, charged to its owner.
    fn read_listen_queues(&mut self, kernel: &mut dyn KernelInputs) -> Result<()> {
        let overflows = super::read_listen_queues(
            &mut self.table,
            &mut self.listen,
            &mut self.listen_cursor,
            kernel,
        );
        if let Some(scrape) = self.scrape.clone() {
            let labels = self.listener_containers(kernel);
            scrape.listen_queues(&overflows, &self.table, &|cgroup| label_of(&labels, cgroup));
        }
        if self.mode == WatchMode::Serve {
            return Ok(());
        }
        for overflow in &overflows {
            self.sink.listen_overflow(overflow).map_err(out_err)?;
        }
        Ok(())
    }

    /// The containers of the listeners' owners and of the ephemeral ports' holders, for the
    /// metrics' `container` label.
    fn listener_containers(
        &mut self,
        kernel: &mut dyn KernelInputs,
    ) -> foldhash::HashMap<u64, String> {
        let now = kernel.now_ns();
        let mut labels = foldhash::HashMap::default();
        for s in self
            .table
            .sockets()
            .filter(|s| s.is_listening() || s.holds_ephemeral())
        {
            let Some(owner) = s.owner() else { continue };
            if labels.contains_key(&owner.cgroup) {
                continue;
            }
            let container = self.containers.of(owner.cgroup, now, || {
                kernel.container(owner.cgroup, Some(owner.pid))
            });
            let label = crate::output::human::container_label(container.as_deref());
            labels.insert(owner.cgroup, label.to_string());
        }
        labels
    }

    /// What the bounded tables (here and in the kernel) pushed out so far.
    fn evicted(&self, kernel: &mut dyn KernelInputs) -> Evicted {
        let mut evicted = kernel.evicted();
        evicted.sockets = self.table.evicted();
        evicted.closed_sockets = self.table.departed_evicted();
        // Docker's names the kernel side forgot, and the cgroups this stage forgot.
        evicted.containers += self.containers.evicted();
        evicted.proxies = self.proxies.evicted;
        evicted.ephemeral = self.table.usage_evicted();
        evicted.remote_log = self.groups.as_ref().map_or(0, |g| g.untracked);
        if let Some(nat) = &self.nat {
            evicted.raise_to(&nat.evicted());
        }
        evicted
    }

    /// Learns the range of namespaces that have sockets but no shown events yet.
    fn refresh_ranges(&mut self, kernel: &mut dyn KernelInputs) {
        for ns in self.table.usage().namespaces() {
            if let Some(range) = kernel.port_range(ns, None) {
                self.table.usage_mut().set_range(ns, range);
                if let Some(v) = kernel.tw_reuse(ns) {
                    self.table.usage_mut().set_tw_reuse(ns, v);
                }
            }
        }
    }

    /// The start-up snapshot into the table, and its line.
    fn merge_snapshot(&mut self, kernel: &mut dyn KernelInputs) -> Result<()> {
        let Some(snapshot) = self.snapshot.take() else {
            return Ok(());
        };
        self.table.count_time_wait_only();
        self.table.merge_snapshot(&snapshot, kernel.now_ns());
        let processes: std::collections::HashSet<u32> =
            snapshot.owners.values().flatten().map(|o| o.pid).collect();
        self.sink
            .snapshot(&SnapshotInfo {
                sockets: snapshot.sockets.len(),
                namespaces: snapshot.namespaces.len(),
                processes: processes.len(),
                took_ms: snapshot.took.as_secs_f64() * 1000.0,
            })
            .map_err(out_err)
    }

    /// Loss: reported when the counters move; after lost events, at most every 10 s, the
    /// entries whose sockets the kernel no longer has are dropped (they may have been
    /// releases and closes).
    fn check_loss(&mut self, kernel: &mut dyn KernelInputs) -> Result<()> {
        let lost = kernel.lost();
        super::report_loss(self.sink.as_mut(), lost, &mut self.lost_seen)?;
        let now = kernel.now_ns();
        if lost > self.lost_reconciled
            && now.saturating_sub(self.last_reconcile_ns) >= RECONCILE_EVERY_NS
        {
            if let Some(snapshot) = kernel.sockets_now() {
                let dropped = self.table.reconcile(&snapshot, now);
                tracing::debug!("reconciled after lost events: {dropped} entries dropped");
            }
            self.lost_reconciled = lost;
            self.last_reconcile_ns = now;
        }
        Ok(())
    }

    /// Every second: NAT upkeep, ranges, gauges, warnings.
    fn every_second(&mut self, kernel: &mut dyn KernelInputs) -> Result<()> {
        let now = kernel.now_ns();
        if let (Some(nat), Some(inputs)) = (self.nat.as_mut(), kernel.nat()) {
            nat.tick(now, inputs, self.sink.as_mut()).map_err(out_err)?;
            if let Some(scrape) = &self.scrape {
                scrape.metrics.update_nat(&metrics::NatCounts {
                    bindings: &nat.table.counts,
                    kernel_totals: inputs.kernel_totals(),
                    lost: inputs.lost(),
                });
                let (fullest, rest) = nat.table.pool_fullest(metrics::pool::MAX_POOL_SERIES);
                scrape.update_nat_gauges(nat.health.values(), &fullest, rest);
            }
            nat.flush_out(self.sink.as_mut()).map_err(out_err)?;
        }
        self.refresh_ranges(kernel);
        if let Some(scrape) = self.scrape.clone() {
            let labels = self.listener_containers(kernel);
            scrape.update_table(&self.table, &|cgroup| label_of(&labels, cgroup));
        }
        for usage in self.table.usage_mut().take_warnings() {
            self.sink.ephemeral_warning(&usage).map_err(out_err)?;
        }
        Ok(())
    }

    /// Every ten seconds: expiry, namespaces that are gone, eviction counts, heap.
    fn every_ten_seconds(&mut self, kernel: &mut dyn KernelInputs) {
        self.table.sweep(kernel.now_ns());
        // Namespaces that are gone: their ranges, usage and series go too.
        let candidates = self.table.usage().known_namespaces();
        let gone = kernel.gone_namespaces(&candidates);
        let forgotten = self
            .table
            .usage_mut()
            .retain_namespaces(|ns| !gone.contains(&ns));
        tracing::debug!("{forgotten} network namespaces gone");
        if let Some(scrape) = self.scrape.clone() {
            scrape.metrics.update_evicted(&self.evicted(kernel));
        }
        trim_heap();
    }

    /// `--group-by remote`: the groups, when they changed (every five seconds).
    fn print_groups(&mut self) -> Result<()> {
        if let Some(groups) = &self.groups {
            let groups = groups.groups();
            let count = groups.iter().map(|g| g.connections).sum::<usize>();
            if count != self.groups_printed {
                self.sink.remote_groups(&groups, false).map_err(out_err)?;
                self.groups_printed = count;
            }
        }
        Ok(())
    }
}

/// Hands freed heap back (a burst may have grown the table for a while).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Stage for WatchStage {
    type Extra = WhoAsk;

    /// A question for the agent (`GET /nat/who`), answered from the binding table.
    fn extra(&mut self, ask: WhoAsk, kernel: &mut dyn KernelInputs) -> Result<Flow> {
        if ask.reply.is_closed() {
            // Its asker is gone: no pass over the tables for nobody.
            return Ok(Flow::Continue);
        }
        let reply = match self.nat.as_mut() {
            Some(nat) => nat.who(&ask.who, kernel.now_ns()),
            None => WhoReply::NoNat,
        };
        // The asker may have given up (its deadline passed): nothing to do then.
        let _ = ask.reply.send(reply);
        Ok(Flow::Continue)
    }

    fn start(&mut self, kernel: &mut dyn KernelInputs) -> Result<()> {
        self.started_ns = kernel.now_ns();
        self.last_reconcile_ns = self.started_ns;
        self.sink.ready(&self.hooks).map_err(out_err)?;
        self.merge_snapshot(kernel)?;
        if self.mode != WatchMode::Serve {
            let published = kernel.published();
            self.proxies
                .set_published(published.ports, published.host_netns);
        }
        if let (Some(nat), Some(inputs)) = (self.nat.as_mut(), kernel.nat()) {
            nat.learn_names(inputs);
        }
        if let Some(scrape) = self.scrape.clone() {
            // Every table's series from the start, so a dashboard sees them before an eviction.
            scrape.metrics.update_evicted(&self.evicted(kernel));
        }
        // Loading parsed the kernel's BTF twice and the snapshot may have been large.
        trim_heap();
        self.sink.flush().map_err(out_err)
    }

    fn events(
        &mut self,
        batch: &mut Vec<SockEvent>,
        records: &mut Vec<NatEvent>,
        kernel: &mut dyn KernelInputs,
    ) -> Result<()> {
        if let Some(scrape) = &self.scrape {
            scrape.metrics.processed("ringbuf", batch.len() as u64);
        }
        self.sockets(batch, kernel)?;
        match self.nat.as_mut() {
            Some(nat) => {
                nat.records(records, kernel.nat());
                nat.flush_out(self.sink.as_mut()).map_err(out_err)?;
            }
            None => records.clear(),
        }
        self.sink.flush().map_err(out_err)
    }

    fn conntrack(
        &mut self,
        event: crate::model::nat::CtEvent,
        kernel: &mut dyn KernelInputs,
    ) -> Result<()> {
        let now = kernel.now_ns();
        if let (Some(nat), Some(inputs)) = (self.nat.as_mut(), kernel.nat()) {
            nat.conntrack(event, now, inputs);
            nat.flush_out(self.sink.as_mut()).map_err(out_err)?;
            self.sink.flush().map_err(out_err)?;
        }
        Ok(())
    }

    fn tick(&mut self, kernel: &mut dyn KernelInputs) -> Result<Flow> {
        self.check_loss(kernel)?;
        self.ticks += 1;
        if self.ticks.is_multiple_of(10) {
            self.every_second(kernel)?;
            if self.mode != WatchMode::Serve {
                let published = kernel.published();
                self.proxies
                    .set_published(published.ports, published.host_netns);
            }
        }
        if self.ticks.is_multiple_of(100) {
            self.every_ten_seconds(kernel);
        }
        if self.ticks.is_multiple_of(50) {
            self.print_groups()?;
        }
        if self.ticks.is_multiple_of(super::LISTEN_EVERY_TICKS) {
            self.read_listen_queues(kernel)?;
        }
        Ok(Flow::Continue)
    }

    fn finish(&mut self, kernel: &mut dyn KernelInputs, undecodable: u64) -> Result<()> {
        let mut summary = self.summary;
        summary.lost = kernel.lost();
        summary.health_skipped = kernel.health_skipped();
        summary.proxies_ambiguous = self.proxies.ambiguous;
        super::report_loss(self.sink.as_mut(), summary.lost, &mut self.lost_seen)?;
        summary.undecodable = undecodable;
        summary.seconds = kernel.now_ns().saturating_sub(self.started_ns) as f64 / 1e9;
        summary.sockets_tracked = self.table.len();
        summary.evicted = self.evicted(kernel);
        if let Some(groups) = &self.groups {
            self.sink
                .remote_groups(&groups.groups(), true)
                .map_err(out_err)?;
        }
        self.refresh_ranges(kernel);
        self.sink
            .ephemeral_report(&self.table.usage().report())
            .map_err(out_err)?;
        if let Some(nat) = self.nat.as_mut() {
            nat.report_pools();
            nat.flush_out(self.sink.as_mut()).map_err(out_err)?;
        }
        self.sink.summary(&summary).map_err(out_err)?;
        self.sink.flush().map_err(out_err)
    }
}

/// A cgroup's label from [`WatchStage::listener_containers`] (`-`: not looked up).
fn label_of(labels: &foldhash::HashMap<u64, String>, cgroup: u64) -> String {
    labels.get(&cgroup).cloned().unwrap_or_else(|| "-".into())
}
