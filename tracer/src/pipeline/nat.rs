//! The NAT half of a run: binding records and conntrack events through the binding table,
//! socket events for flow stitching, and what comes out (bindings, ends, flows) to the sink.
//! Used by `nat` and by `watch --nat…`.
use tracer_common::{NatEvent, SockEvent};

use super::{inputs::NatInputs, out_err, Flow, KernelInputs, Stage};
use crate::{
    error::Result,
    model::{
        evicted::Evicted,
        nat::{
            health::CtHealth,
            who::{Answers, Who},
            Binding, CtEvent, NatOutput, NatTable,
        },
        Clock,
    },
    output::{Sink, Summary},
};

/// The binding table and what it has to say.
pub struct NatStage {
    pub table: NatTable,
    clock: Clock,
    out: Vec<NatOutput>,
    /// Each watched namespace's conntrack table as last shown, and as last read (the
    /// metrics); bounded by the namespaces watched, a namespace's go with it.
    shown_health: foldhash::HashMap<u32, CtHealth>,
    pub health: foldhash::HashMap<u32, CtHealth>,
    /// `--who`: only bindings, ends and flows for this endpoint are shown.
    who: Option<Who>,
    history_ns: u64,
    last_answer_ns: Option<u64>,
}

/// A question for the running agent: who is behind this endpoint (`GET /nat/who`).
pub struct WhoAsk {
    pub who: Who,
    pub reply: tokio::sync::oneshot::Sender<WhoReply>,
    /// Held until the question is answered (or dropped unanswered): whoever asks can have
    /// one question waiting here at a time, however many connections they open and drop.
    pub turn: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Questions are answered at most this often: each is a pass over the binding tables on the
/// loop that drains the ring.
pub const ANSWER_INTERVAL_NS: u64 = 50_000_000;

/// The agent's answer.
#[derive(Debug)]
pub enum WhoReply {
    /// This run watches no NAT.
    NoNat,
    /// Asked within [`ANSWER_INTERVAL_NS`] of the last answer: ask again.
    Busy,
    /// Live bindings and ended ones within the history, the newest first, in wall-clock
    /// time; how long the history keeps them; the wall-clock time of the answer.
    Answers {
        answers: Answers,
        kept: std::time::Duration,
        now_wall_ns: u64,
    },
}

impl NatStage {
    pub fn new(clock: Clock) -> Self {
        NatStage {
            table: NatTable::default(),
            clock,
            out: Vec::new(),
            shown_health: Default::default(),
            health: Default::default(),
            who: None,
            history_ns: 0,
            last_answer_ns: None,
        }
    }

    /// Shows only what is about this endpoint; keeps ended bindings (`history`: how long in
    /// ns, how many) for [`NatStage::who`].
    pub fn with_who(mut self, who: Option<Who>, history: (u64, usize)) -> Self {
        self.who = who;
        self.table.keep_history(history.0, history.1);
        self.history_ns = history.0;
        self
    }

    /// Who is behind `who`, now or within the history, in wall-clock time; [`WhoReply::Busy`]
    /// when the last answer was less than [`ANSWER_INTERVAL_NS`] ago.
    pub fn who(&mut self, who: &Who, now_ns: u64) -> WhoReply {
        if self
            .last_answer_ns
            .is_some_and(|t| now_ns.saturating_sub(t) < ANSWER_INTERVAL_NS)
        {
            return WhoReply::Busy;
        }
        self.last_answer_ns = Some(now_ns);
        let mut answers = self.table.who(who, now_ns);
        for a in &mut answers.answers {
            a.binding.ts_ns = self.clock.wall_ns(a.binding.ts_ns);
            a.ended_ns = a.ended_ns.map(|t| self.clock.wall_ns(t));
            for end in [a.client.as_mut(), a.server.as_mut()].into_iter().flatten() {
                end.ts_ns = self.clock.wall_ns(end.ts_ns);
            }
        }
        WhoReply::Answers {
            answers,
            kept: std::time::Duration::from_nanos(self.history_ns),
            now_wall_ns: self.clock.wall_ns(now_ns),
        }
    }

    /// The conntrack tables read now: a status record for each that changed since shown.
    fn conntrack_health(&mut self, nat: &mut dyn NatInputs) {
        for mut h in nat.conntrack_health() {
            // The name the namespace was linked under (escaped where shown).
            if let Some(name) = self.table.netns_name(h.netns) {
                h.netns_name = name;
            }
            let changed = self
                .shown_health
                .get(&h.netns)
                .is_none_or(|b| h.changed_from(b));
            if changed {
                self.out.push(NatOutput::Health(h.clone()));
                self.shown_health.insert(h.netns, h.clone());
            }
            self.health.insert(h.netns, h);
        }
    }

    /// Learns the names of namespaces linked into since the last look, and their NAT port
    /// pools' ranges as their rules give them.
    pub fn learn_names(&mut self, nat: &mut dyn NatInputs) {
        for (inode, name) in nat.take_named() {
            self.table.name_netns(inode, &name);
        }
        for (inode, rules) in nat.take_pool_rules() {
            self.table.pools.set_rules(inode, rules);
        }
    }

    /// Binding records from the ring. `nat` gives the counters of a binding a fresh entry
    /// replaced at another address (then dropped), when there are NAT inputs.
    pub fn records(&mut self, records: &mut Vec<NatEvent>, mut nat: Option<&mut dyn NatInputs>) {
        for ev in records.drain(..) {
            let b = Binding::from_event(&ev);
            let stale = match nat.as_deref_mut() {
                Some(n) => self.table.replace(b, |k| n.counters(k), &mut self.out),
                None => self.table.replace(b, |_| None, &mut self.out),
            };
            if let (Some(key), Some(n)) = (stale, nat.as_deref_mut()) {
                n.forget(&key);
            }
        }
        for p in self.table.pool_warnings() {
            self.out.push(NatOutput::Pool(p, true));
        }
    }

    /// Every NAT port pool's figures (at the end of a run).
    pub fn report_pools(&mut self) {
        for p in self.table.pool_report() {
            self.out.push(NatOutput::Pool(p, false));
        }
    }

    /// A socket event, for flow stitching.
    pub fn socket(
        &mut self,
        ev: &SockEvent,
        pid: u32,
        names: impl FnOnce() -> (String, Option<String>),
    ) {
        self.table.socket_event(ev, pid, names, &mut self.out);
    }

    /// A conntrack event: a binding's end (with its kernel counters), or on the conntrack
    /// fallback a new binding.
    pub fn conntrack(&mut self, ev: CtEvent, now_ns: u64, nat: &mut dyn NatInputs) {
        if ev.destroyed {
            let known = self.table.knows(&ev);
            let key = self
                .table
                .destroyed(&ev, now_ns, |k| nat.counters(k), &mut self.out);
            if let Some(key) = key {
                nat.forget(&key);
            }
            if !known {
                // An entry the program saw one packet of: reported at its end.
                if let Some(first) = nat.take_pending(&ev.pending_key()) {
                    self.table.one_packet(&ev, now_ns, first, &mut self.out);
                }
            }
        } else if nat.fallback() || ev.existing {
            // A new entry (the fallback), or one older than tracer from the table's dump.
            if let Some(b) = Binding::from_conntrack(&ev, now_ns) {
                self.table.binding(b, &mut self.out);
            }
        }
    }

    /// Once a second: namespaces that went away leave the table (and are reported), new ones
    /// are named, socket ends nobody claimed are forgotten.
    pub fn tick(
        &mut self,
        now_ns: u64,
        nat: &mut dyn NatInputs,
        sink: &mut dyn Sink,
    ) -> std::io::Result<()> {
        for gone in nat.tick() {
            // Its bindings, counts and metric series go with it.
            self.table.forget_netns(gone.inode);
            self.health.remove(&gone.inode);
            self.shown_health.remove(&gone.inode);
            sink.netns_gone(&gone.name, gone.inode)?;
        }
        self.learn_names(nat);
        self.conntrack_health(nat);
        // Also here: the conntrack fallback makes bindings outside `records`.
        for p in self.table.pool_warnings() {
            self.out.push(NatOutput::Pool(p, true));
        }
        self.table.sweep(now_ns);
        Ok(())
    }

    /// Writes what the table produced, in wall-clock time.
    pub fn flush_out(&mut self, sink: &mut dyn Sink) -> std::io::Result<()> {
        for mut item in self.out.drain(..) {
            if self.who.is_some_and(|w| !w.allows(&item)) {
                continue;
            }
            match &mut item {
                NatOutput::Binding(b) => b.ts_ns = self.clock.wall_ns(b.ts_ns),
                NatOutput::End(e) => e.ts_ns = self.clock.wall_ns(e.ts_ns),
                NatOutput::Flow(f) => {
                    f.ts_ns = self.clock.wall_ns(f.ts_ns);
                    f.nat.ts_ns = self.clock.wall_ns(f.nat.ts_ns);
                }
                NatOutput::Health(_) | NatOutput::Pool(..) => {}
            }
            sink.nat(&item)?;
        }
        Ok(())
    }

    /// What the binding table pushed out to stay bounded (the kernel's map is counted by
    /// [`super::KernelInputs::evicted`]).
    pub fn evicted(&self) -> Evicted {
        Evicted {
            nat_bindings: self.table.evicted_bindings(),
            nat_ends: self.table.evicted_ends(),
            nat_history: self.table.evicted_history(),
            ..Default::default()
        }
    }
}

/// `tracer nat` as a stage: only the NAT side; socket events (when flows are on) only stitch
/// flows, with the pid and name the kernel gave them.
pub struct NatOnlyStage {
    nat: NatStage,
    sink: Box<dyn Sink>,
    /// For JSON output: the hooks, for the `ready` record.
    ready: Option<Vec<String>>,
    events: u64,
    lost_seen: u64,
    ticks: u32,
    started_ns: u64,
    /// Cgroup → container, for the flows' ends.
    containers: crate::model::container::Containers,
}

impl NatOnlyStage {
    pub fn new(
        clock: Clock,
        sink: Box<dyn Sink>,
        ready: Option<Vec<String>>,
        who: Option<Who>,
    ) -> Self {
        NatOnlyStage {
            nat: NatStage::new(clock).with_who(who, (0, 0)),
            sink,
            ready,
            events: 0,
            lost_seen: 0,
            ticks: 0,
            started_ns: 0,
            containers: Default::default(),
        }
    }

    fn flush(&mut self) -> Result<()> {
        self.nat.flush_out(self.sink.as_mut()).map_err(out_err)?;
        self.sink.flush().map_err(out_err)
    }
}

impl Stage for NatOnlyStage {
    type Extra = ();

    fn start(&mut self, kernel: &mut dyn KernelInputs) -> Result<()> {
        self.started_ns = kernel.now_ns();
        if let Some(hooks) = self.ready.take() {
            self.sink.ready(&hooks).map_err(out_err)?;
        }
        if let Some(inputs) = kernel.nat() {
            self.nat.learn_names(inputs);
        }
        Ok(())
    }

    fn events(
        &mut self,
        batch: &mut Vec<SockEvent>,
        records: &mut Vec<NatEvent>,
        kernel: &mut dyn KernelInputs,
    ) -> Result<()> {
        self.events += batch.len() as u64;
        for ev in batch.drain(..) {
            // Its own programs report connects and accepts in the caller's context.
            let containers = &mut self.containers;
            let names = || {
                let container = containers.of(ev.cgroup, ev.ts_ns, || {
                    kernel.container(ev.cgroup, Some(ev.pid))
                });
                (
                    crate::text::comm(&ev.comm),
                    container.map(|c| c.label().to_string()),
                )
            };
            self.nat.socket(&ev, ev.pid, names);
        }
        self.nat.records(records, kernel.nat());
        self.flush()
    }

    fn conntrack(&mut self, event: CtEvent, kernel: &mut dyn KernelInputs) -> Result<()> {
        let now = kernel.now_ns();
        if let Some(inputs) = kernel.nat() {
            self.nat.conntrack(event, now, inputs);
        }
        self.flush()
    }

    fn tick(&mut self, kernel: &mut dyn KernelInputs) -> Result<Flow> {
        self.ticks += 1;
        if self.ticks.is_multiple_of(4) {
            let now = kernel.now_ns();
            if let Some(inputs) = kernel.nat() {
                self.nat
                    .tick(now, inputs, self.sink.as_mut())
                    .map_err(out_err)?;
            }
        }
        let lost = kernel.lost();
        super::report_loss(self.sink.as_mut(), lost, &mut self.lost_seen)?;
        self.flush()?;
        Ok(Flow::Continue)
    }

    fn finish(&mut self, kernel: &mut dyn KernelInputs, undecodable: u64) -> Result<()> {
        self.nat.report_pools();
        self.flush()?;
        let mut evicted = self.nat.evicted();
        evicted.raise_to(&kernel.evicted());
        evicted.containers += self.containers.evicted();
        let summary = Summary {
            events: self.events,
            lost: kernel.lost(),
            undecodable,
            seconds: kernel.now_ns().saturating_sub(self.started_ns) as f64 / 1e9,
            sockets_tracked: 0,
            evicted,
            health_skipped: 0,
            proxies_ambiguous: 0,
        };
        self.sink.summary(&summary).map_err(out_err)
    }
}
