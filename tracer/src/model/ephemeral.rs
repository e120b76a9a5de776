//! Ephemeral-port usage, counted the way the kernel allocates ports, per network namespace
//! and protocol:
//!
//! - **exclusive** ports: a port the kernel gave to `bind()` (0 or named), a listener, or a
//!   UDP socket (autobind, connect) is taken for every destination: `connect()`'s search
//!   skips a port whose bind bucket was made by `bind()`, and UDP's checks any socket on it.
//! - **per destination** (local address, remote address and port): a port `connect()` chose
//!   is unique only per 4-tuple, so the same port serves other destinations at once. The
//!   headroom for a new connection to a destination is the range minus the exclusive ports
//!   minus the ports already connected to it.
//!
//! Fed by the socket table as sockets gain, change and lose their local ports, so the figures
//! are exact at every event, not sampled; a warning the moment a destination's (or the
//! exclusive) usage passes [`WARN_PERCENT`]; `connect()`s the kernel found no port for
//! (EADDRNOTAVAIL) counted per destination.
//!
//! Bounded: a namespace's entries go when the namespace is gone and nothing here holds a port
//! in it ([`EphemeralUsage::retain_namespaces`]), and past [`MAX_KEYS`] keys the ones holding
//! no port are dropped (counted as evictions). Any user can create namespaces, addresses and
//! destinations.
use std::net::IpAddr;

use compact_str::CompactString;
use foldhash::HashMap;
use serde::Serialize;

/// The kernel's TCP_TIMEWAIT_LEN: how long a TIME_WAIT socket keeps its port.
pub const TIMEWAIT_LEN_NS: u64 = 60_000_000_000;

/// Usage above this share of the range is reported as a warning (once per crossing).
pub const WARN_PERCENT: f64 = 80.0;

/// A connection's destination as the kernel's port search for `connect()` sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dest {
    pub family: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    pub rport: u16,
}

impl Dest {
    /// The destination of a connection; an IPv6 socket talking IPv4 (both ends v4-mapped, or
    /// a local end not chosen yet) shares the IPv4 4-tuples, and is keyed as IPv4.
    pub fn new(family: u16, laddr: [u8; 16], raddr: [u8; 16], rport: u16) -> Self {
        let mapped = |a: &[u8; 16]| a[..10] == [0; 10] && a[10..12] == [0xff, 0xff];
        if family == tracer_common::AF_INET6
            && mapped(&raddr)
            && (mapped(&laddr) || laddr == [0; 16])
        {
            let v4 = |a: &[u8; 16]| {
                let mut out = [0; 16];
                if mapped(a) {
                    out[..4].copy_from_slice(&a[12..]);
                }
                out
            };
            return Dest {
                family: tracer_common::AF_INET,
                laddr: v4(&laddr),
                raddr: v4(&raddr),
                rport,
            };
        }
        Dest {
            family,
            laddr,
            raddr,
            rport,
        }
    }
}

/// (netns, protocol, None: ports held exclusively | Some: ports connected to a destination).
pub type UsageKey = (u32, u8, Option<Dest>);

/// Processes remembered per key (the most recent first).
const MAX_PROCESSES: usize = 4;

#[derive(Debug, Default)]
struct Holders {
    /// Port → how many sockets hold it (an accepted connection shares its listener's port).
    ports: HashMap<u16, u32>,
    /// How many of `ports` lie in the namespace's ephemeral range.
    in_range: usize,
    peak: usize,
    /// A warning was raised and usage has not dropped below the threshold since.
    warned: bool,
    /// The processes that took ports here, the latest first.
    processes: Vec<CompactString>,
    /// `connect()`s to this destination the kernel found no port for (EADDRNOTAVAIL).
    failed: u64,
    /// Exclusive scope only: ports `connect()` holds to any destination (port → how many
    /// destinations), and how many lie in the range. `bind()` to port 0 and UDP's autobind
    /// pass over them too.
    connected: HashMap<u16, u32>,
    connected_in_range: usize,
    /// Of `ports`, how many a TIME_WAIT socket holds (the connection closed, the port not
    /// free yet).
    time_wait: usize,
}

/// One line of the usage report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Usage {
    pub netns: u32,
    pub proto: super::types::Proto,
    /// `exclusive` (bound, listening and UDP sockets' ports: no one else may take them) or
    /// `destination` (ports `connect()` chose to reach one destination).
    pub scope: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub laddr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raddr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rport: Option<u16>,
    /// The namespace's `ip_local_port_range`.
    pub range: (u16, u16),
    pub range_size: u32,
    /// Ports of the range held in this scope, and the most at once.
    pub in_use: usize,
    pub peak: usize,
    /// Ports of the range held exclusively in the namespace (for every destination).
    pub exclusive: usize,
    /// Ports left for a new connection to this destination (exclusive scope: for a new
    /// `bind()` to port 0, which also passes over the ports connections hold).
    pub headroom: u32,
    /// Share of the range not available to this scope's next allocation ((range − headroom)
    /// / range); for the exclusive scope, the share held exclusively (what it warns on).
    pub percent: f64,
    /// Processes that took these ports, the latest first (at most 4).
    pub processes: Vec<CompactString>,
    /// `connect()`s the kernel found no local port for (EADDRNOTAVAIL).
    pub failed: u64,
    /// Of `in_use`, ports TIME_WAIT sockets hold (closed connections, ports not yet free).
    pub time_wait: usize,
    /// Ports of the kernel range that lie below IANA's dynamic range (49152-65535): Linux does
    /// not use IANA's range by default.
    pub below_iana_dynamic: u32,
}

impl Usage {
    /// `198.51.100.10:80`, `[2001:db8::1]:443`; None for the exclusive scope.
    pub fn remote(&self) -> Option<String> {
        match (self.raddr?, self.rport?) {
            (r @ IpAddr::V6(_), p) => Some(format!("[{r}]:{p}")),
            (r, p) => Some(format!("{r}:{p}")),
        }
    }

    /// `to 203.0.113.5:80 from 10.0.0.2`, or what the exclusive scope holds.
    pub fn scope_label(&self) -> String {
        match self.remote() {
            Some(remote) => match self.laddr.filter(|a| !a.is_unspecified()) {
                Some(l) => format!("to {remote} from {l}"),
                None => format!("to {remote}"),
            },
            None => "held exclusively (bind, listen, UDP)".to_string(),
        }
    }
}

/// A scope's figures against its namespace's range (see [`Usage`]).
struct Figures {
    exclusive: usize,
    headroom: u32,
    size: u32,
    percent: f64,
}

/// Keys kept before the ones holding no port are dropped.
pub const MAX_KEYS: usize = 65_536;

/// (netns, protocol, family, remote address, remote port): a destination without its local
/// address, as a `connect()` that found no port names it.
type Remote = (u32, u8, u16, [u8; 16], u16);

#[derive(Debug)]
pub struct EphemeralUsage {
    keys: HashMap<UsageKey, Holders>,
    /// `net.ipv4.tcp_tw_reuse` per namespace, where known (the kernel's default, 2, if not).
    tw_reuse: HashMap<u32, u8>,
    /// The local address last connected from, per remote end (an index into `keys`: an
    /// entry whose key is gone is dropped with it, or when looked up).
    locals: HashMap<Remote, [u8; 16]>,
    ranges: HashMap<u32, (u16, u16)>,
    warnings: Vec<Usage>,
    /// Entries dropped by the cap (they held no port; their peak is forgotten).
    evicted: u64,
    /// Every `connect()` that found no port, whatever its destination.
    failed_total: u64,
    /// The key count at which the next pass drops idle keys: doubled past [`MAX_KEYS`] when a
    /// pass finds most keys busy, so passes stay amortised O(1) per new key.
    next_pass: usize,
}

impl Default for EphemeralUsage {
    fn default() -> Self {
        EphemeralUsage {
            keys: HashMap::default(),
            tw_reuse: HashMap::default(),
            locals: HashMap::default(),
            ranges: HashMap::default(),
            warnings: Vec::new(),
            evicted: 0,
            failed_total: 0,
            next_pass: MAX_KEYS,
        }
    }
}

/// How many ports of `range` lie below IANA's dynamic range (49152-65535).
pub fn below_iana_dynamic(range: (u16, u16)) -> u32 {
    if range.0 > 49151 {
        0
    } else {
        u32::from(range.1.min(49151)) - u32::from(range.0) + 1
    }
}

fn in_range(port: u16, range: Option<&(u16, u16)>) -> bool {
    range.is_some_and(|(lo, hi)| (*lo..=*hi).contains(&port))
}

fn remember(processes: &mut Vec<CompactString>, comm: &str) {
    if comm.is_empty() || processes.first().is_some_and(|p| p == comm) {
        return;
    }
    processes.retain(|p| p != comm);
    processes.insert(0, CompactString::from(comm));
    processes.truncate(MAX_PROCESSES);
}

impl EphemeralUsage {
    fn holders(&mut self, key: UsageKey) -> &mut Holders {
        if self.keys.len() >= self.next_pass && !self.keys.contains_key(&key) {
            self.drop_idle_keys();
        }
        self.keys.entry(key).or_default()
    }

    /// A socket of process `comm` started holding `port` in `key`'s scope.
    pub fn add(&mut self, key: UsageKey, port: u16, comm: &str) {
        let range = self.ranges.get(&key.0).copied();
        let holders = self.holders(key);
        remember(&mut holders.processes, comm);
        let count = holders.ports.entry(port).or_insert(0);
        *count += 1;
        if *count != 1 {
            return;
        }
        if let Some(d) = key.2 {
            self.locals
                .insert((key.0, key.1, d.family, d.raddr, d.rport), d.laddr);
            let all = self.holders((key.0, key.1, None));
            let n = all.connected.entry(port).or_insert(0);
            *n += 1;
            if *n == 1 && in_range(port, range.as_ref()) {
                all.connected_in_range += 1;
            }
        }
        if in_range(port, range.as_ref()) {
            let holders = self.keys.get_mut(&key).expect("made above");
            holders.in_range += 1;
            holders.peak = holders.peak.max(holders.in_range);
            self.check(key);
        }
    }

    /// A socket stopped holding `port` in `key`'s scope.
    pub fn remove(&mut self, key: UsageKey, port: u16) {
        let range = self.ranges.get(&key.0).copied();
        let Some(holders) = self.keys.get_mut(&key) else {
            return;
        };
        let Some(count) = holders.ports.get_mut(&port) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            holders.ports.remove(&port);
            if in_range(port, range.as_ref()) {
                holders.in_range -= 1;
            }
            if key.2.is_some() {
                if let Some(all) = self.keys.get_mut(&(key.0, key.1, None)) {
                    if let Some(n) = all.connected.get_mut(&port) {
                        *n -= 1;
                        if *n == 0 {
                            all.connected.remove(&port);
                            if in_range(port, range.as_ref()) {
                                all.connected_in_range -= 1;
                            }
                        }
                    }
                }
            }
        }
        self.check(key);
    }

    /// A `connect()` of process `comm` to `dest` found no local port (EADDRNOTAVAIL). The
    /// kernel may not have settled the local address when it gave up (zero): the failure goes
    /// to the destination last connected to from a local address, if one is known. Reported
    /// at the 1st, 2nd, 4th, 8th … failure of a destination: a loop of failing calls (any
    /// user can make one) costs a lookup each, and a warning only now and then.
    pub fn failed_connect(&mut self, netns: u32, proto: u8, mut dest: Dest, comm: &str) {
        if dest.laddr == [0; 16] {
            let remote = (netns, proto, dest.family, dest.raddr, dest.rport);
            if let Some(&laddr) = self.locals.get(&remote) {
                let known = Dest { laddr, ..dest };
                if self.keys.contains_key(&(netns, proto, Some(known))) {
                    dest = known;
                } else {
                    self.locals.remove(&remote);
                }
            }
        }
        self.failed_total += 1;
        let key = (netns, proto, Some(dest));
        let holders = self.holders(key);
        holders.failed += 1;
        remember(&mut holders.processes, comm);
        if holders.failed.is_power_of_two() {
            if let Some(usage) = self.usage(&key) {
                self.warnings.push(usage);
            }
        }
    }

    /// Past the cap: forgets every key that holds no port (one pass, paid for by the new keys
    /// that filled the table since the last one).
    fn drop_idle_keys(&mut self) {
        let before = self.keys.len();
        self.keys
            .retain(|_, h| !h.ports.is_empty() || !h.connected.is_empty());
        self.evicted += (before - self.keys.len()) as u64;
        self.prune_locals();
        self.next_pass = MAX_KEYS.max(2 * self.keys.len());
    }

    /// Drops index entries whose destination is no longer kept.
    fn prune_locals(&mut self) {
        let keys = &self.keys;
        self.locals.retain(|r, laddr| {
            let dest = Dest {
                family: r.2,
                laddr: *laddr,
                raddr: r.3,
                rport: r.4,
            };
            keys.contains_key(&(r.0, r.1, Some(dest)))
        });
    }

    /// `connect()`s that found no port so far (never decreases).
    pub fn failed_total(&self) -> u64 {
        self.failed_total
    }

    /// Keys dropped by the cap so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Forgets the namespaces `alive` says are gone: their ranges, and their keys that hold no
    /// port (a socket still held in a dead-looking namespace keeps its key until it goes).
    /// Returns how many namespaces were forgotten whole.
    pub fn retain_namespaces(&mut self, alive: impl Fn(u32) -> bool) -> usize {
        self.keys
            .retain(|key, h| alive(key.0) || !h.ports.is_empty() || !h.connected.is_empty());
        self.prune_locals();
        let held: std::collections::HashSet<u32> = self.keys.keys().map(|k| k.0).collect();
        let before = self.ranges.len();
        self.ranges.retain(|ns, _| alive(*ns) || held.contains(ns));
        let ranges = &self.ranges;
        self.tw_reuse.retain(|ns, _| ranges.contains_key(ns));
        before - self.ranges.len()
    }

    /// Every namespace known here: with sockets, or with a range.
    pub fn known_namespaces(&self) -> Vec<u32> {
        let mut out = self.namespaces();
        out.extend(self.ranges.keys().copied());
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Namespaces that have sockets, and so need their range known.
    pub fn namespaces(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self.keys.keys().map(|k| k.0).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Sets (or updates, after a `sysctl -w`) a namespace's range and recounts its ports.
    /// Returns whether the range was new or moved.
    pub fn set_range(&mut self, netns: u32, range: (u16, u16)) -> bool {
        // Called for every event shown: a lookup, and a write only when the range moved.
        if self.ranges.get(&netns) == Some(&range) {
            return false;
        }
        self.ranges.insert(netns, range);
        let mut keys: Vec<UsageKey> = self.keys.keys().filter(|k| k.0 == netns).copied().collect();
        // The exclusive scope first: the destinations' figures include it.
        keys.sort_by_key(|k| k.2.is_some());
        for key in keys {
            let holders = self.keys.get_mut(&key).expect("listed above");
            holders.in_range = holders
                .ports
                .keys()
                .filter(|p| in_range(**p, Some(&range)))
                .count();
            holders.peak = holders.peak.max(holders.in_range);
            holders.connected_in_range = holders
                .connected
                .keys()
                .filter(|p| in_range(**p, Some(&range)))
                .count();
            self.check(key);
        }
        true
    }

    pub fn range(&self, netns: u32) -> Option<(u16, u16)> {
        self.ranges.get(&netns).copied()
    }

    /// Sets a namespace's `net.ipv4.tcp_tw_reuse` (bounded with the ranges: kept only for
    /// namespaces that have one).
    pub fn set_tw_reuse(&mut self, netns: u32, value: u8) {
        if self.ranges.contains_key(&netns) && self.tw_reuse.get(&netns) != Some(&value) {
            self.tw_reuse.insert(netns, value);
        }
    }

    /// How long a TIME_WAIT socket keeps the port of a connection in `key`'s scope from a new
    /// connection to the same destination: TCP_TIMEWAIT_LEN (60 s), or about two seconds
    /// where `tcp_tw_reuse` lets `connect()` take it over (1: every destination; 2, the
    /// default: loopback ones) — when the peer used TCP timestamps, which tracer does not see:
    /// without them the port stays taken longer than counted here.
    pub fn time_wait_hold_ns(&self, key: &UsageKey) -> u64 {
        let Some(d) = key.2 else {
            return TIMEWAIT_LEN_NS;
        };
        let loopback = super::event::ip(d.family, &d.raddr).is_loopback();
        match self.tw_reuse.get(&key.0).copied().unwrap_or(2) {
            1 => 2_000_000_000,
            2 if loopback => 2_000_000_000,
            _ => TIMEWAIT_LEN_NS,
        }
    }

    /// A port of `key`'s scope went to (`true`) or left (`false`) a TIME_WAIT socket.
    pub fn time_wait(&mut self, key: UsageKey, holds: bool) {
        if let Some(h) = self.keys.get_mut(&key) {
            if holds {
                h.time_wait += 1;
            } else {
                h.time_wait = h.time_wait.saturating_sub(1);
            }
        }
    }

    /// Raises a warning when `key`'s usage crossed [`WARN_PERCENT`] (figures only: the
    /// report line is built for a warning alone).
    fn check(&mut self, key: UsageKey) {
        let Some(f) = self.figures(&key) else {
            return;
        };
        let above = f.percent >= WARN_PERCENT;
        let holders = self.keys.get_mut(&key).expect("figures() found it");
        if above && !holders.warned {
            holders.warned = true;
            if let Some(usage) = self.usage(&key) {
                self.warnings.push(usage);
            }
        } else if !above {
            holders.warned = false;
        }
    }

    fn figures(&self, key: &UsageKey) -> Option<Figures> {
        let holders = self.keys.get(key)?;
        let range = *self.ranges.get(&key.0)?;
        let size = u32::from(range.1 - range.0) + 1;
        let exclusive = self.exclusive(key.0, key.1);
        let taken = match key.2 {
            Some(_) => exclusive + holders.in_range,
            None => exclusive + holders.connected_in_range,
        }
        .min(size as usize) as u32;
        // The exclusive scope's share is its own ports: that connections fill the range is
        // their destinations' warning.
        let share = if key.2.is_some() {
            taken
        } else {
            exclusive as u32
        };
        Some(Figures {
            exclusive,
            headroom: size - taken,
            size,
            percent: f64::from(share) * 100.0 / f64::from(size),
        })
    }

    /// Ports of the range held exclusively in (netns, protocol).
    fn exclusive(&self, netns: u32, proto: u8) -> usize {
        self.keys
            .get(&(netns, proto, None))
            .map_or(0, |h| h.in_range)
    }

    fn usage(&self, key: &UsageKey) -> Option<Usage> {
        let f = self.figures(key)?;
        let holders = &self.keys[key];
        let range = self.ranges[&key.0];
        let ip = |family, a: &[u8; 16]| super::event::ip(family, a);
        Some(Usage {
            netns: key.0,
            proto: super::types::Proto::from_number(key.1),
            scope: if key.2.is_some() {
                "destination"
            } else {
                "exclusive"
            },
            laddr: key.2.map(|d| ip(d.family, &d.laddr)),
            raddr: key.2.map(|d| ip(d.family, &d.raddr)),
            rport: key.2.map(|d| d.rport),
            range,
            range_size: f.size,
            in_use: holders.in_range,
            peak: holders.peak,
            exclusive: f.exclusive,
            headroom: f.headroom,
            percent: f.percent,
            processes: holders.processes.clone(),
            failed: holders.failed,
            time_wait: holders.time_wait,
            below_iana_dynamic: below_iana_dynamic(range),
        })
    }

    /// Warnings raised since the last call: usage crossed [`WARN_PERCENT`], or a `connect()`
    /// found no port.
    pub fn take_warnings(&mut self) -> Vec<Usage> {
        std::mem::take(&mut self.warnings)
    }

    /// Every scope with at least one ephemeral port in use, or that had one, or a failed
    /// `connect()`: the fullest first.
    pub fn report(&self) -> Vec<Usage> {
        let mut out: Vec<Usage> = self
            .keys
            .iter()
            .filter(|(_, h)| h.peak > 0 || h.failed > 0)
            .filter_map(|(k, _)| self.usage(k))
            .collect();
        out.sort_by(|a, b| {
            b.percent
                .total_cmp(&a.percent)
                .then(a.netns.cmp(&b.netns))
                .then(a.proto.cmp(&b.proto))
                .then(a.raddr.cmp(&b.raddr))
                .then(a.rport.cmp(&b.rport))
                .then(a.laddr.cmp(&b.laddr))
        });
        out
    }
}

#[cfg(test)]
#[path = "ephemeral_tests.rs"]
mod tests;
