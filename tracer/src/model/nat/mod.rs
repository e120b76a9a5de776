//! NAT bindings and flows: what a binding's two tuples mean (SNAT, DNAT, both; address or
//! port translation), when it ended, and the flow it belongs to — the client socket, the
//! router's rewrite and the server socket, possibly in three network namespaces.
//!
//! Pure and bounded: fed with decoded records, tested without a kernel.
//!
//! Here: the table of live bindings and what it holds. What a binding is and how it is read
//! from a record is in `binding`; conntrack's records and the end of a binding in
//! `conntrack`; socket ends and how they are stitched into a flow in `flow`.
use foldhash::HashMap;

use tracer_common::{NatCounters, NatKey};

use super::{bounded::BoundedMap, types::Proto};

mod binding;
mod conntrack;
mod flow;
pub mod handshake;
pub mod health;
pub mod pool;
pub mod who;

use binding::BindingId;
pub use binding::{hook_name, Binding, Endpoints, NatKind, NatSource};
pub use conntrack::{BindingEnd, Counters, CtEvent, CtTuple, GoneNetns};
use flow::{client_key_of, server_key_of, EndKey};
pub use flow::{Flow, FlowEnd};

/// How long a destroy event owed for a replaced binding is waited for.
pub const OWED_NS: u64 = 2_000_000_000;

/// Bindings kept while they live, at most; the oldest go first past this (counted).
pub const MAX_BINDINGS: usize = 65_536;
/// Socket ends waiting for the rest of their flow, at most (each side; the oldest go first,
/// counted), and for how long.
pub const MAX_ENDS: usize = 65_536;

/// Something to show, in the order it became known.
#[derive(Clone, Debug)]
pub enum NatOutput {
    Binding(Binding),
    End(BindingEnd),
    Flow(Box<Flow>),
    /// A watched namespace's conntrack table, when it changed.
    Health(health::CtHealth),
    /// A NAT port pool: past 80 % (`true`), or its final figures.
    Pool(pool::PoolReport, bool),
}

pub(super) struct Live {
    binding: Binding,
    /// Its client and server sockets, once stitched into a flow.
    stitched: Option<Box<(FlowEnd, FlowEnd)>>,
}

/// Bindings seen, by (kind, port translated, protocol, namespace name).
pub type BindingCounts = HashMap<(NatKind, bool, Proto, String), u64>;

/// Every table here is bounded and evicts its oldest entry in O(1) amortised
/// ([`BoundedMap`]): a flood of connections through a router costs the same per event however
/// full the tables are. The indexes hold at most one key per live binding.
pub struct NatTable {
    live: BoundedMap<BindingId, Live>,
    /// Live bindings by the key their client end and their server end will have.
    by_client: HashMap<EndKey, BindingId>,
    by_translated: HashMap<EndKey, BindingId>,
    clients: BoundedMap<EndKey, FlowEnd>,
    servers: BoundedMap<EndKey, FlowEnd>,
    /// Watched namespaces' names (bounded by the namespaces watched).
    names: HashMap<u32, String>,
    /// Bindings seen, by (kind, port translated, proto, netns name): for metrics. Bounded by
    /// the namespaces watched; a namespace's entries go with it ([`NatTable::forget_netns`]).
    pub counts: BindingCounts,
    /// Bindings a fresh entry with the same original tuple ended before their own destroy
    /// event arrived: (how many such destroys are still to come, when the last was owed), per
    /// binding id — they end nothing. The kernel sent each before it made the new entry, so
    /// one not here within [`OWED_NS`] was lost (or never sent: an entry the kernel dropped
    /// unconfirmed): the debt lapses. Bounded like the live bindings.
    owed: BoundedMap<BindingId, (u32, u64)>,
    /// Translated ports in use per pool.
    pub pools: pool::Pools,
    /// Ended bindings kept for `--who` (none unless [`NatTable::keep_history`]).
    history: who::History,
    /// Client handshakes in progress and those left unanswered, per destination.
    handshakes: handshake::Handshakes,
}

impl Default for NatTable {
    fn default() -> Self {
        NatTable::with_caps(MAX_BINDINGS, MAX_ENDS)
    }
}

impl NatTable {
    pub fn with_caps(bindings: usize, ends: usize) -> Self {
        NatTable {
            live: BoundedMap::new(bindings),
            by_client: HashMap::default(),
            by_translated: HashMap::default(),
            clients: BoundedMap::new(ends),
            servers: BoundedMap::new(ends),
            names: HashMap::default(),
            counts: HashMap::default(),
            owed: BoundedMap::new(bindings),
            pools: pool::Pools::default(),
            history: who::History::default(),
            handshakes: handshake::Handshakes::default(),
        }
    }

    pub fn name_netns(&mut self, inode: u32, name: &str) {
        self.names.insert(inode, name.to_string());
    }

    /// A watched namespace went away: its name, its binding counts (and so its metric
    /// series) and its live bindings (no destroy event will come for them) go too.
    pub fn forget_netns(&mut self, inode: u32) {
        let Some(name) = self.names.remove(&inode) else {
            return;
        };
        if !self.names.values().any(|n| *n == name) {
            self.counts.retain(|key, _| key.3 != name);
        }
        let gone: Vec<BindingId> = self
            .live
            .values()
            .filter(|l| l.binding.netns == inode)
            .map(|l| l.binding.id())
            .collect();
        for id in gone {
            self.forget(&id);
        }
        self.pools.forget_netns(inode);
        self.history.forget_netns(inode);
        // Destroys owed there will not come either: those debts lapse on their own.
    }

    /// Live bindings pushed out by the cap.
    pub fn evicted_bindings(&self) -> u64 {
        self.live.evicted()
    }

    /// Socket ends pushed out by the cap (both sides).
    pub fn evicted_ends(&self) -> u64 {
        self.clients.evicted() + self.servers.evicted() + self.handshakes.evicted()
    }

    /// Entries held now: (bindings, client ends, server ends).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.live.len(), self.clients.len(), self.servers.len())
    }

    /// Queue work done by the bounded tables so far (see [`BoundedMap::steps`]).
    pub fn steps(&self) -> u64 {
        self.live.steps() + self.clients.steps() + self.servers.steps()
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// A watched namespace's name, when it was linked under one.
    pub fn netns_name(&self, inode: u32) -> Option<String> {
        self.names.get(&inode).cloned()
    }

    fn name_of(&self, inode: u32) -> String {
        name_in(&self.names, inode)
    }

    /// A new binding. Returns what to show (the binding, and a flow if its two sockets are
    /// already known). A binding already known (same netns and original tuple) is ignored.
    pub fn binding(&mut self, b: Binding, out: &mut Vec<NatOutput>) {
        self.replace(b, |_| None, out);
    }

    /// A new binding, as [`NatTable::binding`]. When it is a fresh entry for a tuple whose
    /// binding is still live here (the kernel destroyed the entry and made a new one — a
    /// client reusing its port, a SYN ending a TIME_WAIT entry — before its destroy event
    /// reached us), the old binding ends here and that event, when it comes, ends nothing.
    /// Returns the old binding's counter key for the caller to drop when the new entry has
    /// another (its counters, from `counters`, end it); at the same address the kernel gave
    /// them to the new entry.
    pub fn replace(
        &mut self,
        mut b: Binding,
        counters: impl FnOnce(&NatKey) -> Option<NatCounters>,
        out: &mut Vec<NatOutput>,
    ) -> Option<NatKey> {
        let id = b.id();
        let mut stale = None;
        if self.live.contains_key(&id) {
            if !b.fresh {
                return None;
            }
            if let Some(old) = self.forget(&id) {
                let other = old.binding.key.filter(|k| Some(*k) != b.key);
                let found = other.as_ref().and_then(counters);
                out.push(NatOutput::End(old.binding.end(b.ts_ns, found)));
                self.ended(old, b.ts_ns, false);
                stale = other;
                let n = self.owed.get(&id).map_or(0, |o| o.0) + 1;
                self.owed.insert(id, (n, b.ts_ns));
            }
        }
        b.netns_name = self.name_of(b.netns);
        *self
            .counts
            .entry((b.kind, b.port_translated, b.proto, b.netns_name.clone()))
            .or_default() += 1;
        self.by_client.insert(client_key_of(&b), id);
        self.by_translated.insert(server_key_of(&b), id);
        out.push(NatOutput::Binding(b.clone()));
        let b_ts = b.ts_ns;
        let pushed_out = self.live.insert(
            id,
            Live {
                binding: b,
                stitched: None,
            },
        );
        if let Some((old_id, old)) = pushed_out {
            self.unindex(&old_id, &old);
            self.pools.freed(&old.binding);
            // No longer followed: kept for `--who` as pushed out now, not as ended.
            self.ended(old, b_ts, true);
        }
        if let Some(live) = self.live.get(&id) {
            self.pools.taken(&live.binding);
        }
        self.try_stitch(&id, out);
        stale
    }

    fn forget(&mut self, id: &BindingId) -> Option<Live> {
        let live = self.live.remove(id)?;
        self.unindex(id, &live);
        self.pools.freed(&live.binding);
        Some(live)
    }

    /// A binding that ended at `ts_ns` goes to the history, with the sockets at its ends
    /// when they were seen.
    fn ended(&mut self, live: Live, ts_ns: u64, evicted: bool) {
        if !self.history.keeps() {
            return;
        }
        let (client, server) = match live.stitched {
            Some(ends) => {
                let (c, s) = *ends;
                (Some(c), Some(s))
            }
            None => self.ends_of(&live.binding),
        };
        self.history.push(who::Ended {
            binding: live.binding,
            ended_ns: ts_ns,
            evicted,
            client,
            server,
        });
    }

    /// Pools past 80 % since the last call, named.
    pub fn pool_warnings(&mut self) -> Vec<pool::PoolReport> {
        let names = &self.names;
        let warned = self.pools.take_warnings(&|ns| name_in(names, ns));
        self.with_unanswered(warned)
    }

    /// The `n` fullest pools' figures, named, and the ports in use in the rest.
    pub fn pool_fullest(&self, n: usize) -> (Vec<pool::PoolReport>, usize) {
        let (top, rest) = self.pools.fullest(n, &|ns| self.name_of(ns));
        (self.with_unanswered(top), rest)
    }

    /// Every pool's figures, named.
    pub fn pool_report(&self) -> Vec<pool::PoolReport> {
        self.with_unanswered(self.pools.report(&|ns| self.name_of(ns)))
    }

    /// Drops a binding's index keys, unless a newer binding took them over.
    fn unindex(&mut self, id: &BindingId, live: &Live) {
        for (index, key) in [
            (&mut self.by_client, client_key_of(&live.binding)),
            (&mut self.by_translated, server_key_of(&live.binding)),
        ] {
            if index.get(&key) == Some(id) {
                index.remove(&key);
            }
        }
    }
}

/// A watched namespace's name, or its inode when it was linked under none.
fn name_in(names: &HashMap<u32, String>, inode: u32) -> String {
    names
        .get(&inode)
        .cloned()
        .unwrap_or_else(|| inode.to_string())
}

/// Binding records and socket events for the tests here and of the sinks.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::net::{IpAddr, Ipv4Addr};

    use tracer_common::{nat as knat, NatEvent, SockEvent, AF_INET};

    use super::CtTuple;

    pub fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(a))
    }

    pub fn ct(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> CtTuple {
        CtTuple {
            src: v4(src),
            dst: v4(dst),
            sport,
            dport,
        }
    }

    pub fn nat_event(orig: CtTuple, reply: CtTuple) -> NatEvent {
        let bytes = |a: IpAddr| {
            let mut out = [0u8; 16];
            if let IpAddr::V4(v) = a {
                out[..4].copy_from_slice(&v.octets());
            }
            out
        };
        NatEvent {
            kind: knat::KIND_BINDING,
            family: AF_INET,
            protocol: 6,
            hook: knat::NF_INET_POST_ROUTING,
            manips: knat::MANIP_SRC,
            netns: 7,
            orig_sport: orig.sport,
            orig_dport: orig.dport,
            reply_sport: reply.sport,
            reply_dport: reply.dport,
            ct: 0xffff_8880_0000_1000,
            orig_src: bytes(orig.src),
            orig_dst: bytes(orig.dst),
            reply_src: bytes(reply.src),
            reply_dst: bytes(reply.dst),
            ts_ns: 5,
            flags: knat::EV_FRESH,
            ..NatEvent::default()
        }
    }

    /// A masqueraded connection's tuples, and its entry's destroy event.
    pub fn masquerade_and_destroy() -> (CtTuple, CtTuple, super::CtEvent) {
        let orig = ct([192, 0, 2, 10], 40000, [198, 51, 100, 10], 80);
        let reply = ct([198, 51, 100, 10], 80, [203, 0, 113, 1], 61000);
        let destroy = super::CtEvent {
            netns: 7,
            destroyed: true,
            protocol: 6,
            orig,
            reply,
            status: None,
            existing: false,
        };
        (orig, reply, destroy)
    }

    pub fn sock(kind: u16, laddr: [u8; 4], lport: u16, raddr: [u8; 4], rport: u16) -> SockEvent {
        let mut ev = SockEvent {
            kind,
            family: AF_INET,
            protocol: 6,
            lport,
            rport,
            netns: 1,
            ts_ns: 10,
            ..SockEvent::default()
        };
        ev.laddr[..4].copy_from_slice(&laddr);
        ev.raddr[..4].copy_from_slice(&raddr);
        ev
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::kind;

    use super::fixtures::*;
    use super::*;

    #[test]
    fn masquerade_with_port_change_is_snat_pat() {
        // 192.0.2.10:40000 → 198.51.100.10:80 leaves as 203.0.113.1:61000.
        let b = Binding::from_event(&nat_event(
            ct([192, 0, 2, 10], 40000, [198, 51, 100, 10], 80),
            ct([198, 51, 100, 10], 80, [203, 0, 113, 1], 61000),
        ));
        assert_eq!(b.kind, NatKind::Snat);
        assert!(b.port_translated && b.address_translated);
        assert_eq!(b.translation(), "address+port");
        assert_eq!(
            b.translated.to_string(),
            "203.0.113.1:61000 → 198.51.100.10:80"
        );
    }

    #[test]
    fn static_snat_and_port_forward() {
        let b = Binding::from_event(&nat_event(
            ct([192, 0, 2, 10], 40000, [198, 51, 100, 10], 80),
            ct([198, 51, 100, 10], 80, [203, 0, 113, 7], 40000),
        ));
        assert_eq!((b.kind, b.translation()), (NatKind::Snat, "address"));
        let d = Binding::from_event(&nat_event(
            ct([198, 51, 100, 10], 50000, [203, 0, 113, 1], 8080),
            ct([192, 0, 2, 10], 80, [198, 51, 100, 10], 50000),
        ));
        assert_eq!((d.kind, d.translation()), (NatKind::Dnat, "address+port"));
        assert_eq!(d.translated.dst, v4([192, 0, 2, 10]));
    }

    #[test]
    fn stitches_in_any_order_once_and_ends() {
        for order in 0..3 {
            let mut t = NatTable::default();
            t.name_netns(7, "router");
            let mut out = Vec::new();
            let b = Binding::from_event(&nat_event(
                ct([192, 0, 2, 10], 40000, [198, 51, 100, 10], 80),
                ct([198, 51, 100, 10], 80, [203, 0, 113, 1], 61000),
            ));
            let c = sock(
                kind::CONNECT,
                [192, 0, 2, 10],
                40000,
                [198, 51, 100, 10],
                80,
            );
            let mut s = sock(
                kind::ACCEPT,
                [198, 51, 100, 10],
                80,
                [203, 0, 113, 1],
                61000,
            );
            s.netns = 2;
            match order {
                0 => {
                    t.binding(b.clone(), &mut out);
                    t.socket_event(&c, 11, || ("curl".into(), None), &mut out);
                    t.socket_event(&s, 22, || ("server".into(), None), &mut out);
                }
                1 => {
                    t.socket_event(&s, 22, || ("server".into(), None), &mut out);
                    t.socket_event(&c, 11, || ("curl".into(), None), &mut out);
                    t.binding(b.clone(), &mut out);
                }
                _ => {
                    t.socket_event(&c, 11, || ("curl".into(), None), &mut out);
                    t.binding(b.clone(), &mut out);
                    t.socket_event(&s, 22, || ("server".into(), None), &mut out);
                }
            }
            // A record again for the live entry (its counters were dropped and made anew):
            // ignored.
            let again = Binding {
                fresh: false,
                ..b.clone()
            };
            t.binding(again, &mut out);
            let flows: Vec<&Flow> = out
                .iter()
                .filter_map(|o| match o {
                    NatOutput::Flow(f) => Some(f.as_ref()),
                    _ => None,
                })
                .collect();
            assert_eq!(flows.len(), 1, "order {order}");
            let f = flows[0];
            assert_eq!((f.client.pid, f.client.port), (11, 40000));
            assert_eq!((f.server.pid, f.server.peer_port), (22, 61000));
            assert_eq!(f.nat.netns_name, "router");
            let ev = CtEvent {
                netns: 7,
                destroyed: true,
                protocol: 6,
                orig: ct([192, 0, 2, 10], 40000, [198, 51, 100, 10], 80),
                reply: ct([198, 51, 100, 10], 80, [203, 0, 113, 1], 61000),
                status: None,
                existing: false,
            };
            let mut out = Vec::new();
            let counters = NatCounters {
                orig_packets: 6,
                first_ns: 5,
                ..NatCounters::default()
            };
            assert!(t
                .destroyed(&ev, 2_000_000_005, |_| Some(counters), &mut out)
                .is_some());
            match &out[..] {
                [NatOutput::End(e)] => {
                    assert_eq!(e.counters.unwrap().orig_packets, 6);
                    assert!((e.duration_s - 2.0).abs() < 1e-9);
                }
                other => panic!("{other:?}"),
            }
            assert!(t.is_empty());
        }
    }

    #[test]
    fn a_fresh_entry_for_a_live_tuple_ends_the_old_binding_and_its_late_destroy_ends_nothing() {
        let mut t = NatTable::default();
        let (orig, reply, destroy) = masquerade_and_destroy();
        let mut out = Vec::new();
        let first = Binding::from_event(&nat_event(orig, reply));
        assert!(first.fresh, "a record the kernel marked as a new entry's");
        t.binding(first.clone(), &mut out);
        // The kernel destroyed the entry and made a new one at the same address for the same
        // tuple; its record arrives before the old destroy event.
        let second = Binding {
            ts_ns: 9_000_000_000,
            ..first.clone()
        };
        t.binding(second, &mut out);
        match &out[..] {
            [NatOutput::Binding(_), NatOutput::End(e), NatOutput::Binding(b)] => {
                assert_eq!(e.ts_ns, 9_000_000_000);
                assert!(
                    e.counters.is_none(),
                    "the kernel gave them to the new entry"
                );
                assert_eq!(b.ts_ns, 9_000_000_000);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.len(), 1);
        let mut out = Vec::new();
        let counters = |_: &NatKey| {
            Some(NatCounters {
                first_ns: 9_000_000_000,
                ..NatCounters::default()
            })
        };
        assert_eq!(t.destroyed(&destroy, 10, counters, &mut out), None);
        assert!(
            out.is_empty(),
            "the old entry's destroy ends nothing: {out:?}"
        );
        assert_eq!(t.len(), 1, "the new binding lives on");
        assert!(t.destroyed(&destroy, 11, counters, &mut out).is_some());
        assert!(matches!(&out[..], [NatOutput::End(_)]));
        assert!(t.is_empty());
    }

    #[test]
    fn a_fresh_entry_elsewhere_ends_the_old_with_its_counters_and_late_debts_lapse() {
        let mut t = NatTable::default();
        let (orig, reply, destroy) = masquerade_and_destroy();
        let mut out = Vec::new();
        let first = Binding::from_event(&nat_event(orig, reply));
        let old_key = first.key.unwrap();
        t.binding(first.clone(), &mut out);
        // The new entry lives at another address: the old binding's counters are its own.
        let mut ev = nat_event(orig, reply);
        ev.ct += 0x400;
        ev.ts_ns = 7_000_000_000;
        let second = Binding::from_event(&ev);
        let own = NatCounters {
            first_ns: 5,
            orig_packets: 3,
            ..NatCounters::default()
        };
        let stale = t.replace(second, |k| (*k == old_key).then_some(own), &mut out);
        assert_eq!(stale, Some(old_key), "the old entry's counters are dropped");
        match &out[..] {
            [NatOutput::Binding(_), NatOutput::End(e), NatOutput::Binding(_)] => {
                assert_eq!(e.counters.unwrap().orig_packets, 3);
            }
            other => panic!("{other:?}"),
        }
        // The old destroy never comes (lost); the new entry's, 10 s later, ends the binding.
        let mut out = Vec::new();
        // Counters under the key that started after the binding: a successor's, not used.
        let later = NatCounters {
            first_ns: 8_000_000_000,
            ..NatCounters::default()
        };
        let key = t.destroyed(&destroy, 17_000_000_000, |_| Some(later), &mut out);
        assert_eq!(key, None, "the successor's counters stay");
        match &out[..] {
            [NatOutput::End(e)] => assert!(e.counters.is_none()),
            other => panic!("the lapsed debt must not swallow it: {other:?}"),
        }
        assert!(t.is_empty());
    }

    /// `n` connections through a masquerading router within 10 s of event time, each a
    /// binding plus its client and server ends, none ended. Returns the table and the time.
    fn flood(n: u32) -> (NatTable, std::time::Duration) {
        let mut t = NatTable::default();
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        for i in 0..n {
            let ts = u64::from(i) * 10_000_000_000 / u64::from(n);
            // Every connection distinct on both sides: the worst case for the caps.
            let client = [192, 0, 2, (i % 250) as u8 + 1];
            let sport = 1024 + (i % 60_000) as u16;
            let public = sport;
            let server_ip = [198, 51, 100, (i / 60_000) as u8 + 1];
            let mut ev = nat_event(
                ct(client, sport, server_ip, 80),
                ct(server_ip, 80, [203, 0, 113, 1 + (i / 60_000) as u8], public),
            );
            ev.ts_ns = ts;
            t.binding(Binding::from_event(&ev), &mut out);
            let mut c = sock(kind::CONNECT, client, sport, server_ip, 80);
            c.ts_ns = ts;
            t.socket_event(&c, 1, || (String::new(), None), &mut out);
            let mut s = sock(
                kind::ACCEPT,
                server_ip,
                80,
                [203, 0, 113, 1 + (i / 60_000) as u8],
                public,
            );
            s.ts_ns = ts;
            t.socket_event(&s, 2, || (String::new(), None), &mut out);
            out.clear();
            if i % 10_000 == 0 {
                t.sweep(ts);
            }
        }
        (t, started.elapsed())
    }

    #[test]
    fn a_connection_flood_stays_under_the_caps_in_linear_work() {
        let (half, half_time) = flood(100_000);
        let (full, full_time) = flood(200_000);
        println!(
            "100k connects: {half_time:?}, {} steps; 200k connects: {full_time:?}, {} steps",
            half.steps(),
            full.steps()
        );
        let (bindings, clients, servers) = full.sizes();
        assert!(bindings <= MAX_BINDINGS && clients <= MAX_ENDS && servers <= MAX_ENDS);
        assert_eq!(full.evicted_bindings(), 200_000 - MAX_BINDINGS as u64);
        assert_eq!(full.evicted_ends(), 2 * (200_000 - MAX_ENDS as u64));
        assert!(full.by_client.len() <= bindings && full.by_translated.len() <= bindings);
        // Linear: a small constant amount of queue work per connection (three inserts each,
        // at most one eviction each), and the second 100,000 connections (all past the caps)
        // cost no more per connection than that. A scan for the oldest would cost 65,536.
        assert!(full.steps() <= 4 * 200_000, "{}", full.steps());
        assert!(
            full.steps() - half.steps() <= 4 * 100_000,
            "{}",
            full.steps()
        );
    }

    #[test]
    fn conntrack_fallback_without_translation_is_not_a_binding() {
        let ev = CtEvent {
            netns: 1,
            destroyed: false,
            protocol: 17,
            orig: ct([192, 0, 2, 10], 5000, [198, 51, 100, 10], 53),
            reply: ct([198, 51, 100, 10], 53, [192, 0, 2, 10], 5000),
            status: Some(0),
            existing: false,
        };
        assert!(Binding::from_conntrack(&ev, 1).is_none());
    }
}
