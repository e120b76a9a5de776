//! `tracer trace` against the real kernel: the story of a server, a client, UDP, children,
//! a running process, and commands that fail.
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracer_tests::*;

const T: Duration = Duration::from_secs(20);

/// Traced commands run as the unprivileged test user: tracer refuses to run them as root
/// unless asked (`--user root`), and nothing here needs root.
const AS_NOBODY: [&str; 2] = ["--user", "nobody"];

/// A running `tracer trace --json …`: its JSON records; other lines (the traced command's own
/// output on the shared stdout) are kept apart.
struct Trace {
    child: Child,
    lines: mpsc::Receiver<String>,
    records: Vec<Value>,
    other: Vec<String>,
}

impl Trace {
    fn start(args: &[&str]) -> Trace {
        let mut child = Command::new(tracer_bin())
            .args(["trace", "--json"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tracer trace");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut trace = Trace {
            child,
            lines,
            records: Vec::new(),
            other: Vec::new(),
        };
        trace.wait_for("trace_start", |r| {
            r.iter().any(|v| v["type"] == "trace_start")
        });
        trace
    }

    fn take(&mut self, line: String) {
        match serde_json::from_str::<Value>(&line) {
            Ok(v) if v.get("type").is_some() => self.records.push(v),
            _ => self.other.push(line),
        }
    }

    fn wait_for(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + T;
        while !done(&self.records) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) => self.take(line),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => panic!(
                    "no {what}: {:#?}\nother output: {:?}",
                    self.records, self.other
                ),
            }
        }
    }

    fn send_stdin(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for tracer to exit on its own (the command ended); returns its exit code.
    fn finish(mut self) -> (i32, Vec<Value>, Vec<String>) {
        let deadline = Instant::now() + T;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "tracer trace did not end");
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.take(line);
        }
        (status.code().unwrap_or(-1), self.records, self.other)
    }

    fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

fn stories(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["type"] == "socket_story")
        .collect()
}

fn steps<'a>(story: &'a Value, what: &str) -> Vec<&'a Value> {
    story["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["what"] == what)
        .collect()
}

/// `curl -w`: (local port, request bytes, header bytes, body bytes).
fn curl(url: &str) -> (u64, u64, u64, u64) {
    let out = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-w"])
        .arg("%{local_port} %{size_request} %{size_header} %{size_download}")
        .arg(url)
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl {url}");
    let text = String::from_utf8(out.stdout).unwrap();
    let n: Vec<u64> = text
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    (n[0], n[1], n[2], n[3])
}

/// ① socket ② bind ③ listen ④ accept ×2 with the clients' ports, the handshake, bytes that
/// match the HTTP sizes, and the close — for `python3 -m http.server`.
#[test]
fn python_http_server_story() {
    if !prerequisites("python_http_server_story")
        || !tool("python_http_server_story", "python3", "python3")
        || !tool("python_http_server_story", "curl", "curl")
    {
        return;
    }
    let port = free_port();
    let port_arg = port.to_string();
    let trace = Trace::start(&[
        AS_NOBODY[0],
        AS_NOBODY[1],
        "--",
        // By path: `python3` on root's PATH may be a shim only root can read.
        "/usr/bin/python3",
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &port_arg,
    ]);
    let deadline = Instant::now() + T;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "python's server never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The probe connection above is a story too; the two fetches are what we check.
    let url = format!("http://127.0.0.1:{port}/");
    let fetches = [curl(&url), curl(&url)];
    std::thread::sleep(Duration::from_millis(300));
    trace.signal(libc::SIGTERM); // passed on to python, which exits; then tracer ends
    let (code, records, _) = trace.finish();
    assert_eq!(
        code,
        128 + libc::SIGTERM,
        "python's own ending (killed by SIGTERM)"
    );
    let all = stories(&records);
    let listener = all
        .iter()
        .find(|s| s["role"] == "listener")
        .unwrap_or_else(|| panic!("no listener story: {all:#?}"));
    assert_eq!(listener["comm"], "python3");
    assert_eq!(listener["lport"], port);
    let order: Vec<&str> = listener["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["what"].as_str().unwrap())
        .collect();
    assert_eq!(&order[..3], ["socket", "bind", "listen"], "{order:?}");
    let bind = &steps(listener, "bind")[0]["text"];
    assert_eq!(bind, &format!("bind 127.0.0.1:{port} (registered port)"));
    assert_eq!(
        steps(listener, "listen")[0]["text"],
        "listen backlog 5 → LISTEN"
    );
    let accepts: Vec<String> = steps(listener, "accept")
        .iter()
        .map(|s| s["text"].as_str().unwrap().to_string())
        .collect();
    for (client_port, request, header, body) in fetches {
        assert!(
            accepts
                .iter()
                .any(|a| a.contains(&format!("127.0.0.1:{client_port} "))),
            "an accept from {client_port}: {accepts:?}"
        );
        let conn = all
            .iter()
            .find(|s| s["role"] == "accepted" && s["rport"] == client_port)
            .unwrap_or_else(|| panic!("no story for the connection from {client_port}"));
        assert_eq!(conn["listener"], listener["id"]);
        assert_eq!(steps(conn, "handshake").len(), 1, "SYN_RECV → ESTABLISHED");
        assert_eq!(conn["data"]["received_bytes"], request, "the request");
        assert_eq!(conn["data"]["sent_bytes"], header + body, "the response");
        // HTTP/1.0 style: python closes after its response, curl after reading it; which FIN
        // leaves first is a race. Whoever sent it keeps TIME_WAIT.
        let first = conn["closed_first_by"].as_str().expect("who closed first");
        assert!(["this side", "peer"].contains(&first), "{first}");
        assert_eq!(conn["time_wait"], first, "{conn:#}");
        assert_eq!(conn["lifetime"], "short-lived");
        assert!(!steps(conn, "close").is_empty());
    }
    let program = records
        .iter()
        .find(|r| r["type"] == "program" && r["comm"] == "python3")
        .expect("program summary");
    assert_eq!(
        program["connections_accepted"], 3,
        "the probe and two fetches"
    );
    assert_eq!(
        program["listening"],
        serde_json::json!([format!("tcp 127.0.0.1:{port} (registered)")])
    );
}

/// A client: socket, connect with the ephemeral port the server's accept saw, bytes, close;
/// the program summary lists that port.
#[test]
fn curl_client_story() {
    if !prerequisites("curl_client_story") || !tool("curl_client_story", "curl", "curl") {
        return;
    }
    let mut server = Driver::spawn(&["http-servers", "127.0.0.1", "1"]);
    server.go();
    let port = server.report()["ports"][0].as_u64().unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let trace = Trace::start(&[
        AS_NOBODY[0],
        AS_NOBODY[1],
        "--",
        "curl",
        "-sf",
        "-o",
        "/dev/null",
        "-w",
        "%{local_port} %{size_request} %{size_header} %{size_download}\n",
        &url,
    ]);
    let (code, records, other) = trace.finish();
    assert_eq!(code, 0);
    let accepted_port = server.report()["accepted_peer_port"].as_u64().unwrap();
    let curl: Vec<u64> = other
        .iter()
        .find(|l| l.split_whitespace().count() == 4)
        .expect("curl's -w line")
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let all = stories(&records);
    assert_eq!(all.len(), 1, "one socket: {all:#?}");
    let client = all[0];
    assert_eq!(client["role"], "client");
    assert_eq!(client["comm"], "curl");
    assert_eq!(
        client["lport"], accepted_port,
        "the port the server's accept reported"
    );
    assert_eq!(client["lport"], curl[0]);
    assert_eq!(client["ephemeral"], true);
    assert_eq!(client["rport"], port);
    let connect = &steps(client, "connect")[0]["text"];
    assert!(
        connect.as_str().unwrap().contains(&format!(
            "ephemeral 127.0.0.1:{accepted_port} chosen by the kernel"
        )),
        "{connect}"
    );
    assert_eq!(client["data"]["sent_bytes"], curl[1]);
    assert_eq!(client["data"]["received_bytes"], curl[2] + curl[3]);
    assert!(!steps(client, "handshake").is_empty());
    let program = records.iter().find(|r| r["type"] == "program").unwrap();
    assert_eq!(
        program["ephemeral_ports"],
        serde_json::json!([accepted_port])
    );
    assert_eq!(program["connections_made"], 1);
    let end = records.iter().find(|r| r["type"] == "trace_end").unwrap();
    assert_eq!(end["exit_code"], 0);
    assert_eq!(end["lost"], 0);
}

/// UDP: no connect, no accept; datagrams with their peers; the client's autobind port.
#[test]
fn udp_story() {
    if !prerequisites("udp_story") {
        return;
    }
    let driver = sockdriver_bin();
    let mut trace = Trace::start(&[
        AS_NOBODY[0],
        AS_NOBODY[1],
        "--",
        driver.to_str().unwrap(),
        "udp",
        "127.0.0.1",
    ]);
    trace.send_stdin("go\n");
    let (code, records, _) = trace.finish();
    assert_eq!(code, 0);
    // sockdriver's own report went to the shared stdout.
    let report = records
        .iter()
        .find(|r| r.get("client_port").is_some())
        .cloned()
        .unwrap_or_default();
    let all = stories(&records);
    let udp: Vec<&&Value> = all.iter().filter(|s| s["proto"] == "udp").collect();
    assert_eq!(udp.len(), 2, "{all:#?}");
    for s in &udp {
        assert_eq!(s["role"], "udp");
        assert!(steps(s, "connect").is_empty() && steps(s, "accept").is_empty());
        assert_eq!(s["data"]["sends"], 1);
        assert_eq!(s["data"]["receives"], 1);
        assert_eq!(s["data"]["sent_bytes"], 4);
        assert_eq!(s["data"]["received_bytes"], 4);
    }
    let client = udp
        .iter()
        .find(|s| !steps(s, "autobind").is_empty())
        .unwrap();
    let server = udp
        .iter()
        .find(|s| steps(s, "autobind").is_empty())
        .unwrap();
    if let Some(port) = report["client_port"].as_u64() {
        assert_eq!(client["lport"], port);
    }
    assert_eq!(client["ephemeral"], true);
    let server_peer = format!("127.0.0.1:{}", server["lport"]);
    assert_eq!(client["peers"], serde_json::json!([server_peer]));
    let client_peer = format!("127.0.0.1:{}", client["lport"]);
    assert_eq!(server["peers"], serde_json::json!([client_peer]));
}

/// A shell forking two clients: both children's sockets are in the story, an outsider's not.
#[test]
fn children_are_followed() {
    if !prerequisites("children_are_followed") || !tool("children_are_followed", "curl", "curl") {
        return;
    }
    let mut server = Driver::spawn(&["http-servers", "127.0.0.1", "1"]);
    server.go();
    let port = server.report()["ports"][0].as_u64().unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let script = format!("curl -sf -o /dev/null {url} & curl -sf -o /dev/null {url} & wait");
    let trace = Trace::start(&[AS_NOBODY[0], AS_NOBODY[1], "--", "sh", "-c", &script]);
    let mut outsider = Driver::spawn(&["tcp-client", "127.0.0.1", &port.to_string()]);
    outsider.go();
    outsider.report();
    let opid = outsider.pid as u64;
    outsider.wait();
    let (code, records, _) = trace.finish();
    assert_eq!(code, 0);
    let all = stories(&records);
    let clients: Vec<&&Value> = all.iter().filter(|s| s["role"] == "client").collect();
    assert_eq!(clients.len(), 2, "{all:#?}");
    let mut pids: Vec<u64> = clients.iter().map(|s| s["pid"].as_u64().unwrap()).collect();
    pids.dedup();
    assert_eq!(pids.len(), 2, "two curl processes");
    assert!(clients.iter().all(|s| s["comm"] == "curl"));
    assert!(
        all.iter().all(|s| s["pid"] != opid),
        "the outsider is not in the story"
    );
}

/// `--pid` on a server that is already running: its listening socket is in the story (from
/// the snapshot) and later accepts follow; the trace ends when the process exits.
#[test]
fn pid_of_a_running_server() {
    if !prerequisites("pid_of_a_running_server") {
        return;
    }
    let mut server = Driver::spawn(&["serve-forever", "127.0.0.1"]);
    server.go();
    let port = server.report()["port"].as_u64().unwrap();
    let trace = Trace::start(&["--pid", &server.pid.to_string()]);
    let mut client = Driver::spawn(&["tcp-client", "127.0.0.1", &port.to_string()]);
    client.go();
    let client_port = client.report()["local_port"].as_u64().unwrap();
    client.wait();
    server.report(); // accepted
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    let (_, records, _) = trace.finish();
    let all = stories(&records);
    let listener = all
        .iter()
        .find(|s| s["predates_trace"] == true && s["lport"] == port)
        .unwrap_or_else(|| panic!("no story for the existing listener: {all:#?}"));
    assert_eq!(steps(listener, "snapshot").len(), 1);
    let accepts = steps(listener, "accept");
    assert_eq!(accepts.len(), 1, "{listener:#}");
    assert!(accepts[0]["text"]
        .as_str()
        .unwrap()
        .contains(&format!("127.0.0.1:{client_port} ")));
    let conn = all
        .iter()
        .find(|s| s["role"] == "accepted" && s["rport"] == client_port)
        .expect("the accepted connection");
    assert_eq!(conn["data"]["received_bytes"], 5, "the client's hello");
}

/// A command that cannot start, and one that exits before any socket: a clear message and the
/// child's exit status.
#[test]
fn failing_commands() {
    if !prerequisites("failing_commands") {
        return;
    }
    let run = |args: &[&str]| {
        let out = Command::new(tracer_bin())
            .arg("trace")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--user", "nobody", "--", "/nonexistent/tracer-test-command"]);
    assert_eq!(code, 127, "{err}");
    assert!(
        err.contains("cannot run /nonexistent/tracer-test-command"),
        "{err}"
    );
    let (code, err) = run(&["--user", "nobody", "--", "sh", "-c", "exit 3"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("sh exited with status 3 before opening any socket"),
        "{err}"
    );
    let (code, err) = run(&[]);
    assert_eq!(code, 1);
    assert!(err.contains("trace what?"), "{err}");
}
