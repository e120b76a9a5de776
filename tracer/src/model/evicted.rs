//! What the bounded tables pushed out to stay under their caps, by table: shown in the summary
//! line, the JSON summary (`"evicted": {"sockets": n, …}`) and `tracer_evicted_total{table}`.
//! The table names are a fixed set, so the metric's cardinality is too.
use serde::Serialize;

/// Entries evicted by a cap (never by normal pruning of things that are gone). A table newer
/// than a capture reads as 0 from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Evicted {
    /// The socket table (its hard cap; normal removal follows the socket's release).
    pub sockets: u64,
    /// Ephemeral-port usage keys (namespace, protocol, local address) with no port held.
    pub ephemeral: u64,
    /// `watch --group-by remote`: connections not kept (the log was full of open ones).
    pub remote_log: u64,
    /// NAT bindings pushed out while still live.
    pub nat_bindings: u64,
    /// Socket ends waiting for their NAT binding.
    pub nat_ends: u64,
    /// Ended NAT bindings kept for `--who`, pushed out before their time.
    pub nat_history: u64,
    /// Kernel: syscalls whose enter record was pushed out before their exit (LRU).
    pub pending: u64,
    /// Kernel: per-socket data totals pushed out (LRU, `trace`).
    pub data: u64,
    /// Kernel: processes selected by `--pid` pushed out (LRU).
    pub filter_pids: u64,
    /// Kernel: per-binding NAT packet counters pushed out (LRU).
    pub nat_seen: u64,
    /// Kernel: handshake starts kept for latency histograms, pushed out (LRU).
    pub latency: u64,
    /// Sockets removed a moment ago, kept to charge a late reset or drop to their owner.
    pub closed_sockets: u64,
    /// Cgroups whose container was looked up, and Docker's names, forgotten past their caps.
    pub containers: u64,
    /// A userland proxy's accepts waiting for their second connection, forgotten.
    pub proxies: u64,
}

impl Evicted {
    /// (table, count) for every table, in a fixed order.
    pub fn tables(&self) -> [(&'static str, u64); 14] {
        [
            ("sockets", self.sockets),
            ("ephemeral", self.ephemeral),
            ("remote_log", self.remote_log),
            ("nat_bindings", self.nat_bindings),
            ("nat_ends", self.nat_ends),
            ("nat_history", self.nat_history),
            ("pending", self.pending),
            ("data", self.data),
            ("filter_pids", self.filter_pids),
            ("nat_seen", self.nat_seen),
            ("latency", self.latency),
            ("closed_sockets", self.closed_sockets),
            ("containers", self.containers),
            ("proxies", self.proxies),
        ]
    }

    pub fn total(&self) -> u64 {
        self.tables().iter().map(|(_, n)| n).sum()
    }

    /// `sockets 3, pending 12` (only the tables that evicted anything), or None.
    pub fn describe(&self) -> Option<String> {
        let parts: Vec<String> = self
            .tables()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(table, n)| format!("{table} {n}"))
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// Takes each count from `other` where it is larger (counts only go up).
    pub fn raise_to(&mut self, other: &Evicted) {
        let fields = [
            (&mut self.sockets, other.sockets),
            (&mut self.ephemeral, other.ephemeral),
            (&mut self.remote_log, other.remote_log),
            (&mut self.nat_bindings, other.nat_bindings),
            (&mut self.nat_ends, other.nat_ends),
            (&mut self.nat_history, other.nat_history),
            (&mut self.pending, other.pending),
            (&mut self.data, other.data),
            (&mut self.filter_pids, other.filter_pids),
            (&mut self.nat_seen, other.nat_seen),
            (&mut self.latency, other.latency),
            (&mut self.closed_sockets, other.closed_sockets),
            (&mut self.containers, other.containers),
            (&mut self.proxies, other.proxies),
        ];
        for (mine, theirs) in fields {
            *mine = (*mine).max(theirs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_only_what_was_evicted() {
        let mut e = Evicted::default();
        assert_eq!(e.describe(), None);
        e.raise_to(&Evicted {
            sockets: 3,
            pending: 12,
            ..Evicted::default()
        });
        e.raise_to(&Evicted {
            sockets: 1,
            ..Evicted::default()
        });
        assert_eq!(e.describe().as_deref(), Some("sockets 3, pending 12"));
        assert_eq!(e.total(), 15);
        let json = serde_json::to_value(e).unwrap();
        assert_eq!(json["pending"], 12);
    }
}

/// Socket events the kernel saw and could not deliver, by why (`tracer_events_lost_total`'s
/// `reason` label).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LostReasons {
    /// The ring buffer had no room (`--ringbuf-kib`, or an agent that fell behind).
    pub ring_full: u64,
    /// A syscall's enter found no room to wait for its exit (`--syscalls` path).
    pub no_pending_room: u64,
    /// Resets and drops for packets no socket had, beyond the per-CPU rate (a scan).
    pub rate_limited: u64,
    /// Runs the kernel skipped: the program was already running on that CPU (a transition in
    /// softirq nesting in one in process context).
    pub nested: u64,
}

impl LostReasons {
    pub fn total(&self) -> u64 {
        self.ring_full + self.no_pending_room + self.rate_limited + self.nested
    }

    /// `(reason label, count)`, every reason (a counter that stays 0 still shows).
    pub fn labelled(&self) -> [(&'static str, u64); 4] {
        [
            ("ring_full", self.ring_full),
            ("no_pending_room", self.no_pending_room),
            ("rate_limited", self.rate_limited),
            ("nested", self.nested),
        ]
    }
}
