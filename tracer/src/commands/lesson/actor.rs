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
pub const SCENARIOS: [&str; 3] = ["tcp", "udp", "tabs"];

/// Parallel connections the `tabs` scenario holds at once (one per "browser tab").
pub const TABS: usize = 4;

/// Runs `scenario`, writes its report to `report`; the exit code.
pub fn run(scenario: &str, report: &std::path::Path) -> i32 {
    let observed = match scenario {
        "tcp" => tcp(),
        "udp" => udp(),
        "tabs" => tabs(),
        _ => Err(format!("no scenario {scenario:?}")),
    };
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
