//! Latency histograms from the kernel's log2 buckets (`tracer_common::stats`): bucket `b`
//! counts durations under 2^b µs, so the Prometheus buckets are those powers of two, in
//! seconds, cumulative. The kernel keeps counts only, not sums: `_sum` is estimated from each
//! bucket's midpoint (said in the help text). Labels: result (established, failed) and family.
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{
    core::{Collector, Desc},
    proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType},
    Registry,
};
use tracer_common::stats;

use super::FAMILY_NAMES;

const CONNECT: &str = "tracer_tcp_connect_seconds";
const CONNECT_HELP: &str = "TCP connects from the first SYN to the handshake's end, by result (established, failed) and family. Buckets are powers of two microseconds; the sum is estimated from bucket midpoints.";
const ACCEPT: &str = "tracer_tcp_accept_wait_seconds";
const ACCEPT_HELP: &str = "Time connections waited in a listener's accept queue, from the completed handshake to accept() (syscall path only: socket hooks see no accept()). Buckets are powers of two microseconds; the sum is estimated from bucket midpoints.";

/// The bucket totals, `stats::CONNECT_SECONDS` onwards, shared with the registry's collector.
#[derive(Clone)]
pub struct LatencySeries {
    totals: Arc<Mutex<Vec<u64>>>,
}

struct LatencyCollector {
    descs: Vec<Desc>,
    totals: Arc<Mutex<Vec<u64>>>,
}

impl LatencySeries {
    pub fn new(registry: &Registry) -> Self {
        let desc = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                name.into(),
                help.into(),
                labels.iter().map(|l| l.to_string()).collect(),
                Default::default(),
            )
            .expect("valid metric")
        };
        let totals = Arc::new(Mutex::new(vec![
            0;
            (stats::COUNT - stats::CONNECT_SECONDS)
                as usize
        ]));
        registry
            .register(Box::new(LatencyCollector {
                descs: vec![
                    desc(CONNECT, CONNECT_HELP, &["result", "family"]),
                    desc(ACCEPT, ACCEPT_HELP, &["family"]),
                ],
                totals: totals.clone(),
            }))
            .expect("unique metric");
        LatencySeries { totals }
    }

    /// Takes the bucket totals from the full statistics array (counts only go up).
    pub fn update(&self, totals: &[u64]) {
        let mut mine = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        let from = stats::CONNECT_SECONDS as usize;
        for (i, slot) in mine.iter_mut().enumerate() {
            let total = totals.get(from + i).copied().unwrap_or(0);
            *slot = (*slot).max(total);
        }
    }
}

/// One histogram series from its `LATENCY_BUCKETS` counts; None when empty.
fn histogram(counts: &[u64], labels: &[(&str, &str)]) -> Option<Metric> {
    let count: u64 = counts.iter().sum();
    if count == 0 {
        return None;
    }
    let mut buckets = Vec::with_capacity(counts.len());
    let mut cumulative = 0;
    let mut sum = 0.0;
    for (b, n) in counts.iter().enumerate() {
        cumulative += n;
        let upper = (1u64 << b) as f64 * 1e-6;
        let lower = if b == 0 { 0.0 } else { upper / 2.0 };
        sum += *n as f64 * (lower + upper) / 2.0;
        // The last bucket holds everything longer: it is +Inf, which the encoder adds.
        if b + 1 < counts.len() {
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(upper);
            bucket.set_cumulative_count(cumulative);
            buckets.push(bucket);
        }
    }
    let mut h = Histogram::default();
    h.set_sample_count(count);
    h.set_sample_sum(sum);
    h.set_bucket(buckets);
    let mut m = Metric::default();
    m.set_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.to_string());
                pair.set_value(value.to_string());
                pair
            })
            .collect(),
    );
    m.set_histogram(h);
    Some(m)
}

fn family(name: &str, help: &str, metrics: Vec<Metric>) -> Option<MetricFamily> {
    if metrics.is_empty() {
        return None;
    }
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(MetricType::HISTOGRAM);
    f.set_metric(metrics);
    Some(f)
}

impl Collector for LatencyCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        let n = stats::LATENCY_BUCKETS as usize;
        let families = stats::FAMILIES as usize;
        let mut connect = Vec::new();
        for (r, result) in ["established", "failed"].iter().enumerate() {
            for (f, fam) in FAMILY_NAMES.iter().enumerate() {
                let at = (r * families + f) * n;
                connect.extend(histogram(
                    &totals[at..at + n],
                    &[("family", fam), ("result", result)],
                ));
            }
        }
        let accept_from = (stats::ACCEPT_WAIT_SECONDS - stats::CONNECT_SECONDS) as usize;
        let mut accept = Vec::new();
        for (f, fam) in FAMILY_NAMES.iter().enumerate() {
            let at = accept_from + f * n;
            accept.extend(histogram(&totals[at..at + n], &[("family", fam)]));
        }
        family(CONNECT, CONNECT_HELP, connect)
            .into_iter()
            .chain(family(ACCEPT, ACCEPT_HELP, accept))
            .collect()
    }
}
