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
    let mut tracer = Tracer::watch(&["--port", "8080"]);
    let mut server = Py::start(
        &wire.server.name,
        SERVER_PY,
        &[SERVER, "8080", "16", "polite"],
    );
    assert_eq!(server.line(), "ready");
    wire.nft(
        "table inet tracer_health {\n chain input {\n type filter hook input priority 0;\n \
         tcp dport 8080 tcp flags syn drop\n }\n}\n",
    );
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
}

/// A server closes a connection whose data it never read: its kernel sends a reset, charged
/// to the server; the client's kernel receives it, charged to the client, whose next read
/// fails with ECONNRESET.
#[test]
fn a_server_closing_with_unread_data_resets_the_connection() {
    if !ready("reset_on_close") {
        return;
    }
    let wire = Wire::up("hc");
    let mut tracer = Tracer::watch(&["--port", "8080"]);
    let mut server = Py::start(
        &wire.server.name,
        SERVER_PY,
        &[SERVER, "8080", "16", "rude"],
    );
    assert_eq!(server.line(), "ready");
    let mut client = Py::start(&wire.client.name, CLIENT_PY, &[SERVER, "8080"]);
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
    assert_eq!(sent["lport"], 8080, "{sent}");
    assert!(sent["reason"].is_string(), "the kernel's reason: {sent}");
    let received = resets
        .iter()
        .find(|e| e["reset"] == "received" && e["lport"] == port)
        .unwrap();
    assert_eq!(received["pid"], client_pid, "{received}");
    assert_eq!(received["state"], "ESTABLISHED", "{received}");
    assert_eq!(received["netns"], wire.client.inode(), "{received}");
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
    let serve = Command::new(tracer_bin())
        .args(["serve", "--listen", &addr, "--port", "8081"])
        .stderr(Stdio::null())
        .spawn()
        .expect("tracer serve");
    let _serve = KillOnDrop(serve);
    let mut tracer = Tracer::watch(&["--port", "8081"]);
    let scrape = || -> String {
        let deadline = Instant::now() + T;
        loop {
            if let Some((200, body)) = http_get(&addr, "/metrics") {
                return body;
            }
            assert!(Instant::now() < deadline, "serve never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let before = scrape();
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
        let value = |text: &str| {
            text.lines()
                .find(|l| l.starts_with(series))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let deadline = Instant::now() + T;
        loop {
            let d = value(&scrape()) - value(&before);
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
    assert!(promtool_problems(&scrape()).is_empty());
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}
