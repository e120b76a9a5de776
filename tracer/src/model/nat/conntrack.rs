//! Conntrack's side of NAT: its tuples and netlink events, bindings read from them (the
//! fallback for kernels without netfilter eBPF programs), and the end of a binding when its
//! conntrack entry is destroyed, with the kernel's counters when there are any.
use std::net::IpAddr;

use serde::Serialize;
use tracer_common::{nat as knat, NatCounters, NatKey, AF_INET, AF_INET6};

use super::{Binding, Endpoints, NatKind, NatOutput, NatSource, NatTable};
use crate::model::types::Proto;

/// A conntrack tuple (ports in host order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CtTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// A watched namespace that went away (its NAT links and conntrack reader are closed).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GoneNetns {
    pub inode: u32,
    pub name: String,
}

/// A conntrack netlink event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CtEvent {
    pub netns: u32,
    /// false: a new entry; true: it was destroyed.
    pub destroyed: bool,
    pub protocol: u8,
    pub orig: CtTuple,
    pub reply: CtTuple,
    /// The `IPS_*` status bits, when the message carried them.
    pub status: Option<u32>,
    /// An entry of the table as tracer found it when it linked in (a dump), not an event:
    /// a connection older than tracer.
    #[serde(default)]
    pub existing: bool,
}

impl Binding {
    /// From a conntrack "new" event (the fallback); None when nothing was translated.
    pub fn from_conntrack(ev: &CtEvent, ts_ns: u64) -> Option<Self> {
        let nat = ev
            .status
            .is_some_and(|s| u64::from(s) & (knat::IPS_SRC_NAT | knat::IPS_DST_NAT) != 0);
        let family = if ev.orig.src.is_ipv6() {
            AF_INET6
        } else {
            AF_INET
        };
        let mut b = Binding::new(
            ev.netns,
            ev.protocol,
            family,
            ev.orig.into(),
            ev.reply.into(),
            NatSource::Conntrack,
        );
        b.ts_ns = ts_ns;
        b.existing = ev.existing;
        (nat || b.address_translated || b.port_translated).then_some(b)
    }
}

/// A binding that ended: its conntrack entry was destroyed.
#[derive(Clone, Debug, Serialize)]
pub struct BindingEnd {
    pub ts_ns: u64,
    pub netns: u32,
    pub netns_name: String,
    pub proto: Proto,
    pub kind: NatKind,
    pub original: Endpoints,
    pub translated: Endpoints,
    /// Seconds from the binding's first packet to its end.
    pub duration_s: f64,
    /// Packets and bytes each way (eBPF source only; conntrack events carry none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
    /// The binding was older than tracer: `duration_s` counts from when tracer found it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub existing: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub orig_packets: u64,
    pub orig_bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

impl From<NatCounters> for Counters {
    fn from(c: NatCounters) -> Self {
        Counters {
            orig_packets: c.orig_packets,
            orig_bytes: c.orig_bytes,
            reply_packets: c.reply_packets,
            reply_bytes: c.reply_bytes,
        }
    }
}

impl CtEvent {
    /// Where the netfilter program keeps the first packet of this entry (`NAT_PENDING`):
    /// the namespace's inode in place of the entry's address, and the original tuple.
    pub fn pending_key(&self) -> NatKey {
        let bytes = |a: IpAddr| {
            let mut out = [0u8; 16];
            match a {
                IpAddr::V4(v) => out[..4].copy_from_slice(&v.octets()),
                IpAddr::V6(v) => out = v.octets(),
            }
            out
        };
        NatKey {
            ct: u64::from(self.netns),
            src: bytes(self.orig.src),
            dst: bytes(self.orig.dst),
            sport: self.orig.sport,
            dport: self.orig.dport,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }
}

impl NatTable {
    /// Whether a destroy event for this entry ends (or was owed to) a binding known here.
    pub fn knows(&self, ev: &CtEvent) -> bool {
        let id = (ev.netns, ev.protocol, Endpoints::from(ev.orig));
        self.live.contains_key(&id) || self.owed.contains_key(&id)
    }

    /// An entry destroyed that the netfilter program saw one packet of — confirmed, never seen
    /// again (a UDP datagram nobody answered): its binding and its end, now.
    pub fn one_packet(
        &mut self,
        ev: &CtEvent,
        ts_ns: u64,
        first: tracer_common::NatPending,
        out: &mut Vec<NatOutput>,
    ) {
        let Some(mut b) = Binding::from_conntrack(ev, first.first_ns) else {
            return;
        };
        b.source = NatSource::Ebpf;
        let id = b.id();
        // Over before it was seen: it held no pool port while tracer could count it.
        let pools = std::mem::take(&mut self.pools);
        self.binding(b, out);
        let live = self.forget(&id);
        self.pools = pools;
        if let Some(live) = live {
            let counters = NatCounters {
                orig_packets: 1,
                orig_bytes: first.bytes,
                first_ns: first.first_ns,
                last_ns: first.first_ns,
                ..NatCounters::default()
            };
            out.push(NatOutput::End(live.binding.end(ts_ns, Some(counters))));
            self.ended(live, ts_ns, false);
        }
    }

    /// A conntrack entry was destroyed: its binding ends (with the kernel's counters, when
    /// `counters` finds them). Returns the key of the counters user space may now drop.
    pub fn destroyed(
        &mut self,
        ev: &CtEvent,
        ts_ns: u64,
        counters: impl FnOnce(&NatKey) -> Option<NatCounters>,
        out: &mut Vec<NatOutput>,
    ) -> Option<NatKey> {
        let id = (ev.netns, ev.protocol, Endpoints::from(ev.orig));
        if let Some((n, since)) = self.owed.get_mut(&id) {
            if ts_ns.saturating_sub(*since) <= super::OWED_NS {
                // The destroy of an entry a fresh one already replaced: the live binding
                // (and the counters under the key) are the new entry's.
                *n -= 1;
                if *n == 0 {
                    self.owed.remove(&id);
                }
                return None;
            }
            // Too late to be the replaced entry's: that one was lost. This ends the live one.
            self.owed.remove(&id);
        }
        let live = self.forget(&id)?;
        let b = &live.binding;
        // The counters are this binding's only if they started with it: a fresh entry at the
        // same address may have taken the key over since (the kernel reset them for it).
        let found = b
            .key
            .as_ref()
            .and_then(counters)
            .filter(|c| c.first_ns == b.ts_ns);
        out.push(NatOutput::End(b.end(ts_ns, found)));
        let key = found.and(b.key);
        self.ended(live, ts_ns, false);
        key
    }
}

impl Binding {
    /// Its end at `ts_ns`, with the kernel's counters when there are any.
    pub(super) fn end(&self, ts_ns: u64, found: Option<NatCounters>) -> BindingEnd {
        let first = found
            .map(|c| c.first_ns)
            .filter(|&f| f != 0)
            .unwrap_or(self.ts_ns);
        BindingEnd {
            ts_ns,
            netns: self.netns,
            netns_name: self.netns_name.clone(),
            proto: self.proto,
            kind: self.kind,
            original: self.original,
            translated: self.translated,
            duration_s: ts_ns.saturating_sub(first) as f64 / 1e9,
            counters: found.map(Counters::from),
            existing: self.existing,
        }
    }
}
