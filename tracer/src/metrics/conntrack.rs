//! The watched namespaces' conntrack tables, named after node_exporter's `node_nf_conntrack_*`
//! where the meaning is the same (its figures are the host's own namespace; these are per
//! watched namespace). Gauges: the kernel's own counters, read every few seconds, that a
//! namespace's re-creation restarts. Bounded by the namespaces watched (`--max-netns`); a
//! namespace's series go with it.
use prometheus::{IntGaugeVec, Registry};

use super::{gauge_vec, Metrics};
use crate::model::nat::health::CtHealth;

pub(super) struct ConntrackSeries {
    entries: IntGaugeVec,
    limit: IntGaugeVec,
    /// One per statistic, `tracer_nf_conntrack_stat_<name>` as node_exporter names them.
    stats: Vec<(&'static str, IntGaugeVec)>,
}

/// The statistics exported, as `conntrack -S` names them.
const STATS: [&str; 7] = [
    "found",
    "invalid",
    "insert",
    "insert_failed",
    "drop",
    "early_drop",
    "search_restart",
];

impl ConntrackSeries {
    pub(super) fn new(r: &Registry) -> Self {
        ConntrackSeries {
            entries: gauge_vec(
                r,
                "tracer_nf_conntrack_entries",
                "Conntrack entries now in the watched namespace (nf_conntrack_count; node_nf_conntrack_entries for a router namespace).",
                &["netns"],
            ),
            limit: gauge_vec(
                r,
                "tracer_nf_conntrack_entries_limit",
                "The most conntrack entries the namespace's table holds (nf_conntrack_max).",
                &["netns"],
            ),
            stats: STATS
                .iter()
                .map(|name| {
                    let g = gauge_vec(
                        r,
                        &format!("tracer_nf_conntrack_stat_{name}"),
                        &format!("The namespace's conntrack statistic {name}, summed over CPUs as conntrack -S prints it (node_nf_conntrack_stat_{name})."),
                        &["netns"],
                    );
                    (*name, g)
                })
                .collect(),
        }
    }
}

impl Metrics {
    /// The gauges of every namespace in `health` (the others' go).
    pub fn update_conntrack<'a>(&self, health: impl Iterator<Item = &'a CtHealth>) {
        let c = &self.nat.conntrack;
        c.entries.reset();
        c.limit.reset();
        for (_, g) in &c.stats {
            g.reset();
        }
        for h in health {
            let netns = crate::text::escape(&h.netns_name).into_owned();
            c.entries.with_label_values(&[&netns]).set(h.entries as i64);
            if let Some(max) = h.max {
                c.limit.with_label_values(&[&netns]).set(max as i64);
            }
            let s = &h.stat;
            for (name, g) in &c.stats {
                let v = match *name {
                    "found" => s.found,
                    "invalid" => s.invalid,
                    "insert" => s.insert,
                    "insert_failed" => s.insert_failed,
                    "drop" => s.drop,
                    "early_drop" => s.early_drop,
                    _ => s.search_restart,
                };
                g.with_label_values(&[&netns]).set(v as i64);
            }
        }
    }
}
