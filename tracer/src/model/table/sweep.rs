//! Keeping the table bounded however long tracer runs: how long an entry may wait for the
//! event that ends it, the periodic sweep of entries past their expiry, and the hard cap.
use super::SocketTable;

/// How long a released TCP socket may wait for its CLOSE transition before it is dropped.
pub(super) const RELEASED_GRACE_NS: u64 = 300 * 1_000_000_000;
/// How long a TCP socket that reached CLOSE may wait for its release.
pub(super) const CLOSED_GRACE_NS: u64 = 60 * 1_000_000_000;
/// The kernel's TIME_WAIT length (TCP_TIMEWAIT_LEN), the most a snapshot TIME_WAIT socket has
/// left.
pub(super) const TIME_WAIT_NS: u64 = 60 * 1_000_000_000;

impl SocketTable {
    /// Drops entries past their expiry: released sockets whose final CLOSE never arrived (lost
    /// events), snapshot TIME_WAIT sockets. Call periodically.
    pub fn sweep(&mut self, now_ns: u64) {
        self.sweep_time_wait(now_ns);
        let stale: Vec<u64> = self
            .sockets
            .iter()
            .filter(|(_, e)| e.expires_at.is_some_and(|t| now_ns > t))
            .map(|(sk, _)| *sk)
            .collect();
        for sk in stale {
            self.remove(sk);
        }
    }

    pub(super) fn make_room(&mut self) {
        if self.sockets.len() < self.capacity {
            return;
        }
        // Last resort: evict the least recently seen tenth. One linear selection (no sort) per
        // tenth of the capacity inserted: O(1) amortised per insert.
        let mut by_age: Vec<(u64, u64)> = self
            .sockets
            .iter()
            .map(|(sk, e)| (e.last_seen, *sk))
            .collect();
        let n = (self.capacity / 10).clamp(1, by_age.len());
        by_age.select_nth_unstable(n - 1);
        for (_, sk) in by_age.into_iter().take(n) {
            self.remove(sk);
            self.evicted += 1;
        }
    }
}
