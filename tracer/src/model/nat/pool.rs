//! The NAT port pool: per router namespace, translated source address, protocol and
//! destination, how many translated ports live bindings hold now and at most. A masquerade or
//! SNAT rule picks a source port unique per destination (the kernel checks the reply tuple),
//! so that is where a router runs out: the pool's size is the port range of the namespace's
//! source NAT rules for that address family (read from nftables or iptables), the kernel's
//! default when they name none, and said `unread` when no tool could list them. A warning when
//! a pool passes 80 %.
//!
//! What it counts: bindings tracer saw start. Connections older than tracer, and (where
//! conntrack events are not available) ends it never hears of, make the figures low or high.
//!
//! Bounded: pools with no binding left are dropped past [`MAX_POOLS`] (their peak with them,
//! counted), in amortised O(1) per new pool.
use std::net::IpAddr;

use foldhash::HashMap;
use serde::Serialize;
use tracer_common::{AF_INET, AF_INET6};

use super::{Binding, NatKind};
use crate::model::types::Proto;

/// Pools kept before the idle ones are dropped.
pub const MAX_POOLS: usize = 65_536;
/// A pool this full is warned about (once per crossing).
pub const WARN_PERCENT: f64 = 80.0;

/// Source ports a source NAT rule without a range picks from for a client port above 1023
/// (the kernel keeps the client's port when it can; ports below 1024 map to 1-511 or
/// 600-1023).
pub const KERNEL_DEFAULT: (u16, u16) = (1024, 65535);

/// Where a pool's size came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolRange {
    pub range: (u16, u16),
    /// `nftables`, `iptables`, `kernel default` (the rules name no range) or `unread` (no
    /// tool could list them: the kernel's default is assumed).
    pub from: &'static str,
}

/// What reading a namespace's NAT rules found: the first source NAT range per address
/// family (`AF_INET`, `AF_INET6`); `read` false when no tool could list them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RulesRead {
    pub read: bool,
    pub ranges: Vec<(u16, PoolRange)>,
}

/// (netns, protocol, translated source address, destination address, destination port).
type PoolKey = (u32, u8, IpAddr, IpAddr, u16);

#[derive(Debug, Default)]
struct Usage {
    in_use: usize,
    peak: usize,
    warned: bool,
}

/// One pool's line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolReport {
    pub netns: u32,
    pub netns_name: String,
    pub proto: Proto,
    /// The router's address connections leave from.
    pub translated_addr: IpAddr,
    pub daddr: IpAddr,
    pub dport: u16,
    pub in_use: usize,
    pub peak: usize,
    pub size: u32,
    pub percent: f64,
    pub range: (u16, u16),
    /// Where the size came from: `nftables`, `iptables`, `kernel default` or `unread`.
    pub range_from: &'static str,
    /// Client connections to this destination (TCP, from sockets tracer saw) whose SYN went
    /// unanswered for more than a second: ended so, or waiting now.
    pub unanswered_clients: u64,
}

#[derive(Debug)]
pub struct Pools {
    usage: HashMap<PoolKey, Usage>,
    /// Per namespace: its rules as read (bounded by the namespaces watched).
    rules: HashMap<u32, RulesRead>,
    warnings: Vec<PoolKey>,
    evicted: u64,
    /// The pool count at which the next pass drops idle pools (doubled when a pass finds
    /// most busy).
    next_pass: usize,
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            usage: HashMap::default(),
            rules: HashMap::default(),
            warnings: Vec::new(),
            evicted: 0,
            next_pass: MAX_POOLS,
        }
    }
}

fn key_of(b: &Binding) -> Option<PoolKey> {
    matches!(b.kind, NatKind::Snat | NatKind::Both).then_some((
        b.netns,
        b.protocol,
        b.translated.src,
        b.translated.dst,
        b.translated.dport,
    ))
}

impl Pools {
    /// Namespace `netns`'s NAT rules, as read.
    pub fn set_rules(&mut self, netns: u32, rules: RulesRead) {
        self.rules.insert(netns, rules);
    }

    fn range_of(&self, key: &PoolKey) -> PoolRange {
        let family = if key.2.is_ipv6() { AF_INET6 } else { AF_INET };
        let rules = self.rules.get(&key.0);
        if let Some((_, r)) = rules.and_then(|r| r.ranges.iter().find(|(f, _)| *f == family)) {
            return r.clone();
        }
        PoolRange {
            range: KERNEL_DEFAULT,
            from: if rules.is_some_and(|r| r.read) {
                "kernel default"
            } else {
                "unread"
            },
        }
    }

    fn percent(&self, key: &PoolKey, in_use: usize) -> f64 {
        in_use as f64 * 100.0 / f64::from(size_of(self.range_of(key).range))
    }

    /// A live binding took a port of its pool.
    pub fn taken(&mut self, b: &Binding) {
        let Some(key) = key_of(b) else {
            return;
        };
        if self.usage.len() >= self.next_pass && !self.usage.contains_key(&key) {
            let before = self.usage.len();
            self.usage.retain(|_, u| u.in_use > 0);
            self.evicted += (before - self.usage.len()) as u64;
            self.next_pass = MAX_POOLS.max(2 * self.usage.len());
        }
        let in_use = {
            let u = self.usage.entry(key).or_default();
            u.in_use += 1;
            u.peak = u.peak.max(u.in_use);
            u.in_use
        };
        let above = self.percent(&key, in_use) >= WARN_PERCENT;
        let u = self.usage.get_mut(&key).expect("made above");
        if above && !u.warned {
            u.warned = true;
            self.warnings.push(key);
        }
    }

    /// A binding ended (or was forgotten): its port is free again.
    pub fn freed(&mut self, b: &Binding) {
        let Some(key) = key_of(b) else {
            return;
        };
        let Some(in_use) = self.usage.get_mut(&key).map(|u| {
            u.in_use = u.in_use.saturating_sub(1);
            u.in_use
        }) else {
            return;
        };
        if self.percent(&key, in_use) < WARN_PERCENT {
            if let Some(u) = self.usage.get_mut(&key) {
                u.warned = false;
            }
        }
    }

    /// A namespace went away: its pools go.
    pub fn forget_netns(&mut self, netns: u32) {
        self.usage.retain(|k, _| k.0 != netns);
        self.rules.remove(&netns);
        self.warnings.retain(|k| k.0 != netns);
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn report_of(&self, key: &PoolKey, name: &dyn Fn(u32) -> String) -> Option<PoolReport> {
        let u = self.usage.get(key)?;
        let range = self.range_of(key);
        let size = size_of(range.range);
        Some(PoolReport {
            netns: key.0,
            netns_name: name(key.0),
            proto: Proto::from_number(key.1),
            translated_addr: key.2,
            daddr: key.3,
            dport: key.4,
            in_use: u.in_use,
            peak: u.peak,
            size,
            percent: u.in_use as f64 * 100.0 / f64::from(size),
            range: range.range,
            range_from: range.from,
            unanswered_clients: 0,
        })
    }

    /// The `n` fullest pools (the largest share of their range in use now, then the most
    /// ports in use, then the highest peak), and the ports in use in all the others summed:
    /// for metrics of bounded cardinality. O(pools), no sort of them all.
    pub fn fullest(&self, n: usize, name: &dyn Fn(u32) -> String) -> (Vec<PoolReport>, usize) {
        // (in use, size, peak, key); compared as in_use / size without division.
        type Row<'a> = (usize, u64, usize, &'a PoolKey);
        let mut rows: Vec<Row> = self
            .usage
            .iter()
            .map(|(k, u)| {
                (
                    u.in_use,
                    u64::from(size_of(self.range_of(k).range)),
                    u.peak,
                    k,
                )
            })
            .collect();
        let fuller = |a: &Row, b: &Row| {
            let share = (b.0 as u64 * a.1).cmp(&(a.0 as u64 * b.1));
            share
                .then(b.0.cmp(&a.0))
                .then(b.2.cmp(&a.2))
                .then(a.3.cmp(b.3))
        };
        if rows.len() > n && n > 0 {
            rows.select_nth_unstable_by(n - 1, fuller);
        }
        let rest = rows.iter().skip(n).map(|r| r.0).sum();
        rows.truncate(n);
        rows.sort_unstable_by(fuller);
        let top = rows
            .iter()
            .filter_map(|(_, _, _, k)| self.report_of(k, name))
            .collect();
        (top, rest)
    }

    /// Pools that passed 80 % since the last call and still are, once each.
    pub fn take_warnings(&mut self, name: &dyn Fn(u32) -> String) -> Vec<PoolReport> {
        let mut keys = std::mem::take(&mut self.warnings);
        keys.sort_unstable();
        keys.dedup();
        keys.iter()
            .filter_map(|k| self.report_of(k, name))
            .filter(|r| r.percent >= WARN_PERCENT)
            .collect()
    }

    /// Every pool, the fullest (by peak) first.
    pub fn report(&self, name: &dyn Fn(u32) -> String) -> Vec<PoolReport> {
        let mut out: Vec<PoolReport> = self
            .usage
            .keys()
            .filter_map(|k| self.report_of(k, name))
            .collect();
        out.sort_by(|a, b| {
            b.peak
                .cmp(&a.peak)
                .then(a.netns.cmp(&b.netns))
                .then(a.translated_addr.cmp(&b.translated_addr))
                .then(a.daddr.cmp(&b.daddr))
                .then(a.dport.cmp(&b.dport))
        });
        out
    }
}

fn size_of(range: (u16, u16)) -> u32 {
    u32::from(range.1.saturating_sub(range.0)) + 1
}

/// A statement's port range: `"port": {"range": [lo, hi]}` or `"port": N` of the first
/// `masquerade` or `snat` inside `v`.
fn nft_port(v: &serde_json::Value) -> Option<(u16, u16)> {
    let n = |v: &serde_json::Value| v.as_u64().and_then(|p| u16::try_from(p).ok());
    match v {
        serde_json::Value::Object(m) => {
            for stmt in ["masquerade", "snat"] {
                let Some(port) = m.get(stmt).and_then(|s| s.get("port")) else {
                    continue;
                };
                if let Some([lo, hi]) = port
                    .get("range")
                    .and_then(|r| r.as_array())
                    .map(|a| a.as_slice())
                {
                    if let (Some(lo), Some(hi)) = (n(lo), n(hi)) {
                        return Some((lo.min(hi), lo.max(hi)));
                    }
                }
                if let Some(p) = n(port) {
                    return Some((p, p));
                }
            }
            m.values().find_map(nft_port)
        }
        serde_json::Value::Array(a) => a.iter().find_map(nft_port),
        _ => None,
    }
}

/// The source NAT rules' port ranges in `nft -j list ruleset`: per address family, the first
/// rule's `masquerade` or `snat` that names one; an `inet` table's rule counts for both.
pub fn nft_ranges(json: &serde_json::Value) -> Vec<(u16, (u16, u16))> {
    let mut out: Vec<(u16, (u16, u16))> = Vec::new();
    let rules = json
        .get("nftables")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("rule"));
    for rule in rules {
        let families: &[u16] = match rule.get("family").and_then(|f| f.as_str()) {
            Some("ip") => &[AF_INET],
            Some("ip6") => &[AF_INET6],
            Some("inet") => &[AF_INET, AF_INET6],
            _ => &[],
        };
        let Some(range) = rule.get("expr").and_then(nft_port) else {
            continue;
        };
        for &f in families {
            if !out.iter().any(|(known, _)| *known == f) {
                out.push((f, range));
            }
        }
    }
    out
}

/// A source NAT rule's port range in `iptables-save -t nat` output (IPv4): `-j MASQUERADE
/// --to-ports LO[-HI]` or `-j SNAT --to-source ADDR:LO[-HI]` (a REDIRECT's `--to-ports` is a
/// local port, not a pool).
pub fn iptables_range(text: &str) -> Option<(u16, u16)> {
    let range = |s: &str| -> Option<(u16, u16)> {
        let (lo, hi) = s.split_once('-').unwrap_or((s, s));
        let (lo, hi) = (lo.parse().ok()?, hi.parse().ok()?);
        Some((u16::min(lo, hi), u16::max(lo, hi)))
    };
    let snat = |l: &&str| l.contains("-j MASQUERADE") || l.contains("-j SNAT");
    for line in text.lines().filter(|l| l.starts_with("-A ")).filter(snat) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            match pair[0] {
                "--to-ports" => return range(pair[1]),
                "--to-source" => {
                    if let Some((_, ports)) = pair[1].rsplit_once(':') {
                        return range(ports);
                    }
                }
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{ct, nat_event};
    use super::*;

    #[test]
    fn ports_per_destination_peak_and_one_warning_past_80_percent() {
        let mut pools = Pools::default();
        let nft = PoolRange {
            range: (61000, 61003),
            from: "nftables",
        };
        pools.set_rules(
            7,
            RulesRead {
                read: true,
                ranges: vec![(AF_INET, nft)],
            },
        );
        let binding = |sport: u16, tport: u16, dport: u16| {
            Binding::from_event(&nat_event(
                ct([192, 0, 2, 10], sport, [198, 51, 100, 10], dport),
                ct([198, 51, 100, 10], dport, [203, 0, 113, 1], tport),
            ))
        };
        let name = |ns: u32| ns.to_string();
        for (i, tport) in (61000..61004).enumerate() {
            pools.taken(&binding(40000 + i as u16, tport, 80));
            let warned = pools.take_warnings(&name);
            assert_eq!(warned.len(), usize::from(i == 3), "warned at 4 of 4 only");
        }
        // Another destination has a pool of its own.
        pools.taken(&binding(40010, 61000, 443));
        let report = pools.report(&name);
        assert_eq!(report.len(), 2);
        let r = &report[0];
        assert_eq!((r.in_use, r.peak, r.size), (4, 4, 4));
        assert_eq!((r.dport, r.range_from), (80, "nftables"));
        pools.freed(&binding(40000, 61000, 80));
        let r = &pools.report(&name)[0];
        assert_eq!((r.in_use, r.peak), (3, 4));
        // For metrics: the fullest first, the rest summed.
        for dport in 1000..1010 {
            pools.taken(&binding(40020, 61001, dport));
        }
        let (top, rest) = pools.fullest(2, &name);
        let shown: Vec<(u16, usize)> = top.iter().map(|r| (r.dport, r.in_use)).collect();
        assert_eq!(shown, [(80, 3), (443, 1)]);
        assert_eq!(rest, 10, "ten pools of one port each");
        assert_eq!(pools.fullest(0, &name).1, 14);
        assert_eq!(pools.fullest(50, &name).0.len(), 12);
        // Rules never read: the kernel's default, said so.
        let mut unread = Pools::default();
        unread.taken(&binding(40000, 61000, 80));
        let r = &unread.report(&name)[0];
        assert_eq!((r.range, r.range_from), (KERNEL_DEFAULT, "unread"));
    }

    #[test]
    fn rule_ranges_are_read_from_nft_and_iptables() {
        let nft: serde_json::Value = serde_json::from_str(
            r#"{"nftables":[
                {"rule":{"family":"ip","expr":[{"match":{}},{"masquerade":{"port":{"range":[61000,61003]}}}]}},
                {"rule":{"family":"ip6","expr":[{"masquerade":{"port":{"range":[62000,62099]}}}]}},
                {"rule":{"family":"ip","expr":[{"masquerade":{"port":{"range":[1,2]}}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(
            nft_ranges(&nft),
            vec![(AF_INET, (61000, 61003)), (AF_INET6, (62000, 62099))],
            "the first rule per family"
        );
        let snat: serde_json::Value = serde_json::from_str(
            r#"{"nftables":[{"rule":{"family":"inet","expr":[{"snat":{"addr":"203.0.113.7","port":5000}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(
            nft_ranges(&snat),
            vec![(AF_INET, (5000, 5000)), (AF_INET6, (5000, 5000))]
        );
        let none: serde_json::Value = serde_json::from_str(
            r#"{"nftables":[{"rule":{"family":"ip","expr":[{"masquerade":null}]}}]}"#,
        )
        .unwrap();
        assert!(nft_ranges(&none).is_empty());
        let ipt = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o rwan -p tcp -j MASQUERADE --to-ports 61000-61003\nCOMMIT\n";
        assert_eq!(iptables_range(ipt), Some((61000, 61003)));
        let snat = "-A POSTROUTING -j SNAT --to-source 203.0.113.7:7000-7009\n";
        assert_eq!(iptables_range(snat), Some((7000, 7009)));
        assert_eq!(iptables_range("-A POSTROUTING -j MASQUERADE\n"), None);
        let redirect =
            "-A PREROUTING -p tcp -j REDIRECT --to-ports 3128\n-A POSTROUTING -j MASQUERADE\n";
        assert_eq!(iptables_range(redirect), None, "a REDIRECT is no pool");
    }
}
