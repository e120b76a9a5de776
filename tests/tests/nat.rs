//! NAT on a real test router (scripts/nat-router.sh: LAN, router and WAN namespaces joined by
//! veth pairs, nft rules in the router): masquerade with port translation, static SNAT, a
//! DNAT port forward, UDP, IPv6, exact packet counters, 2,000 bindings, a router namespace
//! deleted mid-run, and the conntrack fallback. Each test builds its own router (its own
//! namespace prefix) and tears it down on drop, pass or fail.
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracer_tests::*;

const T: Duration = Duration::from_secs(30);

struct Router {
    prefix: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/nat-router.sh")
}

impl Router {
    fn up(prefix: &str, mode: &str) -> Router {
        let router = Router {
            prefix: prefix.to_string(),
        };
        let status = Command::new(script())
            .args(["up", prefix, mode])
            .stdout(Stdio::null())
            .status()
            .expect("run nat-router.sh");
        assert!(status.success(), "nat-router.sh up {prefix} {mode} failed");
        router
    }

    fn ns(&self, which: &str) -> String {
        format!("{}{which}", self.prefix)
    }

    /// `conntrack -L -n` in the router, as (orig, reply) tuples of `src dst sport dport`.
    fn conntrack(&self, args: &[&str]) -> Vec<(Vec<String>, Vec<String>)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns("router"), "conntrack", "-L", "-n"])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .expect("conntrack -L");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                let fields: Vec<String> = line
                    .split_whitespace()
                    .filter(|f| {
                        ["src=", "dst=", "sport=", "dport="]
                            .iter()
                            .any(|k| f.starts_with(k))
                    })
                    .map(|f| f.split_once('=').unwrap().1.to_string())
                    .collect();
                (fields[..4].to_vec(), fields[4..8].to_vec())
            })
            .collect()
    }

    fn flush_conntrack(&self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.ns("router"), "conntrack", "-F"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["down", &self.prefix])
            .stdout(Stdio::null())
            .status();
    }
}

const TCP_SERVER: &str = r#"
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
s = socket.socket(fam)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1024)
print("ready", flush=True)
while True:
    c, a = s.accept()
    print("peer", a[0], a[1], flush=True)
    c.recv(100)
    c.sendall(b"ok")
    c.close()
"#;

const TCP_CLIENT: &str = r#"
import socket, sys
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
for i in range(int(sys.argv[3])):
    c = socket.socket(fam)
    c.connect((sys.argv[1], int(sys.argv[2])))
    print("port", c.getsockname()[1], flush=True)
    c.sendall(b"hi")
    c.recv(100)
    c.close()
"#;

const UDP_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, a = s.recvfrom(2048)
    print("peer", a[0], a[1], flush=True)
    s.sendto(data, a)
"#;

/// Sends N datagrams from one socket, waiting for each answer.
const UDP_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for i in range(int(sys.argv[3])):
    s.sendto(b"query %d" % i, (sys.argv[1], int(sys.argv[2])))
    s.recvfrom(2048)
print("port", s.getsockname()[1], flush=True)
"#;

/// A python helper inside a namespace, its stdout read line by line.
/// Runs a python client to completion; returns the local ports it printed.
fn py_client(ns: &str, code: &str, addr: &str, port: u16, count: usize) -> Vec<u16> {
    let mut py = Py::start(ns, code, &[addr, &port.to_string(), &count.to_string()]);
    let mut ports = Vec::new();
    loop {
        let line = py.line();
        if line.is_empty() {
            break;
        }
        if let Some(p) = line.strip_prefix("port ") {
            ports.push(p.parse().unwrap());
        }
    }
    let status = py.child.wait().unwrap();
    assert!(status.success(), "client in {ns} failed");
    ports
}

fn ready(test: &str) -> bool {
    prerequisites(test)
        && tool(test, "nft", "nftables")
        && tool(test, "conntrack", "conntrack")
        && tool(test, "python3", "python3")
}

fn of_type<'a>(records: &'a [Value], t: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == t).collect()
}

/// The record of `type` whose original source port (for flows: client port) is `port`.
fn for_port(records: &[Value], t: &str, port: u16) -> Option<Value> {
    records
        .iter()
        .find(|r| {
            let own = &r["original"]["sport"];
            r["type"] == t && (*own == port || r["client"]["port"] == port)
        })
        .cloned()
}

fn tuple(v: &Value) -> Vec<String> {
    vec![
        v["src"].as_str().unwrap().to_string(),
        v["dst"].as_str().unwrap().to_string(),
        v["sport"].to_string(),
        v["dport"].to_string(),
    ]
}

fn start_nat(router: &Router, extra: &[&str]) -> Tracer {
    let ns = router.ns("router");
    let mut args = vec!["--netns", ns.as_str()];
    args.extend_from_slice(extra);
    Tracer::start("nat", &args)
}

/// 1. Masquerade with a forced port range: one binding equal to conntrack's entry, marked SNAT
///    with port translation, stitched to the client process and the server that accepted it.
#[test]
fn masquerade_binding_matches_conntrack_and_stitches_the_flow() {
    if !ready("masquerade") {
        return;
    }
    let router = Router::up("tn1", "masquerade");
    let mut tracer = start_nat(&router, &[]);
    let mut server = Py::server(&router.ns("wan"), TCP_SERVER, "198.51.100.10", 80);
    let ports = py_client(&router.ns("lan"), TCP_CLIENT, "198.51.100.10", 80, 1);
    let port = ports[0];
    let peer = server.line();
    tracer.wait_for("the stitched flow", T, |r| {
        for_port(r, "flow", port).is_some()
    });
    let bindings = of_type(&tracer.events, "nat_binding");
    let mine: Vec<_> = bindings
        .iter()
        .filter(|b| b["original"]["sport"] == port)
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "one binding for the connection: {bindings:?}"
    );
    let b = mine[0];
    assert_eq!(b["kind"], "snat");
    assert_eq!(b["port_translated"], true);
    assert_eq!(b["netns_name"], router.ns("router"));
    assert_eq!(b["translated"]["src"], "203.0.113.1");
    let tport = b["translated"]["sport"].as_u64().unwrap();
    assert!((61000..=61099).contains(&tport), "forced range: {tport}");
    // conntrack's own view, exactly.
    let entries = router.conntrack(&["-p", "tcp", "--orig-port-src", &port.to_string()]);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(tuple(&b["original"]), entries[0].0);
    assert_eq!(tuple(&b["reply"]), entries[0].1);
    // The flow: client process and its ephemeral port → translated → server process.
    let f = for_port(&tracer.events, "flow", port).unwrap();
    assert_eq!(f["client"]["comm"], "python3");
    assert_eq!(f["client"]["kernel_chose_port"], true);
    assert_eq!(f["nat"]["translated"]["sport"], tport);
    assert_eq!(f["server"]["comm"], "python3");
    assert_eq!(f["server"]["port"], 80);
    assert_eq!(f["server"]["peer_addr"], "203.0.113.1");
    assert_eq!(f["server"]["peer_port"], tport);
    // What the server itself saw as its peer.
    assert_eq!(peer, format!("peer 203.0.113.1 {tport}"));
}

/// 2. Static SNAT of one address to one: address only, the port kept.
#[test]
fn static_snat_is_address_only() {
    if !ready("static_snat") {
        return;
    }
    let router = Router::up("tn2", "snat");
    let mut tracer = start_nat(&router, &["--no-flows"]);
    let _server = Py::server(&router.ns("wan"), TCP_SERVER, "198.51.100.10", 80);
    let port = py_client(&router.ns("lan"), TCP_CLIENT, "198.51.100.10", 80, 1)[0];
    tracer.wait_for("the binding", T, |r| {
        for_port(r, "nat_binding", port).is_some()
    });
    let b = for_port(&tracer.events, "nat_binding", port).unwrap();
    assert_eq!(b["kind"], "snat");
    assert_eq!(b["port_translated"], false);
    assert_eq!(b["address_translated"], true);
    assert_eq!(b["translated"]["src"], "203.0.113.7");
    assert_eq!(b["translated"]["sport"], port);
}

/// 3. A DNAT port forward (WAN → 203.0.113.1:8080 → LAN 192.0.2.10:80), seen through `watch`:
///    the binding is DNAT and the LAN server's accept is stitched to it.
#[test]
fn dnat_port_forward_in_watch() {
    if !ready("dnat") {
        return;
    }
    let router = Router::up("tn3", "dnat");
    let ns = router.ns("router");
    let mut tracer = Tracer::watch(&["--nat-netns", &ns, "--proto", "tcp"]);
    let mut server = Py::server(&router.ns("lan"), TCP_SERVER, "192.0.2.10", 80);
    let port = py_client(&router.ns("wan"), TCP_CLIENT, "203.0.113.1", 8080, 1)[0];
    assert_eq!(server.line(), format!("peer 203.0.113.10 {port}"));
    tracer.wait_for("the stitched flow", T, |r| {
        for_port(r, "flow", port).is_some()
    });
    let b = for_port(&tracer.events, "nat_binding", port).unwrap();
    assert_eq!(b["kind"], "dnat");
    assert_eq!(b["original"]["dst"], "203.0.113.1");
    assert_eq!(b["original"]["dport"], 8080);
    assert_eq!(b["translated"]["dst"], "192.0.2.10");
    assert_eq!(b["translated"]["dport"], 80);
    let f = for_port(&tracer.events, "flow", port).unwrap();
    assert_eq!(f["server"]["addr"], "192.0.2.10");
    assert_eq!(f["server"]["peer_addr"], "203.0.113.10");
    assert_eq!(f["server"]["peer_port"], port);
    // Socket events are interleaved: the server's accept is in the same stream.
    assert!(tracer
        .events
        .iter()
        .any(|e| e["event"] == "accept" && e["rport"] == port));
}

/// 4 and 6. UDP through masquerade: the binding, the reply, and exact packet counters: N
///    datagrams each way through one binding.
#[test]
fn udp_masquerade_counts_every_datagram() {
    if !ready("udp_masquerade") {
        return;
    }
    const N: u64 = 50;
    let router = Router::up("tn4", "masquerade");
    let mut tracer = start_nat(&router, &[]);
    let mut server = Py::server(&router.ns("wan"), UDP_SERVER, "198.51.100.10", 53);
    let port = py_client(
        &router.ns("lan"),
        UDP_CLIENT,
        "198.51.100.10",
        53,
        N as usize,
    )[0];
    let peer = server.line();
    tracer.wait_for("the UDP flow", T, |r| {
        of_type(r, "flow")
            .iter()
            .any(|f| f["client"]["port"] == port && f["proto"] == "udp")
    });
    let b = for_port(&tracer.events, "nat_binding", port).unwrap();
    assert_eq!(
        (b["proto"].as_str(), b["kind"].as_str()),
        (Some("udp"), Some("snat"))
    );
    assert_eq!(b["port_translated"], true);
    let tport = b["translated"]["sport"].as_u64().unwrap();
    assert_eq!(peer, format!("peer 203.0.113.1 {tport}"));
    // End the binding now: the destroy event carries the kernel's counters.
    router.flush_conntrack();
    tracer.wait_for("the binding's end", T, |r| {
        for_port(r, "nat_end", port).is_some()
    });
    let end = for_port(&tracer.events, "nat_end", port).unwrap();
    let c = &end["counters"];
    assert_eq!(c["orig_packets"], N, "{end}");
    assert_eq!(c["reply_packets"], N, "{end}");
    // IPv4 + UDP headers (28 bytes) around "query 0".."query 49".
    let payload: u64 = (0..N).map(|i| format!("query {i}").len() as u64).sum();
    assert_eq!(c["orig_bytes"], 28 * N + payload, "{end}");
}

/// 5. IPv6 masquerade (nft ip6 nat).
#[test]
fn ipv6_masquerade() {
    if !ready("ipv6_masquerade") {
        return;
    }
    let router = Router::up("tn5", "masquerade");
    let mut tracer = start_nat(&router, &[]);
    let _server = Py::server(&router.ns("wan"), TCP_SERVER, "2001:db8:2::10", 80);
    let port = py_client(&router.ns("lan"), TCP_CLIENT, "2001:db8:2::10", 80, 1)[0];
    tracer.wait_for("the IPv6 flow", T, |r| for_port(r, "flow", port).is_some());
    let b = for_port(&tracer.events, "nat_binding", port).unwrap();
    assert_eq!(b["family"], "ipv6");
    assert_eq!(b["kind"], "snat");
    assert_eq!(b["translated"]["src"], "2001:db8:2::1");
    let tport = b["translated"]["sport"].as_u64().unwrap();
    assert!((62000..=62099).contains(&tport), "{tport}");
}

/// 7. 2,000 short connections through the router: each reported once, none lost, none
///    duplicated, as many as conntrack holds.
#[test]
fn two_thousand_bindings_each_once() {
    if !ready("many_bindings") {
        return;
    }
    const N: usize = 2000;
    let router = Router::up("tn7", "snat");
    let mut tracer = start_nat(&router, &["--no-flows"]);
    let _server = Py::server(&router.ns("wan"), TCP_SERVER, "198.51.100.10", 80);
    let ports = py_client(&router.ns("lan"), TCP_CLIENT, "198.51.100.10", 80, N);
    assert_eq!(ports.len(), N);
    let wanted: std::collections::HashSet<u64> = ports.iter().map(|&p| p as u64).collect();
    tracer.wait_for("2,000 bindings", T, |r| {
        of_type(r, "nat_binding")
            .iter()
            .filter(|b| wanted.contains(&b["original"]["sport"].as_u64().unwrap_or(0)))
            .count()
            >= N
    });
    let (status, records) = tracer.stop_with(libc::SIGINT);
    assert!(status.success());
    let mine: Vec<u64> = of_type(&records, "nat_binding")
        .iter()
        .map(|b| b["original"]["sport"].as_u64().unwrap())
        .filter(|p| wanted.contains(p))
        .collect();
    let distinct: std::collections::HashSet<u64> = mine.iter().copied().collect();
    assert_eq!(mine.len(), N, "each binding exactly once");
    assert_eq!(distinct.len(), N);
    let summary = of_type(&records, "summary");
    assert_eq!(summary.last().unwrap()["lost"], 0, "nothing lost");
    let held = router.conntrack(&["-p", "tcp", "--orig-dst", "198.51.100.10"]);
    assert_eq!(held.len(), N, "conntrack holds one entry per connection");
}

/// Connects N times from one source port; the server closes first, so the client's port is
/// free again once its LAST_ACK is answered, while the router's conntrack entry sits in
/// TIME_WAIT (the next SYN ends it and makes a new one, usually at the same address). A
/// connect that comes before that last ACK finds the 4-tuple still taken (EADDRNOTAVAIL, no
/// packet sent): it is tried again a moment later.
const TCP_CLIENT_ONE_PORT: &str = r#"
import errno, socket, sys, time
for i in range(int(sys.argv[3])):
    for attempt in range(100):
        c = socket.socket(socket.AF_INET)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(("0.0.0.0", 40999))
        try:
            c.connect((sys.argv[1], int(sys.argv[2])))
            break
        except OSError as e:
            c.close()
            if e.errno != errno.EADDRNOTAVAIL:
                raise
            time.sleep(0.01)
    print("port", c.getsockname()[1], flush=True)
    c.sendall(b"hi")
    while c.recv(100):
        pass
    c.close()
"#;

/// 7b. One client port reused for 30 connections in a row: each new conntrack entry for the
///    same original tuple is a new binding (the kernel ended the old one in the same packet's
///    path, before tracer could hear of it), and every earlier binding ends.
#[test]
fn a_reused_client_port_is_a_new_binding_each_time() {
    if !ready("port_reuse") {
        return;
    }
    const N: usize = 30;
    let router = Router::up("tnr", "masquerade");
    let mut tracer = start_nat(&router, &["--no-flows"]);
    let _server = Py::server(&router.ns("wan"), TCP_SERVER, "198.51.100.10", 80);
    let ports = py_client(
        &router.ns("lan"),
        TCP_CLIENT_ONE_PORT,
        "198.51.100.10",
        80,
        N,
    );
    assert_eq!(ports, vec![40999; N]);
    let mine = |r: &[Value], t: &str| {
        of_type(r, t)
            .iter()
            .filter(|b| b["original"]["sport"] == 40999)
            .count()
    };
    tracer.wait_for("a binding per connection", T, |r| {
        mine(r, "nat_binding") >= N && mine(r, "nat_end") >= N - 1
    });
    let (status, records) = tracer.stop_with(libc::SIGINT);
    assert!(status.success());
    assert_eq!(
        mine(&records, "nat_binding"),
        N,
        "one binding per connection"
    );
    // The last entry still lives (TIME_WAIT in the router); every earlier one ended.
    assert_eq!(mine(&records, "nat_end"), N - 1);
    assert_eq!(of_type(&records, "summary").last().unwrap()["lost"], 0);
}

/// Holds N connections open at once (each with a 2 s connect timeout); prints how many got
/// through and how many did not.
const TCP_CLIENT_HOLD: &str = r#"
import socket, sys
held, failed = [], 0
for i in range(int(sys.argv[3])):
    c = socket.socket(socket.AF_INET)
    c.settimeout(2)
    try:
        c.connect((sys.argv[1], int(sys.argv[2])))
        held.append(c)
    except OSError:
        failed += 1
print("connected", len(held), "failed", failed, flush=True)
"#;

/// The router's conntrack statistics as `conntrack -S` prints them, summed over CPUs.
fn conntrack_stats(router: &Router) -> std::collections::HashMap<String, u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", &router.ns("router"), "conntrack", "-S"])
        .output()
        .expect("conntrack -S");
    let mut sums = std::collections::HashMap::new();
    for field in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Some((k, v)) = field.split_once('=') {
            if let Ok(v) = v.parse::<u64>() {
                *sums.entry(k.to_string()).or_default() += v;
            }
        }
    }
    sums
}

/// 7c. A masquerade pool of four ports and six connections held at once: four bindings, two
///    connections that got none — the conntrack table's statistics, as `tracer nat` reports
///    them for the router, equal what `conntrack -S` prints inside it.
#[test]
fn a_full_nat_pool_shows_in_the_conntrack_statistics() {
    if !ready("nat_pool") {
        return;
    }
    // The pool's rule made with nft, then with iptables-legacy: its size read from each.
    full_pool("tnp", "pool4", "nftables");
    if tool("nat_pool", "iptables-legacy", "iptables") {
        full_pool("tnq", "pool4-legacy", "iptables");
    }
}

fn full_pool(prefix: &str, mode: &str, from: &str) {
    let router = Router::up(prefix, mode);
    // With flows: the socket probes see the clients' handshakes too.
    let mut tracer = start_nat(&router, &[]);
    let _server = Py::server(&router.ns("wan"), TCP_SERVER, "198.51.100.10", 80);
    let mut client = Py::start(
        &router.ns("lan"),
        TCP_CLIENT_HOLD,
        &["198.51.100.10", "80", "6"],
    );
    assert_eq!(client.line(), "connected 4 failed 2");
    // Quiet now (the client is done): what conntrack -S prints is final. tracer reads the
    // table every few seconds and reports it when it changed.
    let expected = conntrack_stats(&router);
    assert!(expected["insert_failed"] >= 2, "{expected:?}");
    tracer.wait_for("a conntrack record with the failures", T, |r| {
        of_type(r, "conntrack")
            .last()
            .is_some_and(|h| h["stat"]["insert_failed"].as_u64() == Some(expected["insert_failed"]))
    });
    let (status, records) = tracer.stop_with(libc::SIGINT);
    assert!(status.success());
    let h = of_type(&records, "conntrack")
        .last()
        .cloned()
        .cloned()
        .unwrap();
    assert_eq!(h["netns_name"], router.ns("router"));
    for stat in [
        "insert_failed",
        "drop",
        "early_drop",
        "search_restart",
        "insert",
        "invalid",
    ] {
        assert_eq!(
            h["stat"][stat].as_u64(),
            expected.get(stat).copied(),
            "{stat}: tracer {h} vs conntrack -S {expected:?}"
        );
    }
    let bindings = of_type(&records, "nat_binding");
    let translated: std::collections::HashSet<u64> = bindings
        .iter()
        .map(|b| b["translated"]["sport"].as_u64().unwrap())
        .collect();
    assert_eq!(
        bindings.len(),
        4,
        "one binding per connection that got a port"
    );
    assert!(
        translated.iter().all(|p| (61000..=61003).contains(p)),
        "{translated:?}"
    );
    // The pool: 4 of 4 ports to that server, its size from the rule; warned past 80 %.
    let pool = of_type(&records, "nat_pool")
        .into_iter()
        .find(|p| p["daddr"] == "198.51.100.10" && p["dport"] == 80)
        .unwrap_or_else(|| panic!("no nat_pool record: {records:#?}"));
    assert_eq!(pool["translated_addr"], "203.0.113.1", "{pool}");
    assert_eq!(
        (&pool["peak"], &pool["size"]),
        (&4.into(), &4.into()),
        "{pool}"
    );
    assert_eq!(pool["range"], serde_json::json!([61000, 61003]), "{pool}");
    assert_eq!(pool["range_from"], from, "{pool}");
    assert_eq!(
        pool["in_use"], 4,
        "the four connections are still held: {pool}"
    );
    // The two connections that got no port, from the client's side: their SYNs went
    // unanswered (the client gave up after 2 s), tied to the pool's destination.
    assert_eq!(pool["unanswered_clients"], 2, "{pool}");
    let warned = of_type(&records, "nat_pool_warning");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["in_use"], 4);
    drop(client);
}

/// 7d. One UDP datagram nobody answers: the entry sees one packet, so the program never sees
///    it confirmed — its binding is reported when the entry ends (here `conntrack -D`), with
///    that one packet counted.
#[test]
fn a_flow_of_one_packet_is_reported_at_its_end() {
    if !ready("one_packet") {
        return;
    }
    let router = Router::up("tno", "masquerade");
    let mut tracer = start_nat(&router, &["--no-flows"]);
    // A sink: it takes the datagram and answers nothing (not even an ICMP port unreachable,
    // which would be a second packet of the entry).
    const UDP_SINK: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    s.recvfrom(2048)
"#;
    let _sink = Py::server(&router.ns("wan"), UDP_SINK, "198.51.100.10", 5999);
    let sent = Command::new("ip")
        .args(["netns", "exec", &router.ns("lan"), "python3", "-c"])
        .arg(
            "import socket\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('192.0.2.10', 41999)); s.sendto(b'x' * 20, ('198.51.100.10', 5999))",
        )
        .status()
        .unwrap();
    assert!(sent.success());
    let entries = router.conntrack(&["-p", "udp", "--orig-port-src", "41999"]);
    assert_eq!(entries.len(), 1, "conntrack holds the entry: {entries:?}");
    let deleted = Command::new("ip")
        .args(["netns", "exec", &router.ns("router"), "conntrack", "-D"])
        .args(["-p", "udp", "--orig-port-src", "41999"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(deleted.success());
    tracer.wait_for("the binding and its end", T, |r| {
        for_port(r, "nat_end", 41999).is_some()
    });
    let (_, records) = tracer.stop_with(libc::SIGINT);
    let b = for_port(&records, "nat_binding", 41999).expect("the binding");
    assert_eq!(tuple(&b["original"]), entries[0].0);
    assert_eq!(tuple(&b["reply"]), entries[0].1);
    let end = for_port(&records, "nat_end", 41999).unwrap();
    assert_eq!(end["counters"]["orig_packets"], 1, "{end}");
    assert_eq!(end["counters"]["reply_packets"], 0, "{end}");
}

/// 8. The watched router namespace is deleted mid-run: reported, and tracer keeps going.
#[test]
fn deleted_router_namespace_is_reported_not_fatal() {
    if !ready("netns_deleted") {
        return;
    }
    let router = Router::up("tn8", "masquerade");
    let ns = router.ns("router");
    let mut tracer = start_nat(&router, &["--no-flows"]);
    let status = Command::new("ip")
        .args(["netns", "del", &ns])
        .status()
        .unwrap();
    assert!(status.success());
    tracer.wait_for("the netns_gone record", T, |r| {
        of_type(r, "netns_gone")
            .iter()
            .any(|g| g["netns_name"] == ns.as_str())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        tracer.running(),
        "tracer exited when the namespace went away"
    );
    let (status, records) = tracer.stop_with(libc::SIGINT);
    assert!(status.success(), "{status}");
    assert!(!of_type(&records, "summary").is_empty());
}

/// The fallback for kernels before 6.4, forced: bindings from conntrack events, no counters.
#[test]
fn conntrack_fallback_reports_bindings() {
    if !ready("conntrack_fallback") {
        return;
    }
    let router = Router::up("tn9", "masquerade");
    let mut tracer = start_nat(&router, &["--source", "conntrack", "--no-flows"]);
    let _server = Py::server(&router.ns("wan"), TCP_SERVER, "198.51.100.10", 80);
    let port = py_client(&router.ns("lan"), TCP_CLIENT, "198.51.100.10", 80, 1)[0];
    tracer.wait_for("a conntrack-sourced binding", T, |r| {
        for_port(r, "nat_binding", port).is_some()
    });
    let b = for_port(&tracer.events, "nat_binding", port).unwrap();
    assert_eq!(b["source"], "conntrack");
    assert_eq!(b["kind"], "snat");
    assert_eq!(b["port_translated"], true);
    assert!(b.get("hook").is_none());
}

/// Issue 5's NAT families: `serve --nat-netns` counts bindings by kind, port translation,
/// protocol and namespace, and the packets through them.
/// `tracer serve --nat-netns NS` on a free loopback port, once it answers; stopped (SIGTERM)
/// when dropped, so a failed assertion leaves no agent behind.
struct ServeNat {
    child: Child,
    addr: String,
}

impl ServeNat {
    fn start(ns: &str) -> ServeNat {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(tracer_bin())
            .args(["serve", "--listen", &addr, "--nat-netns", ns])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tracer serve");
        let serve = ServeNat { child, addr };
        let deadline = Instant::now() + T;
        while http_get(&serve.addr, "/healthz").is_none() {
            assert!(Instant::now() < deadline, "serve did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        serve
    }
}

impl Drop for ServeNat {
    fn drop(&mut self) {
        let _ = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[test]
fn serve_exports_nat_metrics() {
    if !ready("nat_metrics") {
        return;
    }
    const N: usize = 3;
    let router = Router::up("tn6", "masquerade");
    let ns = router.ns("router");
    let serve = ServeNat::start(&ns);
    let addr = serve.addr.clone();
    let scrape = || http_get(&addr, "/metrics").map(|(_, body)| body);
    let deadline = Instant::now() + T;
    let _server = Py::server(&router.ns("wan"), TCP_SERVER, "198.51.100.10", 80);
    py_client(&router.ns("lan"), TCP_CLIENT, "198.51.100.10", 80, N);
    let series = format!(
        "tracer_nat_bindings_total{{kind=\"snat\",netns=\"{ns}\",port_translated=\"true\",proto=\"tcp\"}} {N}"
    );
    // The router's conntrack table too (read every few seconds): its entries as
    // `conntrack -C` counts them.
    let entries = format!("tracer_nf_conntrack_entries{{netns=\"{ns}\"}} ");
    let counted = Command::new("ip")
        .args(["netns", "exec", &ns, "conntrack", "-C"])
        .output()
        .expect("conntrack -C");
    let counted: u64 = String::from_utf8_lossy(&counted.stdout)
        .trim()
        .parse()
        .unwrap();
    let shown = |body: &str| -> Option<u64> {
        body.lines()
            .find_map(|l| l.strip_prefix(&entries))
            .and_then(|v| v.parse().ok())
    };
    let mut body = String::new();
    while Instant::now() < deadline {
        body = scrape().unwrap_or_default();
        if body.contains(&series) && shown(&body) == Some(counted) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(body.contains(&series), "no {series} in:\n{body}");
    assert_eq!(shown(&body), Some(counted), "conntrack entries:\n{body}");
    assert!(body.contains(&format!(
        "tracer_nf_conntrack_stat_insert_failed{{netns=\"{ns}\"}} 0"
    )));
    assert!(body.contains("# TYPE tracer_nf_conntrack_entries_limit gauge"));
    // The masquerade's pool to the server: its size from the rule (61000-61099), and the
    // connections it held (closed one by one: at least one at a time).
    // (Labels in the order the exposition writes them: by name.)
    let (dest, tail) = (
        format!("destination=\"198.51.100.10:80\",netns=\"{ns}\",proto=\"tcp\""),
        "translated=\"203.0.113.1\"",
    );
    let pool = format!("{dest},{tail}");
    let size = format!("tracer_nat_pool_size{{{dest},range_from=\"nftables\",{tail}}} 100");
    assert!(body.contains(&size), "no {size}:\n{body}");
    let peak: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("tracer_nat_pool_ports_peak{{{pool}}} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=N as u64).contains(&peak), "pool peak {peak}:\n{body}");
    // A real Prometheus scrapes the NAT, conntrack and pool families.
    if tool("nat_metrics", "prometheus", "prometheus") {
        let prom = Prometheus::start(&addr);
        let queries = [
            (
                format!("tracer_nat_bindings_total{{netns=\"{ns}\"}}"),
                N as f64,
            ),
            (format!("tracer_nat_pool_size{{{pool}}}"), 100.0),
            (format!("tracer_nat_pool_ports_peak{{{pool}}}"), peak as f64),
            (
                format!("tracer_nf_conntrack_entries_limit{{netns=\"{ns}\"}} > 0"),
                -1.0,
            ),
        ];
        let deadline = Instant::now() + T;
        for (q, want) in &queries {
            loop {
                let got = prom.value(q);
                if got.is_some_and(|v| *want < 0.0 || v == *want) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "Prometheus: {q} = {got:?}, want {want}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    if tool("nat_metrics", "promtool", "prometheus") {
        let problems = promtool_problems(&body);
        assert!(problems.is_empty(), "{problems}");
    }
    let packets: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("tracer_nat_packets_total{kind=\"snat\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Each connection: handshake, request, response, close — at least 7 packets each way
    // in total, all counted once after the router's last NAT hook.
    assert!(packets >= 7 * N as u64, "{packets} packets:\n{body}");
    drop(serve);
}

/// Questions for `/nat/who` for 8 s, as fast as they go, each connection closed right after its
/// request is sent (the asking future is dropped by the server); prints how many.
const QUESTION_FLOOD: &str = r#"
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
addr, tport = sys.argv[2].rsplit(":", 1)
req = ("GET /nat/who?addr=%s&port=%s HTTP/1.1\r\nHost: x\r\n\r\n" % (addr, tport)).encode()
import time
sent, end = 0, time.monotonic() + 8
while time.monotonic() < end:
    try:
        s = socket.create_connection((host, int(port)), timeout=2)
        s.sendall(req)
        s.shutdown(socket.SHUT_WR)
        s.close()
        sent += 1
    except OSError:
        pass
print("sent", sent, flush=True)
"#;

/// `tracer nat --who … --agent`: a server operator sees only the router's address and port;
/// the agent (`tracer serve --nat-netns`) names the client behind it — process, namespace,
/// own address and port — a minute after the binding ended, asked by an unprivileged user.
#[test]
fn who_finds_the_client_of_a_binding_that_ended_a_minute_ago() {
    if !ready("nat_who") {
        return;
    }
    let router = Router::up("tnw", "masquerade");
    let ns = router.ns("router");
    let serve = ServeNat::start(&ns);
    let addr = serve.addr.clone();
    let mut server = Py::server(&router.ns("wan"), TCP_SERVER, "198.51.100.10", 80);
    let port = py_client(&router.ns("lan"), TCP_CLIENT, "198.51.100.10", 80, 1)[0];
    // All the server's operator knows: the peer it logged.
    let peer = server.line();
    let translated = peer
        .strip_prefix("peer ")
        .expect("the server's peer line")
        .replace(' ', ":");
    // The connection is closed; its conntrack entry goes (as a flush or its timeout would
    // take it): the binding ends.
    let deleted = Command::new("ip")
        .args(["netns", "exec", &ns, "conntrack", "-D", "-p", "tcp"])
        .args(["--orig-port-src", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(deleted.success(), "conntrack -D found no entry for {port}");
    let ask = |who: &str, json: bool| {
        let mut c = as_nobody(tracer_bin().to_str().unwrap());
        c.args(["nat", "--who", who, "--agent", &addr]);
        if json {
            c.arg("--json");
        }
        c.output().expect("tracer nat --who")
    };
    let ended = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["state"] == "ended")
    };
    let deadline = Instant::now() + T;
    while ended(&ask(&translated, true)).is_none() {
        assert!(
            Instant::now() < deadline,
            "the binding never ended at the agent"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(60));
    let json = ask(&translated, true);
    assert!(json.status.success(), "{json:?}");
    let a = ended(&json).expect("still known a minute later");
    assert_eq!(a["asked"], translated.as_str());
    assert_eq!(a["binding"]["netns_name"], ns.as_str());
    assert_eq!(a["binding"]["original"]["sport"], port);
    assert_eq!(a["client"]["comm"], "python3");
    assert_eq!(a["client"]["addr"], "192.0.2.10");
    assert_eq!(a["client"]["port"], port);
    assert_eq!(a["server"]["comm"], "python3");
    assert_eq!(a["server"]["port"], 80);
    // The same answer as a line to read.
    let text = ask(&translated, false);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with("ended ")
            && text.contains("client python3[")
            && text.contains(&format!("at 192.0.2.10:{port}"))
            && text.contains("became 203.0.113.1:"),
        "{text}"
    );
    // An endpoint nobody was behind: said so, status 1; no agent there: status 2.
    let none = ask("203.0.113.1:1", false);
    assert_eq!(none.status.code(), Some(1), "{none:?}");
    assert!(String::from_utf8_lossy(&none.stdout).contains("no binding for 203.0.113.1:1"));
    let nowhere = as_nobody(tracer_bin().to_str().unwrap())
        .args(["nat", "--who", "203.0.113.1", "--agent", "localhost:1"])
        .output()
        .unwrap();
    assert_eq!(nowhere.status.code(), Some(2), "{nowhere:?}");
    // An unprivileged user floods the endpoint with questions it drops at once (each one
    // cancelled as it is sent): the agent's loop answers at most one question per 50 ms, so
    // the flood may keep other askers waiting (503, asked again) but never the agent from its
    // work — scrapes are answered during it — and once it stops, questions are answered.
    let flood = as_nobody("/usr/bin/python3")
        .args(["-c", QUESTION_FLOOD, &addr, &translated])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let scraped = Instant::now();
    let metrics = http_get(&addr, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("tracer_events_lost_total{") && !l.ends_with(" 0")),
        "scraped during the flood, nothing lost: {metrics}"
    );
    assert!(
        scraped.elapsed() < Duration::from_secs(5),
        "{:?}",
        scraped.elapsed()
    );
    let flood = flood.wait_with_output().unwrap();
    assert!(
        ended(&ask(&translated, true)).is_some(),
        "answered after the flood"
    );
    let sent = String::from_utf8_lossy(&flood.stdout);
    assert!(sent.starts_with("sent "), "the flood ran: {sent}");
    drop(serve);
}

/// A connection through the router made before tracer started: found in the router's
/// conntrack table when tracer links in, reported as a binding older than tracer, counted in
/// its pool — as conntrack -L shows it.
#[test]
fn a_binding_older_than_tracer_is_found_in_the_table() {
    if !ready("nat_existing") {
        return;
    }
    let router = Router::up("tne", "masquerade");
    let _server = Py::server(&router.ns("wan"), TCP_SERVER_HOLD, "198.51.100.10", 80);
    let mut client = Py::start(
        &router.ns("lan"),
        TCP_CLIENT_HOLD,
        &["198.51.100.10", "80", "1"],
    );
    assert_eq!(client.line(), "connected 1 failed 0");
    let entries = router.conntrack(&["-p", "tcp", "--orig-dst", "198.51.100.10"]);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let port: u64 = entries[0].0[2].parse().unwrap();
    let mut tracer = start_nat(&router, &[]);
    tracer.wait_for("the binding from the table", T, |r| {
        for_port(r, "nat_binding", port as u16).is_some()
    });
    let (status, records) = tracer.stop_with(libc::SIGINT);
    assert!(status.success());
    let b = for_port(&records, "nat_binding", port as u16).unwrap();
    assert_eq!(b["existing"], true, "{b}");
    assert_eq!(b["source"], "conntrack", "{b}");
    assert_eq!(tuple(&b["original"]), entries[0].0);
    assert_eq!(tuple(&b["reply"]), entries[0].1);
    let pool = of_type(&records, "nat_pool")
        .into_iter()
        .find(|p| p["daddr"] == "198.51.100.10" && p["dport"] == 80)
        .unwrap_or_else(|| panic!("no pool: {records:#?}"));
    assert_eq!(pool["in_use"], 1, "{pool}");
    drop(client);
}

/// Accepts connections and holds them open (reads nothing, closes nothing).
const TCP_SERVER_HOLD: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("ready", flush=True)
held = []
while True:
    c, a = s.accept()
    held.append(c)
"#;
