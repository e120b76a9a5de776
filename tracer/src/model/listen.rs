//! Listen queues: what each listener's accept queue holds against its backlog, and the
//! connections the kernel refused while it was full, from periodic sock_diag readings (the
//! kernel drops those SYNs without a drop reason: only the listener's own `sk_drops` counts
//! them, as `ss -m` and `nstat`'s ListenOverflows do). Each overflow is charged to the
//! listener's owner through the socket table.
use std::net::IpAddr;

use foldhash::HashMap;
use serde::Serialize;
use tracer_common::tcp_state;

use super::{event::ip, snapshot::SnapSocket, table::Owner, SocketTable};

/// A listener's queue overflowed since the last reading.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenOverflow {
    pub netns: u32,
    pub laddr: IpAddr,
    pub lport: u16,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Connections waiting to be accepted at the reading (Recv-Q).
    pub queue: u32,
    /// The backlog in effect (Send-Q: the caller's, capped by `net.core.somaxconn`).
    pub backlog: u32,
    /// Packets (SYNs, handshake-completing ACKs) refused since the last reading.
    pub dropped: u64,
    /// Since the listener was made (some perhaps before tracer started).
    pub dropped_total: u64,
}

type Key = (u32, u16, [u8; 16], u16);

/// The last drop count of each listener read; listeners not in a reading of their namespace
/// are forgotten, so it holds no more than the listeners that exist.
#[derive(Default)]
pub struct ListenQueues {
    drops: HashMap<Key, u32>,
}

impl ListenQueues {
    /// Folds one reading of the namespaces `asked`: the table's listeners learn their queues;
    /// each listener whose drops grew is reported, with its owner.
    pub fn observe(
        &mut self,
        asked: &[u32],
        reading: &[SnapSocket],
        table: &mut SocketTable,
    ) -> Vec<ListenOverflow> {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for s in reading {
            if s.state != tcp_state::LISTEN {
                continue;
            }
            let known = table.set_listener_queues(s);
            let owner: Option<Owner> = known.and_then(|(owner, _)| owner);
            let Some(drops) = s.drops else { continue };
            let key = (s.netns, s.family, s.laddr, s.lport);
            seen.push(key);
            // A listener tracer saw start counts from 0; one older than tracer from its
            // first reading. A counter that went down is a new socket: the next reading
            // counts from there.
            let seen_start = known.is_some_and(|(_, live)| live).then_some(0);
            let before = self.drops.insert(key, drops).or(seen_start);
            let grew = before.filter(|b| drops > *b).map(|b| u64::from(drops - b));
            if let Some(dropped) = grew {
                out.push(ListenOverflow {
                    netns: s.netns,
                    laddr: ip(s.family, &s.laddr),
                    lport: s.lport,
                    pid: owner.map(|o| o.pid),
                    comm: owner.map(|o| o.comm()),
                    queue: s.recv_q,
                    backlog: s.send_q,
                    dropped,
                    dropped_total: u64::from(drops),
                });
            }
        }
        // Listeners gone from the namespaces read are forgotten.
        self.drops
            .retain(|key, _| !asked.contains(&key.0) || seen.contains(key));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{kind, SockEvent, AF_INET, IPPROTO_TCP};

    fn listener(drops: u32, queue: u32) -> SnapSocket {
        SnapSocket {
            netns: 1,
            protocol: IPPROTO_TCP,
            family: AF_INET,
            laddr: [0; 16],
            lport: 8082,
            raddr: [0; 16],
            rport: 0,
            state: tcp_state::LISTEN,
            uid: 0,
            inode: 0,
            recv_q: queue,
            send_q: 1,
            drops: Some(drops),
        }
    }

    #[test]
    fn a_full_queue_is_charged_to_the_listener_owner() {
        let mut table = SocketTable::default();
        table.observe(&SockEvent {
            kind: kind::LISTEN,
            sk: 0x1,
            pid: 42,
            comm: *b"server\0\0\0\0\0\0\0\0\0\0",
            protocol: IPPROTO_TCP,
            family: AF_INET,
            netns: 1,
            lport: 8082,
            new_state: tcp_state::LISTEN,
            ..Default::default()
        });
        let mut queues = ListenQueues::default();
        // Seen to start listening: its drops are all new.
        let first = queues.observe(&[1], &[listener(3, 0)], &mut table);
        assert_eq!(first.iter().map(|o| o.dropped).collect::<Vec<_>>(), [3]);
        let out = queues.observe(&[1], &[listener(10, 2)], &mut table);
        assert_eq!(out.len(), 1);
        let o = &out[0];
        assert_eq!((o.pid, o.comm.as_deref()), (Some(42), Some("server")));
        assert_eq!(
            (o.dropped, o.dropped_total, o.queue, o.backlog),
            (7, 10, 2, 1)
        );
        let row = crate::model::ports::rows(&table)
            .into_iter()
            .find(|r| r.lport == 8082)
            .unwrap();
        assert_eq!((row.recv_q, row.send_q), (Some(2), Some(1)));
        // Nothing new, nothing said; a namespace read without it forgets it.
        assert!(queues
            .observe(&[1], &[listener(10, 2)], &mut table)
            .is_empty());
        queues.observe(&[1], &[], &mut table);
        assert!(queues.drops.is_empty());
    }

    #[test]
    fn a_listener_older_than_tracer_counts_from_its_first_reading() {
        let mut table = SocketTable::default();
        let mut queues = ListenQueues::default();
        assert!(queues
            .observe(&[1], &[listener(50, 0)], &mut table)
            .is_empty());
        let out = queues.observe(&[1], &[listener(52, 0)], &mut table);
        assert_eq!((out[0].dropped, out[0].pid), (2, None));
    }
}
