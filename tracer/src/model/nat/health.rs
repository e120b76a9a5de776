//! A watched namespace's conntrack table: how full it is (`nf_conntrack_count` against
//! `nf_conntrack_max`) and the kernel's per-CPU statistics summed (`/proc/net/stat/
//! nf_conntrack`, what `conntrack -S` prints): `insert_failed`, `drop`, `early_drop` say
//! connections got no entry — a full table, or a NAT that found no free port.
use serde::Serialize;

/// Share of `nf_conntrack_max` at which the status line is a warning.
pub const WARN_PERCENT: f64 = 80.0;

/// The statistics `conntrack -S` prints, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CtStat {
    pub found: u64,
    pub invalid: u64,
    pub insert: u64,
    pub insert_failed: u64,
    pub drop: u64,
    pub early_drop: u64,
    pub error: u64,
    pub search_restart: u64,
    pub clash_resolve: u64,
    pub chaintoolong: u64,
}

impl CtStat {
    /// Sums `/proc/net/stat/nf_conntrack`: a header naming the columns, then one line of hex
    /// numbers per CPU. Columns this kernel lacks stay 0; None if there is no header.
    pub fn parse(text: &str) -> Option<CtStat> {
        let mut lines = text.lines();
        let names: Vec<&str> = lines.next()?.split_whitespace().collect();
        if !names.contains(&"drop") {
            return None;
        }
        let mut s = CtStat::default();
        for line in lines {
            for (name, value) in names.iter().zip(line.split_whitespace()) {
                let Ok(v) = u64::from_str_radix(value, 16) else {
                    continue;
                };
                let field = match *name {
                    "found" => &mut s.found,
                    "invalid" => &mut s.invalid,
                    "insert" => &mut s.insert,
                    "insert_failed" => &mut s.insert_failed,
                    "drop" => &mut s.drop,
                    "early_drop" => &mut s.early_drop,
                    "error" | "icmp_error" => &mut s.error,
                    "search_restart" => &mut s.search_restart,
                    "clash_resolve" => &mut s.clash_resolve,
                    "chaintoolong" => &mut s.chaintoolong,
                    _ => continue,
                };
                *field = field.saturating_add(v);
            }
        }
        Some(s)
    }

    /// Connections that got no entry: failed inserts, drops.
    pub fn failures(&self) -> u64 {
        self.insert_failed + self.drop + self.early_drop
    }
}

/// One namespace's conntrack table, as read now.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CtHealth {
    pub netns: u32,
    pub netns_name: String,
    /// `nf_conntrack_count`: entries now.
    pub entries: u64,
    /// `nf_conntrack_max`: entries at most (None: unreadable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    pub percent: Option<f64>,
    pub stat: CtStat,
}

impl CtHealth {
    pub fn new(
        netns: u32,
        netns_name: String,
        entries: u64,
        max: Option<u64>,
        stat: CtStat,
    ) -> Self {
        let percent = max
            .filter(|&m| m > 0)
            .map(|m| entries as f64 * 100.0 / m as f64);
        CtHealth {
            netns,
            netns_name,
            entries,
            max,
            percent,
            stat,
        }
    }

    pub fn near_full(&self) -> bool {
        self.percent.is_some_and(|p| p >= WARN_PERCENT)
    }

    /// Worth a new status line after `before`: connections got no entry since (failed
    /// inserts, drops), or the table's fill moved by a percent of its size or across the
    /// warning line. (The other statistics move all the time on a busy router.)
    pub fn changed_from(&self, before: &CtHealth) -> bool {
        let step = self.max.unwrap_or(100).max(100) / 100;
        self.stat.failures() != before.stat.failures()
            || self.entries.abs_diff(before.entries) >= step
            || self.near_full() != before.near_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two CPUs, as the kernel prints them (6.x columns).
    const STAT: &str = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart clash_resolve chaintoolong\n\
0000000c  00000000 00000000 00000000 00000003 00000000 00000000 00000000 0000000a 00000001 00000002 00000000 00000000  00000000 00000000 00000000 00000004 00000000 00000000\n\
0000000c  00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000005 00000000 00000001 00000000 00000000  00000000 00000000 00000000 00000000 00000001 00000000\n";

    #[test]
    fn per_cpu_statistics_are_summed() {
        let s = CtStat::parse(STAT).unwrap();
        assert_eq!(
            (s.found, s.invalid, s.insert, s.insert_failed, s.drop),
            (1, 3, 15, 1, 3)
        );
        assert_eq!((s.search_restart, s.clash_resolve), (4, 1));
        assert_eq!(s.failures(), 4);
        assert_eq!(CtStat::parse(""), None);
        assert_eq!(CtStat::parse("garbage\nzz"), None);
    }

    #[test]
    fn a_line_when_statistics_move_or_the_fill_does() {
        let a = CtHealth::new(1, "r".into(), 100, Some(1000), CtStat::default());
        let mut b = a.clone();
        b.entries = 105;
        assert!(!b.changed_from(&a), "5 entries of 1000: noise");
        b.entries = 120;
        assert!(b.changed_from(&a));
        let mut c = a.clone();
        c.stat.drop = 1;
        assert!(c.changed_from(&a));
        let mut d = a.clone();
        d.stat.found = 1000;
        d.stat.search_restart = 3;
        assert!(!d.changed_from(&a), "lookups move all the time");
        let full = CtHealth::new(1, "r".into(), 850, Some(1000), CtStat::default());
        assert!(full.near_full());
        assert_eq!(full.percent, Some(85.0));
    }
}
