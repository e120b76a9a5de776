//! NAT port pools: per router namespace, protocol, translated address and destination, the
//! translated ports live bindings hold, the peak, and the pool's size. Destinations are any
//! that clients connect to, so only the [`MAX_POOL_SERIES`] fullest pools get series of their
//! own; the ports in use in all the others are summed under `destination="other"`. Rebuilt at
//! each update: a pool that emptied out of the top leaves no series.
use prometheus::{IntGaugeVec, Registry};

use super::{gauge_vec, Metrics};
use crate::model::nat::pool::PoolReport;

/// Pools with series of their own: the fullest.
pub const MAX_POOL_SERIES: usize = 20;

pub(super) struct PoolSeries {
    in_use: IntGaugeVec,
    peak: IntGaugeVec,
    size: IntGaugeVec,
}

const LABELS: &[&str] = &["netns", "proto", "translated", "destination"];

impl PoolSeries {
    pub(super) fn new(r: &Registry) -> Self {
        PoolSeries {
            in_use: gauge_vec(
                r,
                "tracer_nat_pool_ports_in_use",
                "Translated source ports live NAT bindings hold, per router namespace, protocol, translated address and destination (a port is unique per destination); the fullest pools, the rest summed under destination=\"other\".",
                LABELS,
            ),
            peak: gauge_vec(
                r,
                "tracer_nat_pool_ports_peak",
                "The most translated ports the pool held at once since tracer started.",
                LABELS,
            ),
            size: gauge_vec(
                r,
                "tracer_nat_pool_size",
                "Ports in the pool: the source NAT rule's port range, or the kernel's default 1024-65535 (label range_from says which).",
                &["netns", "proto", "translated", "destination", "range_from"],
            ),
        }
    }
}

impl Metrics {
    /// The pools' series, from the fullest pools and the ports in use in the rest.
    pub fn update_nat_pools(&self, fullest: &[PoolReport], rest_in_use: usize) {
        let p = &self.nat.pools;
        for g in [&p.in_use, &p.peak, &p.size] {
            g.reset();
        }
        for r in fullest {
            let netns = crate::text::escape(&r.netns_name).into_owned();
            let translated = r.translated_addr.to_string();
            let destination = crate::model::types::Endpoint::new(r.daddr, r.dport).to_string();
            let labels = [netns.as_str(), r.proto.name(), &translated, &destination];
            p.in_use.with_label_values(&labels).set(r.in_use as i64);
            p.peak.with_label_values(&labels).set(r.peak as i64);
            let [a, b, c, d] = labels;
            p.size
                .with_label_values(&[a, b, c, d, r.range_from])
                .set(i64::from(r.size));
        }
        if rest_in_use > 0 {
            p.in_use
                .with_label_values(&["other", "other", "other", "other"])
                .set(rest_in_use as i64);
        }
    }
}
