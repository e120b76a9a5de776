//! Port mappings: a port published on the host, the DNAT rule (or the runtime's proxy) that
//! forwards it, and the socket listening behind it — `tracer ports --mappings`.
//!
//! Pure: the rules come as text (`iptables-save -t nat`, `nft -j list ruleset`) and the
//! sockets as rows; `commands::ports` reads them. A rule that sends a port to an address
//! is a mapping whatever made it: Docker (`-A DOCKER … --dport 18081 -j DNAT
//! --to-destination 198.51.100.2:80`), kube-proxy (a `KUBE-SEP-…` chain's DNAT, reached from
//! `KUBE-SERVICES`/`KUBE-NODEPORTS` through a `KUBE-SVC-…` chain whose jump carries the
//! service's address and port), or a hand-written nft `dnat`.
use std::net::IpAddr;

use serde::Serialize;

use super::ports::PortRow;

/// One DNAT rule, with the matches that lead to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DnatRule {
    /// `iptables` or `nft`.
    pub source: &'static str,
    /// The chain the DNAT is in, and the chains that jump to it (nearest first).
    pub chain: String,
    pub via: Vec<String>,
    /// "tcp", "udp" (None: any).
    pub proto: Option<String>,
    /// The destination the rule matches (None: any local address), as written (`10.96.0.10`,
    /// `10.96.0.0/12`).
    pub daddr: Option<String>,
    pub dport: Option<u16>,
    /// Where it sends the connection.
    pub to_addr: IpAddr,
    /// None: the same port.
    pub to_port: Option<u16>,
}

/// A rule line's matches and target, as `iptables-save` writes them.
#[derive(Debug, Default)]
struct Line {
    chain: String,
    proto: Option<String>,
    daddr: Option<String>,
    dport: Option<u16>,
    /// A `--dport` was given (a range `a:b` parses to no single port).
    dport_given: bool,
    /// `-j TARGET`.
    target: Option<String>,
    to: Option<String>,
}

fn parse_line(line: &str) -> Option<Line> {
    let mut words = line.split_whitespace();
    if words.next()? != "-A" {
        return None;
    }
    let mut l = Line {
        chain: words.next()?.to_string(),
        ..Line::default()
    };
    let mut negate = false;
    while let Some(w) = words.next() {
        match w {
            "!" => {
                negate = true;
                continue;
            }
            "-p" => l.proto = words.next().map(str::to_string).filter(|_| !negate),
            "-d" => l.daddr = words.next().map(str::to_string).filter(|_| !negate),
            "--dport" => {
                l.dport_given = !negate;
                l.dport = words
                    .next()
                    .and_then(|p| p.parse().ok())
                    .filter(|_| !negate)
            }
            "-j" | "-g" => l.target = words.next().map(str::to_string),
            "--to-destination" => l.to = words.next().map(str::to_string),
            _ => {}
        }
        negate = false;
    }
    Some(l)
}

/// `198.51.100.2:80`, `198.51.100.2`, `[2001:db8::2]:80`, `10.0.0.1-10.0.0.9:80` (the first
/// address of a range).
fn destination(to: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Some(rest) = to.strip_prefix('[') {
        let (addr, port) = rest.split_once(']')?;
        let port = port
            .strip_prefix(':')
            .and_then(|p| p.split('-').next()?.parse().ok());
        return Some((addr.parse().ok()?, port));
    }
    let (addr, port) = match to.rsplit_once(':') {
        Some((a, p)) if !a.contains(':') => (a, p.split('-').next().and_then(|p| p.parse().ok())),
        _ => (to, None),
    };
    let addr = addr.split('-').next()?;
    Some((addr.parse().ok()?, port))
}

/// The DNAT rules of an `iptables-save -t nat` text, each with the matches of the rules that
/// jump to its chain where its own say nothing (kube-proxy's service → endpoint chains). At
/// most `max` rules, from the first 65,536 rule lines (the tool's output is capped at 4 MiB).
pub fn from_iptables_save(text: &str, max: usize) -> Vec<DnatRule> {
    let lines: Vec<Line> = text.lines().filter_map(parse_line).take(65_536).collect();
    // Each chain's first jump into it.
    let mut jumps: std::collections::HashMap<&str, &Line> = std::collections::HashMap::new();
    for l in &lines {
        if let Some(target) = l.target.as_deref() {
            jumps.entry(target).or_insert(l);
        }
    }
    let mut out = Vec::new();
    for l in &lines {
        if out.len() >= max {
            break;
        }
        if l.target.as_deref() != Some("DNAT") {
            continue;
        }
        let Some((to_addr, to_port)) = l.to.as_deref().and_then(destination) else {
            continue;
        };
        let mut rule = DnatRule {
            source: "iptables",
            chain: l.chain.clone(),
            via: Vec::new(),
            proto: l.proto.clone(),
            daddr: l.daddr.clone(),
            dport: l.dport,
            to_addr,
            to_port,
        };
        // Up the jumps (at most three levels, the first jump found at each) for what the
        // rule itself does not match on.
        let mut chain = l.chain.as_str();
        let mut port_matched = l.dport_given;
        for _ in 0..3 {
            if port_matched {
                break;
            }
            let Some(parent) = jumps.get(chain) else {
                break;
            };
            rule.via.push(parent.chain.clone());
            rule.proto = rule.proto.or_else(|| parent.proto.clone());
            rule.daddr = rule.daddr.or_else(|| parent.daddr.clone());
            rule.dport = parent.dport;
            port_matched = parent.dport_given;
            chain = parent.chain.as_str();
        }
        out.push(rule);
    }
    out
}

/// The native `dnat` rules of `nft -j list ruleset` (iptables-nft's own rules show there as
/// `xt` targets without their destination: those come from `iptables-save`).
pub fn from_nft_json(json: &serde_json::Value, max: usize) -> Vec<DnatRule> {
    use serde_json::Value;
    let mut out = Vec::new();
    let Some(items) = json.get("nftables").and_then(Value::as_array) else {
        return out;
    };
    for item in items.iter().take(65_536) {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let Some(exprs) = rule.get("expr").and_then(Value::as_array) else {
            continue;
        };
        let mut proto = None;
        let mut daddr = None;
        let mut dport = None;
        let mut to = None;
        for e in exprs {
            if let Some(m) = e.get("match") {
                if m.get("op").and_then(Value::as_str) != Some("==") {
                    continue;
                }
                let payload = m.get("left").and_then(|l| l.get("payload"));
                let field = payload.and_then(|p| p.get("field")).and_then(Value::as_str);
                let protocol = payload
                    .and_then(|p| p.get("protocol"))
                    .and_then(Value::as_str);
                let right = m.get("right");
                match (protocol, field) {
                    (Some(p @ ("tcp" | "udp")), Some("dport")) => {
                        proto = Some(p.to_string());
                        dport = right
                            .and_then(Value::as_u64)
                            .and_then(|v| u16::try_from(v).ok());
                    }
                    (Some("ip" | "ip6"), Some("daddr")) => {
                        daddr = right.and_then(Value::as_str).map(str::to_string);
                    }
                    _ => {}
                }
            }
            if let Some(d) = e.get("dnat") {
                let addr = d
                    .get("addr")
                    .and_then(Value::as_str)
                    .and_then(|a| a.parse::<IpAddr>().ok());
                let port = d
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|v| u16::try_from(v).ok());
                to = addr.map(|a| (a, port));
            }
        }
        if let Some((to_addr, to_port)) = to {
            out.push(DnatRule {
                source: "nft",
                chain: rule
                    .get("chain")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                via: Vec::new(),
                proto,
                daddr,
                dport,
                to_addr,
                to_port,
            });
            if out.len() >= max {
                break;
            }
        }
    }
    out
}

/// One published port, end to end.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mapping {
    pub proto: String,
    /// The host's side: its address as published (None: every local address) and port.
    pub host_addr: Option<String>,
    pub host_port: u16,
    /// What forwards it: the DNAT rule's chain (`DOCKER`, `KUBE-SEP-…`), and a proxy process
    /// listening on the host port (Docker's userland proxy), when there is one.
    pub rule: Option<String>,
    pub rule_source: Option<&'static str>,
    pub proxy_pid: Option<u32>,
    pub proxy_comm: Option<String>,
    /// Where it goes.
    pub target_addr: IpAddr,
    pub target_port: u16,
    /// Who listens there: the container (label) and the process, when found.
    pub container: Option<String>,
    pub container_id: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub netns: Option<u32>,
}

/// A port a container runtime publishes (Docker's API), as [`join`] takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Published {
    /// The container's id and name.
    pub id: String,
    pub name: String,
    pub proto: String,
    /// As the runtime says it: empty, `0.0.0.0` or `::` for every address.
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    /// The container's addresses.
    pub addresses: Vec<IpAddr>,
    /// Its network namespace (its main process's), when known.
    pub netns: Option<u32>,
}

/// The ports a runtime publishes, and the host's network namespace (where its proxy
/// listens), as a stage asks for them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PublishedPorts {
    pub host_netns: Option<u32>,
    pub ports: Vec<Published>,
}

/// Who listens on `port` (`proto`): in `netns` when known, else at `addr` exactly, else on a
/// wildcard address in the one namespace (not the host's) that has such a listener.
fn listener<'a>(
    rows: &'a [PortRow],
    proto: &str,
    netns: Option<u32>,
    addr: IpAddr,
    port: u16,
    host: Option<u32>,
) -> Option<&'a PortRow> {
    let listening = |r: &&PortRow| r.listening && r.lport == port && r.proto.name() == proto;
    if let Some(ns) = netns {
        return rows.iter().filter(listening).find(|r| r.netns == ns);
    }
    if let Some(exact) = rows.iter().filter(listening).find(|r| r.laddr == addr) {
        return Some(exact);
    }
    let wild: Vec<&PortRow> = rows
        .iter()
        .filter(listening)
        .filter(|r| r.laddr.is_unspecified() && Some(r.netns) != host)
        .collect();
    let first = wild.first()?;
    wild.iter()
        .all(|r| r.netns == first.netns)
        .then_some(*first)
}

fn with_listener(mut m: Mapping, row: Option<&PortRow>) -> Mapping {
    if let Some(r) = row {
        m.pid = r.pid;
        m.comm = r.comm.clone();
        m.netns = Some(r.netns);
        if let Some(c) = r.container.as_deref() {
            if m.container.is_none() {
                m.container = Some(c.label().to_string());
            }
            if m.container_id.is_none() {
                m.container_id = c.id.as_ref().map(|i| i.id.to_string());
            }
        }
    }
    m
}

/// Every mapping: the runtime's published ports (with the DNAT rule and the proxy that carry
/// each), then the DNAT rules no runtime accounts for (kube-proxy's, hand-written ones), each
/// with the socket listening behind it. `host`: the host's namespace (where the proxy
/// listens).
pub fn join(
    published: &[Published],
    rules: &[DnatRule],
    rows: &[PortRow],
    host: Option<u32>,
) -> Vec<Mapping> {
    let mut used = vec![false; rules.len()];
    let mut out = Vec::new();
    for p in published {
        let v6 = p.host_ip.contains(':');
        let Some(target) = p
            .addresses
            .iter()
            .find(|a| a.is_ipv6() == v6)
            .or(p.addresses.first())
            .copied()
        else {
            continue;
        };
        // A rule of the binding's own family (an IPv4 DNAT rule carries no IPv6 client; a
        // `[::]` binding to an IPv4-only container has its proxy alone).
        let rule = rules.iter().enumerate().find(|(_, r)| {
            r.dport == Some(p.host_port)
                && r.proto.as_deref().is_none_or(|x| x == p.proto)
                && r.to_addr == target
                && r.to_addr.is_ipv6() == v6
                && r.to_port.unwrap_or(p.host_port) == p.container_port
        });
        if let Some((i, _)) = rule {
            used[i] = true;
        }
        let proxy = rows.iter().find(|r| {
            r.listening
                && r.lport == p.host_port
                && r.proto.name() == p.proto
                && Some(r.netns) == host
                && r.laddr.is_ipv6() == v6
        });
        let m = Mapping {
            proto: p.proto.clone(),
            host_addr: (!p.host_ip.is_empty()).then(|| p.host_ip.clone()),
            host_port: p.host_port,
            rule: rule.map(|(_, r)| r.chain.clone()),
            rule_source: rule.map(|(_, r)| r.source),
            proxy_pid: proxy.and_then(|r| r.pid),
            proxy_comm: proxy.and_then(|r| r.comm.clone()),
            target_addr: target,
            target_port: p.container_port,
            container: Some(p.name.clone()),
            container_id: Some(p.id.clone()),
            pid: None,
            comm: None,
            netns: p.netns,
        };
        out.push(with_listener(
            m,
            listener(rows, &p.proto, p.netns, target, p.container_port, host),
        ));
    }
    for (r, _) in rules.iter().zip(&used).filter(|(_, used)| !**used) {
        let Some(dport) = r.dport else { continue };
        let proto = r.proto.clone().unwrap_or_else(|| "tcp".into());
        let target_port = r.to_port.unwrap_or(dport);
        let chain = match r.via.last() {
            Some(top) => format!("{top} → {}", r.chain),
            None => r.chain.clone(),
        };
        let m = Mapping {
            proto: proto.clone(),
            host_addr: r.daddr.clone(),
            host_port: dport,
            rule: Some(chain),
            rule_source: Some(r.source),
            proxy_pid: None,
            proxy_comm: None,
            target_addr: r.to_addr,
            target_port,
            container: None,
            container_id: None,
            pid: None,
            comm: None,
            netns: None,
        };
        out.push(with_listener(
            m,
            listener(rows, &proto, None, r.to_addr, target_port, host),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_rules_are_mappings() {
        // iptables-save -t nat with Docker 20.10's rules (this machine, iptables-nft).
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
            -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
            -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER\n\
            -A POSTROUTING -s 198.51.100.0/24 ! -o docker0 -j MASQUERADE\n\
            -A DOCKER -i docker0 -j RETURN\n\
            -A DOCKER ! -i docker0 -p tcp -m tcp --dport 18081 -j DNAT --to-destination 198.51.100.2:80\n\
            -A DOCKER -d 127.0.0.1/32 ! -i docker0 -p udp -m udp --dport 5353 -j DNAT --to-destination 198.51.100.3:53\n\
            COMMIT\n";
        let rules = from_iptables_save(text, 100);
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].chain, "DOCKER");
        assert_eq!(rules[0].proto.as_deref(), Some("tcp"));
        assert_eq!(rules[0].dport, Some(18081));
        assert_eq!(rules[0].daddr, None);
        assert_eq!(rules[0].to_addr, "198.51.100.2".parse::<IpAddr>().unwrap());
        assert_eq!(rules[0].to_port, Some(80));
        assert_eq!(rules[1].daddr.as_deref(), Some("127.0.0.1/32"));
        assert_eq!(rules[1].proto.as_deref(), Some("udp"));
        assert_eq!(from_iptables_save(text, 1).len(), 1);
    }

    #[test]
    fn kube_proxys_chains_are_followed_to_the_service() {
        let text = "*nat\n\
            -A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment \"kube-system/kube-dns:dns cluster IP\" -m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU\n\
            -A KUBE-NODEPORTS -p tcp -m comment --comment \"shop/web\" -m tcp --dport 30080 -j KUBE-EXT-ABC\n\
            -A KUBE-EXT-ABC -j KUBE-SVC-ABC\n\
            -A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment \"kube-system/kube-dns:dns -> 10.244.0.3:53\" -j KUBE-SEP-YIL6JZP7A3QYXJU2\n\
            -A KUBE-SVC-ABC -j KUBE-SEP-XYZ\n\
            -A KUBE-SEP-YIL6JZP7A3QYXJU2 -s 10.244.0.3/32 -j KUBE-MARK-MASQ\n\
            -A KUBE-SEP-YIL6JZP7A3QYXJU2 -p udp -m udp -j DNAT --to-destination 10.244.0.3:53\n\
            -A KUBE-SEP-XYZ -p tcp -m tcp -j DNAT --to-destination 10.244.1.5:8080\n";
        let rules = from_iptables_save(text, 100);
        assert_eq!(rules.len(), 2);
        let dns = &rules[0];
        assert_eq!(dns.chain, "KUBE-SEP-YIL6JZP7A3QYXJU2");
        assert_eq!(dns.via, ["KUBE-SVC-TCOU7JCQXEZGVUNU", "KUBE-SERVICES"]);
        assert_eq!(dns.daddr.as_deref(), Some("10.96.0.10/32"));
        assert_eq!(dns.dport, Some(53));
        assert_eq!(dns.to_port, Some(53));
        let web = &rules[1];
        assert_eq!(web.via, ["KUBE-SVC-ABC", "KUBE-EXT-ABC", "KUBE-NODEPORTS"]);
        assert_eq!(web.dport, Some(30080));
        assert_eq!(web.to_addr, "10.244.1.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn destinations_in_every_spelling() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            destination("198.51.100.2:80"),
            Some((ip("198.51.100.2"), Some(80)))
        );
        assert_eq!(
            destination("198.51.100.2"),
            Some((ip("198.51.100.2"), None))
        );
        assert_eq!(
            destination("[2001:db8::2]:80"),
            Some((ip("2001:db8::2"), Some(80)))
        );
        assert_eq!(destination("2001:db8::2"), Some((ip("2001:db8::2"), None)));
        assert_eq!(
            destination("10.0.0.1-10.0.0.9:80-90"),
            Some((ip("10.0.0.1"), Some(80)))
        );
        assert_eq!(destination("nonsense"), None);
        assert!(parse_line("garbage").is_none());
    }

    #[test]
    fn native_nft_dnat_rules_are_mappings() {
        let json: serde_json::Value = serde_json::from_str(
            r#"{"nftables":[{"rule":{"family":"ip","table":"nat","chain":"prerouting","handle":4,
              "expr":[{"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":8080}},
                      {"dnat":{"addr":"192.0.2.10","port":80}}]}},
              {"rule":{"family":"ip","table":"nat","chain":"DOCKER","handle":9,
              "expr":[{"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":18081}},
                      {"xt":{"type":"target","name":"DNAT"}}]}}]}"#,
        )
        .unwrap();
        let rules = from_nft_json(&json, 100);
        assert_eq!(
            rules.len(),
            1,
            "iptables-nft's xt targets come from iptables-save"
        );
        assert_eq!(rules[0].dport, Some(8080));
        assert_eq!(rules[0].to_port, Some(80));
        assert_eq!(rules[0].source, "nft");
    }
}
