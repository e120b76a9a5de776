//! The ephemeral-port series, rebuilt from the usage at each update (a namespace or
//! destination that went leaves no series). Cardinality is bounded: at most
//! [`MAX_NETNS_SERIES`] namespaces and [`MAX_DESTINATION_SERIES`] destinations get series of
//! their own (the fullest), the rest share `other`.
use std::collections::{BTreeMap, HashSet};

use prometheus::{IntCounter, IntGaugeVec, Registry};

use super::{counter, gauge_vec, Metrics, MAX_NETNS_SERIES};
use crate::model::{ephemeral::Usage, SocketTable};

/// Destinations with series of their own, across namespaces: the fullest.
pub const MAX_DESTINATION_SERIES: usize = 20;

pub(super) struct EphemeralSeries {
    in_use: IntGaugeVec,
    range_size: IntGaugeVec,
    exclusive: IntGaugeVec,
    destination: IntGaugeVec,
    destination_failed: IntGaugeVec,
    failed_total: IntCounter,
}

impl EphemeralSeries {
    pub(super) fn new(r: &Registry) -> Self {
        let dest_labels = &["netns", "proto", "local", "destination"];
        EphemeralSeries {
            in_use: gauge_vec(
                r,
                "tracer_ephemeral_ports_in_use",
                "Ports of the namespace's ip_local_port_range unavailable to the next connection to its fullest destination: held exclusively (bind, listen, UDP) plus connected to that destination.",
                &["netns", "proto"],
            ),
            range_size: gauge_vec(
                r,
                "tracer_ephemeral_port_range_size",
                "Number of ports in the namespace's ip_local_port_range.",
                &["netns"],
            ),
            exclusive: gauge_vec(
                r,
                "tracer_ephemeral_ports_exclusive",
                "Ports of the range held exclusively (bound, listening, UDP): unavailable to every destination.",
                &["netns", "proto"],
            ),
            destination: gauge_vec(
                r,
                "tracer_ephemeral_destination_ports_in_use",
                "Ports of the range connect() holds to one destination (a port is unique per destination, not per host); the fullest destinations, the rest summed under destination=\"other\".",
                dest_labels,
            ),
            destination_failed: gauge_vec(
                r,
                "tracer_ephemeral_destination_connect_failures",
                "connect() calls to the destination the kernel found no local port for (EADDRNOTAVAIL), since tracer started (the destinations shown above).",
                dest_labels,
            ),
            failed_total: counter(
                r,
                "tracer_ephemeral_connect_failures_total",
                "connect() calls the kernel found no local port for (EADDRNOTAVAIL), every destination.",
            ),
        }
    }
}

impl Metrics {
    /// Rebuilds the ephemeral-port series from the table's usage.
    pub(super) fn update_ephemeral(&self, table: &SocketTable) {
        let e = &self.table.ephemeral;
        for g in [
            &e.in_use,
            &e.range_size,
            &e.exclusive,
            &e.destination,
            &e.destination_failed,
        ] {
            g.reset();
        }
        let usage = table.usage();
        let failed = usage.failed_total();
        if failed > e.failed_total.get() {
            e.failed_total.inc_by(failed - e.failed_total.get());
        }
        let report = usage.report();
        let shown = shown_namespaces(&report, usage.namespaces());
        let ns_label = |ns: u32| {
            if shown.contains(&ns) {
                ns.to_string()
            } else {
                "other".to_string()
            }
        };
        for ns in &shown {
            if let Some((lo, hi)) = usage.range(*ns) {
                e.range_size
                    .with_label_values(&[&ns.to_string()])
                    .set(i64::from(hi - lo) + 1);
            }
        }
        let mut destinations = 0;
        for u in &report {
            let ns = ns_label(u.netns);
            let proto = u.proto.name();
            let taken = i64::from(u.range_size - u.headroom);
            // Every (namespace, protocol) with ports has its figure: at least the exclusive
            // ones (UDP has no other), at most the fullest destination's.
            let g = e.in_use.with_label_values(&[&ns, proto]);
            g.set(g.get().max(taken.max(u.exclusive as i64)));
            if u.scope == "exclusive" {
                let g = e.exclusive.with_label_values(&[&ns, proto]);
                g.set(g.get().max(u.in_use as i64));
                continue;
            }
            // The report is fullest first: the first destinations get series.
            let (local, dest) = if destinations < MAX_DESTINATION_SERIES && ns != "other" {
                destinations += 1;
                let local = u.laddr.map(|a| a.to_string()).unwrap_or_default();
                (local, u.remote().unwrap_or_default())
            } else {
                (String::new(), "other".to_string())
            };
            let labels = [ns.as_str(), proto, local.as_str(), dest.as_str()];
            e.destination
                .with_label_values(&labels)
                .add(u.in_use as i64);
            e.destination_failed
                .with_label_values(&labels)
                .add(u.failed as i64);
        }
    }
}

/// The namespaces with series of their own: the fullest [`MAX_NETNS_SERIES`].
fn shown_namespaces(report: &[Usage], known: Vec<u32>) -> HashSet<u32> {
    let mut fullest: BTreeMap<u32, u32> = known.into_iter().map(|n| (n, 0)).collect();
    for u in report {
        let entry = fullest.entry(u.netns).or_default();
        *entry = (*entry).max(u.range_size - u.headroom);
    }
    let mut ranked: Vec<(u32, u32)> = fullest.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked
        .into_iter()
        .take(MAX_NETNS_SERIES)
        .map(|(ns, _)| ns)
        .collect()
}
