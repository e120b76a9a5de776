//! The endpoint's bounds, exercised on loopback with a stand-in registry and small limits (no
//! root, no kernel): methods and bodies, the head size limit, the header/idle timeout, the
//! connection cap and the lifetime.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use super::*;

const WAIT: Duration = Duration::from_secs(10);

fn limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(10),
        ..Limits::default()
    }
}

fn server(
    limits: Limits,
    render: impl Fn() -> String + Send + Sync + 'static,
) -> (SocketAddr, Arc<Health>) {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let health = Arc::new(Health::new());
    let routes = Routes {
        render: Arc::new(render),
        ask: None,
    };
    start(listener, limits, health.clone(), routes, || {}).unwrap();
    (addr, health)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Sends `request` on a new connection and reads until the server closes it.
fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut s = connect(addr);
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response (head and a Content-Length body) from a kept-alive connection.
fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed mid-head");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

/// Whether the server closed the connection (end of file or reset), waiting up to `WAIT`.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn value(health: &Health, series: &str) -> i64 {
    health
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series}"))
}

fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

const OPEN: &str = "tracer_metrics_connections_open";

#[test]
fn get_and_head_only_and_no_body() {
    let (addr, health) = server(limits(), || "x_total 1\n".into());
    let get = exchange(addr, "GET /metrics HTTP/1.0\r\n\r\n");
    assert!(
        get.starts_with("HTTP/1.0 200") && get.ends_with("\r\n\r\nx_total 1\n"),
        "{get}"
    );
    let head = exchange(addr, "HEAD /metrics HTTP/1.0\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.0 200") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    let post = exchange(addr, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    assert!(
        post.starts_with("HTTP/1.0 405") && post.contains("allow: GET, HEAD"),
        "{post}"
    );
    let body = exchange(
        addr,
        "GET /metrics HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert!(body.starts_with("HTTP/1.0 413"), "{body}");
    assert!(exchange(addr, "GET /nope HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404"));
    assert_eq!(
        value(&health, "tracer_metrics_connections_accepted_total"),
        5
    );
}

#[test]
fn an_oversized_head_is_refused() {
    let (addr, health) = server(limits(), String::new);
    let big = format!(
        "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(2 * MAX_REQUEST_HEAD_BYTES)
    );
    let answer = exchange(addr, &big);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    eventually("the count", || {
        value(
            &health,
            "tracer_metrics_connections_closed_total{reason=\"bad_request\"}",
        ) == 1
    });
}

/// A half-sent request, and a kept-alive connection that went idle, are both closed once the
/// header timeout has passed.
#[test]
fn half_requests_and_idle_connections_time_out() {
    let timeout = Duration::from_millis(300);
    let (addr, health) = server(
        Limits {
            header_timeout: timeout,
            ..Limits::default()
        },
        || "x 1\n".into(),
    );
    let started = Instant::now();
    let mut half = connect(addr);
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut idle = connect(addr);
    idle.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut idle).starts_with("HTTP/1.1 200"));
    assert!(closed_by_server(&mut half));
    assert!(closed_by_server(&mut idle));
    assert!(started.elapsed() >= timeout);
    eventually("both counted", || {
        value(
            &health,
            "tracer_metrics_connections_closed_total{reason=\"timeout\"}",
        ) == 2
    });
}

/// At the cap, a new connection closes the least recently active one: a connection that is
/// only held open goes before one that asked for something since.
#[test]
fn the_cap_closes_the_least_recently_active() {
    let (addr, health) = server(
        Limits {
            max_connections: 2,
            ..limits()
        },
        || "x 1\n".into(),
    );
    let mut scraper = connect(addr);
    eventually("one open", || value(&health, OPEN) == 1);
    let mut holder = connect(addr);
    eventually("two open", || value(&health, OPEN) == 2);
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    scraper.write_all(request).unwrap();
    assert!(read_response(&mut scraper).starts_with("HTTP/1.1 200"));
    let mut newcomer = connect(addr);
    assert!(closed_by_server(&mut holder));
    newcomer.write_all(request).unwrap();
    assert!(read_response(&mut newcomer).starts_with("HTTP/1.1 200"));
    scraper.write_all(request).unwrap();
    assert!(read_response(&mut scraper).starts_with("HTTP/1.1 200"));
    assert_eq!(
        value(
            &health,
            "tracer_metrics_connections_closed_total{reason=\"cap\"}"
        ),
        1
    );
    assert_eq!(value(&health, OPEN), 2);
}

/// A client that never reads its (large) answer holds its connection for the lifetime only.
#[test]
fn a_slow_reader_is_closed_after_the_lifetime() {
    let (addr, health) = server(
        Limits {
            lifetime: Duration::from_millis(300),
            ..limits()
        },
        || "x".repeat(64 << 20),
    );
    let mut reader = connect(addr);
    reader.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    eventually("the lifetime", || {
        value(
            &health,
            "tracer_metrics_connections_closed_total{reason=\"lifetime\"}",
        ) == 1
    });
    eventually("the connection gone", || value(&health, OPEN) == 0);
}

/// `/nat/who` reaches the agent's asker with its query, one question at a time; without an
/// asker it is not found.
#[test]
fn questions_reach_the_agent_one_at_a_time() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (inside, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (i, m) = (inside.clone(), most.clone());
    let ask: Ask = Arc::new(move |query: String| {
        let (i, m) = (i.clone(), m.clone());
        Box::pin(async move {
            let now = i.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            i.fetch_sub(1, Ordering::SeqCst);
            (200, "text/plain", format!("asked {query}\n"))
        })
    });
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = Routes {
        render: Arc::new(String::new),
        ask: Some(ask),
    };
    start(listener, limits(), Arc::new(Health::new()), routes, || {}).unwrap();
    let askers: Vec<_> = (0..4)
        .map(|n| {
            std::thread::spawn(move || {
                exchange(
                    addr,
                    &format!("GET /nat/who?addr=10.0.0.{n} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                )
            })
        })
        .collect();
    for (n, asker) in askers.into_iter().enumerate() {
        let answer = asker.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.ends_with(&format!("asked addr=10.0.0.{n}\n")),
            "{answer}"
        );
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "one question at a time");
    let (plain, _) = server(limits(), String::new);
    let answer = exchange(
        plain,
        "GET /nat/who?addr=10.0.0.1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}
