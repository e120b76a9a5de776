//! "Who is behind this translated address?" — the question a server operator asks when all
//! their logs show is a router's address and port. A [`Who`] names that endpoint; the binding
//! table answers from its live bindings and from a bounded history of ended ones ([`History`]:
//! kept for a while, capped in size, evictions counted), each answer with the client socket
//! (process, namespace, its own address and port) and the server socket when tracer saw them.
use std::{collections::VecDeque, net::IpAddr, str::FromStr};

use serde::Serialize;

use super::{Binding, Endpoints, FlowEnd, Live, NatKind, NatOutput, NatTable};

/// How long ended bindings are kept for `--who`, by default.
pub const DEFAULT_HISTORY_S: u64 = 600;
/// How many ended bindings are kept at most, by default (the oldest go first, counted).
pub const DEFAULT_HISTORY_MAX: usize = 16_384;
/// At most this many answers to one question (the newest first).
pub const MAX_ANSWERS: usize = 256;

/// A translated endpoint asked about: an address, and a port unless any port will do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Who {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

impl FromStr for Who {
    type Err = String;

    /// `203.0.113.1:61000`, `203.0.113.1`, `[2001:db8::1]:443` or `2001:db8::1`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "'{}' is not an address or address:port (e.g. 203.0.113.1:61000, \
                 [2001:db8::1]:443)",
                crate::text::escape(s)
            )
        };
        let (addr, port) = if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
            (sa.ip(), Some(sa.port()))
        } else if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse() {
            (ip, None)
        } else {
            return Err(bad());
        };
        if port == Some(0) {
            return Err(format!(
                "{}: port 0 names no endpoint",
                crate::text::escape(s)
            ));
        }
        Ok(Who {
            addr: canonical(addr),
            port,
        })
    }
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.addr, self.port) {
            (a, Some(p)) => write!(f, "{}", crate::model::types::Endpoint::new(a, p)),
            (a, None) => write!(f, "{a}"),
        }
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is the IPv4 address.
pub(super) fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl Who {
    /// This address and port is the endpoint asked about.
    pub fn names(&self, addr: IpAddr, port: u16) -> bool {
        canonical(addr) == self.addr && self.port.is_none_or(|p| p == port)
    }

    /// The binding's translated source (what a server saw the client as), or for a
    /// destination NAT its original destination (the public endpoint a port forward hides a
    /// server behind), is this endpoint.
    pub fn matches(&self, b: &Binding) -> bool {
        self.about(b.kind, &b.original, &b.translated)
    }

    /// [`Who::matches`] on a binding's kind and tuples (a binding's end carries them too).
    fn about(&self, kind: NatKind, original: &Endpoints, translated: &Endpoints) -> bool {
        (kind != NatKind::Dnat && self.names(translated.src, translated.sport))
            || (kind != NatKind::Snat && self.names(original.dst, original.dport))
    }

    /// Whether a record of the binding table is about this endpoint (status lines are).
    pub fn allows(&self, item: &NatOutput) -> bool {
        match item {
            NatOutput::Binding(b) => self.matches(b),
            NatOutput::Flow(f) => self.matches(&f.nat),
            NatOutput::End(e) => self.about(e.kind, &e.original, &e.translated),
            NatOutput::Health(_) | NatOutput::Pool(..) => true,
        }
    }
}

/// A binding that ended, with the sockets at its two ends when tracer saw them.
#[derive(Clone, Debug)]
pub struct Ended {
    pub binding: Binding,
    /// When it ended, or was pushed out of the live table by its cap (`evicted`).
    pub ended_ns: u64,
    pub evicted: bool,
    pub client: Option<FlowEnd>,
    pub server: Option<FlowEnd>,
}

/// An answer: a binding for the endpoint asked about, live or ended.
#[derive(Clone, Debug, Serialize)]
pub struct WhoAnswer {
    /// When it ended (None: live now).
    pub ended_ns: Option<u64>,
    /// tracer stopped following it then (its live table was full), not the kernel: it may
    /// have lived on.
    pub evicted: bool,
    pub binding: Binding,
    /// The socket that sent the original packet (the process behind the endpoint).
    pub client: Option<FlowEnd>,
    /// The socket that received it after translation.
    pub server: Option<FlowEnd>,
}

/// Ended bindings, oldest first, kept for `keep_ns` and `cap` at most (the oldest go first
/// past the cap, counted). Ends arrive in the order they are handled, so the queue is in
/// time order and expiry pops from the front.
pub struct History {
    entries: VecDeque<Ended>,
    keep_ns: u64,
    cap: usize,
    evicted: u64,
}

impl History {
    /// `cap` 0 keeps nothing.
    pub fn new(keep_ns: u64, cap: usize) -> Self {
        History {
            entries: VecDeque::new(),
            keep_ns,
            cap,
            evicted: 0,
        }
    }

    /// Whether anything is kept at all.
    pub fn keeps(&self) -> bool {
        self.cap > 0 && self.keep_ns > 0
    }

    pub fn push(&mut self, e: Ended) {
        if !self.keeps() {
            return;
        }
        if self.entries.len() >= self.cap {
            self.entries.pop_front();
            self.evicted += 1;
        }
        self.entries.push_back(e);
    }

    /// Forgets what ended more than `keep_ns` before `now_ns` (not counted: kept as long as
    /// promised).
    pub fn expire(&mut self, now_ns: u64) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.ended_ns.saturating_add(self.keep_ns) <= now_ns)
        {
            self.entries.pop_front();
        }
    }

    /// Ended bindings the cap pushed out before their time.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops a namespace's entries (it went away, and its name may be reused).
    pub fn forget_netns(&mut self, inode: u32) {
        self.entries.retain(|e| e.binding.netns != inode);
    }
}

impl Default for History {
    fn default() -> Self {
        History::new(0, 0)
    }
}

impl NatTable {
    /// Keeps ended bindings for `keep_ns`, `cap` at most, for [`NatTable::who`].
    pub fn keep_history(&mut self, keep_ns: u64, cap: usize) {
        self.history = History::new(keep_ns, cap);
    }

    /// Ended bindings the history's cap pushed out.
    pub fn evicted_history(&self) -> u64 {
        self.history.evicted()
    }

    /// Bindings for this endpoint: live ones first, then ended ones within the history, the
    /// newest first in each; [`MAX_ANSWERS`] at most. The work is one pass over both tables
    /// (bounded by their caps), done only when someone asks; only the answers given are
    /// copied.
    pub fn who(&self, who: &Who, now_ns: u64) -> Answers {
        let mut live: Vec<&Live> = self
            .live
            .values()
            .filter(|l| who.matches(&l.binding))
            .collect();
        let newest = |l: &&Live| std::cmp::Reverse(l.binding.ts_ns);
        let mut truncated = false;
        if live.len() > MAX_ANSWERS {
            live.select_nth_unstable_by_key(MAX_ANSWERS - 1, newest);
            live.truncate(MAX_ANSWERS);
            truncated = true;
        }
        live.sort_unstable_by_key(newest);
        let mut answers: Vec<WhoAnswer> = live
            .into_iter()
            .map(|l| {
                let (client, server) = match &l.stitched {
                    Some(ends) => (Some(ends.0.clone()), Some(ends.1.clone())),
                    None => self.ends_of(&l.binding),
                };
                WhoAnswer {
                    ended_ns: None,
                    evicted: false,
                    binding: l.binding.clone(),
                    client,
                    server,
                }
            })
            .collect();
        let mut ended = self
            .history
            .entries
            .iter()
            .rev()
            .filter(|e| e.ended_ns.saturating_add(self.history.keep_ns) > now_ns)
            .filter(|e| who.matches(&e.binding));
        for e in ended.by_ref().take(MAX_ANSWERS - answers.len()) {
            answers.push(WhoAnswer {
                ended_ns: Some(e.ended_ns),
                evicted: e.evicted,
                binding: e.binding.clone(),
                client: e.client.clone(),
                server: e.server.clone(),
            });
        }
        truncated |= ended.next().is_some();
        Answers {
            answers,
            truncated,
            evicted: self.live.evicted() + self.history.evicted(),
        }
    }
}

/// The answers to one question, and what may be missing from them.
#[derive(Clone, Debug, Default)]
pub struct Answers {
    pub answers: Vec<WhoAnswer>,
    /// More matched than [`MAX_ANSWERS`]: the oldest were left out.
    pub truncated: bool,
    /// Bindings tracer's caps pushed out since it started (live ones to make room, ended ones
    /// before their time): an answer may be missing when this is not 0.
    pub evicted: u64,
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::{fixtures::*, CtEvent};
    use super::*;
    use tracer_common::kind;

    #[test]
    fn endpoints_parse_as_users_write_them() {
        let w: Who = "203.0.113.1:61000".parse().unwrap();
        assert_eq!((w.addr, w.port), (v4([203, 0, 113, 1]), Some(61000)));
        let w: Who = "203.0.113.1".parse().unwrap();
        assert_eq!(w.port, None);
        let w: Who = "[::ffff:203.0.113.1]:80".parse().unwrap();
        assert_eq!(w.addr, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)));
        let w: Who = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(
            (w.to_string(), w.port),
            ("[2001:db8::1]:443".into(), Some(443))
        );
        assert!("2001:db8::1".parse::<Who>().is_ok());
        for bad in [
            "",
            "router:80",
            "203.0.113.1:0",
            "203.0.113.1:70000",
            "1.2.3.4:\u{1b}[2J",
        ] {
            let e = bad.parse::<Who>().unwrap_err();
            assert!(!e.contains('\u{1b}'), "{e}");
        }
    }

    /// A masquerade 192.0.2.10:40000 → 198.51.100.10:80 as 203.0.113.1:61000, with both
    /// sockets seen, ended at 2 s.
    fn ended_flow(t: &mut NatTable) {
        let mut out = Vec::new();
        let (orig, reply, destroy) = masquerade_and_destroy();
        t.binding(Binding::from_event(&nat_event(orig, reply)), &mut out);
        let c = sock(
            kind::CONNECT,
            [192, 0, 2, 10],
            40000,
            [198, 51, 100, 10],
            80,
        );
        t.socket_event(&c, 11, || ("curl".into(), None), &mut out);
        let mut s = sock(
            kind::ACCEPT,
            [198, 51, 100, 10],
            80,
            [203, 0, 113, 1],
            61000,
        );
        s.netns = 2;
        t.socket_event(&s, 22, || ("nginx".into(), None), &mut out);
        t.destroyed(&destroy, 2_000_000_000, |_| None, &mut out);
    }

    #[test]
    fn an_ended_binding_is_found_with_its_client_until_the_history_forgets_it() {
        let mut t = NatTable::default();
        t.keep_history(600_000_000_000, 16);
        ended_flow(&mut t);
        assert!(t.is_empty());
        let who: Who = "203.0.113.1:61000".parse().unwrap();
        let found = t.who(&who, 62_000_000_000).answers;
        assert_eq!(found.len(), 1);
        let a = &found[0];
        assert_eq!(a.ended_ns, Some(2_000_000_000));
        let client = a.client.as_ref().expect("the client socket");
        assert_eq!(
            (client.comm.as_str(), client.pid, client.port),
            ("curl", 11, 40000)
        );
        assert_eq!(a.server.as_ref().unwrap().comm, "nginx");
        // Any port of that address; not another port.
        assert_eq!(
            t.who(&"203.0.113.1".parse().unwrap(), 62_000_000_000)
                .answers
                .len(),
            1
        );
        assert!(t
            .who(&"203.0.113.1:61001".parse().unwrap(), 62_000_000_000)
            .answers
            .is_empty());
        // Ten minutes after its end it is gone, asked or expired.
        assert!(t.who(&who, 602_000_000_000).answers.is_empty());
        t.history.expire(602_000_000_000);
        assert!(t.history.is_empty());
    }

    #[test]
    fn the_history_is_capped_and_counts_what_it_pushes_out() {
        let mut t = NatTable::default();
        t.keep_history(600_000_000_000, 3);
        for i in 0..5u16 {
            let mut out = Vec::new();
            let (mut orig, mut reply, _) = masquerade_and_destroy();
            orig.sport += i;
            reply.dport += i;
            t.binding(Binding::from_event(&nat_event(orig, reply)), &mut out);
            let destroy = CtEvent {
                orig,
                reply,
                ..masquerade_and_destroy().2
            };
            t.destroyed(&destroy, 1_000 + u64::from(i), |_| None, &mut out);
        }
        assert_eq!(t.history.len(), 3);
        assert_eq!(t.evicted_history(), 2);
        let all = t.who(&"203.0.113.1".parse().unwrap(), 2_000).answers;
        let ports: Vec<u16> = all.iter().map(|a| a.binding.translated.sport).collect();
        assert_eq!(ports, [61004, 61003, 61002], "the newest first");
    }

    #[test]
    fn a_binding_the_full_live_table_pushed_out_is_still_found_and_said_so() {
        let mut t = NatTable::with_caps(1, 16);
        t.keep_history(600_000_000_000, 16);
        let mut out = Vec::new();
        for i in 0..2u16 {
            let (mut orig, mut reply, _) = masquerade_and_destroy();
            orig.sport += i;
            reply.dport += i;
            let mut ev = nat_event(orig, reply);
            ev.ts_ns = 100 + u64::from(i);
            t.binding(Binding::from_event(&ev), &mut out);
        }
        let found = t.who(&"203.0.113.1:61000".parse().unwrap(), 200);
        assert_eq!(found.evicted, 1);
        match &found.answers[..] {
            [a] => assert!(a.evicted && a.ended_ns == Some(101), "{a:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_live_binding_answers_with_the_sockets_seen_and_a_port_forward_names_its_server() {
        let mut t = NatTable::default();
        let mut out = Vec::new();
        // A port forward: 198.51.100.7:50000 → 203.0.113.1:8080 reaches 192.0.2.10:80.
        t.binding(
            Binding::from_event(&nat_event(
                ct([198, 51, 100, 7], 50000, [203, 0, 113, 1], 8080),
                ct([192, 0, 2, 10], 80, [198, 51, 100, 7], 50000),
            )),
            &mut out,
        );
        let found = t.who(&"203.0.113.1:8080".parse().unwrap(), 10).answers;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].ended_ns, None);
        assert_eq!(found[0].binding.translated.dst, v4([192, 0, 2, 10]));
        // The same address as a source is not this binding's.
        assert!(t
            .who(&"198.51.100.7:50000".parse().unwrap(), 10)
            .answers
            .is_empty());
        assert!(out
            .iter()
            .all(|o| "203.0.113.1:8080".parse::<Who>().unwrap().allows(o)));
    }
}
