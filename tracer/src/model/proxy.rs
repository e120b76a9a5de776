//! Proxied connections: a userland proxy (Docker's `docker-proxy`) accepts a client on a
//! published port and opens a second connection to the container behind it. Two sockets,
//! one connection as the client meant it: linked here when the same process, within a second
//! of accepting on a published port, connects to that port's target.
//!
//! Pure: the published ports come from the runtime (through the stage's inputs), the events
//! from the socket table. Bounded: at most [`MAX_WAITING`] accepts wait for their second half,
//! each at most [`WAIT_NS`]; the rest are forgotten and counted.
use std::{collections::VecDeque, net::IpAddr};

use serde::Serialize;

use super::{
    mapping::Published,
    types::{Endpoint, EventKind, Proto},
    Event,
};

/// Accepts waiting for their proxy's second connection, at most.
pub const MAX_WAITING: usize = 4096;
/// How long an accept waits for it.
const WAIT_NS: u64 = 1_000_000_000;

/// One client connection carried by a proxy: client → proxy (front) ⇒ proxy → target (back).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Proxied {
    pub ts_ns: u64,
    pub proto: Proto,
    /// The client, as the proxy accepted it.
    pub client: Endpoint,
    /// The published port the proxy accepted on.
    pub front: Endpoint,
    pub proxy_pid: u32,
    pub proxy_comm: Option<String>,
    /// The proxy's own end of its second connection (its ephemeral port).
    pub back: Endpoint,
    /// Where it sent the connection: the container's address and port.
    pub target: Endpoint,
    /// The container behind it (its name).
    pub container: String,
    /// The two sockets (for joining them up in a story).
    #[serde(skip)]
    pub front_sock: u64,
    #[serde(skip)]
    pub back_sock: u64,
}

#[derive(Clone, Debug)]
struct Accepted {
    ts_ns: u64,
    pid: u32,
    proto: Proto,
    client: Endpoint,
    front: Endpoint,
    sock: u64,
}

/// The proxies' accepts waiting for their second half, and the ports published.
#[derive(Debug, Default)]
pub struct ProxyLinks {
    published: Vec<Published>,
    waiting: VecDeque<Accepted>,
    /// Accepts forgotten because too many waited.
    pub evicted: u64,
}

impl ProxyLinks {
    /// The ports the runtime publishes now.
    pub fn set_published(&mut self, published: Vec<Published>) {
        self.published = published;
    }

    fn published_on(&self, proto: Proto, port: u16) -> impl Iterator<Item = &Published> {
        self.published
            .iter()
            .filter(move |p| p.host_port == port && p.proto == proto.name())
    }

    /// An event (with its socket); a proxy's second connection gives the link.
    pub fn observe(&mut self, sock: u64, e: &Event) -> Option<Proxied> {
        let pid = e.pid?;
        while self
            .waiting
            .front()
            .is_some_and(|a| e.ts_ns.saturating_sub(a.ts_ns) > WAIT_NS)
        {
            self.waiting.pop_front();
        }
        match e.event {
            EventKind::Accept if e.rport != 0 => {
                // Only an accept on a published port can be a proxy's front.
                self.published_on(e.proto, e.lport).next()?;
                if self.waiting.len() >= MAX_WAITING {
                    self.waiting.pop_front();
                    self.evicted += 1;
                }
                self.waiting.push_back(Accepted {
                    ts_ns: e.ts_ns,
                    pid,
                    proto: e.proto,
                    client: Endpoint::new(canonical(e.raddr), e.rport),
                    front: Endpoint::new(canonical(e.laddr), e.lport),
                    sock,
                });
                None
            }
            EventKind::Connect if e.rport != 0 && e.reached() => {
                let target = canonical(e.raddr);
                // The oldest accept of this process on a port published to this target.
                let at = self.waiting.iter().position(|a| {
                    a.pid == pid
                        && a.proto == e.proto
                        && self
                            .published_on(a.proto, a.front.port)
                            .any(|p| p.container_port == e.rport && p.addresses.contains(&target))
                })?;
                let a = self.waiting.remove(at)?;
                let container = self
                    .published_on(a.proto, a.front.port)
                    .find(|p| p.container_port == e.rport && p.addresses.contains(&target))
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                Some(Proxied {
                    ts_ns: e.ts_ns,
                    proto: a.proto,
                    client: a.client,
                    front: a.front,
                    proxy_pid: pid,
                    proxy_comm: e.comm.as_deref().map(str::to_string),
                    back: Endpoint::new(canonical(e.laddr), e.lport),
                    target: Endpoint::new(target, e.rport),
                    container,
                    front_sock: a.sock,
                    back_sock: sock,
                })
            }
            _ => None,
        }
    }
}

fn canonical(a: IpAddr) -> IpAddr {
    a.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::types::{Family, TcpState};

    fn published() -> Published {
        Published {
            id: "aef5".into(),
            name: "web1".into(),
            proto: "tcp".into(),
            host_ip: "0.0.0.0".into(),
            host_port: 18081,
            container_port: 80,
            addresses: vec!["198.51.100.2".parse().unwrap()],
            netns: None,
        }
    }

    fn ev(kind: EventKind, ts: u64, pid: u32, local: (&str, u16), remote: (&str, u16)) -> Event {
        let raw = tracer_common::SockEvent {
            kind: match kind {
                EventKind::Accept => tracer_common::kind::ACCEPT,
                _ => tracer_common::kind::CONNECT,
            },
            family: tracer_common::AF_INET,
            protocol: tracer_common::IPPROTO_TCP,
            ..Default::default()
        };
        let mut e = Event::new(
            &raw,
            &crate::model::table::Attribution::default(),
            None,
            &crate::model::Clock::identity(),
        );
        e.ts_ns = ts;
        e.pid = Some(pid);
        e.comm = Some("docker-proxy".into());
        e.family = Family::V4;
        e.laddr = local.0.parse().unwrap();
        e.lport = local.1;
        e.raddr = remote.0.parse().unwrap();
        e.rport = remote.1;
        e.state = Some(TcpState::Established);
        e.ret = Some(0);
        e
    }

    #[test]
    fn a_proxys_two_sockets_are_one_connection() {
        let mut links = ProxyLinks::default();
        links.set_published(vec![published()]);
        let accept = ev(
            EventKind::Accept,
            1_000,
            7,
            ("127.0.0.1", 18081),
            ("127.0.0.1", 51008),
        );
        assert_eq!(links.observe(1, &accept), None);
        // Another process's connect to the same target is not the proxy's.
        let other = ev(
            EventKind::Connect,
            2_000,
            8,
            ("198.51.100.1", 51000),
            ("198.51.100.2", 80),
        );
        assert_eq!(links.observe(2, &other), None);
        let connect = ev(
            EventKind::Connect,
            3_000,
            7,
            ("198.51.100.1", 51692),
            ("198.51.100.2", 80),
        );
        let p = links.observe(3, &connect).unwrap();
        assert_eq!(p.client.to_string(), "127.0.0.1:51008");
        assert_eq!(p.front.to_string(), "127.0.0.1:18081");
        assert_eq!(p.back.to_string(), "198.51.100.1:51692");
        assert_eq!(p.target.to_string(), "198.51.100.2:80");
        assert_eq!(p.container, "web1");
        assert_eq!((p.front_sock, p.back_sock), (1, 3));
        // Used once.
        assert_eq!(links.observe(4, &connect), None);
    }

    #[test]
    fn accepts_on_unpublished_ports_or_too_old_are_not_linked() {
        let mut links = ProxyLinks::default();
        links.set_published(vec![published()]);
        let elsewhere = ev(
            EventKind::Accept,
            0,
            7,
            ("127.0.0.1", 8080),
            ("127.0.0.1", 40000),
        );
        links.observe(1, &elsewhere);
        let accept = ev(
            EventKind::Accept,
            0,
            7,
            ("127.0.0.1", 18081),
            ("127.0.0.1", 51008),
        );
        links.observe(2, &accept);
        let late = ev(
            EventKind::Connect,
            2 * WAIT_NS,
            7,
            ("198.51.100.1", 51692),
            ("198.51.100.2", 80),
        );
        assert_eq!(links.observe(3, &late), None);
        // Bounded: the oldest waiting accepts are forgotten, counted.
        for i in 0..MAX_WAITING as u64 + 5 {
            links.observe(10 + i, &accept);
        }
        assert_eq!(links.evicted, 5);
    }
}
