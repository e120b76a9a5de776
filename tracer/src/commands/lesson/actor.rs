//! The lessons' scenarios: small real programs (`tracer __lesson-actor SCENARIO --report
//! FILE`), traced by `tracer trace` like any other. Each makes the calls the notes' tables
//! list, in their order, on loopback, and writes what its own calls returned (fds,
//! `getsockname`, `accept`'s and `recvfrom`'s peers, byte counts) to the report: the lesson
//! checks the kernel's values against them.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use serde_json::{json, Value};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The scenarios, by name.
pub const SCENARIOS: [&str; 5] = ["tcp", "udp", "tabs", "two", "http"];

/// What the `http` scenario's client sends per phase (requests), and the long-lived socket's
/// messages each way.
pub const REQUESTS: usize = 3;
pub const MESSAGES: usize = 10;

/// Parallel connections the `tabs` scenario holds at once (one per "browser tab").
pub const TABS: usize = 4;

/// How long a scenario may take at most: a call that waits for a peer that never comes (a
/// connection another user slipped in ahead of the scenario's own) ends the run instead of
/// holding the lesson forever.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `scenario`, writes its report to `report`; the exit code.
pub fn run(scenario: &str, report: &std::path::Path) -> i32 {
    std::thread::spawn(|| {
        std::thread::sleep(DEADLINE);
        eprintln!("lesson actor: the scenario did not finish in {DEADLINE:?}");
        std::process::exit(124);
    });
    // The loopback scenarios run in a network namespace of their own: no other user can
    // connect to (or send to) their sockets, and the range the kernel chooses from is read
    // where it chooses.
    let private = !scenario.starts_with("nat-");
    let range = if private {
        match own_loopback() {
            Ok(range) => Some(range),
            Err(e) => {
                eprintln!("lesson actor: a private network namespace: {e}");
                return 1;
            }
        }
    } else {
        None
    };
    let observed = match scenario {
        "tcp" => tcp(),
        "udp" => udp(),
        "tabs" => tabs(),
        "two" => two(),
        "http" => http(),
        other => match other.split(',').collect::<Vec<_>>()[..] {
            // The NAT lesson's ends, run inside its namespaces:
            // `nat-server,ADDR,PORT,COUNT` and `nat-client,ADDR,PORT,DEST,DPORT`.
            ["nat-server", addr, port, count] => nat_server(addr, port, count, report),
            ["nat-client", addr, port, dest, dport] => nat_client(addr, port, dest, dport),
            _ => Err(format!("no scenario {scenario:?}")),
        },
    };
    let observed = observed.map(|mut v| {
        if let Some((low, high)) = range {
            v["range"] = json!([low, high]);
        }
        v
    });
    match observed {
        Ok(v) => match std::fs::write(report, v.to_string()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("lesson actor: writing {}: {e}", report.display());
                1
            }
        },
        Err(e) => {
            eprintln!("lesson actor: {scenario}: {e}");
            1
        }
    }
}

fn loopback(port: u16) -> SockAddr {
    SockAddr::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

fn port_of(s: &Socket) -> Result<u16, String> {
    s.local_addr()
        .map_err(|e| e.to_string())?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| "not an inet socket".to_string())
}

fn err(call: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{call}: {e}")
}

/// The notes' TCP server ①–⑥ and client ①–④ in one process: the server on a thread, the
/// client on another. The client sends "hello", the server answers "world", the client closes
/// first (it keeps TIME_WAIT), the server reads the end and closes.
fn tcp() -> Result<Value, String> {
    // ① socket ② bind (port 0: the kernel chooses, so the lesson never collides with a
    // server already on this machine) ③ listen
    let listener =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(err("socket"))?;
    listener.bind(&loopback(0)).map_err(err("bind"))?;
    listener.listen(16).map_err(err("listen"))?;
    let port = port_of(&listener)?;
    let listen_fd = listener.as_raw_fd();
    let server = std::thread::spawn(move || -> Result<Value, String> {
        // ④ accept ⑤ read/write ⑥ close
        let (conn, peer) = listener.accept().map_err(err("accept"))?;
        let accept_fd = conn.as_raw_fd();
        let peer = peer.as_socket().map(|a| a.to_string()).unwrap_or_default();
        let mut conn: std::net::TcpStream = conn.into();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).map_err(err("read"))?;
        conn.write_all(b"world").map_err(err("write"))?;
        // The client closes first: read until its FIN (0 bytes).
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).map_err(err("read"))?;
        drop(conn);
        drop(listener);
        Ok(
            json!({"listen_fd": listen_fd, "port": port, "accept_fd": accept_fd, "peer": peer, "read": 5, "wrote": 5}),
        )
    });
    // The client: ① socket ② connect ③ write/read ④ close
    let client =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(err("socket"))?;
    let client_fd = client.as_raw_fd();
    client.connect(&loopback(port)).map_err(err("connect"))?;
    let local_port = port_of(&client)?;
    let mut client: std::net::TcpStream = client.into();
    client.write_all(b"hello").map_err(err("write"))?;
    let mut buf = [0u8; 5];
    client.read_exact(&mut buf).map_err(err("read"))?;
    drop(client);
    let server = server
        .join()
        .map_err(|_| "the server thread panicked".to_string())??;
    Ok(json!({
        "server": server,
        "client": {"fd": client_fd, "local_port": local_port, "server_port": port, "wrote": 5, "read": 5},
    }))
}

/// The notes' UDP server ①–④ and client ①–③: no connection. The server binds, the client
/// sends without binding (the kernel binds it at its first sendto), the server replies to the
/// address recvfrom named.
fn udp() -> Result<Value, String> {
    let server =
        Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err("socket"))?;
    server.bind(&loopback(0)).map_err(err("bind"))?;
    let port = port_of(&server)?;
    let server_fd = server.as_raw_fd();
    let client =
        Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err("socket"))?;
    let client_fd = client.as_raw_fd();
    client
        .send_to(b"ping", &loopback(port))
        .map_err(err("sendto"))?;
    let autobound = port_of(&client)?;
    let server: std::net::UdpSocket = server.into();
    let mut buf = [0u8; 16];
    let (n, from) = server.recv_from(&mut buf).map_err(err("recvfrom"))?;
    server.send_to(b"pong", from).map_err(err("sendto"))?;
    let client: std::net::UdpSocket = client.into();
    let (m, _) = client.recv_from(&mut buf).map_err(err("recvfrom"))?;
    drop(client);
    drop(server);
    Ok(json!({
        "server": {"fd": server_fd, "port": port, "received": n, "from": from.to_string(), "replied": 4},
        "client": {"fd": client_fd, "autobound_port": autobound, "sent": 4, "received": m},
    }))
}

/// Several "browser tabs": one program holds TABS connections to one server at once, each
/// from its own port the kernel chose.
fn tabs() -> Result<Value, String> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(err("bind"))?;
    let port = listener.local_addr().map_err(err("getsockname"))?.port();
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..TABS {
        let tab = std::net::TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .map_err(err("connect"))?;
        ports.push(tab.local_addr().map_err(err("getsockname"))?.port());
        let (accepted, _) = listener.accept().map_err(err("accept"))?;
        held.push((tab, accepted));
    }
    // All open at once, then closed: each tab's port was its own the whole time.
    drop(held);
    Ok(json!({"server_port": port, "tab_ports": ports}))
}

/// Two clients of one server: one listener and two accepted sockets share the server's port;
/// each client sends a message of its own length, so which socket got which shows.
fn two() -> Result<Value, String> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(err("bind"))?;
    let port = listener.local_addr().map_err(err("getsockname"))?.port();
    let mut sides = Vec::new();
    for message in [&b"one"[..], &b"two!!"[..]] {
        let mut client =
            std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(err("connect"))?;
        let (mut accepted, peer) = listener.accept().map_err(err("accept"))?;
        client.write_all(message).map_err(err("write"))?;
        let mut buf = vec![0u8; message.len()];
        accepted.read_exact(&mut buf).map_err(err("read"))?;
        sides.push(json!({
            "client_fd": client.as_raw_fd(),
            "client_port": client.local_addr().map_err(err("getsockname"))?.port(),
            "accepted_fd": accepted.as_raw_fd(),
            "peer": peer.to_string(),
            "bytes": message.len(),
        }));
        // Both held open until the end: three sockets on the server's port at once.
        std::mem::forget((client, accepted));
    }
    Ok(json!({"listen_fd": listener.as_raw_fd(), "port": port, "clients": sides}))
}

/// The notes' "HTTP vs socket": HTTP/1.0 (a connection per request, the server closes after
/// each answer), HTTP/1.1 keep-alive (the requests on one connection), and a long-lived
/// socket carrying small messages both ways. Each kind on a server port of its own.
fn http() -> Result<Value, String> {
    let servers: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(err("bind")))
        .collect::<Result<_, _>>()?;
    let ports: Vec<u16> = servers
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()).map_err(err("getsockname")))
        .collect::<Result<_, _>>()?;
    let mut threads = Vec::new();
    for (kind, server) in servers.into_iter().enumerate() {
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            match kind {
                // One request per connection: answer, close.
                0 => {
                    for _ in 0..REQUESTS {
                        let (mut c, _) = server.accept().map_err(err("accept"))?;
                        read_request(&mut c)?;
                        c.write_all(answer).map_err(err("write"))?;
                    }
                }
                // Keep-alive: every request on one connection.
                1 => {
                    let (mut c, _) = server.accept().map_err(err("accept"))?;
                    for _ in 0..REQUESTS {
                        read_request(&mut c)?;
                        c.write_all(answer).map_err(err("write"))?;
                    }
                    let mut rest = Vec::new();
                    let _ = c.read_to_end(&mut rest);
                }
                // A long-lived socket: echo each message.
                _ => {
                    let (mut c, _) = server.accept().map_err(err("accept"))?;
                    let mut buf = [0u8; 8];
                    for _ in 0..MESSAGES {
                        c.read_exact(&mut buf).map_err(err("read"))?;
                        c.write_all(&buf).map_err(err("write"))?;
                    }
                    let mut rest = Vec::new();
                    let _ = c.read_to_end(&mut rest);
                }
            }
            Ok(())
        }));
    }
    let request = b"GET / HTTP/1.1\r\nHost: lesson\r\n\r\n";
    let mut reply = [0u8; 40];
    let answer_len = 40usize;
    // HTTP/1.0 style: a new connection (and a new port) for each request.
    for _ in 0..REQUESTS {
        let mut c = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, ports[0]))
            .map_err(err("connect"))?;
        c.write_all(request).map_err(err("write"))?;
        c.read_exact(&mut reply[..answer_len])
            .map_err(err("read"))?;
    }
    // Keep-alive: one connection.
    let mut c =
        std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, ports[1])).map_err(err("connect"))?;
    for _ in 0..REQUESTS {
        c.write_all(request).map_err(err("write"))?;
        c.read_exact(&mut reply[..answer_len])
            .map_err(err("read"))?;
    }
    drop(c);
    // A long-lived socket: small messages both ways.
    let mut c =
        std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, ports[2])).map_err(err("connect"))?;
    for i in 0..MESSAGES {
        c.write_all(&[i as u8; 8]).map_err(err("write"))?;
        c.read_exact(&mut reply[..8]).map_err(err("read"))?;
    }
    drop(c);
    for t in threads {
        t.join()
            .map_err(|_| "a server thread panicked".to_string())??;
    }
    Ok(json!({
        "ports": ports,
        "requests": REQUESTS,
        "messages": MESSAGES,
        "request_bytes": request.len(),
        "answer_bytes": answer_len,
    }))
}

/// Reads one request: up to its blank line.
fn read_request(c: &mut std::net::TcpStream) -> Result<(), String> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut byte).map_err(err("read"))?;
        got.push(byte[0]);
    }
    Ok(())
}

fn addr_of(addr: &str, port: &str) -> Result<SocketAddr, String> {
    format!("{addr}:{port}")
        .parse()
        .map_err(|e| format!("{addr}:{port}: {e}"))
}

/// A server behind (or in front of) the NAT lesson's router: accepts `count` connections and
/// writes down the peer each accept() returned — the address the router made the client's
/// connection come from. `{report}.ready` appears once it listens.
fn nat_server(
    addr: &str,
    port: &str,
    count: &str,
    report: &std::path::Path,
) -> Result<Value, String> {
    let count: usize = count.parse().map_err(|_| format!("count {count:?}"))?;
    let listener = std::net::TcpListener::bind(addr_of(addr, port)?).map_err(err("bind"))?;
    let ready = report.with_extension("ready");
    std::fs::write(&ready, b"").map_err(err("ready file"))?;
    let mut peers = Vec::new();
    for _ in 0..count {
        let (mut c, peer) = listener.accept().map_err(err("accept"))?;
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).map_err(err("read"))?;
        c.write_all(b"hello").map_err(err("write"))?;
        peers.push(peer.to_string());
    }
    Ok(json!({"listen": format!("{addr}:{port}"), "peers": peers}))
}

/// A client of the NAT lesson: from `addr:port` (port 0: the kernel chooses) to `dest:dport`;
/// writes down its own end as getsockname says it.
fn nat_client(addr: &str, port: &str, dest: &str, dport: &str) -> Result<Value, String> {
    let socket =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(err("socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(err("SO_REUSEADDR"))?;
    socket
        .bind(&SockAddr::from(addr_of(addr, port)?))
        .map_err(err("bind"))?;
    socket
        .connect_timeout(
            &SockAddr::from(addr_of(dest, dport)?),
            std::time::Duration::from_secs(5),
        )
        .map_err(err("connect"))?;
    let local = socket
        .local_addr()
        .map_err(err("getsockname"))?
        .as_socket()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut c: std::net::TcpStream = socket.into();
    c.write_all(b"hello").map_err(err("write"))?;
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).map_err(err("read"))?;
    Ok(json!({"local": local, "remote": format!("{dest}:{dport}")}))
}

/// Moves this process into a new network namespace with its loopback up; its
/// `ip_local_port_range`.
fn own_loopback() -> Result<(u16, u16), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| format!("ip link set lo up: {e}"))?;
    if !up.success() {
        return Err("ip link set lo up failed".into());
    }
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .map_err(|e| e.to_string())?;
    let mut ports = text
        .split_whitespace()
        .filter_map(|p| p.parse::<u16>().ok());
    match (ports.next(), ports.next()) {
        (Some(low), Some(high)) => Ok((low, high)),
        _ => Err(format!("ip_local_port_range {text:?}")),
    }
}
