//! Client connections a router may have left without a port: a TCP socket that stays in
//! SYN_SENT for more than a second has had its SYN retransmitted (the kernel's first
//! retransmission timeout is one second) — nobody answered. Tied to the destination the
//! client asked for, which is the destination of the router's NAT port pool it needed: where
//! conntrack's statistics say connections got no port, these say whose and to where.
use std::net::IpAddr;

use tracer_common::{kind, tcp_state, SockEvent, IPPROTO_TCP};

use super::NatTable;
use crate::model::{bounded::BoundedMap, event::ip, types::Proto};

/// A SYN unanswered this long was retransmitted at least once.
pub const UNANSWERED_NS: u64 = 1_000_000_000;
/// Handshakes followed at once, and destinations counted, at most (the oldest go first).
pub const MAX_HANDSHAKES: usize = 65_536;
pub const MAX_DESTINATIONS: usize = 4_096;
/// A handshake whose end was never seen (a lost record) is forgotten after this.
const FORGET_NS: u64 = 300_000_000_000;

/// (protocol, destination address, destination port) as the client asked for it.
pub type Destination = (u8, IpAddr, u16);

pub struct Handshakes {
    /// Sockets in SYN_SENT: where to, since when.
    pending: BoundedMap<u64, (Destination, u64)>,
    /// Per destination, handshakes that ended after more than [`UNANSWERED_NS`] unanswered.
    unanswered: BoundedMap<Destination, u64>,
    /// The latest event time seen (for what is pending now).
    now_ns: u64,
}

impl Default for Handshakes {
    fn default() -> Self {
        Handshakes {
            pending: BoundedMap::new(MAX_HANDSHAKES),
            unanswered: BoundedMap::new(MAX_DESTINATIONS),
            now_ns: 0,
        }
    }
}

impl Handshakes {
    /// A TCP state transition: a handshake starts, is answered, or ends unanswered.
    pub fn observe(&mut self, ev: &SockEvent) {
        if ev.kind != kind::STATE || ev.protocol != IPPROTO_TCP {
            return;
        }
        self.now_ns = self.now_ns.max(ev.ts_ns);
        if ev.new_state == tcp_state::SYN_SENT {
            let to = (ev.protocol, ip(ev.family, &ev.raddr), ev.rport);
            self.pending.insert(ev.sk, (to, ev.ts_ns));
        } else if ev.old_state == tcp_state::SYN_SENT {
            let Some((to, since)) = self.pending.remove(&ev.sk) else {
                return;
            };
            let answered = ev.new_state == tcp_state::ESTABLISHED;
            if !answered && ev.ts_ns.saturating_sub(since) > UNANSWERED_NS {
                let n = self.unanswered.get(&to).copied().unwrap_or(0) + 1;
                self.unanswered.insert(to, n);
            }
        }
    }

    /// Client connections to `to` unanswered for more than a second: ended so, and waiting
    /// now. The pending ones are counted by a pass over them (at a report, not per event).
    pub fn unanswered_to(&self, to: &Destination) -> u64 {
        let ended = self.unanswered.get(to).copied().unwrap_or(0);
        let waiting = self
            .pending
            .values()
            .filter(|(d, since)| d == to && self.now_ns.saturating_sub(*since) > UNANSWERED_NS)
            .count() as u64;
        ended + waiting
    }

    /// Forgets handshakes whose end never came.
    pub fn sweep(&mut self, now_ns: u64) {
        self.pending
            .pop_while(|(_, since)| since.saturating_add(FORGET_NS) <= now_ns);
    }

    /// Entries the caps pushed out.
    pub fn evicted(&self) -> u64 {
        self.pending.evicted() + self.unanswered.evicted()
    }
}

impl NatTable {
    /// Fills each pool report's unanswered client connections to its destination.
    pub(super) fn with_unanswered(
        &self,
        mut reports: Vec<super::pool::PoolReport>,
    ) -> Vec<super::pool::PoolReport> {
        for r in reports.iter_mut().filter(|r| r.proto == Proto::Tcp) {
            r.unanswered_clients = self
                .handshakes
                .unanswered_to(&(IPPROTO_TCP, r.daddr, r.dport));
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(sk: u64, old: u8, new: u8, ts_ns: u64) -> SockEvent {
        let mut ev = SockEvent {
            kind: kind::STATE,
            family: tracer_common::AF_INET,
            protocol: IPPROTO_TCP,
            old_state: old,
            new_state: new,
            rport: 80,
            sk,
            ts_ns,
            ..SockEvent::default()
        };
        ev.raddr[..4].copy_from_slice(&[198, 51, 100, 10]);
        ev
    }

    #[test]
    fn a_syn_left_unanswered_past_a_second_counts_for_its_destination() {
        let mut h = Handshakes::default();
        let to = (IPPROTO_TCP, "198.51.100.10".parse().unwrap(), 80);
        let s = 1_000_000_000;
        // Answered at once; answered late (still answered); given up after 2 s; waiting.
        h.observe(&state(1, tcp_state::CLOSE, tcp_state::SYN_SENT, s));
        h.observe(&state(
            1,
            tcp_state::SYN_SENT,
            tcp_state::ESTABLISHED,
            s + 1_000,
        ));
        h.observe(&state(2, tcp_state::CLOSE, tcp_state::SYN_SENT, s));
        h.observe(&state(
            2,
            tcp_state::SYN_SENT,
            tcp_state::ESTABLISHED,
            3 * s,
        ));
        h.observe(&state(3, tcp_state::CLOSE, tcp_state::SYN_SENT, s));
        h.observe(&state(3, tcp_state::SYN_SENT, tcp_state::CLOSE, 3 * s));
        h.observe(&state(4, tcp_state::CLOSE, tcp_state::SYN_SENT, 2 * s));
        assert_eq!(
            h.unanswered_to(&to),
            1,
            "the one given up; the waiting one is young"
        );
        h.observe(&state(5, tcp_state::CLOSE, tcp_state::SYN_SENT, 4 * s));
        assert_eq!(h.unanswered_to(&to), 2, "and the one waiting for 2 s now");
        let other = (IPPROTO_TCP, "198.51.100.11".parse().unwrap(), 80);
        assert_eq!(h.unanswered_to(&other), 0);
        h.sweep(400 * s);
        assert_eq!(
            h.unanswered_to(&to),
            1,
            "handshakes whose end never came are forgotten"
        );
    }
}
