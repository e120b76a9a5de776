//! Hostile users: resources. An unprivileged user can create network namespaces (`unshare
//! -rn`) by the thousand. tracer keeps state per namespace (ephemeral-port usage, port ranges,
//! metric series, NAT watchers): it must stay bounded while they come and go, forget them when
//! they are gone, and cap the namespaces it follows for NAT.
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tracer_tests::*;

use crate::serve::Serve;

/// Creates N network namespaces in waves (unprivileged: `unshare(CLONE_NEWUSER)` once, then
/// forked children each `unshare(CLONE_NEWNET)`), each child binding a UDP socket to a
/// kernel-chosen port in its namespace and living two seconds, so tracer sees hundreds alive
/// at once (more than its series cap) and thousands come and go. Prints how many it made.
const NAMESPACE_STORM: &str = r#"
import ctypes, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
    sys.exit("unshare(CLONE_NEWUSER) failed")
total, wave = int(sys.argv[1]), int(sys.argv[2])
made = 0
while made < total:
    kids = []
    for _ in range(min(wave, total - made)):
        pid = os.fork()
        if pid == 0:
            if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
                os._exit(1)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(('0.0.0.0', 0))
            time.sleep(2)
            os._exit(0)
        kids.append(pid)
    failed = sum(os.waitpid(pid, 0)[1] != 0 for pid in kids)
    if failed:
        sys.exit(f"{failed} children could not make their namespace")
    made += len(kids)
print(made, flush=True)
"#;

/// Forks N children, each in a network namespace of its own (inside one user namespace) with
/// a socket bound there, which sleep until killed. Prints "ready" once all are in place.
const NAMESPACE_HOLDERS: &str = r#"
import ctypes, os, signal, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) != 0:
    sys.exit("unshare(CLONE_NEWUSER) failed")
kids = []
for i in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        if libc.unshare(0x40000000) != 0:
            os._exit(1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(('0.0.0.0', 0))
        time.sleep(600)
        os._exit(0)
    kids.append(pid)
time.sleep(1)
print("ready", flush=True)
try:
    sys.stdin.read()
finally:
    for pid in kids:
        os.kill(pid, signal.SIGKILL)
"#;

fn can_run(test: &str) -> bool {
    prerequisites(test) && tool(test, "setpriv", "util-linux")
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The samples of a scrape (lines that are not comments).
fn series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect()
}

/// The `netns="…"` label values in a scrape.
fn netns_labels(text: &str) -> HashSet<String> {
    series(text)
        .iter()
        .filter_map(|l| l.split_once("netns=\"")?.1.split_once('"'))
        .map(|(value, _)| value.to_string())
        .collect()
}

/// Network namespaces alive now, by inode: every process's, and the named ones.
fn live_namespaces() -> HashSet<u64> {
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"))
        .collect();
    paths.extend(
        std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.ino())
        .collect()
}

/// What a sampler saw while the storm ran.
#[derive(Default)]
struct Peaks {
    rss_kib: u64,
    series: usize,
    netns_labels: usize,
}

/// Samples tracer's memory and series until `storm` exits.
fn sample_until_done(serve: &Serve, storm: &mut Child) -> Peaks {
    let pid = serve.pid();
    let mut peaks = Peaks::default();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let text = serve.scrape();
        peaks.series = peaks.series.max(series(&text).len());
        peaks.netns_labels = peaks.netns_labels.max(netns_labels(&text).len());
        peaks.rss_kib = peaks.rss_kib.max(rss_kib(pid));
        if storm.try_wait().expect("wait storm").is_some() {
            return peaks;
        }
        assert!(Instant::now() < deadline, "the namespace storm did not end");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn ten_thousand_namespaces_leave_tracer_bounded_and_no_series_behind() {
    if !can_run("ten_thousand_namespaces_leave_tracer_bounded_and_no_series_behind") {
        return;
    }
    let serve = Serve::start();
    let pid = serve.pid();
    std::thread::sleep(Duration::from_secs(2));
    let before_rss = rss_kib(pid);
    let before_series = series(&serve.scrape()).len();

    let mut storm = as_nobody("/usr/bin/python3")
        .args(["-c", NAMESPACE_STORM, "10000", "500"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the namespace storm");
    let started = Instant::now();
    let peaks = sample_until_done(&serve, &mut storm);
    let took = started.elapsed();
    let mut line = String::new();
    BufReader::new(storm.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(storm.wait().unwrap().success(), "the storm failed");
    assert_eq!(line.trim(), "10000", "the storm made fewer namespaces");
    println!(
        "10,000 namespaces (500 alive at a time) in {took:.1?}: resident memory {} KiB before, \
         {} KiB at most (+{} KiB); series {} before, {} at most; netns label values at most {}",
        before_rss,
        peaks.rss_kib,
        peaks.rss_kib.saturating_sub(before_rss),
        before_series,
        peaks.series,
        peaks.netns_labels
    );
    // The storm was seen: namespaces got series of their own, more than the cap alive at once.
    assert!(
        peaks.netns_labels > 100,
        "only {} netns label values: the storm's namespaces were not seen",
        peaks.netns_labels
    );
    // Bounded: at most 256 namespaces (+ "other") get series of their own, whatever the
    // number created; memory grows by a few MiB at most, not per namespace.
    assert!(
        peaks.netns_labels <= 257,
        "{} netns label values",
        peaks.netns_labels
    );
    assert!(
        peaks.series <= before_series + 3 * 257 + 64,
        "{} series",
        peaks.series
    );
    assert!(
        peaks.rss_kib <= before_rss + 64 * 1024,
        "resident memory grew from {before_rss} to {} KiB",
        peaks.rss_kib
    );

    // Gone: within a pruning round (10 s) every namespace named by a series is alive.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let live = live_namespaces();
        let dead: Vec<String> = netns_labels(&serve.scrape())
            .into_iter()
            .filter(|v| v != "other")
            .filter(|v| v.parse::<u64>().is_ok_and(|ino| !live.contains(&ino)))
            .collect();
        if dead.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "series of {} dead namespaces remain, e.g. {:?}",
            dead.len(),
            &dead[..dead.len().min(5)]
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let after = serve.scrape();
    println!(
        "after: {} series, {} netns label values, resident memory {} KiB",
        series(&after).len(),
        netns_labels(&after).len(),
        rss_kib(pid)
    );
    assert!(after.contains("tracer_evicted_total{table=\"pending\"}"));
}

#[test]
fn nat_all_netns_follows_at_most_max_netns_and_says_so_once() {
    if !can_run("nat_all_netns_follows_at_most_max_netns_and_says_so_once") {
        return;
    }
    const HOLDERS: usize = 40;
    const MAX: usize = 8;
    let mut holders = as_nobody("/usr/bin/python3")
        .args(["-c", NAMESPACE_HOLDERS, &HOLDERS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the namespace holders");
    let mut ready = String::new();
    BufReader::new(holders.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready", "the namespace holders did not start");

    let mut nat = Command::new(tracer_bin())
        .args(["nat", "--json", "--no-flows", "--all-netns"])
        .args(["--max-netns", &MAX.to_string(), "--duration", "6"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tracer nat");
    let pid = nat.id();
    let mut most_threads = 0;
    while nat.try_wait().unwrap().is_none() {
        most_threads = most_threads.max(threads(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut nat.stderr.take().unwrap(), &mut stderr).unwrap();
    drop(holders.stdin.take());
    let _ = holders.wait();
    println!("tracer nat --all-netns --max-netns {MAX} with {HOLDERS} namespaces: at most {most_threads} threads\n{stderr}");
    let said = stderr
        .lines()
        .filter(|l| l.contains("at most 8 network namespaces (--max-netns)"))
        .count();
    assert_eq!(said, 1, "the cap must be said exactly once:\n{stderr}");
    // One conntrack reader per namespace followed, plus the runtime's own few.
    assert!(
        most_threads <= MAX + 16,
        "{most_threads} threads for at most {MAX} namespaces"
    );
}

/// Parks N threads in accept() on one listener (more than the kernel's 16,384 pending-call
/// slots), prints "ready", and exits when its stdin closes.
const PARKED_THREADS: &str = r#"
import os, socket, sys, threading, time
threading.stack_size(65536)
s = socket.socket()
s.bind(('127.0.0.1', 0))
s.listen(1)
def parked():
    try:
        s.accept()
    except OSError:
        pass
for _ in range(int(sys.argv[1])):
    threading.Thread(target=parked, daemon=True).start()
time.sleep(2)
print("ready", flush=True)
sys.stdin.read()
os._exit(0)
"#;

#[test]
fn threads_parked_in_accept_do_not_starve_other_processes() {
    if !can_run("threads_parked_in_accept_do_not_starve_other_processes") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Pending calls are the syscall path's (the socket path keeps none).
    let mut tracer = Hooks::Syscalls.watch(&["--port", &port.to_string()]);
    let mut parked = as_nobody("/usr/bin/python3")
        .args(["-c", PARKED_THREADS, "17000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the parked threads");
    let mut ready = String::new();
    BufReader::new(parked.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready", "the parked threads did not start");

    // Another process's call still gets a slot: its connect is reported.
    let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let me = std::process::id();
    tracer.wait_for(
        "the connect beside 17,000 parked threads",
        Duration::from_secs(10),
        |evs| {
            evs.iter()
                .any(|e| e["event"] == "connect" && e["pid"] == me && e["rport"] == u64::from(port))
        },
    );
    drop(parked.stdin.take());
    let _ = parked.wait();
    let (_, records) = tracer.stop_with(libc::SIGINT);
    let summary = records
        .iter()
        .find(|r| r["type"] == "summary")
        .expect("a summary");
    let evicted = summary["evicted"]["pending"].as_u64().unwrap_or(0);
    println!(
        "17,000 threads parked in accept(): pending calls evicted {evicted}, summary {summary}"
    );
    // At least the calls beyond the map's 16,384 slots were pushed out, and counted.
    assert!(
        evicted >= 17_000 - 16_384,
        "pending evictions counted: {evicted}"
    );
}

/// Connects to a closed loopback port as fast as it can for SECONDS: each attempt makes a
/// reset and a drop no socket owns (what a remote port scan makes too). Prints the attempts.
const REFUSED_STORM: &str = r#"
import socket, sys, time
end = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < end:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        pass
    s.close()
    n += 1
print(n, flush=True)
"#;

/// Resets and drops nobody owns are sent to the agent at a bounded rate per CPU — beyond it
/// they are counted as lost, never silently — while the metrics count every one of them.
#[test]
fn a_flood_of_ownerless_resets_is_rate_limited_and_counted() {
    if !can_run("a_flood_of_ownerless_resets_is_rate_limited_and_counted") {
        return;
    }
    const SECONDS: f64 = 3.0;
    let closed = free_port().to_string();
    let serve = Serve::start();
    let before = serve.total("tracer_tcp_resets_total", "{direction=\"received\"");
    let watch = Tracer::watch(&["--port", &closed, "--events", "reset,drop"]);
    let storm = as_nobody("/usr/bin/python3")
        .args(["-c", REFUSED_STORM, &closed, &SECONDS.to_string()])
        .output()
        .expect("run the storm");
    let attempts: u64 = String::from_utf8_lossy(&storm.stdout)
        .trim()
        .parse()
        .unwrap();
    let (_, records) = watch.stop_with(libc::SIGINT);
    let unowned = records
        .iter()
        .filter(|r| r["type"] == "event" && r["pid"].is_null())
        .count() as u64;
    let summary = records.iter().find(|r| r["type"] == "summary").unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    // Per CPU and second at most 1,000 (one second more for the window the storm began in).
    let budget = 1000 * cpus * (SECONDS as u64 + 2);
    println!("{attempts} refused connects: {unowned} ownerless records shown, {summary}");
    assert!(
        attempts > budget / 2,
        "the storm was too slow to test the limit: {attempts}"
    );
    assert!(
        unowned <= budget,
        "{unowned} ownerless records for a budget of {budget}"
    );
    assert!(
        summary["lost"].as_u64().unwrap() > 0,
        "what was held back is counted as lost: {summary}"
    );
    // The metrics count them all: each attempt's reset received in SYN_SENT.
    let deadline = Instant::now() + Duration::from_secs(10);
    let counted = loop {
        let now = serve.total("tracer_tcp_resets_total", "{direction=\"received\"") - before;
        if now >= attempts || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(counted, attempts, "every reset counted in the metrics");
}
