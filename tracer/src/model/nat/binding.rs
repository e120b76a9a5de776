//! What a NAT binding is: its two tuples (as the client sent the packet, and as the router
//! rewrote it), which translations they show (SNAT, DNAT, both; address or port), and how
//! one is read from the netfilter program's record.
use std::net::IpAddr;

use serde::Serialize;
use tracer_common::{nat as knat, NatEvent, NatKey, AF_INET6};

use super::CtTuple;
use crate::model::{
    event::ip,
    types::{Endpoint, Proto},
};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatSource {
    /// The netfilter eBPF programs (counters available).
    Ebpf,
    /// Conntrack netlink events (kernels before 6.4: no per-packet counters).
    Conntrack,
}

/// One NAT binding, as users learned to name it.
#[derive(Clone, Debug, Serialize)]
pub struct Binding {
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
    /// A new conntrack entry (the kernel's record says so): new even when a binding with the
    /// same original tuple is still live here (its predecessor's destroy not handled yet).
    #[serde(skip)]
    pub fresh: bool,
    /// Found in the conntrack table when tracer linked in: the connection is older than
    /// tracer, and `ts_ns` is when tracer found it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub existing: bool,
}

impl Binding {
    pub(super) fn new(
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
            fresh: false,
            existing: false,
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
        b.fresh = ev.flags & knat::EV_FRESH != 0;
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

    /// "address", "port" or "address+port".
    pub fn translation(&self) -> &'static str {
        match (self.address_translated, self.port_translated) {
            (true, true) => "address+port",
            (false, true) => "port",
            _ => "address",
        }
    }

    pub(super) fn id(&self) -> BindingId {
        (self.netns, self.protocol, self.original)
    }
}

pub(super) type BindingId = (u32, u8, Endpoints);

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
