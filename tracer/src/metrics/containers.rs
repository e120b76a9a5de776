//! Series by container, counted by the agent from what its socket table attributes (the
//! kernel counts by nothing a container is named by): failed connects and the ephemeral ports
//! held. Cardinality is bounded: at most [`MAX_CONTAINER_SERIES`] containers get series of
//! their own, the rest share `other`.
use prometheus::{IntCounterVec, IntGaugeVec, Registry};

use super::{counter_vec, gauge_vec, Metrics};
use crate::model::SocketTable;

/// Containers that get series of their own in the per-container counters; the rest count
/// under `container="other"`.
pub const MAX_CONTAINER_SERIES: usize = 32;

/// Counters by container, counted by the agent from what its table attributes.
pub(super) struct ContainerSeries {
    connect_errors: IntCounterVec,
    /// Ephemeral ports held now, by the holder's container (top [`MAX_CONTAINER_SERIES`],
    /// the rest `other`).
    ephemeral: IntGaugeVec,
    /// The container labels given series so far (at most [`MAX_CONTAINER_SERIES`]).
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl ContainerSeries {
    pub(super) fn register(r: &Registry) -> Self {
        ContainerSeries {
            connect_errors: counter_vec(
                r,
                "tracer_container_connect_errors_total",
                "TCP connects that failed (refused, reset, timed out, no port), by the container of the process that made them (`host` for none; the first 32 containers get their own series, the rest count as \"other\") and errno.",
                &["container", "errno"],
            ),
            ephemeral: gauge_vec(
                r,
                "tracer_container_ephemeral_ports_in_use",
                "Ports the kernel chose from the ephemeral range that sockets hold now, by the container of the process holding them (`host` for none; the 32 containers holding most get their own series, the rest count as \"other\").",
                &["container", "proto"],
            ),
            seen: std::sync::Mutex::default(),
        }
    }
}

impl Metrics {
    /// A TCP connect that failed, by its owner's container (the first
    /// [`MAX_CONTAINER_SERIES`] containers get their own series, the rest count as `other`).
    pub fn count_container_connect_error(&self, container: &str, errno: &str) {
        let mut seen = self
            .containers
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A label value a runtime's user names: escaped like every other place it is shown.
        let container = crate::text::escape(container).into_owned();
        if !seen.contains(&container) && seen.len() < MAX_CONTAINER_SERIES {
            seen.insert(container.clone());
        }
        let label = if seen.contains(&container) {
            container.as_str()
        } else {
            "other"
        };
        self.containers
            .connect_errors
            .with_label_values(&[label, errno])
            .inc();
    }

    /// Ephemeral ports held, by container: the holders with most get series of their own.
    pub(super) fn update_container_ephemeral(
        &self,
        table: &SocketTable,
        container_of: &dyn Fn(u64) -> String,
    ) {
        // Counted by cgroup first (no text per socket: this runs on the draining thread every
        // second, over every socket), then labelled once per cgroup.
        let mut by_cgroup: foldhash::HashMap<(Option<u64>, u8), i64> = Default::default();
        for s in table.sockets().filter(|s| s.holds_ephemeral()) {
            *by_cgroup
                .entry((s.owner().map(|o| o.cgroup), s.protocol))
                .or_default() += 1;
        }
        let mut held: std::collections::HashMap<(String, &'static str), i64> =
            std::collections::HashMap::new();
        for ((cgroup, protocol), n) in by_cgroup {
            let container = cgroup.map_or_else(
                || "-".into(),
                |c| crate::text::escape(&container_of(c)).into_owned(),
            );
            let proto = crate::model::event::proto_name(protocol);
            *held.entry((container, proto)).or_default() += n;
        }
        let mut held: Vec<((String, &'static str), i64)> = held.into_iter().collect();
        held.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let gauge = &self.containers.ephemeral;
        gauge.reset();
        for (i, ((container, proto), n)) in held.into_iter().enumerate() {
            let label = if i < MAX_CONTAINER_SERIES {
                container.as_str()
            } else {
                "other"
            };
            gauge.with_label_values(&[label, proto]).add(n);
        }
    }
}
