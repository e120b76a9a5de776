//! TCP health against the real kernel: retransmits, resets and drops between two network
//! namespaces joined by veth, each charged to the process that owns the socket — never to
//! whatever task the CPU was running when the kernel's timer or softirq did the work.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracer_tests::*;

const T: Duration = Duration::from_secs(30);
const CLIENT: &str = "203.0.113.1";
const SERVER: &str = "203.0.113.2";

fn ready(test: &str) -> bool {
    prerequisites(test) && tool(test, "nft", "nftables") && tool(test, "python3", "python3")
}

/// A client namespace and a server namespace joined by a veth pair (203.0.113.1 and .2, a
/// documentation range), gone with the namespaces on drop.
struct Wire {
    client: TestNetns,
    server: TestNetns,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2)");
    assert!(st.success(), "ip {args:?}");
}

impl Wire {
    fn up(tag: &str) -> Wire {
        let client = TestNetns::new(&format!("{tag}c"));
        let server = TestNetns::new(&format!("{tag}s"));
        let a = format!("{tag}{}a", std::process::id() % 100_000);
        let b = format!("{tag}{}b", std::process::id() % 100_000);
        ip(&[
            "link",
            "add",
            &a,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &server.name,
        ]);
        for (ns, dev, addr) in [(&client, &a, CLIENT), (&server, &b, SERVER)] {
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ]);
            ip(&["-n", &ns.name, "link", "set", dev, "up"]);
        }
        Wire { client, server }
    }

    /// Runs an nft script in the server's namespace.
    fn nft(&self, script: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.server.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft -f: {script}");
    }
}

/// Accepts connections and answers each one line; with `rude`, closes each without reading
/// what the client sent (the kernel then resets the connection).
const SERVER_PY: &str = r#"
import socket, sys, time
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(int(sys.argv[3]))
print("ready", flush=True)
if sys.argv[4] == "never-accept":
    time.sleep(600)
while True:
    c, a = s.accept()
    if sys.argv[4] == "rude":
        time.sleep(0.3)  # the client's data is queued, unread
        c.close()
        continue
    c.recv(100)
    c.sendall(b"ok")
    c.close()
"#;

/// Connects, then says how it went: `connected PORT SECONDS`, or the error's name.
const CLIENT_PY: &str = r#"
import errno, socket, sys, time
c = socket.socket()
t = time.monotonic()
try:
    c.connect((sys.argv[1], int(sys.argv[2])))
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
    sys.exit(0)
print("connected", c.getsockname()[1], round(time.monotonic() - t, 3), flush=True)
c.sendall(b"x" * 100)
time.sleep(0.6)
try:
    print("read", len(c.recv(100)), flush=True)
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
"#;

fn events<'a>(records: &'a [Value], name: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["type"] == "event" && r["event"] == name)
        .collect()
}

/// The first SYNs to a port are dropped by a firewall rule, then the rule goes: the client's
/// kernel sends the SYN again after a second, charged to the client; the firewall's drop is
/// reported with the kernel's reason in the server's namespace.
#[test]
fn a_dropped_syn_is_retransmitted_and_charged_to_the_client() {
    if !ready("syn_retransmit") {
        return;
    }
    let wire = Wire::up("hr");
    let addr = format!("127.0.0.1:{}", free_port());
    let _serve = serve(&addr, "8080");
    let mut tracer = Tracer::watch(&["--port", "8080"]);
    let mut server = Py::start(
        &wire.server.name,
        SERVER_PY,
        &[SERVER, "8080", "16", "polite"],
    );
    assert_eq!(server.line(), "ready");
    wire.nft(DROP_SYNS);
    let mut client = Py::start(&wire.client.name, CLIENT_PY, &[SERVER, "8080"]);
    std::thread::sleep(Duration::from_millis(400));
    wire.nft("delete table inet tracer_health");
    let line = client.line();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"connected"), "{line}");
    let port: u64 = fields[1].parse().unwrap();
    let seconds: f64 = fields[2].parse().unwrap();
    assert!(
        seconds >= 0.9,
        "the connect waited for the retransmit: {line}"
    );
    let client_pid = client.pid();
    let server_ns = wire.server.inode();
    tracer.wait_for("the SYN retransmit and the drop", T, |records| {
        let syn = events(records, "retransmit")
            .iter()
            .any(|e| e["retransmit"] == "syn" && e["lport"] == port);
        let dropped = events(records, "drop")
            .iter()
            .any(|e| e["reason"] == "NETFILTER_DROP" && e["netns"] == server_ns);
        syn && dropped
    });
    let syn: Vec<&Value> = events(&tracer.events, "retransmit")
        .into_iter()
        .filter(|e| e["lport"] == port)
        .collect();
    for e in &syn {
        assert_eq!(e["pid"], client_pid, "charged to the client: {e}");
        assert_eq!(e["comm"], "python3", "{e}");
        assert_eq!(e["state"], "SYN_SENT", "{e}");
        assert_eq!(e["netns"], wire.client.inode(), "{e}");
        assert_eq!(e["raddr"], SERVER, "{e}");
        assert_eq!(e["rport"], 8080, "{e}");
    }
    let drop = events(&tracer.events, "drop")
        .into_iter()
        .find(|e| e["reason"] == "NETFILTER_DROP" && e["netns"] == server_ns)
        .unwrap();
    assert_eq!(drop["pid"], Value::Null, "no socket, nobody's: {drop}");
    assert_eq!(drop["laddr"], SERVER, "{drop}");
    assert_eq!(drop["lport"], 8080, "{drop}");
    assert_eq!(drop["rport"], port, "{drop}");
    // The handshake's end carries its latency and the SYNs it took.
    let syn_count = syn.len() as u64;
    tracer.wait_for("the client's handshake", T, |records| {
        events(records, "state")
            .iter()
            .any(|e| e["lport"] == port && e["state"] == "ESTABLISHED")
    });
    let done = events(&tracer.events, "state")
        .into_iter()
        .find(|e| e["lport"] == port && e["state"] == "ESTABLISHED")
        .unwrap();
    assert!(
        done["connect_ns"].as_u64().unwrap() >= 900_000_000,
        "{done}"
    );
    assert_eq!(done["syn_retransmits"].as_u64(), Some(syn_count), "{done}");
    // The server's side of the same handshake: its SYN-ACK's round trip, as the kernel timed it.
    tracer.wait_for("the server's handshake", T, |records| {
        events(records, "state").iter().any(|e| {
            e["rport"] == port && e["old_state"] == "SYN_RECV" && e["state"] == "ESTABLISHED"
        })
    });
    let accepted = events(&tracer.events, "state")
        .into_iter()
        .find(|e| e["rport"] == port && e["old_state"] == "SYN_RECV")
        .unwrap();
    let rtt = accepted["handshake_ns"].as_u64().unwrap_or(0);
    assert!(rtt > 0 && rtt < 1_000_000_000, "{accepted}");
    // The metrics say what the events said, exactly.
    let drops = events(&tracer.events, "drop")
        .iter()
        .filter(|e| e["reason"] == "NETFILTER_DROP")
        .count() as u64;
    let series = [
        (
            r#"tracer_tcp_retransmits_total{family="ipv4",kind="syn",state="SYN_SENT"}"#,
            syn_count,
        ),
        (
            r#"tracer_packet_drops_total{family="ipv4",proto="tcp",reason="NETFILTER_DROP"}"#,
            drops,
        ),
    ];
    for (series, want) in series {
        assert_eq!(settled(&addr, series, want), want, "{series}");
    }
    // `trace` tells the same connect as a story that says why it took a second.
    wire.nft(DROP_SYNS);
    let trace = Command::new(tracer_bin())
        .args(["trace", "--json", "--user", "root", "--"])
        .args(["ip", "netns", "exec", &wire.client.name])
        .args(["python3", "-c", CLIENT_PY, SERVER, "8080"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tracer trace");
    std::thread::sleep(Duration::from_millis(1500));
    wire.nft("delete table inet tracer_health");
    let out = trace.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let story = records
        .iter()
        .find(|r| r["type"] == "socket_story" && r["role"] == "client")
        .unwrap_or_else(|| panic!("the client's story: {records:?}"));
    let steps = story["steps"].as_array().unwrap();
    let retransmit = steps
        .iter()
        .find(|s| s["what"] == "retransmit")
        .unwrap_or_else(|| panic!("a retransmit step: {story}"));
    let text = retransmit["text"].as_str().unwrap();
    assert!(
        text.starts_with("SYN retransmitted (1) — no answer for 1."),
        "{text}"
    );
    assert!(
        story["health"]["syn_retransmits"].as_u64().unwrap() >= 1,
        "{story}"
    );
    assert!(
        story["connect_ns"].as_u64().unwrap() >= 1_000_000_000,
        "{story}"
    );
}

/// Drops every SYN to port 8080 in the server's namespace.
const DROP_SYNS: &str = "table inet tracer_health {\n chain input {\n type filter hook input \
                         priority 0;\n tcp dport 8080 tcp flags syn drop\n }\n}\n";

/// A server closes a connection whose data it never read: its kernel sends a reset, charged
/// to the server; the client's kernel receives it, charged to the client, whose next read
/// fails with ECONNRESET.
#[test]
fn a_server_closing_with_unread_data_resets_the_connection() {
    if !ready("reset_on_close") {
        return;
    }
    let wire = Wire::up("hc");
    let addr = format!("127.0.0.1:{}", free_port());
    let _serve = serve(&addr, "8083");
    let mut tracer = Tracer::watch(&["--port", "8083"]);
    let mut server = Py::start(
        &wire.server.name,
        SERVER_PY,
        &[SERVER, "8083", "16", "rude"],
    );
    assert_eq!(server.line(), "ready");
    let mut client = Py::start(&wire.client.name, CLIENT_PY, &[SERVER, "8083"]);
    let connected = client.line();
    assert!(connected.starts_with("connected "), "{connected}");
    let port: u64 = connected
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(client.line(), "ECONNRESET", "the client's next read");
    let (server_pid, client_pid) = (server.pid(), client.pid());
    tracer.wait_for("the reset, both ends", T, |records| {
        let resets = events(records, "reset");
        resets
            .iter()
            .any(|e| e["reset"] == "sent" && e["rport"] == port)
            && resets
                .iter()
                .any(|e| e["reset"] == "received" && e["lport"] == port)
    });
    let resets = events(&tracer.events, "reset");
    let sent = resets
        .iter()
        .find(|e| e["reset"] == "sent" && e["rport"] == port)
        .unwrap();
    assert_eq!(
        sent["pid"], server_pid,
        "the server's kernel sent it: {sent}"
    );
    assert_eq!(sent["netns"], wire.server.inode(), "{sent}");
    assert_eq!(sent["lport"], 8083, "{sent}");
    assert!(sent["reason"].is_string(), "the kernel's reason: {sent}");
    let received = resets
        .iter()
        .find(|e| e["reset"] == "received" && e["lport"] == port)
        .unwrap();
    assert_eq!(received["pid"], client_pid, "{received}");
    assert_eq!(received["state"], "ESTABLISHED", "{received}");
    assert_eq!(received["netns"], wire.client.inode(), "{received}");
    // One reset each way, counted as such.
    for series in [
        r#"tracer_tcp_resets_total{direction="sent",family="ipv4",state="CLOSE"}"#,
        r#"tracer_tcp_resets_total{direction="received",family="ipv4",state="ESTABLISHED"}"#,
    ] {
        assert_eq!(settled(&addr, series, 1), 1, "{series}");
    }
}

/// A connect to a port nobody listens on: the server's kernel finds no socket (the drop, with
/// its reason NO_SOCKET) and answers with a reset nobody owns; the client receives it in
/// SYN_SENT and its connect fails with ECONNREFUSED. Counted exactly in the metrics.
#[test]
fn a_port_nobody_listens_on_answers_with_a_reset() {
    if !ready("reset_no_listener") || !tool("reset_no_listener", "promtool", "prometheus") {
        return;
    }
    let wire = Wire::up("hn");
    let addr = format!("127.0.0.1:{}", free_port());
    let _serve = serve(&addr, "8081");
    let mut tracer = Tracer::watch(&["--port", "8081"]);
    let before = scrape(&addr);
    const N: u64 = 3;
    let mut pids = Vec::new();
    for _ in 0..N {
        let mut client = Py::start(&wire.client.name, CLIENT_PY, &[SERVER, "8081"]);
        assert_eq!(client.line(), "ECONNREFUSED");
        pids.push(client.pid());
    }
    let server_ns = wire.server.inode();
    tracer.wait_for("resets and drops of every connect", T, |records| {
        let resets = events(records, "reset");
        let received = resets.iter().filter(|e| e["reset"] == "received").count() as u64;
        let sent = resets.iter().filter(|e| e["reset"] == "sent").count() as u64;
        let dropped = events(records, "drop")
            .iter()
            .filter(|e| e["reason"] == "NO_SOCKET" && e["netns"] == server_ns)
            .count() as u64;
        received >= N && sent >= N && dropped >= N
    });
    for e in events(&tracer.events, "reset") {
        if e["reset"] == "received" {
            assert!(pids.contains(&e["pid"].as_u64().unwrap()), "{e}");
            assert_eq!(e["state"], "SYN_SENT", "{e}");
            assert_eq!(e["rport"], 8081, "{e}");
        } else {
            assert_eq!(e["pid"], Value::Null, "no socket sent it: {e}");
            assert_eq!(e["netns"], server_ns, "{e}");
            assert_eq!(e["lport"], 8081, "{e}");
            assert_eq!(e["laddr"], SERVER, "{e}");
        }
    }
    // The metrics count each exactly once.
    let delta = |series: &str| {
        let deadline = Instant::now() + T;
        loop {
            let d = metric(&scrape(&addr), series) - metric(&before, series);
            if d >= N || Instant::now() > deadline {
                return d;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert_eq!(
        delta(r#"tracer_tcp_resets_total{direction="received",family="ipv4",state="SYN_SENT"}"#),
        N
    );
    assert_eq!(
        delta(r#"tracer_tcp_resets_total{direction="sent",family="ipv4",state="CLOSE"}"#),
        N
    );
    assert_eq!(
        delta(r#"tracer_packet_drops_total{family="ipv4",proto="tcp",reason="NO_SOCKET"}"#),
        N
    );
    assert!(promtool_problems(&scrape(&addr)).is_empty());
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// Opens 20 connections at once without waiting for any, then holds them.
const FLOOD_PY: &str = r#"
import socket, sys, time
socks = []
for i in range(20):
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex((sys.argv[1], int(sys.argv[2])))
    socks.append(c)
print("sent", flush=True)
time.sleep(float(sys.argv[3]))
"#;

/// A listener with backlog 1 that never accepts, flooded by 20 connects: the kernel refuses
/// the rest (SYNs dropped without a drop reason: only the listener's own counter knows),
/// reported for that listener and its owner; the clients' SYNs are sent again; `ports`
/// shows the queue as `ss` does (Recv-Q 2 waiting, Send-Q the backlog 1).
#[test]
fn a_full_accept_queue_refuses_connections_charged_to_its_listener() {
    if !ready("listen_overflow") || !tool("listen_overflow", "promtool", "prometheus") {
        return;
    }
    let wire = Wire::up("hq");
    let addr = format!("127.0.0.1:{}", free_port());
    let _serve = serve(&addr, "8082");
    let mut tracer = Tracer::watch(&["--port", "8082"]);
    let mut server = Py::start(
        &wire.server.name,
        SERVER_PY,
        &[SERVER, "8082", "1", "never-accept"],
    );
    assert_eq!(server.line(), "ready");
    let mut flood = Py::start(&wire.client.name, FLOOD_PY, &[SERVER, "8082", "8"]);
    assert_eq!(flood.line(), "sent");
    let server_pid = server.pid();
    tracer.wait_for("an overflow of the listener", T, |records| {
        records
            .iter()
            .any(|r| r["type"] == "listen_overflow" && r["lport"] == 8082)
    });
    let overflow = tracer
        .events
        .iter()
        .find(|r| r["type"] == "listen_overflow")
        .unwrap()
        .clone();
    assert_eq!(
        overflow["pid"], server_pid,
        "the listener's owner: {overflow}"
    );
    assert_eq!(overflow["comm"], "python3", "{overflow}");
    assert_eq!(overflow["netns"], wire.server.inode(), "{overflow}");
    assert_eq!(overflow["backlog"], 1, "{overflow}");
    assert_eq!(overflow["full"], true, "{overflow}");
    assert_eq!(
        overflow["queue"], 2,
        "backlog + 1 wait, as the kernel allows: {overflow}"
    );
    assert!(overflow["dropped"].as_u64().unwrap() >= 1, "{overflow}");
    tracer.wait_for("the clients' SYNs sent again", T, |records| {
        events(records, "retransmit")
            .iter()
            .any(|e| e["retransmit"] == "syn" && e["pid"] == flood.pid())
    });
    let ports = tracer_json(&["ports", "--json", "--netns", &wire.server.name]);
    let row = ports
        .iter()
        .find(|r| r["type"] == "socket" && r["lport"] == 8082 && r["state"] == "LISTEN")
        .expect("the listener in ports");
    assert_eq!(
        (row["recv_q"].as_u64(), row["send_q"].as_u64()),
        (Some(2), Some(1)),
        "{row}"
    );
    assert_eq!(row["pid"], server_pid, "{row}");
    // Once the clients are gone the listener's own count stops; the metric says the same
    // number (serve saw the listener start: every drop is one it saw).
    drop(flood);
    let ss = Command::new("ip")
        .args([
            "netns",
            "exec",
            &wire.server.name,
            "ss",
            "-tlnmH",
            "sport",
            "= :8082",
        ])
        .output()
        .expect("ss");
    let ss = String::from_utf8_lossy(&ss.stdout);
    let drops: u64 = ss
        .split(['(', ',', ')'])
        .find_map(|f| f.trim().strip_prefix('d')?.parse().ok())
        .unwrap_or_else(|| panic!("ss -m shows the listener's drops: {ss}"));
    let series = r#"tracer_listen_overflows_total{comm="python3",port="8082"}"#;
    let deadline = Instant::now() + T;
    let counted = loop {
        let counted = metric(&scrape(&addr), series);
        if counted >= drops || Instant::now() > deadline {
            break counted;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(counted, drops, "{series} against ss -m");
    let text = scrape(&addr);
    assert!(
        text.contains("tracer_tcp_connect_seconds_bucket{family=\"ipv4\",result=\"established\""),
        "the connect histogram"
    );
    assert!(
        text.contains("tracer_listen_queue_length{comm=\"python3\",container=\"host\",port=\"8082\",proto=\"tcp\"} 2")
    );
    assert!(promtool_problems(&text).is_empty());
}

/// `tracer serve` on `addr`, only port `port`, stopped on drop.
fn serve(addr: &str, port: &str) -> KillOnDrop {
    let child = Command::new(tracer_bin())
        .args(["serve", "--listen", addr, "--port", port])
        .stderr(Stdio::null())
        .spawn()
        .expect("tracer serve");
    let serve = KillOnDrop(child);
    scrape(addr);
    serve
}

/// `/metrics` once it answers.
fn scrape(addr: &str) -> String {
    let deadline = Instant::now() + T;
    loop {
        if let Some((200, body)) = http_get(addr, "/metrics") {
            return body;
        }
        assert!(Instant::now() < deadline, "serve never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A series' value once it reaches `want` (or after a while: what it is then).
fn settled(addr: &str, series: &str, want: u64) -> u64 {
    let deadline = Instant::now() + T;
    loop {
        let now = metric(&scrape(addr), series);
        if now >= want || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A series' value in an exposition (0 when absent).
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or(0)
}
