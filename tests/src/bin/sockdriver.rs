//! A scripted socket user for the end-to-end tests. It prints `{"pid":N}` and waits for a line
//! on stdin (so tracer can attach first), runs one scenario, and prints one JSON object per
//! step with what the kernel reported (fds from the syscalls, ports from getsockname).
use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

fn port_of(sock: &Socket) -> u16 {
    sock.local_addr().unwrap().as_socket().unwrap().port()
}

fn domain(ip: IpAddr) -> Domain {
    if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    say(format!("{{\"pid\":{}}}", std::process::id()));
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go).unwrap();
    let ip: IpAddr = args[1].parse().expect("address");
    match args[0].as_str() {
        // socket → bind ip:PORT (default 0) → listen(backlog) → accept → read to EOF → close.
        "tcp-server" => {
            let backlog: i32 = args[2].parse().unwrap();
            let port: u16 = args.get(3).map_or(0, |p| p.parse().unwrap());
            let s = Socket::new(domain(ip), Type::STREAM, Some(Protocol::TCP)).unwrap();
            s.bind(&SockAddr::from(SocketAddr::new(ip, port))).unwrap();
            s.listen(backlog).unwrap();
            say(format!(
                "{{\"listen_fd\":{},\"port\":{}}}",
                s.as_raw_fd(),
                port_of(&s)
            ));
            let (mut conn, peer) = s.accept().unwrap();
            let peer = peer.as_socket().unwrap();
            say(format!(
                "{{\"accepted_fd\":{},\"peer_ip\":\"{}\",\"peer_port\":{}}}",
                conn.as_raw_fd(),
                peer.ip(),
                peer.port()
            ));
            let mut buf = Vec::new();
            conn.read_to_end(&mut buf).unwrap();
            drop(conn);
            drop(s);
            say(format!("{{\"done\":true,\"read\":{}}}", buf.len()));
        }
        // socket → connect ip:port → write → close.
        "tcp-client" => {
            let port: u16 = args[2].parse().unwrap();
            let mut s = Socket::new(domain(ip), Type::STREAM, Some(Protocol::TCP)).unwrap();
            s.connect(&SockAddr::from(SocketAddr::new(ip, port)))
                .unwrap();
            say(format!(
                "{{\"fd\":{},\"local_port\":{}}}",
                s.as_raw_fd(),
                port_of(&s)
            ));
            s.write_all(b"hello").unwrap();
            drop(s);
            say("{\"done\":true}".into());
        }
        // connect to a port nobody listens on.
        "tcp-refused" => {
            let port: u16 = args[2].parse().unwrap();
            let s = Socket::new(domain(ip), Type::STREAM, Some(Protocol::TCP)).unwrap();
            let err = s
                .connect(&SockAddr::from(SocketAddr::new(ip, port)))
                .unwrap_err();
            say(format!(
                "{{\"fd\":{},\"errno\":{}}}",
                s.as_raw_fd(),
                errno(&err)
            ));
        }
        // bind a port, then try to bind a second socket to it.
        "bind-twice" => {
            let a = Socket::new(domain(ip), Type::STREAM, Some(Protocol::TCP)).unwrap();
            a.bind(&SockAddr::from(SocketAddr::new(ip, 0))).unwrap();
            let port = port_of(&a);
            let b = Socket::new(domain(ip), Type::STREAM, Some(Protocol::TCP)).unwrap();
            let err = b
                .bind(&SockAddr::from(SocketAddr::new(ip, port)))
                .unwrap_err();
            say(format!(
                "{{\"port\":{port},\"second_fd\":{},\"errno\":{}}}",
                b.as_raw_fd(),
                errno(&err)
            ));
        }
        // A bound UDP server, an unbound client: sendto autobinds, recvfrom names the peer.
        "udp" => {
            let server = Socket::new(domain(ip), Type::DGRAM, Some(Protocol::UDP)).unwrap();
            server
                .bind(&SockAddr::from(SocketAddr::new(ip, 0)))
                .unwrap();
            let server_port = port_of(&server);
            let client = Socket::new(domain(ip), Type::DGRAM, Some(Protocol::UDP)).unwrap();
            client
                .send_to(b"ping", &SockAddr::from(SocketAddr::new(ip, server_port)))
                .unwrap();
            let client_port = port_of(&client);
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            let from = from.as_socket().unwrap();
            server.send_to(b"pong", &SockAddr::from(from)).unwrap();
            let (m, _) = client.recv_from(&mut buf).unwrap();
            say(format!(
                "{{\"server_fd\":{},\"server_port\":{server_port},\"client_fd\":{},\"client_port\":{client_port},\"from_port\":{},\"received\":{n},\"reply\":{m}}}",
                server.as_raw_fd(),
                client.as_raw_fd(),
                from.port()
            ));
        }
        // Loopback connect/accept/close for SECONDS, in lockstep on one thread so the listen
        // queue never overflows (a dropped SYN would stall a connect for a second).
        // Reports connections per second.
        "tcp-storm" => {
            let seconds: f64 = args[2].parse().unwrap();
            let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
            let addr = listener.local_addr().unwrap();
            let start = std::time::Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < seconds {
                let client = std::net::TcpStream::connect(addr).unwrap();
                let (server, _) = listener.accept().unwrap();
                drop(client);
                drop(server);
                n += 1;
            }
            let secs = start.elapsed().as_secs_f64();
            say(format!(
                "{{\"connections\":{n},\"seconds\":{secs},\"per_second\":{}}}",
                n as f64 / secs
            ));
        }
        // Starts a child sockdriver running `udp` and relays its report: for --pid children.
        "parent-of-udp" => {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["udp", &args[1]])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
            let child_pid = lines.next().unwrap().unwrap();
            child.stdin.take().unwrap().write_all(b"go\n").unwrap();
            let report = lines.next().unwrap().unwrap();
            assert!(child.wait().unwrap().success());
            say(format!("{{\"child\":{child_pid},\"report\":{report}}}"));
        }
        // A server that predates tracer: listen, fork a child that shares the listening socket,
        // report, then accept connections until killed, reporting each.
        "serve-forever" => {
            let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
            // SAFETY: single-threaded here; the child only sleeps until its parent dies.
            let child = unsafe { libc::fork() };
            if child == 0 {
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
            say(format!(
                "{{\"port\":{},\"child\":{child}}}",
                listener.local_addr().unwrap().port()
            ));
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let peer = conn.peer_addr().unwrap();
                say(format!(
                    "{{\"accepted_fd\":{},\"peer_port\":{}}}",
                    conn.as_raw_fd(),
                    peer.port()
                ));
                let mut buf = Vec::new();
                let _ = conn.read_to_end(&mut buf);
            }
        }
        // Connects to a listener of its own (on PORT, outside the ephemeral range) until the
        // kernel runs out of local ports, keeping every connection open; reports the ports used
        // and the errno of the connect that failed.
        "exhaust" => {
            let mut held = Vec::new();
            let (ports, errno) = connect_until_refused(ip, args[2].parse().unwrap(), &mut held);
            say(format!("{{\"ports\":{ports:?},\"errno\":{errno}}}"));
            // Keep them open until told to finish, so tracer sees the range full.
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            drop(held);
        }
        // Two servers of its own on PORT_A and PORT_B: connections to the first until the
        // kernel finds no port, then to the second until it finds none either (connect()
        // reuses a port for another destination); all held until told to finish.
        "exhaust-two" => {
            let mut held = Vec::new();
            let mut ports = Vec::new();
            let mut errnos = Vec::new();
            for p in [&args[2], &args[3]] {
                let (mine, errno) = connect_until_refused(ip, p.parse().unwrap(), &mut held);
                ports.push(mine);
                errnos.push(errno);
            }
            say(format!("{{\"ports\":{ports:?},\"errnos\":{errnos:?}}}"));
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            drop(held);
        }
        // An HTTP/1.1 server on each of N ports (0 = kernel's choice) that answers every GET with
        // a small page and keeps connections open (keep-alive), as browsers expect.
        "http-servers" => {
            let n: usize = args[2].parse().unwrap();
            let mut ports = Vec::new();
            for _ in 0..n {
                let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
                ports.push(listener.local_addr().unwrap().port());
                std::thread::spawn(move || {
                    for conn in listener.incoming().flatten() {
                        if let Ok(peer) = conn.peer_addr() {
                            say(format!("{{\"accepted_peer_port\":{}}}", peer.port()));
                        }
                        std::thread::spawn(move || serve_http(conn));
                    }
                });
            }
            say(format!("{{\"ports\":{ports:?}}}"));
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
        }
        // Known traffic for the metrics tests: N connections to a listener of its own (accepted),
        // M connects to a port nobody listens on (refused), K extra binds to port 0.
        "metrics-traffic" => {
            let n: usize = args[2].parse().unwrap();
            let m: usize = args[3].parse().unwrap();
            let k: usize = args[4].parse().unwrap();
            let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
            let addr = listener.local_addr().unwrap();
            for _ in 0..n {
                let client = std::net::TcpStream::connect(addr).unwrap();
                let (server, _) = listener.accept().unwrap();
                drop(client);
                drop(server);
            }
            // A port that was free a moment ago: bind, note, close.
            let closed = {
                let s = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
                s.local_addr().unwrap()
            };
            let mut refused = 0;
            for _ in 0..m {
                let e = std::net::TcpStream::connect(closed).unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
                refused += 1;
            }
            let mut held = Vec::new();
            for _ in 0..k {
                held.push(std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap());
            }
            // Binds: the listener, the probe for a closed port, and the K sockets.
            say(format!(
                "{{\"connections\":{n},\"refused\":{refused},\"binds\":{}}}",
                k + 2
            ));
        }
        // Exactly N loopback connect/accept/close cycles, in lockstep (listener on PORT,
        // default any).
        "tcp-count" => {
            let n: u64 = args[2].parse().unwrap();
            let port: u16 = args.get(3).map_or(0, |p| p.parse().unwrap());
            let listener = std::net::TcpListener::bind(SocketAddr::new(ip, port)).unwrap();
            let addr = listener.local_addr().unwrap();
            for _ in 0..n {
                let client = std::net::TcpStream::connect(addr).unwrap();
                let (server, _) = listener.accept().unwrap();
                drop(client);
                drop(server);
            }
            say(format!("{{\"connections\":{n}}}"));
        }
        // Odd but legal uses, and bad arguments the kernel rejects (see `hostile()`).
        "hostile" => hostile(ip),
        other => panic!("unknown scenario {other}"),
    }
}

/// Answers requests on one keep-alive connection until the client closes it.
fn serve_http(mut conn: std::net::TcpStream) {
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        // Skip the headers.
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
        }
        let body = "<html><head><title>tracer test tab</title></head><body>tab</body></html>";
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: keep-alive\r\nKeep-Alive: timeout=300\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn sockaddr_of(ip: IpAddr, port: u16) -> SockAddr {
    SockAddr::from(SocketAddr::new(ip, port))
}

/// dup2'd fds, a socket passed to a child with SCM_RIGHTS, one socket used by two threads,
/// `close` on a non-socket fd, a process exiting with a socket open, and sockaddrs the kernel
/// rejects (too long, too short, unreadable). Reports the fds, pids and errnos involved.
fn hostile(ip: IpAddr) {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // 1. dup2: bind through a duplicate fd number.
    let s = Socket::new(domain(ip), Type::STREAM, Some(Protocol::TCP)).unwrap();
    let dup_fd = 100;
    assert_eq!(unsafe { libc::dup2(s.as_raw_fd(), dup_fd) }, dup_fd);
    let dup = unsafe { Socket::from_raw_fd(dup_fd) };
    dup.bind(&sockaddr_of(ip, 0)).unwrap();
    let dup_port = port_of(&dup);
    drop(dup);
    drop(s);

    // 2. Threads: one thread binds, another listens on the same socket.
    let shared =
        std::sync::Arc::new(Socket::new(domain(ip), Type::STREAM, Some(Protocol::TCP)).unwrap());
    let a = shared.clone();
    let bind_tid = std::thread::spawn(move || {
        a.bind(&sockaddr_of(ip, 0)).unwrap();
        unsafe { libc::gettid() }
    })
    .join()
    .unwrap();
    let b = shared.clone();
    let listen_tid = std::thread::spawn(move || {
        b.listen(4).unwrap();
        unsafe { libc::gettid() }
    })
    .join()
    .unwrap();
    let threads_port = port_of(&shared);
    drop(shared);

    // 3. close() on something that is not a socket.
    let file = std::fs::File::open("/dev/null").unwrap();
    let file_fd = file.into_raw_fd();
    unsafe { libc::close(file_fd) };

    // 4. SCM_RIGHTS: a bound socket passed to a child, which listens on it and exits with it
    //    open; the parent closes its own copy first.
    let passed = Socket::new(domain(ip), Type::STREAM, Some(Protocol::TCP)).unwrap();
    passed.bind(&sockaddr_of(ip, 0)).unwrap();
    let passed_port = port_of(&passed);
    let mut pair = [0i32; 2];
    assert_eq!(
        unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) },
        0
    );
    let child = unsafe { libc::fork() };
    if child == 0 {
        let fd = recv_fd(pair[1]);
        unsafe {
            libc::listen(fd, 8);
            // Exit with the socket still open: the kernel releases it at exit.
            libc::_exit(0);
        }
    }
    send_fd(pair[0], passed.as_raw_fd());
    drop(passed);
    let mut status = 0;
    unsafe { libc::waitpid(child, &mut status, 0) };

    // 5. sockaddrs the kernel rejects.
    let s = Socket::new(domain(ip), Type::STREAM, Some(Protocol::TCP)).unwrap();
    let fd = s.as_raw_fd();
    let good = sockaddr_of(ip, 0);
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let huge = unsafe { libc::bind(fd, good.as_ptr().cast(), 4096) };
    let huge_errno = errno();
    let short = unsafe { libc::connect(fd, good.as_ptr().cast(), 1) };
    let short_errno = errno();
    let unreadable = unsafe { libc::bind(fd, 8 as *const libc::sockaddr, 16) };
    let unreadable_errno = errno();
    assert!(huge < 0 && short < 0 && unreadable < 0);
    say(format!(
        "{{\"dup_fd\":{dup_fd},\"dup_port\":{dup_port},\"bind_tid\":{bind_tid},\"listen_tid\":{listen_tid},\"threads_port\":{threads_port},\"file_fd\":{file_fd},\"passed_port\":{passed_port},\"child\":{child},\"bad_fd\":{fd},\"huge_errno\":{huge_errno},\"short_errno\":{short_errno},\"unreadable_errno\":{unreadable_errno}}}"
    ));
}

fn send_fd(over: i32, fd: i32) {
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut space = [0u8; 64];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        assert_eq!(libc::sendmsg(over, &msg, 0), 1);
    }
}

fn recv_fd(over: i32) -> i32 {
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut space = [0u8; 64];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = space.len();
        assert_eq!(libc::recvmsg(over, &mut msg, 0), 1);
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>())
    }
}

/// Connects to a listener of its own on `port` until the kernel finds no local port, keeping
/// both ends of every connection (and the listener) in `held`. Returns the local ports the
/// connections got and the errno of the connect that failed.
fn connect_until_refused(
    ip: std::net::IpAddr,
    port: u16,
    held: &mut Vec<Box<dyn std::any::Any>>,
) -> (Vec<u16>, i32) {
    let listener = std::net::TcpListener::bind(SocketAddr::new(ip, port)).unwrap();
    let mut ports = Vec::new();
    let errno = loop {
        let s = Socket::new(domain(ip), Type::STREAM, Some(Protocol::TCP)).unwrap();
        match s.connect(&SockAddr::from(SocketAddr::new(ip, port))) {
            Ok(()) => {
                ports.push(port_of(&s));
                held.push(Box::new(listener.accept().unwrap().0));
                held.push(Box::new(s));
            }
            Err(e) => break errno(&e),
        }
        assert!(ports.len() < 1000, "the range never ran out");
    };
    held.push(Box::new(listener));
    (ports, errno)
}
