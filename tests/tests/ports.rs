//! `tracer ports`, the start-up snapshot and the ephemeral-port story against the real kernel.
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracer_tests::*;

const T: Duration = Duration::from_secs(20);

fn of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

fn owner_pids(row: &Value) -> Vec<u64> {
    row["owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["pid"].as_u64().unwrap())
        .collect()
}

/// A server started before tracer: `ports` names its process (and the forked child that
/// shares its socket); `watch` attributes connections the kernel builds from it to it.
#[test]
fn server_started_before_tracer() {
    if !prerequisites("server_started_before_tracer") {
        return;
    }
    let mut server = Driver::spawn(&["serve-forever", "127.0.0.1"]);
    server.go();
    let r = server.report();
    let port = r["port"].as_u64().unwrap();
    let child = r["child"].as_u64().unwrap();
    let port_arg = port.to_string();

    let rows = tracer_json(&["ports", "--json", "--port", &port_arg]);
    let listener = of_type(&rows, "socket")
        .into_iter()
        .find(|r| r["lport"] == port && r["state"] == "LISTEN")
        .unwrap_or_else(|| panic!("no listener on {port}: {rows:#?}"));
    assert_eq!(listener["comm"], "sockdriver");
    assert_eq!(listener["laddr"], "127.0.0.1");
    assert_eq!(listener["listening"], true);
    let mut owners = owner_pids(listener);
    owners.sort();
    let mut expected = vec![server.pid as u64, child];
    expected.sort();
    assert_eq!(owners, expected, "both processes holding the socket");
    let class = if port >= 49152 {
        "dynamic"
    } else {
        "registered"
    };
    assert_eq!(listener["lport_class"], class);

    // The human table names it too.
    let table = Command::new(tracer_bin())
        .args(["ports", "--listening", "--port", &port_arg])
        .output()
        .unwrap();
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with("PROTO LADDR"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(&format!(" {port} ")) && l.contains("sockdriver")),
        "{text}"
    );

    let mut tracer = Tracer::watch(&["--port", &port_arg]);
    let mut client = Driver::spawn(&["tcp-client", "127.0.0.1", &port_arg]);
    client.go();
    let c = client.report();
    client.wait();
    let client_port = c["local_port"].as_u64().unwrap();
    let spid = server.pid as u64;
    tracer.wait_for("the accepted connection", T, |ev| {
        ev.iter()
            .any(|e| e["event"] == "accept" && e["pid"] == spid && e["rport"] == client_port)
    });
    let (_, records) = tracer.stop_with(libc::SIGINT);
    server.kill();
    let snapshot = of_type(&records, "snapshot");
    assert_eq!(snapshot.len(), 1, "one snapshot record");
    assert!(snapshot[0]["sockets"].as_u64().unwrap() >= 1);
    // The handshake runs in softirq: only the snapshot can say whose listener this is.
    let syn_recv = records
        .iter()
        .find(|e| {
            e["event"] == "state"
                && e["old_state"] == "LISTEN"
                && e["state"] == "SYN_RECV"
                && e["rport"] == client_port
        })
        .unwrap_or_else(|| panic!("no LISTEN -> SYN_RECV: {records:#?}"));
    assert_eq!(syn_recv["pid"], spid, "attributed to the server");
    assert_eq!(syn_recv["comm"], "sockdriver");
    assert_eq!(syn_recv["lport"], port);
}

/// The ephemeral range of a namespace narrowed to 8 ports: connections until connect fails
/// with EADDRNOTAVAIL; usage reaches 100 %, the warning fires past 80 %, the errno is shown.
#[test]
fn ephemeral_port_exhaustion() {
    if !prerequisites("ephemeral_port_exhaustion") {
        return;
    }
    for path in Hooks::BOTH {
        ephemeral_port_exhaustion_on(path);
    }
}

/// A connect the kernel could give no port: the syscall path sees its EADDRNOTAVAIL; both
/// paths see the attempt end (SYN_SENT → CLOSE) with no local port ever assigned and no error
/// on the socket, which tracer names EADDRNOTAVAIL.
fn got_no_port(path: Hooks, e: &Value) -> bool {
    let transition = e["event"] == "state"
        && e["old_state"] == "SYN_SENT"
        && e["state"] == "CLOSE"
        && e["lport"] == 0
        && e["errno"] == "EADDRNOTAVAIL";
    match path {
        Hooks::Syscalls => transition || (e["event"] == "connect" && e["errno"] == "EADDRNOTAVAIL"),
        Hooks::Sockets => transition,
    }
}

fn ephemeral_port_exhaustion_on(path: Hooks) {
    let netns = TestNetns::new("exhaust");
    netns.sysctl("net.ipv4.ip_local_port_range=40000 40007");
    let mut tracer = path.watch(&["--netns", &netns.name]);
    let mut driver = Driver::spawn_in_netns(&netns.name, &["exhaust", "127.0.0.1", "5000"]);
    driver.go();
    let r = driver.report();
    let dpid = driver.pid as u64;
    assert_eq!(r["errno"], 99, "EADDRNOTAVAIL: {r}");
    let ports: Vec<u64> = r["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(ports.len(), 8);
    tracer.wait_for("the warning and the failed connect", T, |ev| {
        ev.iter().any(|e| e["type"] == "ephemeral_warning")
            && ev.iter().any(|e| got_no_port(path, e))
    });
    driver.wait();
    let (_, records) = tracer.stop_with(libc::SIGINT);
    let inode = netns.inode();

    let warnings = of_type(&records, "ephemeral_warning");
    assert_eq!(
        warnings.len(),
        2,
        "one warning for the crossing, one for the failed connect: {warnings:#?}"
    );
    let w = warnings[0];
    assert_eq!(w["netns"], inode);
    assert_eq!(
        (
            w["proto"].as_str(),
            w["scope"].as_str(),
            w["laddr"].as_str(),
            w["raddr"].as_str(),
            w["rport"].as_u64()
        ),
        (
            Some("tcp"),
            Some("destination"),
            Some("127.0.0.1"),
            Some("127.0.0.1"),
            Some(5000)
        )
    );
    assert_eq!(w["processes"], serde_json::json!(["sockdriver"]));
    assert_eq!(
        (&warnings[1]["failed"], &warnings[1]["headroom"]),
        (&1.into(), &0.into())
    );
    assert_eq!(w["range"], serde_json::json!([40000, 40007]));
    assert_eq!(w["range_size"], 8);
    assert_eq!(w["in_use"], 7, "7 of 8 = 87.5 %, the first count past 80 %");
    assert_eq!(w["percent"], 87.5);

    let report = of_type(&records, "ephemeral")
        .into_iter()
        .find(|u| u["netns"] == inode && u["rport"] == 5000)
        .unwrap_or_else(|| panic!("no usage report: {records:#?}"));
    assert_eq!(report["peak"], 8, "usage reached 100 %");
    assert_eq!(report["failed"], 1, "the connect that found no port");
    assert_eq!(
        report["below_iana_dynamic"], 8,
        "all of 40000-40007 lies below 49152"
    );

    let connects: Vec<&Value> = records
        .iter()
        .filter(|e| e["event"] == "connect" && e["pid"] == dpid)
        .collect();
    let succeeded = |e: &&&Value| match path {
        Hooks::Syscalls => e["ret"] == 0,
        // A socket hook's connect is the SYN going out: every one got its port.
        Hooks::Sockets => e["ret"].is_null(),
    };
    let mut used: Vec<u64> = connects
        .iter()
        .filter(succeeded)
        .map(|e| e["lport"].as_u64().unwrap())
        .collect();
    used.sort();
    let mut expected = ports.clone();
    expected.sort();
    assert_eq!(used, expected, "every connection's kernel-chosen port");
    assert!(connects
        .iter()
        .filter(succeeded)
        .all(|e| e["lport_kernel_chosen"] == true && e["lport_in_ephemeral_range"] == true));
    let failed = records
        .iter()
        .find(|e| e["pid"] == dpid && got_no_port(path, e) && e["event"] == "state")
        .expect("the failed connect's transition");
    assert_eq!(
        (&failed["raddr"], &failed["rport"]),
        (&"127.0.0.1".into(), &5000.into())
    );
    if path.syscalls() {
        let call = records
            .iter()
            .find(|e| e["pid"] == dpid && e["event"] == "connect" && e["errno"] == "EADDRNOTAVAIL")
            .expect("the failed connect call");
        assert_eq!(call["ret"], -99);
    }
}

/// The kernel's rule for connect(): a local port is unique per destination, so a range of 8
/// ports gives 8 connections to each of two servers (16 in all, every port used twice). Tracer
/// counts the same way: a peak of 8 per destination, the second destination not reported near
/// exhaustion while the first fills, and each failed connect named with its destination.
#[test]
fn ephemeral_ports_are_counted_per_destination() {
    if !prerequisites("ephemeral_ports_are_counted_per_destination") {
        return;
    }
    let netns = TestNetns::new("perdest");
    netns.sysctl("net.ipv4.ip_local_port_range=40000 40007");
    let mut tracer = Hooks::Sockets.watch(&["--netns", &netns.name]);
    let mut driver =
        Driver::spawn_in_netns(&netns.name, &["exhaust-two", "127.0.0.1", "5001", "5002"]);
    driver.go();
    let r = driver.report();
    assert_eq!(
        r["errnos"],
        serde_json::json!([99, 99]),
        "EADDRNOTAVAIL each: {r}"
    );
    let ports = |i: usize| -> Vec<u64> {
        let mut p: Vec<u64> = r["ports"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        p.sort();
        p
    };
    let all: Vec<u64> = (40000..=40007).collect();
    assert_eq!(ports(0), all, "8 connections to the first server");
    assert_eq!(ports(1), all, "and the same 8 ports again to the second");
    let failed = |ev: &[Value], rport: u64| {
        ev.iter()
            .any(|e| e["type"] == "ephemeral_warning" && e["rport"] == rport && e["failed"] == 1)
    };
    tracer.wait_for("both failures", T, |ev| {
        failed(ev, 5001) && failed(ev, 5002)
    });
    driver.wait();
    let (_, records) = tracer.stop_with(libc::SIGINT);
    let warnings = of_type(&records, "ephemeral_warning");
    let shown: Vec<(u64, u64, u64, u64)> = warnings
        .iter()
        .map(|w| {
            let n = |k: &str| w[k].as_u64().unwrap();
            (n("rport"), n("in_use"), n("headroom"), n("failed"))
        })
        .collect();
    // In order: the first server crosses 80 % (7 of 8), its connect fails; then the second.
    assert_eq!(
        shown,
        vec![
            (5001, 7, 1, 0),
            (5001, 8, 0, 1),
            (5002, 7, 1, 0),
            (5002, 8, 0, 1)
        ],
        "{warnings:#?}"
    );
    for w in &warnings {
        assert_eq!(w["scope"], "destination");
        assert_eq!(w["processes"], serde_json::json!(["sockdriver"]));
    }
    let report: Vec<&Value> = of_type(&records, "ephemeral")
        .into_iter()
        .filter(|u| u["netns"] == netns.inode())
        .collect();
    for rport in [5001, 5002] {
        let u = report
            .iter()
            .find(|u| u["rport"] == rport)
            .unwrap_or_else(|| panic!("no report for {rport}: {report:#?}"));
        assert_eq!((&u["peak"], &u["failed"]), (&8.into(), &1.into()), "{u}");
    }
}

/// A client that closes first leaves a TIME_WAIT socket holding its port for that destination
/// (60 s with `tcp_tw_reuse` 0): tracer keeps the port counted after the socket is gone, as
/// `ss` shows it, and names the process that closed.
#[test]
fn time_wait_keeps_the_port_and_names_who_closed() {
    if !prerequisites("time_wait_keeps_the_port_and_names_who_closed")
        || !tool(
            "time_wait_keeps_the_port_and_names_who_closed",
            "python3",
            "python3",
        )
    {
        return;
    }
    let netns = TestNetns::new("twait");
    netns.sysctl("net.ipv4.tcp_tw_reuse=0");
    let tracer = Hooks::Sockets.watch(&["--netns", &netns.name]);
    let out = Command::new("ip")
        .args(["netns", "exec", &netns.name, "python3", "-c"])
        .arg(
            "import socket\n\
             l = socket.socket(); l.bind(('127.0.0.1', 7070)); l.listen(1)\n\
             c = socket.create_connection(('127.0.0.1', 7070)); s, _ = l.accept()\n\
             print(c.getsockname()[1], flush=True)\n\
             c.close(); s.recv(1); s.close()\n\
             import time; time.sleep(0.3)",
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let port: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let (_, records) = tracer.stop_with(libc::SIGINT);
    let u = of_type(&records, "ephemeral")
        .into_iter()
        .find(|u| u["rport"] == 7070)
        .unwrap_or_else(|| panic!("no usage for 127.0.0.1:7070: {records:#?}"));
    assert_eq!(
        (&u["in_use"], &u["time_wait"]),
        (&1.into(), &1.into()),
        "{u}"
    );
    assert_eq!(u["processes"], serde_json::json!(["python3"]));
    // The kernel agrees: the client's port is in TIME_WAIT.
    let ss = Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns.name,
            "ss",
            "-tanH",
            "state",
            "time-wait",
        ])
        .output()
        .unwrap();
    let ss = String::from_utf8_lossy(&ss.stdout);
    assert!(ss.contains(&format!("127.0.0.1:{port}")), "{ss}");
}

/// The allocation rules tracer's counting rests on, checked on this kernel with a range of
/// four ports — and tracer counting by them:
/// - a socket bound to an address with `IP_BIND_ADDRESS_NO_PORT` has no port until connect()
///   chooses one, per destination like any connect();
/// - with every port of the range connected to one destination, `bind()` to port 0 finds none
///   (it passes over ports connections hold): the exclusive scope's headroom is 0;
/// - UDP's autobind takes a port exclusively (UDP's own port space): a fifth socket finds none.
#[test]
fn ephemeral_rules_hold_on_this_kernel() {
    if !prerequisites("ephemeral_rules_hold_on_this_kernel")
        || !tool("ephemeral_rules_hold_on_this_kernel", "python3", "python3")
    {
        return;
    }
    let netns = TestNetns::new("rules");
    netns.sysctl("net.ipv4.ip_local_port_range=40000 40003");
    let tracer = Hooks::Sockets.watch(&["--netns", &netns.name]);
    let r = run_in(&netns, RULES);
    // The kernel's side.
    assert_eq!(r["no_port_after_bind"], 0, "{r}");
    assert_eq!(r["tcp_ports"].as_array().unwrap().len(), 4, "{r}");
    assert_eq!(
        r["bind0_errno"], 98,
        "bind(0) with the range connected: EADDRINUSE: {r}"
    );
    assert_eq!(r["udp_ports"].as_array().unwrap().len(), 4, "{r}");
    assert_eq!(r["udp5_errno"], 11, "a fifth UDP autobind: EAGAIN: {r}");
    // tracer's.
    let (_, records) = tracer.stop_with(libc::SIGINT);
    let find = |proto: &str, scope: &str| ephemeral_record(&records, netns.inode(), proto, scope);
    let dest = find("tcp", "destination");
    assert_eq!(
        (&dest["rport"], &dest["peak"]),
        (&5000.into(), &4.into()),
        "{dest}"
    );
    let udp = find("udp", "exclusive");
    assert_eq!(udp["peak"], 4, "{udp}");
}

/// A Python script run in the namespace; the JSON it prints.
fn run_in(netns: &TestNetns, script: &str) -> Value {
    let out = Command::new("ip")
        .args(["netns", "exec", &netns.name, "python3", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The final `ephemeral` record of a namespace for (protocol, scope).
fn ephemeral_record(records: &[Value], inode: u64, proto: &str, scope: &str) -> Value {
    let report: Vec<&Value> = of_type(records, "ephemeral")
        .into_iter()
        .filter(|u| u["netns"] == inode)
        .collect();
    report
        .iter()
        .find(|u| u["proto"] == proto && u["scope"] == scope)
        .map(|u| (*u).clone())
        .unwrap_or_else(|| panic!("no {proto} {scope} record: {report:#?}"))
}

const RULES: &str = r#"
import errno, json, socket
IP_BIND_ADDRESS_NO_PORT = 24
srv = socket.socket(); srv.bind(("127.0.0.1", 5000)); srv.listen(16)
held = []
s = socket.socket()
s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
s.bind(("127.0.0.1", 0))
no_port = s.getsockname()[1]
s.connect(("127.0.0.1", 5000)); held.append(s)
for _ in range(3):
    c = socket.create_connection(("127.0.0.1", 5000)); held.append(c)
tcp_ports = [c.getsockname()[1] for c in held]
b = socket.socket()
try:
    b.bind(("0.0.0.0", 0)); bind0 = 0
except OSError as e:
    bind0 = e.errno
udp = []
for _ in range(4):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b"x", ("127.0.0.1", 9)); udp.append(u)
u5 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u5.sendto(b"x", ("127.0.0.1", 9)); udp5 = 0
except OSError as e:
    udp5 = e.errno
print(json.dumps({"no_port_after_bind": no_port, "tcp_ports": tcp_ports, "bind0_errno": bind0,
                  "udp_ports": [u.getsockname()[1] for u in udp], "udp5_errno": udp5}))
"#;

/// The rest of the allocation rules, on this kernel, in a range of 4 ports (40000-40003):
/// - `SO_REUSEADDR`: bind(0) still takes a port of its own (a fifth finds none); a port named
///   in bind() is shared by sockets that all set it — tracer counts it once (ports, not
///   sockets).
/// - UDP `connect()` autobinds exclusively, like a first `sendto`: four connected sockets to
///   four destinations hold four ports, a fifth finds none (EAGAIN). Only the syscall path sees
///   those ports while they are held: no socket hook runs after the autobind.
/// - `tcp_tw_reuse` 2 (the default): a loopback TIME_WAIT port is not reused at once (connect
///   fails, EADDRNOTAVAIL) but is a second or so later (with TCP timestamps, on here);
///   tracer holds it about 2 s (released at its next sweep).
///
/// Each with tracer's figures beside the kernel's.
#[test]
fn more_ephemeral_rules_hold_on_this_kernel() {
    if !prerequisites("more_ephemeral_rules_hold_on_this_kernel")
        || !tool(
            "more_ephemeral_rules_hold_on_this_kernel",
            "python3",
            "python3",
        )
    {
        return;
    }
    for hooks in Hooks::BOTH {
        more_rules_on(hooks);
    }
}

fn more_rules_on(hooks: Hooks) {
    let netns = TestNetns::new("rules2");
    netns.sysctl("net.ipv4.ip_local_port_range=40000 40003");
    netns.sysctl("net.ipv4.tcp_tw_reuse=2");
    netns.sysctl("net.ipv4.tcp_timestamps=1");
    let tracer = hooks.watch(&["--netns", &netns.name]);
    let r = run_in(&netns, MORE_RULES);
    // The kernel's side.
    assert_eq!(
        r["reuseaddr_bind0_5_errno"], 98,
        "SO_REUSEADDR does not let bind(0) share: a fifth finds none, EADDRINUSE: {r}"
    );
    assert_eq!(
        r["named_shared"],
        serde_json::json!([40001, 40001, 40001]),
        "{r}"
    );
    assert_eq!(
        r["plain_named_errno"], 98,
        "the named port is shared only with SO_REUSEADDR: {r}"
    );
    assert_eq!(r["udp_connected_ports"].as_array().unwrap().len(), 4, "{r}");
    assert_eq!(
        r["udp_connect5_errno"], 11,
        "a fifth UDP connect: EAGAIN: {r}"
    );
    assert_eq!(
        r["tw_at_once_errno"], 99,
        "TIME_WAIT not reused at once: {r}"
    );
    assert_eq!(
        r["tw_later_errno"], 0,
        "TIME_WAIT reused a little later: {r}"
    );
    // tracer's.
    let (_, records) = tracer.stop_with(libc::SIGINT);
    let find = |proto: &str, scope: &str| ephemeral_record(&records, netns.inode(), proto, scope);
    let tcp = find("tcp", "exclusive");
    assert_eq!(
        tcp["peak"], 4,
        "four bind(0)s; the shared named port once: {tcp}"
    );
    if hooks.syscalls() {
        // No socket hook runs after a UDP connect()'s autobind (the cgroup connect hook runs
        // before it, and a connected socket's send has no address for sendmsg4): only the
        // syscall path sees those ports while they are held.
        let udp = find("udp", "exclusive");
        assert_eq!(udp["peak"], 4, "{udp}");
    }
    // The TIME_WAIT case: one failure to its destination, and the later connect counted.
    let dest = find("tcp", "destination");
    assert_eq!(dest["rport"], 5001, "{dest}");
    assert_eq!(dest["failed"], 1, "the connect made at once: {dest}");
    assert_eq!(dest["peak"], 4, "{dest}");
}

const MORE_RULES: &str = r#"
import errno, json, socket, time
def bind0(reuse):
    s = socket.socket()
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s
held = [bind0(True) for _ in range(4)]
try:
    bind0(True); reuse5 = 0
except OSError as e:
    reuse5 = e.errno
for s in held:
    s.close()
# A port named in bind(): sockets that all set SO_REUSEADDR share it.
named = []
for _ in range(3):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 40001)); named.append(s)
try:
    s = socket.socket(); s.bind(("127.0.0.1", 40001)); plain = 0
except OSError as e:
    plain = e.errno
reuse_ports = [s.getsockname()[1] for s in named]
time.sleep(0.2)
for s in named:
    s.close()
udp = []
for i in range(4):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(("127.0.0.1", 9 + i))
    u.send(b"x"); udp.append(u)
u5 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u5.connect(("127.0.0.1", 20)); udp5 = 0
except OSError as e:
    udp5 = e.errno
udp_ports = [u.getsockname()[1] for u in udp]
for u in udp:
    u.close()
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 5001)); srv.listen(16)
conns = []
for _ in range(4):
    c = socket.create_connection(("127.0.0.1", 5001)); a, _ = srv.accept(); conns.append((c, a))
for c, a in conns:
    c.close()      # the client closes first: its port goes to TIME_WAIT
    a.close()
time.sleep(0.2)
def attempt():
    c = socket.socket()
    try:
        c.connect(("127.0.0.1", 5001)); srv.accept()[0].close(); c.close(); return 0
    except OSError as e:
        return e.errno
at_once = attempt()
time.sleep(2.5)
later = attempt()
print(json.dumps({"reuseaddr_bind0_5_errno": reuse5, "named_shared": reuse_ports,
                  "plain_named_errno": plain,
                  "udp_connected_ports": udp_ports, "udp_connect5_errno": udp5,
                  "tw_at_once_errno": at_once, "tw_later_errno": later}))
"#;

/// `ss -tnp` lines of established connections: (local port, remote port, pid, comm).
fn ss_connections() -> Vec<(u64, u64, u64, String)> {
    let out = Command::new("ss")
        .args(["-Htnp", "state", "established"])
        .output()
        .expect("ss (iproute2)");
    let mut rows = Vec::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Recv-Q Send-Q Local:Port Peer:Port users:(("comm",pid=N,fd=M))
        if cols.len() < 5 {
            continue;
        }
        let port = |s: &str| s.rsplit(':').next().unwrap().parse::<u64>().unwrap();
        let users = cols[4];
        let comm = users.split('"').nth(1).unwrap_or("").to_string();
        let pid = users
            .split("pid=")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        rows.push((port(cols[2]), port(cols[3]), pid, comm));
    }
    rows
}

/// Headless Chromium opens tabs to three local HTTP servers: every connection appears with
/// the chromium process that made it and its own ephemeral port, as `ss -tnp` sees them.
#[test]
fn browser_tabs_get_their_own_ephemeral_ports() {
    if !prerequisites("browser_tabs_get_their_own_ephemeral_ports")
        || !tool(
            "browser_tabs_get_their_own_ephemeral_ports",
            "chromium",
            "chromium",
        )
        || !tool("browser_tabs_get_their_own_ephemeral_ports", "curl", "curl")
    {
        return;
    }
    let mut servers = Driver::spawn(&["http-servers", "127.0.0.1", "3"]);
    servers.go();
    let ports: Vec<u64> = servers.report()["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    let port_args: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    let mut watch_args = Vec::new();
    for p in &port_args {
        watch_args.extend(["--port", p.as_str()]);
    }
    let mut tracer = Tracer::watch(&watch_args);

    // Private (mode 0700, a random name), removed on drop.
    let profile = tempfile::Builder::new()
        .prefix("tracer-chromium-")
        .tempdir()
        .unwrap();
    let debug_port = 19000 + (std::process::id() % 1000) as u16;
    let mut chromium = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--remote-debugging-port={debug_port}"),
            "about:blank",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start chromium");
    struct Browser(u32, #[allow(dead_code)] tempfile::TempDir);
    impl Drop for Browser {
        fn drop(&mut self) {
            unsafe { libc::kill(-(self.0 as i32), libc::SIGKILL) };
        }
    }
    let _browser = Browser(chromium.id(), profile);

    // One tab per server, opened through the DevTools HTTP endpoint (headless Chromium takes
    // one URL on its command line).
    for port in &ports {
        let url = format!("http://127.0.0.1:{debug_port}/json/new?http://127.0.0.1:{port}/");
        let deadline = Instant::now() + T;
        loop {
            let st = Command::new("curl")
                .args(["-sf", "-X", "PUT", &url, "-o", "/dev/null"])
                .status()
                .unwrap();
            if st.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromium's DevTools endpoint never answered"
            );
            assert!(chromium.try_wait().unwrap().is_none(), "chromium exited");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // Every tab connected (its connect reached ESTABLISHED).
    let wanted = ports.clone();
    tracer.wait_for("a connection to every server", T, |ev| {
        wanted.iter().all(|p| {
            ev.iter()
                .any(|e| e["event"] == "state" && e["rport"] == *p && e["state"] == "ESTABLISHED")
        })
    });
    // Let the pages finish (favicon requests may add connections), then look at both at once.
    std::thread::sleep(Duration::from_secs(2));
    let mut ports_args = vec!["ports", "--json"];
    for p in &port_args {
        ports_args.extend(["--port", p.as_str()]);
    }
    let rows = tracer_json(&ports_args);
    let ss = ss_connections();
    let (_, records) = tracer.stop_with(libc::SIGINT);

    let client_side = |rport: u64| ports.contains(&rport);
    let mut from_ss: Vec<(u64, u64, u64, String)> = ss
        .into_iter()
        .filter(|(_, rport, _, _)| client_side(*rport))
        .collect();
    from_ss.sort();
    let mut from_tracer: Vec<(u64, u64, u64, String)> = of_type(&rows, "socket")
        .into_iter()
        .filter(|r| r["state"] == "ESTABLISHED" && client_side(r["rport"].as_u64().unwrap()))
        .map(|r| {
            (
                r["lport"].as_u64().unwrap(),
                r["rport"].as_u64().unwrap(),
                r["pid"].as_u64().unwrap_or(0),
                r["comm"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    from_tracer.sort();
    assert!(from_ss.len() >= 3, "a connection per tab: {from_ss:?}");
    assert_eq!(from_tracer, from_ss, "tracer ports and ss -tnp agree");
    let mut local_ports: Vec<u64> = from_ss.iter().map(|c| c.0).collect();
    local_ports.dedup();
    assert_eq!(
        local_ports.len(),
        from_ss.len(),
        "each connection its own local port"
    );
    let (lo, hi) = ephemeral_range();
    for (lport, rport, pid, comm) in &from_ss {
        assert!(comm.starts_with("chrom"), "{comm}");
        assert!((lo as u64..=hi as u64).contains(lport));
        // watch saw the same connection made by the same process, the port chosen by the
        // kernel.
        let connect = records
            .iter()
            .find(|e| e["event"] == "connect" && e["lport"] == *lport && e["rport"] == *rport)
            .unwrap_or_else(|| panic!("watch missed the connect from port {lport}"));
        assert_eq!(connect["pid"], *pid, "the chromium process that made it");
        assert_eq!(connect["lport_kernel_chosen"], true);
    }
    servers.finish();
    servers.kill();
}

/// A command in a real terminal: a detached tmux session of `width`×`height`, killed on drop.
struct Terminal(String);

impl Terminal {
    fn start(tag: &str, width: u16, height: u16, command: &str) -> Terminal {
        let session = format!("tracer-{tag}-{}", std::process::id());
        let st = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session])
            .args(["-x", &width.to_string(), "-y", &height.to_string(), command])
            .status()
            .unwrap();
        assert!(st.success());
        Terminal(session)
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").args(args).output().expect("tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        self.tmux(&["send-keys", "-t", &self.0, keys]);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.0])
    }

    /// Waits until the screen shows what `done` looks for; returns how long that took.
    fn wait(&self, what: &str, timeout: Duration, done: &dyn Fn(&str) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if done(&s) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "screen never showed {what}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

/// `ports --live` in a real terminal (tmux at 80x24): a new socket shows within a second, `q`
/// exits and gives the terminal back.
#[test]
fn live_view_in_a_terminal() {
    if !prerequisites("live_view_in_a_terminal") || !tool("live_view_in_a_terminal", "tmux", "tmux")
    {
        return;
    }
    let command = format!(
        "{} ports --live; echo TRACER-EXITED-$?; sleep 60",
        tracer_bin().display()
    );
    let term = Terminal::start("live", 80, 24, &command);
    let session = term.0.clone();
    let tmux = |args: &[&str]| term.tmux(args);
    let screen = || term.screen();
    let wait_screen =
        |what: &str, timeout: Duration, done: &dyn Fn(&str) -> bool| term.wait(what, timeout, done);
    wait_screen("the live view", T, &|s| s.contains("tracer ports --live"));
    tmux(&["send-keys", "-t", &session, "2"]); // the Sockets tab
    wait_screen("the sockets tab", T, &|s| s.contains("PROTO LOCAL"));

    // Only sockdriver's listeners (the host may have thousands of sockets).
    tmux(&["send-keys", "-t", &session, "/listen sockdriver", "Enter"]);
    wait_screen("the filter", T, &|s| {
        s.contains("filter: listen sockdriver")
    });

    let mut server = Driver::spawn(&["serve-forever", "127.0.0.1"]);
    server.go();
    let port = server.report()["port"].as_u64().unwrap();
    let needle = format!("127.0.0.1:{port} ");
    let took = wait_screen("the new listener", T, &|s| s.contains(&needle));
    assert!(
        took < Duration::from_secs(1),
        "the socket took {took:?} to show"
    );
    let s = screen();
    assert!(s.lines().count() <= 24 && s.lines().all(|l| l.chars().count() <= 80));
    let row = s.lines().find(|l| l.contains(&needle)).unwrap().to_string();
    assert!(
        row.contains("LISTEN") && row.contains("sockdriver"),
        "{row}"
    );

    server.kill();
    tmux(&["send-keys", "-t", &session, "q"]);
    wait_screen("tracer exiting", T, &|s| s.contains("TRACER-EXITED-"));
    let s = screen();
    assert!(s.contains("TRACER-EXITED-0"), "exit status: {s}");
    assert!(
        !s.contains("tracer ports --live"),
        "the alternate screen is gone: {s}"
    );
    assert_eq!(
        tmux(&["display", "-p", "-t", &session, "#{alternate_on}"]).trim(),
        "0"
    );
    assert_eq!(
        tmux(&["display", "-p", "-t", &session, "#{cursor_flag}"]).trim(),
        "1"
    );
}

/// `watch --group-by remote`: three clients to one server, one group with three connections,
/// each from its own kernel-chosen port, each with its process.
#[test]
fn watch_groups_connections_by_remote_endpoint() {
    if !prerequisites("watch_groups_connections_by_remote_endpoint") {
        return;
    }
    let mut server = Driver::spawn(&["serve-forever", "127.0.0.1"]);
    server.go();
    let port = server.report()["port"].as_u64().unwrap();
    let port_arg = port.to_string();
    let mut tracer = Tracer::watch(&["--group-by", "remote", "--port", &port_arg]);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = Driver::spawn(&["tcp-client", "127.0.0.1", &port_arg]);
        client.go();
        let r = client.report();
        clients.push((client.pid as u64, r["local_port"].as_u64().unwrap()));
        client.wait();
        server.report(); // accepted
    }
    std::thread::sleep(Duration::from_millis(300));
    tracer.wait_for("nothing (events are grouped, not printed)", T, |_| true);
    let (_, records) = tracer.stop_with(libc::SIGINT);
    server.kill();
    assert!(of_type(&records, "event").is_empty(), "no per-event lines");
    let groups = of_type(&records, "remote");
    assert_eq!(groups.len(), 1, "{groups:#?}");
    let g = groups[0];
    assert_eq!(
        (g["raddr"].as_str(), g["rport"].as_u64()),
        (Some("127.0.0.1"), Some(port))
    );
    assert_eq!(g["connections"], 3);
    assert_eq!(g["local_ports"], 3);
    let mut seen: Vec<(u64, u64)> = g["locals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(l["ephemeral"], true);
            assert_eq!(l["comm"], "sockdriver");
            (l["pid"].as_u64().unwrap(), l["lport"].as_u64().unwrap())
        })
        .collect();
    seen.sort();
    clients.sort();
    assert_eq!(seen, clients);
}

/// A real pre-forking server (nginx: a master and three workers sharing one listener) started
/// after `ports --live`: each connection a worker accepted shows that worker alone, the pid
/// `ss -tnp` names — not the master and every worker (issue 14, item 12).
#[test]
fn live_view_names_the_nginx_worker_that_accepted() {
    let test = "live_view_names_the_nginx_worker_that_accepted";
    if !prerequisites(test) || !tool(test, "tmux", "tmux") || !tool(test, "nginx", "nginx") {
        return;
    }
    let port = tracer_tests::free_port();
    // A private directory (mode 0700), not a predictable path in /tmp.
    let tmp = tempfile::Builder::new()
        .prefix("tracer-nginx-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "worker_processes 3;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               keepalive_timeout 120s;\n\
               server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
        ),
    )
    .unwrap();

    struct Nginx(Option<std::process::Child>);
    impl Drop for Nginx {
        fn drop(&mut self) {
            if let Some(nginx) = self.0.as_mut() {
                // SIGTERM: the master stops its workers and waits for them (SIGKILL would
                // orphan them, still holding the test's port and inherited descriptors).
                unsafe { libc::kill(nginx.id() as i32, libc::SIGTERM) };
                let _ = nginx.wait();
            }
        }
    }
    let mut cleanup = Nginx(None);
    let term = Terminal::start(
        "nginx",
        120,
        30,
        &format!(
            "{} ports --live --port {port}; sleep 60",
            tracer_bin().display()
        ),
    );
    let wait_screen = |what: &str, done: &dyn Fn(&str) -> bool| {
        term.wait(what, T, done);
        term.screen()
    };
    wait_screen("the live view", &|s| s.contains("tracer ports --live"));
    term.keys("2"); // the Sockets tab
    wait_screen("the sockets tab", &|s| s.contains("PROTO LOCAL"));

    // nginx starts after tracer: its listener, its workers and their accepts are seen live.
    let nginx = Command::new("nginx")
        .args(["-c", conf.to_str().unwrap(), "-p", &d.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx");
    cleanup.0 = Some(nginx);
    let listening = format!("127.0.0.1:{port} ");
    wait_screen("nginx's listener", &|s| {
        s.lines()
            .any(|l| l.contains(&listening) && l.contains("LISTEN"))
    });
    // Five kept-alive HTTP/1.1 connections, each answered (so a worker accepted it).
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        std::io::Write::write_all(&mut c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut reply = [0u8; 256];
        let n = std::io::Read::read(&mut c, &mut reply).unwrap();
        assert!(String::from_utf8_lossy(&reply[..n]).contains("200 OK"));
        clients.push(c);
    }
    let client_ports: Vec<u64> = clients
        .iter()
        .map(|c| u64::from(c.local_addr().unwrap().port()))
        .collect();
    // What ss says: the worker holding each accepted connection.
    let ss: Vec<(u64, u64)> = ss_connections()
        .into_iter()
        .filter(|(lport, rport, _, comm)| {
            *lport == u64::from(port) && client_ports.contains(rport) && comm == "nginx"
        })
        .map(|(_, rport, pid, _)| (rport, pid))
        .collect();
    assert_eq!(ss.len(), 5, "ss -tnp shows nginx's five connections");
    // The server side of a connection: local endpoint nginx's, remote the client's.
    let server_row = |screen: &str, rport: u64| -> Option<String> {
        let local = format!("127.0.0.1:{port}");
        let remote = format!("127.0.0.1:{rport}");
        screen
            .lines()
            .find(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.get(1) == Some(&local.as_str()) && cols.get(2) == Some(&remote.as_str())
            })
            .map(str::to_string)
    };
    let s = wait_screen("the five accepted connections", &|s| {
        ss.iter()
            .all(|(rport, _)| server_row(s, *rport).is_some_and(|row| row.contains("ESTABLISHED")))
    });
    for (rport, pid) in &ss {
        let row = server_row(&s, *rport).unwrap();
        assert!(
            row.contains(&format!(" {pid}/nginx ")),
            "connection from port {rport}: ss names worker {pid} alone, the live view shows {row:?}"
        );
    }
    drop(clients);
    term.keys("q");
}

/// Ports are named from the system's services database (`discard` for 9/udp); on a machine
/// without one (hidden here by an empty tmpfs over /etc, in a mount namespace of its own)
/// they are simply unnamed: no error.
#[test]
fn ports_are_named_by_the_services_database_when_there_is_one() {
    if !prerequisites("ports_are_named_by_the_services_database_when_there_is_one") {
        return;
    }
    let socket = std::net::UdpSocket::bind("127.0.0.1:9").expect("bind 127.0.0.1:9 as root");
    let service_of_9 = |out: &std::process::Output| -> Value {
        assert!(
            out.status.success(),
            "tracer ports failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        rows.iter()
            .find(|r| r["lport"] == 9 && r["proto"] == "udp")
            .unwrap_or_else(|| panic!("no udp :9 row in {rows:?}"))["lport_service"]
            .clone()
    };
    let named = Command::new(tracer_bin())
        .args(["ports", "--json", "--port", "9"])
        .output()
        .unwrap();
    assert_eq!(service_of_9(&named), "discard");
    let script = format!(
        "mount -t tmpfs none /etc && exec {} ports --json --port 9",
        tracer_bin().display()
    );
    let without = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(service_of_9(&without), Value::Null);
    drop(socket);
}
