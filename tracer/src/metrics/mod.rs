//! Prometheus metrics: the registry and how it is filled. Counters come from the kernel's
//! per-CPU statistics (summed where events happen, exact even when the ring buffer overflows);
//! gauges come from the socket table (listening sockets, ephemeral-port usage). Cardinality is
//! bounded: no label takes a per-connection value, listening ports beyond a cap share the
//! `other` bucket, namespaces beyond [`MAX_NETNS_SERIES`] share `netns="other"`, and a
//! namespace's series go when the namespace does.
pub mod server;

use std::collections::BTreeMap;

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tracer_common::{stats, tcp_state_name, PortClass};

mod conntrack;
mod containers;
mod ephemeral;
mod health;
mod latency;
pub mod pool;

use crate::model::{
    event::{errno_name, event_name},
    evicted::Evicted,
    SocketTable,
};

/// At most this many namespaces get series of their own in the ephemeral-port gauges (the
/// busiest); the rest share `netns="other"`. Any user can create namespaces.
pub const MAX_NETNS_SERIES: usize = 256;

/// Label values of one `tracer_nat_bindings_total` series.
type NatLabels = (&'static str, bool, &'static str, String);

/// What the NAT side hands the registry: plain counts, wherever they came from.
pub struct NatCounts<'a> {
    /// Bindings seen, by (kind, port translated, protocol, namespace name).
    pub bindings: &'a crate::model::nat::BindingCounts,
    /// Packets and bytes through SNAT, DNAT and both, from the kernel (None: conntrack
    /// fallback, no per-packet counters).
    pub kernel_totals: Option<[(u64, u64); 3]>,
    /// Binding records and conntrack messages lost.
    pub lost: u64,
}

/// Everything `/metrics` shows, by family.
pub struct Metrics {
    registry: Registry,
    kernel: KernelSeries,
    table: TableSeries,
    nat: NatSeries,
    agent: AgentSeries,
    containers: containers::ContainerSeries,
    /// At most this many listening (port, proto, comm) series; the rest count under `other`.
    listen_port_cap: usize,
}

/// Counters kept up with the kernel's per-CPU statistics.
struct KernelSeries {
    socket_events: IntCounterVec,
    connect_errors: IntCounterVec,
    bind_errors: IntCounterVec,
    transitions: IntCounterVec,
    lost: IntCounterVec,
    health: health::HealthSeries,
    latency: latency::LatencySeries,
}

/// Gauges set from the socket table.
struct TableSeries {
    listening: IntGaugeVec,
    listen_port_info: IntGaugeVec,
    /// A listener's accept queue now and its backlog (from sock_diag every 2 s).
    listen_queue: IntGaugeVec,
    listen_backlog: IntGaugeVec,
    /// Connections refused while a listener's queue was full, and the (port, comm) series
    /// made so far (capped like `listen_port_info`).
    listen_overflows: IntCounterVec,
    overflow_series: std::sync::Mutex<std::collections::HashSet<(u16, String)>>,
    ephemeral: ephemeral::EphemeralSeries,
    sockets_tracked: IntGauge,
}

/// NAT bindings, packets and bytes.
struct NatSeries {
    bindings: IntCounterVec,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    /// NAT records lost (ring full, conntrack overruns), added to `tracer_events_lost_total`.
    lost: std::sync::atomic::AtomicU64,
    /// The `tracer_nat_bindings_total` series exported, to remove those of namespaces gone.
    series: std::sync::Mutex<std::collections::HashSet<NatLabels>>,
    conntrack: conntrack::ConntrackSeries,
    pools: pool::PoolSeries,
}

/// The agent's own work: events processed, entries evicted by a cap.
struct AgentSeries {
    processed: IntCounterVec,
    evicted: IntCounterVec,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

impl KernelSeries {
    fn register(r: &Registry) -> Self {
        KernelSeries {
            socket_events: counter_vec(
                r,
                "tracer_socket_events_total",
                "Socket calls and TCP state changes seen, by event (bind, listen, accept, connect, close, state, release, ...).",
                &["event", "proto", "family"],
            ),
            connect_errors: counter_vec(
                r,
                "tracer_connect_errors_total",
                "connect() calls that failed, by errno (EINPROGRESS is not a failure).",
                &["errno"],
            ),
            bind_errors: counter_vec(
                r,
                "tracer_bind_errors_total",
                "bind() calls that failed, by errno.",
                &["errno"],
            ),
            transitions: counter_vec(
                r,
                "tracer_tcp_state_transitions_total",
                "TCP state transitions, by old and new state.",
                &["from", "to"],
            ),
            lost: counter_vec(
                r,
                "tracer_events_lost_total",
                "Events the kernel saw and could not deliver, by reason: ring_full (the ring buffer had no room: --ringbuf-kib), no_pending_room (a syscall's enter had no room to wait for its exit), rate_limited (resets and drops for packets no socket had, past the per-CPU rate), nested (a program run the kernel skipped because it was already running on that CPU), nat (binding records and conntrack messages).",
                &["reason"],
            ),
            health: health::HealthSeries::new(r),
            latency: latency::LatencySeries::new(r),
        }
    }
}

impl TableSeries {
    fn register(r: &Registry) -> Self {
        TableSeries {
            listening: gauge_vec(
                r,
                "tracer_listening_sockets",
                "Listening sockets now, by protocol and the IANA class of their port.",
                &["proto", "port_class"],
            ),
            listen_port_info: gauge_vec(
                r,
                "tracer_listen_port_info",
                "Listening sockets now, by port, owning command and its container (`host` for none; ports beyond the cap count under port=\"other\").",
                &["port", "proto", "comm", "container"],
            ),
            listen_queue: gauge_vec(
                r,
                "tracer_listen_queue_length",
                "Connections waiting in a listener's accept queue (ss's Recv-Q for a listener), read every 2 s, by port, owning command and container (capped like tracer_listen_port_info).",
                &["port", "proto", "comm", "container"],
            ),
            listen_backlog: gauge_vec(
                r,
                "tracer_listen_backlog",
                "A listener's backlog in effect (ss's Send-Q for a listener), by port, owning command and container.",
                &["port", "proto", "comm", "container"],
            ),
            listen_overflows: counter_vec(
                r,
                "tracer_listen_overflows_total",
                "Connection attempts (SYNs, handshake-completing ACKs) a listener refused while its accept queue was full, from its sk_drops, by port and owning command (ports beyond the cap count under port=\"other\").",
                &["port", "comm"],
            ),
            overflow_series: std::sync::Mutex::default(),
            ephemeral: ephemeral::EphemeralSeries::new(r),
            sockets_tracked: gauge(
                r,
                "tracer_sockets_tracked",
                "Sockets in the agent's socket table.",
            ),
        }
    }
}

impl NatSeries {
    fn register(r: &Registry) -> Self {
        NatSeries {
            bindings: counter_vec(
                r,
                "tracer_nat_bindings_total",
                "NAT bindings seen (a conntrack entry with finished source or destination translation), by kind (snat, dnat, both), whether a port was translated (PAT/NAPT), protocol and the namespace that did it.",
                &["kind", "port_translated", "proto", "netns"],
            ),
            packets: counter_vec(
                r,
                "tracer_nat_packets_total",
                "Packets through NAT bindings, both directions, counted once after the last NAT hook (eBPF source only).",
                &["kind"],
            ),
            bytes: counter_vec(
                r,
                "tracer_nat_bytes_total",
                "Bytes (IP packet length) through NAT bindings, both directions (eBPF source only).",
                &["kind"],
            ),
            lost: std::sync::atomic::AtomicU64::new(0),
            series: std::sync::Mutex::default(),
            conntrack: conntrack::ConntrackSeries::new(r),
            pools: pool::PoolSeries::new(r),
        }
    }
}

impl AgentSeries {
    /// Also registers `tracer_build_info` (set once, never updated).
    fn register(r: &Registry, kernel_release: &str) -> Self {
        let agent = AgentSeries {
            evicted: counter_vec(
                r,
                "tracer_evicted_total",
                "Entries pushed out of a bounded table to keep it under its cap, by table (sockets, ephemeral, remote_log, nat_bindings, nat_ends, nat_history; kernel maps: pending, data, filter_pids, nat_seen, latency).",
                &["table"],
            ),
            processed: counter_vec(
                r,
                "tracer_events_processed_total",
                "Events the agent read and correlated, by source.",
                &["source"],
            ),
        };
        let build = gauge_vec(
            r,
            "tracer_build_info",
            "tracer's version and the kernel it runs on (always 1).",
            &["version", "kernel"],
        );
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), kernel_release])
            .set(1);
        agent
    }
}

const PROTO_NAMES: [&str; 3] = ["other", "tcp", "udp"];
const FAMILY_NAMES: [&str; 3] = ["other", "ipv4", "ipv6"];

/// Raises `counter` to the kernel's running total (counters only go up).
fn catch_up(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

impl Metrics {
    pub fn new(listen_port_cap: usize, kernel_release: &str) -> Self {
        let registry = Registry::new();
        Metrics {
            kernel: KernelSeries::register(&registry),
            table: TableSeries::register(&registry),
            nat: NatSeries::register(&registry),
            agent: AgentSeries::register(&registry, kernel_release),
            containers: containers::ContainerSeries::register(&registry),
            listen_port_cap,
            registry,
        }
    }

    /// Brings the retransmit, reset and drop counters up to their totals (keyed as
    /// `tracer_common::health::key`).
    pub fn update_health(&self, totals: &[(u32, u64)], skipped: u64) {
        self.kernel.health.update(totals, skipped);
    }

    /// Brings the counters up to the kernel's totals (`stats` laid out as
    /// `tracer_common::stats`) and the lost-event count.
    pub fn update_kernel(&self, totals: &[u64], lost: &crate::model::evicted::LostReasons) {
        for (reason, n) in lost.labelled() {
            catch_up(&self.kernel.lost.with_label_values(&[reason]), n);
        }
        catch_up(
            &self.kernel.lost.with_label_values(&["nat"]),
            self.nat.lost.load(std::sync::atomic::Ordering::Relaxed),
        );
        self.kernel.latency.update(totals);
        let get = |i: u32| totals.get(i as usize).copied().unwrap_or(0);
        for kind in 1..stats::KINDS as u16 {
            let name = event_name(kind);
            // Health events have counters of their own (`update_health`).
            if name == "unknown" || kind >= tracer_common::kind::DATA {
                continue;
            }
            for (p, proto) in PROTO_NAMES.iter().enumerate() {
                for (f, family) in FAMILY_NAMES.iter().enumerate() {
                    let index = stats::EVENTS
                        + u32::from(kind) * stats::PROTOS * stats::FAMILIES
                        + p as u32 * stats::FAMILIES
                        + f as u32;
                    let total = get(index);
                    if total > 0 {
                        catch_up(
                            &self
                                .kernel
                                .socket_events
                                .with_label_values(&[name, proto, family]),
                            total,
                        );
                    }
                }
            }
        }
        for old in 1..16u8 {
            for new in 1..16u8 {
                let total = get(stats::TRANSITIONS + u32::from(old) * 16 + u32::from(new));
                if total > 0 {
                    catch_up(
                        &self
                            .kernel
                            .transitions
                            .with_label_values(&[tcp_state_name(old), tcp_state_name(new)]),
                        total,
                    );
                }
            }
        }
        for errno in 1..stats::ERRNOS {
            let label = if errno == stats::ERRNOS - 1 {
                "other".into()
            } else {
                errno_name(-i64::from(errno)).unwrap_or_default()
            };
            for (base, vec) in [
                (stats::CONNECT_ERRNOS, &self.kernel.connect_errors),
                (stats::BIND_ERRNOS, &self.kernel.bind_errors),
            ] {
                let total = get(base + errno);
                if total > 0 {
                    catch_up(&vec.with_label_values(&[&label]), total);
                }
            }
        }
    }

    /// Raises `tracer_evicted_total` to the counts in `evicted` (every table is shown, 0 or
    /// not, so a dashboard sees the series before the first eviction).
    pub fn update_evicted(&self, evicted: &Evicted) {
        for (table, n) in evicted.tables() {
            catch_up(&self.agent.evicted.with_label_values(&[table]), n);
        }
    }

    /// NAT counters: bindings from the binding table, packets and bytes from the kernel. The
    /// series of a namespace that went away (its counts left the table) are removed.
    pub fn update_nat(&self, nat: &NatCounts<'_>) {
        let mut exported = self.nat.series.lock().unwrap_or_else(|e| e.into_inner());
        let labels = |(kind, port_translated, proto, netns): &NatLabels| {
            [
                kind.to_string(),
                if *port_translated { "true" } else { "false" }.to_string(),
                proto.to_string(),
                // A namespace's name: escaped like everywhere it is shown.
                crate::text::escape(netns).into_owned(),
            ]
        };
        let current: std::collections::HashSet<NatLabels> = nat
            .bindings
            .keys()
            .map(|(kind, port_translated, proto, netns)| {
                (kind.as_str(), *port_translated, proto.name(), netns.clone())
            })
            .collect();
        for gone in exported.difference(&current) {
            let values = labels(gone);
            let _ = self
                .nat
                .bindings
                .remove_label_values(&values.each_ref().map(String::as_str));
        }
        for (key, n) in nat.bindings {
            let values = labels(&(key.0.as_str(), key.1, key.2.name(), key.3.clone()));
            catch_up(
                &self
                    .nat
                    .bindings
                    .with_label_values(&values.each_ref().map(String::as_str)),
                *n,
            );
        }
        *exported = current;
        drop(exported);
        if let Some(totals) = nat.kernel_totals {
            for (slot, (packets, bytes)) in totals.iter().enumerate() {
                let kind = ["snat", "dnat", "both"][slot];
                catch_up(&self.nat.packets.with_label_values(&[kind]), *packets);
                catch_up(&self.nat.bytes.with_label_values(&[kind]), *bytes);
            }
        }
        self.nat
            .lost
            .store(nat.lost, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn processed(&self, source: &str, n: u64) {
        self.agent.processed.with_label_values(&[source]).inc_by(n);
    }

    /// Sets the gauges from the socket table. `container_of`: an owner's cgroup → its
    /// container's label (`host`, a name, a short id; `-` not known).
    pub fn update_table(&self, table: &SocketTable, container_of: &dyn Fn(u64) -> String) {
        self.table.sockets_tracked.set(table.len() as i64);
        self.table.listening.reset();
        self.table.listen_port_info.reset();
        self.table.listen_queue.reset();
        self.table.listen_backlog.reset();
        type Key = (u16, &'static str, String, String);
        let mut ports: BTreeMap<Key, i64> = BTreeMap::new();
        let mut queues: BTreeMap<Key, (i64, i64)> = BTreeMap::new();
        for s in table.sockets().filter(|s| s.is_listening()) {
            let proto = crate::model::event::proto_name(s.protocol);
            self.table
                .listening
                .with_label_values(&[proto, PortClass::of(s.lport).as_str()])
                .inc();
            // A label value any user names: escaped like every other place it is shown.
            let comm = s.owner().map_or_else(
                || "-".into(),
                |o| crate::text::escape(&o.comm()).into_owned(),
            );
            let container = s.owner().map_or_else(
                || "-".into(),
                |o| crate::text::escape(&container_of(o.cgroup)).into_owned(),
            );
            if let Some((queue, backlog)) = s.queues {
                let q = queues
                    .entry((s.lport, proto, comm.clone(), container.clone()))
                    .or_default();
                q.0 += i64::from(queue);
                q.1 += i64::from(backlog);
            }
            *ports.entry((s.lport, proto, comm, container)).or_default() += 1;
        }
        self.update_container_ephemeral(table, container_of);
        for (i, ((port, proto, comm, container), (queue, backlog))) in
            queues.into_iter().enumerate()
        {
            let port = if i < self.listen_port_cap {
                port.to_string()
            } else {
                "other".into()
            };
            let (comm, container) = if i < self.listen_port_cap {
                (comm, container)
            } else {
                ("other".into(), "other".into())
            };
            let labels = [port.as_str(), proto, comm.as_str(), container.as_str()];
            self.table
                .listen_queue
                .with_label_values(&labels)
                .add(queue);
            self.table
                .listen_backlog
                .with_label_values(&labels)
                .add(backlog);
        }
        for (i, ((port, proto, comm, container), n)) in ports.into_iter().enumerate() {
            if i < self.listen_port_cap {
                self.table
                    .listen_port_info
                    .with_label_values(&[&port.to_string(), proto, &comm, &container])
                    .set(n);
            } else {
                self.table
                    .listen_port_info
                    .with_label_values(&["other", proto, "other", "other"])
                    .add(n);
            }
        }
        self.update_ephemeral(table);
    }

    /// Counts the connections listeners refused while full.
    pub fn count_overflows(&self, overflows: &[crate::model::listen::ListenOverflow]) {
        let mut series = self
            .table
            .overflow_series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for o in overflows {
            // A label value any user names: escaped like every other place it is shown.
            let comm = crate::text::escape(o.comm.as_deref().unwrap_or("-")).into_owned();
            let key = (o.lport, comm);
            let known = series.contains(&key);
            if !known && series.len() < self.listen_port_cap {
                series.insert(key.clone());
            }
            let counter = if series.contains(&key) {
                self.table
                    .listen_overflows
                    .with_label_values(&[&key.0.to_string(), &key.1])
            } else {
                self.table
                    .listen_overflows
                    .with_label_values(&["other", "other"])
            };
            counter.inc_by(o.dropped);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        encode(&self.registry)
    }
}

/// A registry in the text exposition format.
pub(crate) fn encode(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding");
    String::from_utf8(out).expect("the text format is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_totals_become_counters() {
        let m = Metrics::new(2, "6.18");
        let mut totals = vec![0u64; stats::COUNT as usize];
        totals[stats::event_index(tracer_common::kind::CONNECT, 6, 2) as usize] = 5;
        totals[(stats::CONNECT_ERRNOS + 111) as usize] = 2;
        totals[(stats::TRANSITIONS + 2 * 16 + 1) as usize] = 3;
        m.update_kernel(&totals, &Default::default());
        totals[stats::event_index(tracer_common::kind::CONNECT, 6, 2) as usize] = 7;
        let lost = crate::model::evicted::LostReasons {
            ring_full: 3,
            nested: 1,
            ..Default::default()
        };
        m.update_kernel(&totals, &lost);
        let text = m.render();
        assert!(text.contains(
            "tracer_socket_events_total{event=\"connect\",family=\"ipv4\",proto=\"tcp\"} 7"
        ));
        assert!(text.contains("tracer_connect_errors_total{errno=\"ECONNREFUSED\"} 2"));
        assert!(text.contains(
            "tracer_tcp_state_transitions_total{from=\"SYN_SENT\",to=\"ESTABLISHED\"} 3"
        ));
        assert!(text.contains("tracer_events_lost_total{reason=\"ring_full\"} 3"));
        assert!(text.contains("tracer_events_lost_total{reason=\"nested\"} 1"));
        assert!(text.contains("tracer_events_lost_total{reason=\"no_pending_room\"} 0"));
        assert!(text.contains("tracer_build_info{kernel=\"6.18\",version="));
    }

    #[test]
    fn listening_ports_are_capped() {
        let m = Metrics::new(1, "6.18");
        let table = crate::model::ports::fixtures::sample_table();
        m.update_table(&table, &|_| "host".into());
        let text = m.render();
        // Two TCP listeners (22 and 8080): one fits under the cap, the other is `other`.
        assert!(text.contains(
            "tracer_listen_port_info{comm=\"sshd\",container=\"host\",port=\"22\",proto=\"tcp\"} 1"
        ));
        assert!(text.contains(
            "tracer_listen_port_info{comm=\"other\",container=\"other\",port=\"other\",proto=\"tcp\"} 1"
        ));
        // The three tabs' kernel-chosen ports, held by a process on the host.
        assert!(
            text.contains(
                "tracer_container_ephemeral_ports_in_use{container=\"host\",proto=\"tcp\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains("tracer_listening_sockets{port_class=\"registered\",proto=\"tcp\"} 1")
        );
        assert!(text.contains("tracer_ephemeral_ports_in_use{netns=\"1\",proto=\"tcp\"} 3"));
        assert!(text.contains("tracer_ephemeral_destination_ports_in_use{destination=\"127.0.0.1:8080\",local=\"127.0.0.1\",netns=\"1\",proto=\"tcp\"} 3"));
        assert!(text.contains("tracer_ephemeral_connect_failures_total 0"));
        assert!(text.contains("tracer_ephemeral_port_range_size{netns=\"1\"} 28232"));
    }
}
