//! Sockets that predate tracer: a start-up snapshot (sock_diag + /proc) adds them under
//! placeholder keys, indexed by their tuple until the first live event on it names their
//! `struct sock *`; after lost events a fresh snapshot reconciles the table with the kernel.
use tracer_common::{kind, tcp_state, SockEvent, IPPROTO_TCP, IPPROTO_UDP};

use super::sweep::TIME_WAIT_NS;
use super::{SocketTable, TrackedSocket};
use crate::model::ephemeral::Dest;
use crate::model::snapshot::{SnapSocket, Snapshot};
use crate::model::types::{sock_key, SockKey};

/// A snapshot socket's key.
fn snap_key(s: &SnapSocket) -> SockKey {
    sock_key!(s)
}

/// Snapshot entries are keyed below this until a live event names their `struct sock *`
/// (kernel addresses are never this small).
const PLACEHOLDER_LIMIT: u64 = 1 << 32;

impl SocketTable {
    /// Adds the sockets of a start-up snapshot. Sockets the table already tracks (seen live
    /// while the snapshot was taken) are left as they are.
    pub fn merge_snapshot(&mut self, snapshot: &Snapshot, now_ns: u64) {
        for ns in &snapshot.namespaces {
            if let Some(range) = ns.port_range {
                self.usage.set_range(ns.inode, range);
            }
        }
        let live: std::collections::HashSet<SockKey> =
            self.sockets.values().map(TrackedSocket::tuple).collect();
        let mut added = Vec::new();
        for s in &snapshot.sockets {
            let tuple = snap_key(s);
            if live.contains(&tuple) || self.unnamed.contains_key(&tuple) {
                continue;
            }
            let time_wait = s.state == tcp_state::TIME_WAIT;
            if time_wait {
                // A port in the range a TIME_WAIT socket still holds was, as a rule, one
                // connect() chose: it is taken for that destination only.
                let chose = self
                    .usage
                    .range(s.netns)
                    .is_some_and(|(lo, hi)| (lo..=hi).contains(&s.lport));
                // (A server's side, on its listener's port, holds nothing more.)
                if chose {
                    let key = (
                        s.netns,
                        s.protocol,
                        Some(Dest::new(s.family, s.laddr, s.raddr, s.rport)),
                    );
                    self.usage.add(key, s.lport, "");
                    // Closed before tracer started: who left it is unknown.
                    let tuple = (s.family, s.laddr, s.raddr, s.rport);
                    self.hold_time_wait(key, s.lport, None, tuple, now_ns);
                }
                if !self.time_wait_rows {
                    continue;
                }
            }
            self.make_room();
            let key = self.next_placeholder;
            self.next_placeholder += 1;
            let entry = TrackedSocket {
                owners: snapshot.owners.get(&s.inode).cloned().unwrap_or_default(),
                netns: s.netns,
                protocol: s.protocol,
                family: s.family,
                laddr: s.laddr,
                lport: s.lport,
                raddr: s.raddr,
                rport: s.rport,
                state: s.state,
                kernel_chose_port: false,
                accepted: false,
                bound: false,
                // A TIME_WAIT row's port is counted by its hold (above).
                port_returned: time_wait,
                from_snapshot: true,
                listening_on: None,
                released: time_wait,
                expires_at: time_wait.then_some(now_ns + TIME_WAIT_NS),
                last_seen: now_ns,
                counted: None,
                timing: super::Timing::default(),
                queues: Some((s.recv_q, s.send_q)),
            };
            self.sockets.insert(key, entry);
            self.unnamed.insert(tuple, key);
            if s.protocol == IPPROTO_TCP && s.state == tcp_state::LISTEN {
                let listen = (s.netns, s.family, s.laddr, s.lport);
                self.sockets.get_mut(&key).expect("inserted").listening_on = Some(listen);
                self.listeners.insert(listen, key);
            }
            added.push(key);
        }
        // With every listener known, tell accepted connections from the ones that asked the
        // kernel for a port: a connected socket on a port nobody listens on, inside the
        // namespace's ephemeral range, had its port chosen by the kernel (the snapshot cannot
        // tell an explicit bind to such a port apart; live events can).
        for key in added {
            let entry = &self.sockets[&key];
            let accepted = entry.protocol == IPPROTO_TCP
                && !entry.is_listening()
                && self
                    .listener_on(entry.netns, entry.family, entry.laddr, entry.lport)
                    .is_some();
            let in_range = self
                .usage
                .range(entry.netns)
                .is_some_and(|(lo, hi)| (lo..=hi).contains(&entry.lport));
            let chose = in_range && !accepted && !entry.is_listening();
            let entry = self.sockets.get_mut(&key).expect("added");
            entry.accepted = accepted;
            entry.kernel_chose_port = chose;
            // The snapshot cannot tell bind() from connect(): a port the kernel chose is
            // taken as connect()'s, one outside the range as bound.
            entry.bound = !chose && !accepted;
            self.recount(key);
        }
    }

    /// A live event on a snapshot socket's tuple gives it its kernel address; an accept
    /// names the snapshot listener it came from.
    pub(super) fn name_snapshot_socket(&mut self, ev: &SockEvent) {
        if ev.sk != 0 {
            let tuple = SockKey::of_event(ev);
            // A UDP send or receive names the peer of that one datagram; the socket itself
            // may be unconnected.
            let unconnected = tuple.unconnected();
            let found = self.unnamed.remove(&tuple).or_else(|| {
                (ev.protocol == IPPROTO_UDP)
                    .then(|| self.unnamed.remove(&unconnected))
                    .flatten()
            });
            if let Some(key) = found {
                if self.sockets.contains_key(&ev.sk) {
                    // Seen live already: the live entry knows more.
                    self.remove(key);
                } else {
                    self.rekey(key, ev.sk);
                }
            }
        }
        if ev.kind == kind::ACCEPT && ev.parent_sk != 0 && !self.sockets.contains_key(&ev.parent_sk)
        {
            let listener = self
                .listener_key_for(ev)
                .filter(|key| *key < PLACEHOLDER_LIMIT);
            if let Some(key) = listener {
                let tuple = self.sockets[&key].tuple();
                self.unnamed.remove(&tuple);
                self.rekey(key, ev.parent_sk);
            }
        }
    }

    fn rekey(&mut self, from: u64, to: u64) {
        let Some(mut entry) = self.sockets.remove(&from) else {
            return;
        };
        entry.from_snapshot = false;
        if let Some(listen) = entry.listening_on {
            if self.listeners.get(&listen) == Some(&from) {
                self.listeners.insert(listen, to);
            }
        }
        self.sockets.insert(to, entry);
    }

    /// After lost events: drops entries (seen live before `taken_ns`) whose socket the kernel
    /// no longer has, judged by a fresh snapshot. Returns how many went.
    pub fn reconcile(&mut self, snapshot: &Snapshot, taken_ns: u64) -> usize {
        let alive: std::collections::HashSet<SockKey> =
            snapshot.sockets.iter().map(snap_key).collect();
        let gone: Vec<u64> = self
            .sockets
            .iter()
            .filter(|(_, e)| e.last_seen < taken_ns && e.lport != 0 && !e.from_snapshot)
            .filter(|(_, e)| {
                let t = e.tuple();
                // A UDP socket's events name the peers of single datagrams; the socket itself
                // may be unconnected.
                let unconnected = t.unconnected();
                !alive.contains(&t) && !alive.contains(&unconnected)
            })
            .map(|(sk, _)| *sk)
            .collect();
        for sk in &gone {
            self.remove(*sk);
        }
        gone.len()
    }
}
