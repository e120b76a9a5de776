//! Client connections a router may have left without a port: a TCP socket that stays in
//! SYN_SENT for more than a second has had its SYN retransmitted (the kernel's first
//! retransmission timeout is one second) — nobody answered. Tied to the destination the
//! client asked for, which is the destination of the router's NAT port pool it needed: where
//! conntrack's statistics say connections got no port, these say whose and to where.
use std::net::IpAddr;

use tracer_common::{kind, tcp_state, SockEvent, IPPROTO_TCP};

use super::{who::canonical, NatTable};
use crate::model::{bounded::BoundedMap, event::ip, types::Proto};

/// A SYN unanswered this long was retransmitted at least once.
pub const UNANSWERED_NS: u64 = 1_000_000_000;
/// Handshakes followed at once, and destinations counted, at most (the oldest go first).
pub const MAX_HANDSHAKES: usize = 65_536;
pub const MAX_DESTINATIONS: usize = 4_096;
/// A handshake whose end was never seen (a lost record) is forgotten after this.
/// (The kernel gives up a SYN after about 127 s of retransmissions by default.)
const FORGET_NS: u64 = 130_000_000_000;

/// (protocol, destination address, destination port) as the client asked for it.
pub type Destination = (u8, IpAddr, u16);

pub struct Handshakes {
    /// Sockets in SYN_SENT: where to, since when.
    pending: BoundedMap<u64, (Destination, u64)>,
    /// Per destination, handshakes that left SYN_SENT after more than [`UNANSWERED_NS`] (their
    /// SYN retransmitted), unless refused: given up, timed out, or answered late.
    unanswered: BoundedMap<Destination, u64>,
    /// Per destination, handshakes waiting more than [`UNANSWERED_NS`] at the last sweep
    /// (one pass a second over `pending`, not one per report).
    waiting: foldhash::HashMap<Destination, u64>,
}

impl Default for Handshakes {
    fn default() -> Self {
        Handshakes {
            pending: BoundedMap::new(MAX_HANDSHAKES),
            unanswered: BoundedMap::new(MAX_DESTINATIONS),
            waiting: Default::default(),
        }
    }
}

impl Handshakes {
    /// A TCP state transition: a handshake starts, is answered, or ends unanswered.
    pub fn observe(&mut self, ev: &SockEvent) {
        if ev.kind != kind::STATE || ev.protocol != IPPROTO_TCP {
            return;
        }
        if ev.new_state == tcp_state::SYN_SENT {
            let to = (ev.protocol, canonical(ip(ev.family, &ev.raddr)), ev.rport);
            self.pending.insert(ev.sk, (to, ev.ts_ns));
        } else if ev.old_state == tcp_state::SYN_SENT {
            let Some((to, since)) = self.pending.remove(&ev.sk) else {
                return;
            };
            // A refusal (RST) is an answer; a late SYN-ACK came after a retransmission.
            let refused = ev.sk_err == libc::ECONNREFUSED;
            if !refused && ev.ts_ns.saturating_sub(since) > UNANSWERED_NS {
                let n = self.unanswered.get(&to).copied().unwrap_or(0) + 1;
                self.unanswered.insert(to, n);
            }
        }
    }

    /// Client connections to `to` unanswered for more than a second: ended so, and waiting
    /// at the last [`Handshakes::sweep`].
    pub fn unanswered_to(&self, to: &Destination) -> u64 {
        let ended = self.unanswered.get(to).copied().unwrap_or(0);
        ended + self.waiting.get(to).copied().unwrap_or(0)
    }

    /// Once a second: forgets handshakes whose end never came, and counts those waiting past
    /// a second per destination (one pass, bounded by the cap).
    pub fn sweep(&mut self, now_ns: u64) {
        self.pending
            .pop_while(|(_, since)| since.saturating_add(FORGET_NS) <= now_ns);
        self.waiting.clear();
        for (to, since) in self.pending.values() {
            if now_ns.saturating_sub(*since) > UNANSWERED_NS {
                *self.waiting.entry(*to).or_default() += 1;
            }
        }
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
        let (close, syn, est) = (
            tcp_state::CLOSE,
            tcp_state::SYN_SENT,
            tcp_state::ESTABLISHED,
        );
        // Answered at once: not counted.
        h.observe(&state(1, close, syn, s));
        h.observe(&state(1, syn, est, s + 1_000));
        // Answered after 2 s (its SYN was retransmitted): counted.
        h.observe(&state(2, close, syn, s));
        h.observe(&state(2, syn, est, 3 * s));
        // Given up after 2 s: counted.
        h.observe(&state(3, close, syn, s));
        h.observe(&state(3, syn, close, 3 * s));
        // Refused after 2 s (a RST is an answer): not counted.
        let mut refused = state(6, syn, close, 3 * s);
        refused.sk_err = libc::ECONNREFUSED;
        h.observe(&state(6, close, syn, s));
        h.observe(&refused);
        // An IPv6 socket to the IPv4 destination (v4-mapped), given up: counted for it.
        let mut mapped = state(7, close, syn, s);
        mapped.family = tracer_common::AF_INET6;
        mapped.raddr = [0; 16];
        mapped.raddr[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped.raddr[12..].copy_from_slice(&[198, 51, 100, 10]);
        h.observe(&mapped);
        h.observe(&state(7, syn, close, 3 * s));
        // Waiting since 2 s.
        h.observe(&state(4, close, syn, 2 * s));
        h.sweep(3 * s);
        assert_eq!(h.unanswered_to(&to), 3, "the waiting one is young yet");
        h.sweep(4 * s);
        assert_eq!(h.unanswered_to(&to), 4, "and waiting for 2 s now");
        let other = (IPPROTO_TCP, "198.51.100.11".parse().unwrap(), 80);
        assert_eq!(h.unanswered_to(&other), 0);
        h.sweep(400 * s);
        assert_eq!(
            h.unanswered_to(&to),
            3,
            "a handshake whose end never came is forgotten"
        );
    }
}
