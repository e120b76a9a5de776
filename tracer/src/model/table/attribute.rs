//! Attribution: who owns the socket an event concerns. Syscall events name their caller;
//! TCP transitions (often in softirq, under whoever was on the CPU) and releases are
//! attributed through the table, and a connection the kernel builds from a listener belongs
//! to the listener's holders until `accept()` names one.
use tracer_common::{
    flag, kind, tcp_state, SockEvent, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP,
};

use super::sweep::{CLOSED_GRACE_NS, RELEASED_GRACE_NS};
use super::{listen_key, Attribution, Owner, SocketTable, Timing, TrackedSocket};
use crate::model::types::TcpState;

impl SocketTable {
    pub(super) fn observe_syscall(&mut self, ev: &SockEvent) -> Attribution {
        let chose = ev.flags & tracer_common::flag::KERNEL_CHOSE_PORT != 0;
        // Not tracked: no socket (the call failed before one existed), a failed accept, or a
        // close/shutdown, which is reported at syscall exit, possibly after the socket was
        // released: those describe a socket but never bring one (back) into the table.
        let ends_use = matches!(ev.kind, kind::CLOSE | kind::SHUTDOWN);
        if ev.sk == 0
            || (ev.ret < 0 && ev.kind == kind::ACCEPT)
            || (ends_use && !self.sockets.contains_key(&ev.sk))
        {
            return Attribution {
                owner: Some(Owner::of(ev)),
                kernel_chose_port: chose,
                lport: ev.lport,
                ..Default::default()
            };
        }
        if ev.flags & flag::FROM_HOOK != 0 && ev.flags & flag::OWNER_IN_CONTEXT == 0 {
            // A socket hook in softirq (the kernel completed a handshake for a listener): the
            // task on the CPU is nobody's; the connection is the listener's holders' until
            // one of them uses it.
            return self.observe_queued(ev);
        }
        if !self.sockets.contains_key(&ev.sk) {
            self.make_room();
        }
        let entry = self.sockets.entry(ev.sk).or_insert_with(|| TrackedSocket {
            accepted: ev.kind == kind::ACCEPT,
            ..TrackedSocket::first_seen(ev)
        });
        if ev.kind == kind::ACCEPT {
            // Until accept() returned it, a connection belonged to whoever held its listener
            // (an nginx master and all its workers); now one process holds it, as `ss` says.
            entry.owners.clear();
            entry.accepted = true;
        }
        entry.hold(Owner::of(ev));
        entry.netns = ev.netns;
        if ev.protocol != 0 {
            entry.protocol = ev.protocol;
        }
        if ev.family != 0 {
            entry.family = ev.family;
        }
        entry.kernel_chose_port |= chose;
        entry.bound |= ev.kind == kind::BIND && ev.ret >= 0 && ev.lport != 0;
        entry.last_seen = ev.ts_ns;
        entry.take_ends(ev);
        if ev.protocol == IPPROTO_TCP && ev.new_state != 0 {
            entry.state = ev.new_state;
        }
        if entry.protocol == IPPROTO_UDP {
            entry.state = if entry.rport != 0 {
                tcp_state::ESTABLISHED
            } else {
                tcp_state::CLOSE
            };
        }
        let attribution = Attribution::of(entry);
        if ev.kind == kind::LISTEN && ev.ret == 0 {
            self.start_listening(ev);
        }
        attribution
    }

    /// A connection the kernel completed for a listener, seen by a socket hook in softirq.
    fn observe_queued(&mut self, ev: &SockEvent) -> Attribution {
        if !self.sockets.contains_key(&ev.sk) {
            let Some(owners) = self.listener_owners(ev) else {
                return nobody(ev);
            };
            self.adopt(
                ev.sk,
                TrackedSocket {
                    owners,
                    accepted: true,
                    ..TrackedSocket::first_seen(ev)
                },
            );
        }
        let entry = self.sockets.get_mut(&ev.sk).expect("inserted above");
        entry.accepted = true;
        entry.last_seen = ev.ts_ns;
        entry.take_ends(ev);
        if ev.new_state != 0 {
            entry.state = ev.new_state;
        }
        Attribution::of(entry)
    }

    pub(super) fn observe_state(&mut self, ev: &SockEvent) -> Attribution {
        if !self.sockets.contains_key(&ev.sk) {
            // Either the transition ran inside the owner's own syscall on this socket, or it is
            // a connection the kernel built from a listener before accept() returned it, which
            // belongs to whoever owns the listener.
            let in_context =
                (ev.flags & tracer_common::flag::OWNER_IN_CONTEXT != 0).then(|| Owner::of(ev));
            let owners = match (in_context, self.listener_owners(ev)) {
                (Some(owner), _) => vec![owner],
                (None, Some(owners)) => owners,
                (None, None) => return nobody(ev),
            };
            self.adopt(
                ev.sk,
                TrackedSocket {
                    owners,
                    protocol: IPPROTO_TCP,
                    laddr: ev.laddr,
                    lport: ev.lport,
                    raddr: ev.raddr,
                    rport: ev.rport,
                    state: ev.new_state,
                    accepted: in_context.is_none(),
                    ..TrackedSocket::first_seen(ev)
                },
            );
        }
        let entry = self.sockets.get_mut(&ev.sk).expect("inserted above");
        entry.state = ev.new_state;
        entry.last_seen = ev.ts_ns;
        entry.take_ends(ev);
        // `tcp_set_state(CLOSE)` puts the port back unless it was bound by name
        // (SOCK_BINDPORT_LOCK); a socket that connects again takes a new one.
        let bound_by_name = entry.bound && !entry.kernel_chose_port;
        entry.port_returned = ev.new_state == tcp_state::CLOSE && !bound_by_name;
        let attribution = Attribution::of(entry);
        let released = entry.released;
        if crate::model::event::state_after(ev) == TcpState::TimeWait {
            // The connection lives on as a timewait socket that holds its port for the same
            // destination: the hold moves there, with who left it.
            // (A server's side holds its listener's port anyway: only a port connect()
            // chose is held for its destination.)
            entry.port_returned = true;
            if entry.counted.is_some_and(|(key, _)| key.2.is_some()) {
                let (key, port) = entry.counted.take().expect("checked");
                let owner = entry.owner().copied();
                let tuple = (entry.family, entry.laddr, entry.raddr, entry.rport);
                self.hold_time_wait(key, port, owner, tuple, ev.ts_ns);
            }
        }
        if ev.new_state == tcp_state::LISTEN {
            self.start_listening(ev);
        }
        if ev.new_state == tcp_state::CLOSE {
            self.stop_listening(ev.sk);
            if released {
                self.remove(ev.sk);
            } else if let Some(entry) = self.sockets.get_mut(&ev.sk) {
                // Closed but not yet released: the release normally follows; if it was lost,
                // the sweep drops the entry after a grace.
                entry.expires_at = Some(ev.ts_ns + CLOSED_GRACE_NS);
            }
        }
        attribution
    }

    pub(super) fn observe_release(&mut self, ev: &SockEvent) -> Attribution {
        let Some(entry) = self.sockets.get_mut(&ev.sk) else {
            // Release runs in the context of the process dropping the last reference.
            return Attribution {
                owner: Some(Owner::of(ev)),
                kernel_chose_port: false,
                lport: ev.lport,
                ..Default::default()
            };
        };
        let attribution = Attribution::of(entry);
        // A TCP socket released while connected keeps going (FIN_WAIT1 …): keep it until CLOSE.
        let closing =
            entry.protocol == IPPROTO_TCP && entry.state != 0 && entry.state != tcp_state::CLOSE;
        if closing {
            entry.released = true;
            entry.expires_at = Some(ev.ts_ns + RELEASED_GRACE_NS);
        } else {
            self.remove(ev.sk);
        }
        attribution
    }

    /// A retransmit, reset or drop: charged to its socket's owners, changing nothing. A
    /// socket the table does not hold (a connection still being made, whose request socket
    /// only the kernel sees) is its listener's holders'; no socket at all (a segment for a
    /// port nobody listens on) is nobody's — never the task that was on the CPU.
    pub(super) fn observe_health(&mut self, ev: &SockEvent) -> Attribution {
        if let Some(entry) = self.sockets.get(&ev.sk) {
            return Attribution::of(entry);
        }
        if let Some(owner) = self.departed_owner(ev) {
            return Attribution {
                owner: Some(owner),
                lport: ev.lport,
                ..Default::default()
            };
        }
        if ev.sk != 0 {
            if let Some(key) = self.listener_key_for(ev) {
                return Attribution::of(&self.sockets[&key]);
            }
        }
        nobody(ev)
    }

    /// Who holds the listener a new connection came from.
    fn listener_owners(&self, ev: &SockEvent) -> Option<Vec<Owner>> {
        self.listener_key_for(ev)
            .map(|key| self.sockets[&key].owners.clone())
    }

    /// A socket first seen now, owned by whoever the caller worked out.
    fn adopt(&mut self, sk: u64, entry: TrackedSocket) {
        self.make_room();
        self.sockets.insert(sk, entry);
    }

    pub(super) fn start_listening(&mut self, ev: &SockEvent) {
        let key = listen_key(ev);
        if let Some(entry) = self.sockets.get_mut(&ev.sk) {
            entry.listening_on = Some(key);
            self.listeners.insert(key, ev.sk);
        }
    }

    pub(super) fn stop_listening(&mut self, sk: u64) {
        let key = self
            .sockets
            .get_mut(&sk)
            .and_then(|e| e.listening_on.take());
        if let Some(key) = key {
            if self.listeners.get(&key) == Some(&sk) {
                self.listeners.remove(&key);
            }
        }
    }

    /// The listener a new connection came from: one on its exact local address, else a
    /// wildcard listener on its port (IPv4 `0.0.0.0`, or IPv6 `::`, which also takes IPv4).
    pub(super) fn listener_key_for(&self, ev: &SockEvent) -> Option<u64> {
        let (netns, family, addr, port) = listen_key(ev);
        self.listener_on(netns, family, addr, port)
    }

    pub(super) fn listener_on(
        &self,
        netns: u32,
        family: u16,
        addr: [u8; 16],
        port: u16,
    ) -> Option<u64> {
        let other = if family == AF_INET { AF_INET6 } else { AF_INET };
        [
            (netns, family, addr, port),
            (netns, family, [0; 16], port),
            (netns, other, [0; 16], port),
        ]
        .iter()
        .find_map(|key| self.listeners.get(key))
        .copied()
        .filter(|sk| self.sockets.contains_key(sk))
    }
}

impl TrackedSocket {
    /// A socket first seen live in `ev`: its namespace, protocol and family, nothing else
    /// learnt yet.
    fn first_seen(ev: &SockEvent) -> Self {
        TrackedSocket {
            owners: Vec::new(),
            netns: ev.netns,
            protocol: ev.protocol,
            family: ev.family,
            laddr: [0; 16],
            lport: 0,
            raddr: [0; 16],
            rport: 0,
            state: 0,
            kernel_chose_port: false,
            accepted: false,
            bound: false,
            port_returned: false,
            from_snapshot: false,
            listening_on: None,
            released: false,
            expires_at: None,
            last_seen: ev.ts_ns,
            counted: None,
            timing: Timing::default(),
            queues: None,
        }
    }

    /// Takes the local and remote ends an event names (a zero port names none: the event did
    /// not know it, and the socket keeps what it had).
    fn take_ends(&mut self, ev: &SockEvent) {
        if ev.lport != 0 {
            self.lport = ev.lport;
            self.laddr = ev.laddr;
        }
        if ev.rport != 0 {
            self.rport = ev.rport;
            self.raddr = ev.raddr;
        }
    }
}

/// An event about a socket nobody is known to own.
fn nobody(ev: &SockEvent) -> Attribution {
    Attribution {
        lport: ev.lport,
        ..Default::default()
    }
}
