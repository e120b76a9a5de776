//! Ports TIME_WAIT sockets hold. A connection that closed first lives on in the kernel as a
//! timewait socket keeping its 4-tuple — and so its port, for that destination — for
//! TCP_TIMEWAIT_LEN (60 s), or about two seconds where `tcp_tw_reuse` lets `connect()` take it
//! over ([`EphemeralUsage::time_wait_hold_ns`](crate::model::ephemeral::EphemeralUsage)).
//! tracer sees the full socket leave (FIN_WAIT2/CLOSING → CLOSE) and keeps the port counted,
//! with the process that left it, until then.
//!
//! Bounded: at most [`MAX_TIME_WAIT`] holds (the kernel itself keeps at most
//! `tcp_max_tw_buckets` per namespace); past it the oldest goes, its port no longer counted,
//! and the eviction is counted with the ephemeral usage's.
use tracer_common::tcp_state;

use super::{Owner, SocketTable, TrackedSocket};
use crate::model::ephemeral::{UsageKey, TIMEWAIT_LEN_NS};

/// TIME_WAIT holds kept at most.
pub const MAX_TIME_WAIT: usize = 65_536;

/// A port a TIME_WAIT socket holds, until when, and who left it (None: it closed before
/// tracer started).
#[derive(Clone, Debug)]
pub struct TimeWaitHold {
    pub expires: u64,
    pub key: UsageKey,
    pub port: u16,
    pub owner: Option<Owner>,
    /// The connection: (family, local address, remote address, remote port).
    pub tuple: (u16, [u8; 16], [u8; 16], u16),
}

impl TimeWaitHold {
    /// The TIME_WAIT socket, as the table would hold it.
    pub fn socket(&self) -> TrackedSocket {
        let (family, laddr, raddr, rport) = self.tuple;
        TrackedSocket {
            owners: self.owner.into_iter().collect(),
            netns: self.key.0,
            protocol: self.key.1,
            family,
            laddr,
            lport: self.port,
            raddr,
            rport,
            state: tcp_state::TIME_WAIT,
            // Held for its destination: connect() chose the port.
            kernel_chose_port: self.key.2.is_some(),
            accepted: false,
            bound: false,
            port_returned: true,
            from_snapshot: self.owner.is_none(),
            listening_on: None,
            released: true,
            expires_at: Some(self.expires),
            last_seen: 0,
            counted: None,
            timing: super::Timing::default(),
            queues: None,
        }
    }
}

impl SocketTable {
    /// A TIME_WAIT socket took over `port` (counted under `key`) at `now_ns`.
    pub(super) fn hold_time_wait(
        &mut self,
        key: UsageKey,
        port: u16,
        owner: Option<Owner>,
        tuple: (u16, [u8; 16], [u8; 16], u16),
        now_ns: u64,
    ) {
        if self.time_wait_ports.len() + self.time_wait_short.len() >= MAX_TIME_WAIT {
            // The oldest of the long holds (short ones end within seconds anyway).
            let old = self
                .time_wait_ports
                .pop_front()
                .or_else(|| self.time_wait_short.pop_front());
            if let Some(old) = old {
                self.release_time_wait(&old);
                self.time_wait_evicted += 1;
            }
        }
        let hold_ns = self.usage.time_wait_hold_ns(&key);
        self.usage.time_wait(key, true);
        let hold = TimeWaitHold {
            expires: now_ns + hold_ns,
            key,
            port,
            owner,
            tuple,
        };
        // Two queues, each in expiry order (every hold in one is as long): the sweep takes
        // from their fronts, the work of the holds that ended.
        if hold_ns < TIMEWAIT_LEN_NS {
            self.time_wait_short.push_back(hold);
        } else {
            self.time_wait_ports.push_back(hold);
        }
    }

    fn release_time_wait(&mut self, hold: &TimeWaitHold) {
        self.usage.time_wait(hold.key, false);
        self.usage.remove(hold.key, hold.port);
    }

    /// Gives back the ports of TIME_WAIT sockets past their time.
    pub(super) fn sweep_time_wait(&mut self, now_ns: u64) {
        while let Some(h) = self.time_wait_ports.front() {
            if h.expires >= now_ns {
                break;
            }
            let h = self.time_wait_ports.pop_front().expect("looked");
            self.release_time_wait(&h);
        }
        while let Some(h) = self.time_wait_short.front() {
            if h.expires >= now_ns {
                break;
            }
            let h = self.time_wait_short.pop_front().expect("looked");
            self.release_time_wait(&h);
        }
    }

    /// The ports TIME_WAIT sockets hold now.
    pub fn time_wait(&self) -> impl Iterator<Item = &TimeWaitHold> {
        self.time_wait_ports.iter().chain(&self.time_wait_short)
    }

    /// Holds pushed out by the cap, and ephemeral usage keys dropped by theirs.
    pub fn usage_evicted(&self) -> u64 {
        self.usage.evicted() + self.time_wait_evicted
    }
}
