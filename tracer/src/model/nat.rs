//! NAT bindings and flows: what a binding's two tuples mean (SNAT, DNAT, both; address or
//! port translation), when it ended, and the flow it belongs to — the client socket, the
//! router's rewrite and the server socket, possibly in three network namespaces.
//!
//! Pure and bounded: fed with decoded records, tested without a kernel.
use std::net::IpAddr;

use foldhash::HashMap;

use serde::Serialize;
use tracer_common::{
    kind, nat as knat, NatCounters, NatEvent, NatKey, SockEvent, AF_INET, AF_INET6,
};

use super::{
    bounded::BoundedMap,
    event::ip,
    types::{Endpoint, Proto},
};

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
}

/// Bindings kept while they live, at most; the oldest go first past this (counted).
pub const MAX_BINDINGS: usize = 65_536;
/// Socket ends waiting for the rest of their flow, at most (each side; the oldest go first,
/// counted), and for how long.
pub const MAX_ENDS: usize = 65_536;
const END_TTL_NS: u64 = 120_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Endpoints {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

impl From<CtTuple> for Endpoints {
    fn from(t: CtTuple) -> Self {
        Endpoints {
            src: t.src,
            sport: t.sport,
            dst: t.dst,
            dport: t.dport,
        }
    }
}

impl std::fmt::Display for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} → {}",
            Endpoint::new(self.src, self.sport),
            Endpoint::new(self.dst, self.dport)
        )
    }
}

/// Which translations a binding carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatKind {
    Snat,
    Dnat,
    Both,
}

impl NatKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NatKind::Snat => "snat",
            NatKind::Dnat => "dnat",
            NatKind::Both => "both",
        }
    }
}

/// Where a binding came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatSource {
    /// The netfilter eBPF programs (counters available).
    Ebpf,
    /// Conntrack netlink events (kernels before 6.4: no per-packet counters).
    Conntrack,
}

/// One NAT binding, as users learned to name it.
#[derive(Clone, Debug, Serialize)]
pub struct Binding {
    #[serde(rename = "type")]
    pub record: &'static str,
    pub ts_ns: u64,
    pub netns: u32,
    pub netns_name: String,
    pub proto: Proto,
    pub family: &'static str,
    pub kind: NatKind,
    /// A port changed (PAT / NAPT), not only an address.
    pub port_translated: bool,
    /// An address changed.
    pub address_translated: bool,
    /// `src:sport → dst:dport` as the client sent it.
    pub original: Endpoints,
    /// The same packet after the router rewrote it.
    pub translated: Endpoints,
    /// The conntrack reply tuple (what the answer looks like before it is translated back).
    pub reply: Endpoints,
    /// The netfilter hook that first saw it (eBPF source only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<&'static str>,
    pub source: NatSource,
    #[serde(skip)]
    pub protocol: u8,
    #[serde(skip)]
    pub key: Option<NatKey>,
}

impl Binding {
    fn new(
        netns: u32,
        protocol: u8,
        family: u16,
        original: Endpoints,
        reply: Endpoints,
        source: NatSource,
    ) -> Self {
        // The reply comes back from the rewritten destination to the rewritten source.
        let translated = Endpoints {
            src: reply.dst,
            sport: reply.dport,
            dst: reply.src,
            dport: reply.sport,
        };
        let snat = translated.src != original.src || translated.sport != original.sport;
        let dnat = translated.dst != original.dst || translated.dport != original.dport;
        let kind = match (snat, dnat) {
            (true, true) => NatKind::Both,
            (false, true) => NatKind::Dnat,
            _ => NatKind::Snat,
        };
        Binding {
            record: "nat_binding",
            ts_ns: 0,
            netns,
            netns_name: String::new(),
            proto: Proto::from_number(protocol),
            family: if family == AF_INET6 { "ipv6" } else { "ipv4" },
            kind,
            port_translated: translated.sport != original.sport
                || translated.dport != original.dport,
            address_translated: translated.src != original.src || translated.dst != original.dst,
            original,
            translated,
            reply,
            hook: None,
            source,
            protocol,
            key: None,
        }
    }

    /// From the netfilter program's record.
    pub fn from_event(ev: &NatEvent) -> Self {
        let original = Endpoints {
            src: ip(ev.family, &ev.orig_src),
            sport: ev.orig_sport,
            dst: ip(ev.family, &ev.orig_dst),
            dport: ev.orig_dport,
        };
        let reply = Endpoints {
            src: ip(ev.family, &ev.reply_src),
            sport: ev.reply_sport,
            dst: ip(ev.family, &ev.reply_dst),
            dport: ev.reply_dport,
        };
        let mut b = Binding::new(
            ev.netns,
            ev.protocol,
            ev.family,
            original,
            reply,
            NatSource::Ebpf,
        );
        b.ts_ns = ev.ts_ns;
        b.hook = Some(hook_name(ev.hook));
        b.key = Some(NatKey {
            ct: ev.ct,
            src: ev.orig_src,
            dst: ev.orig_dst,
            sport: ev.orig_sport,
            dport: ev.orig_dport,
            protocol: ev.protocol,
            _pad: [0; 3],
        });
        b
    }

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
        (nat || b.address_translated || b.port_translated).then_some(b)
    }

    /// "address", "port" or "address+port".
    pub fn translation(&self) -> &'static str {
        match (self.address_translated, self.port_translated) {
            (true, true) => "address+port",
            (false, true) => "port",
            _ => "address",
        }
    }

    fn id(&self) -> BindingId {
        (self.netns, self.protocol, self.original)
    }
}

type BindingId = (u32, u8, Endpoints);

/// A binding that ended: its conntrack entry was destroyed.
#[derive(Clone, Debug, Serialize)]
pub struct BindingEnd {
    #[serde(rename = "type")]
    pub record: &'static str,
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

/// One end of a flow: a process's socket.
#[derive(Clone, Debug, Serialize)]
pub struct FlowEnd {
    pub pid: u32,
    pub comm: String,
    pub netns: u32,
    /// The socket's own address and port.
    pub addr: IpAddr,
    pub port: u16,
    /// The other side as this socket sees it.
    pub peer_addr: IpAddr,
    pub peer_port: u16,
    /// Client side: the kernel picked `port` (an ephemeral port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_chose_port: Option<bool>,
    #[serde(skip)]
    pub(crate) ts_ns: u64,
}

/// Client socket → NAT binding → server socket, seen as one connection.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    #[serde(rename = "type")]
    pub record: &'static str,
    pub ts_ns: u64,
    pub proto: Proto,
    pub client: FlowEnd,
    pub nat: Binding,
    pub server: FlowEnd,
}

/// Something to show, in the order it became known.
#[derive(Clone, Debug)]
pub enum NatOutput {
    Binding(Binding),
    End(BindingEnd),
    Flow(Box<Flow>),
}

struct Live {
    binding: Binding,
    stitched: bool,
}

/// Client endpoints keyed by (proto, local port, remote address, remote port), the tuple a
/// NAT binding's original side shows; server endpoints by (proto, peer address, peer port,
/// local port), the tuple its translated side shows. Local addresses are left out of the
/// keys because an unconnected UDP socket does not know its own.
type EndKey = (u8, u16, IpAddr, u16);

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
    }

    /// Live bindings pushed out by the cap.
    pub fn evicted_bindings(&self) -> u64 {
        self.live.evicted()
    }

    /// Socket ends pushed out by the cap (both sides).
    pub fn evicted_ends(&self) -> u64 {
        self.clients.evicted() + self.servers.evicted()
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

    fn name_of(&self, inode: u32) -> String {
        self.names
            .get(&inode)
            .cloned()
            .unwrap_or_else(|| inode.to_string())
    }

    /// A new binding. Returns what to show (the binding, and a flow if its two sockets are
    /// already known). A binding already known (same netns and original tuple) is ignored.
    pub fn binding(&mut self, mut b: Binding, out: &mut Vec<NatOutput>) {
        let id = b.id();
        if self.live.contains_key(&id) {
            return;
        }
        b.netns_name = self.name_of(b.netns);
        *self
            .counts
            .entry((b.kind, b.port_translated, b.proto, b.netns_name.clone()))
            .or_default() += 1;
        self.by_client.insert(client_key_of(&b), id);
        self.by_translated.insert(server_key_of(&b), id);
        out.push(NatOutput::Binding(b.clone()));
        let pushed_out = self.live.insert(
            id,
            Live {
                binding: b,
                stitched: false,
            },
        );
        if let Some((old_id, old)) = pushed_out {
            self.unindex(&old_id, &old);
        }
        self.try_stitch(&id, out);
    }

    fn forget(&mut self, id: &BindingId) -> Option<Live> {
        let live = self.live.remove(id)?;
        self.unindex(id, &live);
        Some(live)
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

    /// A conntrack entry was destroyed: if it was a binding, it ended. `counters` looks up the
    /// kernel's counters of a binding.
    pub fn destroyed(
        &mut self,
        ev: &CtEvent,
        ts_ns: u64,
        counters: impl FnOnce(&NatKey) -> Option<NatCounters>,
        out: &mut Vec<NatOutput>,
    ) -> Option<NatKey> {
        let id = (ev.netns, ev.protocol, Endpoints::from(ev.orig));
        let live = self.forget(&id)?;
        let b = live.binding;
        let found = b.key.as_ref().and_then(counters);
        let first = found
            .map(|c| c.first_ns)
            .filter(|&f| f != 0)
            .unwrap_or(b.ts_ns);
        out.push(NatOutput::End(BindingEnd {
            record: "nat_end",
            ts_ns,
            netns: b.netns,
            netns_name: b.netns_name.clone(),
            proto: b.proto,
            kind: b.kind,
            original: b.original,
            translated: b.translated,
            duration_s: ts_ns.saturating_sub(first) as f64 / 1e9,
            counters: found.map(Counters::from),
        }));
        b.key
    }

    /// Every socket event goes through here: connects and first datagrams are client ends,
    /// accepts and received datagrams server ends.
    pub fn socket_event(
        &mut self,
        ev: &SockEvent,
        pid: u32,
        comm: impl FnOnce() -> String,
        out: &mut Vec<NatOutput>,
    ) {
        let ok = ev.ret >= 0 || ev.ret == -(libc::EINPROGRESS as i64);
        if !ok || ev.lport == 0 || ev.rport == 0 || ev.family == 0 {
            return;
        }
        let client = match ev.kind {
            kind::CONNECT | kind::SENDTO | kind::SENDMSG => true,
            kind::ACCEPT | kind::RECVFROM | kind::RECVMSG => false,
            _ => return,
        };
        let end = FlowEnd {
            pid,
            comm: comm(),
            netns: ev.netns,
            addr: ip(ev.family, &ev.laddr),
            port: ev.lport,
            peer_addr: ip(ev.family, &ev.raddr),
            peer_port: ev.rport,
            kernel_chose_port: client
                .then_some(ev.flags & tracer_common::flag::KERNEL_CHOSE_PORT != 0),
            ts_ns: ev.ts_ns,
        };
        let key: EndKey = (ev.protocol, end.port, end.peer_addr, end.peer_port);
        if client {
            // A UDP socket's first datagram to a peer names it; later ones change nothing.
            if self.clients.contains_key(&key) && ev.kind != kind::CONNECT {
                return;
            }
            self.clients.insert(key, end);
            if let Some(id) = self.by_client.get(&key).copied() {
                self.try_stitch(&id, out);
            }
        } else {
            if self.servers.contains_key(&key) && ev.kind != kind::ACCEPT {
                return;
            }
            // The binding's translated side is what the server sees: (peer, peer port,
            // local port).
            let skey: EndKey = (ev.protocol, end.peer_port, end.peer_addr, end.port);
            self.servers.insert(skey, end);
            if let Some(id) = self.by_translated.get(&skey).copied() {
                self.try_stitch(&id, out);
            }
        }
    }

    /// Drops socket ends nobody claimed within two minutes (from the oldest on: the work is
    /// what expired, not the table's size).
    pub fn sweep(&mut self, now_ns: u64) {
        let expired = |e: &FlowEnd| e.ts_ns.saturating_add(END_TTL_NS) <= now_ns;
        self.clients.pop_while(expired);
        self.servers.pop_while(expired);
    }

    fn try_stitch(&mut self, id: &BindingId, out: &mut Vec<NatOutput>) {
        let Some(live) = self.live.get_mut(id) else {
            return;
        };
        if live.stitched {
            return;
        }
        let b = &live.binding;
        let Some(client) = self.clients.get(&client_key_of(b)) else {
            return;
        };
        // The client's own address, when it knows it, must be the binding's source.
        if !client.addr.is_unspecified() && client.addr != b.original.src {
            return;
        }
        let Some(server) = self.servers.get(&server_key_of(b)) else {
            return;
        };
        if !server.addr.is_unspecified() && server.addr != b.translated.dst {
            return;
        }
        live.stitched = true;
        let mut nat = b.clone();
        nat.record = "nat";
        out.push(NatOutput::Flow(Box::new(Flow {
            record: "flow",
            ts_ns: b.ts_ns.max(client.ts_ns).max(server.ts_ns),
            proto: b.proto,
            client: client.clone(),
            nat,
            server: server.clone(),
        })));
    }
}

fn client_key_of(b: &Binding) -> EndKey {
    (
        b.protocol,
        b.original.sport,
        b.original.dst,
        b.original.dport,
    )
}

fn server_key_of(b: &Binding) -> EndKey {
    (
        b.protocol,
        b.translated.sport,
        b.translated.src,
        b.translated.dport,
    )
}

/// The netfilter hook's name, as nft spells it.
pub fn hook_name(hook: u8) -> &'static str {
    match hook {
        knat::NF_INET_PRE_ROUTING => "prerouting",
        knat::NF_INET_LOCAL_IN => "input",
        knat::NF_INET_FORWARD => "forward",
        knat::NF_INET_LOCAL_OUT => "output",
        knat::NF_INET_POST_ROUTING => "postrouting",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(a))
    }

    fn ct(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> CtTuple {
        CtTuple {
            src: v4(src),
            dst: v4(dst),
            sport,
            dport,
        }
    }

    fn nat_event(orig: CtTuple, reply: CtTuple) -> NatEvent {
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
            ..NatEvent::default()
        }
    }

    fn sock(kind: u16, laddr: [u8; 4], lport: u16, raddr: [u8; 4], rport: u16) -> SockEvent {
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
                    t.socket_event(&c, 11, || "curl".into(), &mut out);
                    t.socket_event(&s, 22, || "server".into(), &mut out);
                }
                1 => {
                    t.socket_event(&s, 22, || "server".into(), &mut out);
                    t.socket_event(&c, 11, || "curl".into(), &mut out);
                    t.binding(b.clone(), &mut out);
                }
                _ => {
                    t.socket_event(&c, 11, || "curl".into(), &mut out);
                    t.binding(b.clone(), &mut out);
                    t.socket_event(&s, 22, || "server".into(), &mut out);
                }
            }
            t.binding(b.clone(), &mut out); // duplicates are ignored
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
            t.socket_event(&c, 1, String::new, &mut out);
            let mut s = sock(
                kind::ACCEPT,
                server_ip,
                80,
                [203, 0, 113, 1 + (i / 60_000) as u8],
                public,
            );
            s.ts_ns = ts;
            t.socket_event(&s, 2, String::new, &mut out);
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
        };
        assert!(Binding::from_conntrack(&ev, 1).is_none());
    }
}
