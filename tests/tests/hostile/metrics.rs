//! Hostile users against the metrics endpoint (`tracer serve`): thousands of connections held
//! idle or half-sent by an unprivileged user must not keep a scraper out, grow tracer's
//! descriptors past the connection cap, or stay open past the header timeout; and scrapers
//! hammering the endpoint must not cost a single event.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracer_tests::*;

use crate::serve::Serve;

/// tracer's defaults (tracer/src/metrics/server/limits.rs): the connection cap and the header
/// (and idle) timeout.
const CAP: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Descriptors tracer may have beyond its count before the attack and the capped connections.
const FD_MARGIN: usize = 16;

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One scrape as Prometheus would make it, with a one-second budget for connect and answer:
/// how long it took, or why it failed.
fn scrape_once(addr: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let budget = Duration::from_secs(1);
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), budget)
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(budget)).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let took = started.elapsed();
    if !answer.starts_with("HTTP/1.0 200") || !answer.contains("\ntracer_events_lost_total{") {
        return Err(format!("answer: {:.200}", answer));
    }
    if took > budget {
        return Err(format!("took {took:?}"));
    }
    Ok(took)
}

/// A scrape that answers within a second, in at most three attempts.
fn scrape_within_a_second(addr: &str) -> Duration {
    let mut failures = Vec::new();
    for _ in 0..3 {
        match scrape_once(addr) {
            Ok(took) => return took,
            Err(e) => failures.push(e),
        }
    }
    panic!("no scrape answered within a second: {failures:?}")
}

/// Opens IDLE connections that send nothing and HALF that send a request without its final
/// empty line, holds them, and on `closed SECONDS` reports (within SECONDS) how many of each
/// the server has closed. Raises its own descriptor limit to the hard limit first.
const HOLDER: &str = r#"
import json, resource, socket, sys, time
host, port, idle, half = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
failed = 0
give_up = time.monotonic() + 60
def open_one(payload):
    global failed
    try:
        s = socket.create_connection((host, port), timeout=max(0.1, give_up - time.monotonic()))
    except OSError:
        failed += 1
        return None
    if payload:
        try:
            s.sendall(payload)
        except OSError:
            pass
    # Checked later without waiting: a socket with a timeout would poll before each recv.
    s.setblocking(False)
    return s
idle_socks = [s for s in (open_one(None) for _ in range(idle)) if s]
half_socks = [s for s in (open_one(b"GET /metrics HTTP/1.1\r\nHost: x\r\n") for _ in range(half)) if s]
print(json.dumps({"idle": len(idle_socks), "half": len(half_socks), "failed": failed}), flush=True)
def closed(s):
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
for line in sys.stdin:
    words = line.split()
    if words[0] == "closed":
        deadline = time.monotonic() + float(words[1])
        while True:
            counts = {"idle": sum(map(closed, idle_socks)), "half": sum(map(closed, half_socks))}
            if counts["idle"] == len(idle_socks) and counts["half"] == len(half_socks):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        print(json.dumps(counts), flush=True)
"#;

/// Unprivileged processes holding connections to tracer's endpoint, as many as their
/// descriptor limit allows each.
struct Holders {
    procs: Vec<(Child, ChildStdin, BufReader<ChildStdout>)>,
}

impl Holders {
    fn start(addr: &str, idle: usize, half: usize) -> Holders {
        let (host, port) = addr.rsplit_once(':').unwrap();
        let procs = shares(idle, half, per_process())
            .into_iter()
            .map(|(i, h)| {
                let mut child = as_nobody("/usr/bin/python3")
                    .args(["-c", HOLDER, host, port, &i.to_string(), &h.to_string()])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("python3 as nobody");
                let stdin = child.stdin.take().unwrap();
                let stdout = BufReader::new(child.stdout.take().unwrap());
                (child, stdin, stdout)
            })
            .collect();
        Holders { procs }
    }

    /// Each process's first line (what it opened), summed.
    fn opened(&mut self) -> (u64, u64, u64) {
        let lines = self.read_lines();
        let sum = |k: &str| lines.iter().map(|v| v[k].as_u64().unwrap()).sum::<u64>();
        (sum("idle"), sum("half"), sum("failed"))
    }

    /// How many idle and half-sent connections tracer has closed (waiting up to `within`).
    fn closed(&mut self, within: Duration) -> (u64, u64) {
        for (_, stdin, _) in &mut self.procs {
            writeln!(stdin, "closed {}", within.as_secs_f64()).unwrap();
        }
        let lines = self.read_lines();
        let sum = |k: &str| lines.iter().map(|v| v[k].as_u64().unwrap()).sum::<u64>();
        (sum("idle"), sum("half"))
    }

    fn read_lines(&mut self) -> Vec<Value> {
        self.procs
            .iter_mut()
            .map(|(_, _, out)| {
                let mut line = String::new();
                out.read_line(&mut line).unwrap();
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("holder said {line:?}: {e}"))
            })
            .collect()
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        for (child, _, _) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Connections one holder process can open: its hard descriptor limit (inherited from this
/// test) less some for python itself.
fn per_process() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (limit.rlim_max as usize).saturating_sub(64).max(64)
}

/// (idle, half) per process, each at most `per` connections.
fn shares(idle: usize, half: usize, per: usize) -> Vec<(usize, usize)> {
    let processes = (idle + half).div_ceil(per).max(1);
    (0..processes)
        .map(|p| {
            let part = |n: usize| n / processes + usize::from(p < n % processes);
            (part(idle), part(half))
        })
        .collect()
}

fn ready(test: &str) -> bool {
    prerequisites(test)
        && tool(test, "/usr/bin/python3", "python3")
        && tool(test, "setpriv", "util-linux")
}

/// Half-sent requests (under the cap, so nothing else closes them) are closed by tracer once
/// the header timeout has passed, and counted.
#[test]
fn half_sent_requests_are_closed_after_the_header_timeout() {
    if !ready("half_sent_requests_are_closed_after_the_header_timeout") {
        return;
    }
    let serve = Serve::start();
    let mut holders = Holders::start(&serve.addr, 0, 20);
    let started = Instant::now();
    assert_eq!(holders.opened(), (0, 20, 0));
    let (_, half) = holders.closed(HEADER_TIMEOUT + Duration::from_secs(10));
    let took = started.elapsed();
    assert_eq!(half, 20, "half-sent requests closed by tracer");
    assert!(
        took >= HEADER_TIMEOUT - Duration::from_millis(500),
        "closed after {took:?}"
    );
    assert!(serve.sample("tracer_metrics_connections_closed_total{reason=\"timeout\"}") >= 20);
    eprintln!("metrics: 20 half-sent requests closed after {took:?}");
}

/// 2,000 idle connections and 200 half-sent requests held by an unprivileged user: scrapes
/// (during the flood and while the connections are held) still answer within a second,
/// tracer's descriptors stay at the cap, every held connection is closed by tracer, and the
/// evictions are counted.
#[test]
fn held_connections_keep_no_scraper_out() {
    if !ready("held_connections_keep_no_scraper_out") {
        return;
    }
    let serve = Serve::start();
    let pid = serve.pid();
    let before = fd_count(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(before));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(fd_count(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let (idle, half) = (2000, 200);
    let mut holders = Holders::start(&serve.addr, idle, half);
    // Scrapes while the connections are being opened …
    let mut during = Vec::new();
    let flood = Instant::now();
    while during.len() < 5 || flood.elapsed() < Duration::from_millis(300) {
        during.push(scrape_within_a_second(&serve.addr));
        if during.len() >= 20 {
            break;
        }
    }
    let (opened_idle, opened_half, failed) = holders.opened();
    assert_eq!(
        (opened_idle, opened_half),
        (idle as u64, half as u64),
        "{failed} failed"
    );
    // … and while they are held.
    let held: Vec<Duration> = (0..5)
        .map(|_| scrape_within_a_second(&serve.addr))
        .collect();
    let (closed_idle, closed_half) = holders.closed(HEADER_TIMEOUT + Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "metrics: fds before {before}, peak {peak}; scrapes during the flood {during:?}, while held {held:?}; closed by tracer: {closed_idle} idle, {closed_half} half-sent"
    );
    assert!(
        peak <= before + CAP + FD_MARGIN,
        "tracer's fds: {before} -> {peak}"
    );
    assert_eq!((closed_idle, closed_half), (idle as u64, half as u64));
    let counted = |reason: &str| {
        serve.sample(&format!(
            "tracer_metrics_connections_closed_total{{reason=\"{reason}\"}}"
        ))
    };
    let (cap, timeout) = (counted("cap"), counted("timeout"));
    eprintln!("metrics: closed at the cap {cap}, by the header timeout {timeout}");
    assert!(
        cap + timeout >= (idle + half) as u64,
        "cap {cap} + timeout {timeout}"
    );
    assert!(serve.sample("tracer_metrics_connections_accepted_total") >= (idle + half) as u64);
    // The agent kept up: nothing lost for want of room in the ring. (A transition the kernel
    // skipped because it nested in the same program on that CPU — softirq interrupting a
    // process-context one, which a flood on 2 CPUs makes — is counted as reason="nested".)
    let lost: Vec<String> = serve
        .scrape()
        .lines()
        .filter(|l| l.starts_with("tracer_events_lost_total{"))
        .map(str::to_string)
        .collect();
    eprintln!("metrics: lost {lost:?}");
    assert_eq!(
        serve.sample("tracer_events_lost_total{reason=\"ring_full\"}"),
        0,
        "{lost:?}"
    );
}

/// Lowers tracer's descriptor limit (as root: this is the operator's doing, or another part of
/// tracer using descriptors up) to `headroom` above what it has open.
fn limit_descriptors(pid: u32, headroom: usize) -> usize {
    let soft = fd_count(pid) + headroom;
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let new = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: libc::RLIM_INFINITY,
    };
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(r, 0, "prlimit");
    let new = libc::rlimit {
        rlim_max: old.rlim_max,
        ..new
    };
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit");
    soft
}

/// tracer out of descriptors (EMFILE) while an unprivileged user holds connections: the
/// accept loop pauses (100 ms doubling to 1 s) instead of retrying in a spin, counts the
/// failures, and serves again once the held connections have timed out.
#[test]
fn out_of_descriptors_the_accept_loop_pauses() {
    if !ready("out_of_descriptors_the_accept_loop_pauses") {
        return;
    }
    let serve = Serve::start();
    let soft = limit_descriptors(serve.pid(), 8);
    let started = Instant::now();
    let mut holders = Holders::start(&serve.addr, 16, 0);
    assert_eq!(holders.opened(), (16, 0, 0));
    // Eight are accepted, the rest wait in the queue until the first eight time out.
    let (idle, _) = holders.closed(3 * HEADER_TIMEOUT + Duration::from_secs(10));
    assert_eq!(idle, 16, "held connections closed by tracer");
    let (_, text) = http_get(&serve.addr, "/metrics").expect("a scrape once descriptors are free");
    let elapsed = started.elapsed();
    let emfile = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("tracer_metrics_accept_errors_total{errno=\"EMFILE\"} ")?
                .parse::<u64>()
                .ok()
        })
        .expect("the EMFILE series");
    eprintln!(
        "metrics: descriptor limit {soft}: {emfile} failed accepts (EMFILE) in {elapsed:?}, all 16 held connections served and closed"
    );
    // A spin would fail millions of times; ten pauses a second at the most.
    assert!(emfile >= 1, "the limit was reached");
    assert!(
        emfile <= 10 * elapsed.as_secs() + 10,
        "{emfile} failed accepts in {elapsed:?}"
    );
}

/// Scrapes /metrics in a loop for SECONDS; prints the scrapes that answered and those that
/// did not.
const SCRAPER: &str = r#"
import sys, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
ok = failed = 0
while time.monotonic() < end:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = r.read()
        ok += b"tracer_events_lost_total" in body
    except OSError:
        failed += 1
print(ok, failed)
"#;

/// Four unprivileged scrapers in a loop while the benchmark's TCP load runs (`loadgen tcp`, as
/// `cargo xtask bench`), paced to 2,500 connections a second — a rate the agent drains with
/// room to spare even on a slow day of this shared machine (5,000 lost 2 events of 470,000
/// once, on a day everything ran 2.5× slower), so a lost event means a scrape stalled the
/// draining thread: the 4 MiB ring holds about a second of this load. (Unpaced, the
/// load, four Python scrapers and tracer share two cores, and a scheduling hiccup of the whole
/// machine can lose a handful of 800,000 events whatever the endpoint does: a clean CI run lost
/// 2; that is what the benchmark measures, not this test.)
#[test]
fn four_scrapers_in_a_loop_lose_no_events() {
    if !ready("four_scrapers_in_a_loop_lose_no_events") {
        return;
    }
    let serve = Serve::start();
    let url = format!("http://{}/metrics", serve.addr);
    let seconds = 5;
    let scrapers: Vec<Child> = (0..4)
        .map(|_| {
            as_nobody("/usr/bin/python3")
                .args(["-c", SCRAPER, &url, &(seconds + 2).to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 as nobody")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let load = Command::new(sockdriver_bin().with_file_name("loadgen"))
        .args(["tcp", "1", &seconds.to_string(), "2500"])
        .output()
        .expect("loadgen");
    assert!(load.status.success(), "loadgen failed");
    let load: Value = serde_json::from_slice(&load.stdout).unwrap();
    let mut scrapes = Vec::new();
    for s in scrapers {
        let out = s.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let counts: Vec<u64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert!(matches!(counts[..], [ok, 0] if ok > 0), "scraper: {text:?}");
        scrapes.push(counts[0]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let events = serve.total("tracer_socket_events_total", "{");
    let records = serve.sample("tracer_events_processed_total{source=\"ringbuf\"}");
    let lost = serve.total("tracer_events_lost_total", "{");
    eprintln!(
        "metrics: {} connections/s under load; scrapes per scraper {scrapes:?}; events counted {events}, records processed {records}, lost {lost}",
        load["ops_per_sec"]
    );
    assert_eq!(lost, 0);
}

#[test]
fn connections_are_shared_out_by_descriptor_limit() {
    assert_eq!(shares(2000, 200, 20_000), [(2000, 200)]);
    assert_eq!(shares(2000, 200, 1000), [(667, 67), (667, 67), (666, 66)]);
    assert_eq!(shares(0, 20, 1000), [(0, 20)]);
}
