//! Ephemeral-port usage: per network namespace, how many ports of its `ip_local_port_range` are
//! held right now by each (protocol, local address), the highest count seen, and a warning the
//! moment usage passes [`WARN_PERCENT`]. Fed by the socket table as sockets gain, change and
//! lose their local ports, so the figure is exact at every event, not sampled.
//!
//! Bounded: a namespace's entries go when the namespace is gone and nothing here holds a port
//! in it ([`EphemeralUsage::retain_namespaces`]), and past [`MAX_KEYS`] addresses the ones
//! holding no port are dropped (counted as evictions). Any user can create namespaces and
//! addresses inside them.
use foldhash::HashMap;

use serde::Serialize;

/// Usage above this share of the range is reported as a warning (once per crossing).
pub const WARN_PERCENT: f64 = 80.0;

/// (netns, protocol, family, local address): ports are unique per local address and protocol.
pub type UsageKey = (u32, u8, u16, [u8; 16]);

#[derive(Debug, Default)]
struct Holders {
    /// Port → how many sockets hold it (an accepted connection shares its listener's port).
    ports: HashMap<u16, u32>,
    /// How many of `ports` lie in the namespace's ephemeral range.
    in_range: usize,
    peak: usize,
    /// A warning was raised and usage has not dropped below the threshold since.
    warned: bool,
}

/// One line of the usage report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Usage {
    pub netns: u32,
    pub proto: super::types::Proto,
    pub laddr: std::net::IpAddr,
    /// The namespace's `ip_local_port_range`.
    pub range: (u16, u16),
    pub range_size: u32,
    pub in_use: usize,
    pub peak: usize,
    pub percent: f64,
    /// Ports of the kernel range that lie below IANA's dynamic range (49152-65535): Linux does
    /// not use IANA's range by default.
    pub below_iana_dynamic: u32,
}

/// (netns, protocol, address) entries kept before the ones holding no port are dropped.
pub const MAX_KEYS: usize = 65_536;

#[derive(Debug)]
pub struct EphemeralUsage {
    keys: HashMap<UsageKey, Holders>,
    ranges: HashMap<u32, (u16, u16)>,
    warnings: Vec<Usage>,
    /// Entries dropped by the cap (they held no port; their peak is forgotten).
    evicted: u64,
    /// The key count at which the next pass drops idle keys: doubled past [`MAX_KEYS`] when a
    /// pass finds most keys busy, so passes stay amortised O(1) per new key.
    next_pass: usize,
}

impl Default for EphemeralUsage {
    fn default() -> Self {
        EphemeralUsage {
            keys: HashMap::default(),
            ranges: HashMap::default(),
            warnings: Vec::new(),
            evicted: 0,
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

impl EphemeralUsage {
    /// A socket started holding `port` on `key`.
    pub fn add(&mut self, key: UsageKey, port: u16) {
        if self.keys.len() >= self.next_pass && !self.keys.contains_key(&key) {
            self.drop_idle_keys();
        }
        let range = self.ranges.get(&key.0).copied();
        let holders = self.keys.entry(key).or_default();
        let count = holders.ports.entry(port).or_insert(0);
        *count += 1;
        if *count == 1 && in_range(port, range.as_ref()) {
            holders.in_range += 1;
            holders.peak = holders.peak.max(holders.in_range);
            self.check(key);
        }
    }

    /// A socket stopped holding `port` on `key`.
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
        }
        self.check(key);
    }

    /// Past the cap: forgets every key that holds no port (one pass, paid for by the new keys
    /// that filled the table since the last one).
    fn drop_idle_keys(&mut self) {
        let before = self.keys.len();
        self.keys.retain(|_, h| !h.ports.is_empty());
        self.evicted += (before - self.keys.len()) as u64;
        self.next_pass = MAX_KEYS.max(2 * self.keys.len());
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
            .retain(|key, h| alive(key.0) || !h.ports.is_empty());
        let held: std::collections::HashSet<u32> = self.keys.keys().map(|k| k.0).collect();
        let before = self.ranges.len();
        self.ranges.retain(|ns, _| alive(*ns) || held.contains(ns));
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
    pub fn set_range(&mut self, netns: u32, range: (u16, u16)) {
        // Called for every event shown: a lookup, and a write only when the range moved.
        if self.ranges.get(&netns) == Some(&range) {
            return;
        }
        self.ranges.insert(netns, range);
        let keys: Vec<UsageKey> = self.keys.keys().filter(|k| k.0 == netns).copied().collect();
        for key in keys {
            let holders = self.keys.get_mut(&key).expect("listed above");
            holders.in_range = holders
                .ports
                .keys()
                .filter(|p| in_range(**p, Some(&range)))
                .count();
            holders.peak = holders.peak.max(holders.in_range);
            self.check(key);
        }
    }

    pub fn range(&self, netns: u32) -> Option<(u16, u16)> {
        self.ranges.get(&netns).copied()
    }

    fn check(&mut self, key: UsageKey) {
        let Some(usage) = self.usage(&key) else {
            return;
        };
        let holders = self.keys.get_mut(&key).expect("usage() found it");
        if usage.percent >= WARN_PERCENT && !holders.warned {
            holders.warned = true;
            self.warnings.push(usage);
        } else if usage.percent < WARN_PERCENT {
            holders.warned = false;
        }
    }

    fn usage(&self, key: &UsageKey) -> Option<Usage> {
        let holders = self.keys.get(key)?;
        let range = *self.ranges.get(&key.0)?;
        let size = u32::from(range.1 - range.0) + 1;
        Some(Usage {
            netns: key.0,
            proto: super::types::Proto::from_number(key.1),
            laddr: super::event::ip(key.2, &key.3),
            range,
            range_size: size,
            in_use: holders.in_range,
            peak: holders.peak,
            percent: holders.in_range as f64 * 100.0 / f64::from(size),
            below_iana_dynamic: below_iana_dynamic(range),
        })
    }

    /// Warnings raised since the last call: usage crossed [`WARN_PERCENT`].
    pub fn take_warnings(&mut self) -> Vec<Usage> {
        std::mem::take(&mut self.warnings)
    }

    /// Every (netns, protocol, local address) with at least one ephemeral port in use, or that
    /// had one, busiest first.
    pub fn report(&self) -> Vec<Usage> {
        let mut out: Vec<Usage> = self
            .keys
            .iter()
            .filter(|(_, h)| h.peak > 0)
            .filter_map(|(k, _)| self.usage(k))
            .collect();
        out.sort_by(|a, b| {
            b.percent
                .total_cmp(&a.percent)
                .then(a.netns.cmp(&b.netns))
                .then(a.proto.cmp(&b.proto))
                .then(a.laddr.cmp(&b.laddr))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LO: [u8; 16] = [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn usage_peak_and_one_warning_per_crossing() {
        let mut u = EphemeralUsage::default();
        u.set_range(1, (40000, 40004));
        let key = (1, 6, 2, LO);
        for port in 40000..40004 {
            u.add(key, port);
        }
        u.add(key, 8080); // outside the range: not counted
        let r = &u.report()[0];
        assert_eq!((r.in_use, r.range_size, r.percent), (4, 5, 80.0));
        let warned = u.take_warnings();
        assert_eq!(warned.len(), 1, "crossing 80% warns once");
        assert_eq!(warned[0].in_use, 4);
        u.add(key, 40004);
        assert!(u.take_warnings().is_empty(), "still above: no repeat");
        assert_eq!(u.report()[0].percent, 100.0);
        u.remove(key, 40004);
        u.remove(key, 40003);
        u.remove(key, 40002);
        assert_eq!(u.report()[0].in_use, 2);
        assert_eq!(u.report()[0].peak, 5);
        u.add(key, 40002);
        u.add(key, 40003);
        assert_eq!(u.take_warnings().len(), 1, "a new crossing warns again");
    }

    #[test]
    fn dead_namespaces_are_forgotten_unless_a_port_is_held() {
        let mut u = EphemeralUsage::default();
        for ns in 1..=3 {
            u.set_range(ns, (40000, 40010));
            u.add((ns, 6, 2, LO), 40001);
        }
        u.remove((1, 6, 2, LO), 40001);
        u.remove((2, 6, 2, LO), 40001);
        // 1 is gone and idle; 2 is alive; 3 is gone but a socket still holds a port there.
        assert_eq!(u.retain_namespaces(|ns| ns == 2), 1);
        assert_eq!(u.namespaces(), vec![2, 3]);
        assert_eq!(u.range(1), None);
        assert!(u.range(3).is_some());
    }

    #[test]
    fn idle_keys_make_room_past_the_cap() {
        let mut u = EphemeralUsage::default();
        let key = |i: usize| {
            (
                1,
                6,
                2,
                [
                    (i >> 16) as u8,
                    (i >> 8) as u8,
                    i as u8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ],
            )
        };
        for i in 0..MAX_KEYS + 10 {
            u.add(key(i), 1000);
            if i >= 10 {
                u.remove(key(i), 1000);
            }
        }
        assert!(u.keys.len() < MAX_KEYS, "{}", u.keys.len());
        assert!(u.evicted() > 0);
        assert_eq!(u.keys.values().filter(|h| !h.ports.is_empty()).count(), 10);
    }

    #[test]
    fn shared_ports_count_once_and_ranges_recount() {
        let mut u = EphemeralUsage::default();
        let key = (1, 6, 2, LO);
        u.add(key, 33000);
        u.add(key, 33000);
        assert!(u.report().is_empty(), "range unknown yet");
        u.set_range(1, (32768, 60999));
        let r = &u.report()[0];
        assert_eq!(r.in_use, 1);
        assert_eq!(r.range_size, 28232);
        assert_eq!(r.below_iana_dynamic, 49152 - 32768);
        u.remove(key, 33000);
        assert_eq!(u.report()[0].in_use, 1, "the other holder remains");
        u.set_range(1, (49152, 65535));
        assert_eq!(u.report()[0].in_use, 0);
        assert_eq!(u.report()[0].below_iana_dynamic, 0);
    }
}
