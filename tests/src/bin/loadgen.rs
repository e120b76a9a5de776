//! The benchmark's load generator: loopback storms with a chosen number of client threads,
//! measured in operations per second. No allocation or printing in the hot loops.
//!
//! loadgen tcp  THREADS SECONDS [RATE]  connect → accept → close, in lockstep per thread
//! loadgen udp  THREADS SECONDS [RATE]  a 64-byte request and its reply, unconnected sockets
//! loadgen long THREADS SECONDS N       N connections held open, messages round-robin
//! loadgen tcp-to ADDR THREADS SECONDS [RATE]  connect to ADDR (another host or namespace),
//!                                       wait for the server's close, close
//! loadgen tcp-server ADDR [THREADS]     accept on ADDR and close at once, until killed;
//!                                       prints "ready" once listening
//!
//! RATE (operations per second per thread, 0 or absent: as fast as possible) paces the load.
//!
//! Prints one JSON line: {"mode":…,"threads":…,"seconds":…,"ops":…,"ops_per_sec":…}.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// Sleeps as needed so that `done` operations take at least `done / rate` seconds.
fn pace(started: Instant, done: u64, rate: u64) {
    if rate > 0 && done.is_multiple_of(64) {
        let due = Duration::from_secs_f64(done as f64 / rate as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

fn tcp(deadline: Instant, rate: u64) -> u64 {
    let started = Instant::now();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut n = 0;
    while Instant::now() < deadline {
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        // The server closes first, so TIME_WAIT stays on its side: the client's ephemeral
        // ports come free at once. (Client-first would fill the 28k-port range within
        // seconds and make connect() crawl through TIME_WAIT ports: a benchmark of the port
        // search, not of tracing.)
        drop(server);
        drop(client);
        n += 1;
        pace(started, n, rate);
    }
    n
}

/// Connections to a server elsewhere (`tcp-server`, through a router): the client waits for
/// the server's FIN before closing, so TIME_WAIT stays on the server's side and the client's
/// ports come free at once, as in `tcp`.
fn tcp_to(addr: SocketAddr, deadline: Instant, rate: u64) -> u64 {
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let mut n = 0;
    while Instant::now() < deadline {
        let mut client = TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("connect {addr}: {e} after {n} connections"));
        while matches!(client.read(&mut buf), Ok(k) if k > 0) {}
        drop(client);
        n += 1;
        pace(started, n, rate);
    }
    n
}

/// Accepts and closes at once (the server closes first), on `threads` threads, until killed.
fn tcp_server(addr: &str, threads: usize) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    println!("ready");
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let listener = listener.try_clone().unwrap();
            std::thread::spawn(move || loop {
                // A failed accept (a reset in the queue, a full fd table) loses one connection.
                drop(listener.accept());
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

fn udp(deadline: Instant, rate: u64) -> u64 {
    let started = Instant::now();
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap();
    let mut buf = [0u8; 64];
    let request = [7u8; 64];
    let mut n = 0;
    while Instant::now() < deadline {
        client.send_to(&request, server_addr).unwrap();
        let (_, from): (usize, SocketAddr) = server.recv_from(&mut buf).unwrap();
        server.send_to(&buf, from).unwrap();
        client.recv_from(&mut buf).unwrap();
        n += 1;
        pace(started, n, rate);
    }
    n
}

fn long(deadline: Instant, connections: usize) -> u64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut pairs = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.set_nodelay(true).unwrap();
        server.set_nodelay(true).unwrap();
        pairs.push((client, server));
    }
    let mut buf = [0u8; 64];
    let mut n = 0u64;
    'outer: loop {
        for (client, server) in pairs.iter_mut() {
            if Instant::now() >= deadline {
                break 'outer;
            }
            client.write_all(&buf).unwrap();
            server.read_exact(&mut buf).unwrap();
            server.write_all(&buf).unwrap();
            client.read_exact(&mut buf).unwrap();
            n += 1;
        }
    }
    n
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: loadgen tcp|udp THREADS SECONDS [RATE] | loadgen long THREADS SECONDS [N] \
                 | loadgen tcp-to ADDR THREADS SECONDS [RATE] | loadgen tcp-server ADDR [THREADS]";
    let mode = args.first().expect(usage).clone();
    if mode == "tcp-server" {
        let addr = args.get(1).expect(usage);
        let threads = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2);
        return tcp_server(addr, threads);
    }
    // `tcp-to ADDR …`: the address out, the rest as for the other modes.
    let target: Option<SocketAddr> =
        (mode == "tcp-to").then(|| args.remove(1).parse().expect(usage));
    let threads: usize = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let seconds: f64 = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    let fourth: Option<u64> = args.get(3).and_then(|a| a.parse().ok());
    let connections = fourth.unwrap_or(1000) as usize;
    let rate = fourth.unwrap_or(0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let mode = mode.clone();
            let per_thread = connections.div_ceil(threads);
            std::thread::spawn(move || match mode.as_str() {
                "tcp" => tcp(deadline, rate),
                "tcp-to" => tcp_to(target.unwrap(), deadline, rate),
                "udp" => udp(deadline, rate),
                "long" => long(deadline, per_thread),
                other => panic!("unknown mode {other}; {usage}"),
            })
        })
        .collect();
    let ops: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{{\"mode\":\"{mode}\",\"threads\":{threads},\"seconds\":{elapsed:.3},\"ops\":{ops},\"ops_per_sec\":{:.1}}}",
        ops as f64 / elapsed
    );
}
