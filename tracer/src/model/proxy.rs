//! Proxied connections: a userland proxy (Docker's `docker-proxy`) accepts a client on a
//! published port and opens a second connection to the container behind it. Two sockets,
//! one connection as the client meant it: linked here when a root process in the host's
//! network namespace, within a second of accepting on a published port (on the address it is
//! published on), connects to that port's target — and only when exactly one such accept of
//! that process is waiting: a proxy serving two clients at once gives no way to tell whose
//! second connection is whose, so those are counted, not guessed.
//!
//! Pure: the published ports come from the runtime (through the stage's inputs), the calls
//! from the socket table. Bounded: at most [`MAX_WAITING`] accepts wait for their second
//! half, each at most [`WAIT_NS`]; the rest are forgotten and counted.
use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use serde::Serialize;

use super::{
    mapping::Published,
    types::{Endpoint, Proto},
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
    /// Whether either half passed the run's filters (what to show).
    #[serde(skip)]
    pub shown: bool,
}

/// An accept or a connect, as the linking needs it.
#[derive(Clone, Debug)]
pub struct Call {
    pub ts_ns: u64,
    /// true: accept; false: connect (that reached the network).
    pub accept: bool,
    pub pid: u32,
    pub uid: u32,
    pub netns: u32,
    pub proto: Proto,
    pub local: Endpoint,
    pub remote: Endpoint,
    pub comm: Option<String>,
    pub sock: u64,
    /// It passed the run's filters.
    pub shown: bool,
}

impl Call {
    /// An accept or a connect that reached the network, from a record and its attribution
    /// (None for any other record, or one nobody owns).
    pub fn of(
        raw: &tracer_common::SockEvent,
        attribution: &super::table::Attribution,
        shown: bool,
    ) -> Option<Call> {
        use tracer_common::{flag, kind};
        let accept = match raw.kind {
            kind::ACCEPT => true,
            kind::CONNECT => false,
            _ => return None,
        };
        let owner = attribution.owner?;
        let hook = raw.flags & flag::FROM_HOOK != 0;
        let reached = hook
            || if accept {
                raw.ret >= 0
            } else {
                raw.ret == 0 || raw.ret == -(libc::EINPROGRESS as i64)
            };
        let lport = if raw.lport == 0 {
            attribution.lport
        } else {
            raw.lport
        };
        if !reached || raw.rport == 0 || lport == 0 {
            return None;
        }
        let ip = |bytes| super::event::ip(raw.family, bytes);
        Some(Call {
            ts_ns: raw.ts_ns,
            accept,
            pid: owner.pid,
            uid: owner.uid,
            netns: raw.netns,
            proto: Proto::of_socket(raw.protocol, raw.sock_type),
            local: Endpoint::new(ip(&raw.laddr), lport),
            remote: Endpoint::new(ip(&raw.raddr), raw.rport),
            comm: Some(owner.comm()),
            sock: raw.sk,
            shown,
        })
    }
}

#[derive(Clone, Debug)]
struct Accepted {
    ts_ns: u64,
    proto: Proto,
    client: Endpoint,
    front: Endpoint,
    sock: u64,
    shown: bool,
}

/// The proxies' accepts waiting for their second half, and the ports published.
#[derive(Debug, Default)]
pub struct ProxyLinks {
    /// (proto, host port) → what is published there.
    published: HashMap<(Proto, u16), Vec<Published>>,
    /// The host's network namespace (where a runtime's proxy listens).
    host_netns: Option<u32>,
    /// Per process, its accepts waiting, oldest first.
    waiting: HashMap<u32, VecDeque<Accepted>>,
    waiting_total: usize,
    /// Accepts forgotten because too many waited.
    pub evicted: u64,
    /// Second connections not linked because several accepts could have been theirs.
    pub ambiguous: u64,
}

impl ProxyLinks {
    /// The ports the runtime publishes now, and the host's namespace.
    pub fn set_published(&mut self, published: Vec<Published>, host_netns: Option<u32>) {
        self.host_netns = host_netns;
        self.published.clear();
        for p in published {
            if let Some(proto) = Proto::from_name(&p.proto) {
                self.published
                    .entry((proto, p.host_port))
                    .or_default()
                    .push(p);
            }
        }
    }

    /// Whether anything is published (the stage skips the work otherwise).
    pub fn active(&self) -> bool {
        !self.published.is_empty() && self.host_netns.is_some()
    }

    /// What is published on `front` (the address matching: `0.0.0.0`/`::`/empty any address
    /// of that family, else that address).
    fn published_at(&self, proto: Proto, front: &Endpoint) -> impl Iterator<Item = &Published> {
        let front = *front;
        self.published
            .get(&(proto, front.port))
            .into_iter()
            .flatten()
            .filter(move |p| match p.host_ip.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() => ip.is_ipv6() == front.addr.is_ipv6(),
                Ok(ip) => ip.to_canonical() == front.addr,
                Err(_) => true,
            })
    }

    fn expire(&mut self, now_ns: u64) {
        let mut gone = 0;
        self.waiting.retain(|_, q| {
            while q
                .front()
                .is_some_and(|a| now_ns.saturating_sub(a.ts_ns) > WAIT_NS)
            {
                q.pop_front();
                gone += 1;
            }
            !q.is_empty()
        });
        self.waiting_total -= gone;
    }

    /// An accept or a connect; a proxy's second connection gives the link.
    pub fn observe(&mut self, c: Call) -> Option<Proxied> {
        // A runtime's proxy: root, in the host's namespace.
        if c.uid != 0 || Some(c.netns) != self.host_netns {
            return None;
        }
        if self.waiting_total > 0 {
            self.expire(c.ts_ns);
        }
        let local = Endpoint::new(c.local.addr.to_canonical(), c.local.port);
        let remote = Endpoint::new(c.remote.addr.to_canonical(), c.remote.port);
        if c.accept {
            self.published_at(c.proto, &local).next()?;
            if self.waiting_total >= MAX_WAITING {
                // The oldest accept of the process with the most waiting goes.
                if let Some(q) = self.waiting.values_mut().max_by_key(|q| q.len()) {
                    q.pop_front();
                    self.waiting_total -= 1;
                    self.evicted += 1;
                }
            }
            self.waiting.entry(c.pid).or_default().push_back(Accepted {
                ts_ns: c.ts_ns,
                proto: c.proto,
                client: remote,
                front: local,
                sock: c.sock,
                shown: c.shown,
            });
            self.waiting_total += 1;
            return None;
        }
        let target_of = |a: &Accepted| {
            self.published_at(a.proto, &a.front)
                .find(|p| p.container_port == remote.port && p.addresses.contains(&remote.addr))
                .map(|p| p.name.clone())
        };
        let queue = self.waiting.get(&c.pid)?;
        let candidates: Vec<usize> = queue
            .iter()
            .enumerate()
            .filter(|(_, a)| a.proto == c.proto && target_of(a).is_some())
            .map(|(i, _)| i)
            .collect();
        match candidates.as_slice() {
            [] => None,
            [one] => {
                let a = queue.get(*one)?.clone();
                let container = target_of(&a).unwrap_or_default();
                if let Some(q) = self.waiting.get_mut(&c.pid) {
                    q.remove(*one);
                    if q.is_empty() {
                        self.waiting.remove(&c.pid);
                    }
                }
                self.waiting_total -= 1;
                Some(Proxied {
                    ts_ns: c.ts_ns,
                    proto: a.proto,
                    client: a.client,
                    front: a.front,
                    proxy_pid: c.pid,
                    proxy_comm: c.comm,
                    back: local,
                    target: remote,
                    container,
                    front_sock: a.sock,
                    back_sock: c.sock,
                    shown: a.shown || c.shown,
                })
            }
            _ => {
                // Several clients wait on this proxy: whose connection this is cannot be told.
                self.ambiguous += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: u32 = 1;

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

    fn call(accept: bool, ts: u64, pid: u32, local: (&str, u16), remote: (&str, u16)) -> Call {
        Call {
            ts_ns: ts,
            accept,
            pid,
            uid: 0,
            netns: HOST,
            proto: Proto::Tcp,
            local: Endpoint::new(local.0.parse().unwrap(), local.1),
            remote: Endpoint::new(remote.0.parse().unwrap(), remote.1),
            comm: Some("docker-proxy".into()),
            sock: ts,
            shown: true,
        }
    }

    fn links() -> ProxyLinks {
        let mut links = ProxyLinks::default();
        links.set_published(vec![published()], Some(HOST));
        links
    }

    #[test]
    fn a_proxys_two_sockets_are_one_connection() {
        let mut links = links();
        assert!(links.active());
        let accept = call(true, 1_000, 7, ("127.0.0.1", 18081), ("127.0.0.1", 51008));
        assert_eq!(links.observe(accept), None);
        // Another process's connect to the same target is not the proxy's.
        let other = call(
            false,
            2_000,
            8,
            ("198.51.100.1", 51000),
            ("198.51.100.2", 80),
        );
        assert_eq!(links.observe(other), None);
        let connect = call(
            false,
            3_000,
            7,
            ("198.51.100.1", 51692),
            ("198.51.100.2", 80),
        );
        let p = links.observe(connect.clone()).unwrap();
        assert_eq!(p.client.to_string(), "127.0.0.1:51008");
        assert_eq!(p.front.to_string(), "127.0.0.1:18081");
        assert_eq!(p.back.to_string(), "198.51.100.1:51692");
        assert_eq!(p.target.to_string(), "198.51.100.2:80");
        assert_eq!(p.container, "web1");
        assert_eq!((p.front_sock, p.back_sock), (1_000, 3_000));
        // Used once.
        assert_eq!(links.observe(connect), None);
    }

    #[test]
    fn only_a_root_proxy_in_the_hosts_namespace_on_the_published_address() {
        let mut links = links();
        // A user's process, or one in another namespace (a container listening on the same
        // port number inside its own), is no runtime's proxy.
        for (uid, netns) in [(1000, HOST), (0, 2)] {
            let mut a = call(true, 0, 7, ("127.0.0.1", 18081), ("127.0.0.1", 51008));
            a.uid = uid;
            a.netns = netns;
            links.observe(a);
            let c = call(false, 1, 7, ("198.51.100.1", 51692), ("198.51.100.2", 80));
            assert_eq!(links.observe(c), None);
        }
        // Published on 0.0.0.0: an accept on [::] is another binding's.
        let a = call(true, 2, 7, ("::1", 18081), ("::1", 51008));
        links.observe(a);
        let c = call(false, 3, 7, ("198.51.100.1", 51692), ("198.51.100.2", 80));
        assert_eq!(links.observe(c), None);
    }

    #[test]
    fn two_clients_at_once_are_not_guessed() {
        let mut links = links();
        links.observe(call(true, 0, 7, ("127.0.0.1", 18081), ("127.0.0.1", 51008)));
        links.observe(call(true, 1, 7, ("127.0.0.1", 18081), ("127.0.0.1", 51010)));
        let c = call(false, 2, 7, ("198.51.100.1", 51692), ("198.51.100.2", 80));
        assert_eq!(links.observe(c), None);
        assert_eq!(links.ambiguous, 1);
    }

    #[test]
    fn accepts_on_unpublished_ports_or_too_old_are_not_linked() {
        let mut links = links();
        links.observe(call(true, 0, 7, ("127.0.0.1", 8080), ("127.0.0.1", 40000)));
        assert_eq!(links.waiting_total, 0);
        links.observe(call(true, 0, 7, ("127.0.0.1", 18081), ("127.0.0.1", 51008)));
        let late = call(
            false,
            2 * WAIT_NS,
            7,
            ("198.51.100.1", 51692),
            ("198.51.100.2", 80),
        );
        assert_eq!(links.observe(late), None);
        assert_eq!(links.waiting_total, 0);
        // Bounded: the oldest waiting accepts are forgotten, counted.
        for i in 0..MAX_WAITING as u64 + 5 {
            let mut a = call(true, 3 * WAIT_NS, 7, ("127.0.0.1", 18081), ("127.0.0.1", 1));
            a.sock = i;
            links.observe(a);
        }
        assert_eq!(links.evicted, 5);
        assert_eq!(links.waiting_total, MAX_WAITING);
    }
}
