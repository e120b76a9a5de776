//! The benchmark's load generator: loopback storms with a chosen number of client threads,
//! measured in operations per second. No allocation or printing in the hot loops.
//!
//! loadgen tcp  THREADS SECONDS    connect → accept → close, in lockstep per thread
//! loadgen udp  THREADS SECONDS    a 64-byte request and its reply over unconnected sockets
//! loadgen long THREADS SECONDS N  N connections held open, messages round-robin over them
//!
//! Prints one JSON line: {"mode":…,"threads":…,"seconds":…,"ops":…,"ops_per_sec":…}.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

fn tcp(deadline: Instant) -> u64 {
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
    }
    n
}

fn udp(deadline: Instant) -> u64 {
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: loadgen tcp|udp|long THREADS SECONDS [CONNECTIONS]";
    let mode = args.first().expect(usage).clone();
    let threads: usize = args.get(1).and_then(|a| a.parse().ok()).expect(usage);
    let seconds: f64 = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    let connections: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let mode = mode.clone();
            let per_thread = connections.div_ceil(threads);
            std::thread::spawn(move || match mode.as_str() {
                "tcp" => tcp(deadline),
                "udp" => udp(deadline),
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
