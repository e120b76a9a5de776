//! Listen queues: what each listener's accept queue holds against its backlog, and the
//! connections the kernel refused while it was full, from periodic sock_diag readings (the
//! kernel drops those SYNs without a drop reason: only the listener's own `sk_drops` counts
//! them, as `ss -m` and `nstat`'s ListenOverflows do). Each overflow is charged to the
//! listener's owner through the socket table.
use std::net::IpAddr;

use foldhash::{HashMap, HashSet};
use serde::Serialize;
use tracer_common::tcp_state;

use super::{event::ip, snapshot::SnapSocket, table::Owner, SocketTable};

/// A listener dropped connection attempts since the last reading.
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
    /// The accept queue was full at the reading (it holds one more than the backlog): the
    /// drops are overflows. Otherwise the listener refused packets for another reason (a
    /// full SYN queue, a bad ACK, a socket filter) or its queue drained since.
    pub full: bool,
    /// Packets (SYNs, handshake-completing ACKs) the listener dropped since the last reading.
    pub dropped: u64,
    /// Since the listener was made (some perhaps before tracer started).
    pub dropped_total: u64,
}

/// A listening endpoint: (netns, family, address, port).
type Endpoint = (u32, u16, [u8; 16], u16);

/// The last drop count of each listening socket the table follows, by (namespace, inode):
/// sockets of one SO_REUSEPORT group share an endpoint but each has its own count. A socket
/// missing from a reading of its namespace is forgotten, and so are namespaces where the
/// table follows no listener any more, so it never holds more than the table's listeners.
#[derive(Default)]
pub struct ListenQueues {
    drops: HashMap<(u32, u32), u32>,
}

impl ListenQueues {
    /// Folds one reading of the namespaces `read` (those whose dump succeeded): the table's
    /// listeners learn their queues; each whose drops grew is reported, with its owner.
    pub fn observe(
        &mut self,
        read: &[u32],
        reading: &[SnapSocket],
        table: &mut SocketTable,
    ) -> Vec<ListenOverflow> {
        let listening: Vec<&SnapSocket> = reading
            .iter()
            .filter(|s| s.state == tcp_state::LISTEN)
            .collect();
        let mut endpoints: HashMap<Endpoint, (u32, u32)> = HashMap::default();
        for s in &listening {
            let q = endpoints
                .entry((s.netns, s.family, s.laddr, s.lport))
                .or_default();
            q.0 = q.0.saturating_add(s.recv_q);
            q.1 = q.1.saturating_add(s.send_q);
        }
        let known: HashMap<Endpoint, (Option<Owner>, bool)> = endpoints
            .iter()
            .filter_map(|(e, q)| Some((*e, table.set_listener_queues(*e, *q)?)))
            .collect();
        let mut out = Vec::new();
        let mut seen: HashSet<(u32, u32)> = HashSet::default();
        for s in listening {
            // Only the listeners the table follows: the filters chose them.
            let Some(&(owner, live)) = known.get(&(s.netns, s.family, s.laddr, s.lport)) else {
                continue;
            };
            let Some(drops) = s.drops else { continue };
            let key = (s.netns, s.inode);
            seen.insert(key);
            // A listener tracer saw start counts from 0; one older than tracer from its
            // first reading. A counter that went down is a new socket: the next reading
            // counts from there.
            let before = self.drops.insert(key, drops).or(live.then_some(0));
            let Some(dropped) = before.filter(|b| drops > *b).map(|b| u64::from(drops - b)) else {
                continue;
            };
            out.push(ListenOverflow {
                netns: s.netns,
                laddr: ip(s.family, &s.laddr),
                lport: s.lport,
                pid: owner.map(|o| o.pid),
                comm: owner.map(|o| o.comm()),
                queue: s.recv_q,
                backlog: s.send_q,
                full: s.recv_q > s.send_q,
                dropped,
                dropped_total: u64::from(drops),
            });
        }
        // Sockets gone from the namespaces read, and namespaces no longer followed.
        let followed = table.listener_namespaces();
        self.drops.retain(|key, _| {
            followed.contains_key(&key.0) && (!read.contains(&key.0) || seen.contains(key))
        });
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
            inode: 7,
            recv_q: queue,
            send_q: 1,
            drops: Some(drops),
        }
    }

    #[test]
    fn a_full_queue_is_charged_to_the_listener_owner() {
        let mut table = table_with_listener();
        let mut queues = ListenQueues::default();
        // Seen to start listening: its drops are all new.
        let first = queues.observe(&[1], &[listener(3, 0)], &mut table);
        assert_eq!(first.iter().map(|o| o.dropped).collect::<Vec<_>>(), [3]);
        let out = queues.observe(&[1], &[listener(10, 2)], &mut table);
        assert_eq!(out.len(), 1);
        let o = &out[0];
        assert_eq!((o.pid, o.comm.as_deref()), (Some(42), Some("server")));
        assert_eq!(
            (o.dropped, o.dropped_total, o.queue, o.backlog, o.full),
            (7, 10, 2, 1, true)
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
        table.merge_snapshot(
            &crate::model::snapshot::Snapshot {
                sockets: vec![listener(50, 0)],
                ..Default::default()
            },
            0,
        );
        let mut queues = ListenQueues::default();
        assert!(queues
            .observe(&[1], &[listener(50, 0)], &mut table)
            .is_empty());
        let out = queues.observe(&[1], &[listener(52, 0)], &mut table);
        assert_eq!((out[0].dropped, out[0].pid, out[0].full), (2, None, false));
    }

    /// The sockets of one SO_REUSEPORT group share an endpoint; each has its own count.
    #[test]
    fn reuseport_listeners_are_counted_apart_and_their_queues_summed() {
        let mut table = table_with_listener();
        let mut queues = ListenQueues::default();
        let group = |a: u32, b: u32| {
            let mut second = listener(b, 1);
            second.inode = 8;
            vec![listener(a, 1), second]
        };
        queues.observe(&[1], &group(5, 0), &mut table);
        for _ in 0..3 {
            assert!(queues.observe(&[1], &group(5, 0), &mut table).is_empty());
        }
        let out = queues.observe(&[1], &group(5, 2), &mut table);
        assert_eq!(out.iter().map(|o| o.dropped).collect::<Vec<_>>(), [2]);
        let row = crate::model::ports::rows(&table)
            .into_iter()
            .find(|r| r.lport == 8082)
            .unwrap();
        assert_eq!((row.recv_q, row.send_q), (Some(2), Some(2)));
    }

    /// Another user's listener the filters left out is not reported; a namespace whose dump
    /// failed keeps its counts (its next reading reports only what is new).
    #[test]
    fn only_followed_listeners_and_only_new_drops() {
        let mut table = table_with_listener();
        let mut queues = ListenQueues::default();
        let mut other = listener(100, 5);
        other.lport = 9999;
        other.inode = 9;
        let out = queues.observe(&[1], &[listener(1, 0), other.clone()], &mut table);
        assert_eq!(out.iter().map(|o| o.lport).collect::<Vec<_>>(), [8082]);
        other.drops = Some(200);
        assert!(queues.observe(&[1], &[other], &mut table).is_empty());
        queues.observe(&[1], &[listener(4, 0)], &mut table);
        // The namespace could not be read this time.
        assert!(queues.observe(&[], &[], &mut table).is_empty());
        let out = queues.observe(&[1], &[listener(6, 0)], &mut table);
        assert_eq!(out.iter().map(|o| o.dropped).collect::<Vec<_>>(), [2]);
    }

    fn table_with_listener() -> SocketTable {
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
        table
    }
}
