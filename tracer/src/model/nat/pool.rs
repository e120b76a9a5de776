//! The NAT port pool: per router namespace, translated source address, protocol and
//! destination, how many translated ports live bindings hold now and at most. A masquerade or
//! SNAT rule picks a source port unique per destination, so that is where a router runs out:
//! the pool's size is the port range of the rules (read from nftables or iptables), or the
//! kernel's default when they name none. A warning when a pool passes 80 %.
//!
//! Bounded: pools with no binding left are dropped past [`MAX_POOLS`] (their peak with them,
//! counted).
use std::net::IpAddr;

use foldhash::HashMap;
use serde::Serialize;

use super::{Binding, NatKind};
use crate::model::types::Proto;

/// Pools kept before the idle ones are dropped.
pub const MAX_POOLS: usize = 65_536;
/// A pool this full is warned about (once per crossing).
pub const WARN_PERCENT: f64 = 80.0;

/// Source ports a source NAT rule without a range picks from: the kernel keeps a
/// client's port when it can, else takes one of 1024-65535 (for client ports above 1023).
pub const KERNEL_DEFAULT: (u16, u16) = (1024, 65535);

/// Where a namespace's pool size came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolRange {
    pub range: (u16, u16),
    /// `nftables`, `iptables` or `kernel default`.
    pub from: &'static str,
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
    /// Where the size came from: `nftables`, `iptables` or `kernel default`.
    pub range_from: &'static str,
}

#[derive(Debug, Default)]
pub struct Pools {
    usage: HashMap<PoolKey, Usage>,
    ranges: HashMap<u32, PoolRange>,
    warnings: Vec<PoolKey>,
    evicted: u64,
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
    /// The pool range of namespace `netns`, as read from its rules.
    pub fn set_range(&mut self, netns: u32, range: PoolRange) {
        self.ranges.insert(netns, range);
    }

    fn range(&self, netns: u32) -> PoolRange {
        self.ranges.get(&netns).cloned().unwrap_or(PoolRange {
            range: KERNEL_DEFAULT,
            from: "kernel default",
        })
    }

    /// A live binding took a port of its pool.
    pub fn taken(&mut self, b: &Binding) {
        let Some(key) = key_of(b) else {
            return;
        };
        if self.usage.len() >= MAX_POOLS && !self.usage.contains_key(&key) {
            let before = self.usage.len();
            self.usage.retain(|_, u| u.in_use > 0);
            self.evicted += (before - self.usage.len()) as u64;
        }
        let size = size_of(self.range(key.0).range);
        let u = self.usage.entry(key).or_default();
        u.in_use += 1;
        u.peak = u.peak.max(u.in_use);
        let above = u.in_use as f64 * 100.0 / f64::from(size) >= WARN_PERCENT;
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
        let size = size_of(self.range(key.0).range);
        if let Some(u) = self.usage.get_mut(&key) {
            u.in_use = u.in_use.saturating_sub(1);
            if (u.in_use as f64 * 100.0 / f64::from(size)) < WARN_PERCENT {
                u.warned = false;
            }
        }
    }

    /// A namespace went away: its pools go.
    pub fn forget_netns(&mut self, netns: u32) {
        self.usage.retain(|k, _| k.0 != netns);
        self.ranges.remove(&netns);
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn report_of(&self, key: &PoolKey, name: &dyn Fn(u32) -> String) -> Option<PoolReport> {
        let u = self.usage.get(key)?;
        let range = self.range(key.0);
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
        })
    }

    /// Pools that passed 80 % since the last call.
    pub fn take_warnings(&mut self, name: &dyn Fn(u32) -> String) -> Vec<PoolReport> {
        let keys = std::mem::take(&mut self.warnings);
        keys.iter()
            .filter_map(|k| self.report_of(k, name))
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

/// A source NAT rule's port range in `nft -j list ruleset`: the first `masquerade` or `snat`
/// statement that names one (`"port": {"range": [lo, hi]}` or `"port": N`).
pub fn nft_range(json: &serde_json::Value) -> Option<(u16, u16)> {
    fn walk(v: &serde_json::Value) -> Option<(u16, u16)> {
        match v {
            serde_json::Value::Object(m) => {
                for stmt in ["masquerade", "snat"] {
                    if let Some(port) = m.get(stmt).and_then(|s| s.get("port")) {
                        let n =
                            |v: &serde_json::Value| v.as_u64().and_then(|p| u16::try_from(p).ok());
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
                }
                m.values().find_map(walk)
            }
            serde_json::Value::Array(a) => a.iter().find_map(walk),
            _ => None,
        }
    }
    walk(json)
}

/// A source NAT rule's port range in `iptables-save -t nat` output: `--to-ports LO[-HI]`
/// (MASQUERADE) or `--to-source ADDR:LO[-HI]` (SNAT).
pub fn iptables_range(text: &str) -> Option<(u16, u16)> {
    let range = |s: &str| -> Option<(u16, u16)> {
        let (lo, hi) = s.split_once('-').unwrap_or((s, s));
        let (lo, hi) = (lo.parse().ok()?, hi.parse().ok()?);
        Some((u16::min(lo, hi), u16::max(lo, hi)))
    };
    for line in text.lines().filter(|l| l.starts_with("-A ")) {
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
        pools.set_range(
            7,
            PoolRange {
                range: (61000, 61003),
                from: "nftables",
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
        assert_eq!(
            (report[0].in_use, report[0].peak, report[0].size),
            (4, 4, 4)
        );
        assert_eq!((report[0].dport, report[0].range_from), (80, "nftables"));
        pools.freed(&binding(40000, 61000, 80));
        let r = &pools.report(&name)[0];
        assert_eq!((r.in_use, r.peak), (3, 4));
    }

    #[test]
    fn rule_ranges_are_read_from_nft_and_iptables() {
        let nft: serde_json::Value = serde_json::from_str(
            r#"{"nftables":[{"rule":{"expr":[{"match":{}},{"masquerade":{"port":{"range":[61000,61003]}}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(nft_range(&nft), Some((61000, 61003)));
        let snat: serde_json::Value = serde_json::from_str(
            r#"{"nftables":[{"rule":{"expr":[{"snat":{"addr":"203.0.113.7","port":5000}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(nft_range(&snat), Some((5000, 5000)));
        let none: serde_json::Value =
            serde_json::from_str(r#"{"nftables":[{"rule":{"expr":[{"masquerade":null}]}}]}"#)
                .unwrap();
        assert_eq!(nft_range(&none), None);
        let ipt = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o rwan -p tcp -j MASQUERADE --to-ports 61000-61003\nCOMMIT\n";
        assert_eq!(iptables_range(ipt), Some((61000, 61003)));
        let snat = "-A POSTROUTING -j SNAT --to-source 203.0.113.7:7000-7009\n";
        assert_eq!(iptables_range(snat), Some((7000, 7009)));
        assert_eq!(iptables_range("-A POSTROUTING -j MASQUERADE\n"), None);
    }
}
