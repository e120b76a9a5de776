//! Flow stitching: socket events leave client ends (connects, first datagrams) and server
//! ends (accepts, received datagrams); a binding whose original side matches a client end
//! and whose translated side matches a server end is one flow, shown once.
use std::net::IpAddr;

use serde::Serialize;
use tracer_common::{kind, SockEvent};

use super::{binding::BindingId, Binding, NatOutput, NatTable};
use crate::model::{event::ip, types::Proto};

const END_TTL_NS: u64 = 120_000_000_000;

/// One end of a flow: a process's socket.
#[derive(Clone, Debug, Serialize)]
pub struct FlowEnd {
    pub pid: u32,
    pub comm: String,
    /// The process's container (`host`, a name, a short id), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub netns: u32,
    /// The socket's own address and port.
    pub addr: IpAddr,
    pub port: u16,
    /// The other side as this socket sees it.
    pub peer_addr: IpAddr,
    pub peer_port: u16,
    /// Client side: the kernel picked `port` (an ephemeral port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_chose_port: Option<bool>,
    #[serde(skip)]
    pub(crate) ts_ns: u64,
}

/// Client socket → NAT binding → server socket, seen as one connection.
#[derive(Clone, Debug)]
pub struct Flow {
    pub ts_ns: u64,
    pub proto: Proto,
    pub client: FlowEnd,
    pub nat: Binding,
    pub server: FlowEnd,
}

/// Client endpoints keyed by (proto, local port, remote address, remote port), the tuple a
/// NAT binding's original side shows; server endpoints by (proto, peer address, peer port,
/// local port), the tuple its translated side shows. Local addresses are left out of the
/// keys because an unconnected UDP socket does not know its own.
pub(super) type EndKey = (u8, u16, IpAddr, u16);

impl NatTable {
    /// Every socket event goes through here: connects and first datagrams are client ends,
    /// accepts and received datagrams server ends. `names`: the owner's command name and
    /// container, asked for only when the event makes an end.
    pub fn socket_event(
        &mut self,
        ev: &SockEvent,
        pid: u32,
        names: impl FnOnce() -> (String, Option<String>),
        out: &mut Vec<NatOutput>,
    ) {
        self.handshakes.observe(ev);
        let ok = ev.ret >= 0 || ev.ret == -(libc::EINPROGRESS as i64);
        if !ok || ev.lport == 0 || ev.rport == 0 || ev.family == 0 {
            return;
        }
        let client = match ev.kind {
            kind::CONNECT | kind::SENDTO | kind::SENDMSG => true,
            kind::ACCEPT | kind::RECVFROM | kind::RECVMSG => false,
            _ => return,
        };
        let (comm, container) = names();
        let end = FlowEnd {
            pid,
            comm,
            container,
            netns: ev.netns,
            // A dual-stack socket (httpd on `::`) sees an IPv4 peer as ::ffff:a.b.c.d; the
            // binding's tuples are plain IPv4.
            addr: ip(ev.family, &ev.laddr).to_canonical(),
            port: ev.lport,
            peer_addr: ip(ev.family, &ev.raddr).to_canonical(),
            peer_port: ev.rport,
            kernel_chose_port: client
                .then_some(ev.flags & tracer_common::flag::KERNEL_CHOSE_PORT != 0),
            ts_ns: ev.ts_ns,
        };
        let key: EndKey = (ev.protocol, end.port, end.peer_addr, end.peer_port);
        if client {
            // A UDP socket's first datagram to a peer names it; later ones change nothing.
            if self.clients.contains_key(&key) && ev.kind != kind::CONNECT {
                return;
            }
            self.clients.insert(key, end);
            if let Some(id) = self.by_client.get(&key).copied() {
                self.try_stitch(&id, out);
            }
        } else {
            if self.servers.contains_key(&key) && ev.kind != kind::ACCEPT {
                return;
            }
            // The binding's translated side is what the server sees: (peer, peer port,
            // local port).
            let skey: EndKey = (ev.protocol, end.peer_port, end.peer_addr, end.port);
            self.servers.insert(skey, end);
            if let Some(id) = self.by_translated.get(&skey).copied() {
                self.try_stitch(&id, out);
            }
        }
    }

    /// Drops socket ends nobody claimed within two minutes (from the oldest on: the work is
    /// what expired, not the table's size).
    pub fn sweep(&mut self, now_ns: u64) {
        let expired = |e: &FlowEnd| e.ts_ns.saturating_add(END_TTL_NS) <= now_ns;
        self.clients.pop_while(expired);
        self.servers.pop_while(expired);
        self.history.expire(now_ns);
        self.handshakes.sweep(now_ns);
    }

    /// The client and server sockets seen for a binding not stitched (yet), each when it
    /// matches as stitching would take it.
    pub(super) fn ends_of(&self, b: &Binding) -> (Option<FlowEnd>, Option<FlowEnd>) {
        let client = self
            .clients
            .get(&client_key_of(b))
            .filter(|c| c.addr.is_unspecified() || c.addr == b.original.src);
        let server = self
            .servers
            .get(&server_key_of(b))
            .filter(|s| s.addr.is_unspecified() || s.addr == b.translated.dst);
        (client.cloned(), server.cloned())
    }

    pub(super) fn try_stitch(&mut self, id: &BindingId, out: &mut Vec<NatOutput>) {
        let Some(live) = self.live.get_mut(id) else {
            return;
        };
        if live.stitched.is_some() {
            return;
        }
        let b = &live.binding;
        let Some(client) = self.clients.get(&client_key_of(b)) else {
            return;
        };
        // The client's own address, when it knows it, must be the binding's source.
        if !client.addr.is_unspecified() && client.addr != b.original.src {
            return;
        }
        let Some(server) = self.servers.get(&server_key_of(b)) else {
            return;
        };
        if !server.addr.is_unspecified() && server.addr != b.translated.dst {
            return;
        }
        live.stitched = Some(Box::new((client.clone(), server.clone())));
        out.push(NatOutput::Flow(Box::new(Flow {
            ts_ns: b.ts_ns.max(client.ts_ns).max(server.ts_ns),
            proto: b.proto,
            client: client.clone(),
            nat: b.clone(),
            server: server.clone(),
        })));
    }
}

pub(super) fn client_key_of(b: &Binding) -> EndKey {
    (
        b.protocol,
        b.original.sport,
        b.original.dst,
        b.original.dport,
    )
}

pub(super) fn server_key_of(b: &Binding) -> EndKey {
    (
        b.protocol,
        b.translated.sport,
        b.translated.src,
        b.translated.dport,
    )
}
